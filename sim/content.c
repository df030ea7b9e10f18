/* content.c - page content as a pure function of a descriptor: generated at memory speed,
 * checked exactly.
 *
 * A page's key is a strong 64-bit mix of (source seed, role, seed, version); its 512
 * words are w[i] = mix(key + i * golden), where mix is a bijection, so w[0] alone already
 * differs between two keys: different keys give different pages, always. Generation
 * has no dependency between words (about 0.12 s per GiB from cache on the build
 * machine, well under the cost of faulting the page in).
 */
#include "wl.h"

#include <string.h>

#define WORDS  (MVW_PAGE / 8)
#define GOLDEN 0x9e3779b97f4a7c15ull

static inline uint64_t fmix64(uint64_t z)
{
	z ^= z >> 33;
	z *= 0xff51afd7ed558ccdull;
	z ^= z >> 33;
	z *= 0xc4ceb9fe1a85ec53ull;
	return z ^ (z >> 33);
}

/* One multiply: enough for content, and a bijection. */
static inline uint64_t mix1(uint64_t z)
{
	z ^= z >> 32;
	z *= 0xd6e8feb86659fd93ull;
	return z ^ (z >> 32);
}

uint64_t mvw__key(uint64_t src_seed, unsigned role, uint64_t seed, uint32_t version)
{
	uint64_t k = fmix64(src_seed ^ 0x6a09e667f3bcc908ull);
	k = fmix64(k ^ ((uint64_t)role * GOLDEN));
	k = fmix64(k + seed);
	return fmix64(k ^ ((uint64_t)version * 0xbb67ae8584caa73bull));
}

void mvw__gen(void *page, uint64_t key)
{
	uint64_t *w = page;
	for (uint64_t i = 0; i < WORDS; i++)
		w[i] = mix1(key + i * GOLDEN);
}

/* Exact: every word is compared (in blocks of 8, stopping at the first block that differs). */
bool mvw__check(const void *page, uint64_t key)
{
	const uint64_t *w = page;
	for (uint64_t i = 0; i < WORDS; i += 8) {
		uint64_t diff = 0;
		for (uint64_t j = i; j < i + 8; j++)
			diff |= w[j] ^ mix1(key + j * GOLDEN);
		if (diff)
			return false;
	}
	return true;
}

static bool all_zero(const void *page)
{
	const uint64_t *w = page;
	uint64_t any = 0;
	for (uint64_t i = 0; i < WORDS; i++)
		any |= w[i];
	return !any;
}

static uint64_t key_of(const struct mvw_guest *g, uint64_t d)
{
	return mvw__key(mvw__d_image(d) ? g->image_seed : g->guest_seed, mvw__d_role(d),
	                mvw__d_seed(d), mvw__d_version(d));
}

void mvw__write(const struct mvw_guest *g, void *page, uint64_t d)
{
	if (mvw__d_role(d) == MVW_ZERO)
		memset(page, 0, MVW_PAGE);
	else
		mvw__gen(page, key_of(g, d));
}

bool mvw__matches(const struct mvw_guest *g, const void *page, uint64_t d)
{
	if (mvw__d_role(d) == MVW_ZERO)
		return all_zero(page);
	return mvw__check(page, key_of(g, d));
}

/* FNV-1a, then mixed: default seeds from names. */
uint64_t mvw__hash_str(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
	return fmix64(h) | 1;
}

/* splitmix64 */
uint64_t mvw__rand(uint64_t *state)
{
	uint64_t z = (*state += GOLDEN);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}
