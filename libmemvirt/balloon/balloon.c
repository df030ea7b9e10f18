/* balloon.c - the virtio-balloon device model (virtio 1.x, device ID 5), one per VM.
 *
 * Overview
 *
 * State per instance, all of it under one mutex (struct mv_balloon, balloon_dev.h).
 * The driver walks the status machine ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK; each
 * step is checked (features: a subset of the offered ones with VERSION_1, frozen at
 * FEATURES_OK; queues: set up after FEATURES_OK and before DRIVER_OK). The queue numbers
 * are compacted as Linux and QEMU expect: inflateq 0, deflateq 1, then statsq,
 * free_page_vq and reporting_vq, each only if negotiated, taking the next number.
 *
 * A notification consumes the chains the avail idx showed when it began, under
 * rcu_read_lock() so that the regions read stay alive; balloon_mem.c does the page work.
 * The work of one call is bounded by a budget (MV_BALLOON_NOTIFY_PFNS PFNs, or pages of
 * reported and hinted memory), not by the ring: a guest can name the same 1 MiB PFN list
 * from every descriptor, and the VM's region changes wait for the read-side section to
 * end. When the budget runs out inside an inflate or deflate chain, the queue holds the
 * chain and balloon_mem.c where it got to; the call returns 1 and the VMM calls again.
 * A malformed ring sets DEVICE_NEEDS_RESET (config interrupt); malformed requests are
 * skipped and counted in guest_errors. Nothing is consumed before DRIVER_OK; what was
 * queued before (Linux's first stats buffer) is consumed when DRIVER_OK is set.
 *
 * Statistics follow the spec's protocol: the device keeps the driver's buffer after
 * parsing it and hands it back on mv_balloon_stats_request(); the driver answers with a
 * fresh buffer. Target progress: `actual` is the driver's report; each write that
 * narrows |num_pages - actual| is progress, and no progress for stall_ns is a stall.
 *
 * Reset (status 0): features, queues, status, interrupt status, the held stats buffer
 * and the hint run are dropped (armed hints are forgotten, not released); actual and
 * poison_val return to 0 as the spec's initial config, num_pages (the host's target)
 * stays. The pages in the balloon stay released, but the device forgets them: after a
 * reset the driver (or a rebooted guest) owns all its memory again and will inflate
 * from scratch, possibly the same PFNs, which must not be refused as duplicates.
 */
#include "balloon_dev.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define STATS_MAX_BYTES 4096 /* drivers send 16 entries (160 bytes); the rest is ignored */
#define F(bit) (1ull << (bit))

static uint64_t now_ns(struct mv_balloon *b)
{
	return b->ops.now_ns ? b->ops.now_ns(b->cfg.opaque) : mv__mono_ns();
}

static bool live(const struct mv_balloon *b)
{
	return (b->status & (MV_VS_DRIVER_OK | MV_VS_NEEDS_RESET | MV_VS_FAILED)) == MV_VS_DRIVER_OK;
}

void mv__bl_raise(struct mv_balloon *b, int queue)
{
	b->mmio.isr |= queue < 0 ? 2 : 1;
	b->ops.interrupt(b->cfg.opaque, queue);
}

void mv__bl_guest_error(struct mv_balloon *b, uint64_t n, const char *what)
{
	uint64_t before = b->guest_errors;
	b->guest_errors += n;
	/* a hostile guest must not flood the log: the first few, then at powers of two */
	if (before < 8 || __builtin_clzll(b->guest_errors) < __builtin_clzll(before))
		mv__log(b->h, MV_LOG_WARN, "vm %s balloon: %s (%llu guest errors so far)", b->vm->name,
		        what, (unsigned long long)b->guest_errors);
}

static void needs_reset(struct mv_balloon *b, const char *why)
{
	if (b->status & MV_VS_NEEDS_RESET)
		return;
	b->status |= MV_VS_NEEDS_RESET;
	mv__bl_guest_error(b, 1, why);
	if (b->status & MV_VS_DRIVER_OK)
		mv__bl_raise(b, -1);
}

