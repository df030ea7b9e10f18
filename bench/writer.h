/* writer.h - a running guest as the benchmarks see it: one vCPU thread storing into random pages. */
#ifndef MEMVIRT_BENCH_WRITER_H
#define MEMVIRT_BENCH_WRITER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The writer stores 8 bytes (its PRNG's output) at a random 8-byte-aligned offset of a
 * random page among the first ws_pages pages of mem, as fast as it can, until stopped.
 * Each store is timed (rdtsc on x86-64, CLOCK_MONOTONIC elsewhere): the longest gap
 * between two consecutive stores is the longest stall the "guest" saw, whatever caused
 * it (a fault the engine made wait, a copy-on-write break, the scheduler). The counter
 * is local to the thread and published every 64 Ki stores, so counting costs nothing.
 *
 * Lifetime: bench_writer_start() creates the thread, which waits; bench_writer_go()
 * releases it; bench_writer_stop() stops and joins it and fills the results. Every call
 * from one controlling thread. start returns 0 or -errno (then nothing to stop).
 */
struct bench_writer {
	/* set by the caller before bench_writer_start() */
	uint8_t *mem;
	size_t ws_pages;          /* > 0 */
	uint64_t seed;

	/* results, valid after bench_writer_stop() */
	uint64_t writes;
	double wall_s;            /* from go to the writer seeing stop, CLOCK_MONOTONIC */
	double cpu_s;             /* the writer thread's CPU over that time (CLOCK_THREAD_CPUTIME_ID) */
	double max_stall_ns;      /* longest gap between two consecutive stores */

	/* private */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int go;                   /* guarded by lock */
	_Atomic int stop;
	_Atomic uint64_t published; /* stores so far, every 64 Ki */
};

int bench_writer_start(struct bench_writer *w);
void bench_writer_go(struct bench_writer *w);
/* Stores counted so far (lags by up to 64 Ki): for progress lines. Any thread. */
uint64_t bench_writer_count(struct bench_writer *w);
void bench_writer_stop(struct bench_writer *w);

#endif
