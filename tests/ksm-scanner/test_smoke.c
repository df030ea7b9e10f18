#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include <memvirt/memvirt.h>
#include "testutil.h"

static void smoke(void **state)
{
	struct mv_host *h = tu_host();
	struct mv_vm *vm;
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "a";
	assert_int_equal(mv_vm_new(h, &vc, &vm), 0);
	size_t n = 2048;
	uint8_t *g = tu_guest_alloc(n);
	for (size_t i = 0; i < n; i++)
		tu_fill(g + i * TPAGE, i % 3 == 0 ? 0 : (i % 5 == 0 ? 77 : i + 1000));
	assert_int_equal(mv_vm_region_add(vm, 0, 0, g, n * TPAGE, 0), 0);
	assert_int_equal(mv_host_scan(h, 2), 0);
	struct mv_scan_stats st;
	mv_host_stats(h, &st);
	printf("scanned %lu shared %lu sharing %lu merged %lu zero %lu vmas %lu\n", st.pages_scanned,
	       st.pages_shared, st.pages_sharing, st.pages_merged, st.pages_zero, st.vmas_used);
	printf("pfn 5 %lx pfn 10 %lx pfn 7 %lx\n", tu_pfn(g + 5 * TPAGE), tu_pfn(g + 10 * TPAGE), tu_pfn(g + 7 * TPAGE));
	mv_vm_free(vm);
	mv_host_free(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = { cmocka_unit_test(smoke) };
	return cmocka_run_group_tests(tests, NULL, NULL);
}
