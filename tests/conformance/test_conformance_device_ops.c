/* test_conformance_device_ops.c - the virtio-balloon device of libmemvirt against the
 * device-operation requirements of virtio 1.2 section 5.5.6: inflate and deflate, memory
 * statistics, free page hinting, page poison and free page reporting, one table row each.
 * The test plays the guest driver through split rings it writes into guest RAM (devkit.h). */
#include "devkit.h"

/* ---- rows: device operation (5.5.6) ---- */

static void pfns_are_4k_u32(void **state)
{
	up(0);
	/* pages 5..7 of region 1 (above 4 GiB) and the first two of DATA, 20 bytes of PFNs */
	uint32_t pfn[5] = { (uint32_t)(R1_GPA / PG) + 5, (uint32_t)(R1_GPA / PG) + 6,
	                    (uint32_t)(R1_GPA / PG) + 7, DATA / PG, DATA / PG + 1 };
	uint64_t rel = info().released_bytes;
	uint16_t head = send_pfns(0, pfn, 5);
	uint32_t id;
	assert_true(vq_pop(0, &id, NULL));
	assert_int_equal(id, head);
	struct mv_balloon_info i = info();
	assert_int_equal(i.held_bytes, 5 * PG);
	assert_int_equal(i.inflated_bytes, 5 * PG);
	assert_int_equal(i.released_bytes - rel, 5 * PG);
	for (unsigned k = 0; k < 5; k++)
		assert_true(all32((uint64_t)pfn[k] * PG, PG, 0));
	/* only the pages named changed: their neighbours keep the guest's bytes */
	assert_true(all32(R1_GPA + 4 * PG, PG, 0x5a5a5a5a));
	assert_true(all32(R1_GPA + 8 * PG, PG, 0x5a5a5a5a));
	assert_true(all32(DATA + 2 * PG, PG, 0x5a5a5a5a));
	assert_true(all32(DATA - PG, PG, 0x5a5a5a5a));
}

static void acks_inflate_and_deflate(void **state)
{
	up(F(MUST_TELL_HOST));
	uint32_t pfn[4] = { DATA / PG, DATA / PG + 1, DATA / PG + 2, DATA / PG + 3 };
	uint32_t id;
	uint16_t head = send_pfns(0, pfn, 4);
	assert_true(vq_pop(0, &id, NULL));
	assert_int_equal(id, head);
	assert_true(E.q_irqs[0] > 0);
	head = send_pfns(1, pfn + 1, 2);
	assert_true(vq_pop(1, &id, NULL));
	assert_int_equal(id, head);
	struct mv_balloon_info i = info();
	assert_int_equal(i.held_bytes, 2 * PG);
	assert_int_equal(i.deflated_bytes, 2 * PG);
	fill32(DATA + PG, 2 * PG, 0x12345678); /* deflated pages are the guest's again */
	assert_true(all32(DATA + PG, 2 * PG, 0x12345678));
}

static void refuses_pfns_outside_ram(void **state)
{
	up(0);
	uint32_t pfn[5] = { R0_PAGES, 0x80000, (uint32_t)(R1_GPA / PG + R1_PAGES), 0xffffffffu,
	                    (uint32_t)(R1_GPA / PG) - 1 };
	send_pfns(0, pfn, 5);
	vq_pop(0, NULL, NULL);
	struct mv_balloon_info i = info();
	assert_int_equal(i.held_bytes, 0);
	assert_int_equal(i.released_bytes, 0);
	assert_true(i.guest_errors >= 5);
}

/* ---- rows: memory statistics (5.5.6.3) ---- */

/* The protocol: first buffer, request, fresh buffer with these entries; the info after. */
static struct mv_balloon_info stats_round(const uint16_t *tag, const uint64_t *val, unsigned n)
{
	up(F(STATS_VQ));
	send_stats(q_stats(), (uint16_t[]){ MV_BSTAT_MEMTOT }, (uint64_t[]){ 1 }, 1);
	assert_int_equal(used_idx(q_stats()), 0); /* retained until the device asks */
	unsigned irqs = E.q_irqs[q_stats()];
	assert_int_equal(mv_balloon_stats_request(E.b), 0);
	assert_true(vq_pop(q_stats(), NULL, NULL));
	assert_true(E.q_irqs[q_stats()] > irqs);
	send_stats(q_stats(), tag, val, n);
	assert_int_equal(used_idx(q_stats()), 1);
	return info();
}

