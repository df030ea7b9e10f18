/* balloon_mem.c - what the balloon device does to guest pages: inflate, deflate, free
 * page reporting and free page hinting.
 *
 * Overview
 *
 * Inflate and deflate requests are arrays of 32-bit PFNs (4 KiB units). Each buffer is
 * copied once out of guest memory (the guest may still write it), checked for order in
 * the same pass and sorted (LSD radix) only when the guest did not sort it. The sorted
 * PFNs are then walked once: the region is looked up only when a PFN leaves the current
 * one, a PFN outside RAM or already in (inflate) / not in (deflate) the balloon is a
 * guest error and skipped, the rest flip their bit in r->ballooned and coalesce into runs.
 * A notification applies at most its budget of PFNs: the sorted copy of a buffer cut
 * short waits in struct mv_bl_pfnq for the next one (regions are looked up afresh).
 *
 * Inflated runs are released with one mv__region_discard() vector per region and
 * request. Huge pages: releasing 4 KiB of a 2 MiB THP frees nothing until the kernel
 * splits it, so a run that covers only part of a 2 MiB host block looks at the block
 * once (PAGEMAP_SCAN; the answer is cached per block in struct mv_bl_region, found by the
 * region's serial: a new region may have a removed one's address). Backed by
 * small pages, the run is released at once. Backed by a huge page, the pieces are only
 * marked, and the whole block is released when the last of its pages joins the balloon
 * (QEMU's per-host-page bitmap). The cache is forgotten when the block is released or
 * fully deflated. Deferring is done only with MUST_TELL_HOST: without it the guest may
 * reuse a page as soon as its deflate request is queued, before the device has seen it.
 *
 * Deflated runs need nothing (released pages fault in as zero) unless prefault_deflate
 * asks for MADV_POPULATE_WRITE on those that were released. Free page reports are
 * released like inflated runs, unless PAGE_POISON with a nonzero value is negotiated
 * (then the reported pages must keep that content). Free page hints are armed (write
 * protected) as they come and completed when the guest ends its run: only pages still
 * unwritten then are released, so a hint that races with a write loses nothing.
 */
#include "balloon_dev.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PFNS      (1u << 18) /* per buffer: 1 MiB of PFNs, 1 GiB of guest memory */
#define MAX_FREE_LEN  (1ull << 30) /* per reported or hinted buffer (Linux sends 4 MiB) */
#define RV_MAX        8192       /* ranges per discard call */
#define HINT_MAX      1024       /* armed hint ranges kept; when full, they complete early */
#define BLK_PAGES     512u

enum { BLK_UNKNOWN, BLK_SMALL, BLK_HUGE };

int mv__bl_mem_init(struct mv_balloon *b)
{
	b->rv = malloc(RV_MAX * sizeof(*b->rv));
	b->armed = malloc(HINT_MAX * sizeof(*b->armed));
	if (!b->rv || !b->armed) {
		mv__bl_mem_free(b);
		return -ENOMEM;
	}
	return 0;
}

void mv__bl_mem_free(struct mv_balloon *b)
{
	for (unsigned i = 0; i < b->n_regs; i++)
		free(b->regs[i].blk);
	free(b->regs);
	for (unsigned i = 0; i < 2; i++)
		free(b->pq[i].pfn);
	free(b->tmp);
	free(b->rv);
	free(b->armed);
	b->regs = NULL;
	memset(b->pq, 0, sizeof(b->pq));
	b->tmp = NULL;
	b->rv = NULL;
	b->armed = NULL;
	b->n_regs = b->cap_regs = 0;
	b->tmp_cap = 0;
}

/* ---- device-private state per region ---- */

struct mv_region *mv__bl_region_by_serial(struct mv_region_map *map, uint64_t serial)
{
	for (unsigned i = 0; map && i < map->n; i++)
		if (map->r[i]->serial == serial)
			return map->r[i];
	return NULL;
}

void mv__bl_regions_prune(struct mv_balloon *b, struct mv_region_map *map)
{
	for (unsigned i = 0; i < b->n_regs;) {
		if (mv__bl_region_by_serial(map, b->regs[i].serial)) {
			i++;
			continue;
		}
		free(b->regs[i].blk);
		b->regs[i] = b->regs[--b->n_regs];
	}
}

/* The block cache of r, NULL without memory for it (then every block counts as small).
 * Valid until the next call (b->regs may move). */
