/* test_release.c - giving guest pages back (the balloon's path through the scanner):
 * anonymous and merged pages read as zero and free their frames, shares are dropped,
 * hinted pages are released only when unwritten, and racing writes survive. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <memvirt/memvirt.h>
#include "ksm.h"
#include "testutil.h"

#define PAGES 2048 /* 8 MiB: four chunks */

struct fixture {
	struct mv_host *h;
	struct mv_vm *vm;
	uint8_t *mem;
	struct mv_region *r;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	f->h = tu_host();
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "rel";
	assert_int_equal(mv_vm_new(f->h, &vc, &f->vm), 0);
	f->mem = tu_guest_alloc(PAGES);
	/* pairs of equal pages: page 2k and 2k+1 hold seed k+1 */
	for (size_t i = 0; i < PAGES; i++)
		tu_fill(f->mem + i * TPAGE, i / 2 + 1);
	assert_int_equal(mv_vm_region_add(f->vm, 0, 0, f->mem, PAGES * TPAGE, 0), 0);
	f->r = rcu_dereference(f->vm->map)->r[0]; /* stable: nobody changes the map here */
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	mv_vm_free(f->vm);
	mv_host_free(f->h);
	tu_guest_free(f->mem, PAGES);
	free(f);
	return 0;
}

static bool page_is_zero(const uint8_t *p)
{
	for (size_t i = 0; i < TPAGE; i++)
		if (p[i])
			return false;
	return true;
}

static void anonymous_pages_are_freed(void **state)
{
	struct fixture *f = *state;
	struct mv_prange rg[2] = { { 10, 5 }, { 600, 300 } };
	assert_int_equal(mv__region_discard(f->h, f->r, rg, 2), 0);
	for (size_t i = 0; i < PAGES; i++) {
		bool gone = (i >= 10 && i < 15) || (i >= 600 && i < 900);
		if (gone) {
			assert_int_equal(tu_pfn(f->mem + i * TPAGE), 0); /* frame given back */
			assert_true(page_is_zero(f->mem + i * TPAGE));
		} else {
			assert_false(page_is_zero(f->mem + i * TPAGE));
		}
	}
}

static void merged_pages_drop_their_share(void **state)
{
	struct fixture *f = *state;
	if (!tu_pfn(f->mem))
		TU_SKIP("pagemap PFNs need root");
	assert_int_equal(mv_host_scan(f->h, 3), 0);
	assert_int_equal(tu_pfn(f->mem + 100 * TPAGE), tu_pfn(f->mem + 101 * TPAGE));
	assert_int_not_equal(f->r->pages[100].slot, MV_SLOT_ANON);
	struct mv_scan_stats before, after;
	mv_vm_stats(f->vm, &before);

	uint8_t twin[TPAGE];
	memcpy(twin, f->mem + 101 * TPAGE, TPAGE);
	struct mv_prange rg = { 100, 1 };
	assert_int_equal(mv__region_discard(f->h, f->r, &rg, 1), 0);
	assert_true(page_is_zero(f->mem + 100 * TPAGE));     /* not the store's copy */
	assert_int_equal(f->r->pages[100].slot, MV_SLOT_ANON);
	assert_memory_equal(f->mem + 101 * TPAGE, twin, TPAGE); /* the twin is untouched */
	mv_vm_stats(f->vm, &after);
	assert_int_equal(after.pages_merged, before.pages_merged - 1);

	/* the released page is the guest's again: a write is private and is kept */
	f->mem[100 * TPAGE + 5] = 0x77;
	assert_int_not_equal(tu_pfn(f->mem + 100 * TPAGE), tu_pfn(f->mem + 101 * TPAGE));
	assert_int_equal(mv_host_scan(f->h, 3), 0);
	assert_int_equal(f->mem[100 * TPAGE + 5], 0x77);
	assert_memory_equal(f->mem + 101 * TPAGE, twin, TPAGE);
}

