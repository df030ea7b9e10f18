/* test_kvm.c - merged guest pages under a real KVM vCPU: reads see them, a write gets a copy. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <memvirt/memvirt.h>
#include "testutil.h"

#define NPAGES     512u               /* 2 MiB of guest RAM at guest-physical 0 */
#define CODE_PAGE  1u                 /* the guest program, at gpa 0x1000 */
#define SAME_FIRST 16u                /* gpa 0x10000: NSAME pages of identical content */
#define NSAME      4u
#define SAME_SEED  77u
#define ZERO_PAGE  24u
#define WR_PAGE    (SAME_FIRST + 1)   /* the merged page the guest writes */
#define WR_OFF     4u                 /* ... at this offset ... */
#define WR_VAL     0xbeefu            /* ... this 16-bit value */
#define CSUM_PORT  0x10u
#define CSUM_WORDS 64u                /* words summed per merged page */
#define LO(x)      ((x) & 0xff)
#define HI(x)      (((x) >> 8) & 0xff)
#define SAME_SEG   (SAME_FIRST * TPAGE >> 4)  /* real-mode segment at the identical pages */
#define WR_ADDR    ((WR_PAGE - SAME_FIRST) * TPAGE + WR_OFF) /* offset in SAME_SEG */
#define SKIP       (TPAGE - 2 * CSUM_WORDS)   /* from the last word summed to the next page */

/*
 * 16-bit real mode, loaded at CODE_PAGE. Sums the first CSUM_WORDS words of each of the
 * NSAME pages at ds = SAME_SEG (gpa 0x10000), reports the sum with `out CSUM_PORT`, then
 * stores WR_VAL at WR_PAGE + WR_OFF and halts. About 800 instructions.
 */
static const uint8_t guest_code[] = {
	0x31, 0xff,                             /*    xor  di, di      ; the sum */
	0x31, 0xf6,                             /*    xor  si, si */
	0xfc,                                   /*    cld */
	0xb8, LO(SAME_SEG), HI(SAME_SEG),       /*    mov  ax, SAME_SEG */
	0x8e, 0xd8,                             /*    mov  ds, ax */
	0xbb, LO(NSAME), HI(NSAME),             /*    mov  bx, NSAME */
	0xb9, LO(CSUM_WORDS), HI(CSUM_WORDS),   /* 1: mov  cx, CSUM_WORDS */
	0xad,                                   /* 2: lodsw */
	0x01, 0xc7,                             /*    add  di, ax */
	0xe2, 0xfb,                             /*    loop 2b */
	0x81, 0xc6, LO(SKIP), HI(SKIP),         /*    add  si, SKIP    ; next page */
	0x4b,                                   /*    dec  bx */
	0x75, 0xf1,                             /*    jnz  1b */
	0x89, 0xf8,                             /*    mov  ax, di */
	0xba, LO(CSUM_PORT), HI(CSUM_PORT),     /*    mov  dx, CSUM_PORT */
	0xef,                                   /*    out  dx, ax */
	0xc7, 0x06, LO(WR_ADDR), HI(WR_ADDR),   /*    mov  word [WR_ADDR], WR_VAL */
	LO(WR_VAL), HI(WR_VAL),
	0xf4,                                   /*    hlt */
};

struct fx {
	int kvm, kvm_err, vm_fd, vcpu;
	struct kvm_run *run;
	size_t run_size;
	uint8_t *mem, *shadow;        /* guest RAM and the content it must hold */
	struct mv_host *h;
	struct mv_vm *vm;
};

static uint8_t *page(const struct fx *f, unsigned i) { return f->mem + (size_t)i * TPAGE; }

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->vm_fd = f->vcpu = -1;
	f->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	f->kvm_err = errno;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	mv_vm_free(f->vm);
	mv_host_free(f->h);
	if (f->run)
		munmap(f->run, f->run_size);
	if (f->vcpu >= 0)
		close(f->vcpu);
	if (f->vm_fd >= 0)
		close(f->vm_fd);
	if (f->kvm >= 0)
		close(f->kvm);
	if (f->mem)
		tu_guest_free(f->mem, NPAGES);
	free(f->shadow);
	free(f);
	return 0;
}