static struct mv_bl_region *region_blk(struct mv_balloon *b, struct mv_region *r)
{
	for (unsigned i = 0; i < b->n_regs; i++)
		if (b->regs[i].serial == r->serial)
			return &b->regs[i];
	if (b->n_regs == b->cap_regs) {
		unsigned cap = b->cap_regs ? 2 * b->cap_regs : 4;
		struct mv_bl_region *n = realloc(b->regs, cap * sizeof(*n));
		if (!n)
			return NULL;
		b->regs = n;
		b->cap_regs = cap;
	}
	uint8_t *blk = calloc(r->nr_chunks, 1);
	if (!blk)
		return NULL;
	b->regs[b->n_regs] = (struct mv_bl_region){ r->serial, r->nr_chunks, blk };
	return &b->regs[b->n_regs++];
}

void mv__bl_forget_balloon(struct mv_balloon *b, struct mv_region_map *map)
{
	for (unsigned i = 0; map && i < map->n; i++)
		for (uint64_t w = 0; w < (map->r[i]->npages + 63) / 64; w++)
			atomic_store_explicit(&map->r[i]->ballooned[w], 0, memory_order_relaxed);
	for (unsigned i = 0; i < b->n_regs; i++)
		memset(b->regs[i].blk, BLK_UNKNOWN, b->regs[i].n);
}

uint64_t mv__bl_held_pages(struct mv_region_map *map)
{
	uint64_t n = 0;
	for (unsigned i = 0; map && i < map->n; i++)
		for (uint64_t w = 0; w < (map->r[i]->npages + 63) / 64; w++)
			n += (uint64_t)__builtin_popcountll(atomic_load_explicit(&map->r[i]->ballooned[w],
			                                                         memory_order_relaxed));
	return n;
}

/* ---- 2 MiB host blocks ---- */

/* The cached state of block c; a block the cache does not cover is unknown. */
static uint8_t blk_get(const struct mv_bl_region *br, uint64_t c)
{
	return br && c < br->n ? br->blk[c] : BLK_UNKNOWN;
}

static void blk_put(struct mv_bl_region *br, uint64_t c, uint8_t st)
{
	if (br && c < br->n)
		br->blk[c] = st;
}

static uint64_t blk_of(const struct mv_region *r, uint64_t k)
{
	return ((uintptr_t)r->hva / MV_PAGE_SIZE + k) / BLK_PAGES - r->chunk0;
}

/* Pages [*lo, *hi) of r that lie in block c. */
static void blk_span(const struct mv_region *r, uint64_t c, uint64_t *lo, uint64_t *hi)
{
	uint64_t p0 = (uintptr_t)r->hva / MV_PAGE_SIZE, s = (r->chunk0 + c) * BLK_PAGES;
	*lo = s > p0 ? s - p0 : 0;
	*hi = s + BLK_PAGES - p0 < r->npages ? s + BLK_PAGES - p0 : r->npages;
}

/* True if every bit of [lo, hi) equals `set`. */
static bool bits_all(_Atomic uint64_t *map, uint64_t lo, uint64_t hi, bool set)
{
	while (lo < hi) {
		uint64_t w = lo / 64, s = lo % 64, e = hi - w * 64 < 64 ? hi - w * 64 : 64;
		uint64_t mask = (e == 64 ? ~0ull : (1ull << e) - 1) & ~((1ull << s) - 1);
		uint64_t v = atomic_load_explicit(&map[w], memory_order_relaxed);
		if ((set ? ~v : v) & mask)
			return false;
		lo = w * 64 + e;
	}
	return true;
}

/* Is block c, which holds page k, backed by a huge page? Asked once, then cached; small
 * when it cannot be cached (a huge page held back needs its state kept). */
static int blk_state(struct mv_balloon *b, struct mv_region *r, struct mv_bl_region *br,
                     uint64_t c, uint64_t k)
{
	if (!br || c >= br->n || !(b->features & (1ull << MV_BALLOON_F_MUST_TELL_HOST)) || r->shared)
		return BLK_SMALL; /* shared memory: a hole punched in its file splits a huge page */
	if (br->blk[c] == BLK_UNKNOWN) {
		uint8_t cat = 0;
		int err = b->h->prim->page_categories(b->h->pagemap_fd, r->hva + k * MV_PAGE_SIZE, 1, &cat);
		br->blk[c] = !err && (cat & MV_PAGE_IS_HUGE) ? BLK_HUGE : BLK_SMALL;
	}
	return br->blk[c];
}