/* A device-side config change: new generation, config interrupt once the driver runs. */
static void config_changed(struct mv_balloon *b)
{
	b->generation++;
	if (live(b))
		mv__bl_raise(b, -1);
}

/* ---- features, queues, status ---- */

static void layout(struct mv_balloon *b)
{
	static const struct { uint8_t role, bit; } opt[] = {
		{ BL_STATS, MV_BALLOON_F_STATS_VQ }, { BL_HINT, MV_BALLOON_F_FREE_PAGE_HINT },
		{ BL_REPORT, MV_BALLOON_F_PAGE_REPORTING },
	};
	b->role[0] = BL_INFLATE;
	b->role[1] = BL_DEFLATE;
	b->nr_vq = 2;
	for (unsigned i = 0; i < sizeof(opt) / sizeof(opt[0]); i++)
		if (b->features & F(opt[i].bit))
			b->role[b->nr_vq++] = opt[i].role;
}

static int queue_of(const struct mv_balloon *b, unsigned role)
{
	for (unsigned q = 0; q < b->nr_vq; q++)
		if (b->role[q] == role)
			return (int)q;
	return -1;
}

static void stall_restart(struct mv_balloon *b)
{
	b->gap = b->num_pages > b->actual ? b->num_pages - b->actual : b->actual - b->num_pages;
	b->prog_ns = now_ns(b);
}

static void reset(struct mv_balloon *b)
{
	mv__bl_worker_drain(b); /* the reset driver owns all its pages again */
	rcu_read_lock();
	struct mv_region_map *map = rcu_dereference(b->vm->map);
	mv__bl_hint_forget(b, map);
	mv__bl_forget_balloon(b, map);
	rcu_read_unlock();
	for (unsigned q = 0; q < MV_BL_NQ; q++)
		mv__vq_disable(&b->vq[q]);
	mv__bl_pfns_drop(b, true);
	mv__bl_pfns_drop(b, false);
	b->features = 0;
	b->features_valid = false;
	b->status = 0;
	b->actual = b->poison = 0;
	b->cmd_id = MV_BL_CMD_STOP;
	b->hint_run = b->stats_held = false;
	layout(b);
	mv__bl_mmio_reset(&b->mmio);
	b->generation++;
	stall_restart(b);
}

uint64_t mv__bl_device_features(struct mv_balloon *b)
{
	return b->cfg.features | F(MV_VIRTIO_F_VERSION_1);
}

int mv__bl_driver_features(struct mv_balloon *b, uint64_t f)
{
	if (b->status & MV_VS_FEATURES_OK)
		return -EPERM;
	if (!(f & F(MV_VIRTIO_F_VERSION_1)) || f & ~mv__bl_device_features(b)) {
		b->features_valid = false;
		return -EINVAL;
	}
	b->features = f;
	b->features_valid = true;
	layout(b);
	return 0;
}

int mv__bl_set_status(struct mv_balloon *b, uint8_t st)
{
	if (st == 0) {
		reset(b);
		return 0;
	}
	uint8_t old = b->status;
	st = (uint8_t)((st & ~MV_VS_NEEDS_RESET) | (old & MV_VS_NEEDS_RESET));
	if (old & ~st)
		return -EINVAL; /* only a reset clears bits */
	int err = 0;
	uint8_t add = st & ~old;
	if (add & MV_VS_FEATURES_OK && !b->features_valid) {
		st &= (uint8_t)~MV_VS_FEATURES_OK;
		err = -EINVAL;
	}
	if (add & MV_VS_DRIVER_OK && !(st & MV_VS_FEATURES_OK)) {
		st &= (uint8_t)~MV_VS_DRIVER_OK;
		err = -EINVAL;
	}
	b->status = st;
	if (st & add & MV_VS_DRIVER_OK) {
		stall_restart(b);
		for (unsigned q = 0; q < b->nr_vq; q++) /* buffers queued before DRIVER_OK */
			mv__bl_queue_notify(b, q);
	}
	return err;
}

