/* check.c - the soak's proof: every held page of a guest compared with the content its
 * workload last wrote, exactly (under the workload's lock, page by page), and each wrong
 * page reported with its guest, address, role, what was expected and what was read;
 * and the watchdog that ends a run where something hangs.
 */
#include "soak_int.h"
#include "wl.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REPORT_MAX 10   /* distinct wrong pages described in full */

/* Was this wrong page seen before? Records it if not (and if there is room). */
static bool seen_before(struct soak *s, uint64_t who, uint64_t frame, uint64_t d)
{
	for (unsigned i = 0; i < s->nseen; i++)
		if (s->seen[i][0] == who && s->seen[i][1] == frame && s->seen[i][2] == d)
			return true;
	if (s->nseen < sizeof(s->seen) / sizeof(s->seen[0])) {
		s->seen[s->nseen][0] = who;
		s->seen[s->nseen][1] = frame;
		s->seen[s->nseen][2] = d;
		s->nseen++;
	}
	return false;
}

static void describe(struct soak_slot *sl, struct mvw_guest *g, uint64_t frame, uint64_t d,
                     const uint8_t *page)
{
	static _Thread_local uint8_t want[MVW_PAGE];
	mvw__write(g, want, d);
	unsigned first = MVW_PAGE, diff = 0;
	bool zero = true;
	for (unsigned i = 0; i < MVW_PAGE; i++) {
		if (page[i] != want[i]) {
			diff++;
			if (first == MVW_PAGE)
				first = i;
		}
		zero &= !page[i];
	}
	fprintf(stderr, "soak: MISMATCH guest %s (gen %u, profile %s) frame %llu gpa 0x%llx hva %p: "
	        "role %s, %s content, seed %llu, version %u; %u bytes differ from offset %u "
	        "(expected %02x%02x%02x%02x, read %02x%02x%02x%02x)%s\n",
	        sl->name, sl->gen, sl->profile, (unsigned long long)frame,
	        (unsigned long long)mvw__gpa(g, frame), (const void *)page,
	        mvw_role_name(mvw__d_role(d)), mvw__d_image(d) ? "image" : "private",
	        (unsigned long long)mvw__d_seed(d), mvw__d_version(d), diff, first,
	        want[first & ~3u], want[(first & ~3u) + 1], want[(first & ~3u) + 2], want[(first & ~3u) + 3],
	        page[first & ~3u], page[(first & ~3u) + 1], page[(first & ~3u) + 2], page[(first & ~3u) + 3],
	        zero ? "; the page reads all zero" : "");
}

/* A wrong page: count it (once per distinct content), describe the first few. Called
 * with the guest's lock held, so the page cannot change meanwhile. */
static void mismatch(struct soak *s, struct soak_slot *sl, struct mvw_guest *g, uint64_t frame,
                     uint64_t d, const uint8_t *page)
{
	pthread_mutex_lock(&s->res_lock);
	s->res->mismatch_sightings++;
	bool old = seen_before(s, (uint64_t)(sl - s->slot) << 32 | sl->gen, frame, d);
	if (!old)
		s->res->mismatches++;
	bool tell = !old && s->res->mismatches <= REPORT_MAX;
	pthread_mutex_unlock(&s->res_lock);
	if (tell)
		describe(sl, g, frame, d, page);
}

uint64_t soak_verify(struct soak *s, struct soak_slot *sl)
{
	struct mvw_guest *g = sl->g;
	uint64_t checked = 0;
	if (!g)
		return 0;
	for (uint64_t f = 0; f < g->ram_pages; f++) {
		pthread_mutex_lock(&g->lock);
		uint64_t d = g->desc[f];
		if (d) {
			const uint8_t *page = mvw__hva(g, f);
			checked++;
			if (!mvw__matches(g, page, d))
				mismatch(s, sl, g, f, d, page);
		}
		pthread_mutex_unlock(&g->lock);
	}
	pthread_mutex_lock(&s->res_lock);
	s->res->pages_verified += checked;
	pthread_mutex_unlock(&s->res_lock);
	return checked;
}

/* ---- the watchdog ---- */

void soak_watch_begin(struct soak *s, enum soak_watch_id w, const char *who)
{
	atomic_store(&s->watch[w].who, who ? who : "");
	atomic_store(&s->watch[w].since_ns, soak_now_ns());
}

void soak_watch_end(struct soak *s, enum soak_watch_id w)
{
	atomic_store(&s->watch[w].since_ns, 0);
}

/* Something hung: say what, print the summary as it stands, and end the process (its
 * threads cannot be stopped). */
static _Noreturn void hung(struct soak *s, enum soak_watch_id w, uint64_t ns)
{
	fprintf(stderr, "soak: HUNG: %s%s%s has been running for %.0f s (limit %.0f s)\n",
	        s->watch[w].what, *atomic_load(&s->watch[w].who) ? " of " : "",
	        atomic_load(&s->watch[w].who), (double)ns / 1e9, s->o->watchdog_s);
	soak_faults_print(stderr);
	s->res->hung = true;
	s->res->seconds = (double)(soak_now_ns() - s->t0_ns) / 1e9;
	s->res->injected_failures = soak_faults_total();
	soak_print_json(stdout, s->res);
	fflush(NULL);
	_exit(3);
}

static void *watchdog_main(void *arg)
{
	struct soak *s = arg;
	uint64_t limit = (uint64_t)(s->o->watchdog_s * 1e9);
	while (!atomic_load(&s->wd_stop)) {
		nanosleep(&(struct timespec){ .tv_nsec = 200 * 1000000 }, NULL);
		uint64_t now = soak_now_ns();
		for (unsigned w = 0; w < W_NR; w++) {
			uint64_t since = atomic_load(&s->watch[w].since_ns);
			if (since && now > since && now - since > limit)
				hung(s, (enum soak_watch_id)w, now - since);
		}
	}
	return NULL;
}

int soak_watchdog_start(struct soak *s, pthread_t *th)
{
	static const char *const what[W_NR] = {
		"a verify round", "a guest teardown", "a guest creation", "a region remove/add",
		"a policy tick",
	};
	for (unsigned w = 0; w < W_NR; w++) {
		s->watch[w].what = what[w];
		atomic_store(&s->watch[w].who, "");
	}
	atomic_store(&s->wd_stop, false);
	return -pthread_create(th, NULL, watchdog_main, s);
}

void soak_watchdog_stop(struct soak *s, pthread_t th)
{
	atomic_store(&s->wd_stop, true);
	pthread_join(th, NULL);
}
