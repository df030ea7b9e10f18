/* test_scan.c - the scanner's outcomes: shared frames, COW isolation, zero pages, domains,
 * NUMA, VMA budget, unmerge, injected OS failures. Frames are read from /proc/self/pagemap. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <memvirt/memvirt.h>
#include "ksm.h"
#include "testutil.h"

struct guest {
	struct mv_vm *vm;
	uint8_t *mem;
	uint8_t *shadow;
	size_t pages;
};

static struct mv_vm *new_vm(struct mv_host *h, const char *name, const char *domain)
{
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = name;
	vc.domain = domain;
	struct mv_vm *vm = NULL;
	assert_int_equal(mv_vm_new(h, &vc, &vm), 0);
	return vm;
}

/* A guest whose page i holds content seed(i); shadow keeps what each page must hold. */
static void guest_init(struct guest *g, struct mv_host *h, const char *name, const char *domain,
                       size_t pages, uint64_t (*seed)(size_t i))
{
	g->vm = new_vm(h, name, domain);
	g->pages = pages;
	g->mem = tu_guest_alloc(pages);
	g->shadow = malloc(pages * TPAGE);
	assert_non_null(g->shadow);
	for (size_t i = 0; i < pages; i++)
		tu_fill(g->mem + i * TPAGE, seed(i));
	memcpy(g->shadow, g->mem, pages * TPAGE);
	static uint64_t next_gpa;
	assert_int_equal(mv_vm_region_add(g->vm, 0, next_gpa, g->mem, pages * TPAGE, 0), 0);
	next_gpa += pages * TPAGE;
}

static void guest_check(const struct guest *g)
{
	for (size_t i = 0; i < g->pages; i++)
		if (memcmp(g->mem + i * TPAGE, g->shadow + i * TPAGE, TPAGE)) {
			fprintf(stderr, "page %zu of %s differs from its shadow\n", i, "guest");
			fail();
		}
}

static void guest_fini(struct guest *g)
{
	mv_vm_free(g->vm);
	tu_guest_free(g->mem, g->pages);
	free(g->shadow);
}

static uint64_t pfn_of(const struct guest *g, size_t i)
{
	volatile uint8_t c = g->mem[i * TPAGE]; /* fault it in */
	(void)c;
	return tu_pfn(g->mem + i * TPAGE);
}

/* Mappings inside the guests' RAM: the scanner's VMA estimate must match them (other
 * threads, malloc and liburcu map memory of their own meanwhile, elsewhere). */
static long guest_vmas(const struct guest *g, int n)
{
	long v = 0;
	for (int k = 0; k < n; k++)
		v += tu_vmas_in(g[k].mem, g[k].pages * TPAGE);
	return v;
}

/* Groups of 8 identical pages (seeds 1000+), one unique page in every 4, a zero page in every 16. */
static uint64_t mixed_seed(size_t i)
{
	if (i % 16 == 15)
		return 0;
	if (i % 4 == 3)
		return 500000 + i;
	return 1000 + i / 8;
}

static void identical_pages_share_a_frame(void **state)
{
	struct mv_host *h = tu_host();
	struct guest g;
	guest_init(&g, h, "a", NULL, 1024, mixed_seed);
	long maps_before = guest_vmas(&g, 1);
	assert_int_equal(mv_host_scan(h, 3), 0);
	long maps_after = guest_vmas(&g, 1);
	guest_check(&g);
	for (size_t i = 0; i < g.pages; i++) {
		uint64_t s = mixed_seed(i);
		if (s == 0) {
			assert_true(tu_is_zero_pfn(g.mem + i * TPAGE));
			continue;
		}
		for (size_t j = i + 1; j < g.pages && j < i + 16; j++) {
			if (mixed_seed(j) == s)
				assert_int_equal(pfn_of(&g, i), pfn_of(&g, j));
			else if (mixed_seed(j))
				assert_int_not_equal(pfn_of(&g, i), pfn_of(&g, j));
		}
	}
	struct mv_scan_stats st;
	assert_int_equal(mv_host_stats(h, &st), 0);
	assert_int_equal(st.pages_zero, 1024 / 16);
	assert_int_equal(st.pages_merged, 1024 - 1024 / 4);
	assert_int_equal(st.pages_shared, 1024 / 8);
	assert_int_equal(st.pages_sharing, st.pages_merged - st.pages_shared);
	assert_int_equal(st.cow_debt_bytes, (st.pages_sharing + st.pages_zero) * TPAGE);
	/* the VMA estimate is what the kernel really holds */
	assert_int_equal(st.vmas_used, maps_after - maps_before);
	guest_fini(&g);
	mv_host_free(h);
}

