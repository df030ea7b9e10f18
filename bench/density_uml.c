/* density_uml.c - `memvirt density --guests uml`: how many real Linux guests fit in a host
 * memory budget, with no balloon and with memvirtd's balloon policy.
 *
 * Overview. The run is the simulated one (density.c) with real guests: for each
 * configuration a child process adds User-mode Linux guests one at a time, settles, and
 * stops at the first guest that does not fit or at --max-guests.
 *
 * - A guest is linux.uml (guests/uml) with mem = the profile's RAM x scale. Its workload is
 *   shaped like an idle guest: memtool holds a working set (WS_PCT of its RAM, seeded
 *   content it checks itself), then memtool fills STALE_PCT of its RAM once and exits (free
 *   memory holding stale data, as after a burst). At the end every holder gets SIGUSR1 and
 *   writes "intact" or "corrupt page N" to its report: anything but "intact" is a mismatch.
 * - none: guests without a balloon device. balloon: a `memvirt daemon` child of the run in
 *   a temporary directory, each guest added with `memvirt vm add NAME SOCKET min=...` (the
 *   daemon's worker serves the guest's vhost-user balloon with every feature, free page
 *   reporting and deflate-on-OOM included), the host goal `memvirt host goal=floor
 *   floor=...`. The daemon sees a host of budget MiB: the run rewrites the meminfo file it
 *   reads (--meminfo) every period with MemTotal = budget and MemAvailable = budget - the
 *   measured host memory. It gets no PSI file: the machine's own pressure belongs to other
 *   work, and the simulated run's engine has no PSI either.
 * - Host memory is measured, never estimated: see ram_file_open().
 * - A guest fits when, settled (host memory steady for 4 periods, no balloon on its way),
 *   host memory is within the budget and no guest logged an OOM kill (dmesg).
 *
 * Bounds: every guest runs under `timeout -s KILL` (the remaining run time), the whole run
 * of a configuration under run_max_s, each guest command under its own timeout. Only what
 * the run started is stopped: the guests (mv_uml_kill), the daemon's workers with `memvirt
 * vm remove`, then the daemon by its pid.
 */
#include "bench.h"
#include "density.h"
#include "uml.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIB (1ull << 20)
#define WS_PCT DENSITY_UML_WS_PCT
#define STALE_PCT DENSITY_UML_STALE_PCT
#define CMD_MS 60000

struct ug {
	char name[32], sock[128];
	struct mv_uml *g;
	int ramfd;                 /* the guest's RAM file (see ram_file_open), -1: none */
	int holder;                /* memtool's holder, a pid in the guest; 0: none */
};

struct urun {
	const struct density_opts *o;
	enum density_config c;
	struct density_result *res;
	char dir[64], conf[128], state[128], control[128], agent[128], meminfo[128], psi[128];
	char self[1024];
	pid_t daemon;              /* our child, 0: none */
	struct ug g[DENSITY_MAX_GUESTS];
	unsigned n;
	double t_end;              /* monotonic s: the run's bound */
	double host;               /* MiB, last measured */
};

unsigned density_uml_guest_mib(const struct density_opts *o)
{
	return o->guest_mib ? o->guest_mib
	                    : (unsigned)((double)o->profile->ram_bytes * o->scale / MIB + 0.5);
}

static unsigned ws_mib(const struct density_opts *o) { return density_uml_guest_mib(o) * WS_PCT / 100; }

unsigned density_uml_min_mib(const struct density_opts *o)
{
	return ws_mib(o) + DENSITY_UML_ROOM_MIB;
}

/* SIGINT, SIGTERM, SIGHUP in the run's child: stop adding guests, tear down what was
 * started, report what was measured. */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	interrupted = sig;
}

/* Say why the run failed (the first reason stays); returns err. */
static int fail(struct urun *r, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct urun *r, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (!r->res->why[0])
		vsnprintf(r->res->why, sizeof(r->res->why), fmt, ap);
	va_end(ap);
	return err;
}

/* ---- the daemon and its admin's CLI ---- */

