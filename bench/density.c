/* density.c - `memvirt density`: how many simulated guests fit in a host memory budget,
 * with no overcommit, balloons only, sharing only, both, and kernel KSM only.
 *
 * For each configuration a child process adds guests of the profile one at a time. The
 * guests are real hosted guests (sim/): guest RAM registered with a memvirt host, the
 * guest balloon driver talking to the virtio-balloon device, a workload thread writing
 * and tracking every page. After each guest the run settles: the policy engine ticks
 * (it sees a host of `budget` MiB, of which the process's PSS is in use), the
 * scanner works, balloons move, until host memory stops changing. Host memory is the
 * process's PSS from /proc/self/smaps_rollup, measured, never estimated. A guest fits
 * when, settled, PSS stays within the budget and no guest ran out of memory. At the end
 * every guest's pages are compared with what its workload wrote: mismatches must be 0.
 *
 * The kernel KSM configuration (root only) marks guest RAM MADV_MERGEABLE and runs ksmd
 * at pages_to_scan=5000, sleep_millisecs=0, use_zero_pages=1; every knob is restored on
 * exit, error and Ctrl-C (ksmctl.c).
 */
#include "bench.h"
#include "density.h"
#include "ksmctl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB (1ull << 20)

const char *const density_config_names[DC_NR] = { "none", "balloon", "sharing", "both", "ksm" };


static double pss_mib(void)
{
	long kib = 0;
	return kc_pss_kib(0, &kib) ? 0 : (double)kib / 1024;
}

struct run {
	const struct density_opts *o;
	enum density_config c;
	struct mv_host *h;
	struct mv_policy *p;
	struct mvw_guest *g[DENSITY_MAX_GUESTS];
	unsigned n;
	double pss;                /* MiB, last measured */
	struct density_result *res;
};

static bool uses_balloon(enum density_config c) { return c == DC_BALLOON || c == DC_BOTH; }
static bool uses_sharing(enum density_config c) { return c == DC_SHARING || c == DC_BOTH; }

/* The engine sees a host of budget MiB: MemTotal the budget, MemAvailable what the
 * process (its PSS at the last look) leaves of it. */
static int host_inputs(void *opaque, struct mv_policy_host_inputs *h)
{
	struct run *r = opaque;
	double avail = (double)r->o->budget_mib - r->pss;
	h->mem_total_bytes = r->o->budget_mib * MIB;
	h->mem_available_bytes = avail > 0 ? (uint64_t)(avail * MIB) : 0;
	return 0;
}

static uint64_t guest_ram(const struct density_opts *o)
{
	return (uint64_t)((double)o->profile->ram_bytes * o->scale);
}

/* The policy the run gives the engine unless --policy names a file: keep floor_pct of
 * the budget free, tick as often as the run does, let every guest's balloon go down to
 * the guest's own floor, and keep the scanner between a quarter and a whole core (the
 * run measures capacity: a new guest must be looked at within the settling time). */
static char *default_policy(struct run *r)
{
	const struct density_opts *o = r->o;
	uint64_t floor = o->budget_mib * o->floor_pct / 100, min = guest_ram(o) * o->guest_floor_pct / 100 / MIB;
	size_t len = 512 + (size_t)o->max_guests * 64;
	char *t = malloc(len);
	if (!t)
		return NULL;
	int n = snprintf(t, len, "[host]\ngoal = floor\nfloor_mib = %llu\nband_mib = %llu\nperiod_ms = %u\n"
	                 "scanner_min_cpu = 0.25\nscanner_cpu = 0.5\nscanner_max_cpu = 1\n",
	                 (unsigned long long)floor, (unsigned long long)(floor > 1 ? floor : 1), o->period_ms);
	for (unsigned i = 1; i <= o->max_guests; i++)
		n += snprintf(t + n, len - (size_t)n, "[vm %s-%02u]\nmin_mib = %llu\n", density_config_names[r->c],
		              i, (unsigned long long)(min ? min : 1));
	return t;
}

static int policy_new(struct run *r)
{
	struct mv_policy_config pc;
	mv_policy_config_init(&pc);
	pc.host = uses_sharing(r->c) ? r->h : NULL;
	pc.host_inputs = host_inputs;
	pc.host_inputs_opaque = r;
	pc.log_file = r->res->log;
	int err = mv_policy_new(&pc, &r->p);
	if (err)
		return err;
	char msg[256] = "";
	if (r->o->policy_file) {
		err = mv_policy_load_file(r->p, r->o->policy_file, msg, sizeof(msg));
	} else {
		char *text = default_policy(r);
		err = text ? mv_policy_load_string(r->p, text, msg, sizeof(msg)) : -ENOMEM;
		free(text);
	}
	if (err)
		snprintf(r->res->why, sizeof(r->res->why), "policy: %s", msg[0] ? msg : mv_strerror(err));
	return err;
}

