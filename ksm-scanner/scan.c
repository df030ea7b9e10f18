/* scan.c - the page-sharing scanner: compare-and-replace of guest pages, 2 MiB at a time.
 *
 * Overview
 *
 * Guest RAM regions are registered with the host's userfaultfd in write-protect mode.
 * A worker walks each region in 2 MiB chunks. For every chunk it:
 *
 *  0. closes the gate on the chunk (the fault handler will not let a writer go in it)
 *     and skips the chunk if it is quiet (fully protected, nothing pending) and the
 *     fault handler marked no write in it since the last visit.
 *  1. asks the kernel which pages changed (PAGEMAP_SCAN): a write-protected page that
 *     is "written" was written since it was hashed; a merged page that is no longer a
 *     file page got a private copy (COW break); a released zero page that is present
 *     and not the zero PFN was written. A page reported unwritten stays protected
 *     until the gate opens again.
 *  2. write-protects the pages it will look at, in one ioctl per stretch. From here on
 *     no write can land in them: writers sleep in the fault.
 *  3. hashes those pages (XXH3 with a per-host secret) and looks each hash up in the
 *     domain's index. The index only proposes; memcmp decides: against the zero page,
 *     a canonical page of the store (stable node), or another guest page seen once
 *     with that hash (unstable node), which is then promoted to a canonical page.
 *     A page that continues a run of merged pages is first compared with the next
 *     canonical page of the run, without hashing (cloned guests). A page written since
 *     its last look is volatile: protected again and merged next time only if it stayed
 *     unwritten (as ksmd does).
 *  4. releases zero pages (MADV_DONTNEED, one vector for the chunk) and maps duplicates
 *     onto store slots: the whole chunk at once when most of it equals one run of
 *     canonical pages (the few other pages are written back as private copies), else
 *     one mmap(MAP_PRIVATE|MAP_FIXED) per run of consecutive slots. Slots are allocated
 *     to continue the run of the previous page, so neighbouring mappings fuse into one
 *     VMA. Each mapping is charged to the VMA budget first; when it is spent, pages
 *     stay unmerged and are counted.
 *  5. protects the whole chunk if nothing is pending (it is then quiet), wakes the
 *     writers that slept in it and opens the gate. A writer whose page was merged
 *     retries its fault on the new mapping and gets a private copy: its write lands
 *     after the merge, never before, so no write is lost.
 */
#include "ksm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <xxh_x86dispatch.h>

enum { ACT_NONE, ACT_ZERO, ACT_MERGE };
enum { NEED_NO, NEED_HASH, NEED_LOOKUP };

struct chunk {
	struct mv_scan_ctx *ctx;
	struct mv_region *r;
	struct mv_domain *d;
	uint64_t first;          /* page index of the chunk's first page in the region */
	unsigned n;
	uint32_t nid;
	uint8_t cat[MV_CHUNK_PAGES];
	uint8_t need[MV_CHUNK_PAGES];
	uint8_t act[MV_CHUNK_PAGES];
	struct mv_node *tgt[MV_CHUNK_PAGES];
	int last_merge;          /* index of the last page given a target, -1 = none */
	int64_t scanned, volatile_pages, zero, merged, cow, left_vma, left_thp, predicted;
};

uint64_t mv__hash_page(const struct mv_host *h, const void *page)
{
	return XXH3_64bits_withSecret_dispatch(page, MV_PAGE_SIZE, h->secret, sizeof(h->secret));
}

static bool is_zero(const void *page)
{
	const uint64_t *w = page;
	uint64_t acc = 0;
	for (size_t i = 0; i < MV_PAGE_SIZE / 8; i++)
		acc |= w[i];
	return !acc;
}

static inline uint8_t *page_addr(const struct chunk *c, unsigned i)
{
	return c->r->hva + (c->first + i) * MV_PAGE_SIZE;
}

static inline struct mv_page *page_of(const struct chunk *c, unsigned i)
{
	return &c->r->pages[c->first + i];
}

