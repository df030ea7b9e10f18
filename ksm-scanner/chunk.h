/* chunk.h - one 2 MiB batch of the scanner, shared by scan.c (steps 0-3, 5) and
 * merge.c (step 4). See the overview in scan.c. */
#ifndef MV_CHUNK_H
#define MV_CHUNK_H

#include "ksm.h"

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
	int64_t scanned, volatile_pages, zero, merged, cow, left_vma, left_thp; /* counters */
};

static inline uint8_t *page_addr(const struct chunk *c, unsigned i)
{
	return c->r->hva + (c->first + i) * MV_PAGE_SIZE;
}

static inline struct mv_page *page_of(const struct chunk *c, unsigned i)
{
	return &c->r->pages[c->first + i];
}

/* merge.c */
void mv__release_zero(struct chunk *c);
void mv__map_merges(struct chunk *c);

#endif