static void writes_stay_private(void **state)
{
	struct mv_host *h = tu_host();
	struct guest g;
	guest_init(&g, h, "a", NULL, 512, mixed_seed);
	assert_int_equal(mv_host_scan(h, 3), 0);
	uint64_t shared = pfn_of(&g, 0);
	assert_int_equal(shared, pfn_of(&g, 1));
	g.mem[1 * TPAGE + 100] = 0x42; /* COW break on a merged page */
	g.shadow[1 * TPAGE + 100] = 0x42;
	g.mem[15 * TPAGE + 7] = 0x43;  /* write to a released zero page */
	g.shadow[15 * TPAGE + 7] = 0x43;
	guest_check(&g);
	assert_int_not_equal(pfn_of(&g, 1), shared);
	assert_int_equal(pfn_of(&g, 0), shared);
	assert_int_equal(pfn_of(&g, 2), shared);
	assert_int_equal(mv_host_scan(h, 2), 0);
	struct mv_vm *vm = g.vm;
	struct mv_scan_stats st;
	assert_int_equal(mv_vm_stats(vm, &st), 0);
	assert_int_equal(st.cow_breaks, 1);
	guest_check(&g);
	guest_fini(&g);
	mv_host_free(h);
}

static uint64_t unique_seed(size_t i)
{
	return 300000 + i;
}

/* Chunks where nothing happens are skipped; a write in one brings it back. */
static void quiet_chunks_notice_writes(void **state)
{
	struct mv_host *h = tu_host();
	struct guest g;
	guest_init(&g, h, "q", NULL, 1024, unique_seed);
	assert_int_equal(mv_host_scan(h, 3), 0);
	struct mv_scan_stats before, after;
	mv_host_stats(h, &before);
	assert_int_equal(mv_host_scan(h, 4), 0);
	mv_host_stats(h, &after);
	assert_int_equal(after.pages_scanned, before.pages_scanned); /* nothing re-read */
	memcpy(g.mem + 700 * TPAGE, g.mem + 3 * TPAGE, TPAGE);  /* now a duplicate */
	memcpy(g.shadow + 700 * TPAGE, g.shadow + 3 * TPAGE, TPAGE);
	assert_int_equal(mv_host_scan(h, 4), 0);
	assert_int_equal(pfn_of(&g, 3), pfn_of(&g, 700));
	mv_host_stats(h, &after);
	assert_true(after.pages_scanned - before.pages_scanned < 8);
	guest_check(&g);
	guest_fini(&g);
	mv_host_free(h);
}

/* Pages that keep changing content must not leave index entries behind forever. */
static void changing_pages_do_not_grow_the_index(void **state)
{
	struct mv_host *h = tu_host();
	struct guest g;
	guest_init(&g, h, "churn", NULL, 512, unique_seed);
	struct mv_domain *d = g.vm->dom;
	int64_t most = 0;
	for (uint64_t round = 1; round <= 24; round++) {
		for (size_t i = 0; i < g.pages; i++)
			tu_fill(g.mem + i * TPAGE, round << 32 | i);
		memcpy(g.shadow, g.mem, g.pages * TPAGE);
		assert_int_equal(mv_host_scan(h, 3), 0);
		int64_t u = atomic_load(&d->unstable);
		most = u > most ? u : most;
	}
	assert_true(most <= 512 + MV_UNSTABLE_SLACK + 512);
	assert_true(atomic_load(&d->unstable) >= 256); /* still indexing the current contents */
	guest_check(&g);
	guest_fini(&g);
	mv_host_free(h);
}

