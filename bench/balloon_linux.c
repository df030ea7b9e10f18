/* balloon_linux.c - `memvirt bench balloon --driver linux`: Linux's own virtio_balloon
 * driver (a user-mode Linux guest) inflating and deflating through memvirt's device over
 * vhost-user, next to the transport's limit and to memvirt's own driver.
 *
 * Each round boots a fresh guest of --guest-mib (default 1024), touches all but 64 MiB of
 * its free memory (a tmpfs file written and removed, so the pages the balloon takes are
 * backed on the host; free page reporting is not offered, so that nothing frees them
 * first), then asks for a balloon of --target-mib (default 896) and back to
 * zero, timing each phase from the target change to the guest's `actual`. Host memory
 * freed is read from the guest memory file (st_blocks). Two backends alternate, round by
 * round, on identical guests: the device as it runs, and the same device acknowledging
 * every PFN without releasing anything (the transport's limit: the guest's driver, UML's
 * vhost-user frontend and our message handling, no page work). The backend's CPU is the
 * server thread's own clock. The same device under memvirt's own driver (a simulated
 * guest of the same size, virtio-mmio) is measured in the same run.
 */
#include "bench.h"
#include "uml.h"
#include "vu_serve.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define MIB (1ull << 20)
#define GIB (1ull << 30)
#define MAX_ROUNDS 9

struct lx_round {
	double inflate_s;             /* target change to the guest's `actual` */
	double freed_s;               /* target change to every ballooned page released */
	double deflate_s, cpu_s, freed_mib;
	bool ok;
};

struct lx_server {
	struct vu_serve *s;
	pthread_t th;
	int stop;
	char dir[64], sock[96];
};

static void *serve(void *arg)
{
	struct lx_server *x = arg;
	vu_serve_run(x->s, x->stop);
	return NULL;
}

static int server_start(struct mv_host *h, bool no_release, struct lx_server *x)
{
	snprintf(x->dir, sizeof(x->dir), "/tmp/mv-bench-XXXXXX");
	if (!mkdtemp(x->dir))
		return -errno;
	snprintf(x->sock, sizeof(x->sock), "%s/balloon.sock", x->dir);
	struct vu_serve_opts o = {
		.socket = x->sock, .no_release = no_release, .log = fopen("/dev/null", "w"),
		.features = 1u << MV_BALLOON_F_MUST_TELL_HOST | 1u << MV_BALLOON_F_STATS_VQ };
	int err = vu_serve_new(h, &o, &x->s);
	if (!err && (x->stop = eventfd(0, EFD_CLOEXEC)) < 0)
		err = -errno;
	if (!err && (err = -pthread_create(&x->th, NULL, serve, x)))
		close(x->stop);
	if (err) {
		vu_serve_free(x->s);
		rmdir(x->dir);
	}
	return err;
}

static void server_stop(struct lx_server *x)
{
	uint64_t one = 1;
	if (write(x->stop, &one, 8) != 8)
		return;
	pthread_join(x->th, NULL);
	vu_serve_free(x->s);
	close(x->stop);
	rmdir(x->dir);
}

