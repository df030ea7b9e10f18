/* test_vhost_user.c - the vhost-user balloon backend driven the way virtio_uml drives it,
 * by the fake frontend of vufront.h: handshake, an inflate through a real split ring in
 * the memfd (host memory released, used ring, call eventfd), config reads and target
 * changes, a ring stopped by GET_VRING_BASE and resumed at its base, in-band
 * notifications, two memory regions, a device reset; and notification descriptors that
 * would make a careless backend wait or die of SIGPIPE (tests/libmemvirt/
 * test_vhost_user_hostile.c has the hostile frontend's messages). */
#include "vufront.h"

/* ---- the happy path ---- */

/* The table in force sent again (QEMU does on every start): the balloon is kept, the new
 * descriptors are not kept open. */
static void same_table_keeps_the_balloon(void **state)
{
	struct fe *f = *state;
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0);
	assert_int_equal(used(f, 0), 1);
	long fds = tu_open_fds();
	struct vmem m = table1();
	assert_int_equal(set_table(f, &m, &f->memfd, 1), 0);
	assert_int_equal(tu_open_fds(), fds);
	struct mv_balloon_info bi;
	assert_int_equal(mv_balloon_info(mv_vhost_user_balloon(f->vu), &bi), 0);
	assert_int_equal(bi.held_bytes, TPAGE);
	push_pfns(f, 1, &pfn, 1);
	kick(f, 1);
	assert_int_equal(used(f, 1), 1);
	assert_int_equal(mv_balloon_info(mv_vhost_user_balloon(f->vu), &bi), 0);
	assert_int_equal(bi.held_bytes, 0);
	assert_int_equal(bi.guest_errors, 0); /* the page was still known to be ballooned */
}

static void inflate_releases(void **state)
{
	struct fe *f = *state;
	uint32_t pfn[16];
	for (unsigned i = 0; i < 16; i++)
		pfn[i] = victim(f);
	push_pfns(f, 0, pfn, 16);
	uint64_t before = file_bytes(f);
	assert_true(before >= 16 * TPAGE);
	kick(f, 0);
	assert_int_equal(used(f, 0), 1);
	assert_int_equal(calls(f, 0), 1);
	assert_true(file_bytes(f) <= before - 16 * TPAGE);
	for (unsigned i = 0; i < 16; i++)
		assert_true(page_zero(f, pfn[i]));
	struct mv_balloon_info bi;
	assert_int_equal(mv_balloon_info(mv_vhost_user_balloon(f->vu), &bi), 0);
	assert_int_equal(bi.inflated_bytes, 16 * TPAGE);
	assert_int_equal(bi.held_bytes, 16 * TPAGE);
	assert_true(bi.released_bytes >= 16 * TPAGE);
	/* deflate: the pages come back (they read zero), the buffer is returned */
	push_pfns(f, 1, pfn, 16);
	kick(f, 1);
	assert_int_equal(used(f, 1), 1);
	assert_int_equal(calls(f, 1), 1);
	assert_int_equal(mv_balloon_info(mv_vhost_user_balloon(f->vu), &bi), 0);
	assert_int_equal(bi.held_bytes, 0);
	struct mv_vhost_user_info vi;
	assert_int_equal(mv_vhost_user_info(f->vu, &vi), 0);
	assert_int_equal(vi.bad_messages, 0);
	assert_true(vi.kicks >= 2 && vi.calls >= 2);
	assert_int_equal(vi.file_bytes, file_bytes(f));
}

static void config_and_target(void **state)
{
	struct fe *f = *state;
	struct mv_balloon *b = mv_vhost_user_balloon(f->vu);
	/* virtio_uml reads offset 0 and offset + len bytes: exactly that size comes back */
	struct vcfg c = { 0, 8, 0, { 0 } }, r;
	send_msg(f, GET_CONFIG, FL_NEED, &c, 12 + 8, NULL, 0);
	dispatch_ok(f);
	reply(f, GET_CONFIG, &r, 12 + 8);
	assert_int_equal(config_u32(f, 0), 0);
	/* a new target: a config-change message on the backend channel, no reply wanted */
	assert_int_equal(mv_balloon_set_target(b, 64 * TPAGE), 0);
	struct hdr h;
	uint8_t pl[64];
	assert_int_equal(recv_msg(f->chan, &h, pl, sizeof(pl)), 0);
	assert_int_equal(h.req, B_CONFIG_CHANGE);
	assert_int_equal(h.flags & FL_NEED, 0);
	assert_int_equal(recv_msg(f->chan, &h, pl, sizeof(pl)), -1);
	assert_int_equal(config_u32(f, 0), 64);
	/* the driver answers with actual */
	struct vcfg w = { 4, 4, 0, { 0 } };
	uint32_t actual = htole32(64);
	memcpy(w.data, &actual, 4);
	assert_int_equal(ack(f, SET_CONFIG, &w, 12 + 4, NULL, 0), 0);
	struct mv_balloon_info bi;
	assert_int_equal(mv_balloon_info(b, &bi), 0);
	assert_int_equal(bi.actual_bytes, 64 * TPAGE);
	assert_int_equal(config_u32(f, 4), 64);
}