/* `memvirt ARGS` on the run's daemon (MEMVIRT_CONTROL); output in out; the exit status. */
static int cli(struct urun *r, char *out, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int cli(struct urun *r, char *out, size_t cap, const char *fmt, ...)
{
	char args[512], cmd[1700];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	snprintf(cmd, sizeof(cmd), "timeout -s KILL 20 '%s' %s 2>&1", r->self, args);
	FILE *p = popen(cmd, "r");
	if (!p)
		return -errno;
	size_t n = fread(out, 1, cap - 1, p);
	out[n] = 0;
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* MemTotal the budget, MemAvailable what the guests leave of it; replaced atomically. */
static void meminfo_write(struct urun *r)
{
	char tmp[160];
	double avail = (double)r->o->budget_mib - r->host;
	snprintf(tmp, sizeof(tmp), "%s.new", r->meminfo);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return;
	fprintf(f, "MemTotal: %llu kB\nMemFree: %llu kB\nMemAvailable: %llu kB\n",
	        (unsigned long long)r->o->budget_mib * 1024, avail > 0 ? (unsigned long long)(avail * 1024) : 0,
	        avail > 0 ? (unsigned long long)(avail * 1024) : 0);
	fclose(f);
	rename(tmp, r->meminfo);
}

static int write_conf(struct urun *r)
{
	FILE *f = fopen(r->conf, "w");
	if (!f)
		return -errno;
	const struct density_opts *o = r->o;
	uint64_t floor = o->budget_mib * o->floor_pct / 100;
	fprintf(f, "[host]\ngoal = floor\nfloor_mib = %llu\nband_mib = %llu\nperiod_ms = %u\n"
	        "stats_max_age_ms = 5000\n", (unsigned long long)floor,
	        (unsigned long long)(floor > 1 ? floor : 1), o->period_ms);
	return fclose(f) ? -errno : 0;
}

static int daemon_start(struct urun *r)
{
	int err = r->o->policy_file ? 0 : write_conf(r);
	if (err)
		return err;
	char log[600];
	snprintf(log, sizeof(log), "%s/daemon-uml.log", r->o->out_dir);
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0)
			dup2(fd, 1), dup2(fd, 2);
		execl(r->self, "memvirt", "daemon", "--config", r->o->policy_file ? r->o->policy_file : r->conf,
		      "--state-dir", r->state, "--control", r->control, "--agent", r->agent,
		      "--meminfo", r->meminfo, "--psi", r->psi, (char *)NULL);
		_exit(127);
	}
	r->daemon = pid;
	struct stat st;
	for (double end = bench_now_s() + 10; bench_now_s() < end && stat(r->control, &st); usleep(20000))
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return r->daemon = 0, fail(r, -ECHILD, "the daemon exited (see %s)", log);
	if (stat(r->control, &st))
		return fail(r, -ETIMEDOUT, "the daemon did not listen (see %s)", log);
	char out[512];
	uint64_t floor = r->o->budget_mib * r->o->floor_pct / 100;
	if (!r->o->policy_file && cli(r, out, sizeof(out), "host goal=floor floor=%lluM", (unsigned long long)floor))
		return fail(r, -EINVAL, "memvirt host: %s", out);
	return 0;
}

/* The workers go with `vm remove` (they outlive a daemon by design), then the daemon. */
static void daemon_stop(struct urun *r)
{
	char out[512];
	for (unsigned i = 0; r->daemon && i < r->n; i++)
		if (r->g[i].sock[0])
			cli(r, out, sizeof(out), "vm remove %s", r->g[i].name);
	if (r->daemon <= 0)
		return;
	kill(r->daemon, SIGTERM);
	for (double end = bench_now_s() + 10; bench_now_s() < end; usleep(20000))
		if (waitpid(r->daemon, NULL, WNOHANG) == r->daemon)
			return (void)(r->daemon = 0);
	kill(r->daemon, SIGKILL);
	waitpid(r->daemon, NULL, 0);
	r->daemon = 0;
}

/* ---- measuring ---- */

/*
 * The guest's RAM is one unlinked tmpfs file that the UML kernel process holds open and
 * maps shared (so do UML's processes for guest user space, and the daemon's worker, which
 * got it with SET_MEM_TABLE). Every host page that guest RAM costs is a page of that file,
 * counted once in its st_blocks however many processes map it; a page the balloon or free
 * page reporting gives back is punched out of the file (fallocate PUNCH_HOLE / MADV_REMOVE)
 * and leaves st_blocks at once. There is no swap here, so st_blocks is resident memory.
 * (The Pss of the UML kernel plus the worker would miss the shares of UML's user-space
 * processes, which map the same file; their Rss would count shared pages twice.) Not
 * counted: the host processes' own page tables and heaps, the VMM's cost rather than RAM.
 * The file: the regular, unlinked file the process has open with the largest size.
 */