static void hinted_pages_go_only_if_unwritten(void **state)
{
	struct fixture *f = *state;
	int err = mv__region_hint_begin(f->h, f->r);
	if (err == -ENOTSUP)
		TU_SKIP("guest RAM writes cannot be tracked here");
	assert_int_equal(err, 0);
	assert_int_equal(mv__region_hint_arm(f->h, f->r, 512, 512), 0);
	f->mem[700 * TPAGE + 1] = 0x42; /* reused by the guest after the hint */
	uint64_t released = 0;
	assert_int_equal(mv__region_hint_complete(f->h, f->r, 512, 512, &released), 0);
	/* (MADV_PAGEOUT frees at once what it can isolate: a page still in another CPU's
	 * LRU batch stays lazily freed, dropped when the kernel needs memory) */
	assert_in_range(released, 480, 511);
	assert_int_equal(f->mem[700 * TPAGE + 1], 0x42);
	assert_false(page_is_zero(f->mem + 700 * TPAGE));
	unsigned gone = 0;
	for (unsigned k = 512; k < 1024; k++)
		gone += k != 700 && page_is_zero(f->mem + k * TPAGE) && tu_is_zero_pfn(f->mem + k * TPAGE);
	assert_int_equal(gone, released);
	assert_false(page_is_zero(f->mem + 1100 * TPAGE)); /* outside the hint */
}

/* The guest may reuse a page it hinted before the device has even read the hint: the
 * write lands between the hint being queued and being armed, and must survive. */
static void write_before_the_hint_is_read_survives(void **state)
{
	struct fixture *f = *state;
	if (mv__region_hint_begin(f->h, f->r) == -ENOTSUP) /* the run starts */
		TU_SKIP("guest RAM writes cannot be tracked here");
	f->mem[600 * TPAGE + 9] = 0x5a; /* hinted (queued), then reused at once */
	assert_int_equal(mv__region_hint_arm(f->h, f->r, 512, 512), 0); /* the device reads it */
	uint64_t released = 0;
	assert_int_equal(mv__region_hint_complete(f->h, f->r, 512, 512, &released), 0);
	assert_int_equal(f->mem[600 * TPAGE + 9], 0x5a);
	assert_in_range(released, 480, 511); /* (see hinted_pages_go_only_if_unwritten) */
}

/* A hinted page that another path gives back (a balloon release here) loses its claim:
 * written afterwards and protected again by the scanner, it is not discarded. */
static void hint_claim_ends_when_released_elsewhere(void **state)
{
	struct fixture *f = *state;
	if (mv__region_hint_begin(f->h, f->r) == -ENOTSUP)
		TU_SKIP("guest RAM writes cannot be tracked here");
	assert_int_equal(mv__region_hint_arm(f->h, f->r, 512, 512), 0);
	struct mv_prange rg = { 650, 1 };
	assert_int_equal(mv__region_discard(f->h, f->r, &rg, 1), 0); /* inflated meanwhile */
	f->mem[650 * TPAGE + 3] = 0x6b;                                /* deflated, reused */
	assert_int_equal(mv_host_scan(f->h, 4), 0); /* the scanner finds it stable: protected */
	uint64_t released = 0;
	assert_int_equal(mv__region_hint_complete(f->h, f->r, 512, 512, &released), 0);
	assert_int_equal(f->mem[650 * TPAGE + 3], 0x6b);
}

/* The same through the scanner: a hinted zero page it releases, then reused. */
static void hint_claim_ends_when_the_scanner_releases(void **state)
{
	struct fixture *f = *state;
	if (mv__region_hint_begin(f->h, f->r) == -ENOTSUP)
		TU_SKIP("guest RAM writes cannot be tracked here");
	assert_int_equal(mv__region_hint_arm(f->h, f->r, 512, 512), 0);
	memset(f->mem + 660 * TPAGE, 0, TPAGE);
	assert_int_equal(mv_host_scan(f->h, 3), 0); /* released as a zero page */
	assert_true(tu_is_zero_pfn(f->mem + 660 * TPAGE) || !tu_pfn(f->mem + 660 * TPAGE));
	f->mem[660 * TPAGE + 3] = 0x6c;
	assert_int_equal(mv_host_scan(f->h, 4), 0);
	uint64_t released = 0;
	assert_int_equal(mv__region_hint_complete(f->h, f->r, 512, 512, &released), 0);
	assert_int_equal(f->mem[660 * TPAGE + 3], 0x6c);
}

