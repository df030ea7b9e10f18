/* fuzz_balloon.c - libFuzzer harness: a hostile guest against the virtio-balloon device.
 *
 * One host, one VM and its RAM are made once per process: region 0 is 4 MiB at gpa 0
 * (transparent huge pages allowed), region 1 is 2 MiB at 6 MiB (small pages), and the
 * hole between them and everything past 8 MiB is not RAM. Every mapping is fenced by
 * PROT_NONE guard pages, so a device access outside guest RAM faults at once. Each
 * input gets a fresh device (mv_balloon_new / mv_balloon_free); RAM is dropped back to
 * zero pages after it.
 *
 * An input is a program. Byte 0 configures the device: bits 0-5 the features offered,
 * bit 6 prefault_deflate, bit 7 QueueNumMax 16 instead of 256. Then operations, each an
 * opcode byte (mod OP_NR) and its operands, little-endian; a program that ends inside an
 * operand reads zeros. Addresses marked `a` are u32 folded into RAM (any value is some
 * byte of RAM); `raw` addresses are a u32 plus a kind byte whose high nibble gives the
 * upper 32 bits (15 = all ones), so they can point anywhere.
 *
 *   0 MMIO_WRITE  off:u16 (mod 0x400) len:u8 (1 << (len & 3)) val:u64
 *   1 MMIO_READ   off:u16 len:u8
 *   2 MEM_WRITE   a:u32 n:u8 bytes[n]          (clipped to the region's end)
 *   3 ADMIN       what:u8 arg:u32              (target pages, stats, hint start/stop, info)
 *   4 SETUP       feat:u8 flags:u8 poison:u32  (a driver's whole bring-up through MMIO)
 *   5 PUSH        q:u8 n:u8 then n x (kind:u8 addr:u32 len:u32 next:u8)
 *   6 NOTIFY      q:u8
 *   7 PFNS        q:u8 mode:u8 n:u8 then n x (u16 page index | u32 raw PFN if mode & 1)
 *   8 STATS       n:u8 then n x (tag:u16 val:u64)
 *   9 HINT        id:u8 [id:u32 if 2] n:u8 then n x (a:u32 pages:u8)
 *  10 REPORT      n:u8 then n x (a:u32 pages:u16)
 *  11 CLOCK       ms:u32
 *  12 TRANSPORT   what:u8 then its operands (features, status, queue setup, notify,
 *                 config read/write of any offset and length)
 *  13 ACTUAL      val:u32                      (the driver writes `actual`)
 *
 * After every operation mv_balloon_info() must stay consistent (held memory within
 * RAM, counters ordered, only offered features negotiated, ...). At the end of an input,
 * once the device is freed, guest memory is compared with a shadow of every byte the
 * program wrote: a page the program never named in an inflate, a hint or a report must
 * read exactly as written (the device dropped nothing else, and wrote nothing there).
 * Programs whose ring traffic the harness cannot follow (PUSH, raw MMIO writes, TRANSPORT,
 * writes into the ring and buffer area below FZ_SCRATCH_END) turn that check off.
 *
 * Built with libFuzzer by `make fuzz` (tests/fuzz/fuzz.mk); tests/fuzz/test_fuzz_regressions.c
 * includes this file (with MV_FUZZ_NO_MAIN) to replay the corpus and every regression in
 * `make test`. tests/fuzz/gen_corpus.py writes the seed corpus in this format.
 */
#include "fuzz_input.h"
#include <memvirt/memvirt.h>
#include <memvirt/balloon.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define FZ_R0_GPA   0x0ull
#define FZ_R0_SIZE  (4ull << 20)
#define FZ_R1_GPA   (6ull << 20)
#define FZ_R1_SIZE  (2ull << 20)
#define FZ_RAM      (FZ_R0_SIZE + FZ_R1_SIZE)
#define FZ_GUARD    (64ull << 10)
#define FZ_ALIGN    (2ull << 20)
#define FZ_PG       4096u
#define FZ_RING(q)  (0x1000ull + (uint64_t)(q) * 0x2000ull)
#define FZ_SCRATCH  0x10000ull
#define FZ_SCRATCH_END 0x80000ull
#define FZ_V1       (1ull << MV_VIRTIO_F_VERSION_1)

