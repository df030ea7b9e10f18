/* workload.h - simulated guests with workloads: content profiles, behaviour threads and
 * the proof that no write was lost (tests and `memvirt density` build on it).
 *
 * A simulated guest (struct mvw_guest) is a hosted balloon guest (hosted/sim.h: guest
 * RAM registered as memvirt regions, the guest page allocator, the virtio-balloon device
 * and the guest driver in a thread) plus a workload: a content profile that decides what
 * the guest's RAM holds after boot, and a behaviour thread that keeps writing,
 * allocating and freeing while the host merges, releases and balloons underneath it.
 *
 * Every page the workload holds has its expected content recorded as a compact
 * descriptor (role, seed, version), from which the bytes are regenerated on demand:
 * mvw_verify() compares every held page with it, byte for byte.
 *
 * Content that is "the same image" (kernel, libraries, page cache; whole RAM for clones)
 * is generated from image_seed, so two guests with the same image_seed hold identical
 * pages; private data is generated from guest_seed and is unique to the guest.
 *
 * Threads: all functions may be called from any thread, one guest at a time per call,
 * except that mvw_guest_free() must not race with any other call on the same guest.
 * The behaviour thread and mvw_verify() take the guest's lock per page, so verifying a
 * running guest is exact: a page is compared with the content the workload last wrote.
 */
#ifndef MVW_WORKLOAD_H
#define MVW_WORKLOAD_H

#include <stdbool.h>
#include <stdint.h>
#include <memvirt/memvirt.h>
#include "hosted/sim.h"

/* What a held page is. */
enum mvw_role {
	MVW_NONE = 0,   /* not held by the workload (free, ballooned, or the driver's) */
	MVW_ZERO,       /* in use, all zero */
	MVW_KERNEL,     /* kernel image: image content, same GPAs in every guest of the image */
	MVW_LIB,        /* shared libraries and binaries: image content, scattered GPAs */
	MVW_CACHE,      /* page cache of common files: image content, scattered, reclaimable */
	MVW_ANON,       /* private anonymous data (db: the buffer pool); churned */
	MVW_BURST,      /* a short-lived allocation burst */
	MVW_NR_ROLES
};

/* A content profile with its default size. Fractions are per mille of guest RAM pages;
 * RAM not covered by them is free and never touched. Static, owned by the library. */
struct mvw_profile {
	const char *name;           /* "idle", "web", "db", "clones" */
	const char *what;           /* one line for humans */
	uint64_t ram_bytes;         /* default guest size */
	unsigned kernel, lib, cache, anon, zero; /* held at boot, per mille of RAM */
	unsigned stale;             /* free but written once (stale unique data), per mille */
	bool snapshot;              /* clones: every page (layout, private data, stale free
	                               pages) comes from the image, then dirty_permille of
	                               RAM is rewritten with the guest's own content */
	unsigned dirty_permille;
	/* Behaviour: each second, churn_permille of the working set (ws_permille of the
	 * anon pages) is rewritten with new private content. */
	unsigned ws_permille, churn_permille;
	/* Allocation bursts: burst_permille of RAM allocated, filled, held for hold_ms, freed;
	 * one starts every interval_ms on average. 0 = none. */
	unsigned burst_permille, burst_interval_ms, burst_hold_ms;
};

/* The profile called name, or NULL. mvw_profile_at(i) enumerates them (NULL past the end). */
const struct mvw_profile *mvw_profile_find(const char *name);
const struct mvw_profile *mvw_profile_at(unsigned i);

struct mvw_config {
	const struct mvw_profile *profile; /* required: mvw_profile_find()'s, or the caller's
	                              own (tests shorten bursts this way); must outlive the guest */
	const char *name;          /* VM name, required; copied */
	const char *domain;        /* trust domain: NULL = the profile's name (guests of one
	                              profile share), "" = a domain of the VM's own */
	uint64_t image_seed;       /* image content: 0 = derived from the profile's name */
	uint64_t guest_seed;       /* private content and layout: 0 = derived from name */
	uint64_t ram_bytes;        /* 0 = profile->ram_bytes * scale, rounded up to 2 MiB */
	double scale;              /* 0 = 1 */
	const struct mvg_sim_config *sim; /* base simulated-guest settings (driver floor,
	                              features, THP, ...), NULL = mvg_sim_config_init();
	                              name, domain and ram_bytes are overridden, and the
	                              driver always starts once RAM is filled */
	uint64_t tick_ns;          /* behaviour step; 0 = 50 ms */
};

