/* conformance.h - the table of the virtio-balloon conformance kit: one row per normative
 * statement, run as one cmocka test named after its clause; virtio-mmio and split-ring
 * layout constants shared by the device and the driver halves.
 *
 * Clause numbers are those of virtio v1.2 (cs01); the clause titles are the spec's own
 * ("Device Requirements: Memory Statistics"). Rows marked "(protocol)" check a step the
 * spec describes without a keyword that interoperation depends on; rows marked
 * "memvirt:" check a contract of our headers that goes beyond the spec.
 */
#ifndef MV_CONFORMANCE_H
#define MV_CONFORMANCE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct conf_row {
	const char *clause;
	const char *side;  /* "device" or "driver" */
	const char *level; /* MUST, MUST NOT, SHOULD, SHOULD NOT, MAY */
	const char *text;  /* the requirement, short */
	void (*check)(void **state);
	const char *linux_test; /* the Linux column: the test of tests/guests/test_linux_balloon.c
	                           in which Linux 6.1's own driver, over vhost-user, observes this
	                           row; NULL where Linux's driver cannot show it */
};

/* virtio-mmio version 2 registers (spec 4.2.2). */
enum {
	MMIO_MAGIC = 0x000, MMIO_VERSION = 0x004, MMIO_DEVICE_ID = 0x008, MMIO_VENDOR_ID = 0x00c,
	MMIO_DEV_FEATURES = 0x010, MMIO_DEV_FEATURES_SEL = 0x014,
	MMIO_DRV_FEATURES = 0x020, MMIO_DRV_FEATURES_SEL = 0x024,
	MMIO_QUEUE_SEL = 0x030, MMIO_QUEUE_NUM_MAX = 0x034, MMIO_QUEUE_NUM = 0x038,
	MMIO_QUEUE_READY = 0x044, MMIO_QUEUE_NOTIFY = 0x050,
	MMIO_INT_STATUS = 0x060, MMIO_INT_ACK = 0x064, MMIO_STATUS = 0x070,
	MMIO_QUEUE_DESC_LO = 0x080, MMIO_QUEUE_DESC_HI = 0x084,
	MMIO_QUEUE_DRIVER_LO = 0x090, MMIO_QUEUE_DRIVER_HI = 0x094,
	MMIO_QUEUE_DEVICE_LO = 0x0a0, MMIO_QUEUE_DEVICE_HI = 0x0a4,
	MMIO_CONFIG_GEN = 0x0fc, MMIO_CONFIG = 0x100,
};
#define MMIO_MAGIC_VALUE 0x74726976u
#define INT_USED   1u
#define INT_CONFIG 2u

/* Device status bits (spec 2.1). */
enum { ST_ACK = 1, ST_DRIVER = 2, ST_DRIVER_OK = 4, ST_FEATURES_OK = 8, ST_NEEDS_RESET = 64,
       ST_FAILED = 128 };

/* Balloon config space offsets (spec 5.5.4) and reserved hint command IDs (5.5.6.5). */
enum { CFG_NUM_PAGES = 0, CFG_ACTUAL = 4, CFG_HINT_CMD_ID = 8, CFG_POISON = 12 };
enum { CMD_ID_STOP = 0, CMD_ID_DONE = 1 };

/* Split virtqueue (spec 2.7): 16-byte descriptors, le16 rings. */
#define VRING_DESC_F_NEXT     1
#define VRING_DESC_F_WRITE    2
#define VRING_DESC_F_INDIRECT 4
struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
};
#define VRING_AVAIL_OFF_IDX  2u
#define VRING_AVAIL_RING(i)  (4u + 2u * (i))
#define VRING_USED_OFF_IDX   2u
#define VRING_USED_ELEM(i)   (4u + 8u * (i))

/* A stats entry: le16 tag, le64 val, packed: 10 bytes (5.5.6.3). */
#define STAT_ENTRY 10u

#define CONF_BIT(b) (1ull << (b))

/* Run the table: one cmocka test per row, named "<clause> <side> <LEVEL>: <text>". */
static inline int conf_run(const char *group, const struct conf_row *rows, size_t n,
                           int (*setup)(void **), int (*teardown)(void **),
                           int (*group_setup)(void **), int (*group_teardown)(void **))
{
	struct CMUnitTest *t = calloc(n, sizeof(*t));
	char **names = calloc(n, sizeof(*names));
	if (!t || !names)
		return 1;
	size_t with_linux = 0;
	for (size_t i = 0; i < n; i++) {
		const char *lx = rows[i].linux_test;
		size_t len = strlen(rows[i].clause) + strlen(rows[i].side) + strlen(rows[i].level) +
		             strlen(rows[i].text) + (lx ? strlen(lx) + 24 : 0) + 8;
		names[i] = malloc(len);
		if (!names[i])
			return 1;
		snprintf(names[i], len, "%s %s %s: %s%s%s%s", rows[i].clause, rows[i].side, rows[i].level,
		         rows[i].text, lx ? " [Linux 6.1: " : "", lx ? lx : "", lx ? "]" : "");
		with_linux += lx != NULL;
		t[i] = (struct CMUnitTest){ .name = names[i], .test_func = rows[i].check,
		                            .setup_func = setup, .teardown_func = teardown };
	}
	int rc = _cmocka_run_group_tests(group, t, n, group_setup, group_teardown);
	if (with_linux)
		printf("%zu of %zu rows are also observed through Linux 6.1's driver "
		       "(tests/guests/test_linux_balloon, named in brackets)\n", with_linux, n);
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	free(t);
	return rc;
}

#endif
