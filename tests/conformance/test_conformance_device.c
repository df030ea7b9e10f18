/* test_conformance_device.c - the virtio-balloon device of libmemvirt against the
 * transport, status, feature, virtqueue-numbering and configuration-layout requirements of
 * virtio 1.2 (5.5.1-5.5.4 and the general clauses a balloon relies on), one table row each.
 * The test plays the guest driver through the virtio-mmio window (devkit.h). */
#include "devkit.h"

/* ---- rows: transport and general requirements ---- */

static void mmio_identity(void **state)
{
	assert_int_equal(rd(MMIO_MAGIC), MMIO_MAGIC_VALUE);
	assert_int_equal(rd(MMIO_VERSION), 2);
	assert_int_equal(rd(MMIO_DEVICE_ID), 5);
}

static void offers_version_1(void **state)
{
	wr(MMIO_DEV_FEATURES_SEL, 1);
	assert_true(rd(MMIO_DEV_FEATURES) & 1);
	wr(MMIO_DEV_FEATURES_SEL, 0);
	assert_int_equal(rd(MMIO_DEV_FEATURES) & 0x3f, MV_BALLOON_FEATURES_ALL);
	assert_true(mv_balloon_device_features(E.b) & V1);
}

static void refuses_without_version_1(void **state)
{
	assert_false(negotiate(F(STATS_VQ)) & ST_FEATURES_OK);
	assert_int_equal(mv_balloon_driver_features(E.b, F(STATS_VQ)), -EINVAL);
}

static void accepts_every_valid_subset(void **state)
{
	for (uint64_t s = 0; s < 64; s++) {
		assert_true(negotiate(s | V1) & ST_FEATURES_OK);
		assert_int_equal(mv_balloon_nr_queues(E.b), queues_for(s));
		assert_int_equal(info().features, s | V1);
	}
}

static void refuses_unoffered_features(void **state)
{
	dev_open(F(STATS_VQ));
	assert_false(negotiate(F(PAGE_REPORTING) | V1) & ST_FEATURES_OK);
	assert_false(negotiate(F(STATS_VQ) | V1 | CONF_BIT(33)) & ST_FEATURES_OK);
	assert_false(negotiate(F(STATS_VQ) | V1 | CONF_BIT(7)) & ST_FEATURES_OK);
	assert_true(negotiate(F(STATS_VQ) | V1) & ST_FEATURES_OK);
}

static void renegotiates_after_reset(void **state)
{
	uint64_t f = F(STATS_VQ) | F(PAGE_REPORTING) | F(MUST_TELL_HOST);
	up(f);
	wr(MMIO_STATUS, 0);
	assert_true(negotiate(f | V1) & ST_FEATURES_OK);
	up(f);
}

static void reset_zeroes_status(void **state)
{
	up(F(STATS_VQ));
	wr(MMIO_STATUS, 0);
	assert_int_equal(rd(MMIO_STATUS), 0);
	assert_int_equal(mv_balloon_get_status(E.b), 0);
}