/* A hinted page reused by the guest, then found stable and protected again by the
 * scanner: protecting it erased the trace of the write, so its claim must be gone. */
static void hint_claim_ends_when_the_scanner_protects_again(void **state)
{
	struct fixture *f = *state;
	memset(f->mem + 670 * TPAGE, 0, TPAGE);
	assert_int_equal(mv_host_scan(f->h, 3), 0); /* released as a zero page */
	if (mv__region_hint_begin(f->h, f->r) == -ENOTSUP)
		TU_SKIP("guest RAM writes cannot be tracked here");
	assert_int_equal(mv__region_hint_arm(f->h, f->r, 512, 512), 0);
	f->mem[670 * TPAGE + 5] = 0x6d;             /* reused after the hint */
	assert_int_equal(mv_host_scan(f->h, 3), 0); /* seen, then stable: protected again */
	uint64_t released = 0;
	assert_int_equal(mv__region_hint_complete(f->h, f->r, 512, 512, &released), 0);
	assert_int_equal(f->mem[670 * TPAGE + 5], 0x6d);
}

/* A guest that reuses hinted pages while the hint completes: every write made after the
 * hint was armed must be there afterwards. */
struct writer {
	uint8_t *mem;
	uint64_t first, n;
	atomic_bool stop;
	uint32_t last[PAGES]; /* value last written to each page, 0 = none */
	uint64_t seed;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	for (uint32_t v = 1; !atomic_load(&w->stop); v++) {
		uint64_t k = w->first + tu_rand(&w->seed) % w->n;
		memcpy(w->mem + k * TPAGE + 64, &v, sizeof(v));
		w->last[k] = v;
	}
	return NULL;
}

static void hint_races_with_writers(void **state)
{
	struct fixture *f = *state;
	struct writer *w = calloc(1, sizeof(*w));
	*w = (struct writer){ .mem = f->mem, .first = 0, .n = 1024, .seed = 7 };
	for (int round = 0; round < 60; round++) {
		if (mv__region_hint_begin(f->h, f->r) == -ENOTSUP)
			TU_SKIP("guest RAM writes cannot be tracked here");
		assert_int_equal(mv__region_hint_arm(f->h, f->r, w->first, w->n), 0);
		memset(w->last, 0, sizeof(w->last));
		atomic_store(&w->stop, false);
		pthread_t t;
		pthread_create(&t, NULL, writer_main, w);
		uint64_t released;
		assert_int_equal(mv__region_hint_complete(f->h, f->r, w->first, w->n, &released), 0);
		atomic_store(&w->stop, true);
		pthread_join(t, NULL);
		for (uint64_t k = w->first; k < w->first + w->n; k++) {
			uint32_t v;
			memcpy(&v, f->mem + k * TPAGE + 64, sizeof(v));
			if (w->last[k] && v != w->last[k]) {
				fprintf(stderr, "round %d page %lu: wrote %u, reads %u\n", round,
				        (unsigned long)k, w->last[k], v);
				fail();
			}
		}
	}
	free(w);
}

static int fail_dontneed(const struct iovec *iov, size_t n) { return -EAGAIN; }
static int fail_map_anon(void *addr, size_t len) { return -ENOMEM; }

