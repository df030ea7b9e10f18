/* alloc.c - sharing out: memory by shares with the idle memory tax, CPU to the scanner.
 *
 * Memory (Waldspurger, OSDI'02) moves in quanta. Reclaiming, each quantum comes from the VM with the lowest rho
 * (shares per MiB, idle memory counted k = 1/(1-tau) times); giving back, each goes to the
 * VM with the highest. A VM's rho is recomputed after each quantum: its active memory stays,
 * so reclaiming raises its active fraction and its rho, and the next quantum may come from
 * another VM. Ties go to the VM whose name sorts first, so the outcome depends on nothing
 * but the inputs.
 *
 * Only the hard limits (min_mib, max_mib, an empty balloon) pass a quantum on to the next
 * VM in line. The rate limits (max_step_mib, the lead over what the guest reached) only
 * slow a VM down: what they hold back this period is left unplaced, and the next period
 * places it again from where the balloons are. So the VMs end where their shares put them,
 * however fast each may move.
 *
 * The scanner's share moves multiplicatively (x2, /2) between scanner_min_cpu and
 * scanner_max_cpu and rests at scanner_cpu when the host is calm. "Saved" is pages_sharing +
 * pages_zero of the host: a COW break lowers it, so saved not rising while COW breaks happen
 * is churn. At the minimum a pass is slow, so under pressure the share is raised to
 * scanner_cpu again once every scanner_probe_ms to look for new duplicates.
 */
#include "policy.h"

#include <math.h>
#include <string.h>

#define QUANTA_MAX 1024 /* a step moves at most this many quanta (larger quanta beyond) */

void mv__work_rho(const struct mv__pcfg *c, struct mv__work *w)
{
	double granted = (double)(w->ram - w->new_target) / (double)MV_MIB;
	double active = fmin((double)w->active / (double)MV_MIB, granted);
	w->f = granted > 0 ? active / granted : 1;
	w->rho = mv__policy_rho(w->vc.shares, granted, active, c->tau);
}

/* Bytes the VM may move in the direction asked within its hard limits (room) and this
 * period (step_room), and what bounds each. */
static void room_for(struct mv__work *w, bool reclaim)
{
	uint64_t t = w->target;
	if (reclaim) {
		uint64_t hi = w->ram > w->vc.min_bytes ? w->ram - w->vc.min_bytes : 0;
		uint64_t by_step = t + w->step_allow;
		uint64_t lead = (w->actual < t ? w->actual : t) + w->step_allow;
		uint64_t soft = by_step < lead ? by_step : lead;
		w->room_cap = "min_mib";
		w->step_cap = lead < by_step ? "lead" : "rate_limit";
		w->room = hi > t ? hi - t : 0;
		w->step_room = soft > t ? soft - t : 0;
		return;
	}
	uint64_t lo = w->vc.max_bytes && w->ram > w->vc.max_bytes ? w->ram - w->vc.max_bytes : 0;
	uint64_t by_step = t > w->step_allow ? t - w->step_allow : 0;
	w->room_cap = t && lo ? "max_mib" : "balloon_empty";
	w->step_cap = "rate_limit";
	w->room = t > lo ? t - lo : 0;
	w->step_room = t > by_step ? t - by_step : 0;
}

/* What the rate limits hold back of each VM's part: left unplaced, for the next period. */
static uint64_t hold_back(const struct mv__pcfg *c, struct mv__work *w, unsigned n, bool reclaim)
{
	uint64_t held = 0;
	for (unsigned i = 0; i < n; i++) {
		struct mv__work *v = &w[i];
		uint64_t moved = reclaim ? v->new_target - v->target : v->target - v->new_target;
		if (!v->eligible || moved <= v->step_room)
			continue;
		held += moved - v->step_room;
		v->new_target = reclaim ? v->target + v->step_room : v->target - v->step_room;
		v->cap = v->step_cap;
		if (v->new_target == v->target)
			v->rule = NULL; /* it did not move: a hold, capped */
		mv__work_rho(c, v);
	}
	return held;
}

static bool better(const struct mv__work *a, const struct mv__work *b, bool reclaim)
{
	if (a->rho != b->rho)
		return reclaim ? a->rho < b->rho : a->rho > b->rho;
	return strcmp(a->st->name, b->st->name) < 0;
}

static struct mv__work *pick(struct mv__work *w, unsigned n, bool reclaim)
{
	struct mv__work *best = NULL;
	for (unsigned i = 0; i < n; i++) {
		if (!w[i].eligible || !w[i].room || (reclaim && w[i].no_reclaim))
			continue;
		if (!best || better(&w[i], best, reclaim))
			best = &w[i];
	}
	return best;
}

static uint64_t quantum_for(uint64_t amount)
{
	uint64_t q = amount / QUANTA_MAX;
	q = (q + MV_POL_PAGE - 1) & ~(MV_POL_PAGE - 1);
	return q > MV_POL_QUANTUM ? q : MV_POL_QUANTUM;
}

