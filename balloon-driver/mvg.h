/* mvg.h - memvirt's guest-side virtio-balloon driver: platform interface and driver API.
 *
 * Freestanding C: this header and the driver's sources use only <stdint.h>, <stddef.h>
 * and <stdbool.h> (plus compiler builtins). Everything the driver needs from the guest
 * kernel goes through struct mvg_platform; a port fills it (balloon-driver/hosted/ runs
 * the driver in a host thread against a simulated guest).
 */
#ifndef MVG_H
#define MVG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MVG_PAGE_SIZE 4096u
#define MVG_RUN_SIZE  (2u << 20) /* a 2 MiB run: 512 contiguous pages, 2 MiB aligned */

/* Guest memory statistics the platform can provide (UINT64_MAX = unknown). */
struct mvg_guest_stats {
	uint64_t swap_in, swap_out, major_faults, minor_faults; /* pages / events */
	uint64_t free_bytes, total_bytes, avail_bytes, cache_bytes;
	uint64_t htlb_alloc, htlb_fail, oom_kills, alloc_stalls;
	uint64_t async_scans, direct_scans, async_reclaims, direct_reclaims;
};

/* What the guest kernel gives the driver. Every hook is required unless marked. */
struct mvg_platform {
	void *ctx; /* passed to every hook */
	/* Guest pages. alloc_* return 0 and the page's guest-physical address, or -1 when
	 * no memory is free (they never sleep or trigger the OOM path for the driver). */
	int (*alloc_page)(void *ctx, uint64_t *gpa);
	void (*free_page)(void *ctx, uint64_t gpa);
	int (*alloc_run)(void *ctx, uint64_t *gpa);     /* 2 MiB aligned, 2 MiB long */
	void (*free_run)(void *ctx, uint64_t gpa);
	/* A pointer through which the driver reads and writes guest-physical memory
	 * [gpa, gpa + MVG_PAGE_SIZE) (rings and PFN arrays live in pages it allocated).
	 * The driver keeps it for as long as it holds the page (a kernel's direct map). */
	void *(*map)(void *ctx, uint64_t gpa);
	/* Free memory the driver must leave to the guest (the floor check), in bytes. */
	uint64_t (*free_bytes)(void *ctx);
	void (*get_stats)(void *ctx, struct mvg_guest_stats *out);
	/* Free page reporting (optional, NULL = not offered): take one free 2 MiB run that
	 * was not reported since it was last allocated out of the free lists (0), or -1;
	 * give it back, now marked reported. */
	int (*isolate_unreported)(void *ctx, uint64_t *gpa);
	void (*putback_reported)(void *ctx, uint64_t gpa);
	/* MMIO accesses to the device window (offsets from its base), 32-bit. Ordering:
	 * each access is a full barrier in both directions. */
	uint32_t (*mmio_read)(void *ctx, uint32_t off);
	void (*mmio_write)(void *ctx, uint32_t off, uint32_t val);
	/* Sleep until the device interrupts or timeout_ns passes (the interrupt may have
	 * happened already since the last wait: then return at once). */
	void (*wait)(void *ctx, uint64_t timeout_ns);
	uint64_t (*now_ns)(void *ctx);
	/* Optional message sink (NULL = silent). */
	void (*log)(void *ctx, const char *msg);
};

struct mvg_config {
	uint64_t floor_bytes;     /* never inflate (nor hint) while guest free memory is below
	                             this; default 0 */
	uint64_t features;        /* bits the driver may negotiate (mask of spec bits 0-5);
	                             default all but PAGE_POISON. Set PAGE_POISON only if the
	                             platform's free pages hold poison_val (the guest poisons
	                             what it frees): the driver then reports free runs as they
	                             are and writes poison_val into pages it gives back after
	                             the host may have dropped them (deflate, early hint
	                             release), as the spec asks */
	unsigned inflight;        /* requests in flight per queue, 1..64; default 8 */
	unsigned pfns_per_req;    /* PFNs per inflate/deflate request, rounded up to a multiple
	                             of 512, at most 16384; default 4096 */
	uint64_t stats_period_ns; /* not used: in the virtio protocol only the device asks for
	                             statistics (it returns the buffer, the driver refills it at
	                             once); a driver cannot push them. Leave 0 */
	uint64_t report_period_ns; /* free page reporting pass every; default 2 s; 0 = none */
	uint32_t poison_val;      /* written to config when PAGE_POISON is negotiated */
};

