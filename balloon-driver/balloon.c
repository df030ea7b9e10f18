/* balloon.c - the guest's virtio-balloon driver: setup, the step loop, statistics.
 *
 * Overview
 *
 * The driver moves the balloon toward the device's num_pages in non-blocking steps
 * (mvg_balloon_step), the port calling it again after the time it returns or when the
 * device interrupts. A step:
 *  1. reads and acknowledges InterruptStatus; on a configuration change (or once a
 *     second) re-reads num_pages and the hint command id, and stops if the device
 *     asks for a reset;
 *  2. collects the used buffers of every queue: acked inflate requests put their pages
 *     in the balloon (`acked`, written to `actual`), acked deflates take them out, the
 *     returned statistics buffer is refilled and sent again at once;
 *  3. moves toward the target with up to `inflight` requests of up to `pfns_per_req`
 *     PFNs in flight (requests.c): inflate takes 2 MiB runs first, then 4 KiB pages,
 *     and never lets the guest's free memory fall under the floor: there it stops and
 *     sets at_floor, looks again four times a second, and keeps `actual` true, so the
 *     host sees the shortfall without the guest spinning or logging; deflate gives
 *     4 KiB pages back first, then runs (splitting one for the last < 512 pages);
 *  4. runs free page reporting and free page hinting (freepage.c);
 *  5. writes `actual` if the acks changed it.
 * The balloon itself is two stacks in bookkeeping pages (pagelist.c): single PFNs and
 * run indexes. Every value the device hands back (used ids, lengths, indexes) is
 * checked (virtq.c); a bad one is ignored and recorded in the status, never trusted.
 */
#include "drv.h"

#define SECOND        (1000 * MVG_MS)
#define STATS_RING    8
#define REPORT_RING   64
#define HINT_RING     MVG_VQ_MAX

void mvg_config_init(struct mvg_config *cfg)
{
	*cfg = (struct mvg_config){
		.floor_bytes = 0,
		.features = VB_F_ALL & ~(1ull << VB_F_PAGE_POISON), /* see mvg.h */
		.inflight = 8,
		.pfns_per_req = 4096,
		.stats_period_ns = 0,
		.report_period_ns = 2 * SECOND,
	};
}

size_t mvg_balloon_size(void)
{
	return sizeof(struct mvg_balloon);
}

void mvg__fail(struct mvg_balloon *d, int err, const char *why)
{
	if (d->error)
		return; /* the first error is the one reported, and logged once */
	d->error = err;
	if (d->p.log)
		d->p.log(d->p.ctx, why);
}

/* Pages the guest can spare above the floor right now. */
uint64_t mvg__free_budget(struct mvg_balloon *d)
{
	uint64_t free = d->p.free_bytes(d->p.ctx);
	return free > d->cfg.floor_bytes ? (free - d->cfg.floor_bytes) / MVG_PAGE_SIZE : 0;
}

void mvg__write_actual(struct mvg_balloon *d)
{
	uint32_t actual = (uint32_t)d->acked;
	if (d->stopped || (d->actual_valid && actual == d->actual_written))
		return;
	mvg__config_write(d, VBCFG_ACTUAL, actual);
	d->actual_written = actual;
	d->actual_valid = true;
}

/* Write `pages` pages from gpa with poison_val (PAGE_POISON) or zeros: pages the host
 * may have dropped, before the guest gets them back. */
void mvg__page_init(struct mvg_balloon *d, uint64_t gpa, uint32_t pages)
{
	uint32_t v = d->features >> VB_F_PAGE_POISON & 1 ? vle32(d->cfg.poison_val) : 0;
	for (uint32_t k = 0; k < pages; k++) {
		uint32_t *w = d->p.map(d->p.ctx, gpa + (uint64_t)k * MVG_PAGE_SIZE);
		if (!w)
			continue;
		if (!v)
			__builtin_memset(w, 0, MVG_PAGE_SIZE);
		else
			for (unsigned i = 0; i < MVG_PAGE_SIZE / 4; i++)
				w[i] = v;
	}
}

/* ---- statistics ---- */

static void put_stat(uint8_t *p, uint16_t tag, uint64_t val)
{
	uint16_t t = vle16(tag);
	uint64_t v = vle64(val);
	__builtin_memcpy(p, &t, 2);
	__builtin_memcpy(p + 2, &v, 8);
}

/* Fresh statistics into the buffer; returns its length (unknown values are left out). */
static uint32_t stats_fill(struct mvg_balloon *d)
{
	struct mvg_guest_stats gs;
	__builtin_memset(&gs, 0xff, sizeof(gs));
	d->p.get_stats(d->p.ctx, &gs);
	const uint64_t v[VB_STAT_NR] = {
		gs.swap_in, gs.swap_out, gs.major_faults, gs.minor_faults, gs.free_bytes,
		gs.total_bytes, gs.avail_bytes, gs.cache_bytes, gs.htlb_alloc, gs.htlb_fail,
		gs.oom_kills, gs.alloc_stalls, gs.async_scans, gs.direct_scans,
		gs.async_reclaims, gs.direct_reclaims,
	};
	uint32_t n = 0;
	for (uint16_t tag = 0; tag < VB_STAT_NR; tag++)
		if (v[tag] != UINT64_MAX)
			put_stat(d->stats_va + VB_STAT_ENTRY * n++, tag, v[tag]);
	if (!n) /* nothing known: one entry with a tag every device ignores */
		put_stat(d->stats_va + VB_STAT_ENTRY * n++, 0xffff, 0);
	return n * VB_STAT_ENTRY;
}

