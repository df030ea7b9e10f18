/* prim.c - Linux implementation of the OS seam (mmap, madvise, userfaultfd, pagemap, numa). */
#include "prim.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <numa.h>
#include <numaif.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

struct pm_page_region { uint64_t start, end, categories; };
struct pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PM_PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PM_RETURN_MASK (MV_PAGE_IS_WRITTEN | MV_PAGE_IS_FILE | MV_PAGE_IS_PRESENT | \
                        MV_PAGE_IS_SWAPPED | MV_PAGE_IS_PFNZERO | MV_PAGE_IS_HUGE)

static int neg_errno(long r) { return r < 0 ? -errno : 0; }

static int map_private_fixed(void *addr, size_t len, int fd, off_t off)
{
	void *p = mmap(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, off);
	return p == MAP_FAILED ? -errno : 0;
}

static int map_private(size_t len, int fd, off_t off, void **out)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, off);
	if (p == MAP_FAILED)
		return -errno;
	*out = p;
	return 0;
}

static int move_fixed(void *from, size_t len, void *to)
{
	void *p = mremap(from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	return p == MAP_FAILED ? -errno : 0;
}

static int unmap(void *addr, size_t len)
{
	return neg_errno(munmap(addr, len));
}

static int map_anon(size_t len, void **out)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	*out = p;
	return 0;
}

/* This process's pidfd, for process_madvise(); opened once, -1 if unavailable. */
static int self_pidfd = -1;
static pthread_once_t self_pidfd_once = PTHREAD_ONCE_INIT;

static void open_self_pidfd(void)
{
	self_pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
}

/* One process_madvise() call for up to 1024 ranges; false if it did not do them all. */
static bool advise_vector(const struct iovec *iov, size_t n, int advice)
{
	size_t want = 0;
	for (size_t i = 0; i < n; i++)
		want += iov[i].iov_len;
	long r = syscall(SYS_process_madvise, self_pidfd, iov, n, advice, 0);
	return r >= 0 && (size_t)r == want;
}

/* madvise(advice) on n ranges, 1024 per process_madvise() call where the kernel takes
 * that advice there, else one madvise() per range (again for what a partial vector did:
 * every advice used here may be repeated). */
static int advise(const struct iovec *iov, size_t n, int advice)
{
	if (n > 1)
		pthread_once(&self_pidfd_once, open_self_pidfd);
	while (n) {
		size_t k = n > 1024 ? 1024 : n;
		if (n == 1 || self_pidfd < 0 || !advise_vector(iov, k, advice)) {
			for (size_t i = 0; i < k; i++)
				if (madvise(iov[i].iov_base, iov[i].iov_len, advice))
					return -errno;
		}
		iov += k;
		n -= k;
	}
	return 0;
}

static int dontneed(const struct iovec *iov, size_t n)
{
	return advise(iov, n, MADV_DONTNEED);
}

static int lazyfree(const struct iovec *iov, size_t n)
{
	return advise(iov, n, MADV_FREE);
}

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
static int pageout(const struct iovec *iov, size_t n)
{
	return advise(iov, n, MADV_PAGEOUT);
}

static int hold(const struct iovec *iov, size_t n, int *handle)
{
	int fds[2];
	if (pipe2(fds, O_CLOEXEC | O_NONBLOCK))
		return -errno;
	size_t want = 0;
	for (size_t i = 0; i < n; i++)
		want += iov[i].iov_len;
	int err = fcntl(fds[1], F_SETPIPE_SZ, (int)(MV_HOLD_PAGES * MV_PAGE_SIZE)) < 0 ? -errno : 0;
	ssize_t r = err ? -1 : vmsplice(fds[1], iov, n, 0);
	if (!err && (r < 0 || (size_t)r != want))
		err = r < 0 ? -errno : -ENOSPC;
	close(fds[1]);
	if (err) {
		close(fds[0]);
		return err;
	}
	*handle = fds[0];
	return 0;
}

static void unhold(int handle)
{
	close(handle);
}

