/* policy.h - the policy engine: how much memory each VM gets, and how hard the scanner works. */
#ifndef MEMVIRT_POLICY_H
#define MEMVIRT_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <memvirt/balloon.h>
#include <memvirt/host.h>
#include <memvirt/vm.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The engine is a pure function plus an actuator:
 *
 *   mv_policy_step()   inputs (host pressure, MemAvailable, per-VM balloon and scanner
 *                      figures, a timestamp) -> outputs (per-VM balloon targets, the
 *                      scanner's CPU share, the rule behind each). Deterministic: the same
 *                      configuration, state and inputs give the same outputs and log lines.
 *   mv_policy_tick()   gathers the real inputs (/proc/pressure/memory, /proc/meminfo, an
 *                      optional cgroup, mv_balloon_info(), mv_vm_stats(), mv_host_stats()),
 *                      runs mv_policy_step() and applies the outputs (mv_balloon_set_target(),
 *                      mv_host_set_cpu_share()). The caller runs it every period_ms from a
 *                      thread of its own: the engine starts no thread. It never starts a free
 *                      page hint run.
 *
 * Every decision is written as one JSON line (a "decision record", see policy/README.md)
 * to the log sinks of struct mv_policy_config; mv_policy_explain() renders them for people.
 *
 * Threads: every function may be called from any thread; one mutex per engine serialises
 * them. The log sinks are called with that mutex held and must not call into the engine.
 * mv_policy_tick() calls into the balloon devices and the host with the mutex held (lock
 * order: engine, then device): the balloon's hooks must not call into the engine.
 */

/* Opaque. Created by mv_policy_new(), released by mv_policy_free(). */
struct mv_policy;

struct mv_policy_host_inputs;

/* Receives one decision record (a JSON object, no newline). line is valid during the call. */
typedef void (*mv_policy_log_fn)(void *opaque, const char *line);

struct mv_policy_config {
	size_t size;              /* sizeof(struct mv_policy_config); set by mv_policy_config_init() */
	struct mv_host *host;     /* scanner counters and CPU share for mv_policy_tick(); NULL = no
	                             scanner steering. Not owned: must outlive the engine. */
	FILE *log_file;           /* decision records, one per line, flushed after each step;
	                             NULL = none. Not owned (never closed). */
	mv_policy_log_fn log;     /* decision records (also or instead); NULL = none */
	void *log_opaque;
	/* Clock for mv_policy_tick(), monotonic ns; NULL = CLOCK_MONOTONIC. */
	uint64_t (*now_ns)(void *opaque);
	void *clock_opaque;
	/* Input files of mv_policy_tick(); NULL = the real ones. Copied. A missing PSI file
	 * (kernel without PSI) leaves pressure out of the decisions; a missing meminfo file
	 * makes mv_policy_tick() fail. */
	const char *psi_path;     /* default "/proc/pressure/memory" */
	const char *meminfo_path; /* default "/proc/meminfo" */
	/* Or the host figures from the caller (a simulation): when set, mv_policy_tick() calls
	 * it (engine lock held) instead of reading the files and the cgroup; it fills *h (zeroed
	 * first; the scanner fields are then overwritten from `host` when there is one) and
	 * returns 0, or -errno to fail the tick. */
	int (*host_inputs)(void *opaque, struct mv_policy_host_inputs *h);
	void *host_inputs_opaque;
};

void mv_policy_config_init(struct mv_policy_config *cfg);

/*
 * Create an engine with the default policy (see policy/README.md) and no VM. On success
 * *out must be released with mv_policy_free(). Errors: -EINVAL (bad config), -ENOMEM.
 */
int mv_policy_new(const struct mv_policy_config *cfg, struct mv_policy **out);

/* Detach every VM and free the engine. Nothing is applied. NULL is a no-op. No other call
 * on the engine may be running or follow. */
void mv_policy_free(struct mv_policy *p);

/*
 * Load or reload the policy (INI, see policy/README.md) in full: keys left out take their
 * defaults. State survives a reload (attached VMs, counters seen, cool-downs, pressure
 * state, the scanner's share); the new settings apply from the next step.
 * Errors: -EINVAL when the text is not a valid policy: the old policy stays in force and
 * err (when not NULL, errlen > 0) receives a message naming the line and the key, e.g.
 * "line 4: [host] tau: bad value '2' (expected a number in [0, 0.99])". -ENOENT/-EACCES/
 * -EIO for a file that cannot be read (message in err too), -ENOMEM.
 */
int mv_policy_load_file(struct mv_policy *p, const char *path, char *err, size_t errlen);
int mv_policy_load_string(struct mv_policy *p, const char *text, char *err, size_t errlen);

/*
 * Put a VM under the engine's control. name (1..63 printable characters, no ']') selects
 * the [vm NAME] section of the policy; VMs without one get the defaults. vm and balloon
 * are not owned; balloon may be NULL (the VM then has no balloon: it is never reclaimed
 * from). vm may be NULL too: such a VM is known to mv_policy_step() only, and
 * mv_policy_tick() leaves it out. Detach before freeing the balloon or the VM.
 * Errors: -EINVAL (bad name, or a balloon without a vm), -EEXIST (name attached), -ENOMEM.
 */
int mv_policy_attach(struct mv_policy *p, const char *name, struct mv_vm *vm,
                     struct mv_balloon *balloon);
/* Forget the VM and its state; its balloon target stays as it is. -ENOENT if unknown. */
int mv_policy_detach(struct mv_policy *p, const char *name);
/* Number of VMs attached (to size mv_policy_outputs.vms). */
unsigned mv_policy_nr_vms(struct mv_policy *p);
/* The policy's period_ms: how often the caller should run mv_policy_tick(). */
unsigned mv_policy_period_ms(struct mv_policy *p);

/* ---- The pure core ---- */

struct mv_policy_host_inputs {
	bool psi_valid;                /* the pressure figures below are known */
	double psi_some_avg10;         /* percent, /proc/pressure/memory "some avg10" */
	double psi_full_avg10;         /* percent, "full avg10" */
	uint64_t psi_some_total_us;    /* cumulative stall time, "some total" */
	uint64_t psi_full_total_us;
	uint64_t mem_total_bytes;      /* MemTotal */
	uint64_t mem_available_bytes;  /* MemAvailable */
	uint64_t cgroup_limit_bytes;   /* 0 = no cgroup limit */
	uint64_t cgroup_usage_bytes;   /* used with the limit */
	bool scanner_valid;            /* scanner holds mv_host_stats() */
	struct mv_scan_stats scanner;
};

struct mv_policy_vm_inputs {
	const char *name;              /* an attached VM */
	uint64_t ram_bytes;            /* guest RAM (sum of its regions) */
	bool has_balloon;              /* balloon holds mv_balloon_info() */
	struct mv_balloon_info balloon; /* targets, stall flag, guest statistics */
	bool scanner_valid;            /* scanner holds mv_vm_stats() */
	struct mv_scan_stats scanner;
};

struct mv_policy_inputs {
	uint64_t now_ns;               /* monotonic; never decreasing between steps */
	struct mv_policy_host_inputs host;
	unsigned nr_vms;
	const struct mv_policy_vm_inputs *vms; /* nr_vms entries, distinct attached names */
};

struct mv_policy_vm_outputs {
	char name[64];
	uint64_t target_bytes;         /* balloon target to set (4 KiB multiple) */
	uint64_t prev_target_bytes;    /* the target in the inputs */
	bool changed;                  /* target_bytes != prev_target_bytes */
	const char *rule;              /* the rule that decided, e.g. "share_reclaim" (static) */
	const char *cap;               /* the limit that cut the change, or "" (static) */
	double rho;                    /* shares per MiB, idle memory taxed (ESX's rho) */
	double active_fraction;        /* f, 0..1 */
};

struct mv_policy_outputs {
	unsigned cap_vms;              /* in: entries of vms (vms may be NULL when 0) */
	unsigned nr_vms;               /* out: VMs decided; the first min(nr_vms, cap_vms)
	                                  are in vms, in the order of the inputs */
	struct mv_policy_vm_outputs *vms;
	const char *host_rule;         /* e.g. "pressure_reclaim" (static) */
	bool pressured;                /* PSI above its high mark, not yet back below the low one */
	int64_t need_bytes;            /* > 0 memory to reclaim from VMs, < 0 to give back */
	double scanner_cpu_share;      /* cores per scanner worker */
	bool scanner_changed;
	const char *scanner_rule;      /* e.g. "scanner_boost" (static) */
	unsigned decisions;            /* decision records written by this step */
};

/*
 * One control period on the given inputs: decide, log, update the engine's state. Nothing
 * is applied. out may be NULL. Errors (nothing changed): -EINVAL (NULL p or in, vms NULL
 * with nr_vms > 0, a name given twice, now_ns going back), -ENOENT (a name not attached),
 * -ENOMEM.
 */
int mv_policy_step(struct mv_policy *p, const struct mv_policy_inputs *in,
                   struct mv_policy_outputs *out);

/*
 * Gather the real inputs at the config's clock, step, and apply: balloon targets that
 * changed, the scanner's CPU share when it changed (with a host), and a request for fresh
 * guest statistics from every balloon. out may be NULL. Errors: those of mv_policy_step(),
 * the -errno of reading meminfo, or the first error of applying (the rest is still
 * applied; each failure is also logged as an "apply_error" record).
 */
int mv_policy_tick(struct mv_policy *p, struct mv_policy_outputs *out);

/*
 * Read the host figures as mv_policy_tick() does (the config's files or host_inputs
 * callback, the policy's cgroup, the scanner of cfg.host) into *h, without stepping.
 * For a caller that gathers the VMs' figures itself (a host daemon whose VMs live in
 * other processes) and calls mv_policy_step(). Errors: those of reading meminfo or the
 * cgroup, or of the callback; -EINVAL for NULL arguments.
 */
int mv_policy_host_read(struct mv_policy *p, struct mv_policy_host_inputs *h);

/*
 * Render decision records (JSON lines, as logged) from in as text for people on out, one
 * paragraph per record. Lines that are not decision records are reported in place and
 * skipped. Returns 0, -EBADMSG when some line was skipped (the rest is rendered), -EIO
 * on a read or write error, -EINVAL for a NULL stream. Needs no engine.
 */
int mv_policy_explain(FILE *in, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
