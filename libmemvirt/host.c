/* host.c - mv_host: configuration, lifetime, background workers, host-wide statistics. */
#include "ksm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define VMA_RESERVE_MIN 4096 /* mappings always left to the VMM itself */

MV_API void mv_host_config_init(struct mv_host_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->size = sizeof(*cfg);
	cfg->workers = 1;
	cfg->cpu_share = 0.10;
	cfg->thp_policy = MV_THP_KEEP;
	cfg->thp_split_min = 448;
	cfg->settle_ms = 500;
}

static int config_check(const struct mv_host_config *c)
{
	if (c->size != sizeof(*c) || c->workers < 1 || c->workers > MV_MAX_WORKERS)
		return -EINVAL;
	if (!(c->cpu_share > 0 && c->cpu_share <= 1) || c->vma_budget < 0)
		return -EINVAL;
	if (c->settle_ms > 60000)
		return -EINVAL;
	if ((c->thp_policy != MV_THP_KEEP && c->thp_policy != MV_THP_SPLIT) || c->thp_split_min > 512)
		return -EINVAL;
	if (c->topology && (!c->topology->nr_nodes || c->topology->nr_nodes > 64 || !c->topology->node_of))
		return -EINVAL;
	return 0;
}

/*
 * The VMA budget: a fixed number when configured, else the headroom under the
 * vm.max_map_count in force, minus a reserve for everything else the VMM maps.
 * Reading /proc/self/maps costs in proportion to the mappings (tens of ms with 100k of
 * them): re-read every 5 s while the headroom left is under a quarter of the limit,
 * every 60 s otherwise, or when forced.
 */
void mv__vma_refresh(struct mv_host *h, bool force)
{
	if (h->cfg.vma_budget) {
		atomic_store(&h->vma_limit, h->cfg.vma_budget);
		return;
	}
	uint64_t now = mv__mono_ns();
	long left = atomic_load(&h->vma_limit) - (long)atomic_load(&h->c.v[MV_C_VMAS]);
	uint64_t every = left < h->vma_max / 4 ? 5000000000ull : 60000000000ull;
	if (!force && h->vma_checked_ns && now - h->vma_checked_ns < every)
		return;
	h->vma_checked_ns = now;
	long max, cur;
	if (mv__read_long("/proc/sys/vm/max_map_count", &max) || mv__count_maps(&cur))
		return;
	h->vma_max = max;
	long reserve = max / 8 > VMA_RESERVE_MIN ? max / 8 : VMA_RESERVE_MIN;
	long ours = (long)atomic_load(&h->c.v[MV_C_VMAS]);
	long limit = ours + (max - cur - reserve);
	atomic_store(&h->vma_limit, limit > 0 ? limit : 0);
}

static int host_open_fds(struct mv_host *h)
{
	int err = mv__uffd_open(&h->uffd, &h->uffd_shmem);
	if (err)
		return err;
	h->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (h->pagemap_fd < 0) {
		err = -errno;
		goto fail_pagemap;
	}
	h->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (h->stop_fd < 0) {
		err = -errno;
		goto fail_stop;
	}
	/* PAGEMAP_SCAN needs Linux 6.7: probe it once on our own stack page. */
	uint8_t cat;
	err = h->prim->page_categories(h->pagemap_fd, (void *)((uintptr_t)&cat & ~(MV_PAGE_SIZE - 1)), 1, &cat);
	if (err) {
		err = err == -ENOTTY || err == -EINVAL ? -ENOSYS : err;
		goto fail_probe;
	}
	return 0;

fail_probe:
	close(h->stop_fd);
fail_stop:
	close(h->pagemap_fd);
fail_pagemap:
	close(h->uffd);
	return err;
}

MV_API int mv_host_new(const struct mv_host_config *cfg, struct mv_host **out)
{
	struct mv_host_config def;
	if (!out)
		return -EINVAL;
	if (!cfg) {
		mv_host_config_init(&def);
		cfg = &def;
	}
	int err = config_check(cfg);
	if (err)
		return err;
	struct mv_host *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->cfg = *cfg;
	h->prim = &mv__prim_linux;
	if (cfg->topology)
		h->topo = *cfg->topology;
	else
		h->topo = (struct mv_topology){ mv__numa_nodes(), mv__numa_node_of, NULL };
	h->cfg.topology = NULL;
	CDS_INIT_LIST_HEAD(&h->vms);
	CDS_INIT_LIST_HEAD(&h->domains);
	pthread_mutex_init(&h->lock, NULL);
	pthread_mutex_init(&h->ctl_lock, NULL);
	pthread_cond_init(&h->idle, NULL);
	pthread_mutex_init(&h->gate.lock, NULL);
	atomic_store(&h->cpu_share_ppm, (uint64_t)(h->cfg.cpu_share * 1e6 + 0.5));
	err = mv__random(h->secret, sizeof(h->secret));
	if (err)
		goto fail_random;
	static const uint8_t zero[MV_PAGE_SIZE];
	h->zero_hash = mv__hash_page(h, zero);
	err = host_open_fds(h);
	if (err)
		goto fail_random;
	err = mv__track_start(h);
	if (err)
		goto fail_track;
	(void)get_default_call_rcu_data(); /* start liburcu's reclaim thread now, not mid-scan */
	mv__vma_refresh(h, true);
	*out = h;
	return 0;

fail_track:
	close(h->stop_fd);
	close(h->pagemap_fd);
	close(h->uffd);
fail_random:
	free(h);
	return err;
}