static int map_anon_fixed(void *addr, size_t len)
{
	void *p = mmap(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	return p == MAP_FAILED ? -errno : 0;
}

static int dontfork(void *addr, size_t len)
{
	return neg_errno(madvise(addr, len, MADV_DONTFORK));
}

static int remove_range(void *addr, size_t len)
{
	return neg_errno(madvise(addr, len, MADV_REMOVE));
}

static int populate_write(void *addr, size_t len)
{
	return neg_errno(madvise(addr, len, MADV_POPULATE_WRITE));
}

static int uffd_wp(int uffd, void *addr, size_t len, int wp)
{
	struct uffdio_writeprotect a = {
		.range = { (uintptr_t)addr, len },
		.mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};
	return neg_errno(ioctl(uffd, UFFDIO_WRITEPROTECT, &a));
}

static int uffd_wake(int uffd, void *addr, size_t len)
{
	struct uffdio_range r = { (uintptr_t)addr, len };
	return neg_errno(ioctl(uffd, UFFDIO_WAKE, &r));
}

static int uffd_register(int uffd, void *addr, size_t len, unsigned modes)
{
	struct uffdio_register r = {
		.range = { (uintptr_t)addr, len },
		.mode = (modes & MV_UFFD_WP ? UFFDIO_REGISTER_MODE_WP : 0) |
		        (modes & MV_UFFD_MISSING ? UFFDIO_REGISTER_MODE_MISSING : 0),
	};
	return neg_errno(ioctl(uffd, UFFDIO_REGISTER, &r));
}

/* UFFDIO_MOVE (Linux 6.8) may be missing from the installed uapi headers. */
struct mv_uffdio_move { uint64_t dst, src, len, mode; int64_t move; };
#define MV_UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct mv_uffdio_move)

static long uffd_move(int uffd, void *dst, void *src, size_t len)
{
	struct mv_uffdio_move m = { (uintptr_t)dst, (uintptr_t)src, len, 0, 0 };
	if (!ioctl(uffd, MV_UFFDIO_MOVE, &m))
		return (long)len;
	return m.move > 0 ? (long)m.move : -errno;
}

static int uffd_zeropage(int uffd, void *addr, size_t len)
{
	struct uffdio_zeropage z = { .range = { (uintptr_t)addr, len } };
	return neg_errno(ioctl(uffd, UFFDIO_ZEROPAGE, &z));
}

static int uffd_copy(int uffd, void *dst, const void *src, size_t len)
{
	struct uffdio_copy c = { (uintptr_t)dst, (uintptr_t)src, len, 0, 0 };
	return neg_errno(ioctl(uffd, UFFDIO_COPY, &c));
}

static int uffd_unregister(int uffd, void *addr, size_t len)
{
	struct uffdio_range r = { (uintptr_t)addr, len };
	return neg_errno(ioctl(uffd, UFFDIO_UNREGISTER, &r));
}

static int page_categories(int pagemap_fd, const void *addr, size_t n, uint8_t *cat)
{
	struct pm_page_region vec[MV_CHUNK_PAGES];
	uintptr_t start = (uintptr_t)addr, end = start + n * MV_PAGE_SIZE;
	memset(cat, 0, n);
	while (start < end) {
		struct pm_scan_arg a = {
			.size = sizeof(a), .start = start, .end = end,
			.vec = (uintptr_t)vec, .vec_len = MV_CHUNK_PAGES, .return_mask = PM_RETURN_MASK,
		};
		long r = ioctl(pagemap_fd, PM_PAGEMAP_SCAN, &a);
		if (r < 0)
			return -errno;
		for (long i = 0; i < r; i++)
			for (uint64_t p = vec[i].start; p < vec[i].end; p += MV_PAGE_SIZE)
				cat[(p - (uintptr_t)addr) >> MV_PAGE_SHIFT] = (uint8_t)vec[i].categories;
		if (a.walk_end <= start)
			return -EIO;
		start = a.walk_end;
	}
	return 0;
}

static int store_write(int fd, off_t off, const void *page)
{
	ssize_t r = pwrite(fd, page, MV_PAGE_SIZE, off);
	return r == (ssize_t)MV_PAGE_SIZE ? 0 : r < 0 ? -errno : -EIO;
}

static int punch(int fd, off_t off, size_t len)
{
	return neg_errno(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)len));
}

const struct mv_prim mv__prim_linux = {
	.map_private_fixed = map_private_fixed,
	.map_private = map_private,
	.move_fixed = move_fixed,
	.unmap = unmap,
	.map_anon = map_anon,
	.dontneed = dontneed,
	.lazyfree = lazyfree,
	.pageout = pageout,
	.hold = hold,
	.unhold = unhold,
	.map_anon_fixed = map_anon_fixed,
	.dontfork = dontfork,
	.remove = remove_range,
	.populate_write = populate_write,
	.uffd_wp = uffd_wp,
	.uffd_wake = uffd_wake,
	.uffd_register = uffd_register,
	.uffd_move = uffd_move,
	.uffd_zeropage = uffd_zeropage,
	.uffd_copy = uffd_copy,
	.uffd_unregister = uffd_unregister,
	.page_categories = page_categories,
	.store_write = store_write,
	.punch = punch,
};

