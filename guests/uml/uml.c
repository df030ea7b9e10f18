/* uml.c - User-mode Linux guests: spawned in a pid namespace under timeout, driven by console. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "uml.h"

/*
 * Console protocol (guests/uml/init): the console runs raw, without echo. When booted the
 * init prints "\n<RS>mv-ready balloon_driver=D balloon_device=B probe=E\n". The host writes
 * "SEQ TIMEOUT_MS COMMAND\n"; the guest answers with the command's output, then
 * "\n<RS>mv-done SEQ STATUS\n" (STATUS: exit status or "timeout"). RS is 0x1e at the start
 * of a line; the newline before it is the init's, not the command's.
 */

#ifndef MV_UML_ROOT_DEFAULT
#define MV_UML_ROOT_DEFAULT "build/uml-root"
#endif
#define KERNEL      "/usr/bin/linux.uml"
/* Fast boot: these initcalls (RAID6/XOR benchmarks, zswap), the crypto self-tests and 256
 * legacy ptys cost ~1.2 s of a 1.4 s boot; none is needed here. */
#define FAST_BOOT   "initcall_blacklist=raid6_select_algo,init_zswap,calibrate_xor_blocks " \
		    "cryptomgr.notests=1 pty.legacy_count=0 quiet"
#define RS          '\036'          /* starts a protocol line */
#define LINE_MAX_   96              /* longest protocol line */
#define GRACE_MS    3000            /* beyond a command's timeout, for the guest to report it */
#define REAP_MS     5000            /* for the namespace to die after its init is killed */
#define MAX_ARGS    64
#define DRAIN_MAX   256             /* reads of left-over output before a command */

struct sink {                 /* where console output goes */
	char *buf;
	size_t cap, len;      /* bytes: room, stored */
	size_t total;         /* bytes: emitted, stored or not */
};

struct mv_uml {
	pid_t unshare;        /* our child; reaped by mv_uml_kill() */
	int init_fd;          /* pidfd of timeout, pid 1 of the guest's namespace; -1 unknown */
	pid_t kernel;         /* the UML kernel's main process */
	ino_t pidns;          /* inode of the guest's pid namespace; 0 unknown */
	int con;              /* our end of the console (a stream socket); -1 closed */
	bool dead;            /* the console reached EOF */
	bool bol;             /* the next console byte starts a line */
	unsigned seq;         /* number of the last command sent */
	char tmpdir[80];      /* UML's uml_dir (mconsole socket, pid file); "" none */
	char line[LINE_MAX_]; /* a protocol line being collected (NUL-terminated when whole) */
	size_t line_len;
	char rbuf[4096];      /* read from the console, not yet scanned: [rpos, rlen) */
	size_t rpos, rlen;
	char tail[2048];      /* the console's last bytes, for diagnostics */
	size_t tail_len;
};

static int64_t now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static const char *root_dir(const struct mv_uml_opts *o)
{
	const char *env = getenv("MV_UML_ROOT");
	return o && o->root ? o->root : env && *env ? env : MV_UML_ROOT_DEFAULT;
}

/* Full path of prog in $PATH into buf (PATH_MAX bytes): 0 or -ENOENT. */
static int find_prog(const char *prog, char *buf)
{
	const char *path = getenv("PATH");
	if (!path || !*path)
		path = "/usr/bin:/bin:/usr/sbin:/sbin";
	for (const char *p = path; *p; p += *p == ':') {
		size_t n = strcspn(p, ":");
		if (n && (size_t)snprintf(buf, PATH_MAX, "%.*s/%s", (int)n, p, prog) < PATH_MAX &&
		    access(buf, X_OK) == 0)
			return 0;
		p += n;
	}
	return -ENOENT;
}

static bool root_ok(const char *root)
{
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s/init", root);
	if (access(p, X_OK))
		return false;
	snprintf(p, sizeof(p), "%s/bin/busybox", root);
	return access(p, X_OK) == 0;
}

const char *mv_uml_unavailable(void)
{
	char p[PATH_MAX];
	if (access(KERNEL, X_OK))
		return KERNEL " is absent (Debian package user-mode-linux)";
	if (find_prog("unshare", p) || find_prog("timeout", p) || find_prog("setarch", p))
		return "unshare, timeout or setarch is not in PATH (util-linux, coreutils)";
	if (geteuid() != 0)
		return "not root: the guest's pid namespace needs CAP_SYS_ADMIN";
	if (!root_ok(root_dir(NULL)))
		return "no guest root (init, bin/busybox) at $MV_UML_ROOT or build/uml-root: run make";
	return NULL;
}

