/* profiles.c - deterministic guest memory images for the scanner benchmark. */
#include "bench.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE 4096ul

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void fill_random(uint8_t *page, uint64_t seed)
{
	uint64_t *w = (uint64_t *)page, s = seed;
	for (size_t i = 0; i < PAGE / 8; i++)
		w[i] = splitmix(&s);
}

/* 25% zero pages, 40% duplicates drawn from 4096 distinct random pages, 35% unique. */
static void fill_scattered(struct bench_guest *g, unsigned nr)
{
	uint64_t rng = 0x5ca77e7ed;
	for (size_t i = 0; i < g->pages; i++) {
		uint8_t *p = g->mem + i * PAGE;
		uint64_t r = splitmix(&rng) % 100;
		if (r < 25)
			memset(p, 0, PAGE);
		else if (r < 65)
			fill_random(p, 1 + splitmix(&rng) % 4096);
		else
			fill_random(p, (1ull << 40) + i);
	}
}

/* Each guest: a private copy of one random template image, then 10% of its pages
 * dirtied at random with content of its own. */
static void fill_clones(struct bench_guest *g, unsigned nr)
{
	for (size_t i = 0; i < g[0].pages; i++)
		fill_random(g[0].mem + i * PAGE, (1ull << 41) + i);
	for (unsigned k = 1; k < nr; k++)
		memcpy(g[k].mem, g[0].mem, g[0].pages * PAGE);
	for (unsigned k = 0; k < nr; k++) {
		uint64_t rng = 0xc10e5 + k;
		for (size_t n = 0; n < g[k].pages / 10; n++) {
			size_t i = splitmix(&rng) % g[k].pages;
			fill_random(g[k].mem + i * PAGE, (1ull << 42) + ((uint64_t)k << 32) + n);
		}
	}
}

static const struct bench_profile profiles[] = {
	{ "scattered", "1 GiB: 25% zero, 40% duplicates of 4096 distinct pages, 35% unique",
	  1, (1ul << 30) / PAGE, NULL, fill_scattered },
	{ "clones", "8 guests x 256 MiB cloned from one random image, 10% of each dirtied",
	  8, (256ul << 20) / PAGE, "clones", fill_clones },
};

const struct bench_profile *bench_profile_find(const char *name)
{
	for (size_t i = 0; i < sizeof(profiles) / sizeof(profiles[0]); i++)
		if (!strcmp(profiles[i].name, name))
			return &profiles[i];
	return NULL;
}

void bench_profiles_list(void)
{
	for (size_t i = 0; i < sizeof(profiles) / sizeof(profiles[0]); i++)
		fprintf(stderr, "  %-10s %s\n", profiles[i].name, profiles[i].what);
}

struct bench_guest *bench_guests_new(const struct bench_profile *p)
{
	struct bench_guest *g = calloc(p->nr_guests, sizeof(*g));
	if (!g)
		return NULL;
	for (unsigned k = 0; k < p->nr_guests; k++) {
		g[k].pages = p->guest_pages;
		g[k].mem = mmap(NULL, p->guest_pages * PAGE, PROT_READ | PROT_WRITE,
		                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (g[k].mem == MAP_FAILED) {
			int e = errno;
			g[k].mem = NULL;
			bench_guests_free(p, g);
			errno = e;
			return NULL;
		}
		madvise(g[k].mem, p->guest_pages * PAGE, MADV_NOHUGEPAGE);
	}
	p->fill(g, p->nr_guests);
	return g;
}

void bench_guests_free(const struct bench_profile *p, struct bench_guest *g)
{
	for (unsigned k = 0; g && k < p->nr_guests; k++)
		if (g[k].mem)
			munmap(g[k].mem, g[k].pages * PAGE);
	free(g);
}
