/* decision.c - decision records: one JSON object per line, with the inputs, the rule, the cap.
 *
 * Record version 1. Every record has "v" (1), "seq" (per engine, from 0), "t_ns" (the
 * step's clock), "kind" ("host", "vm", "scanner", "apply_error") and "rule". Sizes are
 * bytes, rates per second, PSI in percent, CPU shares in cores. policy/README.md lists the
 * fields of each kind; explain.c renders them.
 */
#include "policy.h"

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>

static json_object *jnum(double v)
{
	if (!isfinite(v))
		return NULL; /* JSON null */
	char s[32];
	snprintf(s, sizeof(s), "%.6g", v);
	return json_object_new_double_s(v, s);
}

static void add(json_object *o, const char *k, json_object *v)
{
	json_object_object_add(o, k, v);
}

static void add_u(json_object *o, const char *k, uint64_t v) { add(o, k, json_object_new_uint64(v)); }
static void add_i(json_object *o, const char *k, int64_t v) { add(o, k, json_object_new_int64(v)); }
static void add_d(json_object *o, const char *k, double v) { add(o, k, jnum(v)); }
static void add_b(json_object *o, const char *k, bool v) { add(o, k, json_object_new_boolean(v)); }
static void add_s(json_object *o, const char *k, const char *v) { add(o, k, json_object_new_string(v)); }

static json_object *record(struct mv_policy *p, uint64_t now, const char *kind, const char *rule)
{
	json_object *o = json_object_new_object();
	if (!o)
		return NULL;
	add_i(o, "v", 1);
	add_u(o, "seq", p->seq);
	add_u(o, "t_ns", now);
	add_s(o, "kind", kind);
	add_s(o, "rule", rule);
	return o;
}

/* Write the record to the sinks and release it. */
static void emit(struct mv_policy *p, json_object *o)
{
	if (!o)
		return;
	const char *line = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
	                                                     JSON_C_TO_STRING_NOSLASHESCAPE);
	if (line) {
		p->seq++;
		if (p->cfg.log_file)
			fprintf(p->cfg.log_file, "%s\n", line);
		if (p->cfg.log)
			p->cfg.log(p->cfg.log_opaque, line);
	}
	json_object_put(o);
}

void mv__log_flush(struct mv_policy *p)
{
	if (p->cfg.log_file)
		fflush(p->cfg.log_file);
}

static json_object *host_inputs(const struct mv_policy_host_inputs *hi, const struct mv__host_eval *h)
{
	json_object *o = json_object_new_object();
	add_b(o, "psi_valid", hi->psi_valid);
	add_d(o, "psi_some", h->some);
	add_d(o, "psi_full", h->full);
	add_u(o, "mem_total", hi->mem_total_bytes);
	add_u(o, "mem_available", hi->mem_available_bytes);
	add_u(o, "cgroup_limit", hi->cgroup_limit_bytes);
	add_u(o, "cgroup_usage", hi->cgroup_usage_bytes);
	add_u(o, "avail", h->avail);
	add_i(o, "in_flight", h->in_flight);
	add_u(o, "cow_pred", h->cow_pred);
	add_u(o, "cow_debt", h->cow_debt);
	add_i(o, "pred_avail", h->pred_avail);
	add_u(o, "granted", h->granted);
	return o;
}

static json_object *goal(const struct mv__pcfg *c, const struct mv__host_eval *h)
{
	json_object *o = json_object_new_object();
	static const char *const kinds[] = { "floor", "ratio", "budget" };
	add_s(o, "kind", kinds[c->goal]);
	if (c->goal == MV__GOAL_FLOOR) {
		add_u(o, "floor", c->floor_bytes);
	} else {
		if (c->goal == MV__GOAL_RATIO)
			add_d(o, "ratio", c->ratio);
		add_u(o, "budget", h->budget);
	}
	add_u(o, "band", c->band_bytes);
	add_i(o, "deficit", h->deficit);
	return o;
}

static json_object *thresholds(const struct mv__pcfg *c)
{
	json_object *o = json_object_new_object();
	add_d(o, "some_high", c->some_high);
	add_d(o, "some_low", c->some_low);
	add_d(o, "full_high", c->full_high);
	add_d(o, "full_low", c->full_low);
	add_u(o, "psi_reclaim", c->psi_reclaim_bytes);
	return o;
}

void mv__log_host(struct mv_policy *p, const struct mv_policy_inputs *in,
                  const struct mv__host_eval *h)
{
	json_object *o = record(p, in->now_ns, "host", h->rule);
	if (!o)
		return;
	add_i(o, "need", h->need);
	add_i(o, "guard_delta", h->guard_delta);
	add_u(o, "unplaced", h->unplaced);
	add_b(o, "pressured", h->pressured);
	add_b(o, "was_pressured", p->pressured);
	add(o, "in", host_inputs(&in->host, h));
	add(o, "goal", goal(&p->conf, h));
	add(o, "psi", thresholds(&p->conf));
	emit(p, o);
}

