/* virtq.h - the device side of a split virtqueue (virtio 1.x, 2.7) over guest RAM, every
 * value the guest controls read once and checked before use. */
#ifndef MV_VIRTQ_H
#define MV_VIRTQ_H

#include <memvirt/balloon.h>
#include <stdbool.h>
#include <stdint.h>

#include "internal.h"

/* One buffer of a descriptor chain, as the guest described it: gpa and len are guest
 * values, not checked against RAM (the queue's user decides what they mean). */
struct mv_vq_buf {
	uint64_t gpa;
	uint32_t len;
	bool write;                /* device-writable ("in") buffer */
};

struct mv_vq_chain {
	uint16_t head;             /* descriptor index to return with mv__vq_push() */
	unsigned n;                /* buffers in buf[], readable ones first */
	struct mv_vq_buf *buf;     /* the queue's own array of `num` entries */
};

/*
 * State of one queue; the owner serialises every call (the device mutex). Between
 * mv__vq_begin() and mv__vq_end() the ring pointers below are valid host addresses,
 * kept alive by the caller's rcu_read_lock().
 */
struct mv_vq {
	bool ready;
	uint16_t num;              /* ring size, a power of 2 */
	uint64_t desc, avail, used; /* guest-physical ring addresses, checked at setup */
	uint16_t last_avail;       /* next avail entry to take (device-private) */
	uint16_t used_idx;         /* next used entry to fill (device-private) */
	struct mv_vq_buf *bufs;    /* num entries, for the chain being taken */
	bool held;                 /* `hold` was taken and left unfinished: popped again */
	struct mv_vq_chain hold;   /* its buffers stay in bufs */
	/* one notification's view */
	uint8_t *d, *a, *u;        /* desc, avail, used rings in host memory */
	uint16_t avail_end;        /* avail idx read at begin: work is bounded by it */
	unsigned budget;           /* descriptors left to walk: a loop runs out of it */
	bool pushed;
};

/* Host address of guest-physical [gpa, gpa + len) if it lies wholly inside one live
 * region of map (NULL otherwise; *rp gets the region if rp). Call with rcu_read_lock(). */
void *mv__guest_ptr(struct mv_region_map *map, uint64_t gpa, uint64_t len, struct mv_region **rp);
/* Copy guest-physical [gpa, gpa + len) to dst, gathered from as many live regions as it
 * spans (adjacent in guest-physical memory, wherever their host memory lies). false if
 * part of it is not RAM (dst is then partly written). Call with rcu_read_lock(). */
bool mv__guest_read(struct mv_region_map *map, uint64_t gpa, void *dst, uint64_t len);

/* Check a ring setup (size, alignment, rings inside RAM) and enable the queue with it,
 * both indexes at `base` (0 for a new ring; a vhost-user frontend resumes a ring where
 * it stopped). -EINVAL (queue unchanged), -ENOMEM. Call with rcu_read_lock(). */
int mv__vq_enable(struct mv_vq *vq, struct mv_region_map *map, const struct mv_virtq_setup *s,
                  unsigned queue_max, uint16_t base);
/* The avail index to resume from after mv__vq_disable(): a held chain is taken again. */
uint16_t mv__vq_resume_index(const struct mv_vq *vq);
void mv__vq_disable(struct mv_vq *vq);

/* Start a round of work: map the rings, read avail idx once. -EFAULT (rings no longer in
 * RAM), -EPROTO (idx more than num ahead): the device needs a reset. */
int mv__vq_begin(struct mv_vq *vq, struct mv_region_map *map);
/* Take the next available chain: 1, 0 when none is left of those seen at begin, or
 * -EPROTO (head or next out of range, a loop or more descriptors than the ring holds,
 * INDIRECT, readable after writable): the device needs a reset. A held chain comes
 * first, as it was taken (its descriptors are not read again). */
int mv__vq_pop(struct mv_vq *vq, struct mv_vq_chain *c);
/* Keep chain c, just popped and not finished, for the next mv__vq_pop() of this round
 * or a later one. Disabling the queue drops it. */
void mv__vq_hold(struct mv_vq *vq, const struct mv_vq_chain *c);
/* True if a chain is held or chains seen at begin are still available. */
bool mv__vq_pending(const struct mv_vq *vq);
/* Return a chain: used element, then the used idx (release). */
void mv__vq_push(struct mv_vq *vq, uint16_t head, uint32_t len);
/* End the round; true if buffers were used and the driver did not suppress interrupts. */
bool mv__vq_end(struct mv_vq *vq);

#endif
