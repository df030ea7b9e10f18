/* agents.c - the links of VMMs (mv_host_attach()) and of vhost-user workers: who may
 * connect, their reports, the decisions sent back. */
#include "daemon.h"

#include <errno.h>
#include <grp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define SEND_TIMEOUT_MS 100

/* Supplementary groups of pid from /proc (SO_PEERCRED carries only the primary one). */
static bool pid_in_group(pid_t pid, gid_t g)
{
	char path[64], line[1024];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	bool in = false;
	while (f && !in && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "Groups:", 7))
			continue;
		char *p = line + 7, *end;
		for (long v; (v = strtol(p, &end, 10)), end != p; p = end)
			in |= (gid_t)v == g;
	}
	if (f)
		fclose(f);
	return in;
}

/* Root, the daemon's own user, or a member of the memvirt group. */
bool md_peer_allowed(struct md *d, int fd, pid_t *pid, char *why, size_t whylen)
{
	struct ucred uc;
	socklen_t len = sizeof(uc);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len)) {
		snprintf(why, whylen, "peer credentials unreadable: %s", strerror(errno));
		return false;
	}
	*pid = uc.pid;
	if (uc.uid == 0 || uc.uid == geteuid())
		return true;
	if (d->group != (gid_t)-1 && (uc.gid == d->group || pid_in_group(uc.pid, d->group)))
		return true;
	snprintf(why, whylen, "uid %u (pid %d) is not allowed: root, uid %u or the memvirt group "
	         "only", (unsigned)uc.uid, (int)uc.pid, (unsigned)geteuid());
	return false;
}

static int watch(struct md *d, int fd, void *ptr)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = ptr };
	return epoll_ctl(d->ep, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

/* A socket at path for root and the memvirt group (mode 0660). */
int md_listen_unix(struct md *d, const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(a.sun_path))
		return -ENAMETOOLONG;
	strcpy(a.sun_path, path);
	struct stat st;
	if (!lstat(path, &st)) {
		if (!S_ISSOCK(st.st_mode))
			return -EEXIST; /* never remove anything but a stale socket */
		unlink(path);
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 16) ||
	    chmod(path, 0660) || (d->group != (gid_t)-1 && chown(path, (uid_t)-1, d->group))) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

int md_agents_listen(struct md *d)
{
	for (unsigned i = 0; i < MD_MAX_AGENTS; i++)
		d->agents[i].fd = -1;
	d->afd = md_listen_unix(d, d->o.agent);
	return d->afd < 0 ? d->afd : watch(d, d->afd, &d->afd);
}

struct md_agent *md_agent_by_id(struct md *d, unsigned id)
{
	for (unsigned i = 0; i < MD_MAX_AGENTS; i++)
		if (d->agents[i].fd >= 0 && d->agents[i].id == id)
			return &d->agents[i];
	return NULL;
}

struct md_vm *md_vm_find(struct md *d, const char *name)
{
	for (unsigned i = 0; i < MD_MAX_VMS; i++)
		if (d->vms[i].used && !strcmp(d->vms[i].r.name, name))
			return &d->vms[i];
	return NULL;
}

static void forget_vm(struct md *d, struct md_vm *v, const char *why)
{
	if (v->attached)
		mv_policy_detach(d->pol, v->r.name);
	md_log(d, "memvirtd: vm %s forgotten: %s", v->r.name, why);
	memset(v, 0, sizeof(*v));
}

static void agent_close(struct md *d, struct md_agent *a, const char *why)
{
	for (unsigned i = 0; i < MD_MAX_VMS; i++)
		if (d->vms[i].used && d->vms[i].agent == a->id)
			forget_vm(d, &d->vms[i], why);
	md_log(d, "memvirtd: agent %u (%s, pid %d) gone: %s", a->id, a->client, (int)a->pid, why);
	epoll_ctl(d->ep, EPOLL_CTL_DEL, a->fd, NULL);
	close(a->fd);
	free(a->rx);
	a->fd = -1;
	a->rx = NULL;
	md_snapshot_update(d);
}

void md_agent_accept(struct md *d)
{
	int fd = accept4(d->afd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0)
		return;
	char why[160];
	pid_t pid;
	struct md_agent *a = NULL;
	for (unsigned i = 0; i < MD_MAX_AGENTS && !a; i++)
		if (d->agents[i].fd < 0)
			a = &d->agents[i];
	if (!md_peer_allowed(d, fd, &pid, why, sizeof(why)) || !a ||
	    !(a->rx = calloc(1, sizeof(*a->rx)))) {
		md_log(d, "memvirtd: agent refused: %s", a ? why : "too many agents");
		close(fd);
		return;
	}
	a->fd = fd;
	a->id = ++d->next_agent;
	a->pid = pid;
	a->hello = false;
	snprintf(a->client, sizeof(a->client), "pid %d", (int)pid);
	if (watch(d, fd, a)) {
		agent_close(d, a, "epoll failed");
		return;
	}
}

static void refuse(struct md *d, struct md_agent *a, uint16_t type, int err, const char *name,
                   const char *why)
{
	struct mv__aw_msg m = { .type = MV_AW_REFUSE };
	m.u.refuse.type = type;
	m.u.refuse.err = err;
	snprintf(m.u.refuse.name, sizeof(m.u.refuse.name), "%s", name);
	snprintf(m.u.refuse.why, sizeof(m.u.refuse.why), "%s", why);
	mv__aw_send(a->fd, &m, SEND_TIMEOUT_MS);
	md_log(d, "memvirtd: agent %u: %s: %s", a->id, name, why);
}