/* VMs that could not help at all because of a limit say which. */
static void mark_capped(struct mv__work *w, unsigned n, bool reclaim)
{
	for (unsigned i = 0; i < n; i++)
		if (w[i].eligible && !w[i].room && !(reclaim && w[i].no_reclaim) && !*w[i].cap)
			w[i].cap = w[i].room_cap;
}

uint64_t mv__alloc_shares(const struct mv__pcfg *c, struct mv__work *w, unsigned n,
                          bool reclaim, uint64_t amount)
{
	amount = reclaim ? (amount + MV_POL_PAGE - 1) & ~(MV_POL_PAGE - 1) : amount & ~(MV_POL_PAGE - 1);
	uint64_t q0 = quantum_for(amount);
	for (unsigned i = 0; i < n; i++) {
		w[i].room = 0;
		if (w[i].eligible)
			room_for(&w[i], reclaim);
	}
	while (amount) {
		struct mv__work *v = pick(w, n, reclaim);
		if (!v)
			break;
		uint64_t q = q0 < v->room ? q0 : v->room;
		q = q < amount ? q : amount;
		v->new_target = reclaim ? v->new_target + q : v->new_target - q;
		v->room -= q;
		amount -= q;
		v->rule = reclaim ? "share_reclaim" : "share_give";
		if (!v->room && amount)
			v->cap = v->room_cap;
		mv__work_rho(c, v);
	}
	if (amount)
		mark_capped(w, n, reclaim);
	return amount + hold_back(c, w, n, reclaim);
}

/* ---- the scanner's CPU share ---- */

static void choose(const struct mv__pcfg *c, struct mv_policy *p, uint64_t now,
                   struct mv__scan_eval *s)
{
	double cur = s->from;
	if (s->d_cow > 0 && s->d_saved <= 0) {
		s->rule = "scanner_churn", s->to = cur / 2;
	} else if (s->want && s->d_saved > 0) {
		s->rule = "scanner_boost", s->to = cur * 2;
	} else if (s->d_saved <= 0 && s->d_full > 0) {
		s->rule = "scanner_idle", s->to = c->scan_min;
		p->scan_idle_ns = now;
	} else if (s->want && cur <= c->scan_min && now - p->scan_idle_ns >= c->scan_probe_ms * 1000000ull) {
		s->rule = "scanner_probe", s->to = c->scan_cpu;
	} else if (!s->want && s->d_saved > 0 && cur < c->scan_cpu) {
		s->rule = "scanner_resume", s->to = c->scan_cpu;
	} else if (!s->want && cur > c->scan_cpu) {
		s->rule = "scanner_relax", s->to = fmax(c->scan_cpu, cur / 2);
	} else {
		s->rule = "scanner_hold", s->to = cur;
	}
}

static void clamp(const struct mv__pcfg *c, struct mv__scan_eval *s)
{
	if (s->to > c->scan_max)
		s->to = c->scan_max, s->cap = "scanner_max_cpu";
	else if (s->to < c->scan_min)
		s->to = c->scan_min, s->cap = "scanner_min_cpu";
}

static void baseline(struct mv_policy *p, const struct mv_scan_stats *st)
{
	p->scan_seen = true;
	p->scan_saved = st->pages_sharing + st->pages_zero;
	p->scan_cow = st->cow_breaks;
	p->scan_full = st->full_scans;
}

void mv__steer_scanner(struct mv_policy *p, const struct mv_policy_inputs *in,
                       const struct mv__host_eval *h, struct mv_policy_outputs *out)
{
	const struct mv__pcfg *c = &p->conf;
	const struct mv_scan_stats *st = &in->host.scanner;
	struct mv__scan_eval s = { .from = p->scan_share, .cap = "",
	                           .want = h->pressured || h->need > 0 };
	if (!in->host.scanner_valid) {
		s.rule = "scanner_none", s.to = s.from;
	} else if (!p->scan_seen) {
		s.rule = "scanner_init", s.to = c->scan_cpu;
	} else {
		s.d_saved = (int64_t)(st->pages_sharing + st->pages_zero) - (int64_t)p->scan_saved;
		s.d_cow = (int64_t)st->cow_breaks - (int64_t)p->scan_cow;
		s.d_full = (int64_t)st->full_scans - (int64_t)p->scan_full;
		choose(c, p, in->now_ns, &s);
	}
	clamp(c, &s);
	bool changed = fabs(s.to - s.from) > 1e-9 || (in->host.scanner_valid && !p->scan_seen);
	if (in->host.scanner_valid)
		baseline(p, st);
	out->scanner_cpu_share = s.to;
	out->scanner_changed = changed;
	out->scanner_rule = s.rule;
	p->scan_share = s.to;
	bool transition = !mv__same_rule(s.rule, p->last_scan_rule) &&
	                  !mv__same_rule(s.rule, "scanner_hold");
	if (changed || transition || c->log_all) {
		mv__log_scanner(p, in, &s);
		p->last_scan_rule = s.rule;
	}
}