static void stats_protocol(void **state)
{
	struct mv_balloon_info i = stats_round((uint16_t[]){ MV_BSTAT_MEMFREE },
	                                       (uint64_t[]){ 77ull << 20 }, 1);
	assert_int_equal(i.stats[MV_BSTAT_MEMFREE], 77ull << 20);
	assert_true(i.stats_valid & (1u << MV_BSTAT_MEMFREE));
	assert_int_equal(mv_balloon_stats_request(E.b), 0); /* the retained buffer goes back */
	assert_int_equal(used_idx(q_stats()), 2);
}

static void stats_entries_are_10_bytes(void **state)
{
	uint16_t tag[5] = { 0, 1, 2, 3, 4 };
	uint64_t val[5];
	for (unsigned k = 0; k < 5; k++)
		val[k] = 0x1122334455667700ull + k;
	struct mv_balloon_info i = stats_round(tag, val, 5); /* 50 bytes: no multiple of 6 */
	for (unsigned k = 0; k < 5; k++)
		assert_int_equal(i.stats[k], val[k]);
	assert_int_equal(i.stats_valid & 0x1f, 0x1f);
}

static void stats_unknown_tags_ignored(void **state)
{
	uint16_t tag[6] = { MV_BSTAT_MEMFREE, 0x1234, 16, MV_BSTAT_MEMTOT, 0xffff,
	                    MV_BSTAT_DIRECT_RECLAIMS };
	uint64_t val[6] = { 4000, 1, 2, 5000, 3, 15 };
	struct mv_balloon_info i = stats_round(tag, val, 6);
	assert_int_equal(i.stats[MV_BSTAT_MEMFREE], 4000);
	assert_int_equal(i.stats[MV_BSTAT_MEMTOT], 5000);
	assert_int_equal(i.stats[MV_BSTAT_DIRECT_RECLAIMS], 15);
	assert_int_equal(i.stats_valid & ~((1u << MV_BSTAT_MEMFREE) | (1u << MV_BSTAT_MEMTOT) |
	                                   (1u << MV_BSTAT_DIRECT_RECLAIMS)), 0);
}

static void stats_any_order(void **state)
{
	uint16_t tag[4] = { MV_BSTAT_CACHES, MV_BSTAT_SWAP_IN, MV_BSTAT_HTLB_PGFAIL, MV_BSTAT_AVAIL };
	uint64_t val[4] = { 7, 8, 9, 10 };
	struct mv_balloon_info i = stats_round(tag, val, 4);
	for (unsigned k = 0; k < 4; k++)
		assert_int_equal(i.stats[tag[k]], val[k]);
}

static void stats_oversized_buffer(void **state)
{
	enum { N = 6000 }; /* 60 000 bytes: far more than the 16 tags */
	static uint16_t tag[N];
	static uint64_t val[N];
	for (unsigned k = 0; k < N; k++)
		tag[k] = (uint16_t)(k % 40), val[k] = k;
	struct mv_balloon_info i = stats_round(tag, val, N);
	assert_int_equal(i.stats_valid >> MV_BSTAT_NR, 0);
	assert_int_equal(info().held_bytes, 0);
}

/* ---- rows: free page hinting (5.5.6.5) ---- */

/* A hint run over the 16 pages at DATA with command ID id (0 = the current one). */
static void hint_16(uint32_t id)
{
	send_cmd_id(id ? id : cfg32(CFG_HINT_CMD_ID));
	vq_add(q_hint(), &(struct sg){ DATA, 16 * PG, true }, 1);
	kick(q_hint());
}

static void hint_stop_sent(void)
{
	send_cmd_id(CMD_ID_STOP);
	kick(q_hint());
}

static void cmd_id_reserved_when_idle(void **state)
{
	up(F(FREE_PAGE_HINT));
	assert_true(cfg32(CFG_HINT_CMD_ID) <= CMD_ID_DONE);
	unsigned irqs = E.cfg_irqs;
	assert_int_equal(mv_balloon_hint_start(E.b), 0);
	assert_true(cfg32(CFG_HINT_CMD_ID) >= 2);
	assert_true(E.cfg_irqs > irqs);
}

