/* ksmstat.c - KSM sysfs and /proc measurements for `bench scan --vs-ksm`: per-task figures,
 * ksmd's convergence and the cost of one pass. */
#include "ksmctl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KC_RUN_PATH	KC_KSM_DIR "/run"
#define KC_POLL_NS	50000000L	/* convergence poll: 50 ms */
#define KC_FINE_POLL_NS	5000000L	/* pass-boundary poll of the recheck: 5 ms */

/* ---- KSM sysfs ---- */

int kc_ksm_available(void)
{
	return access(KC_RUN_PATH, W_OK) == 0;
}

int kc_ksm_read(const char *knob, long *out)
{
	char path[160];

	if (!knob || !*knob || strchr(knob, '/') || !strcmp(knob, "..") || !out)
		return -EINVAL;
	if ((size_t)snprintf(path, sizeof(path), KC_KSM_DIR "/%s", knob) >= sizeof(path))
		return -ENAMETOOLONG;
	return kc__read_long(path, out);
}

static bool is_ksmd(int pid)
{
	char path[64], comm[32];
	snprintf(path, sizeof(path), "/proc/%d/comm", pid);
	return kc__read_small(path, comm, sizeof(comm)) >= 0 && !strcmp(comm, "ksmd\n");
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
	n = kc__read_small(path, buf, sizeof(buf));
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
	n = kc__read_small(path, buf, sizeof(buf));
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
		kc__sleep_ns(KC_POLL_NS);
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
		kc__sleep_ns(KC_FINE_POLL_NS);
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