/* Cloned guests: one image, each clone with a few pages of its own. */
static uint64_t image_seed(size_t i)
{
	return 800000 + i;
}

static void clones_map_whole_chunks(void **state)
{
	struct mv_host *h = tu_host();
	enum { N = 4, PAGES = 2048 };
	struct guest g[N];
	char name[8];
	for (int k = 0; k < N; k++) {
		snprintf(name, sizeof(name), "c%d", k);
		guest_init(&g[k], h, name, "image", PAGES, image_seed);
		for (size_t i = (size_t)k * 7; i < PAGES; i += 37) { /* 1 page in 37 differs */
			tu_fill(g[k].mem + i * TPAGE, 900000 + (uint64_t)k * PAGES + i);
			memcpy(g[k].shadow + i * TPAGE, g[k].mem + i * TPAGE, TPAGE);
		}
	}
	long maps_before = guest_vmas(g, N);
	assert_int_equal(mv_host_scan(h, 4), 0);
	long maps_after = guest_vmas(g, N);
	struct mv_scan_stats st;
	mv_host_stats(h, &st);
	assert_true(st.pages_merged > (uint64_t)(N * PAGES * 9 / 10));
	/* whole chunks: a handful of mappings, not two per differing page */
	assert_true(st.vmas_used < (uint64_t)(N * PAGES / 512 * 4));
	assert_int_equal(st.vmas_used, maps_after - maps_before);
	for (int k = 0; k < N; k++)
		guest_check(&g[k]);
	for (size_t i = 1; i < PAGES; i += 101)
		if (i % 37 != 0 && i % 37 != 7 && i % 37 != 14 && i % 37 != 21)
			assert_int_equal(pfn_of(&g[0], i), pfn_of(&g[3], i));
	for (int k = 0; k < N; k++)
		guest_fini(&g[k]);
	mv_host_free(h);
}

static uint64_t same_seed(size_t i)
{
	return i % 64 == 0 ? 0 : 7000 + i % 32;
}

static void domains_keep_tenants_apart(void **state)
{
	struct mv_host *h = tu_host();
	struct guest a, b, c;
	guest_init(&a, h, "a", NULL, 512, same_seed);
	guest_init(&b, h, "b", NULL, 512, same_seed);
	guest_init(&c, h, "c", "tenant-x", 512, same_seed);
	struct guest d;
	guest_init(&d, h, "d", "tenant-x", 512, same_seed);
	assert_int_equal(mv_host_scan(h, 3), 0);
	for (size_t i = 1; i < 32; i++) {
		assert_int_equal(pfn_of(&a, i), pfn_of(&a, i + 32)); /* inside a VM */
		assert_int_not_equal(pfn_of(&a, i), pfn_of(&b, i)); /* across own domains */
		assert_int_not_equal(pfn_of(&a, i), pfn_of(&c, i));
		assert_int_equal(pfn_of(&c, i), pfn_of(&d, i));     /* one named domain */
	}
	assert_true(tu_is_zero_pfn(a.mem) && tu_is_zero_pfn(b.mem) && tu_is_zero_pfn(c.mem));
	struct mv_scan_stats st;
	assert_int_equal(mv_domain_stats(h, "tenant-x", &st), 0);
	assert_int_equal(st.pages_shared, 32);
	assert_int_equal(mv_domain_stats(h, "vm:a", &st), 0);
	assert_int_equal(st.pages_shared, 32);
	assert_int_equal(mv_domain_stats(h, "nobody", &st), -ENOENT);
	guest_check(&a), guest_check(&b), guest_check(&c), guest_check(&d);
	guest_fini(&a), guest_fini(&b), guest_fini(&c), guest_fini(&d);
	mv_host_free(h);
}

/* Injected topology: the first half of the test guest is node 0, the second node 1. */
static uintptr_t numa_split;
static int fake_node_of(void *opaque, const void *hva)
{
	return (uintptr_t)hva >= numa_split;
}

