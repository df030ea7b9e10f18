/* merge.c - step 4 of the scanner: release zero pages, map duplicates onto the store
 * (per run of consecutive slots, or a whole chunk at once), and charge the VMA budget. */
#include "chunk.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>

/* Step 4a: release the zero pages of the chunk in one vector. */
void mv__release_zero(struct chunk *c)
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
void mv__vmas_account(struct mv_region *r, long delta)
{
	atomic_fetch_add(&r->vmas, delta);
	atomic_fetch_add(&r->vm->c.v[MV_C_VMAS], delta);
	atomic_fetch_add(&r->vm->dom->c.v[MV_C_VMAS], delta);
}

/* Step 4b: map one run [a, b) of pages whose targets are consecutive slots of a store. */
static void map_run(struct chunk *c, unsigned a, unsigned b)
{
	struct mv_host *h = c->ctx->h;
	struct mv_store *s = c->d->stores[c->tgt[a]->nid];
	uintptr_t addr = (uintptr_t)page_addr(c, a);
	int64_t key = mv__vkey(s, c->tgt[a]->slot, addr);
	long delta = mv__vma_delta(c->r, c->first + a, c->first + b, key);
	int err = -ENOSPC;

	if (vma_charge(h, delta)) {
		err = h->prim->map_private_fixed((void *)addr, (size_t)(b - a) * MV_PAGE_SIZE, s->fd,
		                                 (off_t)c->tgt[a]->slot * (off_t)MV_PAGE_SIZE);
		if (err)
			atomic_fetch_sub(&h->c.v[MV_C_VMAS], delta);
		else
			mv__vmas_account(c->r, delta);
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
	long delta = mv__vma_delta(c->r, c->first, c->first + c->n, key);
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
	mv__vmas_account(c->r, delta);
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
void mv__map_merges(struct chunk *c)
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
