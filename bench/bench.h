/* bench.h - the benchmarks behind `memvirt bench`: shared profile generators and entry points. */
#ifndef MEMVIRT_BENCH_H
#define MEMVIRT_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <time.h>

/* Monotonic wall clock and this process's CPU time, in seconds. */
static inline double bench_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline double bench_cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* args.c: numeric options. 0, or -EINVAL after a message on stderr naming the option. */
int bench_arg_double(const char *opt, const char *s, double lo, double hi, double *out);
int bench_arg_uint(const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out);
int bench_arg_size_mib(const char *opt, const char *s, double lo_mib, double hi_mib, double unit_mib,
                       double *out_mib);
int bench_parse_size_mib(const char *s, double unit_mib, double *out_mib); /* silent */

/* One guest's RAM as a benchmark builds it. */
struct bench_guest {
	uint8_t *mem;
	size_t pages;
};

/* A scanner profile: a set of guests filled deterministically (fixed seed). */
struct bench_profile {
	const char *name;
	const char *what;        /* one line for humans */
	unsigned nr_guests;
	size_t guest_pages;
	const char *domain;      /* NULL: a trust domain per guest */
	void (*fill)(struct bench_guest *g, unsigned nr);
};

const struct bench_profile *bench_profile_find(const char *name);
void bench_profiles_list(void);

/* Allocate and fill the guests of p; returns NULL (errno set) on failure. */
struct bench_guest *bench_guests_new(const struct bench_profile *p);
void bench_guests_free(const struct bench_profile *p, struct bench_guest *g);

/* `memvirt bench scan ...`, `memvirt bench balloon ...` and `memvirt bench guest ...`;
 * return the exit status. */
int bench_scan_main(int argc, char **argv);
int bench_balloon_main(int argc, char **argv);
int bench_balloon_linux_main(int argc, char **argv);
/* memvirt's own driver on a simulated guest of `ram` bytes, inflated to target and back
 * (scattered 4 KiB free pages), for comparison in other benchmarks. */
struct bench_balloon_sim { double inflate_gib_s, deflate_gib_s, rss_drop_mib; };
struct mv_host;
int bench_balloon_sim(struct mv_host *h, uint64_t ram, uint64_t target, struct bench_balloon_sim *out);
int bench_guest_main(int argc, char **argv);
/* `memvirt density ...` */
int density_main(int argc, char **argv);

/* restore_cli.c: `memvirt restore`. bench_settings_recover() is what a command that changes
 * kernel settings calls first: it applies a restore journal left behind (one line on stderr
 * if it did); -1 after a line on stderr when the journal is refused or another run holds it. */
int restore_main(int argc, char **argv);
int balloon_backend_main(int argc, char **argv);
int balloon_ctl_main(int argc, char **argv);
/* memvirtd (daemon/main.c) and the admin's commands on it (tools/daemon_cli.c) */
int daemon_main(int argc, char **argv);
int daemon_cli_main(int argc, char **argv);
int bench_settings_recover(const char *who);

#endif
