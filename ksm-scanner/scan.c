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
#include "chunk.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <xxh_x86dispatch.h>

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

	pthread_mutex_lock(&r->lock);
	mv__gate_enter(h, ctx->worker, hva, n * MV_PAGE_SIZE);
	uint64_t id = mv__chunk_of(r, hva);
	bool dirty = mv__take_dirty(r, id);
	if (r->quiet[id] && !dirty && !atomic_load(&h->marks_lost)) {
		mv__gate_leave(h, ctx->worker);
		pthread_mutex_unlock(&r->lock);
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
			mv__release_zero(c);
			mv__map_merges(c);
		}
		r->quiet[id] = settle(c);
		h->prim->uffd_wake(h->uffd, hva, n * MV_PAGE_SIZE);
	}
	mv__gate_leave(h, ctx->worker);
	pthread_mutex_unlock(&r->lock);
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
	double share = (double)atomic_load(&ctx->h->cpu_share_ppm) / 1e6;
	uint64_t wall = mv__mono_ns(), cpu = mv__thread_cpu_ns();
	if (!ctx->win_wall || wall - ctx->win_wall > 1000000000ull) {
		ctx->win_wall = wall;
		ctx->win_cpu = cpu;
		return;
	}
	double owed = (double)(cpu - ctx->win_cpu) / share - (double)(wall - ctx->win_wall);
	if (owed > 1e9)
		owed = 1e9; /* look at the share again within a second */
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
