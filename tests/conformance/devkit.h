/* devkit.h - the guest-driver side of the device conformance tests: a VM with two RAM
 * regions (4 MiB at 0, 2 MiB at 4 GiB), the device under test, virtio-mmio accessors and a
 * hand-written split-ring writer. Included by test_conformance_device*.c only. */
#ifndef MV_DEVKIT_H
#define MV_DEVKIT_H

#include <endian.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdbool.h>
#include <memvirt/memvirt.h>
#include <memvirt/balloon.h>
#include "testutil.h"
#include "conformance.h"

#define R0_GPA   0x0ull
#define R0_PAGES 1024ul
#define R1_GPA   (4ull << 30)
#define R1_PAGES 512ul
#define RAM_PAGES (R0_PAGES + R1_PAGES)
#define RING_GPA(q) (0x10000ull + (uint64_t)(q) * 0x8000ull)
#define SCRATCH  0x40000ull  /* PFN arrays, stats buffers, command IDs: up to 0x100000 */
#define DATA     0x200000ull /* a 2 MiB block of region 0 for inflate, hints, reports */
#define QSIZE    64
#define PG       4096u

#define F(x)  CONF_BIT(MV_BALLOON_F_##x)
#define V1    CONF_BIT(MV_VIRTIO_F_VERSION_1)

struct vq {
	uint16_t num, next, avail_idx, last_used;
	uint64_t desc, avail, used;
};

struct sg {
	uint64_t gpa;
	uint32_t len;
	bool write;
};

/* One test's world: a VM, its RAM, the device and what the device told the guest. */
static struct env {
	struct mv_vm *vm;
	uint8_t *ram0, *ram1;
	struct mv_balloon *b;
	struct vq vq[5];
	uint64_t feat;            /* negotiated by up() */
	unsigned cfg_irqs, q_irqs[8];
	uint64_t clock, scratch;
} E;
static struct mv_host *g_host;

/* ---- device hooks ---- */

static inline void on_interrupt(void *opaque, int queue)
{
	if (queue < 0)
		E.cfg_irqs++;
	else if (queue < 8)
		E.q_irqs[queue]++;
}

static inline uint64_t on_now(void *opaque)
{
	return E.clock;
}

static const struct mv_balloon_ops ops = { .interrupt = on_interrupt, .now_ns = on_now };

/* ---- guest memory ---- */

static inline uint8_t *gp(uint64_t gpa, uint64_t len)
{
	if (gpa + len <= R0_PAGES * PG)
		return E.ram0 + gpa;
	if (gpa >= R1_GPA && gpa + len <= R1_GPA + R1_PAGES * PG)
		return E.ram1 + (gpa - R1_GPA);
	fail_msg("test bug: gpa %#llx outside RAM", (unsigned long long)gpa);
	return NULL;
}

static inline void put16(uint64_t gpa, uint16_t v)
{
	uint8_t *p = gp(gpa, 2);
	p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8);
}