static int ram_file_open(pid_t pid)
{
	char dir[64], path[384];
	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	DIR *d = opendir(dir);
	if (!d)
		return -errno;
	int best = -ENOENT;
	off_t size = 0;
	for (struct dirent *e; (e = readdir(d));) {
		if (e->d_name[0] == '.' || strlen(e->d_name) > 32)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		struct stat st;
		if (stat(path, &st) || !S_ISREG(st.st_mode) || st.st_nlink || st.st_size <= size)
			continue;
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (best >= 0)
			close(best);
		best = fd, size = st.st_size;
	}
	closedir(d);
	return best;
}

static double host_mib(struct urun *r)
{
	double sum = 0;
	for (unsigned i = 0; i < r->n; i++) {
		struct stat st;
		if (r->g[i].ramfd >= 0 && !fstat(r->g[i].ramfd, &st))
			sum += (double)st.st_blocks * 512 / MIB;
	}
	return r->host = sum;
}

struct balloons { double actual, reported; bool moving; };

/* The balloons as the daemon reports them (`memvirt status --json`). */
static int balloons(struct urun *r, struct balloons *b)
{
	static char out[1 << 17];
	memset(b, 0, sizeof(*b));
	if (!r->daemon)
		return 0;
	if (cli(r, out, sizeof(out), "status --json"))
		return -EIO;
	json_object *s = json_tokener_parse(out), *vms, *v, *bl, *x;
	if (!s || !json_object_object_get_ex(s, "vms", &vms))
		return json_object_put(s), -EPROTO;
	unsigned seen = 0;
	for (size_t i = 0; i < json_object_array_length(vms); i++) {
		v = json_object_array_get_idx(vms, i);
		if (!json_object_object_get_ex(v, "balloon", &bl))
			continue;
		seen++;
		int64_t t = json_object_object_get_ex(bl, "target_bytes", &x) ? json_object_get_int64(x) : 0;
		int64_t a = json_object_object_get_ex(bl, "actual_bytes", &x) ? json_object_get_int64(x) : 0;
		bool stalled = json_object_object_get_ex(bl, "stalled", &x) && json_object_get_boolean(x);
		b->actual += (double)a / MIB;
		if (json_object_object_get_ex(bl, "reported_bytes", &x))
			b->reported += (double)json_object_get_int64(x) / MIB;
		b->moving |= t != a && !stalled;
	}
	b->moving |= seen < r->n; /* a guest the daemon does not list yet */
	json_object_put(s);
	return 0;
}

/* ---- the guests ---- */

