/* test_policy.c - the policy engine on fake inputs and a fake clock: each rule, the share and
 * idle tax arithmetic, limits, hysteresis, configuration errors and reloads, the decision
 * records and their rendering, input parsers, and one tick against a real balloon. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <memvirt/balloon.h>
#include <memvirt/memvirt.h>
#include <memvirt/policy.h>
#include "policy.h"
#include "testutil.h"

#define MiB    (1ull << 20)
#define SEC    1000000000ull
#define NVM    4
#define STATS  (1u << MV_BSTAT_MEMFREE | 1u << MV_BSTAT_CACHES | 1u << MV_BSTAT_OOM_KILLS | \
                1u << MV_BSTAT_ALLOC_STALLS | 1u << MV_BSTAT_MAJFLT)

/* An engine, fake inputs fed back from its outputs (the guest complies at once unless
 * lag is set), and the decision records it wrote. */
struct fx {
	struct mv_policy *p;
	struct mv_policy_inputs in;
	struct mv_policy_vm_inputs vm[NVM];
	char names[NVM][16];
	struct mv_policy_vm_outputs o[NVM];
	struct mv_policy_outputs out;
	bool lag[NVM];
	char *lines[256];
	unsigned nlines;
};

static void on_line(void *opaque, const char *line)
{
	struct fx *f = opaque;
	if (f->nlines < 256)
		f->lines[f->nlines++] = strdup(line);
}

static struct fx *fx_new(const char *ini)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct mv_policy_config cfg;
	mv_policy_config_init(&cfg);
	cfg.log = on_line;
	cfg.log_opaque = f;
	assert_int_equal(mv_policy_new(&cfg, &f->p), 0);
	char err[256] = "";
	int rc = mv_policy_load_string(f->p, ini, err, sizeof(err));
	if (rc)
		fprintf(stderr, "policy: %s\n", err);
	assert_int_equal(rc, 0);
	f->in.vms = f->vm;
	f->in.host = (struct mv_policy_host_inputs){ .psi_valid = true, .mem_total_bytes = 65536 * MiB,
	                                            .mem_available_bytes = 32768 * MiB };
	f->out.vms = f->o;
	f->out.cap_vms = NVM;
	return f;
}

static void forget_lines(struct fx *f)
{
	for (unsigned i = 0; i < f->nlines; i++)
		free(f->lines[i]);
	f->nlines = 0;
}

static void fx_free(struct fx *f)
{
	forget_lines(f);
	mv_policy_free(f->p);
	free(f);
}

/* A VM with a balloon, empty, fully active unless stats are set. */
static unsigned add_vm(struct fx *f, const char *name, uint64_t ram_mib)
{
	unsigned i = f->in.nr_vms++;
	snprintf(f->names[i], sizeof(f->names[i]), "%s", name);
	assert_int_equal(mv_policy_attach(f->p, f->names[i], NULL, NULL), 0);
	f->vm[i] = (struct mv_policy_vm_inputs){ .name = f->names[i], .ram_bytes = ram_mib * MiB,
	                                        .has_balloon = true };
	return i;
}

static void set_stats(struct fx *f, unsigned i, uint64_t free_mib, uint64_t caches_mib)
{
	f->vm[i].balloon.stats_valid = STATS;
	f->vm[i].balloon.stats[MV_BSTAT_MEMFREE] = free_mib * MiB;
	f->vm[i].balloon.stats[MV_BSTAT_CACHES] = caches_mib * MiB;
}

static void psi(struct fx *f, double some, double full)
{
	f->in.host.psi_some_avg10 = some;
	f->in.host.psi_full_avg10 = full;
}

/* One period (1 s later), outputs fed back as the next inputs. */
static void step_dt(struct fx *f, uint64_t dt)
{
	f->in.now_ns += dt;
	forget_lines(f);
	assert_int_equal(mv_policy_step(f->p, &f->in, &f->out), 0);
	for (unsigned i = 0; i < f->in.nr_vms; i++) {
		f->vm[i].balloon.target_bytes = f->o[i].target_bytes;
		if (!f->lag[i])
			f->vm[i].balloon.actual_bytes = f->o[i].target_bytes;
	}
}

static void step(struct fx *f) { step_dt(f, SEC); }

static uint64_t target_mib(struct fx *f, unsigned i) { return f->o[i].target_bytes / MiB; }

/* The last record of kind (and vm) written by the last step, parsed; NULL if none. */
static json_object *record(struct fx *f, const char *kind, const char *vm)
{
	for (unsigned i = f->nlines; i-- > 0;) {
		json_object *o = json_tokener_parse(f->lines[i]), *k, *v;
		assert_non_null(o);
		json_object_object_get_ex(o, "kind", &k);
		bool vm_ok = !vm || (json_object_object_get_ex(o, "vm", &v) &&
		                     !strcmp(json_object_get_string(v), vm));
		if (!strcmp(json_object_get_string(k), kind) && vm_ok)
			return o;
		json_object_put(o);
	}
	return NULL;
}

static const char *jstr(json_object *o, const char *path)
{
	o = tu_json_at(o, path);
	return o ? json_object_get_string(o) : "(none)";
}

/* ---- allocation arithmetic ---- */

static void rho_arithmetic(void **state)
{
	/* tau = 0: plain shares per MiB; tau = 0.75: idle MiB cost k = 4 */
	assert_true(fabs(mv__policy_rho(1000, 1000, 250, 0) - 1.0) < 1e-12);
	assert_true(fabs(mv__policy_rho(1000, 1000, 250, 0.75) - 1000.0 / 3250) < 1e-12);
	assert_true(fabs(mv__policy_rho(1000, 1000, 1000, 0.75) - 1.0) < 1e-12);
	assert_true(fabs(mv__policy_rho(2000, 1000, 0, 0.5) - 1.0) < 1e-12);
	assert_true(isinf(mv__policy_rho(1000, 0, 0, 0.75)));
}

static const char *pressure_ini =
	"[host]\npsi_reclaim_mib = 1024\nmax_step_mib = 4096\n"
	"[vm a]\nmin_mib = 0\n[vm b]\nmin_mib = 0\n";

