/* behave.c - the behaviour thread of a simulated guest: churn, allocation bursts, page
 * cache reclaim and refill, and the guest statistics it reports.
 *
 * Every tick (tick_ns, 50 ms by default) the thread:
 *  - reclaims page cache when free memory is under the low watermark (kswapd), so a
 *    balloon that takes the guest's free pages goes on into its cache, as in Linux;
 *  - rewrites working-set pages at the profile's churn rate: new private content,
 *    version + 1 (under the guest's lock, descriptor updated with the write);
 *  - runs allocation bursts: allocate, fill and hold burst_permille of RAM, then free
 *    it; an allocation that fails even after reclaim and deflate-on-OOM drops the whole
 *    burst (an OOM: the guest goes on with less);
 *  - reads page cache back (same image content) while memory is plentiful again;
 *  - publishes its counters as the guest's balloon statistics.
 */
#include "wl.h"

#include <time.h>

#define NS_PER_S 1000000000ull
#define MS       1000000ull

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static uint64_t free_pages(struct mvw_guest *g)
{
	return mvg_sim_free_bytes(g->sim) / MVW_PAGE;
}

static void kswapd(struct mvw_guest *g)
{
	uint64_t f = free_pages(g);
	if (f < g->low_wm)
		mvw__reclaim(g, g->high_wm - f, false);
}

/* Page cache comes back at most 0.5% of RAM per tick, above twice the high watermark. */
static void refill(struct mvw_guest *g)
{
	uint64_t f = free_pages(g), room = f > 2 * g->high_wm ? f - 2 * g->high_wm : 0;
	uint64_t n = g->ram_pages / 200 > 16 ? g->ram_pages / 200 : 16, frame;
	for (; n && room; n--, room--) {
		pthread_mutex_lock(&g->lock);
		bool want = g->n_cache < g->cache_target;
		pthread_mutex_unlock(&g->lock);
		if (!want || mvw__alloc(g, &frame, false))
			return;
		pthread_mutex_lock(&g->lock);
		mvw__put_locked(g, frame, mvw__desc(MVW_CACHE, true, g->cache_seed[g->n_cache], 0));
		g->cache_frame[g->n_cache++] = (uint32_t)frame;
		g->st.refilled_pages++;
		pthread_mutex_unlock(&g->lock);
	}
}

static void churn(struct mvw_guest *g, uint64_t dt_ns)
{
	if (!g->ws || !g->prof->churn_permille)
		return;
	g->churn_budget += (double)g->ws * g->prof->churn_permille / 1000 * (double)dt_ns / NS_PER_S;
	for (; g->churn_budget >= 1 && !atomic_load(&g->stop); g->churn_budget -= 1) {
		uint64_t frame = g->anon[mvw__rand(&g->rng) % g->ws];
		pthread_mutex_lock(&g->lock);
		uint64_t d = g->desc[frame];
		mvw__put_locked(g, frame, mvw__desc(MVW_ANON, false, frame, mvw__d_version(d) + 1));
		g->st.churn_writes++;
		pthread_mutex_unlock(&g->lock);
	}
}

static void end_burst(struct mvw_guest *g, uint64_t now)
{
	while (g->n_burst)
		mvw__drop(g, g->burst[--g->n_burst]);
	uint64_t mean = g->prof->burst_interval_ms * MS;
	g->next_burst_ns = now + mean / 2 + mvw__rand(&g->rng) % (mean + 1); /* 0.5..1.5 x */
}

/* Allocate and fill a burst; a failed allocation (OOM) drops it whole. */
static void start_burst(struct mvw_guest *g, uint64_t now)
{
	uint64_t gen, frame;
	pthread_mutex_lock(&g->lock);
	gen = ++g->st.bursts;
	pthread_mutex_unlock(&g->lock);
	while (g->n_burst < g->burst_cap && !atomic_load(&g->stop)) {
		if (mvw__alloc(g, &frame, true)) {
			end_burst(g, now);
			pthread_mutex_lock(&g->lock);
			g->st.bursts_dropped++;
			pthread_mutex_unlock(&g->lock);
			return;
		}
		pthread_mutex_lock(&g->lock);
		mvw__put_locked(g, frame, mvw__desc(MVW_BURST, false, frame, (uint32_t)gen));
		g->st.burst_writes++;
		pthread_mutex_unlock(&g->lock);
		g->burst[g->n_burst++] = (uint32_t)frame;
	}
	g->burst_end_ns = now + g->prof->burst_hold_ms * MS;
}

static void bursts(struct mvw_guest *g, uint64_t now)
{
	if (!g->burst_cap)
		return;
	if (!g->next_burst_ns && !g->n_burst)
		g->next_burst_ns = now + mvw__rand(&g->rng) % (g->prof->burst_interval_ms * MS + 1);
	if (g->n_burst && now >= g->burst_end_ns)
		end_burst(g, now);
	else if (!g->n_burst && now >= g->next_burst_ns)
		start_burst(g, now);
}

static void sleep_tick(struct mvw_guest *g, uint64_t until)
{
	struct timespec ts = { .tv_sec = (time_t)(until / NS_PER_S), .tv_nsec = (long)(until % NS_PER_S) };
	pthread_mutex_lock(&g->sleep_lock);
	while (!atomic_load(&g->stop) && mono_ns() < until)
		pthread_cond_timedwait(&g->sleep_cond, &g->sleep_lock, &ts);
	pthread_mutex_unlock(&g->sleep_lock);
}

void *mvw__main(void *arg)
{
	struct mvw_guest *g = arg;
	uint64_t last = mono_ns();
	while (!atomic_load(&g->stop)) {
		uint64_t now = mono_ns(), dt = now - last;
		last = now;
		kswapd(g);
		churn(g, dt < NS_PER_S ? dt : NS_PER_S); /* no catching up after a stall */
		bursts(g, now);
		refill(g);
		mvw__publish(g);
		sleep_tick(g, now + g->tick_ns);
	}
	return NULL;
}
