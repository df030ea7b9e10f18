/* workload.c - simulated guests with workloads: lifetime, verification, counters and
 * the page view for tests. Fill in profiles.c, pages in pages.c, behaviour in behave.c.
 */
#include "wl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIB       (1ull << 20)
#define RUN       (2 * MIB)
#define MIN_RAM   (16 * MIB)
#define TICK_NS   (50 * 1000000ull)

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void mvw_config_init(struct mvw_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->scale = 1;
	cfg->tick_ns = TICK_NS;
}

static uint64_t ram_of(const struct mvw_config *cfg)
{
	uint64_t bytes = cfg->ram_bytes;
	if (!bytes)
		bytes = (uint64_t)((double)cfg->profile->ram_bytes * (cfg->scale > 0 ? cfg->scale : 1));
	return (bytes + RUN - 1) / RUN * RUN;
}

/* ---- lifetime ---- */

static int map_frames(struct mvw_guest *g)
{
	void *hva[2];
	uint64_t gpa[2], bytes[2];
	g->nram = mvg_sim_ram(g->sim, hva, gpa, bytes, 2);
	for (unsigned k = 0; k < g->nram; k++) {
		g->ram[k] = (struct wl_ram){ hva[k], gpa[k], bytes[k] / MVW_PAGE, g->ram_pages };
		g->ram_pages += g->ram[k].pages;
	}
	g->low_wm = g->ram_pages / 100 > 64 ? g->ram_pages / 100 : 64;
	g->high_wm = 2 * g->low_wm;
	return g->ram_pages >> 32 ? -EINVAL : 0; /* frames are 32-bit in the lists */
}

static int alloc_lists(struct mvw_guest *g)
{
	const struct mvw_profile *p = g->prof;
	uint64_t N = g->ram_pages;
	g->desc = calloc(N, sizeof(*g->desc));
	g->anon = malloc((N * (p->anon + p->zero) / 1000 + 1) * sizeof(*g->anon));
	g->cache_frame = malloc((N * p->cache / 1000 + 1) * sizeof(*g->cache_frame));
	g->cache_seed = malloc((N * p->cache / 1000 + 1) * sizeof(*g->cache_seed));
	g->burst_cap = N * p->burst_permille / 1000;
	g->burst = malloc((g->burst_cap + 1) * sizeof(*g->burst));
	if (!g->desc || !g->anon || !g->cache_frame || !g->cache_seed || !g->burst)
		return -ENOMEM;
	return 0;
}

static void free_lists(struct mvw_guest *g)
{
	free(g->desc);
	free(g->anon);
	free(g->cache_frame);
	free(g->cache_seed);
	free(g->burst);
}

static void init_sync(struct mvw_guest *g)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g->sleep_cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&g->lock, NULL);
	pthread_mutex_init(&g->life_lock, NULL);
	pthread_mutex_init(&g->sleep_lock, NULL);
}

static void fini_sync(struct mvw_guest *g)
{
	pthread_cond_destroy(&g->sleep_cond);
	pthread_mutex_destroy(&g->lock);
	pthread_mutex_destroy(&g->life_lock);
	pthread_mutex_destroy(&g->sleep_lock);
}

/* The sim is created with its driver stopped: the fill must see the allocator alone
 * (deterministic kernel addresses, no free page reporting racing the fill). */
static int new_sim(struct mv_host *host, const struct mvw_config *cfg, struct mvw_guest *g)
{
	struct mvg_sim_config sc;
	if (cfg->sim)
		sc = *cfg->sim;
	else
		mvg_sim_config_init(&sc);
	sc.name = cfg->name;
	sc.domain = !cfg->domain ? cfg->profile->name : cfg->domain[0] ? cfg->domain : NULL;
	sc.ram_bytes = ram_of(cfg);
	sc.start_driver = false;
	return mvg_sim_new(host, &sc, &g->sim);
}

static void set_seeds(const struct mvw_config *cfg, struct mvw_guest *g)
{
	g->prof = cfg->profile;
	g->image_seed = cfg->image_seed ? cfg->image_seed : mvw__hash_str(cfg->profile->name);
	g->guest_seed = cfg->guest_seed ? cfg->guest_seed : mvw__hash_str(cfg->name);
	g->rng = g->guest_seed ^ 0xbe4a710ull;
	g->tick_ns = cfg->tick_ns ? cfg->tick_ns : TICK_NS;
}

