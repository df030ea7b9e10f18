/* sim.h - the hosted port: a simulated guest inside the host process.
 *
 * A simulated guest is guest RAM registered as memvirt regions of one VM, a guest page
 * allocator over that RAM, the virtio-balloon device of libmemvirt wired through its
 * virtio-mmio helper, and the guest driver (balloon-driver/) running in a thread of its
 * own. Driver and device talk only through the rings in guest RAM and the MMIO window,
 * as in a real VM. Tests, benchmarks and the policy engine's simulated guests use it.
 */
#ifndef MVG_SIM_H
#define MVG_SIM_H

#include <memvirt/balloon.h>
#include <memvirt/memvirt.h>
#include "../mvg.h"

struct mvg_sim;

struct mvg_sim_config {
	const char *name;         /* VM name (required) */
	const char *domain;       /* trust domain, NULL = own */
	uint64_t ram_bytes;       /* multiple of 2 MiB */
	uint64_t split_at;        /* RAM above this GPA continues at 4 GiB, leaving a hole as
	                             on x86 (two regions); default 3 GiB, 0 = one region */
	bool thp;                 /* back guest RAM with transparent huge pages */
	bool io_thread;           /* queue notifications go to a VMM I/O thread (ioeventfd
	                             style) instead of being handled in the driver's thread;
	                             default true */
	bool start_driver;        /* start the driver thread in mvg_sim_new (default true) */
	struct mvg_config driver; /* guest driver settings (mvg_config_init defaults) */
	struct mv_balloon_config device; /* device settings; ops and opaque are the sim's */
};

void mvg_sim_config_init(struct mvg_sim_config *cfg);

/* Map and populate nothing: RAM is mapped, registered with a new VM of host and
 * handed to the guest allocator (all free). 0 or -errno. */
int mvg_sim_new(struct mv_host *host, const struct mvg_sim_config *cfg, struct mvg_sim **out);
/* Stop the driver and I/O threads, free device, VM and RAM. NULL is a no-op. */
void mvg_sim_free(struct mvg_sim *s);

int mvg_sim_start_driver(struct mvg_sim *s);
void mvg_sim_stop_driver(struct mvg_sim *s);
/* One driver step in the calling thread (for tests that drive it by hand, with the
 * driver thread stopped or never started); returns what mvg_balloon_step returned. */
uint64_t mvg_sim_step(struct mvg_sim *s);

/* The driver instance, for tests that look inside it (drv.h), with the driver thread
 * stopped. */
struct mvg_balloon *mvg_sim_driver(struct mvg_sim *s);
struct mv_vm *mvg_sim_vm(struct mvg_sim *s);
struct mv_balloon *mvg_sim_balloon(struct mvg_sim *s);
/* Host address of guest-physical gpa (4 KiB page), NULL outside RAM. */
void *mvg_sim_hva(struct mvg_sim *s, uint64_t gpa);
/* The RAM mappings (one or two), for RSS and pagemap checks. */
unsigned mvg_sim_ram(struct mvg_sim *s, void **hva, uint64_t *gpa, uint64_t *bytes, unsigned max);

/* The guest page allocator, as the guest's workloads see it. Thread-safe.
 * mvg_sim_alloc_page: when nothing is free, the driver's deflate-on-OOM runs first;
 * -ENOMEM (and an OOM kill counted in the guest's stats) if that frees nothing. */
int mvg_sim_alloc_page(struct mvg_sim *s, uint64_t *gpa);
void mvg_sim_free_page(struct mvg_sim *s, uint64_t gpa);
int mvg_sim_alloc_run(struct mvg_sim *s, uint64_t *gpa);   /* -ENOMEM, no OOM path */
void mvg_sim_free_run(struct mvg_sim *s, uint64_t gpa);
uint64_t mvg_sim_free_bytes(struct mvg_sim *s);

/* Guest counters reported in balloon statistics (cache bytes, faults, stalls, ...):
 * the workload sets them; fields left UINT64_MAX are computed by the sim. */
void mvg_sim_set_stats(struct mvg_sim *s, const struct mvg_guest_stats *st);

void mvg_sim_driver_status(struct mvg_sim *s, struct mvg_status *out);

/* Wait until the guest's `actual` equals the device target, or the driver is at its
 * floor, or timeout_ns passes. 0, -ETIMEDOUT. */
int mvg_sim_settle(struct mvg_sim *s, uint64_t timeout_ns);

#endif