/* Step 1: bring a page's state up to date with what the kernel reports. */
static uint8_t refresh(struct chunk *c, unsigned i)
{
	struct mv_page *p = page_of(c, i);
	uint8_t cat = c->cat[i];
	bool present = cat & MV_PAGE_IS_PRESENT;
	bool rescan = atomic_exchange(&p->rescan, 0);

	switch (p->state) {
	case PS_NEW:
		return present && !(cat & MV_PAGE_IS_PFNZERO) ? NEED_HASH : NEED_NO;
	case PS_CLEAN:
		if (!present) {
			if (!(cat & MV_PAGE_IS_SWAPPED))
				p->state = PS_NEW; /* dropped (by a balloon): nothing to share */
			return NEED_NO;
		}
		if (cat & MV_PAGE_IS_WRITTEN) {
			p->flags |= PF_RETRY;
			c->volatile_pages++;
			return NEED_HASH;
		}
		return rescan || (p->flags & PF_RETRY) ? NEED_LOOKUP : NEED_NO;
	case PS_ZERO:
		if (present && !(cat & MV_PAGE_IS_PFNZERO)) {
			p->state = PS_NEW;
			c->zero--; /* reused by the guest: no longer a released page */
			return NEED_HASH;
		}
		return NEED_NO;
	case PS_MERGED:
		if (present && !(cat & MV_PAGE_IS_FILE)) {
			mv__node_put(c->d, mv__page_node(c->r, p), 1);
			p->state = PS_NEW; /* a private copy inside the store mapping */
			c->cow++;
		}
		return NEED_NO;
	default:
		return NEED_NO;
	}
}

/* Step 2: write-protect the pages to look at, one ioctl per stretch of pages that are
 * not merged (merged pages need no protection: a write to them copies). */
static void protect(struct chunk *c)
{
	struct mv_host *h = c->ctx->h;
	unsigned i = 0;
	while (i < c->n) {
		if (!c->need[i]) {
			i++;
			continue;
		}
		unsigned a = i, b = i;
		while (b < c->n && page_of(c, b)->state != PS_MERGED)
			b++;
		unsigned last = a;
		for (unsigned k = a; k < b; k++)
			if (c->need[k])
				last = k;
		b = last + 1;
		if (h->prim->uffd_wp(h->uffd, page_addr(c, a), (size_t)(b - a) * MV_PAGE_SIZE, 1)) {
			/* cannot make it atomic: leave these pages, and let none of them serve as
			 * a twin (it may be unprotected) */
			memset(c->need + a, NEED_NO, b - a);
			for (unsigned k = a; k < b; k++)
				if (page_of(c, k)->state == PS_CLEAN)
					page_of(c, k)->state = PS_NEW;
		}
		i = b;
	}
}

/* Where the next canonical page should go so that this page's mapping fuses with the
 * previous merged page of the chunk. Negative: a fresh extent, at this in-chunk offset. */
static int64_t preferred_slot(const struct chunk *c, unsigned i)
{
	if (c->last_merge >= 0) {
		const struct mv_node *t = c->tgt[c->last_merge];
		if (t->nid == c->nid)
			return (int64_t)t->slot + (int64_t)i - c->last_merge;
	}
	return -1 - (int64_t)(((uintptr_t)page_addr(c, i) >> MV_PAGE_SHIFT) % MV_CHUNK_PAGES);
}

static void set_target(struct chunk *c, unsigned i, struct mv_node *n)
{
	c->act[i] = ACT_MERGE;
	c->tgt[i] = n;
	if ((int)i > c->last_merge)
		c->last_merge = (int)i;
}

/*
 * Guess that page i continues the run of the last merged page of the chunk (clones and
 * images: page i+1 equals canonical slot s+1) and check the guess with memcmp alone,
 * skipping the hash.
 */
static bool predict(struct chunk *c, unsigned i)
{
	if (c->last_merge < 0)
		return false;
	const struct mv_node *last = c->tgt[c->last_merge];
	struct mv_store *s = c->d->stores[last->nid];
	struct mv_node *n = mv__store_node(s, (int64_t)last->slot + (int64_t)i - c->last_merge);
	if (!n || !mv__node_get(n))
		return false;
	if (memcmp(page_addr(c, i), mv__store_page(s, n->slot), MV_PAGE_SIZE)) {
		mv__node_put(c->d, n, 1);
		return false;
	}
	page_of(c, i)->state = PS_CLEAN;
	c->predicted++;
	set_target(c, i, n);
	return true;
}

