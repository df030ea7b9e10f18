/* fakemmio.h - the fake virtio-mmio balloon device of the driver conformance tests: the
 * register file lives in the platform's mmio hooks, the device side reads the driver's
 * split rings out of the fake guest RAM (fakedev.h) and acknowledges at once or when the
 * test says so. Included through drvkit.h only. */
#ifndef MV_FAKEMMIO_H
#define MV_FAKEMMIO_H

#include <endian.h>
#include "fakedev.h"

/* ---- the device side: split rings ---- */

static inline void fk_used(struct fq *q, uint16_t head, uint32_t len)
{
	uint8_t *e = fk_mem(q->used + VRING_USED_ELEM(q->used_idx % q->num), 8);
	uint8_t *idx = fk_mem(q->used + VRING_USED_OFF_IDX, 2);
	if (!e || !idx)
		return;
	memcpy(e, &(uint32_t){ head }, 4);
	memcpy(e + 4, &len, 4);
	q->used_idx++;
	/* the element is visible before the index that publishes it (a release store) */
	__atomic_store_n((uint16_t *)(void *)idx, htole16(q->used_idx), __ATOMIC_RELEASE);
	fk_interrupt(INT_USED);
}

/* Pages [gpa, gpa+len) change from state `from` to `to`; false if one was elsewhere. */
static inline bool fk_move(uint64_t gpa, uint64_t len, enum pstate from, enum pstate to)
{
	if (!fk_mem(gpa, len))
		return false;
	bool ok = true;
	for (uint64_t p = gpa / PG; p < (gpa + len + PG - 1) / PG; p++) {
		ok &= FK.st[p] == from;
		if (FK.st[p] == from)
			FK.st[p] = to;
	}
	return ok;
}

static inline void fk_all_pages(enum pstate from, enum pstate to)
{
	for (uint64_t p = 0; p < FK_PAGES; p++)
		if (FK.st[p] == from)
			FK.st[p] = to;
}

static inline void fk_pfns(const struct vring_desc *d, bool inflate)
{
	const uint8_t *a = d->flags & VRING_DESC_F_WRITE ? NULL : fk_mem(d->addr, d->len);
	if (!a || d->len % 4) {
		fk_viol(V_RING, "PFN buffer: device-writable or len %u", d->len);
		return;
	}
	for (uint32_t o = 0; o < d->len; o += 4) {
		uint64_t p = fk_le32(a + o);
		uint8_t *s = p < FK_PAGES ? &FK.st[p] : NULL;
		if (inflate && s && *s == P_DRIVER)
			*s = P_INFL;
		else if (!inflate && s && *s == P_BALLOON)
			*s = P_DEFL;
		else if (!inflate && s && FK.stolen[p])
			FK.stolen[p] = false; /* counted when it was used */
		else if (!inflate && s && *s == P_INFL)
			fk_viol(V_DEFLATE_UNACKED, "deflate of page %#llx before its inflate ack",
			        (unsigned long long)p);
		else
			fk_viol(V_PFN, "%s of PFN %#llx in state %d", inflate ? "inflate" : "deflate",
			        (unsigned long long)p, s ? *s : -1);
		*(inflate ? &FK.inflate_pfns : &FK.deflate_pfns) += 1;
		FK.buf_pfns++;
	}
}

static inline void fk_stats(const struct vring_desc *d, unsigned n)
{
	if (n != 1 || (d->flags & VRING_DESC_F_WRITE) || d->len % STAT_ENTRY)
		fk_viol(V_STATS_FORMAT, "stats buffer: %u descriptors, flags %#x, len %u", n,
		        d->flags, d->len);
	const uint8_t *a = fk_mem(d->addr, d->len);
	uint64_t tags = 0;
	for (uint32_t o = 0; a && o + STAT_ENTRY <= d->len; o += STAT_ENTRY) {
		uint16_t t = (uint16_t)(a[o] | a[o + 1] << 8);
		if (t < 64 && (tags & CONF_BIT(t)))
			fk_viol(V_STATS_FORMAT, "tag %u twice in one buffer", t);
		tags |= t < 64 ? CONF_BIT(t) : 0;
		if (t < 16)
			FK.stats_val[t] = fk_le64(a + o + 2);
	}
	if (FK.stats_tags_set && tags != FK.stats_tags)
		fk_viol(V_STATS_SUBSET, "stats tags %#llx after %#llx", (unsigned long long)tags,
		        (unsigned long long)FK.stats_tags);
	FK.stats_tags = tags, FK.stats_tags_set = true;
	FK.stats_bufs++;
}