int mv__bl_queue_setup(struct mv_balloon *b, unsigned q, const struct mv_virtq_setup *s)
{
	if (q >= b->nr_vq)
		return -EINVAL;
	if ((b->status & (MV_VS_FEATURES_OK | MV_VS_DRIVER_OK | MV_VS_NEEDS_RESET | MV_VS_FAILED)) !=
	    MV_VS_FEATURES_OK)
		return -EBUSY;
	if (b->role[q] == BL_STATS)
		b->stats_held = false;
	if (!s) {
		mv__vq_disable(&b->vq[q]);
		return 0;
	}
	rcu_read_lock();
	int err = mv__vq_enable(&b->vq[q], rcu_dereference(b->vm->map), s, b->cfg.queue_max, 0);
	rcu_read_unlock();
	return err;
}

/* The request of a stopped ring is taken again from its start when the ring resumes. */
static void queue_forget(struct mv_balloon *b, unsigned q)
{
	if (b->role[q] == BL_INFLATE || b->role[q] == BL_DEFLATE)
		mv__bl_pfns_drop(b, b->role[q] == BL_INFLATE);
	if (b->role[q] == BL_STATS)
		b->stats_held = false;
	mv__vq_disable(&b->vq[q]);
}

int mv__bl_queue_start(struct mv_balloon *b, unsigned q, const struct mv_virtq_setup *s, uint16_t base)
{
	if (q >= b->nr_vq || !s)
		return -EINVAL;
	if ((b->status & (MV_VS_FEATURES_OK | MV_VS_NEEDS_RESET | MV_VS_FAILED)) != MV_VS_FEATURES_OK ||
	    b->vq[q].ready)
		return -EBUSY;
	queue_forget(b, q);
	rcu_read_lock();
	int err = mv__vq_enable(&b->vq[q], rcu_dereference(b->vm->map), s, b->cfg.queue_max, base);
	rcu_read_unlock();
	if (!err && live(b))
		mv__bl_queue_notify(b, q); /* what was queued while it was stopped */
	return err;
}

int mv__bl_queue_stop(struct mv_balloon *b, unsigned q, uint16_t *base)
{
	/* a stopped device writes no guest memory: what inflates left queued is released
	 * before the frontend hears the ring stopped (it may hand the memory to a new guest) */
	mv__bl_worker_drain(b);
	if (q >= b->nr_vq)
		return -EINVAL;
	*base = b->vq[q].ready ? mv__vq_resume_index(&b->vq[q]) : 0;
	if (b->vq[q].ready && b->role[q] == BL_STATS && b->stats_held)
		(*base)--; /* the stats buffer kept by the device: the driver gets it back */
	queue_forget(b, q);
	return 0;
}

/* ---- config space ---- */

int mv__bl_config_read(struct mv_balloon *b, unsigned off, void *buf, unsigned len)
{
	uint32_t v[4] = { htole32(b->num_pages), htole32(b->actual), htole32(b->cmd_id),
	                  htole32(b->poison) };
	memset(buf, 0, len);
	if (off < sizeof(v))
		memcpy(buf, (uint8_t *)v + off, len < sizeof(v) - off ? len : sizeof(v) - off);
	return 0;
}

static void set_actual(struct mv_balloon *b, uint32_t actual)
{
	uint32_t gap = b->num_pages > actual ? b->num_pages - actual : actual - b->num_pages;
	if (gap < b->gap)
		b->prog_ns = now_ns(b);
	b->gap = gap;
	b->actual = actual;
}

/* Merge a write of [off, off + len) into the 32-bit field at `at`. */
static uint32_t merge(uint32_t field, unsigned at, unsigned off, const void *buf, unsigned len)
{
	uint32_t v = htole32(field);
	memcpy((uint8_t *)&v + (off - at), buf, len);
	return le32toh(v);
}

