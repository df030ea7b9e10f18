/* host.h - the memvirt host: the engine shared by every VM of one VMM process. */
#ifndef MEMVIRT_HOST_H
#define MEMVIRT_HOST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Opaque. Created by mv_host_new(), released by mv_host_free(). */
struct mv_host;

enum mv_log_level { MV_LOG_ERROR, MV_LOG_WARN, MV_LOG_INFO, MV_LOG_DEBUG };

/* Log sink. Called from any library thread, possibly with library locks held: the
 * callback must not call back into libmemvirt (queue the message if it needs to).
 * msg is valid for the duration of the call only. */
typedef void (*mv_log_fn)(void *opaque, enum mv_log_level level, const char *msg);

/*
 * NUMA topology. The default (topology == NULL in the config) asks libnuma. A VMM or a
 * test can inject its own: node_of() returns the node (0 .. nr_nodes-1) that backs the
 * host address, or a negative value when unknown (treated as node 0).
 */
struct mv_topology {
	unsigned nr_nodes;
	int (*node_of)(void *opaque, const void *hva);
	void *opaque;
};

/* What to do with guest memory mapped by transparent huge pages. */
enum mv_thp_policy {
	MV_THP_KEEP = 0,  /* never split a THP to share 4 KiB pages (default) */
	MV_THP_SPLIT = 1, /* split when at least thp_split_min of its 512 pages can be shared */
};

struct mv_host_config {
	size_t size;            /* sizeof(struct mv_host_config); set by mv_host_config_init() */
	unsigned workers;       /* background scanner threads started by mv_host_start(); default 1 */
	double cpu_share;       /* CPU budget per worker, in cores (0 < x <= 1); default 0.10 */
	long vma_budget;        /* mappings the scanner may add; 0 = auto: the headroom under
	                           vm.max_map_count in force, minus a reserve for the VMM */
	enum mv_thp_policy thp_policy;
	unsigned thp_split_min; /* pages of 512; used with MV_THP_SPLIT; default 448 */
	int cross_node_merge;   /* 0 (default): a page only merges with pages of its NUMA node */
	unsigned settle_ms;     /* a page merges only once its content stayed the same for this
	                           long (two looks); chunks found written again wait twice as long
	                           each time, up to 16 times this. Default 500; 0 = look again on
	                           the next pass (mv_host_scan() in tests) */
	const struct mv_topology *topology; /* NULL = libnuma; copied by mv_host_new() */
	mv_log_fn log;          /* NULL = silent */
	void *log_opaque;
};

/* Fill cfg with the defaults above. */
void mv_host_config_init(struct mv_host_config *cfg);

/*
 * Create a host. cfg may be NULL (defaults). On success *out owns a host that must be
 * released with mv_host_free(). Errors: -EINVAL (bad config), -ENOMEM, -ENOSYS (the
 * kernel lacks asynchronous userfaultfd write-protect, UFFDIO_MOVE or PAGEMAP_SCAN:
 * Linux 6.8), -EPERM (userfaultfd denied:
 * see vm.unprivileged_userfaultfd).
 */
int mv_host_new(const struct mv_host_config *cfg, struct mv_host **out);

/* Stop the workers, unmerge and free every VM still attached, free the host. NULL is a no-op. */
void mv_host_free(struct mv_host *host);

/* Start / stop the background workers. Idempotent. Any thread. */
int mv_host_start(struct mv_host *host);
int mv_host_stop(struct mv_host *host);

/*
 * Run `passes` full scanning passes over every VM in the calling thread, without CPU
 * budget, then return. For tests, benchmarks and VMMs that schedule scanning
 * themselves. Returns -EBUSY while the background workers run or another thread is in
 * mv_host_scan(), mv_host_start() or mv_host_stop().
 */
int mv_host_scan(struct mv_host *host, unsigned passes);

/* Change the CPU budget of each background worker at run time (the policy engine
 * steers it). 0 < cores <= 1, else -EINVAL. Any thread; workers see it within a second. */
int mv_host_set_cpu_share(struct mv_host *host, double cores);

/* Counters, for a VM (mv_vm_stats), a trust domain or the whole host. */
struct mv_scan_stats {
	uint64_t pages_scanned;       /* pages hashed (first look or after a write) */
	uint64_t pages_shared;        /* canonical pages held in page stores */
	uint64_t pages_sharing;       /* guest pages backed by a canonical page, beyond the first
	                                 of each: the pages saved by sharing */
	uint64_t pages_merged;        /* guest pages backed by a canonical page */
	uint64_t pages_zero;          /* zero pages released (reads hit the kernel's zero page) */
	uint64_t pages_volatile;      /* pages found written again since the last look: not merged */
	uint64_t cow_breaks;          /* merged pages that got a private copy on write */
	uint64_t vmas_used;           /* mappings added by merging (estimate, see README) */
	uint64_t pages_left_vma_budget; /* merge attempts refused because of the VMA budget */
	uint64_t pages_left_thp;      /* pages not merged to keep a THP whole */
	uint64_t cow_debt_bytes;      /* memory needed if every shared and zero page were written */
	uint64_t full_scans;          /* complete passes */
	uint64_t cpu_ns;              /* CPU time spent scanning (workers and fault handling) */
	uint64_t write_faults;        /* guest accesses the engine made wait (a page being replaced) */
	uint64_t writer_wait_ns;      /* total time those accesses waited */
	uint64_t writer_wait_max_ns;  /* the longest single wait */
	uint64_t chunks_backed_off;   /* visits skipped because the chunk keeps being written */
};

/* Host-wide totals. */
int mv_host_stats(struct mv_host *host, struct mv_scan_stats *out);

/* Totals of one trust domain by name. -ENOENT if no VM is in that domain. */
int mv_domain_stats(struct mv_host *host, const char *domain, struct mv_scan_stats *out);

#ifdef __cplusplus
}
#endif
#endif
