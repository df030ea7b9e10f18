/* main.c - `memvirt daemon` (memvirtd): options, start-up, the event loop, signals. */
#include "daemon.h"
#include "bench.h"
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: memvirt daemon [options]\n\n"
	        "memvirtd: the policy engine over every VM of this host. VMMs that link libmemvirt\n"
	        "attach with mv_host_attach(AGENT); vhost-user VMs are added by the admin\n"
	        "(memvirt vm add NAME SOCKET) and served by a worker per VM.\n"
	        "  --config FILE     policy, INI (policy/README.md); default /etc/memvirt/memvirt.conf;\n"
	        "                    a missing file means the defaults; reloaded on SIGHUP\n"
	        "  --state-dir DIR   the admin's settings and the decision log; default /var/lib/memvirt\n"
	        "  --control PATH    the admin's socket; default /run/memvirt/control.sock\n"
	        "  --agent PATH      the VMMs' socket; default /run/memvirt/agent.sock\n"
	        "  --metrics H:P     Prometheus metrics at http://H:P/metrics (loopback only)\n"
	        "  --textfile FILE   the metrics also written here each period (node_exporter)\n"
	        "  --meminfo FILE    read host memory from FILE, not /proc/meminfo (benchmarks that\n"
	        "                    present a budget as the host); --psi FILE likewise\n"
	        "Sockets are for root, this user and the memvirt group. Logs go to stderr.\n");
}

static int parse(int argc, char **argv, struct md_opts *o)
{
	static const struct option lo[] = {
		{ "config", 1, 0, 'c' }, { "state-dir", 1, 0, 's' }, { "control", 1, 0, 'C' },
		{ "agent", 1, 0, 'a' }, { "metrics", 1, 0, 'm' }, { "textfile", 1, 0, 't' },
		{ "meminfo", 1, 0, 'M' }, { "psi", 1, 0, 'P' },
		{ "help", 0, 0, 'h' }, { 0 } };
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'c': o->config = optarg; break;
		case 's': o->state_dir = optarg; break;
		case 'C': o->control = optarg; break;
		case 'a': o->agent = optarg; break;
		case 'm': o->metrics = optarg; break;
		case 't': o->textfile = optarg; break;
		case 'M': o->meminfo = optarg; break;
		case 'P': o->psi = optarg; break;
		case 'h': usage(stdout); return 1;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "memvirt daemon: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	return 0;
}

static int arm_timer(struct md *d)
{
	unsigned ms = mv_policy_period_ms(d->pol);
	struct itimerspec it = { .it_interval = { ms / 1000, (long)(ms % 1000) * 1000000 } };
	it.it_value = it.it_interval;
	return timerfd_settime(d->timer, 0, &it, NULL) ? -errno : 0;
}

static int fill_metrics(void *opaque, FILE *out)
{
	struct md *d = opaque;
	pthread_mutex_lock(&d->snap_lock);
	int rc = md_metrics_render(&d->snap, out);
	pthread_mutex_unlock(&d->snap_lock);
	return rc;
}

static void reload(struct md *d)
{
	char err[300];
	int rc = md_policy_reload(d, &d->set, err, sizeof(err));
	if (rc)
		md_log(d, "memvirtd: reload refused, the policy in force stays: %s", err);
	else
		md_log(d, "memvirtd: policy reloaded from %s", d->o.config);
	arm_timer(d);
}

static void on_signal(struct md *d)
{
	struct signalfd_siginfo si;
	while (read(d->sig, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGHUP)
			reload(d);
		else if (si.ssi_signo == SIGCHLD)
			md_workers_reap(d);
		else
			d->stop = true;
	}
}

static void on_timer(struct md *d)
{
	uint64_t n;
	if (read(d->timer, &n, sizeof(n)) != sizeof(n))
		return;
	md_agents_expire(d);
	md_workers_check(d);
	md_tick(d);
	if (d->o.textfile) {
		pthread_mutex_lock(&d->snap_lock);
		int rc = md_metrics_textfile(&d->snap, d->o.textfile);
		pthread_mutex_unlock(&d->snap_lock);
		if (rc)
			md_log(d, "memvirtd: %s: %s", d->o.textfile, mv_strerror(rc));
	}
}

