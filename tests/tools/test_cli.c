/* test_cli.c - the memvirt CLI as an admin runs it: bad numeric options are refused with
 * a message naming the option and exit status 2, before anything runs; balloon-backend and
 * balloon-ctl talk over the control socket. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static char cli[PATH_MAX], out_dir[64];

/* build/tests/tools/test_cli -> build/memvirt (also under build/asan, build/tsan) */
static int setup(void **state)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return -1;
	exe[n] = 0;
	char *d = dirname(dirname(dirname(exe)));
	snprintf(cli, sizeof(cli), "%s/memvirt", d);
	snprintf(out_dir, sizeof(out_dir), "/tmp/memvirt-cli-test-%d", (int)getpid());
	return access(cli, X_OK);
}

/* Run the CLI (killed after 30 s: a run that starts has accepted the option); its exit
 * status, or 128 + signal; the first line it wrote to stderr into err. */
/* If a refused run made its output folder after all, take it away (ours alone). */
static int teardown(void **state)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", out_dir);
	return system(cmd) ? -1 : 0;
}

static int run(const char *const *args, char *err, size_t max)
{
	char cmd[4096];
	int k = snprintf(cmd, sizeof(cmd), "timeout -s KILL 30 %s", cli);
	for (size_t i = 0; args[i]; i++)
		k += snprintf(cmd + k, sizeof(cmd) - (size_t)k, " '%s'", args[i]);
	snprintf(cmd + k, sizeof(cmd) - (size_t)k, " 2>&1 >/dev/null");
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	err[0] = 0;
	if (!fgets(err, (int)max, p))
		err[0] = 0;
	char sink[256];
	while (fgets(sink, sizeof(sink), p))
		;
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void refused(const char *cmd, const char *opt, const char *value)
{
	const char *args[] = { cmd, opt, value, "--out", out_dir, "--configs", "none", NULL };
	char err[512];
	int rc = run(args, err, sizeof(err));
	printf("%s %s %s -> %d: %s", cmd, opt, value, rc, err);
	assert_int_equal(rc, 2);
	assert_non_null(strstr(err, opt));
	struct stat st;
	assert_int_not_equal(stat(out_dir, &st), 0); /* nothing was run or written */
}

static void bad_numbers_are_refused(void **state)
{
	refused("density", "--budget-mib", "-5");
	refused("density", "--budget-mib", "abc");
	refused("density", "--budget-mib", "10x");
	refused("density", "--budget-mib", "1");
	refused("density", "--budget-mib", "");
	refused("density", "--scale", "-0.5");
	refused("density", "--scale", "nan");
	refused("density", "--scale", "1e9");
	refused("density", "--max-guests", "0");
	refused("density", "--max-guests", "2.5");
	refused("density", "--max-guests", "-1");
}

/* `bench guest`: the bad option comes last, after valid ones, so that nothing else is wrong
 * with the command; a run that started anyway would take far longer than the timeout. */
static void guest_refused(const char *opt, const char *value)
{
	const char *args[] = { "bench", "guest", "--no-ksm", "--guest-mib", "16", "--seconds", "1",
	                       "--settle-timeout", "1", opt, value, NULL };
	char err[512];
	int rc = run(args, err, sizeof(err));
	printf("bench guest %s %s -> %d: %s", opt, value, rc, err);
	assert_int_equal(rc, 2);
	assert_non_null(strstr(err, opt));
}

static void bench_guest_refuses_bad_numbers(void **state)
{
	guest_refused("--ws", "0");
	guest_refused("--ws", "101");
	guest_refused("--ws", "-5");
	guest_refused("--ws", "abc");
	guest_refused("--ws", "");
	guest_refused("--ws", "10,");
	guest_refused("--ws", "1,,10");
	guest_refused("--ws", "10,20x");
	guest_refused("--ws", "1,2,3,4,5,6,7,8,9");
	guest_refused("--seconds", "0");
	guest_refused("--seconds", "-1");
	guest_refused("--seconds", "abc");
	guest_refused("--seconds", "5s");
	guest_refused("--seconds", "1e9");
	guest_refused("--guest-mib", "8");
	guest_refused("--settle-timeout", "0");
	guest_refused("--settle-quiet", "0");
}

/* Run the CLI with stdout captured into out (one line at most). */
static int run_out(const char *const *args, char *out, size_t max)
{
	char cmd[4096];
	int k = snprintf(cmd, sizeof(cmd), "timeout -s KILL 30 %s", cli);
	for (size_t i = 0; args[i]; i++)
		k += snprintf(cmd + k, sizeof(cmd) - (size_t)k, " '%s'", args[i]);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	out[0] = 0;
	if (!fgets(out, (int)max, p))
		out[0] = 0;
	char sink[256];
	while (fgets(sink, sizeof(sink), p))
		;
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* balloon-backend: bad options refused before it listens; its control socket answers
 * balloon-ctl (bad commands with a message and exit 1); SIGTERM ends it cleanly and its
 * socket files go. */
static void balloon_backend_and_ctl(void **state)
{
	char err[512], out[4096], sock[96], ctl[96];
	assert_int_equal(mkdir(out_dir, 0700), 0);
	snprintf(sock, sizeof(sock), "%s/b.sock", out_dir);
	snprintf(ctl, sizeof(ctl), "%s/c.sock", out_dir);
	const char *bad1[] = { "balloon-backend", "--socket", sock, "--target", "-1", NULL };
	assert_int_equal(run(bad1, err, sizeof(err)), 2);
	assert_non_null(strstr(err, "--target"));
	const char *bad2[] = { "balloon-backend", "--socket", sock, "--features", "stats,bogus", NULL };
	assert_int_equal(run(bad2, err, sizeof(err)), 2);
	assert_non_null(strstr(err, "bogus"));
	const char *bad3[] = { "balloon-backend", NULL };
	assert_int_equal(run(bad3, err, sizeof(err)), 2);
	struct stat st;
	assert_int_not_equal(stat(sock, &st), 0);
	const char *none[] = { "balloon-ctl", ctl, "info", NULL };
	assert_int_equal(run(none, err, sizeof(err)), 1); /* nothing listens */

	pid_t pid = fork();
	assert_true(pid >= 0);
	if (!pid) {
		execl(cli, cli, "balloon-backend", "--socket", sock, "--control", ctl, "--log-ms", "0",
		      (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500 && stat(ctl, &st); i++)
		usleep(10000);
	assert_int_equal(run_out(none, out, sizeof(out)), 0);
	assert_non_null(strstr(out, "\"connections\":[]"));
	assert_int_equal(stat(ctl, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600); /* the owner's alone */
	const char *tgt[] = { "balloon-ctl", ctl, "target", "512M", NULL };
	assert_int_equal(run_out(tgt, out, sizeof(out)), 0);
	assert_non_null(strstr(out, "\"ok\":true"));
	const char *bad_tgt[] = { "balloon-ctl", ctl, "target", "lots", NULL };
	assert_int_equal(run_out(bad_tgt, out, sizeof(out)), 1);
	assert_non_null(strstr(out, "lots"));
	const char *unknown[] = { "balloon-ctl", ctl, "explode", NULL };
	assert_int_equal(run_out(unknown, out, sizeof(out)), 1);
	assert_non_null(strstr(out, "unknown command"));
	const char *missing[] = { "balloon-ctl", ctl, "stats", "7", NULL };
	assert_int_equal(run_out(missing, out, sizeof(out)), 1);
	kill(pid, SIGTERM);
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_int_not_equal(stat(sock, &st), 0);
	assert_int_not_equal(stat(ctl, &st), 0);
}

static void bench_guest_help(void **state)
{
	const char *args[] = { "bench", "guest", "--help", NULL };
	char err[512];
	assert_int_equal(run(args, err, sizeof(err)), 0);
}

/* `bench balloon --transport`: an unknown transport is refused; over vhost-user a small
 * guest's balloon goes to its target and back (exit status 0 says both phases did). */
static void bench_balloon_transport(void **state)
{
	const char *bad[] = { "bench", "balloon", "--transport", "carrier-pigeon", NULL };
	char err[512];
	assert_int_equal(run(bad, err, sizeof(err)), 2);
	assert_non_null(strstr(err, "--transport"));
	const char *vu[] = { "bench", "balloon", "--guest-gib", "0.25", "--target-gib", "0.0625",
	                     "--transport", "vhost-user", "--json", NULL };
	int rc = run(vu, err, sizeof(err));
	printf("bench balloon --transport vhost-user -> %d: %s\n", rc, err);
	assert_int_equal(rc, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(bad_numbers_are_refused),
		cmocka_unit_test(bench_guest_refuses_bad_numbers),
		cmocka_unit_test(bench_guest_help),
		cmocka_unit_test_setup_teardown(balloon_backend_and_ctl, NULL, teardown),
		cmocka_unit_test(bench_balloon_transport),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
