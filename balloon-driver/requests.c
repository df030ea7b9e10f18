/* requests.c - inflate and deflate requests, their acks, and deflate on OOM.
 *
 * A request is a sorted array of u32 PFNs in guest pages the driver owns (allocated at
 * init, one set per in-flight slot). It holds either whole 2 MiB runs (kind REQ_RUNS:
 * 512 PFNs each) or single 4 KiB pages (REQ_PAGES), never both, so its ack knows which
 * stack the pages go to without looking anything up. Inflated pages are counted in
 * `acked` (the `actual` the host sees) only once the device acks them; deflated pages
 * leave `acked` on the ack too. With MUST_TELL_HOST the pages of a deflate request go
 * back to the guest on its ack; without it as soon as the request is queued and notified.
 */
#include "drv.h"

#define OOM_WAIT_NS (100 * MVG_MS) /* longest deflate-on-OOM wait for the host's acks */

int mvg__req_alloc(struct mvg_balloon *d)
{
	for (unsigned w = 0; w < 2; w++)
		for (unsigned i = 0; i < d->cfg.inflight; i++)
			for (unsigned k = 0; k < d->req_pages; k++) {
				struct mvg__req *r = &d->req[w][i];
				uint64_t gpa;
				if (d->p.alloc_page(d->p.ctx, &gpa))
					return -1;
				r->buf[k] = gpa; /* freed by mvg__req_release, mapped or not */
				r->buf_va[k] = d->p.map(d->p.ctx, gpa);
				if (!r->buf_va[k])
					return -1;
			}
	return 0;
}

void mvg__req_release(struct mvg_balloon *d)
{
	for (unsigned w = 0; w < 2; w++)
		for (unsigned i = 0; i < MVG_MAX_INFLIGHT; i++)
			for (unsigned k = 0; k < MVG_MAX_REQ_PAGES; k++) {
				struct mvg__req *r = &d->req[w][i];
				if (r->buf[k] != MVG_NONE)
					d->p.free_page(d->p.ctx, r->buf[k]);
				r->buf[k] = MVG_NONE;
			}
}

static uint32_t req_pfn(const struct mvg__req *r, uint32_t i)
{
	return vle32(r->buf_va[i / MVG_PFNS_PER_PAGE][i % MVG_PFNS_PER_PAGE]);
}

static void set_pfn(struct mvg__req *r, uint32_t i, uint32_t pfn)
{
	r->buf_va[i / MVG_PFNS_PER_PAGE][i % MVG_PFNS_PER_PAGE] = vle32(pfn);
}

/* A free slot of queue `which` whose request the ring can take, or NULL. */
static struct mvg__req *free_slot(struct mvg_balloon *d, unsigned which)
{
	struct mvg__vq *q = &d->vq[which];
	if (d->stopped || !q->num || q->broken || q->nr_free < d->req_pages)
		return 0;
	for (unsigned i = 0; i < d->cfg.inflight; i++)
		if (d->req[which][i].state == REQ_FREE)
			return &d->req[which][i];
	return 0;
}

/* Fill the buffer from d->scratch (n entries, sorted): PFNs, or run indexes expanded. */
static void fill_buffer(struct mvg_balloon *d, struct mvg__req *r, uint32_t n)
{
	uint32_t k = 0;
	if (r->kind == REQ_RUNS) {
		for (uint32_t i = 0; i < n; i++)
			for (uint32_t j = 0; j < MVG_RUN_PAGES; j++)
				set_pfn(r, k++, d->scratch[i] * MVG_RUN_PAGES + j);
	} else {
		for (; k < n; k++)
			set_pfn(r, k, d->scratch[k]);
	}
	r->npfns = k;
}