/* Guest RAM: identical pages, one zero page, the program, every other page distinct. */
static void fill_guest(struct fx *f)
{
	f->mem = tu_guest_alloc(NPAGES);
	for (unsigned i = 0; i < NPAGES; i++)
		tu_fill(page(f, i), i >= SAME_FIRST && i < SAME_FIRST + NSAME ? SAME_SEED :
		                    i == ZERO_PAGE ? 0 : 1000 + i);
	memcpy(page(f, CODE_PAGE), guest_code, sizeof(guest_code));
	f->shadow = malloc(NPAGES * TPAGE);
	assert_non_null(f->shadow);
	memcpy(f->shadow, f->mem, NPAGES * TPAGE);
}

/* A KVM VM whose slot 0 is the guest RAM, and one vCPU in real mode with cs base 0. */
static void kvm_init(struct fx *f)
{
	assert_int_equal(ioctl(f->kvm, KVM_GET_API_VERSION, 0), KVM_API_VERSION);
	f->vm_fd = ioctl(f->kvm, KVM_CREATE_VM, 0);
	assert_true(f->vm_fd >= 0);
	assert_int_equal(ioctl(f->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000ul), 0); /* VMX real mode */
	struct kvm_userspace_memory_region slot = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = NPAGES * TPAGE,
		.userspace_addr = (uintptr_t)f->mem,
	};
	assert_int_equal(ioctl(f->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot), 0);
	f->vcpu = ioctl(f->vm_fd, KVM_CREATE_VCPU, 0);
	assert_true(f->vcpu >= 0);
	int sz = ioctl(f->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	assert_true(sz >= (int)sizeof(struct kvm_run));
	f->run_size = (size_t)sz;
	f->run = mmap(NULL, f->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, f->vcpu, 0);
	assert_true(f->run != MAP_FAILED);
	struct kvm_sregs sregs;
	assert_int_equal(ioctl(f->vcpu, KVM_GET_SREGS, &sregs), 0);
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	assert_int_equal(ioctl(f->vcpu, KVM_SET_SREGS, &sregs), 0);
}

static void memvirt_init(struct fx *f)
{
	struct mv_vm_config vc;
	f->h = tu_host();
	mv_vm_config_init(&vc);
	vc.name = "kvm-guest";
	assert_int_equal(mv_vm_new(f->h, &vc, &f->vm), 0);
	assert_int_equal(mv_vm_region_add(f->vm, 0, 0, f->mem, NPAGES * TPAGE, 0), 0);
}

/* Skip unless /dev/kvm opened, then build guest RAM, the KVM VM and the memvirt VM. */
static struct fx *start(void **state)
{
	struct fx *f = *state;
	if (f->kvm < 0)
		TU_SKIP("/dev/kvm absent: %s", strerror(f->kvm_err));
	fill_guest(f);
	kvm_init(f);
	memvirt_init(f);
	return f;
}

/*
 * Run the guest program from its start; returns the checksum it reports. With
 * stop_at_io the vCPU is stopped right after the report, before the guest's store.
 */
static uint16_t run_guest(struct fx *f, bool stop_at_io)
{
	struct kvm_regs regs = { .rip = CODE_PAGE * TPAGE, .rflags = 2 };
	assert_int_equal(ioctl(f->vcpu, KVM_SET_REGS, &regs), 0);
	int reports = 0;
	uint16_t sum = 0;
	for (int exits = 0; exits < 16; exits++) {
		assert_int_equal(ioctl(f->vcpu, KVM_RUN, 0), 0);
		if (f->run->exit_reason == KVM_EXIT_HLT)
			break;
		assert_int_equal(f->run->exit_reason, KVM_EXIT_IO);
		assert_int_equal(f->run->io.direction, KVM_EXIT_IO_OUT);
		assert_int_equal(f->run->io.port, CSUM_PORT);
		assert_int_equal(f->run->io.size, 2);
		memcpy(&sum, (uint8_t *)f->run + f->run->io.data_offset, 2);
		reports++;
		if (stop_at_io) {
			/* Complete the pending I/O without running on (see KVM_RUN in the KVM API doc). */
			f->run->immediate_exit = 1;
			assert_int_equal(ioctl(f->vcpu, KVM_RUN, 0), -1);
			assert_int_equal(errno, EINTR);
			f->run->immediate_exit = 0;
			return sum;
		}
	}
	assert_int_equal(f->run->exit_reason, KVM_EXIT_HLT);
	assert_int_equal(reports, 1);
	return sum;
}