static inline void fk_hint(const struct vring_desc *d)
{
	if (!(d->flags & VRING_DESC_F_WRITE)) {
		const uint8_t *a = fk_mem(d->addr, 4);
		if (d->len != 4)
			fk_viol(V_HINT_OUTLEN, "free_page_vq output buffer of %u bytes", d->len);
		uint32_t id = a ? fk_le32(a) : 0;
		if (id == FK.cmd_id && id >= 2) {
			if (FK.hint_started)
				fk_viol(V_HINT_DUP_ID, "command ID %u sent twice", id);
			FK.hint_started = true;
			FK.hint_out_cur++;
		} else if (id == CMD_ID_STOP) {
			FK.hint_stops++;
		}
		return;
	}
	if (!FK.hint_started)
		fk_viol(V_HINT_ORDER, "hint of %#llx before the command ID", (unsigned long long)d->addr);
	if (d->len % PG || !fk_move(d->addr, d->len, P_DRIVER, P_HINTED))
		fk_viol(V_PFN, "hint of %#llx+%u: not pages the driver took", (unsigned long long)d->addr,
		        d->len);
	else
		memset(FK.ram + d->addr, 0xde, d->len); /* the host dropped them: garbage */
	FK.hint_in++;
	FK.hinted_pages += d->len / PG;
}

static inline void fk_report(const struct vring_desc *d)
{
	if (!(d->flags & VRING_DESC_F_WRITE) || d->len % PG ||
	    !fk_move(d->addr, d->len, P_ISOLATED, P_REPORTING))
		fk_viol(V_REPORT_FORMAT, "report of %#llx+%u, flags %#x", (unsigned long long)d->addr,
		        d->len, d->flags);
	else if (fk_has(MV_BALLOON_F_PAGE_POISON))
		for (uint64_t p = d->addr / PG; p < (d->addr + d->len) / PG; p++)
			if (!fk_all(p, FK.poison)) {
				fk_viol(V_REPORT_POISON, "reported page %#llx lacks poison_val",
				        (unsigned long long)p);
				break;
			}
	if (!FK.report_min_len || d->len < FK.report_min_len)
		FK.report_min_len = d->len;
}

/* Acknowledge what queue role r holds back. */
static inline void fk_ack(enum role r)
{
	for (unsigned i = 0; i < FK.nq; i++) {
		struct fq *q = &FK.q[i];
		if (q->role != r)
			continue;
		for (unsigned k = 0; k < q->npending; k++) {
			fk_used(q, q->pending[k], 0);
			*(r == R_INFLATE ? &FK.acked_in : &FK.acked_out) += q->pending_n[k];
		}
		q->npending = 0;
	}
	if (r == R_INFLATE)
		fk_all_pages(P_INFL, P_BALLOON);
	if (r == R_DEFLATE)
		fk_all_pages(P_DEFL, P_DEFLATED);
	if (r == R_REPORT)
		fk_all_pages(P_REPORTING, P_REPORTED);
}

static inline void fk_buffer(struct fq *q, uint16_t head)
{
	struct vring_desc d[64];
	unsigned n = 0;
	FK.buf_pfns = 0;
	for (uint16_t i = head;; n++) {
		const uint8_t *e = i < q->num && n < 64 ? fk_mem(q->desc + 16ull * i, 16) : NULL;
		if (!e) {
			fk_viol(V_RING, "descriptor chain from %u broken at %u", head, i);
			return;
		}
		memcpy(&d[n], e, 16);
		if (d[n].flags & VRING_DESC_F_INDIRECT)
			fk_viol(V_RING, "indirect descriptor without VIRTIO_F_INDIRECT_DESC");
		if (!(d[n].flags & VRING_DESC_F_NEXT))
			break;
		i = d[n].next;
	}
	n++;
	for (unsigned k = 0; k < n; k++) {
		if (q->role == R_INFLATE || q->role == R_DEFLATE)
			fk_pfns(&d[k], q->role == R_INFLATE);
		else if (q->role == R_HINT)
			fk_hint(&d[k]);
		else if (q->role == R_REPORT)
			fk_report(&d[k]);
	}
	if (q->role == R_REPORT)
		FK.reports++;
	if (q->role == R_STATS) {
		fk_stats(d, n);
		if (q->npending)
			fk_viol(V_STATS_MULTI, "a second stats buffer made available");
	}
	q->pending_n[q->npending % 1024] = FK.buf_pfns;
	q->pending[q->npending++ % 1024] = head;
	if (q->role != R_STATS && !FK.defer[q->role])
		fk_ack(q->role);
}

