/* test_vhost_user_hostile.c - a hostile frontend against the vhost-user balloon backend
 * (the fake frontend of vufront.h): malformed headers and replies of the wrong size end
 * the connection; payloads of the wrong size, descriptors where none belong or too many,
 * bad memory tables (counts, overlaps, alignment, wrapping, beyond the file, not a
 * regular file), rings outside memory or misaligned, queue numbers and sizes out of
 * range, read-only config, unknown requests and features never offered are refused with
 * nothing applied; a frontend that stops mid-message, goes away or never reads its
 * replies holds nothing up; a hostile guest ring through this transport. Every teardown
 * checks that no descriptor and no mapping leaked. */
#include "vufront.h"

/* ---- the connection ends ---- */

struct bad {
	const char *name;
	uint32_t req, flags, size;
	uint8_t pl[300];
	unsigned nfds;          /* eventfds attached */
};

static struct bad bad_msgs[] = {
	{ "version 0", GET_FEATURES, 0x100, 0, { 0 }, 0 },
	{ "version 2", SET_OWNER, 0x2, 0, { 0 }, 0 },
	{ "REPLY flag from the frontend", SET_OWNER, VERSION | FL_REPLY, 0, { 0 }, 0 },
	{ "payload over 512 bytes", SET_MEM_TABLE, VERSION, 513, { 0 }, 0 },
	{ "payload of 4 GiB", SET_MEM_TABLE, VERSION, 0xffffffffu, { 0 }, 0 },
	{ "GET_FEATURES with a payload", GET_FEATURES, VERSION, 8, { 0 }, 0 },
	{ "GET_PROTOCOL_FEATURES with a payload", GET_PROTOCOL_FEATURES, VERSION, 4, { 0 }, 0 },
	{ "GET_FEATURES with an fd", GET_FEATURES, VERSION, 0, { 0 }, 1 },
	{ "GET_VRING_BASE of 4 bytes", GET_VRING_BASE, VERSION, 4, { 0 }, 0 },
	{ "GET_VRING_BASE of queue 5", GET_VRING_BASE, VERSION, 8, { 5 }, 0 },
	{ "GET_VRING_BASE with 9 fds", GET_VRING_BASE, VERSION, 8, { 0 }, 9 },
	{ "GET_CONFIG of 257 bytes", GET_CONFIG, VERSION, 12 + 257, { 0, 0, 0, 0, 1, 1 }, 0 },
	{ "GET_CONFIG at offset 2^32-1", GET_CONFIG, VERSION, 12 + 4,
	  { 0xff, 0xff, 0xff, 0xff, 4 }, 0 },
	{ "GET_CONFIG size unlike its payload", GET_CONFIG, VERSION, 12 + 4, { 0, 0, 0, 0, 8 }, 0 },
	{ "GET_CONFIG of 2^32-12 bytes", GET_CONFIG, VERSION, 12, { 0, 0, 0, 0, 0xf4, 0xff, 0xff, 0xff }, 0 },
	{ "GET_CONFIG shorter than its header", GET_CONFIG, VERSION, 8, { 0 }, 0 },
};

static void malformed(void **state)
{
	struct fe *f = *state;
	const struct bad *m = f->arg;
	struct snap s = snap(f);
	int fds[9];
	for (unsigned i = 0; i < m->nfds; i++)
		fds[i] = eventfd(0, EFD_CLOEXEC);
	struct hdr h = { m->req, m->flags, m->size };
	uint8_t buf[12 + sizeof(m->pl)];
	memcpy(buf, &h, 12);
	size_t len = m->size <= sizeof(m->pl) ? m->size : sizeof(m->pl);
	memcpy(buf + 12, m->pl, len);
	send_raw(f->sock, buf, 12 + len, fds, m->nfds);
	for (unsigned i = 0; i < m->nfds; i++)
		close(fds[i]);
	assert_int_equal(dispatch(f), -EPROTO);
	no_reply(f);
	struct snap now = snap(f);
	assert_int_equal(now.vi.regions, s.vi.regions);
	assert_int_equal(now.bi.status, s.bi.status);
}

/* ---- refused, nothing applied, the connection goes on ---- */