/* Queue the request's buffer (contiguous pages coalesced into one descriptor). */
static void submit(struct mvg_balloon *d, unsigned which, struct mvg__req *r)
{
	struct mvg__seg seg[MVG_MAX_REQ_PAGES];
	unsigned nseg = 0;
	uint64_t bytes = (uint64_t)r->npfns * 4;
	for (unsigned k = 0; (uint64_t)k * MVG_PAGE_SIZE < bytes; k++) {
		uint32_t len = (uint32_t)mvg__min(MVG_PAGE_SIZE, bytes - (uint64_t)k * MVG_PAGE_SIZE);
		if (nseg && seg[nseg - 1].gpa + seg[nseg - 1].len == r->buf[k])
			seg[nseg - 1].len += len;
		else
			seg[nseg++] = (struct mvg__seg){ .gpa = r->buf[k], .len = len };
	}
	uint16_t slot = (uint16_t)(r - d->req[which]);
	if (mvg__vq_add(&d->vq[which], seg, nseg, slot)) { /* free_slot checked the room */
		mvg__fail(d, MVG_ERR_PROTO, "no descriptors for a request");
		return;
	}
	r->state = REQ_INFLIGHT;
	d->busy[which]++;
	if (which == VQ_INFLATE) {
		d->pending_in += r->npfns;
		d->st.inflate_reqs++;
	} else {
		d->pending_out += r->npfns;
		d->st.deflate_reqs++;
	}
	mvg__vq_kick(d, &d->vq[which]);
}

/* ---- inflate ---- */

static uint32_t take_runs(struct mvg_balloon *d, uint64_t k)
{
	uint32_t n = 0;
	uint64_t gpa;
	if (mvg__stack_reserve(d, &d->runs, k))
		return 0;
	uint64_t room = mvg__min(k, mvg__free_budget(d) / MVG_RUN_PAGES); /* after the reservation */
	while (n < room && !d->p.alloc_run(d->p.ctx, &gpa))
		d->scratch[n++] = (uint32_t)(gpa / MVG_RUN_SIZE);
	mvg__stack_unreserve(&d->runs, k - n);
	return n;
}

static uint32_t take_pages(struct mvg_balloon *d, uint64_t k)
{
	uint32_t n = 0;
	uint64_t gpa;
	if (mvg__stack_reserve(d, &d->pages, k))
		return 0;
	uint64_t room = mvg__min(k, mvg__free_budget(d)); /* the reservation took some */
	while (n < room && !d->p.alloc_page(d->p.ctx, &gpa))
		d->scratch[n++] = (uint32_t)(gpa >> VB_PFN_SHIFT);
	mvg__stack_unreserve(&d->pages, k - n);
	return n;
}

/* Fill one inflate request with up to `want` pages: runs while at least a run is
 * wanted and free above the floor, single pages after. Returns the pages taken. */
static uint64_t inflate_one(struct mvg_balloon *d, struct mvg__req *r, uint64_t want)
{
	uint64_t budget = mvg__free_budget(d), per_req = d->cfg.pfns_per_req;
	uint32_t n = 0;
	if (want >= MVG_RUN_PAGES && budget >= MVG_RUN_PAGES)
		n = take_runs(d, mvg__min(mvg__min(want, per_req), budget) / MVG_RUN_PAGES);
	if (n) {
		r->kind = REQ_RUNS;
	} else {
		uint64_t k = mvg__min(mvg__min(want, per_req), budget);
		n = k ? take_pages(d, k) : 0;
		r->kind = REQ_PAGES;
	}
	if (!n)
		return 0;
	mvg__sort_u32(d->scratch, n);
	fill_buffer(d, r, n);
	submit(d, VQ_INFLATE, r);
	return r->npfns;
}

static void inflate(struct mvg_balloon *d, uint64_t want)
{
	if (d->busy[VQ_DEFLATE])
		return; /* one direction at a time */
	if (d->oom_hold)
		return;
	if (d->at_floor && d->now < d->floor_check_ns)
		return;
	d->at_floor = false;
	struct mvg__req *r;
	while (want && (r = free_slot(d, VQ_INFLATE))) {
		uint64_t n = inflate_one(d, r, want);
		if (!n) {
			d->at_floor = true;
			d->floor_check_ns = d->now + 250 * MVG_MS;
			break;
		}
		want -= n;
	}
}

/* ---- deflate ---- */

/* The request's pages go back to the guest; with PAGE_POISON written with poison_val
 * first (spec 5.5.6.4: deflated pages are initialized when reused). */
static void give_back(struct mvg_balloon *d, const struct mvg__req *r)
{
	bool poison = d->features >> VB_F_PAGE_POISON & 1;
	uint32_t step = r->kind == REQ_RUNS ? MVG_RUN_PAGES : 1;
	for (uint32_t i = 0; i < r->npfns; i += step) {
		uint64_t gpa = (uint64_t)req_pfn(r, i) << VB_PFN_SHIFT;
		if (poison)
			mvg__page_init(d, gpa, step);
		if (step == 1)
			d->p.free_page(d->p.ctx, gpa);
		else
			d->p.free_run(d->p.ctx, gpa);
	}
}

