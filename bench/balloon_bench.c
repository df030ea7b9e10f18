/* balloon_bench.c - `memvirt bench balloon`: inflate and deflate speed of the virtio-balloon
 * pair (guest driver <-> device) on a simulated guest, next to the physical limit.
 *
 * A guest of --guest-gib (default 4) is created with the hosted port: its RAM is
 * populated, then its free memory is laid out either as scattered 4 KiB pages (one page
 * in eight stays in use, so no 2 MiB run is free) or as whole 2 MiB runs (one run in
 * eight stays in use). The balloon
 * is inflated to --target-gib (default 3) and deflated back to zero; each phase is
 * timed from the target change until the guest reports `actual` at the target. Host
 * memory is measured, not estimated: resident pages of the guest RAM from mincore().
 * The comparator, in the same run and on the same kind of memory: MADV_DONTNEED on a
 * populated buffer with the same ranges (4 KiB runs in process_madvise vectors, or
 * 2 MiB calls), which is the most any userspace device can do.
 *
 * --transport vhost-user puts the device behind vhost-user: memvirt's backend (the server
 * of `memvirt balloon-backend`) runs in a thread, the guest's RAM is a memfd it maps, and
 * the driver reaches it through the hosted port's virtio-mmio bridge, as through a VMM.
 */
#include "bench.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <memvirt/memvirt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "hosted/sim.h"
#include "vu_serve.h"

#define MIB (1ull << 20)
#define GIB (1ull << 30)
#define KEEP_EVERY 8 /* one page (or run) in eight stays in use */

struct phase_result {
	double inflate_s, deflate_s, inflate_cpu_s;
	double ballooned_mib, rss_before_mib, rss_after_mib, rss_back_mib;
	double limit_gib_s;
	bool reached, deflated;
	char why[160];
};

/* The device: the sim's own (srv NULL), or a vhost-user backend served in a thread. */
struct device {
	char dir[64], sock[96];
	struct vu_serve *srv;
	FILE *log;
	int stop;
	pthread_t th;
};

static void *serve_main(void *arg)
{
	struct device *d = arg;
	vu_serve_run(d->srv, d->stop);
	return NULL;
}

static int device_start(struct mv_host *h, struct device *d)
{
	snprintf(d->dir, sizeof(d->dir), "/tmp/memvirt-bench-XXXXXX");
	if (!mkdtemp(d->dir))
		return -errno;
	snprintf(d->sock, sizeof(d->sock), "%s/balloon.sock", d->dir);
	d->log = fopen("/dev/null", "w");
	struct vu_serve_opts o = { .socket = d->sock, .log = d->log };
	int err = d->log ? vu_serve_new(h, &o, &d->srv) : -errno;
	d->stop = err ? -1 : eventfd(0, EFD_CLOEXEC);
	if (!err && d->stop < 0)
		err = -errno;
	if (!err)
		err = -pthread_create(&d->th, NULL, serve_main, d);
	if (err) {
		if (d->stop >= 0)
			close(d->stop);
		vu_serve_free(d->srv);
		d->srv = NULL;
		if (d->log)
			fclose(d->log);
		rmdir(d->dir);
	}
	return err;
}

static void device_stop(struct device *d)
{
	uint64_t one = 1;
	if (!d->srv || write(d->stop, &one, sizeof(one)) != sizeof(one))
		return;
	pthread_join(d->th, NULL);
	vu_serve_free(d->srv);
	close(d->stop);
	fclose(d->log);
	rmdir(d->dir);
}

static void set_target(struct device *d, struct mvg_sim *s, uint64_t bytes)
{
	if (d->srv)
		vu_serve_target(d->srv, 0, bytes);
	else
		mv_balloon_set_target(mvg_sim_balloon(s), bytes);
}

static int device_info(struct device *d, struct mvg_sim *s, struct mv_balloon_info *in)
{
	if (d->srv)
		return vu_serve_info(d->srv, 0, in, NULL);
	return mv_balloon_info(mvg_sim_balloon(s), in);
}

/* Resident bytes of the guest's RAM mappings, in MiB. */
static double ram_resident_mib(struct mvg_sim *s)
{
	void *hva[4];
	uint64_t gpa[4], bytes[4];
	unsigned n = mvg_sim_ram(s, hva, gpa, bytes, 4);
	uint64_t pages = 0;
	size_t vlen = 1 << 20;
	unsigned char *vec = malloc(vlen);
	for (unsigned i = 0; vec && i < n; i++)
		for (uint64_t off = 0; off < bytes[i]; off += (uint64_t)vlen * 4096) {
			uint64_t len = bytes[i] - off < (uint64_t)vlen * 4096 ? bytes[i] - off : (uint64_t)vlen * 4096;
			if (mincore((uint8_t *)hva[i] + off, len, vec))
				continue;
			for (uint64_t k = 0; k < len / 4096; k++)
				pages += vec[k] & 1;
		}
	free(vec);
	return (double)pages * 4096 / MIB;
}

