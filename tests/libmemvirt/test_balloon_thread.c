/* test_balloon_thread.c - the device's release thread over virtio-mmio, from several
 * threads at once: a deflate waits for queued releases without letting a reset (another
 * vCPU) pull its ring away, and its pages are the guest's again when it is answered.
 * Releases are slowed through the prim seam so that the windows are wide. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include <memvirt/balloon.h>
#include <memvirt/memvirt.h>

#include "internal.h"
#include "testutil.h"

#define RAM   (32ul << 20)
#define NUM   16u
#define DATA  (8ul << 20)
#define PAGES (16ul << 20)

static uint8_t *mem;
static struct mv_balloon *b;
static struct mv_prim slow;
static const struct mv_prim *orig;
static uint16_t aidx[2];

static int slow_dontneed(const struct iovec *iov, size_t n)
{
	usleep(200000);
	return orig->dontneed(iov, n);
}

static void irq(void *o, int q) { (void)o; (void)q; }

static uint64_t ring(unsigned q) { return (1ul << 20) * (q + 1); }

/* Queue one readable buffer of len bytes at gpa on queue q (descriptor = slot). */
static void post(unsigned q, uint64_t gpa, uint32_t len)
{
	uint8_t *r = mem + ring(q), *av = r + 4096;
	uint16_t slot = aidx[q] % NUM, zero = 0;
	memcpy(r + 16 * slot, &gpa, 8);
	memcpy(r + 16 * slot + 8, &len, 4);
	memcpy(r + 16 * slot + 12, &zero, 2);
	memcpy(av + 4 + 2 * slot, &slot, 2);
	aidx[q]++;
	__atomic_store_n((uint16_t *)(av + 2), aidx[q], __ATOMIC_RELEASE);
}

static uint16_t used_idx(unsigned q)
{
	return __atomic_load_n((uint16_t *)(mem + ring(q) + 8192 + 2), __ATOMIC_ACQUIRE);
}

static void bring_up(void)
{
	memset(mem + ring(0), 0, 2 * (1ul << 20));
	aidx[0] = aidx[1] = 0;
	mv_balloon_set_status(b, 1 | 2);
	assert_int_equal(mv_balloon_driver_features(b, 1ull << 32 | 1ull << MV_BALLOON_F_MUST_TELL_HOST), 0);
	mv_balloon_set_status(b, 1 | 2 | 8);
	for (unsigned q = 0; q < 2; q++) {
		struct mv_virtq_setup s = { NUM, ring(q), ring(q) + 4096, ring(q) + 8192 };
		assert_int_equal(mv_balloon_queue_setup(b, q, &s), 0);
	}
	assert_int_equal(mv_balloon_set_status(b, 1 | 2 | 8 | 4), 0);
}

static int setup(void **state)
{
	struct mv_host *h = tu_host();
	orig = h->prim;
	slow = *orig;
	slow.dontneed = slow_dontneed;
	h->prim = &slow;
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "release-thread";
	struct mv_vm *vm;
	assert_int_equal(mv_vm_new(h, &vc, &vm), 0);
	mem = mmap(NULL, RAM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(mem != MAP_FAILED);
	madvise(mem, RAM, MADV_NOHUGEPAGE);
	memset(mem, 0x5a, RAM);
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, RAM, MV_REGION_NEVER_MERGE), 0);
	static const struct mv_balloon_ops ops = { .interrupt = irq };
	struct mv_balloon_config cfg;
	mv_balloon_config_init(&cfg);
	cfg.ops = &ops;
	cfg.release_thread = true;
	assert_int_equal(mv_balloon_new(vm, &cfg, &b), 0);
	*state = h;
	return 0;
}

static int teardown(void **state)
{
	struct mv_host *h = *state;
	mv_balloon_free(b);
	h->prim = orig;
	mv_host_free(h); /* frees the VM */
	munmap(mem, RAM);
	return 0;
}

static void *deflater(void *arg)
{
	(void)arg;
	mv_balloon_queue_notify(b, 1);
	return NULL;
}

/* vCPU A notifies a deflate while a release is queued (it waits for it); vCPU B resets
 * the device meanwhile. A must not touch the ring the reset took away. */
static void reset_while_a_deflate_waits(void **state)
{
	for (unsigned round = 0; round < 8; round++) {
		bring_up();
		uint32_t pfn = (uint32_t)(PAGES >> 12) + round;
		memcpy(mem + DATA, &pfn, 4);
		post(0, DATA, 4);
		assert_int_equal(mv_balloon_queue_notify(b, 0), 0); /* answered, release queued */
		memcpy(mem + DATA + 4096, &pfn, 4);
		post(1, DATA + 4096, 4);
		pthread_t a;
		assert_int_equal(pthread_create(&a, NULL, deflater, NULL), 0);
		usleep(50000);
		assert_int_equal(mv_balloon_set_status(b, 0), 0);
		pthread_join(a, NULL);
		assert_int_equal(mv_balloon_get_status(b), 0);
	}
}

/* A deflate answered after the release of its page: the guest's write after the answer
 * stays. */
static void deflate_after_release(void **state)
{
	bring_up();
	uint32_t pfn = (uint32_t)(PAGES >> 12);
	memcpy(mem + DATA, &pfn, 4);
	post(0, DATA, 4);
	assert_int_equal(mv_balloon_queue_notify(b, 0), 0);
	assert_int_equal(used_idx(0), 1);
	memcpy(mem + DATA + 4096, &pfn, 4);
	post(1, DATA + 4096, 4);
	assert_int_equal(mv_balloon_queue_notify(b, 1), 0);
	assert_int_equal(used_idx(1), 1);
	memset(mem + PAGES, 0xcd, 4096);
	usleep(400000);
	assert_int_equal(mem[PAGES], 0xcd);
	struct mv_balloon_info bi;
	assert_int_equal(mv_balloon_info(b, &bi), 0);
	assert_int_equal(bi.released_bytes, 4096);
	assert_int_equal(bi.held_bytes, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(reset_while_a_deflate_waits, setup, teardown),
		cmocka_unit_test_setup_teardown(deflate_after_release, setup, teardown),
	};
	return cmocka_run_group_tests_name("balloon release thread", tests, NULL, NULL);
}
