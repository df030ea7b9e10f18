/* vu_serve.h - a vhost-user balloon server: a listening socket, one device per
 * connection, a line-based control socket. Used by `memvirt balloon-backend`, the Linux
 * guest tests and the Linux-driver benchmark. */
#ifndef MV_VU_SERVE_H
#define MV_VU_SERVE_H

#include <memvirt/memvirt.h>
#include <memvirt/balloon.h>
#include <memvirt/vhost_user.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct vu_serve_opts {
	const char *socket;        /* listen here (a stale socket file is replaced) */
	const char *control;       /* NULL: no control socket */
	uint64_t target_bytes;     /* asked of every new connection once its memory is known */
	uint64_t features;         /* MV_BALLOON_F_* mask offered; 0: all */
	bool no_release;           /* the device keeps every page (transport-limit baseline) */
	bool inband;               /* offer in-band notifications */
	unsigned max_conns;        /* 0: 8 */
	unsigned log_every_ms;     /* 0: no progress lines; else an info line per connection */
	FILE *log;                 /* progress and events; NULL: stderr */
	const char *attach;        /* memvirtd's agent socket: every connection is reported to
	                              the daemon as VM `name` and follows its targets */
	const char *name;          /* with attach (then max_conns is 1) */
};

struct vu_serve;

/* Takes the lock file SOCKET.lock first: -EADDRINUSE while another server holds it (the
 * socket is served), and a stale socket file is replaced only under the lock. */
int vu_serve_new(struct mv_host *h, const struct vu_serve_opts *o, struct vu_serve **out);
/* Serve until stop_fd (if >= 0) is readable. 0, or -errno of a failed poll. */
int vu_serve_run(struct vu_serve *s, int stop_fd);
void vu_serve_free(struct vu_serve *s);

/* From any thread. Connections are numbered from 1 in order of arrival; the newest
 * live one is asked for with id 0. -ENOENT without such a connection. */
int vu_serve_info(struct vu_serve *s, unsigned id, struct mv_balloon_info *bi,
                  struct mv_vhost_user_info *vi);
int vu_serve_target(struct vu_serve *s, unsigned id, uint64_t bytes);
int vu_serve_stats_request(struct vu_serve *s, unsigned id);
int vu_serve_hint(struct vu_serve *s, unsigned id, bool start);
/* Connections ended so far (counted once their descriptors and mappings are gone), and
 * those live now (a connection being ended is in neither for a moment). */
void vu_serve_counts(struct vu_serve *s, unsigned *ended, unsigned *live);

#endif
