/* test_races.c - no lost write: writers race the scanner's merges and unmerges; regions
 * come and go while background workers scan. Every page is checked against a shadow. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <time.h>
#include <string.h>
#include <memvirt/memvirt.h>
#include <unistd.h>
#include "ksm.h"
#include "testutil.h"

#define PAGES    2048
#define WRITERS  2
#define TEMPLATES 6

static uint8_t *mem, *shadow;
static uint8_t templates[TEMPLATES][TPAGE];
static atomic_bool stop;
static atomic_long writes;

static const uint8_t zero_page[TPAGE];

/* What a writer step writes into page i: a page to copy, or NULL for one word changed. */
typedef const uint8_t *(*content_fn)(size_t i, uint64_t r);

/* Writer t owns pages i with i % WRITERS == t, so its shadow updates need no lock. */
static void *run_writer(uintptr_t arg, uint64_t seed, content_fn content)
{
	uint64_t t = arg % WRITERS, rng = seed + arg;
	while (!atomic_load(&stop)) {
		size_t i = (size_t)(tu_rand(&rng) % (PAGES / WRITERS)) * WRITERS + t;
		uint8_t *p = mem + i * TPAGE, *s = shadow + i * TPAGE;
		uint64_t r = tu_rand(&rng);
		const uint8_t *src = content(i, r);
		if (src) {
			memcpy(p, src, TPAGE);
			memcpy(s, src, TPAGE);
		} else {
			size_t w = (r >> 8) % (TPAGE / 8);
			((volatile uint64_t *)p)[w] = r;
			((uint64_t *)s)[w] = r;
		}
		atomic_fetch_add(&writes, 1);
		if (!(r & 63))
			sched_yield();
	}
	return NULL;
}

/* Each step makes a page a duplicate (template copy), zero, or unique. */
static const uint8_t *template_content(size_t i, uint64_t r)
{
	return r % 4 < 2 ? templates[r % TEMPLATES] : r % 4 == 2 ? zero_page : NULL;
}

static void *writer(void *arg)
{
	return run_writer((uintptr_t)arg, 0x1234, template_content);
}

/* One round: a quiet pass, then writers race the passes that follow until they have
 * written a little (they dirty chunks the scanner then merges), then stop. */
static void race_round(struct mv_host *h, void *(*fn)(void *), int round)
{
	pthread_t w[WRITERS];
	assert_int_equal(mv_host_scan(h, 2), 0);
	atomic_store(&stop, false);
	long w0 = atomic_load(&writes);
	for (uintptr_t t = 0; t < WRITERS; t++)
		pthread_create(&w[t], NULL, fn, (void *)(t + (uintptr_t)round * WRITERS));
	do
		assert_int_equal(mv_host_scan(h, 2), 0);
	while (atomic_load(&writes) - w0 < 64);
	atomic_store(&stop, true);
	for (int t = 0; t < WRITERS; t++)
		pthread_join(w[t], NULL);
}

/* Pages leave the guest for the replace window a little slowly, so that the writers
 * really do hit pages in flight (the window is otherwise a few microseconds). */
static long move_slowly(int uffd, void *dst, void *src, size_t len)
{
	long r = mv__prim_linux.uffd_move(uffd, dst, src, len);
	if (r > 0 && (uint8_t *)src >= mem && (uint8_t *)src < mem + PAGES * TPAGE)
		usleep(200);
	return r;
}

static struct mv_prim slow_prim;

static struct mv_host *racing_host(void)
{
	struct mv_host *h = tu_host();
	slow_prim = mv__prim_linux;
	slow_prim.uffd_move = move_slowly;
	h->prim = &slow_prim;
	return h;
}

static size_t mismatches(void)
{
	size_t bad = 0;
	for (size_t i = 0; i < PAGES; i++)
		bad += memcmp(mem + i * TPAGE, shadow + i * TPAGE, TPAGE) != 0;
	return bad;
}