static void cmd_id_not_reused(void **state)
{
	up(F(FREE_PAGE_HINT));
	assert_int_equal(mv_balloon_hint_start(E.b), 0);
	uint32_t a = cfg32(CFG_HINT_CMD_ID);
	assert_int_equal(mv_balloon_hint_stop(E.b), 0);
	assert_int_equal(mv_balloon_hint_start(E.b), 0); /* no STOP from the driver yet */
	uint32_t b = cfg32(CFG_HINT_CMD_ID);
	assert_true(b >= 2);
	assert_int_not_equal(a, b);
}

static void ignores_stale_cmd_id(void **state)
{
	fill32(DATA, 16 * PG, 0x01020304);
	up(F(FREE_PAGE_HINT));
	assert_int_equal(mv_balloon_hint_start(E.b), 0);
	hint_16(cfg32(CFG_HINT_CMD_ID) + 7);
	hint_stop_sent();
	assert_int_equal(mv_balloon_hint_stop(E.b), 0);
	struct mv_balloon_info i = info();
	assert_int_equal(i.hinted_bytes, 0);
	assert_int_equal(i.hint_discarded_bytes, 0);
	assert_true(all32(DATA, 16 * PG, 0x01020304));
}

static void hinted_write_wins(void **state)
{
	up(F(FREE_PAGE_HINT));
	assert_int_equal(mv_balloon_hint_start(E.b), 0);
	hint_16(0);
	assert_int_equal(info().hinted_bytes, 16 * PG);
	fill32(DATA + 3 * PG, PG, 0xcafef00d); /* the guest reuses one hinted page */
	hint_stop_sent();
	assert_int_equal(mv_balloon_hint_stop(E.b), 0);
	assert_true(all32(DATA + 3 * PG, PG, 0xcafef00d));
	/* memvirt: the 15 pages left alone were released, the written one was not */
	assert_int_equal(info().hint_discarded_bytes, 15 * PG);
	assert_true(all32(DATA + 4 * PG, PG, 0));
}

static void hinted_untouched_after_done(void **state)
{
	up(F(FREE_PAGE_HINT) | F(STATS_VQ));
	assert_int_equal(mv_balloon_hint_start(E.b), 0);
	hint_16(0);
	hint_stop_sent();
	assert_int_equal(mv_balloon_hint_stop(E.b), 0);
	assert_int_equal(cfg32(CFG_HINT_CMD_ID), CMD_ID_DONE);
	fill32(DATA, 16 * PG, 0x0badc0de);
	/* a second, empty run and more traffic must leave the old hinted pages alone */
	assert_int_equal(mv_balloon_hint_start(E.b), 0);
	send_cmd_id(cfg32(CFG_HINT_CMD_ID));
	hint_stop_sent();
	assert_int_equal(mv_balloon_hint_stop(E.b), 0);
	uint32_t pfn = DATA / PG + 100;
	send_pfns(0, &pfn, 1);
	assert_true(all32(DATA, 16 * PG, 0x0badc0de));
}

static void reports_done(void **state)
{
	up(F(FREE_PAGE_HINT));
	assert_int_equal(mv_balloon_hint_start(E.b), 0);
	hint_16(0);
	hint_stop_sent();
	unsigned irqs = E.cfg_irqs;
	assert_int_equal(mv_balloon_hint_stop(E.b), 0);
	assert_int_equal(cfg32(CFG_HINT_CMD_ID), CMD_ID_DONE);
	assert_true(E.cfg_irqs > irqs);
}

/* ---- rows: page poison and free page reporting (5.5.6.6, 5.5.6.7) ---- */

static void report_keeps_poison(void **state)
{
	fill32(DATA, 2u << 20, 0xa5a5a5a5);
	up_poison(F(PAGE_REPORTING) | F(PAGE_POISON), true, 0xa5a5a5a5);
	assert_int_equal(cfg32(CFG_POISON), 0xa5a5a5a5);
	assert_true(report(DATA, 2u << 20));
	assert_true(report(R1_GPA, 2u << 20));
	assert_true(all32(DATA, 2u << 20, 0xa5a5a5a5));
	assert_true(all32(R1_GPA, 8 * PG, 0x5a5a5a5a));
}

static void report_zero_poison(void **state)
{
	fill32(DATA, 2u << 20, 0);
	up_poison(F(PAGE_REPORTING) | F(PAGE_POISON), true, 0);
	assert_true(report(DATA, 2u << 20));
	assert_true(all32(DATA, 2u << 20, 0));
}

