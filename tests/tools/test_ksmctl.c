/* test_ksmctl.c - kernel settings changed for a run are written back when the process
 * dies of a signal (SIGPIPE from `memvirt density | head` among them). The "setting" is a
 * file of our own next to a restore journal in a temp directory (MEMVIRT_JOURNAL): tests
 * never change kernel-wide settings. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "ksmctl.h"

static long read_setting(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;
	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

static char dir[64], path[128], journal[128];

static int setup(void **state)
{
	snprintf(dir, sizeof(dir), "/tmp/memvirt-ksmctl-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(path, sizeof(path), "%s/setting", dir);
	snprintf(journal, sizeof(journal), "%s/restore.journal", dir);
	return setenv("MEMVIRT_JOURNAL", journal, 1);
}

static int teardown(void **state)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) ? -1 : 0;
}

/* A child changes the setting from 1 to 7 and dies of sig; the file must read 1 again,
 * and the journal entry is gone with the change. */
static void restored_after(int sig)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fputs("1\n", f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		setrlimit(RLIMIT_CORE, &(struct rlimit){ 0, 0 }); /* SIGQUIT: no core file */
		if (kc_setting_set(path, 7) || read_setting(path) != 7)
			_exit(3);
		if (sig == SIGPIPE) { /* as a reader that went away makes it happen */
			int p[2];
			if (pipe(p))
				_exit(4);
			close(p[0]);
			if (write(p[1], "x", 1) < 0)
				_exit(5);
		} else {
			raise(sig);
		}
		_exit(6);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	printf("signal %d: child %s %d, setting %ld\n", sig, WIFSIGNALED(st) ? "killed by" : "exited",
	       WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), read_setting(path));
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == sig);
	assert_int_equal(read_setting(path), 1);
	assert_int_equal(access(journal, F_OK), -1);
}

static void settings_restored_on_each_signal(void **state)
{
	static const int sigs[] = { SIGPIPE, SIGTERM, SIGHUP, SIGINT, SIGQUIT };
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		restored_after(sigs[i]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(settings_restored_on_each_signal),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
