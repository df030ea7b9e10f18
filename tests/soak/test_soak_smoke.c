/* test_soak_smoke.c - the soak's own loop for 10 seconds, so that `make soak` cannot rot:
 * every part runs at least once (guests of every profile, balloons moving, hint runs,
 * a memslot re-added, a guest recreated, failures injected) and no page is wrong. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include "soak.h"
#include "testutil.h"

static void ten_seconds_of_everything(void **state)
{
#if defined(__SANITIZE_THREAD__)
	/* Under ThreadSanitizer the host's teardown alone (every index node freed after a
	 * grace period, each checked against its history) outlasts any sensible bound:
	 * the soak's concurrency is covered by test_races and test_workload there. */
	TU_SKIP("the soak is too slow under ThreadSanitizer (run `make soak` unsanitized)");
#endif
	struct soak_opts o;
	soak_opts_init(&o);
	o.seconds = 10;
	o.seed = 7;
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
	/* Sanitizers slow every step tenfold and more (ThreadSanitizer checks each node
	 * freed after a grace period against its history): a slow step is not a hang. */
	o.watchdog_s *= 10;
#endif
	struct soak_result r;
	int err = soak_run(&o, &r);
	if (r.error == -ENOSYS || r.error == -EPERM)
		TU_SKIP("no userfaultfd write-protect or PAGEMAP_SCAN: %d", r.error);
	soak_print_json(stdout, &r);
	assert_int_equal(r.error, 0);
	assert_false(r.hung);
	assert_int_equal(r.mismatches, 0);
	assert_int_equal(err, 0);
	assert_true(r.pages_verified > 0);
	assert_true(r.guests_created > 6);   /* the first six and at least one recreation */
	assert_true(r.region_readds >= 1);
	assert_true(r.hint_runs >= 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(ten_seconds_of_everything),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
