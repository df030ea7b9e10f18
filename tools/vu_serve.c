/* vu_serve.c - a vhost-user balloon server: one VM and one device per connection, served
 * from one poll loop; a control socket takes a line per command and answers in JSON. */
#include "vu_serve.h"
#include "bench.h"
#include "prim.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <json-c/json.h>
#include <memvirt/attach.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 64
#define MAX_CTL   4
#define CTL_LINE  256

struct conn {
	unsigned id;
	struct mv_vm *vm;
	struct mv_vhost_user *vu;
	bool target_set;              /* the server's target reached the device */
};

struct ctl {
	int fd;
	char line[CTL_LINE];
	size_t n;
};

struct vu_serve {
	pthread_mutex_t lock;         /* conns, target, counts: the loop against callers */
	struct mv_host *h;
	struct vu_serve_opts o;
	int lfd, cfd;                 /* listening: devices, control */
	struct conn *conn[MAX_CONNS];
	unsigned n, next_id, ended;
	bool have_target;
	uint64_t target;
	struct ctl ctl[MAX_CTL];
	double last_log;
	int lockfd;                   /* SOCKET.lock, held while serving */
	struct mv_attach *link;       /* to memvirtd (opts.attach), or NULL */
};

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static FILE *logf_(struct vu_serve *s)
{
	return s->o.log ? s->o.log : stderr;
}

/* The control socket is its owner's alone, whoever else may use the directory. */
static int listen_control(const char *path)
{
	int fd = mv__listen_unix(path, 8);
	if (fd >= 0 && chmod(path, 0600)) {
		int err = -errno;
		close(fd);
		unlink(path);
		return err;
	}
	return fd;
}

/* ---- connections ---- */

static struct conn *find(struct vu_serve *s, unsigned id)
{
	for (unsigned i = s->n; i-- > 0;)
		if (!id || s->conn[i]->id == id)
			return s->conn[i];
	return NULL;
}

static void accept_conn(struct vu_serve *s)
{
	int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	unsigned max = s->o.max_conns ? s->o.max_conns : 8;
	struct conn *c = calloc(1, sizeof(*c));
	int err = !c ? -ENOMEM : s->n >= max || s->n >= MAX_CONNS ? -EBUSY : 0;
	char name[64]; /* under memvirtd, the VM's name (its domain is then vm:NAME) */
	if (s->o.name)
		snprintf(name, sizeof(name), "%s", s->o.name);
	else
		snprintf(name, sizeof(name), "vu-%u", s->next_id + 1);
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = name;
	if (!err)
		err = mv_vm_new(s->h, &vc, &c->vm);
	struct mv_vhost_user_config cfg;
	mv_vhost_user_config_init(&cfg);
	cfg.balloon.no_release = s->o.no_release;
	cfg.balloon.release_thread = true;
	cfg.call_thread = true; /* frontends are not trusted */
	if (s->o.features)
		cfg.balloon.features = s->o.features;
	cfg.inband_notifications = s->o.inband;
	if (!err && (err = mv_vhost_user_new(c->vm, fd, &cfg, &c->vu)))
		mv_vm_free(c->vm);
	if (err) {
		fprintf(logf_(s), "memvirt: connection refused: %s\n", mv_strerror(err));
		fflush(logf_(s));
		close(fd);
		free(c);
		return;
	}
	pthread_mutex_lock(&s->lock);
	c->id = ++s->next_id;
	s->conn[s->n++] = c;
	pthread_mutex_unlock(&s->lock);
	if (s->link && (err = mv_attach_add_vm(s->link, s->o.name, c->vm, mv_vhost_user_balloon(c->vu))))
		fprintf(logf_(s), "memvirt: frontend %u not reported to memvirtd: %s\n", c->id,
		        mv_strerror(err));
	fprintf(logf_(s), "memvirt: frontend %u connected\n", c->id);
	fflush(logf_(s));
}

/* Out of the table first (callers no longer find it), freed, then counted as ended:
 * whoever sees the count has nothing of the connection left open or mapped. */