/* ---- releasing ---- */

static void rv_discard(struct mv_balloon *b)
{
	uint64_t pages = 0;
	for (size_t i = 0; i < b->rv_n; i++)
		pages += b->rv[i].n;
	int err = b->cfg.no_release ? 0 : mv__region_discard(b->h, b->rv_r, b->rv, b->rv_n);
	if (err)
		mv__log(b->h, MV_LOG_WARN, "vm %s balloon: releasing %llu pages failed (%s)",
		        b->vm->name, (unsigned long long)pages, mv_strerror(err));
	else if (!b->cfg.no_release)
		b->released += pages * MV_PAGE_SIZE;
}

/* Release the queued ranges: now, or by the release thread when they are inflated pages
 * the guest may not touch before it deflates them (b->rv_defer). */
static void rv_flush(struct mv_balloon *b)
{
	if (!b->rv_n)
		return;
	if (!b->rv_defer || mv__bl_worker_queue(b, b->rv_r->serial, b->rv, b->rv_n))
		rv_discard(b);
	b->rv_n = 0;
	b->rv_r = NULL;
}

/* Queue pages [first, first + n) of r for release. */
static void rv_add(struct mv_balloon *b, struct mv_region *r, uint64_t first, uint64_t n)
{
	if (b->rv_r != r || b->rv_n == RV_MAX)
		rv_flush(b);
	b->rv_r = r;
	struct mv_prange *last = b->rv_n ? &b->rv[b->rv_n - 1] : NULL;
	if (last && last->first + last->n == first)
		last->n += n;
	else
		b->rv[b->rv_n++] = (struct mv_prange){ first, n };
}

/* Pages [a, e) of r just joined the balloon: release them, or leave them to their huge
 * page until the whole block is in. */
static void inflate_run(struct mv_balloon *b, struct mv_region *r, struct mv_bl_region *br,
                        uint64_t a, uint64_t e)
{
	while (a < e) {
		uint64_t c = blk_of(r, a), lo, hi;
		blk_span(r, c, &lo, &hi);
		uint64_t z = hi < e ? hi : e;
		if (a == lo && z == hi) {
			rv_add(b, r, a, z - a); /* the whole block at once */
			blk_put(br, c, BLK_UNKNOWN);
		} else if (blk_state(b, r, br, c, a) == BLK_SMALL) {
			rv_add(b, r, a, z - a);
		} else if (bits_all(r->ballooned, lo, hi, true)) {
			rv_add(b, r, lo, hi - lo); /* the last piece of a huge page came in */
			blk_put(br, c, BLK_UNKNOWN);
		}
		a = z;
	}
}

/* Pages [a, e) of r just left the balloon. */
static void deflate_run(struct mv_balloon *b, struct mv_region *r, struct mv_bl_region *br,
                        uint64_t a, uint64_t e)
{
	while (a < e) {
		uint64_t c = blk_of(r, a), lo, hi;
		blk_span(r, c, &lo, &hi);
		uint64_t z = hi < e ? hi : e;
		bool held_back = blk_get(br, c) == BLK_HUGE; /* never released: still backed */
		if (b->cfg.prefault_deflate && !held_back) {
			int err = b->h->prim->populate_write(r->hva + a * MV_PAGE_SIZE, (z - a) * MV_PAGE_SIZE);
			if (err)
				mv__log(b->h, MV_LOG_DEBUG, "vm %s balloon: prefault failed (%s)",
				        b->vm->name, mv_strerror(err));
		}
		if (blk_get(br, c) != BLK_UNKNOWN && bits_all(r->ballooned, lo, hi, false))
			blk_put(br, c, BLK_UNKNOWN);
		a = z;
	}
}

/* ---- inflate and deflate ---- */

static void radix_sort(uint32_t *a, uint32_t *t, size_t n)
{
	for (unsigned sh = 0; sh < 32; sh += 8) { /* four passes: the result ends in a */
		size_t cnt[257] = { 0 };
		for (size_t i = 0; i < n; i++)
			cnt[((a[i] >> sh) & 255) + 1]++;
		for (unsigned j = 1; j < 257; j++)
			cnt[j] += cnt[j - 1];
		for (size_t i = 0; i < n; i++)
			t[cnt[(a[i] >> sh) & 255]++] = a[i];
		uint32_t *x = a;
		a = t;
		t = x;
	}
}

