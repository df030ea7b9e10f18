/* freepage.c - free page reporting and free page hinting: telling the host about free
 * guest memory without giving it up.
 *
 * Reporting: every report_period_ns the platform isolates up to 32 free 2 MiB runs it
 * has not reported since they were last allocated; they go to the device as one chain
 * of device-writable buffers, and back to the platform (marked reported) on the ack.
 * A full report is followed by the next one at once, a short one ends the pass.
 *
 * Hinting: when the device posts a new command id (>= 2) the driver sends the id, then
 * takes free memory from the platform (2 MiB runs, then 4 KiB pages coalesced into
 * contiguous buffers, never below the floor) and sends it as device-writable buffers.
 * Once the device has returned every hint buffer (or changed the command id) the
 * driver ends the run with STOP. The pages stay with the driver until the device posts
 * DONE, as the spec's flow has it: before DONE the host may still drop their contents,
 * so a page given back earlier (deflate on OOM) is written first (zero, or poison_val).
 * A new command id after STOP starts another run; the pages held stay held. Hinted
 * pages are never part of the balloon and never counted in `actual`.
 */
#include "drv.h"

#define HINT_MAX_PAGES MVG_RUN_PAGES /* pages coalesced into one hint buffer */

/* ---- reporting ---- */

void mvg__report_step(struct mvg_balloon *d)
{
	struct mvg__vq *q = &d->vq[VQ_REPORT];
	if (!q->num || q->broken || d->stopped || !d->p.isolate_unreported || d->report_n ||
	    d->now < d->report_next_ns)
		return;
	struct mvg__seg seg[MVG_REPORT_RUNS];
	unsigned n = 0, room = mvg__min(MVG_REPORT_RUNS, q->nr_free);
	while (n < room && !d->p.isolate_unreported(d->p.ctx, &d->report_gpa[n])) {
		seg[n] = (struct mvg__seg){ .gpa = d->report_gpa[n], .len = MVG_RUN_SIZE, .write = true };
		n++;
	}
	d->report_next_ns = d->now + (n == MVG_REPORT_RUNS ? 0 : d->cfg.report_period_ns);
	if (!n || mvg__vq_add(q, seg, n, 0))
		return; /* room was checked: add does not fail */
	d->report_n = n;
	mvg__vq_kick(d, q);
}

void mvg__report_collect(struct mvg_balloon *d)
{
	uint16_t tok;
	uint32_t len;
	while (mvg__vq_get(d, &d->vq[VQ_REPORT], &tok, &len) == 1) {
		for (unsigned i = 0; i < d->report_n; i++)
			d->p.putback_reported(d->p.ctx, d->report_gpa[i]);
		d->st.reported_runs += d->report_n;
		d->report_n = 0;
	}
}

/* ---- hinting ---- */

static bool hint_add(struct mvg_balloon *d, uint64_t gpa, uint64_t pages)
{
	struct mvg__seg seg = { .gpa = gpa, .len = (uint32_t)(pages * MVG_PAGE_SIZE), .write = true };
	if (mvg__vq_add(&d->vq[VQ_HINT], &seg, 1, HTOK_PAGES))
		return false;
	d->hint_out++;
	d->st.hinted_pages += pages;
	return true;
}

/* One free run as a hint, if a whole one is free above the floor. */
static bool hint_run(struct mvg_balloon *d)
{
	uint64_t gpa;
	if (mvg__stack_reserve(d, &d->hint_runs, 1))
		return false;
	mvg__stack_unreserve(&d->hint_runs, 1); /* the push below finds its slot */
	if (mvg__free_budget(d) < MVG_RUN_PAGES || d->p.alloc_run(d->p.ctx, &gpa))
		return false;
	mvg__stack_push(d, &d->hint_runs, (uint32_t)(gpa / MVG_RUN_SIZE));
	return hint_add(d, gpa, MVG_RUN_PAGES);
}

/* Up to 512 single pages above the floor, contiguous ones in one buffer; false when
 * none is left. A page that breaks contiguity flushes the buffer before it, so the loop
 * goes on only while that flush, the last one and STOP all find a descriptor. */
static bool hint_pages(struct mvg_balloon *d)
{
	struct mvg__vq *q = &d->vq[VQ_HINT];
	uint64_t start = 0, n = 0, taken = 0, gpa, want = HINT_MAX_PAGES;
	if (mvg__stack_reserve(d, &d->hint_pages, want))
		return false;
	uint64_t budget = mvg__min(want, mvg__free_budget(d)); /* after the reservation */
	while (taken < budget && (!n || q->nr_free >= 3) && !d->p.alloc_page(d->p.ctx, &gpa)) {
		mvg__stack_unreserve(&d->hint_pages, 1);
		want--;
		mvg__stack_push(d, &d->hint_pages, (uint32_t)(gpa >> VB_PFN_SHIFT));
		taken++;
		if (n && gpa != start + n * MVG_PAGE_SIZE) {
			hint_add(d, start, n);
			n = 0;
		}
		if (!n)
			start = gpa;
		n++;
	}
	mvg__stack_unreserve(&d->hint_pages, want);
	if (n)
		hint_add(d, start, n);
	return taken > 0;
}

