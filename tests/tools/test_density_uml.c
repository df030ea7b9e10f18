/* test_density_uml.c - `memvirt density --guests uml` end to end, small: one 256 MiB Linux
 * guest per configuration (none, balloon under memvirtd) beside the simulated run.
 *
 * Outcomes: each configuration fits its guest, the guest's working set is intact, nobody
 * OOMed, and with the daemon's balloon device (free page reporting) the memory the guest
 * touched and freed is no longer held by the host, while without a device it is. Nothing
 * the run started is left behind (its temporary directory). About 30 s.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <glob.h>
#include <json-c/json.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "uml.h"
#include "testutil.h"

static json_object *at(json_object *o, const char *path) { return tu_json_at(o, path); }

static double num(json_object *o, const char *path)
{
	json_object *x = at(o, path);
	assert_non_null(x);
	return json_object_get_double(x);
}

static unsigned run_dirs(void)
{
	glob_t g;
	unsigned n = glob("/tmp/mv-density-*", 0, NULL, &g) ? 0 : (unsigned)g.gl_pathc;
	globfree(&g);
	return n;
}

static void one_guest_each_balloon_gives_back_stale_memory(void **state)
{
	const char *why = mv_uml_unavailable();
	if (why) {
		printf("[  SKIP    ] %s\n", why);
		skip();
	}
	char exe[PATH_MAX], cmd[2 * PATH_MAX], out_dir[] = "/tmp/memvirt-density-test-XXXXXX";
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	assert_true(n > 0);
	exe[n] = 0;
	assert_non_null(mkdtemp(out_dir));
	unsigned dirs0 = run_dirs();
	snprintf(cmd, sizeof(cmd), "%s/memvirt density --guests uml --guest-mib 256 --budget-mib 512 "
	         "--max-guests 1 --max-time 60 --json --out %s", dirname(dirname(dirname(exe))), out_dir);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	static char out[1 << 16];
	size_t len = fread(out, 1, sizeof(out) - 1, p);
	out[len] = 0;
	int st = pclose(p);
	printf("%s\n", out);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	json_object *j = json_tokener_parse(out);
	assert_non_null(j);
	assert_int_equal(num(j, "guest_mib"), 256);
	for (int k = 0; k < 2; k++) {
		char path[64];
		const char *c = k ? "balloon" : "none";
		snprintf(path, sizeof(path), "configs.%s.uml.guests", c);
		assert_int_equal(num(j, path), 1);
		snprintf(path, sizeof(path), "configs.%s.uml.mismatches", c);
		assert_int_equal(num(j, path), 0);
		snprintf(path, sizeof(path), "configs.%s.uml.guest_ooms", c);
		assert_int_equal(num(j, path), 0);
		snprintf(path, sizeof(path), "configs.%s.sim.guests", c);
#if !defined(__SANITIZE_THREAD__) /* TSan's shadow memory is in the simulated run's PSS */
		assert_int_equal(num(j, path), 1);
#endif
	}
	/* without a device the guest's RAM file keeps working set + stale memory; with the
	 * daemon's device the stale part was reported and released */
	double none = num(j, "configs.none.uml.host_mib"), balloon = num(j, "configs.balloon.uml.host_mib");
	double ws = num(j, "working_set_mib"), stale = num(j, "stale_mib");
	assert_true(none >= ws + stale);
	assert_true(balloon >= ws);
	assert_true(balloon <= none - stale / 2);
	assert_true(num(j, "configs.balloon.uml.reported_mib") >= stale / 2);
	json_object_put(j);
	assert_int_equal(run_dirs(), dirs0);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", out_dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(one_guest_each_balloon_gives_back_stale_memory),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
