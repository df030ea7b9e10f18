/* test_workload.c - simulated guests with workloads: profile composition, image content
 * shared across guests, exact verification (and that it catches a lost write), and no
 * lost write while the behaviour thread runs against the balloon and the scanner. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <memvirt/memvirt.h>
#include <memvirt/balloon.h>
#include "workload.h"
#include "testutil.h"

#define MIB (1ull << 20)
#define SEC 1000000000ull

static void sleep_ms(unsigned ms)
{
	nanosleep(&(struct timespec){ .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000l }, NULL);
}

/* Wait (30 s at most) until cond holds; a bound, not a timing assertion. */
#define WAIT_FOR(cond) do { \
	bool ok_ = false; \
	for (int w_ = 0; w_ < 30000 && !(ok_ = (cond)); w_++) \
		sleep_ms(1); \
	if (!ok_) \
		fail_msg("timed out waiting for %s", #cond); \
} while (0)

static struct mvw_guest *guest(struct mv_host *h, const struct mvw_profile *p, const char *name,
                               uint64_t ram, const struct mvg_sim_config *sc)
{
	struct mvw_config c;
	mvw_config_init(&c);
	c.profile = p;
	c.name = name;
	c.ram_bytes = ram;
	c.sim = sc;
	c.tick_ns = 10 * 1000000ull;
	struct mvw_guest *g = NULL;
	int err = mvw_guest_new(h, &c, &g);
	if (err)
		fprintf(stderr, "mvw_guest_new(%s): %s\n", name, mv_strerror(err));
	assert_int_equal(err, 0);
	return g;
}

static const struct mvw_profile *profile(const char *name)
{
	const struct mvw_profile *p = mvw_profile_find(name);
	assert_non_null(p);
	return p;
}

static struct mvw_stats stats(struct mvw_guest *g)
{
	struct mvw_stats st;
	mvw_stats(g, &st);
	return st;
}

static void assert_verified(struct mvw_guest *g)
{
	uint64_t bad = 99;
	uint64_t n = mvw_verify(g, &bad);
	assert_true(n > 0);
	assert_int_equal(bad, 0);
}

static void *page_at(struct mvw_guest *g, uint64_t gpa)
{
	void *p = mvg_sim_hva(mvw_sim(g), gpa);
	assert_non_null(p);
	return p;
}

static bool is_zero(const void *page)
{
	const uint64_t *w = page;
	for (size_t i = 0; i < TPAGE / 8; i++)
		if (w[i])
			return false;
	return true;
}

/* Every guest-physical page, in order: n = number of pages, gpa_of(i). */
struct ram_walk {
	void *hva[2];
	uint64_t gpa[2], bytes[2];
	unsigned n;
};

static uint64_t ram_pages(struct mvw_guest *g, struct ram_walk *w)
{
	w->n = mvg_sim_ram(mvw_sim(g), w->hva, w->gpa, w->bytes, 2);
	return (w->bytes[0] + (w->n > 1 ? w->bytes[1] : 0)) / TPAGE;
}

static uint64_t gpa_of(const struct ram_walk *w, uint64_t i)
{
	uint64_t first = w->bytes[0] / TPAGE;
	return i < first ? w->gpa[0] + i * TPAGE : w->gpa[1] + (i - first) * TPAGE;
}

/* ---- composition ---- */

static void within(uint64_t pages, uint64_t ram, unsigned permille, unsigned tol)
{
	uint64_t got = pages * 1000 / ram;
	if (got + tol < permille || got > permille + tol)
		fail_msg("%lu pages = %lu per mille of RAM, want %u +- %u", (unsigned long)pages,
		         (unsigned long)got, permille, tol);
}

