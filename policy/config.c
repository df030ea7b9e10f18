/* config.c - the policy file: INI through libinih, every key checked, errors with line and key. */
#include "policy.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FILE (1u << 20) /* a policy file is small: refuse anything bigger */

enum ktype { K_MIB, K_U64, K_DBL, K_GOAL, K_BOOL, K_PATH };

struct key {
	const char *name;
	enum ktype type;
	size_t off;
	double lo, hi;
};

#define K(n, t, f, l, h) { n, t, offsetof(struct mv__pcfg, f), l, h }
static const struct key host_keys[] = {
	K("goal", K_GOAL, goal, 0, 0),
	K("floor_mib", K_MIB, floor_bytes, 0, 1 << 30),
	K("ratio", K_DBL, ratio, 0.1, 100),
	K("budget_mib", K_MIB, budget_bytes, 1, 1 << 30),
	K("tau", K_DBL, tau, 0, 0.99),
	K("cache_idle", K_DBL, cache_idle, 0, 1),
	K("psi_some_high", K_DBL, some_high, 0, 100),
	K("psi_some_low", K_DBL, some_low, 0, 100),
	K("psi_full_high", K_DBL, full_high, 0, 100),
	K("psi_full_low", K_DBL, full_low, 0, 100),
	K("period_ms", K_U64, period_ms, 10, 3600000),
	K("max_step_mib", K_MIB, max_step_bytes, 1, 1 << 30),
	K("psi_reclaim_mib", K_MIB, psi_reclaim_bytes, 0, 1 << 30),
	K("band_mib", K_MIB, band_bytes, 0, 1 << 30),
	K("stats_max_age_ms", K_U64, stats_max_age_ms, 1, 86400000),
	K("oom_deflate_mib", K_MIB, oom_deflate_bytes, 0, 1 << 30),
	K("alloc_stall_min", K_U64, alloc_stall_min, 1, 1e12),
	K("alloc_stall_deflate_mib", K_MIB, alloc_stall_deflate_bytes, 0, 1 << 30),
	K("cooldown_ms", K_U64, cooldown_ms, 0, 86400000),
	K("stall_backoff_ms", K_U64, stall_backoff_ms, 0, 86400000),
	K("majflt_max_rate", K_DBL, majflt_max_rate, 0, 1e12),
	K("cow_horizon_ms", K_U64, cow_horizon_ms, 0, 86400000),
	K("cow_debt_reserve", K_DBL, cow_debt_reserve, 0, 1),
	K("scanner_min_cpu", K_DBL, scan_min, 0.001, 1),
	K("scanner_max_cpu", K_DBL, scan_max, 0.001, 1),
	K("scanner_cpu", K_DBL, scan_cpu, 0.001, 1),
	K("scanner_probe_ms", K_U64, scan_probe_ms, 0, 86400000),
	K("cgroup", K_PATH, cgroup, 0, 0),
	K("log_all", K_BOOL, log_all, 0, 0),
};
#undef K
#define NR_HOST_KEYS (sizeof(host_keys) / sizeof(host_keys[0]))
_Static_assert(NR_HOST_KEYS <= sizeof(((struct mv__pcfg *)0)->line_of) / sizeof(int),
               "line_of too small");

void mv__pcfg_defaults(struct mv__pcfg *c)
{
	memset(c, 0, sizeof(*c));
	c->goal = MV__GOAL_FLOOR;
	c->floor_bytes = 1024 * MV_MIB;
	c->ratio = 1.0;
	c->budget_bytes = 1024 * MV_MIB;
	c->tau = 0.75;
	c->cache_idle = 0.5;
	c->some_high = 10, c->some_low = 2, c->full_high = 2, c->full_low = 0.5;
	c->period_ms = 1000;
	c->max_step_bytes = 64 * MV_MIB;
	c->psi_reclaim_bytes = 256 * MV_MIB;
	c->band_bytes = 256 * MV_MIB;
	c->stats_max_age_ms = 10000;
	c->oom_deflate_bytes = 1024 * MV_MIB;
	c->alloc_stall_min = 1;
	c->alloc_stall_deflate_bytes = 256 * MV_MIB;
	c->cooldown_ms = 60000;
	c->stall_backoff_ms = 30000;
	c->majflt_max_rate = 200;
	c->cow_horizon_ms = 10000;
	c->cow_debt_reserve = 0;
	c->scan_min = 0.01, c->scan_max = 0.5, c->scan_cpu = 0.1;
	c->scan_probe_ms = 60000;
}

