/* merge.c - step 4 of the scanner: the replace window. Pages decided on are moved out of
 * the guest's mapping, compared again where no access can reach them, and released (zero
 * pages), mapped onto store slots (duplicates; per run of consecutive slots, or a whole
 * chunk at once), or put back when they changed. Every mapping is charged to the VMA
 * budget first.
 *
 * Why it is atomic: the chunk is registered for missing-page faults for the window, so
 * an access to a page moved out waits in the kernel (track.c) instead of finding a fresh
 * zero page. The compare that decides is made on the moved copy, which nobody else can
 * reach; the new mapping (or the page itself) is in place before the window closes and
 * the waiting accesses retry: a write lands after the replace, never before, and goes
 * to a private copy of the canonical page.
 */
#include "chunk.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/uio.h>

static uint8_t *held(const struct chunk *c, unsigned i)
{
	return c->ctx->hold + (size_t)i * MV_PAGE_SIZE;
}

/* Forget the action on page i (its target's reference goes back). */
static void drop(struct chunk *c, unsigned i)
{
	if (c->act[i] == ACT_MERGE)
		mv__node_put(c->d, c->tgt[i], 1);
	c->act[i] = ACT_NONE;
}

/* A mapping made over registered guest RAM (or holding its pages) is not inherited by
 * children, as the RAM it replaces is not (vm.c region_arm); it also fuses with its
 * neighbours only if its flags match theirs. Should that fail, the mapping stays (the
 * guest's bytes are in it) and the failure is logged. */
void mv__dontfork(struct mv_host *h, void *addr, size_t len)
{
	int err = h->prim->dontfork(addr, len);
	if (err)
		mv__log(h, MV_LOG_WARN, "a mapping over guest RAM would be inherited by a child "
		        "of the VMM (MADV_DONTFORK: %s)", mv_strerror(err));
}

/* The worker's holding area: 2 MiB aligned, registered with the host's userfaultfd
 * (UFFDIO_MOVE moves only into ranges registered there). Write-protect mode only, so
 * that no access of ours to it ever waits. */
static uint8_t *hold_area(struct mv_scan_ctx *ctx)
{
	struct mv_host *h = ctx->h;
	void *p;
	if (ctx->hold || h->prim->map_anon(2 * MV_CHUNK_SIZE, &p))
		return ctx->hold;
	uint8_t *lo = p, *a = (uint8_t *)(((uintptr_t)lo + MV_CHUNK_SIZE - 1) & ~(MV_CHUNK_SIZE - 1));
	if (a > lo)
		h->prim->unmap(lo, (size_t)(a - lo));
	if (a + MV_CHUNK_SIZE < lo + 2 * MV_CHUNK_SIZE)
		h->prim->unmap(a + MV_CHUNK_SIZE, (size_t)(lo + 2 * MV_CHUNK_SIZE - a - MV_CHUNK_SIZE));
	mv__dontfork(h, a, MV_CHUNK_SIZE);
	if (h->prim->uffd_register(h->uffd, a, MV_CHUNK_SIZE, MV_UFFD_WP)) {
		h->prim->unmap(a, MV_CHUNK_SIZE);
		return NULL;
	}
	return ctx->hold = a;
}

/* Move pages [a, b) out to the holding area. Those that could not be moved (pinned,
 * gone) stay where they are and lose their action. */
static void move_out(struct chunk *c, unsigned a, unsigned b)
{
	struct mv_host *h = c->ctx->h;
	long moved = h->prim->uffd_move(h->uffd, held(c, a), page_addr(c, a), (size_t)(b - a) * MV_PAGE_SIZE);
	unsigned done = moved > 0 ? (unsigned)(moved / (long)MV_PAGE_SIZE) : 0;
	for (unsigned i = a + done; i < b; i++)
		drop(c, i);
}

/* Put page a back: moved (with the pages after it up to b, as many as can be), else
 * copied into its empty pte. Returns the pages put back, or -errno. */
static long put_back_some(struct chunk *c, unsigned a, unsigned b)
{
	struct mv_host *h = c->ctx->h;
	long moved = h->prim->uffd_move(h->uffd, page_addr(c, a), held(c, a),
	                                (size_t)(b - a) * MV_PAGE_SIZE);
	if (moved > 0)
		return moved / (long)MV_PAGE_SIZE;
	int err = h->prim->uffd_copy(h->uffd, page_addr(c, a), held(c, a), MV_PAGE_SIZE);
	return err ? err : 1;
}

/* The last resort for page a: move the holding area's page table entry itself over the
 * guest's page with mremap, whatever is there (a hole left by a failed MAP_FIXED on
 * older kernels, say). It needs no memory for a copy; the holding area is left with a
 * hole and is made anew for the next window. The guest page becomes a mapping of its
 * own (counted by the next VMA refresh). */
