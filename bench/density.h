/* density.h - `memvirt density`: options, per-configuration results, the run and its report. */
#ifndef MEMVIRT_BENCH_DENSITY_H
#define MEMVIRT_BENCH_DENSITY_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <memvirt/memvirt.h>
#include <memvirt/policy.h>
#include "workload.h"

#define DENSITY_MAX_GUESTS 64

enum density_config { DC_NONE, DC_BALLOON, DC_SHARING, DC_BOTH, DC_KSM, DC_NR };
extern const char *const density_config_names[DC_NR];

struct density_opts {
	const struct mvw_profile *profile;
	double scale;              /* guest size factor on the profile's RAM */
	uint64_t budget_mib;       /* host memory the guests must fit in */
	unsigned floor_pct;        /* the engine keeps this much of the budget free */
	unsigned guest_floor_pct;  /* the balloon never takes a guest below this much free */
	unsigned max_guests;
	unsigned period_ms;        /* engine tick while settling */
	double settle_max_s;       /* per added guest */
	bool configs[DC_NR];
	const char *policy_file;   /* NULL: the built-in policy */
	const char *out_dir;       /* CSV, PNG, decision logs */
	const char *log_dir;       /* = out_dir, or NULL for no decision logs */
	bool json, quiet;
	bool uml;                  /* --guests uml: real Linux guests (density_uml.c) */
	unsigned guest_mib;        /* uml: guest RAM; 0 = the profile's RAM x scale */
	double run_max_s;          /* uml: bound on each configuration's run */
};

enum density_stop { DS_BUDGET, DS_OOM, DS_ERROR, DS_MAX, DS_TIME };
extern const char *const density_stop_names[];

struct density_result {
	bool ran;
	unsigned guests;           /* fitted */
	double host_mib;           /* PSS with `guests` guests, settled */
	double balloon_mib, sharing_mib, zero_mib; /* savings by source at that point */
	double reported_mib;       /* uml: freed pages the guests reported (free page reporting) */
	double cpu_s;              /* scanner (or ksmd) CPU, whole run */
	uint64_t guest_ooms, mismatches;
	double wall_s;
	unsigned steps;            /* guests added, the one that did not fit included */
	double series[DENSITY_MAX_GUESTS]; /* PSS after each added guest */
	enum density_stop stop;
	char why[160];             /* error text */
	uint64_t ksmd_ns0;         /* child only */
	FILE *log;                 /* child only: decision records */
};

/* Run one configuration: run(o, c, res) in a child process (its guests die with it), the
 * result back over a pipe. 0 or -errno (fork, pipe, lost child). */
typedef void (*density_run_fn)(const struct density_opts *o, enum density_config c,
                               struct density_result *res);
int density_in_child(const struct density_opts *o, enum density_config c,
                     struct density_result *out, density_run_fn run);
/* The simulated run of one configuration, in a child process. */
int density_run_one(const struct density_opts *o, enum density_config c, struct density_result *out);
/* The decision log of configuration c in log_dir (opened for writing), or NULL. */
FILE *density_log_open(const struct density_opts *o, enum density_config c);

/*
 * `memvirt density --guests uml` (density_uml.c): the same one-at-a-time run with real Linux
 * guests (User-mode Linux, Linux's own virtio_balloon driver, memvirtd's policy) for the
 * configurations none and balloon only, beside the simulated run of the same guest size and
 * budget. Needs root; prints the report (table or JSON) and writes density-uml.csv/.png in
 * out_dir. Returns the exit status: 0, 1 (a run failed or a guest's data changed), 77 (UML
 * unavailable here: skipped, the reason on stderr).
 */
int density_uml_main(struct density_opts *o);
/* One configuration (DC_NONE or DC_BALLOON) with real guests, in a child process. 0 or
 * -errno (fork, pipe, lost child); the run's own failure is in out->stop and out->why. */
int density_uml_run_one(const struct density_opts *o, enum density_config c, struct density_result *out);
/* Guest RAM of the uml run: guest_mib, else the profile's RAM x scale, in MiB. */
unsigned density_uml_guest_mib(const struct density_opts *o);
/* Each guest's workload: a working set held and checked, and memory touched once and
 * freed (stale), in % of its RAM; its min_mib under the daemon = working set + room. */
#define DENSITY_UML_WS_PCT 30
#define DENSITY_UML_STALE_PCT 40
#define DENSITY_UML_ROOM_MIB 48
unsigned density_uml_min_mib(const struct density_opts *o);

#endif
