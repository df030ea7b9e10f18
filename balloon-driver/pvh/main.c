/* main.c - the bare-metal x86-64 guest: memvirt's balloon driver as real guest code.
 *
 * Booted through the PVH entry (entry.S) by any VMM that loads PVH ELF kernels (memvirt's
 * reference VMM, QEMU's microvm, ...). It takes its RAM from the boot information's
 * memory map, runs the hosted port's page allocator (hosted/galloc.c) over RAM above
 * 2 MiB, finds virtio-mmio devices on the kernel command line as Linux does
 * (virtio_mmio.device=<size>@<base>:<irq>), binds the driver to the first balloon
 * among them, and runs it by polling: the driver's wait watches InterruptStatus instead
 * of taking the interrupt (the guest runs with interrupts off).
 *
 * A workload allocates pages, writes them (half of them copies of four templates, so
 * the host has duplicates to share) and checks every byte each time the balloon settles
 * at a new target; one page is rewritten on every loop as a running writer.
 * Console lines (the tests read them):
 *   memvirt-guest: ram <MiB> MiB, <n> free pages, device at <base>
 *   workload: wrote <n> pages
 *   balloon: target <pages> actual <pages>
 *   check: ok <n> pages target <pages>      or  check: FAILED ... (then the CPU halts)
 *
 * Command line: virtio_mmio.device=..., memvirt.tsc_khz=<kHz> (the clock; default from
 * CPUID leaf 0x16, else 2 GHz), memvirt.work_pages=<n> (default 256),
 * memvirt.floor_kib=<KiB> (the driver's floor, default 1024), memvirt.report_ms=<ms> (free
 * page reporting period, default the driver's 2 s; 0 = off), memvirt.grow_pages=<n> (once
 * the driver stops at its floor, the workload allocates n more pages, deflating on OOM as
 * a guest kernel does when nothing is free; default 0).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pvh.h"
#include "../mvg.h"
#include "../hosted/galloc.h"

#define PAGE         4096ul
#define RUN          (2ul << 20)
#define RAM_START    RUN            /* the image, its heap and stack live below */
#define MAX_RAM      8
#define MAX_DEVS     32
#define MMIO_INTR_STATUS 0x60
#define MAX_WAIT_NS  (20 * 1000000ull)

struct guest {
	struct mvg__galloc *ga;
	uint64_t mmio;                 /* base of the balloon's window */
	uint64_t tsc_khz;
	uint64_t work_pages, grow_pages;
	uint64_t *work;                /* gpa of each workload page (work_pages + grow_pages) */
	uint64_t hot_gpa, hot_seq;     /* the page rewritten on every loop */
};

static struct guest G;

/* ---- command line ---- */

static bool starts(const char *s, const char *p)
{
	while (*p)
		if (*s++ != *p++)
			return false;
	return true;
}

static uint64_t parse_num(const char **sp)
{
	const char *s = *sp;
	uint64_t v = 0, base = 10;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		base = 16, s += 2;
	for (;; s++) {
		unsigned d;
		if (*s >= '0' && *s <= '9') d = (unsigned)(*s - '0');
		else if (base == 16 && *s >= 'a' && *s <= 'f') d = (unsigned)(*s - 'a' + 10);
		else if (base == 16 && *s >= 'A' && *s <= 'F') d = (unsigned)(*s - 'A' + 10);
		else break;
		v = v * base + d;
	}
	if (*s == 'K' || *s == 'k') v <<= 10, s++;
	else if (*s == 'M' || *s == 'm') v <<= 20, s++;
	*sp = s;
	return v;
}

/* Value of key=... on the command line, or NULL. The n-th occurrence (from 0). */
static const char *cmdline_find(const char *cl, const char *key, unsigned n)
{
	for (const char *s = cl; s && *s; ) {
		while (*s == ' ')
			s++;
		if (starts(s, key) && s[strlen(key)] == '=' && n-- == 0)
			return s + strlen(key) + 1;
		while (*s && *s != ' ')
			s++;
	}
	return NULL;
}

static uint64_t cmdline_num(const char *cl, const char *key, uint64_t dflt)
{
	const char *v = cmdline_find(cl, key, 0);
	return v ? parse_num(&v) : dflt;
}

/* ---- the platform of the driver ---- */

static uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

