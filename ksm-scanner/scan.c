/* scan.c - the page-sharing scanner: looking at guest pages 2 MiB at a time and deciding
 * which to share.
 *
 * Overview
 *
 * Guest RAM regions are registered with the host's userfaultfd in asynchronous
 * write-protect mode (track.c): a write to a protected page costs the writer one fault
 * resolved in the kernel, never a wait for a thread of ours, and PAGEMAP_SCAN then
 * reports the page written. A worker walks each region in 2 MiB chunks; a chunk is
 * looked at when it is due (struct mv_chunk_sched). For a chunk it:
 *
 *  1. asks the kernel what each page is (PAGEMAP_SCAN): a stable page that is "written"
 *     changed since its last look; a merged page that is no longer a file page got a
 *     private copy (COW break); a released zero page that is present and not the zero
 *     PFN was reused.
 *  2. looks at the pages that need it, as ksmd does, without protecting them first: a
 *     page seen for the first time is only hashed and its 32-bit sum kept. A page seen
 *     before is write-protected, hashed and compared with its sum: changed, it is left
 *     unprotected (watching a page that keeps changing would cost its writer a fault
 *     per look) and the chunk backs off; unchanged, it is stable and stays protected,
 *     so that from now on any write to it is seen.
 *  3. looks each stable page's hash up in the domain's index (XXH3 with a per-host
 *     secret). The index only proposes; memcmp decides: against the zero page, a
 *     canonical page of the store (stable node), or another guest page seen with that
 *     hash (unstable node), which is then promoted to a canonical page.
 *  4. replaces the pages it decided on inside a window (merge.c): the pages are moved
 *     out of the guest's mapping, compared again there, and only then released (zero)
 *     or mapped onto store slots; a page that changed in between goes back untouched.
 *     An access to a page in flight waits for that window only.
 *  5. schedules the chunk's next look: on the next pass if every page is stable, else
 *     after settle_ms, doubled for every look that found pages changing again.
 *
 * What a writer pays: nothing for pages that keep changing (never protected), one
 * kernel-resolved fault for the first write to a page that had stayed unchanged for
 * settle_ms, a copy when it writes a merged page, and a wait of one replace when it
 * touches a page at the moment it is being replaced.
 */
#include "chunk.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

static void set_sum(struct chunk *c, unsigned i, uint64_t hash)
{
	c->r->sum[c->first + i] = (uint32_t)hash;
	page_of(c, i)->flags |= PF_SUM;
}

/* Pages left unmerged by the VMA budget are looked up again only while it has room:
 * else every pass would open a window for them, to no end. */
static bool vma_room(struct mv_host *h)
{
	return atomic_load(&h->c.v[MV_C_VMAS]) < atomic_load(&h->vma_limit);
}

/* Step 1: bring a page's state up to date with what the kernel reports. */
static uint8_t refresh(struct chunk *c, unsigned i)
{
	struct mv_page *p = page_of(c, i);
	uint8_t cat = c->cat[i];
	bool present = cat & MV_PAGE_IS_PRESENT;
	bool rescan = atomic_exchange(&p->rescan, 0);

	switch (p->state) {
	case PS_NEW:
		if (!present || (cat & MV_PAGE_IS_PFNZERO) || p->slot != MV_SLOT_ANON)
			return NEED_NO; /* nothing there, or a private copy no replace can move */
		return p->flags & PF_SUM ? NEED_CONFIRM : NEED_FIRST;
	case PS_CLEAN:
		if (!present) {
			if (!(cat & MV_PAGE_IS_SWAPPED)) {
				p->state = PS_NEW; /* dropped (by a balloon): nothing to share */
				p->flags = 0;
			}
			return NEED_NO;
		}
		if (cat & MV_PAGE_IS_WRITTEN) {
			p->state = PS_NEW;
			return NEED_CONFIRM;
		}
		if (rescan)
			return NEED_LOOKUP;
		return p->flags & PF_RETRY && vma_room(c->ctx->h) ? NEED_LOOKUP : NEED_NO;
	case PS_ZERO:
		if (present && !(cat & MV_PAGE_IS_PFNZERO)) {
			p->state = PS_NEW;
			p->flags = 0;
			c->zero--; /* reused by the guest: no longer a released page */
			return NEED_FIRST;
		}
		return NEED_NO;
	case PS_MERGED:
		if (present && !(cat & MV_PAGE_IS_FILE)) {
			mv__node_put(c->d, mv__page_node(c->r, p), 1);
			p->state = PS_NEW; /* a private copy inside the store mapping */
			p->flags = 0;
			c->cow++;
		}
		return NEED_NO;
	default:
		return NEED_NO;
	}
}