static int host_new(struct run *r)
{
	struct mv_host_config hc;
	mv_host_config_init(&hc);
	hc.cpu_share = 0.5;
	int err = mv_host_new(&hc, &r->h);
	if (!err && uses_sharing(r->c))
		err = mv_host_start(r->h);
	return err;
}

static int ksm_on(void)
{
	int err = kc_setting_set(KC_KSM_DIR "/pages_to_scan", 5000);
	if (!err)
		err = kc_setting_set(KC_KSM_DIR "/sleep_millisecs", 0);
	if (!err)
		err = kc_setting_set(KC_KSM_DIR "/use_zero_pages", 1);
	if (!err)
		err = kc_setting_set(KC_KSM_DIR "/run", 1);
	return err;
}

static void ksm_mark(struct mvw_guest *g)
{
	void *hva[4];
	uint64_t gpa[4], bytes[4];
	unsigned n = mvg_sim_ram(mvw_sim(g), hva, gpa, bytes, 4);
	for (unsigned i = 0; i < n; i++)
		madvise(hva[i], bytes[i], MADV_MERGEABLE);
}

static int add_guest(struct run *r)
{
	struct mvg_sim_config sc;
	mvg_sim_config_init(&sc);
	struct mvw_config wc;
	mvw_config_init(&wc);
	wc.profile = r->o->profile;
	wc.scale = r->o->scale;
	wc.sim = &sc;
	char name[32];
	snprintf(name, sizeof(name), "%s-%02u", density_config_names[r->c], r->n + 1);
	wc.name = name;
	sc.driver.floor_bytes = guest_ram(r->o) * r->o->guest_floor_pct / 100;
	struct mvw_guest *g;
	int err = mvw_guest_new(r->h, &wc, &g);
	if (err)
		return err;
	r->g[r->n++] = g;
	if (r->c == DC_KSM)
		ksm_mark(g);
	if (r->p && (err = mv_policy_attach(r->p, name, mvg_sim_vm(mvw_sim(g)),
	                                    uses_balloon(r->c) ? mvg_sim_balloon(mvw_sim(g)) : NULL)))
		return err;
	return mvw_start(g);
}

static uint64_t scans_done(struct run *r)
{
	struct mv_scan_stats st = { 0 };
	long ksm = 0;
	if (r->c == DC_KSM)
		return kc_ksm_read("full_scans", &ksm) ? 0 : (uint64_t)ksm;
	if (uses_sharing(r->c))
		mv_host_stats(r->h, &st);
	return st.full_scans;
}

/* No balloon is on its way to a target. */
static bool balloons_still(struct run *r)
{
	for (unsigned i = 0; uses_balloon(r->c) && i < r->n; i++) {
		struct mv_balloon_info in;
		if (!mv_balloon_info(mvg_sim_balloon(mvw_sim(r->g[i])), &in) &&
		    in.actual_bytes != in.target_bytes && !in.stalled)
			return false;
	}
	return true;
}

/* Let the system react to the new guest: tick the engine, wait until host memory stops
 * moving and the page-sharing engine made two full passes over everything. */
static double settle(struct run *r)
{
	const struct density_opts *o = r->o;
	uint64_t scans0 = scans_done(r);
	bool need_scans = uses_sharing(r->c) || r->c == DC_KSM;
	double t0 = bench_now_s(), pss = pss_mib(), last = pss;
	unsigned steady = 0;
	while (bench_now_s() - t0 < o->settle_max_s) {
		nanosleep(&(struct timespec){ 0, (long)o->period_ms * 1000000 }, NULL);
		pss = r->pss = pss_mib();
		if (r->p)
			mv_policy_tick(r->p, NULL);
		steady = pss > last * 1.005 || pss < last * 0.995 ? 0 : steady + 1;
		last = pss;
		if (steady >= 4 && balloons_still(r) && (!need_scans || scans_done(r) >= scans0 + 2))
			break;
		if (!o->quiet && isatty(2))
			fprintf(stderr, "\r  %-8s guest %2u: host %7.0f MiB of %llu, settling %4.1f s ",
			        density_config_names[r->c], r->n, pss, (unsigned long long)o->budget_mib,
			        bench_now_s() - t0);
	}
	return pss;
}

static uint64_t guest_ooms(struct run *r)
{
	uint64_t ooms = 0;
	for (unsigned i = 0; i < r->n; i++) {
		struct mvw_stats st;
		mvw_stats(r->g[i], &st);
		ooms += st.ooms;
	}
	return ooms;
}

