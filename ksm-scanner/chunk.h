/* chunk.h - one 2 MiB batch of the scanner, shared by scan.c (looking, deciding) and
 * merge.c (the replace window). See the overview in scan.c. */
#ifndef MV_CHUNK_H
#define MV_CHUNK_H

#include "ksm.h"

enum { ACT_NONE, ACT_ZERO, ACT_MERGE };
enum {
	NEED_NO,
	NEED_FIRST,   /* first look: hash it, remember the sum */
	NEED_CONFIRM, /* looked at before: protect, hash, compare with the sum */
	NEED_LOOKUP,  /* stable and protected, unwritten: look it up in the index again */
};

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
	unsigned wanted;         /* pages that needed a look this visit */
	bool hold_broken;        /* a page went back by mremap: the holding area has a hole */
	bool hold_stranded;      /* a page could not go back: the holding area keeps it */
	unsigned seen_once, changing; /* pages looked at for the first time / found changed */
	int64_t scanned, volatile_pages, zero, merged, cow, left_vma, left_thp; /* counters */
};

static inline bool mv__is_zero(const void *page)
{
	const uint64_t *w = page;
	uint64_t acc = 0;
	for (size_t i = 0; i < MV_PAGE_SIZE / 8; i++)
		acc |= w[i];
	return !acc;
}

static inline uint8_t *page_addr(const struct chunk *c, unsigned i)
{
	return c->r->hva + (c->first + i) * MV_PAGE_SIZE;
}

static inline struct mv_page *page_of(const struct chunk *c, unsigned i)
{
	return &c->r->pages[c->first + i];
}

/* The pages to keep write-protected after a look: everything but pages that are not
 * tracked (changing, or private copies in store mappings) and present. */
static inline bool keep_protected(const struct chunk *c, unsigned i)
{
	return page_of(c, i)->state != PS_NEW || !(c->cat[i] & MV_PAGE_IS_PRESENT);
}

/* scan.c */
uint64_t mv__chunk_hash(struct chunk *c, unsigned i);
void mv__protect_where(struct chunk *c, bool (*which)(const struct chunk *, unsigned), int wp);

/* merge.c: the replace window over the pages given an action. */
void mv__replace(struct chunk *c);

#endif
