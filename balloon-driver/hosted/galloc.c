/* galloc.c - the simulated guest's page allocator: per-run bitmaps on O(1) lists. */
#include "galloc.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#define PAGE       4096ull
#define RUN        (2ull << 20)
#define RUN_PAGES  512u
#define MAX_REGIONS 8

enum { L_FREE, L_REPORTED, L_PARTIAL, L_NR, L_NONE = L_NR, L_ISOLATED };

struct run {
	uint64_t map[RUN_PAGES / 64]; /* bit set = page free */
	uint16_t nfree;               /* set bits */
	uint8_t list;                 /* L_* */
	bool reported;
	int32_t prev, next;           /* links on its list, -1 = end */
};

struct list {
	int32_t head, tail;
	uint64_t n;
};

struct mvg__galloc {
	pthread_mutex_t lock;         /* guards everything below but the region table */
	struct mvg__galloc_region reg[MAX_REGIONS];
	uint64_t run0[MAX_REGIONS];   /* index of each region's first run */
	unsigned nreg;
	uint64_t nruns;
	struct run *runs;
	struct list lists[L_NR];
	uint64_t free_pages;          /* pages on the lists (isolated runs excluded) */
};

/* ---- lists ---- */

static void list_del(struct mvg__galloc *g, int32_t i)
{
	struct run *r = &g->runs[i];
	struct list *l = &g->lists[r->list];
	if (r->prev >= 0)
		g->runs[r->prev].next = r->next;
	else
		l->head = r->next;
	if (r->next >= 0)
		g->runs[r->next].prev = r->prev;
	else
		l->tail = r->prev;
	l->n--;
	r->list = L_NONE;
}

static void list_add(struct mvg__galloc *g, int32_t i, unsigned which, bool at_head)
{
	struct run *r = &g->runs[i];
	struct list *l = &g->lists[which];
	r->list = (uint8_t)which;
	if (at_head) {
		r->prev = -1;
		r->next = l->head;
		if (l->head >= 0)
			g->runs[l->head].prev = i;
		else
			l->tail = i;
		l->head = i;
	} else {
		r->next = -1;
		r->prev = l->tail;
		if (l->tail >= 0)
			g->runs[l->tail].next = i;
		else
			l->head = i;
		l->tail = i;
	}
	l->n++;
}

/* ---- addresses ---- */

static int64_t run_of(const struct mvg__galloc *g, uint64_t gpa)
{
	for (unsigned k = 0; k < g->nreg; k++)
		if (gpa >= g->reg[k].gpa && gpa - g->reg[k].gpa < g->reg[k].bytes)
			return (int64_t)(g->run0[k] + (gpa - g->reg[k].gpa) / RUN);
	return -1;
}

static uint64_t gpa_of(const struct mvg__galloc *g, uint64_t run)
{
	unsigned k = 0;
	while (k + 1 < g->nreg && run >= g->run0[k + 1])
		k++;
	return g->reg[k].gpa + (run - g->run0[k]) * RUN;
}

static void set_whole(struct run *r)
{
	for (unsigned w = 0; w < RUN_PAGES / 64; w++)
		r->map[w] = ~0ull;
	r->nfree = RUN_PAGES;
}

int mvg__galloc_new(const struct mvg__galloc_region *reg, unsigned n, struct mvg__galloc **out)
{
	if (!n || n > MAX_REGIONS)
		return -EINVAL;
	for (unsigned k = 0; k < n; k++) {
		if (reg[k].gpa % RUN || reg[k].bytes % RUN || !reg[k].bytes)
			return -EINVAL;
		if (k && reg[k].gpa < reg[k - 1].gpa + reg[k - 1].bytes)
			return -EINVAL; /* sorted, no overlap */
	}
	struct mvg__galloc *g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	for (unsigned k = 0; k < n; k++) {
		g->reg[k] = reg[k];
		g->run0[k] = g->nruns;
		g->nruns += reg[k].bytes / RUN;
	}
	g->nreg = n;
	g->runs = calloc(g->nruns, sizeof(*g->runs));
	if (!g->runs) {
		free(g);
		return -ENOMEM;
	}
	pthread_mutex_init(&g->lock, NULL);
	for (unsigned l = 0; l < L_NR; l++)
		g->lists[l] = (struct list){ -1, -1, 0 };
	for (uint64_t i = 0; i < g->nruns; i++) {
		set_whole(&g->runs[i]);
		list_add(g, (int32_t)i, L_FREE, false); /* ascending: alloc_run starts low */
	}
	g->free_pages = g->nruns * RUN_PAGES;
	*out = g;
	return 0;
}

void mvg__galloc_free(struct mvg__galloc *g)
{
	if (!g)
		return;
	pthread_mutex_destroy(&g->lock);
	free(g->runs);
	free(g);
}

/* ---- pages ---- */

/* The run alloc_page takes from: the first partial one, else a whole one made partial. */
static int32_t page_source(struct mvg__galloc *g)
{
	if (g->lists[L_PARTIAL].head >= 0)
		return g->lists[L_PARTIAL].head;
	int32_t i = g->lists[L_FREE].head >= 0 ? g->lists[L_FREE].head : g->lists[L_REPORTED].head;
	if (i < 0)
		return -1;
	list_del(g, i);
	list_add(g, i, L_PARTIAL, true);
	return i;
}

int mvg__galloc_alloc_page(struct mvg__galloc *g, uint64_t *gpa)
{
	pthread_mutex_lock(&g->lock);
	int32_t i = page_source(g);
	if (i < 0) {
		pthread_mutex_unlock(&g->lock);
		return -ENOMEM;
	}
	struct run *r = &g->runs[i];
	unsigned w = 0;
	while (!r->map[w])
		w++;
	unsigned b = (unsigned)__builtin_ctzll(r->map[w]);
	r->map[w] &= ~(1ull << b);
	r->reported = false;
	if (!--r->nfree)
		list_del(g, i);
	g->free_pages--;
	*gpa = gpa_of(g, (uint64_t)i) + (w * 64 + b) * PAGE;
	pthread_mutex_unlock(&g->lock);
	return 0;
}

