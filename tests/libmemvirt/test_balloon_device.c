/* test_balloon_device.c - the virtio-balloon device driven through its rings by a tiny
 * driver written here: negotiation, config, inflate/deflate outcomes (pagemap, mincore),
 * statistics, stalls, reporting, hinting, hostile rings, the virtio-mmio registers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <memvirt/balloon.h>
#include <memvirt/memvirt.h>
#include "internal.h"
#include "testutil.h"

#define MiB        (1ull << 20)
#define RAM_PAGES  16384u           /* 64 MiB: gpa [0, 32 MiB) and [64 MiB, 96 MiB) */
#define HOLE       (32 * MiB)
#define HIGH       (64 * MiB)
#define RING_GPA   (16 * MiB)       /* driver rings, 64 KiB per queue */
#define DATA_GPA   (24 * MiB)       /* driver buffers */
#define QNUM       64
#define NQ         5
#define V1         (1ull << MV_VIRTIO_F_VERSION_1)
#define FB(x)      (1ull << MV_BALLOON_F_##x)
#define ALL        MV_BALLOON_FEATURES_ALL
#define PFN(gpa)   ((uint32_t)((gpa) >> 12))
enum { ACK = 1, DRV = 2, DRV_OK = 4, FEAT_OK = 8, NEEDS_RESET = 0x40 };
enum { D_NEXT = 1, D_WRITE = 2, D_INDIRECT = 4 };

struct drvq { uint64_t desc, avail, used; uint16_t num, next, avail_idx, last_used; };
struct sg { uint64_t gpa; uint32_t len; bool write; };

struct fx {
	struct mv_host *h;
	struct mv_vm *vm;
	uint8_t *mem;
	struct mv_balloon *b;
	struct mv_balloon_ops ops;
	uint64_t now, data;
	unsigned irq[NQ], cfg_irq;
	struct drvq q[NQ];
};

static void on_irq(void *opaque, int q)
{
	struct fx *f = opaque;
	if (q < 0)
		f->cfg_irq++;
	else if (q < NQ)
		f->irq[q]++;
}

static uint64_t on_now(void *opaque) { return ((struct fx *)opaque)->now; }

/* Host address of a guest-physical address of the fixture's RAM. */
static void *G(struct fx *f, uint64_t gpa)
{
	if (gpa < HOLE)
		return f->mem + gpa;
	assert_true(gpa >= HIGH && gpa < HIGH + HOLE);
	return f->mem + HOLE + (gpa - HIGH);
}

static bool resident(struct fx *f, uint64_t gpa)
{
	unsigned char v = 0;
	assert_int_equal(mincore(G(f, gpa), TPAGE, &v), 0);
	return v & 1;
}

static bool page_is(struct fx *f, uint64_t gpa, uint8_t byte)
{
	const uint8_t *p = G(f, gpa);
	for (size_t i = 0; i < TPAGE; i++)
		if (p[i] != byte)
			return false;
	return true;
}

static void dev_new(struct fx *f, uint64_t features, bool prefault)
{
	mv_balloon_free(f->b);
	struct mv_balloon_config cfg;
	mv_balloon_config_init(&cfg);
	cfg.features = features;
	cfg.prefault_deflate = prefault;
	cfg.stall_ns = 1000;
	cfg.ops = &f->ops;
	cfg.opaque = f;
	f->b = NULL;
	assert_int_equal(mv_balloon_new(f->vm, &cfg, &f->b), 0);
	memset(f->q, 0, sizeof(f->q));
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->h = tu_host();
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "balloon";
	assert_int_equal(mv_vm_new(f->h, &vc, &f->vm), 0);
	f->mem = tu_guest_alloc(RAM_PAGES);
	assert_int_equal(mv_vm_region_add(f->vm, 0, 0, f->mem, HOLE, 0), 0);
	assert_int_equal(mv_vm_region_add(f->vm, 1, HIGH, f->mem + HOLE, HOLE, 0), 0);
	f->ops = (struct mv_balloon_ops){ .interrupt = on_irq, .now_ns = on_now };
	f->data = DATA_GPA;
	dev_new(f, ALL, false);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	mv_balloon_free(f->b);
	mv_vm_free(f->vm);
	mv_host_free(f->h);
	tu_guest_free(f->mem, RAM_PAGES);
	free(f);
	return 0;
}

/* ---- the driver side ---- */

static uint64_t dalloc(struct fx *f, size_t len)
{
	uint64_t gpa = f->data;
	f->data += (len + TPAGE - 1) & ~(TPAGE - 1);
	assert_true(f->data <= HOLE);
	return gpa;
}

static void ring_setup(struct fx *f, unsigned q)
{
	struct drvq *d = &f->q[q];
	uint64_t base = RING_GPA + q * 0x10000ull;
	memset(G(f, base), 0, 0x10000);
	*d = (struct drvq){ .desc = base, .avail = base + 0x4000, .used = base + 0x8000, .num = QNUM };
	struct mv_virtq_setup s = { QNUM, d->desc, d->avail, d->used };
	assert_int_equal(mv_balloon_queue_setup(f->b, q, &s), 0);
}

static void up(struct fx *f, uint64_t features)
{
	assert_int_equal(mv_balloon_set_status(f->b, 0), 0);
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV), 0);
	assert_int_equal(mv_balloon_driver_features(f->b, features | V1), 0);
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV | FEAT_OK), 0);
	for (unsigned q = 0; q < mv_balloon_nr_queues(f->b); q++)
		ring_setup(f, q);
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV | FEAT_OK | DRV_OK), 0);
}

static void set_desc(struct fx *f, unsigned q, uint16_t i, uint64_t addr, uint32_t len,
                     uint16_t flags, uint16_t next)
{
	uint8_t *d = G(f, f->q[q].desc + 16u * i);
	memcpy(d, &addr, 8);
	memcpy(d + 8, &len, 4);
	memcpy(d + 12, &flags, 2);
	memcpy(d + 14, &next, 2);
}

static void publish(struct fx *f, unsigned q, uint16_t head)
{
	struct drvq *d = &f->q[q];
	uint16_t *avail = G(f, d->avail);
	avail[2 + d->avail_idx % d->num] = head;
	__atomic_store_n(&avail[1], ++d->avail_idx, __ATOMIC_RELEASE);
}