/* Under contention shares decide: reclaiming 4 GiB from two fully active 4 GiB VMs with
 * 1000 and 3000 shares leaves them 1 GiB and 3 GiB (equal shares per MiB). */
static void shares_decide(void **state)
{
	struct fx *f = fx_new("[host]\npsi_reclaim_mib = 4096\nmax_step_mib = 8192\n"
	                      "[vm a]\nmin_mib = 0\nshares = 1000\n[vm b]\nmin_mib = 0\nshares = 3000\n");
	add_vm(f, "a", 4096);
	add_vm(f, "b", 4096);
	psi(f, 20, 0);
	step(f);
	assert_string_equal(f->out.host_rule, "pressure_reclaim");
	assert_true(f->out.pressured);
	assert_int_equal(f->out.need_bytes, 4096 * MiB);
	assert_true(labs((long)target_mib(f, 0) - 3072) <= 4);
	assert_true(labs((long)target_mib(f, 1) - 1024) <= 4);
	assert_int_equal(target_mib(f, 0) + target_mib(f, 1), 4096);
	assert_string_equal(f->o[0].rule, "share_reclaim");
	fx_free(f);
}

/* Idle memory is taxed: with tau 0.75 all of 1 GiB comes from the VM holding 90% of its
 * memory idle; with tau 0 (shares alone) the two give alike. */
static void idle_tax(void **state)
{
	for (int tax = 1; tax >= 0; tax--) {
		char ini[256];
		snprintf(ini, sizeof(ini), "[host]\ntau = %s\ncache_idle = 0.5\n%s", tax ? "0.75" : "0",
		         pressure_ini + 7);
		struct fx *f = fx_new(ini);
		add_vm(f, "a", 4096);
		add_vm(f, "b", 4096);
		set_stats(f, 0, 3000, 1372);  /* idle: 3000 + 686 of 4096 MiB */
		set_stats(f, 1, 200, 420);    /* idle: 200 + 210 */
		psi(f, 20, 0);
		step(f);
		if (tax) {
			assert_int_equal(target_mib(f, 0), 1024);
			assert_int_equal(target_mib(f, 1), 0);
			assert_true(f->o[0].active_fraction > 0.1 && f->o[0].active_fraction < 0.14);
			assert_true(f->o[1].rho > f->o[0].rho);
		} else {
			assert_int_equal(target_mib(f, 0), 512);
			assert_int_equal(target_mib(f, 1), 512);
		}
		fx_free(f);
	}
}

/* min_mib bounds reclaim (cap logged); max_mib inflates down to it; raising min_mib by a
 * reload deflates back, both rate-limited. */
static void min_and_max(void **state)
{
	struct fx *f = fx_new("[host]\npsi_reclaim_mib = 4096\nmax_step_mib = 4096\n"
	                      "[vm a]\nmin_mib = 3072\n[vm b]\nmin_mib = 0\nmax_mib = 3584\n");
	add_vm(f, "a", 4096);
	add_vm(f, "b", 4096);
	psi(f, 20, 0);
	step(f);
	assert_int_equal(target_mib(f, 0), 1024);      /* a keeps its 3 GiB */
	assert_string_equal(f->o[0].cap, "min_mib");
	assert_string_equal(f->o[1].rule, "max_cap");  /* b inflates down to its 3.5 GiB */
	assert_int_equal(target_mib(f, 1), 512);
	assert_int_equal(f->out.need_bytes, 4096 * MiB);
	psi(f, 0, 0);
	f->in.host.mem_available_bytes = 60000 * MiB;  /* plenty: give back */
	step(f);
	assert_string_equal(f->out.host_rule, "give_back");
	assert_int_equal(target_mib(f, 0), 0);
	assert_int_equal(target_mib(f, 1), 512);       /* never above max_mib */
	json_object *o = record(f, "vm", "b");
	assert_non_null(o);
	assert_string_equal(jstr(o, "rule"), "hold");
	assert_string_equal(jstr(o, "cap"), "max_mib");
	json_object_put(o);
	/* reclaim a again to 1 GiB, then raise its min: min_restore at the step rate */
	psi(f, 20, 0);
	f->in.host.mem_available_bytes = 32768 * MiB;
	step(f);
	assert_int_equal(target_mib(f, 0), 1024);
	assert_int_equal(mv_policy_load_string(f->p, "[host]\nmax_step_mib = 256\n[vm a]\n"
	                                       "min_mib = 3584\n[vm b]\nmax_mib = 3584\nmin_mib = 0\n",
	                                       NULL, 0), 0);
	step(f);
	assert_string_equal(f->o[0].rule, "min_restore");
	assert_int_equal(target_mib(f, 0), 768);
	assert_string_equal(f->o[0].cap, "rate_limit");
	step(f);
	assert_int_equal(target_mib(f, 0), 512);
	assert_string_equal(f->o[0].cap, "");
	fx_free(f);
}

/* ---- control ---- */

/* Pressure starts at the high mark and lasts until both signals are at the low marks. */
static void hysteresis(void **state)
{
	struct fx *f = fx_new("[host]\npsi_some_high = 10\npsi_some_low = 2\npsi_full_high = 5\n"
	                      "psi_full_low = 1\n[vm a]\nmin_mib = 0\n");
	add_vm(f, "a", 8192);
	f->in.host.mem_available_bytes = 60000 * MiB;
	double some[] = { 5, 10, 5, 3, 1.5, 1, 5, 0, 0 }, full[] = { 0, 0, 0, 0, 1.5, 0.5, 0, 6, 0.5 };
	bool pressured[] = { 0, 1, 1, 1, 1, 0, 0, 1, 0 };
	const char *rule[] = { "hold_psi_band", "pressure_reclaim", "pressure_reclaim",
	                       "pressure_reclaim", "pressure_reclaim", "give_back", "hold_psi_band",
	                       "pressure_reclaim", "give_back" };
	for (unsigned i = 0; i < 9; i++) {
		psi(f, some[i], full[i]);
		step(f);
		assert_int_equal(f->out.pressured, pressured[i]);
		assert_string_equal(f->out.host_rule, rule[i]);
	}
	/* the stall totals count too: 300 ms of "some" stall in a second is 30% */
	f->in.host.psi_some_total_us += 300000;
	step(f);
	assert_string_equal(f->out.host_rule, "pressure_reclaim");
	fx_free(f);
}

