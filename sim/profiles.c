/* profiles.c - the simulated guests' content profiles and the boot-time fill of their RAM.
 *
 * Overview of the fill (bench/README.md, "Simulated guest profiles", says why):
 *  1. The kernel image is allocated first, page by page, before the balloon driver runs:
 *     the allocator hands out pages lowest first, so every guest of one size puts its
 *     kernel at the same guest-physical addresses, with image content.
 *  2. Everything else the guest touched since boot (libraries, page cache, private data,
 *     zero pages, and the pages that are free now but held data earlier) is allocated
 *     next as one block and given its roles in a random order: shared pages land at
 *     addresses of their own in every guest. The order comes from guest_seed, or from
 *     image_seed for snapshot restores (clones), whose whole RAM is the image's.
 *  3. Stale pages get unique data and are freed: free memory in a real guest is not
 *     zero. RAM above all that stays free and never touched.
 *  4. Clones then dirty a share of their pages with content of their own.
 */
#include "wl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MIB (1ull << 20)
#define GIB (1ull << 30)

static const struct mvw_profile profiles[] = {
	{ .name = "idle", .ram_bytes = 1 * GIB,
	  .what = "1 GiB: 12% kernel, 8% libraries, 10% page cache, 15% private, 5% zero, "
	          "50% free (4/5 stale); a small working set rewritten",
	  .kernel = 120, .lib = 80, .cache = 100, .anon = 150, .zero = 50, .stale = 400,
	  .ws_permille = 20, .churn_permille = 100 },
	{ .name = "web", .ram_bytes = 2 * GIB,
	  .what = "2 GiB: 6% kernel, 7% libraries, 12% page cache, 40% private churning "
	          "5%/s, 5% zero, 30% free (4/5 stale); 5% allocation bursts",
	  .kernel = 60, .lib = 70, .cache = 120, .anon = 400, .zero = 50, .stale = 240,
	  .ws_permille = 1000, .churn_permille = 50,
	  .burst_permille = 50, .burst_interval_ms = 3000, .burst_hold_ms = 1000 },
	{ .name = "db", .ram_bytes = 4 * GIB,
	  .what = "4 GiB: 75% buffer pool (unique), 3% kernel, 2% libraries, 5% page cache, "
	          "5% zero, 10% free (4/5 stale); a hot 5% of the pool rewritten",
	  .kernel = 30, .lib = 20, .cache = 50, .anon = 750, .zero = 50, .stale = 80,
	  .ws_permille = 50, .churn_permille = 100 },
	{ .name = "clones", .ram_bytes = 1 * GIB,
	  .what = "1 GiB restored from one snapshot (idle's composition, every page the "
	          "image's), then 10% of RAM dirtied by each guest",
	  .kernel = 120, .lib = 80, .cache = 100, .anon = 150, .zero = 50, .stale = 400,
	  .snapshot = true, .dirty_permille = 100,
	  .ws_permille = 20, .churn_permille = 100 },
};

#define NR_PROFILES (sizeof(profiles) / sizeof(profiles[0]))

const struct mvw_profile *mvw_profile_find(const char *name)
{
	for (unsigned i = 0; name && i < NR_PROFILES; i++)
		if (!strcmp(profiles[i].name, name))
			return &profiles[i];
	return NULL;
}

const struct mvw_profile *mvw_profile_at(unsigned i)
{
	return i < NR_PROFILES ? &profiles[i] : NULL;
}

/* ---- the fill ---- */

static int fill_kernel(struct mvw_guest *g, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		uint64_t frame;
		if (mvw__alloc(g, &frame, false))
			return -ENOMEM;
		mvw__put(g, frame, mvw__desc(MVW_KERNEL, true, i, 0));
	}
	return 0;
}

/* The roles of the block, in the profile's proportions, then shuffled. Descriptor
 * templates: image pages carry their content index; private pages get their frame as
 * seed when placed. */