static void payload_size_wrong(void **state)
{
	struct fe *f = *state;
	struct snap s = snap(f);
	uint64_t big[8] = { FB(STATS_VQ) | V1 | F_PROTO };
	assert_int_equal(ack(f, SET_FEATURES, big, 4, NULL, 0), 1);
	assert_int_equal(ack(f, SET_FEATURES, big, 16, NULL, 0), 1);
	assert_int_equal(ack(f, SET_PROTOCOL_FEATURES, big, 0, NULL, 0), 1);
	assert_int_equal(ack(f, SET_VRING_NUM, big, 12, NULL, 0), 1);
	assert_int_equal(ack(f, SET_VRING_ADDR, big, 32, NULL, 0), 1);
	assert_int_equal(ack(f, SET_VRING_ENABLE, big, 4, NULL, 0), 1);
	assert_int_equal(ack(f, SET_VRING_CALL, big, 4, NULL, 0), 1);
	assert_int_equal(ack(f, SET_MEM_TABLE, big, 4, NULL, 0), 1);
	assert_int_equal(ack(f, SET_CONFIG, big, 8, NULL, 0), 1);
	assert_int_equal(ack(f, SET_OWNER, big, 8, NULL, 0), 1);
	unchanged(f, &s);
	still_works(f);
}

/* Descriptors where the request takes none, too many, or none where it needs one. */
static void fds_wrong(void **state)
{
	struct fe *f = *state;
	struct snap s = snap(f);
	int ev[20];
	for (unsigned i = 0; i < 20; i++)
		ev[i] = eventfd(0, EFD_CLOEXEC);
	uint64_t v = FB(MUST_TELL_HOST) | V1 | F_PROTO;
	assert_int_equal(ack(f, SET_FEATURES, &v, 8, ev, 1), 1);
	assert_int_equal(ack(f, SET_OWNER, NULL, 0, ev, 2), 1);
	struct vstate st = { 2, NUM };
	assert_int_equal(ack(f, SET_VRING_NUM, &st, 8, ev, 1), 1);
	v = 0; /* ring 0's call, with 9 and with 20 descriptors */
	assert_int_equal(ack(f, SET_VRING_CALL, &v, 8, ev, 9), 1);
	assert_int_equal(ack(f, SET_VRING_CALL, &v, 8, ev, 20), 1);
	assert_int_equal(ack(f, SET_VRING_CALL, &v, 8, ev, 2), 1);
	v = 0; /* a kick without NOFD and without a descriptor; NOFD with one */
	assert_int_equal(ack(f, SET_VRING_KICK, &v, 8, NULL, 0), 1);
	v = NOFD;
	assert_int_equal(ack(f, SET_VRING_KICK, &v, 8, ev, 1), 1);
	assert_int_equal(ack(f, SET_VRING_KICK, &v, 8, NULL, 0), 1); /* polling: not offered */
	assert_int_equal(ack(f, SET_BACKEND_REQ_FD, NULL, 0, NULL, 0), 1);
	assert_int_equal(ack(f, SET_BACKEND_REQ_FD, NULL, 0, ev, 2), 1);
	struct vmem m = table1();
	assert_int_equal(set_table(f, &m, NULL, 0), 1);
	int two[2] = { f->memfd, f->memfd };
	assert_int_equal(set_table(f, &m, two, 2), 1);
	int kickfd = f->memfd; /* a kick fd that cannot be polled */
	v = 1;
	assert_int_equal(ack(f, SET_VRING_KICK, &v, 8, &kickfd, 1), 1);
	for (unsigned i = 0; i < 20; i++)
		close(ev[i]);
	unchanged(f, &s);
	still_works(f);
	assert_int_equal(get_u64(f, GET_FEATURES) & V1, V1);
}

static void table_refused(struct fe *f, const struct vmem *m, const int *fds, unsigned nfds)
{
	struct snap s = snap(f);
	assert_int_equal(set_table(f, m, fds, nfds), 1);
	unchanged(f, &s);
}

/* A new table the VM refuses (a region of the caller's own where the table wants one):
 * the old table is put back and still carries the rings. */
