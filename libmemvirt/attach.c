/* attach.c - a VMM's link to memvirtd: one thread reports the VMs added and applies decisions. */
#include "internal.h"
#include "attach_wire.h"

#include <memvirt/attach.h>
#include <memvirt/balloon.h>

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define SEND_TIMEOUT_MS 2000           /* a daemon that does not read is dropped after this */
#define ATT_PAGE        4096ull
#define MICRO_CORES     1000000ull     /* one core */

/* A VM added to the link. */
struct att_vm {
	char name[MV_AW_NAME];
	struct mv_vm *vm;                  /* not owned */
	struct mv_balloon *balloon;        /* not owned; NULL: reported, never reclaimed from */
	bool refused;                      /* the daemon refused its name: left out of reports */
};

struct mv_attach {
	struct mv_host *host;              /* not owned; NULL: no scanner */
	struct sockaddr_un addr;           /* the daemon's agent socket */
	char client[MV_AW_CLIENT];
	unsigned retry_ms;
	mv_log_fn log;
	void *log_opaque;
	int wake_fd;                       /* eventfd, written once by mv_attach_free() */
	atomic_bool stop;
	pthread_t thread;
	pthread_mutex_t lock;              /* vms, nr_vms, info */
	struct att_vm vms[MV_AW_MAX_VMS];
	unsigned nr_vms;
	struct mv_attach_info info;
	/* the link thread's own */
	int sock;                          /* -1 when not connected */
	bool unreachable_logged;           /* the current outage was logged */
	struct mv__aw_rx rx;
	struct mv__aw_vm blocks[MV_AW_MAX_VMS]; /* a report's VMs, or a message's */
};