static uint64_t *plan_block(struct mvw_guest *g, uint64_t *total)
{
	const struct mvw_profile *p = g->prof;
	uint64_t N = g->ram_pages, img = p->snapshot;
	const struct { unsigned role, permille; bool image; } part[] = {
		{ MVW_LIB, p->lib, true }, { MVW_CACHE, p->cache, true },
		{ MVW_ANON, p->anon, img }, { MVW_ZERO, p->zero, img }, { MVW_STALE, p->stale, img },
	};
	uint64_t n = 0;
	for (unsigned k = 0; k < 5; k++)
		n += N * part[k].permille / 1000;
	uint64_t *plan = malloc((n ? n : 1) * sizeof(*plan));
	if (!plan)
		return NULL;
	uint64_t i = 0;
	for (unsigned k = 0; k < 5; k++)
		for (uint64_t j = 0; j < N * part[k].permille / 1000; j++)
			plan[i++] = mvw__desc(part[k].role, part[k].image, j, 0);
	uint64_t rng = (img ? g->image_seed : g->guest_seed) ^ 0x1a9041ull;
	for (uint64_t j = n; j > 1; j--) { /* Fisher-Yates */
		uint64_t r = mvw__rand(&rng) % j, t = plan[j - 1];
		plan[j - 1] = plan[r];
		plan[r] = t;
	}
	*total = n;
	return plan;
}

/* Place one planned page. Stale pages are written untracked and remembered in
 * plan[*nstale] (an entry already consumed) to be freed afterwards. */
static void place(struct mvw_guest *g, uint64_t frame, uint64_t d, uint64_t *plan, uint64_t *nstale)
{
	enum mvw_role role = mvw__d_role(d);
	if (role == (enum mvw_role)MVW_STALE) {
		uint64_t src = mvw__d_image(d) ? g->image_seed : g->guest_seed;
		mvw__gen(mvw__hva(g, frame), mvw__key(src, MVW_STALE, frame, 0));
		plan[(*nstale)++] = frame;
		return;
	}
	if (role == MVW_ANON)
		d = mvw__desc(role, mvw__d_image(d), frame, 0);
	mvw__put(g, frame, d);
	if (role == MVW_ANON)
		g->anon[g->n_anon++] = (uint32_t)frame;
	if (role == MVW_CACHE) {
		g->cache_seed[g->n_cache] = mvw__d_seed(d);
		g->cache_frame[g->n_cache++] = (uint32_t)frame;
	}
}

static int fill_block(struct mvw_guest *g)
{
	uint64_t n, nstale = 0, i = 0, frame;
	uint64_t *plan = plan_block(g, &n);
	if (!plan)
		return -ENOMEM;
	for (; i < n && !mvw__alloc(g, &frame, false); i++)
		place(g, frame, plan[i], plan, &nstale);
	for (uint64_t j = 0; j < nstale; j++)
		mvg_sim_free_page(g->sim, mvw__gpa(g, plan[j]));
	g->st.stale_pages = nstale;
	free(plan);
	return i == n ? 0 : -ENOMEM;
}

/* Clones: rewrite n distinct image pages with the guest's own content (zero pages
 * become private data). */
static void dirty(struct mvw_guest *g, uint64_t n)
{
	uint64_t rng = g->guest_seed ^ 0xd1e7ull, tries = 0;
	while (n && tries++ < 64 * g->ram_pages) {
		uint64_t frame = mvw__rand(&rng) % g->ram_pages, d = g->desc[frame];
		if (!d || !mvw__d_image(d))
			continue;
		enum mvw_role role = mvw__d_role(d);
		if (role == MVW_ZERO) {
			role = MVW_ANON;
			g->anon[g->n_anon++] = (uint32_t)frame;
		}
		mvw__put(g, frame, mvw__desc(role, false, frame, mvw__d_version(d) + 1));
		n--;
	}
}

/* Working set: a random share of the private pages, first in the list. */
static void pick_working_set(struct mvw_guest *g)
{
	uint64_t rng = g->guest_seed ^ 0x3057ull;
	for (uint64_t j = g->n_anon; j > 1; j--) {
		uint64_t r = mvw__rand(&rng) % j;
		uint32_t t = g->anon[j - 1];
		g->anon[j - 1] = g->anon[r];
		g->anon[r] = t;
	}
	g->ws = g->n_anon * g->prof->ws_permille / 1000;
	if (!g->ws && g->n_anon && g->prof->ws_permille)
		g->ws = 1;
}

/* Called before the driver and the behaviour thread run. 0 or -ENOMEM. */
int mvw__fill(struct mvw_guest *g)
{
	const struct mvw_profile *p = g->prof;
	int err = fill_kernel(g, g->ram_pages * p->kernel / 1000);
	if (!err)
		err = fill_block(g);
	if (err)
		return err;
	g->cache_target = g->n_cache;
	if (p->snapshot)
		dirty(g, g->ram_pages * p->dirty_permille / 1000);
	pick_working_set(g);
	return 0;
}
