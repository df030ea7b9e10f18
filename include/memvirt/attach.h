/* attach.h - a VMM's VMs under memvirtd: report to the host daemon, apply what it decides. */
#ifndef MEMVIRT_ATTACH_H
#define MEMVIRT_ATTACH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <memvirt/balloon.h>
#include <memvirt/host.h>
#include <memvirt/vm.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Opaque. One VMM process's link to memvirtd, the host daemon that runs the policy engine
 * over every VM of the host (docs: daemon/README.md). The VMM keeps its VMs, balloons and
 * scanner; the daemon decides:
 *
 *   VMM (this library)                       memvirtd
 *   every VM added: name, RAM, balloon info,  --> the policy over all VMs of the host
 *   scanner counters, on each poll
 *   balloon targets, scanner CPU share       <-- decisions, applied here at once
 *
 * The link has a thread of its own: it connects to the daemon's agent socket, answers the
 * daemon's polls with a report of every VM added (and asks each balloon's guest for
 * fresh statistics, mv_balloon_stats_request(), for the next poll), applies the targets
 * (mv_balloon_set_target()) and the scanner share (mv_host_set_cpu_share()) it receives,
 * and when the daemon goes away (restart, crash) connects again every retry_ms, sending
 * its VMs again, as they are then. The daemon forgets this process's VMs when the
 * connection ends (the VMM exited or called mv_attach_free()); balloon targets stay as the
 * daemon last set them.
 *
 * The wire protocol (libmemvirt/attach_wire.h) is versioned, little-endian and
 * length-checked; a message from the daemon that fails a check ends the connection (the
 * link then connects again), and a target for a VM this process did not add, or larger
 * than that VM's RAM, is refused and counted. Nothing the daemon sends can make the link
 * touch anything but the balloons and host given here.
 *
 * Threads: every function may be called from any thread; one mutex guards the VM list.
 * mv_balloon_info(), mv_vm_stats(), mv_host_stats(), mv_balloon_set_target() and
 * mv_host_set_cpu_share() are called from the link's thread with that mutex held:
 * remove a VM (mv_attach_remove_vm()) before freeing its balloon or VM.
 */
struct mv_attach;

struct mv_attach_config {
	size_t size;            /* sizeof(struct mv_attach_config); set by mv_attach_config_init() */
	const char *client;     /* a name for this process in the daemon's status (copied,
	                           at most 79 bytes); NULL = "pid N" */
	unsigned retry_ms;      /* while the daemon is away, try to connect this often;
	                           default 1000, at least 10 */
	mv_log_fn log;          /* connects, disconnects, refused messages; NULL = silent */
	void *log_opaque;
};

void mv_attach_config_init(struct mv_attach_config *cfg);

/*
 * Link this process to the daemon listening on `path` (its agent socket, e.g.
 * /run/memvirt/agent.sock). host may be NULL (no scanner: no scanner counters are
 * reported and shares are ignored); it is not owned and must outlive the link. cfg may be
 * NULL (defaults). Returns at once: a daemon not (yet) listening is not an error, the
 * link keeps trying. On success *out must be released with mv_attach_free().
 * Errors: -EINVAL (NULL path or out, path too long for a unix socket, bad config),
 * -ENOMEM, -errno of starting the thread.
 */
int mv_host_attach(struct mv_host *host, const char *path, const struct mv_attach_config *cfg,
                   struct mv_attach **out);

/*
 * Put a VM under the daemon: name (1..63 printable characters, no spaces, no ']') is how
 * the admin and the daemon's [vm NAME] policy settings know it, unique on the host. vm
 * and balloon are not owned; balloon may be NULL (reported, never reclaimed from).
 * Errors: -EINVAL (bad name, NULL vm), -EEXIST (name added), -ENOSPC (64 VMs per link),
 * -ENOMEM. A name another process already uses on the daemon is refused by the daemon
 * (logged; the VM is left out of the reports until removed and added again).
 */
int mv_attach_add_vm(struct mv_attach *a, const char *name, struct mv_vm *vm,
                     struct mv_balloon *balloon);

/* Take a VM away from the daemon: nothing is applied to it after this returns.
 * -ENOENT if unknown. */
int mv_attach_remove_vm(struct mv_attach *a, const char *name);

struct mv_attach_info {
	bool connected;         /* a daemon is linked now */
	uint64_t connects;      /* connections made, cumulative */
	uint64_t polls;         /* reports sent */
	uint64_t targets_applied, shares_applied;
	uint64_t refused;       /* daemon messages refused (bad message, unknown VM, target
	                           beyond RAM); a malformed one also ended the connection */
};

int mv_attach_info(struct mv_attach *a, struct mv_attach_info *out);

/* End the link (the daemon forgets these VMs), stop its thread, free a. Balloon targets
 * stay as they are. NULL is a no-op. */
void mv_attach_free(struct mv_attach *a);

#ifdef __cplusplus
}
#endif
#endif
