/* vhost_user.c - the balloon device's vhost-user transport: the backend side of the
 * protocol over one connected unix socket, driven by the caller's event loop.
 *
 * Overview
 *
 * Messages are received without blocking, in pieces as they arrive (a frontend that
 * stops half-way through a message holds up nothing): first the 12-byte header, then
 * its payload, the descriptors that came with them collected on the way. A complete
 * message is checked and applied by request(); a reply goes back at once when the
 * request has one or the frontend asked for an ack (REPLY_ACK), since the frontend
 * waits for it. Replies and backend-channel messages are sent without blocking.
 *
 * The device is the same mv_balloon the virtio-mmio transport drives. The frontend's
 * steps are mapped onto its status machine: SET_FEATURES acknowledges the driver and
 * sets FEATURES_OK (a later SET_FEATURES with other features, before the rings run,
 * resets the device and negotiates again); each ring is staged (size, base, addresses
 * translated to guest-physical, kick) and handed to the device when complete; DRIVER_OK
 * follows when every ring of the negotiated layout is. A ring stopped by GET_VRING_BASE
 * leaves the device running and resumes when it is complete again (vhost_user_ring.c).
 *
 * Notifications: a kick eventfd in the epoll set (or a VRING_KICK message with in-band
 * notifications) runs the queue's work, at most the device's budget per call; work left
 * keeps the `wake` eventfd readable. The device's interrupt hook rings the ring's call
 * descriptor, sends VRING_CALL in-band, or sends a config-change message on the backend
 * channel (vhost_user_notify.c). Nothing here waits for the frontend: the frontend may
 * be waiting for us. The memory table is vhost_user_mem.c.
 */
#include "vhost_user_int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

enum {
	VU_GET_FEATURES = 1, VU_SET_FEATURES = 2, VU_SET_OWNER = 3, VU_RESET_OWNER = 4,
	VU_SET_MEM_TABLE = 5, VU_SET_VRING_NUM = 8, VU_SET_VRING_ADDR = 9,
	VU_SET_VRING_BASE = 10, VU_GET_VRING_BASE = 11, VU_SET_VRING_KICK = 12,
	VU_SET_VRING_CALL = 13, VU_SET_VRING_ERR = 14, VU_GET_PROTOCOL_FEATURES = 15,
	VU_SET_PROTOCOL_FEATURES = 16, VU_SET_VRING_ENABLE = 18, VU_SET_BACKEND_REQ_FD = 21,
	VU_GET_CONFIG = 24, VU_SET_CONFIG = 25, VU_RESET_DEVICE = 34, VU_VRING_KICK = 35,
};

#define VU_FLAG_REPLY      (1u << 2)
#define VU_FLAG_NEED_REPLY (1u << 3)
#define VU_PF_REPLY_ACK    3
#define VU_PF_RESET_DEVICE 13
#define VU_MSGS_PER_CALL   64   /* then the loop gets a turn; the socket stays readable */

/* epoll data: what became readable */
#define EV_SOCK 0x100
#define EV_WAKE 0x101          /* kicks: the queue number */

static uint64_t protocol_offered(const struct mv_vhost_user *vu)
{
	return BIT(VU_PF_REPLY_ACK) | BIT(VU_PF_BACKEND_REQ) | BIT(VU_PF_CONFIG) |
	       BIT(VU_PF_RESET_DEVICE) | (vu->cfg.inband_notifications ? BIT(VU_PF_INBAND) : 0);
}


int mv__vu_reply(struct mv_vhost_user *vu, const void *payload, uint32_t size)
{
	return mv__vu_send(vu->sock, vu->hdr.request, VU_FLAG_REPLY, payload, size);
}

static uint64_t user_now(void *opaque)
{
	struct mv_vhost_user *vu = opaque;
	return vu->user_ops.now_ns ? vu->user_ops.now_ns(vu->cfg.balloon.opaque) : mv__mono_ns();
}

static int config_get(struct mv_vhost_user *vu, const struct vu_cfg *c)
{
	if (vu->hdr.size != 12 + c->size || c->size > VU_CONFIG_MAX || c->offset > VU_CONFIG_MAX)
		return -EPROTO; /* a reply of the wrong size would break the frontend */
	struct vu_cfg out = { c->offset, c->size, 0, { 0 } };
	mv__bl_config_read(vu->b, c->offset, out.data, c->size);
	return mv__vu_reply(vu, &out, 12 + c->size);
}

