/* hash_avx2.c - XXH3 of a page, built with -mavx2 on x86-64 (see hash.c); called only
 * on CPUs with AVX2. */
#include "ksm.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

uint64_t mv__hash_page_avx2(const void *secret, size_t secret_len, const void *page)
{
	return XXH3_64bits_withSecret(page, MV_PAGE_SIZE, secret, secret_len);
}
