/* vubridge.c - a virtio-mmio register file whose device is a vhost-user backend.
 *
 * Threads: the driver's accesses (mvg__vub_read/write) take `lock`, which serialises the
 * register file and the connection: one request and its reply at a time (vuconn.c). The
 * interrupt thread owns the backend channel and only touches atomics: isr, generation,
 * the counters, and `error` (set once, by whoever sees the connection end first).
 */
#include "vubridge_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "../virtio.h"

/* ---- the register file (lock held) ---- */

static int request_u64(struct mvg__vub *v, uint32_t req, uint64_t val)
{
	return mvg__vub_request(v, req, &val, 8, NULL, 0);
}

/* Queues of the balloon's layout for features f: inflate, deflate, then stats, hint and
 * reporting as negotiated. */
static unsigned layout(uint64_t f)
{
	return 2 + (f >> VB_F_STATS_VQ & 1) + (f >> VB_F_FREE_PAGE_HINT & 1) +
	       (f >> VB_F_PAGE_REPORTING & 1);
}

static int mem_table(struct mvg__vub *v)
{
	struct vmem m = { .n = v->cfg.nregions };
	int fds[MVG__VUB_MAX_REGIONS];
	for (unsigned i = 0; i < m.n; i++) {
		const struct mvg__vub_region *r = &v->reg[i];
		m.r[i] = (struct vregion){ r->gpa, r->bytes, (uint64_t)(uintptr_t)r->hva, r->offset };
		fds[i] = v->cfg.memfd;
	}
	return mvg__vub_request(v, SET_MEM_TABLE, &m, 8 + 32 * m.n, fds, m.n);
}

/* FEATURES_OK: the backend takes the driver's features and the guest's memory. */
static int features_ok(struct mvg__vub *v)
{
	uint64_t f = v->drv_features;
	if (f & ~v->dev_features || !(f >> VIRTIO_F_VERSION_1 & 1))
		return -EINVAL;
	int err = request_u64(v, SET_FEATURES, f | (v->protocol ? BIT(F_PROTOCOL) : 0));
	if (!err)
		err = mem_table(v);
	if (!err)
		v->features = f;
	return err;
}

/* The host address of guest-physical [gpa, gpa + len), which must lie in one region. */
static bool hva(const struct mvg__vub *v, uint64_t gpa, uint64_t len, uint64_t *out)
{
	for (unsigned i = 0; i < v->cfg.nregions; i++) {
		const struct mvg__vub_region *r = &v->reg[i];
		if (gpa >= r->gpa && gpa - r->gpa < r->bytes && len <= r->bytes - (gpa - r->gpa)) {
			*out = (uint64_t)(uintptr_t)r->hva + (gpa - r->gpa);
			return true;
		}
	}
	return false;
}

/* QueueReady 1: the ring as virtio_uml hands it over. */
static int queue_start(struct mvg__vub *v, unsigned q)
{
	struct queue *x = &v->q[q];
	uint64_t n = x->num;
	struct vaddr a = { q, 0, 0, 0, 0, 0 };
	if (!(v->status & VSTAT_FEATURES_OK) || !n || n > v->cfg.queue_max ||
	    !hva(v, x->desc, 16 * n, &a.desc) || !hva(v, x->avail, 6 + 2 * n, &a.avail) ||
	    !hva(v, x->used, 6 + 8 * n, &a.used))
		return -EINVAL;
	uint64_t call = q, kick = q;
	int err = mvg__vub_request(v, SET_VRING_CALL, &call, 8, &v->call[q], 1);
	if (!err)
		err = mvg__vub_request_state(v, SET_VRING_NUM, q, (uint32_t)n);
	if (!err)
		err = mvg__vub_request_state(v, SET_VRING_BASE, q, 0);
	if (!err)
		err = mvg__vub_request(v, SET_VRING_ADDR, &a, sizeof(a), NULL, 0);
	if (!err)
		err = mvg__vub_request(v, SET_VRING_KICK, &kick, 8, &v->kick[q], 1);
	if (!err)
		err = mvg__vub_request_state(v, SET_VRING_ENABLE, q, 1);
	x->ready = !err;
	return err;
}

/* QueueReady 0: the ring stops where the backend says. */
static void queue_stop(struct mvg__vub *v, unsigned q)
{
	struct vstate s = { q, 0 }, r;
	if (v->q[q].ready)
		mvg__vub_transact(v, GET_VRING_BASE, 0, &s, sizeof(s), NULL, 0, &r, sizeof(r));
	v->q[q].ready = false;
}

