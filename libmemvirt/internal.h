/* internal.h - libmemvirt's private types: host, trust domain, VM, region, counters. */
#ifndef MV_INTERNAL_H
#define MV_INTERNAL_H

#include <memvirt/memvirt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <urcu-bp.h>
#include <urcu/rculfhash.h>
#include <urcu/list.h>

#include "prim.h"

#define MV_API __attribute__((visibility("default")))

/* Counters kept at three levels (VM, its domain, the host), updated together. */
enum mv_counter {
	MV_C_SCANNED, MV_C_MERGED, MV_C_SHARED, MV_C_ZERO, MV_C_VOLATILE, MV_C_COW_BREAKS,
	MV_C_VMAS, MV_C_LEFT_VMA, MV_C_LEFT_THP, MV_C_CPU_NS, MV_C_FULL_SCANS, MV_C_WRITE_FAULTS,
	MV_C_WAIT_NS, MV_C_WAIT_MAX_NS /* a maximum, not a sum */, MV_C_BACKED_OFF, MV_C_NR
};
struct mv_counters { _Atomic int64_t v[MV_C_NR]; };

struct mv_page;   /* scanner state of one guest page: ksm-scanner/ksm.h */
struct mv_chunk_sched;
struct mv_store;

/* One registered memslot. Immutable after publication except `dead` and the page states,
 * which only the worker that holds the VM (vm->busy) or the region's remover touch. */
struct mv_region {
	uint64_t serial;         /* unique in its host, never reused (the struct's address
	                            may be: malloc hands a removed region's memory out again) */
	uint32_t slot, flags;
	uint64_t gpa, size, npages;
	uint8_t *hva;
	struct mv_vm *vm;
	bool mergeable;          /* private anonymous and not MV_REGION_NEVER_MERGE */
	bool registered;         /* with the host's userfaultfd */
	bool shared;             /* MAP_SHARED (e.g. a memfd for vhost-user): released with
	                            MADV_REMOVE, since MADV_DONTNEED would keep the pages */
	bool file;               /* a private mapping of a file, in part (memfd, tmpfs, store
	                            mappings left from an earlier registration): released by
	                            mapping anonymous memory over the pages, since after
	                            MADV_DONTNEED they would read the file again */
	uint64_t page_size;      /* bytes: MV_PAGE_SIZE, or hugetlbfs's huge page size (only
	                            whole huge pages can be released) */
	pthread_mutex_t lock;    /* one of: a worker visiting a chunk, a release, a hint
	                            completion (guards the page states and mappings) */
	_Atomic bool dead;       /* being removed: readers must not touch hva */
	struct mv_page *pages;   /* npages entries */
	uint32_t *sum;           /* per page: low 32 bits of its hash at its last look */
	uintptr_t chunk0;        /* hva >> 21 of the first page: chunks are 2 MiB of hva */
	uint64_t nr_chunks;
	struct mv_chunk_sched *sched; /* per chunk, under lock: when to look at it again */
	_Atomic long vmas;       /* mappings added by merging in this region */
	/* Bit per page, owned by the VM's balloon device: */
	_Atomic uint64_t *ballooned; /* in the balloon (set by inflate, cleared by deflate) */
	_Atomic uint64_t *hinted;    /* hinted free by the guest in the current hint run */
	_Atomic uint64_t *hint_clean; /* write-protected without a break since the hint run
	                                began: any path that lifts a page's protection, moves
	                                or releases it clears the bit (mv__hint_forget) */
	struct rcu_head rcu;
};

/* RCU-published, sorted by gpa, replaced whole on every change. */
struct mv_region_map {
	unsigned n;
	struct mv_region *r[];
};

/* A trust domain: pages merge only inside one. Owns its content index and page stores. */
struct mv_domain {
	struct cds_list_head link;     /* host->domains, under host->lock */
	char name[80];
	int refs;                      /* VMs in it, under host->lock */
	struct mv_host *host;
	struct cds_lfht *index;        /* content hash -> struct mv_node */
	pthread_mutex_t lock;          /* serialises index changes and slot allocation */
	unsigned nr_stores;
	struct mv_store **stores;      /* one per NUMA node */
	_Atomic int64_t unstable;      /* unstable nodes in the index */
	_Atomic int64_t pages;         /* guest pages of mergeable regions in the domain */
	struct mv_counters c;
};

struct mv_vm {
	struct cds_list_head link;     /* host->vms, under host->lock */
	struct mv_host *host;
	char name[64];
	struct mv_domain *dom;
	struct mv_region_map *map;     /* RCU pointer; writers hold vm->lock */
	pthread_mutex_t lock;          /* region add/remove, merging switch */
	bool merging;                  /* under vm->lock; read by workers */
	bool busy;                     /* a worker is scanning it, under host->lock */
	bool dying;                    /* under host->lock */
	struct mv_counters c;
};

/* Replace windows: the 2 MiB chunk each worker is replacing pages in, where guest
 * accesses to pages in flight wait (ksm-scanner/track.c). The fault handler notes when
 * each waiting access arrived; the worker accounts the waits when it closes the window. */
#define MV_MAX_WORKERS 16
#define MV_GATE_SYNC   MV_MAX_WORKERS       /* mv_host_scan() */
#define MV_GATES       (MV_MAX_WORKERS + 1)
#define MV_HELD_MAX    64                   /* waits timed per window; more are counted */
struct mv_batch_gate {
	pthread_mutex_t lock;
	uintptr_t lo[MV_GATES], hi[MV_GATES]; /* open windows, 0 = none */
	struct mv_vm *vm[MV_GATES];
	unsigned nheld[MV_GATES];
	uint64_t held_ns[MV_GATES][MV_HELD_MAX]; /* arrival of each waiting access */
	uint64_t untimed[MV_GATES];              /* waiting accesses beyond MV_HELD_MAX */
};