static void numa_nodes_are_respected(void **state)
{
	for (int cross = 0; cross < 2; cross++) {
		struct mv_topology topo = { 2, fake_node_of, NULL };
		struct mv_host_config cfg;
		mv_host_config_init(&cfg);
		cfg.settle_ms = 0;
	cfg.settle_ms = 0;
		cfg.topology = &topo;
		cfg.cross_node_merge = cross;
		struct mv_host *h;
		assert_int_equal(mv_host_new(&cfg, &h), 0);
		struct guest g;
		guest_init(&g, h, "n", NULL, 1024, same_seed);
		numa_split = (uintptr_t)g.mem + 512 * TPAGE;
		assert_int_equal(mv_host_scan(h, 3), 0);
		for (size_t i = 1; i < 32; i++) {
			assert_int_equal(pfn_of(&g, i), pfn_of(&g, i + 32));
			assert_int_equal(pfn_of(&g, 512 + i), pfn_of(&g, 512 + i + 32));
			if (cross)
				assert_int_equal(pfn_of(&g, i), pfn_of(&g, 512 + i));
			else
				assert_int_not_equal(pfn_of(&g, i), pfn_of(&g, 512 + i));
		}
		struct mv_scan_stats st;
		mv_host_stats(h, &st);
		assert_int_equal(st.pages_shared, cross ? 32 : 64);
		guest_check(&g);
		guest_fini(&g);
		mv_host_free(h);
	}
}

/* Duplicates separated by unique pages: each merge costs mappings. */
static uint64_t isolated_seed(size_t i)
{
	return i % 2 ? 900000 + i : 4242;
}

static void vma_budget_stops_merging_cleanly(void **state)
{
	struct mv_host_config cfg;
	mv_host_config_init(&cfg);
	cfg.settle_ms = 0;
	cfg.vma_budget = 10;
	struct mv_host *h;
	assert_int_equal(mv_host_new(&cfg, &h), 0);
	struct guest g;
	guest_init(&g, h, "v", NULL, 512, isolated_seed);
	assert_int_equal(mv_host_scan(h, 4), 0);
	struct mv_scan_stats st;
	mv_host_stats(h, &st);
	assert_true(st.vmas_used <= 10);
	assert_true(st.pages_merged >= 4);
	assert_true(st.pages_left_vma_budget > 0);
	guest_check(&g);
	guest_fini(&g);
	mv_host_free(h);
}

static void unmerge_makes_every_page_private(void **state)
{
	struct mv_host *h = tu_host();
	struct guest g;
	guest_init(&g, h, "u", NULL, 1024, mixed_seed);
	assert_int_equal(mv_host_scan(h, 3), 0);
	assert_int_equal(pfn_of(&g, 0), pfn_of(&g, 1));
	assert_int_equal(mv_vm_unmerge(g.vm), 0);
	for (size_t i = 0; i + 1 < g.pages; i++)
		if (mixed_seed(i))
			assert_int_not_equal(pfn_of(&g, i), pfn_of(&g, i + 1));
	struct mv_scan_stats st;
	mv_host_stats(h, &st);
	assert_int_equal(st.pages_merged, 0);
	assert_int_equal(st.pages_shared, 0);
	assert_int_equal(mv_host_scan(h, 2), 0); /* merging stays off */
	mv_host_stats(h, &st);
	assert_int_equal(st.pages_merged, 0);
	guest_check(&g);
	assert_int_equal(mv_vm_set_merging(g.vm, true), 0);
	guest_fini(&g);
	mv_host_free(h);
}