static void check_composition(struct mv_host *h, const char *name)
{
	const struct mvw_profile *p = profile(name);
	struct mvw_guest *g = guest(h, p, name, 64 * MIB, NULL);
	struct mvw_stats st = stats(g);
	uint64_t N = st.ram_pages;
	assert_int_equal(N, 64 * MIB / TPAGE);
	unsigned anon = p->anon, zero = p->zero, d = p->snapshot ? p->dirty_permille : 0;
	within(st.role_pages[MVW_KERNEL], N, p->kernel, 2);
	within(st.role_pages[MVW_LIB], N, p->lib, 2);
	within(st.role_pages[MVW_CACHE], N, p->cache, 2);
	within(st.role_pages[MVW_ANON] + st.role_pages[MVW_ZERO], N, anon + zero, 2);
	if (!d) {
		within(st.role_pages[MVW_ANON], N, anon, 2);
		within(st.role_pages[MVW_ZERO], N, zero, 2);
	}
	within(st.stale_pages, N, p->stale, 2);
	within(st.free_pages, N, 1000 - p->kernel - p->lib - p->cache - anon - zero, 5);
	/* free pages: the stale ones hold data, the rest were never touched */
	struct ram_walk w;
	uint64_t unheld_data = 0, unheld_zero = 0, image = 0;
	for (uint64_t i = 0; i < ram_pages(g, &w); i++) {
		struct mvw_page pg;
		if (mvw_page_info(g, gpa_of(&w, i), &pg)) {
			if (is_zero(page_at(g, gpa_of(&w, i))))
				unheld_zero++;
			else
				unheld_data++;
		} else {
			image += pg.image;
		}
	}
	assert_true(unheld_data >= st.stale_pages);
	assert_true(unheld_data <= st.stale_pages + 128); /* + the driver's rings and lists */
	within(unheld_zero, N, 1000 - p->kernel - p->lib - p->cache - anon - zero - p->stale, 5);
	if (d) /* clones: what was not dirtied is the image's */
		within(image, N, p->kernel + p->lib + p->cache + anon + zero - d, 2);
	assert_verified(g);
	mvw_guest_free(g);
}

static void profiles_have_their_composition(void **state)
{
	struct mv_host *h = tu_host();
	for (unsigned i = 0; mvw_profile_at(i); i++)
		check_composition(h, mvw_profile_at(i)->name);
	assert_null(mvw_profile_find("nope"));
	mv_host_free(h);
}

static void bad_configs_are_refused(void **state)
{
	struct mv_host *h = tu_host();
	struct mvw_config c;
	struct mvw_guest *g = NULL;
	mvw_config_init(&c);
	c.name = "x";
	assert_int_equal(mvw_guest_new(h, &c, &g), -EINVAL); /* no profile */
	c.profile = profile("idle");
	c.ram_bytes = 8 * MIB;
	assert_int_equal(mvw_guest_new(h, &c, &g), -EINVAL); /* too small */
	c.ram_bytes = 0;
	c.scale = 1.0 / 64;
	assert_int_equal(mvw_guest_new(h, &c, &g), 0); /* 16 MiB by scale */
	assert_int_equal(stats(g).ram_pages, 16 * MIB / TPAGE);
	mvw_guest_free(g);
	mv_host_free(h);
}

/* ---- image content across guests ---- */

static void image_pages_are_identical_across_guests(void **state)
{
	struct mv_host *h = tu_host();
	const struct mvw_profile *p = profile("idle");
	struct mvw_guest *a = guest(h, p, "idle-a", 64 * MIB, NULL);
	struct mvw_guest *b = guest(h, p, "idle-b", 64 * MIB, NULL);
	/* the kernel: same addresses, same bytes */
	uint64_t ga, gb, n = 0;
	for (; !mvw_find_page(a, MVW_KERNEL, n, &ga); n++) {
		assert_int_equal(mvw_find_page(b, MVW_KERNEL, n, &gb), 0);
		assert_int_equal(ga, gb);
		assert_memory_equal(page_at(a, ga), page_at(b, gb), TPAGE);
	}
	assert_int_equal(n, stats(a).role_pages[MVW_KERNEL]);
	/* libraries: the same content at addresses of each guest's own */
	struct ram_walk w;
	uint64_t N = ram_pages(b, &w), nlib = stats(a).role_pages[MVW_LIB];
	uint64_t *where_b = calloc(nlib, sizeof(*where_b));
	assert_non_null(where_b);
	for (uint64_t i = 0; i < N; i++) {
		struct mvw_page pg;
		if (!mvw_page_info(b, gpa_of(&w, i), &pg) && pg.role == MVW_LIB)
			where_b[pg.seed] = gpa_of(&w, i) + 1;
	}
	uint64_t moved = 0, anon_same = 0;
	for (n = 0; !mvw_find_page(a, MVW_LIB, n, &ga); n++) {
		struct mvw_page pg;
		assert_int_equal(mvw_page_info(a, ga, &pg), 0);
		assert_true(pg.image);
		assert_true(where_b[pg.seed] != 0);
		gb = where_b[pg.seed] - 1;
		assert_memory_equal(page_at(a, ga), page_at(b, gb), TPAGE);
		moved += ga != gb;
	}
	assert_int_equal(n, nlib);
	assert_true(moved > nlib * 9 / 10);
	/* private data is the guest's own */
	for (n = 0; !mvw_find_page(a, MVW_ANON, n, &ga); n++) {
		assert_int_equal(mvw_find_page(b, MVW_ANON, n, &gb), 0);
		anon_same += !memcmp(page_at(a, ga), page_at(b, gb), TPAGE);
	}
	assert_int_equal(anon_same, 0);
	free(where_b);
	mvw_guest_free(a);
	mvw_guest_free(b);
	mv_host_free(h);
}