static void report_acked_and_released(void **state)
{
	up(F(PAGE_REPORTING));
	uint64_t rel = info().released_bytes;
	assert_true(report(DATA, 2u << 20));
	struct mv_balloon_info i = info();
	assert_int_equal(i.reported_bytes, 2u << 20);
	assert_int_equal(i.released_bytes - rel, 2u << 20);
	assert_int_equal(i.held_bytes, 0); /* reported pages are the guest's after the ack */
	assert_true(all32(DATA, 2u << 20, 0));
	assert_true(all32(DATA - PG, PG, 0x5a5a5a5a));
}

static void legacy_device(void **state)
{
	TU_SKIP("no legacy interface: virtio-mmio Version 2 only, VERSION_1 required");
}

static const struct conf_row rows[] = {
	ROWL("5.5.6 Device Operation (protocol) / 5.5.6.2", "MUST",
	    "PFNs are le32 in 4 KiB units; only the pages named change", pfns_are_4k_u32,
	     "inflate_deflate_memtotal_and_data"),
	ROWL("5.5.6 Device Operation (protocol)", "MUST",
	    "acknowledge inflate and deflate requests by using the descriptor", acks_inflate_and_deflate,
	     "inflate_deflate_memtotal_and_data"),
	ROW("memvirt: balloon.h (hostile guest)", "MUST",
	    "refuse PFNs outside guest RAM, count them", refuses_pfns_outside_ram),
	ROWL("5.5.6.3 Memory Statistics (protocol)", "MUST",
	    "retain the stats buffer, use it on request with a notification", stats_protocol,
	     "statistics_reach_the_device"),
	ROWL("5.5.6.3 Memory Statistics (protocol)", "MUST",
	    "entries are 10 bytes: packed le16 tag + le64 val", stats_entries_are_10_bytes,
	     "statistics_reach_the_device"),
	ROW("5.5.6.3.2 Device Requirements: Memory Statistics", "MUST",
	    "ignore entries with tags it does not recognize", stats_unknown_tags_ignored),
	ROW("5.5.6.3.2 Device Requirements: Memory Statistics", "MUST",
	    "accept entries in any order", stats_any_order),
	ROW("memvirt: balloon.h (hostile guest)", "MUST",
	    "a stats buffer of any size is parsed safely", stats_oversized_buffer),
	ROW("5.5.6.5.2 Device Requirements: Free Page Hinting", "SHOULD",
	    "keep free_page_hint_cmd_id reserved (STOP) while hints are useless",
	    cmd_id_reserved_when_idle),
	ROW("5.5.6.5.2 Device Requirements: Free Page Hinting", "MUST NOT",
	    "reuse a command ID before the driver's STOP", cmd_id_not_reused),
	ROW("5.5.6.5.2 Device Requirements: Free Page Hinting", "MUST",
	    "ignore pages hinted with a command ID that is not current", ignores_stale_cmd_id),
	ROWL("5.5.6.5 Free Page Hinting (protocol)", "MUST",
	    "a write to a hinted page overrides the hint: data retained", hinted_write_wins,
	     "hint_run_while_the_guest_writes"),
	ROW("5.5.6.5.2 Device Requirements: Free Page Hinting", "MUST NOT",
	    "modify a hinted page after the cmd id is DONE", hinted_untouched_after_done),
	ROWL("5.5.6.5.2 Device Requirements: Free Page Hinting", "MUST",
	    "report DONE in free_page_hint_cmd_id when done with the hints", reports_done,
	     "hint_run_while_the_guest_writes"),
	ROW("5.5.6.7.2 Device Requirements: Free Page Reporting", "MUST NOT",
	    "with PAGE_POISON, change a reported page to other than poison_val",
	    report_keeps_poison),
	ROWL("5.5.6.7.2 Device Requirements: Free Page Reporting", "MUST NOT",
	    "with PAGE_POISON and poison_val 0, leave other than zeros", report_zero_poison,
	     "page_poison_negotiation"),
	ROWL("5.5.6.7 Free Page Reporting (protocol)", "MUST",
	    "acknowledge a report by using it; memvirt releases the pages", report_acked_and_released,
	     "freed_memory_is_reported_and_released"),
	ROW("5.5.3.2.1/5.5.4.1/5.5.6.2.1/5.5.6.3.3/5.5.6.5.3 Legacy Interface", "MUST",
	    "legacy interface clauses", legacy_device),
};

int main(void)
{
	return devkit_main("virtio-balloon device conformance: device operation", rows,
	                   sizeof(rows) / sizeof(rows[0]));
}