static void no_write_is_lost(void **state)
{
	for (int k = 0; k < TEMPLATES; k++)
		tu_fill(templates[k], 100 + k);
	mem = tu_guest_alloc(PAGES);
	shadow = malloc(PAGES * TPAGE);
	for (size_t i = 0; i < PAGES; i++)
		memcpy(mem + i * TPAGE, templates[i % TEMPLATES], TPAGE);
	memcpy(shadow, mem, PAGES * TPAGE);

	struct mv_host *h = racing_host();
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "racer";
	struct mv_vm *vm;
	assert_int_equal(mv_vm_new(h, &vc, &vm), 0);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, PAGES * TPAGE, 0), 0);

	/* Rounds: a quiet pass makes pages merge candidates, then writers race the passes
	 * that merge them, then stop and every page is checked. Checking each round
	 * matters: a lost write is soon healed by a later full-page write to the page. */
	uint64_t merged_seen = 0, cow_seen = 0;
	size_t bad = 0;
	/* at least 60 rounds, and until a merged page was written (slow builds: ASan) */
	for (int round = 0; !bad && (round < 60 || (!cow_seen && round < 600)); round++) {
		race_round(h, writer, round);
		bad = mismatches();
		struct mv_scan_stats st;
		mv_host_stats(h, &st);
		merged_seen += st.pages_merged;
		cow_seen = st.cow_breaks;
		if (round % 10 == 9) {
			assert_int_equal(mv_vm_unmerge(vm), 0);
			assert_int_equal(mv_vm_set_merging(vm, true), 0);
		}
	}
	assert_int_equal(bad, 0);
	assert_int_equal(mv_host_scan(h, 3), 0);

	printf("writes %ld, merged pages seen across rounds %lu, cow breaks %lu\n",
	       atomic_load(&writes), merged_seen, cow_seen);
	assert_true(merged_seen > 0 && cow_seen > 0); /* the race really happened */
	assert_int_equal(mismatches(), 0);
	mv_vm_free(vm);
	assert_int_equal(mismatches(), 0);
	mv_host_free(h);
	tu_guest_free(mem, PAGES);
	free(shadow);
}

/* Cloned guests: writers make pages of clone B differ from the image and return them to
 * it, so B's chunks are merged whole (chunk mode) while writes race the swap. */
static uint8_t *image;

/* Each step returns a page to the image (a duplicate in place) or makes it unique. */
static const uint8_t *image_content(size_t i, uint64_t r)
{
	return r % 3 ? image + i * TPAGE : NULL;
}

static void *clone_writer(void *arg)
{
	return run_writer((uintptr_t)arg, 0x777, image_content);
}

static void no_write_is_lost_in_cloned_chunks(void **state)
{
	image = tu_guest_alloc(PAGES);
	for (size_t i = 0; i < PAGES; i++)
		tu_fill(image + i * TPAGE, 4000000 + i);
	mem = tu_guest_alloc(PAGES);
	memcpy(mem, image, PAGES * TPAGE);
	shadow = malloc(PAGES * TPAGE);
	memcpy(shadow, mem, PAGES * TPAGE);
	uint8_t *image_copy = malloc(PAGES * TPAGE);
	memcpy(image_copy, image, PAGES * TPAGE);

	struct mv_host *h = racing_host();
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.domain = "golden";
	vc.name = "image";
	struct mv_vm *va, *vb;
	assert_int_equal(mv_vm_new(h, &vc, &va), 0);
	vc.name = "clone";
	assert_int_equal(mv_vm_new(h, &vc, &vb), 0);
	assert_int_equal(mv_vm_region_add(va, 0, 0, image, PAGES * TPAGE, 0), 0);
	assert_int_equal(mv_vm_region_add(vb, 0, 0, mem, PAGES * TPAGE, 0), 0);

	size_t bad = 0;
	uint64_t merged_seen = 0;
	/* at least 60 rounds, and until the clone merged a good deal (slow builds: TSan) */
	for (int round = 0; !bad && (round < 60 || (merged_seen <= PAGES && round < 600)); round++) {
		race_round(h, clone_writer, round);
		bad = mismatches() + (memcmp(image, image_copy, PAGES * TPAGE) != 0);
		struct mv_scan_stats st;
		mv_vm_stats(vb, &st);
		merged_seen += st.pages_merged;
	}
	struct mv_scan_stats st;
	mv_host_stats(h, &st);
	printf("writes %ld, clone pages merged across rounds %lu, mappings %lu\n",
	       atomic_load(&writes), merged_seen, st.vmas_used);
	assert_int_equal(bad, 0);
#if defined(__SANITIZE_THREAD__)
	assert_true(merged_seen > 0); /* the writers outrun an instrumented scanner */
#else
	assert_true(merged_seen > PAGES);
#endif
	mv_vm_free(vb);
	mv_vm_free(va);
	assert_int_equal(mismatches(), 0);
	assert_memory_equal(image, image_copy, PAGES * TPAGE);
	mv_host_free(h);
	tu_guest_free(mem, PAGES);
	tu_guest_free(image, PAGES);
	free(shadow);
	free(image_copy);
}