/* The OS refuses: the caller hears it, no page changes, no share is dropped. */
static void failed_release_changes_nothing(void **state)
{
	struct fixture *f = *state;
	assert_int_equal(mv_host_scan(f->h, 3), 0);
	struct mv_prim broken = mv__prim_linux;
	broken.dontneed = fail_dontneed;
	broken.map_anon_fixed = fail_map_anon;
	f->h->prim = &broken;
	uint8_t *copy = malloc(PAGES * TPAGE);
	memcpy(copy, f->mem, PAGES * TPAGE);
	struct mv_scan_stats before, after;
	mv_vm_stats(f->vm, &before);
	struct mv_prange rg = { 0, PAGES };
	int err = mv__region_discard(f->h, f->r, &rg, 1);
	f->h->prim = &mv__prim_linux;
	assert_true(err == -EAGAIN || err == -ENOMEM);
	assert_memory_equal(f->mem, copy, PAGES * TPAGE);
	mv_vm_stats(f->vm, &after);
	assert_int_equal(after.pages_merged, before.pages_merged);
	free(copy);
}

/* ---- guest RAM that is a private mapping of a file ---- */

static struct mv_vm *vm_in(struct mv_host *h, const char *name, const char *domain)
{
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = name;
	vc.domain = domain;
	struct mv_vm *vm = NULL;
	assert_int_equal(mv_vm_new(h, &vc, &vm), 0);
	return vm;
}

static struct mv_region *region0(struct mv_vm *vm)
{
	return rcu_dereference(vm->map)->r[0]; /* stable: nobody changes the map here */
}

/* Released pages [first, first+n) of each range read zero, the others hold seed(i). */
static void check_released(const uint8_t *mem, size_t pages, const struct mv_prange *rg,
                           size_t nr, uint64_t (*seed)(size_t))
{
	uint8_t want[TPAGE];
	for (size_t i = 0; i < pages; i++) {
		bool gone = false;
		for (size_t k = 0; k < nr; k++)
			gone |= i >= rg[k].first && i < rg[k].first + rg[k].n;
		if (gone) {
			if (!page_is_zero(mem + i * TPAGE)) {
				fprintf(stderr, "released page %zu does not read zero\n", i);
				fail();
			}
			continue;
		}
		tu_fill(want, seed(i));
		assert_memory_equal(mem + i * TPAGE, want, TPAGE);
	}
}

static uint64_t pair_seed(size_t i)
{
	return i / 2 + 1;
}

/* A memslot merged in domain "a", removed, and added to a VM of domain "b": its pages
 * still live in store mappings of "a", as private copies. Released, they must read
 * zero, not the store slot behind them (which "a" reuses for other content). */
static void re_added_store_memory_releases_to_zero(void **state)
{
	enum { N = 512 };
	struct mv_host *h = tu_host();
	struct mv_vm *va = vm_in(h, "a1", "a"), *keep = vm_in(h, "a2", "a");
	uint8_t *mem = tu_guest_alloc(N), *kmem = tu_guest_alloc(N); /* kmem keeps the slots */
	for (size_t i = 0; i < N; i++) {
		tu_fill(mem + i * TPAGE, pair_seed(i));
		tu_fill(kmem + i * TPAGE, pair_seed(i));
	}
	assert_int_equal(mv_vm_region_add(va, 0, 0, mem, N * TPAGE, 0), 0);
	assert_int_equal(mv_vm_region_add(keep, 0, 0, kmem, N * TPAGE, 0), 0);
	assert_int_equal(mv_host_scan(h, 3), 0);
	assert_int_equal(region0(va)->pages[0].state, PS_MERGED);
	assert_int_equal(mv_vm_region_remove(va, 0), 0);

	struct mv_vm *vb = vm_in(h, "b1", "b");
	assert_int_equal(mv_vm_region_add(vb, 0, 0, mem, N * TPAGE, 0), 0);
	struct mv_prange rg[3] = { { 0, 64 }, { 101, 1 }, { 300, 10 } };
	assert_int_equal(mv__region_discard(h, region0(vb), rg, 3), 0);
	check_released(mem, N, rg, 3, pair_seed);
	assert_int_equal(mv__region_discard(h, region0(vb), rg, 3), 0); /* again: still zero */
	check_released(mem, N, rg, 3, pair_seed);
	for (size_t i = 0; i < N; i++) { /* the other domain's pages are untouched */
		uint8_t want[TPAGE];
		tu_fill(want, pair_seed(i));
		assert_memory_equal(kmem + i * TPAGE, want, TPAGE);
	}
	mv_vm_free(vb);
	mv_vm_free(keep);
	mv_vm_free(va);
	mv_host_free(h);
	tu_guest_free(mem, N);
	tu_guest_free(kmem, N);
}

