/* hash.c - XXH3 of a guest page with the host's secret: AVX2 where the CPU has it.
 *
 * xxHash is compiled in (XXH_INLINE_ALL) rather than linked: Debian's libxxhash exports
 * its AVX2 dispatch (XXH3_64bits_withSecret_dispatch) from the shared library only, so a
 * static link of libmemvirt.a could not find it, and the plain symbol of either library
 * is the SSE2 code (287 ns a page against 205 ns with AVX2). hash_avx2.c is the same
 * code built with -mavx2; the choice is made per call from the CPU's feature bits
 * (a load and a test, against ~200 ns of hashing).
 */
#include "ksm.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

uint64_t mv__hash_page(const struct mv_host *h, const void *page)
{
#if defined(__x86_64__) && !defined(__AVX2__)
	if (__builtin_cpu_supports("avx2"))
		return mv__hash_page_avx2(h->secret, sizeof(h->secret), page);
#endif
	return XXH3_64bits_withSecret(page, MV_PAGE_SIZE, h->secret, sizeof(h->secret));
}