/* A VM moves at most max_step_mib per period, less when steps come sooner, and an inflate
 * leads what the guest reached by one step at most. */
static void rate_limit(void **state)
{
	struct fx *f = fx_new("[host]\nmax_step_mib = 64\npsi_reclaim_mib = 8192\n[vm a]\nmin_mib = 0\n");
	add_vm(f, "a", 8192);
	psi(f, 50, 0);
	step(f);
	assert_int_equal(target_mib(f, 0), 64);
	assert_string_equal(f->o[0].cap, "rate_limit");
	step_dt(f, SEC / 2);
	assert_int_equal(target_mib(f, 0), 96);
	f->lag[0] = true; /* the guest stays at 96 */
	step(f);
	step(f);
	assert_int_equal(target_mib(f, 0), 160);
	assert_string_equal(f->o[0].cap, "lead");
	fx_free(f);
}

/* A stalled inflate: the target goes back to what the guest reached, no reclaim during the
 * backoff, which doubles when the balloon stalls again before completing an inflate. */
static void stall_backoff(void **state)
{
	struct fx *f = fx_new("[host]\nstall_backoff_ms = 5000\n[vm a]\nmin_mib = 0\n");
	add_vm(f, "a", 8192);
	psi(f, 50, 0);
	f->lag[0] = true;
	step(f);
	f->vm[0].balloon.actual_bytes = 40 * MiB;
	f->vm[0].balloon.stalled = true;
	step(f);
	assert_string_equal(f->o[0].rule, "stall_backoff");
	assert_int_equal(target_mib(f, 0), 40);
	f->vm[0].balloon.stalled = false;
	for (int i = 0; i < 4; i++) {
		step(f);
		assert_string_equal(f->o[0].rule, "cooldown");
		assert_int_equal(target_mib(f, 0), 40);
	}
	step(f);                                /* 5 s later: reclaim again */
	assert_string_equal(f->o[0].rule, "share_reclaim");
	f->vm[0].balloon.stalled = true;        /* stalls again at 40 MiB */
	step(f);
	assert_string_equal(f->o[0].rule, "stall_backoff");
	f->vm[0].balloon.stalled = false;
	for (int i = 0; i < 9; i++) {
		step(f);
		assert_string_equal(f->o[0].rule, "cooldown"); /* 10 s this time */
	}
	step(f);
	assert_string_equal(f->o[0].rule, "share_reclaim");
	fx_free(f);
}

/* A guest OOM kill deflates at once (past the rate limit) and stops reclaim for cooldown_ms;
 * so does a rise in allocation stalls. */
static void oom_and_alloc_stall_deflate(void **state)
{
	struct fx *f = fx_new("[host]\nmax_step_mib = 512\npsi_reclaim_mib = 512\noom_deflate_mib = 1024\n"
	                      "alloc_stall_deflate_mib = 256\nalloc_stall_min = 3\ncooldown_ms = 3000\n"
	                      "[vm a]\nmin_mib = 0\n");
	add_vm(f, "a", 8192);
	set_stats(f, 0, 100, 0);
	psi(f, 50, 0);
	for (int i = 0; i < 4; i++)
		step(f);
	assert_int_equal(target_mib(f, 0), 2048);
	f->vm[0].balloon.stats[MV_BSTAT_OOM_KILLS] = 1;
	step(f);
	assert_string_equal(f->o[0].rule, "oom_deflate");
	assert_int_equal(target_mib(f, 0), 1024);
	step(f);
	assert_string_equal(f->o[0].rule, "cooldown");
	step(f);
	step(f);
	assert_string_equal(f->o[0].rule, "share_reclaim");
	assert_int_equal(target_mib(f, 0), 1536);
	f->vm[0].balloon.stats[MV_BSTAT_ALLOC_STALLS] = 2; /* below alloc_stall_min */
	step(f);
	assert_string_equal(f->o[0].rule, "share_reclaim");
	f->vm[0].balloon.stats[MV_BSTAT_ALLOC_STALLS] = 5;
	step(f);
	assert_string_equal(f->o[0].rule, "alloc_stall_deflate");
	assert_int_equal(target_mib(f, 0), 1792);
	step(f);
	assert_string_equal(f->o[0].rule, "cooldown");
	fx_free(f);
}

/* A VM faulting hard is left alone; a VM without a balloon is never reclaimed from. */
static void majflt_guard_and_no_balloon(void **state)
{
	struct fx *f = fx_new("[host]\nmajflt_max_rate = 100\n[vm a]\nmin_mib = 0\n[vm b]\nmin_mib = 0\n");
	add_vm(f, "a", 4096);
	add_vm(f, "b", 4096);
	f->vm[1].has_balloon = false;
	set_stats(f, 0, 3000, 0);
	step(f);
	psi(f, 50, 0);
	f->vm[0].balloon.stats[MV_BSTAT_MAJFLT] = 500;
	step(f);
	assert_string_equal(f->o[0].rule, "majflt_guard");
	assert_string_equal(f->o[1].rule, "no_balloon");
	assert_int_equal(target_mib(f, 0) + target_mib(f, 1), 0);
	step(f);
	assert_string_equal(f->o[0].rule, "share_reclaim");
	fx_free(f);
}

/* What the guest says: caches from MemAvailable when not reported, stale statistics count
 * as fully active, a device needing a reset is left alone. */
