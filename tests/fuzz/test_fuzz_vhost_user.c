/* test_fuzz_vhost_user.c - replays, without libFuzzer, every input that once broke the
 * vhost-user backend (tests/fuzz/regressions-vhost-user/, one named file per crash) and
 * every seed of its corpus (tests/fuzz/corpus-vhost-user/) through its fuzz harness
 * (tests/fuzz/fuzz_vhost_user.c): one cmocka test per file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#define MV_FUZZ_NO_MAIN 1
#include "fuzz_vhost_user.c"
#include "replay.h"

int main(void)
{
	static const char *const dirs[] = { "regressions-vhost-user", "corpus-vhost-user" };
	return replay_main("vhost-user fuzz regressions and corpus", dirs, 2, fv_init() == 0,
	                   "no memvirt host on this machine");
}