/*
 * Change write protection (wp = 1 protect, 0 lift) of the pages `which` selects, one
 * ioctl per stretch. A stretch may run over pages that stay protected anyway, to save
 * ioctls. Either way it ends any hint's claim on those pages.
 */
void mv__protect_where(struct chunk *c, bool (*which)(const struct chunk *, unsigned), int wp)
{
	struct mv_host *h = c->ctx->h;
	unsigned i = 0;
	while (i < c->n) {
		if (!which(c, i)) {
			i++;
			continue;
		}
		unsigned a = i, last = i;
		for (i++; i < c->n && (which(c, i) || (wp && keep_protected(c, i))); i++)
			if (which(c, i))
				last = i;
		i = last + 1;
		h->prim->uffd_wp(h->uffd, page_addr(c, a), (size_t)(i - a) * MV_PAGE_SIZE, wp);
		/* Lifting protection hides later writes from a hint; setting it again erases
		 * the trace of writes made since the hint run began. Either way the pages can
		 * no longer be known unwritten. */
		mv__hint_forget(c->r, c->first + a, i - a);
	}
}

/* Where the next canonical page should go so that this page's mapping fuses with the
 * previous merged page of the chunk. Negative: a fresh extent, at this in-chunk offset. */
static int64_t preferred_slot(const struct chunk *c, unsigned i)
{
	if (c->last_merge >= 0) {
		const struct mv_node *t = c->tgt[c->last_merge];
		if (t->nid == c->nid)
			return (int64_t)t->slot + (int64_t)i - c->last_merge;
	}
	return -1 - (int64_t)(((uintptr_t)page_addr(c, i) >> MV_PAGE_SHIFT) % MV_CHUNK_PAGES);
}

static void set_target(struct chunk *c, unsigned i, struct mv_node *n)
{
	c->act[i] = ACT_MERGE;
	c->tgt[i] = n;
	if ((int)i > c->last_merge)
		c->last_merge = (int)i;
}

/* The other page of an unstable node, if it can still be read. rcu_read_lock held. */
static const uint8_t *twin_addr(const struct mv_node *n)
{
	const struct mv_region *r = n->region;
	if (atomic_load(&r->dead) || n->idx >= r->npages)
		return NULL;
	return r->hva + n->idx * MV_PAGE_SIZE;
}

/* Page i equals the page of unstable node n: make it canonical. Its twin merges now if it
 * is in this chunk (protected too), else on its chunk's next visit. */
static void promote(struct chunk *c, unsigned i, struct mv_node *n, uint64_t hash)
{
	struct mv_node *s;
	if (mv__index_promote(c->d, n, hash, c->nid, page_addr(c, i), preferred_slot(c, i), &s))
		return;
	set_target(c, i, s);
	uint64_t t = n->idx;
	if (n->region == c->r && t >= c->first && t < c->first + i &&
	    c->act[t - c->first] == ACT_NONE && page_of(c, t - c->first)->state == PS_CLEAN &&
	    mv__node_get(s))
		set_target(c, (unsigned)(t - c->first), s);
	else
		mv__rescan(n->region, t);
}

/* Step 3 for one stable page (write-protected before `hash` was taken). */
static void decide(struct chunk *c, unsigned i, uint64_t hash)
{
	struct mv_host *h = c->ctx->h;
	struct mv_page *p = page_of(c, i);
	const uint8_t *addr = page_addr(c, i);

	p->flags &= (uint8_t)~PF_RETRY;
	if (hash == h->zero_hash && mv__is_zero(addr)) {
		c->act[i] = ACT_ZERO;
		return;
	}
	struct mv_node *n = mv__index_find(c->d, hash, c->nid);
	if (n && n->stable) {
		if (!mv__node_get(n))
			return;
		if (!memcmp(addr, mv__store_page(c->d->stores[n->nid], n->slot), MV_PAGE_SIZE))
			set_target(c, i, n);
		else
			mv__node_put(c->d, n, 1); /* 64-bit collision: stays unique */
		return;
	}
	bool self = n && n->region == c->r && n->idx == c->first + i;
	if (n && !self) {
		const uint8_t *twin = twin_addr(n);
		if (twin && !memcmp(addr, twin, MV_PAGE_SIZE)) {
			promote(c, i, n, hash);
			return;
		}
	}
	if (!self)
		mv__index_add_unstable(c->d, hash, c->nid, c->r, c->first + i, n);
}

static bool wants_confirm(const struct chunk *c, unsigned i)
{
	return c->need[i] == NEED_CONFIRM;
}

