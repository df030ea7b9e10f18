/* test_driver_vhost_user.c - memvirt's guest driver against memvirt's balloon device over
 * vhost-user: the simulated guest's MMIO goes through the hosted port's bridge to the
 * server `memvirt balloon-backend` runs, in a thread of this process.
 *
 * Outcomes are read on both sides: the device's counters (vu_serve_info), host memory
 * held by the guest's memfd (st_blocks), the driver's status, and guest pages the test
 * wrote. Every wait is bounded; none asserts on how long anything took.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <memvirt/memvirt.h>
#include <memvirt/balloon.h>
#include "hosted/sim.h"
#include "drv.h"
#include "testutil.h"
#include "vu_serve.h"
#include "workload.h"

#define MIB   (1ull << 20)
#define GIB   (1ull << 30)
#define SEC   1000000000ull
#define F(b)  (1ull << (b))
#define NKEEP 64 /* guest pages the "workload" keeps, with known content */

struct fx {
	char dir[64], sock[96];
	struct mv_host *h;
	struct vu_serve *srv;
	FILE *log;
	pthread_t th;
	int stop;
	bool serving;             /* the server's loop runs */
	struct mvg_sim *s;
	struct mvg_sim_config cfg;
	long fds_base, maps_base; /* before anything: descriptors, memfd mappings */
	long fds0, maps0;         /* before the guest */
	uint64_t keep[NKEEP];
};

static void sleep_ms(unsigned ms)
{
	nanosleep(&(struct timespec){ .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000l }, NULL);
}

/* Wait (20 s at most) until cond holds. */
#define WAIT_FOR(cond) do { \
	bool ok_ = false; \
	for (int w_ = 0; w_ < 20000 && !(ok_ = (cond)); w_++) \
		sleep_ms(1); \
	if (!ok_) \
		fail_msg("timed out waiting for %s", #cond); \
} while (0)

static void list_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	for (struct dirent *e; (e = readdir(d));) {
		char p[300], t[256] = "";
		snprintf(p, sizeof(p), "/proc/self/fd/%s", e->d_name);
		ssize_t n = readlink(p, t, sizeof(t) - 1);
		if (n > 0)
			t[n] = 0;
		fprintf(stderr, "  fd %s -> %s\n", e->d_name, t);
	}
	closedir(d);
}

/* ---- the backend: vu_serve in a thread ---- */

static void *serve_thread(void *arg)
{
	struct fx *f = arg;
	vu_serve_run(f->srv, f->stop);
	return NULL;
}