static uint64_t file_seed(size_t i)
{
	return 31 + i;
}

/* A MAP_PRIVATE memfd mapping with content of its own: released pages read zero, not
 * the file. */
static void private_file_pages_release_to_zero(void **state)
{
	enum { N = 64 };
	int fd = memfd_create("guest-file", MFD_CLOEXEC);
	assert_true(fd >= 0);
	uint8_t page[TPAGE];
	for (size_t i = 0; i < N; i++) {
		tu_fill(page, file_seed(i));
		assert_int_equal(pwrite(fd, page, TPAGE, (off_t)(i * TPAGE)), TPAGE);
	}
	uint8_t *mem = mmap(NULL, N * TPAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	assert_true(mem != MAP_FAILED);
	tu_fill(mem + 5 * TPAGE, file_seed(5)); /* a private copy, with the file's bytes */
	struct mv_host *h = tu_host();
	struct mv_vm *vm = vm_in(h, "pf", NULL);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, N * TPAGE, 0), 0);
	struct mv_prange rg[2] = { { 3, 4 }, { 40, 1 } };
	assert_int_equal(mv__region_discard(h, region0(vm), rg, 2), 0);
	check_released(mem, N, rg, 2, file_seed);
	mv_vm_free(vm);
	mv_host_free(h);
	munmap(mem, N * TPAGE);
	close(fd);
}

/* ---- the VMA budget ---- */

static uint64_t image_seed(size_t i)
{
	return 800000 + i;
}

/* Two guests of one image: the second is mapped onto runs of consecutive store slots,
 * few mappings. Releasing every other page of it, one at a time, would split those
 * mappings at each page: the mappings added stay within the host's VMA budget, and the
 * pages left for lack of it are counted (and keep their bytes). */
static void releases_stay_within_the_vma_budget(void **state)
{
	enum { N = 512, BUDGET = 16 };
	struct mv_host_config cfg;
	mv_host_config_init(&cfg);
	cfg.settle_ms = 0;
	cfg.vma_budget = BUDGET;
	struct mv_host *h;
	assert_int_equal(mv_host_new(&cfg, &h), 0);
	struct mv_vm *keep = vm_in(h, "k", "img"), *vm = vm_in(h, "g", "img");
	uint8_t *kmem = tu_guest_alloc(N), *mem = tu_guest_alloc(N);
	for (size_t i = 0; i < N; i++) {
		tu_fill(kmem + i * TPAGE, image_seed(i));
		tu_fill(mem + i * TPAGE, image_seed(i));
	}
	assert_int_equal(mv_vm_region_add(keep, 0, 0, kmem, N * TPAGE, 0), 0);
	long maps_before = tu_vmas_in(mem, N * TPAGE);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, N * TPAGE, 0), 0);
	assert_int_equal(mv_host_scan(h, 4), 0);
	struct mv_scan_stats st;
	mv_host_stats(h, &st);
	uint64_t left_before = st.pages_left_vma_budget;
	struct mv_region *r = region0(vm);
	size_t merged = 0;
	for (size_t i = 1; i < N; i += 2)
		merged += r->pages[i].state == PS_MERGED;
	assert_true(merged > N / 4);

	for (size_t i = 1; i < N; i += 2) {
		struct mv_prange rg = { i, 1 };
		assert_int_equal(mv__region_discard(h, r, &rg, 1), 0);
		mv_host_stats(h, &st);
		assert_true(st.vmas_used <= BUDGET);
	}
	assert_true(tu_vmas_in(mem, N * TPAGE) - maps_before <= BUDGET);
	size_t released = 0, kept = 0;
	uint8_t want[TPAGE];
	for (size_t i = 1; i < N; i += 2) {
		tu_fill(want, image_seed(i));
		released += page_is_zero(mem + i * TPAGE);
		kept += !memcmp(mem + i * TPAGE, want, TPAGE);
	}
	assert_int_equal(released + kept, N / 2);
	assert_true(kept > 0);
	assert_int_equal(st.pages_left_vma_budget - left_before, kept);
	mv_vm_free(vm);
	mv_vm_free(keep);
	mv_host_free(h);
	tu_guest_free(mem, N);
	tu_guest_free(kmem, N);
}