static bool found_changing(const struct chunk *c, unsigned i)
{
	return c->need[i] == NEED_CONFIRM && page_of(c, i)->state == PS_NEW;
}

uint64_t mv__chunk_hash(struct chunk *c, unsigned i)
{
	c->scanned++;
	return mv__hash_page(c->ctx->h, page_addr(c, i));
}

/* Step 2 and 3: look at the pages that need it, decide for the stable ones. */
static void look(struct chunk *c)
{
	mv__protect_where(c, wants_confirm, 1); /* before hashing: a later write is seen */
	for (unsigned i = 0; i < c->n; i++) {
		struct mv_page *p = page_of(c, i);
		uint64_t hash;
		switch (c->need[i]) {
		case NEED_FIRST:
			set_sum(c, i, mv__chunk_hash(c, i));
			c->seen_once++;
			break;
		case NEED_CONFIRM:
			hash = mv__chunk_hash(c, i);
			if ((p->flags & PF_SUM) && c->r->sum[c->first + i] == (uint32_t)hash) {
				p->state = PS_CLEAN;
				decide(c, i, hash);
			} else {
				set_sum(c, i, hash);
				c->changing++;
			}
			break;
		case NEED_LOOKUP:
			decide(c, i, mv__chunk_hash(c, i));
			break;
		}
	}
	mv__protect_where(c, found_changing, 0); /* changing pages are not watched */
	c->volatile_pages += c->changing;
}

static void flush_counters(struct chunk *c)
{
	struct mv_vm *vm = c->r->vm;
	mv__count(vm, MV_C_SCANNED, c->scanned);
	mv__count(vm, MV_C_VOLATILE, c->volatile_pages);
	mv__count(vm, MV_C_ZERO, c->zero);
	mv__count(vm, MV_C_MERGED, c->merged - c->cow);
	mv__count(vm, MV_C_COW_BREAKS, c->cow);
	mv__count(vm, MV_C_LEFT_VMA, c->left_vma);
	mv__count(vm, MV_C_LEFT_THP, c->left_thp);
}

static uint32_t node_of(struct mv_host *h, const void *hva)
{
	if (h->cfg.cross_node_merge || h->topo.nr_nodes < 2)
		return 0;
	int nid = h->topo.node_of(h->topo.opaque, hva);
	return nid < 0 || (unsigned)nid >= h->topo.nr_nodes ? 0 : (uint32_t)nid;
}

/* THP policy: returns false when the chunk must be left whole. */
static bool thp_allows(struct chunk *c, unsigned wanted)
{
	bool huge = false;
	for (unsigned i = 0; i < c->n && !huge; i++)
		huge = c->cat[i] & MV_PAGE_IS_HUGE;
	if (!huge)
		return true;
	struct mv_host *h = c->ctx->h;
	if (h->cfg.thp_policy == MV_THP_SPLIT) {
		/* Count pages that would share, reading without protecting (a guess only). */
		unsigned gain = 0;
		for (unsigned i = 0; i < c->n; i++) {
			if (!c->need[i])
				continue;
			uint64_t hash = mv__hash_page(h, page_addr(c, i));
			gain += hash == h->zero_hash || mv__index_find(c->d, hash, c->nid) != NULL;
		}
		if (gain >= h->cfg.thp_split_min)
			return true;
	}
	c->left_thp += wanted;
	return false;
}

/* Step 5: when to look at the chunk again (see struct mv_chunk_sched). */
static void schedule(struct chunk *c, struct mv_chunk_sched *s, uint64_t now)
{
	uint64_t settle = (uint64_t)c->ctx->h->cfg.settle_ms * 1000000ull;
	uint8_t *level = &s->backoff;
	if (c->changing) {
		s->rest = 0;
		*level += *level < MV_BACKOFF_MAX;
	} else if (!c->seen_once && !c->wanted) {
		s->backoff = 0;
		level = &s->rest; /* quiet */
	} else if (!c->seen_once) {
		s->backoff = s->rest = 0; /* just looked at: again on the next pass */
		atomic_store(&s->due_ns, 0);
		return;
	}
	atomic_store(&s->due_ns, now + (settle << *level));
	if (level == &s->rest)
		s->rest += s->rest < MV_BACKOFF_MAX;
}

static bool has_actions(const struct chunk *c)
{
	for (unsigned i = 0; i < c->n; i++)
		if (c->act[i] != ACT_NONE)
			return true;
	return false;
}

