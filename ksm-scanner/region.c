/* region.c - the scanner's side of a region's life: unmerge, unprotect, forget, and the
 * periodic rebuild of a domain's unstable index entries. */
#include "ksm.h"

#include <string.h>

/*
 * Make every merged page of r private again (MADV_POPULATE_WRITE breaks copy-on-write
 * without changing a byte, atomically for concurrent writers) and drop its references.
 * No worker may be scanning r. -ENOMEM if the host lacks memory for the copies.
 */
int mv__region_unmerge(struct mv_host *h, struct mv_region *r)
{
	int err = 0;
	uint64_t i = 0, merged = 0;
	pthread_mutex_lock(&r->lock);
	while (i < r->npages) {
		if (r->pages[i].state != PS_MERGED) {
			i++;
			continue;
		}
		uint64_t b = i;
		while (b < r->npages && r->pages[b].state == PS_MERGED)
			b++;
		int e = h->prim->populate_write(r->hva + i * MV_PAGE_SIZE, (b - i) * MV_PAGE_SIZE);
		if (e) {
			err = e;
		} else {
			rcu_read_lock();
			for (uint64_t k = i; k < b; k++) {
				mv__node_put(r->vm->dom, mv__page_node(r, &r->pages[k]), 1);
				r->pages[k].state = PS_NEW;
			}
			rcu_read_unlock();
			merged += b - i;
		}
		i = b;
	}
	mv__count(r->vm, MV_C_MERGED, -(int64_t)merged);
	memset(r->sched, 0, r->nr_chunks * sizeof(r->sched[0]));
	pthread_mutex_unlock(&r->lock);
	return err;
}

/* Merging is off: drop every write protection (re-registering clears them) so that the
 * guest no longer pays a fault per first write; pages are looked at afresh later. */
void mv__region_unprotect(struct mv_host *h, struct mv_region *r)
{
	if (!r->registered)
		return;
	pthread_mutex_lock(&r->lock);
	/* writes stop being seen: a hinted page can no longer be known unwritten */
	mv__hint_forget(r, 0, r->npages);
	h->prim->uffd_unregister(h->uffd, r->hva, r->size);
	if (h->prim->uffd_register(h->uffd, r->hva, r->size, MV_UFFD_WP)) {
		r->registered = r->mergeable = false;
		mv__log(h, MV_LOG_WARN, "vm %s slot %u: cannot track writes any more; its pages will "
		        "not be merged", r->vm->name, r->slot);
	}
	for (uint64_t i = 0; i < r->npages; i++)
		if (r->pages[i].state == PS_CLEAN)
			r->pages[i].state = PS_NEW;
	memset(r->sched, 0, r->nr_chunks * sizeof(r->sched[0]));
	pthread_mutex_unlock(&r->lock);
}

/* Drop the region's unstable index nodes; its pages can no longer be found. */
void mv__region_forget(struct mv_host *h, struct mv_region *r)
{
	int64_t zero = 0;
	for (uint64_t i = 0; i < r->npages; i++)
		zero += r->pages[i].state == PS_ZERO;
	mv__index_drop_region(r->vm->dom, r);
	mv__count(r->vm, MV_C_ZERO, -zero);
}

/* Every page of r is to be looked up again. Any thread (the flags are atomic). */
static void rescan_region(struct mv_region *r)
{
	for (uint64_t i = 0; i < r->npages; i++)
		atomic_store(&r->pages[i].rescan, 1);
}

/*
 * The unstable part of an index only grows: a page whose content changes leaves its old
 * node behind until someone else hits that hash. When a domain holds more unstable nodes
 * than it has pages, drop them all and let every page be looked up again (hashed once
 * more), as ksmd rebuilds its unstable tree.
 */
void mv__domains_prune(struct mv_host *h)
{
	pthread_mutex_lock(&h->lock);
	struct mv_domain *d;
	cds_list_for_each_entry(d, &h->domains, link) {
		if (atomic_load(&d->unstable) <= atomic_load(&d->pages) + MV_UNSTABLE_SLACK)
			continue;
		mv__index_drop_region(d, NULL);
		struct mv_vm *vm;
		cds_list_for_each_entry(vm, &h->vms, link) {
			if (vm->dom != d)
				continue;
			rcu_read_lock();
			struct mv_region_map *m = rcu_dereference(vm->map);
			for (unsigned i = 0; m && i < m->n; i++)
				if (!atomic_load(&m->r[i]->dead))
					rescan_region(m->r[i]);
			rcu_read_unlock();
		}
	}
	pthread_mutex_unlock(&h->lock);
}
