/* attach_wire.c - the agent protocol's messages: little-endian encoding, strict decoding, I/O. */
#include "attach_wire.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define SCAN_U64     17                            /* the counters of struct mv_scan_stats */
#define SCAN_BLOCK   (8 + SCAN_U64 * 8)            /* valid, 7 zero bytes, the counters */
#define VM_BLOCK     (MV_AW_NAME + MV_AW_DOMAIN + 8 + 8 + 30 * 8 + SCAN_BLOCK)
#define REPORT_FIXED (8 + SCAN_BLOCK + 8)          /* seq, host scanner, nr_vms, 0 */

/*
 * A cursor over a buffer. Writers and readers never step past `end`: the sizes are
 * checked before a message is encoded or decoded, so `bad` only records a field that
 * failed its check (a reserved byte not 0, a bool not 0/1, a name not terminated).
 */
struct cur {
	uint8_t *w;
	const uint8_t *r;
	bool bad;
};

static void put(struct cur *c, uint64_t v, unsigned bytes)
{
	for (unsigned i = 0; i < bytes; i++)
		*c->w++ = (uint8_t)(v >> (8 * i));
}

static uint64_t get(struct cur *c, unsigned bytes)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < bytes; i++)
		v |= (uint64_t)*c->r++ << (8 * i);
	return v;
}

/* A string field of `size` bytes, zero-padded. The caller checked that it fits. */
static void put_str(struct cur *c, const char *s, size_t size)
{
	size_t n = strnlen(s, size);
	memcpy(c->w, s, n);
	memset(c->w + n, 0, size - n);
	c->w += size;
}

/* Terminated within the field, zero after the terminator (the one encoding of each
 * string), non-empty if `need`. */
static void get_str(struct cur *c, char *s, size_t size, bool need)
{
	size_t n = strnlen((const char *)c->r, size);
	if (n == size || (need && !n)) {
		c->bad = true;
		n = 0;
	}
	for (size_t i = n; i < size; i++)
		c->bad |= c->r[i] != 0;
	memcpy(s, c->r, n);
	memset(s + n, 0, size - n);
	c->r += size;
}

static bool get_bool(struct cur *c)
{
	uint64_t v = get(c, 1);
	c->bad |= v > 1;
	return v == 1;
}

static void get_zero(struct cur *c, unsigned bytes)
{
	c->bad |= get(c, bytes) != 0;
}

static bool str_fits(const char *s, size_t size, bool need)
{
	size_t n = strnlen(s, size);
	return n < size && (n || !need);
}

/* ---- blocks ---- */

static uint64_t *scan_field(struct mv_scan_stats *s, unsigned i)
{
	uint64_t *f[] = {
		&s->pages_scanned, &s->pages_shared, &s->pages_sharing, &s->pages_merged,
		&s->pages_zero, &s->pages_volatile, &s->cow_breaks, &s->vmas_used,
		&s->pages_left_vma_budget, &s->pages_left_thp, &s->cow_debt_bytes, &s->full_scans,
		&s->cpu_ns, &s->write_faults, &s->writer_wait_ns, &s->writer_wait_max_ns,
		&s->chunks_backed_off,
	};
	return f[i];
}

static void put_scan(struct cur *c, bool valid, const struct mv_scan_stats *s)
{
	put(c, valid, 1);
	put(c, 0, 7);
	for (unsigned i = 0; i < SCAN_U64; i++)
		put(c, *scan_field((struct mv_scan_stats *)s, i), 8);
}

static bool get_scan(struct cur *c, struct mv_scan_stats *s)
{
	bool valid = get_bool(c);
	get_zero(c, 7);
	for (unsigned i = 0; i < SCAN_U64; i++)
		*scan_field(s, i) = get(c, 8);
	return valid;
}

static uint64_t *bal_field(struct mv_balloon_info *b, unsigned i)
{
	uint64_t *f[] = {
		&b->target_bytes, &b->actual_bytes, &b->held_bytes, &b->released_bytes,
		&b->inflated_bytes, &b->deflated_bytes, &b->reported_bytes, &b->hinted_bytes,
		&b->hint_discarded_bytes, &b->stalled_ns, &b->stall_gap_bytes, &b->guest_errors,
		&b->features, &b->stats_age_ns,
	};
	return i < 14 ? f[i] : &b->stats[i - 14];
}

static void put_vm(struct cur *c, const struct mv__aw_vm *v)
{
	struct mv_balloon_info *b = (struct mv_balloon_info *)&v->balloon;
	put_str(c, v->name, MV_AW_NAME);
	put_str(c, v->domain, MV_AW_DOMAIN);
	put(c, v->ram_bytes, 8);
	put(c, v->has_balloon, 1);
	put(c, v->scanner_valid, 1);
	put(c, b->stalled, 1);
	put(c, b->needs_reset, 1);
	put(c, b->stats_valid, 4);
	for (unsigned i = 0; i < 14 + MV_BSTAT_NR; i++)
		put(c, *bal_field(b, i), 8);
	put_scan(c, v->scanner_valid, &v->scanner);
}