/* What saved memory, at the state being recorded. */
static void snapshot(struct run *r, double pss, struct density_result *s)
{
	s->guests = r->n;
	s->host_mib = pss;
	s->balloon_mib = s->sharing_mib = s->zero_mib = 0;
	for (unsigned i = 0; i < r->n; i++) {
		struct mv_balloon_info in;
		if (!mv_balloon_info(mvg_sim_balloon(mvw_sim(r->g[i])), &in))
			s->balloon_mib += (double)in.held_bytes / MIB;
	}
	struct mv_scan_stats st;
	if (uses_sharing(r->c) && !mv_host_stats(r->h, &st)) {
		s->sharing_mib = (double)st.pages_sharing * 4096 / MIB;
		s->zero_mib = (double)st.pages_zero * 4096 / MIB;
		s->cpu_s = (double)st.cpu_ns / 1e9;
	}
	long sharing = 0, zero = 0;
	if (r->c == DC_KSM && !kc_ksm_read("pages_sharing", &sharing)) {
		kc_ksm_read("ksm_zero_pages", &zero);
		s->sharing_mib = (double)sharing * 4096 / MIB;
		s->zero_mib = (double)zero * 4096 / MIB;
		uint64_t ns = 0;
		int pid = kc_ksmd_pid();
		if (pid > 0 && !kc_task_cpu_ns(pid, &ns))
			s->cpu_s = (double)(ns - r->res->ksmd_ns0) / 1e9;
	}
}

static void verify_all(struct run *r)
{
	for (unsigned i = 0; i < r->n; i++)
		mvw_stop(r->g[i]);
	for (unsigned i = 0; i < r->n; i++) {
		uint64_t bad = 0;
		mvw_verify(r->g[i], &bad);
		r->res->mismatches += bad;
	}
}

static void teardown(struct run *r)
{
	mv_policy_free(r->p); /* detaches every VM */
	for (unsigned i = 0; i < r->n; i++)
		mvw_guest_free(r->g[i]);
	mv_host_free(r->h);
}

/* The whole run of one configuration, in a child process. */
static void run_config(const struct density_opts *o, enum density_config c, struct density_result *res)
{
	struct run r = { .o = o, .c = c, .res = res };
	res->stop = DS_MAX;
	int err = host_new(&r);
	if (!err && c == DC_KSM) {
		int pid = kc_ksmd_pid();
		if (pid > 0)
			kc_task_cpu_ns(pid, &res->ksmd_ns0);
		err = ksm_on();
	}
	if (!err && (uses_balloon(c) || uses_sharing(c)))
		err = policy_new(&r);
	double t0 = bench_now_s();
	while (!err && r.n < o->max_guests) {
		if ((err = add_guest(&r)))
			break;
		double t = bench_now_s(), pss = settle(&r);
		if (!o->quiet && !isatty(2))
			fprintf(stderr, "  %-8s guest %2u: host %7.0f MiB of %llu (settled in %.1f s)\n",
			        density_config_names[c], r.n, pss, (unsigned long long)o->budget_mib, bench_now_s() - t);
		res->series[r.n - 1] = pss;
		res->steps = r.n;
		if (pss > (double)o->budget_mib || guest_ooms(&r)) {
			res->stop = pss > (double)o->budget_mib ? DS_BUDGET : DS_OOM;
			break;
		}
		snapshot(&r, pss, res);
	}
	if (err && !res->why[0])
		snprintf(res->why, sizeof(res->why), "%s", mv_strerror(err));
	if (err)
		res->stop = DS_ERROR;
	res->wall_s = bench_now_s() - t0;
	res->guest_ooms = guest_ooms(&r);
	verify_all(&r);
	teardown(&r);
	if (c == DC_KSM)
		kc_settings_restore();
	if (!o->quiet && isatty(2))
		fprintf(stderr, "\r%78s\r", "");
}

int density_in_child(const struct density_opts *o, enum density_config c,
                     struct density_result *out, density_run_fn run)
{
	int fd[2];
	if (pipe(fd))
		return -errno;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		close(fd[0]);
		struct density_result res = { 0 };
		run(o, c, &res);
		res.log = NULL;
		ssize_t w = write(fd[1], &res, sizeof(res));
		_exit(w == (ssize_t)sizeof(res) ? 0 : 1);
	}
	close(fd[1]);
	ssize_t got = read(fd[0], out, sizeof(*out));
	close(fd[0]);
	int status = 0;
	waitpid(pid, &status, 0);
	return got == (ssize_t)sizeof(*out) ? 0 : -EIO;
}

/* The simulated run, its decision log kept when the options ask for one. */
static void run_logged(const struct density_opts *o, enum density_config c,
                       struct density_result *res)
{
	res->log = o->log_dir ? density_log_open(o, c) : NULL;
	run_config(o, c, res);
	if (res->log)
		fclose(res->log);
}

int density_run_one(const struct density_opts *o, enum density_config c, struct density_result *out)
{
	return density_in_child(o, c, out, run_logged);
}