/* Pop `want` (< 512) pages out of one ballooned run; the rest of the run stays in the
 * balloon as single pages. Returns the pages put in d->scratch. */
static uint32_t split_run(struct mvg_balloon *d, uint64_t want)
{
	uint32_t run;
	if (mvg__stack_reserve(d, &d->pages, MVG_RUN_PAGES - want))
		return 0;
	mvg__stack_unreserve(&d->pages, MVG_RUN_PAGES - want);
	mvg__stack_pop(d, &d->runs, &run);
	uint32_t pfn0 = run * MVG_RUN_PAGES;
	for (uint32_t j = (uint32_t)want; j < MVG_RUN_PAGES; j++)
		mvg__stack_push(d, &d->pages, pfn0 + j);
	for (uint32_t j = 0; j < want; j++)
		d->scratch[j] = pfn0 + j;
	return (uint32_t)want;
}

/* Fill one deflate request with up to `want` pages: single pages first, then runs.
 * Returns the pages put in; *freed counts those already given back to the guest. */
static uint64_t deflate_one(struct mvg_balloon *d, struct mvg__req *r, uint64_t want,
                            uint64_t *freed)
{
	uint64_t per_req = d->cfg.pfns_per_req;
	uint32_t n = 0, v;
	r->kind = REQ_PAGES;
	if (d->pages.count) {
		uint64_t k = mvg__min(mvg__min(want, per_req), d->pages.count);
		while (n < k && !mvg__stack_pop(d, &d->pages, &v))
			d->scratch[n++] = v;
	} else if (d->runs.count && want >= MVG_RUN_PAGES) {
		uint64_t k = mvg__min(mvg__min(want, per_req) / MVG_RUN_PAGES, d->runs.count);
		while (n < k && !mvg__stack_pop(d, &d->runs, &v))
			d->scratch[n++] = v;
		r->kind = REQ_RUNS;
	} else if (d->runs.count) {
		n = split_run(d, want);
		if (!n && !mvg__stack_pop(d, &d->runs, &v)) { /* no bookkeeping page for the */
			d->scratch[n++] = v;                       /* rest: the whole run goes */
			r->kind = REQ_RUNS;
		}
	}
	if (!n)
		return 0;
	mvg__sort_u32(d->scratch, n);
	fill_buffer(d, r, n);
	submit(d, VQ_DEFLATE, r); /* the device is told (queued and notified) first */
	if (!(d->features >> VB_F_MUST_TELL_HOST & 1)) {
		give_back(d, r);
		*freed += r->npfns;
	}
	return r->npfns;
}

static uint64_t deflate(struct mvg_balloon *d, uint64_t want, uint64_t *freed)
{
	uint64_t done = 0;
	struct mvg__req *r;
	while (done < want && (r = free_slot(d, VQ_DEFLATE))) {
		uint64_t n = deflate_one(d, r, want - done, freed);
		if (!n)
			break;
		done += n;
	}
	mvg__stack_trim(d, &d->pages);
	mvg__stack_trim(d, &d->runs);
	return done;
}

/* ---- acks ---- */

static void inflate_done(struct mvg_balloon *d, const struct mvg__req *r)
{
	bool runs = r->kind == REQ_RUNS;
	struct mvg__stack *s = runs ? &d->runs : &d->pages;
	uint32_t step = runs ? MVG_RUN_PAGES : 1, shift = runs ? 9 : 0; /* 512 = 1 << 9 */
	mvg__stack_unreserve(s, r->npfns / step);
	for (uint32_t i = 0; i < r->npfns; i += step)
		if (mvg__stack_push(d, s, req_pfn(r, i) >> shift))
			mvg__fail(d, MVG_ERR_NOMEM, "no bookkeeping page for a ballooned page");
	d->pending_in -= r->npfns;
	d->acked += r->npfns;
}

static void deflate_done(struct mvg_balloon *d, const struct mvg__req *r)
{
	if (d->features >> VB_F_MUST_TELL_HOST & 1) {
		give_back(d, r);
		d->freed_on_ack += r->npfns;
	}
	d->pending_out -= r->npfns;
	d->acked -= r->npfns;
}

