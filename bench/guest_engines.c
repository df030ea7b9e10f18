/* guest_engines.c - the engines `memvirt bench guest` measures, as its children drive them:
 * memvirt (default host configuration, background workers) and kernel KSM (knobs set by the
 * parent, MADV_MERGEABLE on the guest by the child). `none` has no operations. */
#include "guest_bench.h"
#include "ksmctl.h"

#include <errno.h>
#include <memvirt/memvirt.h>
#include <stdio.h>
#include <sys/mman.h>

/* ---- memvirt ---- */

static void mv_log(void *opaque, enum mv_log_level lvl, const char *msg)
{
	if (lvl <= MV_LOG_WARN)
		fprintf(stderr, "memvirt: %s\n", msg);
}

static int mv_setup(struct gb_child *c)
{
	struct mv_host_config cfg;
	mv_host_config_init(&cfg);
	cfg.log = mv_log;
	int err = mv_host_new(&cfg, &c->host);
	if (err)
		return err;
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "guest";
	err = mv_vm_new(c->host, &vc, &c->vm);
	if (!err)
		err = mv_vm_region_add(c->vm, 0, 0, c->g.mem, c->g.pages * GB_PAGE, 0);
	return err;
}

static int mv_start(struct gb_child *c)
{
	return mv_host_start(c->host);
}

static int mv_cpu_ns(struct gb_child *c, uint64_t *out)
{
	struct mv_scan_stats st;
	int err = mv_host_stats(c->host, &st);
	*out = err ? 0 : st.cpu_ns;
	return err;
}

static long mv_saved(struct gb_child *c)
{
	struct mv_scan_stats st;
	if (mv_host_stats(c->host, &st))
		return 0;
	return (long)(st.pages_sharing + st.pages_zero);
}

static long mv_full_scans(struct gb_child *c)
{
	struct mv_scan_stats st;
	return mv_host_stats(c->host, &st) ? 0 : (long)st.full_scans;
}

/* The host was created just before phase 1: its counters are the phase's. */
static void mv_finish(struct gb_child *c, struct gb_result *r)
{
	struct mv_scan_stats st;
	if (mv_host_stats(c->host, &st))
		return;
	r->write_faults = st.write_faults;
	r->writer_wait_max_us = (double)st.writer_wait_max_ns / 1e3;
}

static void mv_teardown(struct gb_child *c)
{
	mv_vm_free(c->vm);
	mv_host_free(c->host);
}

/* ---- kernel KSM (the parent has set the knobs and run=1) ---- */

static long ksm_counters(void)
{
	long sharing = 0, zero = 0;
	kc_ksm_read("pages_sharing", &sharing);
	if (kc_ksm_read("ksm_zero_pages", &zero))
		zero = 0; /* before Linux 6.10 */
	return sharing + zero;
}

static int ksm_setup(struct gb_child *c)
{
	c->ksmd = kc_ksmd_pid();
	if (c->ksmd < 0)
		return c->ksmd;
	c->ksm_base = ksm_counters();
	return 0;
}

static int ksm_start(struct gb_child *c)
{
	return madvise(c->g.mem, c->g.pages * GB_PAGE, MADV_MERGEABLE) ? -errno : 0;
}

static long ksm_full_scans(struct gb_child *c)
{
	long n = 0;
	kc_ksm_read("full_scans", &n);
	return n;
}

static int ksm_cpu_ns(struct gb_child *c, uint64_t *out)
{
	return kc_task_cpu_ns(c->ksmd, out);
}

static long ksm_saved(struct gb_child *c)
{
	long n = ksm_counters() - c->ksm_base;
	return n > 0 ? n : 0;
}

const struct gb_engine gb_engines[GB_NR] = {
	[GB_NONE] = { .name = "none" },
	[GB_MEMVIRT] = { .name = "memvirt", .setup = mv_setup, .start = mv_start, .cpu_ns = mv_cpu_ns,
	                 .saved = mv_saved, .full_scans = mv_full_scans, .finish = mv_finish,
	                 .teardown = mv_teardown },
	[GB_KSM] = { .name = "ksm", .setup = ksm_setup, .start = ksm_start, .cpu_ns = ksm_cpu_ns,
	             .saved = ksm_saved, .full_scans = ksm_full_scans },
};

/* KSM at the kernel's defaults plus use_zero_pages; run stays 0 until a ksm child. */
int gb_ksm_prepare(void)
{
	static const struct { const char *knob; long v; } knobs[] = {
		{ "pages_to_scan", 100 }, { "sleep_millisecs", 20 }, { "use_zero_pages", 1 },
	};
	for (size_t i = 0; i < sizeof(knobs) / sizeof(knobs[0]); i++) {
		char path[128];
		snprintf(path, sizeof(path), KC_KSM_DIR "/%s", knobs[i].knob);
		int err = kc_setting_set(path, knobs[i].v);
		if (err)
			return err;
	}
	return 0;
}
