/* test_balloon_hostile.c - the virtio-balloon device against a guest and a memory map
 * that make its life hard: region addresses reused by the allocator, requests built to
 * hold the device for long, buffers that cross from one region into the next. */
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
#define LOW_PAGES  8192u            /* gpa [0, 32 MiB): rings and driver buffers */
#define LOW        (32 * MiB)
#define RING_GPA   (16 * MiB)       /* 64 KiB per queue */
#define DATA_GPA   (20 * MiB)       /* driver buffers, up to LOW */
#define EXTRA_GPA  (128 * MiB)      /* where the tests add regions of their own */
#define QNUM       128
#define NQ         3
#define V1         (1ull << MV_VIRTIO_F_VERSION_1)
#define FB(x)      (1ull << MV_BALLOON_F_##x)
#define PFN(gpa)   ((uint32_t)((gpa) >> 12))
enum { ACK = 1, DRV = 2, DRV_OK = 4, FEAT_OK = 8 };
enum { D_NEXT = 1, D_WRITE = 2 };

struct drvq { uint64_t desc, avail, used; uint16_t num, next, avail_idx, last_used; };
struct sg { uint64_t gpa; uint32_t len; bool write; };

struct fx {
	struct mv_host *h;
	struct mv_vm *vm;
	uint8_t *mem;                   /* LOW_PAGES pages at gpa 0 */
	struct mv_balloon *b;
	struct mv_balloon_ops ops;
	uint64_t data;
	struct drvq q[NQ];
};

static void on_irq(void *opaque, int q) {}

static void *G(struct fx *f, uint64_t gpa)
{
	assert_true(gpa < LOW);
	return f->mem + gpa;
}

static bool resident(const void *p)
{
	unsigned char v = 0;
	assert_int_equal(mincore((void *)p, TPAGE, &v), 0);
	return v & 1;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->h = tu_host();
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "hostile";
	assert_int_equal(mv_vm_new(f->h, &vc, &f->vm), 0);
	f->mem = tu_guest_alloc(LOW_PAGES);
	assert_int_equal(mv_vm_region_add(f->vm, 0, 0, f->mem, LOW, 0), 0);
	f->ops = (struct mv_balloon_ops){ .interrupt = on_irq };
	f->data = DATA_GPA;
	struct mv_balloon_config cfg;
	mv_balloon_config_init(&cfg);
	cfg.ops = &f->ops;
	cfg.opaque = f;
	assert_int_equal(mv_balloon_new(f->vm, &cfg, &f->b), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	f->h->prim = &mv__prim_linux;
	mv_balloon_free(f->b);
	mv_vm_free(f->vm);
	mv_host_free(f->h);
	tu_guest_free(f->mem, LOW_PAGES);
	free(f);
	return 0;
}

/* ---- the driver side ---- */

static uint64_t dalloc(struct fx *f, size_t len)
{
	uint64_t gpa = f->data;
	f->data += (len + TPAGE - 1) & ~(TPAGE - 1);
	assert_true(f->data <= LOW);
	return gpa;
}

static void up(struct fx *f, uint64_t features)
{
	assert_int_equal(mv_balloon_set_status(f->b, 0), 0);
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV), 0);
	assert_int_equal(mv_balloon_driver_features(f->b, features | V1), 0);
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV | FEAT_OK), 0);
	for (unsigned q = 0; q < mv_balloon_nr_queues(f->b); q++) {
		uint64_t base = RING_GPA + q * 0x10000ull;
		memset(G(f, base), 0, 0x10000);
		f->q[q] = (struct drvq){ .desc = base, .avail = base + 0x4000, .used = base + 0x8000,
		                         .num = QNUM };
		struct mv_virtq_setup s = { QNUM, f->q[q].desc, f->q[q].avail, f->q[q].used };
		assert_int_equal(mv_balloon_queue_setup(f->b, q, &s), 0);
	}
	assert_int_equal(mv_balloon_set_status(f->b, ACK | DRV | FEAT_OK | DRV_OK), 0);
}