/* Room for n entries in *p (its contents are not kept), growing by doubling. */
static int pfn_room(uint32_t **p, size_t *cap, size_t n)
{
	if (n <= *cap)
		return 0;
	size_t c = n > 2 * *cap ? n : 2 * *cap;
	c = c < MAX_PFNS ? c : MAX_PFNS;
	uint32_t *x = malloc(c * sizeof(*x));
	if (!x)
		return -ENOMEM;
	free(*p);
	*p = x;
	*cap = c;
	return 0;
}

/* Copy the PFN array of one buffer into w->pfn, sorted. Its length, or 0. */
static size_t pfn_load(struct mv_balloon *b, struct mv_bl_pfnq *w, struct mv_region_map *map,
                       const struct mv_vq_buf *buf)
{
	size_t n = buf->len / 4; /* trailing bytes are ignored */
	if (buf->write) {
		mv__bl_guest_error(b, 1, "writable buffer in a PFN request");
		return 0;
	}
	if (!n)
		return 0;
	if (n > MAX_PFNS) {
		mv__bl_guest_error(b, 1, "PFN buffer over 1 MiB");
		return 0;
	}
	if (pfn_room(&w->pfn, &w->cap, n) || pfn_room(&b->tmp, &b->tmp_cap, n)) {
		mv__bl_guest_error(b, 1, "no memory to copy a PFN buffer: request dropped");
		return 0;
	}
	if (!mv__guest_read(map, buf->gpa, w->pfn, n * 4)) { /* it may span regions */
		mv__bl_guest_error(b, 1, "PFN buffer outside RAM");
		return 0;
	}
	bool sorted = true;
	uint32_t prev = 0;
	for (size_t i = 0; i < n; i++) {
		uint32_t v = le32toh(w->pfn[i]);
		w->pfn[i] = v;
		sorted &= v >= prev;
		prev = v;
	}
	if (!sorted)
		radix_sort(w->pfn, b->tmp, n);
	return n;
}

/* The central loop: apply n sorted PFNs, one region lookup per region crossed. */
static void pfn_apply(struct mv_balloon *b, struct mv_region_map *map, const uint32_t *pfn,
                      size_t n, bool inflate)
{
	struct mv_region *r = NULL;
	struct mv_bl_region *br = NULL;
	uint64_t a = 0, e = 0, done = 0, bad = 0;   /* [a, e): the run being built in r */
	for (size_t i = 0; i < n; i++) {
		uint64_t gpa = (uint64_t)pfn[i] << MV_PAGE_SHIFT;
		if (!r || gpa - r->gpa >= r->size) {
			if (e > a)
				(inflate ? inflate_run : deflate_run)(b, r, br, a, e);
			a = e = 0;
			br = NULL;
			if (!mv__guest_ptr(map, gpa, MV_PAGE_SIZE, &r)) {
				r = NULL;
				bad++;
				continue;
			}
			br = region_blk(b, r);
		}
		uint64_t k = (gpa - r->gpa) >> MV_PAGE_SHIFT;
		bool was = inflate ? mv__bit_set(r->ballooned, k) : mv__bit_clear(r->ballooned, k);
		if (was == inflate) { /* already in, or not in, the balloon; or a duplicate */
			bad++;
			continue;
		}
		done++;
		if (k == e && e > a) {
			e++;
			continue;
		}
		if (e > a)
			(inflate ? inflate_run : deflate_run)(b, r, br, a, e);
		a = k;
		e = k + 1;
	}
	if (e > a)
		(inflate ? inflate_run : deflate_run)(b, r, br, a, e);
	*(inflate ? &b->inflated : &b->deflated) += done * MV_PAGE_SIZE;
	if (bad)
		mv__bl_guest_error(b, bad, inflate ? "PFNs outside RAM or already ballooned"
		                                   : "PFNs outside RAM or not ballooned");
}

/* Each buffer is copied (and sorted) once, then applied in slices as the budget allows:
 * a buffer costs its PFNs, one that holds none (or is refused) costs 1. */
