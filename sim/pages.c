/* pages.c - the workload's guest pages: frame numbering, allocation with reclaim, held
 * content, page cache reclaim, and the guest statistics the balloon driver reports.
 *
 * Allocation follows a Linux guest's order of resorts: a free page if there is one;
 * else an allocation stall with direct reclaim of page cache; then the allocator's own
 * path, where the balloon driver deflates on OOM; and only then failure (an OOM, counted
 * by the sim as an OOM kill in the guest's statistics).
 */
#include "wl.h"

#include <errno.h>
#include <string.h>

#define RECLAIM_BATCH 32 /* pages dropped per direct reclaim (SWAP_CLUSTER_MAX) */

uint8_t *mvw__hva(const struct mvw_guest *g, uint64_t frame)
{
	const struct wl_ram *r = &g->ram[g->nram > 1 && frame >= g->ram[1].first];
	return r->hva + (frame - r->first) * MVW_PAGE;
}

uint64_t mvw__gpa(const struct mvw_guest *g, uint64_t frame)
{
	const struct wl_ram *r = &g->ram[g->nram > 1 && frame >= g->ram[1].first];
	return r->gpa + (frame - r->first) * MVW_PAGE;
}

int mvw__frame(const struct mvw_guest *g, uint64_t gpa, uint64_t *frame)
{
	for (unsigned k = 0; k < g->nram; k++) {
		const struct wl_ram *r = &g->ram[k];
		if (gpa >= r->gpa && (gpa - r->gpa) / MVW_PAGE < r->pages) {
			*frame = r->first + (gpa - r->gpa) / MVW_PAGE;
			return 0;
		}
	}
	return -EINVAL;
}

int mvw__alloc(struct mvw_guest *g, uint64_t *frame, bool stall)
{
	uint64_t gpa;
	if (mvg_sim_free_bytes(g->sim) < MVW_PAGE) {
		if (!stall)
			return -ENOMEM;
		pthread_mutex_lock(&g->lock);
		g->st.alloc_stalls++;
		pthread_mutex_unlock(&g->lock);
		mvw__reclaim(g, RECLAIM_BATCH, true);
	}
	int err = mvg_sim_alloc_page(g->sim, &gpa);
	if (!err && mvw__frame(g, gpa, frame)) {
		mvg_sim_free_page(g->sim, gpa); /* not RAM: cannot happen with a sane allocator */
		err = -EFAULT;
	}
	pthread_mutex_lock(&g->lock);
	if (err)
		g->st.ooms++;
	else
		g->minor_faults++;
	pthread_mutex_unlock(&g->lock);
	return err;
}

void mvw__put_locked(struct mvw_guest *g, uint64_t frame, uint64_t d)
{
	uint64_t old = g->desc[frame];
	if (old)
		g->st.role_pages[mvw__d_role(old)]--;
	mvw__write(g, mvw__hva(g, frame), d);
	g->desc[frame] = d;
	if (d)
		g->st.role_pages[mvw__d_role(d)]++;
}

void mvw__put(struct mvw_guest *g, uint64_t frame, uint64_t d)
{
	pthread_mutex_lock(&g->lock);
	mvw__put_locked(g, frame, d);
	pthread_mutex_unlock(&g->lock);
}

static void forget_locked(struct mvw_guest *g, uint64_t frame)
{
	uint64_t old = g->desc[frame];
	if (old)
		g->st.role_pages[mvw__d_role(old)]--;
	g->desc[frame] = 0;
}

void mvw__drop(struct mvw_guest *g, uint64_t frame)
{
	pthread_mutex_lock(&g->lock);
	forget_locked(g, frame);
	pthread_mutex_unlock(&g->lock);
	mvg_sim_free_page(g->sim, mvw__gpa(g, frame));
}

/* The most recently read cache pages go first (the list is in no GPA order anyway). */
uint64_t mvw__reclaim(struct mvw_guest *g, uint64_t n, bool direct)
{
	uint64_t got = 0;
	pthread_mutex_lock(&g->lock);
	for (; got < n && g->n_cache; got++) {
		uint64_t frame = g->cache_frame[--g->n_cache];
		forget_locked(g, frame);
		mvg_sim_free_page(g->sim, mvw__gpa(g, frame));
	}
	g->st.reclaimed_pages += got;
	if (direct)
		g->direct_reclaims += got;
	else
		g->async_reclaims += got;
	pthread_mutex_unlock(&g->lock);
	return got;
}

void mvw__publish(struct mvw_guest *g)
{
	struct mvg_guest_stats st;
	memset(&st, 0xff, sizeof(st)); /* unknown, or computed by the sim (free, total, ...) */
	pthread_mutex_lock(&g->lock);
	st.cache_bytes = g->n_cache * MVW_PAGE;
	st.alloc_stalls = g->st.alloc_stalls;
	st.major_faults = g->st.refilled_pages; /* cache pages read back from "disk" */
	st.minor_faults = g->minor_faults;
	st.direct_reclaims = g->direct_reclaims;
	st.async_reclaims = g->async_reclaims;
	pthread_mutex_unlock(&g->lock);
	mvg_sim_set_stats(g->sim, &st);
}