static void att_log(struct mv_attach *a, enum mv_log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void att_log(struct mv_attach *a, enum mv_log_level lvl, const char *fmt, ...)
{
	if (!a->log)
		return;
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	a->log(a->log_opaque, lvl, msg);
}

/* Under a->lock. */
static struct att_vm *vm_find(struct mv_attach *a, const char *name)
{
	for (unsigned i = 0; i < a->nr_vms; i++)
		if (!strcmp(a->vms[i].name, name))
			return &a->vms[i];
	return NULL;
}

/* ---- what the daemon asks ---- */

static int send_refuse(struct mv_attach *a, uint16_t type, int err, const char *name,
                       const char *why)
{
	struct mv__aw_msg r = { .type = MV_AW_REFUSE };
	r.u.refuse.type = type;
	r.u.refuse.err = err;
	snprintf(r.u.refuse.name, sizeof(r.u.refuse.name), "%s", name);
	snprintf(r.u.refuse.why, sizeof(r.u.refuse.why), "%s", why);
	return mv__aw_send(a->sock, &r, SEND_TIMEOUT_MS);
}

/* Under a->lock. */
static void vm_block(const struct mv_attach *a, const struct att_vm *v, struct mv__aw_vm *out)
{
	memset(out, 0, sizeof(*out));
	memcpy(out->name, v->name, sizeof(out->name));
	snprintf(out->domain, sizeof(out->domain), "%s", mv_vm_domain(v->vm));
	out->ram_bytes = mv__vm_ram_bytes(v->vm);
	out->has_balloon = v->balloon && !mv_balloon_info(v->balloon, &out->balloon);
	if (!out->has_balloon)
		memset(&out->balloon, 0, sizeof(out->balloon));
	out->scanner_valid = a->host && !mv_vm_stats(v->vm, &out->scanner);
	if (!out->scanner_valid)
		memset(&out->scanner, 0, sizeof(out->scanner));
}

static int on_poll(struct mv_attach *a, uint64_t seq)
{
	struct mv__aw_msg r = { .type = MV_AW_REPORT, .vms = a->blocks };
	r.u.report.seq = seq;
	pthread_mutex_lock(&a->lock);
	r.u.report.scanner_valid = a->host && !mv_host_stats(a->host, &r.u.report.scanner);
	for (unsigned i = 0; i < a->nr_vms; i++) {
		if (a->vms[i].refused)
			continue;
		vm_block(a, &a->vms[i], &a->blocks[r.u.report.nr_vms++]);
		if (a->vms[i].balloon) /* fresh guest statistics for the next poll */
			mv_balloon_stats_request(a->vms[i].balloon);
	}
	a->info.polls++;
	pthread_mutex_unlock(&a->lock);
	if (!r.u.report.scanner_valid)
		memset(&r.u.report.scanner, 0, sizeof(r.u.report.scanner));
	return mv__aw_send(a->sock, &r, SEND_TIMEOUT_MS);
}

/* Under a->lock: the checks, then the balloon. why receives the reason of a refusal. */
static int apply_target(struct mv_attach *a, const char *name, uint64_t bytes, char *why)
{
	struct att_vm *v = vm_find(a, name);
	if (!v || v->refused) {
		snprintf(why, MV_AW_WHY, "no VM of that name on this link");
		return -ENOENT;
	}
	if (!v->balloon) {
		snprintf(why, MV_AW_WHY, "the VM has no balloon");
		return -ENODEV;
	}
	if (bytes % ATT_PAGE) {
		snprintf(why, MV_AW_WHY, "target not a multiple of 4 KiB");
		return -EINVAL;
	}
	if (bytes > mv__vm_ram_bytes(v->vm)) {
		snprintf(why, MV_AW_WHY, "target beyond the VM's RAM");
		return -ERANGE;
	}
	int rc = mv_balloon_set_target(v->balloon, bytes);
	if (rc)
		snprintf(why, MV_AW_WHY, "the balloon refused it: %s", mv_strerror(rc));
	return rc;
}

static int on_target(struct mv_attach *a, const struct mv__aw_msg *m)
{
	const char *name = m->u.set_target.name;
	uint64_t bytes = m->u.set_target.target_bytes;
	char why[MV_AW_WHY];
	pthread_mutex_lock(&a->lock);
	int rc = apply_target(a, name, bytes, why);
	if (rc)
		a->info.refused++;
	else
		a->info.targets_applied++;
	pthread_mutex_unlock(&a->lock);
	if (!rc)
		return 0;
	att_log(a, MV_LOG_WARN, "attach: refused a target of %" PRIu64 " bytes for VM '%s': %s",
	        bytes, name, why);
	return send_refuse(a, MV_AW_SET_TARGET, rc, name, why);
}

static int on_share(struct mv_attach *a, uint64_t micro_cores)
{
	int rc = -ERANGE;
	pthread_mutex_lock(&a->lock);
	if (micro_cores && micro_cores <= MICRO_CORES)
		rc = a->host ? mv_host_set_cpu_share(a->host, (double)micro_cores / MICRO_CORES) : 0;
	if (rc)
		a->info.refused++;
	else if (a->host)
		a->info.shares_applied++;
	pthread_mutex_unlock(&a->lock);
	if (!rc)
		return 0;
	att_log(a, MV_LOG_WARN, "attach: refused a scanner share of %" PRIu64 " micro-cores",
	        micro_cores);
	return send_refuse(a, MV_AW_SET_SHARE, rc, "", "share outside (0, 1000000] micro-cores");
}

/* The daemon refused something of ours: a VM's name (in use by another process) leaves
 * that VM out of the reports until it is removed and added again, or the link connects
 * anew. */
static void on_refuse(struct mv_attach *a, const struct mv__aw_msg *m)
{
	const char *name = m->u.refuse.name;
	pthread_mutex_lock(&a->lock);
	struct att_vm *v = name[0] ? vm_find(a, name) : NULL;
	if (v)
		v->refused = true;
	pthread_mutex_unlock(&a->lock);
	if (v)
		att_log(a, MV_LOG_WARN, "attach: the daemon refused VM '%s' (%s: %s); it is left out "
		        "of the reports until removed and added again or the link connects anew", name,
		        mv_strerror(m->u.refuse.err), m->u.refuse.why);
	else
		att_log(a, MV_LOG_WARN, "attach: the daemon refused a message of type %u (%s): %s",
		        m->u.refuse.type, mv_strerror(m->u.refuse.err), m->u.refuse.why);
}

/* A message that breaks the protocol: counted, and the connection ends. */
static int malformed(struct mv_attach *a, const char *what)
{
	pthread_mutex_lock(&a->lock);
	a->info.refused++;
	pthread_mutex_unlock(&a->lock);
	att_log(a, MV_LOG_WARN, "attach: %s from the daemon; disconnecting", what);
	return -EPROTO;
}

static void on_welcome(struct mv_attach *a, uint32_t period_ms)
{
	pthread_mutex_lock(&a->lock);
	a->info.connected = true;
	a->info.connects++;
	pthread_mutex_unlock(&a->lock);
	a->unreachable_logged = false;
	att_log(a, MV_LOG_INFO, "attach: linked to memvirtd at %s (polls every %u ms)",
	        a->addr.sun_path, period_ms);
}

static int handle(struct mv_attach *a, const struct mv__aw_msg *m, bool *welcomed)
{
	if (!*welcomed && m->type != MV_AW_WELCOME && m->type != MV_AW_REFUSE)
		return malformed(a, "a message before WELCOME");
	switch (m->type) {
	case MV_AW_WELCOME:
		if (!*welcomed)
			on_welcome(a, m->u.welcome.period_ms);
		*welcomed = true;
		return 0;
	case MV_AW_POLL:
		return on_poll(a, m->u.poll.seq);
	case MV_AW_SET_TARGET:
		return on_target(a, m);
	case MV_AW_SET_SHARE:
		return on_share(a, m->u.set_share.micro_cores);
	case MV_AW_REFUSE:
		on_refuse(a, m);
		return 0;
	}
	return malformed(a, "an agent's message");
}

/* ---- the connection ---- */

/*
 * Wait for fd to be readable (fd < 0: only for a stop) for at most timeout_ms (-1: no
 * limit). 1: readable (or hung up), 0: timed out, -ECANCELED: mv_attach_free() is waiting.
 */
static int link_wait(struct mv_attach *a, int fd, int timeout_ms)
{
	struct pollfd p[2] = { { .fd = a->wake_fd, .events = POLLIN }, { .fd = fd, .events = POLLIN } };
	for (;;) {
		if (atomic_load(&a->stop))
			return -ECANCELED;
		int n = poll(p, 2, timeout_ms);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (p[0].revents)
			return -ECANCELED;
		return n > 0;
	}
}

/* Read what came and handle every whole message. 0, or why the connection ends. */
static int link_receive(struct mv_attach *a, bool *welcomed)
{
	struct mv__aw_msg m;
	int rd = mv__aw_read(a->sock, &a->rx);
	long n;
	while ((n = mv__aw_next(&a->rx, &m, a->blocks)) > 0) {
		if (atomic_load(&a->stop))
			return -ECANCELED; /* mv_attach_free() waits: the rest is not for us */
		int rc = handle(a, &m, welcomed);
		if (rc)
			return rc;
	}
	return n < 0 ? malformed(a, "a malformed message") : rd;
}

static int link_connect(struct mv_attach *a)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (const struct sockaddr *)&a->addr, sizeof(a->addr)) < 0) {
		int rc = -errno;
		close(fd);
		if (!a->unreachable_logged)
			att_log(a, MV_LOG_INFO, "attach: memvirtd not reachable at %s (%s); trying "
			        "every %u ms", a->addr.sun_path, mv_strerror(rc), a->retry_ms);
		a->unreachable_logged = true;
		return rc;
	}
	a->sock = fd;
	a->rx.len = 0;
	pthread_mutex_lock(&a->lock);
	for (unsigned i = 0; i < a->nr_vms; i++)
		a->vms[i].refused = false; /* a name refused before may be free on this daemon */
	pthread_mutex_unlock(&a->lock);
	return 0;
}