/* Background workers scan while regions are hot-plugged and unplugged. */
static void regions_come_and_go_under_workers(void **state)
{
	struct mv_host_config cfg;
	mv_host_config_init(&cfg);
	cfg.settle_ms = 0;
	cfg.workers = 2;
	cfg.cpu_share = 1.0;
	struct mv_host *h;
	assert_int_equal(mv_host_new(&cfg, &h), 0);
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "plug";
	vc.domain = "shared";
	struct mv_vm *vm, *vm2;
	assert_int_equal(mv_vm_new(h, &vc, &vm), 0);
	vc.name = "plug2";
	assert_int_equal(mv_vm_new(h, &vc, &vm2), 0);

	enum { R = 4, RP = 512 };
	uint8_t *m[R], *sh = malloc(RP * TPAGE);
	for (size_t i = 0; i < RP; i++)
		tu_fill(sh + i * TPAGE, i % 3 ? 1 + i % 17 : 0);
	for (int r = 0; r < R; r++) {
		m[r] = tu_guest_alloc(RP);
		memcpy(m[r], sh, RP * TPAGE);
	}
	assert_int_equal(mv_vm_region_add(vm2, 9, 0, m[R - 1], RP * TPAGE, 0), 0);
	assert_int_equal(mv_host_start(h), 0);
	assert_int_equal(mv_host_scan(h, 2), -EBUSY);
	for (int round = 0; round < 40; round++) {
		int r = round % (R - 1);
		assert_int_equal(mv_vm_region_add(vm, (uint32_t)r, (uint64_t)r << 30, m[r], RP * TPAGE, 0), 0);
		struct timespec ts = { 0, 2000000 * (round % 5) };
		nanosleep(&ts, NULL);
		assert_non_null(mv_vm_gpa_to_hva(vm, ((uint64_t)r << 30) + 5, 8));
		assert_int_equal(mv_vm_region_remove(vm, (uint32_t)r), 0);
		assert_null(mv_vm_gpa_to_hva(vm, ((uint64_t)r << 30) + 5, 8));
		/* removed: private again, content intact */
		assert_memory_equal(m[r], sh, RP * TPAGE);
		m[r][7 * TPAGE] ^= 1; /* writable, and a write of our own does not touch the shadow */
		m[r][7 * TPAGE] ^= 1;
		/* a whole VM comes and goes under the workers too */
		struct mv_vm *tmp;
		vc.name = "passing";
		assert_int_equal(mv_vm_new(h, &vc, &tmp), 0);
		assert_int_equal(mv_vm_region_add(tmp, 0, 0, m[r], RP * TPAGE, 0), 0);
		nanosleep(&ts, NULL);
		mv_vm_free(tmp);
		assert_memory_equal(m[r], sh, RP * TPAGE);
	}
	assert_int_equal(mv_host_stop(h), 0);
	assert_memory_equal(m[R - 1], sh, RP * TPAGE);
	struct mv_scan_stats st;
	mv_host_stats(h, &st);
	assert_true(st.pages_scanned > 0);
	mv_vm_free(vm);
	mv_vm_free(vm2);
	mv_host_stats(h, &st);
	assert_int_equal(st.pages_merged, 0);
	assert_int_equal(st.pages_shared, 0);
	mv_host_free(h);
	for (int r = 0; r < R; r++) {
		assert_memory_equal(m[r], sh, RP * TPAGE);
		tu_guest_free(m[r], RP);
	}
	free(sh);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(no_write_is_lost),
		cmocka_unit_test(no_write_is_lost_in_cloned_chunks),
		cmocka_unit_test(regions_come_and_go_under_workers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
