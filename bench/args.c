/* args.c - strict parsing of the CLI's numeric options: the whole string must be a number
 * in range (sizes may carry a unit), or the option is refused with a message naming it. */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A plain number: no sign games, no trailing bytes, finite. */
static int parse_number(const char *s, double *out, const char **rest)
{
	char *end;
	if (!s || !*s || strchr(s, '-'))
		return -EINVAL;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || errno || !isfinite(v))
		return -EINVAL;
	*out = v;
	*rest = end;
	return 0;
}

int bench_arg_double(const char *opt, const char *s, double lo, double hi, double *out)
{
	double v;
	const char *rest;
	if (parse_number(s, &v, &rest) || *rest || v < lo || v > hi) {
		fprintf(stderr, "memvirt: %s wants a number from %g to %g, not '%s'\n", opt, lo, hi,
		        s ? s : "");
		return -EINVAL;
	}
	*out = v;
	return 0;
}

int bench_arg_uint(const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
	double v;
	const char *rest;
	if (parse_number(s, &v, &rest) || *rest || v != floor(v) || v < (double)lo || v > (double)hi) {
		fprintf(stderr, "memvirt: %s wants a whole number from %llu to %llu, not '%s'\n", opt,
		        (unsigned long long)lo, (unsigned long long)hi, s ? s : "");
		return -EINVAL;
	}
	*out = (uint64_t)v;
	return 0;
}

/* A size with an optional unit (K, M, G, T, with or without "iB"; none = `unit_mib`),
 * in MiB: 0, or -EINVAL without a message. */
int bench_parse_size_mib(const char *s, double unit_mib, double *out_mib)
{
	static const struct { const char *name; double mib; } units[] = {
		{ "", 0 }, { "k", 1.0 / 1024 }, { "kib", 1.0 / 1024 }, { "m", 1 }, { "mib", 1 },
		{ "g", 1024 }, { "gib", 1024 }, { "t", 1048576 }, { "tib", 1048576 } };
	double v;
	const char *rest;
	if (!parse_number(s, &v, &rest))
		for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
			if (!strcasecmp(rest, units[i].name)) {
				*out_mib = v * (units[i].mib ? units[i].mib : unit_mib);
				return 0;
			}
	return -EINVAL;
}

int bench_arg_size_mib(const char *opt, const char *s, double lo_mib, double hi_mib, double unit_mib,
                       double *out_mib)
{
	double mib;
	if (!bench_parse_size_mib(s, unit_mib, &mib) && mib >= lo_mib && mib <= hi_mib) {
		*out_mib = mib;
		return 0;
	}
	fprintf(stderr, "memvirt: %s wants a size from %.0f MiB to %.0f MiB (units K, M, G, T), "
	        "not '%s'\n", opt, lo_mib, hi_mib, s ? s : "");
	return -EINVAL;
}