/* Queue a chain of n buffers; returns its head. */
static uint16_t add_chain(struct fx *f, unsigned q, const struct sg *sg, unsigned n)
{
	struct drvq *d = &f->q[q];
	uint16_t head = d->next % d->num;
	for (unsigned i = 0; i < n; i++) {
		uint16_t idx = (head + i) % d->num;
		set_desc(f, q, idx, sg[i].gpa, sg[i].len,
		         (i + 1 < n ? D_NEXT : 0) | (sg[i].write ? D_WRITE : 0), (idx + 1) % d->num);
	}
	d->next += n;
	publish(f, q, head);
	return head;
}

/* Chains the device returned since the last call. */
static unsigned used(struct fx *f, unsigned q)
{
	struct drvq *d = &f->q[q];
	uint16_t idx = __atomic_load_n((uint16_t *)G(f, d->used + 2), __ATOMIC_ACQUIRE);
	unsigned n = (uint16_t)(idx - d->last_used);
	d->last_used = idx;
	return n;
}

static int send(struct fx *f, unsigned q, const struct sg *sg, unsigned n)
{
	add_chain(f, q, sg, n);
	return mv_balloon_queue_notify(f->b, q);
}

/* One request of n PFNs on queue q (0 inflate, 1 deflate); the device must return it. */
static void send_pfns(struct fx *f, unsigned q, const uint32_t *pfn, size_t n)
{
	struct sg sg = { dalloc(f, n * 4), (uint32_t)(n * 4), false };
	memcpy(G(f, sg.gpa), pfn, n * 4);
	assert_int_equal(send(f, q, &sg, 1), 0);
	assert_int_equal(used(f, q), 1);
}

static struct mv_balloon_info info(struct fx *f)
{
	struct mv_balloon_info in;
	assert_int_equal(mv_balloon_info(f->b, &in), 0);
	return in;
}

static uint32_t cfg32(struct fx *f, unsigned off)
{
	uint8_t v[4];
	assert_int_equal(mv_balloon_config_read(f->b, off, v, 4), 0);
	return v[0] | v[1] << 8 | v[2] << 16 | (uint32_t)v[3] << 24;
}

static int cfg_write32(struct fx *f, unsigned off, uint32_t val)
{
	uint8_t v[4] = { (uint8_t)val, (uint8_t)(val >> 8), (uint8_t)(val >> 16), (uint8_t)(val >> 24) };
	return mv_balloon_config_write(f->b, off, v, 4);
}

/* ---- negotiation and config ---- */

static void features_and_queue_numbers(void **state)
{
	struct fx *f = *state;
	assert_true(mv_balloon_device_features(f->b) == (ALL | V1));
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV), 0);
	assert_int_equal(mv_balloon_driver_features(f->b, FB(STATS_VQ)), -EINVAL); /* no VERSION_1 */
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV | FEAT_OK), -EINVAL);
	assert_int_equal(mv_balloon_get_status(f->b), ACK | DRV);
	assert_int_equal(mv_balloon_driver_features(f->b, V1 | (1ull << 40)), -EINVAL);
	static const struct { uint64_t feat; unsigned nq; } t[] = {
		{ 0, 2 }, { FB(STATS_VQ), 3 }, { FB(PAGE_REPORTING), 3 }, { FB(FREE_PAGE_HINT), 3 },
		{ FB(FREE_PAGE_HINT) | FB(PAGE_REPORTING), 4 }, { FB(STATS_VQ) | FB(PAGE_REPORTING), 4 },
		{ FB(MUST_TELL_HOST) | FB(PAGE_POISON) | FB(DEFLATE_ON_OOM), 2 }, { ALL, 5 },
	};
	for (unsigned i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		up(f, t[i].feat);
		assert_int_equal(mv_balloon_nr_queues(f->b), t[i].nq);
		assert_int_equal(mv_balloon_driver_features(f->b, ALL | V1), -EPERM); /* frozen */
		assert_int_equal(mv_balloon_nr_queues(f->b), t[i].nq);
		assert_true(info(f).features == (t[i].feat | V1));
	}
	/* The numbering, seen from what each queue does: reporting_vq is 2 without stats
	 * and hinting, 3 after the stats queue or the hint queue. */
	struct sg rep = { 4 * MiB, 2 * MiB, true };
	up(f, FB(PAGE_REPORTING));
	assert_int_equal(send(f, 2, &rep, 1), 0);
	assert_int_equal(info(f).reported_bytes, 2 * MiB);
	up(f, FB(STATS_VQ) | FB(PAGE_REPORTING));
	assert_int_equal(send(f, 3, &rep, 1), 0);
	assert_int_equal(info(f).reported_bytes, 4 * MiB);
	up(f, FB(FREE_PAGE_HINT) | FB(PAGE_REPORTING));
	assert_int_equal(send(f, 3, &rep, 1), 0);
	assert_int_equal(info(f).reported_bytes, 6 * MiB);
	/* a device offering less refuses more */
	dev_new(f, FB(STATS_VQ), false);
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV), 0);
	assert_int_equal(mv_balloon_driver_features(f->b, FB(PAGE_REPORTING) | V1), -EINVAL);
	assert_int_equal(mv_balloon_driver_features(f->b, FB(STATS_VQ) | V1), 0);
}