static int guest_cmd(struct ug *u, char *out, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int guest_cmd(struct ug *u, char *out, size_t cap, const char *fmt, ...)
{
	char cmd[MV_UML_CMD_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	return mv_uml_run(u->g, cmd, out, cap, CMD_MS);
}

/* `vm add`, then wait for the worker to listen on the guest's socket. */
static int balloon_add(struct urun *r, struct ug *u)
{
	char out[512];
	char sock[sizeof(u->sock)];
	snprintf(sock, sizeof(sock), "%s/%s.sock", r->dir, u->name);
	memcpy(u->sock, sock, sizeof(sock));
	if (cli(r, out, sizeof(out), "vm add %s %s min=%uM", u->name, u->sock, density_uml_min_mib(r->o)))
		return fail(r, -EINVAL, "vm add: %s", out);
	struct stat st;
	for (double end = bench_now_s() + 10; bench_now_s() < end; usleep(20000))
		if (!stat(u->sock, &st) && S_ISSOCK(st.st_mode))
			return 0;
	return fail(r, -ETIMEDOUT, "no worker listens on %s", u->sock);
}

static int boot(struct urun *r, struct ug *u)
{
	char diag[1024] = "";
	double left = r->t_end - bench_now_s();
	struct mv_uml_opts uo = { .mem_mib = density_uml_guest_mib(r->o), .balloon_socket = u->sock[0] ? u->sock : NULL,
	                          .timeout_s = (unsigned)(left > 0 ? left : 0) + 120,
	                          .diag = diag, .diag_cap = sizeof(diag) };
	int err = -ECONNREFUSED;
	for (int i = 0; i < 50 && err == -ECONNREFUSED; i++) /* bound, not yet listening */
		if ((err = mv_uml_start(&uo, &u->g)) == -ECONNREFUSED)
			usleep(100000);
	if (err) {
		char *nl = strchr(diag, '\n');
		if (nl)
			*nl = 0;
		return fail(r, err, "%s: boot: %s: %s", u->name, mv_strerror(err), diag);
	}
	u->ramfd = ram_file_open(mv_uml_pid(u->g));
	if (u->ramfd < 0)
		return fail(r, u->ramfd, "%s: no RAM file", u->name);
	return 0;
}

/* The workload: hold the working set (checked at the end), then touch and free the stale part. */
static int workload(struct urun *r, struct ug *u, unsigned k)
{
	char out[512];
	unsigned mib = density_uml_guest_mib(r->o);
	int st = guest_cmd(u, out, sizeof(out), "memtool hold %u %u 100000 /tmp/report", ws_mib(r->o), 1000 + k);
	if (st || sscanf(out, "held %d", &u->holder) != 1)
		return fail(r, -EIO, "%s: memtool hold: %d: %.80s", u->name, st, out);
	st = guest_cmd(u, out, sizeof(out), "memtool fill %u %u >/dev/null", mib * STALE_PCT / 100, 2000 + k);
	if (st)
		return fail(r, -EIO, "%s: memtool fill: %d: %.80s", u->name, st, out);
	return 0;
}

static int add_guest(struct urun *r)
{
	struct ug *u = &r->g[r->n++];
	*u = (struct ug){ .ramfd = -1 };
	snprintf(u->name, sizeof(u->name), "uml-%s-%02u", density_config_names[r->c], r->n);
	int err = r->daemon ? balloon_add(r, u) : 0;
	if (!err)
		err = boot(r, u);
	return err ? err : workload(r, u, r->n);
}

/* OOM kills the guests logged, summed over the guests (a guest that does not answer: 1). */
static uint64_t guest_ooms(struct urun *r)
{
	uint64_t n = 0;
	for (unsigned i = 0; i < r->n; i++) {
		char out[256] = "";
		if (!r->g[i].g)
			continue;
		int st = guest_cmd(&r->g[i], out, sizeof(out), "dmesg | grep -c -i 'out of memory\\|oom-kill'");
		n += st == 1 ? 0 : st == 0 ? strtoull(out, NULL, 10) : 1;
	}
	return n;
}

/* Each holder checks its working set and writes its report: "intact" or a mismatch. */
static void verify_all(struct urun *r)
{
	for (unsigned i = 0; i < r->n; i++) {
		struct ug *u = &r->g[i];
		char out[256] = "";
		if (!u->g || !u->holder)
			continue;
		int st = guest_cmd(u, out, sizeof(out), "kill -USR1 %d && i=0 && while [ ! -s /tmp/report ] "
		                   "&& [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; cat /tmp/report", u->holder);
		if (st || strncmp(out, "intact", 6)) {
			r->res->mismatches++;
			if (!r->res->why[0])
				snprintf(r->res->why, sizeof(r->res->why), "%s: %.80s", u->name,
				         st ? "holder gone or no report" : out);
		}
	}
}

/* ---- the run ---- */

/* Until host memory stops moving (3 s) and no balloon is on its way (or settle_max_s); the
 * balloons as they are then in *b. */
static double settle(struct urun *r, struct balloons *bo)
{
	const struct density_opts *o = r->o;
	double t0 = bench_now_s(), last = host_mib(r);
	/* steady for 3 s at least: Linux reports freed pages 2 s after they were freed */
	unsigned steady = 0, need = o->period_ms ? 3000 / o->period_ms : 12;
	struct balloons b = { 0 };
	need = need < 4 ? 4 : need;
	while (bench_now_s() - t0 < o->settle_max_s && bench_now_s() < r->t_end && !interrupted) {
		meminfo_write(r);
		nanosleep(&(struct timespec){ 0, (long)o->period_ms * 1000000 }, NULL);
		double h = host_mib(r);
		bool still = !balloons(r, &b) && !b.moving;
		steady = h > last + 0.005 * last + 1 || h < last - 0.005 * last - 1 ? 0 : steady + 1;
		last = h;
		if (steady >= need && still)
			break;
		if (!o->quiet && isatty(2))
			fprintf(stderr, "\r  uml %-8s guest %2u: host %7.0f MiB of %llu, balloons %5.0f MiB, "
			        "settling %4.1f s ", density_config_names[r->c], r->n, h,
			        (unsigned long long)o->budget_mib, b.actual, bench_now_s() - t0);
	}
	meminfo_write(r);
	*bo = b;
	return last;
}

static int run_dir(struct urun *r)
{
	snprintf(r->dir, sizeof(r->dir), "/tmp/mv-density-XXXXXX");
	if (!mkdtemp(r->dir))
		return r->dir[0] = 0, -errno;
	snprintf(r->conf, sizeof(r->conf), "%s/memvirt.conf", r->dir);
	snprintf(r->state, sizeof(r->state), "%s/state", r->dir);
	snprintf(r->control, sizeof(r->control), "%s/control.sock", r->dir);
	snprintf(r->agent, sizeof(r->agent), "%s/agent.sock", r->dir);
	snprintf(r->meminfo, sizeof(r->meminfo), "%s/meminfo", r->dir);
	snprintf(r->psi, sizeof(r->psi), "%s/no-psi", r->dir); /* never written: no PSI */
	setenv("MEMVIRT_CONTROL", r->control, 1);
	ssize_t n = readlink("/proc/self/exe", r->self, sizeof(r->self) - 1);
	if (n <= 0)
		return -errno;
	r->self[n] = 0;
	meminfo_write(r);
	return 0;
}

static void run_dir_remove(struct urun *r)
{
	char cmd[1000];
	if (!r->dir[0])
		return;
	if (r->c == DC_BALLOON) { /* the daemon's decisions, for `memvirt explain` */
		snprintf(cmd, sizeof(cmd), "cp '%s/decisions.jsonl' '%s/decisions-uml-balloon.jsonl' 2>/dev/null",
		         r->state, r->o->out_dir);
		if (system(cmd))
			fprintf(stderr, "memvirt density: no decision log of the daemon kept\n");
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", r->dir);
	if (system(cmd))
		fprintf(stderr, "memvirt density: could not remove %s\n", r->dir);
}

static void teardown(struct urun *r)
{
	for (unsigned i = 0; i < r->n; i++) {
		if (r->g[i].g && mv_uml_kill(r->g[i].g))
			fprintf(stderr, "memvirt density: %s: a process of the guest is left\n", r->g[i].name);
		if (r->g[i].ramfd >= 0)
			close(r->g[i].ramfd);
		r->g[i].g = NULL;
	}
	daemon_stop(r);
	run_dir_remove(r);
}

static void run_config(const struct density_opts *o, enum density_config c, struct density_result *res)
{
	struct urun r = { .o = o, .c = c, .res = res };
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL), sigaction(SIGTERM, &sa, NULL), sigaction(SIGHUP, &sa, NULL);
	double t0 = bench_now_s();
	r.t_end = t0 + o->run_max_s;
	res->stop = DS_MAX;
	int err = run_dir(&r);
	if (!err && c == DC_BALLOON)
		err = daemon_start(&r);
	while (!err && r.n < o->max_guests) {
		if (interrupted) {
			err = fail(&r, -EINTR, "interrupted by signal %d", (int)interrupted);
			break;
		}
		if (bench_now_s() > r.t_end) {
			res->stop = DS_TIME;
			break;
		}
		double t = bench_now_s();
		struct balloons b;
		if ((err = add_guest(&r)))
			break;
		double h = settle(&r, &b);
		uint64_t ooms = guest_ooms(&r);
		if (!o->quiet && !isatty(2))
			fprintf(stderr, "  uml %-8s guest %2u: host %7.0f MiB of %llu, balloons %.0f MiB (%.1f s)\n",
			        density_config_names[c], r.n, h, (unsigned long long)o->budget_mib,
			        b.actual, bench_now_s() - t);
		res->series[r.n - 1] = h;
		res->steps = r.n;
		if (h > (double)o->budget_mib || ooms) {
			res->stop = ooms ? DS_OOM : DS_BUDGET;
			break;
		}
		res->guests = r.n;
		res->host_mib = h;
		res->balloon_mib = b.actual;
		res->reported_mib = b.reported;
	}
	if (err) {
		res->stop = DS_ERROR;
		if (!res->why[0])
			snprintf(res->why, sizeof(res->why), "%s", mv_strerror(err));
	}
	res->guest_ooms = guest_ooms(&r);
	verify_all(&r);
	res->wall_s = bench_now_s() - t0;
	teardown(&r);
	if (!o->quiet && isatty(2))
		fprintf(stderr, "\r%100s\r", "");
}

/* One configuration in a child process (the guests die with it). */
int density_uml_run_one(const struct density_opts *o, enum density_config c, struct density_result *out)
{
	return density_in_child(o, c, out, run_config);
}
