/* test_uml.c - the UML launcher: boot a real Linux guest, run commands, bounds, nothing left. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "testutil.h"
#include "uml.h"

#define MEM_MIB  192u
#define LIFE_S   120u          /* whole-life bound of each guest */
#define CMD_MS   20000u

static struct mv_uml *shared;  /* booted once for the command tests */
static struct mv_uml *own;     /* a test's own guest, killed by kill_own() if the test fails */
static char diag[4096];

static struct mv_uml_opts opts(unsigned mem_mib)
{
	return (struct mv_uml_opts){ .mem_mib = mem_mib, .timeout_s = LIFE_S,
				     .diag = diag, .diag_cap = sizeof(diag) };
}

static int setup(void **state)
{
	struct mv_uml_opts o = opts(MEM_MIB);
	if (mv_uml_unavailable())
		return 0;
	int r = mv_uml_start(&o, &shared);
	if (r)
		fprintf(stderr, "mv_uml_start: %s: %s\n", strerror(-r), diag);
	return r ? -1 : 0;
}

static int teardown(void **state)
{
	return mv_uml_kill(shared);
}

static int kill_own(void **state)
{
	mv_uml_kill(own);
	own = NULL;
	return 0;
}

static struct mv_uml *guest(void)
{
	const char *why = mv_uml_unavailable();
	if (why)
		TU_SKIP("no UML guest: %s", why);
	return shared;
}

static void commands_return_status_and_output(void **state)
{
	struct mv_uml *g = guest();
	char out[256];
	assert_int_equal(mv_uml_run(g, "echo hello", out, sizeof(out), CMD_MS), 0);
	assert_string_equal(out, "hello\n");
	assert_int_equal(mv_uml_run(g, "printf 'no newline'", out, sizeof(out), CMD_MS), 0);
	assert_string_equal(out, "no newline");
	assert_int_equal(mv_uml_run(g, "echo oops >&2; exit 3", out, sizeof(out), CMD_MS), 3);
	assert_string_equal(out, "oops\n");
	assert_int_equal(mv_uml_run(g, "cat", out, sizeof(out), CMD_MS), 0);   /* stdin is empty */
	assert_string_equal(out, "");
	assert_int_equal(mv_uml_run(g, "kill -9 $$", NULL, 0, CMD_MS), 128 + 9);
	assert_int_equal(mv_uml_run(g, "a\nb", out, sizeof(out), CMD_MS), -EINVAL);
}

static void output_is_capped(void **state)
{
	struct mv_uml *g = guest();
	char out[64], next[64];
	assert_int_equal(mv_uml_run(g, "yes | head -c 20000", out, sizeof(out), CMD_MS), 0);
	assert_int_equal(strlen(out), sizeof(out) - 1);
	assert_int_equal(mv_uml_run(g, "echo next", next, sizeof(next), CMD_MS), 0);
	assert_string_equal(next, "next\n");
}

static void meminfo_is_plausible(void **state)
{
	struct mv_uml *g = guest();
	char out[256];
	unsigned long kib = 0;
	assert_int_equal(mv_uml_run(g, "grep MemTotal /proc/meminfo", out, sizeof(out), CMD_MS), 0);
	assert_int_equal(sscanf(out, "MemTotal: %lu kB", &kib), 1);
	assert_true(kib <= MEM_MIB * 1024ul);
	assert_true(kib >= MEM_MIB * 1024ul * 3 / 4);
}

/* The checksum memtool prints for args on the host: the same program, the same content. */
static void host_memtool(const char *args, char *out, size_t cap)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "%s/bin/memtool %s",
		 getenv("MV_UML_ROOT") ? getenv("MV_UML_ROOT") : MV_UML_ROOT_DEFAULT, args);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	assert_non_null(fgets(out, (int)cap, p));
	assert_int_equal(pclose(p), 0);
}

static void memtool_checksums_round_trip(void **state)
{
	struct mv_uml *g = guest();
	char host[64], out[128], again[128];
	host_memtool("fill 12 42", host, sizeof(host));
	assert_int_equal(mv_uml_run(g, "memtool fill 12 42", out, sizeof(out), CMD_MS), 0);
	assert_string_equal(out, host);
	assert_int_equal(mv_uml_run(g, "memtool file /tmp/f 8 42", out, sizeof(out), CMD_MS), 0);
	assert_int_equal(mv_uml_run(g, "memtool sum /tmp/f", again, sizeof(again), CMD_MS), 0);
	assert_string_equal(out, again);
	assert_int_equal(mv_uml_run(g, "memtool fill 8 42", again, sizeof(again), CMD_MS), 0);
	assert_string_equal(out, again);
	assert_int_equal(mv_uml_run(g, "memtool fill 8 43", again, sizeof(again), CMD_MS), 0);
	assert_string_not_equal(out, again);
}

static void memtool_holds_memory_intact(void **state)
{
	struct mv_uml *g = guest();
	char out[256], cmd[256], host[64], csum[32];
	int pid;
	host_memtool("fill 16 7", host, sizeof(host));
	assert_int_equal(mv_uml_run(g, "memtool hold 16 7 60", out, sizeof(out), CMD_MS), 0);
	assert_int_equal(sscanf(out, "held %d csum %31s", &pid, csum), 2);
	assert_non_null(strstr(host, csum));
	snprintf(cmd, sizeof(cmd), "kill -USR1 %d; while [ ! -s /tmp/memtool.%d ]; do sleep 0.05; done;"
		 " cat /tmp/memtool.%d", pid, pid, pid);
	assert_int_equal(mv_uml_run(g, cmd, out, sizeof(out), CMD_MS), 0);
	assert_string_equal(out, "intact\n");
}