static inline void fk_notify(unsigned i)
{
	FK.notifies++;
	if (!(FK.status & ST_DRIVER_OK))
		fk_viol(V_NOTIFY_EARLY, "queue %u notified before DRIVER_OK", i);
	if (i >= FK.nq || !FK.q[i].ready) {
		fk_viol(V_QUEUE_ABSENT, "notify of queue %u (of %u, ready %u)", i, FK.nq,
		        i < 8 ? FK.q[i].ready : 0);
		return;
	}
	struct fq *q = &FK.q[i];
	const uint8_t *ai = fk_mem(q->avail + VRING_AVAIL_OFF_IDX, 2);
	uint16_t avail = ai ? (uint16_t)(ai[0] | ai[1] << 8) : q->last_avail;
	if ((uint16_t)(avail - q->last_avail) > q->num) {
		fk_viol(V_RING, "queue %u: avail idx %u, %u consumed", i, avail, q->last_avail);
		return;
	}
	while (q->last_avail != avail) {
		const uint8_t *h = fk_mem(q->avail + VRING_AVAIL_RING(q->last_avail % q->num), 2);
		q->last_avail++;
		if (h)
			fk_buffer(q, (uint16_t)(h[0] | h[1] << 8));
	}
}

/* The device asks for statistics: the held buffer goes back. */
static inline void fk_stats_request(void)
{
	fk_ack(R_STATS);
}

/* ---- the register file (virtio-mmio version 2) ---- */

/* Queue roles after FEATURES_OK, numbered as Linux and QEMU do (compacted). */
static inline void fk_roles(void)
{
	static const struct { unsigned bit; enum role r; } opt[] = {
		{ MV_BALLOON_F_STATS_VQ, R_STATS }, { MV_BALLOON_F_FREE_PAGE_HINT, R_HINT },
		{ MV_BALLOON_F_PAGE_REPORTING, R_REPORT } };
	FK.q[0].role = R_INFLATE, FK.q[1].role = R_DEFLATE, FK.nq = 2;
	for (unsigned k = 0; k < 3; k++)
		if (fk_has(opt[k].bit))
			FK.q[FK.nq++].role = opt[k].r;
}

static inline void fk_reset(void)
{
	memset(FK.q, 0, sizeof(FK.q));
	for (unsigned i = 0; i < 8; i++)
		FK.q[i].num_max = FK.qmax;
	FK.status = FK.int_status = 0;
	FK.nq = 0, FK.neg = FK.drv_feat = 0;
	FK.dev_sel_set = FK.drv_sel_set = FK.fok_reread = false;
	FK.reset_seen = true;
}

static inline void fk_status(uint32_t v)
{
	if (v == 0) {
		fk_reset();
		return;
	}
	if (!FK.reset_seen)
		fk_viol(V_INIT_ORDER, "status %#x written before a reset", v);
	if ((v & ST_DRIVER && !(v & ST_ACK)) || (v & FK.status) != FK.status)
		fk_viol(V_INIT_ORDER, "status %#x after %#x", v, FK.status);
	if ((v & ST_FEATURES_OK) && !(FK.status & ST_FEATURES_OK)) {
		if (FK.drv_feat & ~FK.offered)
			fk_viol(V_FEAT_UNOFFERED, "accepted %#llx of offered %#llx",
			        (unsigned long long)FK.drv_feat, (unsigned long long)FK.offered);
		if (FK.refuse_fok || (FK.drv_feat & ~FK.offered) || !(FK.drv_feat & V1BIT))
			v &= ~(uint32_t)ST_FEATURES_OK;
		else {
			FK.neg = FK.drv_feat;
			fk_roles();
		}
		FK.fok_reread = false;
	}
	if ((v & ST_DRIVER_OK) && !(FK.status & ST_DRIVER_OK)) {
		if (!(v & ST_FEATURES_OK))
			fk_viol(V_INIT_ORDER, "DRIVER_OK without FEATURES_OK");
		if (!FK.fok_reread)
			fk_viol(V_FOK_REREAD, "DRIVER_OK without re-reading FEATURES_OK");
		FK.ok_seen = true;
	}
	FK.status = v;
}