int mvg__galloc_free_page(struct mvg__galloc *g, uint64_t gpa)
{
	int64_t i = run_of(g, gpa);
	if (i < 0 || gpa % PAGE)
		return -EINVAL;
	unsigned p = (unsigned)(gpa / PAGE % RUN_PAGES);
	pthread_mutex_lock(&g->lock);
	struct run *r = &g->runs[i];
	if (r->map[p / 64] & 1ull << p % 64 || r->list == L_ISOLATED) {
		pthread_mutex_unlock(&g->lock);
		return -EINVAL; /* double free */
	}
	r->map[p / 64] |= 1ull << p % 64;
	g->free_pages++;
	if (++r->nfree == 1)
		list_add(g, (int32_t)i, L_PARTIAL, false);
	if (r->nfree == RUN_PAGES) {
		list_del(g, (int32_t)i);
		list_add(g, (int32_t)i, L_FREE, true);
	}
	pthread_mutex_unlock(&g->lock);
	return 0;
}

/* ---- runs ---- */

int mvg__galloc_alloc_run(struct mvg__galloc *g, uint64_t *gpa)
{
	pthread_mutex_lock(&g->lock);
	int32_t i = g->lists[L_FREE].head >= 0 ? g->lists[L_FREE].head : g->lists[L_REPORTED].head;
	if (i < 0) {
		pthread_mutex_unlock(&g->lock);
		return -ENOMEM;
	}
	struct run *r = &g->runs[i];
	list_del(g, i);
	for (unsigned w = 0; w < RUN_PAGES / 64; w++)
		r->map[w] = 0;
	r->nfree = 0;
	r->reported = false;
	g->free_pages -= RUN_PAGES;
	*gpa = gpa_of(g, (uint64_t)i);
	pthread_mutex_unlock(&g->lock);
	return 0;
}

int mvg__galloc_free_run(struct mvg__galloc *g, uint64_t gpa)
{
	int64_t i = run_of(g, gpa);
	if (i < 0 || gpa % RUN)
		return -EINVAL;
	pthread_mutex_lock(&g->lock);
	struct run *r = &g->runs[i];
	if (r->nfree || r->list != L_NONE) {
		pthread_mutex_unlock(&g->lock);
		return -EINVAL;
	}
	set_whole(r);
	list_add(g, (int32_t)i, L_FREE, true);
	g->free_pages += RUN_PAGES;
	pthread_mutex_unlock(&g->lock);
	return 0;
}

uint64_t mvg__galloc_free_bytes(struct mvg__galloc *g)
{
	pthread_mutex_lock(&g->lock);
	uint64_t n = g->free_pages;
	pthread_mutex_unlock(&g->lock);
	return n * PAGE;
}

uint64_t mvg__galloc_total_bytes(const struct mvg__galloc *g)
{
	return g->nruns * RUN;
}

/* ---- free page reporting ---- */

int mvg__galloc_isolate_unreported(struct mvg__galloc *g, uint64_t *gpa)
{
	pthread_mutex_lock(&g->lock);
	int32_t i = g->lists[L_FREE].head;
	if (i >= 0) {
		list_del(g, i);
		g->runs[i].list = L_ISOLATED;
		g->free_pages -= RUN_PAGES;
		*gpa = gpa_of(g, (uint64_t)i);
	}
	pthread_mutex_unlock(&g->lock);
	return i >= 0 ? 0 : -ENOMEM;
}

int mvg__galloc_putback_reported(struct mvg__galloc *g, uint64_t gpa)
{
	int64_t i = run_of(g, gpa);
	if (i < 0 || gpa % RUN)
		return -EINVAL;
	pthread_mutex_lock(&g->lock);
	struct run *r = &g->runs[i];
	int err = r->list == L_ISOLATED ? 0 : -EINVAL;
	if (!err) {
		r->reported = true;
		list_add(g, (int32_t)i, L_REPORTED, false); /* used last, like Linux's tail */
		g->free_pages += RUN_PAGES;
	}
	pthread_mutex_unlock(&g->lock);
	return err;
}

/* ---- for tests ---- */

bool mvg__galloc_page_is_free(struct mvg__galloc *g, uint64_t gpa)
{
	int64_t i = run_of(g, gpa);
	if (i < 0)
		return false;
	unsigned p = (unsigned)(gpa / PAGE % RUN_PAGES);
	pthread_mutex_lock(&g->lock);
	bool f = g->runs[i].map[p / 64] >> p % 64 & 1;
	pthread_mutex_unlock(&g->lock);
	return f;
}

bool mvg__galloc_run_reported(struct mvg__galloc *g, uint64_t gpa)
{
	int64_t i = run_of(g, gpa);
	if (i < 0)
		return false;
	pthread_mutex_lock(&g->lock);
	bool rep = g->runs[i].reported;
	pthread_mutex_unlock(&g->lock);
	return rep;
}

void mvg__galloc_counts(struct mvg__galloc *g, struct mvg__galloc_counts *out)
{
	pthread_mutex_lock(&g->lock);
	*out = (struct mvg__galloc_counts){
		.free_runs = g->lists[L_FREE].n,
		.reported_runs = g->lists[L_REPORTED].n,
		.partial_runs = g->lists[L_PARTIAL].n,
	};
	for (uint64_t i = 0; i < g->nruns; i++)
		out->isolated_runs += g->runs[i].list == L_ISOLATED;
	pthread_mutex_unlock(&g->lock);
}
