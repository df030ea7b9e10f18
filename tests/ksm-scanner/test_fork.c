/* test_fork.c - a child of the VMM never sees another page's data through merged guest
 * RAM: registered guest RAM is not inherited (MADV_DONTFORK), as QEMU does for its RAM. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <memvirt/memvirt.h>
#include "ksm.h"
#include "testutil.h"

#define PAGES 512 /* one chunk */

/* What the child found where the merged pages were. */
enum { CHILD_UNMAPPED = 0, CHILD_CHANGED = 1, CHILD_SAME = 2, CHILD_NO_SIGNAL = 3 };

static uint64_t seed_of(size_t i)
{
	return i < 2 ? 7 : 1000 + i; /* pages 0 and 1 are duplicates, the rest unique */
}

/* The child: wait for the parent, then look at pages [0, 2) without faulting on them. */
static void child_main(int rfd, const uint8_t *mem)
{
	alarm(20); /* never outlive a parent that failed before letting us go */
	char go;
	if (read(rfd, &go, 1) != 1)
		_exit(CHILD_NO_SIGNAL);
	unsigned char vec[2];
	if (mincore((void *)mem, 2 * TPAGE, vec) && errno == ENOMEM)
		_exit(CHILD_UNMAPPED);
	uint8_t want[TPAGE];
	tu_fill(want, seed_of(0));
	bool same = !memcmp(mem, want, TPAGE) && !memcmp(mem + TPAGE, want, TPAGE);
	_exit(same ? CHILD_SAME : CHILD_CHANGED);
}

/* Two merged duplicates; fork; the parent writes both (copy-on-write breaks, the canonical
 * page is freed and its store slot punched). The child must not read changed bytes
 * there: it finds no mapping at all. */
static void child_does_not_inherit_merged_memory(void **state)
{
	struct mv_host *h = tu_host();
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "fork";
	struct mv_vm *vm;
	assert_int_equal(mv_vm_new(h, &vc, &vm), 0);
	uint8_t *mem = tu_guest_alloc(PAGES);
	for (size_t i = 0; i < PAGES; i++)
		tu_fill(mem + i * TPAGE, seed_of(i));
	assert_int_equal(mv_vm_region_add(vm, 0, 0, mem, PAGES * TPAGE, 0), 0);
	assert_int_equal(mv_host_scan(h, 3), 0);
	struct mv_region *r = rcu_dereference(vm->map)->r[0]; /* nobody changes the map here */
	assert_int_equal(r->pages[0].state, PS_MERGED);
	assert_int_equal(r->pages[1].state, PS_MERGED);

	int p[2];
	assert_int_equal(pipe(p), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[1]);
		child_main(p[0], mem);
	}
	close(p[0]);
	memset(mem, 0xee, 2 * TPAGE); /* both copy-on-write breaks */
	assert_int_equal(mv_host_scan(h, 2), 0);
	struct mv_scan_stats st;
	mv_host_stats(h, &st);
	assert_int_equal(st.pages_shared, 0); /* the canonical page is gone */
	assert_int_equal(write(p[1], "g", 1), 1);
	close(p[1]);
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), CHILD_UNMAPPED);
	assert_int_equal(mem[0], 0xee);

	mv_vm_free(vm);
	mv_host_free(h);
	tu_guest_free(mem, PAGES);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(child_does_not_inherit_merged_memory),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