static void dispatch(struct md *d, void *p)
{
	if (p == &d->sig)
		on_signal(d);
	else if (p == &d->timer)
		on_timer(d);
	else if (p == &d->afd)
		md_agent_accept(d);
	else if (p == &d->cfd)
		md_control_accept(d);
	else if ((char *)p >= (char *)d->agents && (char *)p < (char *)(d->agents + MD_MAX_AGENTS))
		md_agent_event(d, p);
	else
		md_control_event(d, p);
}

static int loop(struct md *d)
{
	struct epoll_event ev[16];
	while (!d->stop) {
		int n = epoll_wait(d->ep, ev, 16, -1);
		if (n < 0 && errno != EINTR)
			return -errno;
		for (int i = 0; i < n && !d->stop; i++) {
			void *p = ev[i].data.ptr;
			bool agent = (char *)p >= (char *)d->agents &&
			             (char *)p < (char *)(d->agents + MD_MAX_AGENTS);
			bool client = (char *)p >= (char *)d->clients &&
			              (char *)p < (char *)(d->clients + MD_MAX_CLIENTS);
			/* a link closed earlier in this batch is not read again */
			if ((agent && ((struct md_agent *)p)->fd < 0) ||
			    (client && ((struct md_client *)p)->fd < 0))
				continue;
			dispatch(d, p);
		}
	}
	return 0;
}

static int watch(struct md *d, int fd, void *ptr)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = ptr };
	return epoll_ctl(d->ep, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

/* One daemon per state directory: a second one would take over the first's sockets. */
static int lock_state(struct md *d)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/memvirtd.lock", d->o.state_dir);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX | LOCK_NB)) {
		int err = errno == EWOULDBLOCK ? -EADDRINUSE : -errno;
		close(fd);
		return err;
	}
	return 0; /* held until the process ends */
}

/* The config file with the admin's settings; if they conflict (the file was edited
 * since), the file alone, said loudly: the daemon serves its VMs either way, and the
 * settings stay as they were for the admin to correct. */
static int start_policy(struct md *d, char *err, size_t errlen)
{
	char why[300];
	if (!md_policy_reload(d, &d->set, why, sizeof(why)))
		return 0;
	static struct md_settings kept, file_alone;
	kept = d->set;
	memset(&file_alone, 0, sizeof(file_alone));
	file_alone.nr_added = kept.nr_added;
	memcpy(file_alone.added, kept.added, sizeof(kept.added));
	int rc = md_policy_reload(d, &file_alone, err, errlen);
	d->set = kept;
	if (!rc)
		md_log(d, "memvirtd: the admin's settings conflict with %s (%s): running the file "
		       "alone until they are changed (memvirt set / memvirt host)", d->o.config, why);
	return rc;
}

