/* vhost_user_ring.c - the device side of the frontend's steps: features, rings staged
 * and handed to the device with their base, started and stopped, kicks run. Callers hold
 * vu->lock and the device mutex. */
#include "vhost_user_int.h"

#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

uint64_t mv__vu_device_features(struct mv_vhost_user *vu)
{
	return mv__bl_device_features(vu->b) | BIT(VU_F_PROTOCOL);
}

void mv__vu_queues_reset(struct mv_vhost_user *vu)
{
	pthread_mutex_lock(&vu->fd_lock);
	for (unsigned q = 0; q < MV_BL_NQ; q++) {
		struct vu_queue *x = &vu->q[q];
		if (x->kick >= 0)
			epoll_ctl(vu->ep, EPOLL_CTL_DEL, x->kick, NULL);
		mv__vu_close(&x->kick);
		mv__vu_close(&x->call);
		*x = (struct vu_queue){ .kick = -1, .call = -1 };
	}
	pthread_mutex_unlock(&vu->fd_lock);
	vu->more = 0;
}

/* Back to the state of a new connection's device (the memory table stays). */
void mv__vu_device_reset(struct mv_vhost_user *vu)
{
	mv__bl_set_status(vu->b, 0);
	mv__vu_queues_reset(vu);
	vu->running = vu->features_set = false;
	vu->features = 0;
}

int mv__vu_set_features(struct mv_vhost_user *vu, uint64_t f)
{
	if (f & ~mv__vu_device_features(vu) || !(f & BIT(MV_VIRTIO_F_VERSION_1)))
		return -EINVAL; /* refused before the device is reset: nothing changes */
	uint64_t virtio = f & ~BIT(VU_F_PROTOCOL);
	if (vu->features_set && (vu->features & ~BIT(VU_F_PROTOCOL)) == virtio) {
		vu->features = f;
		return 0;
	}
	for (unsigned q = 0; q < MV_BL_NQ; q++)
		if (vu->q[q].started)
			return -EBUSY; /* not while rings of the old layout run */
	struct mv_balloon *b = vu->b;
	if (b->status)
		mv__bl_set_status(b, 0);
	mv__bl_set_status(b, MV_VS_ACKNOWLEDGE | MV_VS_DRIVER);
	int err = mv__bl_driver_features(b, virtio);
	if (!err)
		err = mv__bl_set_status(b, MV_VS_ACKNOWLEDGE | MV_VS_DRIVER | MV_VS_FEATURES_OK);
	if (err) {
		mv__bl_set_status(b, 0);
		vu->features_set = false;
		return err;
	}
	vu->features = f;
	vu->features_set = true;
	vu->running = false;
	for (unsigned q = 0; q < MV_BL_NQ; q++) /* without protocol features rings run at once */
		if (!vu->q[q].started)
			vu->q[q].enabled = !(f & BIT(VU_F_PROTOCOL));
	return 0;
}

/* Hand complete rings to the device; DRIVER_OK once every ring of the layout runs. */
void mv__vu_try_start(struct mv_vhost_user *vu)
{
	struct mv_balloon *b = vu->b;
	if (!vu->features_set || !vu->nmem)
		return;
	unsigned n = b->nr_vq, ready = 0;
	for (unsigned q = 0; q < n; q++) {
		struct vu_queue *x = &vu->q[q];
		if (!x->started && x->has_num && x->has_addr && x->has_kick) {
			struct mv_virtq_setup s = { x->num, x->desc, x->avail, x->used };
			int err = mv__bl_queue_start(b, q, &s, x->base);
			if (err)
				mv__log(b->h, MV_LOG_WARN, "vm %s vhost-user: ring %u refused (%s)",
				        b->vm->name, q, mv_strerror(err));
			x->started = !err;
		}
		ready += x->started;
	}
	if (ready == n && !vu->running) {
		vu->running = !mv__bl_set_status(b, b->status | MV_VS_DRIVER_OK);
		if (vu->running)
			mv__log(b->h, MV_LOG_INFO, "vm %s vhost-user: driver running (%u queues)",
			        b->vm->name, n);
	}
	/* What the driver queued before a ring ran may exceed one notification's budget:
	 * run each ring once here, so that work left is remembered (vu->more). */
	for (unsigned q = 0; q < n && vu->running; q++)
		if (vu->q[q].started)
			mv__vu_kick(vu, q);
}

/* Run queue q's work (the device's budget); remember whether work is left. */
void mv__vu_kick(struct mv_vhost_user *vu, unsigned q)
{
	if (q >= MV_BL_NQ || !vu->q[q].started || !vu->q[q].enabled)
		return;
	int more = mv__bl_queue_notify(vu->b, q);
	if (more == 1) {
		uint64_t one = 1;
		vu->more |= 1u << q;
		if (write(vu->wake, &one, sizeof(one)) < 0) {
			/* already at its limit: it is readable anyway */
		}
	} else {
		vu->more &= ~(1u << q);
	}
}

/* A ring request's queue: a known number of the layout. */
static struct vu_queue *ring(struct mv_vhost_user *vu, uint64_t index)
{
	return index < MV_BL_NQ ? &vu->q[index] : NULL;
}