static void serve_start(struct fx *f)
{
	f->fds_base = tu_open_fds();
	f->maps_base = tu_memfd_mappings();
	snprintf(f->dir, sizeof(f->dir), "/tmp/mv-vub-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->sock, sizeof(f->sock), "%s/balloon.sock", f->dir);
	f->h = tu_host();
	f->log = fopen("/dev/null", "w");
	assert_non_null(f->log);
	struct vu_serve_opts o = { .socket = f->sock, .log = f->log };
	assert_int_equal(vu_serve_new(f->h, &o, &f->srv), 0);
	f->stop = eventfd(0, EFD_CLOEXEC);
	assert_true(f->stop >= 0);
	assert_int_equal(pthread_create(&f->th, NULL, serve_thread, f), 0);
	f->serving = true;
}

/* The server's loop ends; its connections stay open, answered by no one. */
static void serve_pause(struct fx *f)
{
	if (!f->serving)
		return;
	uint64_t one = 1;
	assert_int_equal(write(f->stop, &one, 8), 8);
	pthread_join(f->th, NULL);
	f->serving = false;
}

/* The backend goes away: every connection closed, the socket file removed. */
static void serve_kill(struct fx *f)
{
	serve_pause(f);
	if (f->srv)
		vu_serve_free(f->srv);
	f->srv = NULL;
}

static unsigned ended_conns(struct fx *f)
{
	unsigned ended, live;
	vu_serve_counts(f->srv, &ended, &live);
	return ended;
}

static struct mv_balloon_info info(struct fx *f)
{
	struct mv_balloon_info bi;
	assert_int_equal(vu_serve_info(f->srv, 0, &bi, NULL), 0);
	return bi;
}

static struct mv_vhost_user_info vinfo(struct fx *f)
{
	struct mv_vhost_user_info vi;
	assert_int_equal(vu_serve_info(f->srv, 0, NULL, &vi), 0);
	return vi;
}

/* ---- the guest ---- */

static void guest_config(struct fx *f, uint64_t ram)
{
	mvg_sim_config_init(&f->cfg);
	f->cfg.name = "vhost-user-guest";
	f->cfg.ram_bytes = ram;
	f->cfg.vhost_user_socket = f->sock;
}

static void guest_start(struct fx *f)
{
	f->fds0 = tu_open_fds();
	f->maps0 = tu_memfd_mappings();
	int err = mvg_sim_new(NULL, &f->cfg, &f->s);
	if (err)
		fprintf(stderr, "mvg_sim_new: %s\n", mv_strerror(err));
	assert_int_equal(err, 0);
	assert_null(mvg_sim_balloon(f->s));
	assert_true(mvg_sim_ram_fd(f->s) >= 0);
}

static struct mvg_status status(struct fx *f)
{
	struct mvg_status st;
	mvg_sim_driver_status(f->s, &st);
	return st;
}

static struct mvg_sim_transport_info tinfo(struct fx *f)
{
	struct mvg_sim_transport_info ti;
	mvg_sim_transport_info(f->s, &ti);
	return ti;
}

static uint64_t file_bytes(struct fx *f)
{
	struct stat st;
	assert_int_equal(fstat(mvg_sim_ram_fd(f->s), &st), 0);
	return (uint64_t)st.st_blocks * 512;
}

/* Free the guest: nothing of the connection may stay open or mapped, on either side,
 * once a live backend has seen the end. Then the backend: nothing of the test is left. */
static void guest_stop(struct fx *f)
{
	mvg_sim_free(f->s); /* NULL: freed by its owner already */
	f->s = NULL;
	if (f->serving) {
		WAIT_FOR(ended_conns(f) == 1); /* counted once all of it is closed */
		if (tu_open_fds() != f->fds0)
			list_fds();
		assert_int_equal(tu_open_fds(), f->fds0);
		assert_int_equal(tu_memfd_mappings(), f->maps0);
	}
	serve_kill(f); /* a paused server still holds its end */
	close(f->stop);
	fclose(f->log);
	mv_host_free(f->h);
	rmdir(f->dir);
	assert_int_equal(tu_open_fds(), f->fds_base);
	assert_int_equal(tu_memfd_mappings(), f->maps_base);
}

/* As a guest workload: take every free page, write it, give it back (host memory behind
 * every free page), keeping NKEEP of them with content of their own. */
static void populate(struct fx *f)
{
	size_t cap = f->cfg.ram_bytes / TPAGE, n = 0;
	uint64_t *held = malloc(cap * sizeof(*held)), gpa;
	assert_non_null(held);
	while (mvg_sim_free_bytes(f->s) && !mvg_sim_alloc_page(f->s, &gpa)) {
		memset(mvg_sim_hva(f->s, gpa), 0x5a, TPAGE);
		held[n++] = gpa;
	}
	assert_true(n > 2 * NKEEP);
	for (unsigned k = 0; k < NKEEP; k++) { /* spread over RAM */
		f->keep[k] = held[(n - 1) * k / NKEEP];
		tu_fill(mvg_sim_hva(f->s, f->keep[k]), 100 + k);
	}
	for (size_t i = 0; i < n; i++) {
		bool kept = false;
		for (unsigned k = 0; k < NKEEP && !kept; k++)
			kept = held[i] == f->keep[k];
		if (!kept)
			mvg_sim_free_page(f->s, held[i]);
	}
	free(held);
}

static void kept_pages_intact(struct fx *f)
{
	uint8_t want[TPAGE];
	for (unsigned k = 0; k < NKEEP; k++) {
		tu_fill(want, 100 + k);
		assert_memory_equal(mvg_sim_hva(f->s, f->keep[k]), want, TPAGE);
	}
}

static void release_kept(struct fx *f)
{
	for (unsigned k = 0; k < NKEEP; k++)
		mvg_sim_free_page(f->s, f->keep[k]);
}

static void settle(struct fx *f, uint64_t target)
{
	assert_int_equal(vu_serve_target(f->srv, 0, target), 0);
	assert_int_equal(mvg_sim_settle(f->s, 20 * SEC), 0);
	assert_int_equal(info(f).actual_bytes, target);
}

/* ---- the tests ---- */

/* The handshake as virtio_uml's, the rings running on the backend, config interrupts
 * from the backend channel; inflate gives host memory back through the memfd, deflate
 * returns every page, the workload's pages keep their content. */
static void inflate_deflate_over_vhost_user(void **state)
{
	struct fx f = { 0 };
	serve_start(&f);
	guest_config(&f, 256 * MIB);
	guest_start(&f);
	struct mv_vhost_user_info vi = vinfo(&f);
	assert_true(vi.running);
	assert_int_equal(vi.regions, 1);
	assert_int_equal(vi.ram_bytes, 256 * MIB);
	struct mvg_sim_transport_info ti = tinfo(&f);
	assert_int_equal(ti.error, 0);
	assert_int_equal(ti.refused, 0);
	assert_int_equal(ti.protocol_features, vi.protocol_features);
	assert_int_equal(status(&f).error, 0);

	populate(&f);
	uint64_t free0 = mvg_sim_free_bytes(f.s), file0 = file_bytes(&f);
	assert_true(file0 >= 250 * MIB);
	const uint64_t target = 100 * MIB + 3 * TPAGE; /* runs, and single pages after */
	settle(&f, target);
	struct mv_balloon_info bi = info(&f);
	assert_int_equal(bi.held_bytes, target);
	assert_int_equal(bi.guest_errors, 0);
	struct mvg_status st = status(&f);
	assert_int_equal(st.actual_pages * TPAGE, target);
	assert_int_equal(st.ballooned_runs, 50);
	assert_int_equal(st.ballooned_pages, 3);
	assert_true(free0 - mvg_sim_free_bytes(f.s) >= target);
	WAIT_FOR(info(&f).released_bytes >= target); /* the release thread's work */
	/* the host got it back, give or take request buffers written for the first time */
	assert_true(file_bytes(&f) <= file0 - target + 64 * TPAGE);
	assert_true(tinfo(&f).config_irqs >= 1); /* the target arrived as a config change */
	assert_true(tinfo(&f).ring_irqs >= 1);
	kept_pages_intact(&f);

	settle(&f, 40 * MIB);
	assert_int_equal(info(&f).held_bytes, 40 * MIB);
	settle(&f, 0);
	assert_int_equal(info(&f).held_bytes, 0);
	assert_int_equal(mvg_sim_free_bytes(f.s), free0);
	st = status(&f);
	assert_int_equal(st.ballooned_runs + st.ballooned_pages, 0);
	assert_int_equal(st.error, 0);
	kept_pages_intact(&f);
	/* pages given back are usable: write them all again */
	populate(&f);
	kept_pages_intact(&f);
	assert_int_equal(info(&f).guest_errors, 0);
	assert_int_equal(tinfo(&f).error, 0);
	assert_int_equal(tinfo(&f).refused, 0);
	release_kept(&f);
	guest_stop(&f);
}

/* RAM across the x86 hole: two regions of one memfd in the memory table, both ballooned. */
static void two_regions_across_the_hole(void **state)
{
	struct fx f = { 0 };
	serve_start(&f);
	guest_config(&f, 64 * MIB);
	f.cfg.split_at = 16 * MIB;
	guest_start(&f);
	assert_int_equal(vinfo(&f).regions, 2);
	populate(&f);
	uint64_t file0 = file_bytes(&f);
	settle(&f, 56 * MIB);
	WAIT_FOR(info(&f).released_bytes >= 56 * MIB);
	assert_true(file_bytes(&f) <= file0 - 56 * MIB + 64 * TPAGE);
	assert_int_equal(info(&f).guest_errors, 0);
	kept_pages_intact(&f);
	settle(&f, 0);
	kept_pages_intact(&f);
	release_kept(&f);
	guest_stop(&f);
}

/* The device asks for statistics; the driver's answer reaches it over the rings. */
static void stats_reach_the_backend(void **state)
{
	struct fx f = { 0 };
	serve_start(&f);
	guest_config(&f, 64 * MIB);
	guest_start(&f);
	struct mvg_guest_stats gs;
	memset(&gs, 0xff, sizeof(gs));
	gs.cache_bytes = 12345 * TPAGE;
	gs.major_faults = 7;
	mvg_sim_set_stats(f.s, &gs);
	WAIT_FOR(vu_serve_stats_request(f.srv, 0) == 0);
	WAIT_FOR(info(&f).stats_valid >> MV_BSTAT_CACHES & 1 &&
	         info(&f).stats[MV_BSTAT_CACHES] == 12345 * TPAGE);
	struct mv_balloon_info bi = info(&f);
	assert_int_equal(bi.stats[MV_BSTAT_MAJFLT], 7);
	assert_true(bi.stats_valid >> MV_BSTAT_MEMFREE & 1);
	assert_int_equal(bi.stats[MV_BSTAT_MEMTOT], 64 * MIB);
	uint64_t sent = status(&f).stats_sent;
	WAIT_FOR(vu_serve_stats_request(f.srv, 0) == 0);
	WAIT_FOR(status(&f).stats_sent == sent + 1);
	guest_stop(&f);
}

/* Free 2 MiB runs are reported and their host memory released through the memfd. */
static void free_page_reporting_releases(void **state)
{
	struct fx f = { 0 };
	serve_start(&f);
	guest_config(&f, 64 * MIB);
	f.cfg.driver.report_period_ns = 20 * 1000000ull;
	guest_start(&f);
	populate(&f);
	release_kept(&f);
	WAIT_FOR(info(&f).reported_bytes >= 56 * MIB);
	WAIT_FOR(file_bytes(&f) <= 8 * MIB);
	WAIT_FOR(status(&f).reported_runs >= 28);
	WAIT_FOR(mvg_sim_free_bytes(f.s) >= 60 * MIB);
	uint64_t gpa;
	assert_int_equal(mvg_sim_alloc_run(f.s, &gpa), 0); /* reused after its report: works */
	memset(mvg_sim_hva(f.s, gpa), 0x77, 2 * MIB);
	assert_int_equal(((uint8_t *)mvg_sim_hva(f.s, gpa))[2 * MIB - 1], 0x77);
	mvg_sim_free_run(f.s, gpa);
	assert_int_equal(info(&f).guest_errors, 0);
	guest_stop(&f);
}

/* A full balloon and nothing free: the guest's allocations deflate on OOM, telling the
 * host and waiting for its acks over vhost-user. */
static void deflate_on_oom(void **state)
{
	struct fx f = { 0 };
	serve_start(&f);
	guest_config(&f, 128 * MIB);
	guest_start(&f);
	settle(&f, 96 * MIB);
	uint64_t gpa;
	while (mvg_sim_free_bytes(f.s))
		assert_int_equal(mvg_sim_alloc_page(f.s, &gpa), 0);
	for (int i = 0; i < 2048; i++) {
		assert_int_equal(mvg_sim_alloc_page(f.s, &gpa), 0);
		memset(mvg_sim_hva(f.s, gpa), 0x11, TPAGE);
	}
	assert_true(status(&f).oom_deflated_pages >= 2048);
	WAIT_FOR(info(&f).actual_bytes <= 96 * MIB - 2048 * TPAGE);
	assert_int_equal(info(&f).guest_errors, 0);
	assert_int_equal(tinfo(&f).error, 0);
	guest_stop(&f);
}

static void workload_verified(struct mvw_guest *g)
{
	uint64_t bad = 99, n = mvw_verify(g, &bad);
	assert_true(n > 0);
	assert_int_equal(bad, 0);
}

/* A running "web" guest (page cache, private data that churns, allocation bursts) over
 * vhost-user: inflating within free memory, then beyond it (the guest drops its cache,
 * bursts stall, the driver deflates on OOM), then back; every page the workload holds
 * keeps the content it last wrote. */
static void running_workload_keeps_every_write(void **state)
{
	struct fx f = { 0 };
	serve_start(&f);
	guest_config(&f, 64 * MIB);
	struct mvw_profile web = *mvw_profile_find("web");
	web.burst_permille = 40;
	web.burst_interval_ms = 50;
	web.burst_hold_ms = 50;
	struct mvw_config wc;
	mvw_config_init(&wc);
	wc.profile = &web;
	wc.name = "web";
	wc.ram_bytes = 64 * MIB;
	wc.sim = &f.cfg;
	f.fds0 = tu_open_fds();
	f.maps0 = tu_memfd_mappings();
	struct mvw_guest *g = NULL;
	assert_int_equal(mvw_guest_new(f.h, &wc, &g), 0);
	struct mvg_sim *s = mvw_sim(g);
	assert_int_equal(mvw_start(g), 0);
	assert_int_equal(vu_serve_target(f.srv, 0, 12 * MIB), 0);
	assert_int_equal(mvg_sim_settle(s, 30 * SEC), 0);
	assert_int_equal(info(&f).actual_bytes, 12 * MIB);
	workload_verified(g);
	struct mvw_stats st;
	mvw_stats(g, &st);
	uint64_t cache = st.role_pages[MVW_CACHE];
	assert_int_equal(vu_serve_target(f.srv, 0, 40 * MIB), 0);
	WAIT_FOR((mvw_stats(g, &st), st.reclaimed_pages >= cache && st.alloc_stalls > 0));
	workload_verified(g);
	assert_int_equal(vu_serve_target(f.srv, 0, 0), 0);
	assert_int_equal(mvg_sim_settle(s, 30 * SEC), 0);
	workload_verified(g);
	mvw_stop(g);
	workload_verified(g);
	assert_int_equal(info(&f).guest_errors, 0);
	struct mvg_sim_transport_info ti;
	mvg_sim_transport_info(s, &ti);
	assert_int_equal(ti.error, 0);
	mvw_guest_free(g);
	guest_stop(&f); /* the sim is gone already: the checks */
}

/* Free page hinting over vhost-user: the driver hints every free page and gets them all
 * back at DONE; the backend acknowledges and releases nothing of shared memory, so the
 * workload's pages and the memfd's blocks stay as they were. */
static void free_page_hints_round_trip(void **state)
{
	struct fx f = { 0 };
	serve_start(&f);
	guest_config(&f, 64 * MIB);
	guest_start(&f);
	populate(&f);
	uint64_t free0 = mvg_sim_free_bytes(f.s), file0 = file_bytes(&f);
	assert_int_equal(vu_serve_hint(f.srv, 0, true), 0);
	WAIT_FOR(info(&f).hinted_bytes >= free0 - 4 * MIB);
	WAIT_FOR(status(&f).hint_runs >= 1);
	assert_int_equal(info(&f).hint_discarded_bytes, 0);
	assert_int_equal(vu_serve_hint(f.srv, 0, false), 0);
	WAIT_FOR(status(&f).hint_held_pages == 0);
	WAIT_FOR(mvg_sim_free_bytes(f.s) == free0);
	assert_true(file_bytes(&f) >= file0 - 64 * TPAGE);
	kept_pages_intact(&f);
	assert_int_equal(info(&f).guest_errors, 0);
	assert_int_equal(status(&f).error, 0);
	release_kept(&f);
	guest_stop(&f);
}

/* The driver unloaded and loaded again (rmmod, insmod): Status 0 resets the backend's
 * device over the connection (RESET_DEVICE), every page comes back to the guest, and a
 * new negotiation, memory table and rings on the same connection work as the first. */
static void driver_reload_over_one_connection(void **state)
{
	struct fx f = { 0 };
	serve_start(&f);
	guest_config(&f, 64 * MIB);
	guest_start(&f);
	settle(&f, 16 * MIB);
	uint64_t free0 = mvg_sim_free_bytes(f.s);
	uint64_t requests = tinfo(&f).requests;
	mvg_sim_stop_driver(f.s);
	struct mvg_balloon *d = mvg_sim_driver(f.s);
	struct mvg_platform p = d->p;
	mvg_balloon_remove(d);
	assert_int_equal(mvg_sim_free_bytes(f.s), 64 * MIB);
	assert_true(free0 < 64 * MIB - 16 * MIB);
	WAIT_FOR(!vinfo(&f).running);
	assert_int_equal(info(&f).status, 0);
	assert_int_equal(mvg_balloon_init(d, &p, &f.cfg.driver), 0);
	assert_int_equal(mvg_sim_start_driver(f.s), 0);
	WAIT_FOR(vinfo(&f).running);
	assert_int_equal(mvg_sim_settle(f.s, 20 * SEC), 0);
	assert_int_equal(info(&f).actual_bytes, 16 * MIB);
	settle(&f, 24 * MIB);
	assert_int_equal(info(&f).held_bytes, 24 * MIB);
	settle(&f, 0);
	struct mvg_sim_transport_info ti = tinfo(&f);
	assert_true(ti.requests > requests);
	assert_int_equal(ti.refused, 0);
	assert_int_equal(ti.error, 0);
	assert_int_equal(info(&f).guest_errors, 0);
	assert_int_equal(vinfo(&f).regions, 1);
	guest_stop(&f);
}

/* The backend goes away in the middle of an inflate: the bridge sees the connection end,
 * the driver a device that needs a reset and stops; the guest keeps working and tears
 * down without waiting on anything. */
static void backend_closed_mid_inflate(void **state)
{
	struct fx f = { 0 };
	serve_start(&f);
	guest_config(&f, 256 * MIB);
	guest_start(&f);
	populate(&f);
	assert_int_equal(vu_serve_target(f.srv, 0, 200 * MIB), 0);
	WAIT_FOR(info(&f).actual_bytes > 0);
	serve_kill(&f);
	WAIT_FOR(tinfo(&f).error != 0);
	assert_int_equal(tinfo(&f).error, -ECONNRESET);
	WAIT_FOR(status(&f).error == MVG_ERR_RESET);
	assert_int_equal(mvg_sim_settle(f.s, SEC), -ENOTCONN);
	kept_pages_intact(&f);
	uint64_t gpa;
	assert_int_equal(mvg_sim_alloc_page(f.s, &gpa), 0);
	mvg_sim_free_page(f.s, gpa);
	release_kept(&f);
	guest_stop(&f);
}

/* A backend that stops answering: the bridge's bounded wait runs out, the connection is
 * given up, the driver stops; nothing hangs. */
static void stalled_backend_times_out(void **state)
{
	struct fx f = { 0 };
	serve_start(&f);
	guest_config(&f, 64 * MIB);
	f.cfg.vhost_user_timeout_ns = 200 * 1000000ull;
	guest_start(&f);
	settle(&f, 8 * MIB);
	serve_pause(&f); /* the connection stays open; no one reads it */
	WAIT_FOR(tinfo(&f).error != 0); /* the driver's next config read */
	assert_int_equal(tinfo(&f).error, -ETIMEDOUT);
	WAIT_FOR(status(&f).error == MVG_ERR_RESET);
	guest_stop(&f);
}

/* A peer that accepts but never answers the handshake, or no backend at all:
 * mvg_sim_new fails within its bound and leaves nothing behind. */
static void no_backend_no_guest(void **state)
{
	struct fx f = { 0 };
	snprintf(f.dir, sizeof(f.dir), "/tmp/mv-vub-XXXXXX");
	assert_non_null(mkdtemp(f.dir));
	snprintf(f.sock, sizeof(f.sock), "%s/mute.sock", f.dir);
	guest_config(&f, 16 * MIB);
	f.cfg.vhost_user_timeout_ns = 100 * 1000000ull;
	long fds0 = tu_open_fds(), maps0 = tu_memfd_mappings();
	assert_int_equal(mvg_sim_new(NULL, &f.cfg, &f.s), -ENOENT);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, f.sock);
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(l, 4), 0); /* connects succeed; nothing is ever read */
	assert_int_equal(mvg_sim_new(NULL, &f.cfg, &f.s), -ETIMEDOUT);
	close(l);
	assert_int_equal(mvg_sim_new(NULL, &f.cfg, &f.s), -ECONNREFUSED);
	assert_int_equal(tu_open_fds(), fds0);
	assert_int_equal(tu_memfd_mappings(), maps0);
	unlink(f.sock);
	rmdir(f.dir);
}

