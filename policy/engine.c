/* engine.c - the policy engine's pure core: one control period, from inputs to decisions.
 *
 * Overview
 *
 * Each step reads a snapshot (host pressure and memory, every VM's balloon and guest
 * statistics, scanner counters, a timestamp) and decides three things: how much memory the
 * host wants back from its guests (or can give back), which guests give or receive it, and
 * the scanner's CPU share. Nothing is read from the system here and nothing is applied, so
 * the same state and inputs always give the same decisions (tests drive it with a fake
 * clock).
 *
 * 1. Host need (eval_host). The pressure signal is PSI "some" and "full": the larger of
 *    avg10 and the rate of the stall totals since the last step. Hysteresis: the host is
 *    "pressured" from when either signal reaches its high mark until both are back at or
 *    below their low marks. The goal is either a floor of free memory (MemAvailable, capped
 *    by the cgroup's headroom, plus inflation still under way, minus what COW breaks will
 *    take over the horizon) or an overcommit ratio (guest memory granted <= ratio x host
 *    memory). Pressured: reclaim max(goal deficit, psi_reclaim). Else a missed goal is
 *    reclaimed. Else, with PSI at or below its low marks, memory beyond goal + band goes
 *    back. Anything else holds.
 * 2. Guards, per VM, before any sharing out (guard_vm): an OOM kill or a rise in allocation
 *    stalls deflates at once (no rate limit) and starts a cool-down during which the VM is
 *    not reclaimed from; a stalled inflate takes the target back to what the guest reached
 *    and backs off (doubling per repeat); a VM below min_mib is deflated, one above max_mib
 *    inflated, both rate-limited. What guards move counts against the host need.
 * 3. Shares (alloc.c): the rest of the need moves in small quanta, reclaim from the VM with
 *    the lowest rho = S / (P (f + k (1 - f))), k = 1 / (1 - tau), P its memory, f the
 *    fraction of it in use (idle memory is taxed), give-back to the highest rho. Per VM
 *    per period a change is capped by max_step_mib (scaled by the time since its last
 *    step), by min/max, and an inflate may lead what the guest reached by one step only.
 * 4. Scanner (alloc.c): more CPU when memory is wanted and sharing still finds pages, the
 *    minimum when a full pass found nothing or COW breaks undo the merges.
 *
 * Each decision becomes a record (decision.c): the host line when the host wants memory
 * or its rule changes, a VM line when its target changes or its rule does, a scanner line
 * when the share or its rule changes (log_all logs every one, every period).
 */
#include "policy.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_DOWN(x) ((x) & ~(MV_POL_PAGE - 1))