static json_object *vm_inputs(const struct mv__work *w)
{
	static const char *const stats[] = { "none", "stale", "ok" };
	const struct mv_policy_vm_inputs *in = w->in;
	json_object *o = json_object_new_object();
	add_u(o, "ram", w->ram);
	add_b(o, "balloon", in->has_balloon);
	add_u(o, "actual", w->actual);
	add_b(o, "stalled", in->has_balloon && in->balloon.stalled);
	add_s(o, "stats", stats[w->stats]);
	add_u(o, "free", w->free);
	add_u(o, "available", w->avail);
	add_u(o, "caches", w->caches);
	add_u(o, "active", w->active);
	add_d(o, "f", w->f0);
	add_d(o, "rho", w->rho0);
	add_d(o, "rho_after", w->rho);
	add_u(o, "oom_kills_new", w->d_oom);
	add_u(o, "alloc_stalls_new", w->d_stalls);
	add_d(o, "majflt_rate", w->majflt_rate);
	add_d(o, "cow_rate", w->cow_rate);
	add_u(o, "cow_debt", in->scanner_valid ? in->scanner.cow_debt_bytes : 0);
	add_u(o, "merged_pages", in->scanner_valid ? in->scanner.pages_merged + in->scanner.pages_zero : 0);
	return o;
}

static json_object *vm_settings(const struct mv__work *w, double tau)
{
	json_object *o = json_object_new_object();
	add_d(o, "shares", w->vc.shares);
	add_u(o, "min", w->vc.min_bytes);
	add_u(o, "max", w->vc.max_bytes);
	add_u(o, "step", w->step_allow);
	add_d(o, "tau", tau);
	return o;
}

void mv__log_vm(struct mv_policy *p, const struct mv_policy_inputs *in,
                const struct mv__host_eval *h, const struct mv__work *w)
{
	json_object *o = record(p, in->now_ns, "vm", w->rule);
	if (!o)
		return;
	add_s(o, "vm", w->st->name);
	if (*w->cap)
		add_s(o, "cap", w->cap);
	json_object *t = json_object_new_object();
	add_u(t, "from", w->target);
	add_u(t, "to", w->new_target);
	add(o, "target", t);
	add(o, "in", vm_inputs(w));
	add(o, "settings", vm_settings(w, p->conf.tau));
	json_object *ho = json_object_new_object();
	add_s(ho, "rule", h->rule);
	add_i(ho, "need", h->need);
	add_b(ho, "pressured", h->pressured);
	add(o, "host", ho);
	if (in->now_ns < w->st->hold_until_ns) {
		json_object *hd = json_object_new_object();
		add_s(hd, "reason", w->st->hold_reason ? w->st->hold_reason : "");
		add_u(hd, "left_ns", w->st->hold_until_ns - in->now_ns);
		add(o, "hold", hd);
	}
	emit(p, o);
}

void mv__log_scanner(struct mv_policy *p, const struct mv_policy_inputs *in,
                     const struct mv__scan_eval *s)
{
	const struct mv__pcfg *c = &p->conf;
	json_object *o = record(p, in->now_ns, "scanner", s->rule);
	if (!o)
		return;
	if (*s->cap)
		add_s(o, "cap", s->cap);
	json_object *cpu = json_object_new_object();
	add_d(cpu, "from", s->from);
	add_d(cpu, "to", s->to);
	add(o, "cpu", cpu);
	json_object *i = json_object_new_object();
	add_b(i, "valid", in->host.scanner_valid);
	add_i(i, "saved_new", s->d_saved);
	add_i(i, "cow_breaks_new", s->d_cow);
	add_i(i, "full_scans_new", s->d_full);
	add_b(i, "want", s->want);
	add(o, "in", i);
	json_object *l = json_object_new_object();
	add_d(l, "min", c->scan_min);
	add_d(l, "max", c->scan_max);
	add_d(l, "default", c->scan_cpu);
	add(o, "limits", l);
	emit(p, o);
}

void mv__log_apply_error(struct mv_policy *p, uint64_t now_ns, const char *vm,
                         const char *what, int err)
{
	json_object *o = record(p, now_ns, "apply_error", what);
	if (!o)
		return;
	if (vm)
		add_s(o, "vm", vm);
	add_i(o, "err", err);
	add_s(o, "error", mv_strerror(err));
	emit(p, o);
}