static void vm_defaults(struct mv__pvm_cfg *v, const char *name)
{
	memset(v, 0, sizeof(*v));
	snprintf(v->name, sizeof(v->name), "%s", name);
	v->shares = 1000;
	v->min_bytes = 256 * MV_MIB;
}

void mv__pcfg_free(struct mv__pcfg *c)
{
	free(c->vms);
	c->vms = NULL;
	c->nr_vms = 0;
}

/* The settings of the VM called name: its section's, or the defaults (static storage
 * only for the defaults: callers copy). */
const struct mv__pvm_cfg *mv__pcfg_vm(const struct mv__pcfg *c, const char *name)
{
	static __thread struct mv__pvm_cfg dflt;
	for (unsigned i = 0; i < c->nr_vms; i++)
		if (!strcmp(c->vms[i].name, name))
			return &c->vms[i];
	vm_defaults(&dflt, name);
	return &dflt;
}

/* ---- parsing ---- */

struct parse {
	struct mv__pcfg *c;
	const char *next;      /* reader position in the text */
	int line;              /* line the reader returned last */
	int err_line;          /* first error we found (0 = none) */
	char err[320];
};

static int fail(struct parse *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct parse *ps, const char *fmt, ...)
{
	if (ps->err_line)
		return 0;
	ps->err_line = ps->line;
	int n = snprintf(ps->err, sizeof(ps->err), "line %d: ", ps->line);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ps->err + n, sizeof(ps->err) - (size_t)n, fmt, ap);
	va_end(ap);
	return 0;
}

/* inih's line reader (fgets-like), counting lines so that the handler knows its line.
 * A line too long for inih is an error of its own rather than two half lines. */
static char *reader(char *str, int num, void *stream)
{
	struct parse *ps = stream;
	if (!*ps->next)
		return NULL;
	const char *nl = strchr(ps->next, '\n');
	size_t len = nl ? (size_t)(nl - ps->next) + 1 : strlen(ps->next);
	size_t keep = len < (size_t)num - 1 ? len : (size_t)num - 2;
	memcpy(str, ps->next, keep);
	str[keep] = 0;
	ps->next += len;
	ps->line++;
	if (keep < len)
		fail(ps, "line longer than %d characters", num - 3);
	return str;
}

static bool parse_u64(const char *v, double lo, double hi, uint64_t *out)
{
	if (*v < '0' || *v > '9')
		return false;
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 10);
	if (errno || *end || (double)x < lo || (double)x > hi)
		return false;
	*out = x;
	return true;
}

static bool parse_dbl(const char *v, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double x = strtod(v, &end);
	if (!*v || errno || *end || !isfinite(x) || x < lo || x > hi)
		return false;
	*out = x;
	return true;
}

static bool parse_bool(const char *v, bool *out)
{
	static const char *const yes[] = { "1", "true", "yes", "on" }, *const no[] = { "0", "false", "no", "off" };
	for (unsigned i = 0; i < 4; i++) {
		if (!strcasecmp(v, yes[i]) || !strcasecmp(v, no[i])) {
			*out = !strcasecmp(v, yes[i]);
			return true;
		}
	}
	return false;
}

/* Store value into the field of key k; false with an explanation in want on a bad value. */
static bool set_value(void *base, const struct key *k, const char *v, char *want, size_t wl)
{
	void *f = (char *)base + k->off;
	uint64_t u;
	switch (k->type) {
	case K_MIB:
	case K_U64:
		snprintf(want, wl, "an integer in [%.0f, %.0f]", k->lo, k->hi);
		if (!parse_u64(v, k->lo, k->hi, &u))
			return false;
		*(uint64_t *)f = k->type == K_MIB ? u * MV_MIB : u;
		return true;
	case K_DBL:
		snprintf(want, wl, "a number in [%g, %g]", k->lo, k->hi);
		return parse_dbl(v, k->lo, k->hi, f);
	case K_GOAL:
		snprintf(want, wl, "floor, ratio or budget");
		if (!strcmp(v, "floor"))
			*(enum mv__goal *)f = MV__GOAL_FLOOR;
		else if (!strcmp(v, "ratio"))
			*(enum mv__goal *)f = MV__GOAL_RATIO;
		else if (!strcmp(v, "budget"))
			*(enum mv__goal *)f = MV__GOAL_BUDGET;
		else
			return false;
		return true;
	case K_BOOL:
		snprintf(want, wl, "true or false");
		return parse_bool(v, f);
	case K_PATH:
		snprintf(want, wl, "empty or an absolute path shorter than %d characters", MV_POL_PATH_MAX);
		if ((*v && *v != '/') || strlen(v) >= MV_POL_PATH_MAX)
			return false;
		snprintf(f, MV_POL_PATH_MAX, "%s", v);
		return true;
	}
	return false;
}

