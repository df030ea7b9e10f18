/* fakedev.h - the fake guest platform of the driver conformance tests: guest RAM is a
 * malloc'd array (gpa = offset), every page carries a state (free, the driver's, in an
 * inflate, in the balloon, hinted, being reported, ...) so that each use the driver makes
 * of it is judged at once, and what the driver does wrong is recorded as a violation of
 * one category; a row checks its own. The fake device is in fakemmio.h. Included through
 * drvkit.h by test_conformance_driver*.c only. */
#ifndef MV_FAKEDEV_H
#define MV_FAKEDEV_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <memvirt/balloon.h>
#include "mvg.h"
#include "testutil.h"
#include "conformance.h"

#define FK_RAM    (32u << 20)
#define FK_PAGES  (FK_RAM / 4096u)
#define FK_RUN    512u
#define FK_SENTINEL 0xdededededeull
#define PG        4096u
#define V1BIT     CONF_BIT(32)

/* Page states: the platform allocator's and the device's view in one. */
enum pstate {
	P_FREE, P_DRIVER, P_RING, P_INFL, P_BALLOON, P_DEFL, P_DEFLATED, P_HINTED,
	P_ISOLATED, P_REPORTING, P_REPORTED,
};

enum role { R_NONE, R_INFLATE, R_DEFLATE, R_STATS, R_HINT, R_REPORT };

enum viol {
	V_ACCESS, V_INIT_ORDER, V_FOK_REREAD, V_NOTIFY_EARLY, V_FEAT_UNOFFERED, V_FEAT_SEL,
	V_QUEUE_NUM, V_QUEUE_BUSY, V_QUEUE_ABSENT, V_INT_ACK, V_RING, V_PFN, V_USE_INFLATING,
	V_DEFLATE_UNACKED, V_USE_BALLOON, V_USE_DEFLATING, V_ACTUAL, V_CFG_RO, V_POISON_NOFEAT,
	V_POISON_LATE, V_POISON_DEFLATE, V_STATS_MULTI, V_STATS_FORMAT, V_STATS_SUBSET,
	V_HINT_OUTLEN, V_HINT_ORDER, V_HINT_DUP_ID, V_HINT_UNINIT, V_REPORT_FORMAT,
	V_REPORT_POISON, V_REPORT_USE, V_REPORT_TOUCH, V_NR
};

struct fq {
	uint32_t num_max, num, ready;
	uint64_t desc, avail, used;
	uint16_t last_avail, used_idx;
	enum role role;
	uint16_t pending[1024]; /* heads used later (deferred acks, the held stats buffer) */
	uint32_t pending_n[1024]; /* PFNs in each */
	unsigned npending;
};

static struct fake {
	uint8_t *ram;
	uint8_t st[FK_PAGES];
	bool reported[FK_PAGES];
	bool stolen[FK_PAGES];    /* a balloon page the driver used before deflating it */
	uint64_t nfree;
	bool no_mem, poison_ram; /* alloc fails; RAM (and freed pages) hold the poison */
	/* registers */
	uint32_t magic, version, devid;
	uint64_t offered, drv_feat, neg;
	uint32_t dev_sel, drv_sel;
	bool dev_sel_set, drv_sel_set, refuse_fok, reset_seen, fok_reread, ok_seen;
	uint32_t status, qsel, int_status, gen;
	uint32_t num_pages, actual, cmd_id, poison;
	bool poison_set;
	unsigned nq, qmax;
	struct fq q[8];
	bool defer[8]; /* by role */
	/* what the driver did */
	bool irq;
	uint64_t clock;
	unsigned writes, notifies, viol[V_NR];
	char why[V_NR][160];
	uint64_t inflate_pfns, deflate_pfns, stats_bufs, hint_in, hint_out_cur, hint_stops;
	uint64_t reports, report_min_len, hinted_pages, putbacks, actual_writes;
	uint64_t acked_in, acked_out, out_at_step; /* PFNs of acked inflates, deflates */
	uint32_t buf_pfns;                         /* PFNs in the buffer being read */
	uint64_t stats_tags, stats_val[16];
	bool stats_tags_set, hint_started;
	struct mvg_guest_stats gstats;
	struct mvg_balloon *d;
	char log[256];
} FK;

static inline void fk_viol(enum viol v, const char *fmt, ...)
{
	if (!FK.viol[v]++) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(FK.why[v], sizeof(FK.why[v]), fmt, ap);
		va_end(ap);
	}
}