static void config_layout(void **state)
{
	struct fx *f = *state;
	up(f, ALL);
	uint32_t gen = mv_balloon_config_generation(f->b);
	assert_int_equal(mv_balloon_set_target(f->b, 10 * MiB + 5000), 0);
	assert_int_not_equal(mv_balloon_config_generation(f->b), gen);
	assert_int_equal(f->cfg_irq, 1);
	uint8_t raw[20];
	assert_int_equal(mv_balloon_config_read(f->b, 0, raw, sizeof(raw)), 0);
	assert_int_equal(raw[0] | raw[1] << 8 | raw[2] << 16 | raw[3] << 24, 2561); /* LE, rounded down */
	for (unsigned i = 16; i < sizeof(raw); i++)
		assert_int_equal(raw[i], 0);
	assert_int_equal(cfg_write32(f, 4, 1234), 0);
	assert_int_equal(cfg32(f, 4), 1234);
	assert_int_equal(info(f).actual_bytes, 1234 * TPAGE);
	uint8_t lo = 0x11; /* byte writes merge into the field */
	assert_int_equal(mv_balloon_config_write(f->b, 4, &lo, 1), 0);
	assert_int_equal(cfg32(f, 4), (1234 & ~0xffu) | 0x11);
	assert_int_equal(cfg_write32(f, 0, 7), -EPERM);  /* num_pages is the device's */
	assert_int_equal(cfg_write32(f, 8, 7), -EPERM);  /* so is the hint cmd id */
	assert_int_equal(cfg_write32(f, 16, 7), -EPERM); /* nothing beyond */
	uint8_t wide[8] = { 0 };
	assert_int_equal(mv_balloon_config_write(f->b, 0, wide, 8), -EPERM);
	assert_int_equal(cfg32(f, 0), 2561);
	assert_int_equal(cfg_write32(f, 12, 0xaabbccdd), 0); /* PAGE_POISON negotiated */
	assert_int_equal(cfg32(f, 12), 0xaabbccdd);
	assert_int_equal(cfg32(f, 14), 0xaabb);
	assert_int_equal(cfg32(f, 100), 0);
	assert_int_equal(mv_balloon_hint_start(f->b), 0);
	assert_true(cfg32(f, 8) >= 2);
	assert_int_equal(mv_balloon_hint_stop(f->b), 0);
	assert_int_equal(cfg32(f, 8), 1);
	assert_int_equal(mv_balloon_set_target(f->b, 64 * MiB), 0); /* all of RAM */
	assert_int_equal(mv_balloon_set_target(f->b, 64 * MiB + TPAGE), -EINVAL);
	assert_int_equal(cfg32(f, 0), 16384);
	up(f, 0);
	assert_int_equal(cfg_write32(f, 12, 1), -EPERM); /* poison_val needs PAGE_POISON */
	assert_int_equal(cfg32(f, 0), 16384);            /* the target survives a reset */
	assert_int_equal(mv_balloon_hint_start(f->b), -ENOTSUP);
}

static void wrong_state_ignored(void **state)
{
	struct fx *f = *state;
	assert_int_equal(cfg_write32(f, 4, 9), -EPERM); /* before DRIVER */
	assert_int_equal(cfg32(f, 4), 0);
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV), 0);
	struct mv_virtq_setup s = { QNUM, RING_GPA, RING_GPA + 0x4000, RING_GPA + 0x8000 };
	assert_int_equal(mv_balloon_queue_setup(f->b, 0, &s), -EBUSY); /* before FEATURES_OK */
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV | DRV_OK), -EINVAL);
	assert_int_equal(mv_balloon_get_status(f->b), ACK | DRV);
	assert_int_equal(mv_balloon_set_status(f->b, ACK), -EINVAL); /* only reset clears bits */
	up(f, 0);
	assert_int_equal(mv_balloon_queue_setup(f->b, 0, &s), -EBUSY); /* after DRIVER_OK */
	assert_int_equal(mv_balloon_queue_setup(f->b, 0, NULL), -EBUSY);
	assert_int_equal(mv_balloon_queue_notify(f->b, 2), -EINVAL);  /* no such queue */
	assert_int_equal(mv_balloon_stats_request(f->b), -ENOTSUP);
	/* a ring error: NEEDS_RESET, config interrupt, then the driver's writes are ignored */
	f->q[0].avail_idx = QNUM + 1;
	publish(f, 0, 0);
	assert_int_equal(mv_balloon_queue_notify(f->b, 0), -EPROTO);
	assert_true(mv_balloon_get_status(f->b) & NEEDS_RESET);
	assert_int_equal(f->cfg_irq, 1);
	assert_int_equal(cfg_write32(f, 4, 9), -EPERM);
	assert_int_equal(mv_balloon_queue_notify(f->b, 1), 0); /* ignored */
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV | FEAT_OK | DRV_OK), 0);
	assert_true(mv_balloon_get_status(f->b) & NEEDS_RESET); /* the driver cannot clear it */
	up(f, 0);
	assert_false(info(f).needs_reset);
	assert_int_equal(cfg_write32(f, 4, 9), 0);
}

/* ---- inflate and deflate ---- */

static void inflate_releases(void **state)
{
	struct fx *f = *state;
	up(f, ALL);
	uint32_t pfn[600], n = 0;
	for (uint32_t p = 512; p < 1024; p++) /* one whole 2 MiB block */
		pfn[n++] = p;
	uint32_t scattered[] = { 0x100, 0x104, 0x102, PFN(HIGH) + 0x11, PFN(HIGH) + 0x10 };
	uint32_t bad[] = { PFN(HOLE), PFN(HOLE) + 1, PFN(HIGH + HOLE), 0xffffffff, 0x102 };
	memcpy(pfn + n, scattered, sizeof(scattered));
	n += 5;
	memcpy(pfn + n, bad, sizeof(bad));
	n += 5;
	pfn[0] = 1023; /* out of order: the device sorts */
	pfn[511] = 512;
	send_pfns(f, 0, pfn, n);
	struct mv_balloon_info in = info(f);
	assert_int_equal(in.inflated_bytes, 517 * TPAGE);
	assert_int_equal(in.held_bytes, 517 * TPAGE);
	assert_int_equal(in.released_bytes, 517 * TPAGE);
	assert_int_equal(in.guest_errors, 5); /* hole, beyond RAM, duplicate */
	assert_false(in.needs_reset);
	for (unsigned i = 0; i < 517; i++) {
		uint64_t gpa = (uint64_t)pfn[i] << 12;
		assert_false(resident(f, gpa));
		assert_true(page_is(f, gpa, 0));
	}
	assert_true(page_is(f, 0x101000, 0x5a)); /* neighbours untouched */
	assert_true(page_is(f, 0x103000, 0x5a));
	assert_true(page_is(f, HIGH + 0x12000, 0x5a));
	send_pfns(f, 0, pfn, 1); /* already in the balloon */
	assert_int_equal(info(f).guest_errors, 6);
	assert_int_equal(info(f).held_bytes, 517 * TPAGE);
	assert_int_equal(f->irq[0], 2);
	*(uint16_t *)G(f, f->q[0].avail) = 1; /* VIRTQ_AVAIL_F_NO_INTERRUPT */
	send_pfns(f, 0, pfn + 600 - 11, 1);
	assert_int_equal(f->irq[0], 2);
}