/* Queue a chain of n buffers without notifying the device. */
static void add_chain(struct fx *f, unsigned q, const struct sg *sg, unsigned n)
{
	struct drvq *d = &f->q[q];
	uint16_t head = d->next % d->num;
	for (unsigned i = 0; i < n; i++) {
		uint16_t idx = (head + i) % d->num, next = (idx + 1) % d->num;
		uint16_t flags = (i + 1 < n ? D_NEXT : 0) | (sg[i].write ? D_WRITE : 0);
		uint8_t *e = G(f, d->desc + 16u * idx);
		memcpy(e, &sg[i].gpa, 8);
		memcpy(e + 8, &sg[i].len, 4);
		memcpy(e + 12, &flags, 2);
		memcpy(e + 14, &next, 2);
	}
	d->next += n;
	uint16_t *avail = G(f, d->avail);
	avail[2 + d->avail_idx % d->num] = head;
	__atomic_store_n(&avail[1], ++d->avail_idx, __ATOMIC_RELEASE);
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

/* One request of n PFNs on queue q (0 inflate, 1 deflate); the device must return it. */
static void send_pfns(struct fx *f, unsigned q, const uint32_t *pfn, size_t n)
{
	struct sg sg = { dalloc(f, n * 4), (uint32_t)(n * 4), false };
	memcpy(G(f, sg.gpa), pfn, n * 4);
	add_chain(f, q, &sg, 1);
	assert_int_equal(mv_balloon_queue_notify(f->b, q), 0);
	assert_int_equal(used(f, q), 1);
}

static struct mv_balloon_info info(struct fx *f)
{
	struct mv_balloon_info in;
	assert_int_equal(mv_balloon_info(f->b, &in), 0);
	return in;
}

/* ---- the block cache and reused region addresses ---- */

static int all_huge(int fd, const void *a, size_t n, uint8_t *cat)
{
	memset(cat, MV_PAGE_IS_HUGE, n);
	return 0;
}

static struct mv_region *region_at(struct fx *f, uint64_t gpa)
{
	return mv__region_of_gpa(f->vm->map, gpa);
}

/* Add slot 2 as 2 MiB at EXTRA_GPA, leave a piece of a huge block (the injected page
 * categories say huge) in the balloon, remove it and add slot 2 again, 64 MiB over the
 * same host memory. The struct mv_region of the second may be the first one's memory
 * again (malloc reuses a freed chunk of the same size): true when it is. */
static bool small_then_big(struct fx *f, uint8_t *m)
{
	struct mv_prim huge = mv__prim_linux;
	huge.page_categories = all_huge;
	f->h->prim = &huge;
	assert_int_equal(mv_vm_region_add(f->vm, 2, EXTRA_GPA, m, 2 * MiB, MV_REGION_NEVER_MERGE), 0);
	struct mv_region *small = region_at(f, EXTRA_GPA);
	uint64_t released = info(f).released_bytes;
	uint32_t pfn = PFN(EXTRA_GPA) + 1;
	send_pfns(f, 0, &pfn, 1);
	assert_int_equal(info(f).released_bytes, released); /* held back for its huge page */
	f->h->prim = &mv__prim_linux;
	assert_int_equal(mv_vm_region_remove(f->vm, 2), 0);
	rcu_barrier(); /* the removed region is freed */
	assert_int_equal(mv_vm_region_add(f->vm, 2, EXTRA_GPA, m, 64 * MiB, MV_REGION_NEVER_MERGE), 0);
	return region_at(f, EXTRA_GPA) == small;
}

/* A region removed while the device caches its block states: a reset afterwards must
 * not look at the removed region (its memory is freed). */
static void reset_after_region_removed(void **state)
{
	struct fx *f = *state;
	uint8_t *m = tu_guest_alloc(2 * MiB / TPAGE);
	up(f, FB(MUST_TELL_HOST));
	assert_int_equal(mv_vm_region_add(f->vm, 2, EXTRA_GPA, m, 2 * MiB, MV_REGION_NEVER_MERGE), 0);
	uint32_t pfn = PFN(EXTRA_GPA) + 7;
	send_pfns(f, 0, &pfn, 1);
	assert_int_equal(info(f).held_bytes, TPAGE);
	assert_int_equal(mv_vm_region_remove(f->vm, 2), 0);
	rcu_barrier(); /* the removed region is freed */
	assert_int_equal(mv_balloon_set_status(f->b, 0), 0);
	struct mv_balloon_info in = info(f);
	assert_int_equal(in.held_bytes, 0);
	assert_int_equal(in.guest_errors, 0);
	tu_guest_free(m, 2 * MiB / TPAGE);
}

/* A region added where a removed one was, at the same struct address, is a new region:
 * the device keeps nothing of the old one's 2 MiB block states (an array sized for the
 * old, smaller region that inflating the new one's last blocks wrote beyond). */
static void reused_region_address_gets_fresh_cache(void **state)
{
	struct fx *f = *state;
	uint8_t *m = tu_guest_alloc(64 * MiB / TPAGE);
	up(f, FB(MUST_TELL_HOST));
	unsigned tries = 0;
	while (!small_then_big(f, m)) {
		assert_int_equal(mv_vm_region_remove(f->vm, 2), 0);
		rcu_barrier();
		if (++tries == 100) {
			tu_guest_free(m, 64 * MiB / TPAGE);
			TU_SKIP("malloc never gave a removed region's memory to the next one");
		}
	}
	uint64_t released = info(f).released_bytes;
	uint32_t first = PFN(EXTRA_GPA) + 3; /* small pages now: released at once */
	send_pfns(f, 0, &first, 1);
	assert_int_equal(info(f).released_bytes, released + TPAGE);
	assert_false(resident(m + 3 * TPAGE));
	static uint32_t last[512]; /* the last block, one piece and then all of it */
	for (unsigned i = 0; i < 512; i++)
		last[i] = PFN(EXTRA_GPA + 62 * MiB) + i;
	send_pfns(f, 0, last + 511, 1);
	send_pfns(f, 1, last + 511, 1);
	send_pfns(f, 0, last, 512);
	struct mv_balloon_info in = info(f);
	assert_int_equal(in.released_bytes, released + 514 * TPAGE);
	assert_int_equal(in.held_bytes, 513 * TPAGE);
	assert_int_equal(in.guest_errors, 0);
	assert_false(resident(m + 64 * MiB - TPAGE));
	assert_int_equal(mv_balloon_set_status(f->b, 0), 0); /* a reset forgets every block */
	assert_int_equal(info(f).held_bytes, 0);
	mv_balloon_free(f->b);
	f->b = NULL;
	assert_int_equal(mv_vm_region_remove(f->vm, 2), 0);
	tu_guest_free(m, 64 * MiB / TPAGE);
}

/* ---- work per notification ---- */

#define LIST_PFNS  (1u << 18)       /* the largest PFN buffer the device takes: 1 MiB */
#define LOW_VALID  4096u            /* PFNs of [0, 16 MiB), below the rings */
#define XTRA_PAGES 8192u            /* slot 1: 32 MiB at EXTRA_GPA */

/* PFNs processed so far: each is either in the balloon now or refused. */
static uint64_t processed(struct fx *f)
{
	struct mv_balloon_info in = info(f);
	return (in.inflated_bytes + in.deflated_bytes) / TPAGE + in.guest_errors;
}

/* One 1 MiB list: [0, 16 MiB), all of slot 1, then PFNs beyond RAM; unsorted. */
static uint64_t big_list(struct fx *f)
{
	uint64_t gpa = dalloc(f, LIST_PFNS * 4);
	uint32_t *p = G(f, gpa);
	for (uint32_t i = 0; i < LIST_PFNS; i++) {
		uint32_t v = i < LOW_VALID ? i : i < LOW_VALID + XTRA_PAGES ?
		             PFN(EXTRA_GPA) + (i - LOW_VALID) : PFN(1ull << 30) + i;
		p[LIST_PFNS - 1 - i] = v;
	}
	return gpa;
}

/* A call over budget leaves the rest for the next: every call is counted and bounded. */
static int notify_bounded(struct fx *f, unsigned q)
{
	uint64_t before = processed(f);
	int rc = mv_balloon_queue_notify(f->b, q);
	assert_true(processed(f) - before <= MV_BALLOON_NOTIFY_PFNS);
	return rc;
}

/* A hostile guest queues 64 descriptors (a chain of 32, then 32 chains of one) naming
 * the same 1 MiB PFN list: 16 Mi PFNs for one notification. Each call does at most the
 * budget, the VMM calls again until the device says it is done, and region changes and
 * other queues work in between; the outcome is that of the requests applied in order. */
static void inflate_work_bounded_per_notify(void **state)
{
	struct fx *f = *state;
	uint8_t *m = tu_guest_alloc(XTRA_PAGES);
	assert_int_equal(mv_vm_region_add(f->vm, 1, EXTRA_GPA, m, XTRA_PAGES * TPAGE, 0), 0);
	up(f, 0);
	uint64_t list = big_list(f);
	struct sg sg[32];
	for (unsigned i = 0; i < 32; i++)
		sg[i] = (struct sg){ list, LIST_PFNS * 4, false };
	add_chain(f, 0, sg, 32);
	for (unsigned i = 0; i < 32; i++)
		add_chain(f, 0, sg, 1);
	assert_int_equal(notify_bounded(f, 0), 1);
	assert_int_equal(used(f, 0), 0);
	assert_int_equal(info(f).held_bytes, (LOW_VALID + XTRA_PAGES) * TPAGE);
	/* between calls: slot 1 goes and comes back (a new region, nothing in the balloon),
	 * and a deflate request is handled at once */
	assert_int_equal(mv_vm_region_remove(f->vm, 1), 0);
	assert_int_equal(mv_vm_region_add(f->vm, 1, EXTRA_GPA, m, XTRA_PAGES * TPAGE, 0), 0);
	uint32_t back[] = { 5, 6 };
	send_pfns(f, 1, back, 2);
	assert_int_equal(info(f).held_bytes, (LOW_VALID - 2) * TPAGE);
	unsigned calls = 1;
	while (notify_bounded(f, 0) == 1)
		assert_true(++calls < 64 * LIST_PFNS / MV_BALLOON_NOTIFY_PFNS + 64);
	assert_int_equal(used(f, 0), 33);
	struct mv_balloon_info in = info(f);
	uint64_t applied = LOW_VALID + XTRA_PAGES + XTRA_PAGES + 2; /* list 2 re-inflates */
	assert_int_equal(in.held_bytes, (LOW_VALID + XTRA_PAGES) * TPAGE);
	assert_int_equal(in.inflated_bytes, applied * TPAGE);
	assert_int_equal(in.deflated_bytes, 2 * TPAGE);
	assert_int_equal(in.guest_errors, 64ull * LIST_PFNS - applied);
	assert_false(in.needs_reset);
	assert_false(resident(f->mem + 5 * TPAGE));
	assert_false(resident(m + (XTRA_PAGES - 1) * TPAGE));
	assert_true(resident(f->mem + LOW_VALID * TPAGE)); /* the first page not named */
	mv_balloon_free(f->b);
	f->b = NULL;
	assert_int_equal(mv_vm_region_remove(f->vm, 1), 0);
	tu_guest_free(m, XTRA_PAGES);
}

/* A reset while a request is cut short drops it; the device works afterwards. */
static void reset_drops_unfinished_request(void **state)
{
	struct fx *f = *state;
	up(f, 0);
	uint64_t list = big_list(f);
	struct sg sg[4];
	for (unsigned i = 0; i < 4; i++)
		sg[i] = (struct sg){ list, LIST_PFNS * 4, false };
	add_chain(f, 0, sg, 4);
	assert_int_equal(notify_bounded(f, 0), 1);
	up(f, 0);
	uint32_t pfn[] = { 9, 10, 11 };
	uint64_t before = processed(f);
	send_pfns(f, 0, pfn, 3);
	assert_int_equal(processed(f), before + 3);
	assert_int_equal(info(f).held_bytes, 3 * TPAGE);
	assert_int_equal(mv_balloon_queue_notify(f->b, 0), 0);
}

/* ---- buffers across adjacent regions ---- */

/* Guest RAM in three slots back to back in guest-physical memory, at EXTRA_GPA: slots 1
 * and 2 are adjacent in host memory as well, slot 3 lies elsewhere (2 MiB further). */
#define SPAN_BYTES (8 * MiB)

static void *span_map(struct fx *f)
{
	uint8_t *m = tu_guest_alloc(SPAN_BYTES / TPAGE);
	static const struct { uint64_t off, hva_off; } s[] = { { 0, 0 }, { 2 * MiB, 2 * MiB },
	                                                       { 4 * MiB, 6 * MiB } };
	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(mv_vm_region_add(f->vm, 1 + i, EXTRA_GPA + s[i].off, m + s[i].hva_off,
		                                  2 * MiB, 0), 0);
	return m;
}

/* Host address of a guest-physical address in the three slots. */
static uint8_t *span_hva(uint8_t *m, uint64_t gpa)
{
	uint64_t off = gpa - EXTRA_GPA;
	assert_true(off < 6 * MiB);
	return m + (off < 4 * MiB ? off : off + 2 * MiB);
}

/* Write len bytes to guest-physical gpa, across the slots. */
static void span_write(uint8_t *m, uint64_t gpa, const void *src, size_t len)
{
	for (size_t i = 0; i < len; i++)
		*span_hva(m, gpa + i) = ((const uint8_t *)src)[i];
}

/* Queue one PFN buffer at gpa (written there first) and notify. */
static void send_pfns_at(struct fx *f, uint8_t *m, unsigned q, uint64_t gpa, const uint32_t *pfn,
                         size_t n)
{
	span_write(m, gpa, pfn, n * 4);
	struct sg sg = { gpa, (uint32_t)(n * 4), false };
	add_chain(f, q, &sg, 1);
	assert_int_equal(mv_balloon_queue_notify(f->b, q), 0);
	assert_int_equal(used(f, q), 1);
}

static void put_stat(uint8_t *p, uint16_t tag, uint64_t val)
{
	memcpy(p, &tag, 2);
	memcpy(p + 2, &val, 8);
}

/* A PFN array or a stats buffer contiguous in guest-physical memory is read whole, though
 * it starts in one region and ends in the next, adjacent in host memory or not; one that
 * runs past the end of RAM is refused. */
static void buffers_span_adjacent_regions(void **state)
{
	struct fx *f = *state;
	uint8_t *m = span_map(f);
	up(f, FB(STATS_VQ));
	uint32_t pfn[16];
	for (unsigned i = 0; i < 16; i++)
		pfn[i] = 0x100 + i;
	send_pfns_at(f, m, 0, EXTRA_GPA + 2 * MiB - 32, pfn, 16); /* slots 1 and 2 */
	assert_int_equal(info(f).held_bytes, 16 * TPAGE);
	for (unsigned i = 0; i < 12; i++)
		pfn[i] = 0x200 + i;
	send_pfns_at(f, m, 0, EXTRA_GPA + 4 * MiB - 20, pfn, 12); /* slots 2 and 3 */
	send_pfns_at(f, m, 1, EXTRA_GPA + 4 * MiB - 8, pfn, 4);   /* deflate, slots 2 and 3 */
	struct mv_balloon_info in = info(f);
	assert_int_equal(in.held_bytes, 24 * TPAGE);
	assert_int_equal(in.guest_errors, 0);
	assert_false(resident(f->mem + 0x10f * TPAGE));
	assert_false(resident(f->mem + 0x20b * TPAGE));
	/* stats: an entry split between slots 1 and 2, a second buffer from 2 into 3 */
	uint8_t st[40];
	put_stat(st, MV_BSTAT_SWAP_IN, 11);
	put_stat(st + 10, MV_BSTAT_MEMFREE, 1ull << 33);
	put_stat(st + 20, MV_BSTAT_CACHES, 33);
	put_stat(st + 30, MV_BSTAT_OOM_KILLS, 44);
	span_write(m, EXTRA_GPA + 2 * MiB - 15, st, 25);
	span_write(m, EXTRA_GPA + 4 * MiB - 7, st + 25, 15);
	struct sg sg[] = { { EXTRA_GPA + 2 * MiB - 15, 25, false }, { EXTRA_GPA + 4 * MiB - 7, 15, false } };
	add_chain(f, 2, sg, 2);
	assert_int_equal(mv_balloon_queue_notify(f->b, 2), 0);
	in = info(f);
	assert_int_equal(in.stats_valid, 1u << MV_BSTAT_SWAP_IN | 1u << MV_BSTAT_MEMFREE |
	                                 1u << MV_BSTAT_CACHES | 1u << MV_BSTAT_OOM_KILLS);
	assert_int_equal(in.stats[MV_BSTAT_SWAP_IN], 11);
	assert_true(in.stats[MV_BSTAT_MEMFREE] == 1ull << 33);
	assert_int_equal(in.stats[MV_BSTAT_CACHES], 33);
	assert_int_equal(in.stats[MV_BSTAT_OOM_KILLS], 44);
	/* off the end of RAM: refused whole */
	pfn[0] = 0x300;
	span_write(m, EXTRA_GPA + 6 * MiB - 4, pfn, 4);
	struct sg past = { EXTRA_GPA + 6 * MiB - 4, 8, false };
	add_chain(f, 0, &past, 1);
	assert_int_equal(mv_balloon_queue_notify(f->b, 0), 0);
	in = info(f);
	assert_int_equal(in.held_bytes, 24 * TPAGE);
	assert_int_equal(in.guest_errors, 1);
	mv_balloon_free(f->b);
	f->b = NULL;
	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(mv_vm_region_remove(f->vm, 1 + i), 0);
	tu_guest_free(m, SPAN_BYTES / TPAGE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(reset_after_region_removed, setup, teardown),
		cmocka_unit_test_setup_teardown(reused_region_address_gets_fresh_cache, setup, teardown),
		cmocka_unit_test_setup_teardown(inflate_work_bounded_per_notify, setup, teardown),
		cmocka_unit_test_setup_teardown(reset_drops_unfinished_request, setup, teardown),
		cmocka_unit_test_setup_teardown(buffers_span_adjacent_regions, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
