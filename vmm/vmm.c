/* vmm.c - memvirt's reference VMM: a minimal KVM VMM that shows every seam a VMM
 * developer wires to libmemvirt.
 *
 * Overview
 *
 *   guest RAM      one anonymous private mapping, registered twice with the same
 *                  numbers: as KVM memslot 0 (KVM_SET_USER_MEMORY_REGION) and as memvirt
 *                  region 0 (mv_vm_region_add). Merging and ballooning work on it while
 *                  the vCPU runs: KVM's MMU notifier drops its mapping of a page the
 *                  library replaces, and the vCPU faults the new one in.
 *   the vCPU       one thread in KVM_RUN. Port 0x3f8 is the serial console; MMIO exits in
 *                  the balloon's window go to mv_balloon_mmio_read/write.
 *   QueueNotify    never exits to this process: an ioeventfd per queue (KVM_IOEVENTFD with
 *                  the queue number as datamatch) wakes the I/O thread, which calls
 *                  mv_balloon_queue_notify(), again while it returns 1 (its work budget).
 *   the interrupt  the device's ops->interrupt writes an irqfd (KVM_IRQFD) bound to the
 *                  in-kernel irqchip's line MMIO_GSI; InterruptStatus is kept by the
 *                  library.
 *   the scanner    mv_host_start(): background workers share the guest's duplicate pages.
 *   the target     --target SIZE[,SIZE...]: set one after the other, each once the guest
 *                  reached the one before and checked its memory; or --policy FILE: the
 *                  policy engine ticks every period_ms in the main thread (its decision
 *                  records to --decisions FILE, for `memvirt explain`).
 *
 * The guest is a PVH ELF kernel (--kernel; balloon-driver/pvh/ builds one): loaded at its
 * physical addresses, entered in 32-bit protected mode with %ebx = struct hvm_start_info,
 * which carries the memory map and the command line, where the device is announced as
 * Linux expects it: virtio_mmio.device=512@0xd0000000:5.
 *
 * Lines of its own start with "vmm:"; the guest's console lines with "guest: ".
 * Exit status: 0 when the scenario completed, 1 on error or timeout, 2 on bad usage,
 * 77 when /dev/kvm or the kernel's userfaultfd features are missing (skip).
 *
 * Here: options, memvirt's objects, the scenario and main; the KVM side (VM, memslot,
 * irqfd and ioeventfds, PVH loading, the vCPU and I/O threads) is kvm.c.
 */
#include "vmm.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("vmm: ");
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
	va_end(ap);
}

/* ---- memvirt: the log hook, the host and the VM ---- */

static void on_log(void *opaque, enum mv_log_level level, const char *msg)
{
	if (level <= MV_LOG_WARN)
		fprintf(stderr, "vmm: memvirt: %s\n", msg);
}

static int memvirt_setup(struct vmm *v)
{
	struct mv_host_config hc;
	mv_host_config_init(&hc);
	hc.log = on_log;
	hc.log_opaque = v;
	if (v->o.settle_ms)
		hc.settle_ms = v->o.settle_ms;
	int rc = mv_host_new(&hc, &v->host);
	if (rc)
		return rc;
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "guest0";
	return mv_vm_new(v->host, &vc, &v->vm);
}

/* ---- the scenario (main thread) ---- */

