/* balloon_release.c - the device's release thread: inflated pages are given back to the
 * host after the guest has its answer, so that a driver that keeps one request in flight
 * (Linux) does not wait for the host's page work.
 *
 * Only inflated pages with MUST_TELL_HOST negotiated come here (balloon_mem.c): the driver
 * may not touch them before its deflate request is answered, and a deflate first waits
 * until the queue is drained. The thread takes the whole queue under the device mutex,
 * releases it without the mutex inside an RCU read-side section, looking each region up
 * by its serial (a region removed meanwhile is skipped: its memory is no longer the
 * guest's, and its removal waits for the section to end), then accounts under the mutex.
 */
#include "balloon_dev.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Release taken entries; the pages released. Without the device mutex. */
static uint64_t release(struct mv_balloon *b, const struct mv_bl_pending *e, size_t n,
                        struct mv_prange *tmp)
{
	uint64_t pages = 0;
	rcu_read_lock();
	struct mv_region_map *map = rcu_dereference(b->vm->map);
	for (size_t i = 0; i < n;) {
		size_t k = 0, j = i;
		uint64_t p = 0;
		for (; j < n && e[j].serial == e[i].serial; j++, k++) {
			tmp[k] = e[j].range;
			p += e[j].range.n;
		}
		struct mv_region *r = mv__bl_region_by_serial(map, e[i].serial);
		int err = r && !b->cfg.no_release ? mv__region_discard(b->h, r, tmp, k) : 0;
		if (err)
			mv__log(b->h, MV_LOG_WARN, "vm %s balloon: releasing %llu pages failed (%s)",
			        b->vm->name, (unsigned long long)p, mv_strerror(err));
		else if (r && !b->cfg.no_release)
			pages += p;
		i = j;
	}
	rcu_read_unlock();
	return pages;
}

#define SLICE 1024 /* ranges per RCU read-side section and discard call */

static void *worker(void *arg)
{
	struct mv_balloon *b = arg;
	struct mv_bl_worker *w = &b->worker;
	struct mv_bl_pending *mine = NULL;
	struct mv_prange tmp[SLICE];
	size_t cap = 0;
	pthread_mutex_lock(&b->lock);
	for (;;) {
		while (!w->n && !w->quit)
			pthread_cond_wait(&w->work, &b->lock);
		if (!w->n)
			break;
		/* take the queue: swap buffers with the thread's own */
		struct mv_bl_pending *q = w->q;
		size_t n = w->n, qcap = w->cap;
		w->q = mine;
		w->cap = cap;
		w->n = 0;
		w->busy = n;
		mine = q;
		cap = qcap;
		pthread_mutex_unlock(&b->lock);
		uint64_t pages = 0;
		for (size_t at = 0; at < n; at += SLICE) /* region changes wait for one slice */
			pages += release(b, mine + at, n - at < SLICE ? n - at : SLICE, tmp);
		pthread_mutex_lock(&b->lock);
		b->released += pages * MV_PAGE_SIZE;
		w->busy = 0;
		if (!w->n)
			pthread_cond_broadcast(&w->drained);
	}
	w->busy = 0;
	pthread_cond_broadcast(&w->drained);
	pthread_mutex_unlock(&b->lock);
	free(mine);
	return NULL;
}

int mv__bl_worker_start(struct mv_balloon *b)
{
	struct mv_bl_worker *w = &b->worker;
	pthread_cond_init(&w->work, NULL);
	pthread_cond_init(&w->drained, NULL);
	int err = pthread_create(&w->thread, NULL, worker, b);
	if (err) {
		pthread_cond_destroy(&w->work);
		pthread_cond_destroy(&w->drained);
		return -err;
	}
	w->running = true;
	return 0;
}

void mv__bl_worker_stop(struct mv_balloon *b)
{
	struct mv_bl_worker *w = &b->worker;
	if (!w->running)
		return;
	pthread_mutex_lock(&b->lock);
	w->quit = true; /* what is queued is still released */
	pthread_cond_signal(&w->work);
	pthread_mutex_unlock(&b->lock);
	pthread_join(w->thread, NULL);
	pthread_cond_destroy(&w->work);
	pthread_cond_destroy(&w->drained);
	free(w->q);
	memset(w, 0, sizeof(*w));
}

int mv__bl_worker_queue(struct mv_balloon *b, uint64_t serial, const struct mv_prange *r, size_t n)
{
	struct mv_bl_worker *w = &b->worker;
	if (!w->running || w->quit)
		return -ESRCH;
	if (w->n + n > w->cap) {
		size_t cap = w->cap ? w->cap : 1024;
		while (cap < w->n + n)
			cap *= 2;
		struct mv_bl_pending *q = realloc(w->q, cap * sizeof(*q));
		if (!q)
			return -ENOMEM;
		w->q = q;
		w->cap = cap;
	}
	for (size_t i = 0; i < n; i++) {
		struct mv_bl_pending *last = w->n ? &w->q[w->n - 1] : NULL;
		if (last && last->serial == serial && last->range.first + last->range.n == r[i].first)
			last->range.n += r[i].n; /* requests in a row often continue each other */
		else
			w->q[w->n++] = (struct mv_bl_pending){ serial, r[i] };
	}
	pthread_cond_signal(&w->work);
	return 0;
}

void mv__bl_worker_drain(struct mv_balloon *b)
{
	struct mv_bl_worker *w = &b->worker;
	while (w->running && (w->n || w->busy))
		pthread_cond_wait(&w->drained, &b->lock);
}
