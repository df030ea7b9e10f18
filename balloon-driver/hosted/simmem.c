/* simmem.c - the simulated guest's memory: RAM mappings, the page allocator as workloads
 * and the driver see it, and the guest statistics reported through the balloon. */
#include "sim_int.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define RUN            (2 * MIB)
#define HIGH_RAM_GPA   (4 * GIB)
#define OOM_BYTES      MIB /* given back per OOM event, as Linux */

/* ---- the driver's platform: memory ---- */

static int p_alloc_page(void *ctx, uint64_t *gpa)
{
	return mvg__galloc_alloc_page(((struct mvg_sim *)ctx)->ga, gpa) ? -1 : 0;
}

static void p_free_page(void *ctx, uint64_t gpa)
{
	mvg__galloc_free_page(((struct mvg_sim *)ctx)->ga, gpa);
}

static int p_alloc_run(void *ctx, uint64_t *gpa)
{
	return mvg__galloc_alloc_run(((struct mvg_sim *)ctx)->ga, gpa) ? -1 : 0;
}

static void p_free_run(void *ctx, uint64_t gpa)
{
	mvg__galloc_free_run(((struct mvg_sim *)ctx)->ga, gpa);
}

static void *p_map(void *ctx, uint64_t gpa)
{
	return mvg_sim_hva(ctx, gpa);
}

static uint64_t p_free_bytes(void *ctx)
{
	return mvg__galloc_free_bytes(((struct mvg_sim *)ctx)->ga);
}

static void p_get_stats(void *ctx, struct mvg_guest_stats *out)
{
	struct mvg_sim *s = ctx;
	pthread_mutex_lock(&s->stats_lock);
	*out = s->user_stats;
	pthread_mutex_unlock(&s->stats_lock);
	if (out->free_bytes == UINT64_MAX)
		out->free_bytes = mvg__galloc_free_bytes(s->ga);
	if (out->total_bytes == UINT64_MAX)
		out->total_bytes = mvg__galloc_total_bytes(s->ga);
	if (out->avail_bytes == UINT64_MAX)
		out->avail_bytes = out->free_bytes +
		                   (out->cache_bytes == UINT64_MAX ? 0 : out->cache_bytes);
	if (out->oom_kills == UINT64_MAX)
		out->oom_kills = atomic_load(&s->oom_kills);
}

static int p_isolate(void *ctx, uint64_t *gpa)
{
	return mvg__galloc_isolate_unreported(((struct mvg_sim *)ctx)->ga, gpa) ? -1 : 0;
}

static void p_putback(void *ctx, uint64_t gpa)
{
	mvg__galloc_putback_reported(((struct mvg_sim *)ctx)->ga, gpa);
}

void mvg__sim_platform_mem(struct mvg_sim *s)
{
	s->plat.alloc_page = p_alloc_page;
	s->plat.free_page = p_free_page;
	s->plat.alloc_run = p_alloc_run;
	s->plat.free_run = p_free_run;
	s->plat.map = p_map;
	s->plat.free_bytes = p_free_bytes;
	s->plat.get_stats = p_get_stats;
	s->plat.isolate_unreported = p_isolate;
	s->plat.putback_reported = p_putback;
}

/* ---- guest RAM ---- */