int mv__bl_config_write(struct mv_balloon *b, unsigned off, const void *buf, unsigned len)
{
	if (!len || len > 8)
		return -EINVAL;
	if (!(b->status & MV_VS_DRIVER) || b->status & (MV_VS_NEEDS_RESET | MV_VS_FAILED))
		return -EPERM;
	uint64_t end = (uint64_t)off + len;
	if (off >= 4 && end <= 8) {
		set_actual(b, merge(b->actual, 4, off, buf, len));
		return 0;
	}
	if (off >= 12 && end <= 16 && b->features & F(MV_BALLOON_F_PAGE_POISON)) {
		b->poison = merge(b->poison, 12, off, buf, len);
		return 0;
	}
	return -EPERM; /* num_pages and the cmd id are the device's; nothing lies beyond */
}

/* ---- queues ---- */

static void stats_entry(struct mv_balloon *b, const uint8_t e[10])
{
	uint16_t tag;
	uint64_t val;
	memcpy(&tag, e, 2);
	memcpy(&val, e + 2, 8);
	tag = le16toh(tag);
	if (tag < MV_BSTAT_NR) { /* unknown tags are ignored */
		b->stats[tag] = le64toh(val);
		b->stats_valid |= 1u << tag;
	}
}

/* Parse 10-byte entries (le16 tag, le64 value, packed) across the readable buffers,
 * each gathered from guest RAM (it may span regions) into one copy; an incomplete entry
 * at the end is ignored. A buffer outside RAM drops the whole request. */
static void stats_parse(struct mv_balloon *b, struct mv_region_map *map, const struct mv_vq_chain *c)
{
	uint8_t buf[STATS_MAX_BYTES];
	uint64_t total = 0;
	for (unsigned i = 0; i < c->n && !c->buf[i].write && total < STATS_MAX_BYTES; i++) {
		uint64_t len = c->buf[i].len < STATS_MAX_BYTES - total ? c->buf[i].len : STATS_MAX_BYTES - total;
		if (!mv__guest_read(map, c->buf[i].gpa, buf + total, len)) {
			mv__bl_guest_error(b, 1, "stats buffer outside RAM");
			return;
		}
		total += len;
	}
	for (uint64_t k = 0; k + 10 <= total; k += 10)
		stats_entry(b, buf + k);
	b->stats_ns = now_ns(b);
	b->stats_seen = true;
}

static void stats_take(struct mv_balloon *b, struct mv_vq *vq, struct mv_region_map *map,
                       const struct mv_vq_chain *c)
{
	stats_parse(b, map, c);
	if (b->stats_held) /* a driver keeps one buffer out; give an older one back */
		mv__vq_push(vq, b->stats_head, 0);
	b->stats_held = true;
	b->stats_head = c->head;
}

/* Work on one chain, from *budget; false if it is not finished (the queue holds it). */
static bool handle(struct mv_balloon *b, struct mv_region_map *map, unsigned q,
                   const struct mv_vq_chain *c, uint64_t *budget)
{
	switch (b->role[q]) {
	case BL_INFLATE:
	case BL_DEFLATE:
		if (!mv__bl_pfns(b, map, c, b->role[q] == BL_INFLATE, budget))
			return false;
		break;
	case BL_STATS:
		(*budget)--;
		stats_take(b, &b->vq[q], map, c);
		return true;
	case BL_HINT:
		mv__bl_hint(b, map, c, budget);
		break;
	case BL_REPORT:
		mv__bl_report(b, map, c, budget);
		break;
	}
	mv__vq_push(&b->vq[q], c->head, 0);
	return true;
}