#ifdef MV_FUZZ_NO_MAIN
#define FZ_FAIL(...) fail_msg(__VA_ARGS__)
#else
#define FZ_FAIL(...) do { fprintf(stderr, "fuzz_balloon: " __VA_ARGS__); \
	fprintf(stderr, "\n"); abort(); } while (0)
#endif
#define FZ_CHECK(c) do { if (!(c)) FZ_FAIL("check failed: %s (line %d)", #c, __LINE__); } while (0)

enum { OP_MMIO_WRITE, OP_MMIO_READ, OP_MEM_WRITE, OP_ADMIN, OP_SETUP, OP_PUSH, OP_NOTIFY,
       OP_PFNS, OP_STATS, OP_HINT, OP_REPORT, OP_CLOCK, OP_TRANSPORT, OP_ACTUAL, OP_NR };

struct fz_vq {
	uint16_t num, next, avail;
};

static struct fz {
	struct mv_host *h;
	struct mv_vm *vm;
	uint8_t *map[2], *ram[2];
	size_t map_len[2];
	struct mv_balloon *b;
	uint64_t offered, neg, clock, scratch;
	struct fz_vq q[8];
	/* the content oracle */
	uint8_t *shadow;                  /* FZ_RAM bytes: what the program wrote */
	uint8_t pflag[FZ_RAM / FZ_PG];    /* FZ_NAMED: the device may have dropped the page */
	uint16_t dirty[FZ_RAM / FZ_PG];   /* shadow pages to clear for the next input */
	unsigned n_dirty;
	bool oracle;                      /* the program stayed followable */
} F;

enum { FZ_NAMED = 1, FZ_DIRTY = 2 };

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- guest memory ---- */

static uint64_t fz_fold(uint32_t a)
{
	uint64_t off = a % FZ_RAM;
	return off < FZ_R0_SIZE ? FZ_R0_GPA + off : FZ_R1_GPA + (off - FZ_R0_SIZE);
}

static uint64_t fz_raw(uint32_t a, uint8_t kind)
{
	uint64_t hi = kind >> 4;
	return (hi == 15 ? 0xffffffffull : hi) << 32 | a;
}

/* Host address of [gpa, gpa+len) if wholly in one region, else NULL. */
static uint8_t *fz_hva(uint64_t gpa, uint64_t len)
{
	if (len > FZ_RAM)
		return NULL;
	if (gpa - FZ_R0_GPA <= FZ_R0_SIZE - len)
		return F.ram[0] + (gpa - FZ_R0_GPA);
	if (gpa >= FZ_R1_GPA && gpa - FZ_R1_GPA <= FZ_R1_SIZE - len)
		return F.ram[1] + (gpa - FZ_R1_GPA);
	return NULL;
}

