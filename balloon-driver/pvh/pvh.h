/* pvh.h - the bare-metal x86-64 port of the guest driver: boot information and the
 * few services of lib.c. */
#ifndef MVG_PVH_H
#define MVG_PVH_H

#include <stdint.h>

/* Xen's PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h). */
#define HVM_START_MAGIC 0x336ec578u
struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr;
	uint64_t memmap_paddr;   /* version >= 1 */
	uint32_t memmap_entries, reserved;
};
struct hvm_memmap_entry {
	uint64_t addr, size;
	uint32_t type, reserved;
};
#define HVM_MEMMAP_RAM 1

void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void pvh_main(uint32_t start_info);

#endif
