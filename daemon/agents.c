/* agents.c - the links of VMMs (mv_host_attach()) and of vhost-user workers: who may
 * connect, their reports, the decisions sent back. */
#include "daemon.h"
#include "prim.h"

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
#define HELLO_NS        (5ull * 1000000000ull) /* to send HELLO after connecting */
#define PER_UID         16                      /* links of one uid other than ours */
#define LOGGED_REFUSALS 8                       /* per link */

/* g among the peer's groups (SO_PEERGROUPS: the groups it had when it connected). */
static bool peer_in_group(int fd, gid_t g)
{
	gid_t groups[256];
	socklen_t len = sizeof(groups);
	if (g == (gid_t)-1 || getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len))
		return false;
	for (size_t i = 0; i < len / sizeof(gid_t); i++)
		if (groups[i] == g)
			return true;
	return false;
}

/* Root, the daemon's own user, a member of the memvirt group, and for the agent socket
 * also of the memvirt-vmm group. */
bool md_peer_allowed(struct md *d, int fd, bool agent, pid_t *pid, uid_t *uid, char *why,
                     size_t whylen)
{
	struct ucred uc;
	socklen_t len = sizeof(uc);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len)) {
		snprintf(why, whylen, "peer credentials unreadable: %s", strerror(errno));
		return false;
	}
	*pid = uc.pid;
	*uid = uc.uid;
	if (uc.uid == 0 || uc.uid == geteuid())
		return true;
	if ((d->group != (gid_t)-1 && (uc.gid == d->group || peer_in_group(fd, d->group))) ||
	    (agent && d->vmm_group != (gid_t)-1 &&
	     (uc.gid == d->vmm_group || peer_in_group(fd, d->vmm_group))))
		return true;
	snprintf(why, whylen, "uid %u (pid %d) is not allowed: root, uid %u or the %s only",
	         (unsigned)uc.uid, (int)uc.pid, (unsigned)geteuid(),
	         agent ? "memvirt and memvirt-vmm groups" : "memvirt group");
	return false;
}

/* The worker serving VM name: it calls itself "vhost-user NAME" and runs as the daemon's
 * user (no other user can pass for one). */
bool md_agent_is_worker(struct md *d, const struct md_agent *a, const char *name)
{
	char client[MV_AW_CLIENT];
	snprintf(client, sizeof(client), "vhost-user %s", name); /* names fit: 63 bytes */
	return a->fd >= 0 && a->hello && a->uid == geteuid() && !strcmp(a->client, client);
}

/* Control characters in a peer's text would forge log lines. */
static void printable(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
}