static uint64_t p_now(void *ctx)
{
	uint64_t t = rdtsc(), k = G.tsc_khz;
	return t / k * 1000000ull + t % k * 1000000ull / k;
}

static uint32_t mmio_rd(uint64_t addr)
{
	uint32_t v;
	__asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(addr) : "memory");
	return v;
}

static void mmio_wr(uint64_t addr, uint32_t v)
{
	__asm__ volatile("movl %0, (%1)" : : "r"(v), "r"(addr) : "memory");
}

static uint32_t p_mmio_read(void *ctx, uint32_t off) { return mmio_rd(G.mmio + off); }
static void p_mmio_write(void *ctx, uint32_t off, uint32_t val) { mmio_wr(G.mmio + off, val); }

/* No interrupts: watch InterruptStatus (the driver acknowledges it in its step). */
static void p_wait(void *ctx, uint64_t timeout_ns)
{
	if (timeout_ns > MAX_WAIT_NS)
		timeout_ns = MAX_WAIT_NS;
	uint64_t end = p_now(ctx) + timeout_ns;
	do {
		if (mmio_rd(G.mmio + MMIO_INTR_STATUS))
			return;
		for (int i = 0; i < 200; i++)
			__asm__ volatile("pause");
	} while (p_now(ctx) < end);
}

static int p_alloc_page(void *ctx, uint64_t *gpa) { return mvg__galloc_alloc_page(G.ga, gpa) ? -1 : 0; }
static void p_free_page(void *ctx, uint64_t gpa) { mvg__galloc_free_page(G.ga, gpa); }
static int p_alloc_run(void *ctx, uint64_t *gpa) { return mvg__galloc_alloc_run(G.ga, gpa) ? -1 : 0; }
static void p_free_run(void *ctx, uint64_t gpa) { mvg__galloc_free_run(G.ga, gpa); }
static void *p_map(void *ctx, uint64_t gpa) { return (void *)(uintptr_t)gpa; } /* identity */
static uint64_t p_free_bytes(void *ctx) { return mvg__galloc_free_bytes(G.ga); }
static int p_isolate(void *ctx, uint64_t *gpa) { return mvg__galloc_isolate_unreported(G.ga, gpa) ? -1 : 0; }
static void p_putback(void *ctx, uint64_t gpa) { mvg__galloc_putback_reported(G.ga, gpa); }

static void p_get_stats(void *ctx, struct mvg_guest_stats *out)
{
	memset(out, 0xff, sizeof(*out)); /* unknown */
	out->free_bytes = out->avail_bytes = mvg__galloc_free_bytes(G.ga);
	out->total_bytes = mvg__galloc_total_bytes(G.ga);
	out->major_faults = out->minor_faults = out->swap_in = out->swap_out = 0;
	out->oom_kills = out->alloc_stalls = 0;
}

static void p_log(void *ctx, const char *msg) { kprintf("balloon-driver: %s\n", msg); }

static const struct mvg_platform platform = {
	.alloc_page = p_alloc_page, .free_page = p_free_page,
	.alloc_run = p_alloc_run, .free_run = p_free_run,
	.map = p_map, .free_bytes = p_free_bytes, .get_stats = p_get_stats,
	.isolate_unreported = p_isolate, .putback_reported = p_putback,
	.mmio_read = p_mmio_read, .mmio_write = p_mmio_write,
	.wait = p_wait, .now_ns = p_now, .log = p_log,
};

/* ---- the workload ---- */

static uint64_t word_of(uint64_t k, uint64_t j)
{
	uint64_t seed = k % 2 ? 1000 + k : k / 2 % 4; /* odd pages unique, even ones 4 kinds */
	return (seed + 1) * 0x9e3779b97f4a7c15ull ^ j * 0x100000001b3ull;
}

