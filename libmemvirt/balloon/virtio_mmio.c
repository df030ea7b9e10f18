/* virtio_mmio.c - the balloon device's transport side: the locked entry points any
 * transport uses, and the virtio-mmio register file (spec 4.2.2, version 2) over them. */
#include "balloon_dev.h"

#include <endian.h>
#include <errno.h>
#include <string.h>

#define R_MAGIC            0x000
#define R_VERSION          0x004
#define R_DEVICE_ID        0x008
#define R_VENDOR_ID        0x00c
#define R_DEV_FEATURES     0x010
#define R_DEV_FEATURES_SEL 0x014
#define R_DRV_FEATURES     0x020
#define R_DRV_FEATURES_SEL 0x024
#define R_QUEUE_SEL        0x030
#define R_QUEUE_NUM_MAX    0x034
#define R_QUEUE_NUM        0x038
#define R_QUEUE_READY      0x044
#define R_QUEUE_NOTIFY     0x050
#define R_INT_STATUS       0x060
#define R_INT_ACK          0x064
#define R_STATUS           0x070
#define R_QUEUE_DESC_LO    0x080
#define R_QUEUE_DESC_HI    0x084
#define R_QUEUE_DRIVER_LO  0x090
#define R_QUEUE_DRIVER_HI  0x094
#define R_QUEUE_DEVICE_LO  0x0a0
#define R_QUEUE_DEVICE_HI  0x0a4
#define R_SHM_SEL          0x0ac
#define R_SHM_LEN_LO       0x0b0
#define R_SHM_BASE_HI      0x0bc
#define R_QUEUE_RESET      0x0c0
#define R_CONFIG_GEN       0x0fc
#define R_CONFIG           0x100

#define MMIO_MAGIC  0x74726976u /* "virt" */
#define MMIO_VENDOR 0x5452564du /* "MVRT" */
#define BALLOON_ID  5u

/* ---- entry points for any transport ---- */

MV_API uint64_t mv_balloon_device_features(struct mv_balloon *b)
{
	if (!b)
		return 0;
	pthread_mutex_lock(&b->lock);
	uint64_t f = mv__bl_device_features(b);
	pthread_mutex_unlock(&b->lock);
	return f;
}

MV_API int mv_balloon_driver_features(struct mv_balloon *b, uint64_t features)
{
	if (!b)
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	int err = mv__bl_driver_features(b, features);
	pthread_mutex_unlock(&b->lock);
	return err;
}

MV_API uint8_t mv_balloon_get_status(struct mv_balloon *b)
{
	if (!b)
		return 0;
	pthread_mutex_lock(&b->lock);
	uint8_t st = b->status;
	pthread_mutex_unlock(&b->lock);
	return st;
}

MV_API int mv_balloon_set_status(struct mv_balloon *b, uint8_t status)
{
	if (!b)
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	int err = mv__bl_set_status(b, status);
	pthread_mutex_unlock(&b->lock);
	return err;
}

MV_API uint32_t mv_balloon_config_generation(struct mv_balloon *b)
{
	if (!b)
		return 0;
	pthread_mutex_lock(&b->lock);
	uint32_t g = b->generation;
	pthread_mutex_unlock(&b->lock);
	return g;
}

MV_API int mv_balloon_config_read(struct mv_balloon *b, unsigned off, void *buf, unsigned len)
{
	if (!b || (!buf && len))
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	int err = mv__bl_config_read(b, off, buf, len);
	pthread_mutex_unlock(&b->lock);
	return err;
}

MV_API int mv_balloon_config_write(struct mv_balloon *b, unsigned off, const void *buf, unsigned len)
{
	if (!b || !buf)
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	int err = mv__bl_config_write(b, off, buf, len);
	pthread_mutex_unlock(&b->lock);
	return err;
}

MV_API unsigned mv_balloon_nr_queues(struct mv_balloon *b)
{
	if (!b)
		return 0;
	pthread_mutex_lock(&b->lock);
	unsigned n = b->nr_vq;
	pthread_mutex_unlock(&b->lock);
	return n;
}

MV_API int mv_balloon_queue_setup(struct mv_balloon *b, unsigned q, const struct mv_virtq_setup *setup)
{
	if (!b)
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	int err = mv__bl_queue_setup(b, q, setup);
	pthread_mutex_unlock(&b->lock);
	return err;
}

MV_API int mv_balloon_queue_notify(struct mv_balloon *b, unsigned q)
{
	if (!b)
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	int err = mv__bl_queue_notify(b, q);
	pthread_mutex_unlock(&b->lock);
	return err;
}

/* ---- virtio-mmio ---- */

void mv__bl_mmio_reset(struct mv_bl_mmio *m)
{
	memset(m, 0, sizeof(*m));
}

static void set_half(uint64_t *v, bool high, uint32_t half)
{
	*v = high ? (*v & 0xffffffffull) | (uint64_t)half << 32 : (*v & ~0xffffffffull) | half;
}

/* The staged setup of the selected queue, NULL if QueueSel names no queue. */
static struct mv_virtq_setup *staged(struct mv_balloon *b)
{
	return b->mmio.queue_sel < b->nr_vq ? &b->mmio.q[b->mmio.queue_sel] : NULL;
}

