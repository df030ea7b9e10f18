/* virtio.h - the parts of the virtio 1.x spec the balloon driver speaks (freestanding). */
#ifndef MVG_VIRTIO_H
#define MVG_VIRTIO_H

#include <stdint.h>

/* virtio-mmio registers, version 2 (spec 4.2.2), offsets in the device window. */
#define VMMIO_MAGIC_VALUE        0x000 /* "virt" = 0x74726976 */
#define VMMIO_VERSION            0x004
#define VMMIO_DEVICE_ID          0x008
#define VMMIO_VENDOR_ID          0x00c
#define VMMIO_DEVICE_FEATURES    0x010
#define VMMIO_DEVICE_FEATURES_SEL 0x014
#define VMMIO_DRIVER_FEATURES    0x020
#define VMMIO_DRIVER_FEATURES_SEL 0x024
#define VMMIO_QUEUE_SEL          0x030
#define VMMIO_QUEUE_NUM_MAX      0x034
#define VMMIO_QUEUE_NUM          0x038
#define VMMIO_QUEUE_READY        0x044
#define VMMIO_QUEUE_NOTIFY       0x050
#define VMMIO_INTERRUPT_STATUS   0x060
#define VMMIO_INTERRUPT_ACK      0x064
#define VMMIO_STATUS             0x070
#define VMMIO_QUEUE_DESC_LOW     0x080
#define VMMIO_QUEUE_DESC_HIGH    0x084
#define VMMIO_QUEUE_DRIVER_LOW   0x090
#define VMMIO_QUEUE_DRIVER_HIGH  0x094
#define VMMIO_QUEUE_DEVICE_LOW   0x0a0
#define VMMIO_QUEUE_DEVICE_HIGH  0x0a4
#define VMMIO_CONFIG_GENERATION  0x0fc
#define VMMIO_CONFIG             0x100

#define VMMIO_MAGIC      0x74726976u
#define VMMIO_VERSION_2  2u
#define VIRTIO_ID_BALLOON 5u

#define VMMIO_INT_VRING  (1u << 0) /* InterruptStatus: used buffers */
#define VMMIO_INT_CONFIG (1u << 1) /* InterruptStatus: configuration change */

/* Device status bits (spec 2.1). */
#define VSTAT_ACKNOWLEDGE  1u
#define VSTAT_DRIVER       2u
#define VSTAT_DRIVER_OK    4u
#define VSTAT_FEATURES_OK  8u
#define VSTAT_NEEDS_RESET  64u
#define VSTAT_FAILED       128u

/* Feature bits: the balloon's (spec 5.5.3) and the transport's. */
#define VB_F_MUST_TELL_HOST  0
#define VB_F_STATS_VQ        1
#define VB_F_DEFLATE_ON_OOM  2
#define VB_F_FREE_PAGE_HINT  3
#define VB_F_PAGE_POISON     4
#define VB_F_PAGE_REPORTING  5
#define VB_F_ALL             0x3full
#define VIRTIO_F_VERSION_1   32

/* Balloon configuration space (little-endian u32 fields). */
#define VBCFG_NUM_PAGES      0
#define VBCFG_ACTUAL         4
#define VBCFG_HINT_CMD_ID    8
#define VBCFG_POISON_VAL     12

#define VB_HINT_CMD_ID_STOP  0u /* the driver's end of a hint run */
#define VB_HINT_CMD_ID_DONE  1u /* the device's "stop hinting" */

#define VB_PFN_SHIFT 12 /* PFNs are in 4 KiB units whatever the guest's page size */

/* Statistics: 10-byte packed entries, u16 tag + u64 value, both little-endian. */
#define VB_STAT_ENTRY 10u
#define VB_STAT_NR    16u /* tags 0-9 of the spec, 10-15 of Linux 6.12 */

/* Split virtqueue layout (spec 2.7). */
#define VRING_DESC_F_NEXT  1u
#define VRING_DESC_F_WRITE 2u
#define VRING_USED_F_NO_NOTIFY 1u

struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vring_used_elem {
	uint32_t id;
	uint32_t len;
};

/* avail: u16 flags, u16 idx, u16 ring[num], (u16 used_event);
 * used:  u16 flags, u16 idx, struct vring_used_elem ring[num], (u16 avail_event). */
#define VRING_AVAIL_BYTES(num) (4u + 2u * (num) + 2u)
#define VRING_USED_BYTES(num)  (4u + 8u * (num) + 2u)

/* Little-endian accessors for guest memory shared with the device. */
static inline uint16_t vle16(uint16_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	return __builtin_bswap16(v);
#else
	return v;
#endif
}

static inline uint32_t vle32(uint32_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	return __builtin_bswap32(v);
#else
	return v;
#endif
}

static inline uint64_t vle64(uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	return __builtin_bswap64(v);
#else
	return v;
#endif
}

#endif
