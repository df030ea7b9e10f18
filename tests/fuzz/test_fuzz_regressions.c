/* test_fuzz_regressions.c - replays, without libFuzzer, every input that once broke the
 * balloon device (tests/fuzz/regressions/, one named file per crash) and every seed of
 * the corpus (tests/fuzz/corpus/) through the fuzz harness: one cmocka test per file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#define MV_FUZZ_NO_MAIN 1
#include "fuzz_balloon.c"
#include "replay.h"

int main(void)
{
	static const char *const dirs[] = { "regressions", "corpus" };
	return replay_main("fuzz regressions and corpus", dirs, 2, fz_init() == 0,
	                   "no memvirt host on this machine (userfaultfd write-protect, PAGEMAP_SCAN)");
}