/* Guest RAM resident on the host, in MiB (mincore). */
static double ram_rss_mib(const struct vmm *v)
{
	size_t n = v->o.mem / PAGE, resident = 0;
	unsigned char *vec = malloc(n);
	if (!vec || mincore(v->ram, v->o.mem, vec) < 0) {
		free(vec);
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		resident += vec[i] & 1;
	free(vec);
	return (double)resident * PAGE / MIB;
}

/* Wait up to the deadline for the guest to check its memory at `pages` after `after`
 * checks; while waiting, tick the policy engine if there is one. */
static bool wait_check(struct vmm *v, uint64_t after, uint64_t pages, uint64_t deadline)
{
	bool ok = false;
	pthread_mutex_lock(&v->lock);
	while (!v->guest_failed && !v->guest_stopped && now_ns() < deadline) {
		if (v->checks > after && v->last_check_target == pages) {
			ok = true;
			break;
		}
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000;
		if (ts.tv_nsec >= 1000000000)
			ts.tv_sec++, ts.tv_nsec -= 1000000000;
		pthread_cond_timedwait(&v->cond, &v->lock, &ts);
	}
	pthread_mutex_unlock(&v->lock);
	return ok;
}

static bool wait_merged(struct vmm *v, uint64_t deadline)
{
	struct mv_scan_stats st = { 0 };
	while (now_ns() < deadline && !v->guest_stopped) {
		mv_vm_stats(v->vm, &st);
		if (st.pages_merged >= v->o.wait_merged) {
			say("scanner: %llu pages merged, %llu zero pages released, %llu scanned, while the vCPU runs",
			    (unsigned long long)st.pages_merged, (unsigned long long)st.pages_zero,
			    (unsigned long long)st.pages_scanned);
			return true;
		}
		usleep(50000);
	}
	say("scanner: only %llu pages merged and %llu zero pages", (unsigned long long)st.pages_merged,
	    (unsigned long long)st.pages_zero);
	return false;
}

static int scenario(struct vmm *v)
{
	uint64_t deadline = now_ns() + (uint64_t)v->o.timeout_s * 1000000000ull;
	if (!wait_check(v, 0, 0, deadline)) { /* booted, memory written and checked */
		say("the guest did not come up");
		return 1;
	}
	say("guest up: guest RAM resident %.1f MiB", ram_rss_mib(v));
	if (v->o.wait_merged && !wait_merged(v, deadline))
		return 1;
	for (unsigned i = 0; i < v->o.nr_targets; i++) {
		uint64_t t = v->o.targets[i], checks = v->checks;
		double before = ram_rss_mib(v);
		int rc = mv_balloon_set_target(v->balloon, t);
		if (rc) {
			say("mv_balloon_set_target: %s", mv_strerror(rc));
			return 1;
		}
		say("target %llu MiB", (unsigned long long)(t / MIB));
		if (!wait_check(v, checks, t / PAGE, deadline)) {
			say("the guest did not reach %llu MiB", (unsigned long long)(t / MIB));
			return 1;
		}
		struct mv_balloon_info bi;
		mv_balloon_info(v->balloon, &bi);
		say("balloon at %llu MiB (actual %llu MiB, released %llu MiB so far): guest RAM resident %.1f -> %.1f MiB",
		    (unsigned long long)(t / MIB), (unsigned long long)(bi.actual_bytes / MIB),
		    (unsigned long long)(bi.released_bytes / MIB), before, ram_rss_mib(v));
	}
	struct mv_scan_stats st;
	mv_vm_stats(v->vm, &st);
	say("done: %llu checks by the guest, %llu pages merged, %llu zero, %llu COW breaks",
	    (unsigned long long)v->checks, (unsigned long long)st.pages_merged,
	    (unsigned long long)st.pages_zero, (unsigned long long)st.cow_breaks);
	return v->guest_failed ? 1 : 0;
}

/* Without a scenario: run until the guest stops or the timeout, ticking the policy. */
static int run_free(struct vmm *v)
{
	uint64_t deadline = now_ns() + (uint64_t)v->o.timeout_s * 1000000000ull;
	unsigned period = v->policy ? mv_policy_period_ms(v->policy) : 1000;
	while (!v->guest_stopped && !v->guest_failed && now_ns() < deadline) {
		if (v->policy)
			mv_policy_tick(v->policy, NULL);
		usleep(period * 1000u);
	}
	return v->guest_failed ? 1 : 0;
}

static int policy_setup(struct vmm *v)
{
	struct mv_policy_config pc;
	mv_policy_config_init(&pc);
	pc.host = v->host;
	if (v->o.decisions && !(pc.log_file = fopen(v->o.decisions, "we")))
		return -errno;
	char err[256] = "";
	int rc = mv_policy_new(&pc, &v->policy);
	if (!rc)
		rc = mv_policy_load_file(v->policy, v->o.policy, err, sizeof(err));
	if (!rc)
		rc = mv_policy_attach(v->policy, "guest0", v->vm, v->balloon);
	if (rc)
		say("policy %s: %s %s", v->o.policy, mv_strerror(rc), err);
	return rc;
}

/* ---- main ---- */

static void on_kick(int sig)
{
	(void)sig;
}

static uint64_t parse_size(const char *s, bool *ok)
{
	char *end;
	unsigned long long n = strtoull(s, &end, 0);
	uint64_t unit = MIB;
	if (*end == 'K' || *end == 'k') unit = 1024, end++;
	else if (*end == 'M' || *end == 'm') end++;
	else if (*end == 'G' || *end == 'g') unit = 1024 * MIB, end++;
	*ok = end != s && (*end == 0 || *end == ',');
	return n * unit;
}

static int usage(void)
{
	fprintf(stderr, "usage: memvirt-vmm --kernel PVH.elf [--mem SIZE] [--target SIZE[,SIZE...]]\n"
	        "       [--wait-merged PAGES] [--policy FILE [--decisions FILE]] [--append CMDLINE]\n"
	        "       [--timeout S] [--settle-ms MS] [--prefault]   (sizes in MiB unless K, M or G follows)\n");
	return 2;
}

static int parse_args(struct opts *o, int argc, char **argv)
{
	*o = (struct opts){ .mem = 64 * MIB, .timeout_s = 60 };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
		bool ok = true;
		if (!strcmp(a, "--prefault")) {
			o->prefault = true;
			continue;
		}
		if (!val)
			return -1;
		i++;
		if (!strcmp(a, "--kernel")) o->kernel = val;
		else if (!strcmp(a, "--append")) o->cmdline = val;
		else if (!strcmp(a, "--policy")) o->policy = val;
		else if (!strcmp(a, "--decisions")) o->decisions = val;
		else if (!strcmp(a, "--mem")) o->mem = parse_size(val, &ok);
		else if (!strcmp(a, "--timeout")) o->timeout_s = (unsigned)strtoul(val, NULL, 0);
		else if (!strcmp(a, "--settle-ms")) o->settle_ms = (unsigned)strtoul(val, NULL, 0);
		else if (!strcmp(a, "--wait-merged")) o->wait_merged = strtoull(val, NULL, 0);
		else if (!strcmp(a, "--target")) {
			for (const char *s = val; ok && s; s = strchr(s, ',') ? strchr(s, ',') + 1 : NULL) {
				if (o->nr_targets == MAX_TARGETS)
					return -1;
				o->targets[o->nr_targets++] = parse_size(s, &ok);
			}
		} else
			return -1;
		if (!ok)
			return -1;
	}
	if (!o->kernel || o->mem < 4 * MIB || o->mem % (2 * MIB) || o->mem > MMIO_BASE)
		return -1;
	for (unsigned i = 0; i < o->nr_targets; i++)
		if (o->targets[i] >= o->mem)
			return -1;
	return 0;
}

