/* balloon_dev.h - private state of the virtio-balloon device, shared by its model
 * (balloon.c), its page work (balloon_mem.c) and its virtio-mmio transport (virtio_mmio.c). */
#ifndef MV_BALLOON_DEV_H
#define MV_BALLOON_DEV_H

#include <memvirt/balloon.h>

#include "internal.h"
#include "virtq.h"

#define MV_BL_NQ 5                /* queues with every feature */

/* What a queue does; its number depends on the negotiated features. */
enum mv_bl_role { BL_INFLATE, BL_DEFLATE, BL_STATS, BL_HINT, BL_REPORT };

/* Device status bits (virtio 2.1). */
#define MV_VS_ACKNOWLEDGE 0x01
#define MV_VS_DRIVER      0x02
#define MV_VS_DRIVER_OK   0x04
#define MV_VS_FEATURES_OK 0x08
#define MV_VS_NEEDS_RESET 0x40
#define MV_VS_FAILED      0x80

#define MV_BL_CMD_STOP 0u         /* free_page_hint_cmd_id values with a meaning */
#define MV_BL_CMD_DONE 1u

/* The virtio-mmio registers the driver stages before they reach the device. */
struct mv_bl_mmio {
	uint32_t dev_sel, drv_sel;    /* DeviceFeaturesSel, DriverFeaturesSel */
	uint32_t queue_sel, shm_sel;
	uint64_t drv_features;        /* both halves, handed over when FEATURES_OK is set */
	struct mv_virtq_setup q[MV_BL_NQ]; /* QueueNum and ring addresses until QueueReady */
	uint32_t isr;                 /* InterruptStatus: 1 used buffer, 2 config change */
};

/* Device-private state of one guest region, for the huge-page rule (Overview in
 * balloon_mem.c). Looked up by the region's serial, never by its address (a region added
 * after another was removed may get the same address); dropped when the region leaves
 * the map. */
struct mv_bl_region {
	uint64_t serial;              /* of the region */
	uint64_t n;                   /* entries of blk: the region's nr_chunks */
	uint8_t *blk;                 /* per 2 MiB host block: BLK_* */
};

struct mv_bl_hint { uint64_t gpa, len; }; /* an armed range, found again by gpa */

/* The PFN request in progress on inflateq or deflateq (balloon_mem.c). A notification
 * whose work budget runs out in the middle of a chain leaves it here, and the queue
 * holds the chain, until a later notification goes on from buffer `buf`, entry `at`. */
struct mv_bl_pfnq {
	uint32_t *pfn;                /* sorted copy of buffer `buf` while at < n */
	size_t cap;                   /* entries of pfn */
	size_t n, at;                 /* entries copied; the next to apply */
	unsigned buf;                 /* buffers of the chain before it are done */
};

/* Inflated pages waiting for the release thread (balloon_release.c). */
struct mv_bl_pending {
	uint64_t serial;              /* of the region (looked up again by the thread) */
	struct mv_prange range;
};

struct mv_bl_worker {
	pthread_t thread;
	bool running, quit;
	pthread_cond_t work, drained;
	struct mv_bl_pending *q;      /* queued, in order */
	size_t n, cap;
	size_t busy;                  /* entries the thread took and has not finished */
};

/* Every field is guarded by `lock`. */
struct mv_balloon {
	pthread_mutex_t lock;
	struct mv_vm *vm;
	struct mv_host *h;
	struct mv_balloon_config cfg;  /* cfg.ops points at ops */
	struct mv_balloon_ops ops;

	/* virtio device */
	uint64_t features;             /* the driver's accepted features */
	bool features_valid;           /* a valid set was written: FEATURES_OK may be set */
	uint8_t status;
	uint32_t generation;
	uint32_t num_pages, actual, cmd_id, poison; /* config space, in host order */
	unsigned nr_vq;
	uint8_t role[MV_BL_NQ];        /* by queue number */
	struct mv_vq vq[MV_BL_NQ];     /* by queue number */
	struct mv_bl_mmio mmio;

	/* progress towards the target */
	uint64_t prog_ns;              /* last progress or target change */
	uint32_t gap;                  /* |num_pages - actual| then */

	/* statistics */
	bool stats_held;               /* the driver's buffer, kept until a stats request */
	uint16_t stats_head;
	uint32_t stats_valid;
	uint64_t stats[MV_BSTAT_NR];
	bool stats_seen;
	uint64_t stats_ns;             /* last parse, if stats_seen */

	/* free page hinting */
	bool hint_run;                 /* the driver started a run with the current cmd id */
	uint32_t next_cmd;
	struct mv_bl_hint *armed;      /* MV_BL_HINT_MAX entries */
	unsigned n_armed;

