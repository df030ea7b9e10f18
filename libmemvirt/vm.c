/* vm.c - mv_vm: a guest's memory map (memslot-like regions, RCU-published) and lifetime. */
#include "ksm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

MV_API void mv_vm_config_init(struct mv_vm_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->size = sizeof(*cfg);
}

static bool name_ok(const char *s, size_t max)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x21 || s[i] > 0x7e)
			return false;
	return true;
}

static struct mv_vm *vm_by_name(struct mv_host *h, const char *name)
{
	struct mv_vm *vm;
	cds_list_for_each_entry(vm, &h->vms, link)
		if (!strcmp(vm->name, name))
			return vm;
	return NULL;
}

MV_API int mv_vm_new(struct mv_host *h, const struct mv_vm_config *cfg, struct mv_vm **out)
{
	if (!h || !cfg || !out || cfg->size != sizeof(*cfg) || !name_ok(cfg->name, 63))
		return -EINVAL;
	if (cfg->domain && (!name_ok(cfg->domain, 63) || !strncmp(cfg->domain, "vm:", 3)))
		return -EINVAL;
	struct mv_vm *vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->host = h;
	snprintf(vm->name, sizeof(vm->name), "%s", cfg->name);
	vm->merging = true;
	pthread_mutex_init(&vm->lock, NULL);
	char own[80];
	snprintf(own, sizeof(own), "vm:%s", cfg->name);

	pthread_mutex_lock(&h->lock);
	int err = vm_by_name(h, cfg->name) ? -EEXIST : mv__domain_get(h, cfg->domain ? cfg->domain : own, &vm->dom);
	if (!err)
		cds_list_add_tail(&vm->link, &h->vms);
	pthread_mutex_unlock(&h->lock);
	if (err) {
		pthread_mutex_destroy(&vm->lock);
		free(vm);
		return err;
	}
	*out = vm;
	return 0;
}

/* Wait until no worker scans vm. host->lock held. */
static void wait_idle(struct mv_vm *vm)
{
	while (vm->busy)
		pthread_cond_wait(&vm->host->idle, &vm->host->lock);
}

MV_API void mv_vm_free(struct mv_vm *vm)
{
	if (!vm)
		return;
	struct mv_host *h = vm->host;
	pthread_mutex_lock(&h->lock);
	vm->dying = true;
	wait_idle(vm);
	cds_list_del(&vm->link);
	pthread_mutex_unlock(&h->lock);

	mv__vm_remove_all(vm);

	pthread_mutex_lock(&h->lock);
	mv__domain_put(vm->dom);
	pthread_mutex_unlock(&h->lock);
	pthread_mutex_destroy(&vm->lock);
	free(vm);
}

/* Release prev (may be NULL) and hold the next VM to scan after it. -ENOENT: pass over. */
int mv__vm_hold_next(struct mv_host *h, struct mv_vm *prev, struct mv_vm **out)
{
	pthread_mutex_lock(&h->lock);
	struct cds_list_head *pos = prev ? &prev->link : &h->vms;
	if (prev) {
		prev->busy = false;
		pthread_cond_broadcast(&h->idle);
	}
	*out = NULL;
	for (pos = pos->next; pos != &h->vms; pos = pos->next) {
		struct mv_vm *vm = cds_list_entry(pos, struct mv_vm, link);
		if (!vm->busy && !vm->dying && __atomic_load_n(&vm->merging, __ATOMIC_ACQUIRE)) {
			vm->busy = true;
			*out = vm;
			break;
		}
	}
	pthread_mutex_unlock(&h->lock);
	return *out ? 0 : -ENOENT;
}

void mv__vm_release(struct mv_vm *vm)
{
	pthread_mutex_lock(&vm->host->lock);
	vm->busy = false;
	pthread_cond_broadcast(&vm->host->idle);
	pthread_mutex_unlock(&vm->host->lock);
}

/* ---- the memory map ---- */