static void mem_table_refused_by_the_vm(void **state)
{
	struct fe *f = *state;
	size_t len = 64 * TPAGE;
	uint8_t *own = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(own != MAP_FAILED);
	assert_int_equal(mv_vm_region_add(f->vm, 9, 4 * MEM, own, len, MV_REGION_NEVER_MERGE), 0);
	struct vmem m = { 2, 0, { { 0, MEM, UA, 0 }, { 4 * MEM, MEM, UA + 4 * MEM, 0 } } };
	int fds[2] = { f->memfd, f->memfd };
	table_refused(f, &m, fds, 2);
	still_works(f);
	assert_int_equal(mv_vm_region_remove(f->vm, 9), 0);
	munmap(own, len);
}

static void mem_table_counts(void **state)
{
	struct fe *f = *state;
	struct vmem m = { 0, 0, { { 0 } } };
	table_refused(f, &m, NULL, 0);
	m.n = 9;
	int fds[9];
	for (unsigned i = 0; i < 9; i++) {
		fds[i] = f->memfd;
		m.r[i] = (struct vregion){ (uint64_t)i << 30, TPAGE, UA + ((uint64_t)i << 30), 0 };
	}
	table_refused(f, &m, fds, 8);
	m.n = 2; /* two regions, payload for one */
	struct snap s = snap(f);
	assert_int_equal(ack(f, SET_MEM_TABLE, &m, 8 + 32, fds, 2), 1);
	unchanged(f, &s);
	m.n = 1u << 31;
	assert_int_equal(ack(f, SET_MEM_TABLE, &m, 8 + 32, fds, 1), 1);
	still_works(f);
}

static void mem_table_overlaps(void **state)
{
	struct fe *f = *state;
	int fds[2] = { f->memfd, f->memfd };
	struct vmem gpa = { 2, 0, { { 0, 2 << 20, UA, 0 }, { 1 << 20, 2 << 20, UA + (8 << 20), 2 << 20 } } };
	table_refused(f, &gpa, fds, 2);
	struct vmem ua = { 2, 0, { { 0, 2 << 20, UA, 0 }, { 8 << 20, 2 << 20, UA + (1 << 20), 0 } } };
	table_refused(f, &ua, fds, 2);
	struct vmem same = { 2, 0, { { 0, MEM, UA, 0 }, { 0, MEM, UA, 0 } } };
	table_refused(f, &same, fds, 2);
	still_works(f);
}

static void mem_table_bad_regions(void **state)
{
	struct fe *f = *state;
	static const struct vregion bad[] = {
		{ 0x800, MEM - TPAGE, UA, 0 },             /* gpa unaligned */
		{ 0, MEM - 0x800, UA, 0 },                  /* size unaligned */
		{ 0, MEM - TPAGE, UA, 0x100 },              /* offset unaligned */
		{ 0, 0, UA, 0 },                            /* empty */
		{ ~0ull - 0xfff, 0x2000, UA, 0 },          /* gpa + size wraps */
		{ 0, 0x2000, ~0ull - 0xfff, 0 },           /* uaddr + size wraps */
		{ 0, 0x2000, UA, ~0ull - 0xfff },          /* offset + size wraps */
		{ 0, 1ull << 63, UA, 0 },                   /* larger than any mapping */
		{ 0, MEM + TPAGE, UA, 0 },                  /* beyond the end of the file */
		{ 0, MEM, UA, TPAGE },                      /* ... from an offset */
		{ 0, TPAGE, UA, MEM },                      /* wholly past it */
	};
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct vmem m = { 1, 0, { bad[i] } };
		print_message("region %u\n", i);
		table_refused(f, &m, &f->memfd, 1);
	}
	/* not a regular file: a pipe, a socket, an eventfd */
	int p[2], ev = eventfd(0, EFD_CLOEXEC);
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	struct vmem m = { 1, 0, { { 0, TPAGE, UA, 0 } } };
	table_refused(f, &m, &p[0], 1);
	table_refused(f, &m, &f->sock, 1);
	table_refused(f, &m, &ev, 1);
	/* a file this process may not write: sealed against writes */
	int ro = memfd_create("ro", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_int_equal(ftruncate(ro, TPAGE), 0);
	assert_int_equal(fcntl(ro, F_ADD_SEALS, F_SEAL_WRITE), 0);
	table_refused(f, &m, &ro, 1);
	close(ro);
	close(ev);
	close(p[0]);
	close(p[1]);
	still_works(f);
}