static int put_back_by_remap(struct chunk *c, unsigned a)
{
	struct mv_host *h = c->ctx->h;
	int err = h->prim->move_fixed(held(c, a), MV_PAGE_SIZE, page_addr(c, a));
	if (err)
		return err;
	c->hold_broken = true;
	mv__log(h, MV_LOG_WARN, "vm %s slot %u: a guest page was put back by mremap (the move "
	        "and the copy failed)", c->r->vm->name, c->r->slot);
	return 0;
}

/* Put pages [a, b) back from the holding area. The content lives nowhere else: a move,
 * else a copy, else an mremap of the page itself, retried a bounded number of times. A
 * page that still cannot go back stays in the holding area, which is then abandoned
 * (not freed), and the error is logged: the worker does not spin. */
#define PUT_BACK_TRIES 100
static void put_back(struct chunk *c, unsigned a, unsigned b)
{
	struct mv_host *h = c->ctx->h;
	unsigned tries = 0;
	while (a < b) {
		long n = put_back_some(c, a, b);
		if (n > 0 || !(n = put_back_by_remap(c, a))) {
			a += n > 0 ? (unsigned)n : 1;
			tries = 0;
			continue;
		}
		if (++tries < PUT_BACK_TRIES) {
			sched_yield();
			continue;
		}
		mv__log(h, MV_LOG_ERROR, "vm %s slot %u: a guest page could not be put back (%s): "
		        "it is kept aside, the guest reads zero there", c->r->vm->name, c->r->slot,
		        mv_strerror((int)n));
		c->hold_stranded = true;
		a++;
		tries = 0;
	}
}

/* For each run of pages selected by `act`, apply f to [a, b). */
static void for_runs(struct chunk *c, bool (*sel)(const struct chunk *, unsigned),
                     void (*f)(struct chunk *, unsigned, unsigned))
{
	unsigned i = 0;
	while (i < c->n) {
		if (!sel(c, i)) {
			i++;
			continue;
		}
		unsigned b = i + 1;
		while (b < c->n && sel(c, b))
			b++;
		f(c, i, b);
		i = b;
	}
}

static bool acted(const struct chunk *c, unsigned i)
{
	return c->act[i] != ACT_NONE;
}

/* The moved copy decides: a page that changed since it was compared goes back. */
static bool still_same(struct chunk *c, unsigned i)
{
	if (c->act[i] == ACT_ZERO)
		return mv__is_zero(held(c, i));
	const struct mv_node *n = c->tgt[i];
	return !memcmp(held(c, i), mv__store_page(c->d->stores[n->nid], n->slot), MV_PAGE_SIZE);
}

static void verify(struct chunk *c)
{
	for (unsigned i = 0; i < c->n; i++) {
		if (c->act[i] == ACT_NONE || still_same(c, i))
			continue;
		put_back(c, i, i + 1);
		drop(c, i);
		page_of(c, i)->state = PS_NEW; /* written between the look and the move */
		page_of(c, i)->flags = 0;
	}
}

/* Zero pages stay out: their ptes are empty, so they read the zero page. */
static void release_zero(struct chunk *c)
{
	for (unsigned i = 0; i < c->n; i++)
		if (c->act[i] == ACT_ZERO) {
			page_of(c, i)->state = PS_ZERO;
			c->act[i] = ACT_NONE;
			c->zero++;
		}
}

/* Mappings added when pages [a, b) of the region take mapping `key`: boundaries between
 * neighbours with different keys, after minus before. */
long mv__vma_delta(const struct mv_region *r, uint64_t a, uint64_t b, int64_t key)
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

bool mv__vma_charge(struct mv_host *h, long delta)
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
void mv__vmas_account(struct mv_region *r, long delta)
{
	atomic_fetch_add(&r->vmas, delta);
	atomic_fetch_add(&r->vm->c.v[MV_C_VMAS], delta);
	atomic_fetch_add(&r->vm->dom->c.v[MV_C_VMAS], delta);
}

/* Map one run [a, b) of moved pages whose targets are consecutive slots of a store over
 * their empty ptes; if the mapping cannot be made, the pages go back. */