int mv__bl_queue_notify(struct mv_balloon *b, unsigned q)
{
	if (q >= b->nr_vq)
		return -EINVAL;
	/* A deflate waits for releases still queued (mv__bl_pfns()). Waiting drops the device
	 * mutex, so it happens before anything of the queue is looked at: from begin to end
	 * the mutex is held, and a reset or another notify cannot come in between. */
	if (b->role[q] == BL_DEFLATE)
		mv__bl_worker_drain(b);
	if (q >= b->nr_vq)
		return -EINVAL; /* a reset and a new negotiation while waiting */
	struct mv_vq *vq = &b->vq[q];
	if (!live(b) || !vq->ready)
		return 0;
	rcu_read_lock();
	struct mv_region_map *map = rcu_dereference(b->vm->map);
	mv__bl_regions_prune(b, map);
	struct mv_vq_chain c;
	uint64_t budget = MV_BALLOON_NOTIFY_PFNS;
	int err = mv__vq_begin(vq, map);
	while (!err && budget && (err = mv__vq_pop(vq, &c)) == 1) {
		err = 0;
		if (!handle(b, map, q, &c, &budget))
			mv__vq_hold(vq, &c);
	}
	bool more = !err && mv__vq_pending(vq);
	if (mv__vq_end(vq))
		mv__bl_raise(b, (int)q);
	mv__bl_release_pending(b); /* after the answer: see mv__bl_pfns() */
	rcu_read_unlock();
	if (err < 0) {
		needs_reset(b, err == -EFAULT ? "a ring left guest RAM: device needs reset"
		                                : "malformed ring: device needs reset");
		return -EPROTO;
	}
	return more;
}

/* ---- lifetime ---- */

MV_API void mv_balloon_config_init(struct mv_balloon_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->size = sizeof(*cfg);
	cfg->features = MV_BALLOON_FEATURES_ALL;
	cfg->queue_max = 1024;
	cfg->stall_ns = 5000000000ull;
}

MV_API int mv_balloon_new(struct mv_vm *vm, const struct mv_balloon_config *cfg, struct mv_balloon **out)
{
	if (!vm || !cfg || !out || cfg->size != sizeof(*cfg) || !cfg->ops || !cfg->ops->interrupt)
		return -EINVAL;
	unsigned qmax = cfg->queue_max;
	if (cfg->features & ~(MV_BALLOON_FEATURES_ALL | F(MV_VIRTIO_F_VERSION_1)) || !qmax ||
	    qmax > 32768 || (qmax & (qmax - 1)))
		return -EINVAL;
	struct mv_balloon *b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	int err = mv__bl_mem_init(b);
	if (err) {
		free(b);
		return err;
	}
	b->vm = vm;
	b->h = vm->host;
	b->cfg = *cfg;
	b->ops = *cfg->ops;
	b->cfg.ops = &b->ops;
	b->cfg.features &= MV_BALLOON_FEATURES_ALL;
	b->next_cmd = MV_BL_CMD_DONE;
	pthread_mutex_init(&b->lock, NULL);
	layout(b);
	mv__bl_mmio_reset(&b->mmio);
	stall_restart(b);
	if (cfg->release_thread && (err = mv__bl_worker_start(b))) {
		pthread_mutex_destroy(&b->lock);
		mv__bl_mem_free(b);
		free(b);
		return err;
	}
	*out = b;
	return 0;
}

