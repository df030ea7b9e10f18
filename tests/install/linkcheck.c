/* linkcheck.c - a program as a VMM developer writes it against the installed libmemvirt:
 * a host, a VM with one region, a balloon and a policy engine, run for a moment; the
 * scanner merges the region's copies (the page hash of the library as installed).
 * Built by test_install.sh with pkg-config only, shared and static, as C and as C++.
 * Exit 0 = worked, 77 = the kernel cannot run memvirt here (skip), else failed. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <memvirt/memvirt.h>
#include <memvirt/balloon.h>

#define RAM_SIZE (8u << 20)

static unsigned interrupts;

static void on_interrupt(void *opaque, int queue)
{
	(void)opaque; (void)queue;
	interrupts++;
}

static int fail(int line)
{
	fprintf(stderr, "linkcheck.c:%d: check failed\n", line);
	return 1;
}

#define CHECK(call) do { int rc_ = (call); if (rc_ < 0) { \
	fprintf(stderr, "%s: %s\n", #call, mv_strerror(rc_)); return 1; } } while (0)

int main(void)
{
	struct mv_host_config hc;
	mv_host_config_init(&hc);
	hc.settle_ms = 0; /* a page may merge on the pass after it was first seen */
	struct mv_host *host;
	int rc = mv_host_new(&hc, &host);
	if (rc == -ENOSYS || rc == -EPERM) {
		fprintf(stderr, "mv_host_new: %s (skip)\n", mv_strerror(rc));
		return 77;
	}
	CHECK(rc);
	if (strcmp(mv_version(), MV_VERSION_STRING) != 0) {
		fprintf(stderr, "header %s, library %s\n", MV_VERSION_STRING, mv_version());
		return 1;
	}

	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "linkcheck";
	struct mv_vm *vm;
	CHECK(mv_vm_new(host, &vc, &vm));
	uint8_t *ram = (uint8_t *)mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE,
	                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ram == MAP_FAILED)
		return fail(__LINE__);
	for (unsigned i = 0; i < RAM_SIZE; i += 4096)
		ram[i] = (uint8_t)(i >> 12 & 3); /* four distinct pages, many times */
	CHECK(mv_vm_region_add(vm, 0, 0, ram, RAM_SIZE, 0));
	if (mv_vm_gpa_to_hva(vm, 0x3000, 4096) != ram + 0x3000)
		return fail(__LINE__);

	struct mv_balloon_ops ops;
	memset(&ops, 0, sizeof(ops));
	ops.interrupt = on_interrupt;
	struct mv_balloon_config bc;
	mv_balloon_config_init(&bc);
	bc.ops = &ops;
	struct mv_balloon *balloon;
	CHECK(mv_balloon_new(vm, &bc, &balloon));
	uint32_t magic = 0;
	CHECK(mv_balloon_mmio_read(balloon, 0, &magic, 4));
	if (magic != 0x74726976) /* "virt" */
		return fail(__LINE__);

	struct mv_policy_config pc;
	mv_policy_config_init(&pc);
	pc.host = host;
	struct mv_policy *policy;
	CHECK(mv_policy_new(&pc, &policy));
	CHECK(mv_policy_attach(policy, "linkcheck", vm, balloon));
	CHECK(mv_policy_tick(policy, NULL));
	CHECK(mv_balloon_set_target(balloon, 1u << 20));
	struct mv_balloon_info bi;
	CHECK(mv_balloon_info(balloon, &bi));
	if (bi.target_bytes != 1u << 20 || interrupts != 0) /* no driver yet: no interrupt */
		return fail(__LINE__);

	CHECK(mv_host_scan(host, 3));
	struct mv_scan_stats st;
	CHECK(mv_vm_stats(vm, &st));
	CHECK(mv_host_start(host));
	CHECK(mv_host_stop(host));
	for (unsigned i = 0; i < RAM_SIZE; i += 4096)
		if (ram[i] != (uint8_t)(i >> 12 & 3))
			return fail(__LINE__);
	if (st.pages_merged + st.pages_zero < RAM_SIZE / 4096 / 2) /* 3 of 4 pages are copies */
		return fail(__LINE__);
	printf("ok: %llu pages scanned, %llu merged, %llu zero\n",
	       (unsigned long long)st.pages_scanned, (unsigned long long)st.pages_merged,
	       (unsigned long long)st.pages_zero);

	/* A link to a host daemon that is not there: made, VM added and removed, freed. */
	struct mv_attach *link;
	CHECK(mv_host_attach(host, "/nonexistent/memvirt-agent.sock", NULL, &link));
	CHECK(mv_attach_add_vm(link, "linkcheck", vm, balloon));
	CHECK(mv_attach_remove_vm(link, "linkcheck"));
	mv_attach_free(link);

	mv_policy_free(policy);
	mv_balloon_free(balloon);
	mv_vm_free(vm);
	mv_host_free(host);
	munmap(ram, RAM_SIZE);
	return 0;
}