static void map_run(struct chunk *c, unsigned a, unsigned b)
{
	struct mv_host *h = c->ctx->h;
	struct mv_store *s = c->d->stores[c->tgt[a]->nid];
	uintptr_t addr = (uintptr_t)page_addr(c, a);
	int64_t key = mv__vkey(s, c->tgt[a]->slot, addr);
	long delta = mv__vma_delta(c->r, c->first + a, c->first + b, key);
	int err = -ENOSPC;

	if (mv__vma_charge(h, delta)) {
		err = h->prim->map_private_fixed((void *)addr, (size_t)(b - a) * MV_PAGE_SIZE, s->fd,
		                                 (off_t)c->tgt[a]->slot * (off_t)MV_PAGE_SIZE);
		if (err) {
			atomic_fetch_sub(&h->c.v[MV_C_VMAS], delta);
		} else {
			mv__dontfork(h, (void *)addr, (size_t)(b - a) * MV_PAGE_SIZE);
			mv__vmas_account(c->r, delta);
		}
	}
	if (err)
		put_back(c, a, b); /* (a failed MAP_FIXED leaves the range as it was: empty) */
	for (unsigned i = a; i < b; i++) {
		struct mv_page *p = page_of(c, i);
		if (err) {
			drop(c, i);
			p->flags |= PF_RETRY;
			continue;
		}
		p->state = PS_MERGED;
		p->slot = c->tgt[i]->slot;
		p->nid = (uint8_t)c->tgt[i]->nid;
		p->flags &= (uint8_t)~PF_RETRY;
		c->act[i] = ACT_NONE;
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

/* Map the moved duplicates, per run of consecutive slots of one store. */
static void map_runs(struct chunk *c)
{
	unsigned i = 0;
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
}

/*
 * Chunk mode: when most of a 2 MiB chunk equals one 2 MiB run of canonical pages (guests
 * cloned from one image), map the whole chunk onto that run and write the few other
 * pages back into it: they become private copies inside the same mapping. One VMA for
 * the chunk instead of two per differing page, and neighbouring chunks fuse. The whole
 * chunk is moved out first, the new mapping is built aside from the moved copies and
 * swapped in with one mremap: no access sees a half-built chunk, none lands in between.
 * Only for chunks of anonymous pages, all present (a store mapping cannot be moved out).
 */
#define CHUNK_MIN_MATCH (MV_CHUNK_PAGES * 3 / 4)

static bool tgt_at(const struct chunk *c, unsigned i, int64_t slot0)
{
	return c->act[i] == ACT_MERGE && c->tgt[i]->nid == c->tgt[c->last_merge]->nid &&
	       c->tgt[i]->slot == slot0 + i;
}

static bool chunk_fits(struct chunk *c, int64_t slot0)
{
	unsigned match = 0, runs = 0;
	for (unsigned i = 0; i < c->n; i++) {
		const struct mv_page *p = page_of(c, i);
		if (p->slot != MV_SLOT_ANON || p->state == PS_ZERO || c->act[i] == ACT_ZERO ||
		    !(c->cat[i] & MV_PAGE_IS_PRESENT) || (c->cat[i] & MV_PAGE_IS_PFNZERO))
			return false;
		bool here = tgt_at(c, i, slot0);
		runs += here && (i == 0 || !tgt_at(c, i - 1, slot0));
		match += here;
	}
	return match >= CHUNK_MIN_MATCH && runs >= 2;
}

/* Build the chunk's new mapping off to the side from the moved copies: the store run,
 * with every page that differs from its slot written into it (a private copy). */
static int chunk_build(struct chunk *c, struct mv_store *s, int64_t slot0, uint8_t **out)
{
	struct mv_host *h = c->ctx->h;
	void *aside;
	int err = h->prim->map_private(MV_CHUNK_SIZE, s->fd, (off_t)slot0 * (off_t)MV_PAGE_SIZE, &aside);
	if (err)
		return err;
	err = h->prim->dontfork(aside, MV_CHUNK_SIZE); /* mremap keeps it */
	if (err) {
		h->prim->unmap(aside, MV_CHUNK_SIZE);
		return err;
	}
	for (unsigned i = 0; i < c->n; i++) {
		uint8_t *dst = (uint8_t *)aside + (size_t)i * MV_PAGE_SIZE;
		if (!tgt_at(c, i, slot0) || !still_same(c, i))
			memcpy(dst, held(c, i), MV_PAGE_SIZE);
	}
	*out = aside;
	return 0;
}

static void chunk_commit(struct chunk *c, struct mv_store *s, int64_t slot0)
{
	struct mv_host *h = c->ctx->h;
	pthread_mutex_lock(&c->d->lock);
	for (unsigned i = 0; i < c->n; i++) {
		struct mv_page *p = page_of(c, i);
		if (tgt_at(c, i, slot0) && still_same(c, i)) {
			p->state = PS_MERGED;
			c->merged++;
			p->flags = 0;
		} else {
			mv__store_punch_unused(h, s, (uint32_t)(slot0 + i));
			p->state = PS_NEW; /* a private copy in the store mapping, left as it is */
			p->flags = 0;
		}
		p->slot = (uint32_t)(slot0 + i);
		p->nid = (uint8_t)s->nid;
	}
	pthread_mutex_unlock(&c->d->lock);
	for (unsigned i = 0; i < c->n; i++) {
		if (c->act[i] == ACT_MERGE && page_of(c, i)->state != PS_MERGED)
			mv__node_put(c->d, c->tgt[i], 1);
		c->act[i] = ACT_NONE;
	}
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
	if (slot0 <= 0 || slot0 + c->n > (int64_t)s->nr_extents * (int64_t)MV_CHUNK_PAGES ||
	    !chunk_fits(c, slot0))
		return false;
	long moved = h->prim->uffd_move(h->uffd, c->ctx->hold, page_addr(c, 0), MV_CHUNK_SIZE);
	if (moved != (long)MV_CHUNK_SIZE) {
		if (moved > 0)
			put_back(c, 0, (unsigned)(moved / (long)MV_PAGE_SIZE));
		return false;
	}
	long delta = mv__vma_delta(c->r, c->first, c->first + c->n, key);
	uint8_t *aside = NULL;
	if (!mv__vma_charge(h, delta))
		goto fail;
	if (chunk_build(c, s, slot0, &aside))
		goto fail_charged;
	if (h->prim->move_fixed(aside, MV_CHUNK_SIZE, page_addr(c, 0)))
		goto fail_built;
	mv__vmas_account(c->r, delta);
	chunk_commit(c, s, slot0);
	return true;

fail_built:
	h->prim->unmap(aside, MV_CHUNK_SIZE);
fail_charged:
	atomic_fetch_sub(&h->c.v[MV_C_VMAS], delta);
fail:
	put_back(c, 0, c->n);
	return false;
}

/* Drop the missing-page mode from the chunk and restore write tracking, after a window
 * or a register that failed part way. false if tracking could not be restored. */
static bool window_undo(struct chunk *c)
{
	struct mv_host *h = c->ctx->h;
	uint8_t *base = page_addr(c, 0);
	size_t len = (size_t)c->n * MV_PAGE_SIZE;
	int err = 0;
	for (int tries = 0; tries < 3; tries++) {
		err = h->prim->uffd_unregister(h->uffd, base, len);
		/* unregistering wakes only accesses waiting in mappings still registered: those
		 * in a range a store mapping replaced need an explicit wake */
		h->prim->uffd_wake(h->uffd, base, len);
		if (!err && !(err = h->prim->uffd_register(h->uffd, base, len, MV_UFFD_WP)))
			break;
	}
	mv__hint_forget(c->r, c->first, c->n);
	if (!err)
		return true;
	c->r->mergeable = false; /* (read by this worker only, under r->lock) */
	mv__log(h, MV_LOG_WARN, "vm %s slot %u: cannot track writes any more (%s); its pages "
	        "will not be merged", c->r->vm->name, c->r->slot, mv_strerror(err));
	return false;
}

/* Step 4: the replace window over the pages given an action (see the top of the file).
 * The window is open (accesses that wait are accounted to it) before the chunk takes
 * the missing-page mode, and closed after it lost it. */
void mv__replace(struct chunk *c)
{
	struct mv_host *h = c->ctx->h;
	struct mv_scan_ctx *ctx = c->ctx;
	uint8_t *base = page_addr(c, 0);
	size_t len = (size_t)c->n * MV_PAGE_SIZE;
	if (!hold_area(ctx)) {
		for (unsigned i = 0; i < c->n; i++)
			drop(c, i);
		return;
	}
	mv__gate_enter(h, ctx->worker, c->r->vm, base, len);
	if (h->prim->uffd_register(h->uffd, base, len, MV_UFFD_WP | MV_UFFD_MISSING)) {
		for (unsigned i = 0; i < c->n; i++)
			drop(c, i);
		if (window_undo(c)) /* (a register may fail part way, and take the mode) */
			mv__protect_where(c, keep_protected, 1);
		mv__gate_leave(h, ctx->worker);
		return;
	}
	if (!map_chunk(c)) {
		for_runs(c, acted, move_out);
		verify(c);
		release_zero(c);
		map_runs(c);
	}
	if (c->hold_stranded) {
		ctx->hold = NULL; /* abandoned with what it holds: never reused, never freed */
	} else {
		struct iovec all = { ctx->hold, MV_CHUNK_SIZE };
		h->prim->dontneed(&all, 1); /* the moved copies of released and merged pages */
		if (c->hold_broken)
			mv__scan_ctx_fini(ctx); /* a page of it went back by mremap: make it anew */
	}
	if (window_undo(c))
		mv__protect_where(c, keep_protected, 1);
	mv__gate_leave(h, ctx->worker);
}