/* HELLO, then the daemon's messages until the connection ends or the link stops. */
static int link_session(struct mv_attach *a)
{
	struct mv__aw_msg m = { .type = MV_AW_HELLO };
	m.u.hello.pid = (uint32_t)getpid();
	memcpy(m.u.hello.client, a->client, sizeof(m.u.hello.client));
	int rc = mv__aw_send(a->sock, &m, SEND_TIMEOUT_MS);
	bool welcomed = false;
	while (!rc) {
		rc = link_wait(a, a->sock, -1);
		if (rc > 0)
			rc = link_receive(a, &welcomed);
	}
	return rc;
}

static void link_close(struct mv_attach *a, int why)
{
	close(a->sock);
	a->sock = -1;
	pthread_mutex_lock(&a->lock);
	a->info.connected = false;
	pthread_mutex_unlock(&a->lock);
	if (why != -ECANCELED)
		att_log(a, MV_LOG_WARN, "attach: link to memvirtd at %s ended (%s); connecting "
		        "again every %u ms", a->addr.sun_path, mv_strerror(why), a->retry_ms);
}

static void *link_main(void *arg)
{
	struct mv_attach *a = arg;
	while (!atomic_load(&a->stop)) {
		if (!link_connect(a))
			link_close(a, link_session(a));
		link_wait(a, -1, (int)a->retry_ms);
	}
	return NULL;
}

/* ---- the API ---- */