static void deflate_and_prefault(void **state)
{
	struct fx *f = *state;
	for (int prefault = 0; prefault < 2; prefault++) {
		dev_new(f, ALL, prefault);
		up(f, ALL);
		uint32_t pfn[16];
		for (unsigned i = 0; i < 16; i++)
			pfn[i] = 0x800 + 2 * i + prefault * 0x100;
		send_pfns(f, 0, pfn, 16);
		assert_int_equal(info(f).held_bytes, 16 * TPAGE);
		uint32_t back[] = { pfn[0], pfn[1], pfn[15], 0x7ff, PFN(HOLE) }; /* 2 not ballooned */
		send_pfns(f, 1, back, 5);
		struct mv_balloon_info in = info(f);
		assert_int_equal(in.held_bytes, 13 * TPAGE);
		assert_int_equal(in.deflated_bytes, 3 * TPAGE);
		assert_int_equal(in.guest_errors, 2);
		for (unsigned i = 0; i < 3; i++)
			assert_int_equal(resident(f, (uint64_t)back[i] << 12), prefault);
		assert_false(resident(f, (uint64_t)pfn[2] << 12));
		assert_true(page_is(f, (uint64_t)back[0] << 12, 0));
		send_pfns(f, 0, back, 1); /* back in: accepted again */
		assert_int_equal(info(f).held_bytes, 14 * TPAGE);
	}
}

/* Many unsorted PFNs with duplicates: every unique valid one is ballooned once. */
static void unsorted_large_request(void **state)
{
	struct fx *f = *state;
	up(f, ALL);
	enum { N = 4096 };
	static uint32_t pfn[N];
	uint64_t seed = 42;
	for (unsigned i = 0; i < N; i++) /* within [0, 16 MiB) */
		pfn[i] = (uint32_t)(tu_rand(&seed) % 4096);
	send_pfns(f, 0, pfn, N);
	static uint8_t seen[4096];
	unsigned uniq = 0;
	for (unsigned i = 0; i < N; i++)
		uniq += !seen[pfn[i]]++;
	struct mv_balloon_info in = info(f);
	assert_int_equal(in.held_bytes, (uint64_t)uniq * TPAGE);
	assert_int_equal(in.guest_errors, N - uniq);
	for (unsigned p = 0; p < 4096; p++)
		assert_int_equal(resident(f, (uint64_t)p << 12), !seen[p]);
}

/* ---- statistics and stalls ---- */

static void put_stat(uint8_t *p, uint16_t tag, uint64_t val)
{
	memcpy(p, &tag, 2);
	memcpy(p + 2, &val, 8);
}

static void stats_protocol(void **state)
{
	struct fx *f = *state;
	up(f, FB(STATS_VQ));
	assert_int_equal(mv_balloon_stats_request(f->b), -EAGAIN);
	assert_true(info(f).stats_age_ns == UINT64_MAX);
	uint64_t gpa = dalloc(f, 64 * 1024);
	uint8_t *p = G(f, gpa);
	put_stat(p, MV_BSTAT_SWAP_IN, 1);
	put_stat(p + 10, MV_BSTAT_DIRECT_RECLAIMS, 99);
	put_stat(p + 20, 16, 5);             /* unknown: ignored */
	put_stat(p + 30, MV_BSTAT_MEMFREE, 1ull << 40);
	memset(p + 40, 0xee, 7);             /* a trailing partial entry */
	struct sg sg = { gpa, 47, false };
	f->now = 1000;
	assert_int_equal(send(f, 2, &sg, 1), 0);
	assert_int_equal(used(f, 2), 0);     /* kept until the host asks */
	f->now = 3000;
	struct mv_balloon_info in = info(f);
	assert_int_equal(in.stats_valid, 1u << 0 | 1u << 15 | 1u << 4);
	assert_int_equal(in.stats[0], 1);
	assert_int_equal(in.stats[15], 99);
	assert_true(in.stats[4] == 1ull << 40);
	assert_int_equal(in.stats_age_ns, 2000);
	assert_int_equal(mv_balloon_stats_request(f->b), 0);
	assert_int_equal(used(f, 2), 1);
	assert_int_equal(f->irq[2], 1);
	assert_int_equal(mv_balloon_stats_request(f->b), -EAGAIN);
	/* oversized: 64 KiB of entries, more than the device reads */
	for (unsigned i = 0; i < 6553; i++)
		put_stat(p + 10 * i, MV_BSTAT_MAJFLT, i);
	sg.len = 64 * 1024;
	assert_int_equal(send(f, 2, &sg, 1), 0);
	in = info(f);
	assert_true(in.stats[MV_BSTAT_MAJFLT] > 0 && in.stats[MV_BSTAT_MAJFLT] < 6553);
	assert_int_equal(in.stats_age_ns, 0);
	/* a second buffer while one is held: the older goes back */
	assert_int_equal(send(f, 2, &sg, 1), 0);
	assert_int_equal(used(f, 2), 1);
}

/* The driver queues its first stats buffer before DRIVER_OK (as Linux does). */
static void stats_before_driver_ok(void **state)
{
	struct fx *f = *state;
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV), 0);
	assert_int_equal(mv_balloon_driver_features(f->b, FB(STATS_VQ) | V1), 0);
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV | FEAT_OK), 0);
	for (unsigned q = 0; q < 3; q++)
		ring_setup(f, q);
	uint64_t gpa = dalloc(f, 10);
	put_stat(G(f, gpa), MV_BSTAT_CACHES, 77);
	struct sg sg = { gpa, 10, false };
	assert_int_equal(send(f, 2, &sg, 1), 0);
	assert_int_equal(info(f).stats_valid, 0); /* nothing consumed before DRIVER_OK */
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV | FEAT_OK | DRV_OK), 0);
	assert_int_equal(info(f).stats[MV_BSTAT_CACHES], 77);
	assert_int_equal(mv_balloon_stats_request(f->b), 0);
}

