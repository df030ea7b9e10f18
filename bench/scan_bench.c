/* scan_bench.c - `memvirt bench scan`: memvirt's scanner against kernel KSM, same bytes, same run.
 *
 * Each engine runs in a child process that builds the same guest images (fixed seed),
 * so both start from identical memory and their PSS figures do not mix. memvirt scans
 * in the child's own thread with no CPU cap; ksmd runs with pages_to_scan=5000,
 * sleep_millisecs=0 and use_zero_pages=1. "Converged" means a full pass that frees
 * nothing more; CPU and wall time are counted up to the last pass that freed pages.
 * The re-check figure is the CPU of one full pass after convergence, per GiB scanned.
 * Before PSS is read after the run, every guest page is read once in both children.
 * Kernel settings changed for the run (KSM knobs, vm.max_map_count) are restored on
 * exit, error and Ctrl-C by ksmctl.c.
 */
#include "bench.h"
#include "ksmctl.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <memvirt/memvirt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAP_COUNT_SYSCTL "/proc/sys/vm/max_map_count"
#define VMA_BYTES 225 /* kernel memory per mapping: vm_area_struct + maple tree share */

struct engine_result {
	int err;                 /* 0 or -errno, with msg */
	char msg[160];
	long pages_freed;
	double cpu_s, wall_s, recheck_cpu_s_per_gib;
	double pss_before_mib, pss_after_mib;
	long vmas_added;
	long passes;
	long left_vma_budget;    /* memvirt only */
};

static double pss_mib(void)
{
	long kib = 0;
	kc_pss_kib(0, &kib);
	return (double)kib / 1024.0;
}

static double profile_gib(const struct bench_profile *p)
{
	return (double)p->nr_guests * (double)p->guest_pages * 4096.0 / (double)(1ul << 30);
}

/* Read every guest page once, as the guest would: pages merged but not yet faulted in
 * would otherwise be missing from PSS (memvirt's canonical pages live in a memfd). */
static void touch_guests(const struct bench_profile *p, const struct bench_guest *g)
{
	volatile uint8_t sink = 0;
	for (unsigned k = 0; k < p->nr_guests; k++)
		for (size_t i = 0; i < g[k].pages; i++)
			sink ^= g[k].mem[i * 4096];
	(void)sink;
}

static void fail_result(struct engine_result *r, int err, const char *what)
{
	r->err = err;
	snprintf(r->msg, sizeof(r->msg), "%s: %s", what, mv_strerror(err));
}

/* ---- memvirt, in a child ---- */

static void memvirt_log(void *opaque, enum mv_log_level lvl, const char *msg)
{
	if (lvl <= MV_LOG_WARN)
		fprintf(stderr, "memvirt: %s\n", msg);
}

static long freed(struct mv_host *h, struct mv_scan_stats *st)
{
	mv_host_stats(h, st);
	return (long)(st->pages_sharing + st->pages_zero);
}

static int attach_guests(struct mv_host *h, const struct bench_profile *p, struct bench_guest *g,
                         struct mv_vm **vms)
{
	for (unsigned k = 0; k < p->nr_guests; k++) {
		char name[32];
		snprintf(name, sizeof(name), "%s-%u", p->name, k);
		struct mv_vm_config vc;
		mv_vm_config_init(&vc);
		vc.name = name;
		vc.domain = p->domain;
		int err = mv_vm_new(h, &vc, &vms[k]);
		if (!err)
			err = mv_vm_region_add(vms[k], 0, 0, g[k].mem, g[k].pages * 4096, 0);
		if (err)
			return err;
	}
	return 0;
}

static void run_memvirt(const struct bench_profile *p, struct bench_guest *g, struct engine_result *r)
{
	struct mv_host_config cfg;
	mv_host_config_init(&cfg);
	cfg.log = memvirt_log;
	cfg.settle_ms = 0; /* nobody writes here: the second look comes on the next pass (the
	                      default waits 500 ms for it; the CPU spent is the same) */
	struct mv_host *h;
	struct mv_vm *vms[16] = { 0 };
	int err = mv_host_new(&cfg, &h);
	if (err)
		return fail_result(r, err, "mv_host_new");
	long maps0 = 0, maps1 = 0;
	kc_map_count(0, &maps0);
	r->pss_before_mib = pss_mib();
	err = attach_guests(h, p, g, vms);
	if (err) {
		fail_result(r, err, "registering guests");
		goto out;
	}
	double t0 = bench_now_s(), c0 = bench_cpu_s();
	struct mv_scan_stats st;
	long best = 0;
	for (int pass = 1; pass <= 20; pass++) {
		mv_host_scan(h, 1);
		long f = freed(h, &st);
		fprintf(stderr, "\rmemvirt: pass %d, %ld pages freed, %.2f cpu-s   ", pass, f, bench_cpu_s() - c0);
		if (pass > 1 && f <= best)
			break; /* (the first pass only looks: pages merge from their second look) */
		best = f;
		r->passes = pass;
		r->wall_s = bench_now_s() - t0;
		r->cpu_s = bench_cpu_s() - c0;
	}
	fputc('\n', stderr);
	double c1 = bench_cpu_s();
	mv_host_scan(h, 2);
	r->recheck_cpu_s_per_gib = (bench_cpu_s() - c1) / 2 / profile_gib(p);
	r->pages_freed = freed(h, &st);
	r->left_vma_budget = (long)st.pages_left_vma_budget;
	touch_guests(p, g);
	r->pss_after_mib = pss_mib();
	kc_map_count(0, &maps1);
	r->vmas_added = maps1 - maps0;
out:
	for (unsigned k = 0; k < p->nr_guests; k++)
		mv_vm_free(vms[k]);
	mv_host_free(h);
}

