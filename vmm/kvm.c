/* kvm.c - the reference VMM's KVM side: the VM, guest RAM as memslot and memvirt region,
 * the balloon's irqfd and ioeventfds, PVH loading, the vCPU and I/O threads. */
#include "vmm.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define QUEUE_NOTIFY   0x50            /* virtio-mmio register */
#define SERIAL_PORT    0x3f8
#define START_INFO_GPA 0x1000ull       /* hvm_start_info, its memory map, the command line */
#define MEMMAP_GPA     0x1100ull
#define CMDLINE_GPA    0x2000ull
#define CMDLINE_MAX    2048
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

/* ---- the device's interrupt hook ---- */

/* Called with the device mutex held, from the thread that caused it: just signal. */
static void on_interrupt(void *opaque, int queue)
{
	struct vmm *v = opaque;
	uint64_t one = 1;
	if (write(v->irqfd, &one, sizeof(one)) < 0)
		fprintf(stderr, "vmm: irqfd: %s\n", strerror(errno));
}

/* ---- setting up KVM ---- */

int kvm_setup(struct vmm *v)
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
int ram_setup(struct vmm *v)
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

/* The balloon on its virtio-mmio window: irqfd for the interrupt, an ioeventfd per
 * queue for QueueNotify. */
int balloon_setup(struct vmm *v)
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

int load_kernel(struct vmm *v, uint32_t *entry)
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
void boot_info(struct vmm *v, uint64_t tsc_khz)
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
int vcpu_setup(struct vmm *v, uint32_t entry)
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

void *vcpu_main(void *arg)
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

void *io_main(void *arg)
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