/* ---- diagnostics ---- */

static void tail_put(struct mv_uml *g, char c)
{
	if (g->tail_len == sizeof(g->tail)) {
		memmove(g->tail, g->tail + sizeof(g->tail) / 2, sizeof(g->tail) / 2);
		g->tail_len = sizeof(g->tail) / 2;
	}
	g->tail[g->tail_len++] = c;
}

static void diag(const struct mv_uml_opts *o, const struct mv_uml *g, const char *fmt, ...)
{
	if (!o->diag || !o->diag_cap)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(o->diag, o->diag_cap, fmt, ap);
	va_end(ap);
	if (g && g->tail_len && n >= 0 && (size_t)n < o->diag_cap)
		snprintf(o->diag + n, o->diag_cap - n, "; console:\n%.*s", (int)g->tail_len, g->tail);
}

/* ---- the console ---- */

static void emit(struct mv_uml *g, struct sink *s, char c)
{
	tail_put(g, c);
	g->bol = c == '\n';
	if (!s)
		return;
	if (s->len + 1 < s->cap)
		s->buf[s->len++] = c;
	s->total++;
}

/* Scan read bytes: 1 when a protocol line is whole in g->line, 0 when all are consumed. */
static int scan(struct mv_uml *g, struct sink *s)
{
	while (g->rpos < g->rlen) {
		char c = g->rbuf[g->rpos++];
		if (!g->line_len && !(g->bol && c == RS)) {
			emit(g, s, c);
			continue;
		}
		if (c == '\n') {
			g->line[g->line_len] = 0;
			g->line_len = 0;
			g->bol = true;
			return 1;
		}
		g->line[g->line_len++] = c;
		if (g->line_len == sizeof(g->line) - 1) {  /* too long: ordinary output */
			for (size_t i = 0; i < g->line_len; i++)
				emit(g, s, g->line[i]);
			g->line_len = 0;
		}
	}
	return 0;
}

/* Read console bytes, waiting until deadline (ms): 0, -ETIMEDOUT or -EPIPE (guest gone). */
static int fill(struct mv_uml *g, int64_t deadline)
{
	if (g->dead)
		return -EPIPE;
	int64_t left = deadline - now_ms();
	struct pollfd p = { .fd = g->con, .events = POLLIN };
	int r = poll(&p, 1, left < 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left);
	if (r < 0)
		return errno == EINTR ? 0 : -errno;
	if (r == 0)
		return -ETIMEDOUT;
	ssize_t n = recv(g->con, g->rbuf, sizeof(g->rbuf), MSG_DONTWAIT);
	if (n < 0)
		return errno == EINTR || errno == EAGAIN ? 0 : (g->dead = true, -EPIPE);
	if (n == 0) {
		g->dead = true;
		return -EPIPE;
	}
	g->rpos = 0;
	g->rlen = (size_t)n;
	return 0;
}

/* Wait for the protocol line starting with want; other lines count as output. */
static int wait_line(struct mv_uml *g, const char *want, struct sink *s, int64_t deadline)
{
	size_t wl = strlen(want);
	for (;;) {
		while (scan(g, s)) {
			if (strncmp(g->line + 1, want, wl) == 0)
				return 0;
			for (const char *c = g->line; *c; c++)
				emit(g, s, *c);
			emit(g, s, '\n');
		}
		int r = fill(g, deadline);
		if (r < 0)
			return r;
	}
}

/* Drop what the guest printed between commands (it goes to the diagnostic tail only);
 * at most DRAIN_MAX reads, for a background job that prints for ever. */
static void drain(struct mv_uml *g)
{
	for (int reads = 0; reads < DRAIN_MAX; reads++) {
		while (scan(g, NULL))
			;
		if (fill(g, 0))
			return;
	}
}

static int send_all(struct mv_uml *g, const char *buf, size_t len, int64_t deadline)
{
	while (len) {
		ssize_t n = send(g->con, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			buf += n;
			len -= (size_t)n;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			g->dead = true;
			return -EPIPE;
		}
		int64_t left = deadline - now_ms();
		struct pollfd p = { .fd = g->con, .events = POLLOUT };
		if (left <= 0 || poll(&p, 1, (int)(left > INT_MAX ? INT_MAX : left)) == 0)
			return -ETIMEDOUT;
	}
	return 0;
}

/* ---- processes ---- */

