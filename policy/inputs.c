/* inputs.c - the actuator: real inputs in (/proc, cgroup, balloons, scanner), outputs applied.
 *
 * Parsers take the text of the file so that tests feed them directly; file paths come
 * from the engine's config (tests point them at files of their own).
 */
#include "policy.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CG_UNLIMITED (1ull << 62) /* cgroup v1 says "no limit" with a value near 2^63 */

/* Read a whole small file into buf (NUL-terminated). -errno; -EFBIG if it does not fit. */
int mv__read_text(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t n = 0;
	int rc = 0;
	while (n < len - 1) {
		ssize_t r = read(fd, buf + n, len - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			rc = r < 0 ? -errno : 0;
			break;
		}
		n += (size_t)r;
	}
	if (!rc && n == len - 1)
		rc = -EFBIG;
	close(fd);
	buf[n] = 0;
	return rc;
}

/* /proc/pressure/memory: "some avg10=1.00 avg60=.. avg300=.. total=N" and the same for
 * "full" (optional). -EINVAL without a "some" line. */
int mv__psi_parse(const char *text, struct mv_policy_host_inputs *h)
{
	bool some = false;
	for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		char kind[8];
		double avg10, a60, a300;
		unsigned long long total;
		if (sscanf(l, "%7s avg10=%lf avg60=%lf avg300=%lf total=%llu", kind, &avg10, &a60,
		           &a300, &total) != 5)
			continue;
		if (!strcmp(kind, "some")) {
			h->psi_some_avg10 = avg10, h->psi_some_total_us = total, some = true;
		} else if (!strcmp(kind, "full")) {
			h->psi_full_avg10 = avg10, h->psi_full_total_us = total;
		}
	}
	h->psi_valid = some;
	return some ? 0 : -EINVAL;
}

/* /proc/meminfo: MemTotal and MemAvailable (kB). -EINVAL if either is missing. */
int mv__meminfo_parse(const char *text, struct mv_policy_host_inputs *h)
{
	unsigned found = 0;
	for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		unsigned long long kb;
		if (sscanf(l, "MemTotal: %llu kB", &kb) == 1)
			h->mem_total_bytes = kb * 1024, found |= 1;
		else if (sscanf(l, "MemAvailable: %llu kB", &kb) == 1)
			h->mem_available_bytes = kb * 1024, found |= 2;
	}
	return found == 3 ? 0 : -EINVAL;
}

/* One cgroup file holding a number or "max". */
static int cg_value(const char *dir, const char *file, uint64_t *out)
{
	char path[MV_POL_PATH_MAX + 32], buf[64];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	int rc = mv__read_text(path, buf, sizeof(buf));
	if (rc)
		return rc;
	if (!strncmp(buf, "max", 3)) {
		*out = 0;
		return 0;
	}
	char *end;
	errno = 0;
	unsigned long long v = strtoull(buf, &end, 10);
	if (errno || end == buf || (*end && *end != '\n'))
		return -EINVAL;
	*out = v >= CG_UNLIMITED ? 0 : v;
	return 0;
}

/* A cgroup directory: v1 (memory.limit_in_bytes, memory.usage_in_bytes) or v2
 * (memory.max, memory.current). */
int mv__cgroup_read(const char *dir, struct mv_policy_host_inputs *h)
{
	int rc = cg_value(dir, "memory.limit_in_bytes", &h->cgroup_limit_bytes);
	if (!rc)
		return cg_value(dir, "memory.usage_in_bytes", &h->cgroup_usage_bytes);
	if (rc != -ENOENT)
		return rc;
	rc = cg_value(dir, "memory.max", &h->cgroup_limit_bytes);
	return rc ? rc : cg_value(dir, "memory.current", &h->cgroup_usage_bytes);
}