MV_API void mv_balloon_free(struct mv_balloon *b)
{
	if (!b)
		return;
	mv__bl_worker_stop(b); /* what it holds is released first */
	pthread_mutex_lock(&b->lock);
	reset(b);
	pthread_mutex_unlock(&b->lock);
	mv__bl_mem_free(b);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

/* ---- admin side ---- */

MV_API int mv_balloon_set_target(struct mv_balloon *b, uint64_t bytes)
{
	if (!b)
		return -EINVAL;
	uint64_t ram = 0;
	rcu_read_lock();
	struct mv_region_map *map = rcu_dereference(b->vm->map);
	for (unsigned i = 0; map && i < map->n; i++)
		ram += map->r[i]->size;
	rcu_read_unlock();
	uint64_t pages = bytes / MV_PAGE_SIZE;
	if (bytes > ram || pages > UINT32_MAX)
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	if (pages != b->num_pages) {
		b->num_pages = (uint32_t)pages;
		stall_restart(b);
		config_changed(b);
	}
	pthread_mutex_unlock(&b->lock);
	return 0;
}

static void info_fill(struct mv_balloon *b, struct mv_balloon_info *o, uint64_t now)
{
	o->target_bytes = (uint64_t)b->num_pages * MV_PAGE_SIZE;
	o->actual_bytes = (uint64_t)b->actual * MV_PAGE_SIZE;
	o->released_bytes = b->released;
	o->inflated_bytes = b->inflated;
	o->deflated_bytes = b->deflated;
	o->reported_bytes = b->reported;
	o->hinted_bytes = b->hinted;
	o->hint_discarded_bytes = b->hint_discarded;
	uint64_t since = now > b->prog_ns ? now - b->prog_ns : 0;
	o->stalled = b->num_pages != b->actual && b->cfg.stall_ns && since >= b->cfg.stall_ns;
	o->stalled_ns = o->stalled ? since : 0;
	o->stall_gap_bytes = o->stalled ? (uint64_t)b->gap * MV_PAGE_SIZE : 0;
	o->needs_reset = b->status & MV_VS_NEEDS_RESET;
	o->guest_errors = b->guest_errors;
	o->features = b->features;
	o->status = b->status;
	o->stats_valid = b->stats_valid;
	memcpy(o->stats, b->stats, sizeof(o->stats));
	o->stats_age_ns = !b->stats_seen ? UINT64_MAX : now > b->stats_ns ? now - b->stats_ns : 0;
}

MV_API int mv_balloon_info(struct mv_balloon *b, struct mv_balloon_info *out)
{
	if (!b || !out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&b->lock);
	info_fill(b, out, now_ns(b));
	rcu_read_lock();
	struct mv_region_map *map = rcu_dereference(b->vm->map);
	mv__bl_regions_prune(b, map);
	out->held_bytes = mv__bl_held_pages(map) * MV_PAGE_SIZE;
	rcu_read_unlock();
	pthread_mutex_unlock(&b->lock);
	return 0;
}

MV_API int mv_balloon_stats_request(struct mv_balloon *b)
{
	if (!b)
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	int q = queue_of(b, BL_STATS), err = 0;
	if (!(b->features & F(MV_BALLOON_F_STATS_VQ)) || q < 0)
		err = -ENOTSUP;
	else if (!b->stats_held || !live(b) || !b->vq[q].ready)
		err = -EAGAIN;
	if (!err) {
		struct mv_vq *vq = &b->vq[q];
		rcu_read_lock();
		err = mv__vq_begin(vq, rcu_dereference(b->vm->map));
		if (!err) {
			mv__vq_push(vq, b->stats_head, 0);
			b->stats_held = false;
		}
		bool irq = mv__vq_end(vq);
		rcu_read_unlock();
		if (irq)
			mv__bl_raise(b, q);
		if (err) {
			needs_reset(b, "malformed stats ring: device needs reset");
			err = -EPROTO;
		}
	}
	pthread_mutex_unlock(&b->lock);
	return err;
}

/* Set the hint command id; armed hints of an earlier run are completed first. */
static int hint_cmd_set(struct mv_balloon *b, bool start)
{
	if (!b)
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	int err = 0;
	if (!(b->features & F(MV_BALLOON_F_FREE_PAGE_HINT))) {
		err = -ENOTSUP;
	} else {
		rcu_read_lock();
		struct mv_region_map *map = rcu_dereference(b->vm->map);
		mv__bl_hint_complete(b, map);
		for (unsigned i = 0; start && map && i < map->n; i++)
			mv__region_hint_begin(b->h, map->r[i]); /* watched before the guest can hint */
		rcu_read_unlock();
		uint32_t id = MV_BL_CMD_DONE;
		while (start && (id <= MV_BL_CMD_DONE || id == b->cmd_id))
			id = ++b->next_cmd;
		b->cmd_id = id;
		b->hint_run = false; /* until the driver starts a run with this id */
		config_changed(b);
	}
	pthread_mutex_unlock(&b->lock);
	return err;
}

MV_API int mv_balloon_hint_start(struct mv_balloon *b)
{
	return hint_cmd_set(b, true);
}

MV_API int mv_balloon_hint_stop(struct mv_balloon *b)
{
	return hint_cmd_set(b, false);
}
