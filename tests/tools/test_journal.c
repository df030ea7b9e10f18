/* test_journal.c - kernel settings left changed by a run that was killed outright (SIGKILL)
 * are put back from the restore journal, by the next run or by `memvirt restore`; a journal
 * that is malformed or names a path outside the allowed set is refused and nothing is
 * written.  The "setting" is a file of our own next to a journal in a temp directory
 * (MEMVIRT_JOURNAL): tests never change kernel-wide settings. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "ksmctl.h"

static char dir[64], journal[128], setting[128], setting2[128], cli[PATH_MAX];

static void put(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
}

static long get(const char *path)
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

static size_t slurp(const char *path, char *buf, size_t size)
{
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(buf, 1, size - 1, f) : 0;
	if (f)
		fclose(f);
	buf[n] = '\0';
	return n;
}

/* A temp directory holding the journal and two settings that read 1. */
static int setup(void **state)
{
	snprintf(dir, sizeof(dir), "/tmp/memvirt-journal-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(journal, sizeof(journal), "%s/restore.journal", dir);
	snprintf(setting, sizeof(setting), "%s/setting", dir);
	snprintf(setting2, sizeof(setting2), "%s/setting2", dir);
	setenv("MEMVIRT_JOURNAL", journal, 1);
	put(setting, "1\n");
	put(setting2, "1\n");
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];
	int r = kc_journal_release();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) || r ? -1 : 0;
}

/* A child changes `path` to 7, then is killed with SIGKILL: no handler runs. */
static void killed_after_change(const char *path)
{
	int p[2];
	char c;
	assert_int_equal(pipe(p), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		if (kc_setting_set(path, 7) || write(p[1], "x", 1) != 1)
			_exit(3);
		pause();
		_exit(4);
	}
	close(p[1]);
	assert_int_equal(read(p[0], &c, 1), 1);
	close(p[0]);
	kill(pid, SIGKILL);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
	assert_int_equal(get(path), 7);	/* nothing restored it */
}

static void sigkill_then_restore(void **state)
{
	struct kc_restored out = { 0 };
	char why[256];

	killed_after_change(setting);
	int n = kc_journal_apply(&out, why, sizeof(why));
	printf("applied %d: %s %s -> %s; setting now %ld\n", n, out.e[0].path, out.e[0].found,
	       out.e[0].orig, get(setting));
	assert_int_equal(n, 1);
	assert_int_equal(get(setting), 1);
	assert_string_equal(out.e[0].path, setting);
	assert_string_equal(out.e[0].found, "7");
	assert_true(out.e[0].restored);
	assert_int_equal(access(journal, F_OK), -1);	/* empty journal removed */
}

/* The next run that changes a setting applies what a killed run left, first. */
static void next_run_applies_leftover(void **state)
{
	killed_after_change(setting);
	assert_int_equal(kc_setting_set(setting2, 5), 0);
	assert_int_equal(get(setting), 1);
	assert_int_equal(get(setting2), 5);
	assert_int_equal(kc_settings_restore(), 0);
	assert_int_equal(get(setting2), 1);
	assert_int_equal(access(journal, F_OK), -1);
}

/* A run's child killed while the run goes on: the run's own restore takes it over. */
static int run_with_killed_child(void)
{
	if (kc_setting_set(setting, 7))
		return 3;
	pid_t sub = fork();
	if (sub == 0) {
		if (kc_setting_set(setting2, 7) == 0)
			kill(getpid(), SIGKILL);
		_exit(1);
	}
	int st;
	if (sub < 0 || waitpid(sub, &st, 0) != sub || !WIFSIGNALED(st) || get(setting2) != 7)
		return 4;
	if (kc_settings_restore())
		return 5;
	return get(setting) == 1 && get(setting2) == 1 && access(journal, F_OK) ? 0 : 6;
}

static void run_restores_its_killed_child(void **state)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(run_with_killed_child());
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	printf("run: exit %d, settings %ld %ld\n", WEXITSTATUS(st), get(setting), get(setting2));
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* While the run that changed a setting is alive, a restore is refused, not applied. */
static void live_run_is_not_restored(void **state)
{
	int p[2];
	char c, why[256];
	assert_int_equal(pipe(p), 0);
	pid_t pid = fork();
	if (pid == 0) {
		if (kc_setting_set(setting, 7) || write(p[1], "x", 1) != 1)
			_exit(3);
		pause();
		_exit(0);
	}
	assert_int_equal(read(p[0], &c, 1), 1);
	int r = kc_journal_apply(NULL, why, sizeof(why));
	printf("while pid %d runs: %d (%s)\n", (int)pid, r, why);
	assert_int_equal(r, -EBUSY);
	assert_int_equal(get(setting), 7);
	kill(pid, SIGTERM);	/* its handler restores */
	waitpid(pid, NULL, 0);
	assert_int_equal(get(setting), 1);
	assert_int_equal(access(journal, F_OK), -1);
}