static void get_vm(struct cur *c, struct mv__aw_vm *v)
{
	memset(v, 0, sizeof(*v));
	get_str(c, v->name, MV_AW_NAME, true);
	get_str(c, v->domain, MV_AW_DOMAIN, false);
	v->ram_bytes = get(c, 8);
	v->has_balloon = get_bool(c);
	v->scanner_valid = get_bool(c);
	v->balloon.stalled = get_bool(c);
	v->balloon.needs_reset = get_bool(c);
	v->balloon.stats_valid = (uint32_t)get(c, 4);
	for (unsigned i = 0; i < 14 + MV_BSTAT_NR; i++)
		*bal_field(&v->balloon, i) = get(c, 8);
	c->bad |= get_scan(c, &v->scanner) != v->scanner_valid; /* both flags say the same */
}

/* ---- messages ---- */

/* The payload size of a type; for REPORT the size without VMs (each adds VM_BLOCK). */
static uint32_t fixed_len(uint16_t type)
{
	static const uint32_t len[] = {
		[MV_AW_HELLO] = 4 + MV_AW_CLIENT, [MV_AW_WELCOME] = 4, [MV_AW_POLL] = 8,
		[MV_AW_REPORT] = REPORT_FIXED, [MV_AW_SET_TARGET] = MV_AW_NAME + 8,
		[MV_AW_SET_SHARE] = 8, [MV_AW_REFUSE] = 8 + MV_AW_NAME + MV_AW_WHY,
	};
	return type < sizeof(len) / sizeof(len[0]) ? len[type] : 0;
}

static bool len_ok(uint16_t type, uint32_t len)
{
	uint32_t fixed = fixed_len(type);
	if (!fixed || len < fixed)
		return false;
	if (type != MV_AW_REPORT)
		return len == fixed;
	return (len - fixed) % VM_BLOCK == 0 && (len - fixed) / VM_BLOCK <= MV_AW_MAX_VMS;
}

/* The names m carries fit their fields (and are given where required). */
static bool names_ok(const struct mv__aw_msg *m)
{
	switch (m->type) {
	case MV_AW_HELLO:
		return str_fits(m->u.hello.client, MV_AW_CLIENT, true);
	case MV_AW_SET_TARGET:
		return str_fits(m->u.set_target.name, MV_AW_NAME, true);
	case MV_AW_REFUSE:
		return str_fits(m->u.refuse.name, MV_AW_NAME, false) &&
		       str_fits(m->u.refuse.why, MV_AW_WHY, false);
	case MV_AW_REPORT:
		for (uint32_t i = 0; i < m->u.report.nr_vms; i++)
			if (!str_fits(m->vms[i].name, MV_AW_NAME, true) ||
			    !str_fits(m->vms[i].domain, MV_AW_DOMAIN, false))
				return false;
		return true;
	}
	return true;
}

/* The payload size of m, or -EINVAL if m cannot be encoded. */
static long encoded_len(const struct mv__aw_msg *m)
{
	long len = fixed_len(m->type);
	if (m->type == MV_AW_REPORT) {
		uint32_t n = m->u.report.nr_vms;
		if (n > MV_AW_MAX_VMS || (n && !m->vms))
			return -EINVAL;
		len += (long)n * VM_BLOCK;
	}
	return len && names_ok(m) ? len : -EINVAL;
}

static void put_body(struct cur *c, const struct mv__aw_msg *m)
{
	switch (m->type) {
	case MV_AW_HELLO:
		put(c, m->u.hello.pid, 4);
		put_str(c, m->u.hello.client, MV_AW_CLIENT);
		break;
	case MV_AW_WELCOME:
		put(c, m->u.welcome.period_ms, 4);
		break;
	case MV_AW_POLL:
		put(c, m->u.poll.seq, 8);
		break;
	case MV_AW_REPORT:
		put(c, m->u.report.seq, 8);
		put_scan(c, m->u.report.scanner_valid, &m->u.report.scanner);
		put(c, m->u.report.nr_vms, 4);
		put(c, 0, 4);
		for (uint32_t i = 0; i < m->u.report.nr_vms; i++)
			put_vm(c, &m->vms[i]);
		break;
	case MV_AW_SET_TARGET:
		put_str(c, m->u.set_target.name, MV_AW_NAME);
		put(c, m->u.set_target.target_bytes, 8);
		break;
	case MV_AW_SET_SHARE:
		put(c, m->u.set_share.micro_cores, 8);
		break;
	case MV_AW_REFUSE:
		put(c, m->u.refuse.type, 2);
		put(c, 0, 2);
		put(c, (uint32_t)m->u.refuse.err, 4);
		put_str(c, m->u.refuse.name, MV_AW_NAME);
		put_str(c, m->u.refuse.why, MV_AW_WHY);
		break;
	}
}