static void bad_arguments_change_nothing(void **state)
{
	struct mv_host *h = tu_host();
	struct mv_vm *vm = new_vm(h, "x", NULL), *other;
	uint8_t *mem = tu_guest_alloc(512);
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "x";
	assert_int_equal(mv_vm_new(h, &vc, &other), -EEXIST);
	vc.name = "bad name";
	assert_int_equal(mv_vm_new(h, &vc, &other), -EINVAL);
	vc.name = "y";
	vc.domain = "vm:x";
	assert_int_equal(mv_vm_new(h, &vc, &other), -EINVAL);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem + 1, TPAGE, 0), -EINVAL);
	assert_int_equal(mv_vm_region_add(vm, 0, 1, mem, TPAGE, 0), -EINVAL);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, 0, 0), -EINVAL);
	assert_int_equal(mv_vm_region_add(vm, 0, UINT64_MAX & ~4095ul, mem, 2 * TPAGE, 0), -EINVAL);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, TPAGE, 0x80), -EINVAL);
	assert_int_equal(mv_vm_region_add(NULL, 0, 0, mem, TPAGE, 0), -EINVAL);
	assert_int_equal(mv_vm_region_add(vm, 0, 1ul << 30, mem, 256 * TPAGE, 0), 0);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem + 256 * TPAGE, 256 * TPAGE, 0), -EEXIST);
	assert_int_equal(mv_vm_region_add(vm, 1, (1ul << 30) + TPAGE, mem + 256 * TPAGE, TPAGE, 0), -EEXIST);
	assert_int_equal(mv_vm_region_add(vm, 1, 0, mem, TPAGE, 0), -EEXIST); /* hva overlap */
	assert_int_equal(mv_vm_region_remove(vm, 7), -ENOENT);
	/* the map is what the one good call made it */
	assert_ptr_equal(mv_vm_gpa_to_hva(vm, (1ul << 30) + 5 * TPAGE + 3, 16), mem + 5 * TPAGE + 3);
	assert_null(mv_vm_gpa_to_hva(vm, (1ul << 30) + 255 * TPAGE, 2 * TPAGE));
	assert_null(mv_vm_gpa_to_hva(vm, 0, 1));
	struct mv_host_config cfg;
	mv_host_config_init(&cfg);
	cfg.settle_ms = 0;
	cfg.cpu_share = 0;
	struct mv_host *h2;
	assert_int_equal(mv_host_new(&cfg, &h2), -EINVAL);
	assert_int_not_equal(strlen(mv_strerror(-EINVAL)), 0);
	mv_vm_free(vm);
	tu_guest_free(mem, 512);
	mv_host_free(h);
}

static void shared_memory_is_never_merged(void **state)
{
	struct mv_host *h = tu_host();
	struct mv_vm *vm = new_vm(h, "s", NULL);
	uint8_t *mem = mmap(NULL, 64 * TPAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	for (int i = 0; i < 64; i++)
		tu_fill(mem + i * TPAGE, 5);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, 64 * TPAGE, 0), 0);
	assert_int_equal(mv_host_scan(h, 3), 0);
	struct mv_scan_stats st;
	mv_host_stats(h, &st);
	assert_int_equal(st.pages_merged, 0);
	assert_int_equal(st.pages_scanned, 0);
	mv_vm_free(vm);
	munmap(mem, 64 * TPAGE);
	mv_host_free(h);
}

/* ---- guest RAM that is not plain private anonymous read-write memory ---- */

/* A memslot removed after merging and added again (resize, hot-plug): its pages still
 * live in store mappings, as private copies. A page the guest then zeroes must read
 * zero, not the store slot behind it (which the domain reuses for other content). */
static void re_added_memory_keeps_its_bytes(void **state)
{
	struct mv_host *h = tu_host();
	struct guest g, keep; /* keep holds the store slots alive: they are not punched */
	guest_init(&g, h, "re", "d", 1024, mixed_seed);
	guest_init(&keep, h, "keep", "d", 1024, mixed_seed);
	assert_int_equal(mv_host_scan(h, 3), 0);
	assert_int_equal(pfn_of(&g, 0), pfn_of(&keep, 0)); /* merged */
	assert_int_equal(mv_vm_region_remove(g.vm, 0), 0);
	assert_int_equal(mv_vm_region_add(g.vm, 0, 0, g.mem, g.pages * TPAGE, 0), 0);
	for (size_t i = 0; i < g.pages; i += 8) {
		memset(g.mem + i * TPAGE, 0, TPAGE);
		memset(g.shadow + i * TPAGE, 0, TPAGE);
	}
	assert_int_equal(mv_host_scan(h, 4), 0);
	guest_check(&g);
	guest_fini(&g);
	guest_fini(&keep);
	mv_host_free(h);
}


