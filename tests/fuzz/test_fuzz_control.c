/* test_fuzz_control.c - replays, without libFuzzer, every input that once broke memvirtd's
 * control commands (tests/fuzz/regressions-control/, one named file per crash) and every
 * seed of its corpus (tests/fuzz/corpus-control/) through its fuzz harness
 * (tests/fuzz/fuzz_control.c): one cmocka test per file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdbool.h>

#define MV_FUZZ_NO_MAIN 1
#include "fuzz_control.c"
#include "replay.h"

int main(void)
{
	static const char *const dirs[] = { "regressions-control", "corpus-control" };
	return replay_main("control command fuzz regressions and corpus", dirs, 2, true, "");
}