static int config_set(struct mv_vhost_user *vu, const struct vu_cfg *c)
{
	if (vu->hdr.size != 12 + c->size || !c->size || c->size > 8 || c->offset > VU_CONFIG_MAX)
		return -EINVAL;
	return mv__bl_config_write(vu->b, c->offset, c->data, c->size);
}

static int backend_fd(struct mv_vhost_user *vu)
{
	if (vu->nfds != 1 || !(vu->protocol & BIT(VU_PF_BACKEND_REQ)))
		return -EINVAL;
	pthread_mutex_lock(&vu->fd_lock);
	mv__vu_close(&vu->backend);
	vu->backend = vu->fds[0];
	vu->nfds = 0;
	pthread_mutex_unlock(&vu->fd_lock);
	return 0;
}

/* Requests that carry exactly one u64, a vring state or vring address. */
static bool size_ok(uint32_t req, uint32_t size)
{
	switch (req) {
	case VU_SET_FEATURES: case VU_SET_PROTOCOL_FEATURES:
	case VU_SET_VRING_KICK: case VU_SET_VRING_CALL: case VU_SET_VRING_ERR:
		return size == 8;
	case VU_SET_VRING_NUM: case VU_SET_VRING_BASE: case VU_GET_VRING_BASE:
	case VU_SET_VRING_ENABLE: case VU_VRING_KICK:
		return size == sizeof(struct vu_state);
	case VU_SET_VRING_ADDR:
		return size == sizeof(struct vu_addr);
	case VU_GET_CONFIG: case VU_SET_CONFIG:
		return size >= 12;
	case VU_SET_MEM_TABLE:
		return size >= 8;
	case VU_GET_FEATURES: case VU_GET_PROTOCOL_FEATURES: case VU_SET_OWNER:
	case VU_RESET_OWNER: case VU_RESET_DEVICE: case VU_SET_BACKEND_REQ_FD:
		return size == 0;
	default:
		return true;
	}
}

/* Descriptors only come with the requests that take them (those check how many). */
static bool fds_ok(uint32_t req, unsigned nfds)
{
	return nfds == 0 || req == VU_SET_MEM_TABLE || req == VU_SET_VRING_KICK ||
	       req == VU_SET_VRING_CALL || req == VU_SET_VRING_ERR || req == VU_SET_BACKEND_REQ_FD;
}

/* Apply one checked message, device mutex held. Returns 0 or -errno for the ack; -EPROTO
 * ends the connection. Requests with a reply of their own send it here (1: answered);
 * 2: ack, then run the queue. */
static int request(struct mv_vhost_user *vu)
{
	union vu_payload *p = &vu->pl;
	uint64_t v;
	switch (vu->hdr.request) {
	case VU_GET_FEATURES:
		v = mv__vu_device_features(vu);
		return mv__vu_reply(vu, &v, 8) ? -EPROTO : 1;
	case VU_GET_PROTOCOL_FEATURES:
		v = protocol_offered(vu);
		return mv__vu_reply(vu, &v, 8) ? -EPROTO : 1;
	case VU_SET_PROTOCOL_FEATURES:
		if (p->u64 & ~protocol_offered(vu))
			return -EINVAL;
		vu->protocol = p->u64;
		return 0;
	case VU_SET_OWNER:
		return 0;
	case VU_RESET_OWNER: case VU_RESET_DEVICE:
		mv__vu_device_reset(vu);
		return 0;
	case VU_SET_FEATURES:
		return mv__vu_set_features(vu, p->u64);
	case VU_SET_MEM_TABLE: {
		int err = mv__vu_mem_set(vu, &p->mem, vu->hdr.size, vu->fds, vu->nfds);
		if (err)
			return err;
		vu->nfds = 0; /* the table's now, or closed */
		mv__vu_try_start(vu);
		return 0;
	}
	case VU_SET_VRING_NUM:    return mv__vu_ring_num(vu, &p->state);
	case VU_SET_VRING_ADDR:   return mv__vu_ring_addr(vu, &p->addr);
	case VU_SET_VRING_BASE:   return mv__vu_ring_base(vu, &p->state);
	case VU_GET_VRING_BASE:   return mv__vu_ring_stop(vu, &p->state) ? -EPROTO : 1;
	case VU_SET_VRING_KICK:   return mv__vu_ring_kick_fd(vu, p->u64);
	case VU_SET_VRING_CALL:   return mv__vu_ring_call_fd(vu, p->u64, false);
	case VU_SET_VRING_ERR:    return mv__vu_ring_call_fd(vu, p->u64, true);
	case VU_SET_VRING_ENABLE: return mv__vu_ring_enable(vu, &p->state);
	case VU_SET_BACKEND_REQ_FD: return backend_fd(vu);
	case VU_GET_CONFIG:
		if (!(vu->protocol & BIT(VU_PF_CONFIG)))
			return -EPROTO;
		return config_get(vu, &p->cfg) ? -EPROTO : 1;
	case VU_SET_CONFIG:
		return vu->protocol & BIT(VU_PF_CONFIG) ? config_set(vu, &p->cfg) : -EINVAL;
	case VU_VRING_KICK:
		if (!mv__vu_inband(vu) || p->state.index >= MV_BL_NQ)
			return -EINVAL;
		return 2; /* acked first: the frontend is frozen until then */
	default:
		return -EINVAL;
	}
}