/* Pages that are all zero inside a MAP_PRIVATE mapping of a file: MADV_DONTNEED would
 * make them read the file's bytes again, so they must never be released or merged. */
static void private_file_memory_is_not_merged(void **state)
{
	enum { N = 32 };
	int fd = memfd_create("guest-file", 0);
	assert_true(fd >= 0);
	uint8_t page[TPAGE];
	for (int i = 0; i < N; i++) {
		tu_fill(page, 77);
		assert_int_equal(pwrite(fd, page, TPAGE, (off_t)i * TPAGE), TPAGE);
	}
	uint8_t *mem = mmap(NULL, N * TPAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	assert_true(mem != MAP_FAILED);
	for (int i = 0; i < N; i++)
		memset(mem + i * TPAGE, 0, TPAGE); /* private copies, all zero */
	struct mv_host *h = tu_host();
	struct mv_vm *vm = new_vm(h, "f", NULL);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, N * TPAGE, 0), 0);
	assert_int_equal(mv_host_scan(h, 4), 0);
	static const uint8_t zero[TPAGE];
	size_t bad = 0;
	for (int i = 0; i < N; i++)
		bad += memcmp(mem + i * TPAGE, zero, TPAGE) != 0;
	assert_int_equal(bad, 0);
	struct mv_scan_stats st;
	mv_host_stats(h, &st);
	assert_int_equal(st.pages_scanned, 0);
	mv_vm_free(vm);
	mv_host_free(h);
	munmap(mem, N * TPAGE);
	close(fd);
}

/* Permissions of every mapping in [addr, addr+len), as "rw-p" strings, joined. */
static void perms_in(const void *addr, size_t len, char *out, size_t max)
{
	FILE *f = fopen("/proc/self/maps", "re");
	assert_non_null(f);
	uintptr_t lo = (uintptr_t)addr, hi = lo + len, s, e;
	char perms[8], line[512];
	out[0] = 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx %7s", &s, &e, perms) == 3 && e > lo && s < hi &&
		    strlen(out) + 6 < max) {
			strcat(out, perms);
			strcat(out, " ");
		}
	fclose(f);
}

/* Read-only guest RAM (a ROM slot) full of duplicates stays read-only. */
static void read_only_memory_stays_read_only(void **state)
{
	enum { N = 64 };
	uint8_t *mem = tu_guest_alloc(N);
	for (int i = 0; i < N; i++)
		tu_fill(mem + i * TPAGE, i % 2 ? 9 : 0);
	assert_int_equal(mprotect(mem, N * TPAGE, PROT_READ), 0);
	struct mv_host *h = tu_host();
	struct mv_vm *vm = new_vm(h, "rom", NULL);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, N * TPAGE, 0), 0);
	assert_int_equal(mv_host_scan(h, 4), 0);
	char perms[256];
	perms_in(mem, N * TPAGE, perms, sizeof(perms));
	assert_string_equal(perms, "r--p ");
	mv_vm_free(vm);
	mv_host_free(h);
	assert_int_equal(mprotect(mem, N * TPAGE, PROT_READ | PROT_WRITE), 0);
	tu_guest_free(mem, N);
}

/* A PROT_NONE page inside guest RAM (a guard) is never read by the scanner. */
static void inaccessible_memory_is_not_read(void **state)
{
	enum { N = 64 };
	uint8_t *mem = tu_guest_alloc(N);
	for (int i = 0; i < N; i++)
		tu_fill(mem + i * TPAGE, 3);
	assert_int_equal(mprotect(mem + 8 * TPAGE, TPAGE, PROT_NONE), 0);
	struct mv_host *h = tu_host();
	struct mv_vm *vm = new_vm(h, "guard", NULL);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, N * TPAGE, 0), 0);
	assert_int_equal(mv_host_scan(h, 4), 0); /* (the scanner used to fault here) */
	char perms[256];
	perms_in(mem + 8 * TPAGE, TPAGE, perms, sizeof(perms));
	assert_string_equal(perms, "---p ");
	mv_vm_free(vm);
	mv_host_free(h);
	assert_int_equal(mprotect(mem + 8 * TPAGE, TPAGE, PROT_READ | PROT_WRITE), 0);
	tu_guest_free(mem, N);
}

