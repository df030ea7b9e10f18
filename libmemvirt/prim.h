/* prim.h - the one seam between memvirt and the operating system.
 *
 * Every mmap, madvise, userfaultfd, pagemap and libnuma call of the library goes through
 * `struct mv_prim`. Each operation returns 0 (or a count) or -errno, never sets errno
 * for the caller. Tests swap in a table with a failing entry to inject faults.
 */
#ifndef MV_PRIM_H
#define MV_PRIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* PAGEMAP_SCAN (Linux 6.7) may be missing from the installed uapi headers. */
#define MV_PAGE_IS_WRITTEN (1u << 1)
#define MV_PAGE_IS_FILE    (1u << 2)
#define MV_PAGE_IS_PRESENT (1u << 3)
#define MV_PAGE_IS_SWAPPED (1u << 4)
#define MV_PAGE_IS_PFNZERO (1u << 5)
#define MV_PAGE_IS_HUGE    (1u << 6)

#define MV_PAGE_SIZE  4096ul
#define MV_PAGE_SHIFT 12
#define MV_CHUNK_PAGES 512ul                     /* one 2 MiB batch */
#define MV_CHUNK_SIZE (MV_CHUNK_PAGES * MV_PAGE_SIZE)

struct mv_prim {
	/* mmap(addr, len, RW, MAP_PRIVATE|MAP_FIXED, fd, off): back [addr, addr+len) by a
	 * private copy-on-write view of fd. Never populates. */
	int (*map_private_fixed)(void *addr, size_t len, int fd, off_t off);
	/* The same, at an address of the kernel's choice (*out), to be filled off to the side. */
	int (*map_private)(size_t len, int fd, off_t off, void **out);
	/* mremap(from -> to, MREMAP_MAYMOVE|MREMAP_FIXED): replace [to, to+len) atomically. */
	int (*move_fixed)(void *from, size_t len, void *to);
	int (*unmap)(void *addr, size_t len);
	/* mmap(NULL, len, RW, MAP_PRIVATE|MAP_ANONYMOUS): fresh memory of our own. */
	int (*map_anon)(size_t len, void **out);
	/* madvise(MADV_DONTNEED) on n ranges (process_madvise when n > 1 and available). */
	int (*dontneed)(const struct iovec *iov, size_t n);
	/* madvise(MADV_FREE): the kernel may drop these pages unless they are written after
	 * this call. Then madvise(MADV_PAGEOUT): reclaim now what is still clean. */
	int (*lazyfree)(const struct iovec *iov, size_t n);
	int (*pageout)(const struct iovec *iov, size_t n);
	/* Take a reference on each page of n ranges (at most MV_HOLD_PAGES pages in all), so
	 * that reclaim cannot free them: vmsplice() into a pipe, *handle its read end. Then
	 * unhold(handle) drops them. 0 only if every page is held. */
	int (*hold)(const struct iovec *iov, size_t n, int *handle);
	void (*unhold)(int handle);
	/* mmap(addr, len, RW, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED): fresh zero pages. */
	int (*map_anon_fixed)(void *addr, size_t len);
	/* madvise(MADV_DONTFORK): a child of this process does not inherit [addr, addr+len)
	 * (the range is unmapped there). A new mapping does not inherit it from the one it
	 * replaces, and mappings that differ in it do not fuse: every mapping made over
	 * registered guest RAM gets it. */
	int (*dontfork)(void *addr, size_t len);
	/* madvise(MADV_REMOVE): free the backing of a shared mapping (punch the file). */
	int (*remove)(void *addr, size_t len);
	/* madvise(MADV_POPULATE_WRITE): break copy-on-write without changing the bytes. */
	int (*populate_write)(void *addr, size_t len);
	/* userfaultfd write-protect (wp = 1) or unprotect and wake (wp = 0). */
	int (*uffd_wp)(int uffd, void *addr, size_t len, int wp);
	int (*uffd_wake)(int uffd, void *addr, size_t len);
	/* UFFDIO_REGISTER with MV_UFFD_* modes. Registering more modes on a registered range
	 * adds them; only unregistering takes them away (and drops its write protection). */
	int (*uffd_register)(int uffd, void *addr, size_t len, unsigned modes);
	/* UFFDIO_MOVE: move the pages of [src, src+len) to the empty ptes of [dst, dst+len)
	 * (both private anonymous, dst registered with uffd). Returns the bytes moved (a
	 * prefix; fewer than len when a page could not be moved: pinned, absent) or -errno
	 * when none was. */
	long (*uffd_move)(int uffd, void *dst, void *src, size_t len);
	/* UFFDIO_ZEROPAGE: map the zero page at the empty ptes of [addr, addr+len) and wake. */
	int (*uffd_zeropage)(int uffd, void *addr, size_t len);
	/* UFFDIO_COPY: fill the empty ptes of [dst, dst+len) with a copy of src. */
	int (*uffd_copy)(int uffd, void *dst, const void *src, size_t len);
	int (*uffd_unregister)(int uffd, void *addr, size_t len);
	/* Page categories (MV_PAGE_IS_*) of n pages from addr, one byte each into cat[]. */
	int (*page_categories)(int pagemap_fd, const void *addr, size_t n, uint8_t *cat);
	/* Write one page into a memfd at off (the page cache page is not zeroed first). */
	int (*store_write)(int fd, off_t off, const void *page);
	/* Punch [off, off+len) out of a memfd. */
	int (*punch)(int fd, off_t off, size_t len);
};

