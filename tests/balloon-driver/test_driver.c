/* test_driver.c - the guest balloon driver and its hosted port: the guest page allocator,
 * then the driver against libmemvirt's device in simulated guests. Outcomes are read from
 * the guest allocator, the device's info, and the host's page tables (mincore). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <memvirt/memvirt.h>
#include <memvirt/balloon.h>
#include "hosted/galloc.h"
#include "hosted/sim.h"
#include "drv.h"
#include "testutil.h"

#define MIB   (1ull << 20)
#define GIB   (1ull << 30)
#define RUNB  (2 * MIB)
#define SEC   1000000000ull

/* ---- the guest page allocator ---- */

static struct mvg__galloc *ga_new(const struct mvg__galloc_region *r, unsigned n)
{
	struct mvg__galloc *g = NULL;
	assert_int_equal(mvg__galloc_new(r, n, &g), 0);
	return g;
}

static void galloc_pages_come_out_lowest_first(void **state)
{
	const struct mvg__galloc_region r[] = { { 0, 4 * MIB }, { 4 * GIB, 2 * MIB } };
	struct mvg__galloc *g = ga_new(r, 2);
	assert_int_equal(mvg__galloc_total_bytes(g), 6 * MIB);
	assert_int_equal(mvg__galloc_free_bytes(g), 6 * MIB);
	uint64_t gpa;
	for (uint64_t i = 0; i < 1536; i++) {
		assert_int_equal(mvg__galloc_alloc_page(g, &gpa), 0);
		uint64_t want = i < 1024 ? i * TPAGE : 4 * GIB + (i - 1024) * TPAGE;
		assert_int_equal(gpa, want); /* in order, across the hole */
	}
	assert_int_equal(mvg__galloc_alloc_page(g, &gpa), -ENOMEM);
	assert_int_equal(mvg__galloc_free_bytes(g), 0);
	assert_int_equal(mvg__galloc_free_page(g, 5 * TPAGE), 0);
	assert_int_equal(mvg__galloc_free_page(g, 5 * TPAGE), -EINVAL);  /* double free */
	assert_int_equal(mvg__galloc_free_page(g, 5 * MIB), -EINVAL);    /* in the hole */
	assert_int_equal(mvg__galloc_free_page(g, 6 * TPAGE + 8), -EINVAL); /* misaligned */
	assert_int_equal(mvg__galloc_free_bytes(g), TPAGE);
	assert_int_equal(mvg__galloc_alloc_page(g, &gpa), 0);
	assert_int_equal(gpa, 5 * TPAGE);
	mvg__galloc_free(g);
	const struct mvg__galloc_region bad[] = { { 0, 3 * MIB } };
	assert_int_equal(mvg__galloc_new(bad, 1, &g), -EINVAL);
}

static void galloc_runs_are_whole(void **state)
{
	const struct mvg__galloc_region r[] = { { 0, 8 * MIB } };
	struct mvg__galloc *g = ga_new(r, 1);
	uint64_t page, run, gpa;
	assert_int_equal(mvg__galloc_alloc_page(g, &page), 0); /* breaks run 0 */
	assert_int_equal(mvg__galloc_alloc_run(g, &run), 0);
	assert_int_equal(run, RUNB);
	assert_int_equal(mvg__galloc_free_run(g, 0), -EINVAL);  /* run 0 is partly free */
	assert_int_equal(mvg__galloc_free_run(g, RUNB + TPAGE), -EINVAL);
	assert_int_equal(mvg__galloc_alloc_run(g, &gpa), 0);
	assert_int_equal(mvg__galloc_alloc_run(g, &gpa), 0);
	assert_int_equal(mvg__galloc_alloc_run(g, &gpa), -ENOMEM); /* run 0 is not whole */
	assert_int_equal(mvg__galloc_free_bytes(g), RUNB - TPAGE);
	/* a run taken whole can come back page by page, and is whole again */
	for (uint64_t k = 0; k < 512; k++)
		assert_int_equal(mvg__galloc_free_page(g, run + k * TPAGE), 0);
	assert_int_equal(mvg__galloc_alloc_run(g, &gpa), 0);
	assert_int_equal(gpa, run);
	assert_int_equal(mvg__galloc_free_run(g, gpa), 0);
	assert_int_equal(mvg__galloc_free_run(g, gpa), -EINVAL);
	assert_int_equal(mvg__galloc_free_page(g, page), 0);
	assert_int_equal(mvg__galloc_free_bytes(g), 4 * MIB); /* two runs still taken */
	struct mvg__galloc_counts c;
	mvg__galloc_counts(g, &c);
	assert_int_equal(c.free_runs, 2);
	assert_int_equal(c.partial_runs, 0);
	mvg__galloc_free(g);
}