/* A refused table leaves the old one in force: ring traffic still goes through it. */
static void old_table_in_force(void **state)
{
	struct fe *f = *state;
	int other = memfd_create("other", MFD_CLOEXEC);
	assert_int_equal(ftruncate(other, (off_t)MEM), 0);
	struct vmem m = { 2, 0, { { 0, MEM, UA, 0 }, { MEM - TPAGE, MEM, UA + MEM, 0 } } };
	int fds[2] = { other, other };
	table_refused(f, &m, fds, 2);
	close(other);
	still_works(f);
	struct mv_vhost_user_info vi;
	assert_int_equal(mv_vhost_user_info(f->vu, &vi), 0);
	assert_int_equal(vi.regions, 1);
}

/* Ring 1 stopped, then given bad addresses: each refused; good ones start it again. */
static void ring_addresses(void **state)
{
	struct fe *f = *state;
	struct vstate s = { 1, 0 }, r;
	send_msg(f, GET_VRING_BASE, 0, &s, sizeof(s), NULL, 0);
	dispatch_ok(f);
	reply(f, GET_VRING_BASE, &r, sizeof(r));
	uint64_t d = UA + RING(1), a = d + 0x1000, u = d + 0x2000;
	assert_int_equal(addr_ack(f, 1, UA + MEM, a, u), 1);           /* past the memory */
	assert_int_equal(addr_ack(f, 1, UA - TPAGE, a, u), 1);          /* below it */
	assert_int_equal(addr_ack(f, 1, 0, a, u), 1);
	assert_int_equal(addr_ack(f, 1, d, ~0ull - 4, u), 1);
	assert_int_equal(addr_ack(f, 1, d, a, UA + MEM - 8), 1);       /* runs off the end */
	assert_int_equal(addr_ack(f, 1, UA + MEM - 16, a, u), 1);
	assert_int_equal(addr_ack(f, 1, d + 8, a, u), 1);              /* misaligned */
	assert_int_equal(addr_ack(f, 1, d, a + 1, u), 1);
	assert_int_equal(addr_ack(f, 1, d, a, u + 2), 1);
	struct vaddr logged = { 1, 1, d, u, a, 0 };                     /* dirty log: not offered */
	assert_int_equal(ack(f, SET_VRING_ADDR, &logged, sizeof(logged), NULL, 0), 1);
	assert_int_equal(addr_ack(f, 5, d, a, u), 1);                   /* no such queue */
	assert_int_equal(addr_ack(f, 0, d, a, u), 1);                   /* ring 0 runs */
	assert_int_equal(addr_ack(f, 1, d, a, u), 0);
	ring_kick_fd(f, 1);
	uint32_t pfn = victim(f);
	push_pfns(f, 1, &pfn, 1);
	kick(f, 1);
	assert_int_equal(used(f, 1), 1);
	still_works(f);
}