/* Take the device's acks of queue `which` (VQ_INFLATE or VQ_DEFLATE). */
void mvg__balloon_collect(struct mvg_balloon *d, unsigned which)
{
	uint16_t tok;
	uint32_t len;
	while (mvg__vq_get(d, &d->vq[which], &tok, &len) == 1) {
		struct mvg__req *r = &d->req[which][tok < MVG_MAX_INFLIGHT ? tok : 0];
		if (tok >= d->cfg.inflight || r->state != REQ_INFLIGHT) {
			mvg__fail(d, MVG_ERR_PROTO, "ack of a request not in flight");
			continue;
		}
		if (which == VQ_INFLATE)
			inflate_done(d, r);
		else
			deflate_done(d, r);
		r->state = REQ_FREE;
		d->busy[which]--;
	}
}

/* Move toward the target with as many requests in flight as allowed. */
void mvg__balloon_move(struct mvg_balloon *d)
{
	uint64_t have = d->acked + d->pending_in - d->pending_out, freed = 0;
	if (d->stopped)
		return;
	if (d->oom_hold && d->target != d->oom_target)
		d->oom_hold = false; /* the host has a new target: it has seen the OOM */
	if (d->target > have) {
		inflate(d, d->target - have);
	} else {
		d->at_floor = false;
		if (d->target < have && !d->busy[VQ_INFLATE])
			deflate(d, have - d->target, &freed);
	}
}

/* ---- deflate on OOM ---- */

uint64_t mvg_balloon_oom(struct mvg_balloon *d, uint64_t bytes)
{
	if (!(d->features >> VB_F_DEFLATE_ON_OOM & 1) || d->stopped)
		return 0;
	d->now = d->p.now_ns(d->p.ctx);
	uint64_t want = bytes / MVG_PAGE_SIZE ? bytes / MVG_PAGE_SIZE : 1, freed = 0;
	uint64_t hinted = mvg__hint_give_back(d, want), acked0 = d->freed_on_ack, asked = 0;
	want -= mvg__min(want, hinted);
	uint64_t deadline = d->now + OOM_WAIT_NS;
	bool must_tell = d->features >> VB_F_MUST_TELL_HOST & 1;
	mvg__balloon_collect(d, VQ_INFLATE);
	mvg__balloon_collect(d, VQ_DEFLATE);
	for (;;) {
		uint64_t n = deflate(d, want > asked ? want - asked : 0, &freed);
		asked += n;
		uint64_t got = freed + d->freed_on_ack - acked0;
		if (got >= want || !d->busy[VQ_DEFLATE] || d->now >= deadline)
			break;
		if (!must_tell && !n && !d->pages.count && !d->runs.count)
			break; /* the balloon is empty: nothing to wait for */
		d->p.wait(d->p.ctx, deadline - d->now);
		d->now = d->p.now_ns(d->p.ctx);
		mvg__balloon_collect(d, VQ_DEFLATE);
	}
	uint64_t got = freed + d->freed_on_ack - acked0;
	d->oom_hold = true;
	d->oom_target = d->target;
	d->st.oom_deflated_pages += got;
	mvg__write_actual(d);
	return (got + hinted) * MVG_PAGE_SIZE;
}

/* After a reset: every page the driver took from the guest goes back to it. */
void mvg__balloon_drop_all(struct mvg_balloon *d)
{
	uint32_t v;
	for (unsigned w = 0; w < 2; w++)
		for (unsigned i = 0; i < MVG_MAX_INFLIGHT; i++) {
			struct mvg__req *r = &d->req[w][i];
			bool freed_already = w == VQ_DEFLATE && !(d->features >> VB_F_MUST_TELL_HOST & 1);
			if (r->state == REQ_INFLIGHT && !freed_already)
				give_back(d, r);
			r->state = REQ_FREE;
		}
	d->busy[0] = d->busy[1] = 0;
	bool poison = d->features >> VB_F_PAGE_POISON & 1;
	while (!mvg__stack_pop(d, &d->pages, &v)) {
		if (poison)
			mvg__page_init(d, (uint64_t)v << VB_PFN_SHIFT, 1);
		d->p.free_page(d->p.ctx, (uint64_t)v << VB_PFN_SHIFT);
	}
	while (!mvg__stack_pop(d, &d->runs, &v)) {
		if (poison)
			mvg__page_init(d, (uint64_t)v * MVG_RUN_SIZE, MVG_RUN_PAGES);
		d->p.free_run(d->p.ctx, (uint64_t)v * MVG_RUN_SIZE);
	}
	mvg__stack_release(d, &d->pages);
	mvg__stack_release(d, &d->runs);
	d->acked = d->pending_in = d->pending_out = 0;
}
