/* test_daemon.c - memvirtd with real guests: three Linux guests (UML, Linux's own balloon
 * driver) over vhost-user and one simulated VM linked through mv_host_attach(), under a
 * host budget that shrinks; a guest killed; the daemon restarted; bad input and clients. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <memvirt/memvirt.h>
#include <memvirt/attach.h>
#include <poll.h>
#include "attach_wire.h"
#include "uml.h"
#include "workload.h"
#include "testutil.h"

#define MIB (1ull << 20)
#define NR_UML 3

static char cli[PATH_MAX];          /* build/memvirt */

struct fx {
	char dir[64], conf[128], state[128], control[128], agent[128], log[128];
	pid_t daemon;
};

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void find_cli(void)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	assert_true(n > 0);
	exe[n] = 0;
	snprintf(cli, sizeof(cli), "%s/memvirt", dirname(dirname(dirname(exe))));
}

static void fx_init(struct fx *f, const char *policy)
{
	memset(f, 0, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/memvirtd-test-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	chmod(f->dir, 0755);
	snprintf(f->conf, sizeof(f->conf), "%s/memvirt.conf", f->dir);
	snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
	snprintf(f->control, sizeof(f->control), "%s/control.sock", f->dir);
	snprintf(f->agent, sizeof(f->agent), "%s/agent.sock", f->dir);
	snprintf(f->log, sizeof(f->log), "%s/daemon.log", f->dir);
	FILE *c = fopen(f->conf, "w");
	assert_non_null(c);
	fputs(policy, c);
	fclose(c);
	setenv("MEMVIRT_CONTROL", f->control, 1);
}

/* `memvirt daemon` as our child; its log appended to f->log. */
static void daemon_start(struct fx *f, const char *extra)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int fd = open(f->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		dup2(fd, 1), dup2(fd, 2);
		execl(cli, "memvirt", "daemon", "--config", f->conf, "--state-dir", f->state,
		      "--control", f->control, "--agent", f->agent,
		      extra ? "--textfile" : NULL, extra, (char *)NULL);
		_exit(127);
	}
	f->daemon = pid;
	struct stat st;
	for (double end = now_s() + 10; now_s() < end && stat(f->control, &st); usleep(20000))
		;
	assert_int_equal(stat(f->control, &st), 0);
}

static bool log_has(struct fx *f, const char *what);

/* The test's directory and everything in it (a mkdtemp path: no quoting needed), once
 * the log of the daemon and its workers shows no sanitizer report (ASan, TSan builds). */