static void vring_base_resumes(void **state)
{
	struct fe *f = *state;
	still_works(f);
	still_works(f);
	/* GET_VRING_BASE stops the ring: the reply says where it resumes */
	struct vstate s = { 0, 0 }, r;
	send_msg(f, GET_VRING_BASE, 0, &s, sizeof(s), NULL, 0);
	dispatch_ok(f);
	reply(f, GET_VRING_BASE, &r, sizeof(r));
	assert_int_equal(r.index, 0);
	assert_int_equal(r.num, 2);
	/* queued while stopped (and the old kick fd written): nothing happens */
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	uint64_t one = 1;
	assert_int_equal(write(f->kick[0], &one, 8), 8);
	dispatch_ok(f);
	assert_int_equal(used(f, 0), 0);
	assert_false(page_zero(f, pfn));
	/* set up again at the base: the queued request is taken */
	assert_int_equal(ack_state(f, SET_VRING_BASE, 0, r.num), 0);
	assert_int_equal(addr_ack(f, 0, UA + RING(0), UA + RING(0) + 0x1000, UA + RING(0) + 0x2000), 0);
	ring_kick_fd(f, 0);
	assert_int_equal(used(f, 0), 1);
	assert_true(page_zero(f, pfn));
	assert_int_equal(*(uint16_t *)G(f, RING(0) + 0x2002), 3);
	still_works(f);
}

static void inband_notifications(void **state)
{
	struct fe *f = *state;
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0); /* a VRING_KICK message, acked */
	assert_int_equal(used(f, 0), 1);
	assert_true(page_zero(f, pfn));
	struct hdr h;
	struct vstate st;
	assert_int_equal(recv_msg(f->chan, &h, &st, sizeof(st)), sizeof(st));
	assert_int_equal(h.req, B_VRING_CALL);
	assert_int_equal(st.index, 0);
	assert_int_equal(recv_msg(f->chan, &h, &st, sizeof(st)), -1);
	struct mv_vhost_user_info vi;
	assert_int_equal(mv_vhost_user_info(f->vu, &vi), 0);
	assert_int_equal(vi.calls, 1);
	/* a kick for a queue out of range is refused */
	assert_int_equal(ack_state(f, VRING_KICK, 5, 0), 1);
}

/* Two regions, the second from an unsealed memfd: both mapped and counted. */
static void two_regions_unsealed(void **state)
{
	struct fe *f = *state;
	int fd2 = memfd_create("guest2", MFD_CLOEXEC);
	assert_true(fd2 >= 0);
	assert_int_equal(ftruncate(fd2, 1 << 20), 0);
	struct vmem m = { 2, 0, { { 0, MEM, UA, 0 }, { 8 << 20, 1 << 20, UA + (8 << 20), 0 } } };
	int fds[2] = { f->memfd, fd2 };
	assert_int_equal(set_table(f, &m, fds, 2), 0);
	close(fd2);
	struct mv_vhost_user_info vi;
	assert_int_equal(mv_vhost_user_info(f->vu, &vi), 0);
	assert_int_equal(vi.regions, 2);
	assert_int_equal(vi.ram_bytes, MEM + (1 << 20));
	still_works(f);
}

/* Memory hot-plug as QEMU sends it: a new table with the old region and one more, then
 * without it. The region both tables have keeps its balloon; the new one comes and goes
 * and its descriptors with it. */