static int watch(struct md *d, int fd, void *ptr)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = ptr };
	return epoll_ctl(d->ep, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

/* A socket at path for its owner and group gid (mode 0660). Only a stale socket (one
 * nobody listens on) is replaced. */
int md_listen_unix(struct md *d, const char *path, gid_t gid)
{
	int fd = mv__listen_unix(path, 16);
	if (fd < 0)
		return fd;
	if (chmod(path, 0660) || (gid != (gid_t)-1 && chown(path, (uid_t)-1, gid))) {
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
	d->afd = md_listen_unix(d, d->o.agent, d->vmm_group != (gid_t)-1 ? d->vmm_group : d->group);
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

/* A free slot, unless uid holds PER_UID links already (root and ours are not counted). */
static struct md_agent *slot_for(struct md *d, uid_t uid, char *why, size_t whylen)
{
	struct md_agent *a = NULL;
	unsigned of_uid = 0;
	for (unsigned i = 0; i < MD_MAX_AGENTS; i++) {
		if (d->agents[i].fd < 0)
			a = a ? a : &d->agents[i];
		else
			of_uid += d->agents[i].uid == uid;
	}
	if (uid != 0 && uid != geteuid() && of_uid >= PER_UID)
		snprintf(why, whylen, "uid %u has %d links already", (unsigned)uid, PER_UID);
	else if (!a)
		snprintf(why, whylen, "%d links already", MD_MAX_AGENTS);
	else
		return a;
	return NULL;
}

void md_agent_accept(struct md *d)
{
	int fd = accept4(d->afd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0)
		return;
	char why[160] = "out of memory";
	pid_t pid;
	uid_t uid;
	struct md_agent *a = NULL;
	if (!md_peer_allowed(d, fd, true, &pid, &uid, why, sizeof(why)) ||
	    !(a = slot_for(d, uid, why, sizeof(why))) || !(a->rx = calloc(1, sizeof(*a->rx)))) {
		md_log(d, "memvirtd: agent refused: %s", why);
		close(fd);
		return;
	}
	a->fd = fd;
	a->id = ++d->next_agent;
	a->pid = pid;
	a->uid = uid;
	a->accept_ns = md_now_ns();
	a->refused = 0;
	a->hello = false;
	snprintf(a->client, sizeof(a->client), "pid %d", (int)pid);
	if (watch(d, fd, a)) {
		agent_close(d, a, "epoll failed");
		return;
	}
}

/* Tell the link; a link that does not take it is closed by the caller (nonzero). */
static int refuse(struct md *d, struct md_agent *a, uint16_t type, int err, const char *name,
                  const char *why)
{
	struct mv__aw_msg m = { .type = MV_AW_REFUSE };
	m.u.refuse.type = type;
	m.u.refuse.err = err;
	snprintf(m.u.refuse.name, sizeof(m.u.refuse.name), "%s", name);
	snprintf(m.u.refuse.why, sizeof(m.u.refuse.why), "%s", why);
	printable(m.u.refuse.name);
	if (a->refused++ < LOGGED_REFUSALS)
		md_log(d, "memvirtd: agent %u: %s: %s%s", a->id, m.u.refuse.name, why,
		       a->refused == LOGGED_REFUSALS ? " (further refusals of this link not logged)" : "");
	return mv__aw_send(a->fd, &m, SEND_TIMEOUT_MS);
}

/* A reported VM: new (its name valid and free on the host), or the next report of one it
 * owns. */
static int take_vm(struct md *d, struct md_agent *a, const struct mv__aw_vm *r)
{
	struct md_vm *v = md_vm_find(d, r->name);
	if (v && v->agent != a->id)
		return refuse(d, a, MV_AW_REPORT, -EEXIST, r->name, "another process reports a VM "
		              "of that name");
	if (!v && !md_name_ok(r->name))
		return refuse(d, a, MV_AW_REPORT, -EINVAL, r->name, "not a VM name (printable, no "
		              "spaces, ']', quotes or backslashes)");
	if (!v) {
		for (unsigned i = 0; i < MD_MAX_VMS && !v; i++)
			if (!d->vms[i].used)
				v = &d->vms[i];
		if (!v)
			return refuse(d, a, MV_AW_REPORT, -ENOSPC, r->name, "the daemon serves 256 VMs "
			              "at most");
		memset(v, 0, sizeof(*v));
		v->used = true;
		v->agent = a->id;
		md_log(d, "memvirtd: vm %s reported by agent %u (%s), %llu MiB", r->name, a->id,
		       a->client, (unsigned long long)(r->ram_bytes >> 20));
	}
	v->r = *r;
	v->report_ns = md_now_ns();
	return 0;
}

/* VMs of a that its report no longer lists are gone (removed by the VMM). */
static int report(struct md *d, struct md_agent *a, const struct mv__aw_msg *m)
{
	a->scan_valid = m->u.report.scanner_valid;
	a->scan = m->u.report.scanner;
	int rc = 0;
	for (unsigned i = 0; !rc && i < m->u.report.nr_vms; i++)
		rc = take_vm(d, a, &m->vms[i]);
	if (rc)
		return rc;
	for (unsigned i = 0; i < MD_MAX_VMS; i++) {
		struct md_vm *v = &d->vms[i];
		bool listed = false;
		for (unsigned j = 0; v->used && v->agent == a->id && j < m->u.report.nr_vms; j++)
			listed |= !strcmp(m->vms[j].name, v->r.name);
		if (v->used && v->agent == a->id && !listed)
			forget_vm(d, v, "its VMM removed it");
	}
	return 0;
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
		printable(a->client);
		if (!strncmp(a->client, "vhost-user ", 11) && a->uid != geteuid()) {
			md_log(d, "memvirtd: agent %u: uid %u may not call itself \"%s\" (a worker's "
			       "name)", a->id, (unsigned)a->uid, a->client);
			return -EPERM;
		}
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
		return report(d, a, m);
	case MV_AW_REFUSE: {
		char name[MV_AW_NAME], why[MV_AW_WHY];
		snprintf(name, sizeof(name), "%s", m->u.refuse.name);
		snprintf(why, sizeof(why), "%s", m->u.refuse.why);
		printable(name), printable(why);
		if (a->refused++ < LOGGED_REFUSALS)
			md_log(d, "memvirtd: agent %u refused %s for %s: %s", a->id,
			       m->u.refuse.type == MV_AW_SET_TARGET ? "a target" : "a message", name, why);
		return 0;
	}
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

/* Links that never said HELLO are closed: a slot is not held by a silent peer. */
void md_agents_expire(struct md *d)
{
	uint64_t now = md_now_ns();
	for (unsigned i = 0; i < MD_MAX_AGENTS; i++) {
		struct md_agent *a = &d->agents[i];
		if (a->fd >= 0 && !a->hello && now - a->accept_ns > HELLO_NS)
			agent_close(d, a, "no HELLO within 5 s");
	}
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