int main(int argc, char **argv)
{
	struct vmm v = { .kvm = -1, .irqfd = -1 };
	if (parse_args(&v.o, argc, argv))
		return usage();
	pthread_mutex_init(&v.lock, NULL);
	pthread_cond_init(&v.cond, NULL);
	struct sigaction kick = { .sa_handler = on_kick }; /* no SA_RESTART: KVM_RUN returns */
	sigaction(SIGUSR1, &kick, NULL);
	int rc = kvm_setup(&v);
	if (rc) {
		say("SKIP: /dev/kvm: %s", strerror(-rc));
		return 77;
	}
	rc = memvirt_setup(&v);
	if (rc == -ENOSYS || rc == -EPERM) {
		say("SKIP: memvirt: %s", mv_strerror(rc));
		return 77;
	}
	uint32_t entry = 0;
	const char *step = "memvirt";
	if (rc || (step = "guest RAM", rc = ram_setup(&v)) || (step = "balloon", rc = balloon_setup(&v)) ||
	    (step = "kernel", rc = load_kernel(&v, &entry)) || (step = "vCPU", rc = vcpu_setup(&v, entry)) ||
	    (v.o.policy && (step = "policy", rc = policy_setup(&v)))) {
		say("%s: %s", step, mv_strerror(rc));
		return 1;
	}
	int khz = ioctl(v.vcpu_fd, KVM_GET_TSC_KHZ, 0);
	boot_info(&v, khz > 0 ? (uint64_t)khz : 0);
	say("guest RAM %llu MiB at gpa 0 (memslot 0 = memvirt region 0), balloon at 0x%llx irq %d, entry 0x%x",
	    (unsigned long long)(v.o.mem / MIB), MMIO_BASE, MMIO_GSI, entry);

	if ((rc = mv_host_start(v.host)) != 0) {
		say("mv_host_start: %s", mv_strerror(rc));
		return 1;
	}
	pthread_create(&v.io_thread, NULL, io_main, &v);
	pthread_create(&v.vcpu_thread, NULL, vcpu_main, &v);
	int status = v.o.nr_targets || v.o.wait_merged ? scenario(&v) : run_free(&v);

	/* Stop the vCPU: a signal kicks it out of KVM_RUN; immediate_exit keeps it out. */
	atomic_store(&v.stop, true);
	v.run->immediate_exit = 1;
	pthread_kill(v.vcpu_thread, SIGUSR1);
	pthread_join(v.vcpu_thread, NULL);
	pthread_join(v.io_thread, NULL);
	mv_policy_free(v.policy);
	mv_balloon_free(v.balloon);
	mv_vm_free(v.vm);
	mv_host_free(v.host);
	say("exit %d", status);
	return status;
}
