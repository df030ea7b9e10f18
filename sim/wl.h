/* wl.h - internals of the simulated-guest workloads, shared by the files of sim/ (not for callers). */
#ifndef MVW_WL_H
#define MVW_WL_H

#include "workload.h"

#include <pthread.h>
#include <stdatomic.h>

#define MVW_PAGE 4096ull

/*
 * A page descriptor (64 bits) names the content a held page must have:
 *   bits  0..39 seed     content index in the image, or private page id (its frame)
 *   bits 40..58 version  rewrites so far (wraps; content follows the wrapped value)
 *   bit  59     image    content generated from image_seed, else from guest_seed
 *   bits 60..63 role     enum mvw_role; 0 (MVW_NONE) = not held
 * The bytes are a pure function of (source seed, role, seed, version): content.c.
 */
#define D_SEED_BITS 40
#define D_VER_BITS  19
#define D_VER_MASK  ((1u << D_VER_BITS) - 1)

static inline uint64_t mvw__desc(enum mvw_role role, bool image, uint64_t seed, uint32_t version)
{
	return (uint64_t)role << 60 | (uint64_t)image << 59 |
	       (uint64_t)(version & D_VER_MASK) << D_SEED_BITS | (seed & ((1ull << D_SEED_BITS) - 1));
}
static inline enum mvw_role mvw__d_role(uint64_t d) { return (enum mvw_role)(d >> 60); }
static inline bool mvw__d_image(uint64_t d) { return d >> 59 & 1; }
static inline uint32_t mvw__d_version(uint64_t d) { return (uint32_t)(d >> D_SEED_BITS) & D_VER_MASK; }
static inline uint64_t mvw__d_seed(uint64_t d) { return d & ((1ull << D_SEED_BITS) - 1); }

/* Role of the stale data written into pages freed at boot (never held, never checked). */
#define MVW_STALE 15

struct wl_ram {
	uint8_t *hva;
	uint64_t gpa, pages, first; /* first: frame number of its first page */
};

struct mvw_guest {
	const struct mvw_profile *prof;
	struct mvg_sim *sim;
	uint64_t image_seed, guest_seed;
	uint64_t ram_pages;        /* frames are numbered 0..ram_pages-1 in GPA order */
	struct wl_ram ram[2];
	unsigned nram;
	uint64_t tick_ns;
	uint64_t low_wm, high_wm;  /* free pages: reclaim cache below low, refill above high */

	pthread_mutex_t lock;      /* guards desc .. async_reclaims, and each held page's
	                              content: a page is written and its descriptor updated
	                              under it, and verified under it */
	uint64_t *desc;            /* per frame: what it must hold (0 = not held) */
	uint32_t *anon;            /* frames of MVW_ANON pages; the first ws of them are the
	                              working set that churns */
	uint64_t n_anon, ws;
	uint32_t *cache_frame;     /* cache pages held: cache_frame[0..n_cache) */
	uint64_t *cache_seed;      /* content index of cache slot i (image content) */
	uint64_t n_cache, cache_target;

	struct mvw_stats st;       /* counters (held/role/free pages are computed on read) */
	uint64_t minor_faults, direct_reclaims, async_reclaims; /* pages, for guest stats */

	/* Behaviour state: the behaviour thread's alone (or its starter's before it runs). */
	uint32_t *burst;           /* frames of the burst in progress */
	uint64_t n_burst, burst_cap;
	uint64_t burst_end_ns, next_burst_ns; /* CLOCK_MONOTONIC */
	uint64_t rng;
	double churn_budget;       /* pages owed to the churn rate */

	pthread_t th;              /* the behaviour thread */
	bool running;              /* under life_lock */
	pthread_mutex_t life_lock; /* serialises mvw_start / mvw_stop */
	pthread_mutex_t sleep_lock; /* with sleep_cond: the thread's tick sleep, woken by stop */
	pthread_cond_t sleep_cond;
	atomic_bool stop;
};

/* content.c: keys and page bytes. */
uint64_t mvw__key(uint64_t src_seed, unsigned role, uint64_t seed, uint32_t version);
void mvw__gen(void *page, uint64_t key);
bool mvw__check(const void *page, uint64_t key);
uint64_t mvw__hash_str(const char *s);
uint64_t mvw__rand(uint64_t *state);
/* The content of descriptor d in guest g: write it / compare with it. */
void mvw__write(const struct mvw_guest *g, void *page, uint64_t d);
bool mvw__matches(const struct mvw_guest *g, const void *page, uint64_t d);

/* pages.c: frames and pages. Callers of mvw__put/mvw__drop own the frame. */
uint8_t *mvw__hva(const struct mvw_guest *g, uint64_t frame);
uint64_t mvw__gpa(const struct mvw_guest *g, uint64_t frame);
int mvw__frame(const struct mvw_guest *g, uint64_t gpa, uint64_t *frame);
/* Take a page from the guest allocator. stall: when nothing is free, reclaim page cache
 * and go through the sim's deflate-on-OOM path (an OOM counted on failure); else fail
 * at once. 0 or -ENOMEM. */
int mvw__alloc(struct mvw_guest *g, uint64_t *frame, bool stall);
/* Under g->lock: write d's content into the frame and record d. */
void mvw__put_locked(struct mvw_guest *g, uint64_t frame, uint64_t d);
void mvw__put(struct mvw_guest *g, uint64_t frame, uint64_t d);
/* Forget the frame's content and give it back to the guest allocator. */
void mvw__drop(struct mvw_guest *g, uint64_t frame);
/* Drop up to n page cache pages (kswapd or direct reclaim); returns how many. */
uint64_t mvw__reclaim(struct mvw_guest *g, uint64_t n, bool direct);
/* Publish the workload's counters as the guest's balloon statistics. */
void mvw__publish(struct mvw_guest *g);

/* profiles.c: the boot-time fill. 0 or -ENOMEM. */
int mvw__fill(struct mvw_guest *g);

/* behave.c: the behaviour thread (arg: the guest). */
void *mvw__main(void *arg);

#endif