/* The other page of an unstable node, if it can still be read. rcu_read_lock held. */
static const uint8_t *twin_addr(const struct mv_node *n)
{
	const struct mv_region *r = n->region;
	if (atomic_load(&r->dead) || n->idx >= r->npages)
		return NULL;
	return r->hva + n->idx * MV_PAGE_SIZE;
}

/* Page i equals the page of unstable node n: make it canonical. Its twin merges now if it
 * is in this chunk (protected too), else on its chunk's next visit. */
static void promote(struct chunk *c, unsigned i, struct mv_node *n, uint64_t hash)
{
	struct mv_node *s;
	if (mv__index_promote(c->d, n, hash, c->nid, page_addr(c, i), preferred_slot(c, i), &s))
		return;
	set_target(c, i, s);
	uint64_t t = n->idx;
	if (n->region == c->r && t >= c->first && t < c->first + i &&
	    c->act[t - c->first] == ACT_NONE && page_of(c, t - c->first)->state == PS_CLEAN &&
	    mv__node_get(s))
		set_target(c, (unsigned)(t - c->first), s);
	else
		mv__rescan(n->region, t);
}

/* Step 3 for one page whose content is stable (write-protected). */
static void decide(struct chunk *c, unsigned i)
{
	struct mv_host *h = c->ctx->h;
	struct mv_page *p = page_of(c, i);
	const uint8_t *addr = page_addr(c, i);

	if (c->need[i] == NEED_HASH && p->state == PS_CLEAN)
		return; /* volatile: protected again, looked at next pass if unwritten */
	if (p->state == PS_NEW && predict(c, i))
		return;
	p->state = PS_CLEAN;
	p->flags &= (uint8_t)~PF_RETRY;
	uint64_t hash = mv__hash_page(h, addr);
	c->scanned++;
	if (hash == h->zero_hash && p->slot == MV_SLOT_ANON && is_zero(addr)) {
		c->act[i] = ACT_ZERO; /* (inside a store mapping, a dropped page would read the store) */
		return;
	}
	struct mv_node *n = mv__index_find(c->d, hash, c->nid);
	if (n && n->stable) {
		if (!mv__node_get(n))
			return;
		if (!memcmp(addr, mv__store_page(c->d->stores[n->nid], n->slot), MV_PAGE_SIZE))
			set_target(c, i, n);
		else
			mv__node_put(c->d, n, 1); /* 64-bit collision: stays unique */
		return;
	}
	bool self = n && n->region == c->r && n->idx == c->first + i;
	if (n && !self) {
		const uint8_t *twin = twin_addr(n);
		if (twin && !memcmp(addr, twin, MV_PAGE_SIZE)) {
			promote(c, i, n, hash);
			return;
		}
	}
	if (!self)
		mv__index_add_unstable(c->d, hash, c->nid, c->r, c->first + i, n);
}

/* Step 4a: release the zero pages of the chunk in one vector. */
static void release_zero(struct chunk *c)
{
	struct iovec iov[MV_CHUNK_PAGES];
	size_t k = 0;
	for (unsigned i = 0; i < c->n; i++) {
		if (c->act[i] != ACT_ZERO)
			continue;
		if (k && (uint8_t *)iov[k - 1].iov_base + iov[k - 1].iov_len == page_addr(c, i))
			iov[k - 1].iov_len += MV_PAGE_SIZE;
		else
			iov[k++] = (struct iovec){ page_addr(c, i), MV_PAGE_SIZE };
	}
	if (!k || c->ctx->h->prim->dontneed(iov, k))
		return;
	for (unsigned i = 0; i < c->n; i++)
		if (c->act[i] == ACT_ZERO) {
			page_of(c, i)->state = PS_ZERO;
			page_of(c, i)->flags &= (uint8_t)~PF_RETRY;
			c->zero++;
		}
}

/* Mappings added when pages [a, b) of the region take mapping `key`: boundaries between
 * neighbours with different keys, after minus before. */
static long vma_delta(const struct mv_region *r, uint64_t a, uint64_t b, int64_t key)
{
	long d = 0;
	uint64_t lo = a > 0 ? a - 1 : a, hi = b < r->npages ? b + 1 : b;
	for (uint64_t k = lo; k + 1 < hi; k++) {
		int64_t x = mv__page_vkey(r, k), y = mv__page_vkey(r, k + 1);
		int64_t nx = k >= a && k < b ? key : x, ny = k + 1 >= a && k + 1 < b ? key : y;
		d += (nx != ny) - (x != y);
	}
	return d;
}