static void end_conn(struct vu_serve *s, unsigned i, int why)
{
	pthread_mutex_lock(&s->lock);
	struct conn *c = s->conn[i];
	s->conn[i] = s->conn[--s->n];
	pthread_mutex_unlock(&s->lock);
	if (s->link)
		mv_attach_remove_vm(s->link, s->o.name);
	fprintf(logf_(s), "memvirt: frontend %u %s\n", c->id,
	        why == -ECONNRESET ? "disconnected" : "dropped: malformed message");
	fflush(logf_(s));
	mv_vhost_user_free(c->vu);
	mv_vm_free(c->vm);
	free(c);
	pthread_mutex_lock(&s->lock);
	s->ended++;
	pthread_mutex_unlock(&s->lock);
}

static uint64_t conn_ram(struct conn *c)
{
	struct mv_vhost_user_info vi = { 0 };
	mv_vhost_user_info(c->vu, &vi);
	return vi.ram_bytes;
}

/* The server's target reaches a device once the frontend's memory is there; a guest
 * with less RAM than the target is told so once and left as it is. */
static void apply_targets(struct vu_serve *s)
{
	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; s->have_target && i < s->n; i++) {
		struct conn *c = s->conn[i];
		if (c->target_set)
			continue;
		int err = mv_balloon_set_target(mv_vhost_user_balloon(c->vu), s->target);
		uint64_t ram = err ? conn_ram(c) : 0;
		c->target_set = !err || ram; /* no memory yet: again later */
		if (err && ram)
			fprintf(logf_(s), "memvirt: frontend %u: target %llu MiB not applied: its RAM is "
			        "%llu MiB\n", c->id, (unsigned long long)(s->target >> 20),
			        (unsigned long long)(ram >> 20));
	}
	pthread_mutex_unlock(&s->lock);
}

/* ---- reports ---- */

static void add_u64(json_object *o, const char *k, uint64_t v)
{
	json_object_object_add(o, k, json_object_new_uint64(v));
}

static json_object *conn_json(struct conn *c)
{
	static const char *const stat_names[MV_BSTAT_NR] = {
		"swap_in", "swap_out", "major_faults", "minor_faults", "free_bytes", "total_bytes",
		"available_bytes", "caches_bytes", "htlb_allocs", "htlb_failures", "oom_kills",
		"alloc_stalls", "async_scans", "direct_scans", "async_reclaims", "direct_reclaims" };
	struct mv_balloon_info bi;
	struct mv_vhost_user_info vi;
	mv_balloon_info(mv_vhost_user_balloon(c->vu), &bi);
	mv_vhost_user_info(c->vu, &vi);
	json_object *o = json_object_new_object();
	add_u64(o, "id", c->id);
	json_object_object_add(o, "running", json_object_new_boolean(vi.running));
	add_u64(o, "ram_bytes", vi.ram_bytes);
	add_u64(o, "file_bytes", vi.file_bytes);
	add_u64(o, "target_bytes", bi.target_bytes);
	add_u64(o, "actual_bytes", bi.actual_bytes);
	add_u64(o, "held_bytes", bi.held_bytes);
	add_u64(o, "released_bytes", bi.released_bytes);
	add_u64(o, "inflated_bytes", bi.inflated_bytes);
	add_u64(o, "deflated_bytes", bi.deflated_bytes);
	add_u64(o, "reported_bytes", bi.reported_bytes);
	add_u64(o, "hinted_bytes", bi.hinted_bytes);
	json_object_object_add(o, "stalled", json_object_new_boolean(bi.stalled));
	add_u64(o, "guest_errors", bi.guest_errors);
	add_u64(o, "features", bi.features);
	json_object *st = json_object_new_object();
	for (unsigned t = 0; t < MV_BSTAT_NR; t++)
		if (bi.stats_valid & (1u << t))
			add_u64(st, stat_names[t], bi.stats[t]);
	json_object_object_add(o, "stats", st);
	add_u64(o, "messages", vi.messages);
	add_u64(o, "bad_messages", vi.bad_messages);
	add_u64(o, "kicks", vi.kicks);
	add_u64(o, "calls", vi.calls);
	return o;
}