/* ---- kernel KSM: the child holds the memory, the parent drives ksmd ---- */

static int pipe_cmd(int fd, char c)
{
	return write(fd, &c, 1) == 1 ? 0 : -EPIPE;
}

static char pipe_wait(int fd)
{
	char c = 0;
	return read(fd, &c, 1) == 1 ? c : 0;
}

static void ksm_child(const struct bench_profile *p, struct bench_guest *g, int in, int out,
                      struct engine_result *r)
{
	kc_map_count(0, &r->vmas_added);
	for (unsigned k = 0; k < p->nr_guests; k++)
		if (madvise(g[k].mem, g[k].pages * 4096, MADV_MERGEABLE))
			return fail_result(r, -errno, "madvise(MADV_MERGEABLE)");
	r->pss_before_mib = pss_mib();
	pipe_cmd(out, 'R'); /* ready: parent starts ksmd */
	if (pipe_wait(in) != 'M')
		return fail_result(r, -EPIPE, "waiting for the parent");
	touch_guests(p, g);
	r->pss_after_mib = pss_mib();
	long maps = 0;
	kc_map_count(0, &maps);
	r->vmas_added = maps - r->vmas_added;
}

static void ksm_progress(void *opaque, long f, double elapsed)
{
	fprintf(stderr, "\rksm: %ld pages freed after %.0f s   ", f, elapsed);
}

/* Parent side: set the knobs, wait for convergence, measure a re-check pass. */
static int drive_ksm(const struct bench_profile *p, struct engine_result *r)
{
	static const struct { const char *knob; long v; } knobs[] = {
		{ "pages_to_scan", 5000 }, { "sleep_millisecs", 0 }, { "use_zero_pages", 1 }, { "run", 1 },
	};
	for (size_t i = 0; i < sizeof(knobs) / sizeof(knobs[0]); i++) {
		char path[128];
		snprintf(path, sizeof(path), KC_KSM_DIR "/%s", knobs[i].knob);
		int err = kc_setting_set(path, knobs[i].v);
		if (err)
			return err;
	}
	uint64_t cpu_ns = 0;
	int err = kc_ksm_wait_converged(600, &r->wall_s, &cpu_ns, &r->pages_freed, ksm_progress, NULL);
	fputc('\n', stderr);
	r->cpu_s = (double)cpu_ns / 1e9;
	if (err)
		return err;
	double per_pass = 0;
	err = kc_ksm_recheck_cpu(300, &per_pass);
	r->recheck_cpu_s_per_gib = per_pass / profile_gib(p);
	return err;
}

/* ---- children ---- */

static int spawn(const struct bench_profile *p, char engine, struct engine_result *r)
{
	int res[2], to_child[2], from_child[2];
	if (pipe(res) || pipe(to_child) || pipe(from_child))
		return -errno;
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		struct engine_result cr = { 0 };
		struct bench_guest *g = bench_guests_new(p);
		if (!g)
			fail_result(&cr, -errno, "allocating guest memory");
		else if (engine == 'm')
			run_memvirt(p, g, &cr);
		else
			ksm_child(p, g, to_child[0], from_child[1], &cr);
		if (write(res[1], &cr, sizeof(cr)) != sizeof(cr))
			_exit(2);
		_exit(0);
	}
	close(res[1]);
	close(to_child[0]);
	close(from_child[1]);
	int err = 0;
	if (engine == 'k') {
		if (pipe_wait(from_child[0]) == 'R')
			err = drive_ksm(p, r);
		pipe_cmd(to_child[1], 'M');
	}
	struct engine_result cr;
	ssize_t n = read(res[0], &cr, sizeof(cr));
	waitpid(pid, NULL, 0);
	if (engine == 'k') {
		/* keep the parent's figures (ksmd), take the child's (PSS, VMAs) */
		r->pss_before_mib = cr.pss_before_mib;
		r->pss_after_mib = cr.pss_after_mib;
		r->vmas_added = cr.vmas_added;
		if (cr.err) {
			r->err = cr.err;
			memcpy(r->msg, cr.msg, sizeof(r->msg));
		}
	} else if (n == sizeof(cr)) {
		*r = cr;
	} else {
		fail_result(r, -EPIPE, "memvirt child died");
	}
	if (err && !r->err)
		fail_result(r, err, "driving kernel KSM");
	close(res[0]);
	close(to_child[1]);
	close(from_child[0]);
	return r->err;
}

