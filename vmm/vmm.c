/* vmm.c - memvirt's reference VMM: a minimal KVM VMM that shows every seam a VMM
 * developer wires to libmemvirt.
 *
 * Overview
 *
 *   guest RAM      one anonymous private mapping, registered twice with the same
 *                  numbers: as KVM memslot 0 (KVM_SET_USER_MEMORY_REGION) and as memvirt
 *                  region 0 (mv_vm_region_add). Merging and ballooning work on it while
 *                  the vCPU runs: KVM's MMU notifier drops its mapping of a page the
 *                  library replaces, and the vCPU faults the new one in.
 *   the vCPU       one thread in KVM_RUN. Port 0x3f8 is the serial console; MMIO exits in
 *                  the balloon's window go to mv_balloon_mmio_read/write.
 *   QueueNotify    never exits to this process: an ioeventfd per queue (KVM_IOEVENTFD with
 *                  the queue number as datamatch) wakes the I/O thread, which calls
 *                  mv_balloon_queue_notify(), again while it returns 1 (its work budget).
 *   the interrupt  the device's ops->interrupt writes an irqfd (KVM_IRQFD) bound to the
 *                  in-kernel irqchip's line MMIO_GSI; InterruptStatus is kept by the
 *                  library.
 *   the scanner    mv_host_start(): background workers share the guest's duplicate pages.
 *   the target     --target SIZE[,SIZE...]: set one after the other, each once the guest
 *                  reached the one before and checked its memory; or --policy FILE: the
 *                  policy engine ticks every period_ms in the main thread (its decision
 *                  records to --decisions FILE, for `memvirt explain`).
 *
 * The guest is a PVH ELF kernel (--kernel; balloon-driver/pvh/ builds one): loaded at its
 * physical addresses, entered in 32-bit protected mode with %ebx = struct hvm_start_info,
 * which carries the memory map and the command line, where the device is announced as
 * Linux expects it: virtio_mmio.device=512@0xd0000000:5.
 *
 * Lines of its own start with "vmm:"; the guest's console lines with "guest: ".
 * Exit status: 0 when the scenario completed, 1 on error or timeout, 2 on bad usage,
 * 77 when /dev/kvm or the kernel's userfaultfd features are missing (skip).
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <memvirt/memvirt.h>
#include <memvirt/balloon.h>

#define PAGE           4096ull
#define MIB            (1ull << 20)
#define MMIO_BASE      0xd0000000ull   /* the balloon's virtio-mmio window */
#define MMIO_GSI       5               /* its interrupt line */
#define QUEUE_NOTIFY   0x50            /* virtio-mmio register */
#define NR_QUEUES      5
#define SERIAL_PORT    0x3f8
#define START_INFO_GPA 0x1000ull       /* hvm_start_info, its memory map, the command line */
#define MEMMAP_GPA     0x1100ull
#define CMDLINE_GPA    0x2000ull
#define CMDLINE_MAX    2048
#define MAX_TARGETS    8
#define XEN_ELFNOTE_PHYS32_ENTRY 18

struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	uint32_t memmap_entries, reserved;
};
struct hvm_memmap_entry {
	uint64_t addr, size;
	uint32_t type, reserved;
};

struct opts {
	const char *kernel, *cmdline, *policy, *decisions;
	uint64_t mem;                  /* bytes */
	uint64_t targets[MAX_TARGETS]; /* bytes */
	unsigned nr_targets;
	uint64_t wait_merged;          /* pages the scanner must have merged first */
	unsigned timeout_s;
	unsigned settle_ms;
	bool prefault;                 /* guest RAM resident first, as after a guest's boot */
};

struct vmm {
	struct opts o;
	int kvm, vm_fd, vcpu_fd;
	struct kvm_run *run;
	uint8_t *ram;
	int irqfd, notify_fd[NR_QUEUES];
	struct mv_host *host;
	struct mv_vm *vm;
	struct mv_balloon *balloon;
	struct mv_policy *policy;
	pthread_t vcpu_thread, io_thread;
	atomic_bool stop;

