/* test_conformance_driver.c - the guest balloon driver (balloon-driver/) against the
 * driver-side statements of virtio 1.2 on probing, initialization, features, queue
 * numbering and device operation (4.2.2.2, 3.1.1, 2.2.1, 6.1, 5.5.2-5.5.6.1), one table row
 * each. The driver runs on a fake platform whose mmio hooks are a fake virtio-mmio balloon
 * (drvkit.h): every register access, buffer and page use of the driver is judged as it
 * happens. */
#include "drvkit.h"

/* ---- rows: probing and initialization ---- */

static void ignores_bad_magic(void **state)
{
	FK.magic = 0x12345678;
	assert_int_equal(init(), -1);
	assert_int_equal(FK.writes, 0);
}

static void ignores_bad_version(void **state)
{
	FK.version = 1;
	assert_int_equal(init(), -1);
	assert_int_equal(FK.writes, 0);
}

static void ignores_device_id_0(void **state)
{
	FK.devid = 0;
	assert_int_equal(init(), -1);
	assert_int_equal(FK.writes, 0);
	FK.devid = 3;
	assert_int_equal(init(), -1);
	assert_int_equal(FK.writes, 0);
}

static void init_sequence(void **state)
{
	init_ok();
	assert_true(FK.ok_seen);
	assert_int_equal(FK.status, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	EXPECT_NONE(V_INIT_ORDER, V_FOK_REREAD);
}

static void stops_when_features_refused(void **state)
{
	FK.refuse_fok = true;
	assert_int_equal(init(), -2);
	assert_false(FK.ok_seen);
	assert_int_equal(FK.notifies, 0);
}

static void no_notify_before_driver_ok(void **state)
{
	init_ok();
	target(600);
	settle(100);
	EXPECT_NONE(V_NOTIFY_EARLY);
}

static const uint64_t subsets[] = {
	0, F(MUST_TELL_HOST), F(STATS_VQ), F(PAGE_REPORTING), F(FREE_PAGE_HINT) | F(PAGE_POISON),
	F(STATS_VQ) | F(PAGE_REPORTING), F(FREE_PAGE_HINT) | F(PAGE_REPORTING),
	F(STATS_VQ) | F(FREE_PAGE_HINT), F(DEFLATE_ON_OOM) | F(PAGE_REPORTING) | F(PAGE_POISON),
	MV_BALLOON_FEATURES_ALL,
};
#define NSUB (sizeof(subsets) / sizeof(subsets[0]))

static void accepts_only_offered(void **state)
{
	for (unsigned k = 0; k < NSUB; k++) {
		fk_new(subsets[k] | V1BIT);
		init_ok();
		assert_int_equal(FK.neg & ~(subsets[k] | V1BIT), 0);
		EXPECT_NONE(V_FEAT_UNOFFERED);
	}
}

static void accepts_version_1(void **state)
{
	for (unsigned k = 0; k < NSUB; k++) {
		fk_new(subsets[k] | V1BIT);
		init_ok();
		assert_true(FK.neg & V1BIT);
	}
}

static void refuses_legacy_device(void **state)
{
	fk_new(MV_BALLOON_FEATURES_ALL);
	assert_int_not_equal(init(), 0);
	assert_false(FK.ok_seen);
}

static void selects_feature_words(void **state)
{
	init_ok();
	EXPECT_NONE(V_FEAT_SEL);
}

static void queue_size_within_max(void **state)
{
	fk_set_qmax(8);
	init_ok();
	target(3000);
	assert_true(settle(400));
	EXPECT_NONE(V_QUEUE_NUM);
}

static void queue_regs_only_while_not_ready(void **state)
{
	init_ok();
	target(100);
	settle(100);
	EXPECT_NONE(V_QUEUE_BUSY);
}

static void interrupt_ack_defined_bits(void **state)
{
	init_ok();
	target(700);
	settle(100);
	cmd_id(5);
	run(10);
	EXPECT_NONE(V_INT_ACK);
}

/* ---- rows: virtqueues and features of the balloon ---- */

static void queues_numbered_compactly(void **state)
{
	for (unsigned k = 0; k < NSUB; k++) {
		fk_new(subsets[k] | V1BIT);
		init_ok();
		for (unsigned i = 0; i < FK.nq; i++)
			assert_int_equal(FK.q[i].ready, 1);
		if (FK.neg & F(STATS_VQ)) {
			run(2);
			assert_true(FK.stats_bufs >= 1);
		}
		if (FK.neg & F(FREE_PAGE_HINT)) {
			cmd_id(7);
			run(5);
			assert_true(FK.hint_out_cur >= 1);
			cmd_id(CMD_ID_DONE); /* the hinted memory comes back: reporting can go on */
			run(5);
		}
		for (unsigned i = 0; i < 100 && (FK.neg & F(PAGE_REPORTING)) && !FK.reports; i++) {
			FK.clock += 100000000;
			run(1);
		}
		assert_true(!(FK.neg & F(PAGE_REPORTING)) || FK.reports > 0);
		EXPECT_NONE(V_QUEUE_ABSENT, V_RING, V_HINT_OUTLEN, V_STATS_FORMAT, V_REPORT_FORMAT, V_PFN);
	}
}

static void works_with_fewer_features(void **state)
{
	fk_new(V1BIT);
	init_ok();
	assert_int_equal(FK.neg, V1BIT);
	assert_int_equal(FK.nq, 2);
	target(1024);
	assert_true(settle(200));
	assert_int_equal(count(P_BALLOON), 1024);
	EXPECT_NONE(V_QUEUE_ABSENT, V_PFN, V_RING);
}

static void accepts_must_tell_host(void **state)
{
	init_ok();
	assert_true(FK.neg & F(MUST_TELL_HOST));
}

static void no_reporting_without_poison(void **state)
{
	poison_up(ALL & ~F(PAGE_POISON));
	assert_false(FK.neg & F(PAGE_REPORTING));
}

/* ---- rows: device operation ---- */

static void supplies_pages(void **state)
{
	init_ok();
	target(2048);
	assert_true(settle(200));
	assert_int_equal(count(P_BALLOON), 2048);
	struct mvg_status s = status();
	assert_int_equal(s.actual_pages, 2048);
}

static void no_oom_deflate_unless_negotiated(void **state)
{
	fk_new(ALL & ~F(DEFLATE_ON_OOM));
	init_ok();
	target(1024);
	assert_true(settle(200));
	FK.no_mem = true;
	assert_int_equal(mvg_balloon_oom(FK.d, MIB), 0);
	assert_int_equal(count(P_BALLOON), 1024);
	EXPECT_NONE(V_USE_BALLOON);
}

static void uses_deflateq(void **state)
{
	const uint64_t offers[2] = { ALL, ALL & ~F(MUST_TELL_HOST) };
	for (unsigned k = 0; k < 2; k++) {
		fk_new(offers[k]);
		init_ok();
		target(1500);
		assert_true(settle(200));
		target(100);
		assert_true(settle(200));
		assert_int_equal(count(P_BALLOON), 100);
		EXPECT_NONE(V_USE_BALLOON, V_USE_DEFLATING);
	}
}

static void oom_goes_through_deflateq(void **state)
{
	init_ok();
	target(2048);
	assert_true(settle(200));
	FK.no_mem = true;
	uint64_t got = mvg_balloon_oom(FK.d, 4 * MIB);
	assert_true(got > 0);
	assert_true(FK.deflate_pfns >= got / PG);
	EXPECT_NONE(V_USE_BALLOON, V_USE_DEFLATING);
}

/* Linux gives back 1 MiB per OOM event; the balloon holds 2 MiB runs only, and the
 * guest has not one free page (that is what OOM means). */
static void oom_with_nothing_free(void **state)
{
	init_ok();
	target(1024);
	assert_true(settle(200));
	FK.no_mem = true;
	uint64_t got = mvg_balloon_oom(FK.d, MIB);
	assert_true(got >= MIB);
	EXPECT_NONE(V_USE_BALLOON, V_USE_DEFLATING);
}

static void must_tell_host_waits_for_ack(void **state)
{
	init_ok();
	target(1024);
	assert_true(settle(200));
	FK.defer[R_DEFLATE] = true;
	target(0);
	run(30);
	assert_true(FK.deflate_pfns > 0);
	EXPECT_NONE(V_USE_DEFLATING, V_USE_BALLOON);
	FK.defer[R_DEFLATE] = false;
	fk_ack(R_DEFLATE);
	assert_true(settle(200));
	assert_int_equal(count(P_BALLOON) + count(P_DEFLATED), 0);
	EXPECT_NONE(V_USE_DEFLATING, V_USE_BALLOON);
}

/* Inflate requests the device does not acknowledge yet, then a lower target. */
static void pending_inflate(void)
{
	init_ok();
	FK.defer[R_INFLATE] = true;
	target(1024);
	run(30);
	assert_true(count(P_INFL) > 0);
	target(0);
	run(30);
}

static void no_use_before_inflate_ack(void **state)
{
	pending_inflate();
	EXPECT_NONE(V_USE_INFLATING);
	FK.defer[R_INFLATE] = false;
	fk_ack(R_INFLATE);
	assert_true(settle(300));
	EXPECT_NONE(V_USE_INFLATING);
}

static void no_deflate_before_inflate_ack(void **state)
{
	pending_inflate();
	EXPECT_NONE(V_DEFLATE_UNACKED);
	FK.defer[R_INFLATE] = false;
	fk_ack(R_INFLATE);
	assert_true(settle(300));
	EXPECT_NONE(V_DEFLATE_UNACKED);
}

static void updates_actual(void **state)
{
	init_ok();
	target(1024);
	assert_true(settle(200));
	assert_int_equal(FK.actual, 1024);
	target(300);
	assert_true(settle(200));
	assert_int_equal(FK.actual, 300);
	assert_int_equal(count(P_BALLOON), 300);
	FK.defer[R_INFLATE] = true;
	target(900);
	run(30);
	EXPECT_NONE(V_ACTUAL);
}

static void pfns_of_own_pages(void **state)
{
	init_ok();
	target(1500);
	assert_true(settle(200));
	assert_int_equal(FK.inflate_pfns, 1500);
	EXPECT_NONE(V_PFN, V_RING);
}

static void never_below_floor(void **state)
{
	C.floor_bytes = 24 * MIB;
	C.pfns_per_req = 512;
	init_ok();
	target(FK_PAGES);
	settle(400);
	assert_true(status().at_floor);
	assert_true(FK.nfree * PG + 512 * PG >= C.floor_bytes);
	/* already below the floor: not one page */
	fk_new(ALL);
	C.floor_bytes = 40 * MIB;
	init_ok();
	target(1000);
	run(50);
	assert_int_equal(FK.inflate_pfns, 0);
	assert_true(status().at_floor);
}

static void remove_gives_back(void **state)
{
	init_ok();
	target(2000);
	assert_true(settle(200));
	mvg_balloon_remove(FK.d);
	assert_int_equal(FK.status, 0);
	assert_int_equal(count(P_BALLOON) + count(P_INFL) + count(P_DEFL) + count(P_DEFLATED), 0);
}

static const struct conf_row rows[] = {
	ROW("4.2.2.2 Driver Requirements: MMIO Device Register Layout", "MUST",
	    "ignore a device whose MagicValue is not 0x74726976", ignores_bad_magic),
	ROW("4.2.2.2 Driver Requirements: MMIO Device Register Layout", "MUST",
	    "ignore a device whose Version is not 2", ignores_bad_version),
	ROW("4.2.2.2 Driver Requirements: MMIO Device Register Layout", "MUST",
	    "ignore a device with DeviceID 0 (and IDs other than 5)", ignores_device_id_0),
	ROW("3.1.1 Driver Requirements: Device Initialization", "MUST",
	    "reset, ACK, DRIVER, features, FEATURES_OK, re-read, DRIVER_OK", init_sequence),
	ROW("3.1.1 Driver Requirements: Device Initialization", "MUST NOT",
	    "continue when FEATURES_OK does not stick", stops_when_features_refused),
	ROW("3.1.1 Driver Requirements: Device Initialization", "MUST NOT",
	    "notify the device before DRIVER_OK", no_notify_before_driver_ok),
	ROW("2.2.1 Driver Requirements: Feature Bits", "MUST NOT",
	    "accept a feature the device did not offer", accepts_only_offered),
	ROW("6.1 Driver Requirements: Reserved Feature Bits", "MUST",
	    "accept VIRTIO_F_VERSION_1 if offered", accepts_version_1),
	ROW("6.1 Driver Requirements: Reserved Feature Bits", "MAY",
	    "memvirt: fail on a device without VERSION_1", refuses_legacy_device),
	ROW("4.2.2.2 Driver Requirements: MMIO Device Register Layout", "MUST",
	    "write DeviceFeaturesSel/DriverFeaturesSel before the feature words",
	    selects_feature_words),
	ROW("4.2.2.2 Driver Requirements: MMIO Device Register Layout", "MUST",
	    "QueueNum <= QueueNumMax (a power of 2)", queue_size_within_max),
	ROW("4.2.2.2 Driver Requirements: MMIO Device Register Layout", "MUST NOT",
	    "write QueueNum/Desc/Driver/Device while QueueReady", queue_regs_only_while_not_ready),
	ROW("4.2.2.2 Driver Requirements: MMIO Device Register Layout", "MUST NOT",
	    "set undefined bits in InterruptACK", interrupt_ack_defined_bits),
	ROW("5.5.2 Virtqueues (protocol)", "MUST",
	    "number queues compactly (statsq, free_page_vq, reporting_vq)",
	    queues_numbered_compactly),
	ROW("5.5.3 Feature bits (protocol)", "MUST",
	    "work with a device offering no balloon feature", works_with_fewer_features),
	ROW("5.5.3.1 Driver Requirements: Feature bits", "SHOULD",
	    "accept VIRTIO_BALLOON_F_MUST_TELL_HOST if offered", accepts_must_tell_host),
	ROW("5.5.3.1 Driver Requirements: Feature bits", "MUST NOT",
	    "accept PAGE_REPORTING without PAGE_POISON when it poisons pages",
	    no_reporting_without_poison),
	ROW("5.5.6.1 Driver Requirements: Device Operation", "SHOULD",
	    "supply pages when num_pages > actual", supplies_pages),
	ROW("5.5.6.1 Driver Requirements: Device Operation", "MUST NOT",
	    "use balloon pages on OOM without DEFLATE_ON_OOM", no_oom_deflate_unless_negotiated),
	ROW("5.5.6.1 Driver Requirements: Device Operation", "MUST",
	    "use the deflateq for pages it wants to use, before using them", uses_deflateq),
	ROW("5.5.6.1 Driver Requirements: Device Operation", "MUST",
	    "use the deflateq on OOM too (DEFLATE_ON_OOM)", oom_goes_through_deflateq),
	ROW("memvirt: mvg.h mvg_balloon_oom", "MUST",
	    "give back 1 MiB on OOM with no free page left", oom_with_nothing_free),
	ROW("5.5.6.1 Driver Requirements: Device Operation", "MUST NOT",
	    "with MUST_TELL_HOST, use pages before the deflate ack", must_tell_host_waits_for_ack),
	ROW("5.5.6.1 Driver Requirements: Device Operation", "MUST NOT",
	    "use pages after adding them, before the inflate ack", no_use_before_inflate_ack),
	ROW("5.5.6.1 Driver Requirements: Device Operation", "MUST NOT",
	    "request deflation of pages before the inflate ack", no_deflate_before_inflate_ack),
	ROW("5.5.6.1 Driver Requirements: Device Operation", "MUST",
	    "update actual after changing the balloon (acked pages only)", updates_actual),
	ROW("5.5.6 Device Operation (protocol)", "MUST",
	    "le32 PFNs in 4 KiB units of its own pages, device-readable", pfns_of_own_pages),
	ROW("memvirt: mvg.h floor_bytes", "MUST NOT",
	    "inflate while guest free memory is below the floor", never_below_floor),
	ROW("memvirt: mvg.h mvg_balloon_remove", "MUST",
	    "reset the device and give every ballooned page back", remove_gives_back),
};

int main(void)
{
	return drvkit_main("virtio-balloon driver conformance: probe, features, operation", rows,
	                   sizeof(rows) / sizeof(rows[0]));
}
