/* snapshot.h - what memvirtd knows at one moment: the input of status, top and /metrics. */
#ifndef MD_SNAPSHOT_H
#define MD_SNAPSHOT_H

#include <memvirt/balloon.h>
#include <memvirt/host.h>
#include <memvirt/policy.h>
#include <stdbool.h>
#include <stdint.h>

#define MD_NAME     64
#define MD_RULE     32
#define MD_MAX_RULES 48

/* One VM the daemon serves now (a vhost-user VM's worker or a linked VMM reported it). */
struct md_vm_view {
	char name[MD_NAME];
	char source[16];              /* "vhost-user" or "agent" */
	char domain[80];              /* trust domain (mv_vm_domain()), "" if unknown */
	char client[80];              /* the reporting process's name (agent HELLO) */
	uint64_t ram_bytes;
	bool has_balloon;
	struct mv_balloon_info balloon;
	bool scanner_valid;
	struct mv_scan_stats scanner;
	/* the admin's settings in force for it (policy [vm NAME], defaults filled in) */
	uint64_t min_bytes, max_bytes; /* max 0 = no cap */
	double shares;
	/* the last decision about it */
	char rule[MD_RULE], cap[MD_RULE];
	uint64_t decided_bytes;       /* the balloon target the policy last chose */
	uint64_t report_age_ns;       /* since its last report */
};

/* A VM the admin added that has no VMM connected now. */
struct md_wait_view {
	char name[MD_NAME];
	char socket[108];
};

struct md_rule_count {
	char kind[16];                /* "host", "vm", "scanner", "apply_error" */
	char rule[MD_RULE];
	uint64_t count;               /* decision records written with this rule */
};

struct md_snapshot {
	uint64_t now_ns;              /* CLOCK_MONOTONIC */
	uint64_t uptime_ns;
	struct mv_policy_host_inputs host; /* as read at the last tick (psi_valid etc.) */
	char goal[16];                /* "floor", "ratio" or "budget" */
	uint64_t goal_bytes;          /* floor or budget; ratio: ratio x host memory */
	double goal_ratio;            /* ratio goal only */
	char host_rule[MD_RULE];
	bool pressured;
	int64_t need_bytes;
	double scanner_cpu_share;
	uint64_t ticks;               /* policy periods run */
	/* savings by source */
	uint64_t balloon_bytes;       /* held by balloons (actual), summed over VMs */
	uint64_t shared_bytes;        /* pages_sharing x 4 KiB of the linked hosts' scanners */
	uint64_t zero_bytes;          /* pages_zero x 4 KiB, likewise */
	uint64_t reported_bytes;      /* free page reporting, cumulative */
	unsigned nr_vms;
	struct md_vm_view *vms;
	unsigned nr_waiting;
	struct md_wait_view *waiting;
	unsigned nr_rules;
	struct md_rule_count rules[MD_MAX_RULES];
};

#endif
