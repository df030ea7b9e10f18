/* vubridge.c - a virtio-mmio register file whose device is a vhost-user backend.
 *
 * Threads: the driver's accesses (mvg__vub_read/write) take `lock`, which serialises the
 * register file and the connection: one request and its reply at a time, every wait on
 * the socket bounded by timeout_ns. The interrupt thread owns the backend channel and
 * only touches atomics: isr, generation, the counters, and `error` (set once, by whoever
 * sees the connection end first).
 */
#include "vubridge.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../virtio.h"

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

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- the end of the connection ---- */

static void irq(struct mvg__vub *v, unsigned bits)
{
	atomic_fetch_or(&v->isr, bits);
	v->cfg.interrupt(v->cfg.opaque);
}

/* The connection is over (first caller wins): the backend sees its end, the driver a
 * device that needs a reset. Returns err. */
static int broken(struct mvg__vub *v, int err)
{
	int none = 0;
	if (atomic_compare_exchange_strong(&v->error, &none, err)) {
		shutdown(v->sock, SHUT_RDWR);
		atomic_fetch_add(&v->generation, 1);
		irq(v, VMMIO_INT_CONFIG);
	}
	return err;
}

static bool dead(struct mvg__vub *v)
{
	return atomic_load(&v->error) != 0;
}

/* ---- bounded sending and receiving ---- */

/* Wait until fd is ready for `events` or the deadline passes: 0, -ETIMEDOUT, -errno. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
	for (;;) {
		uint64_t now = mono_ns();
		if (now >= deadline)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = events };
		int ms = (int)((deadline - now + 999999) / 1000000);
		int n = poll(&p, 1, ms);
		if (n > 0)
			return 0; /* readable, writable, or an error the next call reports */
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

static int send_all(int fd, const struct hdr *h, const void *pl, const int *fds, unsigned nfds,
                    uint64_t deadline)
{
	uint8_t buf[sizeof(*h) + MAX_PAYLOAD];
	size_t len = sizeof(*h) + h->size, off = 0;
	memcpy(buf, h, sizeof(*h));
	if (h->size)
		memcpy(buf + sizeof(*h), pl, h->size);
	union { char b[CMSG_SPACE(MVG__VUB_MAX_REGIONS * sizeof(int))]; struct cmsghdr align; } cm;
	while (off < len) {
		struct iovec iov = { buf + off, len - off };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
		if (nfds && !off) { /* the descriptors go with the first byte */
			mh.msg_control = cm.b;
			mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
			struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
			*c = (struct cmsghdr){ .cmsg_len = CMSG_LEN(nfds * sizeof(int)),
			                       .cmsg_level = SOL_SOCKET, .cmsg_type = SCM_RIGHTS };
			memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
		}
		ssize_t n = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return errno == EPIPE ? -ECONNRESET : -errno;
		int err = wait_fd(fd, POLLOUT, deadline);
		if (err)
			return err;
	}
	return 0;
}

/* len bytes from fd; descriptors that come along are closed (none is expected). */
static int recv_all(int fd, void *buf, size_t len, uint64_t deadline)
{
	size_t off = 0;
	while (off < len) {
		union { char b[CMSG_SPACE(8 * sizeof(int))]; struct cmsghdr align; } cm;
		struct iovec iov = { (uint8_t *)buf + off, len - off };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b,
		                     .msg_controllen = sizeof(cm.b) };
		ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		for (struct cmsghdr *c = n > 0 ? CMSG_FIRSTHDR(&mh) : NULL; c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
				for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
					int x;
					memcpy(&x, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
					close(x);
				}
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n == 0)
			return -ECONNRESET;
		if (errno != EAGAIN && errno != EINTR)
			return -errno;
		int err = wait_fd(fd, POLLIN, deadline);
		if (err)
			return err;
	}
	return 0;
}

/* ---- requests (lock held) ---- */

/* Send a request; with `out`, read its reply of exactly out_size bytes. Any failure of
 * the connection breaks the bridge. 0 or -errno. */
static int transact(struct mvg__vub *v, uint32_t req, uint32_t flags, const void *pl,
                    uint32_t size, const int *fds, unsigned nfds, void *out, uint32_t out_size)
{
	if (dead(v))
		return atomic_load(&v->error);
	uint64_t deadline = mono_ns() + v->cfg.timeout_ns;
	struct hdr h = { req, flags | VERSION, size };
	atomic_fetch_add(&v->requests, 1);
	int err = send_all(v->sock, &h, pl, fds, nfds, deadline);
	if (err || !out)
		return err ? broken(v, err) : 0;
	struct hdr r;
	err = recv_all(v->sock, &r, sizeof(r), deadline);
	if (!err && (r.req != req || r.flags != (VERSION | FL_REPLY) || r.size != out_size))
		err = -EPROTO; /* the stream is out of step: nothing after it can be trusted */
	if (!err)
		err = recv_all(v->sock, out, out_size, deadline);
	return err ? broken(v, err) : 0;
}

