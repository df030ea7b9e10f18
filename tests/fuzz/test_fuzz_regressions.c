/* test_fuzz_regressions.c - replays, without libFuzzer, every input that once broke the
 * balloon device (tests/fuzz/regressions/, one named file per crash) and every seed of
 * the corpus (tests/fuzz/corpus/) through the fuzz harness: one cmocka test per file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "testutil.h"

#define MV_FUZZ_NO_MAIN 1
#include "fuzz_balloon.c"

#define MAX_INPUTS 512

struct input {
	char path[1024];
	char name[300];
};

static struct input inputs[MAX_INPUTS];
static unsigned n_inputs;

static void replay(void **state)
{
	const struct input *in = *state;
	FILE *f = fopen(in->path, "rb");
	assert_non_null(f);
	static uint8_t buf[1 << 20];
	size_t n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	LLVMFuzzerTestOneInput(buf, n);
}

static void no_host(void **state)
{
	TU_SKIP("no memvirt host on this machine (userfaultfd write-protect, PAGEMAP_SCAN)");
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct input *)a)->name, ((const struct input *)b)->name);
}

/* The files of dir (sources relative to the make directory, or MV_SRCDIR). */
static void collect(const char *srcdir, const char *sub)
{
	char dir[400];
	snprintf(dir, sizeof(dir), "%s/tests/fuzz/%s", srcdir, sub);
	DIR *d = opendir(dir);
	if (!d)
		return;
	unsigned first = n_inputs;
	struct dirent *e;
	while ((e = readdir(d)) && n_inputs < MAX_INPUTS) {
		struct input *in = &inputs[n_inputs];
		struct stat st;
		if (e->d_name[0] == '.' || !strncmp(e->d_name, "README", 6))
			continue;
		snprintf(in->path, sizeof(in->path), "%.400s/%.255s", dir, e->d_name);
		if (stat(in->path, &st) || !S_ISREG(st.st_mode))
			continue;
		snprintf(in->name, sizeof(in->name), "%.20s/%.255s", sub, e->d_name);
		n_inputs++;
	}
	closedir(d);
	qsort(inputs + first, n_inputs - first, sizeof(inputs[0]), by_name);
}

int main(void)
{
	const char *srcdir = getenv("MV_SRCDIR") ? getenv("MV_SRCDIR") : ".";
	collect(srcdir, "regressions");
	collect(srcdir, "corpus");
	if (!n_inputs) {
		printf("[  SKIP    ] no inputs under %s/tests/fuzz (run from the source tree)\n", srcdir);
		return 0;
	}
	bool host = fz_init() == 0;
	struct CMUnitTest *t = calloc(n_inputs, sizeof(*t));
	assert_non_null(t);
	for (unsigned i = 0; i < n_inputs; i++)
		t[i] = (struct CMUnitTest){ .name = inputs[i].name, .test_func = host ? replay : no_host,
		                            .initial_state = &inputs[i] };
	int rc = _cmocka_run_group_tests("fuzz regressions and corpus", t, n_inputs, NULL, NULL);
	free(t);
	return rc;
}