void mvg_config_init(struct mvg_config *cfg);

/* Errors in mvg_status.error. */
#define MVG_ERR_PROTO (-71) /* the device broke the protocol (bad used id or length, used
                               index running ahead): the entry was ignored, driver goes on */
#define MVG_ERR_NOMEM (-12) /* a ballooned page could not be recorded (no bookkeeping page) */
#define MVG_ERR_RESET (-5)  /* the device set DEVICE_NEEDS_RESET: the driver stopped */

/* Driver status, for the port and for tests. */
struct mvg_status {
	uint64_t target_pages, actual_pages; /* num_pages seen / actual written */
	uint64_t ballooned_runs, ballooned_pages; /* 2 MiB runs and single 4 KiB pages held
	                             (acked by the device, not counting requests in flight) */
	bool at_floor;            /* inflate stopped, nothing in flight: free memory at the
	                             floor, or the balloon deflated on OOM (then until the
	                             target changes) */
	uint64_t oom_deflated_pages; /* given back by mvg_balloon_oom, cumulative */
	uint64_t reported_runs;   /* 2 MiB runs reported free and acked, cumulative */
	uint64_t hinted_pages;    /* 4 KiB pages sent as free page hints, cumulative */
	uint64_t hint_held_pages; /* hinted pages the driver holds now (until DONE) */
	uint64_t hint_runs;       /* hint runs (command ids) answered and ended with STOP */
	uint64_t inflate_reqs, deflate_reqs, stats_sent;
	uint64_t bookkeeping_pages; /* guest pages the driver holds for its own lists */
	uint64_t negotiated;      /* feature bits */
	int error;                /* 0, or the first MVG_ERR_* seen (sticky) */
};

/* Opaque to ports; its size is fixed so a port can place it statically (8-byte
 * aligned; about 110 KiB). */
struct mvg_balloon;
size_t mvg_balloon_size(void);

/*
 * Probe the virtio-mmio device (magic, version 2, device ID 5), negotiate features,
 * set up the queues with ring memory from the platform. `d` is mvg_balloon_size()
 * bytes, owned by the port; cfg NULL = mvg_config_init() defaults. 0, or -1 (not a
 * balloon), -2 (negotiation refused), -3 (no memory for rings and buffers: what was
 * allocated is freed and the device is left FAILED).
 */
int mvg_balloon_init(struct mvg_balloon *d, const struct mvg_platform *p, const struct mvg_config *cfg);

/*
 * One step of the driver, never blocking: collect used buffers, move toward the target
 * with several requests in flight (2 MiB runs first, 4 KiB pages after, never below the
 * floor), answer stats requests, report free pages, run free page hinting. Returns the
 * ns the port may sleep (in wait, woken early by the device's interrupt) before the
 * next step, or 0 to call again at once.
 */
uint64_t mvg_balloon_step(struct mvg_balloon *d);

/*
 * Deflate on OOM: called by the port's allocator when it has nothing free. Gives back up
 * to `bytes`: hinted pages the device has returned first, then from the balloon, 4 KiB
 * pages before 2 MiB runs (telling the host first: with MUST_TELL_HOST the pages are
 * freed on the device's ack, waited for in platform wait for at most ~100 ms). Only when
 * DEFLATE_ON_OOM is negotiated; returns bytes given back to the platform by this call
 * (0 without the feature). The balloon then does not inflate again until the host sets
 * a new target (status at_floor). Same thread as mvg_balloon_step (the port serialises
 * them).
 */
uint64_t mvg_balloon_oom(struct mvg_balloon *d, uint64_t bytes);

void mvg_balloon_status(const struct mvg_balloon *d, struct mvg_status *out);

/* Reset the device and give every page the driver holds back to the guest (ballooned,
 * in flight, hinted, being reported, its rings and lists). The driver is dead after. */
void mvg_balloon_remove(struct mvg_balloon *d);

#endif