/* Status 0: the backend's device back to its start; ours too. */
static void reset(struct mvg__vub *v)
{
	if (v->pf & BIT(PF_RESET))
		mvg__vub_request(v, RESET_DEVICE, NULL, 0, NULL, 0);
	else
		for (unsigned q = 0; q < NQ; q++)
			queue_stop(v, q);
	for (unsigned q = 0; q < NQ; q++) {
		v->q[q] = (struct queue){ 0 };
		mvg__vub_drain(v->call[q]);
	}
	v->status = 0;
	v->features = v->drv_features = 0;
	v->dev_sel = v->drv_sel = v->queue_sel = 0;
	atomic_store(&v->isr, 0);
}

static void status_write(struct mvg__vub *v, uint32_t val)
{
	if (!val) {
		reset(v);
		return;
	}
	if (val & VSTAT_FEATURES_OK && !(v->status & VSTAT_FEATURES_OK) && features_ok(v))
		val &= ~VSTAT_FEATURES_OK; /* refused: the driver reads it back and gives up */
	v->status = (uint8_t)val;
}

static uint32_t config_read(struct mvg__vub *v, uint32_t off)
{
	struct vcfg c = { off, 4, 0, { 0 } }, r;
	if (off > CONFIG_BYTES - 4 || mvg__vub_transact(v, GET_CONFIG, 0, &c, 12 + 4, NULL, 0, &r, 12 + 4))
		return 0;
	uint32_t val;
	memcpy(&val, r.data, 4);
	return val;
}

static void config_write(struct mvg__vub *v, uint32_t off, uint32_t val)
{
	struct vcfg c = { off, 4, 0, { 0 } };
	memcpy(c.data, &val, 4);
	if (off <= CONFIG_BYTES - 4)
		mvg__vub_request(v, SET_CONFIG, &c, 12 + 4, NULL, 0);
}

static struct queue *selected(struct mvg__vub *v)
{
	return v->queue_sel < layout(v->features) ? &v->q[v->queue_sel] : NULL;
}

static uint32_t reg_read(struct mvg__vub *v, uint32_t off)
{
	struct queue *x = selected(v);
	switch (off) {
	case VMMIO_MAGIC_VALUE:       return VMMIO_MAGIC;
	case VMMIO_VERSION:           return VMMIO_VERSION_2;
	case VMMIO_DEVICE_ID:         return BALLOON_ID;
	case VMMIO_VENDOR_ID:         return MMIO_VENDOR;
	case VMMIO_DEVICE_FEATURES:
		return v->dev_sel < 2 ? (uint32_t)(v->dev_features >> (32 * v->dev_sel)) : 0;
	case VMMIO_QUEUE_NUM_MAX:     return x && v->status & VSTAT_FEATURES_OK ? v->cfg.queue_max : 0;
	case VMMIO_QUEUE_READY:       return x && x->ready;
	case VMMIO_INTERRUPT_STATUS:  return atomic_load(&v->isr);
	case VMMIO_STATUS:            return v->status | (mvg__vub_dead(v) ? VSTAT_NEEDS_RESET : 0);
	case VMMIO_CONFIG_GENERATION: return atomic_load(&v->generation);
	}
	return off >= VMMIO_CONFIG ? config_read(v, off - VMMIO_CONFIG) : 0;
}

static void set_half(uint64_t *r, bool high, uint32_t half)
{
	*r = high ? (*r & 0xffffffffull) | (uint64_t)half << 32 : (*r & ~0xffffffffull) | half;
}

static void queue_write(struct mvg__vub *v, uint32_t off, uint32_t val)
{
	struct queue *x = selected(v);
	if (!x)
		return;
	if (off == VMMIO_QUEUE_READY) {
		if (val & 1 && !x->ready)
			queue_start(v, v->queue_sel);
		else if (!(val & 1))
			queue_stop(v, v->queue_sel);
		return;
	}
	if (x->ready)
		return; /* not while the backend runs it */
	switch (off) {
	case VMMIO_QUEUE_NUM:         x->num = val; break;
	case VMMIO_QUEUE_DESC_LOW:    set_half(&x->desc, false, val); break;
	case VMMIO_QUEUE_DESC_HIGH:   set_half(&x->desc, true, val); break;
	case VMMIO_QUEUE_DRIVER_LOW:  set_half(&x->avail, false, val); break;
	case VMMIO_QUEUE_DRIVER_HIGH: set_half(&x->avail, true, val); break;
	case VMMIO_QUEUE_DEVICE_LOW:  set_half(&x->used, false, val); break;
	case VMMIO_QUEUE_DEVICE_HIGH: set_half(&x->used, true, val); break;
	}
}

