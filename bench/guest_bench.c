/* guest_bench.c - `memvirt bench guest`: what each page-sharing engine costs a running guest.
 *
 * Overview. For every working set, each engine runs in a child process of its own (fork)
 * that builds the same guest: --guest-mib of the `scattered` profile's content (fixed
 * seed: identical bytes in every child) in a private anonymous mapping, transparent huge
 * pages left as the system has them. A writer thread, the guest's vCPU (writer.c), stores
 * 8 bytes at a time into random pages of the working set, the first ws% of the guest's
 * pages. The guest, the engine and the writer are ready before the clock starts.
 *
 *   Phase 1 (--seconds): the engine starts, then the writer. Measured: stores per second,
 *   the longest gap between two stores, the engine's CPU, the pages it saved.
 *   Phase 2: the writer stops; pages saved are polled every 100 ms until they have not
 *   grown for --settle-quiet (3 s), or --settle-timeout (120 s) has passed: how long the
 *   engine takes to merge what is now stable. Not run for `none`.
 *
 * Engines: `none`; `memvirt`, the default host configuration, one VM, its background
 * workers (mv_host_start); `ksm`, kernel KSM at the kernel's defaults (pages_to_scan=100,
 * sleep_millisecs=20) plus use_zero_pages=1, MADV_MERGEABLE on the guest at the phase
 * start, run=1 only while its child lives. Kernel settings (KSM knobs, vm.max_map_count)
 * are changed by the parent through ksmctl.c, which restores them on exit, error and
 * signals; a child only reads them.
 */
#include "guest_bench.h"
#include "ksmctl.h"
#include "writer.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <memvirt/memvirt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define POLL_S 0.1          /* phase 2: pages saved polled this often */
#define WRITER_SEED 0x67756573747663ull

static void fail(struct gb_result *r, int err, const char *what)
{
	r->err = err;
	snprintf(r->msg, sizeof(r->msg), "%s: %s", what, mv_strerror(err));
}