long mv__aw_encode(const struct mv__aw_msg *m, uint8_t *buf, size_t cap)
{
	long len = encoded_len(m);
	if (len < 0)
		return len;
	if (cap < MV_AW_HDR + (size_t)len)
		return -ENOSPC;
	struct cur c = { .w = buf };
	put(&c, MV_AW_MAGIC, 4);
	put(&c, MV_AW_VERSION, 2);
	put(&c, m->type, 2);
	put(&c, (uint64_t)len, 4);
	put_body(&c, m);
	return MV_AW_HDR + len;
}

/* REPORT: plen was checked against nr_vms by len_ok(); the count given must agree. */
static void get_report(struct cur *c, struct mv__aw_msg *m, struct mv__aw_vm *vms, uint32_t plen)
{
	struct mv__aw_vm scratch;
	m->u.report.seq = get(c, 8);
	m->u.report.scanner_valid = get_scan(c, &m->u.report.scanner);
	m->u.report.nr_vms = (uint32_t)get(c, 4);
	get_zero(c, 4);
	if (m->u.report.nr_vms != (plen - REPORT_FIXED) / VM_BLOCK) {
		c->bad = true;
		return;
	}
	for (uint32_t i = 0; i < m->u.report.nr_vms; i++)
		get_vm(c, vms ? &vms[i] : &scratch);
	m->vms = vms;
}

static void get_body(struct cur *c, struct mv__aw_msg *m, struct mv__aw_vm *vms, uint32_t plen)
{
	switch (m->type) {
	case MV_AW_HELLO:
		m->u.hello.pid = (uint32_t)get(c, 4);
		get_str(c, m->u.hello.client, MV_AW_CLIENT, true);
		break;
	case MV_AW_WELCOME:
		m->u.welcome.period_ms = (uint32_t)get(c, 4);
		break;
	case MV_AW_POLL:
		m->u.poll.seq = get(c, 8);
		break;
	case MV_AW_REPORT:
		get_report(c, m, vms, plen);
		break;
	case MV_AW_SET_TARGET:
		get_str(c, m->u.set_target.name, MV_AW_NAME, true);
		m->u.set_target.target_bytes = get(c, 8);
		break;
	case MV_AW_SET_SHARE:
		m->u.set_share.micro_cores = get(c, 8);
		break;
	case MV_AW_REFUSE:
		m->u.refuse.type = (uint16_t)get(c, 2);
		get_zero(c, 2);
		m->u.refuse.err = (int32_t)(uint32_t)get(c, 4);
		get_str(c, m->u.refuse.name, MV_AW_NAME, false);
		get_str(c, m->u.refuse.why, MV_AW_WHY, false);
		break;
	}
}

long mv__aw_decode(const uint8_t *buf, size_t len, struct mv__aw_msg *m,
                   struct mv__aw_vm *vms)
{
	if (len < MV_AW_HDR)
		return 0;
	struct cur c = { .r = buf };
	uint32_t magic = (uint32_t)get(&c, 4);
	uint16_t version = (uint16_t)get(&c, 2);
	uint16_t type = (uint16_t)get(&c, 2);
	uint32_t plen = (uint32_t)get(&c, 4);
	if (magic != MV_AW_MAGIC || version != MV_AW_VERSION || plen > MV_AW_MAX_PAYLOAD ||
	    !len_ok(type, plen))
		return -EPROTO;
	if (len - MV_AW_HDR < plen)
		return 0;
	memset(m, 0, sizeof(*m));
	m->type = type;
	get_body(&c, m, vms, plen);
	return c.bad ? -EPROTO : (long)(MV_AW_HDR + plen);
}

/* ---- the connection ---- */

int mv__aw_read(int fd, struct mv__aw_rx *rx)
{
	while (rx->len < sizeof(rx->buf)) {
		ssize_t n = recv(fd, rx->buf + rx->len, sizeof(rx->buf) - rx->len, MSG_DONTWAIT);
		if (n > 0) {
			rx->len += (size_t)n;
			continue;
		}
		if (n == 0)
			return -ECONNRESET;
		if (errno == EINTR)
			continue;
		return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
	}
	return 0;
}

long mv__aw_next(struct mv__aw_rx *rx, struct mv__aw_msg *m, struct mv__aw_vm *vms)
{
	long n = mv__aw_decode(rx->buf, rx->len, m, vms);
	if (n > 0) {
		rx->len -= (size_t)n;
		memmove(rx->buf, rx->buf + n, rx->len);
	}
	return n;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Send len bytes whole; wait for room until the deadline (ms, CLOCK_MONOTONIC). */
static int send_all(int fd, const uint8_t *p, size_t len, int64_t deadline)
{
	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		int64_t left = deadline - mono_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		if (poll(&pfd, 1, (int)left) < 0 && errno != EINTR)
			return -errno;
	}
	return 0;
}

int mv__aw_send(int fd, const struct mv__aw_msg *m, unsigned timeout_ms)
{
	size_t cap = MV_AW_HDR + MV_AW_MAX_PAYLOAD;
	uint8_t *buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	long len = mv__aw_encode(m, buf, cap);
	int rc = len < 0 ? (int)len : send_all(fd, buf, (size_t)len, mono_ms() + timeout_ms);
	free(buf);
	return rc;
}