static int set_key(struct parse *ps, const char *sect, void *base, const struct key *k,
                   int *line, const char *v)
{
	char want[96];
	if (*line)
		return fail(ps, "[%s] %s: given twice (first at line %d; an indented line continues "
		            "the key above it)", sect, k->name, *line);
	if (!set_value(base, k, v, want, sizeof(want)))
		return fail(ps, "[%s] %s: bad value '%s' (expected %s)", sect, k->name, v, want);
	*line = ps->line;
	return 1;
}

static int host_key(struct parse *ps, const char *name, const char *v)
{
	for (unsigned i = 0; i < NR_HOST_KEYS; i++)
		if (!strcmp(name, host_keys[i].name))
			return set_key(ps, "host", ps->c, &host_keys[i], &ps->c->line_of[i], v);
	return fail(ps, "[host] %s: unknown key", name);
}

/* "vm NAME" -> NAME in out; false when the section is not a [vm] one or NAME is bad. */
static bool vm_section(const char *sect, char *out, size_t len)
{
	if (strncmp(sect, "vm", 2) || (sect[2] != ' ' && sect[2] != '\t'))
		return false;
	const char *s = sect + 2;
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	if (!n || n >= len)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x20 || s[i] > 0x7e)
			return false;
	memcpy(out, s, n);
	out[n] = 0;
	return true;
}

static struct mv__pvm_cfg *vm_get(struct parse *ps, const char *name)
{
	struct mv__pcfg *c = ps->c;
	for (unsigned i = 0; i < c->nr_vms; i++)
		if (!strcmp(c->vms[i].name, name))
			return &c->vms[i];
	struct mv__pvm_cfg *v = realloc(c->vms, (c->nr_vms + 1) * sizeof(*v));
	if (!v)
		return NULL;
	c->vms = v;
	vm_defaults(&v[c->nr_vms], name);
	return &v[c->nr_vms++];
}

static int vm_key(struct parse *ps, const char *sect, const char *vmname, const char *name,
                  const char *v)
{
	static const struct key keys[] = {
		{ "shares", K_DBL, offsetof(struct mv__pvm_cfg, shares), 0.001, 1e9 },
		{ "min_mib", K_MIB, offsetof(struct mv__pvm_cfg, min_bytes), 0, 1 << 30 },
		{ "max_mib", K_MIB, offsetof(struct mv__pvm_cfg, max_bytes), 0, 1 << 30 },
	};
	struct mv__pvm_cfg *vm = vm_get(ps, vmname);
	if (!vm)
		return fail(ps, "[%s] %s: out of memory", sect, name);
	int *lines[] = { &vm->line_shares, &vm->line_min, &vm->line_max };
	for (unsigned i = 0; i < 3; i++)
		if (!strcmp(name, keys[i].name))
			return set_key(ps, sect, vm, &keys[i], lines[i], v);
	return fail(ps, "[%s] %s: unknown key", sect, name);
}

static int on_key(void *user, const char *section, const char *name, const char *value)
{
	struct parse *ps = user;
	char vmname[MV_POL_NAME_MAX];
	if (!strcmp(section, "host"))
		return host_key(ps, name, value);
	if (vm_section(section, vmname, sizeof(vmname)))
		return vm_key(ps, section, vmname, name, value);
	if (!*section)
		return fail(ps, "%s: key outside a section (expected [host] or [vm NAME] first)", name);
	return fail(ps, "[%s] %s: unknown section (expected [host] or [vm NAME], "
	            "NAME 1..63 printable characters)", section, name);
}

/* ---- checks across keys ---- */

static int key_index(const char *name)
{
	for (unsigned i = 0; i < NR_HOST_KEYS; i++)
		if (!strcmp(host_keys[i].name, name))
			return (int)i;
	return -1;
}