/* Clones: same page, same address, unless one of them dirtied it. */
static void clones_differ_only_where_dirtied(void **state)
{
	struct mv_host *h = tu_host();
	const struct mvw_profile *p = profile("clones");
	struct mvw_guest *a = guest(h, p, "clone-a", 64 * MIB, NULL);
	struct mvw_guest *b = guest(h, p, "clone-b", 64 * MIB, NULL);
	struct ram_walk w;
	uint64_t N = ram_pages(a, &w), same = 0, dirty_a = 0;
	for (uint64_t i = 0; i < N; i++) {
		struct mvw_page pa, pb;
		uint64_t gpa = gpa_of(&w, i);
		int ea = mvw_page_info(a, gpa, &pa), eb = mvw_page_info(b, gpa, &pb);
		assert_int_equal(ea, eb); /* one layout */
		if (ea)
			continue;
		dirty_a += !pa.image;
		if (pa.image && pb.image) {
			assert_memory_equal(page_at(a, gpa), page_at(b, gpa), TPAGE);
			same++;
		} else {
			assert_memory_not_equal(page_at(a, gpa), page_at(b, gpa), TPAGE);
		}
	}
	within(dirty_a, N, p->dirty_permille, 2);
	assert_true(same > N / 4);
	mvw_guest_free(a);
	mvw_guest_free(b);
	mv_host_free(h);
}

/* ---- verification ---- */

static void verify_catches_a_lost_write(void **state)
{
	struct mv_host *h = tu_host();
	struct mvg_sim_config sc;
	mvg_sim_config_init(&sc);
	sc.split_at = 32 * MIB; /* RAM in two regions, the second at 4 GiB */
	struct mvw_guest *g = guest(h, profile("web"), "web", 64 * MIB, &sc);
	assert_verified(g);
	uint64_t gpa, bad;
	/* one byte behind the workload's back, in a kernel page */
	assert_int_equal(mvw_find_page(g, MVW_KERNEL, 3, &gpa), 0);
	uint8_t *p = page_at(g, gpa);
	p[1234] ^= 0x20;
	mvw_verify(g, &bad);
	assert_int_equal(bad, 1);
	p[1234] ^= 0x20;
	mvw_verify(g, &bad);
	assert_int_equal(bad, 0);
	/* a zero page that is not zero any more */
	assert_int_equal(mvw_find_page(g, MVW_ZERO, 0, &gpa), 0);
	((uint8_t *)page_at(g, gpa))[4095] = 1;
	mvw_verify(g, &bad);
	assert_int_equal(bad, 1);
	((uint8_t *)page_at(g, gpa))[4095] = 0;
	/* a private page above the hole dropped by the host (reads back as zero) */
	uint64_t n = 0;
	while (!mvw_find_page(g, MVW_ANON, n, &gpa) && gpa < 4ull << 30)
		n++;
	assert_true(gpa >= 4ull << 30);
	static uint8_t want[4096];
	assert_int_equal(mvw_expected(g, gpa, want), 0);
	assert_memory_equal(page_at(g, gpa), want, TPAGE);
	assert_int_equal(madvise(page_at(g, gpa), TPAGE, MADV_DONTNEED), 0);
	mvw_verify(g, &bad);
	assert_int_equal(bad, 1);
	memcpy(page_at(g, gpa), want, TPAGE);
	assert_verified(g);
	mvw_guest_free(g);
	mv_host_free(h);
}