static inline bool pow2(uint32_t x)
{
	return x && !(x & (x - 1));
}

/* The driver sets QueueReady: its ring memory must be its own. */
static inline void fk_queue_ready(struct fq *q)
{
	if (!q->num || q->num > q->num_max || !pow2(q->num))
		fk_viol(V_QUEUE_NUM, "QueueNum %u with QueueNumMax %u", q->num, q->num_max);
	if (!q->num || q->num > 1024)
		return;
	const struct { uint64_t a, len; } r[3] = {
		{ q->desc, 16ull * q->num }, { q->avail, 6 + 2ull * q->num },
		{ q->used, 6 + 8ull * q->num } };
	for (unsigned k = 0; k < 3; k++) {
		if (!fk_mem(r[k].a, r[k].len))
			return;
		for (uint64_t p = r[k].a / PG; p <= (r[k].a + r[k].len - 1) / PG; p++) {
			if (FK.st[p] != P_DRIVER && FK.st[p] != P_RING)
				fk_viol(V_RING, "ring at %#llx in a page in state %u",
				        (unsigned long long)r[k].a, FK.st[p]);
			FK.st[p] = P_RING;
		}
	}
	q->ready = 1;
}

static inline void fk_queue_reg(uint32_t off, uint32_t v)
{
	struct fq *q = &FK.q[FK.qsel % 8];
	if (FK.qsel >= FK.nq) {
		fk_viol(V_QUEUE_ABSENT, "register %#x of queue %u (of %u)", off, FK.qsel, FK.nq);
		return;
	}
	if (q->ready && off != MMIO_QUEUE_READY) {
		fk_viol(V_QUEUE_BUSY, "register %#x written while queue %u is ready", off, FK.qsel);
		return;
	}
	uint64_t *a = off < MMIO_QUEUE_DRIVER_LO ? &q->desc : off < MMIO_QUEUE_DEVICE_LO ? &q->avail
	                                                                             : &q->used;
	switch (off) {
	case MMIO_QUEUE_NUM: q->num = v; break;
	case MMIO_QUEUE_READY:
		if (v && !q->ready)
			fk_queue_ready(q);
		else if (!v)
			q->ready = 0;
		break;
	case MMIO_QUEUE_DESC_LO: case MMIO_QUEUE_DRIVER_LO: case MMIO_QUEUE_DEVICE_LO:
		*a = (*a & ~0xffffffffull) | v;
		break;
	default:
		*a = (*a & 0xffffffffull) | (uint64_t)v << 32;
	}
}

static inline void fk_config_write(uint32_t off, uint32_t v)
{
	if (off == CFG_ACTUAL) {
		/* deflate acks count once the driver could have seen them: from its next step */
		uint64_t held = FK.acked_in - FK.out_at_step;
		if (v > held)
			fk_viol(V_ACTUAL, "actual %u with %llu pages acked in the balloon", v,
			        (unsigned long long)held);
		FK.actual = v;
		FK.actual_writes++;
	} else if (off == CFG_POISON) {
		if (!fk_has(MV_BALLOON_F_PAGE_POISON))
			fk_viol(V_POISON_NOFEAT, "poison_val written without PAGE_POISON");
		if (FK.status & ST_DRIVER_OK)
			fk_viol(V_POISON_LATE, "poison_val written with DRIVER_OK set");
		FK.poison = v;
		FK.poison_set = true;
	} else {
		fk_viol(V_CFG_RO, "driver wrote config offset %u", off);
	}
}

static inline uint32_t fk_mmio_read(void *ctx, uint32_t off)
{
	if (off % 4)
		fk_viol(V_ACCESS, "unaligned read at %#x", off);
	struct fq *q = &FK.q[FK.qsel % 8];
	bool have_q = FK.qsel < FK.nq;
	switch (off) {
	case MMIO_MAGIC: return FK.magic;
	case MMIO_VERSION: return FK.version;
	case MMIO_DEVICE_ID: return FK.devid;
	case MMIO_VENDOR_ID: return 0x554d4551;
	case MMIO_DEV_FEATURES:
		if (!FK.dev_sel_set)
			fk_viol(V_FEAT_SEL, "DeviceFeatures read before DeviceFeaturesSel was written");
		return FK.dev_sel < 2 ? (uint32_t)(FK.offered >> (32 * FK.dev_sel)) : 0;
	case MMIO_QUEUE_NUM_MAX: return have_q ? q->num_max : 0;
	case MMIO_QUEUE_READY: return have_q ? q->ready : 0;
	case MMIO_INT_STATUS: return FK.int_status;
	case MMIO_STATUS:
		FK.fok_reread |= (FK.status & ST_FEATURES_OK) != 0;
		return FK.status;
	case MMIO_CONFIG_GEN: return FK.gen;
	case MMIO_CONFIG + CFG_NUM_PAGES: return FK.num_pages;
	case MMIO_CONFIG + CFG_ACTUAL: return FK.actual;
	case MMIO_CONFIG + CFG_HINT_CMD_ID: return FK.cmd_id;
	case MMIO_CONFIG + CFG_POISON: return FK.poison;
	default: return 0;
	}
}

