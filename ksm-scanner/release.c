/* release.c - giving guest pages back to the host for the balloon device, in agreement
 * with the scanner (which may have mapped them onto a page store) and the fault handler.
 *
 * A page in an anonymous mapping is released with MADV_DONTNEED, batched in one
 * process_madvise vector; it reads as zero afterwards. A page the scanner mapped onto a
 * canonical page of a store would read that canonical page back after MADV_DONTNEED, and
 * the canonical page stays allocated: such pages get fresh anonymous memory mapped over
 * them instead, and drop their share. Pages of a MAP_SHARED region are punched out of
 * their file (MADV_REMOVE). The region lock keeps the scanner off the region's page
 * states meanwhile.
 */
#include "ksm.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>

#define IOV_BATCH 512

struct release {
	struct mv_host *h;
	struct mv_region *r;
	struct iovec iov[IOV_BATCH];
	size_t n;
	int err;
	int64_t merged, zero;         /* counters to take back */
};

static void note(struct release *x, int err)
{
	if (err && !x->err)
		x->err = err;
}

static void flush(struct release *x)
{
	if (x->n)
		note(x, x->h->prim->dontneed(x->iov, x->n));
	x->n = 0;
}

static void add_iov(struct release *x, uint64_t a, uint64_t b)
{
	uint8_t *lo = x->r->hva + a * MV_PAGE_SIZE;
	size_t len = (size_t)(b - a) * MV_PAGE_SIZE;
	if (x->n && (uint8_t *)x->iov[x->n - 1].iov_base + x->iov[x->n - 1].iov_len == lo) {
		x->iov[x->n - 1].iov_len += len;
		return;
	}
	if (x->n == IOV_BATCH)
		flush(x);
	x->iov[x->n++] = (struct iovec){ lo, len };
}

/* Pages [a, b) live in store mappings: map fresh anonymous memory over them, track its
 * writes like the rest of the region, and drop the shares. */
static void unmap_store_run(struct release *x, uint64_t a, uint64_t b)
{
	struct mv_host *h = x->h;
	struct mv_region *r = x->r;
	void *lo = r->hva + a * MV_PAGE_SIZE;
	size_t len = (size_t)(b - a) * MV_PAGE_SIZE;
	long delta = mv__vma_delta(r, a, b, MV_VKEY_ANON);
	int err = h->prim->map_anon_fixed(lo, len);
	if (err) {
		note(x, err);
		return;
	}
	if (r->registered)
		note(x, h->prim->uffd_register_wp(h->uffd, lo, len));
	for (uint64_t k = a; k < b; k++) {
		struct mv_page *p = &r->pages[k];
		if (p->state == PS_MERGED) {
			mv__node_put(r->vm->dom, mv__page_node(r, p), 1);
			x->merged++;
		}
		x->zero += p->state == PS_ZERO;
		p->state = PS_NEW;
		p->slot = MV_SLOT_ANON;
		p->flags = 0;
	}
	atomic_fetch_add(&h->c.v[MV_C_VMAS], delta);
	mv__vmas_account(r, delta);
}

/* Pages [a, b) of the region, by where they live. Caller holds r->lock and RCU. */
static void release_range(struct release *x, uint64_t a, uint64_t b)
{
	struct mv_region *r = x->r;
	if (r->shared) {
		note(x, x->h->prim->remove(r->hva + a * MV_PAGE_SIZE, (size_t)(b - a) * MV_PAGE_SIZE));
		return;
	}
	if (!r->mergeable) {
		add_iov(x, a, b);
		return;
	}
	while (a < b) {
		bool store = r->pages[a].slot != MV_SLOT_ANON;
		uint64_t e = a + 1;
		while (e < b && (r->pages[e].slot != MV_SLOT_ANON) == store)
			e++;
		if (store)
			unmap_store_run(x, a, e);
		else
			add_iov(x, a, e);
		a = e;
	}
}