static bool vma_charge(struct mv_host *h, long delta)
{
	if (delta <= 0) {
		atomic_fetch_add(&h->c.v[MV_C_VMAS], delta);
		return true;
	}
	int64_t used = atomic_fetch_add(&h->c.v[MV_C_VMAS], delta) + delta;
	if (used <= atomic_load(&h->vma_limit))
		return true;
	atomic_fetch_sub(&h->c.v[MV_C_VMAS], delta);
	return false;
}

/* Mappings charged to the host (vma_charge) are also counted for the region, VM, domain. */
static void account_vmas(struct chunk *c, long delta)
{
	atomic_fetch_add(&c->r->vmas, delta);
	atomic_fetch_add(&c->r->vm->c.v[MV_C_VMAS], delta);
	atomic_fetch_add(&c->d->c.v[MV_C_VMAS], delta);
}

/* Step 4b: map one run [a, b) of pages whose targets are consecutive slots of a store. */
static void map_run(struct chunk *c, unsigned a, unsigned b)
{
	struct mv_host *h = c->ctx->h;
	struct mv_store *s = c->d->stores[c->tgt[a]->nid];
	uintptr_t addr = (uintptr_t)page_addr(c, a);
	int64_t key = mv__vkey(s, c->tgt[a]->slot, addr);
	long delta = vma_delta(c->r, c->first + a, c->first + b, key);
	int err = -ENOSPC;

	if (vma_charge(h, delta)) {
		err = h->prim->map_private_fixed((void *)addr, (size_t)(b - a) * MV_PAGE_SIZE, s->fd,
		                                 (off_t)c->tgt[a]->slot * (off_t)MV_PAGE_SIZE);
		if (err)
			atomic_fetch_sub(&h->c.v[MV_C_VMAS], delta);
		else
			account_vmas(c, delta);
	}
	for (unsigned i = a; i < b; i++) {
		struct mv_page *p = page_of(c, i);
		if (err) {
			mv__node_put(c->d, c->tgt[i], 1);
			p->flags |= PF_RETRY;
			continue;
		}
		p->state = PS_MERGED;
		p->slot = c->tgt[i]->slot;
		p->nid = (uint8_t)c->tgt[i]->nid;
		p->flags &= (uint8_t)~PF_RETRY;
	}
	if (err == -ENOSPC) {
		c->left_vma += b - a;
	} else if (err) {
		c->left_vma += b - a;
		atomic_store(&h->vma_limit, atomic_load(&h->c.v[MV_C_VMAS])); /* the wall: stop */
		mv__log(h, MV_LOG_WARN, "mmap of a merged run failed (%s): merging paused until "
		        "mappings are freed or vm.max_map_count is raised", strerror(-err));
	} else {
		c->merged += b - a;
	}
}

/*
 * Step 4b, chunk mode: when most of a 2 MiB chunk equals one 2 MiB run of canonical pages
 * (guests cloned from one image), map the whole chunk onto that run with one mmap and
 * write the few differing pages back: they become private copies inside the same
 * mapping. One VMA for the chunk instead of two per differing page, and neighbouring
 * chunks fuse. The whole chunk is protected first (the gate is closed), so every byte
 * copied is final; the new mapping is built aside and swapped in with one mremap, so
 * no reader ever sees a half-built chunk and no write lands in between.
 */
#define CHUNK_MIN_MATCH (MV_CHUNK_PAGES * 3 / 4)

static bool chunk_fits(struct chunk *c, int64_t slot0, unsigned *back)
{
	unsigned match = 0, runs = 0;
	*back = 0;
	for (unsigned i = 0; i < c->n; i++) {
		const struct mv_page *p = page_of(c, i);
		bool tgt_here = c->act[i] == ACT_MERGE && c->tgt[i]->nid == c->tgt[c->last_merge]->nid &&
		                c->tgt[i]->slot == slot0 + i;
		runs += tgt_here && (i == 0 || c->act[i - 1] != ACT_MERGE);
		bool merged_here = p->state == PS_MERGED && p->nid == c->tgt[c->last_merge]->nid &&
		                   p->slot == slot0 + i;
		if (tgt_here || (c->act[i] != ACT_MERGE && merged_here))
			match++;
		else if (p->state == PS_MERGED || p->state == PS_ZERO || c->act[i] == ACT_ZERO ||
		         !(c->cat[i] & MV_PAGE_IS_PRESENT))
			return false; /* merged elsewhere, or zero: not worth a private copy */
		else
			(*back)++;
	}
	return match >= CHUNK_MIN_MATCH && runs >= 2;
}

