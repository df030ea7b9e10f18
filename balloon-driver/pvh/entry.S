/* entry.S - PVH entry of the bare-metal guest: 32-bit flat protected mode, paging off,
 * %ebx = guest-physical address of struct hvm_start_info. Builds an identity map of the
 * first 4 GiB with 2 MiB pages (RAM and the virtio-mmio windows), enables SSE, enters
 * long mode and calls pvh_main(start_info). The C code uses general registers only
 * (-mgeneral-regs-only): KVM's instruction emulator has no SSE. */
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define CR0_PE  (1 << 0)
#define CR0_MP  (1 << 1)
#define CR0_PG  (1 << 31)
#define CR4_PAE (1 << 5)
#define CR4_OSFXSR (1 << 9)
#define CR4_OSXMMEXCPT (1 << 10)
#define MSR_EFER 0xc0000080
#define EFER_LME (1 << 8)

	.section .note.Xen, "a"
	.balign 4
	.long 4, 8, XEN_ELFNOTE_PHYS32_ENTRY
	.asciz "Xen"
	.balign 4
	.quad pvh_start32

	.section .text.entry, "ax"
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	mov %ebx, %esi
	lgdt gdt_desc
	/* PD0..PD3: 2048 entries of 2 MiB, present, writable, large */
	mov $pd, %edi
	xor %ecx, %ecx
1:	mov %ecx, %eax
	shl $21, %eax
	or $0x83, %eax
	mov %eax, (%edi,%ecx,8)
	mov %ecx, %eax
	shr $11, %eax
	mov %eax, 4(%edi,%ecx,8)
	inc %ecx
	cmp $2048, %ecx
	jne 1b
	/* PDPT[0..3] -> PD0..PD3, PML4[0] -> PDPT */
	xor %ecx, %ecx
2:	mov %ecx, %eax
	shl $12, %eax
	add $pd + 3, %eax
	mov %eax, pdpt(,%ecx,8)
	movl $0, pdpt + 4(,%ecx,8)
	inc %ecx
	cmp $4, %ecx
	jne 2b
	movl $pdpt + 3, pml4
	movl $0, pml4 + 4
	mov $pml4, %eax
	mov %eax, %cr3
	mov %cr4, %eax
	or $(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
	mov %eax, %cr4
	mov $MSR_EFER, %ecx
	rdmsr
	or $EFER_LME, %eax
	wrmsr
	mov %cr0, %eax
	and $~(1 << 2), %eax            /* EM off: SSE usable */
	or $(CR0_PE | CR0_MP | CR0_PG), %eax
	mov %eax, %cr0
	ljmp $0x08, $start64

	.code64
start64:
	mov $0x10, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %eax, %fs
	mov %eax, %gs
	lea stack_top(%rip), %rsp
	mov %esi, %edi
	call pvh_main
3:	cli
	hlt
	jmp 3b

	.section .rodata
	.balign 8
gdt:
	.quad 0
	.quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
	.quad 0x00cf92000000ffff        /* 0x10: data */
gdt_end:
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt

	.section .bss
	.balign 4096
pml4:	.skip 4096
pdpt:	.skip 4096
pd:	.skip 4 * 4096
	.balign 16
stack:	.skip 64 * 1024
stack_top:
	.section .note.GNU-stack, "", @progbits