static void stall_detection(void **state)
{
	struct fx *f = *state; /* stall_ns = 1000, clock f->now */
	up(f, 0);
	assert_int_equal(mv_balloon_set_target(f->b, 400 * TPAGE), 0);
	assert_false(info(f).stalled);
	f->now += 999;
	assert_false(info(f).stalled);
	f->now += 1;
	struct mv_balloon_info in = info(f);
	assert_true(in.stalled);
	assert_int_equal(in.stalled_ns, 1000);
	assert_int_equal(in.stall_gap_bytes, 400 * TPAGE);
	assert_int_equal(cfg_write32(f, 4, 100), 0); /* progress */
	assert_false(info(f).stalled);
	f->now += 5000;
	assert_int_equal(cfg_write32(f, 4, 100), 0); /* no progress */
	in = info(f);
	assert_true(in.stalled);
	assert_int_equal(in.stall_gap_bytes, 300 * TPAGE);
	assert_int_equal(mv_balloon_set_target(f->b, 200 * TPAGE), 0); /* restarts the clock */
	assert_false(info(f).stalled);
	f->now += 2000;
	assert_int_equal(info(f).stall_gap_bytes, 100 * TPAGE);
	assert_int_equal(cfg_write32(f, 4, 200), 0);
	f->now += 9000;
	assert_false(info(f).stalled); /* reached */
}

/* ---- hostile rings ---- */

/* Each case breaks the ring once: the device must set NEEDS_RESET and stop. */
static void hostile_rings(void **state)
{
	struct fx *f = *state;
	uint64_t buf = dalloc(f, TPAGE);
	for (unsigned c = 0; c < 6; c++) {
		up(f, 0);
		unsigned irqs = f->cfg_irq;
		switch (c) {
		case 0: f->q[0].avail_idx = QNUM; publish(f, 0, 0); break; /* QNUM + 1 ahead */
		case 1: publish(f, 0, QNUM); break;                         /* head out of range */
		case 2: set_desc(f, 0, 0, buf, 4, D_NEXT, QNUM + 3); publish(f, 0, 0); break;
		case 3: set_desc(f, 0, 0, buf, 4, D_NEXT, 1);               /* a loop */
			set_desc(f, 0, 1, buf, 4, D_NEXT, 0);
			publish(f, 0, 0);
			break;
		case 4: set_desc(f, 0, 0, buf, 16, D_INDIRECT, 0); publish(f, 0, 0); break;
		case 5: set_desc(f, 0, 0, buf, 4, D_WRITE | D_NEXT, 1);     /* readable after writable */
			set_desc(f, 0, 1, buf, 4, 0, 0);
			publish(f, 0, 0);
			break;
		}
		assert_int_equal(mv_balloon_queue_notify(f->b, 0), -EPROTO);
		struct mv_balloon_info in = info(f);
		assert_true(in.needs_reset);
		assert_int_equal(f->cfg_irq, irqs + 1);
		assert_int_equal(in.held_bytes, 0);
	}
	/* Bad buffers are the request's problem only: skipped, counted, returned. */
	up(f, 0);
	uint64_t errors = info(f).guest_errors;
	struct sg bad[] = {
		{ HOLE, 64, false }, { 0xfffffffffffff000ull, 0x2000, false },
		{ HIGH + HOLE - 8, 64, false }, { buf, 2 * MiB, false }, { buf, 64, true },
	};
	for (unsigned i = 0; i < 5; i++)
		assert_int_equal(send(f, 0, &bad[i], 1), 0);
	assert_int_equal(used(f, 0), 5);
	struct mv_balloon_info in = info(f);
	assert_false(in.needs_reset);
	assert_int_equal(in.guest_errors - errors, 5);
	/* Ring setups the device refuses. */
	up(f, 0);
	assert_int_equal(mv_balloon_set_status(f->b, 0), 0);
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV), 0);
	assert_int_equal(mv_balloon_driver_features(f->b, V1), 0);
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV | FEAT_OK), 0);
	const struct mv_virtq_setup refused[] = {
		{ 48, RING_GPA, RING_GPA + 0x4000, RING_GPA + 0x8000 },        /* not a power of 2 */
		{ 2048, RING_GPA, RING_GPA + 0x8000, RING_GPA + 0xc000 },      /* > queue_max */
		{ 0, RING_GPA, RING_GPA + 0x4000, RING_GPA + 0x8000 },
		{ QNUM, RING_GPA + 8, RING_GPA + 0x4000, RING_GPA + 0x8000 },  /* misaligned */
		{ QNUM, RING_GPA, RING_GPA + 0x4001, RING_GPA + 0x8000 },
		{ QNUM, RING_GPA, RING_GPA + 0x4000, RING_GPA + 0x8002 },
		{ QNUM, HOLE - 512, RING_GPA + 0x4000, RING_GPA + 0x8000 },    /* runs into the hole */
		{ QNUM, RING_GPA, HIGH + HOLE, RING_GPA + 0x8000 },            /* beyond RAM */
	};
	for (unsigned i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
		assert_int_equal(mv_balloon_queue_setup(f->b, 0, &refused[i]), -EINVAL);
	assert_int_equal(mv_balloon_queue_setup(f->b, 5, &refused[0]), -EINVAL);
}

/* Rings in a region that goes away: the device notices at the next notification. */
static void ring_region_removed(void **state)
{
	struct fx *f = *state;
	up(f, 0);
	uint32_t pfn[] = { PFN(HIGH) + 5, PFN(HIGH) + 6, 3 };
	send_pfns(f, 0, pfn, 3);
	assert_int_equal(info(f).held_bytes, 3 * TPAGE);
	assert_int_equal(mv_balloon_set_status(f->b, 0), 0);
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV), 0);
	assert_int_equal(mv_balloon_driver_features(f->b, V1), 0);
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV | FEAT_OK), 0);
	struct mv_virtq_setup s = { QNUM, HIGH + 0x10000, HIGH + 0x14000, HIGH + 0x18000 };
	memset(G(f, HIGH + 0x10000), 0, 0x10000);
	assert_int_equal(mv_balloon_queue_setup(f->b, 0, &s), 0);
	f->q[0] = (struct drvq){ s.desc, s.avail, s.used, QNUM, 0, 0, 0 };
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV | FEAT_OK | DRV_OK), 0);
	send_pfns(f, 0, pfn, 3); /* the reset forgot them: accepted again */
	assert_int_equal(info(f).guest_errors, 0);
	assert_int_equal(mv_vm_region_remove(f->vm, 1), 0);
	assert_int_equal(info(f).held_bytes, 1 * TPAGE);
	assert_int_equal(mv_balloon_queue_notify(f->b, 0), -EPROTO);
	assert_true(info(f).needs_reset);
}