	/* page work (balloon_mem.c) */
	struct mv_bl_pfnq pq[2];       /* inflateq, deflateq */
	uint32_t *tmp;                 /* sort space, tmp_cap entries */
	size_t tmp_cap;
	struct mv_prange *rv;          /* ranges to release, all in rv_r */
	size_t rv_n;
	struct mv_region *rv_r;
	bool rv_defer;                 /* they are inflated pages: released after the answer */
	struct mv_bl_worker worker;    /* cfg.release_thread */
	struct mv_bl_region *regs;
	unsigned n_regs, cap_regs;

	/* cumulative, in bytes unless named otherwise */
	uint64_t inflated, deflated, reported, hinted, hint_discarded, released;
	uint64_t guest_errors;         /* requests or PFNs refused */
};

/* balloon.c; callers hold b->lock. */
void mv__bl_raise(struct mv_balloon *b, int queue);
void mv__bl_guest_error(struct mv_balloon *b, uint64_t n, const char *what);
uint64_t mv__bl_device_features(struct mv_balloon *b);
int mv__bl_driver_features(struct mv_balloon *b, uint64_t features);
int mv__bl_set_status(struct mv_balloon *b, uint8_t status);
int mv__bl_config_read(struct mv_balloon *b, unsigned off, void *buf, unsigned len);
int mv__bl_config_write(struct mv_balloon *b, unsigned off, const void *buf, unsigned len);
int mv__bl_queue_setup(struct mv_balloon *b, unsigned q, const struct mv_virtq_setup *s);
int mv__bl_queue_notify(struct mv_balloon *b, unsigned q);
/* vhost-user: a frontend starts a ring at avail index `base` after FEATURES_OK, and may
 * stop it and start it again while the device runs (the queue is then not ready in
 * between; *base gets the index to resume from: a request cut short is taken again).
 * -EINVAL (bad queue or setup), -EBUSY (before FEATURES_OK, after NEEDS_RESET or FAILED,
 * or the queue is running). */
int mv__bl_queue_start(struct mv_balloon *b, unsigned q, const struct mv_virtq_setup *s,
                       uint16_t base);
int mv__bl_queue_stop(struct mv_balloon *b, unsigned q, uint16_t *base);

/* balloon_mem.c; callers hold b->lock and rcu_read_lock(), map is the VM's. The request
 * handlers take their work from *budget (PFNs or pages, at least 1 per buffer); pfns
 * stops when it runs out and returns false if the chain is not finished (it goes on
 * from where it stopped when called again with the same chain). */
int mv__bl_mem_init(struct mv_balloon *b);
void mv__bl_mem_free(struct mv_balloon *b);
bool mv__bl_pfns(struct mv_balloon *b, struct mv_region_map *map, const struct mv_vq_chain *c,
                 bool inflate, uint64_t *budget);
void mv__bl_pfns_drop(struct mv_balloon *b, bool inflate);
/* Release what inflate requests left pending (their answers went out first). */
void mv__bl_release_pending(struct mv_balloon *b);
void mv__bl_report(struct mv_balloon *b, struct mv_region_map *map, const struct mv_vq_chain *c,
                   uint64_t *budget);
void mv__bl_hint(struct mv_balloon *b, struct mv_region_map *map, const struct mv_vq_chain *c,
                 uint64_t *budget);
void mv__bl_hint_complete(struct mv_balloon *b, struct mv_region_map *map);
void mv__bl_hint_forget(struct mv_balloon *b, struct mv_region_map *map);
void mv__bl_forget_balloon(struct mv_balloon *b, struct mv_region_map *map);
void mv__bl_regions_prune(struct mv_balloon *b, struct mv_region_map *map);
/* The region of map with this serial (regions are found again by serial, never by
 * address: a new region may have a removed one's), NULL if it left the map. */
struct mv_region *mv__bl_region_by_serial(struct mv_region_map *map, uint64_t serial);
uint64_t mv__bl_held_pages(struct mv_region_map *map);

/* balloon_release.c: the release thread. queue: 0, or -ENOMEM / -ESRCH (no thread):
 * the caller releases them itself. drain: wait (b->lock held, released while waiting)
 * until everything queued is released. */
int mv__bl_worker_start(struct mv_balloon *b);
void mv__bl_worker_stop(struct mv_balloon *b);
int mv__bl_worker_queue(struct mv_balloon *b, uint64_t serial, const struct mv_prange *r, size_t n);
void mv__bl_worker_drain(struct mv_balloon *b);

/* virtio_mmio.c */
void mv__bl_mmio_reset(struct mv_bl_mmio *m);

#endif