static void galloc_fragmentation(void **state)
{
	const struct mvg__galloc_region r[] = { { 0, 8 * MIB } };
	struct mvg__galloc *g = ga_new(r, 1);
	uint64_t gpa;
	for (uint64_t i = 0; i < 2048; i++)
		assert_int_equal(mvg__galloc_alloc_page(g, &gpa), 0);
	for (uint64_t i = 0; i < 2048; i += 2)
		assert_int_equal(mvg__galloc_free_page(g, i * TPAGE), 0);
	assert_int_equal(mvg__galloc_free_bytes(g), 4 * MIB);
	assert_int_equal(mvg__galloc_alloc_run(g, &gpa), -ENOMEM);
	struct mvg__galloc_counts c;
	mvg__galloc_counts(g, &c);
	assert_int_equal(c.partial_runs, 4);
	/* pages come back from the first partial run, lowest first */
	assert_int_equal(mvg__galloc_alloc_page(g, &gpa), 0);
	assert_int_equal(gpa, 0);
	assert_int_equal(mvg__galloc_alloc_page(g, &gpa), 0);
	assert_int_equal(gpa, 2 * TPAGE);
	assert_int_equal(mvg__galloc_free_page(g, 0), 0);
	assert_int_equal(mvg__galloc_free_page(g, 2 * TPAGE), 0);
	for (uint64_t i = 1; i < 2048; i += 2)
		assert_int_equal(mvg__galloc_free_page(g, i * TPAGE), 0);
	mvg__galloc_counts(g, &c);
	assert_int_equal(c.free_runs, 4);
	assert_int_equal(c.partial_runs, 0);
	for (int k = 0; k < 4; k++)
		assert_int_equal(mvg__galloc_alloc_run(g, &gpa), 0);
	mvg__galloc_free(g);
}

static void galloc_reported_flags(void **state)
{
	const struct mvg__galloc_region r[] = { { 0, 6 * MIB } };
	struct mvg__galloc *g = ga_new(r, 1);
	uint64_t a, b, c, gpa;
	assert_int_equal(mvg__galloc_isolate_unreported(g, &a), 0);
	assert_int_equal(mvg__galloc_isolate_unreported(g, &b), 0);
	assert_int_equal(mvg__galloc_free_bytes(g), 2 * MIB); /* isolated runs are not free */
	assert_int_equal(mvg__galloc_free_page(g, a), -EINVAL);
	assert_int_equal(mvg__galloc_putback_reported(g, a), 0);
	assert_int_equal(mvg__galloc_putback_reported(g, a), -EINVAL);
	assert_int_equal(mvg__galloc_putback_reported(g, b), 0);
	assert_true(mvg__galloc_run_reported(g, a));
	assert_int_equal(mvg__galloc_isolate_unreported(g, &c), 0);
	assert_true(c != a && c != b);
	assert_int_equal(mvg__galloc_isolate_unreported(g, &gpa), -ENOMEM); /* all reported */
	assert_int_equal(mvg__galloc_putback_reported(g, c), 0);
	assert_int_equal(mvg__galloc_free_bytes(g), 6 * MIB);
	/* allocating any page of a run clears its flag; it can be reported again */
	assert_int_equal(mvg__galloc_alloc_page(g, &gpa), 0);
	uint64_t run = gpa & ~(RUNB - 1);
	assert_false(mvg__galloc_run_reported(g, run));
	assert_int_equal(mvg__galloc_free_page(g, gpa), 0);
	assert_int_equal(mvg__galloc_isolate_unreported(g, &gpa), 0);
	assert_int_equal(gpa, run);
	assert_int_equal(mvg__galloc_putback_reported(g, gpa), 0);
	mvg__galloc_free(g);
}

