/* vubridge_int.h - the bridge's state and wire, shared by its register file
 * (vubridge.c) and its connection to the backend (vuconn.c). */
#ifndef MVG_VUBRIDGE_INT_H
#define MVG_VUBRIDGE_INT_H

#include "vubridge.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

/* The wire, as a frontend writes it. */
enum {
	GET_FEATURES = 1, SET_FEATURES = 2, SET_OWNER = 3, SET_MEM_TABLE = 5, SET_VRING_NUM = 8,
	SET_VRING_ADDR = 9, SET_VRING_BASE = 10, GET_VRING_BASE = 11, SET_VRING_KICK = 12,
	SET_VRING_CALL = 13, GET_PROTOCOL_FEATURES = 15, SET_PROTOCOL_FEATURES = 16,
	SET_VRING_ENABLE = 18, SET_BACKEND_REQ_FD = 21, GET_CONFIG = 24, SET_CONFIG = 25,
	RESET_DEVICE = 34,
};
enum { BACKEND_CONFIG_CHANGE = 2 };

#define VERSION      1u
#define FL_REPLY     (1u << 2)
#define FL_NEED      (1u << 3)
#define F_PROTOCOL   30
#define PF_REPLY_ACK 3
#define PF_BACKEND   5
#define PF_CONFIG    9
#define PF_RESET     13
#define BIT(n)       (1ull << (n))
#define PF_NEEDED    (BIT(PF_REPLY_ACK) | BIT(PF_CONFIG))
#define PF_WANTED    (PF_NEEDED | BIT(PF_BACKEND) | BIT(PF_RESET))
#define NQ           5           /* inflate, deflate, stats, hint, report */
#define CONFIG_BYTES 256         /* the window's config space, 0x100..0x1ff */
#define MAX_PAYLOAD  512
#define MMIO_VENDOR  0x4255564du /* "MVUB" */
#define BALLOON_ID   5u

struct hdr { uint32_t req, flags, size; };
struct vstate { uint32_t index, num; };
struct vaddr { uint32_t index, flags; uint64_t desc, used, avail, log; };
struct vregion { uint64_t gpa, size, uaddr, offset; };
struct vmem { uint32_t n, pad; struct vregion r[MVG__VUB_MAX_REGIONS]; };
struct vcfg { uint32_t offset, size, flags; uint8_t data[8]; };

/* A queue as the driver staged it. */
struct queue {
	uint32_t num;
	uint64_t desc, avail, used; /* guest-physical */
	bool ready;                 /* handed to the backend */
};

struct mvg__vub {
	struct mvg__vub_config cfg;
	struct mvg__vub_region reg[MVG__VUB_MAX_REGIONS];
	pthread_mutex_t lock;       /* everything below but the atomics and chan */
	int sock;
	int chan;                   /* our end of the backend channel (the thread's), -1 */
	int kick[NQ], call[NQ];     /* ours; the backend gets copies */
	int stop;                   /* eventfd: the thread ends */
	pthread_t thread;
	bool thread_running;

	uint64_t dev_features;      /* GET_FEATURES without bit 30 */
	bool protocol;              /* the backend offered bit 30 */
	uint64_t pf;                /* protocol features negotiated */
	uint32_t dev_sel, drv_sel, queue_sel;
	uint64_t drv_features;      /* staged by the driver */
	uint64_t features;          /* accepted at FEATURES_OK */
	uint8_t status;
	struct queue q[NQ];

	atomic_uint isr, generation;
	atomic_int error;           /* 0, or -errno: the connection ended */
	atomic_uint_fast64_t requests, refused, ring_irqs, config_irqs;
};

static inline bool mvg__vub_dead(struct mvg__vub *v)
{
	return atomic_load(&v->error) != 0;
}

/* vuconn.c. Requests: lock held. */
int mvg__vub_transact(struct mvg__vub *v, uint32_t req, uint32_t flags, const void *pl,
                      uint32_t size, const int *fds, unsigned nfds, void *out, uint32_t out_size);
int mvg__vub_request(struct mvg__vub *v, uint32_t req, const void *pl, uint32_t size,
                     const int *fds, unsigned nfds);
int mvg__vub_request_state(struct mvg__vub *v, uint32_t req, uint32_t index, uint32_t num);
int mvg__vub_handshake(struct mvg__vub *v);
/* The interrupt thread's body (arg: the bridge). */
void *mvg__vub_thread(void *arg);
/* Empty an eventfd's counter, never waiting. */
void mvg__vub_drain(int fd);

#endif
