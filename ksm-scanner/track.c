/* track.c - write tracking: the host's userfaultfd, replace windows and their fault handler.
 *
 * Guest RAM is registered with one userfaultfd in asynchronous write-protect mode
 * (UFFD_FEATURE_WP_ASYNC): a write to a protected page is resolved by the kernel in the
 * writer's own fault (about a microsecond), never by a thread of ours, and PAGEMAP_SCAN
 * reports the page written. That is all the scanner needs to tell quiet memory from
 * memory that changed.
 *
 * Replacing a page needs more: no access may reach it between the last compare and the
 * new mapping. While a worker replaces pages of one 2 MiB chunk it opens a window: the
 * chunk is registered for missing-page faults too and the pages in flight are moved out
 * (UFFDIO_MOVE, merge.c), so an access to one of them waits in the kernel until the
 * window closes. Only accesses to that chunk wait, and only for one replace. The thread
 * here notes when each waiting access arrived, so the wait can be accounted; an access
 * that arrives after its window closed is woken at once.
 */
#include "ksm.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <unistd.h>

void mv__gate_enter(struct mv_host *h, unsigned worker, struct mv_vm *vm, void *lo, size_t len)
{
	struct mv_batch_gate *g = &h->gate;
	pthread_mutex_lock(&g->lock);
	g->lo[worker] = (uintptr_t)lo;
	g->hi[worker] = (uintptr_t)lo + len;
	g->vm[worker] = vm;
	g->nheld[worker] = 0;
	g->untimed[worker] = 0;
	pthread_mutex_unlock(&g->lock);
}

/* The window is closed (its accesses woken): account the waits of the accesses seen. */
void mv__gate_leave(struct mv_host *h, unsigned worker)
{
	struct mv_batch_gate *g = &h->gate;
	uint64_t now = mv__mono_ns(), total = 0, longest = 0;
	pthread_mutex_lock(&g->lock);
	struct mv_vm *vm = g->vm[worker];
	unsigned n = g->nheld[worker];
	for (unsigned i = 0; i < n; i++) {
		uint64_t w = now - g->held_ns[worker][i];
		total += w;
		longest = w > longest ? w : longest;
	}
	uint64_t untimed = g->untimed[worker];
	g->lo[worker] = g->hi[worker] = 0;
	g->vm[worker] = NULL;
	pthread_mutex_unlock(&g->lock);
	if (!vm || !(n + untimed))
		return;
	mv__count(vm, MV_C_WRITE_FAULTS, (int64_t)(n + untimed));
	mv__count(vm, MV_C_WAIT_NS, (int64_t)total);
	mv__count_max(vm, MV_C_WAIT_MAX_NS, (int64_t)longest);
}

/* One access waiting on a missing page: note it for its window. Outside any window it
 * raced with a close (its page is back: wake it), or the missing-page mode was left on
 * by a window that could not drop it: the empty pte then gets the zero page, as any
 * fresh anonymous page would read, so that the access does not fault for ever. Done
 * under the gate lock: no window can start moving pages out of that chunk meanwhile. */
static void note_fault(struct mv_host *h, uintptr_t addr)
{
	struct mv_batch_gate *g = &h->gate;
	uint64_t now = mv__mono_ns();
	pthread_mutex_lock(&g->lock);
	for (unsigned w = 0; w < MV_GATES; w++) {
		if (addr < g->lo[w] || addr >= g->hi[w])
			continue;
		if (g->nheld[w] < MV_HELD_MAX)
			g->held_ns[w][g->nheld[w]++] = now;
		else
			g->untimed[w]++;
		pthread_mutex_unlock(&g->lock);
		return;
	}
	void *page = (void *)(addr & ~(MV_PAGE_SIZE - 1));
	if (h->prim->uffd_zeropage(h->uffd, page, MV_PAGE_SIZE))
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
				note_fault(h, (uintptr_t)msg[i].arg.pagefault.address);
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
