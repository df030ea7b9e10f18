/* control.c - the admin's socket: who may connect, a command per line, a JSON line back,
 * and the live decision stream of `memvirt explain --follow`. */
#include "daemon.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

int md_control_listen(struct md *d)
{
	for (unsigned i = 0; i < MD_MAX_CLIENTS; i++)
		d->clients[i].fd = -1;
	d->cfd = md_listen_unix(d, d->o.control, d->group);
	if (d->cfd < 0)
		return d->cfd;
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &d->cfd };
	return epoll_ctl(d->ep, EPOLL_CTL_ADD, d->cfd, &ev) ? -errno : 0;
}

static void client_close(struct md *d, struct md_client *c)
{
	epoll_ctl(d->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
}

/* Whole or not at all: a client that does not read its answers is dropped. */
static bool send_line(int fd, const char *s)
{
	if (!*s)
		return true; /* the command sent its own lines */
	size_t len = strlen(s);
	struct iovec iov[2] = { { (void *)s, len }, { "\n", 1 } };
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
	return sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len + 1;
}

void md_control_accept(struct md *d)
{
	int fd = accept4(d->cfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0)
		return;
	char why[160], msg[256];
	pid_t pid;
	uid_t uid;
	struct md_client *c = NULL;
	for (unsigned i = 0; i < MD_MAX_CLIENTS && !c; i++)
		if (d->clients[i].fd < 0)
			c = &d->clients[i];
	bool ok = md_peer_allowed(d, fd, false, &pid, &uid, why, sizeof(why));
	if (!ok || !c) {
		snprintf(msg, sizeof(msg), "{\"v\":1,\"error\":\"%s\"}",
		         ok ? "too many control clients" : why);
		send_line(fd, msg);
		md_log(d, "memvirtd: control client refused: %s", ok ? "too many clients" : why);
		close(fd);
		return;
	}
	*c = (struct md_client){ .fd = fd };
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
	if (epoll_ctl(d->ep, EPOLL_CTL_ADD, fd, &ev))
		client_close(d, c);
}

void md_control_event(struct md *d, struct md_client *c)
{
	ssize_t r = recv(c->fd, c->line + c->n, sizeof(c->line) - 1 - c->n, MSG_DONTWAIT);
	if (r <= 0) {
		if (r == 0 || (errno != EAGAIN && errno != EINTR))
			client_close(d, c);
		return;
	}
	c->n += (size_t)r;
	char *nl;
	while (c->fd >= 0 && (nl = memchr(c->line, '\n', c->n))) {
		*nl = 0;
		size_t used = (size_t)(nl - c->line) + 1;
		char *reply = md_command(d, c, c->line);
		if (!reply || !send_line(c->fd, reply))
			client_close(d, c);
		free(reply);
		if (c->fd < 0)
			return;
		memmove(c->line, c->line + used, c->n - used);
		c->n -= used;
	}
	if (c->n == sizeof(c->line) - 1) {
		send_line(c->fd, "{\"v\":1,\"error\":\"command longer than 1023 bytes\"}");
		client_close(d, c);
	}
}

bool md_client_send(struct md_client *c, const char *line)
{
	return send_line(c->fd, line);
}

void md_control_broadcast(struct md *d, const char *line)
{
	for (unsigned i = 0; i < MD_MAX_CLIENTS; i++) {
		struct md_client *c = &d->clients[i];
		if (c->fd >= 0 && c->follow && !send_line(c->fd, line))
			client_close(d, c);
	}
}
