/* workers.c - one `memvirt balloon-backend --attach` process per vhost-user VM the admin
 * added: started, restarted when it dies, stopped when the VM is removed. */
#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define RESPAWN_NS (2ull * 1000000000ull)
#define GRACE_NS   (3ull * 1000000000ull) /* a worker of before links within its retry_ms */

/* The agent link of the worker serving a (ours, or one a previous daemon started). */
static struct md_agent *worker_link(struct md *d, const struct md_added *a)
{
	char client[MV_AW_CLIENT];
	snprintf(client, sizeof(client), "vhost-user %s", a->name); /* names fit: 63 bytes */
	for (unsigned i = 0; i < MD_MAX_AGENTS; i++)
		if (d->agents[i].fd >= 0 && d->agents[i].hello && !strcmp(d->agents[i].client, client))
			return &d->agents[i];
	return NULL;
}

static void spawn(struct md *d, struct md_added *a)
{
	a->spawn_ns = md_now_ns();
	pid_t pid = fork();
	if (pid < 0) {
		md_log(d, "memvirtd: vm %s: no worker: fork: %s", a->name, strerror(errno));
		return;
	}
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		setsid(); /* outlives the daemon: the guest keeps its device across a restart */
		execl(d->o.self, "memvirt", "balloon-backend", "--socket", a->socket, "--attach",
		      d->o.agent, "--name", a->name, "--max-conns", "1", "--log-ms", "0", (char *)NULL);
		_exit(127);
	}
	a->worker = pid;
	md_log(d, "memvirtd: vm %s: worker %d serves %s", a->name, (int)pid, a->socket);
}

/* Each added VM has a worker: our child, or a linked one from before a restart. A worker
 * that finds the socket served already (another worker holds its lock) exits at once. */
void md_workers_check(struct md *d)
{
	uint64_t now = md_now_ns();
	for (unsigned i = 0; !d->o.no_workers && i < d->set.nr_added; i++) {
		struct md_added *a = &d->set.added[i];
		if (a->worker || worker_link(d, a) || now - a->spawn_ns < RESPAWN_NS ||
		    (a->restored && now - d->start_ns < GRACE_NS))
			continue;
		spawn(d, a);
	}
}

void md_workers_reap(struct md *d)
{
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		for (unsigned i = 0; i < d->set.nr_added; i++) {
			struct md_added *a = &d->set.added[i];
			if (a->worker != pid)
				continue;
			a->worker = 0;
			if (WIFEXITED(st) && WEXITSTATUS(st) == 3)
				continue; /* its socket is served by a worker of before */
			md_log(d, "memvirtd: vm %s: worker %d ended (%s %d)", a->name, (int)pid,
			       WIFEXITED(st) ? "status" : "signal",
			       WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
		}
	}
}

/* SIGTERM to the worker: ours by the pid we started, else the peer of its live link. */
void md_worker_stop(struct md *d, struct md_added *a)
{
	struct md_agent *l = worker_link(d, a);
	pid_t pid = a->worker ? a->worker : l ? l->pid : 0;
	if (pid > 0)
		kill(pid, SIGTERM);
}