/* The first process whose parent is ppid, by /proc; 0 if none. */
static pid_t child_of(pid_t ppid)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	pid_t found = 0;
	while (d && !found && (e = readdir(d))) {
		char p[64], buf[512];
		pid_t pid = (pid_t)atoi(e->d_name);
		if (pid <= 0)
			continue;
		snprintf(p, sizeof(p), "/proc/%d/stat", pid);
		FILE *f = fopen(p, "re");
		if (!f)
			continue;
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n] = 0;
		char *rp = strrchr(buf, ')');   /* the name may hold spaces and parens */
		int pp;
		if (rp && sscanf(rp + 1, " %*c %d", &pp) == 1 && pp == ppid)
			found = pid;
	}
	if (d)
		closedir(d);
	return found;
}

static ino_t pidns_of(pid_t pid)
{
	char p[64];
	struct stat st;
	snprintf(p, sizeof(p), "/proc/%d/ns/pid", pid);
	return stat(p, &st) ? 0 : st.st_ino;
}

/* Processes in the pid namespace whose inode is ns. */
static int ns_members(ino_t ns)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	int n = 0;
	while (d && (e = readdir(d))) {
		pid_t pid = (pid_t)atoi(e->d_name);
		if (pid > 0 && pidns_of(pid) == ns)
			n++;
	}
	if (d)
		closedir(d);
	return n;
}

/* Find timeout (the namespace's init, held by a pidfd) and the UML kernel below it. */
static int find_procs(struct mv_uml *g)
{
	pid_t init = child_of(g->unshare);
	if (init <= 0)
		return -ESRCH;
	g->init_fd = (int)syscall(SYS_pidfd_open, init, 0);
	if (g->init_fd < 0)
		return -errno;
	if (child_of(g->unshare) != init)        /* it died and its pid was reused */
		return -ESRCH;
	g->pidns = pidns_of(init);
	g->kernel = child_of(init);
	return g->pidns && g->kernel > 0 ? 0 : -ESRCH;
}

/* In the child: never returns. Only async-signal-safe calls. */
static void exec_child(const char *prog, char *const argv[], int con, pid_t parent)
{
	struct rlimit no_core = { 0, 0 };
	sigset_t none;
	prctl(PR_SET_PDEATHSIG, SIGKILL);       /* dies with the thread that started it */
	if (getppid() != parent)
		_exit(127);
	setpgid(0, 0);
	setrlimit(RLIMIT_CORE, &no_core);       /* a guest panic aborts: no core files */
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (dup2(con, 0) < 0 || dup2(con, 1) < 0 || dup2(con, 2) < 0)
		_exit(127);
	syscall(SYS_close_range, 3, ~0u, 0);
	execv(prog, argv);
	_exit(127);
}

static int spawn(struct mv_uml *g, char *const argv[], int guest_end)
{
	char prog[PATH_MAX];
	sigset_t all, old;
	if (find_prog(argv[0], prog))
		return -ENOENT;
	pid_t parent = getpid();
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);  /* no handler of ours runs in the child */
	pid_t pid = fork();
	if (pid == 0)
		exec_child(prog, argv, guest_end, parent);
	int err = errno;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (pid < 0)
		return -err;
	g->unshare = pid;
	return 0;
}

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *f)
{
	remove(path);
	return 0;
}

