/* virtq.c - device side of split virtqueues: rings in guest RAM, read once, checked. */
#include "virtq.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define VIRTQ_DESC_F_NEXT        1
#define VIRTQ_DESC_F_WRITE       2
#define VIRTQ_DESC_F_INDIRECT    4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

/*
 * Ring layout (little-endian):
 *   desc[i]:  le64 addr, le32 len, le16 flags, le16 next   (16 bytes, 16-aligned)
 *   avail:    le16 flags, le16 idx, le16 ring[num]          (2-aligned)
 *   used:     le16 flags, le16 idx, {le32 id, le32 len}[num] (4-aligned)
 * The event-index fields after avail and used are not used (no VIRTIO_F_EVENT_IDX).
 * The guest may write the rings at any time: each field is loaded once, with an atomic
 * load of its natural width, into a local that alone is checked and used.
 */
static uint16_t ld16(const uint8_t *p, int mo)
{
	return le16toh(__atomic_load_n((const uint16_t *)p, mo));
}

static uint32_t ld32(const uint8_t *p)
{
	return le32toh(__atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED));
}

static uint64_t ld64(const uint8_t *p)
{
	return le64toh(__atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED));
}

static uint64_t desc_size(unsigned num) { return 16ull * num; }
static uint64_t avail_size(unsigned num) { return 4 + 2ull * num; }
static uint64_t used_size(unsigned num) { return 4 + 8ull * num; }

void *mv__guest_ptr(struct mv_region_map *map, uint64_t gpa, uint64_t len, struct mv_region **rp)
{
	if (gpa + len < gpa)
		return NULL;
	struct mv_region *r = mv__region_of_gpa(map, gpa);
	if (!r || atomic_load_explicit(&r->dead, memory_order_acquire) ||
	    len > r->size - (gpa - r->gpa))
		return NULL;
	if (rp)
		*rp = r;
	return r->hva + (gpa - r->gpa);
}

bool mv__guest_read(struct mv_region_map *map, uint64_t gpa, void *dst, uint64_t len)
{
	uint8_t *d = dst;
	if (gpa + len < gpa)
		return false;
	while (len) {
		struct mv_region *r;
		const uint8_t *p = mv__guest_ptr(map, gpa, 1, &r);
		if (!p)
			return false;
		uint64_t take = r->gpa + r->size - gpa < len ? r->gpa + r->size - gpa : len;
		memcpy(d, p, take);
		d += take;
		gpa += take;
		len -= take;
	}
	return true;
}

int mv__vq_enable(struct mv_vq *vq, struct mv_region_map *map, const struct mv_virtq_setup *s,
                  unsigned queue_max, uint16_t base)
{
	unsigned num = s->num;
	if (!num || num > queue_max || (num & (num - 1)))
		return -EINVAL;
	if (s->desc & 15 || s->avail & 1 || s->used & 3)
		return -EINVAL;
	if (!mv__guest_ptr(map, s->desc, desc_size(num), NULL) ||
	    !mv__guest_ptr(map, s->avail, avail_size(num), NULL) ||
	    !mv__guest_ptr(map, s->used, used_size(num), NULL))
		return -EINVAL;
	struct mv_vq_buf *bufs = calloc(num, sizeof(*bufs));
	if (!bufs)
		return -ENOMEM;
	mv__vq_disable(vq);
	*vq = (struct mv_vq){ .ready = true, .num = (uint16_t)num, .desc = s->desc,
	                      .avail = s->avail, .used = s->used, .last_avail = base,
	                      .used_idx = base, .bufs = bufs };
	return 0;
}

uint16_t mv__vq_resume_index(const struct mv_vq *vq)
{
	return (uint16_t)(vq->last_avail - vq->held);
}

void mv__vq_disable(struct mv_vq *vq)
{
	free(vq->bufs);
	*vq = (struct mv_vq){ 0 };
}