static void no_buffers_before_driver_ok(void **state)
{
	assert_true(negotiate(V1) & ST_FEATURES_OK);
	E.feat = V1;
	queue_program(0, true);
	queue_program(1, true);
	uint32_t pfn = DATA / PG;
	send_pfns(0, &pfn, 1);
	assert_int_equal(used_idx(0), 0);
	assert_int_equal(E.q_irqs[0], 0);
	assert_int_equal(info().held_bytes, 0);
	wr(MMIO_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	kick(0);
	assert_int_equal(used_idx(0), 1);
}

/* An available index more than the queue size ahead: the ring is beyond repair. */
static void break_inflateq(void)
{
	up(0);
	struct vq *v = &E.vq[0];
	put16(v->avail + VRING_AVAIL_OFF_IDX, (uint16_t)(QSIZE + 5));
	kick(0);
}

static void sets_needs_reset_on_broken_ring(void **state)
{
	break_inflateq();
	assert_true(rd(MMIO_STATUS) & ST_NEEDS_RESET);
	assert_true(info().needs_reset);
}

static void needs_reset_notifies(void **state)
{
	unsigned before = E.cfg_irqs;
	break_inflateq();
	if (!(rd(MMIO_STATUS) & ST_NEEDS_RESET))
		TU_SKIP("the device did not set DEVICE_NEEDS_RESET (see the SHOULD row)");
	assert_true(E.cfg_irqs > before);
	assert_true(rd(MMIO_INT_STATUS) & INT_CONFIG);
}

static void quiet_after_reset(void **state)
{
	up(F(STATS_VQ) | F(FREE_PAGE_HINT));
	send_stats(q_stats(), (uint16_t[]){ MV_BSTAT_MEMFREE }, (uint64_t[]){ 1 }, 1);
	wr(MMIO_STATUS, 0);
	unsigned cfg = E.cfg_irqs, q0 = E.q_irqs[0], q2 = E.q_irqs[q_stats()];
	uint32_t pfn = DATA / PG;
	send_pfns(0, &pfn, 1);
	assert_int_equal(mv_balloon_set_target(E.b, 8 * PG), 0);
	mv_balloon_stats_request(E.b); /* the buffer held before the reset is gone */
	mv_balloon_hint_start(E.b);
	assert_int_equal(used_idx(0), 0);
	assert_int_equal(used_idx(q_stats()), 0);
	assert_int_equal(info().held_bytes, 0);
	assert_int_equal(E.cfg_irqs, cfg);
	assert_int_equal(E.q_irqs[0], q0);
	assert_int_equal(E.q_irqs[q_stats()], q2);
}

static void config_readable_before_features_ok(void **state)
{
	wr(MMIO_STATUS, 0);
	wr(MMIO_STATUS, ST_ACK | ST_DRIVER);
	for (unsigned off = 0; off < 16; off += 4) {
		uint32_t v = 0xdeadbeef;
		assert_int_equal(mv_balloon_mmio_read(E.b, MMIO_CONFIG + off, &v, 4), 0);
		assert_int_equal(mv_balloon_config_read(E.b, off, &v, 4), 0);
	}
}

static void interrupt_status_until_ack(void **state)
{
	up(0);
	wr(MMIO_INT_ACK, rd(MMIO_INT_STATUS));
	assert_int_equal(mv_balloon_set_target(E.b, 4 * PG), 0);
	assert_int_equal(rd(MMIO_INT_STATUS), INT_CONFIG);
	uint32_t pfn = DATA / PG;
	send_pfns(0, &pfn, 1);
	assert_int_equal(rd(MMIO_INT_STATUS), INT_CONFIG | INT_USED);
	wr(MMIO_INT_ACK, INT_CONFIG);
	assert_int_equal(rd(MMIO_INT_STATUS), INT_USED);
	wr(MMIO_INT_ACK, INT_USED);
	assert_int_equal(rd(MMIO_INT_STATUS), 0);
}

static void reset_clears_interrupts_and_ready(void **state)
{
	up(F(STATS_VQ));
	assert_int_equal(mv_balloon_set_target(E.b, 4 * PG), 0);
	assert_true(rd(MMIO_INT_STATUS) & INT_CONFIG);
	wr(MMIO_STATUS, 0);
	assert_int_equal(rd(MMIO_INT_STATUS), 0);
	for (unsigned q = 0; q < 3; q++) {
		wr(MMIO_QUEUE_SEL, q);
		assert_int_equal(rd(MMIO_QUEUE_READY), 0);
	}
}

static void no_access_unready_queue(void **state)
{
	assert_true(negotiate(V1) & ST_FEATURES_OK);
	E.feat = V1;
	queue_program(0, false);
	queue_program(1, true);
	wr(MMIO_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	uint32_t pfn = DATA / PG;
	send_pfns(0, &pfn, 1);
	assert_int_equal(used_idx(0), 0);
	assert_int_equal(info().held_bytes, 0);
}

/* ---- rows: virtqueues (5.5.2), the compaction trap ---- */

static void check_statsq_at(uint64_t feat)
{
	up(feat);
	assert_int_equal(mv_balloon_stats_request(E.b), -EAGAIN);
	send_stats(q_stats(), (uint16_t[]){ MV_BSTAT_MEMFREE }, (uint64_t[]){ 123 }, 1);
	assert_int_equal(mv_balloon_stats_request(E.b), 0);
	assert_true(vq_pop(q_stats(), NULL, NULL));
}

static void statsq_numbering(void **state)
{
	check_statsq_at(F(STATS_VQ));
	check_statsq_at(F(STATS_VQ) | F(FREE_PAGE_HINT));
	check_statsq_at(F(STATS_VQ) | F(PAGE_REPORTING));
	check_statsq_at(F(STATS_VQ) | F(FREE_PAGE_HINT) | F(PAGE_REPORTING));
}

static void check_hintq_at(uint64_t feat, unsigned expect)
{
	up(feat);
	assert_int_equal(q_hint(), expect);
	uint64_t before = info().hinted_bytes;
	assert_int_equal(mv_balloon_hint_start(E.b), 0);
	send_cmd_id(cfg32(CFG_HINT_CMD_ID));
	vq_add(expect, &(struct sg){ DATA, 4 * PG, true }, 1);
	kick(expect);
	assert_int_equal(info().hinted_bytes - before, 4 * PG);
	send_cmd_id(CMD_ID_STOP);
	kick(expect);
	assert_int_equal(mv_balloon_hint_stop(E.b), 0);
}

static void free_page_vq_numbering(void **state)
{
	check_hintq_at(F(FREE_PAGE_HINT), 2);
	check_hintq_at(F(FREE_PAGE_HINT) | F(PAGE_REPORTING), 2);
	check_hintq_at(F(STATS_VQ) | F(FREE_PAGE_HINT), 3);
	check_hintq_at(MV_BALLOON_FEATURES_ALL, 3);
}

static void check_reportq_at(uint64_t feat, unsigned expect)
{
	up(feat);
	assert_int_equal(q_report(), expect);
	uint64_t before = info().reported_bytes;
	assert_true(report(DATA, 4 * PG));
	assert_int_equal(info().reported_bytes - before, 4 * PG);
}

static void reporting_vq_numbering(void **state)
{
	check_reportq_at(F(PAGE_REPORTING), 2);
	check_reportq_at(F(PAGE_REPORTING) | F(STATS_VQ), 3);
	check_reportq_at(F(PAGE_REPORTING) | F(FREE_PAGE_HINT), 3);
	check_reportq_at(F(PAGE_REPORTING) | F(PAGE_POISON) | F(DEFLATE_ON_OOM), 2);
	check_reportq_at(MV_BALLOON_FEATURES_ALL, 4);
}

static void absent_queues_do_not_exist(void **state)
{
	static const uint64_t sets[] = { 0, F(PAGE_REPORTING), F(STATS_VQ) | F(FREE_PAGE_HINT),
	                                 MV_BALLOON_FEATURES_ALL };
	for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++) {
		assert_true(negotiate(sets[i] | V1) & ST_FEATURES_OK);
		unsigned n = queues_for(sets[i]);
		assert_int_equal(mv_balloon_nr_queues(E.b), n);
		for (unsigned q = n; q < 6; q++) {
			wr(MMIO_QUEUE_SEL, q);
			assert_int_equal(rd(MMIO_QUEUE_NUM_MAX), 0);
		}
		struct mv_virtq_setup s = { .num = QSIZE, .desc = RING_GPA(0),
		                            .avail = RING_GPA(0) + 0x400, .used = RING_GPA(0) + 0x800 };
		assert_int_equal(mv_balloon_queue_setup(E.b, n, &s), -EINVAL);
	}
}

/* ---- rows: configuration layout (5.5.4) ---- */

static void num_pages_le32(void **state)
{
	up(0);
	assert_int_equal(mv_balloon_set_target(E.b, 0x0503ull * PG), 0);
	uint8_t b[4];
	for (unsigned i = 0; i < 4; i++)
		b[i] = (uint8_t)rd_n(MMIO_CONFIG + CFG_NUM_PAGES + i, 1);
	assert_memory_equal(b, ((uint8_t[]){ 0x03, 0x05, 0, 0 }), 4);
	assert_int_equal(cfg32(CFG_NUM_PAGES), 0x0503);
	wr(MMIO_CONFIG + CFG_NUM_PAGES, 7); /* the driver cannot move the target */
	assert_int_equal(cfg32(CFG_NUM_PAGES), 0x0503);
	assert_int_equal(info().target_bytes, 0x0503ull * PG);
}

static void actual_le32(void **state)
{
	up(0);
	uint8_t b[4] = { 0x02, 0x01, 0, 0 };
	mv_balloon_mmio_write(E.b, MMIO_CONFIG + CFG_ACTUAL, b, 4);
	assert_int_equal(info().actual_bytes, 0x102ull * PG);
	assert_int_equal(cfg32(CFG_ACTUAL), 0x102);
}

static void cmd_id_read_only(void **state)
{
	up(F(FREE_PAGE_HINT));
	assert_int_equal(mv_balloon_hint_start(E.b), 0);
	uint32_t id = cfg32(CFG_HINT_CMD_ID);
	wr(MMIO_CONFIG + CFG_HINT_CMD_ID, id + 1);
	wr(MMIO_CONFIG + CFG_HINT_CMD_ID, CMD_ID_DONE);
	assert_int_equal(cfg32(CFG_HINT_CMD_ID), id);
}

/* Without PAGE_POISON, offset 12 means nothing: a stray write must not stop reported
 * pages from being released. */
static void poison_val_needs_page_poison(void **state)
{
	fill32(DATA, 2u << 20, 0xa5a5a5a5);
	up_poison(F(PAGE_REPORTING), true, 0xa5a5a5a5);
	uint64_t rel = info().released_bytes;
	assert_true(report(DATA, 2u << 20));
	assert_int_equal(info().released_bytes - rel, 2u << 20);
	assert_true(all32(DATA, 2u << 20, 0));
}

static const struct conf_row rows[] = {
	ROW("4.2.2.1 Device Requirements: MMIO Device Register Layout", "MUST",
	    "MagicValue 0x74726976, Version 2; 5.5.1 Device ID 5", mmio_identity),
	ROWL("6.2 Device Requirements: Reserved Feature Bits", "MUST", "offer VIRTIO_F_VERSION_1",
	    offers_version_1,
	     "every test: the driver binds"),
	ROW("6.2 Device Requirements: Reserved Feature Bits", "MAY",
	    "memvirt: fail FEATURES_OK if VERSION_1 is not accepted", refuses_without_version_1),
	ROWL("2.2.2 Device Requirements: Feature Bits", "SHOULD",
	    "accept any valid subset of the offered features (all 64)", accepts_every_valid_subset,
	     "inflate_deflate_memtotal_and_data, deflate_on_oom_*"),
	ROW("2.2.2 Device Requirements: Feature Bits", "MUST",
	    "fail FEATURES_OK for features it did not offer", refuses_unoffered_features),
	ROW("2.2.2 Device Requirements: Feature Bits", "SHOULD NOT",
	    "fail re-negotiation of the same features after reset", renegotiates_after_reset),
	ROW("2.1.2 Device Requirements: Device Status Field", "MUST",
	    "initialize device status to 0 upon reset", reset_zeroes_status),
	ROW("2.1.2 Device Requirements: Device Status Field", "MUST NOT",
	    "consume buffers or notify before DRIVER_OK", no_buffers_before_driver_ok),
	ROW("2.1.2 Device Requirements: Device Status Field", "SHOULD",
	    "set DEVICE_NEEDS_RESET in an error state (broken avail idx)",
	    sets_needs_reset_on_broken_ring),
	ROW("2.1.2 Device Requirements: Device Status Field", "MUST",
	    "send a config change notification after DEVICE_NEEDS_RESET", needs_reset_notifies),
	ROW("2.4.1 Device Requirements: Device Reset", "MUST NOT",
	    "notify or touch queues after reset until re-initialized", quiet_after_reset),
	ROW("2.5.2 Device Requirements: Device Configuration Space", "MUST",
	    "allow reading every config field before FEATURES_OK", config_readable_before_features_ok),
	ROW("4.2.2.1 Device Requirements: MMIO Device Register Layout", "MUST",
	    "keep InterruptStatus bits until InterruptACK, undefined bits 0",
	    interrupt_status_until_ack),
	ROW("4.2.2.1 Device Requirements: MMIO Device Register Layout", "MUST",
	    "clear InterruptStatus and QueueReady upon reset", reset_clears_interrupts_and_ready),
	ROW("4.2.2.1 Device Requirements: MMIO Device Register Layout", "MUST NOT",
	    "access a virtqueue while QueueReady is 0", no_access_unready_queue),
	ROWL("5.5.2 Virtqueues (protocol)", "MUST", "statsq is queue 2 when STATS_VQ is negotiated",
	    statsq_numbering,
	     "statistics_reach_the_device"),
	ROWL("5.5.2 Virtqueues (protocol)", "MUST",
	    "free_page_vq numbered compactly (2 without STATS_VQ, else 3)", free_page_vq_numbering,
	     "hint_run_while_the_guest_writes"),
	ROWL("5.5.2 Virtqueues (protocol)", "MUST",
	    "reporting_vq numbered compactly (2, 3 or 4 by feature subset)", reporting_vq_numbering,
	     "freed_memory_is_reported_and_released (queues 4 and 2)"),
	ROW("5.5.2 Virtqueues (protocol)", "MUST",
	    "queues of features not negotiated do not exist (QueueNumMax 0)",
	    absent_queues_do_not_exist),
	ROWL("5.5.4 Device configuration layout (protocol)", "MUST",
	    "num_pages: le32 at offset 0, set by the device only", num_pages_le32,
	     "inflate_deflate_memtotal_and_data"),
	ROWL("5.5.4 Device configuration layout (protocol)", "MUST",
	    "actual: le32 at offset 4, written by the driver", actual_le32,
	     "inflate_deflate_memtotal_and_data"),
	ROW("5.5.4 Device configuration layout (protocol)", "MUST",
	    "free_page_hint_cmd_id is read-only for the driver", cmd_id_read_only),
	ROWL("5.5.4 Device configuration layout (protocol)", "MUST NOT",
	    "use poison_val (offset 12) unless PAGE_POISON is negotiated", poison_val_needs_page_poison,
	     "page_poison_negotiation"),
};

int main(void)
{
	return devkit_main("virtio-balloon device conformance: transport, features, layout", rows,
	                   sizeof(rows) / sizeof(rows[0]));
}
