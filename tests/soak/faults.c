/* faults.c - fault injection through the prim seam: a copy of mv__prim_linux whose
 * mmap, userfaultfd and madvise entries fail now and then, as a loaded host would make
 * them fail (ENOMEM, EAGAIN). Every other entry is the real one.
 *
 * The prim entries take no context, so the table and its rate are process-wide: one
 * soak at a time. Each thread draws from its own generator, seeded from the run's seed.
 */
#include "soak_int.h"
#include "internal.h"

#include <errno.h>

static struct mv_prim table;
static _Atomic unsigned rate;             /* failures per 100000 calls of each entry */
static _Atomic uint64_t injected[F_NR];
static _Atomic uint64_t seed_base, next_thread;
static _Thread_local uint64_t rng;

static const char *const fault_names[F_NR] = {
	"map_private_fixed", "map_anon_fixed", "uffd_wp", "uffd_register", "uffd_move",
	"dontneed", "lazyfree", "pageout",
};

static uint64_t splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Should this call fail? Then which error: ENOMEM, or EAGAIN where the call allows it. */
static int fail(enum soak_fault f, bool eagain)
{
	unsigned r = atomic_load_explicit(&rate, memory_order_relaxed);
	if (!r)
		return 0;
	if (!rng)
		rng = atomic_load(&seed_base) ^ (atomic_fetch_add(&next_thread, 1) + 1) * 0x2545f4914f6cdd1dull;
	uint64_t x = splitmix(&rng);
	if (x % 100000 >= r)
		return 0;
	atomic_fetch_add(&injected[f], 1);
	return eagain && (x >> 32 & 1) ? -EAGAIN : -ENOMEM;
}

static int f_map_private_fixed(void *addr, size_t len, int fd, off_t off)
{
	int e = fail(F_MAP_PRIVATE_FIXED, false);
	return e ? e : mv__prim_linux.map_private_fixed(addr, len, fd, off);
}

static int f_map_anon_fixed(void *addr, size_t len)
{
	int e = fail(F_MAP_ANON_FIXED, false);
	return e ? e : mv__prim_linux.map_anon_fixed(addr, len);
}

static int f_uffd_wp(int uffd, void *addr, size_t len, int wp)
{
	int e = fail(F_UFFD_WP, true);
	return e ? e : mv__prim_linux.uffd_wp(uffd, addr, len, wp);
}

static int f_uffd_register(int uffd, void *addr, size_t len, unsigned modes)
{
	int e = fail(F_UFFD_REGISTER, true);
	return e ? e : mv__prim_linux.uffd_register(uffd, addr, len, modes);
}

static long f_uffd_move(int uffd, void *dst, void *src, size_t len)
{
	int e = fail(F_UFFD_MOVE, true);
	return e ? e : mv__prim_linux.uffd_move(uffd, dst, src, len);
}

static int f_dontneed(const struct iovec *iov, size_t n)
{
	int e = fail(F_DONTNEED, true);
	return e ? e : mv__prim_linux.dontneed(iov, n);
}

static int f_lazyfree(const struct iovec *iov, size_t n)
{
	int e = fail(F_LAZYFREE, true);
	return e ? e : mv__prim_linux.lazyfree(iov, n);
}

static int f_pageout(const struct iovec *iov, size_t n)
{
	int e = fail(F_PAGEOUT, true);
	return e ? e : mv__prim_linux.pageout(iov, n);
}

/* Before mv_host_start() and before any VM: the library reads h->prim without a lock. */
void soak_faults_install(struct mv_host *h, uint64_t seed)
{
	table = mv__prim_linux;
	table.map_private_fixed = f_map_private_fixed;
	table.map_anon_fixed = f_map_anon_fixed;
	table.uffd_wp = f_uffd_wp;
	table.uffd_register = f_uffd_register;
	table.uffd_move = f_uffd_move;
	table.dontneed = f_dontneed;
	table.lazyfree = f_lazyfree;
	table.pageout = f_pageout;
	atomic_store(&seed_base, seed * 0x9e3779b97f4a7c15ull + 1);
	atomic_store(&rate, 0);
	for (unsigned f = 0; f < F_NR; f++)
		atomic_store(&injected[f], 0);
	h->prim = &table;
}

void soak_faults_set(unsigned per_100k)
{
	atomic_store(&rate, per_100k);
}

uint64_t soak_faults_total(void)
{
	uint64_t n = 0;
	for (unsigned f = 0; f < F_NR; f++)
		n += atomic_load(&injected[f]);
	return n;
}

void soak_faults_print(FILE *out)
{
	fprintf(out, "soak: injected failures:");
	for (unsigned f = 0; f < F_NR; f++)
		fprintf(out, " %s %llu", fault_names[f], (unsigned long long)atomic_load(&injected[f]));
	fprintf(out, "\n");
}
