/* track.c - write tracking: the userfaultfd fault handler and the batch gate.
 *
 * Guest pages that were hashed stay write-protected. A write to one sleeps in the kernel
 * and sends a fault here; the handler unprotects that page (the kernel now reports it
 * "written" to PAGEMAP_SCAN) and wakes the writer. While a worker is comparing and
 * replacing the pages of a chunk, faults inside that chunk wait at the gate: this is what
 * makes the merge atomic for writers. Each release also marks the page's chunk dirty, so
 * the scanner skips chunks where nothing was written since its last visit.
 */
#include "ksm.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <unistd.h>

void mv__gate_enter(struct mv_host *h, unsigned worker, void *lo, size_t len)
{
	struct mv_batch_gate *g = &h->gate;
	pthread_mutex_lock(&g->lock);
	g->lo[worker] = (uintptr_t)lo;
	g->hi[worker] = (uintptr_t)lo + len;
	pthread_mutex_unlock(&g->lock);
}

void mv__gate_leave(struct mv_host *h, unsigned worker)
{
	struct mv_batch_gate *g = &h->gate;
	pthread_mutex_lock(&g->lock);
	g->lo[worker] = g->hi[worker] = 0;
	pthread_cond_broadcast(&g->done);
	pthread_mutex_unlock(&g->lock);
}

static bool gate_closed(const struct mv_batch_gate *g, uintptr_t addr)
{
	for (unsigned w = 0; w <= MV_GATE_DEVICE; w++)
		if (addr >= g->lo[w] && addr < g->hi[w])
			return true;
	return false;
}

/* Let one writer go: unprotect its page, or just wake it if the page is no longer
 * registered (it was merged: the retried fault copies it). */
static void release_writer(struct mv_host *h, uintptr_t addr)
{
	struct mv_batch_gate *g = &h->gate;
	void *page = (void *)(addr & ~(MV_PAGE_SIZE - 1));
	pthread_mutex_lock(&g->lock);
	while (gate_closed(g, addr))
		pthread_cond_wait(&g->done, &g->lock);
	/* Mark before the write can happen, and after any visit of the chunk has ended:
	 * the next visit sees the mark. */
	rcu_read_lock();
	struct mv_region *r = mv__region_of_hva(rcu_dereference(h->by_hva), addr);
	if (r) {
		mv__mark_dirty(r, mv__chunk_of(r, page));
		mv__bit_clear(r->hinted, (uint64_t)((uint8_t *)page - r->hva) >> MV_PAGE_SHIFT);
	}
	rcu_read_unlock();
	if (h->prim->uffd_wp(h->uffd, page, MV_PAGE_SIZE, 0))
		h->prim->uffd_wake(h->uffd, page, MV_PAGE_SIZE);
	pthread_mutex_unlock(&g->lock);
}

static void *fault_main(void *arg)
{
	struct mv_host *h = arg;
	struct pollfd pfd[2] = { { .fd = h->uffd, .events = POLLIN }, { .fd = h->stop_fd, .events = POLLIN } };
	struct uffd_msg msg[64];
	for (;;) {
		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			break;
		if (pfd[1].revents)
			break;
		uint64_t t0 = mv__thread_cpu_ns();
		ssize_t r = read(h->uffd, msg, sizeof(msg));
		for (ssize_t i = 0; i < r / (ssize_t)sizeof(msg[0]); i++)
			if (msg[i].event == UFFD_EVENT_PAGEFAULT)
				release_writer(h, (uintptr_t)msg[i].arg.pagefault.address);
		atomic_fetch_add(&h->fault_cpu_ns, (int64_t)(mv__thread_cpu_ns() - t0));
	}
	return NULL;
}

int mv__track_start(struct mv_host *h)
{
	int err = -pthread_create(&h->fault_thread, NULL, fault_main, h);
	h->fault_thread_up = !err;
	return err;
}

void mv__track_stop(struct mv_host *h)
{
	if (!h->fault_thread_up)
		return;
	uint64_t one = 1;
	if (write(h->stop_fd, &one, sizeof(one)) != sizeof(one))
		return;
	pthread_join(h->fault_thread, NULL);
	h->fault_thread_up = false;
}