/* Chunk mode needs every page of the chunk protected and each page merged there before
 * still mapping its canonical page (no private copy made since the chunk was read). */
static bool chunk_stable(struct chunk *c)
{
	struct mv_host *h = c->ctx->h;
	uint8_t cat[MV_CHUNK_PAGES];
	if (h->prim->uffd_wp(h->uffd, page_addr(c, 0), c->n * MV_PAGE_SIZE, 1) ||
	    h->prim->page_categories(h->pagemap_fd, page_addr(c, 0), c->n, cat))
		return false;
	for (unsigned i = 0; i < c->n; i++)
		if (page_of(c, i)->state == PS_MERGED && (cat[i] & MV_PAGE_IS_PRESENT) &&
		    !(cat[i] & MV_PAGE_IS_FILE))
			return false;
	return true;
}

/* Build the chunk's new mapping off to the side: the store run, with the pages that
 * differ written into it (private copies). The guest chunk is untouched meanwhile. */
static int chunk_build(struct chunk *c, struct mv_store *s, int64_t slot0, uint8_t **out)
{
	struct mv_host *h = c->ctx->h;
	void *aside;
	int err = h->prim->map_private(MV_CHUNK_SIZE, s->fd, (off_t)slot0 * (off_t)MV_PAGE_SIZE, &aside);
	if (err)
		return err;
	for (unsigned i = 0; i < c->n; i++)
		if (!(c->act[i] == ACT_MERGE && c->tgt[i]->slot == slot0 + i) && page_of(c, i)->state != PS_MERGED)
			memcpy((uint8_t *)aside + (size_t)i * MV_PAGE_SIZE, page_addr(c, i), MV_PAGE_SIZE);
	*out = aside;
	return 0;
}

static bool map_chunk(struct chunk *c)
{
	struct mv_host *h = c->ctx->h;
	if (c->n != MV_CHUNK_PAGES || c->last_merge < 0)
		return false;
	const struct mv_node *ref = c->tgt[c->last_merge];
	struct mv_store *s = c->d->stores[ref->nid];
	int64_t slot0 = (int64_t)ref->slot - c->last_merge;
	int64_t key = mv__vkey(s, ref->slot, (uintptr_t)page_addr(c, (unsigned)c->last_merge));
	unsigned back;
	if (slot0 <= 0 || slot0 + c->n > (int64_t)s->nr_extents * (int64_t)MV_CHUNK_PAGES ||
	    !chunk_fits(c, slot0, &back) || !chunk_stable(c))
		return false;
	long delta = vma_delta(c->r, c->first, c->first + c->n, key);
	if (!vma_charge(h, delta))
		return false;
	uint8_t *aside;
	if (chunk_build(c, s, slot0, &aside)) {
		atomic_fetch_sub(&h->c.v[MV_C_VMAS], delta);
		return false;
	}
	/* One atomic swap: a writer sleeping on a protected page of the chunk retries its
	 * fault on the new mapping and gets a private copy there. */
	if (h->prim->move_fixed(aside, MV_CHUNK_SIZE, page_addr(c, 0))) {
		h->prim->unmap(aside, MV_CHUNK_SIZE);
		atomic_fetch_sub(&h->c.v[MV_C_VMAS], delta);
		return false;
	}
	account_vmas(c, delta);
	pthread_mutex_lock(&c->d->lock);
	for (unsigned i = 0; i < c->n; i++) {
		struct mv_page *p = page_of(c, i);
		if (c->act[i] == ACT_MERGE && c->tgt[i]->slot == slot0 + i) {
			p->state = PS_MERGED;
			c->merged++;
		} else if (p->state != PS_MERGED) {
			mv__store_punch_unused(h, s, (uint32_t)(slot0 + i));
			p->state = PS_NEW; /* a private copy: looked at again next pass */
		}
		p->flags &= (uint8_t)~PF_RETRY;
		p->slot = (uint32_t)(slot0 + i);
		p->nid = (uint8_t)ref->nid;
	}
	pthread_mutex_unlock(&c->d->lock);
	for (unsigned i = 0; i < c->n; i++)
		if (c->act[i] == ACT_MERGE && c->tgt[i]->slot != slot0 + i)
			mv__node_put(c->d, c->tgt[i], 1);
	return true;
}