/* A fake backend that answers the handshake wrongly: accept one connection, take
 * SET_OWNER and GET_FEATURES, send the reply `how` says, then wait for the end. */
struct liar {
	int l;
	int how;                  /* 0: no protocol features; 1: a reply to another request */
	const char *bad;          /* what went wrong in the thread (asserted by the test) */
};

static void *liar_main(void *arg)
{
	struct liar *x = arg; /* no cmocka assertion here: this is not the test's thread */
	x->bad = NULL;
	int c = accept4(x->l, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0) {
		x->bad = "accept";
		return NULL;
	}
	uint32_t h[3];
	for (int i = 0; i < 2 && !x->bad; i++) /* SET_OWNER, GET_FEATURES: headers only */
		if (recv(c, h, sizeof(h), MSG_WAITALL) != sizeof(h))
			x->bad = "the handshake's first two requests";
	if (!x->bad && h[0] != 1)
		x->bad = "GET_FEATURES second";
	uint64_t f = 1ull << 32; /* VERSION_1, no protocol features */
	uint32_t r[3] = { x->how == 1 ? 15 : 1, 1 | 4, 8 };
	if (!x->bad && send(c, r, sizeof(r), MSG_NOSIGNAL) != sizeof(r))
		x->bad = "the reply";
	if (!x->bad && send(c, &f, 8, MSG_NOSIGNAL) != 8 && x->how != 1)
		x->bad = "the reply's payload"; /* a reply to another request may end it first */
	char end;
	while (recv(c, &end, 1, 0) > 0) /* until the bridge gives up on us */
		;
	close(c);
	return NULL;
}

