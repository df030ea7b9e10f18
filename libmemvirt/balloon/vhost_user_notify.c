/* vhost_user_notify.c - what the backend sends the frontend besides replies: used-buffer
 * calls and config-change notices, never waiting on the frontend; and the descriptor
 * helpers the connection shares.
 *
 * The device raises its interrupt with its mutex held (interrupt()). A call goes out at
 * once through the ring's call descriptor (a socket gets send(); an eventfd or a pipe a
 * write() on a non-blocking description, SIGPIPE blocked meanwhile), in-band on the
 * backend channel, or, with call_thread, from a thread of the connection: the frontend
 * shares the call descriptor's file description and can clear O_NONBLOCK on it and fill
 * an eventfd, and then only that thread waits (it is cancelled when the connection
 * ends). Config changes always go on the backend channel, sent without waiting.
 */
#include "vhost_user_int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

int mv__vu_set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) ? -1 : 0;
}

void mv__vu_close(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

int mv__vu_send(int fd, uint32_t request, uint32_t flags, const void *payload, uint32_t size)
{
	struct vu_hdr h = { request, flags | VU_VERSION, size };
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)payload, size } };
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = size ? 2 : 1 };
	ssize_t n = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n < 0)
		return -errno; /* -EAGAIN: nothing sent, a frontend that reads nothing */
	return (size_t)n == sizeof(h) + size ? 0 : -EMSGSIZE; /* part of it: the stream is cut */
}

/* Ring a call descriptor: 8 bytes, never raising SIGPIPE (one raised by a pipe without a
 * reader is taken back before unblocking). */