/* Refused journals: nothing applied, the journal left as it is for a person to look at. */
static void refused(const char *text, int want, const char *why_has)
{
	char why[512], before[1024], after[1024];
	put(setting, "7\n");
	put(journal, text);
	chmod(journal, 0600);
	slurp(journal, before, sizeof(before));
	int r = kc_journal_apply(NULL, why, sizeof(why));
	printf("%d: %s\n", r, why);
	assert_int_equal(r, want);
	assert_non_null(strstr(why, why_has));
	for (const char *c = why; *c; c++)
		assert_true(*c >= 0x20 && *c <= 0x7e);	/* the file's bytes are not echoed raw */
	assert_int_equal(get(setting), 7);
	slurp(journal, after, sizeof(after));
	assert_string_equal(before, after);
	assert_int_equal(kc_setting_set(setting2, 5), want);	/* nor will a run overwrite it */
	assert_int_equal(get(setting2), 1);
}

static void corrupt_journal_refused(void **state)
{
	char text[512];
	snprintf(text, sizeof(text), "memvirt-restore-journal 1\n1 %s 1\nend 1\n", setting);
	put(setting, "7\n");
	refused("memvirt-restore-journal 9\n", -EBADMSG, "line 1: not a journal");
	snprintf(text, sizeof(text), "memvirt-restore-journal 1\n1 %s 1\n", setting);
	refused(text, -EBADMSG, "no end line: the file is cut short");
	snprintf(text, sizeof(text), "memvirt-restore-journal 1\n1 %s 1\nend 1", setting);
	refused(text, -EBADMSG, "line 3: no newline");
	snprintf(text, sizeof(text), "memvirt-restore-journal 1\nx %s 1\ngarbage\nend 2\n", setting);
	refused(text, -EBADMSG, "line 2: not '<pid> <path> <value>': x ");
	assert_non_null(strstr(text, "garbage"));
	snprintf(text, sizeof(text), "memvirt-restore-journal 1\n1 %s 1\x1b\nend 1\n", setting);
	refused(text, -EBADMSG, "line 2: bad path or value: 1 /");
	snprintf(text, sizeof(text), "memvirt-restore-journal 1\n1 %s 1\nend 2\n", setting);
	refused(text, -EBADMSG, "end line counts");
}

static void outside_path_refused(void **state)
{
	char text[512], other[] = "/tmp/memvirt-outside-XXXXXX";
	int fd = mkstemp(other);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "7\n", 2), 2);
	close(fd);
	snprintf(text, sizeof(text), "memvirt-restore-journal 1\n1 %s 1\n1 %s 1\nend 2\n", setting, other);
	refused(text, -EPERM, "is not a setting memvirt changes");
	assert_int_equal(get(other), 7);
	snprintf(text, sizeof(text), "memvirt-restore-journal 1\n1 /sys/kernel/mm/ksm/../../../%s 1\nend 1\n", other);
	refused(text, -EPERM, "is not a setting memvirt changes");
	refused("memvirt-restore-journal 1\n1 /etc/passwd x\nend 1\n", -EPERM, "/etc/passwd is not");
	assert_int_equal(get(other), 7);
	assert_int_equal(kc_setting_set(other, 5), -EPERM);	/* nor is it ever journaled */
	assert_int_equal(get(other), 7);
	unlink(other);
}

/* build/tests/tools/test_journal -> build/memvirt (also under build/asan, build/tsan) */
static int run_cli(char *out, size_t size)
{
	char exe[PATH_MAX], cmd[PATH_MAX + 64];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	assert_true(n > 0);
	exe[n] = '\0';
	snprintf(cli, sizeof(cli), "%s/memvirt", dirname(dirname(dirname(exe))));
	snprintf(cmd, sizeof(cmd), "%s restore 2>&1", cli);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t len = fread(out, 1, size - 1, p);
	out[len] = '\0';
	int st = pclose(p);
	printf("memvirt restore -> %d:\n%s", WEXITSTATUS(st), out);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void cli_restore(void **state)
{
	char out[1024];
	killed_after_change(setting);
	assert_int_equal(run_cli(out, sizeof(out)), 0);
	assert_non_null(strstr(out, setting));
	assert_int_equal(get(setting), 1);
	assert_int_equal(run_cli(out, sizeof(out)), 0);
	assert_non_null(strstr(out, "nothing to restore"));
	put(journal, "memvirt-restore-journal 1\n1 /etc/passwd x\nend 1\n");
	chmod(journal, 0600);
	assert_int_equal(run_cli(out, sizeof(out)), 1);
	assert_non_null(strstr(out, "/etc/passwd is not a setting"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(sigkill_then_restore, setup, teardown),
		cmocka_unit_test_setup_teardown(next_run_applies_leftover, setup, teardown),
		cmocka_unit_test_setup_teardown(run_restores_its_killed_child, setup, teardown),
		cmocka_unit_test_setup_teardown(live_run_is_not_restored, setup, teardown),
		cmocka_unit_test_setup_teardown(corrupt_journal_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(outside_path_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(cli_restore, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