/* A request with an ack: 0 applied, -EINVAL refused by the backend, or the connection's
 * error. */
static int request(struct mvg__vub *v, uint32_t req, const void *pl, uint32_t size,
                   const int *fds, unsigned nfds)
{
	uint64_t st;
	int err = transact(v, req, FL_NEED, pl, size, fds, nfds, &st, 8);
	if (!err && st) {
		atomic_fetch_add(&v->refused, 1);
		return -EINVAL;
	}
	return err;
}

static int request_u64(struct mvg__vub *v, uint32_t req, uint64_t val)
{
	return request(v, req, &val, 8, NULL, 0);
}

static int request_state(struct mvg__vub *v, uint32_t req, uint32_t index, uint32_t num)
{
	struct vstate s = { index, num };
	return request(v, req, &s, sizeof(s), NULL, 0);
}

static int get_u64(struct mvg__vub *v, uint32_t req, uint64_t *out)
{
	return transact(v, req, 0, NULL, 0, NULL, 0, out, 8);
}

/* ---- the handshake ---- */

static int set_backend_channel(struct mvg__vub *v)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -errno;
	int err = request(v, SET_BACKEND_REQ_FD, NULL, 0, &sv[1], 1);
	close(sv[1]); /* the backend has its copy */
	if (err) {
		close(sv[0]);
		return err;
	}
	v->chan = sv[0];
	return 0;
}

static int handshake(struct mvg__vub *v)
{
	uint64_t f, pf;
	int err = transact(v, SET_OWNER, 0, NULL, 0, NULL, 0, NULL, 0);
	if (!err)
		err = get_u64(v, GET_FEATURES, &f);
	if (err)
		return err;
	if (!(f & BIT(F_PROTOCOL)))
		return -EPROTONOSUPPORT; /* no acks, no config space: not a device we can drive */
	v->protocol = true;
	v->dev_features = f & ~BIT(F_PROTOCOL);
	err = get_u64(v, GET_PROTOCOL_FEATURES, &pf);
	if (err)
		return err;
	if ((pf & PF_NEEDED) != PF_NEEDED)
		return -EPROTONOSUPPORT;
	v->pf = pf & PF_WANTED;
	err = transact(v, SET_PROTOCOL_FEATURES, 0, &v->pf, 8, NULL, 0, NULL, 0);
	if (!err && v->pf & BIT(PF_BACKEND))
		err = set_backend_channel(v);
	return err;
}

/* ---- the register file (lock held) ---- */

/* Queues of the balloon's layout for features f: inflate, deflate, then stats, hint and
 * reporting as negotiated. */
static unsigned layout(uint64_t f)
{
	return 2 + (f >> VB_F_STATS_VQ & 1) + (f >> VB_F_FREE_PAGE_HINT & 1) +
	       (f >> VB_F_PAGE_REPORTING & 1);
}

static int mem_table(struct mvg__vub *v)
{
	struct vmem m = { .n = v->cfg.nregions };
	int fds[MVG__VUB_MAX_REGIONS];
	for (unsigned i = 0; i < m.n; i++) {
		const struct mvg__vub_region *r = &v->reg[i];
		m.r[i] = (struct vregion){ r->gpa, r->bytes, (uint64_t)(uintptr_t)r->hva, r->offset };
		fds[i] = v->cfg.memfd;
	}
	return request(v, SET_MEM_TABLE, &m, 8 + 32 * m.n, fds, m.n);
}

/* FEATURES_OK: the backend takes the driver's features and the guest's memory. */
static int features_ok(struct mvg__vub *v)
{
	uint64_t f = v->drv_features;
	if (f & ~v->dev_features || !(f >> VIRTIO_F_VERSION_1 & 1))
		return -EINVAL;
	int err = request_u64(v, SET_FEATURES, f | (v->protocol ? BIT(F_PROTOCOL) : 0));
	if (!err)
		err = mem_table(v);
	if (!err)
		v->features = f;
	return err;
}

/* The host address of guest-physical [gpa, gpa + len), which must lie in one region. */
static bool hva(const struct mvg__vub *v, uint64_t gpa, uint64_t len, uint64_t *out)
{
	for (unsigned i = 0; i < v->cfg.nregions; i++) {
		const struct mvg__vub_region *r = &v->reg[i];
		if (gpa >= r->gpa && gpa - r->gpa < r->bytes && len <= r->bytes - (gpa - r->gpa)) {
			*out = (uint64_t)(uintptr_t)r->hva + (gpa - r->gpa);
			return true;
		}
	}
	return false;
}