/* Requests whose reply carries data: a malformed one ends the connection. */
static bool has_reply(uint32_t req)
{
	return req == VU_GET_FEATURES || req == VU_GET_PROTOCOL_FEATURES ||
	       req == VU_GET_VRING_BASE || req == VU_GET_CONFIG;
}

/* The ack the frontend asked for, and what follows it. */
static int answer(struct mv_vhost_user *vu, int ret)
{
	if (ret < 0) {
		vu->bad_messages++;
		mv__log(vu->b->h, MV_LOG_DEBUG, "vm %s vhost-user: request %u refused (%s)",
		        vu->b->vm->name, vu->hdr.request, mv_strerror(ret));
	}
	if (ret <= 0 || ret == 2) {
		if (vu->hdr.flags & VU_FLAG_NEED_REPLY && vu->protocol & BIT(VU_PF_REPLY_ACK)) {
			uint64_t status = ret < 0 ? 1 : 0;
			if (mv__vu_reply(vu, &status, 8))
				return -EPROTO;
		}
	}
	if (ret == 2) {
		vu->kicks++;
		mv__vu_kick(vu, vu->pl.state.index);
	}
	return 0;
}

static int handle(struct mv_vhost_user *vu)
{
	vu->messages++;
	int ret;
	pthread_mutex_lock(&vu->b->lock);
	if (!size_ok(vu->hdr.request, vu->hdr.size) || vu->too_many_fds ||
	    !fds_ok(vu->hdr.request, vu->nfds))
		ret = has_reply(vu->hdr.request) ? -EPROTO : -EINVAL;
	else
		ret = request(vu);
	if (ret != -EPROTO)
		ret = answer(vu, ret);
	pthread_mutex_unlock(&vu->b->lock);
	return ret;
}

/* ---- receiving ---- */

static void take_fds(struct mv_vhost_user *vu, struct msghdr *mh)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (vu->nfds < VU_MAX_FDS) {
				vu->fds[vu->nfds++] = fd;
			} else {
				close(fd);
				vu->too_many_fds = true;
			}
		}
	}
	if (mh->msg_flags & MSG_CTRUNC)
		vu->too_many_fds = true;
}

static void drop_fds(struct mv_vhost_user *vu)
{
	for (unsigned i = 0; i < vu->nfds; i++)
		close(vu->fds[i]);
	vu->nfds = 0;
	vu->too_many_fds = false;
}

/* Receive what is available of the current message: 1 when it is complete, 0 when more
 * must arrive, -ECONNRESET, -EPROTO. */