/* A backend without protocol features (no acks, no config space) is refused; a reply
 * to the wrong request ends the connection as malformed. Nothing is left behind. */
static void misbehaving_backend_is_refused(void **state)
{
	struct fx f = { 0 };
	snprintf(f.dir, sizeof(f.dir), "/tmp/mv-vub-XXXXXX");
	assert_non_null(mkdtemp(f.dir));
	snprintf(f.sock, sizeof(f.sock), "%s/liar.sock", f.dir);
	guest_config(&f, 16 * MIB);
	long fds0 = tu_open_fds(), maps0 = tu_memfd_mappings();
	struct liar x = { socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), 0, NULL };
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, f.sock);
	assert_int_equal(bind(x.l, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(x.l, 4), 0);
	static const int want[2] = { -EPROTONOSUPPORT, -EPROTO };
	for (x.how = 0; x.how < 2; x.how++) {
		pthread_t th;
		assert_int_equal(pthread_create(&th, NULL, liar_main, &x), 0);
		int err = mvg_sim_new(NULL, &f.cfg, &f.s);
		pthread_join(th, NULL);
		if (x.bad)
			fail_msg("the fake backend: %s", x.bad);
		assert_int_equal(err, want[x.how]);
	}
	close(x.l);
	assert_int_equal(tu_open_fds(), fds0);
	assert_int_equal(tu_memfd_mappings(), maps0);
	unlink(f.sock);
	rmdir(f.dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(inflate_deflate_over_vhost_user),
		cmocka_unit_test(two_regions_across_the_hole),
		cmocka_unit_test(stats_reach_the_backend),
		cmocka_unit_test(free_page_reporting_releases),
		cmocka_unit_test(deflate_on_oom),
		cmocka_unit_test(running_workload_keeps_every_write),
		cmocka_unit_test(driver_reload_over_one_connection),
		cmocka_unit_test(free_page_hints_round_trip),
		cmocka_unit_test(backend_closed_mid_inflate),
		cmocka_unit_test(stalled_backend_times_out),
		cmocka_unit_test(no_backend_no_guest),
		cmocka_unit_test(misbehaving_backend_is_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
