/* main.c - `make soak`: the soak for SOAK_TIME seconds (default 1800) with SOAK_SEED
 * (default 1); SOAK_VERBOSE=1 shows the library's warnings; progress on stderr, the summary as one JSON line on stdout. Exits 0 only
 * when no page was wrong and nothing hung. */
#include "soak.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <memvirt/memvirt.h>

/* An environment variable as a number > 0 (or >= 0 for the seed); -EINVAL when malformed. */
static int env_num(const char *name, double *out, bool zero_ok)
{
	const char *v = getenv(name);
	if (!v || !*v)
		return 0;
	char *end;
	errno = 0;
	double x = strtod(v, &end);
	if (errno || *end || x < 0 || (!zero_ok && x == 0)) {
		fprintf(stderr, "soak: %s=%s: expected a number%s\n", name, v, zero_ok ? "" : " > 0");
		return -EINVAL;
	}
	*out = x;
	return 0;
}

int main(void)
{
	struct soak_opts o;
	soak_opts_init(&o);
	double seed = (double)o.seed;
	if (env_num("SOAK_TIME", &o.seconds, false) || env_num("SOAK_SEED", &seed, true) ||
	    env_num("SOAK_WATCHDOG", &o.watchdog_s, false))
		return 2;
	o.seed = (uint64_t)seed;
	o.verbose = getenv("SOAK_VERBOSE") && *getenv("SOAK_VERBOSE") && strcmp(getenv("SOAK_VERBOSE"), "0");
	fprintf(stderr, "soak: %.0f s, seed %llu, watchdog %.0f s\n", o.seconds,
	        (unsigned long long)o.seed, o.watchdog_s);
	struct soak_result r;
	int err = soak_run(&o, &r);
	if (r.error) {
		fprintf(stderr, "soak: could not run: %s\n", mv_strerror(r.error));
		return 2;
	}
	soak_print_json(stdout, &r);
	if (err)
		fprintf(stderr, "soak: FAILED: %llu wrong pages%s\n", (unsigned long long)r.mismatches,
		        r.hung ? ", something hung" : "");
	return err ? 1 : 0;
}
