/* ksm.h - the page-sharing scanner's private types: page states, index nodes, page stores. */
#ifndef MV_KSM_H
#define MV_KSM_H

#include "internal.h"

/* Life of a guest page, as the scanner sees it. */
enum mv_pstate {
	PS_NEW = 0,  /* not tracked: never seen, or seen changing (its sum says how it was at
	                the last look); or a private copy left in a store mapping */
	PS_CLEAN,    /* stable: write-protected before the hash that found it unchanged since
	                the look before; in the index; unique so far */
	PS_ZERO,     /* released: reads hit the kernel's zero page */
	PS_MERGED,   /* backed by a canonical page of the store, copy-on-write */
};

#define PF_RETRY 0x1 /* stable but left unmerged (VMA budget): look it up again */
#define PF_SUM   0x2 /* region->sum[] holds this page's content at its last look */
#define PF_ANON  0x4 /* region->file: anonymous memory was mapped over this page */

/* When the scanner looks at a chunk again. A chunk with pages seen once or seen changing
 * waits settle_ms before its next look; each look that finds pages changing again
 * doubles the wait (back-off). A chunk where everything is stable costs a PAGEMAP_SCAN
 * per look (a page walk, dearer with one mapping per isolated duplicate): it rests
 * settle_ms after its first quiet look, doubling while it stays quiet. Both stop doubling
 * at MV_BACKOFF_MAX doublings. Finding a page's twin, or releasing pages, makes the chunk
 * due at once. */
#define MV_BACKOFF_MAX 4
struct mv_chunk_sched {
	_Atomic uint64_t due_ns; /* monotonic; 0 = on the next pass */
	uint8_t backoff;         /* doublings of settle_ms while pages keep changing */
	uint8_t rest;            /* doublings of settle_ms while the chunk stays quiet */
};

#define MV_VKEY_ANON 0 /* store keys are never 0: store ids start at 1 */
#define MV_VKEY_FILE -1 /* region->file: the mapping the region came with (store keys are
                           positive); counted as one, which can only overestimate */
#define MV_SLOT_ANON 0 /* slot 0 is never allocated (extent 0 stays unused) */

/* 8 bytes per guest page: this array is most of memvirt's memory. The content hash is
 * not kept: a page is hashed when it is looked at, and its unstable node holds it. */
struct mv_page {
	uint32_t slot;          /* store slot the page's mapping points at (PS_MERGED: its
	                           canonical page, one reference held); MV_SLOT_ANON when the
	                           page lives in the guest's own anonymous mapping */
	uint8_t nid;            /* store (NUMA node) of `slot` */
	uint8_t state, flags;
	_Atomic uint8_t rescan; /* set by another worker: this page's twin was found */
};

/* An index entry. Unstable: one guest page seen with this content. Stable: a canonical
 * page in the store that `refs` guest pages map. Freed through call_rcu. */
struct mv_node {
	struct cds_lfht_node lf;
	uint64_t hash;
	union {
		struct {
			_Atomic int32_t refs;      /* stable: guest pages mapped to it; 0 = dying */
			uint32_t slot;             /* stable: page slot in the node's store */
		};
		struct mv_region *region;  /* unstable: where the page lives... */
	};
	uint32_t idx;              /* ...and its index there */
	uint16_t nid;              /* NUMA node of its store (0 with cross_node_merge) */
	bool stable;
	struct rcu_head rcu;
};

/* A domain's page store for one NUMA node: a sparse memfd cut in 2 MiB extents placed
 * at random offsets, so that canonical pages land in fresh, unpredictable slots. */
struct mv_store {
	int fd;
	uint32_t id, nid;
	uint8_t *view;             /* shared mapping of the whole file, for compare and fill */
	uint32_t nr_extents;
	uint64_t *ext_used;        /* bit per extent */
	struct mv_extent **ext;    /* lazily allocated */
	uint32_t free_extents;
	uint32_t open_extent;      /* the last fresh extent: sparse ones take isolated pages */
};

struct mv_extent {
	uint64_t bits[MV_CHUNK_PAGES / 64];   /* allocated slots */
	unsigned live;
	struct mv_node *node[MV_CHUNK_PAGES]; /* stable node of each slot (RCU pointers) */
};