static int receive(struct mv_vhost_user *vu)
{
	size_t hs = sizeof(vu->hdr);
	size_t want = vu->got < hs ? hs - vu->got : hs + vu->hdr.size - vu->got;
	uint8_t *dst = vu->got < hs ? (uint8_t *)&vu->hdr + vu->got : vu->pl.raw + (vu->got - hs);
	union { char buf[CMSG_SPACE(VU_MAX_FDS * sizeof(int))]; struct cmsghdr align; } cm;
	struct iovec iov = { dst, want };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
	                     .msg_controllen = sizeof(cm.buf) };
	ssize_t n = recvmsg(vu->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -ECONNRESET;
	if (n == 0)
		return -ECONNRESET;
	take_fds(vu, &mh);
	vu->got += (size_t)n;
	if (vu->got == hs && ((vu->hdr.flags & 3) != VU_VERSION || vu->hdr.flags & VU_FLAG_REPLY ||
	                      vu->hdr.size > sizeof(vu->pl)))
		return -EPROTO;
	if (vu->got == hs && vu->hdr.size)
		return receive(vu); /* the payload, if it came with the header */
	if (vu->got < hs || vu->got < hs + vu->hdr.size)
		return 0;
	memset(vu->pl.raw + vu->hdr.size, 0, sizeof(vu->pl) - vu->hdr.size);
	return 1;
}

static int messages(struct mv_vhost_user *vu)
{
	for (unsigned i = 0; i < VU_MSGS_PER_CALL; i++) {
		int r = receive(vu);
		if (r <= 0)
			return r;
		r = handle(vu);
		drop_fds(vu); /* those the request did not take */
		vu->got = 0;
		if (r < 0)
			return r;
	}
	return 0;
}

/* Drain a kick: an eventfd's counter, or bytes from a pipe or socket. Never waits, even
 * if the frontend cleared O_NONBLOCK on the description it shares with us. */
static ssize_t kick_read(int fd)
{
	uint8_t drain[64];
	ssize_t r = recv(fd, drain, sizeof(drain), MSG_DONTWAIT);
	if (r >= 0 || errno != ENOTSOCK)
		return r;
	struct iovec iov = { drain, sizeof(drain) };
	return preadv2(fd, &iov, 1, -1, RWF_NOWAIT);
}

MV_API int mv_vhost_user_dispatch(struct mv_vhost_user *vu)
{
	if (!vu)
		return -EINVAL;
	struct epoll_event ev[MV_BL_NQ + 2];
	int n = epoll_wait(vu->ep, ev, MV_BL_NQ + 2, 0);
	int err = 0;
	pthread_mutex_lock(&vu->lock);
	for (int i = 0; i < n && !err; i++) {
		uint64_t what = ev[i].data.u64, v;
		if (what == EV_SOCK) {
			if (ev[i].events & (EPOLLHUP | EPOLLERR) && !(ev[i].events & EPOLLIN))
				err = -ECONNRESET;
			else
				err = messages(vu);
		} else if (what == EV_WAKE) {
			if (read(vu->wake, &v, sizeof(v)) < 0) {
				/* nothing was pending */
			}
			pthread_mutex_lock(&vu->b->lock);
			for (unsigned q = 0; q < MV_BL_NQ; q++)
				if (vu->more & (1u << q))
					mv__vu_kick(vu, q);
			pthread_mutex_unlock(&vu->b->lock);
		} else if (what < MV_BL_NQ && vu->q[what].kick >= 0) {
			ssize_t r = kick_read(vu->q[what].kick);
			if (r > 0) {
				vu->kicks++;
				pthread_mutex_lock(&vu->b->lock);
				mv__vu_kick(vu, (unsigned)what);
				pthread_mutex_unlock(&vu->b->lock);
			} else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
				/* at its end, or not readable at all: it would be reported for ever */
				epoll_ctl(vu->ep, EPOLL_CTL_DEL, vu->q[what].kick, NULL);
			}
		}
	}
	pthread_mutex_unlock(&vu->lock);
	return err;
}

/* ---- lifetime ---- */

MV_API void mv_vhost_user_config_init(struct mv_vhost_user_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->size = sizeof(*cfg);
	mv_balloon_config_init(&cfg->balloon);
}

static int epoll_add(int ep, int fd, uint64_t what)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = what };
	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

static bool vm_empty(struct mv_vm *vm)
{
	rcu_read_lock();
	struct mv_region_map *m = rcu_dereference(vm->map);
	bool empty = !m || !m->n;
	rcu_read_unlock();
	return empty;
}

