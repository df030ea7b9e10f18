/* writer.c - the benchmark's vCPU: random 8-byte stores into a working set, each one timed. */
#include "writer.h"

#include <errno.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#define PAGE 4096u
#define CHECK_EVERY 256u     /* stores between two looks at the stop flag */
#define PUBLISH_EVERY 256u   /* checks between two publications: 64 Ki stores */

static uint64_t mono_ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A cheap timestamp. The TSC is converted to ns afterwards with the run's own ratio of
 * CLOCK_MONOTONIC to TSC (the whole phase is the calibration interval). */
static inline uint64_t ticks(void)
{
#if defined(__x86_64__) || defined(__i386__)
	return __rdtsc();
#else
	return mono_ns(CLOCK_MONOTONIC);
#endif
}

static inline uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The central loop: one store per PRNG draw. The page comes from the draw's high bits
 * (multiply-shift, no division), the offset from its low bits. */
static void *writer_main(void *arg)
{
	struct bench_writer *w = arg;
	uint8_t *const mem = w->mem;
	const uint64_t pages = w->ws_pages;
	uint64_t s = w->seed, n = 0, max_gap = 0;

	pthread_mutex_lock(&w->lock);
	while (!w->go)
		pthread_cond_wait(&w->cond, &w->lock);
	pthread_mutex_unlock(&w->lock);

	uint64_t cpu0 = mono_ns(CLOCK_THREAD_CPUTIME_ID), t0 = mono_ns(CLOCK_MONOTONIC);
	uint64_t tick0 = ticks(), prev = tick0;
	for (unsigned checks = 1;; checks++) {
		for (unsigned i = 0; i < CHECK_EVERY; i++) {
			uint64_t r = splitmix(&s);
			uint64_t page = (uint64_t)(((unsigned __int128)r * pages) >> 64);
			*(volatile uint64_t *)(mem + page * PAGE + (r & (PAGE / 8 - 1)) * 8) = r;
			uint64_t now = ticks();
			if (now - prev > max_gap)
				max_gap = now - prev;
			prev = now;
		}
		n += CHECK_EVERY;
		if (checks % PUBLISH_EVERY == 0)
			atomic_store_explicit(&w->published, n, memory_order_relaxed);
		if (atomic_load_explicit(&w->stop, memory_order_relaxed))
			break;
	}
	uint64_t tick1 = ticks(), t1 = mono_ns(CLOCK_MONOTONIC);
	w->cpu_s = (double)(mono_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0) / 1e9;
	w->wall_s = (double)(t1 - t0) / 1e9;
	double ns_per_tick = tick1 > tick0 ? (double)(t1 - t0) / (double)(tick1 - tick0) : 1;
	w->max_stall_ns = (double)max_gap * ns_per_tick;
	w->writes = n;
	atomic_store_explicit(&w->published, n, memory_order_relaxed);
	return NULL;
}

int bench_writer_start(struct bench_writer *w)
{
	if (!w->mem || !w->ws_pages)
		return -EINVAL;
	w->go = 0;
	atomic_init(&w->stop, 0);
	atomic_init(&w->published, 0);
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	int err = pthread_create(&w->thread, NULL, writer_main, w);
	if (err) {
		pthread_cond_destroy(&w->cond);
		pthread_mutex_destroy(&w->lock);
		return -err;
	}
	return 0;
}

void bench_writer_go(struct bench_writer *w)
{
	pthread_mutex_lock(&w->lock);
	w->go = 1;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

uint64_t bench_writer_count(struct bench_writer *w)
{
	return atomic_load_explicit(&w->published, memory_order_relaxed);
}

/* A writer never released is released here, so the join cannot hang. */
void bench_writer_stop(struct bench_writer *w)
{
	atomic_store_explicit(&w->stop, 1, memory_order_relaxed);
	bench_writer_go(w);
	pthread_join(w->thread, NULL);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->lock);
}
