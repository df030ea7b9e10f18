/* test_vhost_user_threads.c - the device's release thread and the connection's call
 * thread against a frontend that misbehaves: a stopped device releases nothing after the
 * stop, a deflate is not answered before its pages' releases are done, and a call
 * descriptor the frontend makes block stalls no dispatch. Releases are slowed through the
 * prim seam so that the windows are wide. */
#include "vufront.h"
#include "internal.h"

#include <poll.h>

static struct mv_prim slow;
static const struct mv_prim *orig;

static int slow_remove(void *addr, size_t len)
{
	usleep(200000);
	return orig->remove(addr, len);
}

static int setup_threads(void **state)
{
	fe_opts.release_thread = fe_opts.call_thread = true;
	struct fe *f = fe_new(false);
	fe_opts.release_thread = fe_opts.call_thread = false;
	orig = f->h->prim;
	slow = *orig;
	slow.remove = slow_remove;
	f->h->prim = &slow;
	handshake(f, FB(MUST_TELL_HOST));
	*state = f;
	return 0;
}

/* Wait (bounded) for a call on ring q: the call thread delivers it. */
static bool call_arrives(struct fe *f, unsigned q)
{
	struct pollfd p = { .fd = f->call[q], .events = POLLIN };
	return poll(&p, 1, 3000) == 1 && calls(f, q) >= 1;
}

/* GET_VRING_BASE on every ring: the device is stopped, and what inflates left queued is
 * released before the answers; the guest's memory is the frontend's again afterwards. */
static void stopped_device_releases_nothing_after(void **state)
{
	struct fe *f = *state;
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0);
	assert_int_equal(used(f, 0), 1); /* answered at once; the release is queued */
	assert_true(call_arrives(f, 0));
	for (unsigned q = 0; q < NQ; q++) {
		struct vstate s = { q, 0 }, r;
		send_msg(f, GET_VRING_BASE, 0, &s, sizeof(s), NULL, 0);
		dispatch_ok(f);
		reply(f, GET_VRING_BASE, &r, sizeof(r));
	}
	assert_true(page_zero(f, pfn)); /* released before the stop was answered */
	memset(G(f, (uint64_t)pfn * TPAGE), 0xbb, TPAGE); /* e.g. a new guest */
	usleep(500000);
	assert_int_equal(*(volatile uint8_t *)G(f, (uint64_t)pfn * TPAGE), 0xbb);
}

/* Inflate then deflate the same page at once: the deflate is answered only after the
 * queued release, so the guest's write after the answer stays. */
static void deflate_answered_after_the_release(void **state)
{
	struct fe *f = *state;
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0);
	assert_int_equal(used(f, 0), 1);
	push_pfns(f, 1, &pfn, 1);
	kick(f, 1);
	assert_int_equal(used(f, 1), 1);
	memset(G(f, (uint64_t)pfn * TPAGE), 0xcd, TPAGE); /* the guest uses its page again */
	usleep(500000);
	assert_int_equal(*(volatile uint8_t *)G(f, (uint64_t)pfn * TPAGE), 0xcd);
	struct mv_balloon_info bi;
	assert_int_equal(mv_balloon_info(mv_vhost_user_balloon(f->vu), &bi), 0);
	assert_int_equal(bi.held_bytes, 0);
	assert_int_equal(bi.released_bytes, TPAGE);
}

/* The frontend clears O_NONBLOCK on the call eventfd it shares with the backend and fills
 * its counter: with the call thread, the write that blocks is that thread's; dispatch,
 * the device and teardown go on. */
static void blocking_call_fd_stalls_only_the_call_thread(void **state)
{
	struct fe *f = *state;
	assert_int_equal(fcntl(f->call[0], F_SETFL, 0), 0);
	uint64_t big = 0xfffffffffffffffeull;
	assert_int_equal(write(f->call[0], &big, 8), 8);
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0); /* dispatch under alarm(): fails if it blocks */
	assert_int_equal(used(f, 0), 1);
	usleep(100000); /* the call thread is now stuck in its write */
	pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	kick(f, 0);
	assert_int_equal(used(f, 0), 1);
	struct mv_balloon_info bi;
	assert_int_equal(mv_balloon_info(mv_vhost_user_balloon(f->vu), &bi), 0);
	assert_int_equal(bi.inflated_bytes, 2 * TPAGE);
}

int main(void)
{
	static const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(stopped_device_releases_nothing_after, setup_threads,
		                                teardown),
		cmocka_unit_test_setup_teardown(deflate_answered_after_the_release, setup_threads,
		                                teardown),
		cmocka_unit_test_setup_teardown(blocking_call_fd_stalls_only_the_call_thread,
		                                setup_threads, teardown),
	};
	return cmocka_run_group_tests_name("vhost-user with the release and call threads", tests,
	                                   NULL, NULL);
}
