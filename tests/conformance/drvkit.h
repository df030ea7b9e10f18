/* drvkit.h - the test side of the driver conformance tests: the driver run on the fake
 * platform and device (fakedev.h, fakemmio.h) the way a port runs it, and the moves a host
 * makes (targets, command IDs). Included by test_conformance_driver*.c only. */
#ifndef MV_DRVKIT_H
#define MV_DRVKIT_H

#include "fakemmio.h"

#define F(x)  CONF_BIT(MV_BALLOON_F_##x)
#define ALL   (MV_BALLOON_FEATURES_ALL | V1BIT)
#define MIB   (1u << 20)

static struct mvg_config C;

static inline int setup(void **state)
{
	fk_new(ALL);
	mvg_config_init(&C);
	return 0;
}

static inline int teardown(void **state)
{
	free(FK.d);
	FK.d = NULL;
	return 0;
}

static inline int init(void)
{
	return mvg_balloon_init(FK.d, &fk_platform, &C);
}

static inline void init_ok(void)
{
	assert_int_equal(init(), 0);
}

/* Steps of the driver as its port runs them: step, then wait as long as it asks. */
static inline void run(unsigned steps)
{
	for (unsigned i = 0; i < steps; i++) {
		FK.out_at_step = FK.acked_out;
		uint64_t ns = mvg_balloon_step(FK.d);
		FK.clock += 1000000;
		if (ns)
			fk_wait(NULL, ns > 1000000000ull ? 1000000000ull : ns);
	}
}

static inline void config_change(void)
{
	FK.gen++;
	fk_interrupt(INT_CONFIG);
}

static inline void target(uint32_t pages)
{
	FK.num_pages = pages;
	config_change();
}

static inline void cmd_id(uint32_t id)
{
	FK.cmd_id = id;
	if (id >= 2)
		FK.hint_started = false;
	config_change();
}

static inline unsigned count(enum pstate s)
{
	unsigned n = 0;
	for (unsigned p = 0; p < FK_PAGES; p++)
		n += FK.st[p] == s;
	return n;
}

/* Run until actual matches the target with nothing in flight; false if it never does. */
static inline bool settle(unsigned max)
{
	for (unsigned i = 0; i < max; i++) {
		run(1);
		if (FK.actual == FK.num_pages && !count(P_INFL) && !count(P_DEFL))
			return true;
	}
	return false;
}

static inline struct mvg_status status(void)
{
	struct mvg_status s;
	mvg_balloon_status(FK.d, &s);
	return s;
}

static inline struct fq *queue_of(enum role r)
{
	for (unsigned i = 0; i < FK.nq; i++)
		if (FK.q[i].role == r)
			return &FK.q[i];
	return NULL;
}

/* A guest that poisons what it frees: RAM holds the poison, the driver may use
 * PAGE_POISON (mvg.h: only then). */
static inline void poison_up(uint64_t offered)
{
	fk_new(offered);
	FK.poison_ram = true;
	FK.poison = 0xaaaaaaaa;
	memset(FK.ram, 0xaa, FK_RAM);
	C.features = MV_BALLOON_FEATURES_ALL;
	C.poison_val = 0xaaaaaaaa;
	init_ok();
}

static inline void report_until(uint64_t n)
{
	for (unsigned i = 0; i < 300 && FK.reports < n; i++) {
		FK.clock += 100000000;
		run(1);
	}
	assert_true(FK.reports >= n);
}

/* A whole hint run: command ID 7 until the driver sends STOP, then DONE. */
static inline void hint_run(void)
{
	fk_new(F(FREE_PAGE_HINT) | F(MUST_TELL_HOST) | V1BIT);
	init_ok();
	cmd_id(7);
	for (unsigned i = 0; i < 200 && !FK.hint_stops; i++)
		run(1);
}

static inline int drvkit_main(const char *group, const struct conf_row *rows, size_t n)
{
	int rc = conf_run(group, rows, n, setup, teardown, NULL, NULL);
	free(FK.ram);
	return rc;
}

#define ROW(clause, level, text, fn) { clause, "driver", level, text, fn, NULL }

#endif