/* QueueReady 1: the ring as virtio_uml hands it over. */
static int queue_start(struct mvg__vub *v, unsigned q)
{
	struct queue *x = &v->q[q];
	uint64_t n = x->num;
	struct vaddr a = { q, 0, 0, 0, 0, 0 };
	if (!(v->status & VSTAT_FEATURES_OK) || !n || n > v->cfg.queue_max ||
	    !hva(v, x->desc, 16 * n, &a.desc) || !hva(v, x->avail, 6 + 2 * n, &a.avail) ||
	    !hva(v, x->used, 6 + 8 * n, &a.used))
		return -EINVAL;
	uint64_t call = q, kick = q;
	int err = request(v, SET_VRING_CALL, &call, 8, &v->call[q], 1);
	if (!err)
		err = request_state(v, SET_VRING_NUM, q, (uint32_t)n);
	if (!err)
		err = request_state(v, SET_VRING_BASE, q, 0);
	if (!err)
		err = request(v, SET_VRING_ADDR, &a, sizeof(a), NULL, 0);
	if (!err)
		err = request(v, SET_VRING_KICK, &kick, 8, &v->kick[q], 1);
	if (!err)
		err = request_state(v, SET_VRING_ENABLE, q, 1);
	x->ready = !err;
	return err;
}

/* QueueReady 0: the ring stops where the backend says. */
static void queue_stop(struct mvg__vub *v, unsigned q)
{
	struct vstate s = { q, 0 }, r;
	if (v->q[q].ready)
		transact(v, GET_VRING_BASE, 0, &s, sizeof(s), NULL, 0, &r, sizeof(r));
	v->q[q].ready = false;
}

static void drain(int fd)
{
	uint64_t n;
	if (read(fd, &n, sizeof(n)) < 0) {
		/* nothing pending */
	}
}

/* Status 0: the backend's device back to its start; ours too. */
static void reset(struct mvg__vub *v)
{
	if (v->pf & BIT(PF_RESET))
		request(v, RESET_DEVICE, NULL, 0, NULL, 0);
	else
		for (unsigned q = 0; q < NQ; q++)
			queue_stop(v, q);
	for (unsigned q = 0; q < NQ; q++) {
		v->q[q] = (struct queue){ 0 };
		drain(v->call[q]);
	}
	v->status = 0;
	v->features = v->drv_features = 0;
	v->dev_sel = v->drv_sel = v->queue_sel = 0;
	atomic_store(&v->isr, 0);
}

static void status_write(struct mvg__vub *v, uint32_t val)
{
	if (!val) {
		reset(v);
		return;
	}
	if (val & VSTAT_FEATURES_OK && !(v->status & VSTAT_FEATURES_OK) && features_ok(v))
		val &= ~VSTAT_FEATURES_OK; /* refused: the driver reads it back and gives up */
	v->status = (uint8_t)val;
}

static uint32_t config_read(struct mvg__vub *v, uint32_t off)
{
	struct vcfg c = { off, 4, 0, { 0 } }, r;
	if (off > CONFIG_BYTES - 4 || transact(v, GET_CONFIG, 0, &c, 12 + 4, NULL, 0, &r, 12 + 4))
		return 0;
	uint32_t val;
	memcpy(&val, r.data, 4);
	return val;
}

static void config_write(struct mvg__vub *v, uint32_t off, uint32_t val)
{
	struct vcfg c = { off, 4, 0, { 0 } };
	memcpy(c.data, &val, 4);
	if (off <= CONFIG_BYTES - 4)
		request(v, SET_CONFIG, &c, 12 + 4, NULL, 0);
}

static struct queue *selected(struct mvg__vub *v)
{
	return v->queue_sel < layout(v->features) ? &v->q[v->queue_sel] : NULL;
}