/* ---- free page reporting and hinting ---- */

static void free_page_reporting(void **state)
{
	struct fx *f = *state;
	up(f, FB(PAGE_REPORTING));
	struct sg sg[] = { { 4 * MiB, 2 * MiB, true }, { HIGH, 4 * MiB, true } };
	assert_int_equal(send(f, 2, sg, 2), 0);
	assert_int_equal(used(f, 2), 1);
	struct mv_balloon_info in = info(f);
	assert_int_equal(in.reported_bytes, 6 * MiB);
	assert_int_equal(in.released_bytes, 6 * MiB);
	assert_false(resident(f, 5 * MiB));
	assert_false(resident(f, HIGH + 3 * MiB));
	assert_true(page_is(f, 6 * MiB, 0x5a));
	struct sg bad[] = { { 8 * MiB, TPAGE, false }, { 8 * MiB + 512, TPAGE, true },
	                    { HOLE - TPAGE, 2 * TPAGE, true }, { 8 * MiB, 0, true } };
	assert_int_equal(send(f, 2, bad, 4), 0);
	assert_int_equal(info(f).guest_errors, 4);
	assert_true(resident(f, HOLE - TPAGE));
	/* PAGE_POISON with a nonzero value: the pages must keep it, nothing is released */
	up(f, FB(PAGE_REPORTING) | FB(PAGE_POISON));
	assert_int_equal(cfg_write32(f, 12, 0xaa), 0);
	memset(G(f, 10 * MiB), 0xaa, 2 * MiB);
	struct sg p = { 10 * MiB, 2 * MiB, true };
	assert_int_equal(send(f, 2, &p, 1), 0);
	assert_int_equal(used(f, 2), 1);
	in = info(f);
	assert_int_equal(in.reported_bytes, 8 * MiB);
	assert_int_equal(in.released_bytes, 6 * MiB);
	assert_true(page_is(f, 11 * MiB, 0xaa));
}

static void free_page_hinting(void **state)
{
	struct fx *f = *state;
	up(f, FB(FREE_PAGE_HINT));
	uint64_t cmd_gpa = dalloc(f, TPAGE);
	uint32_t *cmd = G(f, cmd_gpa);
	assert_int_equal(mv_balloon_hint_start(f->b), 0);
	assert_int_equal(f->cfg_irq, 1);
	uint32_t id = cfg32(f, 8);
	assert_true(id >= 2);
	/* a stale run: its hints are ignored */
	*cmd = id + 1;
	struct sg stale[] = { { cmd_gpa, 4, false }, { 4 * MiB, 1 * MiB, true } };
	assert_int_equal(send(f, 2, stale, 2), 0);
	assert_int_equal(info(f).hinted_bytes, 0);
	/* the run: id, hints, a write racing with them, STOP */
	*cmd = id;
	struct sg run[] = { { cmd_gpa, 4, false }, { 4 * MiB, 1 * MiB, true }, { HIGH, 64 * 1024, true } };
	assert_int_equal(send(f, 2, run, 3), 0);
	assert_int_equal(info(f).hinted_bytes, 1 * MiB + 64 * 1024);
	memset(G(f, 4 * MiB + 8 * TPAGE), 0x77, TPAGE); /* the guest reuses one page */
	uint64_t stop_gpa = dalloc(f, 4);
	*(uint32_t *)G(f, stop_gpa) = 0;
	struct sg stop = { stop_gpa, 4, false };
	assert_int_equal(send(f, 2, &stop, 1), 0);
	assert_int_equal(used(f, 2), 3);
	struct mv_balloon_info in = info(f);
	if (in.hint_discarded_bytes == 0)
		TU_SKIP("guest RAM cannot be write-tracked here: hints are never released");
	assert_int_equal(in.hint_discarded_bytes, 1 * MiB + 64 * 1024 - TPAGE);
	assert_true(page_is(f, 4 * MiB + 8 * TPAGE, 0x77));
	assert_false(resident(f, 4 * MiB + 9 * TPAGE));
	assert_true(page_is(f, 4 * MiB, 0));
	assert_true(page_is(f, HIGH, 0));
	assert_true(page_is(f, 5 * MiB, 0x5a));
	assert_int_equal(mv_balloon_hint_stop(f->b), 0);
	assert_int_equal(cfg32(f, 8), 1);
}

/* More hinted ranges than the device keeps armed: the oldest complete early, and RAM
 * whose writes cannot be tracked is counted as hinted, never released. */