/* Step 4b for the chunk; then register the new mappings for write tracking, so that
 * pages that later get a private copy can be protected and merged again. */
static void map_merges(struct chunk *c)
{
	struct mv_host *h = c->ctx->h;
	int64_t before = c->merged;
	unsigned i = map_chunk(c) ? c->n : 0;
	while (i < c->n) {
		if (c->act[i] != ACT_MERGE) {
			i++;
			continue;
		}
		unsigned b = i + 1;
		while (b < c->n && c->act[b] == ACT_MERGE && c->tgt[b]->nid == c->tgt[i]->nid &&
		       c->tgt[b]->slot == c->tgt[i]->slot + (b - i))
			b++;
		map_run(c, i, b);
		i = b;
	}
	if (c->merged != before && h->uffd_shmem)
		h->prim->uffd_register_wp(h->uffd, page_addr(c, 0), c->n * MV_PAGE_SIZE);
}

static void flush_counters(struct chunk *c)
{
	struct mv_vm *vm = c->r->vm;
	mv__count(vm, MV_C_SCANNED, c->scanned);
	mv__count(vm, MV_C_VOLATILE, c->volatile_pages);
	mv__count(vm, MV_C_ZERO, c->zero);
	mv__count(vm, MV_C_MERGED, c->merged - c->cow);
	mv__count(vm, MV_C_COW_BREAKS, c->cow);
	mv__count(vm, MV_C_LEFT_VMA, c->left_vma);
	mv__count(vm, MV_C_LEFT_THP, c->left_thp);
}

static uint32_t node_of(struct mv_host *h, const void *hva)
{
	if (h->cfg.cross_node_merge || h->topo.nr_nodes < 2)
		return 0;
	int nid = h->topo.node_of(h->topo.opaque, hva);
	return nid < 0 || (unsigned)nid >= h->topo.nr_nodes ? 0 : (uint32_t)nid;
}

/* THP policy: returns false when the chunk must be left whole. */
static bool thp_allows(struct chunk *c, unsigned wanted)
{
	bool huge = false;
	for (unsigned i = 0; i < c->n && !huge; i++)
		huge = c->cat[i] & MV_PAGE_IS_HUGE;
	if (!huge)
		return true;
	struct mv_host *h = c->ctx->h;
	if (h->cfg.thp_policy == MV_THP_SPLIT) {
		/* Count pages that would share, reading without protecting (a guess only). */
		unsigned gain = 0;
		for (unsigned i = 0; i < c->n; i++) {
			if (!c->need[i])
				continue;
			uint64_t hash = mv__hash_page(h, page_addr(c, i));
			gain += hash == h->zero_hash || mv__index_find(c->d, hash, c->nid) != NULL;
		}
		if (gain >= h->cfg.thp_split_min)
			return true;
	}
	c->left_thp += wanted;
	return false;
}

/*
 * Step 5: can the chunk be skipped until the fault handler reports a write in it? Only
 * if nothing is pending (no volatile page, none left by the budget, none unhashed) and
 * every page of it is write-protected now, merged ones included: then no write can
 * happen without a fault. Needs empty ptes to be protectable (WP_UNPOPULATED).
 */
static bool settle(struct chunk *c)
{
	struct mv_host *h = c->ctx->h;
	if (!h->uffd_unpopulated)
		return false;
	for (unsigned i = 0; i < c->n; i++) {
		const struct mv_page *p = page_of(c, i);
		if ((p->flags & PF_RETRY) || atomic_load(&p->rescan))
			return false;
		if (p->state == PS_NEW && (c->cat[i] & MV_PAGE_IS_PRESENT) && !(c->cat[i] & MV_PAGE_IS_PFNZERO))
			return false;
	}
	return !h->prim->uffd_wp(h->uffd, page_addr(c, 0), c->n * MV_PAGE_SIZE, 1);
}