struct mv_host {
	struct mv_host_config cfg;
	struct mv_topology topo;
	const struct mv_prim *prim;
	int uffd, pagemap_fd, stop_fd;
	bool uffd_shmem;               /* store mappings can be write-protected too */
	uint8_t secret[192];           /* XXH3 secret: a guest cannot aim at one bucket */
	uint64_t zero_hash;
	pthread_mutex_t lock;          /* vms, domains, workers, busy flags */
	pthread_mutex_t ctl_lock;      /* serialises start, stop and mv_host_scan() */
	pthread_cond_t idle;           /* a VM stopped being busy */
	struct cds_list_head vms, domains;
	struct mv_batch_gate gate;
	pthread_t fault_thread;
	bool fault_thread_up;
	pthread_t workers[MV_MAX_WORKERS];
	unsigned nr_workers;
	atomic_bool stopping;
	_Atomic uint64_t region_serial; /* the last serial given to a region */
	_Atomic long vma_limit;        /* mappings the scanner may hold */
	_Atomic uint64_t cpu_share_ppm; /* per worker, in millionths of a core */
	_Atomic int64_t fault_cpu_ns;
	uint64_t vma_checked_ns;       /* last auto-budget refresh */
	long vma_max;                  /* vm.max_map_count at that refresh */
	struct mv_counters c;
};

/* counters.c */
void mv__count(struct mv_vm *vm, enum mv_counter which, int64_t delta);
void mv__count_max(struct mv_vm *vm, enum mv_counter which, int64_t value);
void mv__counters_to_stats(const struct mv_counters *c, struct mv_scan_stats *out);

/* log.c */
void mv__log(struct mv_host *h, enum mv_log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* vm.c */
struct mv_region *mv__region_of_gpa(struct mv_region_map *map, uint64_t gpa);
int mv__vm_hold_next(struct mv_host *h, struct mv_vm *after, struct mv_vm **out);
void mv__vm_release(struct mv_vm *vm);
void mv__vm_remove_all(struct mv_vm *vm);
/* Guest RAM of the VM: the sum of its regions' sizes (RCU read side inside). */
uint64_t mv__vm_ram_bytes(struct mv_vm *vm);

/* domain.c */
int mv__domain_get(struct mv_host *h, const char *name, struct mv_domain **out);
void mv__domain_put(struct mv_domain *d);

/*
 * Giving guest pages back to the host, for the balloon device: ksm-scanner/release.c.
 * Ranges are page indexes of one region [first, first + n). The caller keeps the region
 * alive (rcu_read_lock, or the VM's region lock) and has checked the ranges.
 */
struct mv_prange { uint64_t first, n; };
/* Release the pages: they read as zero afterwards. Anonymous pages go with one
 * MADV_DONTNEED vector per batch, pages of a MAP_SHARED region with MADV_REMOVE, and
 * pages the scanner mapped onto a page store, or of a private file mapping, get
 * anonymous memory mapped over them (dropping their share; charged to the VMA budget:
 * when it is spent they are left as they are and counted in pages_left_vma_budget). Takes r->lock. 0 or the first -errno (the rest is still tried). */
int mv__region_discard(struct mv_host *h, struct mv_region *r, const struct mv_prange *ranges,
                       size_t n);
/*
 * Free page hinting, in three steps (see release.c):
 * begin: at the start of a hint run, before the guest can hint anything, write-protect
 *   the whole region and set every page's hint_clean bit; -ENOTSUP when the region's
 *   writes cannot be tracked (then nothing hinted there is ever released).
 * arm: the guest hinted [first, first+n): set the hinted bits.
 * complete: release the pages of the range that are hinted and were never written since
 *   the run began, atomically against guest writes (a write at any moment wins); clear
 *   the bits. *released counts the pages released.
 */
int mv__region_hint_begin(struct mv_host *h, struct mv_region *r);
int mv__region_hint_arm(struct mv_host *h, struct mv_region *r, uint64_t first, uint64_t n);
int mv__region_hint_complete(struct mv_host *h, struct mv_region *r, uint64_t first, uint64_t n,
                             uint64_t *released);
/* Pages [first, first+n) may have been written unseen: they can no longer be hinted away. */
void mv__hint_forget(struct mv_region *r, uint64_t first, uint64_t n);

static inline bool mv__bit_test(_Atomic uint64_t *map, uint64_t i)
{
	return atomic_load_explicit(&map[i / 64], memory_order_relaxed) & (1ull << (i % 64));
}
/* Set / clear bit i; returns its previous value. */
static inline bool mv__bit_set(_Atomic uint64_t *map, uint64_t i)
{
	return atomic_fetch_or(&map[i / 64], 1ull << (i % 64)) & (1ull << (i % 64));
}
static inline bool mv__bit_clear(_Atomic uint64_t *map, uint64_t i)
{
	return atomic_fetch_and(&map[i / 64], ~(1ull << (i % 64))) & (1ull << (i % 64));
}

/* The per-host fault handler and the batch gate: ksm-scanner/track.c */
int mv__track_start(struct mv_host *h);
void mv__track_stop(struct mv_host *h);
void mv__gate_enter(struct mv_host *h, unsigned worker, struct mv_vm *vm, void *lo, size_t len);
void mv__gate_leave(struct mv_host *h, unsigned worker);

#endif
