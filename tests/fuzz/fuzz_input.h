/* fuzz_input.h - the fuzzers' reading of their input: little-endian fields taken from
 * the front of the bytes left, zeros once they run out. */
#ifndef MV_FUZZ_INPUT_H
#define MV_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>

struct fz_in {
	const uint8_t *p;
	size_t n;
};

static inline uint64_t fz_get(struct fz_in *in, unsigned bytes)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < bytes; i++, in->p++, in->n--) {
		if (!in->n)
			return v;
		v |= (uint64_t)*in->p << (8 * i);
	}
	return v;
}

#define U8(in)  ((uint8_t)fz_get(in, 1))
#define U16(in) ((uint16_t)fz_get(in, 2))
#define U32(in) ((uint32_t)fz_get(in, 4))
#define U64(in) fz_get(in, 8)

#endif