static void stats_send(struct mvg_balloon *d)
{
	struct mvg__vq *q = &d->vq[VQ_STATS];
	struct mvg__seg seg = { .gpa = d->stats_gpa, .len = stats_fill(d) };
	if (mvg__vq_add(q, &seg, 1, 0))
		return;
	d->stats_out = true;
	d->st.stats_sent++;
	mvg__vq_kick(d, q);
}

static void stats_collect(struct mvg_balloon *d)
{
	uint16_t tok;
	uint32_t len;
	bool back = false;
	while (mvg__vq_get(d, &d->vq[VQ_STATS], &tok, &len) == 1)
		back = true;
	if (back) {
		d->stats_out = false;
		if (!d->stopped)
			stats_send(d); /* the device asked: answer with fresh figures */
	}
}

/* ---- setup ---- */

static void sanitize(struct mvg_config *c)
{
	c->features &= VB_F_ALL;
	if (!c->inflight)
		c->inflight = 8;
	c->inflight = (unsigned)mvg__min(c->inflight, MVG_MAX_INFLIGHT);
	if (!c->pfns_per_req)
		c->pfns_per_req = 4096;
	c->pfns_per_req = (c->pfns_per_req + MVG_RUN_PAGES - 1) / MVG_RUN_PAGES * MVG_RUN_PAGES;
	c->pfns_per_req = (unsigned)mvg__min(c->pfns_per_req, MVG_MAX_PFNS);
}

static unsigned ring_for(unsigned descs)
{
	unsigned n = 8;
	while (n < descs && n < MVG_VQ_MAX)
		n <<= 1;
	return n;
}

/* Queues in the compact numbering of Linux and QEMU: absent features take no number. */
static int setup_queues(struct mvg_balloon *d)
{
	unsigned reqs = ring_for(d->cfg.inflight * d->req_pages);
	const struct { int vq, feature; unsigned num; } order[] = {
		{ VQ_INFLATE, -1, reqs }, { VQ_DEFLATE, -1, reqs },
		{ VQ_STATS, VB_F_STATS_VQ, STATS_RING }, { VQ_HINT, VB_F_FREE_PAGE_HINT, HINT_RING },
		{ VQ_REPORT, VB_F_PAGE_REPORTING, REPORT_RING },
	};
	unsigned index = 0;
	for (unsigned i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
		if (order[i].feature >= 0 && !(d->features >> order[i].feature & 1))
			continue;
		int err = mvg__transport_queue(d, &d->vq[order[i].vq], index++, order[i].num);
		if (err)
			return err;
	}
	return 0;
}

static int alloc_page_mapped(struct mvg_balloon *d, uint64_t *gpa, void **va)
{
	uint64_t g;
	if (d->p.alloc_page(d->p.ctx, &g))
		return -1;
	*gpa = g; /* freed by release_all, mapped or not */
	*va = d->p.map(d->p.ctx, g);
	return *va ? 0 : -1;
}

static int setup_buffers(struct mvg_balloon *d)
{
	if (mvg__req_alloc(d))
		return -3;
	if (d->vq[VQ_STATS].num && alloc_page_mapped(d, &d->stats_gpa, (void **)&d->stats_va))
		return -3;
	if (d->vq[VQ_HINT].num && alloc_page_mapped(d, &d->hint_page_gpa, (void **)&d->hint_page_va))
		return -3;
	return 0;
}

static void release_all(struct mvg_balloon *d)
{
	mvg__balloon_drop_all(d);
	mvg__freepage_drop(d);
	if (d->stats_gpa != MVG_NONE)
		d->p.free_page(d->p.ctx, d->stats_gpa);
	if (d->hint_page_gpa != MVG_NONE)
		d->p.free_page(d->p.ctx, d->hint_page_gpa);
	d->stats_gpa = d->hint_page_gpa = MVG_NONE;
	mvg__req_release(d);
	for (unsigned i = 0; i < VQ_NR; i++)
		mvg__vq_release(d, &d->vq[i]);
}

static void reset_state(struct mvg_balloon *d, const struct mvg_platform *p,
                        const struct mvg_config *cfg)
{
	__builtin_memset(d, 0, sizeof(*d));
	d->p = *p;
	if (cfg)
		d->cfg = *cfg;
	else
		mvg_config_init(&d->cfg);
	sanitize(&d->cfg);
	d->req_pages = (d->cfg.pfns_per_req + MVG_PFNS_PER_PAGE - 1) / MVG_PFNS_PER_PAGE;
	for (unsigned w = 0; w < 2; w++)
		for (unsigned i = 0; i < MVG_MAX_INFLIGHT; i++)
			for (unsigned k = 0; k < MVG_MAX_REQ_PAGES; k++)
				d->req[w][i].buf[k] = MVG_NONE;
	for (unsigned i = 0; i < VQ_NR; i++)
		d->vq[i].ring_gpa[0] = d->vq[i].ring_gpa[1] = MVG_NONE;
	mvg__stack_init(&d->pages);
	mvg__stack_init(&d->runs);
	mvg__stack_init(&d->hint_pages);
	mvg__stack_init(&d->hint_runs);
	d->stats_gpa = d->hint_page_gpa = MVG_NONE;
}

