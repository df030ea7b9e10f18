/* soak_int.h - internals shared by the soak's files: the world, its guests, the watchdog,
 * verification and fault injection. */
#ifndef MV_SOAK_INT_H
#define MV_SOAK_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <memvirt/memvirt.h>
#include <memvirt/policy.h>
#include "soak.h"
#include "workload.h"

#define SOAK_SLOTS 6
#define SOAK_MIB (1ull << 20)
#define SOAK_SEC 1000000000ull

/* One guest place: a profile and a name, held by a succession of guests (generations). */
struct soak_slot {
	const char *name, *profile, *domain; /* domain "" = a domain of its own */
	uint64_t ram_mib;
	pthread_mutex_t lock;      /* guards g and gen: held while the guest is verified, torn
	                              down, created, or its regions change */
	struct mvw_guest *g;       /* NULL between a teardown and a successful creation */
	unsigned gen;              /* guests retired so far; changes under res_lock too */
	_Atomic uint64_t resident; /* bytes of its RAM resident, at the last look */
	uint64_t hint_end_ns;      /* a hint run is open until then (main thread only); 0 none */
	uint64_t next_hint_ns;
	/* Its guest's balloon and workload figures at the last look (main thread only):
	 * counted while the slot is busy, until the guest's are added to the retired ones. */
	struct mv_balloon_info last_info;
	uint64_t last_ooms;
	unsigned last_gen;
	bool last_valid;
};

/* Something that must finish within the watchdog's limit. */
struct soak_watch {
	const char *what;
	_Atomic uint64_t since_ns; /* 0 = not running */
	_Atomic(const char *) who; /* the guest's name, or "" */
};

enum soak_watch_id { W_VERIFY, W_TEARDOWN, W_CREATE, W_REGION, W_TICK, W_NR };

struct soak {
	const struct soak_opts *o;
	struct soak_result *res;
	struct mv_host *h;
	struct mv_policy *p;
	struct soak_slot slot[SOAK_SLOTS];
	uint64_t t0_ns, end_ns;
	_Atomic uint64_t budget;   /* bytes: host memory as the engine sees it */
	atomic_bool stop;          /* the verifier and churn threads end */
	atomic_bool wd_stop;       /* the watchdog ends */
	struct soak_watch watch[W_NR];

	pthread_mutex_t res_lock;  /* guards res's counters below and the mismatch list */
	double retired_inflated, retired_deflated, retired_reported, retired_discarded; /* MiB */
	uint64_t retired_ooms, retired_guest_errors;
	uint64_t seen[1024][3];    /* distinct mismatches: slot << 32 | gen, frame, descriptor */
	unsigned nseen;
	_Atomic uint64_t log_err, log_warn;
};

uint64_t soak_now_ns(void);

/* check.c: exact verification of a guest (caller holds the slot lock), mismatches
 * reported with guest and page; the watchdog thread. */
uint64_t soak_verify(struct soak *s, struct soak_slot *sl);
void soak_watch_begin(struct soak *s, enum soak_watch_id w, const char *who);
void soak_watch_end(struct soak *s, enum soak_watch_id w);
int soak_watchdog_start(struct soak *s, pthread_t *th);
void soak_watchdog_stop(struct soak *s, pthread_t th);

/* faults.c: a prim table failing listed calls with a given probability. */
enum soak_fault {
	F_MAP_PRIVATE_FIXED, F_MAP_ANON_FIXED, F_UFFD_WP, F_UFFD_REGISTER, F_UFFD_MOVE,
	F_DONTNEED, F_LAZYFREE, F_PAGEOUT, F_NR
};
void soak_faults_install(struct mv_host *h, uint64_t seed);
void soak_faults_set(unsigned per_100k); /* 0 = off */
uint64_t soak_faults_total(void);
void soak_faults_print(FILE *f);

#endif
