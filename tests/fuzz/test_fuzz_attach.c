/* test_fuzz_attach.c - replays, without libFuzzer, every input that once broke the agent
 * protocol's decoder (tests/fuzz/regressions-attach/, one named file per crash) and every
 * seed of its corpus (tests/fuzz/corpus-attach/) through its fuzz harness
 * (tests/fuzz/fuzz_attach.c): one cmocka test per file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdbool.h>

#define MV_FUZZ_NO_MAIN 1
#include "fuzz_attach.c"
#include "replay.h"

int main(void)
{
	static const char *const dirs[] = { "regressions-attach", "corpus-attach" };
	return replay_main("agent protocol fuzz regressions and corpus", dirs, 2, true, "");
}