/* A row passes when none of its categories saw a violation; print any other ones seen. */
static inline void fk_expect_none(const enum viol *v, unsigned n)
{
	bool bad = false;
	for (unsigned k = 0; k < V_NR; k++) {
		if (!FK.viol[k])
			continue;
		bool mine = false;
		for (unsigned j = 0; j < n; j++)
			mine |= v[j] == (enum viol)k;
		printf("%s violation %u x%u: %s\n", mine ? "[  FAILED  ]" : "[  NOTE    ]", k,
		       FK.viol[k], FK.why[k]);
		bad |= mine;
	}
	if (bad)
		fail_msg("the driver broke this row's requirement (see above)");
}
#define EXPECT_NONE(...) do { enum viol v_[] = { __VA_ARGS__ }; \
	fk_expect_none(v_, sizeof(v_) / sizeof(v_[0])); } while (0)

static inline uint32_t fk_le32(const uint8_t *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t fk_le64(const uint8_t *p)
{
	return fk_le32(p) | (uint64_t)fk_le32(p + 4) << 32;
}

/* Guest memory [gpa, gpa+len) or NULL (a V_RING violation). */
static inline uint8_t *fk_mem(uint64_t gpa, uint64_t len)
{
	if (len > FK_RAM || gpa > FK_RAM - len) {
		fk_viol(V_RING, "access %#llx+%llu outside guest RAM", (unsigned long long)gpa,
		        (unsigned long long)len);
		return NULL;
	}
	return FK.ram + gpa;
}

static inline void fk_fill(uint64_t page, uint32_t v)
{
	uint32_t *w = (uint32_t *)(FK.ram + page * PG);
	for (unsigned i = 0; i < PG / 4; i++)
		w[i] = v;
}

static inline bool fk_all(uint64_t page, uint32_t v)
{
	const uint32_t *w = (const uint32_t *)(FK.ram + page * PG);
	for (unsigned i = 0; i < PG / 4; i++)
		if (w[i] != v)
			return false;
	return true;
}

static inline bool fk_has(unsigned bit)
{
	return FK.neg & CONF_BIT(bit);
}

static inline void fk_interrupt(uint32_t why)
{
	FK.int_status |= why;
	FK.irq = true;
}

/* ---- the platform's allocator, and the page uses it can see ---- */

/* The driver gives page p back to the guest (free_page, free_run). */
static inline void fk_page_back(uint64_t p)
{
	switch (FK.st[p]) {
	case P_DRIVER: case P_RING: case P_DEFLATED:
		break;
	case P_HINTED:
		if (FK.cmd_id != CMD_ID_DONE && fk_all(p, (uint32_t)FK_SENTINEL))
			fk_viol(V_HINT_UNINIT, "hinted page %#llx released before DONE, uninitialized",
			        (unsigned long long)p);
		break;
	case P_DEFL:
		if (fk_has(MV_BALLOON_F_MUST_TELL_HOST))
			fk_viol(V_USE_DEFLATING, "page %#llx freed before its deflate was acked",
			        (unsigned long long)p);
		break;
	case P_INFL:
		fk_viol(V_USE_INFLATING, "page %#llx freed before its inflate was acked",
		        (unsigned long long)p);
		break;
	case P_BALLOON:
		fk_viol(V_USE_BALLOON, "balloon page %#llx freed before its deflate request",
		        (unsigned long long)p);
		FK.stolen[p] = true;
		break;
	default:
		fk_viol(V_PFN, "page %#llx freed in state %u", (unsigned long long)p, FK.st[p]);
		return;
	}
	if ((FK.st[p] == P_DEFL || FK.st[p] == P_DEFLATED) && fk_has(MV_BALLOON_F_PAGE_POISON) &&
	    !fk_all(p, FK.poison))
		fk_viol(V_POISON_DEFLATE, "deflated page %#llx reused without poison_val",
		        (unsigned long long)p);
	FK.st[p] = P_FREE;
	FK.reported[p] = false;
	FK.nfree++;
	if (FK.poison_ram)
		fk_fill(p, FK.poison);
}

static inline int fk_alloc_page(void *ctx, uint64_t *gpa)
{
	if (FK.no_mem)
		return -1;
	for (uint64_t p = FK_PAGES; p-- > 0;)
		if (FK.st[p] == P_FREE) {
			FK.st[p] = P_DRIVER;
			FK.reported[p] = false;
			FK.nfree--;
			*gpa = p * PG;
			return 0;
		}
	return -1;
}

static inline int fk_alloc_run(void *ctx, uint64_t *gpa)
{
	if (FK.no_mem)
		return -1;
	for (uint64_t r = 0; r < FK_PAGES; r += FK_RUN) {
		unsigned k = 0;
		while (k < FK_RUN && FK.st[r + k] == P_FREE)
			k++;
		if (k < FK_RUN)
			continue;
		for (k = 0; k < FK_RUN; k++)
			FK.st[r + k] = P_DRIVER, FK.reported[r + k] = false;
		FK.nfree -= FK_RUN;
		*gpa = r * PG;
		return 0;
	}
	return -1;
}

static inline bool fk_page_ok(uint64_t gpa, uint64_t align)
{
	if (gpa % align || gpa >= FK_RAM) {
		fk_viol(V_PFN, "bad address %#llx given back", (unsigned long long)gpa);
		return false;
	}
	return true;
}

static inline void fk_free_page(void *ctx, uint64_t gpa)
{
	if (fk_page_ok(gpa, PG))
		fk_page_back(gpa / PG);
}

static inline void fk_free_run(void *ctx, uint64_t gpa)
{
	if (fk_page_ok(gpa, (uint64_t)FK_RUN * PG))
		for (unsigned k = 0; k < FK_RUN; k++)
			fk_page_back(gpa / PG + k);
}

static inline void *fk_map(void *ctx, uint64_t gpa)
{
	if (gpa >= FK_RAM) {
		fk_viol(V_RING, "map of %#llx outside RAM", (unsigned long long)gpa);
		return NULL;
	}
	uint64_t p = gpa / PG;
	switch (FK.st[p]) {
	case P_INFL:
		fk_viol(V_USE_INFLATING, "map of page %#llx in an unacked inflate", (unsigned long long)p);
		break;
	case P_BALLOON:
		fk_viol(V_USE_BALLOON, "map of balloon page %#llx before its deflate request",
		        (unsigned long long)p);
		break;
	case P_DEFL:
		if (fk_has(MV_BALLOON_F_MUST_TELL_HOST))
			fk_viol(V_USE_DEFLATING, "map of page %#llx before its deflate ack",
			        (unsigned long long)p);
		break;
	case P_REPORTING:
		fk_viol(V_REPORT_USE, "map of page %#llx in an unacked report", (unsigned long long)p);
		break;
	case P_ISOLATED: case P_REPORTED:
		fk_viol(V_REPORT_TOUCH, "map of page %#llx isolated for reporting", (unsigned long long)p);
		break;
	case P_FREE:
		fk_viol(V_PFN, "map of free page %#llx", (unsigned long long)p);
		break;
	default:
		break;
	}
	return FK.ram + gpa;
}

static inline uint64_t fk_free_bytes(void *ctx)
{
	return FK.nfree * PG;
}

static inline void fk_get_stats(void *ctx, struct mvg_guest_stats *out)
{
	*out = FK.gstats;
	out->free_bytes = FK.nfree * PG;
	out->total_bytes = FK_RAM;
}

static inline int fk_isolate(void *ctx, uint64_t *gpa)
{
	for (uint64_t r = 0; r < FK_PAGES; r += FK_RUN) {
		unsigned k = 0, rep = 0;
		for (; k < FK_RUN && FK.st[r + k] == P_FREE; k++)
			rep += FK.reported[r + k];
		if (k < FK_RUN || rep == FK_RUN)
			continue;
		for (k = 0; k < FK_RUN; k++)
			FK.st[r + k] = P_ISOLATED;
		FK.nfree -= FK_RUN;
		*gpa = r * PG;
		return 0;
	}
	return -1;
}

static inline void fk_putback(void *ctx, uint64_t gpa)
{
	if (!fk_page_ok(gpa, (uint64_t)FK_RUN * PG))
		return;
	FK.putbacks++;
	for (uint64_t p = gpa / PG; p < gpa / PG + FK_RUN; p++) {
		if (FK.st[p] == P_REPORTING)
			fk_viol(V_REPORT_USE, "run %#llx put back before its report was acked",
			        (unsigned long long)gpa);
		else if (FK.st[p] != P_REPORTED && FK.st[p] != P_ISOLATED)
			fk_viol(V_PFN, "putback of page %#llx in state %u", (unsigned long long)p, FK.st[p]);
		FK.reported[p] = FK.st[p] == P_REPORTED;
		FK.st[p] = P_FREE;
		FK.nfree++;
	}
}

static inline void fk_wait(void *ctx, uint64_t timeout_ns)
{
	if (FK.irq)
		FK.irq = false;
	else
		FK.clock += timeout_ns;
}

static inline uint64_t fk_now(void *ctx)
{
	return FK.clock;
}

static inline void fk_log(void *ctx, const char *msg)
{
	snprintf(FK.log, sizeof(FK.log), "%s", msg);
	if (getenv("FK_VERBOSE"))
		printf("driver: %s\n", msg);
}

#endif
