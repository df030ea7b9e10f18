/* test_window.c - the replace window: an access to a page in flight waits and survives,
 * accesses elsewhere never wait, and pages that keep changing are left alone. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "ksm.h"
#include "testutil.h"

#define PAGES 1024 /* two chunks */
#define TWIN_A 5   /* chunk 0 */
#define TWIN_B 700 /* chunk 1: merged onto A's content while the writers act */
#define OTHER 100  /* chunk 0, unique: protected, written while chunk 1 is held */

static uint8_t *mem;
static uint8_t twin[TPAGE];
static struct mv_host *host;

/* Threads that write one byte and report when the write is done. */
struct poke {
	uint8_t *at;
	uint8_t val;
	atomic_bool done;
	pthread_t t;
};

static void *poke_main(void *arg)
{
	struct poke *p = arg;
	*(volatile uint8_t *)p->at = p->val;
	atomic_store(&p->done, true);
	return NULL;
}

static void poke_start(struct poke *p, uint8_t *at, uint8_t val)
{
	*p = (struct poke){ .at = at, .val = val };
	assert_int_equal(pthread_create(&p->t, NULL, poke_main, p), 0);
}

/* Wait up to ms for the poke to finish (a bound for a stuck test, not a timing check). */
static bool poke_wait(struct poke *p, int ms)
{
	for (int i = 0; i < ms && !atomic_load(&p->done); i++)
		usleep(1000);
	return atomic_load(&p->done);
}

/* The hook: when the target page is moved out of the guest, a writer pokes it (it must
 * wait) and another pokes a page of another chunk (it must not). */
static struct poke in_flight, elsewhere;
static uint8_t *target, *other;
static atomic_bool hooked, in_flight_done_early, elsewhere_done_while_held;

static long move_and_poke(int uffd, void *dst, void *src, size_t len)
{
	long r = mv__prim_linux.uffd_move(uffd, dst, src, len);
	uint8_t *b = target;
	if (r <= 0 || (uint8_t *)src > b || (uint8_t *)src + r <= b || atomic_exchange(&hooked, true))
		return r;
	poke_start(&in_flight, b + 8, 0xab);
	poke_start(&elsewhere, other + 8, 0xcd);
	atomic_store(&elsewhere_done_while_held, poke_wait(&elsewhere, 10000));
	atomic_store(&in_flight_done_early, poke_wait(&in_flight, 100));
	return r;
}

static void setup_guest(struct mv_prim *prim)
{
	mem = tu_guest_alloc(PAGES);
	for (size_t i = 0; i < PAGES; i++)
		tu_fill(mem + i * TPAGE, 7000 + i);
	tu_fill(twin, 99);
	memcpy(mem + TWIN_A * TPAGE, twin, TPAGE);
	memcpy(mem + TWIN_B * TPAGE, twin, TPAGE);
	host = tu_host();
	host->prim = prim;
}

static struct mv_vm *new_vm(const char *name)
{
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = name;
	struct mv_vm *vm;
	assert_int_equal(mv_vm_new(host, &vc, &vm), 0);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, PAGES * TPAGE, 0), 0);
	return vm;
}

static void teardown_guest(void)
{
	mv_host_free(host);
	tu_guest_free(mem, PAGES);
}

/* A write to a page being replaced waits for the replace, then lands on the new
 * mapping; a write to a page of another chunk goes through meanwhile. */
static void write_in_flight_waits_and_survives(void **state)
{
	struct mv_prim prim = mv__prim_linux;
	prim.uffd_move = move_and_poke;
	setup_guest(&prim);
	target = mem + TWIN_B * TPAGE;
	other = mem + OTHER * TPAGE;
	atomic_store(&hooked, false);
	struct mv_vm *vm = new_vm("w");
	assert_int_equal(mv_host_scan(host, 3), 0); /* seen, then stable: TWIN_B is merged */
	assert_true(atomic_load(&hooked));
	assert_true(poke_wait(&in_flight, 10000));
	pthread_join(in_flight.t, NULL);
	pthread_join(elsewhere.t, NULL);
	assert_false(atomic_load(&in_flight_done_early)); /* it waited for the replace */
	assert_true(atomic_load(&elsewhere_done_while_held)); /* no head-of-line blocking */
	twin[8] = 0xab;
	assert_memory_equal(mem + TWIN_B * TPAGE, twin, TPAGE); /* the write survived */
	assert_int_equal(mem[OTHER * TPAGE + 8], 0xcd);
	struct mv_scan_stats st;
	mv_host_stats(host, &st);
	assert_true(st.write_faults >= 1);
	assert_true(st.writer_wait_max_ns > 0);
	mv_vm_free(vm);
	teardown_guest();
}

/* The same in chunk mode: a clone's chunk that mostly equals the image is moved out
 * whole and swapped for the image's run; a write to it meanwhile waits, then lands. */
