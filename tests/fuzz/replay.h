/* replay.h - fuzz inputs replayed without libFuzzer, one cmocka test per file: every
 * regression (one named file per crash) and every seed of a harness, through the
 * harness's LLVMFuzzerTestOneInput. Included by the replay tests after their harness
 * (built with MV_FUZZ_NO_MAIN). Inputs are found under tests/fuzz/ of the make
 * directory, or of MV_SRCDIR. */
#ifndef MV_FUZZ_REPLAY_H
#define MV_FUZZ_REPLAY_H

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

#define MAX_INPUTS 512

struct input {
	char path[1024];
	char name[300];
};

static struct input inputs[MAX_INPUTS];
static unsigned n_inputs;
static const char *no_host_why;

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
	TU_SKIP("%s", no_host_why);
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct input *)a)->name, ((const struct input *)b)->name);
}

/* The files of tests/fuzz/<sub>, in name order; README* are not inputs. */
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
		snprintf(in->name, sizeof(in->name), "%.30s/%.255s", sub, e->d_name);
		n_inputs++;
	}
	closedir(d);
	qsort(inputs + first, n_inputs - first, sizeof(inputs[0]), by_name);
}

/* Replay the inputs of dirs[0..n); `ready` false: each is a skip, saying why. */
static int replay_main(const char *title, const char *const *dirs, unsigned n, bool ready,
                       const char *why)
{
	const char *srcdir = getenv("MV_SRCDIR") ? getenv("MV_SRCDIR") : ".";
	for (unsigned i = 0; i < n; i++)
		collect(srcdir, dirs[i]);
	if (!n_inputs) {
		printf("[  SKIP    ] no inputs under %s/tests/fuzz (run from the source tree)\n", srcdir);
		return 0;
	}
	no_host_why = why;
	struct CMUnitTest *t = calloc(n_inputs, sizeof(*t));
	assert_non_null(t);
	for (unsigned i = 0; i < n_inputs; i++)
		t[i] = (struct CMUnitTest){ .name = inputs[i].name, .test_func = ready ? replay : no_host,
		                            .initial_state = &inputs[i] };
	int rc = _cmocka_run_group_tests(title, t, n_inputs, NULL, NULL);
	free(t);
	return rc;
}

#endif