static int reg_read(struct mv_balloon *b, unsigned off, uint32_t *v)
{
	struct mv_bl_mmio *m = &b->mmio;
	uint64_t f = mv__bl_device_features(b);
	switch (off) {
	case R_MAGIC:         *v = MMIO_MAGIC; return 0;
	case R_VERSION:       *v = 2; return 0;
	case R_DEVICE_ID:     *v = BALLOON_ID; return 0;
	case R_VENDOR_ID:     *v = MMIO_VENDOR; return 0;
	case R_DEV_FEATURES:  *v = m->dev_sel < 2 ? (uint32_t)(f >> (32 * m->dev_sel)) : 0; return 0;
	case R_QUEUE_NUM_MAX: *v = staged(b) ? b->cfg.queue_max : 0; return 0;
	case R_QUEUE_READY:   *v = staged(b) && b->vq[m->queue_sel].ready; return 0;
	case R_INT_STATUS:    *v = m->isr; return 0;
	case R_STATUS:        *v = b->status; return 0;
	case R_QUEUE_RESET:   *v = 0; return 0;
	case R_CONFIG_GEN:    *v = b->generation; return 0;
	}
	if (off >= R_SHM_LEN_LO && off <= R_SHM_BASE_HI) {
		*v = 0xffffffffu; /* no shared memory region: length and base read as -1 */
		return 0;
	}
	return -EINVAL;
}

/* Status writes hand over the staged driver features when FEATURES_OK is being set. */
static int status_write(struct mv_balloon *b, uint8_t st)
{
	if (st & MV_VS_FEATURES_OK && !(b->status & MV_VS_FEATURES_OK))
		mv__bl_driver_features(b, b->mmio.drv_features); /* failing: FEATURES_OK refused */
	return mv__bl_set_status(b, st);
}

static int queue_reg_write(struct mv_balloon *b, unsigned off, uint32_t v)
{
	struct mv_virtq_setup *s = staged(b);
	if (!s)
		return -EINVAL;
	if (off == R_QUEUE_READY)
		return mv__bl_queue_setup(b, b->mmio.queue_sel, v & 1 ? s : NULL);
	if (b->vq[b->mmio.queue_sel].ready)
		return -EBUSY; /* not while the queue is live */
	switch (off) {
	case R_QUEUE_NUM:       s->num = v <= 32768 ? (uint16_t)v : 0; break;
	case R_QUEUE_DESC_LO:   set_half(&s->desc, false, v); break;
	case R_QUEUE_DESC_HI:   set_half(&s->desc, true, v); break;
	case R_QUEUE_DRIVER_LO: set_half(&s->avail, false, v); break;
	case R_QUEUE_DRIVER_HI: set_half(&s->avail, true, v); break;
	case R_QUEUE_DEVICE_LO: set_half(&s->used, false, v); break;
	case R_QUEUE_DEVICE_HI: set_half(&s->used, true, v); break;
	}
	return 0;
}

static int reg_write(struct mv_balloon *b, unsigned off, uint32_t v)
{
	struct mv_bl_mmio *m = &b->mmio;
	switch (off) {
	case R_DEV_FEATURES_SEL: m->dev_sel = v; return 0;
	case R_DRV_FEATURES_SEL: m->drv_sel = v; return 0;
	case R_QUEUE_SEL:        m->queue_sel = v; return 0;
	case R_SHM_SEL:          m->shm_sel = v; return 0;
	case R_INT_ACK:          m->isr &= ~v; return 0;
	case R_STATUS:           return status_write(b, (uint8_t)v);
	case R_QUEUE_NOTIFY:     return mv__bl_queue_notify(b, v & 0xffff);
	case R_DRV_FEATURES:
		if (b->status & MV_VS_FEATURES_OK)
			return -EPERM;
		if (m->drv_sel < 2)
			set_half(&m->drv_features, m->drv_sel, v);
		return 0;
	case R_QUEUE_NUM: case R_QUEUE_READY:
	case R_QUEUE_DESC_LO: case R_QUEUE_DESC_HI: case R_QUEUE_DRIVER_LO:
	case R_QUEUE_DRIVER_HI: case R_QUEUE_DEVICE_LO: case R_QUEUE_DEVICE_HI:
		return queue_reg_write(b, off, v);
	}
	return -EINVAL;
}

/* Config space: 1, 2, 4 or 8 bytes, aligned to their size (8 bytes: to 4). */
static bool config_access(uint64_t off, unsigned len)
{
	unsigned align = len < 4 ? len : 4;
	return off >= R_CONFIG && off < MV_VIRTIO_MMIO_SIZE && len <= MV_VIRTIO_MMIO_SIZE - off &&
	       (len == 1 || len == 2 || len == 4 || len == 8) && off % align == 0;
}

static bool reg_access(uint64_t off, unsigned len)
{
	return off < R_CONFIG && len == 4 && off % 4 == 0;
}

MV_API int mv_balloon_mmio_read(struct mv_balloon *b, uint64_t off, void *data, unsigned len)
{
	if (!b || !data || len > 8)
		return -EINVAL;
	memset(data, 0, len);
	if (!config_access(off, len) && !reg_access(off, len))
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	int err;
	if (off >= R_CONFIG) {
		err = mv__bl_config_read(b, (unsigned)(off - R_CONFIG), data, len);
	} else {
		uint32_t v = 0;
		err = reg_read(b, (unsigned)off, &v);
		v = htole32(v);
		memcpy(data, &v, 4);
	}
	pthread_mutex_unlock(&b->lock);
	return err;
}

MV_API int mv_balloon_mmio_write(struct mv_balloon *b, uint64_t off, const void *data, unsigned len)
{
	if (!b || !data || len > 8)
		return -EINVAL;
	if (!config_access(off, len) && !reg_access(off, len))
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	int err;
	if (off >= R_CONFIG) {
		err = mv__bl_config_write(b, (unsigned)(off - R_CONFIG), data, len);
	} else {
		uint32_t v;
		memcpy(&v, data, 4);
		err = reg_write(b, (unsigned)off, le32toh(v));
	}
	pthread_mutex_unlock(&b->lock);
	return err;
}