static void hotplug_keeps_the_balloon(void **state)
{
	struct fe *f = *state;
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0);
	assert_int_equal(used(f, 0), 1);
	long fds = tu_open_fds(), maps = tu_memfd_mappings();
	int fd2 = memfd_create("hotplug", MFD_CLOEXEC);
	assert_true(fd2 >= 0);
	assert_int_equal(ftruncate(fd2, 1 << 20), 0);
	struct vmem two = { 2, 0, { { 0, MEM, UA, 0 }, { 8 << 20, 1 << 20, UA + (8 << 20), 0 } } };
	int fds2[2] = { f->memfd, fd2 };
	assert_int_equal(set_table(f, &two, fds2, 2), 0);
	close(fd2);
	assert_int_equal(tu_memfd_mappings(), maps + 1); /* the old region is not mapped again */
	struct vmem one = table1();
	assert_int_equal(set_table(f, &one, &f->memfd, 1), 0);
	assert_int_equal(tu_open_fds(), fds);
	assert_int_equal(tu_memfd_mappings(), maps);
	struct mv_balloon_info bi;
	assert_int_equal(mv_balloon_info(mv_vhost_user_balloon(f->vu), &bi), 0);
	assert_int_equal(bi.held_bytes, TPAGE);
	push_pfns(f, 1, &pfn, 1);
	kick(f, 1);
	assert_int_equal(used(f, 1), 1);
	assert_int_equal(mv_balloon_info(mv_vhost_user_balloon(f->vu), &bi), 0);
	assert_int_equal(bi.held_bytes, 0);
	assert_int_equal(bi.guest_errors, 0);
	still_works(f);
}

/* RESET_DEVICE: the rings and their descriptors go, the memory table stays; the
 * frontend negotiates again and the device runs again. */
static void reset_and_again(void **state)
{
	struct fe *f = *state;
	still_works(f);
	assert_int_equal(ack(f, RESET_DEVICE, NULL, 0, NULL, 0), 0);
	struct mv_vhost_user_info vi;
	assert_int_equal(mv_vhost_user_info(f->vu, &vi), 0);
	assert_false(vi.running);
	assert_int_equal(vi.regions, 1);
	assert_int_equal(mv_balloon_get_status(mv_vhost_user_balloon(f->vu)), 0);
	assert_int_equal(ack_u64(f, SET_FEATURES, FB(MUST_TELL_HOST) | FB(STATS_VQ) | V1 | F_PROTO), 0);
	memset(f->avail_idx, 0, sizeof(f->avail_idx));
	memset(f->last_used, 0, sizeof(f->last_used));
	for (unsigned q = 0; q < NQ; q++) {
		memset(G(f, RING(q)), 0, 0x4000);
		close(f->call[q]);
		ring_prepare(f, q, 0);
		ring_kick_fd(f, q);
		assert_int_equal(ack_state(f, SET_VRING_ENABLE, q, 1), 0);
	}
	assert_int_equal(mv_vhost_user_info(f->vu, &vi), 0);
	assert_false(vi.running); /* the stats queue is missing */
	int call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), kickfd = eventfd(0, EFD_CLOEXEC);
	memset(G(f, RING(2)), 0, 0x4000);
	assert_int_equal(ack_fd(f, SET_VRING_CALL, 2, call), 0);
	assert_int_equal(ack_state(f, SET_VRING_NUM, 2, NUM), 0);
	assert_int_equal(addr_ack(f, 2, UA + RING(2), UA + RING(2) + 0x1000, UA + RING(2) + 0x2000), 0);
	assert_int_equal(ack_fd(f, SET_VRING_KICK, 2, kickfd), 0);
	close(call);
	close(kickfd);
	assert_int_equal(mv_vhost_user_info(f->vu, &vi), 0);
	assert_true(vi.running);
	still_works(f);
}

/* ---- notification descriptors the frontend controls ---- */

/* virtio_uml's call fd is a unix socket: 8 bytes arrive per interrupt. */
static void call_fd_socket(void **state)
{
	struct fe *f = *state;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(ack_fd(f, SET_VRING_CALL, 0, sv[1]), 0);
	close(sv[1]);
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0);
	assert_int_equal(used(f, 0), 1);
	uint64_t v = 0;
	assert_int_equal(recv(sv[0], &v, 8, MSG_DONTWAIT), 8);
	assert_int_equal(v, 1);
	close(sv[0]); /* the reader gone: no SIGPIPE, the backend goes on */
	struct sigaction sa = { .sa_handler = on_pipe }, old;
	sigaction(SIGPIPE, &sa, &old);
	sigpipes = 0;
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0);
	sigaction(SIGPIPE, &old, NULL);
	assert_int_equal(used(f, 0), 1);
	assert_int_equal(sigpipes, 0);
}