void mvw_config_init(struct mvw_config *cfg);

struct mvw_guest;

/*
 * Create the simulated guest (a VM of host) and fill its RAM according to the profile,
 * then start its balloon driver; the behaviour thread is not started (mvw_start).
 * *out must be released with mvw_guest_free() before mv_host_free(). Errors: -EINVAL
 * (no profile or name, guest under 16 MiB), -ENOMEM (host or guest memory), and what
 * mvg_sim_new() returns.
 */
int mvw_guest_new(struct mv_host *host, const struct mvw_config *cfg, struct mvw_guest **out);
/* Stop the behaviour thread, free the simulated guest and its VM. NULL is a no-op. */
void mvw_guest_free(struct mvw_guest *g);

/* Start / stop the behaviour thread. Idempotent. 0 or -errno (pthread_create). */
int mvw_start(struct mvw_guest *g);
void mvw_stop(struct mvw_guest *g);

/* Compare every held page with its expected content (memcmp-exact). Returns the number
 * of pages checked; *mismatches (may be NULL) gets how many differ. Safe while the
 * behaviour thread runs. */
uint64_t mvw_verify(struct mvw_guest *g, uint64_t *mismatches);

struct mvw_stats {
	uint64_t held_pages;       /* pages the workload holds now */
	uint64_t role_pages[MVW_NR_ROLES]; /* of those, per role (MVW_NONE unused) */
	uint64_t free_pages;       /* free in the guest allocator now */
	uint64_t ram_pages;        /* guest RAM */
	uint64_t stale_pages;      /* written with unique data and freed at boot */
	uint64_t churn_writes;     /* private pages rewritten by the behaviour thread */
	uint64_t bursts, bursts_dropped; /* bursts started; dropped for want of memory */
	uint64_t burst_writes;     /* pages filled by bursts */
	uint64_t alloc_stalls;     /* allocations that found nothing free and reclaimed */
	uint64_t ooms;             /* allocations that failed even after reclaim and the
	                              balloon's deflate-on-OOM (the burst was dropped) */
	uint64_t reclaimed_pages;  /* page cache pages dropped under memory pressure */
	uint64_t refilled_pages;   /* page cache pages read back when memory was free */
	uint64_t fill_ns;          /* wall time of the boot-time fill in mvw_guest_new */
};

void mvw_stats(struct mvw_guest *g, struct mvw_stats *out);

/* One held page as the workload sees it. */
struct mvw_page {
	enum mvw_role role;
	bool image;                /* content from image_seed (else guest_seed) */
	uint64_t seed;             /* content index inside the image, or private page id */
	uint32_t version;          /* rewrites so far */
};

/* The page at gpa: 0, or -ENOENT if the workload does not hold it. */
int mvw_page_info(struct mvw_guest *g, uint64_t gpa, struct mvw_page *out);
/* The nth held page of a role in GPA order (n from 0): 0, or -ENOENT. O(RAM pages). */
int mvw_find_page(struct mvw_guest *g, enum mvw_role role, uint64_t n, uint64_t *gpa);

/* The simulated guest (VM, balloon device, driver, RAM); owned by g. */
struct mvg_sim *mvw_sim(struct mvw_guest *g);
const struct mvw_profile *mvw_profile(struct mvw_guest *g);
const char *mvw_role_name(enum mvw_role role);

/* Expected content of a page (4 KiB), for tests and tools that check a page by hand:
 * writes the bytes page p of g should hold into buf; -ENOENT if not held. */
int mvw_expected(struct mvw_guest *g, uint64_t gpa, void *buf);

#endif
