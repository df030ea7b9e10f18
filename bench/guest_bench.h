/* guest_bench.h - `memvirt bench guest`: options, results and the engines its children drive. */
#ifndef MEMVIRT_BENCH_GUEST_BENCH_H
#define MEMVIRT_BENCH_GUEST_BENCH_H

#include "bench.h"

#include <stdbool.h>
#include <stdint.h>

struct mv_host;
struct mv_vm;

#define GB_PAGE 4096ul
#define GB_MAX_WS 8

enum gb_engine_id { GB_NONE, GB_MEMVIRT, GB_KSM, GB_NR };

struct gb_opts {
	uint64_t guest_mib;            /* guest RAM, MiB */
	double seconds;                /* phase 1 */
	double settle_quiet_s;         /* phase 2 ends after this long without growth... */
	double settle_timeout_s;       /* ...or after this long */
	double ws[GB_MAX_WS];          /* working sets, percent of the guest's pages */
	unsigned nr_ws;
	bool enabled[GB_NR];           /* engines to measure */
	bool json;
	unsigned rounds;               /* phase 1 runs per engine, alternating engines */
	bool settle;                   /* this run also measures phase 2 (the last round) */
};

/* What a child hands back through its pipe (plain bytes, under PIPE_BUF). */
struct gb_result {
	bool ran;                      /* the engine was measured (not skipped, no error) */
	int err;                       /* 0 or -errno, with msg */
	char msg[160];
	double writes_per_s, max_stall_us;
	double engine_cpu_s, cpu_share; /* phase 1 */
	long pages_saved;              /* at the end of phase 1 */
	long pages_saved_after_stop;   /* at the end of phase 2 */
	double merge_after_stop_s;     /* writer stop -> last growth of pages saved */
	bool settled;                  /* false: --settle-timeout ended phase 2 */
	uint64_t write_faults;         /* memvirt: stores it made wait, over phase 1 */
	double writer_wait_max_us;     /* memvirt: the longest of those waits */
};

/* One engine over one guest, in its child. */
struct gb_child {
	const struct gb_opts *o;
	const char *label;             /* "ws 10% memvirt", for progress lines */
	struct bench_guest g;
	struct mv_host *host;
	struct mv_vm *vm;
	int ksmd;                      /* pid of the ksmd kthread */
	long ksm_base;                 /* KSM's pages saved before the run (someone else's) */
};

/* An engine, as its child drives it. Figures are cumulative; the child takes differences. */
struct gb_engine {
	const char *name;
	int (*setup)(struct gb_child *c);             /* before the clock starts; NULL: nothing */
	int (*start)(struct gb_child *c);             /* at the start of phase 1; NULL: nothing */
	int (*cpu_ns)(struct gb_child *c, uint64_t *out); /* the engine's own CPU figure; NULL: none */
	long (*saved)(struct gb_child *c);            /* pages saved now */
	long (*full_scans)(struct gb_child *c);       /* complete passes over the guest so far */
	void (*finish)(struct gb_child *c, struct gb_result *r); /* extra figures after phase 1 */
	void (*teardown)(struct gb_child *c);
};

/* guest_engines.c: indexed by enum gb_engine_id. */
extern const struct gb_engine gb_engines[GB_NR];

/* Parent side of kernel KSM: its knobs at the kernel's defaults plus use_zero_pages=1,
 * through kc_setting_set() (restored on exit); `run` is left to the caller. 0 or -errno. */
int gb_ksm_prepare(void);

#endif
