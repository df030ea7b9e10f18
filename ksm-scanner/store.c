/* store.c - page stores: sparse memfds of canonical pages, 2 MiB extents at random places. */
#include "ksm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define STORE_EXTENTS (1u << 15) /* 64 GiB of address space per store, sparse */

int mv__store_new(struct mv_host *h, uint32_t id, uint32_t nid, struct mv_store **out)
{
	struct mv_store *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	size_t bytes = (size_t)STORE_EXTENTS * MV_CHUNK_SIZE;
	s->id = id;
	s->nid = nid;
	s->nr_extents = STORE_EXTENTS;
	s->free_extents = STORE_EXTENTS - 1;
	s->ext_used = calloc(STORE_EXTENTS / 64, sizeof(uint64_t));
	s->ext = calloc(STORE_EXTENTS, sizeof(*s->ext));
	int err = -ENOMEM;
	if (!s->ext_used || !s->ext)
		goto fail_alloc;
	err = mv__memfd_store("memvirt-store", bytes, &s->fd);
	if (err)
		goto fail_alloc;
	s->view = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, s->fd, 0);
	if (s->view == MAP_FAILED) {
		err = -errno;
		goto fail_map;
	}
	*out = s;
	return 0;

fail_map:
	close(s->fd);
fail_alloc:
	free(s->ext);
	free(s->ext_used);
	free(s);
	return err;
}

void mv__store_free_all(struct mv_store *s)
{
	if (!s)
		return;
	munmap(s->view, (size_t)s->nr_extents * MV_CHUNK_SIZE);
	close(s->fd);
	for (uint32_t i = 0; i < s->nr_extents; i++)
		free(s->ext[i]);
	free(s->ext);
	free(s->ext_used);
	free(s);
}

static bool ext_in_use(const struct mv_store *s, uint32_t e)
{
	return s->ext_used[e / 64] & (1ull << (e % 64));
}

/* The extent record of e, allocated (and published for lock-free readers) on first use. */
static struct mv_extent *ext_get(struct mv_store *s, uint32_t e)
{
	if (!s->ext[e]) {
		struct mv_extent *x = calloc(1, sizeof(*x));
		if (!x)
			return NULL;
		rcu_assign_pointer(s->ext[e], x);
	}
	return s->ext[e];
}

/* A fresh extent at an unpredictable place. */
static int extent_open(struct mv_store *s, uint32_t *out)
{
	if (!s->free_extents)
		return -ENOSPC;
	uint32_t e;
	if (mv__random(&e, sizeof(e)))
		e = (uint32_t)rand();
	e = 1 + e % (s->nr_extents - 1); /* extent 0 stays unused: slot 0 means "anonymous" */
	while (ext_in_use(s, e))
		e = 1 + e % (s->nr_extents - 1);
	if (!ext_get(s, e))
		return -ENOMEM;
	s->ext_used[e / 64] |= 1ull << (e % 64);
	s->free_extents--;
	*out = e;
	return 0;
}

static bool slot_free(const struct mv_store *s, uint64_t slot)
{
	uint32_t e = (uint32_t)(slot / MV_CHUNK_PAGES), i = (uint32_t)(slot % MV_CHUNK_PAGES);
	if (e == 0 || e >= s->nr_extents)
		return false;
	if (!ext_in_use(s, e))
		return true;
	return !(s->ext[e]->bits[i / 64] & (1ull << (i % 64)));
}

static int slot_take(struct mv_store *s, uint32_t slot)
{
	uint32_t e = slot / MV_CHUNK_PAGES, i = slot % MV_CHUNK_PAGES;
	if (!ext_in_use(s, e)) {
		if (!ext_get(s, e))
			return -ENOMEM;
		s->ext_used[e / 64] |= 1ull << (e % 64);
		s->free_extents--;
	}
	s->ext[e]->bits[i / 64] |= 1ull << (i % 64);
	s->ext[e]->live++;
	return 0;
}

/* An extent this sparse takes canonical pages that start no run: isolated duplicates
 * share extents (each costs a 4 KiB node table and page tables of the view) instead of
 * opening one per chunk, while runs (cloned images) still get extents of their own. */
#define EXTENT_SPARSE 64

/*
 * Pick a slot: `preferred` when it is free (it continues a run, so the mappings of
 * neighbouring guest pages fuse), else the same offset in the sparse open extent, else
 * in a fresh random extent. preferred = -1 - k: no run to continue, offset k wanted.
 * Domain lock held.
 */
int mv__store_alloc(struct mv_store *s, int64_t preferred, uint32_t *slot)
{
	if (preferred >= 0 && slot_free(s, (uint64_t)preferred)) {
		*slot = (uint32_t)preferred;
		return slot_take(s, *slot);
	}
	uint32_t in = (uint32_t)((preferred >= 0 ? preferred : -1 - preferred) % MV_CHUNK_PAGES);
	uint32_t e = s->open_extent;
	if (!e || !ext_in_use(s, e) || s->ext[e]->live >= EXTENT_SPARSE ||
	    !slot_free(s, (uint64_t)e * MV_CHUNK_PAGES + in)) {
		int err = extent_open(s, &e);
		if (err)
			return err;
		s->open_extent = e;
	}
	*slot = e * MV_CHUNK_PAGES + in;
	return slot_take(s, *slot);
}

/* Return a slot: its page leaves memory now. Domain lock held, no mapping refers to it. */
void mv__store_release(struct mv_host *h, struct mv_store *s, uint32_t slot)
{
	uint32_t e = slot / MV_CHUNK_PAGES, i = slot % MV_CHUNK_PAGES;
	h->prim->punch(s->fd, (off_t)slot * (off_t)MV_PAGE_SIZE, MV_PAGE_SIZE);
	rcu_assign_pointer(s->ext[e]->node[i], NULL);
	s->ext[e]->bits[i / 64] &= ~(1ull << (i % 64));
	if (--s->ext[e]->live == 0) {
		s->ext_used[e / 64] &= ~(1ull << (e % 64));
		s->free_extents++;
	}
}

/* Publish the stable node that owns slot. Domain lock held. */
void mv__store_bind(struct mv_store *s, uint32_t slot, struct mv_node *n)
{
	rcu_assign_pointer(s->ext[slot / MV_CHUNK_PAGES]->node[slot % MV_CHUNK_PAGES], n);
}

/* The stable node of a slot, or NULL. rcu_read_lock held; the node may be dying
 * (mv__node_get() tells). Extents are never freed while the store lives. */
struct mv_node *mv__store_node(const struct mv_store *s, int64_t slot)
{
	if (slot < 0 || slot >= (int64_t)s->nr_extents * (int64_t)MV_CHUNK_PAGES)
		return NULL;
	struct mv_extent *e = CMM_LOAD_SHARED(s->ext[slot / MV_CHUNK_PAGES]);
	return e ? rcu_dereference(e->node[slot % MV_CHUNK_PAGES]) : NULL;
}

/* A private copy made inside a store mapping over an unused slot made the kernel fill
 * that slot: give the page back. Domain lock held. */
void mv__store_punch_unused(struct mv_host *h, struct mv_store *s, uint32_t slot)
{
	if (slot_free(s, slot))
		h->prim->punch(s->fd, (off_t)slot * (off_t)MV_PAGE_SIZE, MV_PAGE_SIZE);
}