static int uffd_api(uint64_t features, int *out)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	if (ioctl(fd, UFFDIO_API, &api)) {
		int e = errno;
		close(fd);
		return e == EINVAL ? -ENOSYS : -e;
	}
	*out = fd;
	return 0;
}

/* The API handshake can be done once per fd: a kernel without shmem write-protection
 * gets another fd without it. */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13) /* Linux 6.4 */
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)       /* Linux 6.7 */
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)           /* Linux 6.8 */
#endif

int mv__uffd_open(int *out, bool *shmem)
{
	const uint64_t base = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_UNPOPULATED |
	                      UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_MOVE;
	int err = uffd_api(base | UFFD_FEATURE_WP_HUGETLBFS_SHMEM, out);
	*shmem = !err;
	if (err == -ENOSYS)
		err = uffd_api(base, out);
	return err;
}

int mv__memfd_store(const char *name, size_t size, int *out)
{
	int fd = memfd_create(name, MFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size)) {
		int e = errno;
		close(fd);
		return -e;
	}
	*out = fd;
	return 0;
}

int mv__listen_unix(const char *path, int backlog)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (!path || strlen(path) >= sizeof(a.sun_path))
		return -ENAMETOOLONG;
	strcpy(a.sun_path, path);
	struct stat st;
	if (!lstat(path, &st)) {
		if (!S_ISSOCK(st.st_mode))
			return -EEXIST; /* never remove anything but a stale socket */
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		bool live = probe >= 0 && !connect(probe, (struct sockaddr *)&a, sizeof(a));
		if (probe >= 0)
			close(probe);
		if (live)
			return -EEXIST; /* another service listens there */
		unlink(path);
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, backlog)) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

int mv__read_long(const char *path, long *out)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return -errno;
	int ok = fscanf(f, "%ld", out) == 1;
	fclose(f);
	return ok ? 0 : -EIO;
}

int mv__count_maps(long *out)
{
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	char buf[1 << 16];
	long lines = 0;
	ssize_t r;
	while ((r = read(fd, buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < r; i++)
			lines += buf[i] == '\n';
	int e = r < 0 ? -errno : 0;
	close(fd);
	*out = lines;
	return e;
}

/* What the mappings in [addr, addr+len) are: MV_VMA_* bits, or -errno. */
int mv__vma_kind(const void *addr, size_t len)
{
	FILE *f = fopen("/proc/self/maps", "re");
	if (!f)
		return -errno;
	uintptr_t lo = (uintptr_t)addr, hi = lo + len, s, e, covered = lo;
	unsigned long inode;
	char perms[8], line[512];
	int kind = 0, path;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx %7s %*s %*s %lu %n", &s, &e, perms, &inode, &path) != 4 ||
		    e <= lo || s >= hi)
			continue;
		if (s > covered)
			kind |= MV_VMA_HOLE;
		if (perms[3] != 'p')
			kind |= MV_VMA_SHARED;
		else if (inode || (line[path] != '\n' && line[path] != '[' && line[path] != 0))
			kind |= MV_VMA_FILE; /* private, but a dropped page reads the file again */
		if (perms[0] != 'r' || perms[1] != 'w')
			kind |= MV_VMA_NOT_RW;
		covered = e;
	}
	fclose(f);
	return covered < hi ? kind | MV_VMA_HOLE : kind;
}

long mv__vma_page_size(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	if (!f)
		return -errno;
	uintptr_t a = (uintptr_t)addr, s, e;
	char line[512];
	long kb, size = -ENOENT;
	bool in = false;
	while (size == -ENOENT && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2)
			in = a >= s && a < e;
		else if (in && sscanf(line, "KernelPageSize: %ld kB", &kb) == 1)
			size = kb * 1024;
	}
	fclose(f);
	return size;
}

int mv__random(void *buf, size_t len)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t r = getrandom(p, len, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int mv__numa_node_of(void *opaque, const void *hva)
{
	int node = -1;
	if (get_mempolicy(&node, NULL, 0, (void *)hva, MPOL_F_NODE | MPOL_F_ADDR))
		return -1;
	return node;
}

unsigned mv__numa_nodes(void)
{
	if (numa_available() < 0)
		return 1;
	int n = numa_max_node() + 1;
	return n > 0 ? (unsigned)n : 1;
}

uint64_t mv__thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t mv__mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