extern const struct mv_prim mv__prim_linux;

#define MV_HOLD_PAGES   256 /* 1 MiB: the pipe size anyone may set (fs.pipe-max-size) */
#define MV_UFFD_WP      1u
#define MV_UFFD_MISSING 2u

/* One-shot helpers (not on hot paths). */
/* A userfaultfd whose write-protect faults the kernel resolves itself (WP_ASYNC: a
 * write to a protected page never waits for a thread; PAGEMAP_SCAN reports it written),
 * with empty ptes protectable and UFFDIO_MOVE (Linux 6.8). *shmem: store (shmem)
 * mappings can be protected too. -ENOSYS when the kernel lacks any of it. */
int mv__uffd_open(int *out, bool *shmem);
int mv__memfd_store(const char *name, size_t size, int *out);
int mv__read_long(const char *path, long *out);
/* A listening unix socket at path (SOCK_NONBLOCK, SOCK_CLOEXEC), or -errno. A socket file
 * already there is replaced only when stale (nobody accepts on it); anything else there,
 * or a live socket, is -EEXIST. -ENAMETOOLONG for a path sun_path cannot hold. */
int mv__listen_unix(const char *path, int backlog);
int mv__count_maps(long *out);               /* lines of /proc/self/maps */
/* What backs a range of address space (/proc/self/maps): 0 = private anonymous and
 * read-write throughout, else MV_VMA_* bits; -errno if maps cannot be read. */
#define MV_VMA_SHARED 1 /* some of it is MAP_SHARED */
#define MV_VMA_FILE   2 /* some of it is a private mapping of a file (memfd, tmpfs, hugetlbfs) */
#define MV_VMA_NOT_RW 4 /* some of it is read-only or PROT_NONE */
#define MV_VMA_HOLE   8 /* some of it is not mapped */
int mv__vma_kind(const void *addr, size_t len);
/* Page size of the mapping at addr (/proc/self/smaps KernelPageSize): 4096, or a huge
 * page size for hugetlbfs; -errno if it cannot be read, -ENOENT if nothing is mapped. */
long mv__vma_page_size(const void *addr);
int mv__random(void *buf, size_t len);
int mv__numa_node_of(void *opaque, const void *hva);
unsigned mv__numa_nodes(void);
uint64_t mv__thread_cpu_ns(void);
uint64_t mv__mono_ns(void);

#endif