/* A reported VM: new (its name free on the host), or the next report of one it owns. */
static void take_vm(struct md *d, struct md_agent *a, const struct mv__aw_vm *r)
{
	struct md_vm *v = md_vm_find(d, r->name);
	if (v && v->agent != a->id) {
		refuse(d, a, MV_AW_REPORT, -EEXIST, r->name, "another process reports a VM of "
		       "that name");
		return;
	}
	if (!v) {
		for (unsigned i = 0; i < MD_MAX_VMS && !v; i++)
			if (!d->vms[i].used)
				v = &d->vms[i];
		if (!v) {
			refuse(d, a, MV_AW_REPORT, -ENOSPC, r->name, "the daemon serves 256 VMs at most");
			return;
		}
		memset(v, 0, sizeof(*v));
		v->used = true;
		v->agent = a->id;
		md_log(d, "memvirtd: vm %s reported by agent %u (%s), %llu MiB", r->name, a->id,
		       a->client, (unsigned long long)(r->ram_bytes >> 20));
	}
	v->r = *r;
	v->report_ns = md_now_ns();
}

/* VMs of a that its report no longer lists are gone (removed by the VMM). */
static void report(struct md *d, struct md_agent *a, const struct mv__aw_msg *m)
{
	a->scan_valid = m->u.report.scanner_valid;
	a->scan = m->u.report.scanner;
	for (unsigned i = 0; i < m->u.report.nr_vms; i++)
		take_vm(d, a, &m->vms[i]);
	for (unsigned i = 0; i < MD_MAX_VMS; i++) {
		struct md_vm *v = &d->vms[i];
		bool listed = false;
		for (unsigned j = 0; v->used && v->agent == a->id && j < m->u.report.nr_vms; j++)
			listed |= !strcmp(m->vms[j].name, v->r.name);
		if (v->used && v->agent == a->id && !listed)
			forget_vm(d, v, "its VMM removed it");
	}
}

static int handle(struct md *d, struct md_agent *a, const struct mv__aw_msg *m)
{
	if (!a->hello && m->type != MV_AW_HELLO)
		return -EPROTO;
	switch (m->type) {
	case MV_AW_HELLO: {
		if (a->hello)
			return -EPROTO;
		a->hello = true;
		if (m->u.hello.client[0])
			snprintf(a->client, sizeof(a->client), "%s", m->u.hello.client);
		struct mv__aw_msg w = { .type = MV_AW_WELCOME };
		w.u.welcome.period_ms = mv_policy_period_ms(d->pol);
		md_log(d, "memvirtd: agent %u linked: %s (pid %d)", a->id, a->client, (int)a->pid);
		int rc = mv__aw_send(a->fd, &w, SEND_TIMEOUT_MS);
		struct mv__aw_msg s = { .type = MV_AW_SET_SHARE };
		s.u.set_share.micro_cores = (uint64_t)(d->share * 1e6 + 0.5);
		if (!rc && d->share > 0) /* the share in force, for a scanner that comes late */
			rc = mv__aw_send(a->fd, &s, SEND_TIMEOUT_MS);
		return rc;
	}
	case MV_AW_REPORT:
		report(d, a, m);
		return 0;
	case MV_AW_REFUSE:
		md_log(d, "memvirtd: agent %u refused %s for %s: %s", a->id,
		       m->u.refuse.type == MV_AW_SET_TARGET ? "a target" : "a message",
		       m->u.refuse.name, m->u.refuse.why);
		return 0;
	default:
		return -EPROTO; /* daemon-to-agent messages */
	}
}

void md_agent_event(struct md *d, struct md_agent *a)
{
	static struct mv__aw_vm vms[MV_AW_MAX_VMS];
	int rc = mv__aw_read(a->fd, a->rx);
	struct mv__aw_msg m;
	long n = 0;
	while (rc == 0 && (n = mv__aw_next(a->rx, &m, vms)) > 0)
		rc = handle(d, a, &m);
	if (rc == 0 && n < 0)
		rc = (int)n;
	if (rc)
		agent_close(d, a, rc == -ECONNRESET ? "disconnected" : mv_strerror(rc));
}

void md_agents_poll(struct md *d)
{
	struct mv__aw_msg m = { .type = MV_AW_POLL };
	m.u.poll.seq = ++d->poll_seq;
	for (unsigned i = 0; i < MD_MAX_AGENTS; i++) {
		struct md_agent *a = &d->agents[i];
		if (a->fd >= 0 && a->hello && mv__aw_send(a->fd, &m, SEND_TIMEOUT_MS))
			agent_close(d, a, "does not read its socket");
	}
}

int md_agent_set_target(struct md *d, struct md_vm *v, uint64_t bytes)
{
	struct md_agent *a = md_agent_by_id(d, v->agent);
	if (!a)
		return -ENOENT;
	struct mv__aw_msg m = { .type = MV_AW_SET_TARGET };
	snprintf(m.u.set_target.name, sizeof(m.u.set_target.name), "%s", v->r.name);
	m.u.set_target.target_bytes = bytes;
	int rc = mv__aw_send(a->fd, &m, SEND_TIMEOUT_MS);
	if (rc)
		agent_close(d, a, "does not read its socket");
	return rc;
}

void md_agents_set_share(struct md *d, double share)
{
	struct mv__aw_msg m = { .type = MV_AW_SET_SHARE };
	m.u.set_share.micro_cores = (uint64_t)(share * 1e6 + 0.5);
	for (unsigned i = 0; i < MD_MAX_AGENTS; i++) {
		struct md_agent *a = &d->agents[i];
		if (a->fd >= 0 && a->hello && mv__aw_send(a->fd, &m, SEND_TIMEOUT_MS))
			agent_close(d, a, "does not read its socket");
	}
}