static void halt(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

static void work_write(void)
{
	for (uint64_t k = 0; k < G.work_pages; k++) {
		uint64_t *w = (uint64_t *)(uintptr_t)G.work[k];
		for (uint64_t j = 0; j < PAGE / 8; j++)
			w[j] = word_of(k, j);
	}
	kprintf("workload: wrote %lu pages\n", G.work_pages);
}

static void work_check(uint64_t target)
{
	for (uint64_t k = 0; k < G.work_pages; k++) {
		const uint64_t *w = (const uint64_t *)(uintptr_t)G.work[k];
		for (uint64_t j = 0; j < PAGE / 8; j++)
			if (w[j] != word_of(k, j)) {
				kprintf("check: FAILED page %lu gpa 0x%lx word %lu: 0x%lx, wrote 0x%lx\n",
				        k, G.work[k], j, w[j], word_of(k, j));
				halt();
			}
	}
	const uint64_t *h = (const uint64_t *)(uintptr_t)G.hot_gpa;
	if (h[0] != G.hot_seq) {
		kprintf("check: FAILED hot page: %lu, wrote %lu\n", h[0], G.hot_seq);
		halt();
	}
	kprintf("check: ok %lu pages target %lu\n", G.work_pages + 1, target);
}

/* The running writer: one page written on every loop, its last value checked first. */
static void hot_write(void)
{
	uint64_t *h = (uint64_t *)(uintptr_t)G.hot_gpa;
	if (h[0] != G.hot_seq) {
		kprintf("check: FAILED hot page: %lu, wrote %lu\n", h[0], G.hot_seq);
		halt();
	}
	h[0] = ++G.hot_seq;
	h[G.hot_seq % (PAGE / 8 - 1) + 1] = G.hot_seq;
}

/* The workload grows by grow_pages while the balloon holds all the guest can spare:
 * when the allocator is empty, the driver deflates on OOM (1 MiB per event, as Linux). */
static void work_grow(struct mvg_balloon *d)
{
	uint64_t from_balloon = 0, first = G.work_pages;
	for (uint64_t k = first; k < first + G.grow_pages; k++) {
		while (mvg__galloc_alloc_page(G.ga, &G.work[k])) {
			uint64_t got = mvg_balloon_oom(d, 1ull << 20);
			if (!got) {
				kprintf("grow: out of memory, nothing deflated on OOM\n");
				halt();
			}
			from_balloon += got;
		}
		uint64_t *w = (uint64_t *)(uintptr_t)G.work[k];
		for (uint64_t j = 0; j < PAGE / 8; j++)
			w[j] = word_of(k, j);
		G.work_pages++;
	}
	kprintf("grow: %lu pages allocated, %lu KiB of them deflated on OOM\n", G.grow_pages,
	        from_balloon >> 10);
}

/* ---- boot ---- */

static unsigned ram_regions(const struct hvm_start_info *si, const char *cl,
                            struct mvg__galloc_region *r)
{
	unsigned n = 0;
	const struct hvm_memmap_entry *e = (const void *)(uintptr_t)si->memmap_paddr;
	for (uint32_t i = 0; si->version >= 1 && e && i < si->memmap_entries && n < MAX_RAM; i++) {
		if (e[i].type != HVM_MEMMAP_RAM)
			continue;
		uint64_t lo = (e[i].addr + RUN - 1) & ~(RUN - 1), hi = (e[i].addr + e[i].size) & ~(RUN - 1);
		if (lo < RAM_START)
			lo = RAM_START;
		if (hi > 0x100000000ull)
			hi = 0x100000000ull; /* the identity map covers 4 GiB */
		if (hi > lo)
			r[n++] = (struct mvg__galloc_region){ lo, hi - lo };
	}
	if (!n) { /* no memory map: memvirt.ram=<bytes> */
		uint64_t ram = cmdline_num(cl, "memvirt.ram", 0) & ~(RUN - 1);
		if (ram > RAM_START)
			r[n++] = (struct mvg__galloc_region){ RAM_START, ram - RAM_START };
	}
	return n;
}

static uint64_t default_tsc_khz(void)
{
	uint32_t a, b, c, d;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0));
	if (a >= 0x16) {
		__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0x16), "c"(0));
		if (a & 0xffff)
			return (uint64_t)(a & 0xffff) * 1000;
	}
	return 2000000;
}