static void hint_bookkeeping_bounded(void **state)
{
	struct fx *f = *state;
	uint8_t *raw = mmap(NULL, 1 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(raw != MAP_FAILED);
	memset(raw, 0x21, 1 * MiB);
	assert_int_equal(mv_vm_region_add(f->vm, 3, 256 * MiB, raw, 1 * MiB, MV_REGION_NEVER_MERGE), 0);
	up(f, FB(FREE_PAGE_HINT));
	assert_int_equal(mv_balloon_hint_start(f->b), 0);
	uint64_t cmd_gpa = dalloc(f, TPAGE);
	*(uint32_t *)G(f, cmd_gpa) = cfg32(f, 8);
	struct sg sg[QNUM];
	sg[0] = (struct sg){ cmd_gpa, 4, false };
	sg[1] = (struct sg){ 256 * MiB, 1 * MiB, true };
	assert_int_equal(send(f, 2, sg, 2), 0);
	unsigned pages = 0; /* 1100 single pages, every other page of [0, 8.6 MiB) */
	while (pages < 1100) {
		unsigned n = 0;
		for (; n < 32 && pages < 1100; n++, pages++)
			sg[n] = (struct sg){ 2ull * pages * TPAGE, TPAGE, true };
		assert_int_equal(send(f, 2, sg, n), 0);
	}
	struct mv_balloon_info in = info(f);
	assert_int_equal(in.hinted_bytes, 1 * MiB + 1100 * TPAGE);
	if (in.hint_discarded_bytes == 0) {
		assert_int_equal(mv_vm_region_remove(f->vm, 3), 0);
		munmap(raw, 1 * MiB);
		TU_SKIP("guest RAM cannot be write-tracked here: hints are never released");
	}
	/* MADV_PAGEOUT frees at once what it can isolate: a page still in another CPU's LRU
	 * batch stays lazily freed (dropped when the kernel needs memory) and is not counted */
	assert_in_range(in.hint_discarded_bytes, 1000 * TPAGE, 1024 * TPAGE);
	*(uint32_t *)G(f, cmd_gpa) = 0; /* STOP */
	sg[0] = (struct sg){ cmd_gpa, 4, false };
	assert_int_equal(send(f, 2, sg, 1), 0);
	in = info(f);
	assert_in_range(in.hint_discarded_bytes, 1070 * TPAGE, 1100 * TPAGE);
	assert_false(resident(f, 2 * 1099 * TPAGE));
	assert_true(raw[12345] == 0x21);
	mv_balloon_free(f->b);
	f->b = NULL;
	assert_int_equal(mv_vm_region_remove(f->vm, 3), 0);
	munmap(raw, 1 * MiB);
}

/* ---- reset, huge pages, injected failures ---- */

static void reset_forgets(void **state)
{
	struct fx *f = *state;
	up(f, ALL);
	assert_int_equal(mv_balloon_set_target(f->b, 8 * TPAGE), 0);
	uint32_t pfn[] = { 0x900, 0x901 };
	send_pfns(f, 0, pfn, 2);
	assert_int_equal(cfg_write32(f, 4, 2), 0);
	assert_int_equal(mv_balloon_set_status(f->b, 0), 0);
	struct mv_balloon_info in = info(f);
	assert_int_equal(in.status, 0);
	assert_int_equal(in.features, 0);
	assert_int_equal(in.held_bytes, 0);
	assert_int_equal(in.actual_bytes, 0);
	assert_int_equal(in.target_bytes, 8 * TPAGE);
	assert_int_equal(mv_balloon_nr_queues(f->b), 2);
	assert_false(resident(f, 0x900000)); /* still released */
	up(f, ALL);
	send_pfns(f, 0, pfn, 2);
	assert_int_equal(info(f).guest_errors, 0);
}

/* 2 MiB of THP-backed RAM: pieces are held back until the whole huge page is in. */
static void huge_page_blocks(void **state)
{
	struct fx *f = *state;
	uint8_t *raw = mmap(NULL, 8 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(raw != MAP_FAILED);
	uint8_t *m = (uint8_t *)(((uintptr_t)raw + 2 * MiB - 1) & ~(2 * MiB - 1));
	madvise(m, 4 * MiB, MADV_HUGEPAGE);
	memset(m, 0x33, 4 * MiB);
	assert_int_equal(mv_vm_region_add(f->vm, 2, 128 * MiB, m, 4 * MiB, MV_REGION_NEVER_MERGE), 0);
	uint8_t cat = 0;
	mv__prim_linux.page_categories(f->h->pagemap_fd, m, 1, &cat);
	if (!(cat & MV_PAGE_IS_HUGE)) {
		assert_int_equal(mv_vm_region_remove(f->vm, 2), 0);
		munmap(raw, 8 * MiB);
		TU_SKIP("no transparent huge page for the test's RAM");
	}
	up(f, ALL);
	uint32_t pfn[512];
	for (unsigned i = 0; i < 512; i++)
		pfn[i] = PFN(128 * MiB) + i;
	send_pfns(f, 0, pfn, 511);
	unsigned char v;
	mincore(m, TPAGE, &v);
	assert_true(v & 1);                          /* held back: the huge page stays */
	assert_int_equal(info(f).held_bytes, 511 * TPAGE);
	send_pfns(f, 0, pfn + 511, 1);               /* the last piece */
	mincore(m, TPAGE, &v);
	assert_false(v & 1);
	assert_int_equal(info(f).released_bytes, 2 * MiB);
	send_pfns(f, 1, pfn, 512);                   /* fully deflated: the block is forgotten */
	memset(m, 0x44, 2 * MiB);
	assert_int_equal(info(f).held_bytes, 0);
	for (unsigned i = 0; i < 512; i++)           /* a whole block goes at once */
		pfn[i] = PFN(130 * MiB) + i;
	send_pfns(f, 0, pfn, 512);
	mincore(m + 2 * MiB, TPAGE, &v);
	assert_false(v & 1);
	assert_true(m[2 * MiB + 100] == 0);
	mv_balloon_free(f->b);
	f->b = NULL;
	assert_int_equal(mv_vm_region_remove(f->vm, 2), 0);
	munmap(raw, 8 * MiB);
}

static int fail_dontneed(const struct iovec *iov, size_t n) { return -EIO; }
static int fail_categories(int fd, const void *a, size_t n, uint8_t *c) { return -EIO; }

static void injected_failures(void **state)
{
	struct fx *f = *state;
	struct mv_prim p = mv__prim_linux;
	p.dontneed = fail_dontneed;
	p.page_categories = fail_categories;
	f->h->prim = &p;
	up(f, ALL);
	uint32_t pfn[] = { 0x300, 0x302 };
	send_pfns(f, 0, pfn, 2);
	struct mv_balloon_info in = info(f);
	f->h->prim = &mv__prim_linux;
	assert_int_equal(in.held_bytes, 2 * TPAGE); /* in the balloon, though not released */
	assert_int_equal(in.released_bytes, 0);
	assert_true(page_is(f, 0x300000, 0x5a));
	assert_false(in.needs_reset);
}

/* ---- virtio-mmio ---- */

static uint32_t rd(struct fx *f, uint64_t off)
{
	uint32_t v = 0xdead;
	assert_int_equal(mv_balloon_mmio_read(f->b, off, &v, 4), 0);
	return v;
}

static void wr(struct fx *f, uint64_t off, uint32_t v)
{
	assert_int_equal(mv_balloon_mmio_write(f->b, off, &v, 4), 0);
}

static void mmio_registers(void **state)
{
	struct fx *f = *state;
	assert_int_equal(rd(f, 0x000), 0x74726976);
	assert_int_equal(rd(f, 0x004), 2);
	assert_int_equal(rd(f, 0x008), 5);
	assert_int_equal(rd(f, 0x0b0), 0xffffffff); /* no shared memory */
	wr(f, 0x014, 1);
	assert_int_equal(rd(f, 0x010), 1);          /* VERSION_1 */
	wr(f, 0x014, 0);
	assert_int_equal(rd(f, 0x010), ALL);
	uint32_t v = 0x1234;
	assert_int_equal(mv_balloon_mmio_read(f->b, 0x002, &v, 4), -EINVAL); /* misaligned */
	assert_int_equal(v, 0);
	assert_int_equal(mv_balloon_mmio_read(f->b, 0x040, &v, 4), -EINVAL); /* nothing there */
	wr(f, 0x070, ACK | DRV);
	wr(f, 0x024, 0);
	wr(f, 0x020, (uint32_t)FB(STATS_VQ));
	wr(f, 0x024, 1);
	wr(f, 0x020, 1);
	wr(f, 0x070, ACK | DRV | FEAT_OK);
	assert_int_equal(rd(f, 0x070), ACK | DRV | FEAT_OK);
	assert_int_equal(mv_balloon_nr_queues(f->b), 3);
	wr(f, 0x030, 3);
	assert_int_equal(rd(f, 0x034), 0);          /* no queue 3 */
	wr(f, 0x030, 0);
	wr(f, 0x038, 48);                           /* not a power of 2: refused */
	assert_int_equal(mv_balloon_mmio_write(f->b, 0x044, &(uint32_t){ 1 }, 4), -EINVAL);
	assert_int_equal(rd(f, 0x044), 0);
	for (unsigned q = 0; q < 3; q++) {
		uint64_t base = RING_GPA + q * 0x10000ull;
		memset(G(f, base), 0, 0x10000);
		f->q[q] = (struct drvq){ base, base + 0x4000, base + 0x8000, QNUM, 0, 0, 0 };
		wr(f, 0x030, q);
		assert_int_equal(rd(f, 0x034), 1024);
		wr(f, 0x038, QNUM);
		wr(f, 0x080, (uint32_t)base);
		wr(f, 0x084, 0);
		wr(f, 0x090, (uint32_t)(base + 0x4000));
		wr(f, 0x094, 0);
		wr(f, 0x0a0, (uint32_t)(base + 0x8000));
		wr(f, 0x0a4, 0);
		wr(f, 0x044, 1);
		assert_int_equal(rd(f, 0x044), 1);
	}
	assert_int_equal(mv_balloon_mmio_write(f->b, 0x038, &v, 4), -EBUSY); /* queue is live */
	wr(f, 0x070, ACK | DRV | FEAT_OK | DRV_OK);
	uint32_t pfn = 0x700;
	struct sg sg = { dalloc(f, 4), 4, false };
	memcpy(G(f, sg.gpa), &pfn, 4);
	add_chain(f, 0, &sg, 1);
	wr(f, 0x050, 0);                            /* QueueNotify */
	assert_int_equal(used(f, 0), 1);
	assert_int_equal(info(f).held_bytes, TPAGE);
	assert_int_equal(rd(f, 0x060), 1);          /* used buffer */
	assert_int_equal(mv_balloon_set_target(f->b, 5 * TPAGE), 0);
	assert_int_equal(rd(f, 0x060), 3);          /* and config change */
	wr(f, 0x064, 1);
	assert_int_equal(rd(f, 0x060), 2);
	uint64_t both = 0;
	assert_int_equal(mv_balloon_mmio_read(f->b, 0x100, &both, 8), 0);
	assert_true(both == 5);                     /* num_pages 5, actual 0 */
	wr(f, 0x104, 3);                            /* actual */
	assert_int_equal(info(f).actual_bytes, 3 * TPAGE);
	uint8_t b8 = 0;
	assert_int_equal(mv_balloon_mmio_read(f->b, 0x100, &b8, 1), 0);
	assert_int_equal(b8, 5);
	assert_int_equal(rd(f, 0x0fc), mv_balloon_config_generation(f->b));
	wr(f, 0x024, 0);
	assert_int_equal(mv_balloon_mmio_write(f->b, 0x020, &v, 4), -EPERM); /* after FEATURES_OK */
	wr(f, 0x070, 0);                            /* reset */
	assert_int_equal(rd(f, 0x070), 0);
	assert_int_equal(rd(f, 0x060), 0);
	wr(f, 0x030, 0);
	assert_int_equal(rd(f, 0x044), 0);
	/* features refused through the registers: FEATURES_OK stays clear */
	wr(f, 0x070, ACK | DRV);
	wr(f, 0x024, 0);
	wr(f, 0x020, (uint32_t)FB(STATS_VQ));
	assert_int_equal(mv_balloon_mmio_write(f->b, 0x070, &(uint32_t){ ACK | DRV | FEAT_OK }, 4), -EINVAL);
	assert_int_equal(rd(f, 0x070), ACK | DRV);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(features_and_queue_numbers, setup, teardown),
		cmocka_unit_test_setup_teardown(config_layout, setup, teardown),
		cmocka_unit_test_setup_teardown(wrong_state_ignored, setup, teardown),
		cmocka_unit_test_setup_teardown(inflate_releases, setup, teardown),
		cmocka_unit_test_setup_teardown(deflate_and_prefault, setup, teardown),
		cmocka_unit_test_setup_teardown(unsorted_large_request, setup, teardown),
		cmocka_unit_test_setup_teardown(stats_protocol, setup, teardown),
		cmocka_unit_test_setup_teardown(stats_before_driver_ok, setup, teardown),
		cmocka_unit_test_setup_teardown(stall_detection, setup, teardown),
		cmocka_unit_test_setup_teardown(hostile_rings, setup, teardown),
		cmocka_unit_test_setup_teardown(ring_region_removed, setup, teardown),
		cmocka_unit_test_setup_teardown(free_page_reporting, setup, teardown),
		cmocka_unit_test_setup_teardown(free_page_hinting, setup, teardown),
		cmocka_unit_test_setup_teardown(hint_bookkeeping_bounded, setup, teardown),
		cmocka_unit_test_setup_teardown(reset_forgets, setup, teardown),
		cmocka_unit_test_setup_teardown(huge_page_blocks, setup, teardown),
		cmocka_unit_test_setup_teardown(injected_failures, setup, teardown),
		cmocka_unit_test_setup_teardown(mmio_registers, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