/* Populate the guest's RAM through its own allocator (the driver's rings live in RAM too),
 * then leave one page in KEEP_EVERY in use: either every eighth 4 KiB page (free memory
 * scattered, no 2 MiB run free) or every eighth 2 MiB run (free memory in whole runs). */
static int populate_and_layout(struct mvg_sim *s, bool runs)
{
	uint64_t pages = mvg_sim_free_bytes(s) / 4096;
	uint64_t *all = malloc(pages * sizeof(*all));
	if (!all)
		return -ENOMEM;
	uint64_t got = 0;
	while (got < pages && !mvg_sim_alloc_page(s, &all[got])) {
		memset(mvg_sim_hva(s, all[got]), 0x5a, 4096);
		got++;
	}
	for (uint64_t i = 0; i < got; i++) {
		uint64_t unit = runs ? all[i] >> 21 : all[i] >> 12;
		if (unit % KEEP_EVERY)
			mvg_sim_free_page(s, all[i]);
	}
	free(all);
	return 0;
}

/* Wait for the guest's actual to equal target; progress on stderr. */
static bool wait_actual(struct device *d, struct mvg_sim *s, uint64_t target, double timeout_s,
                        bool quiet)
{
	double t0 = bench_now_s(), last = t0;
	struct mv_balloon_info in = { 0 };
	for (;;) {
		if (device_info(d, s, &in) == 0 && in.actual_bytes == target)
			return true;
		double t = bench_now_s();
		if (t - t0 > timeout_s)
			return false;
		if (!quiet && t - last > 0.5) {
			fprintf(stderr, "\r  balloon at %.0f MiB of %.0f MiB target ...", (double)in.actual_bytes / MIB,
			        (double)target / MIB);
			last = t;
		}
		nanosleep(&(struct timespec){ 0, 200000 }, NULL);
	}
}

/* Over vhost-user the backend releases pages in a thread of its own, after its acks: wait
 * until `bytes` more than `base` are released (in-process, release is done by the ack). */
static bool wait_released(struct device *d, struct mvg_sim *s, uint64_t base, uint64_t bytes,
                          double timeout_s)
{
	struct mv_balloon_info in;
	for (double end = bench_now_s() + timeout_s; bench_now_s() < end;) {
		if (device_info(d, s, &in) == 0 && in.released_bytes >= base + bytes)
			return true;
		nanosleep(&(struct timespec){ 0, 200000 }, NULL);
	}
	return false;
}

/* The physical limit: MADV_DONTNEED of `bytes` of populated memory in the same shape. */
static double limit_gib_s(uint64_t bytes, bool runs)
{
	uint8_t *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return 0;
	madvise(m, bytes, MADV_NOHUGEPAGE);
	for (uint64_t off = 0; off < bytes; off += 4096)
		m[off] = 1;
	double t0 = bench_now_s();
	if (runs) {
		for (uint64_t off = 0; off < bytes; off += 2 * MIB)
			madvise(m + off, 2 * MIB, MADV_DONTNEED);
	} else {
		/* the same runs of KEEP_EVERY - 1 pages as the scattered guest, 1024 per vector */
		int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
		struct iovec iov[1024];
		size_t n = 0;
		uint64_t step = KEEP_EVERY * 4096;
		for (uint64_t off = 0; off + step <= bytes; off += step) {
			iov[n++] = (struct iovec){ m + off + 4096, step - 4096 };
			if (n == 1024 || off + 2 * step > bytes) {
				syscall(SYS_process_madvise, pidfd, iov, n, MADV_DONTNEED, 0);
				n = 0;
			}
		}
		close(pidfd);
	}
	double t = bench_now_s() - t0;
	munmap(m, bytes);
	return (double)bytes / GIB / t;
}