bool mv__bl_pfns(struct mv_balloon *b, struct mv_region_map *map, const struct mv_vq_chain *c,
                 bool inflate, uint64_t *budget)
{
	struct mv_bl_pfnq *w = &b->pq[!inflate];
	/* With MUST_TELL_HOST the driver cannot use an inflated page before its deflate
	 * request is answered: inflated pages are released after the answer (by the release
	 * thread if the device has one, else by mv__bl_release_pending()), and a deflate
	 * notification waits for releases still pending before it takes any request. Otherwise the driver may reuse a page as soon as
	 * it queued its deflate, and pages are released before the answer. */
	bool tell = b->features & (1ull << MV_BALLOON_F_MUST_TELL_HOST);
	b->rv_defer = inflate && tell; /* deflates drained the queue first (mv__bl_queue_notify) */
	while (w->buf < c->n && *budget) {
		if (w->at == w->n) { /* the next buffer */
			w->at = 0;
			w->n = pfn_load(b, w, map, &c->buf[w->buf]);
			if (!w->n) {
				w->buf++;
				(*budget)--;
				continue;
			}
		}
		size_t k = w->n - w->at < *budget ? w->n - w->at : (size_t)*budget;
		pfn_apply(b, map, w->pfn + w->at, k, inflate);
		w->at += k;
		*budget -= k;
		if (w->at == w->n) {
			w->buf++;
			w->n = w->at = 0;
		}
	}
	if (!b->rv_defer)
		rv_flush(b);
	if (w->buf < c->n)
		return false;
	w->buf = 0;
	return true;
}

void mv__bl_release_pending(struct mv_balloon *b)
{
	rv_flush(b);
	b->rv_defer = false;
}

/* Forget the request in progress on inflateq or deflateq (its chain went with a reset
 * or a stopped ring). */
void mv__bl_pfns_drop(struct mv_balloon *b, bool inflate)
{
	struct mv_bl_pfnq *w = &b->pq[!inflate];
	w->buf = w->n = w->at = 0;
}

/* Take the pages of a buffer from the budget, at least 1. */
static void charge(uint64_t *budget, uint64_t len)
{
	uint64_t pages = len >> MV_PAGE_SHIFT ? len >> MV_PAGE_SHIFT : 1;
	*budget -= pages < *budget ? pages : *budget;
}

/* ---- free page reporting and hinting ---- */

/* A guest range of free memory: page aligned, at most MAX_FREE_LEN (work per buffer is
 * bounded), all of it RAM (it may cross from one region into the next). */
static bool free_range_ok(struct mv_region_map *map, uint64_t gpa, uint64_t len)
{
	if (!len || len > MAX_FREE_LEN || (gpa | len) & (MV_PAGE_SIZE - 1) || gpa + len < gpa)
		return false;
	while (len) {
		struct mv_region *r;
		if (!mv__guest_ptr(map, gpa, MV_PAGE_SIZE, &r))
			return false;
		uint64_t take = r->gpa + r->size - gpa < len ? r->gpa + r->size - gpa : len;
		gpa += take;
		len -= take;
	}
	return true;
}

/* Reported free memory must keep the guest's poison value: not released. */
static bool poisoned(const struct mv_balloon *b)
{
	return b->features & (1ull << MV_BALLOON_F_PAGE_POISON) && b->poison;
}

void mv__bl_report(struct mv_balloon *b, struct mv_region_map *map, const struct mv_vq_chain *c,
                   uint64_t *budget)
{
	b->rv_defer = false; /* reported pages are the guest's again once answered */
	for (unsigned i = 0; i < c->n; i++) {
		uint64_t gpa = c->buf[i].gpa, len = c->buf[i].len;
		charge(budget, len);
		if (!c->buf[i].write || !free_range_ok(map, gpa, len)) {
			mv__bl_guest_error(b, 1, "bad free page report");
			continue;
		}
		b->reported += len;
		while (len && !poisoned(b)) {
			struct mv_region *r;
			mv__guest_ptr(map, gpa, MV_PAGE_SIZE, &r);
			uint64_t take = r->gpa + r->size - gpa < len ? r->gpa + r->size - gpa : len;
			rv_add(b, r, (gpa - r->gpa) >> MV_PAGE_SHIFT, take >> MV_PAGE_SHIFT);
			gpa += take;
			len -= take;
		}
	}
	rv_flush(b);
}

/* Region and page span of an armed range, if it is still all in one live region. */
static struct mv_region *hint_region(struct mv_region_map *map, const struct mv_bl_hint *x,
                                     uint64_t *first)
{
	struct mv_region *r;
	if (!mv__guest_ptr(map, x->gpa, x->len, &r))
		return NULL;
	*first = (x->gpa - r->gpa) >> MV_PAGE_SHIFT;
	return r;
}