/* web with bursts every ~50 ms, held 50 ms: plenty of allocation in a short test. */
static struct mvw_profile busy_web(void)
{
	struct mvw_profile p = *profile("web");
	p.burst_interval_ms = 50;
	p.burst_hold_ms = 50;
	p.churn_permille = 200;
	return p;
}

static void running_guest_keeps_every_write(void **state)
{
	struct mv_host *h = tu_host();
	struct mvw_profile web = busy_web();
	struct mvw_guest *g = guest(h, &web, "web", 64 * MIB, NULL);
	assert_int_equal(mvw_start(g), 0);
	assert_int_equal(mvw_start(g), 0); /* idempotent */
	WAIT_FOR(stats(g).churn_writes > 2000 && stats(g).bursts >= 3);
	for (int i = 0; i < 3; i++)
		assert_verified(g); /* while it runs */
	mvw_stop(g);
	mvw_stop(g);
	struct mvw_stats st = stats(g);
	assert_verified(g);
	assert_true(st.burst_writes > 0);
	assert_int_equal(st.ooms, 0);
	assert_int_equal(st.held_pages, stats(g).held_pages);
	/* restarted, it goes on */
	assert_int_equal(mvw_start(g), 0);
	WAIT_FOR(stats(g).churn_writes > st.churn_writes + 500);
	mvw_guest_free(g); /* stops the thread itself */
	mv_host_free(h);
}

/* ---- with the balloon ---- */

static struct mv_balloon_info binfo(struct mvw_guest *g)
{
	struct mv_balloon_info in;
	assert_int_equal(mv_balloon_info(mvg_sim_balloon(mvw_sim(g)), &in), 0);
	return in;
}

static void balloon_under_a_running_guest(void **state)
{
	struct mv_host *h = tu_host();
	struct mvw_profile web = busy_web();
	struct mvw_guest *g = guest(h, &web, "web", 64 * MIB, NULL);
	struct mvg_sim *s = mvw_sim(g);
	struct mv_balloon *b = mvg_sim_balloon(s);
	assert_int_equal(mvw_start(g), 0);
	/* within free memory */
	assert_int_equal(mv_balloon_set_target(b, 12 * MIB), 0);
	assert_int_equal(mvg_sim_settle(s, 30 * SEC), 0);
	assert_int_equal(binfo(g).actual_bytes, 12 * MIB);
	assert_verified(g);
	/* beyond free + cache: the guest drops its cache, bursts run out of memory, the
	 * driver deflates on OOM */
	assert_int_equal(mv_balloon_set_target(b, 40 * MIB), 0);
	uint64_t cache = stats(g).role_pages[MVW_CACHE];
	WAIT_FOR(stats(g).reclaimed_pages >= cache && stats(g).alloc_stalls > 0);
	assert_verified(g);
	/* the guest tells the host what its cache is */
	WAIT_FOR(mv_balloon_stats_request(b) == 0);
	WAIT_FOR(binfo(g).stats_valid >> MV_BSTAT_CACHES & 1 && binfo(g).stats_valid >> MV_BSTAT_ALLOC_STALLS & 1);
	/* all the way back: the cache is read back in */
	assert_int_equal(mv_balloon_set_target(b, 0), 0);
	assert_int_equal(mvg_sim_settle(s, 30 * SEC), 0);
	WAIT_FOR(stats(g).refilled_pages > 0);
	assert_verified(g);
	mvw_stop(g);
	assert_verified(g);
	assert_int_equal(binfo(g).guest_errors, 0);
	mvw_guest_free(g);
	mv_host_free(h);
}