static int run_phase(struct mv_host *h, uint64_t ram, uint64_t target, bool runs, bool quiet,
                     bool vhost_user, struct phase_result *out)
{
	struct mvg_sim_config sc;
	mvg_sim_config_init(&sc);
	sc.name = runs ? "bench-runs" : "bench-scattered";
	sc.ram_bytes = ram;
	sc.driver.floor_bytes = 0;
	struct device d = { .stop = -1 };
	int err = vhost_user ? device_start(h, &d) : 0;
	if (err) {
		snprintf(out->why, sizeof(out->why), "vhost-user backend: %s", mv_strerror(err));
		return err;
	}
	sc.vhost_user_socket = d.srv ? d.sock : NULL;
	struct mvg_sim *s;
	err = mvg_sim_new(h, &sc, &s);
	if (err) {
		snprintf(out->why, sizeof(out->why), "simulated guest: %s", mv_strerror(err));
		device_stop(&d);
		return err;
	}
	if ((err = populate_and_layout(s, runs))) {
		snprintf(out->why, sizeof(out->why), "guest layout: %s", mv_strerror(err));
		goto out;
	}
	out->rss_before_mib = ram_resident_mib(s);

	struct mv_balloon_info in = { 0 };
	device_info(&d, s, &in);
	double t0 = bench_now_s(), c0 = bench_cpu_s();
	set_target(&d, s, target);
	out->reached = wait_actual(&d, s, target, 120, quiet) &&
	               (!d.srv || wait_released(&d, s, in.released_bytes, target, 120));
	out->inflate_s = bench_now_s() - t0;
	out->inflate_cpu_s = bench_cpu_s() - c0;
	device_info(&d, s, &in);
	out->ballooned_mib = (double)in.held_bytes / MIB;
	out->rss_after_mib = ram_resident_mib(s);

	t0 = bench_now_s();
	set_target(&d, s, 0);
	out->deflated = wait_actual(&d, s, 0, 120, quiet);
	out->deflate_s = bench_now_s() - t0;
	out->rss_back_mib = ram_resident_mib(s);
	if (!quiet)
		fprintf(stderr, "\r%60s\r", "");
	if (!out->reached || !out->deflated)
		snprintf(out->why, sizeof(out->why), "the guest did not reach the target in 120 s");
out:
	mvg_sim_free(s);
	device_stop(&d);
	out->limit_gib_s = limit_gib_s(target, runs);
	return err;
}

static json_object *phase_json(const struct phase_result *r, uint64_t target)
{
	json_object *o = json_object_new_object();
	double gib = (double)target / GIB;
	json_object_object_add(o, "inflate_gib_s", json_object_new_double(r->reached ? gib / r->inflate_s : 0));
	json_object_object_add(o, "deflate_gib_s", json_object_new_double(r->deflated ? gib / r->deflate_s : 0));
	json_object_object_add(o, "ballooned_mib", json_object_new_double(r->ballooned_mib));
	json_object_object_add(o, "rss_drop_mib", json_object_new_double(r->rss_before_mib - r->rss_after_mib));
	json_object_object_add(o, "inflate_s", json_object_new_double(r->inflate_s));
	json_object_object_add(o, "deflate_s", json_object_new_double(r->deflate_s));
	json_object_object_add(o, "inflate_cpu_s", json_object_new_double(r->inflate_cpu_s));
	json_object_object_add(o, "rss_before_mib", json_object_new_double(r->rss_before_mib));
	json_object_object_add(o, "rss_after_mib", json_object_new_double(r->rss_after_mib));
	json_object_object_add(o, "limit_gib_s", json_object_new_double(r->limit_gib_s));
	json_object_object_add(o, "vs_limit", json_object_new_double(
		r->reached && r->limit_gib_s > 0 ? gib / r->inflate_s / r->limit_gib_s : 0));
	if (r->why[0])
		json_object_object_add(o, "error", json_object_new_string(r->why));
	return o;
}

static void print_table(const struct phase_result *r, const char *const *names, uint64_t target)
{
	double gib = (double)target / GIB;
	printf("%-13s %12s %12s %13s %13s %14s %9s\n", "free memory", "inflate GiB/s", "deflate GiB/s",
	       "ballooned MiB", "RSS drop MiB", "limit GiB/s", "vs limit");
	for (int i = 0; i < 2; i++)
		printf("%-13s %12.2f %12.2f %13.0f %13.0f %14.2f %9.2f%s\n", names[i],
		       r[i].reached ? gib / r[i].inflate_s : 0, r[i].deflated ? gib / r[i].deflate_s : 0,
		       r[i].ballooned_mib, r[i].rss_before_mib - r[i].rss_after_mib, r[i].limit_gib_s,
		       r[i].reached ? gib / r[i].inflate_s / r[i].limit_gib_s : 0, r[i].why[0] ? "  (!)" : "");
}