/* The scanner must look at these chunks again: their pages changed under it. */
static void unquiet(struct mv_region *r, uint64_t a, uint64_t b)
{
	uint64_t c0 = mv__chunk_of(r, r->hva + a * MV_PAGE_SIZE);
	uint64_t c1 = mv__chunk_of(r, r->hva + (b - 1) * MV_PAGE_SIZE);
	for (uint64_t c = c0; c <= c1; c++)
		r->quiet[c] = 0;
}

int mv__region_discard(struct mv_host *h, struct mv_region *r, const struct mv_prange *ranges,
                       size_t n)
{
	struct release *x = malloc(sizeof(*x));
	if (!x)
		return -ENOMEM;
	*x = (struct release){ .h = h, .r = r };
	pthread_mutex_lock(&r->lock);
	rcu_read_lock();
	for (size_t i = 0; i < n; i++) {
		if (!ranges[i].n)
			continue;
		release_range(x, ranges[i].first, ranges[i].first + ranges[i].n);
		unquiet(r, ranges[i].first, ranges[i].first + ranges[i].n);
	}
	flush(x);
	rcu_read_unlock();
	pthread_mutex_unlock(&r->lock);
	mv__count(r->vm, MV_C_MERGED, -x->merged);
	mv__count(r->vm, MV_C_ZERO, -x->zero);
	int err = x->err;
	free(x);
	return err;
}

int mv__region_hint_arm(struct mv_host *h, struct mv_region *r, uint64_t first, uint64_t n)
{
	if (!r->registered)
		return -ENOTSUP;
	pthread_mutex_lock(&r->lock);
	for (uint64_t k = first; k < first + n; k++)
		mv__bit_set(r->hinted, k);
	/* set before protecting: a write after this point faults and clears the bit */
	int err = h->prim->uffd_wp(h->uffd, r->hva + first * MV_PAGE_SIZE, n * MV_PAGE_SIZE, 1);
	if (err)
		for (uint64_t k = first; k < first + n; k++)
			mv__bit_clear(r->hinted, k);
	pthread_mutex_unlock(&r->lock);
	return err;
}

/* One 2 MiB piece of a hint completion, the gate closed over it. */
static void hint_piece(struct release *x, uint64_t a, uint64_t b, uint64_t *released)
{
	struct mv_region *r = x->r;
	uint8_t cat[MV_CHUNK_PAGES];
	bool known = !x->h->prim->page_categories(x->h->pagemap_fd, r->hva + a * MV_PAGE_SIZE,
	                                          b - a, cat);
	for (uint64_t k = a; k < b; k++) {
		bool hinted = mv__bit_clear(r->hinted, k);
		if (known && hinted && !(cat[k - a] & MV_PAGE_IS_WRITTEN) &&
		    r->pages[k].slot == MV_SLOT_ANON) {
			add_iov(x, k, k + 1);
			(*released)++;
		}
	}
	flush(x); /* before the gate opens: a writer waiting in it lands on the zero page */
}

int mv__region_hint_complete(struct mv_host *h, struct mv_region *r, uint64_t first, uint64_t n,
                             uint64_t *released)
{
	*released = 0;
	struct release *x = malloc(sizeof(*x));
	if (!x) {
		for (uint64_t k = first; k < first + n; k++)
			mv__bit_clear(r->hinted, k);
		return -ENOMEM;
	}
	*x = (struct release){ .h = h, .r = r };
	pthread_mutex_lock(&r->lock);
	pthread_mutex_lock(&h->device_gate_lock);
	for (uint64_t a = first; a < first + n; a += MV_CHUNK_PAGES) {
		uint64_t b = a + MV_CHUNK_PAGES < first + n ? a + MV_CHUNK_PAGES : first + n;
		mv__gate_enter(h, MV_GATE_DEVICE, r->hva + a * MV_PAGE_SIZE, (b - a) * MV_PAGE_SIZE);
		hint_piece(x, a, b, released);
		mv__gate_leave(h, MV_GATE_DEVICE);
	}
	pthread_mutex_unlock(&h->device_gate_lock);
	unquiet(r, first, first + n);
	pthread_mutex_unlock(&r->lock);
	int err = x->err;
	free(x);
	return err;
}
