/* sim.c - the hosted port: a simulated guest (RAM, allocator, driver thread) around
 * libmemvirt's virtio-balloon device, talking to it only through MMIO and the rings.
 * Here: the device's wiring, interrupts, the I/O and driver threads, lifetime; guest
 * RAM, allocator and stats are in simmem.c.
 *
 * The device is in-process (mv_balloon and its virtio-mmio helper), or a vhost-user
 * backend behind the bridge of vubridge.c: then RAM is a memfd the backend maps too.
 *
 * Threads: the driver thread steps the driver under drv_lock and sleeps in the
 * platform's wait until the device's interrupt (irq_lock, irq_cond) or a timeout; with
 * io_thread, QueueNotify writes are posted to a VMM I/O thread that runs the device's
 * queue handling (ioeventfd style, notifies coalesced per queue), so driver and device
 * work in parallel. Workload threads use the allocator directly; when it is empty,
 * mvg_sim_alloc_page runs the driver's deflate-on-OOM under drv_lock.
 */
#include "sim_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_SLEEP_NS   (100 * 1000000ull)
#define QUEUE_NOTIFY   0x50
#define VMMIO_CONFIG_NUM_PAGES 0x100 /* the balloon's num_pages and actual, in the window */
#define VMMIO_CONFIG_ACTUAL    0x104

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void mvg_sim_config_init(struct mvg_sim_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->ram_bytes = 256 * MIB;
	cfg->split_at = 3 * GIB;
	cfg->io_thread = true;
	cfg->start_driver = true;
	cfg->vhost_user_timeout_ns = 5000000000ull;
	mvg_config_init(&cfg->driver);
	mv_balloon_config_init(&cfg->device);
}

/* ---- interrupts and the I/O thread ---- */

void mvg__sim_raise_irq(struct mvg_sim *s)
{
	pthread_mutex_lock(&s->irq_lock);
	s->irq_pending = true;
	pthread_cond_broadcast(&s->irq_cond);
	pthread_mutex_unlock(&s->irq_lock);
}

static void dev_interrupt(void *opaque, int queue)
{
	mvg__sim_raise_irq(opaque);
}

static void raise_irq_opaque(void *opaque)
{
	mvg__sim_raise_irq(opaque);
}

static uint64_t dev_now(void *opaque)
{
	return mono_ns();
}

static void *io_main(void *arg)
{
	struct mvg_sim *s = arg;
	pthread_mutex_lock(&s->io_lock);
	for (;;) {
		while (!s->io_pending && !s->io_stop)
			pthread_cond_wait(&s->io_cond, &s->io_lock);
		if (s->io_stop)
			break;
		uint32_t mask = s->io_pending, more = 0;
		s->io_pending = 0;
		pthread_mutex_unlock(&s->io_lock);
		for (unsigned q = 0; q < 32; q++) /* 1: the device's budget ran out, go on later */
			if (mask & 1u << q && mv_balloon_queue_notify(s->b, q) == 1)
				more |= 1u << q;
		pthread_mutex_lock(&s->io_lock);
		s->io_pending |= more;
	}
	pthread_mutex_unlock(&s->io_lock);
	return NULL;
}

static void post_notify(struct mvg_sim *s, uint32_t q)
{
	pthread_mutex_lock(&s->io_lock);
	s->io_pending |= 1u << q;
	pthread_cond_signal(&s->io_cond);
	pthread_mutex_unlock(&s->io_lock);
}

/* ---- the driver's platform: the device and time ---- */

static uint32_t p_mmio_read(void *ctx, uint32_t off)
{
	struct mvg_sim *s = ctx;
	uint32_t v = 0;
	if (s->vub)
		return mvg__vub_read(s->vub, off);
	mv_balloon_mmio_read(s->b, off, &v, 4);
	return v;
}

static void p_mmio_write(void *ctx, uint32_t off, uint32_t val)
{
	struct mvg_sim *s = ctx;
	if (s->vub) {
		mvg__vub_write(s->vub, off, val);
		return;
	}
	if (off == QUEUE_NOTIFY && s->io_running && val < 32) {
		post_notify(s, val);
		return;
	}
	int more = mv_balloon_mmio_write(s->b, off, &val, 4);
	while (more == 1) /* the device's work budget ran out: go on, one budget per call */
		more = mv_balloon_queue_notify(s->b, val);
}

static void p_wait(void *ctx, uint64_t timeout_ns)
{
	struct mvg_sim *s = ctx;
	uint64_t end = mono_ns() + timeout_ns;
	struct timespec ts = { .tv_sec = (time_t)(end / 1000000000ull),
	                       .tv_nsec = (long)(end % 1000000000ull) };
	pthread_mutex_lock(&s->irq_lock);
	while (!s->irq_pending && !atomic_load(&s->drv_stop))
		if (pthread_cond_timedwait(&s->irq_cond, &s->irq_lock, &ts) == ETIMEDOUT)
			break;
	s->irq_pending = false;
	pthread_mutex_unlock(&s->irq_lock);
}

static uint64_t p_now(void *ctx)
{
	return mono_ns();
}

