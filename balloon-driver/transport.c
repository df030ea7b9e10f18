/* transport.c - virtio-mmio (version 2) for the balloon: probe, negotiation, queues, config. */
#include "drv.h"

#define RESET_POLLS 1000   /* reads of Status after a reset before giving up */
#define CONFIG_RETRIES 64  /* ConfigGeneration changes tolerated during one config read */

uint32_t mvg__rd(struct mvg_balloon *d, uint32_t off)
{
	return d->p.mmio_read(d->p.ctx, off);
}

void mvg__wr(struct mvg_balloon *d, uint32_t off, uint32_t val)
{
	d->p.mmio_write(d->p.ctx, off, val);
}

/* Reset the device and wait (bounded) until it reads back 0, as version 2 asks. */
void mvg__transport_reset(struct mvg_balloon *d)
{
	mvg__wr(d, VMMIO_STATUS, 0);
	for (int i = 0; i < RESET_POLLS && mvg__rd(d, VMMIO_STATUS); i++)
		;
}

void mvg__transport_set_status(struct mvg_balloon *d, uint32_t bits)
{
	mvg__wr(d, VMMIO_STATUS, mvg__rd(d, VMMIO_STATUS) | bits);
}

/* 0 if a virtio-mmio v2 balloon answers, -1 otherwise. Leaves it reset, acknowledged. */
int mvg__transport_probe(struct mvg_balloon *d)
{
	if (mvg__rd(d, VMMIO_MAGIC_VALUE) != VMMIO_MAGIC)
		return -1;
	if (mvg__rd(d, VMMIO_VERSION) != VMMIO_VERSION_2)
		return -1;
	if (mvg__rd(d, VMMIO_DEVICE_ID) != VIRTIO_ID_BALLOON)
		return -1;
	mvg__transport_reset(d);
	mvg__transport_set_status(d, VSTAT_ACKNOWLEDGE);
	mvg__transport_set_status(d, VSTAT_DRIVER);
	return 0;
}

static uint64_t device_features(struct mvg_balloon *d)
{
	mvg__wr(d, VMMIO_DEVICE_FEATURES_SEL, 0);
	uint64_t lo = mvg__rd(d, VMMIO_DEVICE_FEATURES);
	mvg__wr(d, VMMIO_DEVICE_FEATURES_SEL, 1);
	uint64_t hi = mvg__rd(d, VMMIO_DEVICE_FEATURES);
	return hi << 32 | lo;
}

static void driver_features(struct mvg_balloon *d, uint64_t f)
{
	mvg__wr(d, VMMIO_DRIVER_FEATURES_SEL, 0);
	mvg__wr(d, VMMIO_DRIVER_FEATURES, (uint32_t)f);
	mvg__wr(d, VMMIO_DRIVER_FEATURES_SEL, 1);
	mvg__wr(d, VMMIO_DRIVER_FEATURES, (uint32_t)(f >> 32));
}

/* Accept VERSION_1 and the wanted balloon bits the device offers; FEATURES_OK must stick.
 * `wanted` holding PAGE_POISON means the guest poisons free pages. 0 (d->features set)
 * or -2 (status FAILED). */
int mvg__transport_negotiate(struct mvg_balloon *d, uint64_t wanted)
{
	uint64_t offered = device_features(d);
	if (!(offered >> VIRTIO_F_VERSION_1 & 1))
		goto refused;
	uint64_t f = (offered & wanted & VB_F_ALL) | 1ull << VIRTIO_F_VERSION_1;
	/* a guest that poisons free pages must not report them to a device that would not
	 * keep the poison (spec 5.5.3.1) */
	if (wanted >> VB_F_PAGE_POISON & 1 && !(f >> VB_F_PAGE_POISON & 1))
		f &= ~(1ull << VB_F_PAGE_REPORTING);
	driver_features(d, f);
	mvg__transport_set_status(d, VSTAT_FEATURES_OK);
	if (!(mvg__rd(d, VMMIO_STATUS) & VSTAT_FEATURES_OK))
		goto refused;
	d->features = f;
	return 0;
refused:
	mvg__transport_set_status(d, VSTAT_FAILED);
	return -2;
}

static uint32_t lo32(uint64_t v) { return (uint32_t)v; }
static uint32_t hi32(uint64_t v) { return (uint32_t)(v >> 32); }

/* Set up transport queue `index` with at most `want` entries (a power of 2): allocate
 * the rings and hand them to the device. 0, -2 (queue missing or in use), -3 (memory). */
int mvg__transport_queue(struct mvg_balloon *d, struct mvg__vq *q, unsigned index, unsigned want)
{
	mvg__wr(d, VMMIO_QUEUE_SEL, index);
	if (mvg__rd(d, VMMIO_QUEUE_READY))
		return -2;
	uint32_t max = mvg__rd(d, VMMIO_QUEUE_NUM_MAX);
	if (!max)
		return -2;
	unsigned num = want;
	while (num > max)
		num >>= 1;
	if (mvg__vq_init(d, q, num))
		return -3;
	q->index = (uint16_t)index;
	uint64_t desc = q->ring_gpa[0], avail = q->ring_gpa[1], used = avail + 1024;
	mvg__wr(d, VMMIO_QUEUE_NUM, num);
	mvg__wr(d, VMMIO_QUEUE_DESC_LOW, lo32(desc));
	mvg__wr(d, VMMIO_QUEUE_DESC_HIGH, hi32(desc));
	mvg__wr(d, VMMIO_QUEUE_DRIVER_LOW, lo32(avail));
	mvg__wr(d, VMMIO_QUEUE_DRIVER_HIGH, hi32(avail));
	mvg__wr(d, VMMIO_QUEUE_DEVICE_LOW, lo32(used));
	mvg__wr(d, VMMIO_QUEUE_DEVICE_HIGH, hi32(used));
	mvg__wr(d, VMMIO_QUEUE_READY, 1);
	if (mvg__rd(d, VMMIO_QUEUE_READY) != 1) {
		mvg__vq_release(d, q);
		return -2;
	}
	return 0;
}

/* A consistent 32-bit config field, retried while ConfigGeneration moves. Register
 * values: the platform's mmio_read does what readl() does for a little-endian device. */
uint32_t mvg__config_read(struct mvg_balloon *d, uint32_t off)
{
	uint32_t v = 0;
	for (int i = 0; i < CONFIG_RETRIES; i++) {
		uint32_t g = mvg__rd(d, VMMIO_CONFIG_GENERATION);
		v = mvg__rd(d, VMMIO_CONFIG + off);
		if (mvg__rd(d, VMMIO_CONFIG_GENERATION) == g)
			break;
	}
	return v;
}

void mvg__config_write(struct mvg_balloon *d, uint32_t off, uint32_t val)
{
	mvg__wr(d, VMMIO_CONFIG + off, val);
}

/* Read and acknowledge InterruptStatus; returns the bits that were set. */
uint32_t mvg__interrupt_ack(struct mvg_balloon *d)
{
	uint32_t isr = mvg__rd(d, VMMIO_INTERRUPT_STATUS);
	if (isr)
		mvg__wr(d, VMMIO_INTERRUPT_ACK, isr);
	return isr;
}

void mvg__notify(struct mvg_balloon *d, struct mvg__vq *q)
{
	mvg__wr(d, VMMIO_QUEUE_NOTIFY, q->index);
}
