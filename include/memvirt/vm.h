/* vm.h - one guest: its memory map (KVM-memslot-like regions) and its trust domain. */
#ifndef MEMVIRT_VM_H
#define MEMVIRT_VM_H

#include <stdbool.h>
#include <stdint.h>
#include <memvirt/host.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Opaque. Created by mv_vm_new(), released by mv_vm_free(); belongs to one host. */
struct mv_vm;

struct mv_vm_config {
	size_t size;        /* sizeof(struct mv_vm_config); set by mv_vm_config_init() */
	const char *name;   /* required, 1..63 printable chars; copied */
	const char *domain; /* trust domain: NULL = a domain of its own (the safe default).
	                       VMs naming the same domain may share pages with each other;
	                       zero pages are the only thing shared across domains. Copied. */
};

void mv_vm_config_init(struct mv_vm_config *cfg);

/* Create a VM attached to host. *out must be released with mv_vm_free() before
 * mv_host_free(). Errors: -EINVAL, -EEXIST (name in use), -ENOMEM. */
int mv_vm_new(struct mv_host *host, const struct mv_vm_config *cfg, struct mv_vm **out);

/* Unmerge every page of the VM (each becomes private again), forget its regions and free
 * it. The guest memory itself stays mapped and owned by the caller. NULL is a no-op. */
void mv_vm_free(struct mv_vm *vm);

/* Region flags. */
#define MV_REGION_NEVER_MERGE (1u << 0) /* pinned or DMA memory: never share its pages */

/*
 * Pins are invisible from userspace. Memory that a device or the kernel writes without
 * going through the CPU's page tables after pinning it (VFIO, vhost zero-copy, io_uring
 * fixed buffers, and O_DIRECT or AIO reads in flight into guest RAM) must be registered
 * with MV_REGION_NEVER_MERGE: a page merged or released while such a write is pending
 * would not receive it. VMMs doing direct I/O into guest RAM should flag those regions
 * or bounce the I/O.
 */

/*
 * Register guest RAM exactly as a KVM memslot: `slot` identifies it, guest-physical
 * [gpa, gpa+size) is backed by host memory [hva, hva+size). gpa, hva and size must be
 * 4 KiB aligned, size > 0, no overlap with another region of any VM of the host.
 * The memory must stay mapped until mv_vm_region_remove() returns. Only private anonymous
 * read-write memory (MAP_PRIVATE|MAP_ANONYMOUS, PROT_READ|PROT_WRITE throughout) can be
 * shared; other memory is accepted but never merged, and a warning is logged saying why:
 * MAP_SHARED (e.g. for vhost-user), a private mapping of a file (memfd, tmpfs, hugetlbfs:
 * a released page would read the file again, as would memory still mapped from a page
 * store after the region was removed), read-only or PROT_NONE parts, holes.
 * Memory that can be shared is marked MADV_DONTFORK, as QEMU marks guest RAM, and so is
 * every mapping the library makes over it: a child of the VMM does not see registered
 * guest RAM (accessing it faults), never another page's data. The mark stays after
 * mv_vm_region_remove(). Memory that cannot be marked is not merged.
 * Safe while the scanner runs (memory hot-plug). Errors: -EINVAL, -EEXIST (slot or
 * overlap), -ENOMEM.
 */
int mv_vm_region_add(struct mv_vm *vm, uint32_t slot, uint64_t gpa, void *hva, uint64_t size,
                     uint32_t flags);

/* Unmerge the region's pages and forget it (memory hot-unplug). When it returns, no
 * library thread touches the region's memory any more. -ENOENT if no such slot. */
int mv_vm_region_remove(struct mv_vm *vm, uint32_t slot);

/*
 * Translate [gpa, gpa+len) to a host address, or NULL if the range is not wholly inside
 * one region. Lock-free (RCU): callable from vCPU and device threads. The pointer stays
 * valid until the region is removed, which the caller orders as with KVM memslots.
 */
void *mv_vm_gpa_to_hva(struct mv_vm *vm, uint64_t gpa, uint64_t len);

/*
 * Merging on or off for this VM (default on). Turning it off unmerges every page first:
 * on return each page is private again (no write lost), the store frees what nobody
 * else uses. -EINTR never; -ENOMEM if the host lacks memory for the private copies
 * (then some pages stay merged and merging stays on).
 */
int mv_vm_set_merging(struct mv_vm *vm, bool on);

/* Shorthand for mv_vm_set_merging(vm, false). */
int mv_vm_unmerge(struct mv_vm *vm);

/* The VM's trust domain: the name given in its config, or "vm:NAME" for a domain of its
 * own. Valid while the VM lives. NULL for a NULL vm. */
const char *mv_vm_domain(const struct mv_vm *vm);

/* This VM's counters. Canonical pages belong to the domain, not to one VM: here
 * pages_shared and pages_sharing are 0 (see mv_domain_stats()), and cow_debt_bytes is
 * what this VM alone would need if it wrote every merged and zero page it has. */
int mv_vm_stats(struct mv_vm *vm, struct mv_scan_stats *out);

#ifdef __cplusplus
}
#endif
#endif
