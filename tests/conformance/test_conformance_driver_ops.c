/* test_conformance_driver_ops.c - the guest balloon driver (balloon-driver/) against the
 * driver-side statements of virtio 1.2 on memory statistics (5.5.6.3.1), free page hinting
 * (5.5.6.5.1), page poison (5.5.6.6.1) and free page reporting (5.5.6.7.1), one table row
 * each, on the fake platform and device of drvkit.h. */
#include "drvkit.h"

/* ---- rows: memory statistics ---- */

static void stats_cycles(unsigned n)
{
	init_ok();
	run(2);
	for (unsigned i = 0; i < n; i++) {
		assert_int_equal(queue_of(R_STATS)->npending, 1);
		FK.gstats.major_faults += 100;
		fk_stats_request();
		run(3);
	}
}

static void one_stats_buffer(void **state)
{
	stats_cycles(5);
	EXPECT_NONE(V_STATS_MULTI);
}

static void stats_buffer_after_init(void **state)
{
	init_ok();
	run(1);
	assert_int_equal(FK.stats_bufs, 1);
	assert_int_equal(queue_of(R_STATS)->npending, 1);
}

static void stats_buffer_after_use(void **state)
{
	stats_cycles(4);
	assert_int_equal(FK.stats_bufs, 5);
	assert_int_equal(queue_of(R_STATS)->npending, 1);
}

static void stats_initialized(void **state)
{
	stats_cycles(1);
	assert_int_equal(FK.stats_val[MV_BSTAT_MAJFLT], FK.gstats.major_faults);
	assert_int_equal(FK.stats_val[MV_BSTAT_MINFLT], 14);
	assert_int_equal(FK.stats_val[MV_BSTAT_MEMTOT], FK_RAM);
	assert_int_equal(FK.stats_val[MV_BSTAT_AVAIL], 17 << 20);
	assert_int_equal(FK.stats_val[MV_BSTAT_CACHES], 18 << 20);
	assert_true(FK.stats_tags & CONF_BIT(MV_BSTAT_MEMFREE));
	/* what the guest cannot tell (UINT64_MAX) is left out, not sent as a value */
	assert_false(FK.stats_tags & CONF_BIT(MV_BSTAT_ASYNC_SCANS));
	assert_false(FK.stats_tags & CONF_BIT(MV_BSTAT_DIRECT_SCANS));
}

static void stats_entries_10_bytes(void **state)
{
	stats_cycles(3);
	EXPECT_NONE(V_STATS_FORMAT);
}

static void stats_same_subset(void **state)
{
	stats_cycles(5);
	EXPECT_NONE(V_STATS_SUBSET);
}

/* ---- rows: free page hinting ---- */

static void hint_out_4_bytes(void **state)
{
	hint_run();
	assert_int_equal(FK.hint_out_cur, 1);
	EXPECT_NONE(V_HINT_OUTLEN);
}

static void hint_starts_with_cmd_id(void **state)
{
	hint_run();
	EXPECT_NONE(V_HINT_ORDER);
}

static void hint_cmd_id_once(void **state)
{
	hint_run();
	EXPECT_NONE(V_HINT_DUP_ID);
}

static void hint_supplies_pages(void **state)
{
	hint_run();
	assert_true(FK.hint_in > 0);
	assert_true(FK.hinted_pages > FK_PAGES / 2);
}

static void hint_stops_when_stopped(void **state)
{
	fk_new(F(FREE_PAGE_HINT) | V1BIT);
	init_ok();
	cmd_id(9);
	run(1);
	cmd_id(CMD_ID_STOP);
	run(1);
	uint64_t n = FK.hint_in;
	run(20);
	assert_int_equal(FK.hint_in, n);
}

static void hint_ends_with_stop(void **state)
{
	hint_run();
	assert_true(FK.hint_stops >= 1);
}

/* Hinted pages held, the host has not said DONE, and the guest runs out of memory:
 * pages the driver hands back early must not carry what the host left in them. */
