/* test_ksmctl.c - kernel settings changed for a run are written back when the process
 * dies of a signal (SIGPIPE from `memvirt density | head` among them). The "setting" is a
 * file of our own: tests never change kernel-wide settings. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
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

/* A child changes the setting from 1 to 7 and dies of sig; the file must read 1 again. */
static void restored_after(int sig)
{
	char path[] = "/tmp/memvirt-setting-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "1\n", 2), 2);
	close(fd);
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
	unlink(path);
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
	return cmocka_run_group_tests(tests, NULL, NULL);
}
