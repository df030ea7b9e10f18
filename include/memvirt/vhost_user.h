/* vhost_user.h - the balloon device as a vhost-user backend: one frontend per connection. */
#ifndef MEMVIRT_VHOST_USER_H
#define MEMVIRT_VHOST_USER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <memvirt/balloon.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Opaque. A vhost-user backend (the vhost-user protocol's "back-end") that serves
 * memvirt's virtio-balloon device to one frontend over a connected unix socket: Linux's
 * virtio_uml (user-mode Linux), crosvm's --vhost-user, cloud-hypervisor's
 * --generic-vhost-user (virtio_id=5), QEMU's vhost-user-test-device.
 *
 * The frontend's guest memory arrives as file descriptors (SET_MEM_TABLE); the backend
 * maps each region MAP_SHARED and registers it as a region of `vm` (slots 0..7, never
 * merged: the memory is shared with the frontend). Inflated, reported and hinted pages
 * are released by punching holes in those files (MADV_REMOVE), which frees host memory
 * while the guest runs. Free page hints are acknowledged but release nothing here: a
 * write to shared memory cannot be watched from this process.
 *
 * Every message is checked before anything is applied: header version and size, the fd
 * count a request must carry, region counts, alignment and overlaps, regions beyond the
 * end of their file, ring addresses outside every region, queue numbers and sizes,
 * config-space ranges, unknown requests. A bad request gets an error reply when the
 * frontend asked for one (REPLY_ACK) and changes nothing; a malformed message (bad
 * version, oversized payload, a reply-carrying request of the wrong size) ends the
 * connection. The frontend's memory files must keep their size while mapped (a file
 * truncated under the mapping makes accesses fault with SIGBUS, as in every vhost-user
 * backend): seal memfds with F_SEAL_SHRINK. Nothing waits on the frontend's descriptors:
 * kick and call descriptors are made O_NONBLOCK (a flag the frontend's copy shares), a
 * call that cannot be delivered at once is dropped (SIGPIPE from a call pipe without a
 * reader is blocked in the writing thread and taken back), a kick pipe or socket that
 * reaches its end is no longer watched, and a backend-channel message cut short closes
 * the channel rather than leave its stream out of step.
 *
 * Protocol features offered: REPLY_ACK, BACKEND_REQ (config-change notices, in-band
 * calls), CONFIG, RESET_DEVICE, and INBAND_NOTIFICATIONS when configured. A frontend
 * that sends no device status (virtio_uml) is followed as it goes: the features are
 * accepted at SET_FEATURES, the driver is running once every queue of the negotiated
 * layout has its size, addresses and kick, and a ring stopped by GET_VRING_BASE resumes
 * at the base the frontend gives.
 *
 * Threads: mv_vhost_user_dispatch() is called from one thread at a time (the VMM's or
 * daemon's event loop); the balloon (mv_vhost_user_balloon()) may be used from any
 * thread as documented in balloon.h, and mv_vhost_user_info() too. No thread of its own
 * unless call_thread (or the device's release_thread) is asked for.
 */
struct mv_vhost_user;

struct mv_vhost_user_config {
	size_t size;                     /* sizeof(struct mv_vhost_user_config); set by
	                                    mv_vhost_user_config_init() */
	struct mv_balloon_config balloon; /* the device, as for mv_balloon_new(); its ops may be
	                                    NULL (interrupts go to the frontend); ops->now_ns is
	                                    used when set. queue_max is capped at 32768. */
	bool inband_notifications;       /* offer INBAND_NOTIFICATIONS: kicks and calls travel
	                                    as messages; default false (eventfds are faster) */
	bool call_thread;                /* ring call descriptors from a thread of this
	                                    connection. A frontend shares each call descriptor's
	                                    file description: it can clear O_NONBLOCK and fill
	                                    its eventfd, and a write to it then waits. With this,
	                                    only that thread waits (let go or
	                                    cancelled by mv_vhost_user_free()); without it, the thread that
	                                    finished the request, holding the device mutex. Serve
	                                    frontends you do not trust with it. Default false. */
};

void mv_vhost_user_config_init(struct mv_vhost_user_config *cfg);

/* Serve the frontend connected on `sock` (a connected SOCK_STREAM unix socket). vm must
 * have no regions and stays the caller's; the backend owns sock from a successful call
 * on (closed by mv_vhost_user_free()). Errors: -EINVAL (bad config, vm with regions, not
 * a socket), -ENOMEM, -errno of epoll or eventfd. */
int mv_vhost_user_new(struct mv_vm *vm, int sock, const struct mv_vhost_user_config *cfg,
                      struct mv_vhost_user **out);

/* End the connection: the device is reset and freed, the frontend's memory unmapped and
 * its regions removed from the VM, every descriptor closed. Pages released stay
 * released (they read as zero in the guest). NULL is a no-op. */
void mv_vhost_user_free(struct mv_vhost_user *vu);

/* The device: targets, statistics, hint runs (balloon.h). Owned by vu. */
struct mv_balloon *mv_vhost_user_balloon(struct mv_vhost_user *vu);

/* One descriptor for the caller's poll/epoll: readable when the backend has work (a
 * message, a kick, or work left from an earlier call). Stable for vu's life. */
int mv_vhost_user_fd(struct mv_vhost_user *vu);

/* Handle what is ready, without blocking: messages (a bounded number per call), kicks,
 * and queue work (MV_BALLOON_NOTIFY_PFNS per queue per call; the fd stays readable
 * while work is left). Returns 0, -ECONNRESET when the frontend closed the connection,
 * or -EPROTO when the connection was ended on a malformed message; after either, only
 * mv_vhost_user_free() is useful. */
int mv_vhost_user_dispatch(struct mv_vhost_user *vu);

struct mv_vhost_user_info {
	bool running;                    /* every queue started: the driver is live */
	unsigned regions;                /* of the frontend's memory table */
	uint64_t ram_bytes;              /* their total size */
	uint64_t file_bytes;             /* host memory their files hold now (st_blocks) */
	uint64_t messages, bad_messages; /* requests received; of those refused */
	uint64_t kicks, calls;           /* notifications received and sent */
	uint64_t protocol_features;      /* negotiated */
};

int mv_vhost_user_info(struct mv_vhost_user *vu, struct mv_vhost_user_info *out);

#ifdef __cplusplus
}
#endif
#endif