/* ---- report ---- */

static json_object *engine_json(const struct engine_result *r)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "pages_freed", json_object_new_int64(r->pages_freed));
	json_object_object_add(o, "cpu_s", json_object_new_double(r->cpu_s));
	json_object_object_add(o, "wall_s", json_object_new_double(r->wall_s));
	json_object_object_add(o, "pss_before_mib", json_object_new_double(r->pss_before_mib));
	json_object_object_add(o, "pss_after_mib", json_object_new_double(r->pss_after_mib));
	json_object_object_add(o, "vmas_added", json_object_new_int64(r->vmas_added));
	json_object_object_add(o, "recheck_cpu_s_per_gib", json_object_new_double(r->recheck_cpu_s_per_gib));
	json_object_object_add(o, "freed_per_cpu_s", json_object_new_double(r->cpu_s > 0 ? r->pages_freed / r->cpu_s : 0));
	json_object_object_add(o, "vma_kernel_mib", json_object_new_double((double)r->vmas_added * VMA_BYTES / 1048576.0));
	return o;
}

static double ratio(double a, double b)
{
	return b > 0 ? a / b : 0;
}

struct ratios { double freed_per_cpu_s, recheck_cpu, pss_saved; };

static struct ratios compute_ratios(const struct engine_result *m, const struct engine_result *k)
{
	return (struct ratios){
		ratio(ratio(m->pages_freed, m->cpu_s), ratio(k->pages_freed, k->cpu_s)),
		ratio(k->recheck_cpu_s_per_gib, m->recheck_cpu_s_per_gib),
		ratio(m->pss_before_mib - m->pss_after_mib, k->pss_before_mib - k->pss_after_mib),
	};
}

static void print_json(const struct bench_profile *p, const struct engine_result *m,
                       const struct engine_result *k, long map_limit)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "profile", json_object_new_string(p->name));
	json_object_object_add(o, "gib", json_object_new_double(profile_gib(p)));
	json_object_object_add(o, "max_map_count", json_object_new_int64(map_limit));
	json_object *mj = engine_json(m);
	json_object_object_add(mj, "passes", json_object_new_int64(m->passes));
	json_object_object_add(mj, "pages_left_vma_budget", json_object_new_int64(m->left_vma_budget));
	json_object_object_add(mj, "vmas_per_freed_page", json_object_new_double(ratio(m->vmas_added, m->pages_freed)));
	json_object_object_add(o, "memvirt", mj);
	if (k) {
		json_object_object_add(o, "ksm", engine_json(k));
		struct ratios q = compute_ratios(m, k);
		json_object *rj = json_object_new_object();
		json_object_object_add(rj, "freed_per_cpu_s", json_object_new_double(q.freed_per_cpu_s));
		json_object_object_add(rj, "recheck_cpu", json_object_new_double(q.recheck_cpu));
		json_object_object_add(rj, "pss_saved", json_object_new_double(q.pss_saved));
		json_object_object_add(o, "ratios", rj);
	} else {
		json_object_object_add(o, "ksm", NULL);
		json_object_object_add(o, "ratios", NULL);
	}
	printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
}

static void print_table(const struct bench_profile *p, const struct engine_result *m,
                        const struct engine_result *k)
{
	printf("\nprofile %s: %s\n\n", p->name, p->what);
	printf("%-26s %14s %14s\n", "", "memvirt", k ? "kernel KSM" : "");
	const struct engine_result *e[2] = { m, k };
#define ROW(label, fmt, expr) do { printf("%-26s", label); \
	for (int i = 0; i < 2; i++) if (e[i]) { const struct engine_result *x = e[i]; printf(" " fmt, expr); } \
	printf("\n"); } while (0)
	ROW("pages freed", "%14ld", x->pages_freed);
	ROW("CPU seconds", "%14.3f", x->cpu_s);
	ROW("wall seconds", "%14.3f", x->wall_s);
	ROW("pages freed per CPU-s", "%14.0f", ratio(x->pages_freed, x->cpu_s));
	ROW("PSS before (MiB)", "%14.1f", x->pss_before_mib);
	ROW("PSS after (MiB)", "%14.1f", x->pss_after_mib);
	ROW("VMAs added", "%14ld", x->vmas_added);
	ROW("re-check CPU-s per GiB", "%14.4f", x->recheck_cpu_s_per_gib);
