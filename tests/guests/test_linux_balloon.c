/* test_linux_balloon.c - memvirt's balloon device against Linux 6.1's own virtio_balloon
 * driver: a user-mode Linux guest attached over vhost-user (virtio_uml), served by the
 * same server `memvirt balloon-backend` runs, in a thread of this process.
 *
 * Outcomes are read on both sides: the guest's /proc/meminfo and its own checksums of
 * data it wrote, the device's counters, and host memory held by the guest's memory file
 * (st_blocks). Each test boots its own guest (about a second) under a hard timeout.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <memvirt/memvirt.h>

#include "uml.h"
#include "testutil.h"
#include "vu_serve.h"

#define MIB (1ull << 20)
#define F(bit) (1ull << (bit))
#define F_ALL 0x3full

struct fx {
	char dir[64], sock[96], ctl[96];
	struct mv_host *h;
	struct vu_serve *s;
	pthread_t th;
	int stop;
	struct mv_uml *g;
};

static void *serve_thread(void *arg)
{
	struct fx *f = arg;
	vu_serve_run(f->s, f->stop);
	return NULL;
}

static void serve_start(struct fx *f, uint64_t features, bool no_release)
{
	memset(f, 0, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/mv-linux-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->sock, sizeof(f->sock), "%s/balloon.sock", f->dir);
	snprintf(f->ctl, sizeof(f->ctl), "%s/control.sock", f->dir);
	f->h = tu_host();
	struct vu_serve_opts o = { .socket = f->sock, .control = f->ctl, .features = features,
	                           .no_release = no_release, .log = fopen("/dev/null", "w") };
	assert_int_equal(vu_serve_new(f->h, &o, &f->s), 0);
	f->stop = eventfd(0, EFD_CLOEXEC);
	assert_int_equal(pthread_create(&f->th, NULL, serve_thread, f), 0);
}

static void serve_stop(struct fx *f)
{
	if (f->g)
		assert_int_equal(mv_uml_kill(f->g), 0);
	f->g = NULL;
	uint64_t one = 1;
	assert_int_equal(write(f->stop, &one, 8), 8);
	pthread_join(f->th, NULL);
	vu_serve_free(f->s);
	mv_host_free(f->h);
	close(f->stop);
	rmdir(f->dir);
}

/* One command on the server's control socket, as `memvirt balloon-ctl` sends it. */
static void control(struct fx *f, const char *cmd, char *out, size_t cap)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", f->ctl);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_true(write(fd, cmd, strlen(cmd)) == (ssize_t)strlen(cmd));
	assert_int_equal(write(fd, "\n", 1), 1);
	size_t n = 0;
	ssize_t r;
	while (n < cap - 1 && !memchr(out, '\n', n) && (r = read(fd, out + n, cap - 1 - n)) > 0)
		n += (size_t)r;
	out[n] = 0;
	close(fd);
}

static void boot(struct fx *f, unsigned mem_mib, const char *extra)
{
	char diag[2048] = "";
	struct mv_uml_opts o = { .mem_mib = mem_mib, .balloon_socket = f->sock, .cmdline_extra = extra,
	                         .timeout_s = 240, .diag = diag, .diag_cap = sizeof(diag) };
	int err = mv_uml_start(&o, &f->g);
	if (err)
		fprintf(stderr, "guest did not boot: %s\n%s\n", mv_strerror(err), diag);
	assert_int_equal(err, 0);
}