int mv__vu_ring_num(struct mv_vhost_user *vu, const struct vu_state *s)
{
	struct vu_queue *x = ring(vu, s->index);
	unsigned n = s->num;
	if (!x || x->started || !n || n > vu->b->cfg.queue_max || (n & (n - 1)))
		return -EINVAL;
	x->num = (uint16_t)n;
	x->has_num = true;
	return 0;
}

int mv__vu_ring_addr(struct mv_vhost_user *vu, const struct vu_addr *a)
{
	struct vu_queue *x = ring(vu, a->index);
	if (!x || x->started || !x->has_num || a->flags) /* no dirty log is offered */
		return -EINVAL;
	uint64_t d, av, u, n = x->num;
	if (!mv__vu_mem_gpa(vu, a->desc, 16 * n, &d) || !mv__vu_mem_gpa(vu, a->avail, 4 + 2 * n, &av) ||
	    !mv__vu_mem_gpa(vu, a->used, 4 + 8 * n, &u))
		return -EINVAL; /* a ring outside every region */
	if (d & 15 || av & 1 || u & 3)
		return -EINVAL;
	x->desc = d;
	x->avail = av;
	x->used = u;
	x->has_addr = true;
	return 0;
}

int mv__vu_ring_base(struct mv_vhost_user *vu, const struct vu_state *s)
{
	struct vu_queue *x = ring(vu, s->index);
	if (!x || x->started || s->num > 0xffff)
		return -EINVAL;
	x->base = (uint16_t)s->num;
	return 0;
}

/* GET_VRING_BASE: the ring stops; the reply says where it resumes. */
int mv__vu_ring_stop(struct mv_vhost_user *vu, const struct vu_state *s)
{
	struct vu_queue *x = ring(vu, s->index);
	if (!x)
		return -EINVAL;
	uint16_t base = x->base;
	if (x->started)
		mv__bl_queue_stop(vu->b, s->index, &base);
	if (x->kick >= 0)
		epoll_ctl(vu->ep, EPOLL_CTL_DEL, x->kick, NULL);
	mv__vu_close(&x->kick);
	x->started = x->has_kick = x->has_addr = false;
	x->base = base;
	vu->more &= ~(1u << s->index);
	struct vu_state st = { s->index, base };
	return mv__vu_reply(vu, &st, sizeof(st));
}

/* SET_VRING_KICK / CALL / ERR: an index, and a descriptor unless NOFD says none. */
static int ring_fd(struct mv_vhost_user *vu, uint64_t v, int *fd)
{
	struct vu_queue *x = ring(vu, v & VU_RING_INDEX);
	bool nofd = v & VU_RING_NOFD;
	if (!x || v & ~(VU_RING_INDEX | VU_RING_NOFD) || nofd != (vu->nfds == 0) || vu->nfds > 1)
		return -EINVAL;
	*fd = nofd ? -1 : vu->fds[0];
	if (!nofd)
		vu->nfds = 0; /* taken */
	return (int)(v & VU_RING_INDEX);
}

int mv__vu_ring_kick_fd(struct mv_vhost_user *vu, uint64_t v)
{
	int fd, q = ring_fd(vu, v, &fd);
	if (q < 0)
		return q;
	struct vu_queue *x = &vu->q[q];
	if (fd < 0 && !mv__vu_inband(vu)) {
		return -EINVAL; /* polling is not offered */
	}
	if (fd >= 0) {
		/* read only when ready, but a stale event or the frontend draining its own
		 * eventfd must not make that read wait */
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uint64_t)q };
		if (mv__vu_set_nonblock(fd) || epoll_ctl(vu->ep, EPOLL_CTL_ADD, fd, &ev)) {
			int err = -errno;
			close(fd);
			return err;
		}
	}
	if (x->kick >= 0)
		epoll_ctl(vu->ep, EPOLL_CTL_DEL, x->kick, NULL);
	mv__vu_close(&x->kick);
	x->kick = fd;
	x->has_kick = true;
	mv__vu_try_start(vu); /* runs what the driver queued before */
	return 0;
}

int mv__vu_ring_call_fd(struct mv_vhost_user *vu, uint64_t v, bool err_fd)
{
	int fd, q = ring_fd(vu, v, &fd);
	if (q < 0)
		return q;
	if (err_fd) { /* the device never reports ring errors */
		mv__vu_close(&fd);
		return 0;
	}
	if (fd >= 0 && mv__vu_set_nonblock(fd)) {
		int err = -errno;
		close(fd);
		return err;
	}
	pthread_mutex_lock(&vu->fd_lock);
	mv__vu_close(&vu->q[q].call);
	vu->q[q].call = fd;
	pthread_mutex_unlock(&vu->fd_lock);
	return 0;
}

int mv__vu_ring_enable(struct mv_vhost_user *vu, const struct vu_state *s)
{
	struct vu_queue *x = ring(vu, s->index);
	if (!x || s->num > 1 || !(vu->features & BIT(VU_F_PROTOCOL)))
		return -EINVAL;
	x->enabled = s->num;
	if (x->enabled && x->started)
		mv__vu_kick(vu, s->index);
	return 0;
}

