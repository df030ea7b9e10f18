/* sim.h - the hosted port: a simulated guest inside the host process.
 *
 * A simulated guest is guest RAM registered as memvirt regions of one VM, a guest page
 * allocator over that RAM, the virtio-balloon device of libmemvirt wired through its
 * virtio-mmio helper, and the guest driver (balloon-driver/) running in a thread of its
 * own. Driver and device talk only through the rings in guest RAM and the MMIO window,
 * as in a real VM. Tests, benchmarks and the policy engine's simulated guests use it.
 *
 * With vhost_user_socket set, the device is a vhost-user backend instead (memvirt's own,
 * or any other): guest RAM is one memfd mapped MAP_SHARED, and the driver's MMIO window
 * is a bridge (vubridge.h) that speaks vhost-user to the backend, as a VMM's
 * vhost-user-device does. No VM nor device of libmemvirt lives in the sim then.
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
	struct mv_balloon_config device; /* device settings; ops and opaque are the sim's.
	                             Over vhost-user only queue_max is used (QueueNumMax) */
	const char *vhost_user_socket; /* NULL: libmemvirt's device in-process. Else connect
	                             to the vhost-user backend listening here (host may be
	                             NULL; io_thread, domain and device settings but
	                             queue_max are not used) */
	uint64_t vhost_user_timeout_ns; /* bound on every wait for the backend; default 5 s.
	                             Past it the connection is over: the driver sees a device
	                             that needs a reset and stops */
};

void mvg_sim_config_init(struct mvg_sim_config *cfg);

/* Map and populate nothing: RAM is mapped, registered with a new VM of host and
 * handed to the guest allocator (all free). 0 or -errno; over vhost-user also the
 * connection's errors (-ENOENT, -ECONNREFUSED, -ETIMEDOUT, -ECONNRESET, -EPROTO,
 * -EPROTONOSUPPORT), and -ENODEV / -EPROTO when the driver finds no balloon or its
 * negotiation is refused. */
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
/* The in-process VM and device; NULL over vhost-user (the backend has them). */
struct mv_vm *mvg_sim_vm(struct mvg_sim *s);
struct mv_balloon *mvg_sim_balloon(struct mvg_sim *s);
/* Over vhost-user: guest RAM's memfd (the sim's: do not close), else -1. */
int mvg_sim_ram_fd(struct mvg_sim *s);

/* The vhost-user transport, as the VMM side sees it (all 0 in-process). */
struct mvg_sim_transport_info {
	int error;                 /* 0 while the backend is there; else why it is not */
	uint64_t requests;         /* vhost-user requests sent */
	uint64_t refused;          /* of those, refused by the backend */
	uint64_t ring_irqs;        /* call eventfd wake-ups turned into interrupts */
	uint64_t config_irqs;      /* CONFIG_CHANGE messages turned into interrupts */
	uint64_t protocol_features; /* negotiated */
};
void mvg_sim_transport_info(struct mvg_sim *s, struct mvg_sim_transport_info *out);
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
 * floor, or timeout_ns passes. 0, -ETIMEDOUT; over vhost-user the device's view is read
 * through the bridge's config space, -ENOTCONN once the backend is gone. */
int mvg_sim_settle(struct mvg_sim *s, uint64_t timeout_ns);

#endif
