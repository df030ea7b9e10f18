/* vuconn.c - the bridge's connection to the backend: bounded messages, requests and
 * their acks, virtio_uml's handshake, and the thread that turns call eventfds and the
 * backend channel into interrupts.
 *
 * Every wait on a descriptor of the backend is bounded by timeout_ns. A connection that
 * ends, or a wait that runs out, breaks the bridge for good (broken()): the socket is
 * shut down, the driver gets a config interrupt and reads DEVICE_NEEDS_RESET.
 */
#include "vubridge_int.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../virtio.h"

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
int mvg__vub_transact(struct mvg__vub *v, uint32_t req, uint32_t flags, const void *pl,
                      uint32_t size, const int *fds, unsigned nfds, void *out, uint32_t out_size)
{
	if (mvg__vub_dead(v))
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
int mvg__vub_request(struct mvg__vub *v, uint32_t req, const void *pl, uint32_t size,
                     const int *fds, unsigned nfds)
{
	uint64_t st;
	int err = mvg__vub_transact(v, req, FL_NEED, pl, size, fds, nfds, &st, 8);
	if (!err && st) {
		atomic_fetch_add(&v->refused, 1);
		return -EINVAL;
	}
	return err;
}

int mvg__vub_request_state(struct mvg__vub *v, uint32_t req, uint32_t index, uint32_t num)
{
	struct vstate s = { index, num };
	return mvg__vub_request(v, req, &s, sizeof(s), NULL, 0);
}

static int get_u64(struct mvg__vub *v, uint32_t req, uint64_t *out)
{
	return mvg__vub_transact(v, req, 0, NULL, 0, NULL, 0, out, 8);
}

/* ---- the handshake ---- */

static int set_backend_channel(struct mvg__vub *v)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -errno;
	int err = mvg__vub_request(v, SET_BACKEND_REQ_FD, NULL, 0, &sv[1], 1);
	close(sv[1]); /* the backend has its copy */
	if (err) {
		close(sv[0]);
		return err;
	}
	v->chan = sv[0];
	return 0;
}

int mvg__vub_handshake(struct mvg__vub *v)
{
	uint64_t f, pf;
	int err = mvg__vub_transact(v, SET_OWNER, 0, NULL, 0, NULL, 0, NULL, 0);
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
	err = mvg__vub_transact(v, SET_PROTOCOL_FEATURES, 0, &v->pf, 8, NULL, 0, NULL, 0);
	if (!err && v->pf & BIT(PF_BACKEND))
		err = set_backend_channel(v);
	return err;
}

/* ---- the interrupt thread ---- */

void mvg__vub_drain(int fd)
{
	uint64_t n;
	if (read(fd, &n, sizeof(n)) < 0) {
		/* nothing pending */
	}
}

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

void *mvg__vub_thread(void *arg)
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
				mvg__vub_drain(v->call[q]);
				atomic_fetch_add(&v->ring_irqs, 1);
				irq(v, VMMIO_INT_VRING);
			}
	}
	return NULL;
}

/* ---- connecting ---- */

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