/* store.c - callers hold the domain lock for alloc/free. */
int mv__store_new(struct mv_host *h, uint32_t id, uint32_t nid, struct mv_store **out);
void mv__store_free_all(struct mv_store *s);
static inline uint8_t *mv__store_page(const struct mv_store *s, uint32_t slot)
{
	return s->view + (uint64_t)slot * MV_PAGE_SIZE;
}
int mv__store_alloc(struct mv_store *s, int64_t preferred, uint32_t *slot);
void mv__store_release(struct mv_host *h, struct mv_store *s, uint32_t slot);
void mv__store_bind(struct mv_store *s, uint32_t slot, struct mv_node *n);
struct mv_node *mv__store_node(const struct mv_store *s, int64_t slot);
void mv__store_punch_unused(struct mv_host *h, struct mv_store *s, uint32_t slot);
static inline int64_t mv__vkey(const struct mv_store *s, uint32_t slot, uintptr_t hva)
{
	return ((int64_t)s->id << 48) + (int64_t)slot - (int64_t)(hva >> MV_PAGE_SHIFT);
}

/* The mapping key of page k of r: neighbours with equal keys share one VMA. */
static inline int64_t mv__page_vkey(const struct mv_region *r, uint64_t k)
{
	const struct mv_page *p = &r->pages[k];
	if (p->slot == MV_SLOT_ANON)
		return r->file && !(p->flags & PF_ANON) ? MV_VKEY_FILE : MV_VKEY_ANON;
	return mv__vkey(r->vm->dom->stores[p->nid], p->slot, (uintptr_t)(r->hva + k * MV_PAGE_SIZE));
}

/* Chunks: 2 MiB of host address space, the unit of a scanner batch. */
static inline uint64_t mv__chunk_of(const struct mv_region *r, const void *addr)
{
	return ((uintptr_t)addr >> 21) - r->chunk0;
}

/* Ask for page idx of r to be looked up again, soon: its twin was found. */
static inline void mv__rescan(struct mv_region *r, uint64_t idx)
{
	atomic_store(&r->pages[idx].rescan, 1);
	atomic_store_explicit(&r->sched[mv__chunk_of(r, r->hva + idx * MV_PAGE_SIZE)].due_ns, 0,
	                      memory_order_relaxed);
}

/* The canonical page's node of a PS_MERGED page (we hold a reference: it is alive). */
static inline struct mv_node *mv__page_node(const struct mv_region *r, const struct mv_page *p)
{
	return mv__store_node(r->vm->dom->stores[p->nid], p->slot);
}

/* index.c - lookups under rcu_read_lock; changes take the domain lock. */
int mv__index_new(struct mv_domain *d);
void mv__index_free(struct mv_domain *d);
struct mv_node *mv__index_find(struct mv_domain *d, uint64_t hash, uint32_t nid);
void mv__index_size_for(struct mv_domain *d, int64_t pages);
void mv__index_add_unstable(struct mv_domain *d, uint64_t hash, uint32_t nid,
                            struct mv_region *r, uint64_t idx, struct mv_node *stale);
void mv__index_drop_region(struct mv_domain *d, const struct mv_region *r);
int mv__index_promote(struct mv_domain *d, struct mv_node *old, uint64_t hash, uint32_t nid,
                      const void *content, int64_t preferred, struct mv_node **out);
bool mv__node_get(struct mv_node *n);
void mv__node_put(struct mv_domain *d, struct mv_node *n, int32_t refs);

/* merge.c: the VMA estimate. Mappings added if pages [a, b) of r took mapping `key`. */
long mv__vma_delta(const struct mv_region *r, uint64_t a, uint64_t b, int64_t key);
void mv__vmas_account(struct mv_region *r, long delta);
/* Charge `delta` mappings to the host's VMA budget; false (nothing charged) if spent. */
bool mv__vma_charge(struct mv_host *h, long delta);
/* madvise(MADV_DONTFORK) on a mapping just made over guest RAM; a failure is logged. */
void mv__dontfork(struct mv_host *h, void *addr, size_t len);

/* scan.c */
struct mv_scan_ctx {
	struct mv_host *h;
	unsigned worker;
	double cpu_share;          /* > 0: throttled to the host's cpu_share_ppm; <= 0: unlimited */
	uint64_t win_wall, win_cpu, win_fault; /* start of the current throttle window */
	uint8_t *hold;             /* 2 MiB where pages in flight wait (merge.c), lazily made */
};
void mv__scan_ctx_fini(struct mv_scan_ctx *ctx);
struct mv_chunk_sched *mv__sched_new(uint64_t nr_chunks);
void mv__scan_vm(struct mv_scan_ctx *ctx, struct mv_vm *vm);
int mv__region_unmerge(struct mv_host *h, struct mv_region *r);
void mv__region_forget(struct mv_host *h, struct mv_region *r);
void mv__region_unprotect(struct mv_host *h, struct mv_region *r);
#define MV_UNSTABLE_SLACK 4096
void mv__domains_prune(struct mv_host *h);
uint64_t mv__hash_page(const struct mv_host *h, const void *page);
uint64_t mv__hash_page_avx2(const void *secret, size_t secret_len, const void *page);
void mv__vma_refresh(struct mv_host *h, bool force);

#endif