/* 2 MiB aligned: anonymous memory, or the memfd's stretch of r shared (fd >= 0). */
static int map_ram(struct ram *r, bool thp, int fd)
{
	size_t len = r->bytes;
	uint8_t *raw = mmap(NULL, len + RUN, PROT_READ | PROT_WRITE,
	                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (raw == MAP_FAILED)
		return -errno;
	uint8_t *mem = (uint8_t *)(((uintptr_t)raw + RUN - 1) & ~(uintptr_t)(RUN - 1));
	if (mem > raw)
		munmap(raw, (size_t)(mem - raw));
	munmap(mem + len, (size_t)(raw + RUN - mem));
	if (fd >= 0 && mmap(mem, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_NORESERVE,
	                    fd, (off_t)r->offset) == MAP_FAILED) {
		int err = -errno;
		munmap(mem, len);
		return err;
	}
	madvise(mem, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE); /* advice: failure is harmless */
	r->hva = mem;
	return 0;
}

/* x86-like: [0, split_at) below the hole, the rest from 4 GiB. */
static int layout(struct mvg_sim *s)
{
	const struct mvg_sim_config *c = &s->cfg;
	if (!c->ram_bytes || c->ram_bytes % RUN || c->split_at % RUN || c->split_at > HIGH_RAM_GPA)
		return -EINVAL;
	s->ram[0] = (struct ram){ .gpa = 0, .bytes = c->ram_bytes };
	s->nram = 1;
	if (c->split_at && c->ram_bytes > c->split_at) {
		s->ram[0].bytes = c->split_at;
		s->ram[1] = (struct ram){ .gpa = HIGH_RAM_GPA, .bytes = c->ram_bytes - c->split_at,
		                          .offset = c->split_at };
		s->nram = 2;
	}
	return 0;
}

/* Over vhost-user: one file for all of RAM, of a size fixed for good (the backend maps
 * it: a file that shrank under its mapping would fault there). */
static int make_memfd(struct mvg_sim *s)
{
	s->memfd = memfd_create("mvg-guest-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (s->memfd < 0)
		return -errno;
	if (ftruncate(s->memfd, (off_t)s->cfg.ram_bytes) ||
	    fcntl(s->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW))
		return -errno;
	return 0;
}

static int register_ram(struct mvg_sim *s, struct mv_host *host)
{
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = s->cfg.name;
	vc.domain = s->cfg.domain;
	int err = mv_vm_new(host, &vc, &s->vm);
	for (unsigned k = 0; k < s->nram && !err; k++)
		err = mv_vm_region_add(s->vm, k, s->ram[k].gpa, s->ram[k].hva, s->ram[k].bytes, 0);
	return err;
}

int mvg__sim_setup_ram(struct mvg_sim *s, struct mv_host *host)
{
	bool vu = s->cfg.vhost_user_socket;
	int err = layout(s);
	if (!err && vu)
		err = make_memfd(s);
	for (unsigned k = 0; k < s->nram && !err; k++)
		err = map_ram(&s->ram[k], s->cfg.thp, s->memfd);
	if (!err && !vu)
		err = register_ram(s, host);
	struct mvg__galloc_region gr[2];
	for (unsigned k = 0; k < s->nram; k++)
		gr[k] = (struct mvg__galloc_region){ s->ram[k].gpa, s->ram[k].bytes };
	if (!err)
		err = mvg__galloc_new(gr, s->nram, &s->ga);
	return err;
}

void mvg__sim_free_ram(struct mvg_sim *s)
{
	mvg__galloc_free(s->ga);
	mv_vm_free(s->vm);
	for (unsigned k = 0; k < s->nram; k++)
		if (s->ram[k].hva)
			munmap(s->ram[k].hva, s->ram[k].bytes);
	if (s->memfd >= 0)
		close(s->memfd);
}

void *mvg_sim_hva(struct mvg_sim *s, uint64_t gpa)
{
	for (unsigned k = 0; k < s->nram; k++)
		if (gpa >= s->ram[k].gpa && gpa - s->ram[k].gpa < s->ram[k].bytes)
			return s->ram[k].hva + (gpa - s->ram[k].gpa);
	return NULL;
}

unsigned mvg_sim_ram(struct mvg_sim *s, void **hva, uint64_t *gpa, uint64_t *bytes, unsigned max)
{
	unsigned k = 0;
	for (; k < s->nram && k < max; k++) {
		hva[k] = s->ram[k].hva;
		gpa[k] = s->ram[k].gpa;
		bytes[k] = s->ram[k].bytes;
	}
	return k;
}

/* ---- the guest's allocator ---- */

int mvg_sim_alloc_page(struct mvg_sim *s, uint64_t *gpa)
{
	if (!mvg__galloc_alloc_page(s->ga, gpa))
		return 0;
	pthread_mutex_lock(&s->drv_lock);
	if (s->drv_ok)
		mvg_balloon_oom(s->drv, OOM_BYTES);
	pthread_mutex_unlock(&s->drv_lock);
	mvg__sim_raise_irq(s); /* the OOM path may have taken an interrupt meant for the driver thread */
	if (!mvg__galloc_alloc_page(s->ga, gpa))
		return 0;
	atomic_fetch_add(&s->oom_kills, 1);
	return -ENOMEM;
}

void mvg_sim_free_page(struct mvg_sim *s, uint64_t gpa)
{
	mvg__galloc_free_page(s->ga, gpa);
}

int mvg_sim_alloc_run(struct mvg_sim *s, uint64_t *gpa)
{
	return mvg__galloc_alloc_run(s->ga, gpa);
}

void mvg_sim_free_run(struct mvg_sim *s, uint64_t gpa)
{
	mvg__galloc_free_run(s->ga, gpa);
}

uint64_t mvg_sim_free_bytes(struct mvg_sim *s)
{
	return mvg__galloc_free_bytes(s->ga);
}

void mvg_sim_set_stats(struct mvg_sim *s, const struct mvg_guest_stats *st)
{
	pthread_mutex_lock(&s->stats_lock);
	s->user_stats = *st;
	pthread_mutex_unlock(&s->stats_lock);
}