MV_API void mv_attach_config_init(struct mv_attach_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->size = sizeof(*cfg);
	cfg->retry_ms = 1000;
}

static int config_check(const struct mv_attach_config *c, const char *path)
{
	if (c->size != sizeof(*c) || c->retry_ms < 10)
		return -EINVAL;
	if (c->client && (!c->client[0] || strlen(c->client) >= MV_AW_CLIENT))
		return -EINVAL;
	if (!path[0] || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return -EINVAL;
	return 0;
}

/* The thread takes no signals: they stay the VMM's. */
static int start_thread(struct mv_attach *a)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = pthread_create(&a->thread, NULL, link_main, a);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -rc;
}

MV_API int mv_host_attach(struct mv_host *host, const char *path, const struct mv_attach_config *cfg,
                          struct mv_attach **out)
{
	struct mv_attach_config def;
	if (!cfg) {
		mv_attach_config_init(&def);
		cfg = &def;
	}
	if (!path || !out || config_check(cfg, path))
		return -EINVAL;
	struct mv_attach *a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->host = host;
	a->addr.sun_family = AF_UNIX;
	snprintf(a->addr.sun_path, sizeof(a->addr.sun_path), "%s", path);
	if (cfg->client)
		snprintf(a->client, sizeof(a->client), "%s", cfg->client);
	else
		snprintf(a->client, sizeof(a->client), "pid %d", (int)getpid());
	a->retry_ms = cfg->retry_ms;
	a->log = cfg->log;
	a->log_opaque = cfg->log_opaque;
	a->sock = -1;
	a->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	int rc = a->wake_fd < 0 ? -errno : 0;
	if (rc)
		goto err_eventfd;
	rc = -pthread_mutex_init(&a->lock, NULL);
	if (rc)
		goto err_mutex;
	rc = start_thread(a);
	if (rc)
		goto err_thread;
	*out = a;
	return 0;
err_thread:
	pthread_mutex_destroy(&a->lock);
err_mutex:
	close(a->wake_fd);
err_eventfd:
	free(a);
	return rc;
}

/* 1..63 printable characters, no spaces, no ']'. */
static bool name_ok(const char *name)
{
	size_t n = name ? strnlen(name, MV_AW_NAME) : 0;
	if (!n || n >= MV_AW_NAME)
		return false;
	for (size_t i = 0; i < n; i++)
		if (name[i] <= ' ' || name[i] > '~' || name[i] == ']')
			return false;
	return true;
}

MV_API int mv_attach_add_vm(struct mv_attach *a, const char *name, struct mv_vm *vm,
                            struct mv_balloon *balloon)
{
	if (!a || !vm || !name_ok(name))
		return -EINVAL;
	int rc = 0;
	pthread_mutex_lock(&a->lock);
	if (vm_find(a, name))
		rc = -EEXIST;
	else if (a->nr_vms == MV_AW_MAX_VMS)
		rc = -ENOSPC;
	else
		a->vms[a->nr_vms++] = (struct att_vm){ .vm = vm, .balloon = balloon };
	if (!rc)
		snprintf(a->vms[a->nr_vms - 1].name, MV_AW_NAME, "%s", name);
	pthread_mutex_unlock(&a->lock);
	return rc;
}

MV_API int mv_attach_remove_vm(struct mv_attach *a, const char *name)
{
	if (!a || !name)
		return -EINVAL;
	pthread_mutex_lock(&a->lock);
	struct att_vm *v = vm_find(a, name);
	if (v) {
		size_t after = (size_t)(&a->vms[a->nr_vms] - (v + 1));
		memmove(v, v + 1, after * sizeof(*v));
		a->nr_vms--;
	}
	pthread_mutex_unlock(&a->lock);
	return v ? 0 : -ENOENT;
}

MV_API int mv_attach_info(struct mv_attach *a, struct mv_attach_info *out)
{
	if (!a || !out)
		return -EINVAL;
	pthread_mutex_lock(&a->lock);
	*out = a->info;
	pthread_mutex_unlock(&a->lock);
	return 0;
}

MV_API void mv_attach_free(struct mv_attach *a)
{
	if (!a)
		return;
	atomic_store(&a->stop, true);
	uint64_t one = 1;
	while (write(a->wake_fd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
	pthread_join(a->thread, NULL);
	if (a->sock >= 0)
		close(a->sock);
	pthread_mutex_destroy(&a->lock);
	close(a->wake_fd);
	free(a);
}