/* The whole per-chunk algorithm of the overview. rcu_read_lock held, region alive.
 * The gate is closed before the kernel is asked which pages changed: a page reported
 * unwritten stays write-protected until the gate opens again. */
static void scan_chunk(struct mv_scan_ctx *ctx, struct mv_region *r, uint64_t first, unsigned n)
{
	struct mv_host *h = ctx->h;
	struct chunk *c = &(struct chunk){ .ctx = ctx, .r = r, .d = r->vm->dom, .first = first,
	                                   .n = n, .last_merge = -1 };
	uint8_t *hva = r->hva + first * MV_PAGE_SIZE;

	mv__gate_enter(h, ctx->worker, hva, n * MV_PAGE_SIZE);
	uint64_t id = mv__chunk_of(r, hva);
	bool dirty = mv__take_dirty(r, id);
	if (r->quiet[id] && !dirty && !atomic_load(&h->marks_lost)) {
		mv__gate_leave(h, ctx->worker);
		return; /* nothing written since the last visit: the fault handler would know */
	}
	r->quiet[id] = 0;
	if (!h->prim->page_categories(h->pagemap_fd, hva, n, c->cat)) {
		unsigned wanted = 0;
		for (unsigned i = 0; i < n; i++)
			wanted += (c->need[i] = refresh(c, i)) != NEED_NO;
		c->nid = node_of(h, hva);
		if (wanted && thp_allows(c, wanted)) {
			protect(c);
			for (unsigned i = 0; i < n; i++)
				if (c->need[i])
					decide(c, i);
			release_zero(c);
			map_merges(c);
		}
		r->quiet[id] = settle(c);
		h->prim->uffd_wake(h->uffd, hva, n * MV_PAGE_SIZE);
	}
	mv__gate_leave(h, ctx->worker);
	flush_counters(c);
}

static bool map_holds(const struct mv_region_map *map, const struct mv_region *r)
{
	for (unsigned i = 0; map && i < map->n; i++)
		if (map->r[i] == r)
			return true;
	return false;
}

/* Keep the worker within its CPU share: sleep off what it spent beyond it, measured
 * over windows of about a second. */
static void throttle(struct mv_scan_ctx *ctx)
{
	if (ctx->cpu_share <= 0)
		return;
	uint64_t wall = mv__mono_ns(), cpu = mv__thread_cpu_ns();
	if (!ctx->win_wall || wall - ctx->win_wall > 1000000000ull) {
		ctx->win_wall = wall;
		ctx->win_cpu = cpu;
		return;
	}
	double owed = (double)(cpu - ctx->win_cpu) / ctx->cpu_share - (double)(wall - ctx->win_wall);
	if (owed > 1e6) {
		struct timespec ts = { (time_t)(owed / 1e9), (long)((uint64_t)owed % 1000000000ull) };
		nanosleep(&ts, NULL);
	}
}

/* One pass over every region of vm. The caller holds vm (vm->busy). */
void mv__scan_vm(struct mv_scan_ctx *ctx, struct mv_vm *vm)
{
	for (unsigned ri = 0;; ri++) {
		rcu_read_lock();
		struct mv_region_map *map = rcu_dereference(vm->map);
		if (!map || ri >= map->n) {
			rcu_read_unlock();
			return;
		}
		struct mv_region *r = map->r[ri];
		uint64_t idx = 0;
		while (idx < r->npages && r->mergeable && !atomic_load(&r->dead) &&
		       __atomic_load_n(&vm->merging, __ATOMIC_ACQUIRE) && !atomic_load(&ctx->h->stopping)) {
			uintptr_t at = (uintptr_t)(r->hva + idx * MV_PAGE_SIZE);
			uint64_t n = (MV_CHUNK_SIZE - (at & (MV_CHUNK_SIZE - 1))) >> MV_PAGE_SHIFT;
			if (n > r->npages - idx)
				n = r->npages - idx;
			scan_chunk(ctx, r, idx, (unsigned)n);
			idx += n;
			rcu_read_unlock();
			throttle(ctx);
			rcu_read_lock();
			if (!map_holds(rcu_dereference(vm->map), r))
				break; /* removed while we were out: r may be gone */
		}
		rcu_read_unlock();
	}
}