#undef ROW
	if (m->left_vma_budget)
		printf("memvirt left %ld pages unmerged to stay under vm.max_map_count\n", m->left_vma_budget);
	if (!k)
		return;
	struct ratios q = compute_ratios(m, k);
	double want_freed = !strcmp(p->name, "clones") ? 10 : 1.5;
	printf("\nmemvirt / KSM: freed per CPU-s %.2fx (target >= %.1fx) %s\n", q.freed_per_cpu_s,
	       want_freed, q.freed_per_cpu_s >= want_freed ? "ok" : "MISSED");
	printf("               re-check CPU %.1fx less (target >= 10x) %s\n", q.recheck_cpu,
	       q.recheck_cpu >= 10 ? "ok" : "MISSED");
	printf("               PSS saved %.3f (target >= 0.99) %s\n", q.pss_saved,
	       q.pss_saved >= 0.99 ? "ok" : "MISSED");
}

/* The scattered profile needs a mapping per isolated duplicate: raise the limit for this
 * run only (restored on exit and Ctrl-C), and say so. */
static long raise_map_count(const struct bench_profile *p, bool quiet)
{
	long want = (long)(p->nr_guests * p->guest_pages) + 65530;
	long was = kc_map_count_raise(0), now = kc_map_count_raise(want);
	if (now > was && !quiet)
		fprintf(stderr, "raised vm.max_map_count %ld -> %ld for this run (restored on exit); "
		        "the mappings cost ~%d bytes of kernel memory each\n", was, now, VMA_BYTES);
	return now;
}

static void usage(void)
{
	fprintf(stderr, "usage: memvirt bench scan [--profile NAME] [--vs-ksm] [--json]\n"
	        "  --profile NAME  guest memory image (default scattered):\n");
	bench_profiles_list();
	fprintf(stderr, "  --vs-ksm        also run kernel KSM over an identical copy (root; every\n"
	        "                  KSM knob is restored afterwards, also on error and Ctrl-C)\n"
	        "  --json          print one JSON object on stdout\n");
}

int bench_scan_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "profile", required_argument, NULL, 'p' }, { "vs-ksm", no_argument, NULL, 'k' },
		{ "json", no_argument, NULL, 'j' }, { "help", no_argument, NULL, 'h' }, { 0 },
	};
	const char *profile = "scattered";
	bool vs_ksm = false, json = false;
	int c;
	while ((c = getopt_long(argc, argv, "p:kjh", opts, NULL)) != -1) {
		switch (c) {
		case 'p': profile = optarg; break;
		case 'k': vs_ksm = true; break;
		case 'j': json = true; break;
		case 'h': usage(); return 0;
		default: usage(); return 2;
		}
	}
	const struct bench_profile *p = bench_profile_find(profile);
	if (!p || optind != argc) {
		fprintf(stderr, p ? "unexpected argument: %s\n" : "unknown profile: %s\n", p ? argv[optind] : profile);
		usage();
		return 2;
	}
	if (vs_ksm && !kc_ksm_available()) {
		fprintf(stderr, "--vs-ksm needs root and kernel KSM (%s/run writable)\n", KC_KSM_DIR);
		return 1;
	}
	long ksm_run = 0;
	if (vs_ksm && (kc_ksm_read("run", &ksm_run) || ksm_run != 0)) {
		fprintf(stderr, "kernel KSM is already running (run=%ld): refusing to measure over "
		        "someone else's merges\n", ksm_run);
		return 1;
	}
	if (bench_settings_recover("memvirt bench scan"))
		return 1;
	long limit = raise_map_count(p, json);
	struct engine_result m = { 0 }, k = { 0 };
	fprintf(stderr, "memvirt: scanning %s (%.2f GiB)\n", p->name, profile_gib(p));
	int err = spawn(p, 'm', &m);
	if (!err && vs_ksm) {
		fprintf(stderr, "ksm: scanning an identical copy (pages_to_scan=5000, sleep_millisecs=0, use_zero_pages=1)\n");
		err = spawn(p, 'k', &k);
	}
	int rerr = kc_settings_restore();
	if (err) {
		fprintf(stderr, "bench scan: %s\n", m.err ? m.msg : k.msg);
		return 1;
	}
	if (rerr)
		fprintf(stderr, "warning: restoring kernel settings: %s\n", mv_strerror(rerr));
	if (json)
		print_json(p, &m, vs_ksm ? &k : NULL, limit);
	else
		print_table(p, &m, vs_ksm ? &k : NULL);
	return 0;
}
