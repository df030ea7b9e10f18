/* fuzz_attach.c - libFuzzer harness: the agent protocol's decoder (mv__aw_decode,
 * mv__aw_next) against arbitrary bytes from a hostile daemon or agent.
 *
 * An input is a byte stream as a connection would carry it. It is decoded twice:
 *
 *   - whole, message after message with mv__aw_decode(), until the bytes left do not
 *     hold a whole message (0) or a message is refused (-EPROTO, nothing else);
 *   - as a receiver gets it, in pieces of 1 + (size % 97) bytes appended to a
 *     struct mv__aw_rx, taking out every whole message with mv__aw_next() after each.
 *
 * Checks: both ways see the same messages (type, size) and end the same way; a receive
 * buffer is never full without a whole message in it; every message decoded encodes
 * (mv__aw_encode) to exactly the bytes it was decoded from, and none of its prefixes
 * decodes. tests/fuzz/test_fuzz_attach.c includes this file (MV_FUZZ_NO_MAIN) to replay
 * the seeds (tests/fuzz/corpus-attach, written by gen_corpus_attach.py) and every
 * regression (tests/fuzz/regressions-attach) in `make test`.
 */
#include "attach_wire.h"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MV_FUZZ_NO_MAIN
#define FA_FAIL(...) fail_msg(__VA_ARGS__)
#else
#define FA_FAIL(...) do { fprintf(stderr, "fuzz_attach: " __VA_ARGS__); \
	fprintf(stderr, "\n"); abort(); } while (0)
#endif
#define FA_CHECK(c) do { if (!(c)) FA_FAIL("check failed: %s (line %d)", #c, __LINE__); } while (0)

#define FA_MAX_SEEN 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What one way of decoding saw: the sizes and types of the messages, how it ended. */
struct fa_seen {
	unsigned n;
	long size[FA_MAX_SEEN];
	uint16_t type[FA_MAX_SEEN];
	long end;                     /* 0 (bytes left over, or none) or -EPROTO */
};

static struct fa_seen fa_whole, fa_rx;
static struct mv__aw_vm fa_vms[MV_AW_MAX_VMS];
static uint8_t fa_buf[MV_AW_HDR + MV_AW_MAX_PAYLOAD];
static struct mv__aw_rx fa_rxbuf;

static void fa_note(struct fa_seen *s, long size, uint16_t type)
{
	if (s->n < FA_MAX_SEEN) {
		s->size[s->n] = size;
		s->type[s->n] = type;
	}
	s->n++;
}

/* m was decoded from the len bytes at p: it encodes to them, and no prefix decodes. */
static void fa_round_trip(const struct mv__aw_msg *m, const uint8_t *p, long len)
{
	struct mv__aw_msg again;
	FA_CHECK(len >= MV_AW_HDR && len <= MV_AW_HDR + MV_AW_MAX_PAYLOAD);
	long n = mv__aw_encode(m, fa_buf, sizeof(fa_buf));
	if (n != len || memcmp(fa_buf, p, (size_t)len))
		FA_FAIL("type %u: %ld bytes decoded, %ld encoded, or other bytes", m->type, len, n);
	FA_CHECK(mv__aw_encode(m, fa_buf, (size_t)len - 1) == -ENOSPC);
	FA_CHECK(mv__aw_decode(p, (size_t)len - 1, &again, NULL) == 0);
	FA_CHECK(mv__aw_decode(p, MV_AW_HDR - 1, &again, NULL) == 0);
}

static void fa_decode_whole(const uint8_t *data, size_t size)
{
	struct mv__aw_msg m;
	size_t off = 0;
	memset(&fa_whole, 0, sizeof(fa_whole));
	for (;;) {
		long n = mv__aw_decode(data + off, size - off, &m, fa_vms);
		if (n <= 0) {
			FA_CHECK(n == 0 || n == -EPROTO);
			fa_whole.end = n;
			return;
		}
		FA_CHECK((size_t)n <= size - off);
		FA_CHECK(m.type != MV_AW_REPORT || m.vms == fa_vms);
		fa_round_trip(&m, data + off, n);
		fa_note(&fa_whole, n, m.type);
		off += (size_t)n;
	}
}

/* Take out every whole message; false once one was refused. */
static bool fa_drain(void)
{
	struct mv__aw_msg m;
	for (;;) {
		long n = mv__aw_next(&fa_rxbuf, &m, fa_vms);
		if (n < 0) {
			FA_CHECK(n == -EPROTO);
			fa_rx.end = n;
			return false;
		}
		if (!n) {
			FA_CHECK(fa_rxbuf.len < sizeof(fa_rxbuf.buf));
			return true;
		}
		fa_note(&fa_rx, n, m.type);
	}
}

static void fa_decode_pieces(const uint8_t *data, size_t size)
{
	size_t piece = 1 + size % 97, off = 0;
	memset(&fa_rx, 0, sizeof(fa_rx));
	fa_rxbuf.len = 0;
	while (off < size) {
		size_t n = size - off < piece ? size - off : piece;
		if (n > sizeof(fa_rxbuf.buf) - fa_rxbuf.len)
			n = sizeof(fa_rxbuf.buf) - fa_rxbuf.len;
		memcpy(fa_rxbuf.buf + fa_rxbuf.len, data + off, n);
		fa_rxbuf.len += n;
		off += n;
		if (!fa_drain())
			return;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fa_decode_whole(data, size);
	fa_decode_pieces(data, size);
	if (getenv("MV_FUZZ_VERBOSE"))
		fprintf(stderr, "fuzz_attach: %u messages, then %s\n", fa_whole.n,
		        fa_whole.end ? "a refused one" : "the end");
	if (fa_whole.n != fa_rx.n || fa_whole.end != fa_rx.end)
		FA_FAIL("whole: %u messages, end %ld; in pieces: %u, end %ld", fa_whole.n,
		        fa_whole.end, fa_rx.n, fa_rx.end);
	unsigned n = fa_whole.n < FA_MAX_SEEN ? fa_whole.n : FA_MAX_SEEN;
	for (unsigned i = 0; i < n; i++)
		if (fa_whole.size[i] != fa_rx.size[i] || fa_whole.type[i] != fa_rx.type[i])
			FA_FAIL("message %u: type %u of %ld bytes whole, type %u of %ld in pieces", i,
			        fa_whole.type[i], fa_whole.size[i], fa_rx.type[i], fa_rx.size[i]);
	return 0;
}