/* Notifications to fds that would block or raise SIGPIPE: the backend must do neither. */
static void call_fd_full(void **state)
{
	struct fe *f = *state;
	int call = eventfd(0, EFD_CLOEXEC); /* blocking, its counter at its limit */
	uint64_t max = 0xfffffffffffffffeull;
	assert_int_equal(write(call, &max, 8), 8);
	assert_int_equal(ack_fd(f, SET_VRING_CALL, 0, call), 0);
	close(f->call[0]);
	f->call[0] = call;
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0);
	assert_int_equal(used(f, 0), 1);
	assert_true(page_zero(f, pfn));
}

static void call_fd_broken_pipe(void **state)
{
	struct fe *f = *state;
	struct sigaction sa = { .sa_handler = on_pipe }, old;
	sigaction(SIGPIPE, &sa, &old);
	sigpipes = 0;
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	assert_int_equal(ack_fd(f, SET_VRING_CALL, 0, p[1]), 0);
	close(p[0]);
	close(p[1]);
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0);
	sigaction(SIGPIPE, &old, NULL);
	assert_int_equal(used(f, 0), 1);
	assert_int_equal(sigpipes, 0);
	/* a pipe nobody reads, shrunk to one page: calls stop, the backend goes on */
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	assert_true(fcntl(p[1], F_SETPIPE_SZ, 4096) >= 0);
	assert_int_equal(ack_fd(f, SET_VRING_CALL, 0, p[1]), 0);
	close(p[1]);
	for (unsigned i = 0; i < 600; i++) {
		push_pfns(f, 0, &pfn, 1);
		kick(f, 0);
		assert_int_equal(used(f, 0), 1);
	}
	close(p[0]);
}

/* A kick fd replaced while its old one is ready: the stale event must not read the new
 * one (a blocking eventfd with nothing in it) and wait. */
static void kick_fd_replaced_while_ready(void **state)
{
	struct fe *f = *state;
	int fresh = eventfd(0, EFD_CLOEXEC); /* blocking */
	uint64_t v = 0;
	send_msg(f, SET_VRING_KICK, 0, &v, 8, &fresh, 1);
	uint64_t one = 1;
	assert_int_equal(write(f->kick[0], &one, 8), 8);
	dispatch_ok(f);
	close(f->kick[0]);
	f->kick[0] = fresh;
	still_works(f);
}

/* A kick pipe whose writer went away: read at its end once, then no longer watched (the
 * backend's fd would otherwise stay readable and spin the caller's loop). */
static void kick_fd_hung_up(void **state)
{
	struct fe *f = *state;
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	uint64_t v = 1;
	assert_int_equal(ack(f, SET_VRING_KICK, &v, 8, &p[0], 1), 0);
	close(p[0]);
	assert_int_equal(write(p[1], "k", 1), 1);
	dispatch_ok(f);
	close(p[1]);
	dispatch_ok(f);
	dispatch_ok(f);
	struct pollfd pf = { .fd = mv_vhost_user_fd(f->vu), .events = POLLIN };
	assert_int_equal(poll(&pf, 1, 0), 0);
	still_works(f);
}

int main(void)
{
	static const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(inflate_releases, setup, teardown),
		cmocka_unit_test_setup_teardown(same_table_keeps_the_balloon, setup, teardown),
		cmocka_unit_test_setup_teardown(hotplug_keeps_the_balloon, setup, teardown),
		cmocka_unit_test_setup_teardown(config_and_target, setup, teardown),
		cmocka_unit_test_setup_teardown(vring_base_resumes, setup, teardown),
		cmocka_unit_test_setup_teardown(inband_notifications, setup_inband, teardown),
		cmocka_unit_test_setup_teardown(two_regions_unsealed, setup, teardown),
		cmocka_unit_test_setup_teardown(reset_and_again, setup, teardown),
		cmocka_unit_test_setup_teardown(call_fd_socket, setup, teardown),
		cmocka_unit_test_setup_teardown(call_fd_full, setup, teardown),
		cmocka_unit_test_setup_teardown(call_fd_broken_pipe, setup, teardown),
		cmocka_unit_test_setup_teardown(kick_fd_replaced_while_ready, setup, teardown),
		cmocka_unit_test_setup_teardown(kick_fd_hung_up, setup, teardown),
	};
	return cmocka_run_group_tests_name("vhost-user backend", tests, NULL, NULL);
}
