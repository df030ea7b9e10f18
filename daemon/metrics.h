/* metrics.h - the daemon's snapshot as Prometheus metrics: text, textfile and an HTTP endpoint. */
#ifndef MD_METRICS_H
#define MD_METRICS_H

#include <stdio.h>
#include "snapshot.h"

/* Write the snapshot in the Prometheus text exposition format, version 0.0.4: every family
 * with HELP and TYPE, names prefixed memvirt_, label values escaped. Per-VM series carry the
 * labels vm and source. Guest statistics appear only for the tags the guest reported, scanner
 * series only when the VM's scanner counters are valid, PSI only when known, cgroup figures
 * only with a cgroup limit. Numbers are printed with printf: call with the "C" LC_NUMERIC
 * locale (the daemon never calls setlocale). Any thread; reads s only.
 * 0, or -EIO if writing to out failed (out is not flushed or closed). */
int md_metrics_render(const struct md_snapshot *s, FILE *out);

/* The same text into path for node_exporter's textfile collector, atomically: written to a
 * temporary file in the same directory, fsync'ed, renamed over path, the directory fsync'ed.
 * No temporary file is left behind on error. The file is mode 0644. 0 or -errno. */
int md_metrics_textfile(const struct md_snapshot *s, const char *path);

/* The /metrics endpoint: libmicrohttpd with its internal polling thread. */
struct md_http;

/* Listen on listen, "HOST:PORT" with HOST a loopback address literal (127.0.0.0/8, "::1" or
 * "[::1]") or "localhost" (127.0.0.1), PORT 0 … 65535 (0: an ephemeral port, see
 * md_http_port()). -EINVAL for anything else: the endpoint is never exposed beyond the host.
 * GET (or HEAD) /metrics answers 200 with Content-Type "text/plain; version=0.0.4;
 * charset=utf-8" and the body fill writes (500 if fill returns non-zero); other paths 404,
 * other methods 405. fill(opaque, out) runs on the listener's thread, one request at a time,
 * concurrently with the caller's threads: it does its own locking. On success *out owns the
 * listener, free it with md_http_stop(). 0, -EINVAL, or -errno of socket/bind/listen
 * (-EADDRINUSE ...), -ENOMEM, -EIO if the listener's thread failed to start. */
int md_http_start(const char *listen, int (*fill)(void *opaque, FILE *out), void *opaque,
		  struct md_http **out);

/* The port listened on (the ephemeral one chosen when started with port 0). */
unsigned md_http_port(struct md_http *h);

/* Stop listening, wait for the listener's thread (and a fill under way) to finish, free h.
 * NULL is a no-op. After it returns fill is not called again. */
void md_http_stop(struct md_http *h);

#endif
