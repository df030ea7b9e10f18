/* balloon.h - the virtio-balloon device (virtio 1.x, device ID 5) of one VM. */
#ifndef MEMVIRT_BALLOON_H
#define MEMVIRT_BALLOON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <memvirt/vm.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Opaque. Created by mv_balloon_new() for one VM, released by mv_balloon_free() before
 * the VM is freed.
 *
 * The device reads and writes guest memory only through the VM's regions: every
 * address, length, PFN and count the guest supplies is checked first, and a malformed
 * request is dropped (the device sets DEVICE_NEEDS_RESET where the virtio spec asks it
 * to) without touching host memory outside the guest's RAM. A buffer may start in one
 * region and go on in the next one adjacent in guest-physical memory (wherever their
 * host memory lies); each ring must lie within one region.
 *
 * Threads: every function may be called from any thread; one mutex per device
 * serialises them. The device never waits for the guest: queue notifications are
 * handled in the notifying thread, a bounded amount of work per call (see
 * mv_balloon_queue_notify()), so that neither the device mutex nor the VM's region
 * changes (mv_vm_region_add/remove wait for the device's reads of guest RAM) are held
 * up for long by what a guest queues.
 */
struct mv_balloon;

/* Feature bits (virtio spec 5.5.3). */
#define MV_BALLOON_F_MUST_TELL_HOST  0
#define MV_BALLOON_F_STATS_VQ        1
#define MV_BALLOON_F_DEFLATE_ON_OOM  2
#define MV_BALLOON_F_FREE_PAGE_HINT  3
#define MV_BALLOON_F_PAGE_POISON     4
#define MV_BALLOON_F_PAGE_REPORTING  5
#define MV_VIRTIO_F_VERSION_1        32
#define MV_BALLOON_FEATURES_ALL      0x3full /* the six balloon bits */

/* Statistics tags (spec 5.5.6.3, and Linux 6.12's 10-15). */
enum mv_balloon_stat {
	MV_BSTAT_SWAP_IN = 0, MV_BSTAT_SWAP_OUT = 1, MV_BSTAT_MAJFLT = 2, MV_BSTAT_MINFLT = 3,
	MV_BSTAT_MEMFREE = 4, MV_BSTAT_MEMTOT = 5, MV_BSTAT_AVAIL = 6, MV_BSTAT_CACHES = 7,
	MV_BSTAT_HTLB_PGALLOC = 8, MV_BSTAT_HTLB_PGFAIL = 9, MV_BSTAT_OOM_KILLS = 10,
	MV_BSTAT_ALLOC_STALLS = 11, MV_BSTAT_ASYNC_SCANS = 12, MV_BSTAT_DIRECT_SCANS = 13,
	MV_BSTAT_ASYNC_RECLAIMS = 14, MV_BSTAT_DIRECT_RECLAIMS = 15, MV_BSTAT_NR = 16
};

/* Hooks of the VMM. Called with the device mutex held, from the thread that caused the
 * event: they must not call back into the device. */
struct mv_balloon_ops {
	/* Raise the device's interrupt: `queue` has used buffers, or -1 for a configuration
	 * change. With the virtio-mmio helper below, InterruptStatus is kept by the device:
	 * the VMM just injects the interrupt line (e.g. KVM_IRQ_LINE or an irqfd). */
	void (*interrupt)(void *opaque, int queue);
	/* Monotonic clock in ns for stall detection; NULL = CLOCK_MONOTONIC. */
	uint64_t (*now_ns)(void *opaque);
};

struct mv_balloon_config {
	size_t size;           /* sizeof(struct mv_balloon_config); set by mv_balloon_config_init() */
	uint64_t features;     /* MV_BALLOON_F_* bits offered (as a mask); default all six */
	unsigned queue_max;    /* QueueNumMax of every queue, a power of 2 <= 32768; default 1024 */
	bool prefault_deflate; /* populate deflated pages at once; default false (on demand) */
	bool release_thread;   /* with MUST_TELL_HOST negotiated, inflated pages are released
	                          by a thread of the device after the guest has its answer (a
	                          driver with one request in flight, as Linux's, then never
	                          waits for the host's page work); a deflate waits for releases
	                          still pending. Default false: released by the notifying
	                          thread, also after the answer. */
	bool no_release;       /* keep every page: inflated, reported and hinted pages are
	                          counted and acknowledged but never released (the transport's
	                          own limit, for benchmarks); default false */
	uint64_t stall_ns;     /* no progress towards the target for this long = stalled;
	                          default 5 s; 0 = never report a stall */
	const struct mv_balloon_ops *ops; /* required; copied */
	void *opaque;          /* passed to the hooks */
};

void mv_balloon_config_init(struct mv_balloon_config *cfg);

/* Create the device of vm. *out must be released with mv_balloon_free() before
 * mv_vm_free(vm). Errors: -EINVAL (bad config), -ENOMEM. */
int mv_balloon_new(struct mv_vm *vm, const struct mv_balloon_config *cfg, struct mv_balloon **out);

/* Release the device. Pages still in the balloon stay released (they read as zero when
 * the guest touches them again). NULL is a no-op. */
void mv_balloon_free(struct mv_balloon *b);

/* ---- Admin side ---- */

/* Ask the guest for a balloon of `bytes` (rounded down to 4 KiB pages): sets num_pages
 * and raises a configuration change. -EINVAL if bytes exceeds the VM's RAM. */
int mv_balloon_set_target(struct mv_balloon *b, uint64_t bytes);

struct mv_balloon_info {
	uint64_t target_bytes;      /* num_pages * 4 KiB */
	uint64_t actual_bytes;      /* actual * 4 KiB, as the guest reports it */
	uint64_t held_bytes;        /* pages the device holds as ballooned right now */
	uint64_t released_bytes;    /* host memory given back so far (inflate, reporting, hints) */
	uint64_t inflated_bytes, deflated_bytes; /* cumulative, from the queues */
	uint64_t reported_bytes;    /* free page reporting, cumulative */
	uint64_t hinted_bytes;      /* free page hints received, cumulative */
	uint64_t hint_discarded_bytes; /* of those, unwritten since the run began: released */
	bool stalled;               /* target != actual and no progress for stall_ns */
	uint64_t stalled_ns;        /* since the last progress (0 if not stalled) */
	uint64_t stall_gap_bytes;   /* |target - actual| while stalled */
	bool needs_reset;           /* DEVICE_NEEDS_RESET set after a malformed request */
	uint64_t guest_errors;      /* requests or PFNs refused (out of RAM, duplicate, ...) */
	uint64_t features;          /* negotiated */
	uint8_t status;             /* device status register */
	uint32_t stats_valid;       /* bit per tag below that the guest has reported */
	uint64_t stats[MV_BSTAT_NR];
	uint64_t stats_age_ns;      /* since the last stats report; UINT64_MAX if none */
};

int mv_balloon_info(struct mv_balloon *b, struct mv_balloon_info *out);

/* Hand the stats buffer back to the guest: it answers with fresh statistics.
 * -EAGAIN if the guest has not sent its first buffer (or has one out already),
 * -ENOTSUP without STATS_VQ. */
int mv_balloon_stats_request(struct mv_balloon *b);

/* Free page hinting: start a new hint run (a fresh free_page_hint_cmd_id) or end it
 * (cmd id DONE). Starting write-protects the VM's RAM before the guest can see the new
 * id. A hinted page is released only if it was never written since the run started
 * (and no other path lifted its protection meanwhile); a write at any moment, even
 * while the page is released, survives (MADV_FREE, then MADV_PAGEOUT).
 * -ENOTSUP without FREE_PAGE_HINT. */
int mv_balloon_hint_start(struct mv_balloon *b);
int mv_balloon_hint_stop(struct mv_balloon *b);

/* ---- Transport side: the virtio device, for any transport ---- */

uint64_t mv_balloon_device_features(struct mv_balloon *b);
/* -EINVAL (status unchanged) unless a subset of the offered features with VERSION_1. */
int mv_balloon_driver_features(struct mv_balloon *b, uint64_t features);
uint8_t mv_balloon_get_status(struct mv_balloon *b);
/* Status 0 resets the device: features, queues, interrupt status, the held stats buffer
 * and the hint run (armed hints are dropped unreleased) go; actual and poison_val return
 * to 0, the target stays. Ballooned pages stay released but leave the balloon: the reset
 * driver owns all its memory again and inflates afresh. FEATURES_OK is refused (left
 * clear, -EINVAL) after bad features, DRIVER_OK without FEATURES_OK; clearing a bit other
 * than by reset is refused (-EINVAL). */
int mv_balloon_set_status(struct mv_balloon *b, uint8_t status);
uint32_t mv_balloon_config_generation(struct mv_balloon *b);
/* Config space (8..16 bytes; little-endian). Reads past its end return zeros. A write
 * (1..8 bytes) must lie inside one driver-written field (actual; poison_val with
 * PAGE_POISON); writes to read-only fields, before DRIVER or after NEEDS_RESET or FAILED
 * are ignored (-EPERM). */
int mv_balloon_config_read(struct mv_balloon *b, unsigned off, void *buf, unsigned len);
int mv_balloon_config_write(struct mv_balloon *b, unsigned off, const void *buf, unsigned len);
/* Queues after negotiation, numbered as Linux and QEMU do: inflateq 0, deflateq 1, then
 * statsq, free_page_vq and reporting_vq only when their feature is negotiated, each
 * taking the next number. */
unsigned mv_balloon_nr_queues(struct mv_balloon *b);
struct mv_virtq_setup {
	uint16_t num;              /* ring size, power of 2 <= queue_max */
	uint64_t desc, avail, used; /* guest-physical addresses */
};
/* Enable (setup != NULL) or disable queue q, between FEATURES_OK and DRIVER_OK (else
 * -EBUSY). -EINVAL on a bad size, misaligned rings, a ring not within one region of
 * RAM, or an unknown queue. */
int mv_balloon_queue_setup(struct mv_balloon *b, unsigned q, const struct mv_virtq_setup *setup);
/* Work per call: PFNs of inflate and deflate requests applied (a buffer that holds
 * none costs 1), or 4 KiB pages of free page reports and hints (those are never cut
 * short: one request may exceed what is left). */
#define MV_BALLOON_NOTIFY_PFNS 65536
/* The driver notified queue q: consume the buffers available when the call begins, at
 * most MV_BALLOON_NOTIFY_PFNS of work. Returns 0 when they are all consumed, and 1 when
 * the budget ran out with work left (possibly in the middle of a request, which then
 * stays unanswered): the VMM must call mv_balloon_queue_notify(b, q) again, typically
 * from its event loop after other work; the guest does not notify again for a request
 * the device holds. Region changes and calls for other queues may come in between.
 * Ignored (0) before DRIVER_OK (what was queued is consumed when DRIVER_OK is set, up to
 * the budget per queue; the rest with the queue's next call), after NEEDS_RESET and on a
 * queue not set up. -EINVAL for an unknown queue; -EPROTO when the ring was malformed and
 * the device set DEVICE_NEEDS_RESET. A reset drops the work left. */
int mv_balloon_queue_notify(struct mv_balloon *b, unsigned q);

/* ---- virtio-mmio transport helper (spec 4.2.2, version 2) ---- */

#define MV_VIRTIO_MMIO_SIZE 0x200
/* Emulate one register access at offset `off` of the device's MMIO window, len 1, 2, 4
 * (8 for config space). Unknown or misaligned accesses read 0 and are ignored (-EINVAL).
 * InterruptStatus is set before ops->interrupt is called and cleared by the driver's
 * InterruptACK. A QueueNotify write returns what mv_balloon_queue_notify() returns for
 * the queue written: 1 asks for more calls of mv_balloon_queue_notify(). */
int mv_balloon_mmio_read(struct mv_balloon *b, uint64_t off, void *data, unsigned len);
int mv_balloon_mmio_write(struct mv_balloon *b, uint64_t off, const void *data, unsigned len);

#ifdef __cplusplus
}
#endif
#endif
