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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(reset_after_region_removed, setup, teardown),
		cmocka_unit_test_setup_teardown(reused_region_address_gets_fresh_cache, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