static int setup(struct md *d, char *err, size_t errlen)
{
	int rc;
	sigset_t ss;
	sigemptyset(&ss);
	sigaddset(&ss, SIGHUP), sigaddset(&ss, SIGTERM), sigaddset(&ss, SIGINT);
	sigaddset(&ss, SIGCHLD);
	sigprocmask(SIG_BLOCK, &ss, NULL);
	signal(SIGPIPE, SIG_IGN);
	struct group *g = getgrnam("memvirt");
	d->group = g ? g->gr_gid : (gid_t)-1;
	g = getgrnam("memvirt-vmm");
	d->vmm_group = g ? g->gr_gid : (gid_t)-1;
	d->start_ns = md_now_ns();
	pthread_mutex_init(&d->snap_lock, NULL);
	mkdir(d->o.state_dir, 0700);
	if ((rc = lock_state(d))) {
		snprintf(err, errlen, "%s: %s", d->o.state_dir, rc == -EADDRINUSE
		         ? "another memvirtd runs with this state directory" : mv_strerror(rc));
		return rc;
	}
	struct mv_policy_config pc;
	mv_policy_config_init(&pc);
	pc.log = md_decision;
	pc.log_opaque = d;
	pc.meminfo_path = d->o.meminfo;
	pc.psi_path = d->o.psi;
	if ((rc = mv_policy_new(&pc, &d->pol)) || (rc = md_settings_load(d)) ||
	    (rc = start_policy(d, err, errlen))) {
		if (!err[0])
			snprintf(err, errlen, "%s: %s", d->o.state_dir, mv_strerror(rc));
		return rc;
	}
	d->ep = epoll_create1(EPOLL_CLOEXEC);
	d->sig = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);
	d->timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (d->ep < 0 || d->sig < 0 || d->timer < 0 || (rc = watch(d, d->sig, &d->sig)) ||
	    (rc = watch(d, d->timer, &d->timer)) || (rc = arm_timer(d))) {
		snprintf(err, errlen, "epoll, signalfd or timerfd: %s", strerror(errno));
		return rc ? rc : -errno;
	}
	if ((rc = md_agents_listen(d)) || (rc = md_control_listen(d))) {
		snprintf(err, errlen, "%s: %s", d->afd < 0 ? d->o.agent : d->o.control, rc == -EEXIST
		         ? "something else is there (a file, or a socket a program listens on)"
		         : mv_strerror(rc));
		return rc;
	}
	if (d->o.metrics && (rc = md_http_start(d->o.metrics, fill_metrics, d, &d->http))) {
		snprintf(err, errlen, "--metrics %s: %s", d->o.metrics, rc == -EINVAL
		         ? "HOST:PORT on a loopback address, please" : mv_strerror(rc));
		return rc;
	}
	return 0;
}

static void teardown(struct md *d)
{
	md_http_stop(d->http);
	for (unsigned i = 0; i < MD_MAX_AGENTS; i++)
		if (d->agents[i].fd >= 0)
			close(d->agents[i].fd), free(d->agents[i].rx);
	for (unsigned i = 0; i < MD_MAX_CLIENTS; i++)
		if (d->clients[i].fd >= 0)
			close(d->clients[i].fd);
	if (d->afd >= 0)
		close(d->afd), unlink(d->o.agent);
	if (d->cfd >= 0)
		close(d->cfd), unlink(d->o.control);
	mv_policy_free(d->pol);
	for (unsigned i = 0; i < MD_BACKLOG; i++)
		free(d->backlog[i]);
	free(d->snap.vms);
	free(d->snap.waiting);
	free(d->conf_text);
}

int daemon_main(int argc, char **argv)
{
	static struct md d; /* one per process: large tables */
	d.o = (struct md_opts){ .config = "/etc/memvirt/memvirt.conf", .state_dir = "/var/lib/memvirt",
	                        .control = "/run/memvirt/control.sock",
	                        .agent = "/run/memvirt/agent.sock", .self = "/proc/self/exe",
	                        .log = stderr };
	d.afd = d.cfd = d.ep = d.sig = d.timer = -1;
	int r = parse(argc, argv, &d.o);
	if (r)
		return r == 1 ? 0 : r;
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0)
		self[n] = 0, d.o.self = self;
	char err[400] = "";
	int rc = setup(&d, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "memvirt daemon: %s\n", err);
		teardown(&d);
		return 1;
	}
	md_log(&d, "memvirtd: running: control %s, agents %s, state %s", d.o.control, d.o.agent,
	       d.o.state_dir);
	if (d.http)
		md_log(&d, "memvirtd: metrics on port %u (%s)", md_http_port(d.http), d.o.metrics);
	md_workers_check(&d);
	md_snapshot_update(&d);
	rc = loop(&d);
	md_log(&d, "memvirtd: stopping%s", rc ? " (epoll failed)" : "");
	teardown(&d);
	return rc ? 1 : 0;
}