static void ring_numbers(void **state)
{
	struct fe *f = *state;
	struct snap s = snap(f);
	/* queues 2..4 exist in the widest layout but are not in this one's: staged only */
	assert_int_equal(ack_state(f, SET_VRING_NUM, 2, 100), 1);       /* not a power of 2 */
	assert_int_equal(ack_state(f, SET_VRING_NUM, 2, QMAX * 2), 1);  /* over queue_max */
	assert_int_equal(ack_state(f, SET_VRING_NUM, 2, 65536), 1);
	assert_int_equal(ack_state(f, SET_VRING_NUM, 2, 0), 1);
	assert_int_equal(ack_state(f, SET_VRING_NUM, 2, 0x80000000u), 1);
	assert_int_equal(ack_state(f, SET_VRING_NUM, 2, QMAX), 0);
	assert_int_equal(ack_state(f, SET_VRING_NUM, 0, NUM), 1);       /* ring 0 runs */
	assert_int_equal(ack_state(f, SET_VRING_BASE, 2, 0x10000), 1);
	assert_int_equal(ack_state(f, SET_VRING_BASE, 2, 0xffffffffu), 1);
	assert_int_equal(ack_state(f, SET_VRING_BASE, 2, 0xffff), 0);
	assert_int_equal(ack_state(f, SET_VRING_BASE, 0, 0), 1);        /* ring 0 runs */
	/* queue indexes out of range */
	assert_int_equal(ack_state(f, SET_VRING_NUM, 5, NUM), 1);
	assert_int_equal(ack_state(f, SET_VRING_NUM, 0xffffffffu, NUM), 1);
	assert_int_equal(ack_state(f, SET_VRING_BASE, 255, 0), 1);
	assert_int_equal(ack_state(f, SET_VRING_ENABLE, 5, 1), 1);
	assert_int_equal(ack_state(f, SET_VRING_ENABLE, 0, 2), 1);
	int ev = eventfd(0, EFD_CLOEXEC);
	assert_int_equal(ack_fd(f, SET_VRING_CALL, 5, ev), 1);
	assert_int_equal(ack_fd(f, SET_VRING_KICK, 0xff, ev), 1);
	assert_int_equal(ack_fd(f, SET_VRING_ERR, 1ull << 20, ev), 1);
	assert_int_equal(ack_fd(f, SET_VRING_ERR, 0, ev), 0);          /* taken, never used */
	close(ev);
	unchanged(f, &s);
	still_works(f);
}

static void config_refused(void **state)
{
	struct fe *f = *state;
	assert_int_equal(mv_balloon_set_target(mv_vhost_user_balloon(f->vu), 8 * TPAGE), 0);
	struct snap s = snap(f);
	struct vcfg c = { 0, 4, 0, { 0xff, 0xff, 0xff, 0xff } };
	assert_int_equal(ack(f, SET_CONFIG, &c, 12 + 4, NULL, 0), 1);  /* num_pages: read-only */
	c.offset = 8;                                                    /* the hint cmd id */
	assert_int_equal(ack(f, SET_CONFIG, &c, 12 + 4, NULL, 0), 1);
	c.offset = 12;                                                   /* poison: not negotiated */
	assert_int_equal(ack(f, SET_CONFIG, &c, 12 + 4, NULL, 0), 1);
	c.offset = 2;                                                    /* across two fields */
	assert_int_equal(ack(f, SET_CONFIG, &c, 12 + 4, NULL, 0), 1);
	c.offset = 0xfffffffcu;
	assert_int_equal(ack(f, SET_CONFIG, &c, 12 + 4, NULL, 0), 1);
	c.offset = 4;
	c.size = 0;
	assert_int_equal(ack(f, SET_CONFIG, &c, 12, NULL, 0), 1);
	c.size = 16;
	assert_int_equal(ack(f, SET_CONFIG, &c, 12 + 16, NULL, 0), 1);
	c.size = 8;                                                      /* size unlike payload */
	assert_int_equal(ack(f, SET_CONFIG, &c, 12 + 4, NULL, 0), 1);
	unchanged(f, &s);
	assert_int_equal(config_u32(f, 0), 8);
	assert_int_equal(config_u32(f, 4), 0);
	assert_int_equal(config_u32(f, 8), 0);
	/* reads past the end are zeros of the size asked */
	struct vcfg big = { 0, 256, 0, { 0 } }, r;
	send_msg(f, GET_CONFIG, 0, &big, 12 + 256, NULL, 0);
	dispatch_ok(f);
	reply(f, GET_CONFIG, &r, 12 + 256);
	for (unsigned i = 16; i < 256; i++)
		assert_int_equal(r.data[i], 0);
}

static void unknown_requests(void **state)
{
	struct fe *f = *state;
	struct snap s = snap(f);
	static const uint32_t reqs[] = { 0, SET_LOG_BASE, 7, 17, 22, 33, 36, 99, 0x7fffffff, 0xffffffff };
	uint64_t v = 0;
	for (unsigned i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++)
		assert_int_equal(ack(f, reqs[i], &v, 8, NULL, 0), 1);
	int ev = eventfd(0, EFD_CLOEXEC); /* closed by the backend with the refusal */
	assert_int_equal(ack(f, 99, &v, 8, &ev, 1), 1);
	close(ev);
	/* without NEED_REPLY: refused in silence */
	send_msg(f, 99, 0, &v, 8, NULL, 0);
	dispatch_ok(f);
	no_reply(f);
	unchanged(f, &s);
	still_works(f);
}

