/* policy.h - the policy engine's private types: settings, per-VM state, the engine. */
#ifndef MV_POLICY_INTERNAL_H
#define MV_POLICY_INTERNAL_H

#include <memvirt/policy.h>
#include <pthread.h>
#include <string.h>

#include "internal.h"

#define MV_MIB            (1ull << 20)
#define MV_POL_PAGE       4096ull
#define MV_POL_QUANTUM    (4ull << 20) /* share allocation moves memory in these steps */
#define MV_POL_NAME_MAX   64
#define MV_POL_PATH_MAX   256
#define MV_POL_BACKOFF_MAX 3            /* a stalled balloon waits at most 2^3 backoffs */

enum mv__goal { MV__GOAL_FLOOR, MV__GOAL_RATIO, MV__GOAL_BUDGET };

/* [vm NAME] */
struct mv__pvm_cfg {
	char name[MV_POL_NAME_MAX];
	double shares;
	uint64_t min_bytes, max_bytes;     /* max 0 = no cap */
	int line_shares, line_min, line_max; /* where each key was given (0 = default) */
};

/* The whole policy: [host] plus the [vm] sections. Replaced whole on reload. */
struct mv__pcfg {
	enum mv__goal goal;
	uint64_t floor_bytes;
	double ratio;                      /* granted guest memory / host memory */
	uint64_t budget_bytes;             /* granted guest memory at most (goal = budget) */
	double tau;                        /* idle memory tax, 0 <= tau < 1 */
	double cache_idle;                 /* fraction of guest caches counted as idle */
	double some_high, some_low, full_high, full_low; /* PSI avg10, percent */
	uint64_t period_ms;
	uint64_t max_step_bytes;           /* per VM per period */
	uint64_t psi_reclaim_bytes;        /* host-wide per period under pressure */
	uint64_t band_bytes;               /* give back only beyond the goal plus this */
	uint64_t stats_max_age_ms;
	uint64_t oom_deflate_bytes;
	uint64_t alloc_stall_min;          /* stalls per period that count as a rise */
	uint64_t alloc_stall_deflate_bytes;
	uint64_t cooldown_ms;              /* no reclaim after an OOM or alloc-stall deflate */
	uint64_t stall_backoff_ms;         /* no reclaim after a stalled inflate, doubling */
	double majflt_max_rate;            /* major faults/s beyond which a VM is left alone; 0 off */
	uint64_t cow_horizon_ms;           /* COW breaks are projected this far ahead */
	double cow_debt_reserve;           /* fraction of the COW debt kept free */
	double scan_min, scan_max, scan_cpu; /* cores per worker */
	uint64_t scan_probe_ms;
	char cgroup[MV_POL_PATH_MAX];      /* "" = none */
	bool log_all;
	int line_of[64];                   /* line of each [host] key (config.c's table order) */
	unsigned nr_vms;
	struct mv__pvm_cfg *vms;
};

/* Per attached VM, kept across steps and reloads. Guarded by the engine's lock. */
struct mv__pvm {
	char name[MV_POL_NAME_MAX];
	struct mv_vm *vm;                  /* not owned; NULL = step-only */
	struct mv_balloon *balloon;        /* not owned; NULL = no balloon */
	bool seen;                         /* last_ns and the counters below are valid */
	uint64_t last_ns;                  /* time of its last step */
	bool stats_seen;
	uint64_t oom_kills, alloc_stalls, major_faults; /* guest counters, last seen */
	uint64_t stats_ns;                 /* when the counters were last taken */
	bool cow_seen;
	uint64_t cow_breaks;               /* scanner counter, last seen */
	uint64_t hold_until_ns;            /* no reclaim before (cool-down or backoff) */
	const char *hold_reason;           /* "oom", "alloc_stall", "stall" */
	unsigned stall_streak;             /* stalled inflates without a completed one since */
	uint64_t stall_at;                 /* actual bytes when the balloon last stalled */
	const char *last_rule;             /* to log transitions */
};

struct mv_policy {
	pthread_mutex_t lock;              /* everything below */
	struct mv_policy_config cfg;
	char psi_path[MV_POL_PATH_MAX], meminfo_path[MV_POL_PATH_MAX];
	struct mv__pcfg conf;
	unsigned nr_vms, cap_vms;
	struct mv__pvm *vms;
	/* host */
	bool host_seen;
	uint64_t host_ns, psi_some_total, psi_full_total;
	bool pressured;
	const char *last_host_rule;
	/* scanner */
	bool scan_seen;
	double scan_share;
	uint64_t scan_saved, scan_cow, scan_full, scan_idle_ns;
	const char *last_scan_rule;
	uint64_t seq;                      /* decision records written */
};

/* ---- One step's working set (engine.c, alloc.c, decision.c) ---- */