/* Run a guest command that must succeed; its output in out. */
static void guest(struct fx *f, char *out, size_t cap, const char *fmt, ...)
{
	char cmd[MV_UML_CMD_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	char buf[4096];
	int st = mv_uml_run(f->g, cmd, out ? out : buf, out ? cap : sizeof(buf), 60000);
	if (st)
		fprintf(stderr, "guest: '%s' -> %d: %s\n", cmd, st, out ? out : buf);
	assert_int_equal(st, 0);
}

static uint64_t meminfo_kb(struct fx *f, const char *field)
{
	char out[256];
	guest(f, out, sizeof(out), "sed -n 's/^%s: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo", field);
	return strtoull(out, NULL, 10);
}

static void md5(struct fx *f, const char *path, char sum[33])
{
	char out[256];
	guest(f, out, sizeof(out), "md5sum %s", path);
	assert_true(strlen(out) >= 32);
	memcpy(sum, out, 32);
	sum[32] = 0;
}

static struct mv_balloon_info info(struct fx *f)
{
	struct mv_balloon_info bi;
	assert_int_equal(vu_serve_info(f->s, 0, &bi, NULL), 0);
	return bi;
}

static uint64_t file_bytes(struct fx *f)
{
	struct mv_vhost_user_info vi;
	assert_int_equal(vu_serve_info(f->s, 0, NULL, &vi), 0);
	return vi.file_bytes;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Wait until the guest reports `actual` at bytes; false after timeout_s. */
static bool wait_actual(struct fx *f, uint64_t bytes, double timeout_s)
{
	for (double end = now_s() + timeout_s; now_s() < end; usleep(20000))
		if (info(f).actual_bytes == bytes)
			return true;
	return false;
}

/* Touch all but `leave_mib` of the guest's free memory with a tmpfs file, then free it:
 * free pages the guest's allocator hands out next are then backed on the host. */
static void touch_free_memory(struct fx *f, unsigned leave_mib)
{
	uint64_t free_mib = meminfo_kb(f, "MemFree") / 1024;
	assert_true(free_mib > leave_mib + 16);
	guest(f, NULL, 0, "mount -o remount,size=100%% /tmp && dd if=/dev/zero of=/tmp/fill bs=1M "
	      "count=%llu 2>/dev/null; rm -f /tmp/fill", (unsigned long long)(free_mib - leave_mib));
}

static int skip_without_uml(void)
{
	const char *why = mv_uml_unavailable();
	if (why) {
		printf("[  SKIP    ] %s\n", why);
		return 1;
	}
	return 0;
}

/* Inflate to a target and deflate back, features as the test asks: Linux's MemTotal
 * follows (no DEFLATE_ON_OOM), the guest memory file gives back the ballooned pages, and
 * the guest's own data is unchanged. */
static void inflate_deflate_memtotal_and_data(void **state)
{
	if (skip_without_uml())
		skip();
	struct fx f;
	serve_start(&f, F(MV_BALLOON_F_MUST_TELL_HOST) | F(MV_BALLOON_F_STATS_VQ), false);
	boot(&f, 256, NULL);
	char before[33], after[33];
	guest(&f, NULL, 0, "dd if=/dev/urandom of=/tmp/data bs=1M count=16 2>/dev/null");
	md5(&f, "/tmp/data", before);
	touch_free_memory(&f, 24);
	uint64_t total0 = meminfo_kb(&f, "MemTotal"), held0 = file_bytes(&f);
	const uint64_t target = 128 * MIB;
	assert_int_equal(vu_serve_target(f.s, 0, target), 0);
	assert_true(wait_actual(&f, target, 60));
	uint64_t total1 = meminfo_kb(&f, "MemTotal"), held1 = file_bytes(&f);
	struct mv_balloon_info bi = info(&f);
	printf("MemTotal %llu -> %llu kB; guest file %llu -> %llu MiB; released %llu MiB\n",
	       (unsigned long long)total0, (unsigned long long)total1,
	       (unsigned long long)(held0 / MIB), (unsigned long long)(held1 / MIB),
	       (unsigned long long)(bi.released_bytes / MIB));
	assert_int_equal(total0 - total1, target / 1024);
	assert_int_equal(bi.held_bytes, target);
	assert_true(bi.released_bytes >= target);
	assert_true(held0 - held1 >= target - 32 * MIB); /* all but the untouched leftovers */
	assert_int_equal(bi.guest_errors, 0);
	md5(&f, "/tmp/data", after);
	assert_string_equal(before, after);

	assert_int_equal(vu_serve_target(f.s, 0, 0), 0);
	assert_true(wait_actual(&f, 0, 60));
	assert_int_equal(meminfo_kb(&f, "MemTotal"), total0);
	assert_int_equal(info(&f).held_bytes, 0);
	guest(&f, NULL, 0, "dd if=/dev/zero of=/tmp/again bs=1M count=100 2>/dev/null && rm /tmp/again");
	md5(&f, "/tmp/data", after);
	assert_string_equal(before, after);
	serve_stop(&f);
}

/* An admin's target beyond the guest's RAM is refused with a message, nothing changed;
 * a sensible one then goes through. */
static void admin_target_checked(void **state)
{
	if (skip_without_uml())
		skip();
	struct fx f;
	serve_start(&f, F_ALL, false);
	boot(&f, 256, NULL);
	char out[512];
	control(&f, "target 1T", out, sizeof(out));
	printf("target 1T -> %s", out);
	assert_non_null(strstr(out, "\"error\""));
	assert_non_null(strstr(out, "more than the RAM"));
	assert_int_equal(info(&f).target_bytes, 0);
	control(&f, "target 64M", out, sizeof(out));
	assert_non_null(strstr(out, "\"ok\":true"));
	assert_true(wait_actual(&f, 64 * MIB, 60));
	control(&f, "target 0", out, sizeof(out));
	assert_true(wait_actual(&f, 0, 60));
	serve_stop(&f);
}

/* The stats queue: Linux's free, available, caches and fault counters reach the device. */
static void statistics_reach_the_device(void **state)
{
	if (skip_without_uml())
		skip();
	struct fx f;
	serve_start(&f, F_ALL, false);
	boot(&f, 256, NULL);
	uint32_t want = 1u << MV_BSTAT_MEMFREE | 1u << MV_BSTAT_MEMTOT | 1u << MV_BSTAT_AVAIL |
	                1u << MV_BSTAT_CACHES | 1u << MV_BSTAT_MAJFLT | 1u << MV_BSTAT_MINFLT;
	guest(&f, NULL, 0, "dd if=/dev/zero of=/tmp/cache bs=1M count=32 2>/dev/null");
	uint64_t total = meminfo_kb(&f, "MemTotal") * 1024, free_ = meminfo_kb(&f, "MemFree") * 1024;
	struct mv_balloon_info bi = { 0 };
	for (double end = now_s() + 20; now_s() < end; usleep(100000)) {
		int err = vu_serve_stats_request(f.s, 0);
		assert_true(err == 0 || err == -EAGAIN);
		usleep(100000);
		bi = info(&f);
		if ((bi.stats_valid & want) == want && bi.stats_age_ns < 200000000ull)
			break;
	}
	printf("stats: free %llu MiB (meminfo %llu), total %llu MiB, available %llu MiB, caches %llu MiB, "
	       "faults %llu major %llu minor\n", (unsigned long long)(bi.stats[MV_BSTAT_MEMFREE] / MIB),
	       (unsigned long long)(free_ / MIB), (unsigned long long)(bi.stats[MV_BSTAT_MEMTOT] / MIB),
	       (unsigned long long)(bi.stats[MV_BSTAT_AVAIL] / MIB),
	       (unsigned long long)(bi.stats[MV_BSTAT_CACHES] / MIB),
	       (unsigned long long)bi.stats[MV_BSTAT_MAJFLT], (unsigned long long)bi.stats[MV_BSTAT_MINFLT]);
	assert_int_equal(bi.stats_valid & want, want);
	assert_int_equal(bi.stats[MV_BSTAT_MEMTOT], total);
	uint64_t d = bi.stats[MV_BSTAT_MEMFREE] > free_ ? bi.stats[MV_BSTAT_MEMFREE] - free_
	                                                 : free_ - bi.stats[MV_BSTAT_MEMFREE];
	assert_true(d < 16 * MIB);
	assert_true(bi.stats[MV_BSTAT_CACHES] >= 32 * MIB); /* the tmpfs file is shmem: cached */
	assert_true(bi.stats[MV_BSTAT_MINFLT] > 0);
	serve_stop(&f);
}

/* Free page reporting: memory the guest frees is given back to the host. With every
 * feature reporting_vq is queue 4; alone (with MUST_TELL_HOST) it is queue 2. */
static void reported_and_released(uint64_t features)
{
	struct fx f;
	serve_start(&f, features, false);
	boot(&f, 256, NULL);
	assert_int_equal(info(&f).features & F_ALL, features);
	guest(&f, NULL, 0, "mount -o remount,size=100%% /tmp && dd if=/dev/zero of=/tmp/big bs=1M "
	      "count=128 2>/dev/null");
	uint64_t held1 = file_bytes(&f), rep0 = info(&f).reported_bytes;
	guest(&f, NULL, 0, "rm /tmp/big");
	uint64_t held2 = held1;
	for (double end = now_s() + 30; now_s() < end && held2 + 96 * MIB > held1; usleep(100000)) {
		held2 = file_bytes(&f);
		if (getenv("MV_TEST_VERBOSE"))
			printf("  %.1f s: file %llu MiB, reported %llu MiB\n", now_s(),
			       (unsigned long long)(held2 / MIB), (unsigned long long)(info(&f).reported_bytes / MIB));
	}
	struct mv_balloon_info bi = info(&f);
	printf("guest file %llu -> %llu MiB after freeing 128 MiB; reported %llu MiB\n",
	       (unsigned long long)(held1 / MIB), (unsigned long long)(held2 / MIB),
	       (unsigned long long)((bi.reported_bytes - rep0) / MIB));
	assert_true(held2 + 96 * MIB <= held1);
	assert_true(bi.reported_bytes >= rep0 + 96 * MIB);
	assert_int_equal(bi.guest_errors, 0);
	serve_stop(&f);
}

static void freed_memory_is_reported_and_released(void **state)
{
	if (skip_without_uml())
		skip();
	reported_and_released(F_ALL & ~F(MV_BALLOON_F_PAGE_POISON)); /* Linux drops it: no poisoning */
	reported_and_released(F(MV_BALLOON_F_MUST_TELL_HOST) | F(MV_BALLOON_F_PAGE_REPORTING));
}

/* Deflate on OOM: a guest that needs more than the balloon left it gets pages back. */
static void deflate_on_oom(bool tell)
{
	struct fx f;
	serve_start(&f, F(MV_BALLOON_F_DEFLATE_ON_OOM) | F(MV_BALLOON_F_STATS_VQ) |
	                (tell ? F(MV_BALLOON_F_MUST_TELL_HOST) : 0), false);
	boot(&f, 256, NULL);
	uint64_t free_mib = meminfo_kb(&f, "MemFree") / 1024;
	uint64_t target = (free_mib - 24) * MIB; /* leave the guest 24 MiB */
	assert_int_equal(vu_serve_target(f.s, 0, target), 0);
	assert_true(wait_actual(&f, target, 60));
	char sum[33], again[33];
	guest(&f, NULL, 0, "mount -o remount,size=100%% /tmp && dd if=/dev/urandom of=/tmp/need "
	      "bs=1M count=64 2>/dev/null");
	md5(&f, "/tmp/need", sum);
	struct mv_balloon_info bi = info(&f);
	printf("%s: balloon %llu MiB, deflated on OOM %llu MiB, actual now %llu MiB\n",
	       tell ? "MUST_TELL_HOST" : "no MUST_TELL_HOST", (unsigned long long)(target / MIB),
	       (unsigned long long)(bi.deflated_bytes / MIB), (unsigned long long)(bi.actual_bytes / MIB));
	assert_true(bi.deflated_bytes >= 32 * MIB);
	assert_true(bi.actual_bytes < target);
	assert_int_equal(bi.held_bytes, bi.actual_bytes);
	assert_int_equal(bi.guest_errors, 0);
	md5(&f, "/tmp/need", again);
	assert_string_equal(sum, again);
	serve_stop(&f);
}

static void deflate_on_oom_telling_host(void **state)
{
	if (skip_without_uml())
		skip();
	deflate_on_oom(true);
}

static void deflate_on_oom_without_telling(void **state)
{
	if (skip_without_uml())
		skip();
	deflate_on_oom(false);
}

/* Free page hinting: a run starts, the guest hints while it writes, the run ends; every
 * byte it wrote is there. */
static void hint_run_while_the_guest_writes(void **state)
{
	if (skip_without_uml())
		skip();
	struct fx f;
	serve_start(&f, F_ALL, false);
	boot(&f, 256, NULL);
	assert_true(info(&f).features & F(MV_BALLOON_F_FREE_PAGE_HINT));
	touch_free_memory(&f, 24);
	assert_int_equal(vu_serve_hint(f.s, 0, true), 0);
	char sum[33], again[33];
	guest(&f, NULL, 0, "dd if=/dev/urandom of=/tmp/w bs=1M count=48 2>/dev/null");
	md5(&f, "/tmp/w", sum);
	for (double end = now_s() + 10; now_s() < end && !info(&f).hinted_bytes; usleep(50000))
		;
	struct mv_balloon_info bi = info(&f);
	assert_int_equal(vu_serve_hint(f.s, 0, false), 0);
	guest(&f, NULL, 0, "dd if=/dev/urandom of=/tmp/w2 bs=1M count=32 2>/dev/null && rm /tmp/w2");
	md5(&f, "/tmp/w", again);
	printf("hinted %llu MiB during the run\n", (unsigned long long)(bi.hinted_bytes / MIB));
	assert_true(bi.hinted_bytes > 0);
	assert_string_equal(sum, again);
	assert_int_equal(info(&f).guest_errors, 0);
	serve_stop(&f);
}

/* PAGE_POISON as Linux negotiates it: only when the guest poisons or zeroes freed pages
 * (init_on_free=1 here: poison value 0, so reported pages are still released). */
static void page_poison_negotiation(void **state)
{
	if (skip_without_uml())
		skip();
	struct fx f;
	serve_start(&f, F_ALL, false);
	boot(&f, 256, NULL);
	assert_false(info(&f).features & F(MV_BALLOON_F_PAGE_POISON));
	assert_int_equal(mv_uml_kill(f.g), 0);
	f.g = NULL;
	boot(&f, 256, "init_on_free=1");
	assert_true(info(&f).features & F(MV_BALLOON_F_PAGE_POISON));
	assert_true(info(&f).features & F(MV_BALLOON_F_PAGE_REPORTING));
	guest(&f, NULL, 0, "mount -o remount,size=100%% /tmp && dd if=/dev/zero of=/tmp/big bs=1M "
	      "count=96 2>/dev/null && rm /tmp/big");
	uint64_t rep = 0;
	for (double end = now_s() + 20; now_s() < end && rep < 64 * MIB; usleep(100000))
		rep = info(&f).reported_bytes;
	assert_true(rep >= 64 * MIB);
	assert_true(info(&f).released_bytes >= 64 * MIB); /* poison value 0: released */
	serve_stop(&f);
}

/* The frontend killed in the middle of an inflate: the server survives, nothing of the
 * connection is left (descriptors, mappings), and the next guest is served. */
static void frontend_killed_mid_inflate(void **state)
{
	if (skip_without_uml())
		skip();
	struct fx f;
	serve_start(&f, F_ALL, false);
	long fds0 = tu_open_fds(), maps0 = tu_shared_mappings();
	boot(&f, 512, NULL);
	assert_int_equal(vu_serve_target(f.s, 0, 448 * MIB), 0);
	for (double end = now_s() + 30; now_s() < end && !info(&f).inflated_bytes; usleep(1000))
		;
	struct mv_balloon_info bi = info(&f);
	assert_true(bi.inflated_bytes > 0);
	assert_true(tu_shared_mappings() > maps0); /* the guest's memory, mapped here */
	assert_int_equal(mv_uml_kill(f.g), 0);
	f.g = NULL;
	unsigned ended = 0, live = 1;
	for (double end = now_s() + 10; now_s() < end && (ended < 1 || live); usleep(10000))
		vu_serve_counts(f.s, &ended, &live);
	printf("killed at %llu of 448 MiB\n", (unsigned long long)(bi.actual_bytes / MIB));
	assert_int_equal(ended, 1);
	assert_int_equal(live, 0);
	assert_int_equal(tu_open_fds(), fds0);
	assert_int_equal(tu_shared_mappings(), maps0);
	boot(&f, 256, NULL);
	assert_int_equal(vu_serve_target(f.s, 0, 32 * MIB), 0);
	assert_true(wait_actual(&f, 32 * MIB, 60));
	serve_stop(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(inflate_deflate_memtotal_and_data),
		cmocka_unit_test(admin_target_checked),
		cmocka_unit_test(statistics_reach_the_device),
		cmocka_unit_test(freed_memory_is_reported_and_released),
		cmocka_unit_test(deflate_on_oom_telling_host),
		cmocka_unit_test(deflate_on_oom_without_telling),
		cmocka_unit_test(hint_run_while_the_guest_writes),
		cmocka_unit_test(page_poison_negotiation),
		cmocka_unit_test(frontend_killed_mid_inflate),
	};
	if (getenv("TEST_ONLY"))
		cmocka_set_test_filter(getenv("TEST_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