	pthread_mutex_t lock;          /* guards the console state below */
	pthread_cond_t cond;
	char line[256];
	size_t line_len;
	uint64_t checks;               /* "check: ok" lines seen */
	uint64_t last_check_target;    /* pages, of the last one */
	bool guest_failed, guest_stopped;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("vmm: ");
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
	va_end(ap);
}

/* ---- the library's hooks ---- */

static void on_log(void *opaque, enum mv_log_level level, const char *msg)
{
	if (level <= MV_LOG_WARN)
		fprintf(stderr, "vmm: memvirt: %s\n", msg);
}

/* Called with the device mutex held, from the thread that caused it: just signal. */
static void on_interrupt(void *opaque, int queue)
{
	struct vmm *v = opaque;
	uint64_t one = 1;
	if (write(v->irqfd, &one, sizeof(one)) < 0)
		fprintf(stderr, "vmm: irqfd: %s\n", strerror(errno));
}

/* ---- setting up KVM and memvirt ---- */

static int kvm_setup(struct vmm *v)
{
	v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (v->kvm < 0)
		return -errno;
	v->vm_fd = ioctl(v->kvm, KVM_CREATE_VM, 0);
	if (v->vm_fd < 0 || ioctl(v->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0 ||
	    ioctl(v->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
		return -errno;
	return 0;
}

/* Guest RAM: KVM memslot 0 and memvirt region 0 describe the same memory. */
static int ram_setup(struct vmm *v)
{
	v->ram = mmap(NULL, v->o.mem, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
	              -1, 0);
	if (v->ram == MAP_FAILED)
		return -errno;
	if (v->o.prefault) /* stale data in every page, as a guest leaves after running a while */
		for (uint64_t off = 0; off < v->o.mem; off += PAGE)
			*(uint64_t *)(v->ram + off) = off | 1;
	struct kvm_userspace_memory_region slot = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = v->o.mem,
		.userspace_addr = (uintptr_t)v->ram,
	};
	if (ioctl(v->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0)
		return -errno;
	return mv_vm_region_add(v->vm, slot.slot, slot.guest_phys_addr, v->ram, slot.memory_size, 0);
}

static int memvirt_setup(struct vmm *v)
{
	struct mv_host_config hc;
	mv_host_config_init(&hc);
	hc.log = on_log;
	hc.log_opaque = v;
	if (v->o.settle_ms)
		hc.settle_ms = v->o.settle_ms;
	int rc = mv_host_new(&hc, &v->host);
	if (rc)
		return rc;
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "guest0";
	return mv_vm_new(v->host, &vc, &v->vm);
}

/* The balloon on its virtio-mmio window: irqfd for the interrupt, an ioeventfd per
 * queue for QueueNotify. */
static int balloon_setup(struct vmm *v)
{
	static const struct mv_balloon_ops ops = { .interrupt = on_interrupt };
	struct mv_balloon_config bc;
	mv_balloon_config_init(&bc);
	bc.ops = &ops;
	bc.opaque = v;
	int rc = mv_balloon_new(v->vm, &bc, &v->balloon);
	if (rc)
		return rc;
	v->irqfd = eventfd(0, EFD_CLOEXEC);
	struct kvm_irqfd irqfd = { .fd = (uint32_t)v->irqfd, .gsi = MMIO_GSI };
	if (v->irqfd < 0 || ioctl(v->vm_fd, KVM_IRQFD, &irqfd) < 0)
		return -errno;
	for (unsigned q = 0; q < NR_QUEUES; q++) {
		v->notify_fd[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		struct kvm_ioeventfd ev = {
			.datamatch = q, .addr = MMIO_BASE + QUEUE_NOTIFY, .len = 4,
			.fd = v->notify_fd[q], .flags = KVM_IOEVENTFD_FLAG_DATAMATCH,
		};
		if (v->notify_fd[q] < 0 || ioctl(v->vm_fd, KVM_IOEVENTFD, &ev) < 0)
			return -errno; /* without ioeventfd, QueueNotify would exit as MMIO: also fine */
	}
	return 0;
}

/* ---- loading the guest ---- */

static int load_kernel(struct vmm *v, uint32_t *entry)
{
	int fd = open(v->o.kernel, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		return -errno;
	uint8_t *img = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (img == MAP_FAILED)
		return -errno;
	const Elf64_Ehdr *eh = (const void *)img;
	int rc = -ENOEXEC;
	*entry = 0;
	if ((size_t)st.st_size < sizeof(*eh) || memcmp(eh->e_ident, ELFMAG, SELFMAG) ||
	    eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_phoff + (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > (uint64_t)st.st_size)
		goto out;
	const Elf64_Phdr *ph = (const void *)(img + eh->e_phoff);
	for (unsigned i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_offset + ph[i].p_filesz > (uint64_t)st.st_size)
			goto out;
		if (ph[i].p_type == PT_LOAD) {
			if (ph[i].p_paddr + ph[i].p_memsz > v->o.mem || ph[i].p_filesz > ph[i].p_memsz)
				goto out;
			memcpy(v->ram + ph[i].p_paddr, img + ph[i].p_offset, ph[i].p_filesz);
			memset(v->ram + ph[i].p_paddr + ph[i].p_filesz, 0, ph[i].p_memsz - ph[i].p_filesz);
		} else if (ph[i].p_type == PT_NOTE) { /* the PVH entry: a "Xen" note of type 18 */
			for (uint64_t off = 0; off + sizeof(Elf64_Nhdr) <= ph[i].p_filesz; ) {
				const Elf64_Nhdr *n = (const void *)(img + ph[i].p_offset + off);
				uint64_t name = off + sizeof(*n), desc = name + ((n->n_namesz + 3) & ~3u);
				if (desc + n->n_descsz > ph[i].p_filesz)
					break;
				if (n->n_type == XEN_ELFNOTE_PHYS32_ENTRY && n->n_namesz == 4 &&
				    !memcmp(img + ph[i].p_offset + name, "Xen", 4) && n->n_descsz >= 4)
					memcpy(entry, img + ph[i].p_offset + desc, 4);
				off = desc + ((n->n_descsz + 3) & ~3u);
			}
		}
	}
	rc = *entry ? 0 : -ENOEXEC; /* not a PVH kernel */
out:
	munmap(img, (size_t)st.st_size);
	return rc;
}

/* hvm_start_info with a one-entry memory map and the command line, in low RAM. */
static void boot_info(struct vmm *v, uint64_t tsc_khz)
{
	struct hvm_start_info si = {
		.magic = 0x336ec578, .version = 1, .cmdline_paddr = CMDLINE_GPA,
		.memmap_paddr = MEMMAP_GPA, .memmap_entries = 1,
	};
	struct hvm_memmap_entry ram = { .addr = 0, .size = v->o.mem, .type = 1 };
	memcpy(v->ram + START_INFO_GPA, &si, sizeof(si));
	memcpy(v->ram + MEMMAP_GPA, &ram, sizeof(ram));
	snprintf((char *)v->ram + CMDLINE_GPA, CMDLINE_MAX,
	         "virtio_mmio.device=%llu@0x%llx:%d memvirt.tsc_khz=%llu %s",
	         (unsigned long long)MV_VIRTIO_MMIO_SIZE, MMIO_BASE, MMIO_GSI,
	         (unsigned long long)tsc_khz, v->o.cmdline ? v->o.cmdline : "");
}

/* One vCPU in 32-bit flat protected mode at the PVH entry, %ebx = start info. */
static int vcpu_setup(struct vmm *v, uint32_t entry)
{
	v->vcpu_fd = ioctl(v->vm_fd, KVM_CREATE_VCPU, 0);
	int sz = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (v->vcpu_fd < 0 || sz < 0)
		return -errno;
	v->run = mmap(NULL, (size_t)sz, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu_fd, 0);
	if (v->run == MAP_FAILED)
		return -errno;
	/* The host's CPUID as KVM supports it: long mode must be there for EFER.LME. */
	unsigned n = 256;
	struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + n * sizeof(struct kvm_cpuid_entry2));
	if (!cpuid)
		return -ENOMEM;
	cpuid->nent = n;
	int rc = ioctl(v->kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0 ||
	         ioctl(v->vcpu_fd, KVM_SET_CPUID2, cpuid) < 0 ? -errno : 0;
	free(cpuid);
	if (rc)
		return rc;
	struct kvm_sregs sregs;
	if (ioctl(v->vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	struct kvm_segment code = { .base = 0, .limit = 0xffffffff, .selector = 0x8, .type = 0xb,
	                            .present = 1, .dpl = 0, .db = 1, .s = 1, .g = 1 };
	struct kvm_segment data = code;
	data.selector = 0x10;
	data.type = 0x3;
	sregs.cs = code;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
	sregs.cr0 = 0x11; /* PE, ET */
	sregs.cr4 = 0;
	sregs.efer = 0;
	struct kvm_regs regs = { .rip = entry, .rbx = START_INFO_GPA, .rflags = 0x2 };
	if (ioctl(v->vcpu_fd, KVM_SET_SREGS, &sregs) < 0 || ioctl(v->vcpu_fd, KVM_SET_REGS, &regs) < 0)
		return -errno;
	return 0;
}

/* ---- the vCPU thread ---- */

/* A console line: echo it, and note the guest's own checks. */
static void console_line(struct vmm *v, const char *s)
{
	printf("guest: %s\n", s);
	fflush(stdout);
	unsigned long long target;
	pthread_mutex_lock(&v->lock);
	if (sscanf(s, "check: ok %*u pages target %llu", &target) == 1) {
		v->checks++;
		v->last_check_target = target;
	} else if (!strncmp(s, "check: FAILED", 13)) {
		v->guest_failed = true;
	}
	pthread_cond_broadcast(&v->cond);
	pthread_mutex_unlock(&v->lock);
}

static void serial_out(struct vmm *v, char c)
{
	if (c == '\n' || v->line_len == sizeof(v->line) - 1) {
		v->line[v->line_len] = 0;
		console_line(v, v->line);
		v->line_len = 0;
	}
	if (c != '\n' && c != '\r')
		v->line[v->line_len++] = c;
}

static void exit_io(struct vmm *v)
{
	uint8_t *data = (uint8_t *)v->run + v->run->io.data_offset;
	for (uint32_t i = 0; i < v->run->io.count; i++, data += v->run->io.size) {
		if (v->run->io.direction == KVM_EXIT_IO_OUT && v->run->io.port == SERIAL_PORT)
			serial_out(v, (char)*data);
		else if (v->run->io.direction == KVM_EXIT_IO_IN) /* LSR: transmitter empty */
			memset(data, v->run->io.port == SERIAL_PORT + 5 ? 0x60 : 0xff, v->run->io.size);
	}
}

/* MMIO exits in the balloon's window go to the library's virtio-mmio register file. */
static void exit_mmio(struct vmm *v)
{
	uint64_t addr = v->run->mmio.phys_addr;
	uint32_t len = v->run->mmio.len;
	if (addr < MMIO_BASE || addr + len > MMIO_BASE + MV_VIRTIO_MMIO_SIZE) {
		if (!v->run->mmio.is_write)
			memset(v->run->mmio.data, 0xff, len);
		return;
	}
	if (!v->run->mmio.is_write) {
		mv_balloon_mmio_read(v->balloon, addr - MMIO_BASE, v->run->mmio.data, len);
		return;
	}
	/* QueueNotify only lands here where KVM had no ioeventfd for it. */
	if (mv_balloon_mmio_write(v->balloon, addr - MMIO_BASE, v->run->mmio.data, len) == 1 &&
	    addr - MMIO_BASE == QUEUE_NOTIFY) {
		uint32_t q;
		memcpy(&q, v->run->mmio.data, 4);
		while (mv_balloon_queue_notify(v->balloon, q) == 1)
			;
	}
}

static void guest_stopped(struct vmm *v, const char *why)
{
	say("guest stopped: %s", why);
	pthread_mutex_lock(&v->lock);
	v->guest_stopped = true;
	pthread_cond_broadcast(&v->cond);
	pthread_mutex_unlock(&v->lock);
}

static void *vcpu_main(void *arg)
{
	struct vmm *v = arg;
	while (!atomic_load(&v->stop)) {
		if (ioctl(v->vcpu_fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			guest_stopped(v, strerror(errno));
			break;
		}
		switch (v->run->exit_reason) {
		case KVM_EXIT_IO:   exit_io(v); break;
		case KVM_EXIT_MMIO: exit_mmio(v); break;
		case KVM_EXIT_HLT:  guest_stopped(v, "hlt"); return NULL;
		default: {
			char why[128];
			struct kvm_regs r = { 0 };
			ioctl(v->vcpu_fd, KVM_GET_REGS, &r);
			snprintf(why, sizeof(why), "exit reason %u (suberror %u) at rip 0x%llx",
			         v->run->exit_reason, v->run->internal.suberror, (unsigned long long)r.rip);
			guest_stopped(v, why);
			return NULL;
		}
		}
	}
	return NULL;
}

/* ---- the I/O thread: queue notifications from the ioeventfds ---- */

static void *io_main(void *arg)
{
	struct vmm *v = arg;
	struct pollfd pfd[NR_QUEUES];
	for (unsigned q = 0; q < NR_QUEUES; q++)
		pfd[q] = (struct pollfd){ .fd = v->notify_fd[q], .events = POLLIN };
	while (!atomic_load(&v->stop)) {
		if (poll(pfd, NR_QUEUES, 100) <= 0)
			continue;
		for (unsigned q = 0; q < NR_QUEUES; q++) {
			uint64_t cnt;
			if (!(pfd[q].revents & POLLIN) || read(pfd[q].fd, &cnt, sizeof(cnt)) != sizeof(cnt))
				continue;
			while (mv_balloon_queue_notify(v->balloon, q) == 1)
				; /* more work than one call's budget: go on */
		}
	}
	return NULL;
}

/* ---- the scenario (main thread) ---- */

/* Guest RAM resident on the host, in MiB (mincore). */
static double ram_rss_mib(const struct vmm *v)
{
	size_t n = v->o.mem / PAGE, resident = 0;
	unsigned char *vec = malloc(n);
	if (!vec || mincore(v->ram, v->o.mem, vec) < 0) {
		free(vec);
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		resident += vec[i] & 1;
	free(vec);
	return (double)resident * PAGE / MIB;
}

/* Wait up to the deadline for the guest to check its memory at `pages` after `after`
 * checks; while waiting, tick the policy engine if there is one. */
static bool wait_check(struct vmm *v, uint64_t after, uint64_t pages, uint64_t deadline)
{
	bool ok = false;
	pthread_mutex_lock(&v->lock);
	while (!v->guest_failed && !v->guest_stopped && now_ns() < deadline) {
		if (v->checks > after && v->last_check_target == pages) {
			ok = true;
			break;
		}
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000;
		if (ts.tv_nsec >= 1000000000)
			ts.tv_sec++, ts.tv_nsec -= 1000000000;
		pthread_cond_timedwait(&v->cond, &v->lock, &ts);
	}
	pthread_mutex_unlock(&v->lock);
	return ok;
}

static bool wait_merged(struct vmm *v, uint64_t deadline)
{
	struct mv_scan_stats st = { 0 };
	while (now_ns() < deadline && !v->guest_stopped) {
		mv_vm_stats(v->vm, &st);
		if (st.pages_merged >= v->o.wait_merged) {
			say("scanner: %llu pages merged, %llu zero pages released, %llu scanned, while the vCPU runs",
			    (unsigned long long)st.pages_merged, (unsigned long long)st.pages_zero,
			    (unsigned long long)st.pages_scanned);
			return true;
		}
		usleep(50000);
	}
	say("scanner: only %llu pages merged and %llu zero pages", (unsigned long long)st.pages_merged,
	    (unsigned long long)st.pages_zero);
	return false;
}

static int scenario(struct vmm *v)
{
	uint64_t deadline = now_ns() + (uint64_t)v->o.timeout_s * 1000000000ull;
	if (!wait_check(v, 0, 0, deadline)) { /* booted, memory written and checked */
		say("the guest did not come up");
		return 1;
	}
	say("guest up: guest RAM resident %.1f MiB", ram_rss_mib(v));
	if (v->o.wait_merged && !wait_merged(v, deadline))
		return 1;
	for (unsigned i = 0; i < v->o.nr_targets; i++) {
		uint64_t t = v->o.targets[i], checks = v->checks;
		double before = ram_rss_mib(v);
		int rc = mv_balloon_set_target(v->balloon, t);
		if (rc) {
			say("mv_balloon_set_target: %s", mv_strerror(rc));
			return 1;
		}
		say("target %llu MiB", (unsigned long long)(t / MIB));
		if (!wait_check(v, checks, t / PAGE, deadline)) {
			say("the guest did not reach %llu MiB", (unsigned long long)(t / MIB));
			return 1;
		}
		struct mv_balloon_info bi;
		mv_balloon_info(v->balloon, &bi);
		say("balloon at %llu MiB (actual %llu MiB, released %llu MiB so far): guest RAM resident %.1f -> %.1f MiB",
		    (unsigned long long)(t / MIB), (unsigned long long)(bi.actual_bytes / MIB),
		    (unsigned long long)(bi.released_bytes / MIB), before, ram_rss_mib(v));
	}
	struct mv_scan_stats st;
	mv_vm_stats(v->vm, &st);
	say("done: %llu checks by the guest, %llu pages merged, %llu zero, %llu COW breaks",
	    (unsigned long long)v->checks, (unsigned long long)st.pages_merged,
	    (unsigned long long)st.pages_zero, (unsigned long long)st.cow_breaks);
	return v->guest_failed ? 1 : 0;
}

/* Without a scenario: run until the guest stops or the timeout, ticking the policy. */
static int run_free(struct vmm *v)
{
	uint64_t deadline = now_ns() + (uint64_t)v->o.timeout_s * 1000000000ull;
	unsigned period = v->policy ? mv_policy_period_ms(v->policy) : 1000;
	while (!v->guest_stopped && !v->guest_failed && now_ns() < deadline) {
		if (v->policy)
			mv_policy_tick(v->policy, NULL);
		usleep(period * 1000u);
	}
	return v->guest_failed ? 1 : 0;
}

static int policy_setup(struct vmm *v)
{
	struct mv_policy_config pc;
	mv_policy_config_init(&pc);
	pc.host = v->host;
	if (v->o.decisions && !(pc.log_file = fopen(v->o.decisions, "we")))
		return -errno;
	char err[256] = "";
	int rc = mv_policy_new(&pc, &v->policy);
	if (!rc)
		rc = mv_policy_load_file(v->policy, v->o.policy, err, sizeof(err));
	if (!rc)
		rc = mv_policy_attach(v->policy, "guest0", v->vm, v->balloon);
	if (rc)
		say("policy %s: %s %s", v->o.policy, mv_strerror(rc), err);
	return rc;
}

/* ---- main ---- */

static void on_kick(int sig)
{
	(void)sig;
}

static uint64_t parse_size(const char *s, bool *ok)
{
	char *end;
	unsigned long long n = strtoull(s, &end, 0);
	uint64_t unit = MIB;
	if (*end == 'K' || *end == 'k') unit = 1024, end++;
	else if (*end == 'M' || *end == 'm') end++;
	else if (*end == 'G' || *end == 'g') unit = 1024 * MIB, end++;
	*ok = end != s && (*end == 0 || *end == ',');
	return n * unit;
}

static int usage(void)
{
	fprintf(stderr, "usage: memvirt-vmm --kernel PVH.elf [--mem SIZE] [--target SIZE[,SIZE...]]\n"
	        "       [--wait-merged PAGES] [--policy FILE [--decisions FILE]] [--append CMDLINE]\n"
	        "       [--timeout S] [--settle-ms MS] [--prefault]   (sizes in MiB unless K, M or G follows)\n");
	return 2;
}

static int parse_args(struct opts *o, int argc, char **argv)
{
	*o = (struct opts){ .mem = 64 * MIB, .timeout_s = 60 };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
		bool ok = true;
		if (!strcmp(a, "--prefault")) {
			o->prefault = true;
			continue;
		}
		if (!val)
			return -1;
		i++;
		if (!strcmp(a, "--kernel")) o->kernel = val;
		else if (!strcmp(a, "--append")) o->cmdline = val;
		else if (!strcmp(a, "--policy")) o->policy = val;
		else if (!strcmp(a, "--decisions")) o->decisions = val;
		else if (!strcmp(a, "--mem")) o->mem = parse_size(val, &ok);
		else if (!strcmp(a, "--timeout")) o->timeout_s = (unsigned)strtoul(val, NULL, 0);
		else if (!strcmp(a, "--settle-ms")) o->settle_ms = (unsigned)strtoul(val, NULL, 0);
		else if (!strcmp(a, "--wait-merged")) o->wait_merged = strtoull(val, NULL, 0);
		else if (!strcmp(a, "--target")) {
			for (const char *s = val; ok && s; s = strchr(s, ',') ? strchr(s, ',') + 1 : NULL) {
				if (o->nr_targets == MAX_TARGETS)
					return -1;
				o->targets[o->nr_targets++] = parse_size(s, &ok);
			}
		} else
			return -1;
		if (!ok)
			return -1;
	}
	if (!o->kernel || o->mem < 4 * MIB || o->mem % (2 * MIB) || o->mem > MMIO_BASE)
		return -1;
	for (unsigned i = 0; i < o->nr_targets; i++)
		if (o->targets[i] >= o->mem)
			return -1;
	return 0;
}

int main(int argc, char **argv)
{
	struct vmm v = { .kvm = -1, .irqfd = -1 };
	if (parse_args(&v.o, argc, argv))
		return usage();
	pthread_mutex_init(&v.lock, NULL);
	pthread_cond_init(&v.cond, NULL);
	struct sigaction kick = { .sa_handler = on_kick }; /* no SA_RESTART: KVM_RUN returns */
	sigaction(SIGUSR1, &kick, NULL);
	int rc = kvm_setup(&v);
	if (rc) {
		say("SKIP: /dev/kvm: %s", strerror(-rc));
		return 77;
	}
	rc = memvirt_setup(&v);
	if (rc == -ENOSYS || rc == -EPERM) {
		say("SKIP: memvirt: %s", mv_strerror(rc));
		return 77;
	}
	uint32_t entry = 0;
	const char *step = "memvirt";
	if (rc || (step = "guest RAM", rc = ram_setup(&v)) || (step = "balloon", rc = balloon_setup(&v)) ||
	    (step = "kernel", rc = load_kernel(&v, &entry)) || (step = "vCPU", rc = vcpu_setup(&v, entry)) ||
	    (v.o.policy && (step = "policy", rc = policy_setup(&v)))) {
		say("%s: %s", step, mv_strerror(rc));
		return 1;
	}
	int khz = ioctl(v.vcpu_fd, KVM_GET_TSC_KHZ, 0);
	boot_info(&v, khz > 0 ? (uint64_t)khz : 0);
	say("guest RAM %llu MiB at gpa 0 (memslot 0 = memvirt region 0), balloon at 0x%llx irq %d, entry 0x%x",
	    (unsigned long long)(v.o.mem / MIB), MMIO_BASE, MMIO_GSI, entry);

	if ((rc = mv_host_start(v.host)) != 0) {
		say("mv_host_start: %s", mv_strerror(rc));
		return 1;
	}
	pthread_create(&v.io_thread, NULL, io_main, &v);
	pthread_create(&v.vcpu_thread, NULL, vcpu_main, &v);
	int status = v.o.nr_targets || v.o.wait_merged ? scenario(&v) : run_free(&v);

	/* Stop the vCPU: a signal kicks it out of KVM_RUN; immediate_exit keeps it out. */
	atomic_store(&v.stop, true);
	v.run->immediate_exit = 1;
	pthread_kill(v.vcpu_thread, SIGUSR1);
	pthread_join(v.vcpu_thread, NULL);
	pthread_join(v.io_thread, NULL);
	mv_policy_free(v.policy);
	mv_balloon_free(v.balloon);
	mv_vm_free(v.vm);
	mv_host_free(v.host);
	say("exit %d", status);
	return status;
}
