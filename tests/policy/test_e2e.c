/* test_e2e.c - the whole loop: three simulated guests (real guest driver, device, scanner)
 * under the policy engine while the host budget shrinks. Balloons take memory from the
 * idle guests before the busy one, no guest runs out of memory, no write is lost. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <memvirt/memvirt.h>
#include <memvirt/policy.h>
#include "workload.h"
#include "testutil.h"

#define MIB (1ull << 20)
#define GUEST_MIB 64
#define NR 3

struct world {
	struct mvw_guest *g[NR];
	uint64_t budget;           /* bytes: the host's memory as the engine sees it */
};

/* Host memory = what the guests' RAM holds resident (mincore), as a real host would see it. */
static uint64_t resident(struct world *w)
{
	uint64_t bytes = 0;
	static unsigned char vec[GUEST_MIB * MIB / 4096];
	for (int i = 0; i < NR; i++) {
		void *hva[4];
		uint64_t gpa[4], len[4];
		unsigned n = mvg_sim_ram(mvw_sim(w->g[i]), hva, gpa, len, 4);
		for (unsigned k = 0; k < n; k++) {
			if (len[k] > sizeof(vec) * 4096 || mincore(hva[k], len[k], vec))
				continue;
			for (uint64_t p = 0; p < len[k] / 4096; p++)
				bytes += (vec[p] & 1) * 4096;
		}
	}
	return bytes;
}

static int host_inputs(void *opaque, struct mv_policy_host_inputs *h)
{
	struct world *w = opaque;
	uint64_t used = resident(w);
	h->mem_total_bytes = w->budget;
	h->mem_available_bytes = used < w->budget ? w->budget - used : 0;
	return 0;
}

static struct mvw_guest *guest(struct mv_host *h, const char *profile, const char *name)
{
	struct mvg_sim_config sc;
	mvg_sim_config_init(&sc);
	sc.driver.floor_bytes = 2 * MIB;
	struct mvw_config c;
	mvw_config_init(&c);
	c.profile = mvw_profile_find(profile);
	c.name = name;
	c.ram_bytes = GUEST_MIB * MIB;
	c.sim = &sc;
	c.tick_ns = 10 * 1000000ull;
	struct mvw_guest *g = NULL;
	assert_int_equal(mvw_guest_new(h, &c, &g), 0);
	return g;
}

static uint64_t held(struct mvw_guest *g)
{
	struct mv_balloon_info in;
	assert_int_equal(mv_balloon_info(mvg_sim_balloon(mvw_sim(g)), &in), 0);
	return in.held_bytes;
}

static void balloons_move_memory_to_the_busy_guest(void **state)
{
	struct mv_host *h = tu_host();
	struct world w = { 0 };
	static const char *const names[NR] = { "idle-a", "idle-b", "busy" };
	w.g[0] = guest(h, "idle", names[0]);
	w.g[1] = guest(h, "idle", names[1]);
	w.g[2] = guest(h, "web", names[2]);
	for (int i = 0; i < NR; i++)
		assert_int_equal(mvw_start(w.g[i]), 0);
	assert_int_equal(mv_host_start(h), 0); /* the scanner too */

	struct mv_policy_config pc;
	mv_policy_config_init(&pc);
	pc.host = h;
	pc.host_inputs = host_inputs;
	pc.host_inputs_opaque = &w;
	struct mv_policy *p;
	assert_int_equal(mv_policy_new(&pc, &p), 0);
	char err[256];
	assert_int_equal(mv_policy_load_string(p, "[host]\nfloor_mib = 4\nband_mib = 4\nperiod_ms = 50\n"
	                 "[vm idle-a]\nmin_mib = 4\n[vm idle-b]\nmin_mib = 4\n[vm busy]\nmin_mib = 4\n",
	                 err, sizeof(err)), 0);
	for (int i = 0; i < NR; i++)
		assert_int_equal(mv_policy_attach(p, names[i], mvg_sim_vm(mvw_sim(w.g[i])),
		                                  mvg_sim_balloon(mvw_sim(w.g[i]))), 0);

	/* The budget shrinks from what the guests hold now to 40 MiB less, then stays. */
	uint64_t start = resident(&w), goal = start - 40 * MIB;
	for (int t = 0; t < 400; t++) {
		w.budget = t < 60 ? start - (start - goal) * (uint64_t)t / 60 : goal;
		mv_policy_tick(p, NULL);
		nanosleep(&(struct timespec){ 0, 50 * 1000000 }, NULL);
		if (t >= 60 && resident(&w) + 4 * MIB <= goal)
			break; /* the engine met its floor: settled */
	}
	uint64_t idle = held(w.g[0]) + held(w.g[1]), busy = held(w.g[2]);
	printf("budget %llu MiB, resident %llu MiB; ballooned: idle %llu MiB, busy %llu MiB\n",
	       (unsigned long long)(goal / MIB), (unsigned long long)(resident(&w) / MIB),
	       (unsigned long long)(idle / MIB), (unsigned long long)(busy / MIB));
	assert_true(resident(&w) <= goal + 4 * MIB); /* the host got its memory back */
	assert_true(idle > 2 * busy);                   /* mostly from the idle guests */

	mv_policy_free(p);
	for (int i = 0; i < NR; i++) {
		mvw_stop(w.g[i]);
		struct mvw_stats st;
		mvw_stats(w.g[i], &st);
		assert_int_equal(st.ooms, 0);
		uint64_t bad = 1;
		mvw_verify(w.g[i], &bad);
		assert_int_equal(bad, 0);
		mvw_guest_free(w.g[i]);
	}
	mv_host_free(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(balloons_move_memory_to_the_busy_guest),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
