/* testutil.c - helpers shared by the cmocka tests. */
#include "testutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <memvirt/memvirt.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

uint8_t *tu_guest_alloc(size_t pages)
{
	size_t len = pages * TPAGE, align = 2ul << 20;
	uint8_t *raw = mmap(NULL, len + align, PROT_READ | PROT_WRITE,
	                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	assert_true(raw != MAP_FAILED);
	uint8_t *mem = (uint8_t *)(((uintptr_t)raw + align - 1) & ~(align - 1));
	if (mem > raw)
		munmap(raw, (size_t)(mem - raw));
	munmap(mem + len, (size_t)(raw + align - mem));
	madvise(mem, len, MADV_NOHUGEPAGE);
	memset(mem, 0x5a, len);
	return mem;
}

void tu_guest_free(uint8_t *mem, size_t pages)
{
	munmap(mem, pages * TPAGE);
}

static uint64_t pagemap_entry(const void *addr)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	assert_true(fd >= 0);
	uint64_t e = 0;
	off_t off = (off_t)((uintptr_t)addr / TPAGE) * 8;
	assert_int_equal(pread(fd, &e, 8, off), 8);
	close(fd);
	return e;
}

uint64_t tu_pfn(const void *addr)
{
	uint64_t e = pagemap_entry(addr);
	return (e >> 63) & 1 ? e & ((1ull << 55) - 1) : 0;
}

bool tu_is_zero_pfn(const void *addr)
{
	static uint64_t zero_pfn;
	if (!zero_pfn) {
		void *z = mmap(NULL, TPAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		volatile uint8_t c = *(volatile uint8_t *)z;
		(void)c;
		zero_pfn = tu_pfn(z);
		munmap(z, TPAGE);
	}
	uint64_t pfn = tu_pfn(addr);
	return pfn == 0 || pfn == zero_pfn;
}

long tu_vmas_in(const void *addr, size_t len)
{
	FILE *f = fopen("/proc/self/maps", "re");
	assert_non_null(f);
	uintptr_t lo = (uintptr_t)addr, hi = lo + len, s, e;
	char line[512];
	long n = 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx", &s, &e) == 2 && e > lo && s < hi)
			n++;
	fclose(f);
	return n;
}

uint64_t tu_rand(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void tu_fill(void *page, uint64_t seed)
{
	uint64_t *w = page, s = seed;
	for (size_t i = 0; i < TPAGE / 8; i++)
		w[i] = seed ? tu_rand(&s) : 0;
}

struct mv_host *tu_host(void)
{
	struct mv_host_config cfg;
	mv_host_config_init(&cfg);
	cfg.settle_ms = 0; /* every pass looks again: tests drive the passes */
	struct mv_host *h = NULL;
	int err = mv_host_new(&cfg, &h);
	if (err)
		fprintf(stderr, "mv_host_new: %s\n", mv_strerror(err));
	assert_int_equal(err, 0);
	return h;
}

long tu_open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	long n = 0;
	for (struct dirent *e; (e = readdir(d));)
		n += e->d_name[0] != '.';
	closedir(d);
	return n - 1; /* the directory's own descriptor */
}

/* Lines of /proc/self/maps that name a memfd (memfd) or are shared (!memfd). */
static long count_maps(bool memfd)
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return -1;
	long n = 0;
	char line[512], perms[8];
	while (fgets(line, sizeof(line), f))
		n += memfd ? strstr(line, "/memfd:") != NULL
		           : sscanf(line, "%*s %7s", perms) == 1 && perms[3] == 's';
	fclose(f);
	return n;
}

long tu_memfd_mappings(void)
{
	return count_maps(true);
}

long tu_shared_mappings(void)
{
	return count_maps(false);
}

struct json_object *tu_json_at(struct json_object *o, const char *path)
{
	char buf[128], *save = NULL;
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *k = strtok_r(buf, ".", &save); o && k; k = strtok_r(NULL, ".", &save))
		if (!json_object_object_get_ex(o, k, &o))
			return NULL;
	return o;
}