static uint64_t u64_min(uint64_t a, uint64_t b) { return a < b ? a : b; }
static uint64_t u64_max(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* ESX's shares-per-page ratio with the idle memory tax, in shares per MiB. */
double mv__policy_rho(double shares, double granted_mib, double active_mib, double tau)
{
	if (granted_mib <= 0)
		return INFINITY;
	double f = active_mib >= granted_mib ? 1 : active_mib > 0 ? active_mib / granted_mib : 0;
	double k = 1 / (1 - tau);
	return shares / (granted_mib * (f + k * (1 - f)));
}

static struct mv__pvm *find_vm(struct mv_policy *p, const char *name)
{
	for (unsigned i = 0; name && i < p->nr_vms; i++)
		if (!strcmp(p->vms[i].name, name))
			return &p->vms[i];
	return NULL;
}

static int check_inputs(struct mv_policy *p, const struct mv_policy_inputs *in)
{
	if (in->nr_vms && !in->vms)
		return -EINVAL;
	if (p->host_seen && in->now_ns < p->host_ns)
		return -EINVAL;
	for (unsigned i = 0; i < in->nr_vms; i++) {
		if (!in->vms[i].name)
			return -EINVAL;
		if (!find_vm(p, in->vms[i].name))
			return -ENOENT;
		for (unsigned j = 0; j < i; j++)
			if (!strcmp(in->vms[i].name, in->vms[j].name))
				return -EINVAL;
	}
	return 0;
}

static bool stat_ok(const struct mv_balloon_info *b, enum mv_balloon_stat tag)
{
	return b->stats_valid >> tag & 1;
}

/* A counter's rise since it was last seen (a drop, e.g. a guest reboot, counts as 0). */
static uint64_t rise(uint64_t now, uint64_t before)
{
	return now > before ? now - before : 0;
}

/* The guest's statistics: active memory (guest memory less free memory and the idle part of
 * its caches), OOM kills, allocation stalls and major faults since the last look. */
static void prepare_stats(const struct mv__pcfg *c, struct mv__work *w, uint64_t now)
{
	const struct mv_balloon_info *b = &w->in->balloon;
	const struct mv__pvm *st = w->st;
	uint64_t granted = w->ram - u64_min(w->actual, w->ram);
	w->active = w->ram - w->target;
	w->stats = !w->in->has_balloon || !stat_ok(b, MV_BSTAT_MEMFREE) ? MV__STATS_NONE
	           : b->stats_age_ns > c->stats_max_age_ms * 1000000ull ? MV__STATS_STALE
	           : MV__STATS_OK;
	if (w->stats != MV__STATS_OK)
		return;
	w->free = b->stats[MV_BSTAT_MEMFREE];
	w->avail = stat_ok(b, MV_BSTAT_AVAIL) ? b->stats[MV_BSTAT_AVAIL] : 0;
	/* caches, or what MemAvailable counts beyond free memory when caches are not reported */
	w->caches = stat_ok(b, MV_BSTAT_CACHES) ? b->stats[MV_BSTAT_CACHES] : rise(w->avail, w->free);
	double idle = (double)w->free + c->cache_idle * (double)w->caches;
	w->active = (double)granted > idle ? (uint64_t)((double)granted - idle) : 0;
	if (!st->stats_seen)
		return;
	if (stat_ok(b, MV_BSTAT_OOM_KILLS))
		w->d_oom = rise(b->stats[MV_BSTAT_OOM_KILLS], st->oom_kills);
	if (stat_ok(b, MV_BSTAT_ALLOC_STALLS))
		w->d_stalls = rise(b->stats[MV_BSTAT_ALLOC_STALLS], st->alloc_stalls);
	if (stat_ok(b, MV_BSTAT_MAJFLT) && now > st->stats_ns)
		w->majflt_rate = (double)rise(b->stats[MV_BSTAT_MAJFLT], st->major_faults) * 1e9 /
		                 (double)(now - st->stats_ns);
}

static void prepare_vm(struct mv_policy *p, const struct mv_policy_vm_inputs *in,
                       struct mv__work *w, uint64_t now)
{
	const struct mv__pcfg *c = &p->conf;
	w->st = find_vm(p, in->name);
	w->in = in;
	w->vc = *mv__pcfg_vm(c, in->name);
	w->ram = PAGE_DOWN(in->ram_bytes);
	w->target = in->has_balloon ? PAGE_DOWN(u64_min(in->balloon.target_bytes, w->ram)) : 0;
	w->actual = in->has_balloon ? PAGE_DOWN(u64_min(in->balloon.actual_bytes, w->ram)) : 0;
	w->new_target = w->target;
	w->cap = "";
	prepare_stats(c, w, now);
	uint64_t dt = w->st->seen ? now - w->st->last_ns : c->period_ms * 1000000ull;
	double part = fmin(1.0, (double)dt / ((double)c->period_ms * 1e6));
	w->step_allow = PAGE_DOWN((uint64_t)((double)c->max_step_bytes * part));
	if (in->scanner_valid && w->st->cow_seen && dt)
		w->cow_rate = (double)rise(in->scanner.cow_breaks, w->st->cow_breaks) * 1e9 / (double)dt;
	mv__work_rho(c, w);
	w->f0 = w->f;
	w->rho0 = w->rho;
}

/* ---- 1. host need ---- */

static double pressure_signal(struct mv_policy *p, double avg10, uint64_t total,
                              uint64_t prev, uint64_t now)
{
	if (!p->host_seen || now <= p->host_ns || total < prev)
		return avg10;
	double rate = (double)(total - prev) * 1e3 * 100 / (double)(now - p->host_ns);
	return fmax(avg10, rate);
}

static void eval_pressure(struct mv_policy *p, const struct mv_policy_inputs *in,
                          struct mv__host_eval *h)
{
	const struct mv_policy_host_inputs *hi = &in->host;
	const struct mv__pcfg *c = &p->conf;
	if (!hi->psi_valid)
		return;
	h->some = pressure_signal(p, hi->psi_some_avg10, hi->psi_some_total_us, p->psi_some_total, in->now_ns);
	h->full = pressure_signal(p, hi->psi_full_avg10, hi->psi_full_total_us, p->psi_full_total, in->now_ns);
	if (p->pressured)
		h->pressured = !(h->some <= c->some_low && h->full <= c->full_low);
	else
		h->pressured = h->some >= c->some_high || h->full >= c->full_high;
}

static void eval_goal(const struct mv__pcfg *c, const struct mv_policy_host_inputs *hi,
                      const struct mv__work *w, unsigned n, struct mv__host_eval *h)
{
	h->total = hi->mem_total_bytes;
	h->avail = hi->mem_available_bytes;
	if (hi->cgroup_limit_bytes) {
		uint64_t room = rise(hi->cgroup_limit_bytes, hi->cgroup_usage_bytes);
		h->total = u64_min(h->total, hi->cgroup_limit_bytes);
		h->avail = u64_min(h->avail, room);
	}
	double cow = 0;
	for (unsigned i = 0; i < n; i++) {
		h->in_flight += (int64_t)w[i].target - (int64_t)w[i].actual;
		h->granted += w[i].ram - w[i].target;
		cow += w[i].cow_rate * (double)MV_POL_PAGE * (double)c->cow_horizon_ms / 1e3;
		h->cow_debt += w[i].in->scanner_valid ? w[i].in->scanner.cow_debt_bytes : 0;
	}
	h->cow_pred = (uint64_t)cow;
	h->pred_avail = (int64_t)h->avail + h->in_flight - (int64_t)h->cow_pred -
	                (int64_t)(c->cow_debt_reserve * (double)h->cow_debt);
	if (c->goal == MV__GOAL_FLOOR) {
		h->deficit = (int64_t)c->floor_bytes - h->pred_avail;
	} else {
		h->budget = c->goal == MV__GOAL_BUDGET ? c->budget_bytes
		                                       : (uint64_t)(c->ratio * (double)h->total);
		h->deficit = (int64_t)h->granted - (int64_t)h->budget;
	}
	h->surplus = -h->deficit - (int64_t)c->band_bytes;
}

static void eval_host(struct mv_policy *p, const struct mv_policy_inputs *in,
                      const struct mv__work *w, struct mv__host_eval *h)
{
	const struct mv__pcfg *c = &p->conf;
	memset(h, 0, sizeof(*h));
	eval_pressure(p, in, h);
	eval_goal(c, &in->host, w, in->nr_vms, h);
	bool calm = !in->host.psi_valid || (h->some <= c->some_low && h->full <= c->full_low);
	if (h->pressured) {
		h->need = h->deficit > (int64_t)c->psi_reclaim_bytes ? h->deficit : (int64_t)c->psi_reclaim_bytes;
		h->rule = "pressure_reclaim";
	} else if (h->deficit > 0) {
		h->need = h->deficit;
		h->rule = "goal_reclaim";
	} else if (h->surplus > 0 && calm) {
		h->need = -h->surplus;
		h->rule = "give_back";
	} else {
		h->rule = h->surplus > 0 ? "hold_psi_band" : "hold";
	}
}

/* ---- 2. guards ---- */

static void hold(struct mv__work *w, uint64_t until, const char *why)
{
	if (until <= w->st->hold_until_ns)
		return;
	w->st->hold_until_ns = until;
	w->st->hold_reason = why;
}

/* Deflate by `by` at once; never give the VM more than max_mib allows. */
static void deflate_now(struct mv__work *w, const char *rule, uint64_t by, uint64_t lo)
{
	uint64_t t = w->target > by ? w->target - by : 0;
	uint64_t floor_t = u64_min(lo, w->target);
	if (t < floor_t) {
		t = floor_t;
		w->cap = "max_mib";
	}
	w->new_target = t;
	w->rule = rule;
	w->guarded = true;
}

static void stall_backoff(const struct mv__pcfg *c, struct mv__work *w, uint64_t now)
{
	unsigned shift = w->st->stall_streak < MV_POL_BACKOFF_MAX ? w->st->stall_streak : MV_POL_BACKOFF_MAX;
	w->new_target = w->actual;
	w->rule = "stall_backoff";
	w->guarded = true;
	w->st->stall_streak++;
	w->st->stall_at = w->actual;
	hold(w, now + (c->stall_backoff_ms << shift) * 1000000ull, "stall");
}

/* Rate-limited moves back inside [lo, hi] (max_mib, min_mib). */
static bool bounds(struct mv__work *w, uint64_t lo, uint64_t hi)
{
	if (w->target > hi) {
		w->new_target = u64_max(hi, w->target > w->step_allow ? w->target - w->step_allow : 0);
		w->rule = "min_restore";
	} else if (w->target < lo) {
		uint64_t lead = u64_min(w->actual, w->target) + w->step_allow;
		w->new_target = u64_min(lo, u64_min(w->target + w->step_allow, lead));
		w->rule = "max_cap";
	} else {
		return false;
	}
	uint64_t want = w->target > hi ? hi : lo;
	if (w->new_target != want)
		w->cap = "rate_limit";
	w->guarded = true;
	return true;
}

static void guard_vm(const struct mv__pcfg *c, struct mv__work *w, uint64_t now)
{
	struct mv__pvm *st = w->st;
	if (!w->in->has_balloon || w->in->balloon.needs_reset) {
		w->rule = "no_balloon";
		return;
	}
	uint64_t lo = w->vc.max_bytes && w->ram > w->vc.max_bytes ? w->ram - w->vc.max_bytes : 0;
	uint64_t hi = w->ram > w->vc.min_bytes ? w->ram - w->vc.min_bytes : 0;
	if (!w->in->balloon.stalled && w->actual == w->target && w->actual > st->stall_at)
		st->stall_streak = 0; /* an inflate went past the point where the last one stalled */
	if (w->d_oom) {
		deflate_now(w, "oom_deflate", c->oom_deflate_bytes, lo);
		hold(w, now + c->cooldown_ms * 1000000ull, "oom");
	} else if (w->d_stalls >= c->alloc_stall_min) {
		deflate_now(w, "alloc_stall_deflate", c->alloc_stall_deflate_bytes, lo);
		hold(w, now + c->cooldown_ms * 1000000ull, "alloc_stall");
	} else if (w->in->balloon.stalled && w->target > w->actual) {
		stall_backoff(c, w, now);
	} else {
		bounds(w, lo, hi);
	}
	w->eligible = !w->guarded;
	if (now < st->hold_until_ns)
		w->no_reclaim = "cooldown";
	else if (c->majflt_max_rate > 0 && w->majflt_rate > c->majflt_max_rate)
		w->no_reclaim = "majflt_guard";
}

/* ---- 3. sharing out, then the step's bookkeeping ---- */

static void distribute(const struct mv__pcfg *c, struct mv__work *w, unsigned n,
                       struct mv__host_eval *h)
{
	for (unsigned i = 0; i < n; i++)
		h->guard_delta += (int64_t)w[i].new_target - (int64_t)w[i].target;
	if (h->need > 0 && h->need > h->guard_delta)
		h->unplaced = mv__alloc_shares(c, w, n, true, (uint64_t)(h->need - h->guard_delta));
	else if (h->need < 0 && -h->need + h->guard_delta > 0)
		h->unplaced = mv__alloc_shares(c, w, n, false, (uint64_t)(-h->need + h->guard_delta));
}

static void commit_vm(struct mv__work *w, uint64_t now)
{
	struct mv__pvm *st = w->st;
	const struct mv_policy_vm_inputs *in = w->in;
	st->seen = true;
	st->last_ns = now;
	st->last_rule = w->rule;
	if (w->stats == MV__STATS_OK) {
		st->stats_seen = true;
		st->stats_ns = now;
		st->oom_kills = in->balloon.stats[MV_BSTAT_OOM_KILLS];
		st->alloc_stalls = in->balloon.stats[MV_BSTAT_ALLOC_STALLS];
		st->major_faults = in->balloon.stats[MV_BSTAT_MAJFLT];
	}
	if (in->scanner_valid) {
		st->cow_seen = true;
		st->cow_breaks = in->scanner.cow_breaks;
	}
}

static void finish_vm(struct mv_policy *p, const struct mv_policy_inputs *in,
                      const struct mv__host_eval *h, struct mv__work *w)
{
	if (!w->rule)
		w->rule = h->need > 0 && w->no_reclaim ? w->no_reclaim : "hold";
	bool changed = w->new_target != w->target;
	if (changed || !mv__same_rule(w->rule, w->st->last_rule) || p->conf.log_all)
		mv__log_vm(p, in, h, w);
	commit_vm(w, in->now_ns);
}

static void fill_vm_output(const struct mv__work *w, struct mv_policy_vm_outputs *o)
{
	memset(o, 0, sizeof(*o));
	snprintf(o->name, sizeof(o->name), "%s", w->st->name);
	o->target_bytes = w->new_target;
	o->prev_target_bytes = w->target;
	o->changed = w->new_target != w->target;
	o->rule = w->rule;
	o->cap = w->cap;
	o->rho = w->rho;
	o->active_fraction = w->f;
}

static void fill_output(const struct mv_policy_inputs *in, const struct mv__host_eval *h,
                        const struct mv__work *w, struct mv_policy_outputs *out)
{
	out->nr_vms = in->nr_vms;
	for (unsigned i = 0; out->vms && i < in->nr_vms && i < out->cap_vms; i++)
		fill_vm_output(&w[i], &out->vms[i]);
	out->host_rule = h->rule;
	out->pressured = h->pressured;
	out->need_bytes = h->need;
}

static void commit_host(struct mv_policy *p, const struct mv_policy_inputs *in,
                        const struct mv__host_eval *h)
{
	p->host_seen = true;
	p->host_ns = in->now_ns;
	p->pressured = h->pressured;
	p->last_host_rule = h->rule;
	if (in->host.psi_valid) {
		p->psi_some_total = in->host.psi_some_total_us;
		p->psi_full_total = in->host.psi_full_total_us;
	}
}

int mv__policy_step_locked(struct mv_policy *p, const struct mv_policy_inputs *in,
                           struct mv_policy_outputs *out)
{
	int rc = check_inputs(p, in);
	if (rc)
		return rc;
	unsigned n = in->nr_vms;
	struct mv__work *w = calloc(n ? n : 1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	struct mv_policy_outputs local = { 0 };
	out = out ? out : &local;
	uint64_t seq0 = p->seq;
	struct mv__host_eval h;
	for (unsigned i = 0; i < n; i++)
		prepare_vm(p, &in->vms[i], &w[i], in->now_ns);
	eval_host(p, in, w, &h);
	for (unsigned i = 0; i < n; i++)
		guard_vm(&p->conf, &w[i], in->now_ns);
	distribute(&p->conf, w, n, &h);
	if (h.need || !mv__same_rule(h.rule, p->last_host_rule) || p->conf.log_all)
		mv__log_host(p, in, &h);
	for (unsigned i = 0; i < n; i++)
		finish_vm(p, in, &h, &w[i]);
	fill_output(in, &h, w, out);
	mv__steer_scanner(p, in, &h, out);
	commit_host(p, in, &h);
	out->decisions = (unsigned)(p->seq - seq0);
	mv__log_flush(p);
	free(w);
	return 0;
}