static double clock_s(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

enum progress_kind { PROGRESS_STAGE, PROGRESS_UPDATE, PROGRESS_DONE };

/* A progress line on stderr: rewritten in place on a terminal; elsewhere (a log) the first
 * line of each stage, updates every 5 s at most, and the final line. */
static void progress(enum progress_kind kind, const char *fmt, ...)
{
	static int tty = -1;
	static double next;
	bool final = kind == PROGRESS_DONE;
	if (tty < 0)
		tty = isatty(STDERR_FILENO);
	if (!tty) {
		double now = clock_s(CLOCK_MONOTONIC);
		if (kind == PROGRESS_UPDATE && now < next)
			return;
		next = now + 5;
	}
	char line[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, tty ? "\r%-78s%s" : "%s%s", line, final || !tty ? "\n" : "");
}

/* ---- one engine, one working set, in the child ---- */

static int guest_new(const struct gb_opts *o, struct bench_guest *g)
{
	g->pages = (size_t)(o->guest_mib << 20) / GB_PAGE;
	g->mem = mmap(NULL, g->pages * GB_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (g->mem == MAP_FAILED) {
		g->mem = NULL;
		return -errno;
	}
	bench_profile_find("scattered")->fill(g, 1);
	return 0;
}

static uint64_t engine_cpu(struct gb_child *c, const struct gb_engine *ops)
{
	uint64_t ns = 0;
	if (ops->cpu_ns)
		ops->cpu_ns(c, &ns);
	return ns;
}

/* Writer running for --seconds. Engine CPU: the larger of the engine's own figure and the
 * child's CPU beyond the writer thread (memvirt's threads live in the child). */
static int phase_writing(struct gb_child *c, const struct gb_engine *ops, struct bench_writer *w,
                         struct gb_result *r)
{
	double proc0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
	uint64_t eng0 = engine_cpu(c, ops);
	int err = ops->start ? ops->start(c) : 0;
	if (err) {
		bench_writer_stop(w);
		fail(r, err, "starting the engine");
		return err;
	}
	double t0 = clock_s(CLOCK_MONOTONIC), end = t0 + c->o->seconds, now;
	bench_writer_go(w);
	while ((now = clock_s(CLOCK_MONOTONIC)) < end) {
		double el = now - t0;
		if (el < 0.5)
			progress(PROGRESS_STAGE, "%s: writing for %g s", c->label, c->o->seconds);
		else
			progress(PROGRESS_UPDATE, "%s: writing, %.0f s left, %.2f M writes/s", c->label,
			         end - now, (double)bench_writer_count(w) / el / 1e6);
		sleep_s(end - now < 1 ? end - now : 1);
	}
	bench_writer_stop(w);
	double wall = clock_s(CLOCK_MONOTONIC) - t0;
	double beyond_writer = clock_s(CLOCK_PROCESS_CPUTIME_ID) - proc0 - w->cpu_s;
	double own = (double)(engine_cpu(c, ops) - eng0) / 1e9;
	r->writes_per_s = w->wall_s > 0 ? (double)w->writes / w->wall_s : 0;
	r->max_stall_us = w->max_stall_ns / 1e3;
	r->engine_cpu_s = own > beyond_writer ? own : beyond_writer;
	r->cpu_share = r->engine_cpu_s / wall;
	r->pages_saved = ops->saved ? ops->saved(c) : 0;
	if (ops->finish)
		ops->finish(c, r);
	if (ops->saved)
		progress(PROGRESS_DONE, "%s: %.2f M writes/s, max stall %.0f us, engine %.2f cpu-s, "
		         "%ld pages saved", c->label, r->writes_per_s / 1e6, r->max_stall_us,
		         r->engine_cpu_s, r->pages_saved);
	else
		progress(PROGRESS_DONE, "%s: %.2f M writes/s, max stall %.0f us", c->label,
		         r->writes_per_s / 1e6, r->max_stall_us);
	return 0;
}

/* Writer stopped: how long until pages saved stop growing. Settled once they have not grown
 * for --settle-quiet, during which the engine completed a full pass, and two full passes
 * since the stop: every page had two looks after it last changed (KSM merges a page only
 * when two consecutive passes find the same checksum; at its defaults a pass over 1 GiB
 * takes 52 s, with no merge at all before the second). */
static void phase_settling(struct gb_child *c, const struct gb_engine *ops, struct gb_result *r)
{
	double t0 = clock_s(CLOCK_MONOTONIC), last = 0, el = 0, next_line = 0;
	long best = r->pages_saved, now = best;
	long scans0 = ops->full_scans(c), scans_grown = scans0, scans = scans0;
	for (;;) {
		sleep_s(POLL_S);
		now = ops->saved(c);
		scans = ops->full_scans(c);
		el = clock_s(CLOCK_MONOTONIC) - t0;
		if (now > best) {
			best = now;
			last = el;
			scans_grown = scans;
		}
		if (el - last >= c->o->settle_quiet_s && scans > scans_grown && scans - scans0 >= 2) {
			r->settled = true;
			break;
		}
		if (el >= c->o->settle_timeout_s)
			break;
		if (el >= next_line) {
			progress(next_line ? PROGRESS_UPDATE : PROGRESS_STAGE, "%s: settling, %ld pages saved, "
			         "last growth at %.1f s, passes %ld (at most %.0f s more)", c->label, now, last,
			         scans - scans0, c->o->settle_timeout_s - el);
			next_line = el + 1;
		}
	}
	r->pages_saved_after_stop = now;
	r->merge_after_stop_s = last;
	progress(PROGRESS_DONE, "%s: %ld pages saved, the last %.1f s after the writer stopped%s", c->label,
	         now, last, r->settled ? "" : " (not settled at --settle-timeout)");
}

static void child_run(const struct gb_opts *o, double ws_pct, enum gb_engine_id e, struct gb_result *r)
{
	const struct gb_engine *ops = &gb_engines[e];
	char label[48];
	snprintf(label, sizeof(label), "ws %g%% %s", ws_pct, ops->name);
	struct gb_child c = { .o = o, .label = label };
	struct bench_writer w = { .seed = WRITER_SEED };
	progress(PROGRESS_STAGE, "%s: filling the guest, setting up", label);
	int err = guest_new(o, &c.g);
	if (err)
		return fail(r, err, "allocating guest memory");
	if (ops->setup && (err = ops->setup(&c))) {
		fail(r, err, "setting up the engine");
		goto teardown;
	}
	w.mem = c.g.mem;
	w.ws_pages = (size_t)((double)c.g.pages * ws_pct / 100);
	if (!w.ws_pages)
		w.ws_pages = 1;
	if ((err = bench_writer_start(&w))) {
		fail(r, err, "starting the writer thread");
		goto teardown;
	}
	if (phase_writing(&c, ops, &w, r))
		goto teardown;
	if (e != GB_NONE && o->settle)
		phase_settling(&c, ops, r);
	r->ran = true;
teardown:
	if (ops->teardown)
		ops->teardown(&c);
	munmap(c.g.mem, c.g.pages * GB_PAGE);
}

/* ---- the parent: one child per engine and working set ---- */

static int run_engine(const struct gb_opts *o, double ws_pct, enum gb_engine_id e, struct gb_result *r)
{
	int fds[2], err;
	if (pipe(fds)) {
		fail(r, -errno, "pipe");
		return r->err;
	}
	if (e == GB_KSM && (err = kc_setting_set(KC_KSM_DIR "/run", 1))) {
		close(fds[0]);
		close(fds[1]);
		fail(r, err, "starting kernel KSM (run=1)");
		return err;
	}
	fflush(NULL);
	pid_t pid = fork();
	int fork_err = pid < 0 ? -errno : 0;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(fds[0]);
		struct gb_result cr = { 0 };
		child_run(o, ws_pct, e, &cr);
		_exit(write(fds[1], &cr, sizeof(cr)) == sizeof(cr) ? 0 : 1);
	}
	close(fds[1]);
	ssize_t n = pid < 0 ? -1 : read(fds[0], r, sizeof(*r));
	int st = 0;
	if (pid > 0)
		waitpid(pid, &st, 0);
	close(fds[0]);
	if (e == GB_KSM && (err = kc_setting_set(KC_KSM_DIR "/run", 0)))
		fprintf(stderr, "bench guest: stopping kernel KSM (run=0): %s\n", mv_strerror(err));
	if (pid < 0) {
		fail(r, fork_err, "fork");
	} else if (n != (ssize_t)sizeof(*r)) {
		memset(r, 0, sizeof(*r));
		r->err = -ECHILD;
		snprintf(r->msg, sizeof(r->msg), "the child died (%s %d)",
		         WIFSIGNALED(st) ? "signal" : "exit status",
		         WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	}
	if (r->err)
		fprintf(stderr, "bench guest: ws %g%% %s: %s\n", ws_pct, gb_engines[e].name, r->msg);
	return r->err;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* One working set: o->rounds of phase 1 per engine, the engines alternating so that the
 * machine's drift hits them alike; phase 2 in the last round. */
static int run_rounds(struct gb_opts *o, double ws_pct, struct gb_result *res)
{
	double writes[GB_NR][20], stall[GB_NR] = { 0 };
	int failed = 0;
	for (unsigned k = 0; k < o->rounds; k++) {
		o->settle = k + 1 == o->rounds;
		for (int e = 0; e < GB_NR; e++) {
			if (!o->enabled[e])
				continue;
			failed |= run_engine(o, ws_pct, e, &res[e]) != 0;
			writes[e][k] = res[e].writes_per_s;
			stall[e] = res[e].max_stall_us > stall[e] ? res[e].max_stall_us : stall[e];
		}
	}
	for (int e = 0; e < GB_NR; e++) {
		qsort(writes[e], o->rounds, sizeof(double), cmp_double);
		res[e].writes_per_s = writes[e][o->rounds / 2];
		res[e].max_stall_us = stall[e];
	}
	return failed;
}

/* Whether kernel KSM can be measured here; says why not. */
static bool ksm_usable(void)
{
	long run = 0;
	if (!kc_ksm_available()) {
		fprintf(stderr, "bench guest: ksm skipped: needs root and kernel KSM (%s/run writable)\n",
		        KC_KSM_DIR);
		return false;
	}
	if (kc_ksm_read("run", &run) || run != 0) {
		fprintf(stderr, "bench guest: ksm skipped: kernel KSM is already running (run=%ld), its "
		        "figures would mix with someone else's merges\n", run);
		return false;
	}
	int err = gb_ksm_prepare();
	if (err)
		fprintf(stderr, "bench guest: ksm skipped: setting its knobs: %s\n", mv_strerror(err));
	return !err;
}

/* A duplicate needs a mapping of its own: the same limit as `bench scan`, restored on exit. */
static void raise_map_count(const struct gb_opts *o)
{
	long want = (long)((o->guest_mib << 20) / GB_PAGE) + 65530;
	long was = kc_map_count_raise(0), now = kc_map_count_raise(want);
	if (now > was)
		fprintf(stderr, "raised vm.max_map_count %ld -> %ld for this run (restored on exit)\n", was, now);
	else if (now < want)
		fprintf(stderr, "vm.max_map_count is %ld (not root?): memvirt stops merging near that many "
		        "mappings\n", now);
}

/* ---- report ---- */

static double ratio(const struct gb_result *x, const struct gb_result *none)
{
	return none->ran && none->writes_per_s > 0 ? x->writes_per_s / none->writes_per_s : 0;
}

static json_object *engine_json(enum gb_engine_id e, const struct gb_result *x, const struct gb_result *none)
{
	if (!x->ran)
		return NULL;
	json_object *j = json_object_new_object();
	json_object_object_add(j, "writes_per_s", json_object_new_double(x->writes_per_s));
	if (e != GB_NONE)
		json_object_object_add(j, "ratio", json_object_new_double(ratio(x, none)));
	json_object_object_add(j, "max_stall_us", json_object_new_double(x->max_stall_us));
	if (e == GB_NONE)
		return j;
	json_object_object_add(j, "engine_cpu_s", json_object_new_double(x->engine_cpu_s));
	json_object_object_add(j, "cpu_share", json_object_new_double(x->cpu_share));
	json_object_object_add(j, "pages_saved", json_object_new_int64(x->pages_saved));
	json_object_object_add(j, "pages_saved_after_stop", json_object_new_int64(x->pages_saved_after_stop));
	json_object_object_add(j, "merge_after_stop_s", json_object_new_double(x->merge_after_stop_s));
	json_object_object_add(j, "settled", json_object_new_boolean(x->settled));
	if (e == GB_MEMVIRT) {
		json_object_object_add(j, "write_faults", json_object_new_int64((int64_t)x->write_faults));
		json_object_object_add(j, "writer_wait_max_us", json_object_new_double(x->writer_wait_max_us));
	}
	return j;
}

static void print_json(const struct gb_opts *o, struct gb_result (*res)[GB_NR])
{
	json_object *root = json_object_new_object(), *sets = json_object_new_array();
	json_object_object_add(root, "guest_mib", json_object_new_int64((int64_t)o->guest_mib));
	json_object_object_add(root, "seconds", json_object_new_double(o->seconds));
	json_object_object_add(root, "rounds", json_object_new_int((int)o->rounds));
	for (unsigned i = 0; i < o->nr_ws; i++) {
		json_object *s = json_object_new_object();
		json_object_object_add(s, "ws_pct", json_object_new_double(o->ws[i]));
		for (int e = 0; e < GB_NR; e++)
			json_object_object_add(s, gb_engines[e].name, engine_json(e, &res[i][e], &res[i][GB_NONE]));
		json_object_array_add(sets, s);
	}
	json_object_object_add(root, "working_sets", sets);
	printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY |
	                                                     JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(root);
}

static void print_table(const struct gb_opts *o, double ws_pct, const struct gb_result *r)
{
	size_t pages = (size_t)(o->guest_mib << 20) / GB_PAGE, ws = (size_t)((double)pages * ws_pct / 100);
	printf("\nworking set %g%% (%zu of %zu pages), %g s of writes per engine\n\n", ws_pct,
	       ws ? ws : 1, pages, o->seconds);
	printf("%-8s %12s %8s %13s %10s %9s %11s %11s %9s\n", "engine", "writes/s", "vs none",
	       "max stall us", "engine cpu", "cpu share", "saved run", "saved stop", "merged s");
	for (int e = 0; e < GB_NR; e++) {
		const struct gb_result *x = &r[e];
		if (!o->enabled[e])
			continue;
		if (!x->ran) {
			printf("%-8s %s\n", gb_engines[e].name, x->err ? x->msg : "skipped");
			continue;
		}
		printf("%-8s %12.0f %8.3f %13.0f", gb_engines[e].name, x->writes_per_s, ratio(x, &r[GB_NONE]),
		       x->max_stall_us);
		if (e == GB_NONE)
			printf(" %10s %9s %11s %11s %9s\n", "-", "-", "-", "-", "-");
		else
			printf(" %10.2f %9.3f %11ld %11ld %8.1f%s\n", x->engine_cpu_s, x->cpu_share, x->pages_saved,
			       x->pages_saved_after_stop, x->merge_after_stop_s, x->settled ? " " : "+");
	}
	const struct gb_result *m = &r[GB_MEMVIRT];
	if (m->ran)
		printf("memvirt made the writer wait %llu times, the longest %.0f us\n",
		       (unsigned long long)m->write_faults, m->writer_wait_max_us);
	for (int e = GB_MEMVIRT; e < GB_NR; e++)
		if (r[e].ran && !r[e].settled) {
			printf("+: not settled when --settle-timeout (%g s) ran out\n", o->settle_timeout_s);
			break;
		}
	fflush(stdout);
}

/* ---- options ---- */

static void usage(FILE *f)
{
	fprintf(f, "usage: memvirt bench guest [--guest-mib N] [--ws LIST] [--seconds S]\n"
	        "                          [--settle-quiet S] [--settle-timeout S] [--no-ksm] [--json]\n"
	        "What each page-sharing engine (none, memvirt, kernel KSM) costs a running guest:\n"
	        "a vCPU thread stores into random pages of a working set while the engine runs.\n"
	        "  --guest-mib N       guest RAM, `scattered` content (default 1024; units K M G T)\n"
	        "  --ws LIST           working sets, percent of guest pages (default 1,10,25,100)\n"
	        "  --seconds S         writes per engine and working set (default 20)\n"
	        "  --settle-quiet S    after the writer stops, merging is over once pages saved have\n"
	        "                      not grown for this long (default 10)\n"
	        "  --settle-timeout S  ...or after this long (default 120)\n"
	        "  --rounds N          phase 1 this many times per engine, engines alternating, a\n"
	        "                      fresh guest each time; writes/s is the median, the stall the\n"
	        "                      longest, the rest from the last round (default 3)\n"
	        "  --no-ksm            skip kernel KSM (it needs root; its knobs are restored after)\n"
	        "  --json              one JSON object on stdout\n");
}

static int parse_ws(const char *list, struct gb_opts *o)
{
	char buf[256];
	if (snprintf(buf, sizeof(buf), "%s", list) >= (int)sizeof(buf)) {
		fprintf(stderr, "memvirt: --ws: list too long\n");
		return -EINVAL;
	}
	o->nr_ws = 0;
	for (char *item = buf, *comma;; item = comma + 1) {
		comma = strchr(item, ',');
		if (comma)
			*comma = 0;
		if (o->nr_ws == GB_MAX_WS) {
			fprintf(stderr, "memvirt: --ws takes at most %d working sets\n", GB_MAX_WS);
			return -EINVAL;
		}
		int err = bench_arg_double("--ws", item, 0.1, 100, &o->ws[o->nr_ws++]);
		if (err || !comma)
			return err;
	}
}

static int parse(int argc, char **argv, struct gb_opts *o)
{
	static const struct option opts[] = {
		{ "guest-mib", required_argument, NULL, 'g' }, { "ws", required_argument, NULL, 'w' },
		{ "seconds", required_argument, NULL, 's' }, { "settle-timeout", required_argument, NULL, 't' },
		{ "settle-quiet", required_argument, NULL, 'q' }, { "no-ksm", no_argument, NULL, 'K' },
		{ "json", no_argument, NULL, 'j' }, { "help", no_argument, NULL, 'h' },
		{ "rounds", required_argument, NULL, 'r' }, { 0 } };
	int c, err = 0;
	double mib;
	uint64_t rounds = o->rounds;
	while (!err && (c = getopt_long(argc, argv, "g:w:s:q:t:r:Kjh", opts, NULL)) != -1) {
		switch (c) {
		case 'g':
			err = bench_arg_size_mib("--guest-mib", optarg, 16, 1 << 20, 1, &mib);
			o->guest_mib = (uint64_t)mib;
			break;
		case 'w': err = parse_ws(optarg, o); break;
		case 's': err = bench_arg_double("--seconds", optarg, 1, 86400, &o->seconds); break;
		case 'q': err = bench_arg_double("--settle-quiet", optarg, 0.5, 3600, &o->settle_quiet_s); break;
		case 't': err = bench_arg_double("--settle-timeout", optarg, 1, 86400, &o->settle_timeout_s); break;
		case 'r':
			err = bench_arg_uint("--rounds", optarg, 1, 20, &rounds);
			o->rounds = (unsigned)rounds;
			break;
		case 'K': o->enabled[GB_KSM] = false; break;
		case 'j': o->json = true; break;
		case 'h': usage(stdout); return 1;
		default: usage(stderr); return -EINVAL;
		}
	}
	if (!err && optind != argc) {
		fprintf(stderr, "memvirt bench guest: unexpected argument '%s'\n", argv[optind]);
		err = -EINVAL;
	}
	return err;
}

int bench_guest_main(int argc, char **argv)
{
	struct gb_opts o = { .guest_mib = 1024, .seconds = 20, .settle_quiet_s = 10, .settle_timeout_s = 120,
	                     .rounds = 3,
	                     .ws = { 1, 10, 25, 100 }, .nr_ws = 4,
	                     .enabled = { [GB_NONE] = true, [GB_MEMVIRT] = true, [GB_KSM] = true } };
	int err = parse(argc, argv, &o);
	if (err)
		return err > 0 ? 0 : 2;
	if (bench_settings_recover("memvirt bench guest"))
		return 1;
	if (o.enabled[GB_KSM])
		o.enabled[GB_KSM] = ksm_usable();
	raise_map_count(&o);
	fprintf(stderr, "bench guest: %llu MiB guest (scattered content), %u working set(s), %g s of "
	        "writes per engine, then settling (%g s quiet, %g s at most)\n",
	        (unsigned long long)o.guest_mib, o.nr_ws, o.seconds, o.settle_quiet_s, o.settle_timeout_s);
	struct gb_result (*res)[GB_NR] = calloc(o.nr_ws, sizeof(*res));
	if (!res)
		return 1;
	int failed = 0;
	for (unsigned i = 0; i < o.nr_ws; i++) {
		failed |= run_rounds(&o, o.ws[i], res[i]);
		if (!o.json)
			print_table(&o, o.ws[i], res[i]);
	}
	if (o.json)
		print_json(&o, res);
	free(res);
	int rerr = kc_settings_restore();
	if (rerr)
		fprintf(stderr, "bench guest: restoring kernel settings: %s\n", mv_strerror(rerr));
	return failed || rerr ? 1 : 0;
}