static inline void put32(uint64_t gpa, uint32_t v)
{
	uint8_t *p = gp(gpa, 4);
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline void put64(uint64_t gpa, uint64_t v)
{
	put32(gpa, (uint32_t)v);
	put32(gpa + 4, (uint32_t)(v >> 32));
}

static inline uint16_t get16(uint64_t gpa)
{
	volatile uint8_t *p = gp(gpa, 2);
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t get32(uint64_t gpa)
{
	volatile uint8_t *p = gp(gpa, 4);
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t scratch(size_t len)
{
	uint64_t a = E.scratch;
	E.scratch = (E.scratch + len + 15) & ~15ull;
	assert_true(E.scratch <= 0x100000);
	return a;
}

/* Fill [gpa, gpa+len) with the 32-bit pattern v; check it holds v everywhere. */
static inline void fill32(uint64_t gpa, uint64_t len, uint32_t v)
{
	for (uint64_t o = 0; o < len; o += 4)
		put32(gpa + o, v);
}

static inline bool all32(uint64_t gpa, uint64_t len, uint32_t v)
{
	for (uint64_t o = 0; o < len; o += 4)
		if (get32(gpa + o) != v)
			return false;
	return true;
}

/* ---- virtio-mmio, as a driver does it ---- */

static inline uint32_t rd_n(unsigned off, unsigned len)
{
	uint8_t b[8] = { 0 };
	mv_balloon_mmio_read(E.b, off, b, len);
	return b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
}

static inline uint32_t rd(unsigned off)
{
	return rd_n(off, 4);
}

static inline void wr(unsigned off, uint32_t v)
{
	uint8_t b[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };
	mv_balloon_mmio_write(E.b, off, b, 4);
}

static inline unsigned popcount(uint64_t x)
{
	return (unsigned)__builtin_popcountll(x);
}

/* The queue count Linux and QEMU expect: statsq, free_page_vq, reporting_vq compacted. */
static inline unsigned queues_for(uint64_t feat)
{
	return 2 + popcount(feat & (F(STATS_VQ) | F(FREE_PAGE_HINT) | F(PAGE_REPORTING)));
}

static inline unsigned q_stats(void)  { return 2; }
static inline unsigned q_hint(void)   { return 2 + !!(E.feat & F(STATS_VQ)); }
static inline unsigned q_report(void)
{
	return 2 + !!(E.feat & F(STATS_VQ)) + !!(E.feat & F(FREE_PAGE_HINT));
}

/* Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK; the status read back. */
static inline uint32_t negotiate(uint64_t feat)
{
	wr(MMIO_STATUS, 0);
	wr(MMIO_STATUS, ST_ACK);
	wr(MMIO_STATUS, ST_ACK | ST_DRIVER);
	wr(MMIO_DRV_FEATURES_SEL, 0);
	wr(MMIO_DRV_FEATURES, (uint32_t)feat);
	wr(MMIO_DRV_FEATURES_SEL, 1);
	wr(MMIO_DRV_FEATURES, (uint32_t)(feat >> 32));
	wr(MMIO_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
	return rd(MMIO_STATUS);
}

/* Program queue q's rings (zeroed, at RING_GPA(q)); ready only if asked. */
static inline void queue_program(unsigned q, bool ready)
{
	struct vq *v = &E.vq[q];
	*v = (struct vq){ .num = QSIZE, .desc = RING_GPA(q) };
	v->avail = v->desc + 16 * QSIZE;
	v->used = v->avail + 0x800;
	memset(gp(RING_GPA(q), 0x8000), 0, 0x8000);
	wr(MMIO_QUEUE_SEL, q);
	assert_true(rd(MMIO_QUEUE_NUM_MAX) >= QSIZE);
	assert_int_equal(rd(MMIO_QUEUE_READY), 0);
	wr(MMIO_QUEUE_NUM, QSIZE);
	wr(MMIO_QUEUE_DESC_LO, (uint32_t)v->desc);
	wr(MMIO_QUEUE_DESC_HI, (uint32_t)(v->desc >> 32));
	wr(MMIO_QUEUE_DRIVER_LO, (uint32_t)v->avail);
	wr(MMIO_QUEUE_DRIVER_HI, (uint32_t)(v->avail >> 32));
	wr(MMIO_QUEUE_DEVICE_LO, (uint32_t)v->used);
	wr(MMIO_QUEUE_DEVICE_HI, (uint32_t)(v->used >> 32));
	if (ready)
		wr(MMIO_QUEUE_READY, 1);
}

/* A driver's whole initialization (3.1.1), writing poison_val first if asked. */
static inline void up_poison(uint64_t feat, bool poison, uint32_t poison_val)
{
	feat |= V1;
	assert_true(negotiate(feat) & ST_FEATURES_OK);
	E.feat = feat;
	for (unsigned q = 0; q < queues_for(feat); q++)
		queue_program(q, true);
	if (poison)
		wr(MMIO_CONFIG + CFG_POISON, poison_val);
	wr(MMIO_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	assert_int_equal(rd(MMIO_STATUS), ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
}

static inline void up(uint64_t feat)
{
	up_poison(feat, false, 0);
}

/* Make a descriptor chain available on queue q; returns its head. */
static inline uint16_t vq_add(unsigned q, const struct sg *sg, unsigned n)
{
	struct vq *v = &E.vq[q];
	uint16_t head = v->next;
	for (unsigned i = 0; i < n; i++) {
		uint16_t idx = (uint16_t)((head + i) % v->num);
		uint64_t d = v->desc + 16ull * idx;
		put64(d, sg[i].gpa);
		put32(d + 8, sg[i].len);
		put16(d + 12, (uint16_t)((sg[i].write ? VRING_DESC_F_WRITE : 0) |
		                         (i + 1 < n ? VRING_DESC_F_NEXT : 0)));
		put16(d + 14, (uint16_t)((idx + 1) % v->num));
	}
	v->next = (uint16_t)((head + n) % v->num);
	put16(v->avail + VRING_AVAIL_RING(v->avail_idx % v->num), head);
	/* the ring entry is visible before the index that publishes it (a release store) */
	__atomic_store_n((uint16_t *)(void *)gp(v->avail + VRING_AVAIL_OFF_IDX, 2),
	                 htole16(++v->avail_idx), __ATOMIC_RELEASE);
	return head;
}

static inline void kick(unsigned q)
{
	wr(MMIO_QUEUE_NOTIFY, q);
}

static inline uint16_t used_idx(unsigned q)
{
	return get16(E.vq[q].used + VRING_USED_OFF_IDX);
}

/* Pop one used element of queue q: false if none. */
static inline bool vq_pop(unsigned q, uint32_t *id, uint32_t *len)
{
	struct vq *v = &E.vq[q];
	if (used_idx(q) == v->last_used)
		return false;
	uint64_t e = v->used + VRING_USED_ELEM(v->last_used % v->num);
	if (id)
		*id = get32(e);
	if (len)
		*len = get32(e + 4);
	v->last_used++;
	return true;
}

/* One out-buffer of PFNs on queue q, notified. */
static inline uint16_t send_pfns(unsigned q, const uint32_t *pfn, unsigned n)
{
	uint64_t a = scratch(4ull * n);
	for (unsigned i = 0; i < n; i++)
		put32(a + 4ull * i, pfn[i]);
	uint16_t head = vq_add(q, &(struct sg){ a, 4 * n, false }, 1);
	kick(q);
	return head;
}

static inline void send_cmd_id(uint32_t id)
{
	uint64_t a = scratch(4);
	put32(a, id);
	vq_add(q_hint(), &(struct sg){ a, 4, false }, 1);
}

static inline void send_stats(unsigned q, const uint16_t *tag, const uint64_t *val, unsigned n)
{
	uint64_t a = scratch(STAT_ENTRY * n);
	for (unsigned i = 0; i < n; i++) {
		put16(a + STAT_ENTRY * i, tag[i]);
		put64(a + STAT_ENTRY * i + 2, val[i]);
	}
	vq_add(q, &(struct sg){ a, STAT_ENTRY * n, false }, 1);
	kick(q);
}

/* One report of [gpa, gpa+len) on the reporting queue; true if the device used it. */
static inline bool report(uint64_t gpa, uint32_t len)
{
	vq_add(q_report(), &(struct sg){ gpa, len, true }, 1);
	kick(q_report());
	return vq_pop(q_report(), NULL, NULL);
}

static inline struct mv_balloon_info info(void)
{
	struct mv_balloon_info i;
	assert_int_equal(mv_balloon_info(E.b, &i), 0);
	return i;
}

static inline uint32_t cfg32(unsigned off)
{
	return rd(MMIO_CONFIG + off);
}

/* ---- fixtures ---- */

static inline void dev_open(uint64_t offered)
{
	mv_balloon_free(E.b);
	E.b = NULL;
	struct mv_balloon_config c;
	mv_balloon_config_init(&c);
	c.features = offered;
	c.ops = &ops;
	c.opaque = &E;
	assert_int_equal(mv_balloon_new(E.vm, &c, &E.b), 0);
}

static inline int setup(void **state)
{
	memset(&E, 0, sizeof(E));
	E.scratch = SCRATCH;
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "conformance";
	assert_int_equal(mv_vm_new(g_host, &vc, &E.vm), 0);
	E.ram0 = tu_guest_alloc(R0_PAGES);
	E.ram1 = tu_guest_alloc(R1_PAGES);
	assert_int_equal(mv_vm_region_add(E.vm, 0, R0_GPA, E.ram0, R0_PAGES * PG, 0), 0);
	assert_int_equal(mv_vm_region_add(E.vm, 1, R1_GPA, E.ram1, R1_PAGES * PG, 0), 0);
	dev_open(MV_BALLOON_FEATURES_ALL);
	return 0;
}

static inline int teardown(void **state)
{
	mv_balloon_free(E.b);
	mv_vm_free(E.vm);
	tu_guest_free(E.ram0, R0_PAGES);
	tu_guest_free(E.ram1, R1_PAGES);
	memset(&E, 0, sizeof(E));
	return 0;
}

static inline void skip_no_host(void **state)
{
	TU_SKIP("no memvirt host (userfaultfd write-protect or PAGEMAP_SCAN missing)");
}

/* Run the rows, each against a fresh VM and device of one shared host. */
static inline int devkit_main(const char *group, const struct conf_row *rows, size_t n)
{
	struct conf_row *r = malloc(n * sizeof(*r));
	assert_non_null(r);
	memcpy(r, rows, n * sizeof(*r));
	struct mv_host_config hc;
	mv_host_config_init(&hc);
	if (mv_host_new(&hc, &g_host))
		for (size_t i = 0; i < n; i++)
			r[i].check = skip_no_host;
	int rc = conf_run(group, r, n, g_host ? setup : NULL, g_host ? teardown : NULL, NULL, NULL);
	mv_host_free(g_host);
	g_host = NULL;
	free(r);
	return rc;
}

#define ROW(clause, level, text, fn) { clause, "device", level, text, fn, NULL }
/* A row Linux 6.1's driver observes too, in test `lx` of tests/guests/test_linux_balloon.c. */
#define ROWL(clause, level, text, fn, lx) { clause, "device", level, text, fn, lx }

#endif