static void guest_figures(void **state)
{
	struct fx *f = fx_new("[host]\nstats_max_age_ms = 5000\nperiod_ms = 500\n");
	assert_int_equal(mv_policy_period_ms(f->p), 500);
	add_vm(f, "a", 4096);
	set_stats(f, 0, 1024, 0);
	f->vm[0].balloon.stats_valid &= ~(1u << MV_BSTAT_CACHES);
	f->vm[0].balloon.stats_valid |= 1u << MV_BSTAT_AVAIL;
	f->vm[0].balloon.stats[MV_BSTAT_AVAIL] = 2048 * MiB;       /* 1 GiB of caches */
	step(f);
	assert_true(fabs(f->o[0].active_fraction - 2560.0 / 4096) < 1e-9);
	f->vm[0].balloon.stats_age_ns = 6 * SEC;
	step(f);
	assert_true(f->o[0].active_fraction == 1);
	json_object *o = record(f, "vm", "a");
	assert_null(o);                                            /* nothing changed */
	f->vm[0].balloon.needs_reset = true;
	psi(f, 50, 0);
	step(f);
	assert_string_equal(f->o[0].rule, "no_balloon");
	assert_non_null(o = record(f, "vm", "a"));
	assert_string_equal(jstr(o, "in.stats"), "stale");
	json_object_put(o);
	fx_free(f);
}

/* Goals: a free-memory floor (cgroup headroom and COW breaks projected count) and an
 * overcommit ratio, with the band as hysteresis for giving back. */
static void goals(void **state)
{
	struct fx *f = fx_new("[host]\nfloor_mib = 2048\nband_mib = 512\nmax_step_mib = 4096\n"
	                      "cow_horizon_ms = 10000\n[vm a]\nmin_mib = 0\n");
	unsigned a = add_vm(f, "a", 8192);
	f->in.host.mem_available_bytes = 1792 * MiB;
	step(f);
	assert_string_equal(f->out.host_rule, "goal_reclaim");
	assert_int_equal(target_mib(f, a), 256);
	f->in.host.mem_available_bytes = 2048 * MiB + 512 * MiB;
	step(f);
	assert_string_equal(f->out.host_rule, "hold");             /* inside the band */
	f->in.host.cgroup_limit_bytes = 4096 * MiB;
	f->in.host.cgroup_usage_bytes = 3072 * MiB;                /* 1 GiB headroom */
	step(f);
	assert_string_equal(f->out.host_rule, "goal_reclaim");
	assert_int_equal(target_mib(f, a), 1280);
	f->in.host.cgroup_limit_bytes = 0;
	f->vm[a].scanner_valid = true;
	step(f);                                                   /* baseline of COW breaks */
	f->vm[a].scanner.cow_breaks = 25600;                       /* 100 MiB/s for 10 s */
	step(f);
	assert_string_equal(f->out.host_rule, "goal_reclaim");
	assert_int_equal(f->out.need_bytes, 488 * MiB);            /* 2048 - (2560 - 1000) */
	assert_int_equal(target_mib(f, a), 1768);
	assert_int_equal(mv_policy_load_string(f->p, "[host]\ngoal = ratio\nratio = 0.25\n"
	                                       "band_mib = 0\nmax_step_mib = 8192\n[vm a]\nmin_mib = 0\n",
	                                       NULL, 0), 0);
	f->vm[a].scanner.cow_breaks = 0;
	f->vm[a].scanner_valid = false;
	step(f);                                                   /* budget 16 GiB: give all back */
	assert_string_equal(f->out.host_rule, "give_back");
	assert_int_equal(target_mib(f, a), 0);
	f->in.host.mem_total_bytes = 4096 * MiB;                   /* budget 1 GiB */
	step(f);
	assert_string_equal(f->out.host_rule, "goal_reclaim");
	assert_int_equal(target_mib(f, a), 7168);
	assert_int_equal(mv_policy_load_string(f->p, "[host]\ngoal = budget\nbudget_mib = 3072\n"
	                                       "band_mib = 0\nmax_step_mib = 8192\n[vm a]\nmin_mib = 0\n",
	                                       NULL, 0), 0);
	step(f);                                                   /* an absolute budget: */
	assert_string_equal(f->out.host_rule, "give_back");        /* the host's size is no matter */
	assert_int_equal(target_mib(f, a), 5120);
	f->in.host.mem_total_bytes = 64 * 1024 * MiB;
	step(f);
	assert_string_equal(f->out.host_rule, "hold");
	assert_int_equal(target_mib(f, a), 5120);
	fx_free(f);
}

/* A rate limit slows the VM whose turn it is; it does not hand its part to the next VM in
 * line: a cut of 48 MiB with steps of 16 MiB comes from the idle VM alone, in three
 * periods, and the busy VM keeps all it has. */
static void rate_limit_does_not_redirect(void **state)
{
	struct fx *f = fx_new("[host]\ngoal = budget\nbudget_mib = 976\nband_mib = 0\n"
	                      "max_step_mib = 16\n[vm idle]\nmin_mib = 0\n[vm busy]\nmin_mib = 0\n");
	unsigned idle = add_vm(f, "idle", 512), busy = add_vm(f, "busy", 512);
	set_stats(f, idle, 480, 0);
	set_stats(f, busy, 64, 0);
	for (int i = 0; i < 3; i++) {
		step(f);
		assert_string_equal(f->out.host_rule, "goal_reclaim");
		assert_int_equal(target_mib(f, idle), 16 * (i + 1));
		assert_int_equal(target_mib(f, busy), 0);
		set_stats(f, idle, 480 - 16 * (i + 1), 0);
	}
	step(f);
	assert_string_equal(f->out.host_rule, "hold");
	assert_int_equal(target_mib(f, idle), 48);
	assert_int_equal(target_mib(f, busy), 0);
	fx_free(f);
}

/* The scanner gets more CPU while memory is wanted and duplicates are found, the minimum
 * when a full pass finds nothing or COW breaks undo the merges. */