static void read_config(struct mvg_balloon *d)
{
	if (mvg__rd(d, VMMIO_STATUS) & VSTAT_NEEDS_RESET) {
		d->stopped = true;
		mvg__fail(d, MVG_ERR_RESET, "device needs a reset: balloon driver stopped");
		return;
	}
	uint32_t target = mvg__config_read(d, VBCFG_NUM_PAGES);
	if (target != d->target)
		d->floor_check_ns = 0; /* a new target: look at free memory again at once */
	d->target = target;
	if (d->features >> VB_F_FREE_PAGE_HINT & 1)
		d->hint_cmd = mvg__config_read(d, VBCFG_HINT_CMD_ID);
	d->config_check_ns = d->now + SECOND;
}

int mvg_balloon_init(struct mvg_balloon *d, const struct mvg_platform *p, const struct mvg_config *cfg)
{
	reset_state(d, p, cfg);
	d->stopped = true; /* until it works */
	if (mvg__transport_probe(d))
		return -1;
	int err = mvg__transport_negotiate(d, d->cfg.features);
	if (err)
		return err;
	d->stopped = false;
	err = setup_queues(d);
	if (!err)
		err = setup_buffers(d);
	if (err)
		goto fail;
	if (d->features >> VB_F_PAGE_POISON & 1)
		mvg__config_write(d, VBCFG_POISON_VAL, d->cfg.poison_val);
	mvg__transport_set_status(d, VSTAT_DRIVER_OK);
	d->now = d->p.now_ns(d->p.ctx);
	d->report_next_ns = d->now + d->cfg.report_period_ns;
	if (d->vq[VQ_STATS].num)
		stats_send(d);
	read_config(d);
	mvg__write_actual(d);
	return 0;
fail:
	mvg__transport_set_status(d, VSTAT_FAILED);
	release_all(d);
	d->stopped = true;
	return err;
}

/* ---- the step ---- */

static uint64_t until(const struct mvg_balloon *d, uint64_t deadline, uint64_t sleep)
{
	uint64_t left = deadline > d->now ? deadline - d->now : 0;
	return left < sleep ? left : sleep;
}

/* How long the port may sleep: until an interrupt, or the next thing to look at. */
static uint64_t next_sleep(const struct mvg_balloon *d)
{
	uint64_t sleep = until(d, d->config_check_ns, SECOND);
	if (d->at_floor)
		sleep = until(d, d->floor_check_ns, sleep);
	if (d->vq[VQ_REPORT].num && d->p.isolate_unreported && d->cfg.report_period_ns &&
	    !d->report_n)
		sleep = until(d, d->report_next_ns, sleep);
	return sleep; /* work waiting for the device resumes on its interrupt */
}

uint64_t mvg_balloon_step(struct mvg_balloon *d)
{
	d->now = d->p.now_ns(d->p.ctx);
	if (d->stopped)
		return SECOND;
	uint32_t isr = mvg__interrupt_ack(d);
	if (isr & VMMIO_INT_CONFIG || d->now >= d->config_check_ns)
		read_config(d);
	if (d->stopped)
		return SECOND;
	mvg__balloon_collect(d, VQ_INFLATE);
	mvg__balloon_collect(d, VQ_DEFLATE);
	stats_collect(d);
	mvg__report_collect(d);
	mvg__hint_collect(d);
	mvg__balloon_move(d);
	if (d->cfg.report_period_ns)
		mvg__report_step(d);
	mvg__hint_step(d);
	mvg__write_actual(d);
	return next_sleep(d);
}

void mvg_balloon_status(const struct mvg_balloon *d, struct mvg_status *out)
{
	*out = d->st;
	out->target_pages = d->target;
	out->actual_pages = d->actual_written;
	out->ballooned_runs = d->runs.count;
	out->ballooned_pages = d->pages.count;
	/* stopped, and `actual` final: no request in flight any more */
	out->at_floor = (d->at_floor || d->oom_hold) && !d->busy[VQ_INFLATE] && !d->busy[VQ_DEFLATE];
	out->hint_held_pages = d->hint_pages.count + d->hint_runs.count * MVG_RUN_PAGES;
	out->bookkeeping_pages = d->pages.nr_pages + d->runs.nr_pages + d->hint_pages.nr_pages +
	                         d->hint_runs.nr_pages;
	out->negotiated = d->features;
	out->error = d->error;
}

void mvg_balloon_remove(struct mvg_balloon *d)
{
	if (!d->stopped || d->vq[VQ_INFLATE].num)
		mvg__transport_reset(d);
	d->stopped = true;
	release_all(d);
}