/* Require value(a) <= value(b); the key given last (or the one given at all) is blamed. */
static int check_order(struct parse *ps, const char *a, double va, const char *b, double vb)
{
	if (va <= vb)
		return 1;
	int la = ps->c->line_of[key_index(a)], lb = ps->c->line_of[key_index(b)];
	ps->line = la >= lb ? la : lb;
	if (la >= lb)
		return fail(ps, "[host] %s: %g must not exceed %s (%g)", a, va, b, vb);
	return fail(ps, "[host] %s: %g must not be below %s (%g)", b, vb, a, va);
}

static int check_host(struct parse *ps)
{
	const struct mv__pcfg *c = ps->c;
	return check_order(ps, "psi_some_low", c->some_low, "psi_some_high", c->some_high) &&
	       check_order(ps, "psi_full_low", c->full_low, "psi_full_high", c->full_high) &&
	       check_order(ps, "scanner_min_cpu", c->scan_min, "scanner_cpu", c->scan_cpu) &&
	       check_order(ps, "scanner_cpu", c->scan_cpu, "scanner_max_cpu", c->scan_max);
}

static int check_vms(struct parse *ps)
{
	for (unsigned i = 0; i < ps->c->nr_vms; i++) {
		const struct mv__pvm_cfg *v = &ps->c->vms[i];
		if (!v->max_bytes || v->max_bytes >= v->min_bytes)
			continue;
		bool blame_max = v->line_max >= v->line_min;
		ps->line = blame_max ? v->line_max : v->line_min;
		return fail(ps, "[vm %s] %s: %llu MiB is %s %s (%llu MiB)", v->name,
		            blame_max ? "max_mib" : "min_mib",
		            (unsigned long long)((blame_max ? v->max_bytes : v->min_bytes) / MV_MIB),
		            blame_max ? "below" : "above", blame_max ? "min_mib" : "max_mib",
		            (unsigned long long)((blame_max ? v->min_bytes : v->max_bytes) / MV_MIB));
	}
	return 1;
}

/* Parse the whole text into *out (defaults first). On error out is left empty. */
int mv__pcfg_parse_string(const char *text, struct mv__pcfg *out, char *err, size_t errlen)
{
	struct parse ps = { .c = out, .next = text };
	mv__pcfg_defaults(out);
	int r = ini_parse_stream(reader, &ps, on_key, &ps);
	if (r == -2)
		snprintf(ps.err, sizeof(ps.err), "out of memory"), ps.err_line = -1;
	else if (r > 0 && (!ps.err_line || r < ps.err_line))
		snprintf(ps.err, sizeof(ps.err), "line %d: syntax error (expected 'key = value', "
		         "'[host]' or '[vm NAME]')", r), ps.err_line = r;
	if (!ps.err_line)
		(void)(check_host(&ps) && check_vms(&ps));
	if (ps.err_line) {
		if (err && errlen)
			snprintf(err, errlen, "%s", ps.err);
		mv__pcfg_free(out);
		return r == -2 ? -ENOMEM : -EINVAL;
	}
	return 0;
}

static int read_all(const char *path, char **text, size_t *len, char *err, size_t errlen)
{
	FILE *f = fopen(path, "re");
	if (!f) {
		int e = errno;
		if (err && errlen)
			snprintf(err, errlen, "%s: %s", path, strerror(e));
		return -e;
	}
	char *buf = malloc(MAX_FILE + 1);
	size_t n = buf ? fread(buf, 1, MAX_FILE + 1, f) : 0;
	int e = !buf ? ENOMEM : ferror(f) ? EIO : n > MAX_FILE ? EFBIG : 0;
	fclose(f);
	if (e) {
		if (err && errlen)
			snprintf(err, errlen, "%s: %s", path, e == EFBIG ? "larger than 1 MiB" : strerror(e));
		free(buf);
		return -e;
	}
	buf[n] = 0;
	*text = buf;
	*len = n;
	return 0;
}

int mv__pcfg_parse_file(const char *path, struct mv__pcfg *out, char *err, size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	int rc = read_all(path, &text, &len, err, errlen);
	if (rc)
		return rc;
	if (strlen(text) != len) {
		if (err && errlen)
			snprintf(err, errlen, "%s: contains a NUL byte: not a text file", path);
		free(text);
		return -EINVAL;
	}
	rc = mv__pcfg_parse_string(text, out, err, errlen);
	if (!rc || !err || !errlen) {
		free(text);
		return rc;
	}
	char msg[400];
	snprintf(msg, sizeof(msg), "%s: %s", path, err);
	snprintf(err, errlen, "%s", msg);
	free(text);
	return rc;
}