int mvw_guest_new(struct mv_host *host, const struct mvw_config *cfg, struct mvw_guest **out)
{
	if (!host || !cfg || !out || !cfg->profile || !cfg->name || ram_of(cfg) < MIN_RAM)
		return -EINVAL;
	struct mvw_guest *g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	set_seeds(cfg, g);
	init_sync(g);
	int err = new_sim(host, cfg, g);
	if (err)
		goto fail_sim;
	if ((err = map_frames(g)) || (err = alloc_lists(g)))
		goto fail_lists;
	uint64_t t0 = mono_ns();
	if ((err = mvw__fill(g)))
		goto fail_lists;
	g->st.fill_ns = mono_ns() - t0;
	mvw__publish(g);
	if ((err = mvg_sim_start_driver(g->sim)))
		goto fail_lists;
	*out = g;
	return 0;
fail_lists:
	free_lists(g);
	mvg_sim_free(g->sim);
fail_sim:
	fini_sync(g);
	free(g);
	return err;
}

void mvw_guest_free(struct mvw_guest *g)
{
	if (!g)
		return;
	mvw_stop(g);
	mvg_sim_free(g->sim);
	free_lists(g);
	fini_sync(g);
	free(g);
}

/* ---- the behaviour thread ---- */

int mvw_start(struct mvw_guest *g)
{
	int err = 0;
	pthread_mutex_lock(&g->life_lock);
	if (!g->running) {
		atomic_store(&g->stop, false);
		err = -pthread_create(&g->th, NULL, mvw__main, g);
		g->running = !err;
	}
	pthread_mutex_unlock(&g->life_lock);
	return err;
}

void mvw_stop(struct mvw_guest *g)
{
	pthread_mutex_lock(&g->life_lock);
	if (g->running) {
		pthread_mutex_lock(&g->sleep_lock);
		atomic_store(&g->stop, true);
		pthread_cond_broadcast(&g->sleep_cond);
		pthread_mutex_unlock(&g->sleep_lock);
		pthread_join(g->th, NULL);
		g->running = false;
	}
	pthread_mutex_unlock(&g->life_lock);
}

/* ---- verification and counters ---- */

uint64_t mvw_verify(struct mvw_guest *g, uint64_t *mismatches)
{
	uint64_t checked = 0, bad = 0;
	for (uint64_t f = 0; f < g->ram_pages; f++) {
		pthread_mutex_lock(&g->lock);
		uint64_t d = g->desc[f];
		if (d) {
			checked++;
			bad += !mvw__matches(g, mvw__hva(g, f), d);
		}
		pthread_mutex_unlock(&g->lock);
	}
	if (mismatches)
		*mismatches = bad;
	return checked;
}

void mvw_stats(struct mvw_guest *g, struct mvw_stats *out)
{
	pthread_mutex_lock(&g->lock);
	*out = g->st;
	pthread_mutex_unlock(&g->lock);
	out->held_pages = 0;
	for (unsigned r = 1; r < MVW_NR_ROLES; r++)
		out->held_pages += out->role_pages[r];
	out->free_pages = mvg_sim_free_bytes(g->sim) / MVW_PAGE;
	out->ram_pages = g->ram_pages;
}

/* ---- the page view ---- */

/* The descriptor of the held page at gpa: 0, or -ENOENT. */
static int held_desc(struct mvw_guest *g, uint64_t gpa, uint64_t *d)
{
	uint64_t f;
	if (gpa % MVW_PAGE || mvw__frame(g, gpa, &f))
		return -ENOENT;
	pthread_mutex_lock(&g->lock);
	*d = g->desc[f];
	pthread_mutex_unlock(&g->lock);
	return *d ? 0 : -ENOENT;
}

int mvw_page_info(struct mvw_guest *g, uint64_t gpa, struct mvw_page *out)
{
	uint64_t d;
	if (held_desc(g, gpa, &d))
		return -ENOENT;
	*out = (struct mvw_page){ mvw__d_role(d), mvw__d_image(d), mvw__d_seed(d), mvw__d_version(d) };
	return 0;
}

int mvw_find_page(struct mvw_guest *g, enum mvw_role role, uint64_t n, uint64_t *gpa)
{
	int err = -ENOENT;
	pthread_mutex_lock(&g->lock);
	for (uint64_t f = 0; f < g->ram_pages && err; f++)
		if (g->desc[f] && mvw__d_role(g->desc[f]) == role && !n--) {
			*gpa = mvw__gpa(g, f);
			err = 0;
		}
	pthread_mutex_unlock(&g->lock);
	return err;
}

int mvw_expected(struct mvw_guest *g, uint64_t gpa, void *buf)
{
	uint64_t d;
	if (held_desc(g, gpa, &d))
		return -ENOENT;
	mvw__write(g, buf, d);
	return 0;
}

struct mvg_sim *mvw_sim(struct mvw_guest *g)
{
	return g->sim;
}

const struct mvw_profile *mvw_profile(struct mvw_guest *g)
{
	return g->prof;
}

const char *mvw_role_name(enum mvw_role role)
{
	static const char *const names[MVW_NR_ROLES] = {
		"none", "zero", "kernel", "lib", "cache", "anon", "burst",
	};
	return (unsigned)role < MVW_NR_ROLES ? names[role] : "?";
}