/* The first virtio-mmio device on the command line that is a balloon. */
static int find_balloon(const char *cl, struct mvg_balloon *d, const struct mvg_config *cfg)
{
	const char *v;
	for (unsigned i = 0; i < MAX_DEVS && (v = cmdline_find(cl, "virtio_mmio.device", i)); i++) {
		parse_num(&v);                  /* size */
		if (*v++ != '@')
			continue;
		G.mmio = parse_num(&v);
		if (G.mmio >= 0x100000000ull)
			continue;
		uint32_t id = mmio_rd(G.mmio + 8);
		if (!id)
			continue; /* an empty transport */
		int rc = mvg_balloon_init(d, &platform, cfg);
		if (rc == 0)
			return 0;
		kprintf("memvirt-guest: device %u at 0x%lx (version %u): not taken (%d)\n", id,
		        G.mmio, mmio_rd(G.mmio + 4), rc);
	}
	return -1;
}

void pvh_main(uint32_t start_info)
{
	const struct hvm_start_info *si = (const void *)(uintptr_t)start_info;
	if (si->magic != HVM_START_MAGIC) {
		kprintf("memvirt-guest: no PVH start info\n");
		halt();
	}
	const char *cl = si->cmdline_paddr ? (const char *)(uintptr_t)si->cmdline_paddr : "";
	kprintf("memvirt-guest: command line: %s\n", cl);
	G.tsc_khz = cmdline_num(cl, "memvirt.tsc_khz", 0);
	if (!G.tsc_khz)
		G.tsc_khz = default_tsc_khz();
	G.work_pages = cmdline_num(cl, "memvirt.work_pages", 256);
	G.grow_pages = cmdline_num(cl, "memvirt.grow_pages", 0);

	struct mvg__galloc_region r[MAX_RAM];
	unsigned n = ram_regions(si, cl, r);
	if (!n || mvg__galloc_new(r, n, &G.ga)) {
		kprintf("memvirt-guest: no RAM above 2 MiB\n");
		halt();
	}
	G.work = calloc(G.work_pages + G.grow_pages, sizeof(*G.work));
	struct mvg_balloon *d = malloc(mvg_balloon_size());
	if (!G.work || !d || mvg__galloc_alloc_page(G.ga, &G.hot_gpa)) {
		kprintf("memvirt-guest: out of memory\n");
		halt();
	}
	for (uint64_t k = 0; k < G.work_pages; k++)
		if (mvg__galloc_alloc_page(G.ga, &G.work[k])) {
			kprintf("memvirt-guest: out of memory for the workload\n");
			halt();
		}
	memset((void *)(uintptr_t)G.hot_gpa, 0, PAGE);
	work_write();

	struct mvg_config cfg;
	mvg_config_init(&cfg);
	cfg.floor_bytes = cmdline_num(cl, "memvirt.floor_kib", 1024) << 10;
	cfg.report_period_ns = cmdline_num(cl, "memvirt.report_ms", cfg.report_period_ns / 1000000) * 1000000;
	if (find_balloon(cl, d, &cfg)) {
		kprintf("memvirt-guest: no virtio-balloon on the command line\n");
		halt();
	}
	kprintf("memvirt-guest: ram %lu MiB, %lu free pages, device at 0x%lx, tsc %lu kHz\n",
	        mvg__galloc_total_bytes(G.ga) >> 20, mvg__galloc_free_bytes(G.ga) / PAGE,
	        G.mmio, G.tsc_khz);

	uint64_t shown_target = UINT64_MAX, shown_actual = UINT64_MAX, checked = UINT64_MAX;
	bool grown = false;
	for (;;) {
		uint64_t sleep = mvg_balloon_step(d);
		struct mvg_status st;
		mvg_balloon_status(d, &st);
		if (st.error == MVG_ERR_RESET) {
			kprintf("balloon: the device needs a reset\n");
			halt();
		}
		if (st.target_pages != shown_target || st.actual_pages != shown_actual) {
			kprintf("balloon: target %lu actual %lu\n", st.target_pages, st.actual_pages);
			shown_target = st.target_pages;
			shown_actual = st.actual_pages;
		}
		if (st.target_pages == st.actual_pages && st.target_pages != checked) {
			work_check(st.target_pages);
			checked = st.target_pages;
		}
		if (G.grow_pages && !grown && st.at_floor && st.target_pages > st.actual_pages) {
			kprintf("balloon: at the floor, target %lu actual %lu\n", st.target_pages,
			        st.actual_pages);
			work_grow(d);
			grown = true;
			work_check(st.target_pages);
			checked = st.target_pages;
			continue;
		}
		hot_write();
		if (sleep)
			p_wait(NULL, sleep);
	}
}