static void notify(struct mvg__vub *v, uint32_t q)
{
	uint64_t one = 1;
	if (q < NQ && v->q[q].ready && write(v->kick[q], &one, sizeof(one)) < 0) {
		/* the counter is at its limit: the backend has a kick to read anyway */
	}
}

static void reg_write(struct mvg__vub *v, uint32_t off, uint32_t val)
{
	switch (off) {
	case VMMIO_DEVICE_FEATURES_SEL: v->dev_sel = val; return;
	case VMMIO_DRIVER_FEATURES_SEL: v->drv_sel = val; return;
	case VMMIO_DRIVER_FEATURES:
		if (v->drv_sel < 2 && !(v->status & VSTAT_FEATURES_OK))
			set_half(&v->drv_features, v->drv_sel, val);
		return;
	case VMMIO_QUEUE_SEL:           v->queue_sel = val; return;
	case VMMIO_QUEUE_NOTIFY:        notify(v, val); return;
	case VMMIO_INTERRUPT_ACK:       atomic_fetch_and(&v->isr, ~val); return;
	case VMMIO_STATUS:              status_write(v, val); return;
	}
	if (off >= VMMIO_CONFIG)
		config_write(v, off - VMMIO_CONFIG, val);
	else
		queue_write(v, off, val);
}

uint32_t mvg__vub_read(struct mvg__vub *v, uint32_t off)
{
	pthread_mutex_lock(&v->lock);
	uint32_t val = reg_read(v, off);
	pthread_mutex_unlock(&v->lock);
	return val;
}

void mvg__vub_write(struct mvg__vub *v, uint32_t off, uint32_t val)
{
	pthread_mutex_lock(&v->lock);
	reg_write(v, off, val);
	pthread_mutex_unlock(&v->lock);
}

/* ---- lifetime ---- */

static void close_fds(struct mvg__vub *v)
{
	int *all[] = { &v->chan, &v->stop };
	for (unsigned i = 0; i < 2; i++)
		if (*all[i] >= 0)
			close(*all[i]);
	for (unsigned q = 0; q < NQ; q++) {
		if (v->kick[q] >= 0)
			close(v->kick[q]);
		if (v->call[q] >= 0)
			close(v->call[q]);
	}
}

static int make_fds(struct mvg__vub *v)
{
	v->stop = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (v->stop < 0)
		return -errno;
	for (unsigned q = 0; q < NQ; q++) {
		v->kick[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		v->call[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (v->kick[q] < 0 || v->call[q] < 0)
			return -errno;
	}
	return 0;
}

static bool config_ok(const struct mvg__vub_config *c)
{
	unsigned m = c->queue_max;
	return c->sock >= 0 && c->memfd >= 0 && c->regions && c->nregions &&
	       c->nregions <= MVG__VUB_MAX_REGIONS && m && m <= 32768 && !(m & (m - 1)) &&
	       c->timeout_ns && c->interrupt;
}

int mvg__vub_new(const struct mvg__vub_config *cfg, struct mvg__vub **out)
{
	if (!cfg || !out || !config_ok(cfg))
		return -EINVAL;
	struct mvg__vub *v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	v->cfg = *cfg;
	memcpy(v->reg, cfg->regions, cfg->nregions * sizeof(*v->reg));
	v->sock = cfg->sock;
	v->chan = v->stop = -1;
	for (unsigned q = 0; q < NQ; q++)
		v->kick[q] = v->call[q] = -1;
	pthread_mutex_init(&v->lock, NULL);
	int err = make_fds(v);
	if (err)
		goto fail;
	err = mvg__vub_handshake(v);
	if (err)
		goto fail;
	err = -pthread_create(&v->thread, NULL, mvg__vub_thread, v);
	if (err)
		goto fail;
	v->thread_running = true;
	*out = v;
	return 0;
fail:
	close_fds(v);
	pthread_mutex_destroy(&v->lock);
	free(v);
	return err;
}

void mvg__vub_free(struct mvg__vub *v)
{
	if (!v)
		return;
	uint64_t one = 1;
	if (v->thread_running && write(v->stop, &one, sizeof(one)) == sizeof(one))
		pthread_join(v->thread, NULL);
	close_fds(v);
	close(v->sock);
	pthread_mutex_destroy(&v->lock);
	free(v);
}

void mvg__vub_info(struct mvg__vub *v, struct mvg__vub_info *out)
{
	*out = (struct mvg__vub_info){
		.error = atomic_load(&v->error),
		.requests = atomic_load(&v->requests),
		.refused = atomic_load(&v->refused),
		.ring_irqs = atomic_load(&v->ring_irqs),
		.config_irqs = atomic_load(&v->config_irqs),
		.protocol_features = v->pf,
	};
}