static uint64_t clock_ns(struct mv_policy *p)
{
	if (p->cfg.now_ns)
		return p->cfg.now_ns(p->cfg.clock_opaque);
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int host_from_caller(struct mv_policy *p, struct mv_policy_host_inputs *h)
{
	int rc = p->cfg.host_inputs(p->cfg.host_inputs_opaque, h);
	if (rc)
		return rc > 0 ? -EINVAL : rc;
	if (p->cfg.host)
		h->scanner_valid = !mv_host_stats(p->cfg.host, &h->scanner);
	return 0;
}

static int gather_host(struct mv_policy *p, struct mv_policy_host_inputs *h)
{
	char buf[16384];
	memset(h, 0, sizeof(*h));
	if (p->cfg.host_inputs)
		return host_from_caller(p, h);
	if (mv__read_text(p->psi_path, buf, sizeof(buf)) || mv__psi_parse(buf, h))
		h->psi_valid = false; /* no PSI: decisions go by the goal alone */
	int rc = mv__read_text(p->meminfo_path, buf, sizeof(buf));
	if (rc || (rc = mv__meminfo_parse(buf, h)))
		return rc;
	if (p->conf.cgroup[0] && (rc = mv__cgroup_read(p->conf.cgroup, h)))
		return rc;
	if (p->cfg.host)
		h->scanner_valid = !mv_host_stats(p->cfg.host, &h->scanner);
	return 0;
}

static void gather_vm(const struct mv__pvm *st, struct mv_policy_vm_inputs *v)
{
	memset(v, 0, sizeof(*v));
	v->name = st->name;
	v->ram_bytes = mv__vm_ram_bytes(st->vm);
	v->has_balloon = st->balloon && !mv_balloon_info(st->balloon, &v->balloon);
	v->scanner_valid = !mv_vm_stats(st->vm, &v->scanner);
}

/* Fill in (vms: room for every attached VM). VMs attached without a handle are left out. */
int mv__policy_gather(struct mv_policy *p, struct mv_policy_inputs *in,
                      struct mv_policy_vm_inputs *vms)
{
	memset(in, 0, sizeof(*in));
	in->now_ns = clock_ns(p);
	int rc = gather_host(p, &in->host);
	if (rc)
		return rc;
	for (unsigned i = 0; i < p->nr_vms; i++)
		if (p->vms[i].vm)
			gather_vm(&p->vms[i], &vms[in->nr_vms++]);
	in->vms = vms;
	return 0;
}

static struct mv__pvm *vm_named(struct mv_policy *p, const char *name)
{
	for (unsigned i = 0; i < p->nr_vms; i++)
		if (!strcmp(p->vms[i].name, name))
			return &p->vms[i];
	return NULL;
}

/* Apply out (complete: one entry per input VM). First error, every failure logged. */
int mv__policy_apply(struct mv_policy *p, const struct mv_policy_inputs *in,
                     const struct mv_policy_outputs *out)
{
	int first = 0;
	for (unsigned i = 0; i < out->nr_vms; i++) {
		struct mv__pvm *st = vm_named(p, out->vms[i].name);
		if (!st || !st->balloon)
			continue;
		int rc = out->vms[i].changed ? mv_balloon_set_target(st->balloon, out->vms[i].target_bytes) : 0;
		if (rc)
			mv__log_apply_error(p, in->now_ns, st->name, "mv_balloon_set_target", rc);
		first = first ? first : rc;
		mv_balloon_stats_request(st->balloon); /* fresh figures for the next period */
	}
	if (out->scanner_changed && p->cfg.host) {
		int rc = mv_host_set_cpu_share(p->cfg.host, out->scanner_cpu_share);
		if (rc)
			mv__log_apply_error(p, in->now_ns, NULL, "mv_host_set_cpu_share", rc);
		first = first ? first : rc;
	}
	mv__log_flush(p);
	return first;
}

static void copy_out(const struct mv_policy_outputs *all, struct mv_policy_outputs *out)
{
	struct mv_policy_vm_outputs *vms = out->vms;
	unsigned cap = out->cap_vms;
	*out = *all;
	out->vms = vms;
	out->cap_vms = cap;
	for (unsigned i = 0; vms && i < all->nr_vms && i < cap; i++)
		vms[i] = all->vms[i];
}

static int tick_locked(struct mv_policy *p, struct mv_policy_outputs *out)
{
	unsigned n = p->nr_vms ? p->nr_vms : 1;
	struct mv_policy_vm_inputs *vin = calloc(n, sizeof(*vin));
	struct mv_policy_outputs all = { .cap_vms = n, .vms = calloc(n, sizeof(*all.vms)) };
	struct mv_policy_inputs in;
	int rc = -ENOMEM;
	if (!vin || !all.vms)
		goto fail_alloc;
	rc = mv__policy_gather(p, &in, vin);
	if (rc)
		goto fail_gather;
	rc = mv__policy_step_locked(p, &in, &all);
	if (rc)
		goto fail_step;
	rc = mv__policy_apply(p, &in, &all);
	if (out)
		copy_out(&all, out);
fail_step:
fail_gather:
fail_alloc:
	free(all.vms);
	free(vin);
	return rc;
}

MV_API int mv_policy_tick(struct mv_policy *p, struct mv_policy_outputs *out)
{
	if (!p)
		return -EINVAL;
	pthread_mutex_lock(&p->lock);
	int rc = tick_locked(p, out);
	pthread_mutex_unlock(&p->lock);
	return rc;
}

MV_API int mv_policy_host_read(struct mv_policy *p, struct mv_policy_host_inputs *h)
{
	if (!p || !h)
		return -EINVAL;
	pthread_mutex_lock(&p->lock);
	int rc = gather_host(p, h);
	pthread_mutex_unlock(&p->lock);
	return rc;
}