static void hint_initializes_early_release(void **state)
{
	fk_new(F(FREE_PAGE_HINT) | F(DEFLATE_ON_OOM) | V1BIT);
	init_ok();
	cmd_id(7);
	for (unsigned i = 0; i < 200 && !FK.hint_stops; i++)
		run(1);
	FK.no_mem = true;
	assert_true(mvg_balloon_oom(FK.d, MIB) >= MIB);
	EXPECT_NONE(V_HINT_UNINIT);
	FK.no_mem = false;
	cmd_id(CMD_ID_DONE);
	run(10);
	assert_int_equal(count(P_HINTED), 0);
	EXPECT_NONE(V_HINT_UNINIT);
}

static void hint_releases_on_done(void **state)
{
	hint_run();
	cmd_id(CMD_ID_DONE);
	run(10);
	assert_int_equal(count(P_HINTED), 0);
}

/* ---- rows: page poison ---- */

static void poison_before_driver_ok(void **state)
{
	poison_up(ALL);
	assert_true(FK.poison_set);
	assert_int_equal(FK.poison, 0xaaaaaaaa);
	EXPECT_NONE(V_POISON_LATE);
}

static void poison_not_changed(void **state)
{
	poison_up(ALL);
	target(1000);
	settle(200);
	target(10);
	settle(200);
	EXPECT_NONE(V_POISON_LATE);
}

static void poison_only_with_feature(void **state)
{
	poison_up(ALL & ~F(PAGE_POISON));
	assert_false(FK.poison_set);
	EXPECT_NONE(V_POISON_NOFEAT);
}

static void poison_deflated_pages(void **state)
{
	const uint64_t offers[2] = { ALL, ALL & ~F(MUST_TELL_HOST) };
	for (unsigned k = 0; k < 2; k++) {
		poison_up(offers[k]);
		target(1000);
		assert_true(settle(200));
		target(0);
		assert_true(settle(200));
		assert_int_equal(count(P_BALLOON) + count(P_DEFL) + count(P_DEFLATED), 0);
		EXPECT_NONE(V_POISON_DEFLATE);
	}
}

/* ---- rows: free page reporting ---- */

static void reports_poisoned_pages(void **state)
{
	poison_up(ALL);
	target(700);
	settle(200);
	target(0);
	settle(200);
	report_until(1);
	EXPECT_NONE(V_REPORT_POISON);
}

static void report_waits_for_ack(void **state)
{
	fk_new(ALL & ~F(PAGE_POISON));
	FK.defer[R_REPORT] = true;
	init_ok();
	report_until(1);
	run(30);
	EXPECT_NONE(V_REPORT_USE);
	assert_int_equal(FK.putbacks, 0);
	FK.defer[R_REPORT] = false;
	fk_ack(R_REPORT);
	run(5);
	assert_true(FK.putbacks > 0);
	EXPECT_NONE(V_REPORT_USE);
}

static void reports_large_pages(void **state)
{
	fk_new(ALL & ~F(PAGE_POISON));
	init_ok();
	report_until(1);
	assert_true(FK.report_min_len >= MVG_RUN_SIZE);
	EXPECT_NONE(V_REPORT_FORMAT);
}

static void report_untouched(void **state)
{
	fk_new(ALL & ~F(PAGE_POISON));
	init_ok();
	report_until(1);
	target(600); /* pages come and go: more to report */
	settle(200);
	target(0);
	settle(200);
	for (unsigned i = 0; i < 50; i++) {
		FK.clock += 100000000;
		run(1);
	}
	EXPECT_NONE(V_REPORT_TOUCH, V_REPORT_USE);
}

static void not_observable(void **state)
{
	TU_SKIP("content the driver relies on is not observable through mvg_platform; "
	        "covered in part by the no-touch rows");
}

static void legacy_driver(void **state)
{
	TU_SKIP("no legacy interface: the driver requires virtio-mmio Version 2 and VERSION_1");
}