/* Send free memory while the ring has room (one descriptor kept for STOP). */
static void hint_send(struct mvg_balloon *d)
{
	struct mvg__vq *q = &d->vq[VQ_HINT];
	while (!d->hint_exhausted && q->nr_free >= 2)
		if (!hint_run(d) && !hint_pages(d))
			d->hint_exhausted = true;
}

static void hint_cmd(struct mvg_balloon *d, uint32_t *word, uint32_t id, uint16_t tok)
{
	struct mvg__seg seg = { .gpa = d->hint_page_gpa + (uint64_t)((uint8_t *)word -
	                               (uint8_t *)d->hint_page_va), .len = 4 };
	*word = vle32(id);
	if (mvg__vq_add(&d->vq[VQ_HINT], &seg, 1, tok) == 0) {
		if (tok == HTOK_CMD)
			d->hint_cmd_out = true;
		else
			d->hint_stop_out = true;
	}
}

/* Give up to `max` hinted pages back to the platform (single pages first, then whole
 * runs); `init` writes them first, as the spec asks of pages released before DONE.
 * Returns the pages given back. */
static uint64_t hint_release(struct mvg_balloon *d, uint64_t max, bool init)
{
	uint64_t n = 0;
	uint32_t v;
	while (n < max && !mvg__stack_pop(d, &d->hint_pages, &v)) {
		if (init)
			mvg__page_init(d, (uint64_t)v << VB_PFN_SHIFT, 1);
		d->p.free_page(d->p.ctx, (uint64_t)v << VB_PFN_SHIFT);
		n++;
	}
	while (n < max && !mvg__stack_pop(d, &d->hint_runs, &v)) {
		if (init)
			mvg__page_init(d, (uint64_t)v * MVG_RUN_SIZE, MVG_RUN_PAGES);
		d->p.free_run(d->p.ctx, (uint64_t)v * MVG_RUN_SIZE);
		n += MVG_RUN_PAGES;
	}
	mvg__stack_trim(d, &d->hint_pages);
	mvg__stack_trim(d, &d->hint_runs);
	if (!d->hint_pages.count && !d->hint_runs.count) {
		mvg__stack_release(d, &d->hint_pages);
		mvg__stack_release(d, &d->hint_runs);
	}
	return n;
}

void mvg__hint_collect(struct mvg_balloon *d)
{
	uint16_t tok;
	uint32_t len;
	while (mvg__vq_get(d, &d->vq[VQ_HINT], &tok, &len) == 1) {
		if (tok == HTOK_CMD) {
			d->hint_cmd_out = false;
		} else if (tok == HTOK_STOP) {
			d->hint_stop_out = false;
			if (d->hint_state == HINT_STOPPING) {
				d->hint_state = HINT_IDLE;
				d->st.hint_runs++;
			}
		} else if (d->hint_out) {
			d->hint_out--;
		}
	}
}

/* One step of the hint state machine: start a run for a new command id, send free
 * memory, end the run with STOP, give everything back once the device says DONE. */
void mvg__hint_step(struct mvg_balloon *d)
{
	struct mvg__vq *q = &d->vq[VQ_HINT];
	if (!q->num || q->broken || d->stopped)
		return;
	if (d->hint_state == HINT_IDLE && d->hint_cmd >= 2 && d->hint_cmd != d->hint_active) {
		d->hint_active = d->hint_cmd;
		d->hint_exhausted = false;
		hint_cmd(d, &d->hint_page_va[0], d->hint_active, HTOK_CMD);
		d->hint_state = HINT_RUNNING;
	}
	if (d->hint_state == HINT_RUNNING) {
		if (d->hint_cmd != d->hint_active)
			d->hint_exhausted = true; /* STOP, DONE or a newer id: end this run */
		hint_send(d);
		if (d->hint_exhausted && !d->hint_out && !d->hint_cmd_out) {
			hint_cmd(d, &d->hint_page_va[1], VB_HINT_CMD_ID_STOP, HTOK_STOP);
			d->hint_state = HINT_STOPPING;
		}
	}
	/* DONE: the device needs the pages no more, their contents stay as they are. */
	if (d->hint_cmd == VB_HINT_CMD_ID_DONE && !d->hint_out)
		hint_release(d, UINT64_MAX, false);
	mvg__vq_kick(d, q);
}

/* Deflate on OOM: up to `want` hinted pages go back before DONE, written first. Only
 * pages of buffers the device has returned: a hint still queued could be armed after
 * the guest wrote the page. Returns the pages given back. */
uint64_t mvg__hint_give_back(struct mvg_balloon *d, uint64_t want)
{
	if (d->hint_out)
		return 0;
	d->hint_exhausted = true;
	return hint_release(d, want, d->hint_cmd != VB_HINT_CMD_ID_DONE);
}

/* After a reset: reported runs and hinted pages go back to the platform. */
void mvg__freepage_drop(struct mvg_balloon *d)
{
	for (unsigned i = 0; i < d->report_n; i++)
		d->p.putback_reported(d->p.ctx, d->report_gpa[i]);
	d->report_n = 0;
	hint_release(d, UINT64_MAX, d->hint_cmd != VB_HINT_CMD_ID_DONE);
	d->hint_state = HINT_IDLE;
	d->hint_out = 0;
	d->hint_cmd_out = d->hint_stop_out = false;
}