int mv__vq_begin(struct mv_vq *vq, struct mv_region_map *map)
{
	vq->pushed = false;
	vq->d = mv__guest_ptr(map, vq->desc, desc_size(vq->num), NULL);
	vq->a = mv__guest_ptr(map, vq->avail, avail_size(vq->num), NULL);
	vq->u = mv__guest_ptr(map, vq->used, used_size(vq->num), NULL);
	if (!vq->d || !vq->a || !vq->u)
		return -EFAULT;
	/* acquire: the ring entries and descriptors the guest wrote before idx are visible */
	uint16_t idx = ld16(vq->a + 2, __ATOMIC_ACQUIRE);
	if ((uint16_t)(idx - vq->last_avail) > vq->num)
		return -EPROTO;
	vq->avail_end = idx;
	vq->budget = vq->num;
	return 0;
}

/* Walk the chain from head into c->buf. */
static int walk(struct mv_vq *vq, uint16_t head, struct mv_vq_chain *c)
{
	uint16_t i = head;
	bool writable = false;
	c->n = 0;
	for (;;) {
		if (!vq->budget)
			return -EPROTO; /* a loop, or more descriptors than the ring can hold */
		vq->budget--;
		const uint8_t *d = vq->d + 16u * i;
		uint64_t addr = ld64(d);
		uint32_t len = ld32(d + 8);
		uint16_t flags = ld16(d + 12, __ATOMIC_RELAXED), next = ld16(d + 14, __ATOMIC_RELAXED);
		if (flags & VIRTQ_DESC_F_INDIRECT)
			return -EPROTO; /* VIRTIO_F_INDIRECT_DESC is never offered */
		bool w = flags & VIRTQ_DESC_F_WRITE;
		if (writable && !w)
			return -EPROTO; /* readable buffers come first (spec 2.7.4.2) */
		writable = w;
		c->buf[c->n++] = (struct mv_vq_buf){ addr, len, w };
		if (!(flags & VIRTQ_DESC_F_NEXT))
			return 0;
		if (next >= vq->num)
			return -EPROTO;
		i = next;
	}
}

int mv__vq_pop(struct mv_vq *vq, struct mv_vq_chain *c)
{
	if (vq->held) {
		vq->held = false;
		*c = vq->hold;
		return 1;
	}
	if (vq->last_avail == vq->avail_end)
		return 0;
	uint16_t head = ld16(vq->a + 4 + 2u * (vq->last_avail & (vq->num - 1)), __ATOMIC_RELAXED);
	if (head >= vq->num)
		return -EPROTO;
	c->buf = vq->bufs;
	int err = walk(vq, head, c);
	if (err)
		return err;
	c->head = head;
	vq->last_avail++;
	return 1;
}

void mv__vq_hold(struct mv_vq *vq, const struct mv_vq_chain *c)
{
	vq->hold = *c;
	vq->held = true;
}

bool mv__vq_pending(const struct mv_vq *vq)
{
	return vq->held || vq->last_avail != vq->avail_end;
}

void mv__vq_push(struct mv_vq *vq, uint16_t head, uint32_t len)
{
	uint8_t *e = vq->u + 4 + 8u * (vq->used_idx & (vq->num - 1));
	__atomic_store_n((uint32_t *)e, htole32(head), __ATOMIC_RELAXED);
	__atomic_store_n((uint32_t *)(e + 4), htole32(len), __ATOMIC_RELAXED);
	vq->used_idx++;
	/* release: the element is visible before the index that publishes it */
	__atomic_store_n((uint16_t *)(vq->u + 2), htole16(vq->used_idx), __ATOMIC_RELEASE);
	vq->pushed = true;
}

bool mv__vq_end(struct mv_vq *vq)
{
	if (!vq->pushed)
		return false;
	vq->pushed = false;
	/* the used idx store is ordered before reading the driver's flags (spec 2.7.10): a
	 * sequentially consistent store and load (a full barrier between them) */
	__atomic_store_n((uint16_t *)(vq->u + 2), htole16(vq->used_idx), __ATOMIC_SEQ_CST);
	return !(ld16(vq->a, __ATOMIC_SEQ_CST) & VIRTQ_AVAIL_F_NO_INTERRUPT);
}