/* ---- hugetlbfs ---- */

/* Shared hugetlbfs guest RAM: a 4 KiB piece of a huge page cannot be released (a 4 KiB
 * MADV_REMOVE succeeds but punches nothing): the caller hears it and the bytes stay; a
 * whole huge page is released and reads zero. */
static void huge_page_pieces_are_not_released(void **state)
{
	long nr = 0, kb = 0;
	if (mv__read_long("/proc/sys/vm/nr_hugepages", &nr) || nr < 2)
		TU_SKIP("no huge pages reserved (vm.nr_hugepages is %ld): hugetlbfs cannot be "
		        "tested, and tests never change kernel settings", nr);
	FILE *f = fopen("/proc/meminfo", "re");
	char line[128];
	while (f && fgets(line, sizeof(line), f) && sscanf(line, "Hugepagesize: %ld kB", &kb) != 1)
		;
	if (f)
		fclose(f);
	size_t huge = (size_t)kb * 1024, pages = 2 * huge / TPAGE;
	uint8_t *mem = mmap(NULL, 2 * huge, PROT_READ | PROT_WRITE,
	                    MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (!kb || mem == MAP_FAILED)
		TU_SKIP("two free huge pages are not available");
	for (size_t i = 0; i < pages; i++)
		tu_fill(mem + i * TPAGE, file_seed(i));
	struct mv_host *h = tu_host();
	struct mv_vm *vm = vm_in(h, "huge", NULL);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, 2 * huge, 0), 0);
	assert_int_equal(region0(vm)->page_size, huge);
	struct mv_prange piece = { 1, 1 }, whole = { huge / TPAGE, huge / TPAGE };
	assert_int_equal(mv__region_discard(h, region0(vm), &piece, 1), -EINVAL);
	assert_int_equal(mv__region_discard(h, region0(vm), &whole, 1), 0);
	check_released(mem, pages, &whole, 1, file_seed); /* page 1 kept its bytes */
	mv_vm_free(vm);
	mv_host_free(h);
	munmap(mem, 2 * huge);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(anonymous_pages_are_freed, setup, teardown),
		cmocka_unit_test_setup_teardown(merged_pages_drop_their_share, setup, teardown),
		cmocka_unit_test_setup_teardown(hinted_pages_go_only_if_unwritten, setup, teardown),
		cmocka_unit_test_setup_teardown(hint_races_with_writers, setup, teardown),
		cmocka_unit_test_setup_teardown(write_before_the_hint_is_read_survives, setup, teardown),
		cmocka_unit_test_setup_teardown(hint_claim_ends_when_released_elsewhere, setup, teardown),
		cmocka_unit_test_setup_teardown(hint_claim_ends_when_the_scanner_releases, setup, teardown),
		cmocka_unit_test_setup_teardown(hint_claim_ends_when_the_scanner_protects_again, setup, teardown),
		cmocka_unit_test_setup_teardown(failed_release_changes_nothing, setup, teardown),
		cmocka_unit_test(re_added_store_memory_releases_to_zero),
		cmocka_unit_test(private_file_pages_release_to_zero),
		cmocka_unit_test(releases_stay_within_the_vma_budget),
		cmocka_unit_test(huge_page_pieces_are_not_released),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