/* The whole per-chunk algorithm of the overview. rcu_read_lock held, region alive. */
static void scan_chunk(struct mv_scan_ctx *ctx, struct mv_region *r, uint64_t first, unsigned n)
{
	struct mv_host *h = ctx->h;
	struct chunk *c = &(struct chunk){ .ctx = ctx, .r = r, .d = r->vm->dom, .first = first,
	                                   .n = n, .last_merge = -1 };
	uint8_t *hva = r->hva + first * MV_PAGE_SIZE;
	struct mv_chunk_sched *s = &r->sched[mv__chunk_of(r, hva)];

	pthread_mutex_lock(&r->lock);
	uint64_t now = mv__mono_ns();
	if (atomic_load(&s->due_ns) > now) {
		pthread_mutex_unlock(&r->lock);
		mv__count(r->vm, MV_C_BACKED_OFF, s->backoff > 0);
		return;
	}
	if (!h->prim->page_categories(h->pagemap_fd, hva, n, c->cat)) {
		for (unsigned i = 0; i < n; i++)
			c->wanted += (c->need[i] = refresh(c, i)) != NEED_NO;
		c->nid = node_of(h, hva);
		if (c->wanted && thp_allows(c, c->wanted)) {
			look(c);
			if (has_actions(c))
				mv__replace(c);
		}
		schedule(c, s, now);
	}
	pthread_mutex_unlock(&r->lock);
	flush_counters(c);
}

struct mv_chunk_sched *mv__sched_new(uint64_t nr_chunks)
{
	return calloc(nr_chunks, sizeof(struct mv_chunk_sched));
}

void mv__scan_ctx_fini(struct mv_scan_ctx *ctx)
{
	if (ctx->hold)
		ctx->h->prim->unmap(ctx->hold, MV_CHUNK_SIZE);
	ctx->hold = NULL;
}

static bool map_holds(const struct mv_region_map *map, const struct mv_region *r)
{
	for (unsigned i = 0; map && i < map->n; i++)
		if (map->r[i] == r)
			return true;
	return false;
}

static void throttle_restart(struct mv_scan_ctx *ctx)
{
	ctx->win_wall = mv__mono_ns();
	ctx->win_cpu = mv__thread_cpu_ns();
	ctx->win_fault = (uint64_t)atomic_load(&ctx->h->fault_cpu_ns);
}

/* Keep the worker within its CPU share: sleep off what it spent beyond it. The window
 * restarts after a second, and only once what it owed was slept off. The fault
 * handler's CPU counts too (shared by the workers, charged to each). */
static void throttle(struct mv_scan_ctx *ctx)
{
	if (ctx->cpu_share <= 0)
		return;
	if (!ctx->win_wall) {
		throttle_restart(ctx);
		return;
	}
	double share = (double)atomic_load(&ctx->h->cpu_share_ppm) / 1e6;
	uint64_t spent = mv__thread_cpu_ns() - ctx->win_cpu +
	                 (uint64_t)atomic_load(&ctx->h->fault_cpu_ns) - ctx->win_fault;
	double elapsed = (double)(mv__mono_ns() - ctx->win_wall);
	double owed = (double)spent / share - elapsed;
	bool settled = owed <= 1e9;
	if (owed > 1e9)
		owed = 1e9; /* look at the share again within a second */
	if (owed > 1e6) {
		struct timespec ts = { (time_t)(owed / 1e9), (long)((uint64_t)owed % 1000000000ull) };
		nanosleep(&ts, NULL);
	}
	if (settled && elapsed > 1e9)
		throttle_restart(ctx);
}

/* One pass over every region of vm. The caller holds vm (vm->busy). */
void mv__scan_vm(struct mv_scan_ctx *ctx, struct mv_vm *vm)
{
	for (unsigned ri = 0;; ri++) {
		rcu_read_lock();
		struct mv_region_map *map = rcu_dereference(vm->map);
		if (!map || ri >= map->n) {
			rcu_read_unlock();
			return;
		}
		struct mv_region *r = map->r[ri];
		uint64_t idx = 0;
		while (idx < r->npages && r->mergeable && !atomic_load(&r->dead) &&
		       __atomic_load_n(&vm->merging, __ATOMIC_ACQUIRE) && !atomic_load(&ctx->h->stopping)) {
			uintptr_t at = (uintptr_t)(r->hva + idx * MV_PAGE_SIZE);
			uint64_t n = (MV_CHUNK_SIZE - (at & (MV_CHUNK_SIZE - 1))) >> MV_PAGE_SHIFT;
			if (n > r->npages - idx)
				n = r->npages - idx;
			scan_chunk(ctx, r, idx, (unsigned)n);
			idx += n;
			rcu_read_unlock();
			throttle(ctx);
			rcu_read_lock();
			if (!map_holds(rcu_dereference(vm->map), r))
				break; /* removed while we were out: r may be gone */
		}
		rcu_read_unlock();
	}
}