struct mv__host_eval {
	double some, full;                 /* pressure signal: max(avg10, rate of the totals) */
	bool pressured;
	uint64_t total, avail;             /* after the cgroup limit */
	int64_t in_flight;                 /* sum of (target - actual): inflation under way */
	uint64_t cow_pred;                 /* memory COW breaks will take over the horizon */
	uint64_t cow_debt;
	int64_t pred_avail;
	uint64_t granted, budget;          /* ratio goal */
	int64_t deficit;                   /* > 0: the goal is missed by this much */
	int64_t surplus;                   /* > 0: this much can go back (band taken off) */
	int64_t need;                      /* > 0 reclaim, < 0 give back */
	int64_t guard_delta;               /* target change made by guard rules */
	uint64_t unplaced;                 /* need the VMs' limits left unmet */
	const char *rule;
};

enum mv__stats { MV__STATS_NONE, MV__STATS_STALE, MV__STATS_OK };

struct mv__work {
	struct mv__pvm *st;
	const struct mv_policy_vm_inputs *in;
	struct mv__pvm_cfg vc;             /* its settings (defaults if no section) */
	uint64_t ram, target, actual, new_target;
	enum mv__stats stats;
	uint64_t free, avail, caches, active; /* bytes, from the guest's statistics */
	double f, rho;                     /* after this step's moves (alloc.c keeps them fresh) */
	double f0, rho0;                   /* on entry: what the decision saw */
	uint64_t d_oom, d_stalls;
	double majflt_rate, cow_rate;      /* per second */
	uint64_t step_allow;               /* rate limit for this period */
	bool guarded;                      /* a guard rule fixed the target */
	bool eligible;                     /* has a balloon and no guard fired */
	const char *no_reclaim;            /* why it is left out of reclaim, or NULL */
	uint64_t room;                     /* share allocation: bytes it may still move within
	                                      its min/max (the hard limits) */
	const char *room_cap;              /* what bounds room */
	uint64_t step_room;                /* of those, this period (rate limit, lead) */
	const char *step_cap;              /* what bounds step_room */
	const char *rule, *cap;
};

struct mv__scan_eval {
	double from, to;                   /* cores per worker */
	const char *rule, *cap;
	int64_t d_saved, d_cow, d_full;    /* pages saved, COW breaks, full passes since last */
	bool want;                         /* the host wants memory */
};

/* Rule names are static strings; compare them by content (NULL is a rule of its own). */
static inline bool mv__same_rule(const char *a, const char *b)
{
	return a == b || (a && b && !strcmp(a, b));
}

/* engine.c */
double mv__policy_rho(double shares, double granted_mib, double active_mib, double tau);
int mv__policy_step_locked(struct mv_policy *p, const struct mv_policy_inputs *in,
                           struct mv_policy_outputs *out);

/* alloc.c: move `amount` bytes by shares (reclaim: inflate, else deflate); returns what
 * could not be placed. */
uint64_t mv__alloc_shares(const struct mv__pcfg *c, struct mv__work *w, unsigned n,
                          bool reclaim, uint64_t amount);
void mv__work_rho(const struct mv__pcfg *c, struct mv__work *w);

/* alloc.c: the scanner's CPU share */
void mv__steer_scanner(struct mv_policy *p, const struct mv_policy_inputs *in,
                       const struct mv__host_eval *h, struct mv_policy_outputs *out);

/* config.c */
void mv__pcfg_defaults(struct mv__pcfg *c);
void mv__pcfg_free(struct mv__pcfg *c);
const struct mv__pvm_cfg *mv__pcfg_vm(const struct mv__pcfg *c, const char *name);
int mv__pcfg_parse_string(const char *text, struct mv__pcfg *out, char *err, size_t errlen);
int mv__pcfg_parse_file(const char *path, struct mv__pcfg *out, char *err, size_t errlen);

/* inputs.c: the real inputs. Parsers take the file's text. */
int mv__psi_parse(const char *text, struct mv_policy_host_inputs *h);
int mv__meminfo_parse(const char *text, struct mv_policy_host_inputs *h);
int mv__read_text(const char *path, char *buf, size_t len);
int mv__cgroup_read(const char *dir, struct mv_policy_host_inputs *h);
int mv__policy_gather(struct mv_policy *p, struct mv_policy_inputs *in,
                      struct mv_policy_vm_inputs *vms);
int mv__policy_apply(struct mv_policy *p, const struct mv_policy_inputs *in,
                     const struct mv_policy_outputs *out);

/* decision.c: decision records */
void mv__log_host(struct mv_policy *p, const struct mv_policy_inputs *in,
                  const struct mv__host_eval *h);
void mv__log_vm(struct mv_policy *p, const struct mv_policy_inputs *in,
                const struct mv__host_eval *h, const struct mv__work *w);
void mv__log_scanner(struct mv_policy *p, const struct mv_policy_inputs *in,
                     const struct mv__scan_eval *s);
void mv__log_apply_error(struct mv_policy *p, uint64_t now_ns, const char *vm,
                         const char *what, int err);
void mv__log_flush(struct mv_policy *p);

#endif
