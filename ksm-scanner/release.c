/* release.c - giving guest pages back to the host for the balloon device, in agreement
 * with the scanner (which may have mapped them onto a page store) and the fault handler.
 *
 * A page in an anonymous mapping is released with MADV_DONTNEED, batched in one
 * process_madvise vector; it reads as zero afterwards. A page the scanner mapped onto a
 * canonical page of a store would read that canonical page back after MADV_DONTNEED, and
 * the canonical page stays allocated: such pages get fresh anonymous memory mapped over
 * them instead, and drop their share. So do pages of a region that is a private mapping
 * of a file (a memfd, or store mappings left from the region's earlier registration,
 * whose slots the domain reuses for other content). Pages of a MAP_SHARED region are
 * punched out of their file (MADV_REMOVE). The region lock keeps the scanner off the region's page
 * states meanwhile.
 */
#include "ksm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
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

/* Pages [a, b) live in mappings of a file (store mappings, or the region's own private
 * file mapping): map fresh anonymous memory over them, track its writes like the rest
 * of the region, and drop the shares. The mappings this adds are charged to the VMA
 * budget like the scanner's: when it is spent, the pages stay as they are (shared, or
 * private copies) and are counted, so that no guest can drive the VMM to
 * vm.max_map_count by ballooning merged pages. */
static void map_anon_run(struct release *x, uint64_t a, uint64_t b)
{
	struct mv_host *h = x->h;
	struct mv_region *r = x->r;
	void *lo = r->hva + a * MV_PAGE_SIZE;
	size_t len = (size_t)(b - a) * MV_PAGE_SIZE;
	long delta = mv__vma_delta(r, a, b, MV_VKEY_ANON);
	if (!mv__vma_charge(h, delta)) {
		mv__count(r->vm, MV_C_LEFT_VMA, (int64_t)(b - a));
		return;
	}
	int err = h->prim->map_anon_fixed(lo, len);
	if (err) {
		atomic_fetch_sub(&h->c.v[MV_C_VMAS], delta);
		note(x, err);
		return;
	}
	if (r->mergeable)
		mv__dontfork(h, lo, len);
	if (r->registered)
		note(x, h->prim->uffd_register(h->uffd, lo, len, MV_UFFD_WP));
	for (uint64_t k = a; k < b; k++) {
		struct mv_page *p = &r->pages[k];
		if (p->state == PS_MERGED) {
			mv__node_put(r->vm->dom, mv__page_node(r, p), 1);
			x->merged++;
		}
		x->zero += p->state == PS_ZERO;
		p->state = PS_NEW;
		p->slot = MV_SLOT_ANON;
		p->flags = r->file ? PF_ANON : 0;
	}
	mv__vmas_account(r, delta);
}

/* Page k would read a file again after MADV_DONTNEED: it needs anonymous memory. */
static bool file_page(const struct mv_region *r, uint64_t k)
{
	const struct mv_page *p = &r->pages[k];
	return p->slot != MV_SLOT_ANON || (r->file && !(p->flags & PF_ANON));
}

/* hugetlbfs: only whole huge pages can be released (MADV_REMOVE of less punches
 * nothing yet succeeds; MADV_DONTNEED and mappings over less fail or free nothing).
 * The whole huge pages inside [a, b) are; if any piece is left, the caller hears
 * -EINVAL, so that nothing is counted released that was not. */
static void release_huge(struct release *x, uint64_t a, uint64_t b)
{
	struct mv_region *r = x->r;
	uintptr_t mask = r->page_size - 1, lo = (uintptr_t)(r->hva + a * MV_PAGE_SIZE);
	uintptr_t hi = (uintptr_t)(r->hva + b * MV_PAGE_SIZE);
	uintptr_t A = (lo + mask) & ~mask, B = hi & ~mask;
	if (A != lo || B != hi)
		note(x, -EINVAL);
	if (A >= B)
		return;
	if (r->shared)
		note(x, x->h->prim->remove((void *)A, B - A));
	else if (r->file)
		map_anon_run(x, (A - (uintptr_t)r->hva) / MV_PAGE_SIZE, (B - (uintptr_t)r->hva) / MV_PAGE_SIZE);
	else
		note(x, -EINVAL); /* neither: it was never released */
}