static void log_progress(struct vu_serve *s)
{
	double t = now_s();
	if (!s->o.log_every_ms || t - s->last_log < s->o.log_every_ms / 1e3)
		return;
	s->last_log = t;
	for (unsigned i = 0; i < s->n; i++) {
		json_object *o = conn_json(s->conn[i]);
		fprintf(logf_(s), "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
		json_object_put(o);
	}
	fflush(logf_(s));
}

/* ---- control socket: "target [ID] SIZE", "info", "stats [ID]", "hint start|stop [ID]" ---- */

static json_object *err_json(const char *fmt, const char *arg)
{
	char msg[160];
	snprintf(msg, sizeof(msg), fmt, arg);
	json_object *o = json_object_new_object();
	json_object_object_add(o, "error", json_object_new_string(msg));
	return o;
}

static json_object *ok_json(int err)
{
	if (err)
		return err_json("%s", mv_strerror(err));
	json_object *o = json_object_new_object();
	json_object_object_add(o, "ok", json_object_new_boolean(1));
	return o;
}

static bool parse_id(const char *w, unsigned *id)
{
	uint64_t v;
	char *end;
	if (!w || !*w || *w == '-')
		return false;
	v = strtoull(w, &end, 10);
	if (*end || v > 1000000)
		return false;
	*id = (unsigned)v;
	return true;
}

static json_object *cmd_target(struct vu_serve *s, char **w, int n)
{
	unsigned id = 0;
	double mib;
	if (n < 2 || n > 3 || (n == 3 && !parse_id(w[1], &id)) ||
	    bench_parse_size_mib(w[n - 1], 1, &mib) || mib < 0 || mib > 1 << 24)
		return err_json("usage: target [ID] SIZE (size with unit K, M, G; got '%s')", n > 1 ? w[n - 1] : "");
	uint64_t bytes = (uint64_t)(mib * 1048576.0);
	if (n == 3)
		return ok_json(vu_serve_target(s, id, bytes));
	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; i < s->n; i++) { /* refused whole if a guest is too small */
		uint64_t ram = conn_ram(s->conn[i]);
		if (ram && bytes > ram) {
			char why[96];
			snprintf(why, sizeof(why), "%llu MiB is more than the RAM of frontend %u (%llu MiB)",
			         (unsigned long long)(bytes >> 20), s->conn[i]->id,
			         (unsigned long long)(ram >> 20));
			pthread_mutex_unlock(&s->lock);
			return err_json("target %s: nothing changed", why);
		}
	}
	s->have_target = true;
	s->target = bytes;
	for (unsigned i = 0; i < s->n; i++)
		s->conn[i]->target_set = false;
	pthread_mutex_unlock(&s->lock);
	apply_targets(s);
	return ok_json(0);
}

static json_object *cmd_info(struct vu_serve *s)
{
	json_object *o = json_object_new_object(), *a = json_object_new_array();
	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; i < s->n; i++)
		json_object_array_add(a, conn_json(s->conn[i]));
	add_u64(o, "ended", s->ended);
	pthread_mutex_unlock(&s->lock);
	json_object_object_add(o, "connections", a);
	return o;
}

static json_object *command(struct vu_serve *s, char *line)
{
	char *w[4], *save = NULL;
	int n = 0;
	for (char *t = strtok_r(line, " \t\r", &save); t && n < 4; t = strtok_r(NULL, " \t\r", &save))
		w[n++] = t;
	unsigned id = 0;
	if (!n)
		return err_json("empty command%s", "");
	if (!strcmp(w[0], "target"))
		return cmd_target(s, w, n);
	if (!strcmp(w[0], "info") && n == 1)
		return cmd_info(s);
	if (!strcmp(w[0], "stats") && n <= 2 && (n == 1 || parse_id(w[1], &id)))
		return ok_json(vu_serve_stats_request(s, id));
	if (!strcmp(w[0], "hint") && n >= 2 && n <= 3 && (!strcmp(w[1], "start") || !strcmp(w[1], "stop")) &&
	    (n == 2 || parse_id(w[2], &id)))
		return ok_json(vu_serve_hint(s, id, !strcmp(w[1], "start")));
	return err_json("unknown command '%s' (target, info, stats, hint)", w[0]);
}

static void ctl_close(struct ctl *c)
{
	close(c->fd);
	c->fd = -1;
	c->n = 0;
}

