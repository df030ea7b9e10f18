/* galloc.h - the simulated guest's page allocator: 4 KiB pages and 2 MiB runs of guest RAM. */
#ifndef MVG_GALLOC_H
#define MVG_GALLOC_H

#include <stdbool.h>
#include <stdint.h>

/*
 * Guest RAM is one or more regions of guest-physical addresses, each 2 MiB aligned and
 * a multiple of 2 MiB long (a hole may separate them). A run is one 2 MiB aligned
 * block; every run is on exactly one list: wholly free and not reported, wholly free
 * and reported, partially free, or none (fully allocated, or isolated for reporting).
 *
 * alloc_page takes the lowest free page of the first partially free run, breaking a
 * wholly free run (unreported first) only when no partial run is left, so pages come
 * out nearly sorted and fragmentation stays in few runs. alloc_run takes a wholly free
 * run (unreported first). Every call is O(1) under one mutex: thread-safe, any thread.
 * A run's reported flag is cleared when any of its pages is allocated.
 */
struct mvg__galloc;

struct mvg__galloc_region {
	uint64_t gpa, bytes;
};

/* All pages start free. 0, -EINVAL (misaligned or overlapping regions), -ENOMEM. */
int mvg__galloc_new(const struct mvg__galloc_region *r, unsigned n, struct mvg__galloc **out);
void mvg__galloc_free(struct mvg__galloc *g);

/* 0 and the page's gpa, or -ENOMEM when nothing is free. */
int mvg__galloc_alloc_page(struct mvg__galloc *g, uint64_t *gpa);
/* -EINVAL (nothing changed) for a gpa outside RAM, misaligned, or already free. */
int mvg__galloc_free_page(struct mvg__galloc *g, uint64_t gpa);
/* A wholly free 2 MiB run: 0 and its gpa, or -ENOMEM. */
int mvg__galloc_alloc_run(struct mvg__galloc *g, uint64_t *gpa);
/* The run must be wholly allocated (by alloc_run or page by page): else -EINVAL. */
int mvg__galloc_free_run(struct mvg__galloc *g, uint64_t gpa);

uint64_t mvg__galloc_free_bytes(struct mvg__galloc *g);
uint64_t mvg__galloc_total_bytes(const struct mvg__galloc *g);

/* Free page reporting: take one wholly free, unreported run off the free lists (it no
 * longer counts as free), or -ENOMEM; give it back marked reported (-EINVAL if it was
 * not isolated). */
int mvg__galloc_isolate_unreported(struct mvg__galloc *g, uint64_t *gpa);
int mvg__galloc_putback_reported(struct mvg__galloc *g, uint64_t gpa);

/* For tests: is the page free; is its run marked reported; free runs by kind. */
bool mvg__galloc_page_is_free(struct mvg__galloc *g, uint64_t gpa);
bool mvg__galloc_run_reported(struct mvg__galloc *g, uint64_t gpa);
struct mvg__galloc_counts {
	uint64_t free_runs, reported_runs, partial_runs, isolated_runs;
};
void mvg__galloc_counts(struct mvg__galloc *g, struct mvg__galloc_counts *out);

#endif