static void scanner_steering(void **state)
{
	struct fx *f = fx_new("[host]\nscanner_min_cpu = 0.01\nscanner_cpu = 0.1\nscanner_max_cpu = 0.3\n"
	                      "scanner_probe_ms = 3000\n");
	struct mv_scan_stats *s = &f->in.host.scanner;
	f->in.host.scanner_valid = true;
	step(f);
	assert_string_equal(f->out.scanner_rule, "scanner_init");
	assert_true(f->out.scanner_changed && fabs(f->out.scanner_cpu_share - 0.1) < 1e-9);
	psi(f, 50, 0);
	s->pages_sharing += 1000;
	step(f);
	assert_string_equal(f->out.scanner_rule, "scanner_boost");
	assert_true(fabs(f->out.scanner_cpu_share - 0.2) < 1e-9);
	s->pages_zero += 1000;
	step(f);
	assert_true(fabs(f->out.scanner_cpu_share - 0.3) < 1e-9);
	json_object *o = record(f, "scanner", NULL);
	assert_string_equal(jstr(o, "cap"), "scanner_max_cpu");
	json_object_put(o);
	s->full_scans++;                        /* a pass found nothing new */
	step(f);
	assert_string_equal(f->out.scanner_rule, "scanner_idle");
	assert_true(fabs(f->out.scanner_cpu_share - 0.01) < 1e-9);
	step(f);
	step(f);
	assert_string_equal(f->out.scanner_rule, "scanner_hold");
	step(f);                                /* 3 s at the minimum under pressure: probe */
	assert_string_equal(f->out.scanner_rule, "scanner_probe");
	assert_true(fabs(f->out.scanner_cpu_share - 0.1) < 1e-9);
	s->cow_breaks += 500;                   /* merges undone as fast as made */
	step(f);
	assert_string_equal(f->out.scanner_rule, "scanner_churn");
	assert_true(fabs(f->out.scanner_cpu_share - 0.05) < 1e-9);
	psi(f, 0, 0);
	f->in.host.mem_available_bytes = 60000 * MiB;
	s->pages_sharing += 10;
	step(f);
	assert_string_equal(f->out.scanner_rule, "scanner_resume");
	assert_true(fabs(f->out.scanner_cpu_share - 0.1) < 1e-9);
	fx_free(f);
}

/* ---- configuration ---- */

static void config_errors(void **state)
{
	static const char *const cases[][2] = {
		{ "[host]\nflor_mib = 5\n", "line 2: [host] flor_mib: unknown key" },
		{ "[host]\n\ntau = 2\n", "line 3: [host] tau: bad value '2' (expected a number in [0, 0.99])" },
		{ "[host]\nperiod_ms = 5\n", "line 2: [host] period_ms: bad value '5' (expected an integer in [10, 3600000])" },
		{ "[host]\nfloor_mib = -5\n", "line 2: [host] floor_mib: bad value '-5'" },
		{ "[host]\nfloor_mib = 12abc\n", "line 2: [host] floor_mib: bad value '12abc'" },
		{ "[host]\ngoal = both\n", "line 2: [host] goal: bad value 'both' (expected floor, ratio or budget)" },
		{ "[host]\nlog_all = maybe\n", "line 2: [host] log_all: bad value 'maybe' (expected true or false)" },
		{ "[host]\ncgroup = sys/fs\n", "line 2: [host] cgroup: bad value 'sys/fs'" },
		{ "tau = 0.5\n", "line 1: tau: key outside a section" },
		{ "[host]\n[hots]\ntau = 0.5\n", "line 3: [hots] tau: unknown section" },
		{ "[host]\ntau = 0.5\ntau 0.6\n", "line 3: syntax error" },
		{ "[host]\ntau = 0.5\n\ntau = 0.6\n", "line 4: [host] tau: given twice (first at line 2" },
		{ "[host]\npsi_some_low = 20\n", "line 2: [host] psi_some_low: 20 must not exceed psi_some_high (10)" },
		{ "[host]\npsi_some_low = 5\npsi_some_high = 4\n", "line 3: [host] psi_some_high: 4 must not be below psi_some_low (5)" },
		{ "[host]\nscanner_max_cpu = 0.05\n", "line 2: [host] scanner_max_cpu: 0.05 must not be below scanner_cpu (0.1)" },
		{ "[vm web]\nmax_mib = 100\n", "line 2: [vm web] max_mib: 100 MiB is below min_mib (256 MiB)" },
		{ "[vm web]\nshares = -1\n", "line 2: [vm web] shares: bad value '-1'" },
		{ "[vm web]\ncolor = red\n", "line 2: [vm web] color: unknown key" },
		{ "[vm]\nshares = 1\n", "line 2: [vm] shares: unknown section" },
	};
	struct fx *f = fx_new("[host]\nmax_step_mib = 32\n[vm a]\nmin_mib = 0\n");
	add_vm(f, "a", 1024);
	char err[256];
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		err[0] = 0;
		assert_int_equal(mv_policy_load_string(f->p, cases[i][0], err, sizeof(err)), -EINVAL);
		if (!strstr(err, cases[i][1]))
			fail_msg("case %u: got \"%s\", want \"%s\"", i, err, cases[i][1]);
	}
	char longline[300];
	memset(longline, 'x', sizeof(longline));
	memcpy(longline, "[host]\n; ", 9);
	longline[sizeof(longline) - 1] = 0;
	assert_int_equal(mv_policy_load_string(f->p, longline, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "line 2: line longer than"));
	/* files: unreadable, then an error prefixed with the path */
	assert_int_equal(mv_policy_load_file(f->p, "/nonexistent/memvirt.ini", err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "/nonexistent/memvirt.ini: "));
	char path[] = "/tmp/test_policy_XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "[host]\ntau = x\n", 15), 15);
	close(fd);
	assert_int_equal(mv_policy_load_file(f->p, path, err, sizeof(err)), -EINVAL);
	char want[128];
	snprintf(want, sizeof(want), "%s: line 2: [host] tau: bad value 'x'", path);
	assert_non_null(strstr(err, want));
	unlink(path);
	/* the old policy stayed: 32 MiB steps */
	psi(f, 50, 0);
	step(f);
	assert_int_equal(target_mib(f, 0), 32);
	fx_free(f);
}