/* The checksum the guest program must compute, from the expected content. */
static uint16_t expected_sum(const struct fx *f)
{
	uint16_t sum = 0, w;
	for (unsigned p = 0; p < NSAME; p++)
		for (unsigned i = 0; i < CSUM_WORDS; i++) {
			memcpy(&w, f->shadow + (SAME_FIRST + p) * TPAGE + 2 * i, 2);
			sum = (uint16_t)(sum + w);
		}
	return sum;
}

/* Physical frame of guest page i, after reading it from the host so that it is mapped. */
static uint64_t pfn_of(const struct fx *f, unsigned i)
{
	volatile uint8_t c = *(volatile uint8_t *)page(f, i);
	(void)c;
	return tu_pfn(page(f, i));
}

static void assert_content(const struct fx *f)
{
	for (unsigned i = 0; i < NPAGES; i++)
		if (memcmp(page(f, i), f->shadow + (size_t)i * TPAGE, TPAGE))
			fail_msg("guest page %u differs from its expected content", i);
}

/* Scan, and check that exactly the identical pages share one frame. */
static void merge(struct fx *f)
{
	struct mv_scan_stats st;
	assert_int_equal(mv_host_scan(f->h, 3), 0);
	assert_int_equal(mv_host_stats(f->h, &st), 0);
	assert_int_equal(st.pages_merged, NSAME);
	assert_true(st.pages_zero >= 1);
	uint64_t shared = pfn_of(f, SAME_FIRST);
	assert_true(shared != 0);
	for (unsigned i = SAME_FIRST + 1; i < SAME_FIRST + NSAME; i++)
		assert_int_equal(pfn_of(f, i), shared);
	assert_true(pfn_of(f, CODE_PAGE) != shared);
	assert_true(pfn_of(f, SAME_FIRST + NSAME) != shared);
	assert_true(tu_is_zero_pfn(page(f, ZERO_PAGE)));
	assert_content(f);
}

/* After the guest ran: its store landed in a private copy, nothing else changed. */
static void check_after_write(struct fx *f)
{
	uint16_t v = WR_VAL;
	memcpy(f->shadow + WR_PAGE * TPAGE + WR_OFF, &v, 2);
	assert_content(f); /* the write is visible to the host, the other sharers kept theirs */
	uint64_t shared = pfn_of(f, SAME_FIRST);
	for (unsigned i = SAME_FIRST; i < SAME_FIRST + NSAME; i++)
		if (i != WR_PAGE)
			assert_int_equal(pfn_of(f, i), shared);
	uint64_t own = pfn_of(f, WR_PAGE);
	assert_true(own != 0 && own != shared);

	/* One more pass notices the copy-on-write break and loses nothing. */
	struct mv_scan_stats st;
	assert_int_equal(mv_host_scan(f->h, 2), 0);
	assert_int_equal(mv_host_stats(f->h, &st), 0);
	assert_int_equal(st.cow_breaks, 1);
	assert_int_equal(st.pages_merged, NSAME - 1);
	assert_content(f);
}

/* The vCPU first touches guest RAM after the merge. */
static void vcpu_after_merge(void **state)
{
	struct fx *f = start(state);
	merge(f);
	assert_int_equal(run_guest(f, false), expected_sum(f));
	check_after_write(f);
}

/* The vCPU read the pages before the merge: KVM must drop its old translations. */
static void vcpu_before_merge(void **state)
{
	struct fx *f = start(state);
	assert_int_equal(run_guest(f, true), expected_sum(f));
	assert_content(f);
	merge(f);
	assert_int_equal(run_guest(f, false), expected_sum(f));
	check_after_write(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(vcpu_after_merge, setup, teardown),
		cmocka_unit_test_setup_teardown(vcpu_before_merge, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