void mv__bl_hint_complete(struct mv_balloon *b, struct mv_region_map *map)
{
	if (b->cfg.no_release) {
		mv__bl_hint_forget(b, map);
		return;
	}
	for (unsigned i = 0; i < b->n_armed; i++) {
		uint64_t first, released = 0;
		struct mv_region *r = hint_region(map, &b->armed[i], &first);
		if (!r)
			continue;
		int err = mv__region_hint_complete(b->h, r, first, b->armed[i].len >> MV_PAGE_SHIFT, &released);
		if (err)
			mv__log(b->h, MV_LOG_WARN, "vm %s balloon: completing a hint failed (%s)",
			        b->vm->name, mv_strerror(err));
		b->hint_discarded += released * MV_PAGE_SIZE;
		b->released += released * MV_PAGE_SIZE;
	}
	b->n_armed = 0;
}

/* Forget the armed ranges without releasing anything: clearing their bits makes a later
 * completion of the same pages impossible. */
void mv__bl_hint_forget(struct mv_balloon *b, struct mv_region_map *map)
{
	for (unsigned i = 0; i < b->n_armed; i++) {
		uint64_t first;
		struct mv_region *r = hint_region(map, &b->armed[i], &first);
		for (uint64_t k = 0; r && k < b->armed[i].len >> MV_PAGE_SHIFT; k++)
			mv__bit_clear(r->hinted, first + k);
	}
	b->n_armed = 0;
}

/* Arm one piece of a hinted range (inside region r). */
static void hint_arm(struct mv_balloon *b, struct mv_region_map *map, struct mv_region *r,
                     uint64_t gpa, uint64_t len)
{
	if (b->n_armed == HINT_MAX)
		mv__bl_hint_complete(b, map); /* safe early: unwritten pages are still free */
	int err = mv__region_hint_arm(b->h, r, (gpa - r->gpa) >> MV_PAGE_SHIFT, len >> MV_PAGE_SHIFT);
	if (!err)
		b->armed[b->n_armed++] = (struct mv_bl_hint){ gpa, len };
	else if (err != -ENOTSUP) /* ENOTSUP: writes cannot be tracked there, never released */
		mv__log(b->h, MV_LOG_WARN, "vm %s balloon: arming a hint failed (%s)", b->vm->name,
		        mv_strerror(err));
}

static void hint_range(struct mv_balloon *b, struct mv_region_map *map, uint64_t gpa, uint64_t len)
{
	if (!free_range_ok(map, gpa, len)) {
		mv__bl_guest_error(b, 1, "bad free page hint");
		return;
	}
	b->hinted += len;
	while (len && !poisoned(b)) {
		struct mv_region *r;
		mv__guest_ptr(map, gpa, MV_PAGE_SIZE, &r);
		uint64_t take = r->gpa + r->size - gpa < len ? r->gpa + r->size - gpa : len;
		hint_arm(b, map, r, gpa, take);
		gpa += take;
		len -= take;
	}
}

/* The driver's command: the cmd id that starts its run, or STOP at its end. */
static void hint_cmd(struct mv_balloon *b, struct mv_region_map *map, const struct mv_vq_buf *buf)
{
	uint32_t id; /* read once; the guest's buffer need not be aligned */
	if (buf->len < 4 || !mv__guest_read(map, buf->gpa, &id, 4)) {
		mv__bl_guest_error(b, 1, "bad free page hint command");
		return;
	}
	id = le32toh(id);
	mv__bl_hint_complete(b, map); /* a run ends, or a new one starts */
	b->hint_run = id != MV_BL_CMD_STOP && id == b->cmd_id && id > MV_BL_CMD_DONE;
}

void mv__bl_hint(struct mv_balloon *b, struct mv_region_map *map, const struct mv_vq_chain *c,
                 uint64_t *budget)
{
	for (unsigned i = 0; i < c->n; i++) {
		charge(budget, c->buf[i].write ? c->buf[i].len : 0);
		if (!c->buf[i].write)
			hint_cmd(b, map, &c->buf[i]);
		else if (b->hint_run) /* else stale: the run of an old cmd id */
			hint_range(b, map, c->buf[i].gpa, c->buf[i].len);
	}
}