/* A reload changes settings, not state: cool-downs, pressure and the scanner's share stay. */
static void reload_keeps_state(void **state)
{
	struct fx *f = fx_new("[host]\ncooldown_ms = 10000\n[vm a]\nmin_mib = 0\n");
	add_vm(f, "a", 4096);
	set_stats(f, 0, 100, 0);
	f->in.host.scanner_valid = true;
	psi(f, 50, 0);
	step(f);
	f->in.host.scanner.pages_sharing = 100;
	step(f);
	assert_true(fabs(f->out.scanner_cpu_share - 0.2) < 1e-9);
	f->vm[0].balloon.stats[MV_BSTAT_OOM_KILLS] = 1;
	step(f);
	assert_string_equal(f->o[0].rule, "oom_deflate");
	psi(f, 5, 0);                               /* between the marks: still pressured */
	assert_int_equal(mv_policy_load_string(f->p, "[host]\npsi_reclaim_mib = 128\n[vm a]\nmin_mib = 0\n",
	                                       NULL, 0), 0);
	step(f);
	assert_true(f->out.pressured);
	assert_int_equal(f->out.need_bytes, 128 * MiB);
	assert_string_equal(f->o[0].rule, "cooldown");
	assert_string_equal(f->out.scanner_rule, "scanner_hold");
	assert_true(fabs(f->out.scanner_cpu_share - 0.2) < 1e-9);
	assert_int_equal(mv_policy_nr_vms(f->p), 1);
	fx_free(f);
}

/* ---- decision records ---- */

static void json_records(void **state)
{
	struct fx *f = fx_new("[host]\nmax_step_mib = 64\n[vm a]\nmin_mib = 0\nshares = 500\n");
	add_vm(f, "a", 4096);
	set_stats(f, 0, 1024, 512);
	psi(f, 20, 1);
	step(f);
	assert_int_equal(f->out.decisions, 3);       /* host, vm, scanner */
	assert_int_equal(f->nlines, 3);
	json_object *h = record(f, "host", NULL), *v = record(f, "vm", "a"), *s = record(f, "scanner", NULL);
	assert_string_equal(jstr(h, "v"), "1");
	assert_string_equal(jstr(h, "seq"), "0");
	assert_string_equal(jstr(h, "t_ns"), "1000000000");
	assert_string_equal(jstr(h, "rule"), "pressure_reclaim");
	assert_string_equal(jstr(h, "in.psi_some"), "20");
	assert_string_equal(jstr(h, "in.mem_available"), "34359738368");
	assert_string_equal(jstr(h, "goal.kind"), "floor");
	assert_string_equal(jstr(h, "psi.some_high"), "10");
	assert_string_equal(jstr(h, "need"), "268435456");
	assert_string_equal(jstr(v, "seq"), "1");
	assert_string_equal(jstr(v, "rule"), "share_reclaim");
	assert_string_equal(jstr(v, "cap"), "rate_limit");
	assert_string_equal(jstr(v, "target.from"), "0");
	assert_string_equal(jstr(v, "target.to"), "67108864");
	assert_string_equal(jstr(v, "in.stats"), "ok");
	assert_string_equal(jstr(v, "in.active"), "2952790016"); /* 4096 - 1024 - 256 MiB */
	assert_string_equal(jstr(v, "settings.shares"), "500");
	assert_string_equal(jstr(v, "host.rule"), "pressure_reclaim");
	assert_string_equal(jstr(s, "rule"), "scanner_none");
	json_object_put(h);
	json_object_put(v);
	json_object_put(s);
	/* steady state: nothing new to say; log_all says it anyway */
	psi(f, 0, 0);
	f->in.host.mem_available_bytes = 1100 * MiB;
	step(f);
	step(f);
	assert_int_equal(f->nlines, 0);
	assert_int_equal(mv_policy_load_string(f->p, "[host]\nlog_all = yes\n", NULL, 0), 0);
	step(f);
	assert_int_equal(f->nlines, 3);
	fx_free(f);
}

