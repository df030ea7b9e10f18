/* vhost_user_int.h - private state of the vhost-user backend, shared by its connection
 * (vhost_user.c) and its memory table (vhost_user_mem.c). */
#ifndef MV_VHOST_USER_INT_H
#define MV_VHOST_USER_INT_H

#include <memvirt/vhost_user.h>

#include "balloon_dev.h"

#define VU_MAX_REGIONS 8          /* VHOST_MEMORY_BASELINE_NREGIONS */
#define VU_MAX_FDS     8          /* per message */
#define VU_CONFIG_MAX  256        /* config-space bytes a GET/SET_CONFIG may name */

/* The wire (native byte order, as the protocol says). */
struct vu_hdr {
	uint32_t request, flags, size;
};

struct vu_state { uint32_t index, num; };
struct vu_addr { uint32_t index, flags; uint64_t desc, used, avail, log; };
struct vu_region { uint64_t gpa, size, uaddr, offset; };
struct vu_mem { uint32_t n, padding; struct vu_region r[VU_MAX_REGIONS]; };
struct vu_cfg { uint32_t offset, size, flags; uint8_t data[VU_CONFIG_MAX]; };

union vu_payload {
	uint64_t u64;
	struct vu_state state;
	struct vu_addr addr;
	struct vu_mem mem;
	struct vu_cfg cfg;
	uint8_t raw[512];
};

/* One region of the frontend's memory, mapped here. */
struct vu_mreg {
	uint64_t gpa, size, uaddr;    /* as the frontend gave them */
	uint64_t offset;              /* in the file */
	uint64_t dev, ino;            /* the file */
	uint8_t *map;                 /* MAP_SHARED of the file from offset, size bytes */
	int fd;
	uint32_t slot;                /* its region's slot in the VM */
};

/* What the frontend set up for one ring; handed to the device when it is complete. */
struct vu_queue {
	bool has_num, has_addr, has_kick;
	bool enabled;                 /* SET_VRING_ENABLE (on from the start without
	                                 VHOST_USER_F_PROTOCOL_FEATURES) */
	bool started;                 /* given to the device and not stopped since */
	uint16_t num, base;
	uint64_t desc, avail, used;   /* guest-physical, translated from frontend addresses */
	int kick, call;               /* -1: none (in-band, or not given) */
};

struct mv_vhost_user {
	pthread_mutex_t lock;         /* dispatch against info: everything below but fds */
	pthread_mutex_t fd_lock;      /* call fds and the backend channel: the device's
	                                 interrupt hook takes it under the device mutex */
	struct mv_vm *vm;
	struct mv_balloon *b;
	struct mv_vhost_user_config cfg;
	struct mv_balloon_ops user_ops; /* the caller's, for now_ns */
	int sock, ep, wake;           /* the connection, the epoll set, work-left eventfd */
	int backend;                  /* backend channel (SET_BACKEND_REQ_FD), -1 if none */

	/* receiving: a message is taken in pieces as it arrives */
	struct vu_hdr hdr;
	union vu_payload pl;
	size_t got;                   /* bytes of header + payload received */
	int fds[VU_MAX_FDS];
	unsigned nfds;
	bool too_many_fds;

	uint64_t features;            /* acked with SET_FEATURES, bit 30 included */
	bool features_set;
	uint64_t protocol;            /* acked protocol features */
	bool running;                 /* DRIVER_OK given to the device */
	struct vu_queue q[MV_BL_NQ];
	struct vu_mreg mem[VU_MAX_REGIONS];
	unsigned nmem;
	uint32_t more;                /* bit per queue with work left */

	uint64_t messages, bad_messages, kicks;
	uint64_t calls;               /* under fd_lock */

	/* cfg.call_thread (vhost_user_notify.c) */
	pthread_t notifier;
	bool notifier_running;
	_Atomic bool notifier_quit;
	int notify_efd;               /* ours: wakes the thread */
	int notifier_fd;              /* the call descriptor it is writing (a dup), under fd_lock */
	_Atomic uint32_t pending_calls; /* bit per queue */
};

/* Wire constants the files share. */
#define BIT(n)             (1ull << (n))
#define VU_VERSION         1u
#define VU_F_PROTOCOL      30   /* VHOST_USER_F_PROTOCOL_FEATURES */
#define VU_RING_NOFD       (1ull << 8)  /* SET_VRING_KICK/CALL/ERR: no descriptor */
#define VU_RING_INDEX      0xffull
#define VU_PF_CONFIG       9
#define VU_PF_BACKEND_REQ  5
#define VU_PF_INBAND       14
enum { VU_BACKEND_CONFIG_CHANGE = 2, VU_BACKEND_VRING_CALL = 4 };

/* vhost_user.c */
int mv__vu_reply(struct mv_vhost_user *vu, const void *payload, uint32_t size);

/* vhost_user_ring.c; vu->lock and the device mutex held. The ring requests return 0 or
 * -errno for the ack (ring_stop: 0 once its reply is sent). */
uint64_t mv__vu_device_features(struct mv_vhost_user *vu);
void mv__vu_queues_reset(struct mv_vhost_user *vu);
void mv__vu_device_reset(struct mv_vhost_user *vu);
int mv__vu_set_features(struct mv_vhost_user *vu, uint64_t f);
void mv__vu_kick(struct mv_vhost_user *vu, unsigned q);  /* run ring q's work */
int mv__vu_ring_num(struct mv_vhost_user *vu, const struct vu_state *s);
int mv__vu_ring_addr(struct mv_vhost_user *vu, const struct vu_addr *a);
int mv__vu_ring_base(struct mv_vhost_user *vu, const struct vu_state *s);
int mv__vu_ring_stop(struct mv_vhost_user *vu, const struct vu_state *s);
int mv__vu_ring_kick_fd(struct mv_vhost_user *vu, uint64_t v);
int mv__vu_ring_call_fd(struct mv_vhost_user *vu, uint64_t v, bool err_fd);
int mv__vu_ring_enable(struct mv_vhost_user *vu, const struct vu_state *s);
void mv__vu_try_start(struct mv_vhost_user *vu);

/* vhost_user_notify.c */
bool mv__vu_inband(const struct mv_vhost_user *vu);
int mv__vu_set_nonblock(int fd);          /* 0, or -1 with errno */
void mv__vu_close(int *fd);               /* close if >= 0, then -1 */
/* One message, never waiting: 0, -EAGAIN (nothing sent), -EMSGSIZE (part of it), -errno. */
int mv__vu_send(int fd, uint32_t request, uint32_t flags, const void *payload, uint32_t size);
void mv__vu_interrupt(void *opaque, int queue); /* the device's interrupt hook */
int mv__vu_notifier_start(struct mv_vhost_user *vu);
void mv__vu_notifier_stop(struct mv_vhost_user *vu);

/* vhost_user_mem.c; caller holds vu->lock. mv__vu_mem_set: 0, and every descriptor is
 * the table's or closed; -errno, and nothing changed (the descriptors are the caller's). */
int mv__vu_mem_set(struct mv_vhost_user *vu, const struct vu_mem *m, uint32_t size,
                   const int *fds, unsigned nfds);
void mv__vu_mem_clear(struct mv_vhost_user *vu);
/* Guest-physical address of frontend address [ua, ua + len), which must lie in one
 * region; false if it does not. */
bool mv__vu_mem_gpa(const struct mv_vhost_user *vu, uint64_t ua, uint64_t len, uint64_t *gpa);
uint64_t mv__vu_mem_file_bytes(const struct mv_vhost_user *vu);

#endif