/* Pages [a, b) of the region, by where they live. Caller holds r->lock and RCU. */
static void release_range(struct release *x, uint64_t a, uint64_t b)
{
	struct mv_region *r = x->r;
	if (r->page_size > MV_PAGE_SIZE) {
		release_huge(x, a, b);
		return;
	}
	if (r->shared) {
		note(x, x->h->prim->remove(r->hva + a * MV_PAGE_SIZE, (size_t)(b - a) * MV_PAGE_SIZE));
		return;
	}
	while (a < b) {
		bool file = file_page(r, a);
		uint64_t e = a + 1;
		while (e < b && file_page(r, e) == file)
			e++;
		if (file)
			map_anon_run(x, a, e);
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
	for (uint64_t c = c0; c <= c1; c++) {
		atomic_store(&r->sched[c].due_ns, 0);
		r->sched[c].rest = 0;
	}
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
		mv__hint_forget(r, ranges[i].first, ranges[i].n);
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

/* ---- free page hinting ----
 *
 * The guarantee: a page is released only if the guest hinted it in the current run and
 * never wrote it since the run began, and a write at any moment, even while the page is
 * being released, survives. The guest may reuse a hinted page at once, before the device
 * has even read the hint, so the watch starts before the guest can hint anything: at
 * the start of the run the whole region is write-protected and every page marked
 * hint_clean. Paths that lift a page's protection (the scanner, releases) clear its mark.
 *
 * At completion, for each 1 MiB piece: the pages still hinted, marked and unwritten
 * (PAGEMAP_SCAN) are held (a reference each, so that reclaim cannot free them) and get
 * MADV_FREE, after which the kernel keeps any page written again. A write between that
 * look and MADV_FREE is seen by a second look (the page was protected, so the write
 * shows) and the page is dirtied again by us, as the write would have. Then the pages
 * are let go, and MADV_PAGEOUT drops what is still clean, atomically against writers.
 */
void mv__hint_forget(struct mv_region *r, uint64_t first, uint64_t n)
{
	for (uint64_t k = first; k < first + n; k++) {
		if (!(k % 64) && k + 64 <= first + n) {
			atomic_store(&r->hint_clean[k / 64], 0);
			k += 63;
			continue;
		}
		mv__bit_clear(r->hint_clean, k);
	}
}

int mv__region_hint_begin(struct mv_host *h, struct mv_region *r)
{
	if (!r->registered)
		return -ENOTSUP;
	pthread_mutex_lock(&r->lock);
	int err = h->prim->uffd_wp(h->uffd, r->hva, r->size, 1);
	for (uint64_t w = 0; !err && w < r->npages / 64; w++)
		atomic_store(&r->hint_clean[w], ~0ull);
	for (uint64_t k = r->npages & ~63ull; !err && k < r->npages; k++)
		mv__bit_set(r->hint_clean, k);
	pthread_mutex_unlock(&r->lock);
	return err;
}

int mv__region_hint_arm(struct mv_host *h, struct mv_region *r, uint64_t first, uint64_t n)
{
	if (!r->registered)
		return -ENOTSUP;
	for (uint64_t k = first; k < first + n; k++)
		mv__bit_set(r->hinted, k);
	return 0;
}

/* Dirty a page again as a write would (a compare-and-swap of a word with itself always
 * writes; an atomic add of 0 may be compiled to a load). */
static void redirty(void *page)
{
	uint64_t *w = page, v = __atomic_load_n(w, __ATOMIC_RELAXED);
	__atomic_compare_exchange_n(w, &v, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

static bool hint_candidate(const struct mv_region *r, uint64_t k, uint8_t cat)
{
	return mv__bit_test(r->hinted, k) && mv__bit_test(r->hint_clean, k) &&
	       r->pages[k].slot == MV_SLOT_ANON && (cat & MV_PAGE_IS_PRESENT) &&
	       !(cat & (MV_PAGE_IS_WRITTEN | MV_PAGE_IS_PFNZERO | MV_PAGE_IS_HUGE));
}

/* One piece [a, b) of a hint completion, at most MV_HOLD_PAGES pages (r->lock held).
 * The candidates are held (referenced) from before MADV_FREE until each one written
 * meanwhile is dirty again: reclaim cannot drop such a page in between. */
static void hint_piece(struct release *x, uint64_t a, uint64_t b, uint64_t *released)
{
	struct mv_host *h = x->h;
	struct mv_region *r = x->r;
	uint8_t cat[MV_HOLD_PAGES], again[MV_HOLD_PAGES], cand[MV_HOLD_PAGES] = { 0 };
	uint8_t *lo = r->hva + a * MV_PAGE_SIZE;
	int held;
	if (h->prim->page_categories(h->pagemap_fd, lo, b - a, cat))
		return;
	for (uint64_t k = a; k < b; k++)
		if ((cand[k - a] = hint_candidate(r, k, cat[k - a])))
			add_iov(x, k, k + 1);
	if (!x->n || h->prim->hold(x->iov, x->n, &held)) {
		x->n = 0;
		return;
	}
	note(x, h->prim->lazyfree(x->iov, x->n));
	x->n = 0;
	if (h->prim->page_categories(h->pagemap_fd, lo, b - a, again))
		memset(again, MV_PAGE_IS_WRITTEN, sizeof(again)); /* unknown: keep them all */
	for (uint64_t k = a; k < b; k++) {
		if (!cand[k - a])
			continue;
		if (again[k - a] & MV_PAGE_IS_WRITTEN)
			redirty(r->hva + k * MV_PAGE_SIZE); /* written before MADV_FREE took */
		else
			add_iov(x, k, k + 1);
	}
	h->prim->unhold(held);
	if (x->n)
		note(x, h->prim->pageout(x->iov, x->n));
	x->n = 0;
	if (h->prim->page_categories(h->pagemap_fd, lo, b - a, again))
		return;
	for (uint64_t k = a; k < b; k++)
		*released += cand[k - a] && !(again[k - a] & MV_PAGE_IS_PRESENT);
}

int mv__region_hint_complete(struct mv_host *h, struct mv_region *r, uint64_t first, uint64_t n,
                             uint64_t *released)
{
	*released = 0;
	struct release *x = malloc(sizeof(*x));
	if (x) {
		*x = (struct release){ .h = h, .r = r };
		pthread_mutex_lock(&r->lock);
		for (uint64_t a = first; a < first + n; a += MV_HOLD_PAGES)
			hint_piece(x, a, a + MV_HOLD_PAGES < first + n ? a + MV_HOLD_PAGES : first + n, released);
		unquiet(r, first, first + n);
		pthread_mutex_unlock(&r->lock);
	}
	for (uint64_t k = first; k < first + n; k++)
		mv__bit_clear(r->hinted, k);
	int err = x ? x->err : -ENOMEM;
	free(x);
	return err;
}