/* CPU of the backend: the whole process but the calling thread (which only polls). */
static double backend_cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return bench_cpu_s() - ((double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
}

/* Wait until `bytes` more have been released than `base`; false after timeout_s. */
static bool wait_released(struct lx_server *x, uint64_t base, uint64_t bytes, double timeout_s)
{
	struct mv_balloon_info bi;
	for (double end = bench_now_s() + timeout_s; bench_now_s() < end; usleep(1000))
		if (!vu_serve_info(x->s, 0, &bi, NULL) && bi.released_bytes >= base + bytes)
			return true;
	return false;
}

static bool wait_actual(struct lx_server *x, uint64_t bytes, double timeout_s)
{
	struct mv_balloon_info bi;
	for (double end = bench_now_s() + timeout_s; bench_now_s() < end; usleep(1000))
		if (!vu_serve_info(x->s, 0, &bi, NULL) && bi.actual_bytes == bytes)
			return true;
	return false;
}

static uint64_t file_bytes(struct lx_server *x)
{
	struct mv_vhost_user_info vi = { 0 };
	vu_serve_info(x->s, 0, NULL, &vi);
	return vi.file_bytes;
}

/* One guest, one inflate and deflate. */
static int round_run(struct mv_host *h, bool no_release, unsigned guest_mib, uint64_t target,
                     struct lx_round *r, char *why, size_t whylen)
{
	struct lx_server x;
	int err = server_start(h, no_release, &x);
	if (err) {
		snprintf(why, whylen, "backend: %s", mv_strerror(err));
		return err;
	}
	struct mv_uml *g = NULL;
	struct mv_uml_opts o = { .mem_mib = guest_mib, .balloon_socket = x.sock, .timeout_s = 300,
	                         .diag = why, .diag_cap = whylen };
	err = mv_uml_start(&o, &g);
	char cmd[256], out[256];
	if (!err) { /* back the free memory on the host, as a guest that ran a while has */
		snprintf(cmd, sizeof(cmd), "mount -o remount,size=100%% /tmp && dd if=/dev/zero of=/tmp/f "
		         "bs=1M count=$(awk '/^MemFree:/ {print int($2 / 1024) - 64}' /proc/meminfo) "
		         "2>/dev/null; rm -f /tmp/f");
		int st = mv_uml_run(g, cmd, out, sizeof(out), 120000);
		if (st)
			err = -EIO, snprintf(why, whylen, "guest: touching memory failed (%d): %s", st, out);
	}
	if (!err) {
		uint64_t held0 = file_bytes(&x);
		struct mv_balloon_info bi = { 0 };
		vu_serve_info(x.s, 0, &bi, NULL);
		double c0 = backend_cpu_s(), t0 = bench_now_s();
		vu_serve_target(x.s, 0, target);
		bool in = wait_actual(&x, target, 120);
		r->inflate_s = bench_now_s() - t0;
		in = in && (no_release || wait_released(&x, bi.released_bytes, target, 60));
		r->freed_s = bench_now_s() - t0;
		r->cpu_s = backend_cpu_s() - c0;
		uint64_t held1 = file_bytes(&x);
		r->freed_mib = held0 > held1 ? (double)(held0 - held1) / MIB : 0;
		t0 = bench_now_s();
		vu_serve_target(x.s, 0, 0);
		bool de = wait_actual(&x, 0, 120);
		r->deflate_s = bench_now_s() - t0;
		r->ok = in && de;
		if (!r->ok)
			snprintf(why, whylen, "the guest did not reach the target in 120 s");
	}
	mv_uml_kill(g);
	server_stop(&x);
	return err ? err : r->ok ? 0 : -ETIMEDOUT;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(const struct lx_round *r, unsigned n, size_t off)
{
	double v[MAX_ROUNDS];
	for (unsigned i = 0; i < n; i++)
		v[i] = *(const double *)((const char *)&r[i] + off);
	qsort(v, n, sizeof(v[0]), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static json_object *mode_json(const struct lx_round *r, unsigned n, uint64_t target)
{
	json_object *o = json_object_new_object();
	double gib = (double)target / GIB, in = median(r, n, offsetof(struct lx_round, inflate_s));
	double de = median(r, n, offsetof(struct lx_round, deflate_s));
	json_object_object_add(o, "inflate_gib_s", json_object_new_double(gib / in));
	json_object_object_add(o, "deflate_gib_s", json_object_new_double(gib / de));
	json_object_object_add(o, "inflate_s", json_object_new_double(in));
	double fr = median(r, n, offsetof(struct lx_round, freed_s));
	json_object_object_add(o, "freed_gib_s", json_object_new_double(gib / fr));
	json_object_object_add(o, "freed_s", json_object_new_double(fr));
	json_object_object_add(o, "deflate_s", json_object_new_double(de));
	json_object_object_add(o, "host_freed_mib",
	                       json_object_new_double(median(r, n, offsetof(struct lx_round, freed_mib))));
	json_object *each = json_object_new_array();
	for (unsigned i = 0; i < n; i++)
		json_object_array_add(each, json_object_new_double(r[i].inflate_s));
	json_object_object_add(o, "inflate_s_each", each);
	json_object_object_add(o, "backend_cpu_s",
	                       json_object_new_double(median(r, n, offsetof(struct lx_round, cpu_s))));
	return o;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: memvirt bench balloon --driver linux [--guest-mib N] [--target-mib N] "
	        "[--rounds N] [--json]\n"
	        "  Linux's virtio_balloon (a user-mode Linux guest) through memvirt's device over\n"
	        "  vhost-user, beside the same device acknowledging only (the transport's limit)\n"
	        "  and beside memvirt's own driver; defaults: 1024 MiB guest, 896 MiB, 7 rounds\n");
}

int bench_balloon_linux_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "driver", required_argument, NULL, 'd' }, { "guest-mib", required_argument, NULL, 'g' },
		{ "target-mib", required_argument, NULL, 't' }, { "rounds", required_argument, NULL, 'r' },
		{ "json", no_argument, NULL, 'j' }, { "help", no_argument, NULL, 'h' }, { 0 } };
	uint64_t guest = 1024, tmib = 896, rounds = 7;
	bool json = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'd': break;
		case 'g': if (bench_arg_uint("--guest-mib", optarg, 128, 8192, &guest)) return 2; break;
		case 't': if (bench_arg_uint("--target-mib", optarg, 16, 8192, &tmib)) return 2; break;
		case 'r': if (bench_arg_uint("--rounds", optarg, 1, MAX_ROUNDS, &rounds)) return 2; break;
		case 'j': json = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (tmib + 96 > guest) {
		fprintf(stderr, "memvirt bench balloon: --target-mib must leave the guest 96 MiB\n");
		return 2;
	}
	const char *why_not = mv_uml_unavailable();
	if (why_not) {
		fprintf(stderr, "memvirt bench balloon --driver linux: %s\n", why_not);
		return 1;
	}
	struct mv_host *h;
	int err = mv_host_new(NULL, &h);
	if (err) {
		fprintf(stderr, "memvirt bench balloon: host: %s\n", mv_strerror(err));
		return 1;
	}
	uint64_t target = tmib * MIB;
	struct lx_round rel[MAX_ROUNDS] = { 0 }, ack[MAX_ROUNDS] = { 0 };
	char why[2048] = "";
	for (unsigned i = 0; i < rounds && !err; i++) {
		for (int m = 0; m < 2 && !err; m++) {
			bool no_release = (i + m) % 2; /* alternate which goes first */
			if (!json)
				fprintf(stderr, "round %u/%u: %s\n", i + 1, (unsigned)rounds,
				        no_release ? "acknowledge only" : "release");
			err = round_run(h, no_release, (unsigned)guest, target, no_release ? &ack[i] : &rel[i],
			                why, sizeof(why));
			usleep(500000); /* the last guest's memory file is still being freed */
		}
	}
	struct bench_balloon_sim sim = { 0 };
	uint64_t sim_target = target < guest * MIB * 7 / 8 - 64 * MIB ? target : guest * MIB * 7 / 8 - 64 * MIB;
	if (!err)
		bench_balloon_sim(h, guest * MIB, sim_target, &sim);
	mv_host_free(h);
	if (err) {
		fprintf(stderr, "memvirt bench balloon --driver linux: %s\n", why);
		return 1;
	}
	json_object *o = json_object_new_object();
	json_object_object_add(o, "guest_mib", json_object_new_int64((int64_t)guest));
	json_object_object_add(o, "target_mib", json_object_new_int64((int64_t)tmib));
	json_object_object_add(o, "rounds", json_object_new_int64((int64_t)rounds));
	json_object *lr = mode_json(rel, (unsigned)rounds, target), *la = mode_json(ack, (unsigned)rounds, target);
	double lim = json_object_get_double(json_object_object_get(la, "inflate_gib_s"));
	double vs = json_object_get_double(json_object_object_get(lr, "inflate_gib_s")) / lim;
	double vs_freed = json_object_get_double(json_object_object_get(lr, "freed_gib_s")) / lim;
	json_object_object_add(lr, "inflate_vs_limit", json_object_new_double(vs));
	/* rounds drift (the machine, the host under it): each round's pair, side by side */
	struct lx_round ratio[MAX_ROUNDS];
	for (unsigned i = 0; i < rounds; i++)
		ratio[i].inflate_s = ack[i].inflate_s / rel[i].freed_s;
	double paired = median(ratio, (unsigned)rounds, offsetof(struct lx_round, inflate_s));
	json_object_object_add(lr, "freed_vs_limit_paired", json_object_new_double(paired));
	json_object_object_add(lr, "freed_vs_limit", json_object_new_double(vs_freed));
	json_object_object_add(o, "linux_release", lr);
	json_object_object_add(o, "linux_ack_only", la);
	json_object *m = json_object_new_object();
	json_object_object_add(m, "inflate_gib_s", json_object_new_double(sim.inflate_gib_s));
	json_object_object_add(m, "deflate_gib_s", json_object_new_double(sim.deflate_gib_s));
	json_object_object_add(m, "rss_drop_mib", json_object_new_double(sim.rss_drop_mib));
	json_object_object_add(o, "memvirt_driver", m);
	if (json) {
		printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
	} else {
		printf("%-24s %13s %13s %13s %15s %14s\n", "driver / backend", "inflate GiB/s",
		       "freed GiB/s", "deflate GiB/s", "host freed MiB", "backend CPU s");
		const char *names[2] = { "linux / release", "linux / ack only" };
		json_object *rows[2] = { lr, la };
		for (int i = 0; i < 2; i++)
			printf("%-24s %13.2f %13.2f %13.2f %15.0f %14.3f\n", names[i],
			       json_object_get_double(json_object_object_get(rows[i], "inflate_gib_s")),
			       json_object_get_double(json_object_object_get(rows[i], "freed_gib_s")),
			       json_object_get_double(json_object_object_get(rows[i], "deflate_gib_s")),
			       json_object_get_double(json_object_object_get(rows[i], "host_freed_mib")),
			       json_object_get_double(json_object_object_get(rows[i], "backend_cpu_s")));
		printf("%-24s %13.2f %13s %13.2f %15.0f %14s\n", "memvirt / release", sim.inflate_gib_s,
		       "-", sim.deflate_gib_s, sim.rss_drop_mib, "-");
		printf("vs the transport's limit: inflate %.2f, inflate with host memory freed %.2f "
		       "(median of the rounds' pairs: %.2f)\n", vs, vs_freed, paired);
	}
	json_object_put(o);
	return 0;
}