static void features_refused(void **state)
{
	struct fe *f = *state;
	struct snap s = snap(f);
	/* bits never offered */
	assert_int_equal(ack_u64(f, SET_FEATURES, FB(MUST_TELL_HOST) | V1 | F_PROTO | (1ull << 40)), 1);
	assert_int_equal(ack_u64(f, SET_FEATURES, FB(MUST_TELL_HOST) | V1 | F_PROTO | (1ull << 6)), 1);
	assert_int_equal(ack_u64(f, SET_PROTOCOL_FEATURES, PF_WANT | PF(0)), 1);
	assert_int_equal(ack_u64(f, SET_PROTOCOL_FEATURES, PF_WANT | PF_INBAND), 1); /* not offered */
	/* another layout while the rings run */
	assert_int_equal(ack_u64(f, SET_FEATURES, FB(MUST_TELL_HOST) | FB(STATS_VQ) | V1 | F_PROTO), 1);
	assert_int_equal(ack_u64(f, SET_FEATURES, V1 | F_PROTO), 1);
	unchanged(f, &s);
	assert_int_equal(mv_balloon_nr_queues(mv_vhost_user_balloon(f->vu)), 2);
	still_works(f);
	/* the same features again (virtio_uml may send them twice): accepted */
	assert_int_equal(ack_u64(f, SET_FEATURES, FB(MUST_TELL_HOST) | V1 | F_PROTO), 0);
	still_works(f);
}

/* A refused SET_FEATURES between negotiation and the rings: the negotiation stands. */
static void features_refused_before_rings(void **state)
{
	struct fe *f = *state;
	probe(f);
	assert_int_equal(ack_u64(f, SET_FEATURES, FB(MUST_TELL_HOST) | V1 | F_PROTO), 0);
	struct vmem m = table1();
	assert_int_equal(set_table(f, &m, &f->memfd, 1), 0);
	struct snap s = snap(f);
	assert_int_equal(ack_u64(f, SET_FEATURES, FB(MUST_TELL_HOST) | F_PROTO), 1); /* no VERSION_1 */
	assert_int_equal(ack_u64(f, SET_FEATURES, FB(MUST_TELL_HOST) | V1 | (1ull << 50)), 1);
	unchanged(f, &s);
	for (unsigned q = 0; q < NQ; q++) {
		memset(G(f, RING(q)), 0, 0x4000);
		ring_prepare(f, q, 0);
		ring_kick_fd(f, q);
		assert_int_equal(ack_state(f, SET_VRING_ENABLE, q, 1), 0);
	}
	struct mv_vhost_user_info vi;
	assert_int_equal(mv_vhost_user_info(f->vu, &vi), 0);
	assert_true(vi.running);
	still_works(f);
}

/* ---- memory that moves, a frontend that stops, goes away, or never reads ---- */

/* A new table that leaves the running rings outside RAM: the device needs a reset at
 * the next kick, and nothing outside the new table is touched. */
static void table_moves_under_rings(void **state)
{
	struct fe *f = *state;
	struct vmem m = { 1, 0, { { 1 << 20, 1 << 20, UA + (1 << 20), 1 << 20 } } };
	assert_int_equal(set_table(f, &m, &f->memfd, 1), 0);
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0);
	struct mv_balloon_info bi;
	assert_int_equal(mv_balloon_info(mv_vhost_user_balloon(f->vu), &bi), 0);
	assert_true(bi.needs_reset);
	assert_false(page_zero(f, pfn));
	assert_int_equal(used(f, 0), 0);
}