/* Binary search of a map sorted by guest-physical address. */
struct mv_region *mv__region_of_gpa(struct mv_region_map *map, uint64_t gpa)
{
	unsigned lo = 0, hi = map ? map->n : 0;
	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		struct mv_region *r = map->r[mid];
		if (gpa < r->gpa)
			hi = mid;
		else if (gpa - r->gpa >= r->size)
			lo = mid + 1;
		else
			return r;
	}
	return NULL;
}


MV_API void *mv_vm_gpa_to_hva(struct mv_vm *vm, uint64_t gpa, uint64_t len)
{
	if (!vm)
		return NULL;
	void *hva = NULL;
	rcu_read_lock();
	struct mv_region *r = mv__region_of_gpa(rcu_dereference(vm->map), gpa);
	if (r && len <= r->size - (gpa - r->gpa))
		hva = r->hva + (gpa - r->gpa);
	rcu_read_unlock();
	return hva;
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

/* -EEXIST if slot is taken in vm or the range overlaps any region of the host.
 * host->lock held (it keeps every VM's map stable against other adders). */
static int check_free(struct mv_vm *vm, uint32_t slot, uint64_t gpa, uintptr_t hva, uint64_t size)
{
	struct mv_vm *o;
	cds_list_for_each_entry(o, &vm->host->vms, link) {
		struct mv_region_map *m = o->map;
		for (unsigned i = 0; m && i < m->n; i++) {
			const struct mv_region *r = m->r[i];
			if (overlaps((uintptr_t)r->hva, r->size, hva, size))
				return -EEXIST;
			if (o == vm && (r->slot == slot || overlaps(r->gpa, r->size, gpa, size)))
				return -EEXIST;
		}
	}
	return 0;
}

/* Publish a new map for vm: old with `add` inserted (by gpa) and `drop` left out. */
static int map_replace(struct mv_vm *vm, struct mv_region *add, struct mv_region *drop)
{
	struct mv_region_map *old = vm->map;
	unsigned n = old ? old->n : 0;
	struct mv_region_map *m = malloc(sizeof(*m) + (n + 1) * sizeof(m->r[0]));
	if (!m)
		return -ENOMEM;
	m->n = 0;
	for (unsigned i = 0; i < n; i++) {
		if (add && add->gpa < old->r[i]->gpa) {
			m->r[m->n++] = add;
			add = NULL;
		}
		if (old->r[i] != drop)
			m->r[m->n++] = old->r[i];
	}
	if (add)
		m->r[m->n++] = add;
	rcu_assign_pointer(vm->map, m);
	synchronize_rcu();
	free(old);
	return 0;
}

static void region_free(struct mv_region *r)
{
	free(r->pages);
	free(r->sum);
	free(r->sched);
	free((void *)r->ballooned);
	free((void *)r->hinted);
	free((void *)r->hint_clean);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

static struct mv_region *region_new(struct mv_vm *vm, uint32_t slot, uint64_t gpa, void *hva,
                                    uint64_t size, uint32_t flags)
{
	struct mv_region *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	uintptr_t a = (uintptr_t)hva;
	*r = (struct mv_region){ .serial = atomic_fetch_add(&vm->host->region_serial, 1) + 1,
	                         .slot = slot, .flags = flags, .gpa = gpa, .size = size,
	                         .npages = size >> MV_PAGE_SHIFT, .hva = hva, .vm = vm,
	                         .chunk0 = a >> 21, .nr_chunks = ((a + size - 1) >> 21) - (a >> 21) + 1 };
	r->pages = calloc(r->npages, sizeof(*r->pages));
	r->sum = calloc(r->npages, sizeof(*r->sum));
	r->sched = mv__sched_new(r->nr_chunks);
	r->ballooned = calloc((r->npages + 63) / 64, sizeof(*r->ballooned));
	r->hinted = calloc((r->npages + 63) / 64, sizeof(*r->hinted));
	r->hint_clean = calloc((r->npages + 63) / 64, sizeof(*r->hint_clean));
	pthread_mutex_init(&r->lock, NULL);
	if (!r->pages || !r->sum || !r->sched || !r->ballooned || !r->hinted || !r->hint_clean) {
		region_free(r);
		return NULL;
	}
	return r;
}

static void region_free_rcu(struct rcu_head *head)
{
	region_free(caa_container_of(head, struct mv_region, rcu));
}

/* Why memory of this kind cannot be merged: "" if it can. */
static const char *unmergeable_why(int kind)
{
	if (kind < 0)
		return "of unknown kind (/proc/self/maps cannot be read)";
	if (kind & MV_VMA_HOLE)
		return "not fully mapped";
	if (kind & MV_VMA_SHARED)
		return "a shared mapping (MAP_SHARED)";
	if (kind & MV_VMA_FILE)
		return "a private mapping of a file (a released page would read the file again)";
	if (kind & MV_VMA_NOT_RW)
		return "read-only or inaccessible in part (merging would change its protection)";
	return "";
}

/* Decide whether the region can share pages, and register it for write tracking. Only
 * private anonymous read-write memory can: a page released with MADV_DONTNEED reads as
 * zero there, and the store mappings that replace its pages are read-write. Children of
 * the VMM do not inherit it (MADV_DONTFORK, as QEMU does for guest RAM): a child's copy
 * of a merged page would read whatever its store slot holds once the share is dropped. */
static void region_arm(struct mv_host *h, struct mv_region *r)
{
	int kind = mv__vma_kind(r->hva, r->size);
	r->shared = kind >= 0 && (kind & MV_VMA_SHARED) && !(kind & MV_VMA_HOLE);
	r->file = kind >= 0 && (kind & MV_VMA_FILE) && !(kind & (MV_VMA_SHARED | MV_VMA_HOLE | MV_VMA_NOT_RW));
	long ps = kind > 0 && (kind & (MV_VMA_SHARED | MV_VMA_FILE)) ? mv__vma_page_size(r->hva) : 0;
	r->page_size = ps > (long)MV_PAGE_SIZE ? (uint64_t)ps : MV_PAGE_SIZE; /* hugetlbfs */
	if (r->flags & MV_REGION_NEVER_MERGE)
		return;
	if (kind != 0) {
		mv__log(h, MV_LOG_WARN, "vm %s slot %u: guest RAM is %s; its pages will not be merged "
		        "(only private anonymous read-write memory can be shared copy-on-write)",
		        r->vm->name, r->slot, unmergeable_why(kind));
		return;
	}
	int err = h->prim->dontfork(r->hva, r->size);
	if (err) {
		mv__log(h, MV_LOG_WARN, "vm %s slot %u: cannot keep guest RAM from children (%s): "
		        "its pages will not be merged", r->vm->name, r->slot, mv_strerror(err));
		return;
	}
	err = h->prim->uffd_register(h->uffd, r->hva, r->size, MV_UFFD_WP);
	if (err) {
		mv__log(h, MV_LOG_WARN, "vm %s slot %u: cannot track writes (%s): its pages will not "
		        "be merged", r->vm->name, r->slot, mv_strerror(err));
		return;
	}
	r->registered = true;
	r->mergeable = true;
}

MV_API int mv_vm_region_add(struct mv_vm *vm, uint32_t slot, uint64_t gpa, void *hva,
                            uint64_t size, uint32_t flags)
{
	uintptr_t a = (uintptr_t)hva;
	if (!vm || !hva || !size || (gpa | a | size) & (MV_PAGE_SIZE - 1) || flags & ~MV_REGION_NEVER_MERGE)
		return -EINVAL;
	if (gpa + size < gpa || a + size < a)
		return -EINVAL;
	struct mv_host *h = vm->host;
	struct mv_region *r = region_new(vm, slot, gpa, hva, size, flags);
	if (!r)
		return -ENOMEM;
	pthread_mutex_lock(&vm->lock);
	pthread_mutex_lock(&h->lock);
	int err = check_free(vm, slot, gpa, a, size);
	if (!err) {
		region_arm(h, r);
		err = map_replace(vm, r, NULL);
		if (err && r->registered)
			h->prim->uffd_unregister(h->uffd, r->hva, r->size);
		else if (!err)
			atomic_fetch_add(&vm->dom->pages, (int64_t)r->npages);
	}
	pthread_mutex_unlock(&h->lock);
	pthread_mutex_unlock(&vm->lock);
	if (err)
		region_free(r);
	else
		mv__index_size_for(vm->dom, atomic_load(&vm->dom->pages));
	return err;
}

/* Take r out of service: no library thread touches its memory after this returns.
 * vm->lock held; r already unpublished. */
static void region_retire(struct mv_host *h, struct mv_region *r)
{
	atomic_store(&r->dead, true);
	atomic_fetch_sub(&r->vm->dom->pages, (int64_t)r->npages);
	synchronize_rcu(); /* workers inside r's chunks are done; the others see it gone */
	int err = mv__region_unmerge(h, r);
	if (err)
		mv__log(h, MV_LOG_ERROR, "vm %s slot %u: could not unmerge every page (%s); those "
		        "stay backed by the page store", r->vm->name, r->slot, mv_strerror(err));
	mv__region_forget(h, r);
	if (r->registered)
		h->prim->uffd_unregister(h->uffd, r->hva, r->size);
	long vmas = atomic_load(&r->vmas);
	mv__count(r->vm, MV_C_VMAS, -vmas);
	call_rcu(&r->rcu, region_free_rcu);
}

MV_API int mv_vm_region_remove(struct mv_vm *vm, uint32_t slot)
{
	if (!vm)
		return -EINVAL;
	pthread_mutex_lock(&vm->lock);
	struct mv_region *r = NULL;
	for (unsigned i = 0; vm->map && i < vm->map->n; i++)
		if (vm->map->r[i]->slot == slot)
			r = vm->map->r[i];
	int err = r ? map_replace(vm, NULL, r) : -ENOENT;
	if (!err)
		region_retire(vm->host, r);
	pthread_mutex_unlock(&vm->lock);
	return err;
}

void mv__vm_remove_all(struct mv_vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	struct mv_region_map *m = vm->map;
	rcu_assign_pointer(vm->map, NULL);
	synchronize_rcu();
	for (unsigned i = 0; m && i < m->n; i++)
		region_retire(vm->host, m->r[i]);
	free(m);
	pthread_mutex_unlock(&vm->lock);
}

MV_API int mv_vm_set_merging(struct mv_vm *vm, bool on)
{
	if (!vm)
		return -EINVAL;
	struct mv_host *h = vm->host;
	int err = 0;
	pthread_mutex_lock(&vm->lock);
	__atomic_store_n(&vm->merging, on, __ATOMIC_RELEASE);
	if (!on) {
		pthread_mutex_lock(&h->lock);
		wait_idle(vm);
		pthread_mutex_unlock(&h->lock);
		struct mv_region_map *m = vm->map;
		for (unsigned i = 0; m && i < m->n; i++) {
			struct mv_region *r = m->r[i];
			int e = mv__region_unmerge(h, r);
			if (e && !err)
				err = e;
			mv__region_unprotect(h, r);
		}
		if (err)
			__atomic_store_n(&vm->merging, true, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&vm->lock);
	return err;
}

MV_API int mv_vm_unmerge(struct mv_vm *vm)
{
	return mv_vm_set_merging(vm, false);
}

uint64_t mv__vm_ram_bytes(struct mv_vm *vm)
{
	uint64_t ram = 0;
	rcu_read_lock();
	struct mv_region_map *map = rcu_dereference(vm->map);
	for (unsigned i = 0; map && i < map->n; i++)
		ram += map->r[i]->size;
	rcu_read_unlock();
	return ram;
}

MV_API const char *mv_vm_domain(const struct mv_vm *vm)
{
	return vm ? vm->dom->name : NULL;
}

MV_API int mv_vm_stats(struct mv_vm *vm, struct mv_scan_stats *out)
{
	if (!vm || !out)
		return -EINVAL;
	mv__counters_to_stats(&vm->c, out);
	out->pages_sharing = 0; /* savings are a domain figure: a VM's pages share with others */
	out->cow_debt_bytes = (out->pages_merged + out->pages_zero) * MV_PAGE_SIZE;
	return 0;
}