static void fill_platform(struct mvg_sim *s)
{
	s->plat = (struct mvg_platform){
		.ctx = s,
		.mmio_read = p_mmio_read, .mmio_write = p_mmio_write,
		.wait = p_wait, .now_ns = p_now,
	};
	mvg__sim_platform_mem(s); /* pages, map, free bytes, stats, reporting */
}

/* ---- the driver thread ---- */

static void *drv_main(void *arg)
{
	struct mvg_sim *s = arg;
	while (!atomic_load(&s->drv_stop)) {
		pthread_mutex_lock(&s->drv_lock);
		uint64_t ns = mvg_balloon_step(s->drv);
		pthread_mutex_unlock(&s->drv_lock);
		if (ns)
			p_wait(s, ns < MAX_SLEEP_NS ? ns : MAX_SLEEP_NS);
	}
	return NULL;
}

int mvg_sim_start_driver(struct mvg_sim *s)
{
	int err = 0;
	pthread_mutex_lock(&s->ctl_lock);
	if (!s->drv_running && s->drv_ok) {
		atomic_store(&s->drv_stop, false);
		err = -pthread_create(&s->drv_thread, NULL, drv_main, s);
		s->drv_running = !err;
	}
	pthread_mutex_unlock(&s->ctl_lock);
	return s->drv_ok ? err : -ENODEV;
}

void mvg_sim_stop_driver(struct mvg_sim *s)
{
	pthread_mutex_lock(&s->ctl_lock);
	if (s->drv_running) {
		atomic_store(&s->drv_stop, true);
		mvg__sim_raise_irq(s);
		pthread_join(s->drv_thread, NULL);
		s->drv_running = false;
		atomic_store(&s->drv_stop, false);
	}
	pthread_mutex_unlock(&s->ctl_lock);
}

uint64_t mvg_sim_step(struct mvg_sim *s)
{
	pthread_mutex_lock(&s->drv_lock);
	uint64_t ns = s->drv_ok ? mvg_balloon_step(s->drv) : UINT64_MAX;
	pthread_mutex_unlock(&s->drv_lock);
	return ns;
}

/* ---- lifetime ---- */

static void init_sync(struct mvg_sim *s)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->irq_cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&s->io_cond, NULL);
	pthread_mutex_init(&s->irq_lock, NULL);
	pthread_mutex_init(&s->io_lock, NULL);
	pthread_mutex_init(&s->drv_lock, NULL);
	pthread_mutex_init(&s->ctl_lock, NULL);
	pthread_mutex_init(&s->stats_lock, NULL);
	memset(&s->user_stats, 0xff, sizeof(s->user_stats));
}

static void fini_sync(struct mvg_sim *s)
{
	pthread_cond_destroy(&s->irq_cond);
	pthread_cond_destroy(&s->io_cond);
	pthread_mutex_destroy(&s->irq_lock);
	pthread_mutex_destroy(&s->io_lock);
	pthread_mutex_destroy(&s->drv_lock);
	pthread_mutex_destroy(&s->ctl_lock);
	pthread_mutex_destroy(&s->stats_lock);
}

/* The device is the backend at vhost_user_socket, behind a bridge. */
static int setup_bridge(struct mvg_sim *s)
{
	struct mvg__vub_region r[2];
	for (unsigned k = 0; k < s->nram; k++)
		r[k] = (struct mvg__vub_region){ s->ram[k].gpa, s->ram[k].bytes, s->ram[k].offset,
		                                 s->ram[k].hva };
	struct mvg__vub_config vc = {
		.sock = mvg__vub_connect(s->cfg.vhost_user_socket), .memfd = s->memfd,
		.regions = r, .nregions = s->nram, .queue_max = s->cfg.device.queue_max,
		.timeout_ns = s->cfg.vhost_user_timeout_ns, .interrupt = raise_irq_opaque, .opaque = s,
	};
	if (vc.sock < 0)
		return vc.sock;
	int err = mvg__vub_new(&vc, &s->vub);
	if (err)
		close(vc.sock);
	return err;
}

static int setup_device(struct mvg_sim *s)
{
	if (s->cfg.vhost_user_socket)
		return setup_bridge(s);
	s->ops = (struct mv_balloon_ops){ .interrupt = dev_interrupt, .now_ns = dev_now };
	struct mv_balloon_config bc = s->cfg.device;
	bc.ops = &s->ops;
	bc.opaque = s;
	int err = mv_balloon_new(s->vm, &bc, &s->b);
	if (err)
		return err;
	if (s->cfg.io_thread) {
		err = -pthread_create(&s->io_thread, NULL, io_main, s);
		s->io_running = !err;
	}
	return err;
}

static void stop_io(struct mvg_sim *s)
{
	if (!s->io_running)
		return;
	pthread_mutex_lock(&s->io_lock);
	s->io_stop = true;
	pthread_cond_signal(&s->io_cond);
	pthread_mutex_unlock(&s->io_lock);
	pthread_join(s->io_thread, NULL);
	s->io_running = false;
}

