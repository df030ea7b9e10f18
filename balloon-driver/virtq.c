/* virtq.c - the driver side of split virtqueues: descriptors, available ring, used ring.
 *
 * A queue takes two guest pages: the descriptor table (at most 256 entries of 16 bytes)
 * and the available ring followed by the used ring. The free list and the chain links
 * are kept in driver memory, so a device that scribbles on the descriptor table or
 * returns a bogus used entry cannot make the driver reuse a descriptor still in flight.
 * Ordering: ring contents are written before the release store of avail->idx; used
 * entries are read after the acquire load of used->idx; publishing avail->idx and
 * reading used->flags for notification suppression are sequentially consistent.
 */
#include "drv.h"

#define AVAIL_FLAGS 0
#define AVAIL_IDX   1
#define USED_FLAGS  0
#define USED_IDX    1
#define USED_OFFSET 1024 /* in the ring page: avail (<= 518 bytes) first, used here */

int mvg__vq_init(struct mvg_balloon *d, struct mvg__vq *q, unsigned num)
{
	q->ring_gpa[0] = q->ring_gpa[1] = MVG_NONE;
	for (int i = 0; i < 2; i++) {
		uint64_t gpa;
		if (d->p.alloc_page(d->p.ctx, &gpa))
			goto fail;
		q->ring_gpa[i] = gpa;
	}
	q->desc = d->p.map(d->p.ctx, q->ring_gpa[0]);
	uint8_t *ring = d->p.map(d->p.ctx, q->ring_gpa[1]);
	if (!q->desc || !ring)
		goto fail;
	__builtin_memset(q->desc, 0, MVG_PAGE_SIZE);
	__builtin_memset(ring, 0, MVG_PAGE_SIZE);
	q->avail = (uint16_t *)ring;
	q->used = (uint16_t *)(ring + USED_OFFSET);
	q->used_ring = (struct vring_used_elem *)(ring + USED_OFFSET + 4);
	q->num = (uint16_t)num;
	q->free_head = 0;
	q->nr_free = (uint16_t)num;
	q->avail_idx = q->last_used = 0;
	q->broken = false;
	for (unsigned i = 0; i < num; i++) {
		q->next[i] = (uint16_t)(i + 1);
		q->chain[i] = 0;
	}
	return 0;
fail:
	mvg__vq_release(d, q);
	return -1;
}

void mvg__vq_release(struct mvg_balloon *d, struct mvg__vq *q)
{
	for (int i = 0; i < 2; i++)
		if (q->ring_gpa[i] != MVG_NONE)
			d->p.free_page(d->p.ctx, q->ring_gpa[i]);
	q->ring_gpa[0] = q->ring_gpa[1] = MVG_NONE;
	q->num = 0;
}

/* Queue one chain of n segments (device-readable ones first, as the spec asks).
 * 0, or -1 when the ring lacks free descriptors. Publishing is mvg__vq_kick's job. */
int mvg__vq_add(struct mvg__vq *q, const struct mvg__seg *s, unsigned n, uint16_t token)
{
	if (!q->num || q->broken || n == 0 || n > q->nr_free)
		return -1;
	uint16_t head = q->free_head, i = head;
	uint32_t wcap = 0;
	for (unsigned k = 0; k < n; k++) {
		struct vring_desc *dsc = &q->desc[i];
		dsc->addr = vle64(s[k].gpa);
		dsc->len = vle32(s[k].len);
		dsc->flags = vle16((uint16_t)((s[k].write ? VRING_DESC_F_WRITE : 0) |
		                              (k + 1 < n ? VRING_DESC_F_NEXT : 0)));
		dsc->next = vle16(k + 1 < n ? q->next[i] : 0);
		wcap += s[k].write ? s[k].len : 0;
		i = q->next[i];
	}
	q->free_head = i;
	q->nr_free = (uint16_t)(q->nr_free - n);
	q->chain[head] = (uint16_t)n;
	q->token[head] = token;
	q->wcap[head] = wcap;
	q->avail[2 + (q->avail_idx & (q->num - 1))] = vle16(head);
	q->avail_idx++;
	return 0;
}

/* Publish what was added and notify the device unless it asked not to be. */
void mvg__vq_kick(struct mvg_balloon *d, struct mvg__vq *q)
{
	if (!q->num)
		return;
	uint16_t old = vle16(__atomic_load_n(&q->avail[AVAIL_IDX], __ATOMIC_RELAXED));
	if (old == q->avail_idx)
		return;
	/* sequentially consistent store and load: the index is published before the
	 * device's flags are read (a full barrier between them, spec 2.7.13) */
	__atomic_store_n(&q->avail[AVAIL_IDX], vle16(q->avail_idx), __ATOMIC_SEQ_CST);
	uint16_t flags = vle16(__atomic_load_n(&q->used[USED_FLAGS], __ATOMIC_SEQ_CST));
	if (!(flags & VRING_USED_F_NO_NOTIFY))
		mvg__notify(d, q);
}

static void free_chain(struct mvg__vq *q, uint16_t head)
{
	uint16_t n = q->chain[head], last = head;
	for (uint16_t k = 1; k < n; k++)
		last = q->next[last];
	q->next[last] = q->free_head;
	q->free_head = head;
	q->nr_free = (uint16_t)(q->nr_free + n);
	q->chain[head] = 0;
}

/*
 * Take the next used buffer: 1 (its token and the length the device wrote), 0 when
 * none is pending. An entry naming a descriptor that is not the head of a chain in
 * flight, or claiming more bytes than the chain lets the device write, is a device bug:
 * the driver records MVG_ERR_PROTO and skips the entry (a bad length still returns the
 * buffer, with len clamped). A used->idx that runs ahead of what was made available
 * abandons the queue.
 */
int mvg__vq_get(struct mvg_balloon *d, struct mvg__vq *q, uint16_t *token, uint32_t *len)
{
	if (!q->num || q->broken)
		return 0;
	for (;;) {
		uint16_t idx = vle16(__atomic_load_n(&q->used[USED_IDX], __ATOMIC_ACQUIRE));
		if (idx == q->last_used)
			return 0;
		if ((uint16_t)(idx - q->last_used) > (uint16_t)(q->avail_idx - q->last_used)) {
			q->broken = true;
			mvg__fail(d, MVG_ERR_PROTO, "device moved used->idx past the available buffers");
			return 0;
		}
		struct vring_used_elem e = q->used_ring[q->last_used & (q->num - 1)];
		q->last_used++;
		uint32_t id = vle32(e.id), l = vle32(e.len);
		if (id >= q->num || !q->chain[id]) {
			mvg__fail(d, MVG_ERR_PROTO, "device returned a buffer not in flight");
			continue;
		}
		if (l > q->wcap[id]) {
			mvg__fail(d, MVG_ERR_PROTO, "device wrote more than the buffer holds");
			l = q->wcap[id];
		}
		*token = q->token[id];
		*len = l;
		free_chain(q, (uint16_t)id);
		return 1;
	}
}