static bool call_fd_write(int fd)
{
	uint64_t one = 1;
	ssize_t n = send(fd, &one, sizeof(one), MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n >= 0 || errno != ENOTSOCK)
		return n == sizeof(one);
	sigset_t pipe, old, pending;
	sigemptyset(&pipe);
	sigaddset(&pipe, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe, &old);
	sigpending(&pending);
	bool was_pending = sigismember(&pending, SIGPIPE);
	n = write(fd, &one, sizeof(one));
	if (n < 0 && errno == EPIPE && !was_pending) {
		struct timespec now = { 0, 0 };
		sigtimedwait(&pipe, NULL, &now);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return n == sizeof(one);
}

/* A message on the backend channel. One cut short leaves the channel's stream out of
 * step for good: the channel is closed (the frontend sees its end). fd_lock held. */
static int backend_send(struct mv_vhost_user *vu, uint32_t request, const void *payload, uint32_t size)
{
	int err = mv__vu_send(vu->backend, request, 0, payload, size);
	if (err == -EMSGSIZE || err == -EPIPE || err == -ECONNRESET) {
		mv__log(vu->b->h, MV_LOG_WARN, "vm %s vhost-user: backend channel closed (%s)",
		        vu->vm->name, mv_strerror(err));
		mv__vu_close(&vu->backend);
	}
	return err;
}

bool mv__vu_inband(const struct mv_vhost_user *vu)
{
	uint64_t both = (1ull << VU_PF_INBAND) | (1ull << VU_PF_BACKEND_REQ);
	return (vu->protocol & both) == both;
}

/* The device's interrupt hook (device mutex held; any thread). */
void mv__vu_interrupt(void *opaque, int queue)
{
	struct mv_vhost_user *vu = opaque;
	if (queue >= 0 && vu->notifier_running) {
		uint64_t one = 1;
		atomic_fetch_or(&vu->pending_calls, 1u << queue);
		if (write(vu->notify_efd, &one, sizeof(one)) < 0) {
			/* at its limit: the thread is awake anyway */
		}
		return;
	}
	pthread_mutex_lock(&vu->fd_lock);
	if (queue < 0) {
		if (vu->backend >= 0 && vu->protocol & (1ull << VU_PF_CONFIG))
			backend_send(vu, VU_BACKEND_CONFIG_CHANGE, NULL, 0);
	} else if (vu->q[queue].call >= 0) {
		if (call_fd_write(vu->q[queue].call))
			vu->calls++;
	} else if (mv__vu_inband(vu) && vu->backend >= 0) {
		struct vu_state st = { (uint32_t)queue, 0 };
		if (!backend_send(vu, VU_BACKEND_VRING_CALL, &st, sizeof(st)))
			vu->calls++;
	}
	pthread_mutex_unlock(&vu->fd_lock);
}

/* ---- the call thread ---- */

/* One call, from the thread: a duplicate of the descriptor, so that no lock is held
 * while a write may wait (the duplicate is vu->notifier_fd, closed by whoever ends the
 * thread if it is cancelled in that write). In-band calls take the backend channel. */
static void call_one(struct mv_vhost_user *vu, unsigned q)
{
	pthread_mutex_lock(&vu->fd_lock);
	int fd = vu->q[q].call >= 0 ? dup(vu->q[q].call) : -1;
	if (fd < 0 && vu->q[q].call < 0 && mv__vu_inband(vu) && vu->backend >= 0) {
		struct vu_state st = { q, 0 };
		if (!backend_send(vu, VU_BACKEND_VRING_CALL, &st, sizeof(st)))
			vu->calls++;
	}
	vu->notifier_fd = fd;
	pthread_mutex_unlock(&vu->fd_lock);
	if (fd < 0)
		return;
	bool ok = call_fd_write(fd);
	pthread_mutex_lock(&vu->fd_lock);
	mv__vu_close(&vu->notifier_fd);
	vu->calls += ok;
	pthread_mutex_unlock(&vu->fd_lock);
}

static void *notifier(void *arg)
{
	struct mv_vhost_user *vu = arg;
	for (;;) {
		uint64_t v;
		if (read(vu->notify_efd, &v, sizeof(v)) < 0 && errno != EINTR)
			break;
		if (atomic_load(&vu->notifier_quit))
			break;
		uint32_t bits = atomic_exchange(&vu->pending_calls, 0);
		for (unsigned q = 0; q < MV_BL_NQ; q++)
			if (bits & (1u << q))
				call_one(vu, q);
	}
	return NULL;
}

int mv__vu_notifier_start(struct mv_vhost_user *vu)
{
	vu->notifier_fd = -1;
	vu->notify_efd = eventfd(0, EFD_CLOEXEC);
	if (vu->notify_efd < 0)
		return -errno;
	int err = pthread_create(&vu->notifier, NULL, notifier, vu);
	if (err) {
		mv__vu_close(&vu->notify_efd);
		return -err;
	}
	vu->notifier_running = true;
	return 0;
}

/* Wait up to ms for the thread to end: 0, or -ETIMEDOUT. */
static int join_within(struct mv_vhost_user *vu, long ms)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	t.tv_sec += ms / 1000;
	t.tv_nsec += (ms % 1000) * 1000000;
	if (t.tv_nsec >= 1000000000) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000;
	}
	return -pthread_timedjoin_np(vu->notifier, NULL, &t);
}

/* The thread may wait in a write the frontend blocks. Asked to end, it is given time;
 * a write that waits on a full eventfd is let go by reading the counter (the frontend's
 * notifications no longer matter); only a thread still stuck (a full pipe) is
 * cancelled, write() being a cancellation point. */
void mv__vu_notifier_stop(struct mv_vhost_user *vu)
{
	if (!vu->notifier_running)
		return;
	uint64_t one = 1;
	atomic_store(&vu->notifier_quit, true);
	if (write(vu->notify_efd, &one, sizeof(one)) < 0) {
		/* at its limit: the thread is awake anyway */
	}
	if (join_within(vu, 200)) {
		pthread_mutex_lock(&vu->fd_lock);
		uint64_t v;
		struct iovec iov = { &v, sizeof(v) };
		if (vu->notifier_fd >= 0 && preadv2(vu->notifier_fd, &iov, 1, -1, RWF_NOWAIT) < 0) {
			/* not an eventfd with a count: cancelled below */
		}
		pthread_mutex_unlock(&vu->fd_lock);
		if (join_within(vu, 1000)) {
			pthread_cancel(vu->notifier);
			pthread_join(vu->notifier, NULL);
		}
	}
	vu->notifier_running = false;
	mv__vu_close(&vu->notifier_fd); /* if it was cancelled in a write */
	mv__vu_close(&vu->notify_efd);
}