static int setup_driver(struct mvg_sim *s)
{
	s->drv = aligned_alloc(64, (mvg_balloon_size() + 63) / 64 * 64);
	if (!s->drv)
		return -ENOMEM;
	fill_platform(s);
	switch (mvg_balloon_init(s->drv, &s->plat, &s->cfg.driver)) {
	case 0:
		s->drv_ok = true;
		return 0;
	case -1:
		return -ENODEV;
	case -2:
		return -EPROTO;
	default:
		return -ENOMEM;
	}
}

int mvg_sim_new(struct mv_host *host, const struct mvg_sim_config *cfg, struct mvg_sim **out)
{
	if (!cfg || !out || !cfg->name || (!host && !cfg->vhost_user_socket))
		return -EINVAL;
	struct mvg_sim *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->cfg = *cfg;
	s->memfd = -1;
	init_sync(s);
	int err = mvg__sim_setup_ram(s, host);
	if (err)
		goto fail_ram;
	err = setup_device(s);
	if (err)
		goto fail_device;
	err = setup_driver(s);
	if (err)
		goto fail_driver;
	if (cfg->start_driver && (err = mvg_sim_start_driver(s)))
		goto fail_driver;
	s->cfg.name = s->cfg.domain = NULL; /* the caller's strings: the VM copied them */
	s->cfg.vhost_user_socket = NULL;
	*out = s;
	return 0;
fail_driver:
	if (s->drv_ok)
		mvg_balloon_remove(s->drv);
	free(s->drv);
	stop_io(s);
fail_device:
	mvg__vub_free(s->vub);
	mv_balloon_free(s->b);
fail_ram:
	mvg__sim_free_ram(s);
	fini_sync(s);
	free(s);
	return err;
}

void mvg_sim_free(struct mvg_sim *s)
{
	if (!s)
		return;
	mvg_sim_stop_driver(s);
	pthread_mutex_lock(&s->drv_lock);
	if (s->drv_ok)
		mvg_balloon_remove(s->drv);
	s->drv_ok = false;
	pthread_mutex_unlock(&s->drv_lock);
	stop_io(s);
	mvg__vub_free(s->vub); /* after the driver's reset went through it */
	mv_balloon_free(s->b);
	free(s->drv);
	mvg__sim_free_ram(s);
	fini_sync(s);
	free(s);
}

/* ---- accessors ---- */

struct mvg_balloon *mvg_sim_driver(struct mvg_sim *s)
{
	return s->drv;
}

struct mv_vm *mvg_sim_vm(struct mvg_sim *s)
{
	return s->vm;
}

struct mv_balloon *mvg_sim_balloon(struct mvg_sim *s)
{
	return s->b;
}

int mvg_sim_ram_fd(struct mvg_sim *s)
{
	return s->memfd;
}

void mvg_sim_transport_info(struct mvg_sim *s, struct mvg_sim_transport_info *out)
{
	memset(out, 0, sizeof(*out));
	if (!s->vub)
		return;
	struct mvg__vub_info vi;
	mvg__vub_info(s->vub, &vi);
	*out = (struct mvg_sim_transport_info){ vi.error, vi.requests, vi.refused, vi.ring_irqs,
	                                        vi.config_irqs, vi.protocol_features };
}

/* ---- the driver's progress ---- */

void mvg_sim_driver_status(struct mvg_sim *s, struct mvg_status *out)
{
	pthread_mutex_lock(&s->drv_lock);
	if (s->drv_ok)
		mvg_balloon_status(s->drv, out);
	else
		memset(out, 0, sizeof(*out));
	pthread_mutex_unlock(&s->drv_lock);
}

/* The device's target and actual, in bytes: from the device, or through the bridge's
 * config space (-ENOTCONN when the backend is gone). */
static int device_view(struct mvg_sim *s, uint64_t *target, uint64_t *actual)
{
	if (!s->vub) {
		struct mv_balloon_info info;
		mv_balloon_info(s->b, &info);
		*target = info.target_bytes;
		*actual = info.actual_bytes;
		return 0;
	}
	*target = (uint64_t)mvg__vub_read(s->vub, VMMIO_CONFIG_NUM_PAGES) * MVG_PAGE_SIZE;
	*actual = (uint64_t)mvg__vub_read(s->vub, VMMIO_CONFIG_ACTUAL) * MVG_PAGE_SIZE;
	struct mvg__vub_info vi;
	mvg__vub_info(s->vub, &vi);
	return vi.error ? -ENOTCONN : 0;
}

int mvg_sim_settle(struct mvg_sim *s, uint64_t timeout_ns)
{
	uint64_t end = mono_ns() + timeout_ns;
	for (;;) {
		uint64_t target, actual;
		struct mvg_status st;
		int err = device_view(s, &target, &actual);
		if (err)
			return err;
		mvg_sim_driver_status(s, &st);
		if (actual == target)
			return 0;
		if (st.at_floor && st.target_pages * MVG_PAGE_SIZE == target)
			return 0; /* at_floor for the current target, not a stale one */
		if (mono_ns() >= end)
			return -ETIMEDOUT;
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
	}
}