struct ga_thread {
	struct mvg__galloc *g;
	uint64_t seed;
};

static void *ga_churn(void *arg)
{
	struct ga_thread *t = arg;
	uint64_t held[256], n = 0, s = t->seed;
	for (int i = 0; i < 200000; i++) {
		if (n < 256 && (n == 0 || tu_rand(&s) % 2))
			n += !mvg__galloc_alloc_page(t->g, &held[n]);
		else
			assert_int_equal(mvg__galloc_free_page(t->g, held[--n]), 0);
	}
	while (n)
		assert_int_equal(mvg__galloc_free_page(t->g, held[--n]), 0);
	return NULL;
}

static void galloc_threads(void **state)
{
	const struct mvg__galloc_region r[] = { { 0, 4 * MIB } };
	struct mvg__galloc *g = ga_new(r, 1);
	pthread_t th[4];
	struct ga_thread t[4];
	for (int i = 0; i < 4; i++) {
		t[i] = (struct ga_thread){ g, 1 + i };
		pthread_create(&th[i], NULL, ga_churn, &t[i]);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(mvg__galloc_free_bytes(g), 4 * MIB);
	struct mvg__galloc_counts c;
	mvg__galloc_counts(g, &c);
	assert_int_equal(c.free_runs, 2);
	mvg__galloc_free(g);
}

/* ---- simulated guests ---- */

struct guest {
	struct mv_host *h;
	struct mvg_sim *s;
	struct mv_balloon *b;
	struct mvg_sim_config cfg;
};

static void guest_config(struct guest *g, uint64_t ram)
{
	memset(g, 0, sizeof(*g));
	mvg_sim_config_init(&g->cfg);
	g->cfg.name = "guest";
	g->cfg.ram_bytes = ram;
	g->cfg.device.stall_ns = 300 * 1000000ull;
}

static void guest_start(struct guest *g)
{
	g->h = tu_host();
	int err = mvg_sim_new(g->h, &g->cfg, &g->s);
	if (err)
		fprintf(stderr, "mvg_sim_new: %s\n", mv_strerror(err));
	assert_int_equal(err, 0);
	g->b = mvg_sim_balloon(g->s);
}

static void guest_stop(struct guest *g)
{
	mvg_sim_free(g->s);
	mv_host_free(g->h);
}

static struct mv_balloon_info info(struct guest *g)
{
	struct mv_balloon_info in;
	assert_int_equal(mv_balloon_info(g->b, &in), 0);
	return in;
}

static struct mvg_status status(struct guest *g)
{
	struct mvg_status st;
	mvg_sim_driver_status(g->s, &st);
	return st;
}

static void settle(struct guest *g, uint64_t target)
{
	assert_int_equal(mv_balloon_set_target(g->b, target), 0);
	assert_int_equal(mvg_sim_settle(g->s, 20 * SEC), 0);
}

static void sleep_ms(unsigned ms)
{
	nanosleep(&(struct timespec){ .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000l }, NULL);
}

/* Wait (10 s at most) until cond holds; cond is evaluated once per millisecond. */
#define WAIT_FOR(cond) do { \
	bool ok_ = false; \
	for (int w_ = 0; w_ < 10000 && !(ok_ = (cond)); w_++) \
		sleep_ms(1); \
	if (!ok_) \
		fail_msg("timed out waiting for %s", #cond); \
} while (0)

/* As a guest workload: take every free page, write it (seed by gpa), give it back. The
 * driver's own pages are not free, so they are left alone. */
static void populate(struct guest *g)
{
	size_t cap = g->cfg.ram_bytes / TPAGE, n = 0;
	uint64_t *held = malloc(cap * sizeof(*held)), gpa;
	assert_non_null(held);
	while (mvg_sim_free_bytes(g->s) && !mvg_sim_alloc_page(g->s, &gpa)) {
		memset(mvg_sim_hva(g->s, gpa), 0x5a, TPAGE);
		held[n++] = gpa;
	}
	while (n)
		mvg_sim_free_page(g->s, held[--n]);
	free(held);
}

/* Bytes of guest RAM the host really holds (mincore over the RAM mappings). */
static uint64_t resident_bytes(struct guest *g)
{
	void *hva[2];
	uint64_t gpa[2], bytes[2], res = 0;
	unsigned n = mvg_sim_ram(g->s, hva, gpa, bytes, 2);
	for (unsigned k = 0; k < n; k++) {
		size_t pages = bytes[k] / TPAGE;
		unsigned char *vec = malloc(pages);
		assert_non_null(vec);
		assert_int_equal(mincore(hva[k], bytes[k], vec), 0);
		for (size_t i = 0; i < pages; i++)
			res += (vec[i] & 1) * TPAGE;
		free(vec);
	}
	return res;
}

static bool resident(struct guest *g, uint64_t gpa)
{
	unsigned char v = 0;
	assert_int_equal(mincore(mvg_sim_hva(g->s, gpa), TPAGE, &v), 0);
	return v & 1;
}

static void inflate_and_deflate_move_memory(void **state)
{
	struct guest g;
	guest_config(&g, 256 * MIB);
	guest_start(&g);
	populate(&g);
	uint64_t free0 = mvg_sim_free_bytes(g.s), res0 = resident_bytes(&g);
	assert_true(res0 >= 250 * MIB);
	/* 100 MiB and 12 KiB: runs first, single pages for the rest */
	uint64_t target = 100 * MIB + 3 * TPAGE;
	settle(&g, target);
	struct mv_balloon_info in = info(&g);
	assert_int_equal(in.actual_bytes, target);
	assert_int_equal(in.held_bytes, target);
	assert_int_equal(in.guest_errors, 0);
	struct mvg_status st = status(&g);
	assert_int_equal(st.ballooned_runs, 50);
	assert_int_equal(st.ballooned_pages, 3);
	assert_int_equal(st.error, 0);
	assert_true(free0 - mvg_sim_free_bytes(g.s) >= target);
	/* the host got the memory back (give or take the request buffers the driver wrote
	 * for the first time: 2 queues x 8 slots x 4 pages) */
	assert_true(resident_bytes(&g) <= res0 - target + 64 * TPAGE);
	/* deflate a part: single pages first, then runs, one of them split */
	settle(&g, 50 * MIB + 5 * TPAGE);
	st = status(&g);
	assert_int_equal(st.ballooned_pages, 5);
	assert_int_equal(st.ballooned_runs, 25);
	assert_int_equal(info(&g).held_bytes, 50 * MIB + 5 * TPAGE);
	settle(&g, 0);
	assert_int_equal(mvg_sim_free_bytes(g.s), free0);
	st = status(&g);
	assert_int_equal(st.ballooned_pages + st.ballooned_runs, 0);
	assert_int_equal(st.bookkeeping_pages, 0);
	assert_int_equal(info(&g).guest_errors, 0);
	guest_stop(&g);
}

/* A guest with no whole 2 MiB run free inflates with sorted 4 KiB pages. */
static void fragmented_guest_inflates_sorted_pages(void **state)
{
	struct guest g;
	guest_config(&g, 64 * MIB);
	g.cfg.start_driver = false;
	g.cfg.io_thread = false;
	guest_start(&g);
	size_t n = 0;
	uint64_t *held = malloc(g.cfg.ram_bytes / TPAGE * sizeof(*held)), gpa;
	while (mvg_sim_free_bytes(g.s) && !mvg_sim_alloc_page(g.s, &held[n]))
		n++;
	/* free every other page, high runs first: the allocator hands them out run by
	 * run from the top, so PFNs come in descending runs */
	for (size_t i = n; i-- > 0;)
		if (held[i] / TPAGE % 2)
			mvg_sim_free_page(g.s, held[i]);
	assert_int_equal(mvg_sim_alloc_run(g.s, &gpa), -ENOMEM);
	assert_int_equal(mv_balloon_set_target(g.b, 16 * MIB), 0);
	struct mvg_balloon *d = mvg_sim_driver(g.s);
	for (int i = 0; i < 100 && info(&g).actual_bytes != 16 * MIB; i++) {
		mvg_sim_step(g.s);
		for (unsigned k = 0; k < d->cfg.inflight; k++) {
			const struct mvg__req *r = &d->req[VQ_INFLATE][k];
			for (uint32_t j = 1; j < r->npfns; j++) {
				uint32_t a = r->buf_va[(j - 1) / 1024][(j - 1) % 1024];
				uint32_t b = r->buf_va[j / 1024][j % 1024];
				assert_true(a < b);
			}
		}
	}
	assert_int_equal(info(&g).actual_bytes, 16 * MIB);
	struct mvg_status st = status(&g);
	assert_int_equal(st.ballooned_runs, 0);
	assert_int_equal(st.ballooned_pages, 4096);
	assert_int_equal(info(&g).guest_errors, 0);
	free(held);
	guest_stop(&g);
}

/* RAM above split_at lives at 4 GiB: both regions get ballooned. */
static void ram_across_the_hole(void **state)
{
	struct guest g;
	guest_config(&g, 64 * MIB);
	g.cfg.split_at = 16 * MIB;
	guest_start(&g);
	void *hva[2];
	uint64_t gpa[2], bytes[2];
	assert_int_equal(mvg_sim_ram(g.s, hva, gpa, bytes, 2), 2);
	assert_int_equal(gpa[1], 4 * GIB);
	assert_int_equal(bytes[0] + bytes[1], 64 * MIB);
	assert_null(mvg_sim_hva(g.s, 32 * MIB));
	populate(&g);
	settle(&g, 56 * MIB);
	assert_false(resident(&g, 8 * MIB));
	assert_false(resident(&g, 4 * GIB + 40 * MIB));
	assert_int_equal(info(&g).guest_errors, 0);
	settle(&g, 0);
	guest_stop(&g);
}

/* Above what the floor allows, the driver stops at the floor, keeps `actual` true and
 * the device sees a stalled inflate; a lower target goes through. */
static void floor_stops_inflate(void **state)
{
	struct guest g;
	guest_config(&g, 128 * MIB);
	g.cfg.driver.floor_bytes = 96 * MIB;
	guest_start(&g);
	settle(&g, 64 * MIB);
	struct mvg_status st = status(&g);
	assert_true(st.at_floor);
	assert_true(mvg_sim_free_bytes(g.s) >= 96 * MIB);
	struct mv_balloon_info in = info(&g);
	assert_true(in.actual_bytes < 32 * MIB && in.actual_bytes > 24 * MIB);
	assert_int_equal(in.actual_bytes, st.actual_pages * TPAGE);
	WAIT_FOR(info(&g).stalled);
	in = info(&g);
	assert_int_equal(in.stall_gap_bytes, 64 * MIB - in.actual_bytes);
	uint64_t reqs = status(&g).inflate_reqs;
	sleep_ms(600);
	assert_int_equal(status(&g).inflate_reqs, reqs); /* no retry storm */
	settle(&g, 16 * MIB);
	assert_int_equal(info(&g).actual_bytes, 16 * MIB);
	assert_false(status(&g).at_floor);
	guest_stop(&g);
}

/* With a full balloon and nothing free, the guest's allocations still succeed: the
 * driver deflates on OOM and does not inflate again until the target changes. */
static void oom_deflates(bool must_tell)
{
	struct guest g;
	guest_config(&g, 128 * MIB);
	if (!must_tell)
		g.cfg.driver.features &= ~(1ull << MV_BALLOON_F_MUST_TELL_HOST);
	guest_start(&g);
	settle(&g, 96 * MIB);
	uint64_t gpa, n = 0;
	while (mvg_sim_free_bytes(g.s)) {
		assert_int_equal(mvg_sim_alloc_page(g.s, &gpa), 0);
		n++;
	}
	for (int i = 0; i < 2048; i++) { /* 8 MiB past empty */
		assert_int_equal(mvg_sim_alloc_page(g.s, &gpa), 0);
		memset(mvg_sim_hva(g.s, gpa), 0x11, TPAGE);
	}
	struct mvg_status st = status(&g);
	assert_int_equal(st.negotiated >> MV_BALLOON_F_MUST_TELL_HOST & 1, must_tell);
	assert_true(st.oom_deflated_pages >= 2048);
	WAIT_FOR(status(&g).at_floor); /* once its deflate requests are acked */
	WAIT_FOR(info(&g).actual_bytes == 96 * MIB - st.oom_deflated_pages * TPAGE);
	uint64_t actual = info(&g).actual_bytes;
	sleep_ms(300);
	assert_int_equal(info(&g).actual_bytes, actual); /* no re-inflate into the OOM */
	assert_int_equal(mvg_sim_settle(g.s, 5 * SEC), 0);
	settle(&g, 32 * MIB);
	assert_int_equal(info(&g).guest_errors, 0);
	guest_stop(&g);
}

static void deflate_on_oom_telling_the_host(void **state)
{
	oom_deflates(true);
}

static void deflate_on_oom_without_telling(void **state)
{
	oom_deflates(false);
}

/* Without DEFLATE_ON_OOM the allocation fails and the guest reports an OOM kill. */
static void oom_without_the_feature_kills(void **state)
{
	struct guest g;
	guest_config(&g, 64 * MIB);
	g.cfg.driver.features &= ~(1ull << MV_BALLOON_F_DEFLATE_ON_OOM);
	guest_start(&g);
	settle(&g, 32 * MIB);
	uint64_t gpa;
	while (mvg_sim_free_bytes(g.s))
		assert_int_equal(mvg_sim_alloc_page(g.s, &gpa), 0);
	assert_int_equal(mvg_sim_alloc_page(g.s, &gpa), -ENOMEM);
	assert_int_equal(info(&g).actual_bytes, 32 * MIB);
	WAIT_FOR(mv_balloon_stats_request(g.b) == 0);
	WAIT_FOR(info(&g).stats_valid >> MV_BSTAT_OOM_KILLS & 1 &&
	         info(&g).stats[MV_BSTAT_OOM_KILLS] == 1);
	guest_stop(&g);
}

static void stats_answer_requests(void **state)
{
	struct guest g;
	guest_config(&g, 64 * MIB);
	guest_start(&g);
	struct mvg_guest_stats st;
	memset(&st, 0xff, sizeof(st));
	st.cache_bytes = 12345 * TPAGE;
	st.major_faults = 7;
	mvg_sim_set_stats(g.s, &st);
	WAIT_FOR(mv_balloon_stats_request(g.b) == 0);
	WAIT_FOR(info(&g).stats[MV_BSTAT_CACHES] == 12345 * TPAGE);
	struct mv_balloon_info in = info(&g);
	assert_int_equal(in.stats[MV_BSTAT_MAJFLT], 7);
	assert_true(in.stats_valid >> MV_BSTAT_MEMFREE & 1);
	assert_true(in.stats_valid >> MV_BSTAT_MEMTOT & 1);
	assert_false(in.stats_valid >> MV_BSTAT_SWAP_IN & 1); /* unknown: left out */
	assert_int_equal(in.stats[MV_BSTAT_MEMTOT], 64 * MIB);
	assert_int_equal(in.stats[MV_BSTAT_AVAIL], in.stats[MV_BSTAT_MEMFREE] + 12345 * TPAGE);
	uint64_t sent = status(&g).stats_sent;
	WAIT_FOR(mv_balloon_stats_request(g.b) == 0);
	WAIT_FOR(status(&g).stats_sent == sent + 1);
	guest_stop(&g);
}

/* Free 2 MiB runs are reported and released; reused afterwards, they work. */
static void free_page_reporting_releases_free_runs(void **state)
{
	struct guest g;
	guest_config(&g, 64 * MIB);
	g.cfg.driver.report_period_ns = 20 * 1000000ull;
	guest_start(&g);
	populate(&g);
	WAIT_FOR(info(&g).reported_bytes >= 56 * MIB);
	WAIT_FOR(resident_bytes(&g) <= 8 * MIB);
	WAIT_FOR(status(&g).reported_runs >= 28);     /* the driver took the acks */
	WAIT_FOR(mvg_sim_free_bytes(g.s) >= 60 * MIB); /* and put the runs back */
	uint64_t gpa;
	assert_int_equal(mvg_sim_alloc_run(g.s, &gpa), 0);
	assert_false(resident(&g, gpa));
	memset(mvg_sim_hva(g.s, gpa), 0x77, RUNB);
	assert_true(resident(&g, gpa));
	mvg_sim_free_run(g.s, gpa);
	WAIT_FOR(!resident(&g, gpa)); /* written after its report, reported again */
	guest_stop(&g);
}

/* Queue numbers are compacted: without STATS and HINT, reporting is queue 2. */
static void queues_are_numbered_compactly(void **state)
{
	struct guest g;
	guest_config(&g, 64 * MIB);
	g.cfg.driver.features = 1ull << MV_BALLOON_F_PAGE_REPORTING;
	g.cfg.driver.report_period_ns = 20 * 1000000ull;
	g.cfg.start_driver = false;
	guest_start(&g);
	struct mvg_balloon *d = mvg_sim_driver(g.s);
	assert_int_equal(mv_balloon_nr_queues(g.b), 3);
	assert_int_equal(d->vq[VQ_REPORT].index, 2);
	assert_int_equal(d->vq[VQ_STATS].num, 0);
	assert_int_equal(mvg_sim_start_driver(g.s), 0);
	populate(&g);
	WAIT_FOR(info(&g).reported_bytes >= 32 * MIB);
	settle(&g, 8 * MIB);
	guest_stop(&g);
}

/* Free page hinting: a page written while hinted keeps its data; the hinted pages left
 * unwritten are released; the driver gives them all back on DONE. Stepped by hand. */
static void free_page_hinting_keeps_racing_writes(void **state)
{
	struct guest g;
	guest_config(&g, 64 * MIB);
	g.cfg.start_driver = false;
	g.cfg.io_thread = false;
	guest_start(&g);
	populate(&g);
	uint64_t total_free = mvg_sim_free_bytes(g.s), top = 64 * MIB;
	assert_int_equal(mv_balloon_hint_start(g.b), 0);
	mvg_sim_step(g.s); /* the command id, then every free page as hints */
	struct mvg_status st = status(&g);
	assert_int_equal((st.hint_held_pages + st.bookkeeping_pages) * TPAGE, total_free);
	assert_int_equal(mvg_sim_free_bytes(g.s), 0);
	/* the guest writes hinted pages before the run ends (as if it had reused them) */
	static uint8_t shadow[8][4096];
	for (int k = 0; k < 8; k++) {
		tu_fill(shadow[k], 1000 + k);
		memcpy(mvg_sim_hva(g.s, top - (k + 1) * 7 * TPAGE), shadow[k], TPAGE);
	}
	for (int i = 0; i < 3; i++)
		mvg_sim_step(g.s); /* STOP: the device completes the run, then acks */
	struct mv_balloon_info in = info(&g);
	if (!in.hint_discarded_bytes) {
		guest_stop(&g);
		TU_SKIP("the device could not track writes to guest RAM here");
	}
	assert_int_equal(status(&g).hint_runs, 1);
	assert_int_equal(in.hinted_bytes, st.hint_held_pages * TPAGE);
	for (int k = 0; k < 8; k++)
		assert_memory_equal(mvg_sim_hva(g.s, top - (k + 1) * 7 * TPAGE), shadow[k], TPAGE);
	assert_false(resident(&g, top - 3 * TPAGE));
	assert_false(resident(&g, 32 * MIB));
	assert_true(resident_bytes(&g) <= 4 * MIB);
	assert_int_equal(status(&g).hint_held_pages, st.hint_held_pages); /* until DONE */
	assert_int_equal(mv_balloon_hint_stop(g.b), 0);
	mvg_sim_step(g.s);
	assert_int_equal(status(&g).hint_held_pages, 0);
	assert_int_equal(mvg_sim_free_bytes(g.s), total_free);
	for (int k = 0; k < 8; k++)
		assert_memory_equal(mvg_sim_hva(g.s, top - (k + 1) * 7 * TPAGE), shadow[k], TPAGE);
	assert_int_equal(info(&g).guest_errors, 0);
	guest_stop(&g);
}

/* PAGE_POISON: poison_val reaches the device before DRIVER_OK, deflated pages hold it. */
static void poisoned_guest_writes_deflated_pages(void **state)
{
	struct guest g;
	guest_config(&g, 64 * MIB);
	g.cfg.driver.features |= 1ull << MV_BALLOON_F_PAGE_POISON;
	g.cfg.driver.poison_val = 0xa5a55a5a;
	guest_start(&g);
	uint32_t v = 0;
	assert_int_equal(mv_balloon_config_read(g.b, 12, &v, 4), 0);
	assert_int_equal(v, 0xa5a55a5a);
	settle(&g, 16 * MIB + TPAGE);
	uint64_t gpa[8];
	settle(&g, 0);
	for (int k = 0; k < 8; k++) { /* the runs just deflated come first */
		assert_int_equal(mvg_sim_alloc_run(g.s, &gpa[k]), 0);
		const uint32_t *w = mvg_sim_hva(g.s, gpa[k]);
		assert_int_equal(w[0], 0xa5a55a5a);
	}
	guest_stop(&g);
}

/* A device that returns bogus used entries: ignored, recorded, nothing breaks. */
static void hostile_used_entries_are_ignored(void **state)
{
	struct guest g;
	guest_config(&g, 64 * MIB);
	g.cfg.start_driver = false;
	g.cfg.io_thread = false;
	guest_start(&g);
	struct mvg_balloon *d = mvg_sim_driver(g.s);
	struct mvg__vq *q = &d->vq[VQ_INFLATE];
	assert_int_equal(mv_balloon_set_target(g.b, 24 * MIB), 0);
	mvg_sim_step(g.s); /* inflate requests; the device acks them inline */
	uint16_t used = q->used[1];
	assert_true((uint16_t)(used - q->last_used) >= 2);
	q->used_ring[q->last_used % q->num].id = 1000;           /* out of range */
	q->used_ring[(q->last_used + 1) % q->num].len = 1u << 30; /* wrote into an out buffer */
	mvg_sim_step(g.s);
	struct mvg_status st = status(&g);
	assert_int_equal(st.error, MVG_ERR_PROTO);
	assert_int_equal(d->busy[VQ_INFLATE], 1); /* that request's ack is lost */
	/* a used index running ahead abandons the queue, nothing else */
	q = &d->vq[VQ_DEFLATE];
	q->used[1] = (uint16_t)(q->used[1] + 100);
	assert_int_equal(mv_balloon_set_target(g.b, 0), 0);
	for (int i = 0; i < 4; i++)
		mvg_sim_step(g.s);
	assert_true(q->broken);
	/* remove gives everything back, the lost request's pages too */
	mvg_balloon_remove(d);
	assert_int_equal(mvg_sim_free_bytes(g.s), g.cfg.ram_bytes);
	guest_stop(&g);
}

/* Removing the driver gives back every page it held: balloon, lists, rings, buffers. */
static void remove_gives_everything_back(void **state)
{
	struct guest g;
	guest_config(&g, 64 * MIB);
	guest_start(&g);
	settle(&g, 40 * MIB + 9 * TPAGE);
	mvg_sim_stop_driver(g.s);
	mvg_balloon_remove(mvg_sim_driver(g.s));
	assert_int_equal(mvg_sim_free_bytes(g.s), 64 * MIB);
	assert_int_equal(mv_balloon_get_status(g.b), 0);
	guest_stop(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(galloc_pages_come_out_lowest_first),
		cmocka_unit_test(galloc_runs_are_whole),
		cmocka_unit_test(galloc_fragmentation),
		cmocka_unit_test(galloc_reported_flags),
		cmocka_unit_test(galloc_threads),
		cmocka_unit_test(inflate_and_deflate_move_memory),
		cmocka_unit_test(fragmented_guest_inflates_sorted_pages),
		cmocka_unit_test(ram_across_the_hole),
		cmocka_unit_test(floor_stops_inflate),
		cmocka_unit_test(deflate_on_oom_telling_the_host),
		cmocka_unit_test(deflate_on_oom_without_telling),
		cmocka_unit_test(oom_without_the_feature_kills),
		cmocka_unit_test(stats_answer_requests),
		cmocka_unit_test(free_page_reporting_releases_free_runs),
		cmocka_unit_test(queues_are_numbered_compactly),
		cmocka_unit_test(free_page_hinting_keeps_racing_writes),
		cmocka_unit_test(poisoned_guest_writes_deflated_pages),
		cmocka_unit_test(hostile_used_entries_are_ignored),
		cmocka_unit_test(remove_gives_everything_back),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