/* Bursts bigger than memory: OOMs are counted, bursts dropped, nothing else breaks. */
static void guest_survives_oom(void **state)
{
	struct mv_host *h = tu_host();
	struct mvw_profile p = busy_web();
	p.burst_permille = 500;
	struct mvw_guest *g = guest(h, &p, "greedy", 32 * MIB, NULL);
	assert_int_equal(mvw_start(g), 0);
	WAIT_FOR(stats(g).bursts_dropped >= 2);
	struct mvw_stats st = stats(g);
	assert_true(st.ooms >= 2);
	assert_true(st.alloc_stalls > 0);
	assert_true(st.reclaimed_pages > 0);
	assert_verified(g);
	WAIT_FOR(stats(g).churn_writes > st.churn_writes + 100); /* still running */
	mvw_stop(g);
	assert_verified(g);
	struct mv_balloon *b = mvg_sim_balloon(mvw_sim(g));
	WAIT_FOR(mv_balloon_stats_request(b) == 0);
	WAIT_FOR(binfo(g).stats[MV_BSTAT_OOM_KILLS] >= 2);
	mvw_guest_free(g);
	mv_host_free(h);
}

/* ---- with the scanner ---- */

static uint64_t merged(struct mvw_guest *g)
{
	struct mv_scan_stats st;
	assert_int_equal(mv_vm_stats(mvg_sim_vm(mvw_sim(g)), &st), 0);
	return st.pages_merged;
}

static uint64_t zero_released(struct mvw_guest *g)
{
	struct mv_scan_stats st;
	assert_int_equal(mv_vm_stats(mvg_sim_vm(mvw_sim(g)), &st), 0);
	return st.pages_zero;
}

/* Idle guests and clones of one image share most of their pages; web guests and clones
 * keep writing (clones into pages they share, so every write is a COW break). */
static void scanner_merges_running_guests(void **state)
{
	struct mv_host *h = tu_host();
	const struct mvw_profile *idle = profile("idle");
	struct mvw_profile web = busy_web(), clones = *profile("clones");
	clones.ws_permille = clones.churn_permille = 200;
	struct mvw_guest *g[6] = { /* small: the index frees its nodes slowly under TSan */
		guest(h, idle, "idle-0", 32 * MIB, NULL), guest(h, idle, "idle-1", 32 * MIB, NULL),
		guest(h, &web, "web-0", 32 * MIB, NULL), guest(h, &web, "web-1", 32 * MIB, NULL),
		guest(h, &clones, "clone-0", 32 * MIB, NULL), guest(h, &clones, "clone-1", 32 * MIB, NULL),
	};
	for (int k = 0; k < 6; k++)
		assert_int_equal(mvw_start(g[k]), 0);
	assert_int_equal(mv_host_scan(h, 4), 0); /* in this thread, the guests running */
	for (int k = 0; k < 6; k++)
		assert_verified(g[k]);
	assert_true(merged(g[0]) > 0);
	assert_true(merged(g[1]) > 0);
	assert_true(merged(g[4]) > 0);
	assert_true(zero_released(g[0]) > 0);
	/* the kernel image is one copy for both idle guests */
	uint64_t gpa, same = 0, n = 0;
	for (; !mvw_find_page(g[0], MVW_KERNEL, n, &gpa); n++)
		same += tu_pfn(page_at(g[0], gpa)) == tu_pfn(page_at(g[1], gpa));
	assert_true(same > n / 2);
	/* the background workers, the guests running and a balloon moving */
	assert_int_equal(mv_host_start(h), 0);
	assert_int_equal(mv_balloon_set_target(mvg_sim_balloon(mvw_sim(g[2])), 4 * MIB), 0);
	struct mv_scan_stats before, now;
	assert_int_equal(mv_host_stats(h, &before), 0);
	WAIT_FOR(mv_host_stats(h, &now) == 0 && now.full_scans >= before.full_scans + 2 &&
	         now.cow_breaks > before.cow_breaks);
	for (int k = 0; k < 6; k++)
		assert_verified(g[k]);
	assert_int_equal(mv_host_stop(h), 0);
	for (int k = 0; k < 6; k++) {
		mvw_stop(g[k]);
		assert_verified(g[k]);
		mvw_guest_free(g[k]);
	}
	mv_host_free(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(profiles_have_their_composition),
		cmocka_unit_test(bad_configs_are_refused),
		cmocka_unit_test(image_pages_are_identical_across_guests),
		cmocka_unit_test(clones_differ_only_where_dirtied),
		cmocka_unit_test(verify_catches_a_lost_write),
		cmocka_unit_test(running_guest_keeps_every_write),
		cmocka_unit_test(balloon_under_a_running_guest),
		cmocka_unit_test(guest_survives_oom),
		cmocka_unit_test(scanner_merges_running_guests),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