static void stops_mid_message(void **state)
{
	struct fe *f = *state;
	struct mv_vhost_user_info before, vi;
	assert_int_equal(mv_vhost_user_info(f->vu, &before), 0);
	/* five bytes of a header */
	uint8_t buf[12 + 40];
	struct hdr h = { SET_MEM_TABLE, VERSION | FL_NEED, 8 + 32 };
	struct vmem m = table1();
	memcpy(buf, &h, 12);
	memcpy(buf + 12, &m, 40);
	send_raw(f->sock, buf, 5, NULL, 0);
	dispatch_ok(f);
	no_reply(f);
	/* the rest of the header and part of the payload, with the table's descriptor */
	send_raw(f->sock, buf + 5, 20, &f->memfd, 1);
	dispatch_ok(f);
	dispatch_ok(f);
	no_reply(f);
	assert_int_equal(mv_vhost_user_info(f->vu, &vi), 0);
	assert_int_equal(vi.messages, before.messages);
	/* the rest: applied, acked */
	send_raw(f->sock, buf + 25, sizeof(buf) - 25, NULL, 0);
	dispatch_ok(f);
	uint64_t st = 9;
	reply(f, SET_MEM_TABLE, &st, 8);
	assert_int_equal(st, 0);
	still_works(f);
}

static void cut_then_closed(void **state)
{
	struct fe *f = *state;
	uint8_t buf[12 + 40];
	struct hdr h = { SET_MEM_TABLE, VERSION | FL_NEED, 8 + 32 };
	struct vmem m = table1();
	memcpy(buf, &h, 12);
	memcpy(buf + 12, &m, 40);
	int ev = eventfd(0, EFD_CLOEXEC);
	int fds[2] = { f->memfd, ev };
	send_raw(f->sock, buf, 30, fds, 2);
	close(ev);
	dispatch_ok(f);
	close(f->sock);
	f->sock = -1;
	assert_int_equal(dispatch(f), -ECONNRESET);
	struct mv_vhost_user_info vi;
	assert_int_equal(mv_vhost_user_info(f->vu, &vi), 0);
	assert_int_equal(vi.regions, 1); /* teardown: the half message's fds are closed too */
}

static void closed_between_messages(void **state)
{
	struct fe *f = *state;
	shutdown(f->sock, SHUT_WR);
	assert_int_equal(dispatch(f), -ECONNRESET);
}

static void never_reads_replies(void **state)
{
	struct fe *f = *state;
	int r = 0;
	unsigned i;
	for (i = 0; i < 100000 && r == 0; i++) {
		send_msg(f, GET_FEATURES, 0, NULL, 0, NULL, 0);
		r = dispatch(f);
	}
	assert_int_equal(r, -EPROTO);
	print_message("connection ended after %u unread replies\n", i);
}

/* The backend channel: a frontend that never reads it gets only whole messages (those
 * that do not fit are dropped); one that closes it costs the backend its end, without
 * SIGPIPE, and the device goes on. */
static void backend_channel_unread_or_closed(void **state)
{
	struct fe *f = *state;
	struct mv_balloon *b = mv_vhost_user_balloon(f->vu);
	for (unsigned i = 1; i <= 20000; i++)
		assert_int_equal(mv_balloon_set_target(b, (uint64_t)(i % 64) * TPAGE), 0);
	struct hdr h;
	uint8_t pl[64];
	unsigned n = 0;
	int r;
	while ((r = recv_msg(f->chan, &h, pl, sizeof(pl))) == 0) {
		assert_int_equal(h.req, 2 /* CONFIG_CHANGE */);
		assert_int_equal(h.flags, VERSION);
		n++;
	}
	print_message("%u whole config-change messages of 20000, then the channel was full\n", n);
	assert_true(n > 0 && n < 20000);
	struct sigaction sa = { .sa_handler = on_pipe }, old;
	sigaction(SIGPIPE, &sa, &old);
	sigpipes = 0;
	close(f->chan);
	f->chan = -1;
	long fds = tu_open_fds();
	assert_int_equal(mv_balloon_set_target(b, 3 * TPAGE), 0);
	assert_int_equal(mv_balloon_set_target(b, 4 * TPAGE), 0);
	sigaction(SIGPIPE, &old, NULL);
	assert_int_equal(sigpipes, 0);
	assert_int_equal(tu_open_fds(), fds - 1); /* the backend closed its end */
	still_works(f);
}

/* ---- the guest's ring is hostile, through the vhost-user transport ---- */