static void ctl_read(struct vu_serve *s, struct ctl *c)
{
	ssize_t r = read(c->fd, c->line + c->n, sizeof(c->line) - 1 - c->n);
	if (r <= 0) {
		ctl_close(c);
		return;
	}
	c->n += (size_t)r;
	char *nl;
	while ((nl = memchr(c->line, '\n', c->n))) {
		*nl = 0;
		json_object *o = command(s, c->line);
		const char *txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
		bool ok = send(c->fd, txt, strlen(txt), MSG_NOSIGNAL | MSG_DONTWAIT) >= 0 &&
		          send(c->fd, "\n", 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1;
		json_object_put(o);
		size_t used = (size_t)(nl - c->line) + 1;
		memmove(c->line, nl + 1, c->n - used);
		c->n -= used;
		if (!ok) {
			ctl_close(c);
			return;
		}
	}
	if (c->n == sizeof(c->line) - 1)
		ctl_close(c); /* a line too long: not a client of ours */
}

static void ctl_accept(struct vu_serve *s)
{
	int fd = accept4(s->cfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	for (unsigned i = 0; i < MAX_CTL; i++)
		if (s->ctl[i].fd < 0) {
			s->ctl[i] = (struct ctl){ .fd = fd };
			return;
		}
	close(fd);
}

/* ---- the loop ---- */

int vu_serve_run(struct vu_serve *s, int stop_fd)
{
	for (;;) {
		struct pollfd p[3 + MAX_CTL + MAX_CONNS];
		unsigned n = 0, first_ctl, first_conn;
		p[n++] = (struct pollfd){ .fd = stop_fd, .events = POLLIN };
		p[n++] = (struct pollfd){ .fd = s->lfd, .events = POLLIN };
		p[n++] = (struct pollfd){ .fd = s->cfd, .events = POLLIN };
		first_ctl = n;
		for (unsigned i = 0; i < MAX_CTL; i++)
			p[n++] = (struct pollfd){ .fd = s->ctl[i].fd, .events = POLLIN };
		first_conn = n;
		for (unsigned i = 0; i < s->n; i++)
			p[n++] = (struct pollfd){ .fd = mv_vhost_user_fd(s->conn[i]->vu), .events = POLLIN };
		if (poll(p, n, 100) < 0 && errno != EINTR)
			return -errno;
		if (p[0].revents)
			return 0;
		for (unsigned i = s->n; i-- > 0;) {
			if (!p[first_conn + i].revents)
				continue;
			int err = mv_vhost_user_dispatch(s->conn[i]->vu);
			if (err)
				end_conn(s, i, err);
		}
		if (p[1].revents)
			accept_conn(s);
		if (p[2].revents)
			ctl_accept(s);
		for (unsigned i = 0; i < MAX_CTL; i++)
			if (p[first_ctl + i].revents && s->ctl[i].fd >= 0)
				ctl_read(s, &s->ctl[i]);
		apply_targets(s);
		log_progress(s);
	}
}

/* SOCKET.lock: one server per socket, so a second one never removes a live socket. */
static int take_lock(struct vu_serve *s)
{
	char path[128];
	if (snprintf(path, sizeof(path), "%s.lock", s->o.socket) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	s->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (s->lockfd < 0)
		return -errno;
	if (flock(s->lockfd, LOCK_EX | LOCK_NB)) {
		int err = errno == EWOULDBLOCK ? -EADDRINUSE : -errno;
		close(s->lockfd);
		return err;
	}
	return 0;
}

/* Under memvirtd the VMM may run as another user: the socket is for the memvirt-vmm group
 * when there is one (mode 0660), else for its owner alone (0600). */
static void share_with_vmms(const char *path)
{
	struct group *g = getgrnam("memvirt-vmm");
	if (g && !chown(path, (uid_t)-1, g->gr_gid))
		chmod(path, 0660);
	else
		chmod(path, 0600);
}

static int link_daemon(struct vu_serve *s)
{
	char client[64];
	snprintf(client, sizeof(client), "vhost-user %s", s->o.name ? s->o.name : "");
	struct mv_attach_config ac;
	mv_attach_config_init(&ac);
	ac.client = client;
	/* no scanner: vhost-user memory is shared with the VMM and never merged */
	return s->o.name ? mv_host_attach(NULL, s->o.attach, &ac, &s->link) : -EINVAL;
}

int vu_serve_new(struct mv_host *h, const struct vu_serve_opts *o, struct vu_serve **out)
{
	struct vu_serve *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->h = h;
	s->o = *o;
	s->cfd = -1;
	s->have_target = o->target_bytes > 0;
	s->target = o->target_bytes;
	for (unsigned i = 0; i < MAX_CTL; i++)
		s->ctl[i].fd = -1;
	if (o->attach)
		s->o.max_conns = 1; /* one VM per socket under the daemon */
	int err = take_lock(s);
	if (err)
		goto fail_lock;
	s->lfd = mv__listen_unix(o->socket, 8);
	if (s->lfd < 0) {
		err = s->lfd;
		goto fail_listen;
	}
	if (o->control && (s->cfd = listen_control(o->control)) < 0) {
		err = s->cfd;
		goto fail_control;
	}
	if (o->attach)
		share_with_vmms(o->socket);
	if (o->attach && (err = link_daemon(s)))
		goto fail_attach;
	pthread_mutex_init(&s->lock, NULL);
	*out = s;
	return 0;
fail_attach:
	if (s->cfd >= 0)
		close(s->cfd), unlink(o->control);
fail_control:
	close(s->lfd);
	unlink(o->socket);
fail_listen:
	close(s->lockfd);
fail_lock:
	free(s);
	return err;
}

void vu_serve_free(struct vu_serve *s)
{
	if (!s)
		return;
	while (s->n)
		end_conn(s, s->n - 1, -ECONNRESET);
	for (unsigned i = 0; i < MAX_CTL; i++)
		if (s->ctl[i].fd >= 0)
			close(s->ctl[i].fd);
	mv_attach_free(s->link);
	close(s->lfd);
	unlink(s->o.socket);
	if (s->cfd >= 0) {
		close(s->cfd);
		unlink(s->o.control);
	}
	close(s->lockfd); /* after the unlink: the next server finds no socket of ours */
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* ---- callers' side ---- */

int vu_serve_info(struct vu_serve *s, unsigned id, struct mv_balloon_info *bi,
                  struct mv_vhost_user_info *vi)
{
	pthread_mutex_lock(&s->lock);
	struct conn *c = find(s, id);
	int err = c ? 0 : -ENOENT;
	if (c && bi)
		err = mv_balloon_info(mv_vhost_user_balloon(c->vu), bi);
	if (c && vi && !err)
		err = mv_vhost_user_info(c->vu, vi);
	pthread_mutex_unlock(&s->lock);
	return err;
}

int vu_serve_target(struct vu_serve *s, unsigned id, uint64_t bytes)
{
	pthread_mutex_lock(&s->lock);
	struct conn *c = find(s, id);
	int err = c ? mv_balloon_set_target(mv_vhost_user_balloon(c->vu), bytes) : -ENOENT;
	pthread_mutex_unlock(&s->lock);
	return err;
}

int vu_serve_stats_request(struct vu_serve *s, unsigned id)
{
	pthread_mutex_lock(&s->lock);
	struct conn *c = find(s, id);
	int err = c ? mv_balloon_stats_request(mv_vhost_user_balloon(c->vu)) : -ENOENT;
	pthread_mutex_unlock(&s->lock);
	return err;
}

int vu_serve_hint(struct vu_serve *s, unsigned id, bool start)
{
	pthread_mutex_lock(&s->lock);
	struct conn *c = find(s, id);
	struct mv_balloon *b = c ? mv_vhost_user_balloon(c->vu) : NULL;
	int err = !c ? -ENOENT : start ? mv_balloon_hint_start(b) : mv_balloon_hint_stop(b);
	pthread_mutex_unlock(&s->lock);
	return err;
}

void vu_serve_counts(struct vu_serve *s, unsigned *ended, unsigned *live)
{
	pthread_mutex_lock(&s->lock);
	*ended = s->ended;
	*live = s->n;
	pthread_mutex_unlock(&s->lock);
}
