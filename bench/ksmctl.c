/* ksmctl.c - KSM/sysctl knobs that restore themselves, and /proc measurements for `bench scan --vs-ksm`. */
#include "ksmctl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KC_MAX_SETTINGS	16
#define KC_RUN_PATH	KC_KSM_DIR "/run"
#define KC_POLL_NS	50000000L	/* convergence poll: 50 ms */
#define KC_FINE_POLL_NS	5000000L	/* pass-boundary poll of the recheck: 5 ms */
#define KC_UNMERGE_TRIES	3
#define KC_UNMERGE_WAIT_POLLS	200	/* x 10 ms per try */

/* ---- small async-signal-safe helpers (no stdio, no malloc, no locale) ---- */

static size_t str_len(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

static bool str_eq(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

static void sleep_ns(long ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000L, .tv_nsec = ns % 1000000000L };
	nanosleep(&ts, NULL);	/* an interruption only shortens a poll */
}

/* Read at most size-1 bytes of a file and NUL-terminate; returns the length or -errno. */
static ssize_t read_small(const char *path, char *buf, size_t size)
{
	size_t len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while (len + 1 < size) {
		ssize_t n = read(fd, buf + len, size - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int err = -errno;
			close(fd);
			return err;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	close(fd);
	return (ssize_t)len;
}

/* One write() of the whole string: sysfs/sysctl stores report their error there. */
static int write_str(const char *path, const char *s)
{
	size_t len = str_len(s);
	ssize_t n;
	int err = 0;
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	do
		n = write(fd, s, len);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		err = -errno;
	else if ((size_t)n != len)
		err = -EIO;
	close(fd);
	return err;
}

/* Decimal long, optional sign, surrounding blanks allowed, nothing else. */
static int parse_long(const char *s, long *out)
{
	unsigned long v = 0, lim;
	bool neg = false, digits = false;
	while (*s == ' ' || *s == '\t')
		s++;
	if (*s == '-' || *s == '+')
		neg = *s++ == '-';
	lim = neg ? (unsigned long)LONG_MAX + 1 : (unsigned long)LONG_MAX;
	for (; *s >= '0' && *s <= '9'; s++, digits = true) {
		unsigned d = (unsigned)(*s - '0');
		if (v > (lim - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	while (*s == ' ' || *s == '\t' || *s == '\n')
		s++;
	if (!digits || *s)
		return -EINVAL;
	*out = neg ? (long)(0 - v) : (long)v;
	return 0;
}

/*
 * Canonical form of a knob's content: trailing blanks stripped, and for a
 * selection such as "[none] scan-time" only the selected word, which is what
 * the file accepts back.
 */
static void normalize(char *s)
{
	size_t len = str_len(s);
	char *open_br = s, *close_br;
	while (len && (s[len - 1] == '\n' || s[len - 1] == ' ' || s[len - 1] == '\t'))
		s[--len] = '\0';
	while (*open_br && *open_br != '[')
		open_br++;
	if (!*open_br)
		return;
	for (close_br = open_br + 1; *close_br && *close_br != ']'; close_br++)
		;
	if (!*close_br)
		return;
	*close_br = '\0';
	memmove(s, open_br + 1, (size_t)(close_br - open_br));
}

static ssize_t read_norm(const char *path, char *buf, size_t size)
{
	ssize_t n = read_small(path, buf, size);
	if (n >= 0)
		normalize(buf);
	return n < 0 ? n : (ssize_t)str_len(buf);
}

static int read_long_path(const char *path, long *out)
{
	char buf[64];
	ssize_t n = read_small(path, buf, sizeof(buf));
	return n < 0 ? (int)n : parse_long(buf, out);
}

/* ---- the table of remembered settings ---- */

struct kc_setting {
	char path[128];
	char orig[64];		/* normalized original content */
	_Atomic int pending;	/* changed since the last restore */
};

static struct kc_setting settings[KC_MAX_SETTINGS];
static _Atomic int nsettings;		/* entries below it are complete */
static _Atomic int table_lock;		/* spin lock, taken with our signals blocked */
static _Atomic int atexit_done, signals_done;
static _Atomic pid_t owner_pid;		/* handlers act in this process only */
static const int kc_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGQUIT };

static void lock_table(void)
{
	while (atomic_exchange(&table_lock, 1))
		sleep_ns(1000000);
}

static void unlock_table(void)
{
	atomic_store(&table_lock, 0);
}

static void kc_sigset(sigset_t *set)
{
	sigemptyset(set);
	for (size_t i = 0; i < sizeof(kc_signals) / sizeof(kc_signals[0]); i++)
		sigaddset(set, kc_signals[i]);
}

/*
 * Normal context: block our signals in this thread while it holds the lock,
 * so our own handler can never spin on a lock this thread holds.
 */
static void enter_table(sigset_t *old)
{
	sigset_t set;
	kc_sigset(&set);
	pthread_sigmask(SIG_BLOCK, &set, old);
	lock_table();
}

static void leave_table(const sigset_t *old)
{
	unlock_table();
	pthread_sigmask(SIG_SETMASK, old, NULL);
}

static bool is_run(const char *path)
{
	return str_eq(path, KC_RUN_PATH);
}

/* Knobs the kernel refuses to change (-EBUSY) while any KSM page is shared. */
static bool needs_unshared(const char *path)
{
	return str_eq(path, KC_KSM_DIR "/merge_across_nodes") || str_eq(path, KC_KSM_DIR "/max_page_sharing");
}

static void keep_first(int *err, int r)
{
	if (r < 0 && !*err)
		*err = r;
}

static bool ksm_all_unmerged(void)
{
	long shared = 1, sharing = 1, zero = 0;
	if (read_long_path(KC_KSM_DIR "/pages_shared", &shared) < 0 ||
	    read_long_path(KC_KSM_DIR "/pages_sharing", &sharing) < 0)
		return false;
	if (read_long_path(KC_KSM_DIR "/ksm_zero_pages", &zero) < 0)
		zero = 0;	/* older kernels have no such counter */
	return shared == 0 && sharing == 0 && zero == 0;
}

/*
 * run=2 unmerges every KSM page (KSM-placed zero pages too) in the writer's
 * context and leaves ksmd idle.  The kernel only acts when the value changes,
 * so a run already at 2 goes through 0 first.  A failed unmerge (-ENOMEM, or
 * -EINTR on a signal) leaves run at 0; we try again a few times.
 */
static int ksm_unmerge_all(void)
{
	int err = -EBUSY;
	for (int attempt = 0; attempt < KC_UNMERGE_TRIES; attempt++) {
		char cur[16];
		if (read_norm(KC_RUN_PATH, cur, sizeof(cur)) >= 0 && str_eq(cur, "2"))
			write_str(KC_RUN_PATH, "0");
		int r = write_str(KC_RUN_PATH, "2");
		if (r < 0) {
			err = r;
			continue;
		}
		for (int i = 0; i < KC_UNMERGE_WAIT_POLLS; i++) {
			if (ksm_all_unmerged())
				return 0;
			sleep_ns(10000000L);
		}
		err = -EBUSY;
	}
	return err;
}

/* Write one original back unless it is already there. */
static int restore_one(struct kc_setting *s)
{
	char cur[64];
	int r = 0;
	if (read_norm(s->path, cur, sizeof(cur)) < 0 || !str_eq(cur, s->orig))
		r = write_str(s->path, s->orig);
	if (r == 0)
		atomic_store(&s->pending, 0);
	return r;
}

static int restore_locked(void)
{
	int n = atomic_load(&nsettings), run_idx = -1, err = 0;
	bool unmerge = false;
	char run_final[64], cur[64];

	for (int i = 0; i < n; i++) {
		if (!atomic_load(&settings[i].pending))
			continue;
		if (is_run(settings[i].path))
			run_idx = i;
		else if (needs_unshared(settings[i].path) &&
			 (read_norm(settings[i].path, cur, sizeof(cur)) < 0 || !str_eq(cur, settings[i].orig)))
			unmerge = true;
	}
	if (run_idx >= 0 && !str_eq(settings[run_idx].orig, "1"))
		unmerge = true;

	/* The run value to end with: the remembered one, else the one found now. */
	if (run_idx >= 0) {
		memcpy(run_final, settings[run_idx].orig, sizeof(run_final));
	} else if (unmerge) {
		ssize_t r = read_norm(KC_RUN_PATH, run_final, sizeof(run_final));
		if (r < 0) {
			keep_first(&err, (int)r);
			unmerge = false;
		}
	}

	if (unmerge)
		keep_first(&err, ksm_unmerge_all());
	for (int i = n - 1; i >= 0; i--)
		if (i != run_idx && atomic_load(&settings[i].pending))
			keep_first(&err, restore_one(&settings[i]));
	if (run_idx >= 0) {
		keep_first(&err, restore_one(&settings[run_idx]));
	} else if (unmerge) {
		if (read_norm(KC_RUN_PATH, cur, sizeof(cur)) < 0 || !str_eq(cur, run_final))
			keep_first(&err, write_str(KC_RUN_PATH, run_final));
	}
	return err;
}

int kc_settings_restore(void)
{
	sigset_t old;
	int r;
	enter_table(&old);
	r = restore_locked();
	leave_table(&old);
	return r;
}

static void on_exit_restore(void)
{
	if (getpid() == atomic_load(&owner_pid))
		kc_settings_restore();
}

/* Async-signal-safe: open/read/write/close/nanosleep, prebuilt strings, lock-free atomics. */
static void on_signal(int sig)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	int saved_errno = errno;

	if (getpid() == atomic_load(&owner_pid)) {
		lock_table();	/* our signals are blocked here; another thread may hold it briefly */
		restore_locked();
		unlock_table();
	}
	sigemptyset(&dfl.sa_mask);
	sigaction(sig, &dfl, NULL);
	raise(sig);	/* pending until the handler returns, then kills by default */
	errno = saved_errno;
}

/* Called with the table locked. A signal ignored at install time stays ignored. */
static int install_handlers(void)
{
	struct sigaction sa, old;

	if (!atomic_load(&atexit_done)) {
		atomic_store(&owner_pid, getpid());
		if (atexit(on_exit_restore))
			return -ENOMEM;
		atomic_store(&atexit_done, 1);
	}
	if (atomic_load(&signals_done))
		return 0;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	kc_sigset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(kc_signals) / sizeof(kc_signals[0]); i++) {
		if (sigaction(kc_signals[i], NULL, &old) < 0)
			return -errno;
		if (old.sa_handler == SIG_IGN)
			continue;
		if (sigaction(kc_signals[i], &sa, NULL) < 0)
			return -errno;
	}
	atomic_store(&signals_done, 1);
	return 0;
}

/* Find the entry for path, or add one holding the file's current content. */
static int remember(const char *path, struct kc_setting **out)
{
	int n = atomic_load(&nsettings);
	char buf[256];
	ssize_t len;

	for (int i = 0; i < n; i++) {
		if (str_eq(settings[i].path, path)) {
			*out = &settings[i];
			return 0;
		}
	}
	if (n == KC_MAX_SETTINGS)
		return -ENOSPC;
	len = read_norm(path, buf, sizeof(buf));
	if (len < 0)
		return (int)len;
	if ((size_t)len >= sizeof(settings[n].orig))
		return -EOVERFLOW;
	memcpy(settings[n].orig, buf, (size_t)len + 1);
	memcpy(settings[n].path, path, str_len(path) + 1);
	atomic_store(&settings[n].pending, 0);
	atomic_store(&nsettings, n + 1);	/* publish the complete entry to the handlers */
	*out = &settings[n];
	return 0;
}

int kc_setting_set(const char *path, long value)
{
	struct kc_setting *s = NULL;
	char val[32];
	sigset_t old;
	int r;

	if (!path || path[0] != '/')
		return -EINVAL;
	if (str_len(path) >= sizeof(settings[0].path))
		return -ENAMETOOLONG;
	snprintf(val, sizeof(val), "%ld", value);

	enter_table(&old);
	r = install_handlers();
	if (!r)
		r = remember(path, &s);
	if (!r) {
		int was_pending = atomic_exchange(&s->pending, 1);	/* before the write: a signal now restores it */
		char cur[64];
		r = write_str(path, val);
		/* A refused write (e.g. -EACCES) that changed nothing leaves nothing to restore. */
		if (r && !was_pending && read_norm(path, cur, sizeof(cur)) >= 0 && str_eq(cur, s->orig))
			atomic_store(&s->pending, 0);
	}
	leave_table(&old);
	return r;
}

/* ---- KSM sysfs ---- */

int kc_ksm_available(void)
{
	return access(KC_RUN_PATH, W_OK) == 0;
}

int kc_ksm_read(const char *knob, long *out)
{
	char path[160];

	if (!knob || !*knob || strchr(knob, '/') || str_eq(knob, "..") || !out)
		return -EINVAL;
	if ((size_t)snprintf(path, sizeof(path), KC_KSM_DIR "/%s", knob) >= sizeof(path))
		return -ENAMETOOLONG;
	return read_long_path(path, out);
}

static bool is_ksmd(int pid)
{
	char path[64], comm[32];
	snprintf(path, sizeof(path), "/proc/%d/comm", pid);
	return read_small(path, comm, sizeof(comm)) >= 0 && str_eq(comm, "ksmd\n");
}

int kc_ksmd_pid(void)
{
	static _Atomic int cached;
	struct dirent *de;
	int pid = atomic_load(&cached);
	DIR *d;

	if (pid > 0 && is_ksmd(pid))
		return pid;
	d = opendir("/proc");
	if (!d)
		return -errno;
	pid = -ENOENT;
	while ((de = readdir(d))) {
		char *end;
		long v = strtol(de->d_name, &end, 10);
		if (*end || v <= 0 || v > INT32_MAX || !is_ksmd((int)v))
			continue;
		pid = (int)v;
		break;
	}
	closedir(d);
	if (pid > 0)
		atomic_store(&cached, pid);
	return pid;
}

/* ---- per-task figures ---- */

static void proc_path(char *buf, size_t size, pid_t pid, const char *file)
{
	if (pid == 0)
		snprintf(buf, size, "/proc/self/%s", file);
	else
		snprintf(buf, size, "/proc/%d/%s", (int)pid, file);
}

int kc_task_cpu_ns(int pid, uint64_t *out)
{
	char path[64], buf[2048], *p, *end;
	unsigned long long ticks[2];
	long tck = sysconf(_SC_CLK_TCK);
	ssize_t n;

	if (!out || pid < 0)
		return -EINVAL;
	proc_path(path, sizeof(path), pid, "stat");
	n = read_small(path, buf, sizeof(buf));
	if (n < 0)
		return (int)n;
	/* "pid (comm) state ppid ..." where comm may hold anything: skip to the last ')'. */
	p = strrchr(buf, ')');
	if (!p)
		return -EINVAL;
	p++;
	/* Fields 3 (state) .. 13 (cmajflt) come first, then 14 utime and 15 stime. */
	for (int field = 3; field <= 13; field++) {
		while (*p == ' ')
			p++;
		while (*p && *p != ' ')
			p++;
	}
	for (int i = 0; i < 2; i++) {
		errno = 0;
		ticks[i] = strtoull(p, &end, 10);
		if (end == p || errno)
			return -EINVAL;
		p = end;
	}
	if (tck <= 0)
		tck = 100;
	unsigned long long t = ticks[0] + ticks[1];
	*out = (uint64_t)(t / (unsigned long long)tck) * 1000000000ULL +
	       (uint64_t)(t % (unsigned long long)tck) * 1000000000ULL / (unsigned long long)tck;
	return 0;
}

/* "<key>:   <n> kB" from smaps_rollup; key is matched at a line start. */
static int rollup_field(pid_t pid, const char *key, long *out)
{
	char path[64], buf[4096];
	size_t klen = strlen(key);
	ssize_t n;

	if (!out || pid < 0)
		return -EINVAL;
	proc_path(path, sizeof(path), pid, "smaps_rollup");
	n = read_small(path, buf, sizeof(buf));
	if (n < 0)
		return (int)n;
	for (char *line = buf; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
		char *end;
		if (strncmp(line, key, klen) || line[klen] != ':')
			continue;
		errno = 0;
		long v = strtol(line + klen + 1, &end, 10);
		if (end == line + klen + 1 || errno)
			return -EINVAL;
		*out = v;
		return 0;
	}
	return -ENOENT;
}

int kc_pss_kib(pid_t pid, long *out)
{
	return rollup_field(pid, "Pss", out);
}

int kc_rss_kib(pid_t pid, long *out)
{
	return rollup_field(pid, "Rss", out);
}

int kc_map_count(pid_t pid, long *out)
{
	enum { BLOCK = 1 << 20 };
	char path[64], *buf;
	long lines = 0;
	char last = '\n';
	int fd, err = 0;

	if (!out || pid < 0)
		return -EINVAL;
	proc_path(path, sizeof(path), pid, "maps");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	buf = malloc(BLOCK);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	for (;;) {
		ssize_t n = read(fd, buf, BLOCK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = -errno;
			break;
		}
		if (n == 0)
			break;
		for (char *p = buf, *e = buf + n; (p = memchr(p, '\n', (size_t)(e - p))); p++)
			lines++;
		last = buf[n - 1];
	}
	free(buf);
	close(fd);
	if (err)
		return err;
	*out = lines + (last != '\n');	/* an unterminated last line still counts */
	return 0;
}

/* ---- convergence and per-pass cost of ksmd ---- */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct ksm_sample {
	double t;
	uint64_t cpu;		/* ksmd utime+stime, ns */
	long full_scans;
	long freed;		/* pages_sharing + ksm_zero_pages */
};

static int ksm_sample(int ksmd, struct ksm_sample *s)
{
	long sharing, zero;
	int r = kc_ksm_read("full_scans", &s->full_scans);
	if (!r)
		r = kc_ksm_read("pages_sharing", &sharing);
	if (!r) {
		r = kc_ksm_read("ksm_zero_pages", &zero);
		if (r == -ENOENT) {
			zero = 0;
			r = 0;
		}
	}
	if (!r)
		r = kc_task_cpu_ns(ksmd, &s->cpu);
	if (r)
		return r;
	s->freed = sharing + zero;
	s->t = now_s();
	return 0;
}

/* KSM must be merging; returns ksmd's pid. */
static int ksm_running_ksmd(void)
{
	long run;
	int r = kc_ksm_read("run", &run);
	if (r)
		return r;
	if (run != 1)
		return -EINVAL;
	return kc_ksmd_pid();
}

static void fill_result(double *wall_s, uint64_t *cpu_ns, long *freed_pages,
			const struct ksm_sample *from, const struct ksm_sample *to, long freed)
{
	if (wall_s)
		*wall_s = to->t - from->t;
	if (cpu_ns)
		*cpu_ns = to->cpu >= from->cpu ? to->cpu - from->cpu : 0;
	if (freed_pages)
		*freed_pages = freed;
}

/*
 * cand is the first poll that saw full_scans move with the count at its
 * current maximum; any growth drops it.  Converged once full_scans has moved
 * twice more past cand (and at least twice since the start).
 */
int kc_ksm_wait_converged(double timeout_s, double *wall_s, uint64_t *ksmd_cpu_ns, long *freed_pages,
			  void (*progress)(void *opaque, long freed, double elapsed), void *opaque)
{
	struct ksm_sample start, prev, s, cand = { 0 };
	bool have_cand = false;
	double next_progress = 1.0;
	int ksmd = ksm_running_ksmd(), r;

	if (ksmd < 0)
		return ksmd;
	r = ksm_sample(ksmd, &start);
	if (r)
		return r;
	prev = start;
	for (;;) {
		sleep_ns(KC_POLL_NS);
		r = ksm_sample(ksmd, &s);
		if (r) {
			fill_result(wall_s, ksmd_cpu_ns, freed_pages, &start, &prev, prev.freed);
			return r;
		}
		if (s.freed > prev.freed)
			have_cand = false;
		if (s.full_scans > prev.full_scans && !have_cand) {
			cand = s;
			have_cand = true;
		}
		if (have_cand && s.full_scans - cand.full_scans >= 2 && s.full_scans - start.full_scans >= 2) {
			fill_result(wall_s, ksmd_cpu_ns, freed_pages, &start, &cand, s.freed);
			return 0;
		}
		if (progress && s.t - start.t >= next_progress) {
			progress(opaque, s.freed, s.t - start.t);
			next_progress = s.t - start.t + 1.0;
		}
		if (s.t - start.t >= timeout_s) {
			fill_result(wall_s, ksmd_cpu_ns, freed_pages, &start, &s, s.freed);
			return -ETIMEDOUT;
		}
		prev = s;
	}
}

/* Poll finely until full_scans exceeds `after`; the sample is taken at detection. */
static int wait_full_scans(int ksmd, long after, double deadline, struct ksm_sample *s)
{
	for (;;) {
		int r = ksm_sample(ksmd, s);
		if (r)
			return r;
		if (s->full_scans > after)
			return 0;
		if (s->t >= deadline)
			return -ETIMEDOUT;
		sleep_ns(KC_FINE_POLL_NS);
	}
}

int kc_ksm_recheck_cpu(double timeout_s, double *cpu_s_per_pass)
{
	struct ksm_sample s, a, b;
	double deadline = now_s() + timeout_s;
	int ksmd = ksm_running_ksmd(), r;

	if (ksmd < 0)
		return ksmd;
	if (!cpu_s_per_pass)
		return -EINVAL;
	r = ksm_sample(ksmd, &s);
	if (!r)
		r = wait_full_scans(ksmd, s.full_scans, deadline, &a);		/* align on a pass boundary */
	if (!r)
		r = wait_full_scans(ksmd, a.full_scans + 1, deadline, &b);	/* two whole passes later */
	if (r)
		return r;
	*cpu_s_per_pass = (double)(b.cpu - a.cpu) * 1e-9 / (double)(b.full_scans - a.full_scans);
	return 0;
}

long kc_map_count_raise(long want)
{
	long cur = 65530;
	FILE *f = fopen("/proc/sys/vm/max_map_count", "re");
	if (f) {
		if (fscanf(f, "%ld", &cur) != 1)
			cur = 65530;
		fclose(f);
	}
	if (cur >= want || kc_setting_set("/proc/sys/vm/max_map_count", want))
		return cur;
	return want;
}