MV_API void mv_host_free(struct mv_host *h)
{
	if (!h)
		return;
	mv_host_stop(h);
	for (;;) {
		pthread_mutex_lock(&h->lock);
		struct mv_vm *vm = cds_list_empty(&h->vms) ? NULL
		                 : cds_list_first_entry(&h->vms, struct mv_vm, link);
		pthread_mutex_unlock(&h->lock);
		if (!vm)
			break;
		mv_vm_free(vm);
	}
	mv__track_stop(h);
	rcu_barrier(); /* every call_rcu callback (nodes, regions) has run */
	close(h->stop_fd);
	close(h->pagemap_fd);
	close(h->uffd);
	free(h);
}

/* One pass over every VM of the host by `worker`. */
static void host_pass(struct mv_host *h, struct mv_scan_ctx *ctx)
{
	struct mv_vm *vm = NULL;
	mv__vma_refresh(h, false);
	mv__domains_prune(h);
	/* hold_next releases the VM held so far under host->lock and takes the next one */
	while (!mv__vm_hold_next(h, vm, &vm)) {
		if (atomic_load(&h->stopping)) {
			mv__vm_release(vm);
			break;
		}
		uint64_t t0 = mv__thread_cpu_ns();
		mv__scan_vm(ctx, vm);
		mv__count(vm, MV_C_CPU_NS, (int64_t)(mv__thread_cpu_ns() - t0));
	}
	atomic_fetch_add(&h->c.v[MV_C_FULL_SCANS], 1);
}

struct worker_arg { struct mv_host *h; unsigned id; };

static void stop_workers(struct mv_host *h);

MV_API int mv_host_set_cpu_share(struct mv_host *h, double cores)
{
	if (!h || !(cores > 0 && cores <= 1))
		return -EINVAL;
	atomic_store(&h->cpu_share_ppm, (uint64_t)(cores * 1e6 + 0.5));
	return 0;
}

static void *worker_main(void *arg)
{
	struct mv_scan_ctx ctx = { .h = ((struct worker_arg *)arg)->h,
	                           .worker = ((struct worker_arg *)arg)->id,
	                           .cpu_share = 1 /* throttled: the host's share */ };
	free(arg);
	while (!atomic_load(&ctx.h->stopping)) {
		uint64_t t0 = mv__mono_ns();
		host_pass(ctx.h, &ctx);
		/* Never spin on an idle host: at most ten passes a second. */
		uint64_t spent = mv__mono_ns() - t0;
		if (spent < 100000000ull && !atomic_load(&ctx.h->stopping)) {
			struct timespec ts = { 0, (long)(100000000ull - spent) };
			nanosleep(&ts, NULL);
		}
	}
	mv__scan_ctx_fini(&ctx);
	return NULL;
}

MV_API int mv_host_start(struct mv_host *h)
{
	if (!h)
		return -EINVAL;
	pthread_mutex_lock(&h->ctl_lock);
	pthread_mutex_lock(&h->lock);
	int err = 0;
	atomic_store(&h->stopping, false);
	while (h->nr_workers < h->cfg.workers) {
		struct worker_arg *a = malloc(sizeof(*a));
		if (!a) {
			err = -ENOMEM;
			break;
		}
		*a = (struct worker_arg){ h, h->nr_workers };
		err = -pthread_create(&h->workers[h->nr_workers], NULL, worker_main, a);
		if (err) {
			free(a);
			break;
		}
		h->nr_workers++;
	}
	pthread_mutex_unlock(&h->lock);
	if (err)
		stop_workers(h);
	pthread_mutex_unlock(&h->ctl_lock);
	return err;
}

/* ctl_lock held: start, stop and synchronous scans never overlap. */
static void stop_workers(struct mv_host *h)
{
	atomic_store(&h->stopping, true);
	pthread_mutex_lock(&h->lock);
	unsigned n = h->nr_workers;
	h->nr_workers = 0;
	pthread_mutex_unlock(&h->lock);
	for (unsigned i = 0; i < n; i++)
		pthread_join(h->workers[i], NULL);
	atomic_store(&h->stopping, false);
}

MV_API int mv_host_stop(struct mv_host *h)
{
	if (!h)
		return -EINVAL;
	pthread_mutex_lock(&h->ctl_lock);
	stop_workers(h);
	pthread_mutex_unlock(&h->ctl_lock);
	return 0;
}

MV_API int mv_host_scan(struct mv_host *h, unsigned passes)
{
	if (!h)
		return -EINVAL;
	if (pthread_mutex_trylock(&h->ctl_lock))
		return -EBUSY; /* another mv_host_scan(), or a start/stop in progress */
	pthread_mutex_lock(&h->lock);
	bool running = h->nr_workers > 0;
	pthread_mutex_unlock(&h->lock);
	if (running) {
		pthread_mutex_unlock(&h->ctl_lock);
		return -EBUSY;
	}
	struct mv_scan_ctx ctx = { .h = h, .worker = MV_GATE_SYNC };
	for (unsigned i = 0; i < passes; i++)
		host_pass(h, &ctx);
	mv__scan_ctx_fini(&ctx);
	pthread_mutex_unlock(&h->ctl_lock);
	return 0;
}

MV_API int mv_host_stats(struct mv_host *h, struct mv_scan_stats *out)
{
	if (!h || !out)
		return -EINVAL;
	mv__counters_to_stats(&h->c, out);
	out->cpu_ns += (uint64_t)atomic_load(&h->fault_cpu_ns);
	return 0;
}

MV_API int mv_domain_stats(struct mv_host *h, const char *name, struct mv_scan_stats *out)
{
	if (!h || !name || !out)
		return -EINVAL;
	int err = -ENOENT;
	pthread_mutex_lock(&h->lock);
	struct mv_domain *d;
	cds_list_for_each_entry(d, &h->domains, link)
		if (!strcmp(d->name, name)) {
			mv__counters_to_stats(&d->c, out);
			err = 0;
			break;
		}
	pthread_mutex_unlock(&h->lock);
	return err;
}