static void fx_cleanup(struct fx *f)
{
	static const char *const bad[] = { "AddressSanitizer", "LeakSanitizer", "ThreadSanitizer",
	                                   "runtime error" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (log_has(f, bad[i]))
			fail_msg("%s in %s", bad[i], f->log);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	assert_int_equal(system(cmd), 0);
}

static void daemon_stop(struct fx *f)
{
	if (f->daemon <= 0)
		return;
	kill(f->daemon, SIGTERM);
	int st;
	assert_int_equal(waitpid(f->daemon, &st, 0), f->daemon);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	f->daemon = 0;
}

/* Run `memvirt ARGS` (the admin's CLI, on f's control socket); its stdout (and stderr)
 * in out; the exit status. */
static int run(char *out, size_t cap, const char *fmt, ...)
{
	char args[1024], cmd[PATH_MAX + 1100];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	snprintf(cmd, sizeof(cmd), "%s %s 2>&1", cli, args);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t n = fread(out, 1, cap - 1, p);
	out[n] = 0;
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static json_object *status(void)
{
	static char out[1 << 17];
	int rc = run(out, sizeof(out), "status --json");
	if (rc)
		fprintf(stderr, "memvirt status --json -> %d: %s\n", rc, out);
	assert_int_equal(rc, 0);
	json_object *o = json_tokener_parse(out);
	assert_non_null(o);
	return o;
}

static json_object *at(json_object *o, const char *path) { return tu_json_at(o, path); }

static json_object *vm_of(json_object *s, const char *name)
{
	json_object *vms = at(s, "vms");
	for (size_t i = 0; vms && i < json_object_array_length(vms); i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		if (!strcmp(json_object_get_string(at(v, "name")), name))
			return v;
	}
	return NULL;
}

static uint64_t vm_u(json_object *s, const char *name, const char *path)
{
	json_object *x = at(vm_of(s, name), path);
	return x ? (uint64_t)json_object_get_int64(x) : 0;
}

static void ok(const char *fmt, ...)
{
	char args[512], out[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	int rc = run(out, sizeof(out), "%s", args);
	if (rc)
		fprintf(stderr, "memvirt %s -> %d: %s", args, rc, out);
	assert_int_equal(rc, 0);
}

/* ---- the guests ---- */

struct world {
	struct fx f;
	struct mv_uml *g[NR_UML];
	char sock[NR_UML][128];
	struct mv_host *h;
	struct mvw_guest *sim;
	struct mv_attach *link;
};

static const char *const uml_names[NR_UML] = { "idle-a", "idle-b", "busy" };

static void wait_socket(const char *path)
{
	struct stat st;
	for (double end = now_s() + 10; now_s() < end; usleep(20000))
		if (!stat(path, &st) && S_ISSOCK(st.st_mode))
			return;
	fail_msg("no worker listens on %s", path);
}

static void boot(struct world *w, int i)
{
	char diag[2048] = "";
	struct mv_uml_opts o = { .mem_mib = 256, .balloon_socket = w->sock[i], .timeout_s = 400,
	                         .diag = diag, .diag_cap = sizeof(diag) };
	int err = mv_uml_start(&o, &w->g[i]);
	if (err)
		fprintf(stderr, "guest %s did not boot: %s\n%s\n", uml_names[i], mv_strerror(err), diag);
	assert_int_equal(err, 0);
}

static void guest_run(struct mv_uml *g, char *out, size_t cap, const char *cmd)
{
	int st = mv_uml_run(g, cmd, out, cap, 60000);
	if (st)
		fprintf(stderr, "guest: '%s' -> %d: %s\n", cmd, st, out);
	assert_int_equal(st, 0);
}

static void sim_start(struct world *w)
{
	w->h = tu_host();
	struct mvg_sim_config sc;
	mvg_sim_config_init(&sc);
	sc.driver.floor_bytes = 2 * MIB;
	struct mvw_config c;
	mvw_config_init(&c);
	c.profile = mvw_profile_find("idle");
	c.name = "sim";
	c.ram_bytes = 128 * MIB;
	c.sim = &sc;
	c.tick_ns = 20 * 1000000ull;
	assert_int_equal(mvw_guest_new(w->h, &c, &w->sim), 0);
	assert_int_equal(mvw_start(w->sim), 0);
	struct mv_attach_config ac;
	mv_attach_config_init(&ac);
	ac.client = "test-vmm";
	ac.retry_ms = 100;
	assert_int_equal(mv_host_attach(w->h, w->f.agent, &ac, &w->link), 0);
	assert_int_equal(mv_attach_add_vm(w->link, "sim", mvg_sim_vm(mvw_sim(w->sim)),
	                                  mvg_sim_balloon(mvw_sim(w->sim))), 0);
}

/* Until every name is listed in status (or not, with present false). */
static json_object *wait_vms(const char *const *names, unsigned n, bool present, double timeout)
{
	for (double end = now_s() + timeout;; usleep(100000)) {
		json_object *s = status();
		unsigned match = 0;
		for (unsigned i = 0; i < n; i++)
			match += (vm_of(s, names[i]) != NULL) == present;
		if (match == n)
			return s;
		json_object_put(s);
		if (now_s() > end)
			fail_msg("VMs did not %s status in %.0f s", present ? "appear in" : "leave", timeout);
	}
}

/* Until the policy holds (granted within the budget, nothing in flight) or timeout. */
static json_object *wait_settled(uint64_t budget, double timeout)
{
	json_object *s = NULL;
	for (double end = now_s() + timeout; now_s() < end; usleep(250000)) {
		json_object_put(s);
		s = status();
		uint64_t granted = (uint64_t)json_object_get_int64(at(s, "host.granted_bytes"));
		bool flight = false;
		json_object *vms = at(s, "vms");
		for (size_t i = 0; i < json_object_array_length(vms); i++) {
			json_object *v = json_object_array_get_idx(vms, i);
			flight |= json_object_get_int64(at(v, "balloon.target_bytes")) !=
			          json_object_get_int64(at(v, "balloon.actual_bytes"));
		}
		if (granted <= budget && !flight)
			return s;
	}
	return s;
}

static void print_balloons(json_object *s, const char *when)
{
	printf("%s: granted %llu MiB;", when,
	       (unsigned long long)(json_object_get_int64(at(s, "host.granted_bytes")) / MIB));
	json_object *vms = at(s, "vms");
	for (size_t i = 0; i < json_object_array_length(vms); i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		printf(" %s %llu/%llu MiB (%s)", json_object_get_string(at(v, "name")),
		       (unsigned long long)(json_object_get_int64(at(v, "balloon.actual_bytes")) / MIB),
		       (unsigned long long)(json_object_get_int64(at(v, "ram_bytes")) / MIB),
		       json_object_get_string(at(v, "decision.rule")));
	}
	printf("\n");
	fflush(stdout);
}

static void no_oom(struct mv_uml *g, const char *name)
{
	char out[4096];
	int st = mv_uml_run(g, "dmesg | grep -c -i 'out of memory\\|oom-kill'", out, sizeof(out), 30000);
	if (st == 0)
		fprintf(stderr, "%s: the guest OOMed: %s\n", name, out);
	assert_int_equal(st, 1); /* grep found nothing */
}

/* SIGKILL the workers f's daemon started (their pids from its log, each checked to serve a
 * socket in f's directory), for a test that ended before `vm remove`. */
static void kill_workers(struct fx *f)
{
	FILE *l = fopen(f->log, "r");
	char line[512];
	while (l && fgets(line, sizeof(line), l)) {
		const char *at = strstr(line, ": worker ");
		int pid;
		if (!at || sscanf(at, ": worker %d serves", &pid) != 1 || pid <= 1)
			continue;
		char path[64], cmd[1024] = "";
		snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
		FILE *c = fopen(path, "r");
		size_t n = c ? fread(cmd, 1, sizeof(cmd) - 1, c) : 0;
		if (c)
			fclose(c);
		for (size_t i = 0; i < n; i++)
			cmd[i] = cmd[i] ? cmd[i] : ' ';
		cmd[n] = 0;
		if (strstr(cmd, "balloon-backend") && strstr(cmd, f->dir))
			kill(pid, SIGKILL);
	}
	if (l)
		fclose(l);
}

static int skip_without_uml(void)
{
	const char *why = mv_uml_unavailable();
	if (why)
		printf("[  SKIP    ] %s\n", why);
	return why != NULL;
}

/* Steps as large as the cuts: each cut is placed by the shares in one period (a smaller
 * step would spill a cut over to the next VM in line within the period). */
#define POLICY "[host]\ngoal = budget\nbudget_mib = 4096\nperiod_ms = 250\nmax_step_mib = 512\n" \
               "stats_max_age_ms = 5000\n"

/*
 * The whole story. Three 256 MiB Linux guests (busy holds 120 MiB it checks; idle-a has
 * twice the shares) and a 128 MiB simulated VM; the admin's budget shrinks in two steps.
 * A small cut comes from the idle guest with the fewest shares alone; a deep one is shared
 * by the shares with idle memory taxed (policy/README.md's rho): idle-b gives the most,
 * the busy guest's balloon stays within the memory it had free; nobody runs out of
 * memory; a guest killed leaves status and moves nothing; the daemon restarted keeps the
 * settings and serves the same VMs again.
 */
static struct world w;

/* Whatever the test left: guests, the simulated VM, workers, the daemon, the directory. */
static int world_teardown(void **state)
{
	mv_attach_free(w.link);
	mvw_guest_free(w.sim);
	mv_host_free(w.h);
	for (int i = 0; i < NR_UML; i++)
		mv_uml_kill(w.g[i]);
	if (w.f.dir[0]) {
		kill_workers(&w.f);
		if (w.f.daemon > 0)
			kill(w.f.daemon, SIGKILL), waitpid(w.f.daemon, NULL, 0);
		fx_cleanup(&w.f);
	}
	memset(&w, 0, sizeof(w));
	return 0;
}

static void budget_shrinks_idle_guests_give_first(void **state)
{
	if (skip_without_uml())
		skip();
	memset(&w, 0, sizeof(w));
	fx_init(&w.f, POLICY);
	char prom[160];
	snprintf(prom, sizeof(prom), "%s/memvirt.prom", w.f.dir);
	daemon_start(&w.f, prom);
	char out[8192];
	for (int i = 0; i < NR_UML; i++) {
		snprintf(w.sock[i], sizeof(w.sock[i]), "%s/%s.sock", w.f.dir, uml_names[i]);
		ok("vm add %s %s min=48M", uml_names[i], w.sock[i]);
		wait_socket(w.sock[i]);
	}
	ok("set idle-a shares=2000");
	ok("set sim min=16M");
	for (int i = 0; i < NR_UML; i++)
		boot(&w, i);
	guest_run(w.g[2], out, sizeof(out), "memtool hold 120 7 900 /tmp/busy.report");
	pid_t holder = 0;
	assert_int_equal(sscanf(out, "held %d", &holder), 1);
	sim_start(&w);
	static const char *const all[] = { "idle-a", "idle-b", "busy", "sim" };
	json_object *s0 = wait_vms(all, 4, true, 30);
	assert_string_equal(json_object_get_string(at(vm_of(s0, "sim"), "domain")), "idle");
	assert_string_equal(json_object_get_string(at(vm_of(s0, "busy"), "domain")), "vm:busy");
	assert_string_equal(json_object_get_string(at(vm_of(s0, "sim"), "source")), "agent");
	assert_string_equal(json_object_get_string(at(vm_of(s0, "busy"), "source")), "vhost-user");
	json_object_put(s0);
	sleep(3); /* guest statistics reach the daemon */

	/* 1: a small cut: idle-b (idle, fewest shares) has the lowest rho until it gave it */
	json_object *s = status();
	uint64_t granted = (uint64_t)json_object_get_int64(at(s, "host.granted_bytes"));
	uint64_t busy_free = vm_u(s, "busy", "guest.free_bytes");
	json_object_put(s);
	uint64_t budget1 = granted / MIB - 64;
	ok("host budget=%lluM", (unsigned long long)budget1);
	s = wait_settled(budget1 * MIB, 60);
	print_balloons(s, "budget 1");
	assert_true((uint64_t)json_object_get_int64(at(s, "host.granted_bytes")) <= budget1 * MIB);
	assert_int_equal(vm_u(s, "busy", "balloon.target_bytes"), 0);
	assert_int_equal(vm_u(s, "idle-a", "balloon.target_bytes"), 0);
	assert_int_equal(vm_u(s, "sim", "balloon.target_bytes"), 0);
	assert_true(vm_u(s, "idle-b", "balloon.actual_bytes") >= 64 * MIB);
	json_object_put(s);

	/* 2: a deep cut, shared: idle-b still gives the most */
	uint64_t budget2 = granted / MIB - 300;
	ok("host budget=%lluM", (unsigned long long)budget2);
	s = wait_settled(budget2 * MIB, 90);
	print_balloons(s, "budget 2");
	run(out, sizeof(out), "status");
	printf("%s", out);
	assert_true((uint64_t)json_object_get_int64(at(s, "host.granted_bytes")) <= budget2 * MIB);
	uint64_t a = vm_u(s, "idle-a", "balloon.actual_bytes"), b = vm_u(s, "idle-b", "balloon.actual_bytes");
	uint64_t busy = vm_u(s, "busy", "balloon.actual_bytes");
	assert_true(b > a && b > busy);
	assert_true(busy < busy_free); /* the balloon took only memory the busy guest had free */
	json_object_put(s);
	for (int i = 0; i < NR_UML; i++)
		no_oom(w.g[i], uml_names[i]);
	/* the metrics the daemon wrote parse with prometheus_client's parser, every VM in them */
	if (access("/usr/bin/python3", X_OK) == 0) {
		char cmd[512];
		snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s/tests/daemon/promcheck.py %s --vm idle-a "
		         "--vm idle-b --vm busy --vm sim 2>&1", MV_SRC_DIR, prom);
		FILE *p = popen(cmd, "r");
		size_t n = fread(out, 1, sizeof(out) - 1, p);
		out[n] = 0;
		int rc = pclose(p);
		printf("promcheck: %s", rc ? out : "ok\n");
		assert_true(WIFEXITED(rc) && (WEXITSTATUS(rc) == 0 || WEXITSTATUS(rc) == 2));
	}
	/* scanner series for the linked VM only: vhost-user memory is never merged */
	FILE *pf = fopen(prom, "r");
	static char text[1 << 18];
	size_t tn = pf ? fread(text, 1, sizeof(text) - 1, pf) : 0;
	text[tn] = 0;
	if (pf)
		fclose(pf);
	assert_non_null(strstr(text, "memvirt_vm_scanner_pages_merged{vm=\"sim\""));
	assert_null(strstr(text, "memvirt_vm_scanner_pages_merged{vm=\"busy\""));
	struct mvw_stats st;
	mvw_stats(w.sim, &st);
	assert_int_equal(st.ooms, 0);

	/* the busy guest's data is intact */
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "kill -USR1 %d; sleep 1; cat /tmp/busy.report", (int)holder);
	guest_run(w.g[2], out, sizeof(out), cmd);
	assert_non_null(strstr(out, "intact"));

	/* 3: busy killed (SIGKILL to its whole process tree): it leaves status, the others
	 * keep their targets */
	s = status();
	uint64_t before[3] = { vm_u(s, "idle-a", "balloon.target_bytes"),
	                       vm_u(s, "idle-b", "balloon.target_bytes"),
	                       vm_u(s, "sim", "balloon.target_bytes") };
	json_object_put(s);
	assert_int_equal(mv_uml_kill(w.g[2]), 0);
	w.g[2] = NULL;
	json_object_put(wait_vms(&all[2], 1, false, 20));
	sleep(2); /* eight policy periods */
	s = status();
	assert_int_equal(vm_u(s, "idle-a", "balloon.target_bytes"), before[0]);
	assert_int_equal(vm_u(s, "idle-b", "balloon.target_bytes"), before[1]);
	assert_int_equal(vm_u(s, "sim", "balloon.target_bytes"), before[2]);
	json_object *waiting = at(s, "waiting");
	assert_int_equal(json_object_array_length(waiting), 1);
	assert_string_equal(json_object_get_string(at(json_object_array_get_idx(waiting, 0), "name")),
	                    "busy");
	json_object_put(s);

	/* 4: the daemon restarted: the admin's settings hold, the VMs come back with their
	 * balloons as they were (the workers and the library reconnect) */
	daemon_stop(&w.f);
	daemon_start(&w.f, NULL);
	static const char *const left[] = { "idle-a", "idle-b", "sim" };
	s = wait_vms(left, 3, true, 20);
	assert_string_equal(json_object_get_string(at(s, "host.goal")), "budget");
	assert_int_equal(json_object_get_int64(at(s, "host.goal_bytes")), budget2 * MIB);
	assert_int_equal(vm_u(s, "idle-a", "settings.min_bytes"), 48 * MIB);
	assert_true(json_object_get_double(at(vm_of(s, "idle-a"), "settings.shares")) == 2000);
	assert_int_equal(vm_u(s, "sim", "settings.min_bytes"), 16 * MIB);
	assert_int_equal(vm_u(s, "idle-b", "balloon.actual_bytes"), before[1]);
	json_object_put(s);

	/* the workers go with `vm remove` (the rest in world_teardown) */
	mv_attach_free(w.link);
	w.link = NULL;
	for (int i = 0; i < NR_UML; i++) {
		if (w.g[i])
			assert_int_equal(mv_uml_kill(w.g[i]), 0);
		w.g[i] = NULL;
		ok("vm remove %s", uml_names[i]);
	}
	for (int i = 0; i < NR_UML; i++) {
		char lock[160];
		snprintf(lock, sizeof(lock), "%s.lock", w.sock[i]);
		int fd = open(lock, O_RDWR);
		bool freed = false; /* the worker let go of its lock: it has ended */
		for (double end = now_s() + 10; fd >= 0 && !freed && now_s() < end; usleep(50000))
			freed = flock(fd, LOCK_EX | LOCK_NB) == 0;
		assert_true(freed);
		close(fd);
	}
	daemon_stop(&w.f);
}

/* Bad input names what is wrong and changes nothing; settings persist in the state file. */
static void bad_input_changes_nothing(void **state)
{
	struct fx f;
	fx_init(&f, POLICY);
	daemon_start(&f, NULL);
	char out[4096];
	ok("set web min=512M max=2G shares=300");
	static const struct { const char *args, *says; } bad[] = {
		{ "set web min=12Q", "min: '12Q' is not a size" },
		{ "set web min=1000K", "not a whole number of MiB" },
		{ "set web shares=-1", "shares: '-1' is not a number" },
		{ "set web colour=red", "unknown setting 'colour'" },
		{ "set web min=4G", "min_mib" },              /* above max: the policy says so */
		{ "set 'a b' min=1G", "cannot contain spaces" },
		{ "set a]b min=1G", "not a VM name" },
		{ "host goal=fast", "goal: 'fast' is not floor, ratio or budget" },
		{ "host ratio=1000", "ratio: '1000' is not a number in [0.1, 100]" },
		{ "vm add x relative.sock", "an absolute path" },
		{ "vm remove nobody", "was not added" },
		{ "frobnicate", "unknown command" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = run(out, sizeof(out), "%s", bad[i].args);
		printf("memvirt %s -> %d: %s", bad[i].args, rc, out);
		assert_int_not_equal(rc, 0);
		assert_non_null(strstr(out, bad[i].says));
	}
	/* the views: top refreshes, explain --follow renders the decisions as they come */
	assert_int_equal(run(out, sizeof(out), "top --iterations 2 --interval-ms 100"), 0);
	assert_non_null(strstr(out, "memvirt top"));
	assert_non_null(strstr(out, "goal budget"));
	char cmd[PATH_MAX + 64];
	snprintf(cmd, sizeof(cmd), "timeout 2 %s explain --follow", cli);
	FILE *p = popen(cmd, "r");
	size_t n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = 0;
	pclose(p);
	assert_non_null(strstr(out, "] host: "));           /* a rendered host record */
	assert_non_null(strstr(out, "why: "));
	daemon_stop(&f);
	daemon_start(&f, NULL);
	assert_int_equal(run(out, sizeof(out), "status --json"), 0);
	char path[160];
	snprintf(path, sizeof(path), "%s/state.json", f.state);
	json_object *st = json_object_from_file(path), *vms = at(st, "vms");
	assert_non_null(vms);
	assert_int_equal(json_object_array_length(vms), 1);
	json_object *web = json_object_array_get_idx(vms, 0);
	assert_int_equal(json_object_get_int64(at(web, "min_mib")), 512);
	assert_int_equal(json_object_get_int64(at(web, "max_mib")), 2048);
	assert_true(json_object_get_double(at(web, "shares")) == 300);
	json_object_put(st);
	daemon_stop(&f);
	fx_cleanup(&f);
}

/* A client that is not root, the daemon's user or in the memvirt group is refused, even
 * when the socket's mode would let it connect. */
static void foreign_client_refused(void **state)
{
	struct fx f;
	fx_init(&f, POLICY);
	daemon_start(&f, NULL);
	if (geteuid() != 0) {
		daemon_stop(&f);
		fx_cleanup(&f);
		printf("[  SKIP    ] needs root to act as another user\n");
		skip();
	}
	chmod(f.control, 0666);
	chmod(f.agent, 0666);
	const char *paths[2] = { f.control, f.agent };
	for (int i = 0; i < 2; i++) {
		int pfd[2];
		assert_int_equal(pipe(pfd), 0);
		pid_t pid = fork();
		if (pid == 0) {
			close(pfd[0]);
			if (setgid(65534) || setuid(65534))
				_exit(3);
			struct sockaddr_un a = { .sun_family = AF_UNIX };
			snprintf(a.sun_path, sizeof(a.sun_path), "%s", paths[i]);
			int fd = socket(AF_UNIX, SOCK_STREAM, 0);
			if (connect(fd, (struct sockaddr *)&a, sizeof(a)))
				_exit(4);
			/* the daemon may have closed already: no SIGPIPE */
			send(fd, "1 status\n", 9, MSG_NOSIGNAL);
			char buf[512] = "";
			ssize_t n = read(fd, buf, sizeof(buf) - 1); /* an error line, or the end */
			if (write(pfd[1], buf, n > 0 ? (size_t)n : 0) < 0)
				_exit(5);
			_exit(read(fd, buf, sizeof(buf)) <= 0 ? 0 : 6); /* then closed (or reset) */
		}
		close(pfd[1]);
		char got[512] = "";
		ssize_t n = read(pfd[0], got, sizeof(got) - 1);
		got[n > 0 ? n : 0] = 0;
		close(pfd[0]);
		int st;
		waitpid(pid, &st, 0);
		printf("%s as uid 65534: exit %d, \"%s\"\n", paths[i], WEXITSTATUS(st), got);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		assert_null(strstr(got, "\"host\"")); /* no status leaked */
		if (i == 0)
			assert_non_null(strstr(got, "uid 65534 (pid"));
	}
	char log[8192] = "";
	FILE *l = fopen(f.log, "r");
	size_t n = l ? fread(log, 1, sizeof(log) - 1, l) : 0;
	log[n] = 0;
	if (l)
		fclose(l);
	assert_non_null(strstr(log, "agent refused: uid 65534"));
	daemon_stop(&f);
	fx_cleanup(&f);
}

static int listen_at(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	assert_true(strlen(path) < sizeof(a.sun_path));
	memcpy(a.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 4), 0);
	return fd;
}

static bool log_has(struct fx *f, const char *what)
{
	static char log[1 << 16];
	FILE *l = fopen(f->log, "r");
	size_t n = l ? fread(log, 1, sizeof(log) - 1, l) : 0;
	log[n] = 0;
	if (l)
		fclose(l);
	return strstr(log, what) != NULL;
}

static bool wait_log(struct fx *f, const char *what, double timeout)
{
	for (double end = now_s() + timeout; now_s() < end; usleep(50000))
		if (log_has(f, what))
			return true;
	return false;
}

/* `vm add` never takes over what is at the socket's path: a socket another service
 * listens on stays theirs, and a lock file that is a symlink is not followed. */
static void vm_add_replaces_nothing(void **state)
{
	struct fx f;
	fx_init(&f, POLICY);
	daemon_start(&f, NULL);
	char live[160], other[160], target[160], lock[170];
	snprintf(live, sizeof(live), "%s/live.sock", f.dir);
	snprintf(other, sizeof(other), "%s/other.sock", f.dir);
	snprintf(target, sizeof(target), "%s/created-by-the-worker", f.dir);
	snprintf(lock, sizeof(lock), "%s.lock", other);
	int lfd = listen_at(live);
	struct stat before, after;
	assert_int_equal(stat(live, &before), 0);
	assert_int_equal(symlink(target, lock), 0);
	ok("vm add live %s", live);
	ok("vm add other %s", other);
	assert_true(wait_log(&f, "worker", 5));
	sleep(2); /* the workers tried (and the daemon retries later) */
	assert_int_equal(stat(live, &after), 0);
	assert_int_equal(before.st_ino, after.st_ino);   /* the service's socket is untouched */
	assert_int_equal(access(target, F_OK), -1);       /* nothing created through the link */
	assert_true(log_has(&f, "something else is there"));
	ok("vm remove live");
	ok("vm remove other");
	close(lfd);
	daemon_stop(&f);
	kill_workers(&f);
	fx_cleanup(&f);
}

/* Settings saved against one config file, then the file edited so they conflict: the
 * daemon still starts, runs the file alone, says so, and keeps the settings. */
static void conflicting_config_still_starts(void **state)
{
	struct fx f;
	fx_init(&f, POLICY "[vm web]\nmax_mib = 4096\n");
	daemon_start(&f, NULL);
	ok("set web min=2G");
	daemon_stop(&f);
	FILE *c = fopen(f.conf, "w");
	assert_non_null(c);
	fputs(POLICY "[vm web]\nmax_mib = 1024\n", c);
	fclose(c);
	daemon_start(&f, NULL);
	char out[4096];
	assert_int_equal(run(out, sizeof(out), "status"), 0);
	assert_true(log_has(&f, "the admin's settings conflict with"));
	int rc = run(out, sizeof(out), "set web shares=10"); /* still conflicting: said so */
	assert_int_not_equal(rc, 0);
	assert_non_null(strstr(out, "min_mib"));
	ok("set web min=512M");                              /* corrected */
	/* SIGHUP reloads the file: a bad one is refused with its line, the policy stays */
	c = fopen(f.conf, "w");
	assert_non_null(c);
	fputs(POLICY "[vm web]\nmax_mib = 1024\ntau = 2\n", c);
	fclose(c);
	kill(f.daemon, SIGHUP);
	assert_true(wait_log(&f, "reload refused, the policy in force stays", 5));
	assert_true(log_has(&f, "line 9"));               /* tau is no [vm] key */
	c = fopen(f.conf, "w");
	assert_non_null(c);
	fputs(POLICY "[vm web]\nmax_mib = 768\n", c);
	fclose(c);
	kill(f.daemon, SIGHUP);
	assert_true(wait_log(&f, "policy reloaded", 5));
	assert_int_equal(run(out, sizeof(out), "status"), 0);
	char path[160];
	snprintf(path, sizeof(path), "%s/state.json", f.state);
	json_object *st = json_object_from_file(path);
	assert_int_equal(json_object_get_int64(at(json_object_array_get_idx(at(st, "vms"), 0),
	                                          "min_mib")), 512);
	json_object_put(st);
	daemon_stop(&f);
	fx_cleanup(&f);
}

/* A raw agent: a VM name the policy could not take is refused; a link that never says
 * HELLO is closed. */
static void hostile_agent(void **state)
{
	struct fx f;
	fx_init(&f, POLICY);
	daemon_start(&f, NULL);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	assert_true(strlen(f.agent) < sizeof(a.sun_path));
	memcpy(a.sun_path, f.agent, strlen(f.agent) + 1);
	int silent = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(connect(silent, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	static struct mv__aw_vm vms[MV_AW_MAX_VMS];
	struct mv__aw_msg m = { .type = MV_AW_HELLO, .u.hello = { .pid = 1, .client = "raw" } };
	assert_int_equal(mv__aw_send(fd, &m, 1000), 0);
	m = (struct mv__aw_msg){ .type = MV_AW_REPORT, .vms = vms, .u.report.nr_vms = 1 };
	snprintf(vms[0].name, sizeof(vms[0].name), "a b");
	vms[0].ram_bytes = 64 << 20;
	assert_int_equal(mv__aw_send(fd, &m, 1000), 0);
	static struct mv__aw_rx rx;
	bool refused = false;
	for (double end = now_s() + 5; !refused && now_s() < end;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 100) <= 0)
			continue;
		assert_int_equal(mv__aw_read(fd, &rx), 0);
		long n;
		while (!refused && (n = mv__aw_next(&rx, &m, vms)) > 0)
			refused = m.type == MV_AW_REFUSE && !strcmp(m.u.refuse.name, "a b") &&
			          m.u.refuse.err == -EINVAL;
	}
	assert_true(refused);
	char out[4096];
	assert_int_equal(run(out, sizeof(out), "status --json"), 0);
	assert_null(strstr(out, "\"a b\""));
	char buf[64];
	assert_true(wait_log(&f, "no HELLO within 5 s", 10));
	assert_int_equal(recv(silent, buf, sizeof(buf), 0), 0); /* closed */
	close(silent);
	close(fd);
	daemon_stop(&f);
	fx_cleanup(&f);
}

int main(void)
{
	find_cli();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(bad_input_changes_nothing),
		cmocka_unit_test(foreign_client_refused),
		cmocka_unit_test(vm_add_replaces_nothing),
		cmocka_unit_test(conflicting_config_still_starts),
		cmocka_unit_test(hostile_agent),
		cmocka_unit_test_teardown(budget_shrinks_idle_guests_give_first, world_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