static void fz_put(uint64_t gpa, uint64_t v, unsigned bytes)
{
	uint8_t *p = fz_hva(gpa, bytes);
	for (unsigned i = 0; p && i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Index of the RAM page holding gpa (gpa in RAM). */
static unsigned fz_page(uint64_t gpa)
{
	uint64_t off = gpa >= FZ_R1_GPA ? FZ_R0_SIZE + (gpa - FZ_R1_GPA) : gpa - FZ_R0_GPA;
	return (unsigned)(off / FZ_PG);
}

/* The program named pages [gpa, gpa+len) in an inflate, hint or report: their content is
 * the device's to drop from now on. */
static void fz_named(uint64_t gpa, uint64_t len)
{
	for (uint64_t a = gpa & ~(uint64_t)(FZ_PG - 1); a < gpa + len; a += FZ_PG)
		if (fz_hva(a, FZ_PG))
			F.pflag[fz_page(a)] |= FZ_NAMED;
}

/* The program writes guest memory: RAM, and the shadow the oracle compares with. */
static void fz_write(uint64_t gpa, uint8_t byte)
{
	uint8_t *p = fz_hva(gpa, 1);
	if (!p)
		return;
	*p = byte;
	unsigned pg = fz_page(gpa);
	if (!(F.pflag[pg] & FZ_DIRTY))
		F.dirty[F.n_dirty++] = (uint16_t)pg;
	F.pflag[pg] |= FZ_DIRTY;
	F.shadow[(uint64_t)pg * FZ_PG + gpa % FZ_PG] = byte;
}

static uint64_t fz_scratch(size_t len)
{
	if (F.scratch + len > FZ_SCRATCH_END)
		F.scratch = FZ_SCRATCH;
	uint64_t a = F.scratch;
	F.scratch = (F.scratch + len + 15) & ~15ull;
	return a;
}

/* ---- the device ---- */

static void fz_interrupt(void *opaque, int queue)
{
	if (queue < -1 || queue >= 5)
		FZ_FAIL("interrupt for queue %d", queue);
}

static uint64_t fz_now(void *opaque)
{
	return F.clock;
}

static const struct mv_balloon_ops fz_ops = { .interrupt = fz_interrupt, .now_ns = fz_now };

static void fz_wr(unsigned off, uint32_t v)
{
	uint8_t b[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };
	mv_balloon_mmio_write(F.b, off, b, 4);
}

static uint32_t fz_rd(unsigned off)
{
	uint8_t b[8] = { 0 };
	mv_balloon_mmio_read(F.b, off, b, 4);
	return b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
}

/* Queue numbers the way Linux counts them, for the negotiated features. */
static unsigned fz_qnum(int role)
{
	unsigned n = 2;
	static const unsigned bit[3] = { MV_BALLOON_F_STATS_VQ, MV_BALLOON_F_FREE_PAGE_HINT,
	                                 MV_BALLOON_F_PAGE_REPORTING };
	for (int r = 2; r < role; r++)
		n += !!(F.neg & (1ull << bit[r - 2]));
	return n;
}

static void fz_check_info(void)
{
	struct mv_balloon_info i;
	FZ_CHECK(mv_balloon_info(F.b, &i) == 0);
	FZ_CHECK(i.held_bytes <= FZ_RAM && i.held_bytes % FZ_PG == 0);
	FZ_CHECK(i.held_bytes <= i.inflated_bytes);
	FZ_CHECK(i.target_bytes <= FZ_RAM);
	FZ_CHECK(i.hint_discarded_bytes <= i.hinted_bytes);
	FZ_CHECK(i.released_bytes <= i.inflated_bytes + i.reported_bytes + i.hint_discarded_bytes);
	FZ_CHECK((i.features & ~(F.offered | FZ_V1)) == 0);
	FZ_CHECK(i.stats_valid >> MV_BSTAT_NR == 0);
	FZ_CHECK(i.status == mv_balloon_get_status(F.b));
	FZ_CHECK(!i.needs_reset || (i.status & 0x40));
	FZ_CHECK(mv_balloon_nr_queues(F.b) <= 5);
	FZ_CHECK(!i.stalled || i.stall_gap_bytes > 0);
}

/* ---- operations ---- */

static void op_mmio(struct fz_in *in, bool write)
{
	unsigned off = U16(in) % 0x400, len = 1u << (U8(in) & 3);
	uint8_t buf[8];
	uint64_t v = write ? U64(in) : 0;
	memcpy(buf, &v, 8);
	if (write)
		mv_balloon_mmio_write(F.b, off, buf, len);
	else
		mv_balloon_mmio_read(F.b, off, buf, len);
}

static void op_mem_write(struct fz_in *in)
{
	uint64_t gpa = fz_fold(U32(in));
	unsigned n = U8(in);
	uint64_t end = gpa < FZ_R1_GPA ? FZ_R0_GPA + FZ_R0_SIZE : FZ_R1_GPA + FZ_R1_SIZE;
	if (gpa < FZ_SCRATCH_END)
		F.oracle = false; /* rings and buffers: the device may read anything there */
	for (unsigned i = 0; i < n && in->n; i++) {
		uint8_t byte = U8(in);
		if (gpa + i < end)
			fz_write(gpa + i, byte);
	}
}

static void op_admin(struct fz_in *in)
{
	unsigned what = U8(in) % 6;
	uint32_t arg = U32(in);
	switch (what) {
	case 0: mv_balloon_set_target(F.b, (uint64_t)arg * FZ_PG); break;
	case 1: mv_balloon_set_target(F.b, (uint64_t)(arg % 2048) * FZ_PG); break;
	case 2: mv_balloon_stats_request(F.b); break;
	case 3: mv_balloon_hint_start(F.b); break;
	case 4: mv_balloon_hint_stop(F.b); break;
	default: break; /* info: checked after every op */
	}
}

/* Reset, negotiate, program every queue at FZ_RING(q) with zeroed rings, DRIVER_OK. */
static void op_setup(struct fz_in *in)
{
	uint8_t feat = U8(in), flags = U8(in);
	uint32_t poison = U32(in);
	uint64_t f = (feat & 0x3f) | (flags & 0x80 ? 0 : FZ_V1);
	fz_wr(0x070, 0);
	fz_wr(0x070, 1);
	fz_wr(0x070, 3);
	fz_wr(0x024, 0), fz_wr(0x020, (uint32_t)f);
	fz_wr(0x024, 1), fz_wr(0x020, (uint32_t)(f >> 32));
	fz_wr(0x070, 11);
	F.neg = fz_rd(0x070) & 8 ? f : 0;
	unsigned nq = flags & 0x40 ? 5 : fz_qnum(5);
	if (flags & 0x40)
		F.oracle = false;
	uint16_t num = (uint16_t)(2u << (flags & 7));
	memset(F.q, 0, sizeof(F.q));
	for (unsigned q = 0; q < nq; q++) {
		uint64_t d = FZ_RING(q), a = d + 16ull * num, u = (a + 6 + 2ull * num + 3) & ~3ull;
		memset(fz_hva(d, 0x2000), 0, 0x2000);
		fz_wr(0x030, q);
		fz_wr(0x038, num);
		fz_wr(0x080, (uint32_t)d), fz_wr(0x084, 0);
		fz_wr(0x090, (uint32_t)a), fz_wr(0x094, 0);
		fz_wr(0x0a0, (uint32_t)u), fz_wr(0x0a4, 0);
		fz_wr(0x044, 1);
		F.q[q].num = num;
	}
	if (flags & 0x20)
		fz_wr(0x10c, poison);
	if (!(flags & 0x10))
		fz_wr(0x070, 15);
}

struct fz_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next; /* next: absolute index, or UINT16_MAX for "the following one" */
};

/* Write a chain into queue q's ring (as SETUP laid it out) and make it available. */
static void fz_push(unsigned q, const struct fz_desc *d, unsigned n)
{
	struct fz_vq *v = &F.q[q % 8];
	if (!v->num)
		return;
	uint64_t desc = FZ_RING(q), avail = desc + 16ull * v->num;
	uint16_t head = v->next % v->num;
	for (unsigned i = 0; i < n; i++) {
		uint16_t idx = (uint16_t)((head + i) % v->num);
		uint16_t next = d[i].next == UINT16_MAX ? (uint16_t)((idx + 1) % v->num) : d[i].next;
		uint16_t flags = d[i].flags | (i + 1 < n ? 1 : 0);
		uint64_t e = desc + 16ull * idx;
		fz_put(e, d[i].addr, 8);
		fz_put(e + 8, d[i].len, 4);
		fz_put(e + 12, flags, 2);
		fz_put(e + 14, next, 2);
	}
	v->next = (uint16_t)((head + n) % v->num);
	fz_put(avail + 4 + 2ull * (v->avail % v->num), head, 2);
	fz_put(avail + 2, ++v->avail, 2);
}

static void fz_kick(unsigned q)
{
	fz_wr(0x050, q);
}

static void op_push(struct fz_in *in)
{
	unsigned q = U8(in) % 8, n = 1 + U8(in) % 8;
	struct fz_desc d[8];
	for (unsigned i = 0; i < n; i++) {
		uint8_t kind = U8(in);
		uint32_t a = U32(in), len = U32(in);
		uint8_t next = U8(in);
		d[i] = (struct fz_desc){ .addr = kind & 2 ? fz_raw(a, kind) : fz_fold(a), .len = len,
		                         .flags = (uint16_t)((kind & 1 ? 2 : 0) | (kind & 4 ? 4 : 0) |
		                                             (kind & 8 ? 1 : 0)),
		                         .next = kind & 8 ? next : UINT16_MAX };
	}
	fz_push(q, d, n);
}

static void op_pfns(struct fz_in *in)
{
	unsigned q = U8(in) % 2, mode = U8(in), n = U8(in);
	uint64_t a = fz_scratch(4ull * n);
	for (unsigned i = 0; i < n; i++) {
		uint32_t pfn;
		if (mode & 1) {
			pfn = U32(in);
		} else {
			uint64_t page = U16(in) % (FZ_RAM / FZ_PG);
			pfn = (uint32_t)(fz_fold((uint32_t)(page * FZ_PG)) / FZ_PG);
		}
		fz_put(a + 4ull * i, pfn, 4);
		fz_named((uint64_t)pfn * FZ_PG, FZ_PG); /* deflate too: inflated earlier, maybe */
	}
	fz_push(q, &(struct fz_desc){ a, 4 * n, mode & 2 ? 2 : 0, UINT16_MAX }, 1);
	fz_kick(q);
}

static void op_stats(struct fz_in *in)
{
	unsigned n = U8(in) % 64;
	uint64_t a = fz_scratch(10ull * n + 1);
	for (unsigned i = 0; i < n; i++) {
		fz_put(a + 10ull * i, U16(in), 2);
		fz_put(a + 10ull * i + 2, U64(in), 8);
	}
	fz_push(fz_qnum(2), &(struct fz_desc){ a, 10 * n, 0, UINT16_MAX }, 1);
	fz_kick(fz_qnum(2));
}

static void op_hint(struct fz_in *in)
{
	unsigned q = fz_qnum(3), mode = U8(in) % 3;
	uint32_t id = mode == 0 ? fz_rd(0x108) : mode == 1 ? 0 : U32(in);
	uint64_t a = fz_scratch(4);
	fz_put(a, id, 4);
	fz_push(q, &(struct fz_desc){ a, 4, 0, UINT16_MAX }, 1);
	unsigned n = U8(in) % 4;
	for (unsigned i = 0; i < n; i++) {
		uint64_t gpa = fz_fold(U32(in)) & ~(uint64_t)(FZ_PG - 1);
		uint32_t len = (1u + U8(in)) * FZ_PG;
		fz_named(gpa, len);
		fz_push(q, &(struct fz_desc){ gpa, len, 2, UINT16_MAX }, 1);
	}
	fz_kick(q);
}

static void op_report(struct fz_in *in)
{
	unsigned q = fz_qnum(4), n = 1 + U8(in) % 4;
	struct fz_desc d[4];
	for (unsigned i = 0; i < n; i++) {
		uint64_t gpa = fz_fold(U32(in)) & ~(uint64_t)(FZ_PG - 1);
		d[i] = (struct fz_desc){ gpa, (1u + U16(in)) * FZ_PG, 2, UINT16_MAX };
		fz_named(gpa, d[i].len);
	}
	fz_push(q, d, n);
	fz_kick(q);
}

static void op_transport(struct fz_in *in)
{
	uint8_t buf[64] = { 0 };
	unsigned what = U8(in) % 7;
	switch (what) {
	case 0: mv_balloon_driver_features(F.b, U64(in)); break;
	case 1: mv_balloon_set_status(F.b, U8(in)); break;
	case 2: {
		unsigned q = U8(in);
		uint8_t kind = U8(in);
		struct mv_virtq_setup s = { .num = U16(in) };
		s.desc = fz_raw(U32(in), kind);
		s.avail = fz_raw(U32(in), kind);
		s.used = fz_raw(U32(in), kind);
		mv_balloon_queue_setup(F.b, q, kind & 1 ? NULL : &s);
		break;
	}
	case 3: mv_balloon_queue_notify(F.b, U8(in)); break;
	case 4: {
		unsigned off = U8(in), len = U8(in) % sizeof(buf);
		mv_balloon_config_read(F.b, off, buf, len);
		break;
	}
	case 5: {
		unsigned off = U8(in), len = U8(in) % sizeof(buf);
		for (unsigned i = 0; i < len; i++)
			buf[i] = U8(in);
		mv_balloon_config_write(F.b, off, buf, len);
		break;
	}
	default:
		mv_balloon_device_features(F.b);
		mv_balloon_config_generation(F.b);
	}
}

static void fz_op(struct fz_in *in)
{
	unsigned op = U8(in) % OP_NR;
	if (op == OP_MMIO_WRITE || op == OP_PUSH || op == OP_TRANSPORT)
		F.oracle = false;
	switch (op) {
	case OP_MMIO_WRITE: op_mmio(in, true); break;
	case OP_MMIO_READ: op_mmio(in, false); break;
	case OP_MEM_WRITE: op_mem_write(in); break;
	case OP_ADMIN: op_admin(in); break;
	case OP_SETUP: op_setup(in); break;
	case OP_PUSH: op_push(in); break;
	case OP_NOTIFY: fz_kick(U8(in)); break;
	case OP_PFNS: op_pfns(in); break;
	case OP_STATS: op_stats(in); break;
	case OP_HINT: op_hint(in); break;
	case OP_REPORT: op_report(in); break;
	case OP_CLOCK: F.clock += (uint64_t)U32(in) * 1000000ull; break;
	case OP_TRANSPORT: op_transport(in); break;
	case OP_ACTUAL: fz_wr(0x104, U32(in)); break;
	}
}

/* Every page the device had no word to drop holds what the program wrote. */
static void fz_check_content(void)
{
	for (unsigned pg = (unsigned)(FZ_SCRATCH_END / FZ_PG); F.oracle && pg < FZ_RAM / FZ_PG; pg++) {
		if (F.pflag[pg] & FZ_NAMED)
			continue;
		uint64_t gpa = pg < FZ_R0_SIZE / FZ_PG ? FZ_R0_GPA + (uint64_t)pg * FZ_PG
		                                       : FZ_R1_GPA + (uint64_t)pg * FZ_PG - FZ_R0_SIZE;
		if (memcmp(fz_hva(gpa, FZ_PG), F.shadow + (uint64_t)pg * FZ_PG, FZ_PG))
			FZ_FAIL("page at gpa %#llx lost what the guest wrote (flags %#x)",
			        (unsigned long long)gpa, F.pflag[pg]);
	}
	for (unsigned i = 0; i < F.n_dirty; i++)
		memset(F.shadow + (uint64_t)F.dirty[i] * FZ_PG, 0, FZ_PG);
	F.n_dirty = 0;
	memset(F.pflag, 0, sizeof(F.pflag));
}

/* What the input did to the device (MV_FUZZ_VERBOSE=1: for checking seeds). */
static void fz_print(void)
{
	struct mv_balloon_info i;
	mv_balloon_info(F.b, &i);
	fprintf(stderr, "status %#x features %#llx held %llu inflated %llu deflated %llu reported %llu "
	        "hinted %llu discarded %llu released %llu stats %#x errors %llu needs_reset %d\n",
	        i.status, (unsigned long long)i.features, (unsigned long long)i.held_bytes,
	        (unsigned long long)i.inflated_bytes, (unsigned long long)i.deflated_bytes,
	        (unsigned long long)i.reported_bytes, (unsigned long long)i.hinted_bytes,
	        (unsigned long long)i.hint_discarded_bytes, (unsigned long long)i.released_bytes,
	        i.stats_valid, (unsigned long long)i.guest_errors, i.needs_reset);
}

/* ---- lifetime ---- */

/* Guest RAM of `size` bytes, 2 MiB aligned, fenced by PROT_NONE guards. */
static int fz_map(unsigned i, uint64_t size, bool thp)
{
	F.map_len[i] = size + 2 * FZ_ALIGN;
	F.map[i] = mmap(NULL, F.map_len[i], PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
	                -1, 0);
	if (F.map[i] == MAP_FAILED)
		return -1;
	F.ram[i] = (uint8_t *)(((uintptr_t)F.map[i] + FZ_ALIGN + FZ_ALIGN - 1) & ~(FZ_ALIGN - 1));
	if (mprotect(F.ram[i], size, PROT_READ | PROT_WRITE))
		return -1;
	madvise(F.ram[i], size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return 0;
}

/* 0, or -1 when this machine cannot run a memvirt host (the caller skips). */
static int fz_init(void)
{
	static int state; /* 0 not tried, 1 ready, -1 failed */
	if (state)
		return state > 0 ? 0 : -1;
	state = -1;
	struct mv_host_config hc;
	mv_host_config_init(&hc);
	if (mv_host_new(&hc, &F.h))
		return -1;
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "fuzz";
	F.shadow = calloc(1, FZ_RAM);
	if (!F.shadow || mv_vm_new(F.h, &vc, &F.vm) || fz_map(0, FZ_R0_SIZE, true) ||
	    fz_map(1, FZ_R1_SIZE, false) ||
	    mv_vm_region_add(F.vm, 0, FZ_R0_GPA, F.ram[0], FZ_R0_SIZE, 0) ||
	    mv_vm_region_add(F.vm, 1, FZ_R1_GPA, F.ram[1], FZ_R1_SIZE, 0))
		return -1;
	state = 1;
	return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	if (fz_init()) {
		fprintf(stderr, "fuzz_balloon: no memvirt host on this machine\n");
		abort();
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (fz_init())
		FZ_FAIL("no memvirt host");
	struct fz_in in = { data, size };
	uint8_t conf = U8(&in);
	struct mv_balloon_config c;
	mv_balloon_config_init(&c);
	c.features = F.offered = conf & 0x3f;
	c.prefault_deflate = conf & 0x40;
	c.queue_max = conf & 0x80 ? 16 : 256;
	c.ops = &fz_ops;
	F.clock = 1000000000ull;
	F.neg = 0;
	F.scratch = FZ_SCRATCH;
	F.oracle = true;
	memset(F.q, 0, sizeof(F.q));
	FZ_CHECK(mv_balloon_new(F.vm, &c, &F.b) == 0);
	while (in.n) {
		fz_op(&in);
		fz_check_info();
	}
	if (getenv("MV_FUZZ_VERBOSE"))
		fz_print();
	mv_balloon_free(F.b);
	F.b = NULL;
	fz_check_content();
	madvise(F.ram[0], FZ_R0_SIZE, MADV_DONTNEED);
	madvise(F.ram[1], FZ_R1_SIZE, MADV_DONTNEED);
	return 0;
}
