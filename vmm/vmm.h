/* vmm.h - the reference VMM's state, shared by main and its scenario (vmm.c) and the
 * KVM side (kvm.c). */
#ifndef MEMVIRT_VMM_H
#define MEMVIRT_VMM_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <memvirt/memvirt.h>
#include <memvirt/balloon.h>

#define PAGE           4096ull
#define MIB            (1ull << 20)
#define MMIO_BASE      0xd0000000ull   /* the balloon's virtio-mmio window */
#define MMIO_GSI       5               /* its interrupt line */
#define NR_QUEUES      5
#define MAX_TARGETS    8

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

/* vmm.c: a line of the VMM's own, "vmm: " first. */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* kvm.c: setting up KVM, in this order; 0 or -errno. */
int kvm_setup(struct vmm *v);                      /* the VM, its in-kernel irqchip */
int ram_setup(struct vmm *v);                      /* memslot 0 = memvirt region 0 */
int balloon_setup(struct vmm *v);                  /* the device, its irqfd and ioeventfds */
int load_kernel(struct vmm *v, uint32_t *entry);   /* the PVH ELF into guest RAM */
int vcpu_setup(struct vmm *v, uint32_t entry);
void boot_info(struct vmm *v, uint64_t tsc_khz);   /* hvm_start_info, memory map, cmdline */
/* The threads' bodies (arg: the vmm); both return once v->stop is set. */
void *vcpu_main(void *arg);
void *io_main(void *arg);

#endif
