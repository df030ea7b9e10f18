/* counters.c - statistics at three levels (VM, domain, host), and their public view. */
#include "internal.h"

#include <string.h>

void mv__count(struct mv_vm *vm, enum mv_counter which, int64_t delta)
{
	if (!delta)
		return;
	atomic_fetch_add(&vm->c.v[which], delta);
	atomic_fetch_add(&vm->dom->c.v[which], delta);
	atomic_fetch_add(&vm->host->c.v[which], delta);
}

static void raise_to(_Atomic int64_t *v, int64_t value)
{
	int64_t cur = atomic_load(v);
	while (cur < value && !atomic_compare_exchange_weak(v, &cur, value))
		;
}

void mv__count_max(struct mv_vm *vm, enum mv_counter which, int64_t value)
{
	raise_to(&vm->c.v[which], value);
	raise_to(&vm->dom->c.v[which], value);
	raise_to(&vm->host->c.v[which], value);
}

void mv__counters_to_stats(const struct mv_counters *c, struct mv_scan_stats *out)
{
	int64_t v[MV_C_NR];
	for (int i = 0; i < MV_C_NR; i++) {
		v[i] = atomic_load(&c->v[i]);
		if (v[i] < 0)
			v[i] = 0;
	}
	memset(out, 0, sizeof(*out));
	out->pages_scanned = (uint64_t)v[MV_C_SCANNED];
	out->pages_shared = (uint64_t)v[MV_C_SHARED];
	out->pages_merged = (uint64_t)v[MV_C_MERGED];
	out->pages_sharing = v[MV_C_MERGED] > v[MV_C_SHARED] ? (uint64_t)(v[MV_C_MERGED] - v[MV_C_SHARED]) : 0;
	out->pages_zero = (uint64_t)v[MV_C_ZERO];
	out->pages_volatile = (uint64_t)v[MV_C_VOLATILE];
	out->cow_breaks = (uint64_t)v[MV_C_COW_BREAKS];
	out->vmas_used = (uint64_t)v[MV_C_VMAS];
	out->pages_left_vma_budget = (uint64_t)v[MV_C_LEFT_VMA];
	out->pages_left_thp = (uint64_t)v[MV_C_LEFT_THP];
	out->full_scans = (uint64_t)v[MV_C_FULL_SCANS];
	out->cpu_ns = (uint64_t)v[MV_C_CPU_NS];
	out->write_faults = (uint64_t)v[MV_C_WRITE_FAULTS];
	out->writer_wait_ns = (uint64_t)v[MV_C_WAIT_NS];
	out->writer_wait_max_ns = (uint64_t)v[MV_C_WAIT_MAX_NS];
	out->chunks_backed_off = (uint64_t)v[MV_C_BACKED_OFF];
	out->cow_debt_bytes = (out->pages_sharing + out->pages_zero) * MV_PAGE_SIZE;
}