/*
 * Make every merged page of r private again (MADV_POPULATE_WRITE breaks copy-on-write
 * without changing a byte, atomically for concurrent writers) and drop its references.
 * No worker may be scanning r. -ENOMEM if the host lacks memory for the copies.
 */
int mv__region_unmerge(struct mv_host *h, struct mv_region *r)
{
	int err = 0;
	uint64_t i = 0, merged = 0;
	while (i < r->npages) {
		if (r->pages[i].state != PS_MERGED) {
			i++;
			continue;
		}
		uint64_t b = i;
		while (b < r->npages && r->pages[b].state == PS_MERGED)
			b++;
		/* lift write protection first, or every page would go through the fault handler */
		h->prim->uffd_wp(h->uffd, r->hva + i * MV_PAGE_SIZE, (b - i) * MV_PAGE_SIZE, 0);
		int e = h->prim->populate_write(r->hva + i * MV_PAGE_SIZE, (b - i) * MV_PAGE_SIZE);
		if (e) {
			err = e;
		} else {
			rcu_read_lock();
			for (uint64_t k = i; k < b; k++) {
				mv__node_put(r->vm->dom, mv__page_node(r, &r->pages[k]), 1);
				r->pages[k].state = PS_NEW;
			}
			rcu_read_unlock();
			merged += b - i;
		}
		i = b;
	}
	mv__count(r->vm, MV_C_MERGED, -(int64_t)merged);
	memset(r->quiet, 0, r->nr_chunks);
	return err;
}

/* Merging is off: drop every write protection (re-registering clears them) so that the
 * guest no longer pays a fault per first write; pages are looked at afresh later. */
void mv__region_unprotect(struct mv_host *h, struct mv_region *r)
{
	if (!r->registered)
		return;
	h->prim->uffd_unregister(h->uffd, r->hva, r->size);
	if (h->prim->uffd_register_wp(h->uffd, r->hva, r->size)) {
		r->registered = r->mergeable = false;
		mv__log(h, MV_LOG_WARN, "vm %s slot %u: cannot track writes any more; its pages will "
		        "not be merged", r->vm->name, r->slot);
	}
	for (uint64_t i = 0; i < r->npages; i++)
		if (r->pages[i].state == PS_CLEAN)
			r->pages[i].state = PS_NEW;
	memset(r->quiet, 0, r->nr_chunks);
}

/* Drop the region's unstable index nodes; its pages can no longer be found. */
void mv__region_forget(struct mv_host *h, struct mv_region *r)
{
	int64_t zero = 0;
	for (uint64_t i = 0; i < r->npages; i++)
		zero += r->pages[i].state == PS_ZERO;
	mv__index_drop_region(r->vm->dom, r);
	mv__count(r->vm, MV_C_ZERO, -zero);
}

/* Every page of r is to be looked up again. Any thread (the flags are atomic). */
static void rescan_region(struct mv_region *r)
{
	for (uint64_t i = 0; i < r->npages; i++)
		atomic_store(&r->pages[i].rescan, 1);
	for (uint64_t k = 0; k < r->nr_chunks; k++)
		mv__mark_dirty(r, k);
}

/*
 * The unstable part of an index only grows: a page whose content changes leaves its old
 * node behind until someone else hits that hash. When a domain holds more unstable nodes
 * than it has pages, drop them all and let every page be looked up again (hashed once
 * more), as ksmd rebuilds its unstable tree.
 */
void mv__domains_prune(struct mv_host *h)
{
	pthread_mutex_lock(&h->lock);
	struct mv_domain *d;
	cds_list_for_each_entry(d, &h->domains, link) {
		if (atomic_load(&d->unstable) <= atomic_load(&d->pages) + MV_UNSTABLE_SLACK)
			continue;
		mv__index_drop_region(d, NULL);
		struct mv_vm *vm;
		cds_list_for_each_entry(vm, &h->vms, link) {
			if (vm->dom != d)
				continue;
			rcu_read_lock();
			struct mv_region_map *m = rcu_dereference(vm->map);
			for (unsigned i = 0; m && i < m->n; i++)
				if (!atomic_load(&m->r[i]->dead))
					rescan_region(m->r[i]);
			rcu_read_unlock();
		}
	}
	pthread_mutex_unlock(&h->lock);
}
