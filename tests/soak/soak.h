/* soak.h - the soak test: every part of memvirt at once, for a long time, with every
 * guest page verified throughout (`make soak`; a 10 s smoke run in `make test`). */
#ifndef MV_SOAK_H
#define MV_SOAK_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct soak_opts {
	double seconds;            /* how long the guests run; default 1800 */
	uint64_t seed;             /* guest content, fault injection; default 1 */
	double watchdog_s;         /* a verify round, a guest teardown or creation, a region
	                              change or a policy tick taking longer = hung; default 60 */
	bool progress;             /* a progress line on stderr every 10 s; default true */
	bool verbose;              /* show the library's warnings too; default false */
};

void soak_opts_init(struct soak_opts *o);

struct soak_result {
	double seconds;            /* wall time the guests ran */
	uint64_t guests_created;   /* the first ones and each recreation */
	uint64_t vm_recreations;   /* guests torn down (verified first) and created anew */
	uint64_t region_readds;    /* memslots removed and added again */
	uint64_t hint_runs;        /* free page hint runs started (and stopped) */
	uint64_t injected_failures; /* OS calls failed on purpose through the prim seam */
	uint64_t pages_merged_peak; /* the host's pages_merged, highest sample */
	uint64_t pages_zero_peak;  /* the host's pages_zero, highest sample */
	uint64_t cow_breaks;       /* summed over the samples' increases */
	double balloon_inflated_mib, balloon_deflated_mib, reported_mib, hint_discarded_mib;
	uint64_t pages_verified;   /* page comparisons, every round of every guest */
	uint64_t verify_rounds;
	uint64_t mismatches;       /* distinct wrong pages (guest, page, expected content) */
	uint64_t mismatch_sightings; /* wrong pages seen, counting each round */
	uint64_t ooms;             /* guest allocations that failed (bursts dropped): allowed */
	uint64_t guest_errors;     /* requests the balloon devices refused: allowed */
	uint64_t log_errors, log_warnings; /* the library's log, by level */
	uint64_t setup_errors;     /* guests that could not be created or regions re-added */
	bool hung;                 /* the watchdog fired (the run was cut short) */
	int error;                 /* the host or the engine could not be set up: -errno */
};

/* Run the soak; fills *r. 0 when it passed: no mismatch, nothing hung, set up fine.
 * Not reentrant (the fault injection table is process-wide). */
int soak_run(const struct soak_opts *o, struct soak_result *r);

/* The summary, one JSON object on one line. */
void soak_print_json(FILE *f, const struct soak_result *r);

#endif