static const struct conf_row rows[] = {
	ROW("5.5.6.3.1 Driver Requirements: Memory Statistics", "MUST",
	    "make at most one buffer available in the statsq", one_stats_buffer),
	ROW("5.5.6.3.1 Driver Requirements: Memory Statistics", "MUST",
	    "make an output buffer available after initializing", stats_buffer_after_init),
	ROW("5.5.6.3.1 Driver Requirements: Memory Statistics", "MUST",
	    "make a new output buffer available when one is used", stats_buffer_after_use),
	ROW("5.5.6.3.1 Driver Requirements: Memory Statistics", "MUST",
	    "initialize the buffer: one entry per statistic it supports", stats_initialized),
	ROW("5.5.6.3.1 Driver Requirements: Memory Statistics", "MUST",
	    "size a multiple of 6 [erratum: 10-byte entries, one out-desc]",
	    stats_entries_10_bytes),
	ROW("5.5.6.3.1 Driver Requirements: Memory Statistics", "MUST",
	    "supply the same subset of statistics in all buffers", stats_same_subset),
	ROW("5.5.6.5.1 Driver Requirements: Free Page Hinting", "MUST",
	    "use 4-byte output buffers on the free_page_vq", hint_out_4_bytes),
	ROW("5.5.6.5.1 Driver Requirements: Free Page Hinting", "MUST",
	    "start hinting with an output buffer holding the cmd id", hint_starts_with_cmd_id),
	ROW("5.5.6.5.1 Driver Requirements: Free Page Hinting", "MUST NOT",
	    "provide more than one output buffer with the current cmd id", hint_cmd_id_once),
	ROW("5.5.6.5.1 Driver Requirements: Free Page Hinting", "SHOULD",
	    "supply pages while free_page_hint_cmd_id >= 2", hint_supplies_pages),
	ROW("5.5.6.5.1 Driver Requirements: Free Page Hinting", "SHOULD",
	    "stop supplying pages on STOP or DONE", hint_stops_when_stopped),
	ROW("5.5.6.5.1 Driver Requirements: Free Page Hinting", "MUST",
	    "complete hinting with a STOP output buffer", hint_ends_with_stop),
	ROW("5.5.6.5.1 Driver Requirements: Free Page Hinting", "MUST",
	    "initialize hinted pages it releases before DONE", hint_initializes_early_release),
	ROW("5.5.6.5.1 Driver Requirements: Free Page Hinting", "SHOULD",
	    "release all hinted pages once the cmd id is DONE", hint_releases_on_done),
	ROW("5.5.6.5.1 Driver Requirements: Free Page Hinting", "MUST",
	    "treat the content of hinted pages as uninitialized", not_observable),
	ROW("5.5.6.6.1 Driver Requirements: Page Poison", "MUST",
	    "populate poison_val before setting DRIVER_OK", poison_before_driver_ok),
	ROW("5.5.6.6.1 Driver Requirements: Page Poison", "MUST NOT",
	    "modify poison_val while DRIVER_OK is set", poison_not_changed),
	ROW("5.5.4 Device configuration layout (protocol)", "MUST NOT",
	    "write poison_val unless PAGE_POISON is negotiated", poison_only_with_feature),
	ROW("5.5.6.6.1 Driver Requirements: Page Poison", "MUST",
	    "initialize deflated pages with poison_val when reused", poison_deflated_pages),
	ROW("5.5.6.7.1 Driver Requirements: Free Page Reporting", "MUST",
	    "with PAGE_POISON, report only pages holding poison_val", reports_poisoned_pages),
	ROW("5.5.6.7.1 Driver Requirements: Free Page Reporting", "MUST NOT",
	    "use reported pages before the report is acked", report_waits_for_ack),
	ROW("5.5.6.7.1 Driver Requirements: Free Page Reporting", "SHOULD",
	    "report large pages (2 MiB runs) in device-writable buffers", reports_large_pages),
	ROW("5.5.6.7.1 Driver Requirements: Free Page Reporting", "SHOULD",
	    "avoid reading or writing reported pages", report_untouched),
	ROW("5.5.6.7.1 Driver Requirements: Free Page Reporting", "MUST",
	    "without PAGE_POISON, treat reported pages as uninitialized", not_observable),
	ROW("5.5.4.1/5.5.6.2.1/5.5.6.3.3/5.5.6.5.3 Legacy Interface", "MUST",
	    "legacy interface clauses", legacy_driver),
};

int main(void)
{
	return drvkit_main("virtio-balloon driver conformance: statistics, hints, poison, reports", rows,
	                   sizeof(rows) / sizeof(rows[0]));
}
