/* pagelist.c - bounded bookkeeping of ballooned and hinted pages, and PFN sorting.
 *
 * Ballooned pages belong to the host: their contents are gone, so the driver cannot
 * keep its lists in them. A stack keeps u32 entries (4 KiB PFNs, or 2 MiB run indexes)
 * in bookkeeping pages the driver allocates from the platform: 1022 entries per page
 * after a u64 link to the page below, all pages below the top full. Push and pop are
 * O(1); pages that empty become spares, and spares beyond what in-flight requests
 * reserved go back to the platform (mvg__stack_trim), so a stack holds at most
 * ceil((entries + reserved) / 1022) + 1 pages.
 */
#include "drv.h"

static uint64_t link_of(const uint32_t *va)
{
	uint64_t g;
	__builtin_memcpy(&g, va, 8);
	return g;
}

static void set_link(uint32_t *va, uint64_t g)
{
	__builtin_memcpy(va, &g, 8);
}

static uint32_t *entries(uint32_t *va)
{
	return va + 2;
}

void mvg__stack_init(struct mvg__stack *s)
{
	*s = (struct mvg__stack){ .top = MVG_NONE, .spare = MVG_NONE };
}

static uint64_t free_slots(const struct mvg__stack *s)
{
	uint64_t top = s->top == MVG_NONE ? 0 : MVG_STACK_PER_PAGE - s->top_n;
	return top + s->nr_spare * MVG_STACK_PER_PAGE;
}

static int add_spare(struct mvg_balloon *d, struct mvg__stack *s, uint64_t gpa)
{
	uint32_t *va = d->p.map(d->p.ctx, gpa);
	if (!va)
		return -1;
	set_link(va, s->spare);
	s->spare = gpa;
	s->nr_spare++;
	return 0;
}

static int new_spare(struct mvg_balloon *d, struct mvg__stack *s)
{
	uint64_t gpa;
	if (d->p.alloc_page(d->p.ctx, &gpa))
		return -1;
	if (add_spare(d, s, gpa)) {
		d->p.free_page(d->p.ctx, gpa);
		return -1;
	}
	s->nr_pages++;
	return 0;
}

/* Make room for n more entries than already promised: 0, or -1 without memory. */
int mvg__stack_reserve(struct mvg_balloon *d, struct mvg__stack *s, uint64_t n)
{
	while (free_slots(s) < s->reserved + n)
		if (new_spare(d, s))
			return -1;
	s->reserved += n;
	return 0;
}

void mvg__stack_unreserve(struct mvg__stack *s, uint64_t n)
{
	s->reserved -= mvg__min(n, s->reserved);
}

/* Push onto the stack; a full top takes a spare page (or a new one, unreserved). */
int mvg__stack_push(struct mvg_balloon *d, struct mvg__stack *s, uint32_t v)
{
	if (s->top == MVG_NONE || s->top_n == MVG_STACK_PER_PAGE) {
		if (!s->nr_spare && new_spare(d, s))
			return -1;
		uint64_t gpa = s->spare;
		uint32_t *va = d->p.map(d->p.ctx, gpa);
		s->spare = link_of(va);
		s->nr_spare--;
		set_link(va, s->top);
		s->top = gpa;
		s->top_va = va;
		s->top_n = 0;
	}
	entries(s->top_va)[s->top_n++] = v;
	s->count++;
	return 0;
}

/* Pop the latest entry: 0, or -1 when empty. An emptied top page becomes a spare. */
int mvg__stack_pop(struct mvg_balloon *d, struct mvg__stack *s, uint32_t *v)
{
	if (!s->count)
		return -1;
	*v = entries(s->top_va)[--s->top_n];
	s->count--;
	if (s->top_n)
		return 0;
	uint64_t gpa = s->top, below = link_of(s->top_va);
	add_spare(d, s, gpa);
	s->top = below;
	s->top_va = below == MVG_NONE ? 0 : d->p.map(d->p.ctx, below);
	s->top_n = below == MVG_NONE ? 0 : MVG_STACK_PER_PAGE;
	return 0;
}

/* Give spare pages back, keeping one page of slack beyond the reservations while the
 * stack is in use, none once it is empty. */
void mvg__stack_trim(struct mvg_balloon *d, struct mvg__stack *s)
{
	uint64_t slack = s->count || s->reserved ? MVG_STACK_PER_PAGE : 0;
	while (s->nr_spare && free_slots(s) >= s->reserved + slack + MVG_STACK_PER_PAGE) {
		uint64_t gpa = s->spare;
		s->spare = link_of(d->p.map(d->p.ctx, gpa));
		s->nr_spare--;
		s->nr_pages--;
		d->p.free_page(d->p.ctx, gpa);
	}
}

/* Free every bookkeeping page; the entries are forgotten (the caller drained them). */
void mvg__stack_release(struct mvg_balloon *d, struct mvg__stack *s)
{
	while (s->top != MVG_NONE) {
		uint64_t gpa = s->top;
		s->top = link_of(d->p.map(d->p.ctx, gpa));
		d->p.free_page(d->p.ctx, gpa);
	}
	while (s->spare != MVG_NONE) {
		uint64_t gpa = s->spare;
		s->spare = link_of(d->p.map(d->p.ctx, gpa));
		d->p.free_page(d->p.ctx, gpa);
	}
	mvg__stack_init(s);
}

/* ---- sorting: PFNs arrive nearly sorted (allocator order, runs), so insertion sort
 * does the work in O(n + moves); past a budget of moves, heapsort bounds it. ---- */

static void sift_down(uint32_t *a, uint32_t i, uint32_t n)
{
	for (;;) {
		uint32_t c = 2 * i + 1;
		if (c >= n)
			return;
		if (c + 1 < n && a[c + 1] > a[c])
			c++;
		if (a[i] >= a[c])
			return;
		uint32_t t = a[i];
		a[i] = a[c];
		a[c] = t;
		i = c;
	}
}

static void heapsort_u32(uint32_t *a, uint32_t n)
{
	for (uint32_t i = n / 2; i-- > 0;)
		sift_down(a, i, n);
	for (uint32_t e = n; e-- > 1;) {
		uint32_t t = a[0];
		a[0] = a[e];
		a[e] = t;
		sift_down(a, 0, e);
	}
}

void mvg__sort_u32(uint32_t *a, uint32_t n)
{
	uint64_t budget = 8ull * n + 64;
	for (uint32_t i = 1; i < n; i++) {
		uint32_t v = a[i], j = i;
		while (j && a[j - 1] > v) {
			a[j] = a[j - 1];
			j--;
			if (!--budget) {
				a[j] = v;
				heapsort_u32(a, n);
				return;
			}
		}
		a[j] = v;
	}
}