static uint32_t reg_read(struct mvg__vub *v, uint32_t off)
{
	struct queue *x = selected(v);
	switch (off) {
	case VMMIO_MAGIC_VALUE:       return VMMIO_MAGIC;
	case VMMIO_VERSION:           return VMMIO_VERSION_2;
	case VMMIO_DEVICE_ID:         return BALLOON_ID;
	case VMMIO_VENDOR_ID:         return MMIO_VENDOR;
	case VMMIO_DEVICE_FEATURES:
		return v->dev_sel < 2 ? (uint32_t)(v->dev_features >> (32 * v->dev_sel)) : 0;
	case VMMIO_QUEUE_NUM_MAX:     return x && v->status & VSTAT_FEATURES_OK ? v->cfg.queue_max : 0;
	case VMMIO_QUEUE_READY:       return x && x->ready;
	case VMMIO_INTERRUPT_STATUS:  return atomic_load(&v->isr);
	case VMMIO_STATUS:            return v->status | (dead(v) ? VSTAT_NEEDS_RESET : 0);
	case VMMIO_CONFIG_GENERATION: return atomic_load(&v->generation);
	}
	return off >= VMMIO_CONFIG ? config_read(v, off - VMMIO_CONFIG) : 0;
}

static void set_half(uint64_t *r, bool high, uint32_t half)
{
	*r = high ? (*r & 0xffffffffull) | (uint64_t)half << 32 : (*r & ~0xffffffffull) | half;
}

static void queue_write(struct mvg__vub *v, uint32_t off, uint32_t val)
{
	struct queue *x = selected(v);
	if (!x)
		return;
	if (off == VMMIO_QUEUE_READY) {
		if (val & 1 && !x->ready)
			queue_start(v, v->queue_sel);
		else if (!(val & 1))
			queue_stop(v, v->queue_sel);
		return;
	}
	if (x->ready)
		return; /* not while the backend runs it */
	switch (off) {
	case VMMIO_QUEUE_NUM:         x->num = val; break;
	case VMMIO_QUEUE_DESC_LOW:    set_half(&x->desc, false, val); break;
	case VMMIO_QUEUE_DESC_HIGH:   set_half(&x->desc, true, val); break;
	case VMMIO_QUEUE_DRIVER_LOW:  set_half(&x->avail, false, val); break;
	case VMMIO_QUEUE_DRIVER_HIGH: set_half(&x->avail, true, val); break;
	case VMMIO_QUEUE_DEVICE_LOW:  set_half(&x->used, false, val); break;
	case VMMIO_QUEUE_DEVICE_HIGH: set_half(&x->used, true, val); break;
	}
}

static void notify(struct mvg__vub *v, uint32_t q)
{
	uint64_t one = 1;
	if (q < NQ && v->q[q].ready && write(v->kick[q], &one, sizeof(one)) < 0) {
		/* the counter is at its limit: the backend has a kick to read anyway */
	}
}

static void reg_write(struct mvg__vub *v, uint32_t off, uint32_t val)
{
	switch (off) {
	case VMMIO_DEVICE_FEATURES_SEL: v->dev_sel = val; return;
	case VMMIO_DRIVER_FEATURES_SEL: v->drv_sel = val; return;
	case VMMIO_DRIVER_FEATURES:
		if (v->drv_sel < 2 && !(v->status & VSTAT_FEATURES_OK))
			set_half(&v->drv_features, v->drv_sel, val);
		return;
	case VMMIO_QUEUE_SEL:           v->queue_sel = val; return;
	case VMMIO_QUEUE_NOTIFY:        notify(v, val); return;
	case VMMIO_INTERRUPT_ACK:       atomic_fetch_and(&v->isr, ~val); return;
	case VMMIO_STATUS:              status_write(v, val); return;
	}
	if (off >= VMMIO_CONFIG)
		config_write(v, off - VMMIO_CONFIG, val);
	else
		queue_write(v, off, val);
}

uint32_t mvg__vub_read(struct mvg__vub *v, uint32_t off)
{
	pthread_mutex_lock(&v->lock);
	uint32_t val = reg_read(v, off);
	pthread_mutex_unlock(&v->lock);
	return val;
}

void mvg__vub_write(struct mvg__vub *v, uint32_t off, uint32_t val)
{
	pthread_mutex_lock(&v->lock);
	reg_write(v, off, val);
	pthread_mutex_unlock(&v->lock);
}

/* ---- the interrupt thread ---- */

/* One message of the backend channel: CONFIG_CHANGE raises the config interrupt; others
 * are refused when an ack is asked for. 0, or -errno: the channel is done. */
static int channel_message(struct mvg__vub *v)
{
	struct hdr h;
	uint8_t pl[MAX_PAYLOAD];
	uint64_t deadline = mono_ns() + v->cfg.timeout_ns;
	int err = recv_all(v->chan, &h, sizeof(h), deadline);
	if (!err && ((h.flags & 3) != VERSION || h.size > sizeof(pl)))
		err = -EPROTO;
	if (!err && h.size)
		err = recv_all(v->chan, pl, h.size, deadline);
	if (err)
		return err;
	bool known = h.req == BACKEND_CONFIG_CHANGE;
	if (known) {
		atomic_fetch_add(&v->config_irqs, 1);
		atomic_fetch_add(&v->generation, 1);
		irq(v, VMMIO_INT_CONFIG);
	}
	if (h.flags & FL_NEED) {
		uint64_t st = !known;
		struct hdr r = { h.req, VERSION | FL_REPLY, 8 };
		return send_all(v->chan, &r, &st, NULL, 0, deadline);
	}
	return 0;
}