/* ---- injected OS failures: the merge step fails, nothing is lost or leaked ---- */

static int fail_map(void *addr, size_t len, int fd, off_t off) { return -ENOMEM; }
static long fail_move(int uffd, void *dst, void *src, size_t len) { return -EBUSY; }

/* Moves out of the guest work, moves back into it fail: put back falls to UFFDIO_COPY. */
static uint8_t *guest_lo, *guest_hi;
static long move_out_only(int uffd, void *dst, void *src, size_t len)
{
	if ((uint8_t *)dst >= guest_lo && (uint8_t *)dst < guest_hi)
		return -ENOMEM;
	return mv__prim_linux.uffd_move(uffd, dst, src, len);
}

/* Duplicates are moved out, then their mapping fails: they go back, byte for byte. */
static void failed_remap_loses_nothing(void **state)
{
	struct mv_host *h = tu_host();
	struct mv_prim broken = mv__prim_linux;
	broken.map_private_fixed = fail_map;
	broken.uffd_move = move_out_only;
	h->prim = &broken;
	struct guest g;
	guest_init(&g, h, "f", NULL, 512, mixed_seed);
	guest_lo = g.mem;
	guest_hi = g.mem + 512 * TPAGE;
	assert_int_equal(mv_host_scan(h, 3), 0);
	struct mv_scan_stats st;
	mv_host_stats(h, &st);
	assert_int_equal(st.pages_merged, 0);
	assert_int_equal(st.pages_shared, 0); /* no canonical page left behind */
	assert_true(st.pages_left_vma_budget > 0);
	guest_check(&g);
	h->prim = &mv__prim_linux; /* the wall is gone: merging resumes */
	mv__vma_refresh(h, true);
	assert_int_equal(mv_host_scan(h, 3), 0);
	mv_host_stats(h, &st);
	assert_true(st.pages_merged > 0);
	guest_check(&g);
	guest_fini(&g);
	mv_host_free(h);
}

/* Pages that cannot be moved out (pinned, say) are neither released nor merged. */
static void unmovable_pages_stay(void **state)
{
	struct mv_host *h = tu_host();
	struct mv_prim broken = mv__prim_linux;
	broken.uffd_move = fail_move;
	h->prim = &broken;
	struct guest g;
	guest_init(&g, h, "p", NULL, 512, mixed_seed);
	assert_int_equal(mv_host_scan(h, 3), 0);
	struct mv_scan_stats st;
	mv_host_stats(h, &st);
	assert_int_equal(st.pages_merged, 0);
	assert_int_equal(st.pages_zero, 0);
	assert_int_equal(st.pages_shared, 0);
	guest_check(&g);
	guest_fini(&g);
	mv_host_free(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(identical_pages_share_a_frame),
		cmocka_unit_test(writes_stay_private),
		cmocka_unit_test(quiet_chunks_notice_writes),
		cmocka_unit_test(clones_map_whole_chunks),
		cmocka_unit_test(changing_pages_do_not_grow_the_index),
		cmocka_unit_test(domains_keep_tenants_apart),
		cmocka_unit_test(numa_nodes_are_respected),
		cmocka_unit_test(vma_budget_stops_merging_cleanly),
		cmocka_unit_test(unmerge_makes_every_page_private),
		cmocka_unit_test(bad_arguments_change_nothing),
		cmocka_unit_test(shared_memory_is_never_merged),
		cmocka_unit_test(private_file_memory_is_not_merged),
		cmocka_unit_test(re_added_memory_keeps_its_bytes),
		cmocka_unit_test(read_only_memory_stays_read_only),
		cmocka_unit_test(inaccessible_memory_is_not_read),
		cmocka_unit_test(failed_remap_loses_nothing),
		cmocka_unit_test(unmovable_pages_stay),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