int bench_balloon_sim(struct mv_host *h, uint64_t ram, uint64_t target, struct bench_balloon_sim *out)
{
	struct phase_result r = { 0 };
	int err = run_phase(h, ram, target, false, true, false, &r);
	double gib = (double)target / GIB;
	out->inflate_gib_s = r.reached ? gib / r.inflate_s : 0;
	out->deflate_gib_s = r.deflated ? gib / r.deflate_s : 0;
	out->rss_drop_mib = r.rss_before_mib - r.rss_after_mib;
	return err;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: memvirt bench balloon [--guest-gib N] [--target-gib N] [--json]\n"
	        "                              [--transport in-process|vhost-user]\n"
	        "       memvirt bench balloon --driver linux [...]   (--driver linux --help)\n"
	        "  inflate a simulated guest's balloon to the target and deflate it back, with\n"
	        "  scattered 4 KiB free pages and with 2 MiB runs; defaults: 4 GiB guest, 3 GiB target.\n"
	        "  --transport vhost-user: the device is memvirt's vhost-user backend in a thread,\n"
	        "  reached through a virtio-mmio bridge (guest RAM in a memfd); default in-process\n");
}

int bench_balloon_main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--driver") || !strncmp(argv[i], "--driver=", 9)) {
			const char *d = argv[i][8] == '=' ? argv[i] + 9 : i + 1 < argc ? argv[i + 1] : "";
			if (!strcmp(d, "linux"))
				return bench_balloon_linux_main(argc, argv);
			if (strcmp(d, "memvirt")) {
				fprintf(stderr, "memvirt bench balloon: --driver is linux or memvirt, not '%s'\n", d);
				return 2;
			}
		}
	static const struct option opts[] = {
		{ "guest-gib", required_argument, NULL, 'g' }, { "target-gib", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'j' }, { "help", no_argument, NULL, 'h' },
		{ "driver", required_argument, NULL, 'd' }, { "transport", required_argument, NULL, 'T' },
		{ 0 } };
	double guest = 4, target = 3;
	bool json = false, vhost_user = false;
	int c;
	while ((c = getopt_long(argc, argv, "g:t:jh", opts, NULL)) != -1) {
		switch (c) {
		case 'g':
			if (bench_arg_double("--guest-gib", optarg, 0.25, 64, &guest))
				return 2;
			break;
		case 't':
			if (bench_arg_double("--target-gib", optarg, 0.0625, 64, &target))
				return 2;
			break;
		case 'j': json = true; break;
		case 'd': break; /* memvirt */
		case 'T':
			vhost_user = !strcmp(optarg, "vhost-user");
			if (!vhost_user && strcmp(optarg, "in-process")) {
				fprintf(stderr, "memvirt bench balloon: --transport is in-process or "
				        "vhost-user, not '%s'\n", optarg);
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	uint64_t ram = (uint64_t)(guest * 512) * 2 * MIB, tgt = (uint64_t)(target * 256) * 4 * MIB;
	if (guest <= 0 || target <= 0 || tgt + ram / KEEP_EVERY + 64 * MIB > ram) {
		fprintf(stderr, "memvirt bench balloon: the target must leave 1/%d of the guest "
		        "(in use) and 64 MiB free\n", KEEP_EVERY);
		return 2;
	}
	struct mv_host *h;
	int err = mv_host_new(NULL, &h);
	if (err) {
		fprintf(stderr, "memvirt bench balloon: host: %s\n", mv_strerror(err));
		return 1;
	}
	static const char *const names[2] = { "scattered_4k", "runs_2m" };
	struct phase_result r[2] = { 0 };
	for (int i = 0; i < 2; i++) {
		if (!json)
			fprintf(stderr, "%s: %.1f GiB guest, inflating to %.1f GiB\n", names[i], guest, target);
		run_phase(h, ram, tgt, i == 1, json, vhost_user, &r[i]);
	}
	mv_host_free(h);
	if (json) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "guest_mib", json_object_new_int64((int64_t)(ram / MIB)));
		json_object_object_add(o, "target_mib", json_object_new_int64((int64_t)(tgt / MIB)));
		json_object_object_add(o, "transport",
		                       json_object_new_string(vhost_user ? "vhost-user" : "in-process"));
		for (int i = 0; i < 2; i++)
			json_object_object_add(o, names[i], phase_json(&r[i], tgt));
		printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
		json_object_put(o);
	} else {
		print_table(r, names, tgt);
	}
	return r[0].reached && r[1].reached && r[0].deflated && r[1].deflated ? 0 : 1;
}