static void *thread_main(void *arg)
{
	struct mvg__vub *v = arg;
	struct pollfd p[3 + NQ] = {
		{ .fd = v->stop, .events = POLLIN },
		{ .fd = v->sock, .events = POLLRDHUP }, /* its end only: replies are the driver's */
		{ .fd = v->chan, .events = POLLIN },
	};
	for (unsigned q = 0; q < NQ; q++)
		p[3 + q] = (struct pollfd){ .fd = v->call[q], .events = POLLIN };
	for (;;) {
		if (poll(p, 3 + NQ, -1) < 0)
			continue; /* EINTR */
		if (p[0].revents)
			break;
		if (p[1].revents) {
			broken(v, -ECONNRESET);
			p[1].fd = -1;
		}
		if (p[2].revents && channel_message(v))
			p[2].fd = -1; /* no config interrupts any more; the driver still polls */
		for (unsigned q = 0; q < NQ; q++)
			if (p[3 + q].revents) {
				drain(v->call[q]);
				atomic_fetch_add(&v->ring_irqs, 1);
				irq(v, VMMIO_INT_VRING);
			}
	}
	return NULL;
}

/* ---- lifetime ---- */

int mvg__vub_connect(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (!path || strlen(path) >= sizeof(a.sun_path))
		return -EINVAL;
	strcpy(a.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

static void close_fds(struct mvg__vub *v)
{
	int *all[] = { &v->chan, &v->stop };
	for (unsigned i = 0; i < 2; i++)
		if (*all[i] >= 0)
			close(*all[i]);
	for (unsigned q = 0; q < NQ; q++) {
		if (v->kick[q] >= 0)
			close(v->kick[q]);
		if (v->call[q] >= 0)
			close(v->call[q]);
	}
}

static int make_fds(struct mvg__vub *v)
{
	v->stop = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (v->stop < 0)
		return -errno;
	for (unsigned q = 0; q < NQ; q++) {
		v->kick[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		v->call[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (v->kick[q] < 0 || v->call[q] < 0)
			return -errno;
	}
	return 0;
}

static bool config_ok(const struct mvg__vub_config *c)
{
	unsigned m = c->queue_max;
	return c->sock >= 0 && c->memfd >= 0 && c->regions && c->nregions &&
	       c->nregions <= MVG__VUB_MAX_REGIONS && m && m <= 32768 && !(m & (m - 1)) &&
	       c->timeout_ns && c->interrupt;
}

int mvg__vub_new(const struct mvg__vub_config *cfg, struct mvg__vub **out)
{
	if (!cfg || !out || !config_ok(cfg))
		return -EINVAL;
	struct mvg__vub *v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	v->cfg = *cfg;
	memcpy(v->reg, cfg->regions, cfg->nregions * sizeof(*v->reg));
	v->sock = cfg->sock;
	v->chan = v->stop = -1;
	for (unsigned q = 0; q < NQ; q++)
		v->kick[q] = v->call[q] = -1;
	pthread_mutex_init(&v->lock, NULL);
	int err = make_fds(v);
	if (err)
		goto fail;
	err = handshake(v);
	if (err)
		goto fail;
	err = -pthread_create(&v->thread, NULL, thread_main, v);
	if (err)
		goto fail;
	v->thread_running = true;
	*out = v;
	return 0;
fail:
	close_fds(v);
	pthread_mutex_destroy(&v->lock);
	free(v);
	return err;
}

void mvg__vub_free(struct mvg__vub *v)
{
	if (!v)
		return;
	uint64_t one = 1;
	if (v->thread_running && write(v->stop, &one, sizeof(one)) == sizeof(one))
		pthread_join(v->thread, NULL);
	close_fds(v);
	close(v->sock);
	pthread_mutex_destroy(&v->lock);
	free(v);
}

void mvg__vub_info(struct mvg__vub *v, struct mvg__vub_info *out)
{
	*out = (struct mvg__vub_info){
		.error = atomic_load(&v->error),
		.requests = atomic_load(&v->requests),
		.refused = atomic_load(&v->refused),
		.ring_irqs = atomic_load(&v->ring_irqs),
		.config_irqs = atomic_load(&v->config_irqs),
		.protocol_features = v->pf,
	};
}