static void a_command_that_outlives_its_timeout_is_reported(void **state)
{
	struct mv_uml *g = guest();
	char out[64];
	assert_int_equal(mv_uml_run(g, "echo started; sleep 31 | cat", out, sizeof(out), 300), -ETIMEDOUT);
	assert_memory_equal(out, "started\n", 8);     /* then, maybe, the shell's "Killed" */
	/* its whole process group went, and the guest still serves */
	assert_int_equal(mv_uml_run(g, "for i in $(seq 100); do ps -o args | grep -qx 'sleep 31' || exit 0;"
				    " sleep 0.1; done;"
				    " exit 1", NULL, 0, CMD_MS), 0);
	assert_int_equal(mv_uml_run(g, "echo alive", out, sizeof(out), CMD_MS), 0);
	assert_string_equal(out, "alive\n");
}

/* Host processes whose parent is ppid, into pids; returns how many. */
static int children(pid_t ppid, pid_t *pids, int max)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	int n = 0;
	assert_non_null(d);
	while ((e = readdir(d)) && n < max) {
		char p[64], buf[512];
		int pp, pid = atoi(e->d_name);
		if (pid <= 0)
			continue;
		snprintf(p, sizeof(p), "/proc/%d/stat", pid);
		FILE *f = fopen(p, "r");
		if (!f)
			continue;
		size_t len = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[len] = 0;
		char *rp = strrchr(buf, ')');
		if (rp && sscanf(rp + 1, " %*c %d", &pp) == 1 && pp == ppid)
			pids[n++] = pid;
	}
	closedir(d);
	return n;
}

static void kill_leaves_no_process(void **state)
{
	struct mv_uml_opts o = opts(128);
	struct mv_uml *g;
	pid_t pids[16];
	if (mv_uml_unavailable())
		TU_SKIP("no UML guest: %s", mv_uml_unavailable());
	assert_int_equal(mv_uml_start(&o, &own), 0);
	g = own;
	pids[0] = mv_uml_pid(g);
	int n = 1 + children(pids[0], pids + 1, 15);
	assert_true(n >= 2);                        /* UML forks helpers */
	assert_int_equal(mv_uml_run(g, "memtool hold 16 1 600 >/dev/null", NULL, 0, CMD_MS), 0);
	own = NULL;
	assert_int_equal(mv_uml_kill(g), 0);
	for (int i = 0; i < n; i++)
		assert_true(kill(pids[i], 0) < 0 && errno == ESRCH);
}

static void the_whole_life_bound_kills_the_guest(void **state)
{
	struct mv_uml_opts o = opts(128);
	struct mv_uml *g;
	if (mv_uml_unavailable())
		TU_SKIP("no UML guest: %s", mv_uml_unavailable());
	o.timeout_s = 2;
	int r = mv_uml_start(&o, &own);
	if (r) {                         /* a slow boot: the bound struck first */
		assert_int_equal(r, -EIO);
		return;
	}
	g = own;
	pid_t pid = mv_uml_pid(g);
	assert_int_equal(mv_uml_run(g, "sleep 60", NULL, 0, 60000), -EPIPE);
	assert_int_equal(mv_uml_run(g, "echo", NULL, 0, CMD_MS), -EPIPE);
	own = NULL;
	assert_int_equal(mv_uml_kill(g), 0);
	assert_true(kill(pid, 0) < 0 && errno == ESRCH);
}

/* A unix socket at path: bound, and listening when asked. */
static int unix_socket(const char *path, int listening)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	unlink(path);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	if (listening)
		assert_int_equal(listen(fd, 1), 0);
	return fd;
}

static void a_balloon_socket_nobody_serves_fails_fast(void **state)
{
	struct mv_uml_opts o = opts(128);
	struct mv_uml *g = NULL;
	char path[64];
	if (mv_uml_unavailable())
		TU_SKIP("no UML guest: %s", mv_uml_unavailable());
	snprintf(path, sizeof(path), "/tmp/test_uml.%d.sock", (int)getpid());
	o.balloon_socket = path;
	unlink(path);
	assert_int_equal(mv_uml_start(&o, &g), -ENOENT);
	assert_null(g);
	assert_non_null(strstr(diag, path));
	int fd = unix_socket(path, 0);
	assert_int_equal(mv_uml_start(&o, &g), -ECONNREFUSED);
	assert_non_null(strstr(diag, "nothing listens"));
	close(fd);
	/* accepted by the kernel's backlog but never answered: the boot blocks until its bound */
	fd = unix_socket(path, 1);
	o.boot_timeout_ms = 1000;
	assert_int_equal(mv_uml_start(&o, &own), -ETIMEDOUT);
	assert_non_null(strstr(diag, "does not answer"));
	close(fd);
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(commands_return_status_and_output),
		cmocka_unit_test(output_is_capped),
		cmocka_unit_test(meminfo_is_plausible),
		cmocka_unit_test(memtool_checksums_round_trip),
		cmocka_unit_test(memtool_holds_memory_intact),
		cmocka_unit_test(a_command_that_outlives_its_timeout_is_reported),
		cmocka_unit_test_teardown(kill_leaves_no_process, kill_own),
		cmocka_unit_test_teardown(the_whole_life_bound_kills_the_guest, kill_own),
		cmocka_unit_test_teardown(a_balloon_socket_nobody_serves_fails_fast, kill_own),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