static void rm_tmpdir(struct mv_uml *g)
{
	if (g->tmpdir[0])
		nftw(g->tmpdir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	g->tmpdir[0] = 0;
}

/* ---- start ---- */

struct args {
	char *v[MAX_ARGS + 1];
	int n;
	char arena[4096];
	size_t used;
};

static int arg(struct args *a, const char *fmt, ...)
{
	size_t room = sizeof(a->arena) - a->used;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(a->arena + a->used, room, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= room || a->n == MAX_ARGS)
		return -E2BIG;
	a->v[a->n++] = a->arena + a->used;
	a->v[a->n] = NULL;
	a->used += (size_t)n + 1;
	return 0;
}

/* Append each space-separated word of s. */
static int args_split(struct args *a, const char *s)
{
	int r = 0;
	while (s && *s && !r) {
		size_t n = strcspn(s, " ");
		if (n)
			r = arg(a, "%.*s", (int)n, s);
		s += n + (s[n] == ' ');
	}
	return r;
}

static int build_args(struct args *a, const struct mv_uml_opts *o, const char *tmpdir)
{
	int r = args_split(a, "unshare --pid --fork --kill-child timeout -s KILL");
	r = r ?: arg(a, "%u", o->timeout_s);
	r = r ?: args_split(a, "setarch -R " KERNEL " root=/dev/root rootfstype=hostfs ro init=/init");
	r = r ?: args_split(a, "con0=fd:0,fd:1 con=null umid=g " FAST_BOOT);
	r = r ?: arg(a, "mem=%uM", o->mem_mib);
	r = r ?: arg(a, "rootflags=%s", root_dir(o));
	r = r ?: arg(a, "uml_dir=%s", tmpdir);
	if (o->balloon_socket)
		r = r ?: arg(a, "virtio_uml.device=%s:5", o->balloon_socket);
	return r ?: args_split(a, o->cmdline_extra);
}

/* Is anything listening at path? -ECONNREFUSED if it is bound and not listening, else 0
 * (also when /proc/net/unix cannot tell). Connecting to find out would steal the
 * connection a vhost-user backend accepts once. */
static int unix_listening(const char *path)
{
	FILE *f = fopen("/proc/net/unix", "re");
	char line[PATH_MAX + 128], p[PATH_MAX], real[PATH_MAX];
	bool bound = false, listening = false;
	if (!f)
		return 0;
	if (!realpath(path, real))
		snprintf(real, sizeof(real), "%s", path);
	while (fgets(line, sizeof(line), f)) {
		unsigned long flags;
		if (sscanf(line, "%*s %*s %*s %lx %*s %*s %*s %4095s", &flags, p) != 2 ||
		    (strcmp(p, path) && strcmp(p, real)))
			continue;
		bound = true;
		listening |= (flags & 0x10000) != 0;    /* __SO_ACCEPTCON */
	}
	fclose(f);
	return bound && !listening ? -ECONNREFUSED : 0;
}

static int check_opts(const struct mv_uml_opts *o)
{
	const char *root = root_dir(o), *sock = o->balloon_socket;
	struct stat st;
	if (access(KERNEL, X_OK))
		return diag(o, NULL, "%s: %s", KERNEL, strerror(errno)), -ENOENT;
	if (strpbrk(root, " ,") || (sock && strpbrk(sock, " ,")) || !o->mem_mib || !o->timeout_s)
		return diag(o, NULL, "bad options (spaces or commas in a path, zero size)"), -EINVAL;
	if (!root_ok(root))
		return diag(o, NULL, "%s: no init or bin/busybox (run make)", root), -ENOENT;
	if (!sock)
		return 0;
	if (stat(sock, &st)) {
		int err = errno;
		return diag(o, NULL, "balloon socket %s: %s", sock, strerror(err)), -err;
	}
	if (!S_ISSOCK(st.st_mode))
		return diag(o, NULL, "balloon socket %s: not a socket", sock), -ENOTSOCK;
	if (unix_listening(sock))
		return diag(o, NULL, "balloon socket %s: nothing listens", sock), -ECONNREFUSED;
	return 0;
}

/* After the ready line: did the balloon come up as asked? */
static int check_ready(struct mv_uml *g, const struct mv_uml_opts *o)
{
	int drv = 0, dev = 0, probe = 0;
	if (sscanf(g->line + 1, "mv-ready balloon_driver=%d balloon_device=%d probe=%d",
		   &drv, &dev, &probe) != 3)
		return diag(o, g, "malformed ready line"), -EPROTO;
	if (!o->balloon_socket || dev)
		return 0;
	if (probe < 0)
		return diag(o, g, "the guest could not attach to %s: virtio-uml probe error %d (%s)",
			    o->balloon_socket, probe, strerror(-probe)), probe;
	return diag(o, g, "virtio_balloon did not bind (driver %s)",
		    drv ? "loaded" : "not loaded: no virtio_balloon.ko in the root?"), -ENODEV;
}

static int boot(struct mv_uml *g, const struct mv_uml_opts *o)
{
	struct args a = { .n = 0 };
	int sv[2], r;
	if (build_args(&a, o, g->tmpdir))
		return diag(o, NULL, "kernel command line too long"), -E2BIG;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -errno;
	g->con = sv[0];
	r = spawn(g, a.v, sv[1]);
	close(sv[1]);
	if (r)
		return diag(o, NULL, "cannot start %s: %s", a.v[0], strerror(-r)), r;
	r = wait_line(g, "mv-ready ", NULL, now_ms() + o->boot_timeout_ms);
	if (r == -ETIMEDOUT)
		return diag(o, g, "no ready line in %u ms%s", o->boot_timeout_ms, o->balloon_socket ?
			    " (a vhost-user backend that accepts but does not answer blocks the boot)"
			    : ""), r;
	if (r)
		return diag(o, g, "the guest died while booting"), -EIO;
	r = find_procs(g);
	if (r)
		return diag(o, g, "cannot find the guest's processes"), r;
	rm_tmpdir(g);     /* UML is done with it (mconsole, pid file): nothing left if we crash */
	return check_ready(g, o);
}

int mv_uml_start(const struct mv_uml_opts *opts, struct mv_uml **out)
{
	struct mv_uml_opts o = opts ? *opts : (struct mv_uml_opts){ 0 };
	const char *tmp = getenv("TMPDIR");
	int r;
	*out = NULL;
	o.mem_mib = o.mem_mib ? o.mem_mib : 128;
	o.timeout_s = o.timeout_s ? o.timeout_s : 600;
	o.boot_timeout_ms = o.boot_timeout_ms ? o.boot_timeout_ms : 20000;
	if (o.diag && o.diag_cap)
		o.diag[0] = 0;
	r = check_opts(&o);
	if (r)
		return r;
	struct mv_uml *g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->con = g->init_fd = -1;
	g->bol = true;
	if (!tmp || strlen(tmp) > 40)    /* UML's mconsole socket path must fit sun_path */
		tmp = "/tmp";
	snprintf(g->tmpdir, sizeof(g->tmpdir), "%s/mv-uml.XXXXXX", tmp);
	if (!mkdtemp(g->tmpdir)) {
		r = -errno;
		g->tmpdir[0] = 0;
		diag(&o, NULL, "mkdtemp in %s: %s", tmp, strerror(-r));
	} else {
		r = boot(g, &o);
	}
	if (r) {
		mv_uml_kill(g);
		return r;
	}
	*out = g;
	return 0;
}

/* ---- commands ---- */

static int parse_done(const struct mv_uml *g, struct sink *s)
{
	const char *st = strchr(g->line + 1 + sizeof("mv-done"), ' ');
	if (s->total == s->len && s->len && s->buf[s->len - 1] == '\n')
		s->len--;                       /* the init's newline before its marker */
	if (s->cap)
		s->buf[s->len] = 0;
	if (!st)
		return -EPROTO;
	return strcmp(st + 1, "timeout") == 0 ? -ETIMEDOUT : atoi(st + 1) & 0xff;
}

int mv_uml_run(struct mv_uml *g, const char *cmd, char *out, size_t cap, unsigned timeout_ms)
{
	struct sink s = { .buf = out, .cap = out ? cap : 0 };
	char line[MV_UML_CMD_MAX + 64], want[32];
	size_t len = strlen(cmd);
	if (s.cap)
		out[0] = 0;
	if (strchr(cmd, '\n'))
		return -EINVAL;
	if (len > MV_UML_CMD_MAX)
		return -E2BIG;
	if (g->dead)
		return -EPIPE;
	timeout_ms = timeout_ms ? timeout_ms : 10000;
	int64_t deadline = now_ms() + timeout_ms + GRACE_MS;
	drain(g);
	g->seq++;
	int n = snprintf(line, sizeof(line), "%u %u %s\n", g->seq, timeout_ms, cmd);
	snprintf(want, sizeof(want), "mv-done %u ", g->seq);
	int r = send_all(g, line, (size_t)n, deadline);
	r = r ?: wait_line(g, want, &s, deadline);
	if (r) {
		if (s.cap)
			out[s.len] = 0;
		return r;
	}
	return parse_done(g, &s);
}

pid_t mv_uml_pid(const struct mv_uml *g)
{
	return g->kernel;
}

/* Reap unshare: it exits once the namespace's init is gone, and that one only after every
 * process of the namespace. Killed outright if it has not within REAP_MS. */
static void reap(pid_t pid)
{
	int64_t deadline = now_ms() + REAP_MS;
	while (waitpid(pid, NULL, WNOHANG) == 0) {
		if (now_ms() > deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			return;
		}
		usleep(2000);
	}
}

int mv_uml_kill(struct mv_uml *g)
{
	int r = 0;
	if (!g)
		return 0;
	if (g->con >= 0)
		close(g->con);          /* nothing the guest writes can block on us now */
	if (g->init_fd >= 0) {
		syscall(SYS_pidfd_send_signal, g->init_fd, SIGKILL, NULL, 0);
		close(g->init_fd);
	} else if (g->unshare > 0) {
		kill(g->unshare, SIGKILL);  /* --kill-child takes the namespace with it */
	}
	if (g->unshare > 0)
		reap(g->unshare);
	for (int64_t end = now_ms() + REAP_MS; g->pidns && ns_members(g->pidns); usleep(2000)) {
		if (now_ms() > end) {
			r = -EBUSY;
			break;
		}
	}
	rm_tmpdir(g);
	free(g);
	return r;
}