static int make_device(struct mv_vhost_user *vu, struct mv_vm *vm)
{
	static const struct mv_balloon_ops ops = { .interrupt = mv__vu_interrupt, .now_ns = user_now };
	struct mv_balloon_config bc = vu->cfg.balloon;
	if (bc.ops)
		vu->user_ops = *bc.ops;
	bc.ops = &ops;
	bc.opaque = vu;
	return mv_balloon_new(vm, &bc, &vu->b);
}

MV_API int mv_vhost_user_new(struct mv_vm *vm, int sock, const struct mv_vhost_user_config *cfg,
                             struct mv_vhost_user **out)
{
	struct stat st;
	if (!vm || !cfg || !out || cfg->size != sizeof(*cfg) || sock < 0 || fstat(sock, &st) ||
	    !S_ISSOCK(st.st_mode) || !vm_empty(vm))
		return -EINVAL;
	struct mv_vhost_user *vu = calloc(1, sizeof(*vu));
	if (!vu)
		return -ENOMEM;
	vu->cfg = *cfg;
	vu->vm = vm;
	vu->sock = sock;
	vu->backend = -1;
	for (unsigned q = 0; q < MV_BL_NQ; q++)
		vu->q[q] = (struct vu_queue){ .kick = -1, .call = -1 };
	int err = make_device(vu, vm);
	if (err)
		goto fail_device;
	vu->ep = epoll_create1(EPOLL_CLOEXEC);
	if (vu->ep < 0) {
		err = -errno;
		goto fail_epoll;
	}
	vu->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (vu->wake < 0) {
		err = -errno;
		goto fail_wake;
	}
	err = epoll_add(vu->ep, sock, EV_SOCK);
	if (!err)
		err = epoll_add(vu->ep, vu->wake, EV_WAKE);
	if (err)
		goto fail_add;
	pthread_mutex_init(&vu->lock, NULL);
	pthread_mutex_init(&vu->fd_lock, NULL);
	vu->notify_efd = -1;
	if (cfg->call_thread && (err = mv__vu_notifier_start(vu))) {
		pthread_mutex_destroy(&vu->lock);
		pthread_mutex_destroy(&vu->fd_lock);
		goto fail_add;
	}
	*out = vu;
	return 0;

fail_add:
	close(vu->wake);
fail_wake:
	close(vu->ep);
fail_epoll:
	mv_balloon_free(vu->b);
fail_device:
	free(vu);
	return err;
}

MV_API void mv_vhost_user_free(struct mv_vhost_user *vu)
{
	if (!vu)
		return;
	mv_balloon_free(vu->b); /* no interrupt after this */
	mv__vu_notifier_stop(vu);
	mv__vu_queues_reset(vu);
	mv__vu_mem_clear(vu);
	drop_fds(vu);
	mv__vu_close(&vu->backend);
	close(vu->wake);
	close(vu->ep);
	close(vu->sock);
	pthread_mutex_destroy(&vu->lock);
	pthread_mutex_destroy(&vu->fd_lock);
	free(vu);
}

MV_API struct mv_balloon *mv_vhost_user_balloon(struct mv_vhost_user *vu)
{
	return vu ? vu->b : NULL;
}

MV_API int mv_vhost_user_fd(struct mv_vhost_user *vu)
{
	return vu ? vu->ep : -EINVAL;
}

MV_API int mv_vhost_user_info(struct mv_vhost_user *vu, struct mv_vhost_user_info *out)
{
	if (!vu || !out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&vu->lock);
	out->running = vu->running;
	out->regions = vu->nmem;
	for (unsigned i = 0; i < vu->nmem; i++)
		out->ram_bytes += vu->mem[i].size;
	out->file_bytes = mv__vu_mem_file_bytes(vu);
	out->messages = vu->messages;
	out->bad_messages = vu->bad_messages;
	out->kicks = vu->kicks;
	out->protocol_features = vu->protocol;
	pthread_mutex_unlock(&vu->lock);
	pthread_mutex_lock(&vu->fd_lock);
	out->calls = vu->calls;
	pthread_mutex_unlock(&vu->fd_lock);
	return 0;
}