/* The same records go to a FILE sink, one per line; explain renders them. */
static void explain_records(void **state)
{
	FILE *log = tmpfile();
	struct mv_policy_config cfg;
	mv_policy_config_init(&cfg);
	cfg.log_file = log;
	struct mv_policy *p;
	assert_int_equal(mv_policy_new(&cfg, &p), 0);
	assert_int_equal(mv_policy_load_string(p, "[vm web]\nmin_mib = 0\n", NULL, 0), 0);
	assert_int_equal(mv_policy_attach(p, "web", NULL, NULL), 0);
	struct mv_policy_vm_inputs vm = { .name = "web", .ram_bytes = 4096 * MiB, .has_balloon = true };
	vm.balloon.stats_valid = STATS;
	struct mv_policy_inputs in = { .now_ns = SEC, .nr_vms = 1, .vms = &vm };
	in.host = (struct mv_policy_host_inputs){ .psi_valid = true, .psi_some_avg10 = 30,
	                                          .mem_total_bytes = 8192 * MiB, .mem_available_bytes = 4096 * MiB };
	assert_int_equal(mv_policy_step(p, &in, NULL), 0);
	vm.balloon.target_bytes = vm.balloon.actual_bytes = 64 * MiB;
	vm.balloon.stats[MV_BSTAT_OOM_KILLS] = 2;
	in.now_ns += SEC;
	assert_int_equal(mv_policy_step(p, &in, NULL), 0);
	fputs("not json\n{\"v\":1,\"kind\":\"apply_error\",\"rule\":\"mv_balloon_set_target\","
	      "\"vm\":\"web\",\"err\":-22,\"error\":\"Invalid argument\",\"t_ns\":3000000000,\"seq\":9}\n", log);
	rewind(log);
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	assert_int_equal(mv_policy_explain(log, out), -EBADMSG);
	fclose(out);
	static const char *const want[] = {
		"[+0.000s #0] host: pressure_reclaim (pressured)",
		"why: memory pressure: PSI some 30.00%",
		"vm web: share_reclaim, balloon 0 MiB -> 64 MiB (+64 MiB), capped by max_step_mib per period",
		"the lowest shares per MiB of the VMs it could take from",
		"[+1.000s #", "vm web: oom_deflate, balloon 64 MiB -> 0 MiB (-64 MiB)",
		"reported 2 new OOM kill(s)",
		"not a decision record, skipped",
		"error: mv_balloon_set_target for vm web failed: Invalid argument (-22)",
	};
	for (unsigned i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		if (!strstr(text, want[i]))
			fail_msg("explain lacks \"%s\" in:\n%s", want[i], text);
	free(text);
	assert_int_equal(mv_policy_explain(NULL, stdout), -EINVAL);
	fclose(log);
	mv_policy_free(p);
}

/* ---- inputs ---- */

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void input_parsers(void **state)
{
	struct mv_policy_host_inputs h = { 0 };
	assert_int_equal(mv__psi_parse("some avg10=12.50 avg60=1.00 avg300=0.10 total=123456\n"
	                               "full avg10=3.25 avg60=0.00 avg300=0.00 total=789\n", &h), 0);
	assert_true(h.psi_valid && h.psi_some_avg10 == 12.5 && h.psi_full_avg10 == 3.25);
	assert_int_equal(h.psi_some_total_us, 123456);
	assert_int_equal(h.psi_full_total_us, 789);
	assert_int_equal(mv__psi_parse("garbage\n", &h), -EINVAL);
	assert_false(h.psi_valid);
	assert_int_equal(mv__meminfo_parse("MemTotal:       16384 kB\nMemFree: 1 kB\n"
	                                   "MemAvailable:    8192 kB\n", &h), 0);
	assert_int_equal(h.mem_total_bytes, 16 * MiB);
	assert_int_equal(h.mem_available_bytes, 8 * MiB);
	assert_int_equal(mv__meminfo_parse("MemTotal: 1 kB\n", &h), -EINVAL);
	char dir[] = "/tmp/test_policy_cg_XXXXXX", path[96];
	assert_non_null(mkdtemp(dir));
	assert_int_equal(mv__cgroup_read(dir, &h), -ENOENT);
	snprintf(path, sizeof(path), "%s/memory.max", dir);
	write_file(path, "max\n");
	snprintf(path, sizeof(path), "%s/memory.current", dir);
	write_file(path, "4096\n");
	assert_int_equal(mv__cgroup_read(dir, &h), 0);
	assert_int_equal(h.cgroup_limit_bytes, 0);
	assert_int_equal(h.cgroup_usage_bytes, 4096);
	snprintf(path, sizeof(path), "%s/memory.limit_in_bytes", dir);
	write_file(path, "1073741824\n");
	snprintf(path, sizeof(path), "%s/memory.usage_in_bytes", dir);
	write_file(path, "536870912\n");
	assert_int_equal(mv__cgroup_read(dir, &h), 0);
	assert_int_equal(h.cgroup_limit_bytes, 1ull << 30);
	assert_int_equal(h.cgroup_usage_bytes, 1ull << 29);
	write_file(path, "lots\n");
	assert_int_equal(mv__cgroup_read(dir, &h), -EINVAL);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

static void step_errors(void **state)
{
	struct fx *f = fx_new("");
	char long_name[80];
	memset(long_name, 'n', sizeof(long_name));
	long_name[64] = 0;
	assert_int_equal(mv_policy_attach(f->p, "", NULL, NULL), -EINVAL);
	assert_int_equal(mv_policy_attach(f->p, "a]b", NULL, NULL), -EINVAL);
	assert_int_equal(mv_policy_attach(f->p, long_name, NULL, NULL), -EINVAL);
	assert_int_equal(mv_policy_attach(f->p, "x", NULL, (struct mv_balloon *)f), -EINVAL);
	add_vm(f, "a", 1024);
	assert_int_equal(mv_policy_attach(f->p, "a", NULL, NULL), -EEXIST);
	f->in.now_ns = 5 * SEC;
	f->vm[1] = f->vm[0];
	f->in.nr_vms = 2;
	assert_int_equal(mv_policy_step(f->p, &f->in, &f->out), -EINVAL);  /* a twice */
	f->vm[1].name = "zz";
	assert_int_equal(mv_policy_step(f->p, &f->in, &f->out), -ENOENT);
	f->in.nr_vms = 1;
	assert_int_equal(mv_policy_step(f->p, &f->in, &f->out), 0);
	f->in.now_ns -= 1;
	assert_int_equal(mv_policy_step(f->p, &f->in, &f->out), -EINVAL);  /* time going back */
	assert_int_equal(mv_policy_detach(f->p, "zz"), -ENOENT);
	assert_int_equal(mv_policy_detach(f->p, "a"), 0);
	assert_int_equal(mv_policy_nr_vms(f->p), 0);
	f->in.now_ns += 2;
	assert_int_equal(mv_policy_step(f->p, &f->in, &f->out), -ENOENT);
	fx_free(f);
}

/* Reloads, attaches and detaches from another thread while steps run: each step sees one
 * whole policy (run under TSan by `make tsan`). */
static pthread_barrier_t go;

static void *reloader(void *arg)
{
	struct mv_policy *p = arg;
	pthread_barrier_wait(&go);
	for (int i = 0; i < 1000; i++) {
		assert_int_equal(mv_policy_load_string(p, i % 2 ? "[host]\nmax_step_mib = 8\n" :
		                                       "[host]\nmax_step_mib = 16\n[vm a]\nshares = 5\n",
		                                       NULL, 0), 0);
		assert_int_equal(mv_policy_attach(p, "other", NULL, NULL), 0);
		assert_int_equal(mv_policy_detach(p, "other"), 0);
	}
	return NULL;
}

static void concurrent_reload(void **state)
{
	struct fx *f = fx_new("");
	add_vm(f, "a", 1 << 20);                /* 1 TiB: no limit is reached */
	psi(f, 50, 0);
	pthread_t t;
	pthread_barrier_init(&go, NULL, 2);
	assert_int_equal(pthread_create(&t, NULL, reloader, f->p), 0);
	pthread_barrier_wait(&go);
	bool whole = true;
	for (int i = 0; i < 1000; i++) {
		step(f);
		uint64_t moved = f->o[0].target_bytes - f->o[0].prev_target_bytes;
		whole &= moved == 8 * MiB || moved == 16 * MiB || moved == 64 * MiB;
	}
	assert_int_equal(pthread_join(t, NULL), 0);
	pthread_barrier_destroy(&go);
	assert_true(whole);
	fx_free(f);
}

/* ---- the actuator ---- */

static uint64_t fake_now(void *opaque) { return *(uint64_t *)opaque; }
static void no_irq(void *opaque, int q) { (void)opaque, (void)q; }

static int sim_host(void *opaque, struct mv_policy_host_inputs *h)
{
	if (!*(uint64_t *)opaque)
		return -EIO;
	h->mem_total_bytes = 4096 * MiB;
	h->mem_available_bytes = 512 * MiB;
	return 0;
}

/* tick reads the (injected) input files, steps and applies: the balloon's target and the
 * host's scanner share change. */
static void tick_applies(void **state)
{
	char dir[] = "/tmp/test_policy_tick_XXXXXX", psi_path[96], mem_path[96], cmd[128];
	assert_non_null(mkdtemp(dir));
	snprintf(psi_path, sizeof(psi_path), "%s/memory", dir);
	snprintf(mem_path, sizeof(mem_path), "%s/meminfo", dir);
	write_file(psi_path, "some avg10=40.00 avg60=0.00 avg300=0.00 total=0\n"
	                     "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
	write_file(mem_path, "MemTotal: 16777216 kB\nMemAvailable: 8388608 kB\n");
	uint64_t now = SEC;
	struct mv_policy_config cfg;
	mv_policy_config_init(&cfg);
	cfg.psi_path = psi_path;
	cfg.meminfo_path = mem_path;
	cfg.now_ns = fake_now;
	cfg.clock_opaque = &now;
	struct mv_policy *p;
	struct mv_policy_vm_outputs vo[2];
	struct mv_policy_outputs out = { .cap_vms = 2, .vms = vo };
	/* no host, a step-only VM: left out, the host still decides */
	assert_int_equal(mv_policy_new(&cfg, &p), 0);
	assert_int_equal(mv_policy_attach(p, "ghost", NULL, NULL), 0);
	assert_int_equal(mv_policy_tick(p, &out), 0);
	assert_int_equal(out.nr_vms, 0);
	assert_string_equal(out.host_rule, "pressure_reclaim");
	unlink(mem_path);
	now += SEC;
	assert_int_equal(mv_policy_tick(p, &out), -ENOENT);
	write_file(mem_path, "MemTotal: 16777216 kB\nMemAvailable: 8388608 kB\n");
	mv_policy_free(p);
	/* host figures from the caller instead of the files */
	cfg.host_inputs = sim_host;
	cfg.host_inputs_opaque = &now;
	assert_int_equal(mv_policy_new(&cfg, &p), 0);
	assert_int_equal(mv_policy_tick(p, &out), 0);
	assert_string_equal(out.host_rule, "goal_reclaim");    /* 512 MiB available < 1 GiB */
	now = 0;
	assert_int_equal(mv_policy_tick(p, &out), -EIO);
	now = 4 * SEC;
	mv_policy_free(p);
	cfg.host_inputs = NULL;

	struct mv_host_config hc;
	mv_host_config_init(&hc);
	hc.settle_ms = 0;
	struct mv_host *h = NULL;
	int rc = mv_host_new(&hc, &h);
	if (rc) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		assert_int_equal(system(cmd), 0);
		TU_SKIP("no memvirt host here (%s): tick against a real balloon skipped", mv_strerror(rc));
	}
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "g";
	struct mv_vm *vm;
	assert_int_equal(mv_vm_new(h, &vc, &vm), 0);
	uint8_t *mem = tu_guest_alloc(8192);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, 8192 * TPAGE, 0), 0);
	struct mv_balloon_ops ops = { .interrupt = no_irq };
	struct mv_balloon_config bc;
	mv_balloon_config_init(&bc);
	bc.ops = &ops;
	struct mv_balloon *b;
	assert_int_equal(mv_balloon_new(vm, &bc, &b), 0);
	cfg.host = h;
	assert_int_equal(mv_policy_new(&cfg, &p), 0);
	assert_int_equal(mv_policy_load_string(p, "[host]\nscanner_cpu = 0.2\n[vm g]\nmin_mib = 0\n", NULL, 0), 0);
	assert_int_equal(mv_policy_attach(p, "g", vm, b), 0);
	now += SEC;
	assert_int_equal(mv_policy_tick(p, &out), 0);
	assert_int_equal(out.nr_vms, 1);
	assert_string_equal(vo[0].rule, "share_reclaim");
	struct mv_balloon_info bi;
	assert_int_equal(mv_balloon_info(b, &bi), 0);
	assert_int_equal(bi.target_bytes, 32 * MiB);                /* all of its 32 MiB RAM */
	assert_int_equal(atomic_load(&h->cpu_share_ppm), 200000);   /* scanner_init applied */
	assert_int_equal(mv_policy_detach(p, "g"), 0);
	mv_policy_free(p);
	mv_balloon_free(b);
	mv_vm_free(vm);
	mv_host_free(h);
	tu_guest_free(mem, 8192);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(rho_arithmetic),
		cmocka_unit_test(shares_decide),
		cmocka_unit_test(idle_tax),
		cmocka_unit_test(min_and_max),
		cmocka_unit_test(hysteresis),
		cmocka_unit_test(rate_limit),
		cmocka_unit_test(stall_backoff),
		cmocka_unit_test(oom_and_alloc_stall_deflate),
		cmocka_unit_test(majflt_guard_and_no_balloon),
		cmocka_unit_test(guest_figures),
		cmocka_unit_test(goals),
		cmocka_unit_test(rate_limit_does_not_redirect),
		cmocka_unit_test(scanner_steering),
		cmocka_unit_test(config_errors),
		cmocka_unit_test(reload_keeps_state),
		cmocka_unit_test(json_records),
		cmocka_unit_test(explain_records),
		cmocka_unit_test(input_parsers),
		cmocka_unit_test(step_errors),
		cmocka_unit_test(concurrent_reload),
		cmocka_unit_test(tick_applies),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