static inline void fk_mmio_write(void *ctx, uint32_t off, uint32_t v)
{
	FK.writes++;
	if (off % 4)
		fk_viol(V_ACCESS, "unaligned write at %#x", off);
	switch (off) {
	case MMIO_DEV_FEATURES_SEL: FK.dev_sel = v, FK.dev_sel_set = true; break;
	case MMIO_DRV_FEATURES_SEL: FK.drv_sel = v, FK.drv_sel_set = true; break;
	case MMIO_DRV_FEATURES:
		if (!FK.drv_sel_set)
			fk_viol(V_FEAT_SEL, "DriverFeatures written before DriverFeaturesSel");
		if (FK.drv_sel < 2)
			FK.drv_feat = (FK.drv_feat & ~(0xffffffffull << (32 * FK.drv_sel))) |
			              (uint64_t)v << (32 * FK.drv_sel);
		break;
	case MMIO_QUEUE_SEL: FK.qsel = v; break;
	case MMIO_QUEUE_NUM: case MMIO_QUEUE_READY:
	case MMIO_QUEUE_DESC_LO: case MMIO_QUEUE_DESC_HI: case MMIO_QUEUE_DRIVER_LO:
	case MMIO_QUEUE_DRIVER_HI: case MMIO_QUEUE_DEVICE_LO: case MMIO_QUEUE_DEVICE_HI:
		fk_queue_reg(off, v);
		break;
	case MMIO_QUEUE_NOTIFY: fk_notify(v); break;
	case MMIO_INT_ACK:
		if (v & ~(INT_USED | INT_CONFIG))
			fk_viol(V_INT_ACK, "InterruptACK %#x", v);
		FK.int_status &= ~v;
		break;
	case MMIO_STATUS: fk_status(v); break;
	default:
		if (off >= MMIO_CONFIG && off < MMIO_CONFIG + 16)
			fk_config_write(off - MMIO_CONFIG, v);
	}
}

static const struct mvg_platform fk_platform = {
	.alloc_page = fk_alloc_page, .free_page = fk_free_page, .alloc_run = fk_alloc_run,
	.free_run = fk_free_run, .map = fk_map, .free_bytes = fk_free_bytes,
	.get_stats = fk_get_stats, .isolate_unreported = fk_isolate, .putback_reported = fk_putback,
	.mmio_read = fk_mmio_read, .mmio_write = fk_mmio_write, .wait = fk_wait, .now_ns = fk_now,
	.log = fk_log,
};

/* A fresh guest (all RAM free, filled with 0x5a) and a device offering `offered`. */
static inline void fk_new(uint64_t offered)
{
	uint8_t *ram = FK.ram;
	free(FK.d);
	memset(&FK, 0, sizeof(FK));
	FK.ram = ram ? ram : aligned_alloc(2u << 20, FK_RAM);
	assert_non_null(FK.ram);
	memset(FK.ram, 0x5a, FK_RAM);
	FK.nfree = FK_PAGES;
	FK.magic = MMIO_MAGIC_VALUE, FK.version = 2, FK.devid = 5;
	FK.offered = offered;
	FK.qmax = 256;
	for (unsigned i = 0; i < 8; i++)
		FK.q[i].num_max = FK.qmax;
	FK.gstats = (struct mvg_guest_stats){ 11, 12, 13, 14, 0, 0, 17 << 20, 18 << 20, 19, 20,
	                                      21, 22, UINT64_MAX, UINT64_MAX, 25, 26 };
	FK.d = malloc(mvg_balloon_size());
	assert_non_null(FK.d);
}

static inline void fk_set_qmax(uint32_t m)
{
	FK.qmax = m;
	for (unsigned i = 0; i < 8; i++)
		FK.q[i].num_max = m;
}

#endif