static void write_in_flight_survives_a_chunk_swap(void **state)
{
	struct mv_prim prim = mv__prim_linux;
	prim.uffd_move = move_and_poke;
	setup_guest(&prim);
	uint8_t *clone = tu_guest_alloc(512), *expect = malloc(512 * TPAGE);
	memcpy(clone, mem, 512 * TPAGE);             /* chunk 0 of the image */
	for (size_t i = 3; i < 512; i += 37)
		tu_fill(clone + i * TPAGE, 55000 + i); /* a few pages of its own */
	memcpy(expect, clone, 512 * TPAGE);
	target = clone + 200 * TPAGE;
	other = mem + 600 * TPAGE; /* the image's other chunk: stable, protected */
	atomic_store(&hooked, false);
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.domain = "golden";
	vc.name = "image";
	struct mv_vm *va, *vb;
	assert_int_equal(mv_vm_new(host, &vc, &va), 0);
	vc.name = "clone";
	assert_int_equal(mv_vm_new(host, &vc, &vb), 0);
	assert_int_equal(mv_vm_region_add(va, 0, 0, mem, PAGES * TPAGE, 0), 0);
	assert_int_equal(mv_vm_region_add(vb, 0, 0, clone, 512 * TPAGE, 0), 0);
	assert_int_equal(mv_host_scan(host, 4), 0);
	assert_true(atomic_load(&hooked));
	assert_true(poke_wait(&in_flight, 10000));
	pthread_join(in_flight.t, NULL);
	pthread_join(elsewhere.t, NULL);
	assert_false(atomic_load(&in_flight_done_early));
	assert_true(atomic_load(&elsewhere_done_while_held));
	expect[200 * TPAGE + 8] = 0xab;
	assert_memory_equal(clone, expect, 512 * TPAGE);
	struct mv_scan_stats st;
	mv_vm_stats(vb, &st);
	assert_true(st.pages_merged > 400);
	assert_true(st.vmas_used <= 2); /* whole chunk: one mapping, not one per run */
	mv_vm_free(vb);
	mv_vm_free(va);
	tu_guest_free(clone, 512);
	free(expect);
	teardown_guest();
}

static bool page_written(uint8_t *page)
{
	uint8_t cat;
	assert_int_equal(host->prim->page_categories(host->pagemap_fd, page, 1, &cat), 0);
	return cat & MV_PAGE_IS_WRITTEN;
}

/* A chunk written between every two looks is not watched (its pages stay unprotected:
 * writes cost nothing) and is looked at less and less often; once the writes stop, its
 * duplicate is merged. */
static void changing_chunks_back_off_then_merge(void **state)
{
	struct mv_prim prim = mv__prim_linux;
	setup_guest(&prim);
	host->cfg.settle_ms = 2;
	struct mv_vm *vm = new_vm("b");
	for (int pass = 0; pass < 40; pass++) {
		mem[TWIN_B * TPAGE + 16]++; /* the duplicate keeps changing */
		assert_int_equal(mv_host_scan(host, 1), 0);
		usleep(1000);
	}
	struct mv_scan_stats st;
	mv_host_stats(host, &st);
	assert_true(st.pages_volatile >= 3);
	assert_true(st.chunks_backed_off > 0);
	assert_int_equal(st.pages_merged, 0);
	assert_true(page_written(mem + TWIN_B * TPAGE));  /* not protected: writes are free */
	assert_false(page_written(mem + TWIN_A * TPAGE)); /* stable: protected */
	memcpy(mem + TWIN_B * TPAGE, twin, TPAGE);        /* settles as a duplicate */
	for (int pass = 0; pass < 400 && st.pages_merged < 2; pass++) {
		usleep(2000);
		assert_int_equal(mv_host_scan(host, 1), 0);
		mv_host_stats(host, &st);
	}
	assert_int_equal(st.pages_merged, 2);
	assert_memory_equal(mem + TWIN_B * TPAGE, twin, TPAGE);
	mv_vm_free(vm);
	teardown_guest();
}

/* ---- a failed MAP_FIXED that left a hole (older kernels unmap the target first) ---- */

static int unmap_and_fail(void *addr, size_t len, int fd, off_t off)
{
	munmap(addr, len);
	return -ENOMEM;
}

/* Putting a page back into a hole fails for ever: stop the test rather than spin. */
static atomic_long copy_failures;
static int copy_or_give_up(int uffd, void *dst, const void *src, size_t len)
{
	int err = mv__prim_linux.uffd_copy(uffd, dst, src, len);
	if (err && err != -EEXIST && atomic_fetch_add(&copy_failures, 1) > 1000000) {
		fprintf(stderr, "putting a page back fails for ever (%s): the worker spins\n",
		        strerror(-err));
		_exit(1);
	}
	return err;
}

/* The store mapping fails and leaves no mapping where the moved pages were: they are
 * put back all the same, byte for byte, and the worker returns. */
static void failed_remap_leaving_a_hole_loses_nothing(void **state)
{
	struct mv_prim prim = mv__prim_linux;
	prim.map_private_fixed = unmap_and_fail;
	prim.uffd_copy = copy_or_give_up;
	setup_guest(&prim);
	for (size_t i = 0; i < 16; i++) /* a run of duplicates across the chunks */
		memcpy(mem + (300 + i) * TPAGE, mem + (800 + i) * TPAGE, TPAGE);
	uint8_t *shadow = malloc(PAGES * TPAGE);
	memcpy(shadow, mem, PAGES * TPAGE);
	atomic_store(&copy_failures, 0);
	struct mv_vm *vm = new_vm("hole");
	assert_int_equal(mv_host_scan(host, 3), 0);
	assert_true(atomic_load(&copy_failures) > 0); /* a hole was met */
	assert_int_equal(mv__vma_kind(mem, PAGES * TPAGE), 0); /* and filled: anonymous throughout */
	for (size_t i = 0; i < PAGES; i++)
		if (memcmp(mem + i * TPAGE, shadow + i * TPAGE, TPAGE)) {
			fprintf(stderr, "page %zu differs from its shadow\n", i);
			fail();
		}
	struct mv_scan_stats st;
	mv_host_stats(host, &st);
	assert_int_equal(st.pages_merged, 0);
	assert_int_equal(st.pages_shared, 0);
	mv_vm_free(vm);
	free(shadow);
	teardown_guest();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(write_in_flight_waits_and_survives),
		cmocka_unit_test(write_in_flight_survives_a_chunk_swap),
		cmocka_unit_test(changing_chunks_back_off_then_merge),
		cmocka_unit_test(failed_remap_leaving_a_hole_loses_nothing),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