static void guest_ring_hostile(void **state)
{
	struct fe *f = *state;
	struct mv_balloon *b = mv_vhost_user_balloon(f->vu);
	struct mv_balloon_info bi;
	/* PFNs outside the guest's RAM: refused and counted, the buffer returned */
	uint32_t out[3] = { (uint32_t)(MEM / TPAGE), 0x100000, 0xffffffffu };
	push_pfns(f, 0, out, 3);
	kick(f, 0);
	assert_int_equal(used(f, 0), 1);
	assert_int_equal(mv_balloon_info(b, &bi), 0);
	assert_true(bi.guest_errors >= 3);
	assert_false(bi.needs_reset);
	assert_int_equal(bi.held_bytes, 0);
	/* a descriptor whose next is itself: NEEDS_RESET, told through a config change */
	push(f, 0, DATA, 4, 1 /* NEXT */, (uint16_t)(f->avail_idx[0] % NUM));
	kick(f, 0);
	assert_int_equal(mv_balloon_info(b, &bi), 0);
	assert_true(bi.needs_reset);
	struct hdr h;
	uint8_t pl[64];
	assert_int_equal(recv_msg(f->chan, &h, pl, sizeof(pl)), 0);
	assert_int_equal(h.req, B_CONFIG_CHANGE);
	/* the connection stays usable */
	assert_int_equal(get_u64(f, GET_FEATURES) & V1, V1);
	uint64_t errs = bi.guest_errors;
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0);
	assert_int_equal(mv_balloon_info(b, &bi), 0);
	assert_int_equal(bi.guest_errors, errs);
	assert_false(page_zero(f, pfn)); /* a device that needs a reset does nothing */
}

/* ---- runner ---- */

static int setup_bad(void **state)
{
	const void *arg = *state;
	setup(state);
	((struct fe *)*state)->arg = arg;
	return 0;
}

int main(void)
{
	static const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(payload_size_wrong, setup, teardown),
		cmocka_unit_test_setup_teardown(fds_wrong, setup, teardown),
		cmocka_unit_test_setup_teardown(mem_table_counts, setup, teardown),
		cmocka_unit_test_setup_teardown(mem_table_overlaps, setup, teardown),
		cmocka_unit_test_setup_teardown(mem_table_bad_regions, setup, teardown),
		cmocka_unit_test_setup_teardown(old_table_in_force, setup, teardown),
		cmocka_unit_test_setup_teardown(ring_addresses, setup, teardown),
		cmocka_unit_test_setup_teardown(ring_numbers, setup, teardown),
		cmocka_unit_test_setup_teardown(config_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(unknown_requests, setup, teardown),
		cmocka_unit_test_setup_teardown(features_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(features_refused_before_rings, setup_bare, teardown),
		cmocka_unit_test_setup_teardown(table_moves_under_rings, setup, teardown),
		cmocka_unit_test_setup_teardown(stops_mid_message, setup, teardown),
		cmocka_unit_test_setup_teardown(cut_then_closed, setup, teardown),
		cmocka_unit_test_setup_teardown(closed_between_messages, setup, teardown),
		cmocka_unit_test_setup_teardown(never_reads_replies, setup, teardown),
		cmocka_unit_test_setup_teardown(mem_table_refused_by_the_vm, setup, teardown),
		cmocka_unit_test_setup_teardown(backend_channel_unread_or_closed, setup, teardown),
		cmocka_unit_test_setup_teardown(guest_ring_hostile, setup, teardown),
	};
	int rc = cmocka_run_group_tests_name("vhost-user hostile frontend", tests, NULL, NULL);
	/* malformed messages: one fresh connection each, named after the case */
	unsigned n = sizeof(bad_msgs) / sizeof(bad_msgs[0]);
	struct CMUnitTest *t = calloc(n, sizeof(*t));
	assert_non_null(t);
	for (unsigned i = 0; i < n; i++)
		t[i] = (struct CMUnitTest){ .name = bad_msgs[i].name, .test_func = malformed,
		                            .setup_func = setup_bad, .teardown_func = teardown,
		                            .initial_state = &bad_msgs[i] };
	rc |= _cmocka_run_group_tests("vhost-user malformed messages", t, n, NULL, NULL);
	free(t);
	return rc;
}
