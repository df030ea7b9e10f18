/* soak.c - the soak: one host with its background workers, simulated guests of every
 * profile with balloons and running workloads, the policy engine under a moving budget,
 * free page reporting and hinting, memslots removed and added back, guests torn down and
 * created anew, and OS calls failing in phases, all at once; every page verified
 * throughout.
 *
 * Overview. Six guest places (slots) hold one guest each: two idle guests and a web
 * guest (two of them in one trust domain), a db guest and an idle guest in domains of
 * their own, two clones of one image in a domain of theirs. Each guest's RAM is two
 * memslots (below and above the x86 hole). Threads:
 *  - main: every policy period, measures each guest's resident RAM (mincore), moves the
 *    engine's host budget along a triangle wave (balloons inflate and deflate), ticks
 *    the engine, opens and closes free page hint runs, switches fault injection on and
 *    off, samples the scanner, prints progress;
 *  - verifier: compares every held page of every guest with its expected content, one
 *    guest at a time, round after round;
 *  - churn: removes a guest's upper memslot and adds the same memory back (its driver
 *    paused, its workload writing on), and tears a guest down (verified first) to create
 *    a new one with new content in its place;
 *  - watchdog: ends the run when a verify round, a teardown, a creation, a region change
 *    or a tick takes longer than watchdog_s.
 * A slot's lock is held while its guest is verified, torn down, created or its regions
 * change; the main thread only try-locks it. Lock order: slot, then the engine.
 */
#include "soak_int.h"
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define FAULT_RATE   2000      /* per 100000 calls of each failing entry, when on */
#define LOG_SHOW     20        /* library error messages shown */
#define GUEST_FLOOR  (8 * SOAK_MIB)

static const struct soak_slot slot_plan[SOAK_SLOTS] = {
	{ .name = "idle-a", .profile = "idle", .domain = "tenant", .ram_mib = 64 },
	{ .name = "web-a", .profile = "web", .domain = "tenant", .ram_mib = 64 },
	{ .name = "db", .profile = "db", .domain = "", .ram_mib = 96 },
	{ .name = "idle-b", .profile = "idle", .domain = "", .ram_mib = 64 },
	{ .name = "clone-0", .profile = "clones", .domain = "clones", .ram_mib = 64 },
	{ .name = "clone-1", .profile = "clones", .domain = "clones", .ram_mib = 64 },
};

void soak_opts_init(struct soak_opts *o)
{
	*o = (struct soak_opts){ .seconds = 1800, .seed = 1, .watchdog_s = 60, .progress = true };
}

uint64_t soak_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * SOAK_SEC + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
	nanosleep(&(struct timespec){ .tv_sec = (time_t)(ns / SOAK_SEC), .tv_nsec = (long)(ns % SOAK_SEC) }, NULL);
}

/* x clamped to [lo, hi], in ns. */
static uint64_t every(double x, double lo, double hi)
{
	return (uint64_t)((x < lo ? lo : x > hi ? hi : x) * 1e9);
}

static uint64_t hash_str(const char *t)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *t; t++)
		h = (h ^ (uint8_t)*t) * 0x100000001b3ull;
	return h;
}

static uint64_t mix(uint64_t a, uint64_t b)
{
	uint64_t z = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	return (z ^ (z >> 27)) | 1;
}

/* The library's log: counted; errors shown (the first few). No call back into it. */
static void on_log(void *opaque, enum mv_log_level level, const char *msg)
{
	struct soak *s = opaque;
	if (level == MV_LOG_ERROR) {
		if (atomic_fetch_add(&s->log_err, 1) < LOG_SHOW)
			fprintf(stderr, "soak: library error: %s\n", msg);
	} else if (level == MV_LOG_WARN) {
		atomic_fetch_add(&s->log_warn, 1);
		if (s->o->verbose)
			fprintf(stderr, "soak: library warning: %s\n", msg);
	}
}

/* ---- guests ---- */

/* Its balloon's and workload's figures go into the run's totals before it is freed; the
 * slot's generation moves on with them. */
static void retire_counters(struct soak *s, struct soak_slot *sl)
{
	struct mvw_guest *g = sl->g;
	struct mv_balloon_info in;
	struct mvw_stats st;
	mvw_stats(g, &st);
	pthread_mutex_lock(&s->res_lock);
	if (!mv_balloon_info(mvg_sim_balloon(mvw_sim(g)), &in)) {
		s->retired_inflated += (double)in.inflated_bytes / SOAK_MIB;
		s->retired_deflated += (double)in.deflated_bytes / SOAK_MIB;
		s->retired_reported += (double)in.reported_bytes / SOAK_MIB;
		s->retired_discarded += (double)in.hint_discarded_bytes / SOAK_MIB;
		s->retired_guest_errors += in.guest_errors;
	}
	s->retired_ooms += st.ooms;
	sl->gen++;
	pthread_mutex_unlock(&s->res_lock);
}

static void setup_error(struct soak *s, const char *what, const char *who, int err)
{
	fprintf(stderr, "soak: %s %s: %s\n", what, who, mv_strerror(err));
	pthread_mutex_lock(&s->res_lock);
	s->res->setup_errors++;
	pthread_mutex_unlock(&s->res_lock);
}

/* Create the slot's next guest, start it, put it under the engine. Slot lock held. */
static int guest_create(struct soak *s, struct soak_slot *sl)
{
	uint64_t ram = sl->ram_mib * SOAK_MIB;
	struct mvg_sim_config sc;
	mvg_sim_config_init(&sc);
	sc.split_at = ram / 2; /* two memslots, the upper one at 4 GiB */
	sc.driver.floor_bytes = GUEST_FLOOR;
	struct mvw_config c;
	mvw_config_init(&c);
	c.profile = mvw_profile_find(sl->profile);
	c.name = sl->name;
	c.domain = sl->domain;
	c.ram_bytes = ram;
	c.sim = &sc;
	c.image_seed = mix(s->o->seed, hash_str(sl->profile)); /* clones share their image */
	c.guest_seed = mix(s->o->seed, (uint64_t)(sl - s->slot) << 32 | sl->gen);
	soak_watch_begin(s, W_CREATE, sl->name);
	int err = mvw_guest_new(s->h, &c, &sl->g);
	soak_watch_end(s, W_CREATE);
	if (err) {
		sl->g = NULL;
		setup_error(s, "cannot create guest", sl->name, err);
		return err;
	}
	pthread_mutex_lock(&s->res_lock);
	s->res->guests_created++;
	pthread_mutex_unlock(&s->res_lock);
	struct mvg_sim *sim = mvw_sim(sl->g);
	if ((err = mv_policy_attach(s->p, sl->name, mvg_sim_vm(sim), mvg_sim_balloon(sim))))
		setup_error(s, "cannot attach to the engine", sl->name, err);
	if ((err = mvw_start(sl->g)))
		setup_error(s, "cannot start the workload of", sl->name, err);
	return 0;
}

/* Out of the engine, workload stopped, every page verified, freed (all of it watched as
 * the teardown). Slot lock held. */
static void guest_retire(struct soak *s, struct soak_slot *sl)
{
	struct mvw_guest *g = sl->g;
	if (!g)
		return;
	soak_watch_begin(s, W_TEARDOWN, sl->name);
	if (s->p)
		mv_policy_detach(s->p, sl->name);
	mvw_stop(g);
	soak_verify(s, sl);
	retire_counters(s, sl);
	mvw_guest_free(g);
	soak_watch_end(s, W_TEARDOWN);
	sl->g = NULL;
	atomic_store(&sl->resident, 0);
}

/* A memslot resized as a VMM does it: the upper one removed and the same memory added
 * back, the balloon driver paused meanwhile (its rings are in the lower one), the
 * workload writing on. Slot lock held. */
static void region_readd(struct soak *s, struct soak_slot *sl)
{
	void *hva[2];
	uint64_t gpa[2], bytes[2];
	struct mvg_sim *sim = mvw_sim(sl->g);
	struct mv_vm *vm = mvg_sim_vm(sim);
	if (mvg_sim_ram(sim, hva, gpa, bytes, 2) < 2)
		return;
	soak_watch_begin(s, W_REGION, sl->name);
	mvg_sim_stop_driver(sim);
	int err = mv_vm_region_remove(vm, 1);
	if (err && err != -ENOENT)
		setup_error(s, "cannot remove the upper memslot of", sl->name, err);
	sleep_ns(10 * 1000000ull);
	err = mv_vm_region_add(vm, 1, gpa[1], hva[1], bytes[1], 0);
	if (err)
		setup_error(s, "cannot add back the upper memslot of", sl->name, err);
	if (mvg_sim_start_driver(sim))
		setup_error(s, "cannot restart the driver of", sl->name, -EIO);
	soak_watch_end(s, W_REGION);
	if (!err) {
		pthread_mutex_lock(&s->res_lock);
		s->res->region_readds++;
		pthread_mutex_unlock(&s->res_lock);
	}
}

/* ---- the verifier and churn threads ---- */

static void nap_until(struct soak *s, uint64_t when)
{
	while (!atomic_load(&s->stop) && soak_now_ns() < when)
		sleep_ns(50 * 1000000ull);
}

static void *verifier_main(void *arg)
{
	struct soak *s = arg;
	uint64_t period = every(s->o->seconds / 5, 1, 3);
	while (!atomic_load(&s->stop)) {
		uint64_t t = soak_now_ns();
		soak_watch_begin(s, W_VERIFY, "every guest");
		for (unsigned i = 0; i < SOAK_SLOTS && !atomic_load(&s->stop); i++) {
			pthread_mutex_lock(&s->slot[i].lock);
			soak_verify(s, &s->slot[i]);
			pthread_mutex_unlock(&s->slot[i].lock);
		}
		soak_watch_end(s, W_VERIFY);
		pthread_mutex_lock(&s->res_lock);
		s->res->verify_rounds++;
		pthread_mutex_unlock(&s->res_lock);
		nap_until(s, t + period);
	}
	return NULL;
}

static void *churn_main(void *arg)
{
	struct soak *s = arg;
	uint64_t readd = every(s->o->seconds / 4, 2, 30), recreate = every(s->o->seconds / 3, 3, 45);
	uint64_t next_readd = soak_now_ns() + readd / 2, next_recreate = soak_now_ns() + recreate;
	unsigned ri = 0, ci = 0;
	while (!atomic_load(&s->stop)) {
		nap_until(s, next_readd < next_recreate ? next_readd : next_recreate);
		if (atomic_load(&s->stop))
			break;
		uint64_t now = soak_now_ns();
		struct soak_slot *sl;
		if (now >= next_readd) {
			sl = &s->slot[ri++ % SOAK_SLOTS];
			pthread_mutex_lock(&sl->lock);
			if (sl->g)
				region_readd(s, sl);
			pthread_mutex_unlock(&sl->lock);
			next_readd = now + readd;
		}
		if (now >= next_recreate) {
			sl = &s->slot[(ci++ * 5 + 2) % SOAK_SLOTS];
			pthread_mutex_lock(&sl->lock);
			if (sl->g) {
				pthread_mutex_lock(&s->res_lock);
				s->res->vm_recreations++;
				pthread_mutex_unlock(&s->res_lock);
			}
			guest_retire(s, sl);
			guest_create(s, sl);
			pthread_mutex_unlock(&sl->lock);
			next_recreate = now + recreate;
		}
	}
	return NULL;
}

/* ---- the main thread's duties ---- */

/* Resident bytes of a guest's RAM (mincore). Slot lock held. */
static uint64_t resident_of(struct mvw_guest *g)
{
	static unsigned char vec[256 * SOAK_MIB / 4096];
	void *hva[2];
	uint64_t gpa[2], len[2], bytes = 0;
	unsigned n = mvg_sim_ram(mvw_sim(g), hva, gpa, len, 2);
	for (unsigned k = 0; k < n; k++) {
		if (len[k] > sizeof(vec) * 4096 || mincore(hva[k], len[k], vec))
			continue;
		for (uint64_t p = 0; p < len[k] / 4096; p++)
			bytes += (vec[p] & 1) * 4096ull;
	}
	return bytes;
}

static uint64_t measure_resident(struct soak *s)
{
	uint64_t total = 0;
	for (unsigned i = 0; i < SOAK_SLOTS; i++) {
		struct soak_slot *sl = &s->slot[i];
		if (!pthread_mutex_trylock(&sl->lock)) {
			atomic_store(&sl->resident, sl->g ? resident_of(sl->g) : 0);
			pthread_mutex_unlock(&sl->lock);
		}
		total += atomic_load(&sl->resident);
	}
	return total;
}

/* The engine sees a host of `budget` bytes, of which the guests' resident RAM is used. */
static int host_inputs(void *opaque, struct mv_policy_host_inputs *h)
{
	struct soak *s = opaque;
	uint64_t used = 0, budget = atomic_load(&s->budget);
	for (unsigned i = 0; i < SOAK_SLOTS; i++)
		used += atomic_load(&s->slot[i].resident);
	h->mem_total_bytes = budget;
	h->mem_available_bytes = used < budget ? budget - used : 0;
	return 0;
}

/* Free page hint runs: each slot in turn opens one for a while, then ends it. */
static void hints(struct soak *s, uint64_t now)
{
	uint64_t period = every(s->o->seconds / 3, 3, 12), open = every(s->o->seconds / 10, 0.5, 2);
	for (unsigned i = 0; i < SOAK_SLOTS; i++) {
		struct soak_slot *sl = &s->slot[i];
		if (!sl->next_hint_ns)
			sl->next_hint_ns = now + period * (i + 1) / SOAK_SLOTS;
		bool due = sl->hint_end_ns ? now >= sl->hint_end_ns : now >= sl->next_hint_ns;
		if (!due || pthread_mutex_trylock(&sl->lock))
			continue;
		struct mv_balloon *b = sl->g ? mvg_sim_balloon(mvw_sim(sl->g)) : NULL;
		if (sl->hint_end_ns) {
			if (b)
				mv_balloon_hint_stop(b);
			sl->hint_end_ns = 0;
			sl->next_hint_ns = now + period;
		} else if (b && !mv_balloon_hint_start(b)) {
			sl->hint_end_ns = now + open;
			pthread_mutex_lock(&s->res_lock);
			s->res->hint_runs++;
			pthread_mutex_unlock(&s->res_lock);
		} else {
			sl->next_hint_ns = now + period;
		}
		pthread_mutex_unlock(&sl->lock);
	}
}

/* Fault injection: off in the first half of each phase, on in the second. */
static bool faults(struct soak *s, uint64_t now)
{
	uint64_t phase = every(s->o->seconds / 2, 4, 30);
	bool on = (now - s->t0_ns) % phase >= phase / 2;
	soak_faults_set(on ? FAULT_RATE : 0);
	return on;
}

/* Between 60% and 110% of what the guests held at the start: a triangle wave. */
static void move_budget(struct soak *s, uint64_t base, uint64_t now)
{
	double period = (double)every(s->o->seconds / 2, 5, 40), x = fmod((double)(now - s->t0_ns), period) / period;
	double f = x < 0.5 ? 1.1 - x : 0.1 + x; /* 1.1 down to 0.6, and back */
	atomic_store(&s->budget, (uint64_t)((double)base * f));
}

struct sample {
	uint64_t merged, zero, cow, cow_last;
	double inflated, deflated, reported, discarded;
	uint64_t guest_errors, ooms;
};

/* Scanner and balloon figures, live guests and retired ones. */
static void take_sample(struct soak *s, struct sample *x)
{
	struct mv_scan_stats st;
	if (!mv_host_stats(s->h, &st)) {
		x->merged = st.pages_merged;
		x->zero = st.pages_zero;
		if (st.cow_breaks > x->cow_last)
			x->cow += st.cow_breaks - x->cow_last;
		x->cow_last = st.cow_breaks;
	}
	pthread_mutex_lock(&s->res_lock);
	if (x->merged > s->res->pages_merged_peak)
		s->res->pages_merged_peak = x->merged;
	if (x->zero > s->res->pages_zero_peak)
		s->res->pages_zero_peak = x->zero;
	pthread_mutex_unlock(&s->res_lock);
	for (unsigned i = 0; i < SOAK_SLOTS; i++) {
		struct soak_slot *sl = &s->slot[i];
		if (pthread_mutex_trylock(&sl->lock))
			continue; /* busy: its last figures stand */
		sl->last_valid = sl->g && !mv_balloon_info(mvg_sim_balloon(mvw_sim(sl->g)), &sl->last_info);
		if (sl->last_valid) {
			struct mvw_stats ws;
			mvw_stats(sl->g, &ws);
			sl->last_ooms = ws.ooms;
			sl->last_gen = sl->gen;
		}
		pthread_mutex_unlock(&sl->lock);
	}
	pthread_mutex_lock(&s->res_lock);
	x->inflated = s->retired_inflated;
	x->deflated = s->retired_deflated;
	x->reported = s->retired_reported;
	x->discarded = s->retired_discarded;
	x->guest_errors = s->retired_guest_errors;
	x->ooms = s->retired_ooms;
	for (unsigned i = 0; i < SOAK_SLOTS; i++) {
		const struct soak_slot *sl = &s->slot[i];
		if (!sl->last_valid || sl->last_gen != sl->gen)
			continue; /* no guest, or its figures are among the retired ones now */
		x->inflated += (double)sl->last_info.inflated_bytes / SOAK_MIB;
		x->deflated += (double)sl->last_info.deflated_bytes / SOAK_MIB;
		x->reported += (double)sl->last_info.reported_bytes / SOAK_MIB;
		x->discarded += (double)sl->last_info.hint_discarded_bytes / SOAK_MIB;
		x->guest_errors += sl->last_info.guest_errors;
		x->ooms += sl->last_ooms;
	}
	pthread_mutex_unlock(&s->res_lock);
}

static void progress(struct soak *s, const struct sample *x, uint64_t now, bool faulting)
{
	pthread_mutex_lock(&s->res_lock);
	struct soak_result r = *s->res;
	pthread_mutex_unlock(&s->res_lock);
	fprintf(stderr, "soak: %5.0f s | scanner merged %llu (peak %llu) zero %llu cow breaks %llu | "
	        "balloon +%.0f/-%.0f MiB, reported %.0f MiB, hint runs %llu | region re-adds %llu, "
	        "VMs recreated %llu, injected failures %llu%s | verified %llu pages in %llu rounds, "
	        "mismatches %llu\n",
	        (double)(now - s->t0_ns) / 1e9, (unsigned long long)x->merged,
	        (unsigned long long)r.pages_merged_peak, (unsigned long long)x->zero,
	        (unsigned long long)x->cow, x->inflated, x->deflated, x->reported,
	        (unsigned long long)r.hint_runs, (unsigned long long)r.region_readds,
	        (unsigned long long)r.vm_recreations, (unsigned long long)soak_faults_total(),
	        faulting ? " (on)" : "", (unsigned long long)r.pages_verified,
	        (unsigned long long)r.verify_rounds, (unsigned long long)r.mismatches);
}

/* The run proper: until the end time, every policy period. */
static void control_loop(struct soak *s, struct sample *x)
{
	uint64_t period = (uint64_t)mv_policy_period_ms(s->p) * 1000000ull, base = measure_resident(s);
	uint64_t next_progress = s->t0_ns + 10 * SOAK_SEC;
	for (uint64_t now = soak_now_ns(); now < s->end_ns; now = soak_now_ns()) {
		measure_resident(s);
		move_budget(s, base, now);
		soak_watch_begin(s, W_TICK, "");
		mv_policy_tick(s->p, NULL);
		soak_watch_end(s, W_TICK);
		hints(s, now);
		bool faulting = faults(s, now);
		take_sample(s, x);
		if (s->o->progress && now >= next_progress) {
			progress(s, x, now, faulting);
			next_progress += 10 * SOAK_SEC;
		}
		sleep_ns(period);
	}
}

/* ---- setup and the end ---- */

static int engine_new(struct soak *s)
{
	struct mv_policy_config pc;
	mv_policy_config_init(&pc);
	pc.host = s->h;
	pc.host_inputs = host_inputs;
	pc.host_inputs_opaque = s;
	int err = mv_policy_new(&pc, &s->p);
	if (err)
		return err;
	char text[2048], msg[256] = "";
	int n = snprintf(text, sizeof(text), "[host]\ngoal = floor\nfloor_mib = 8\nband_mib = 8\n"
	                 "period_ms = 200\nmax_step_mib = 16\noom_deflate_mib = 16\n"
	                 "alloc_stall_deflate_mib = 8\ncooldown_ms = 3000\nstall_backoff_ms = 3000\n"
	                 "scanner_min_cpu = 0.05\nscanner_cpu = 0.2\nscanner_max_cpu = 0.5\n");
	for (unsigned i = 0; i < SOAK_SLOTS; i++)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "[vm %s]\nmin_mib = 16\n", slot_plan[i].name);
	err = mv_policy_load_string(s->p, text, msg, sizeof(msg));
	if (err)
		fprintf(stderr, "soak: policy: %s\n", msg[0] ? msg : mv_strerror(err));
	return err;
}

static int host_new(struct soak *s)
{
	struct mv_host_config hc;
	mv_host_config_init(&hc);
	hc.cpu_share = 0.2;
	hc.settle_ms = 50; /* merge soon after a page settles: a soak must merge a lot */
	hc.log = on_log;
	hc.log_opaque = s;
	int err = mv_host_new(&hc, &s->h);
	if (err)
		return err;
	soak_faults_install(s->h, s->o->seed);
	return 0;
}

/* Stop the threads, verify and free every guest, the engine and the host. */
static void finish(struct soak *s, pthread_t verifier, pthread_t churn, struct sample *x)
{
	atomic_store(&s->stop, true);
	pthread_join(verifier, NULL);
	pthread_join(churn, NULL);
	soak_faults_set(0);
	take_sample(s, x);
	s->res->seconds = (double)(soak_now_ns() - s->t0_ns) / 1e9;
	for (unsigned i = 0; i < SOAK_SLOTS; i++) {
		pthread_mutex_lock(&s->slot[i].lock);
		guest_retire(s, &s->slot[i]);
		pthread_mutex_unlock(&s->slot[i].lock);
	}
	take_sample(s, x); /* the retired figures, now all of them */
	mv_policy_free(s->p);
	soak_watch_begin(s, W_TEARDOWN, "the host");
	mv_host_free(s->h);
	soak_watch_end(s, W_TEARDOWN);
}

static void fill_result(struct soak *s, const struct sample *x)
{
	struct soak_result *r = s->res;
	r->injected_failures = soak_faults_total();
	r->cow_breaks = x->cow;
	r->balloon_inflated_mib = x->inflated;
	r->balloon_deflated_mib = x->deflated;
	r->reported_mib = x->reported;
	r->hint_discarded_mib = x->discarded;
	r->guest_errors = x->guest_errors;
	r->ooms = x->ooms;
	r->log_errors = atomic_load(&s->log_err);
	r->log_warnings = atomic_load(&s->log_warn);
}

static void world_init(struct soak *s, const struct soak_opts *o, struct soak_result *r)
{
	memset(s, 0, sizeof(*s));
	memset(r, 0, sizeof(*r));
	s->o = o;
	s->res = r;
	pthread_mutex_init(&s->res_lock, NULL);
	for (unsigned i = 0; i < SOAK_SLOTS; i++) {
		s->slot[i] = slot_plan[i];
		pthread_mutex_init(&s->slot[i].lock, NULL);
	}
}

static void world_fini(struct soak *s)
{
	for (unsigned i = 0; i < SOAK_SLOTS; i++)
		pthread_mutex_destroy(&s->slot[i].lock);
	pthread_mutex_destroy(&s->res_lock);
}

static int start_guests(struct soak *s)
{
	for (unsigned i = 0; i < SOAK_SLOTS; i++) {
		int err = guest_create(s, &s->slot[i]);
		if (err)
			return err;
	}
	return mv_host_start(s->h);
}

int soak_run(const struct soak_opts *o, struct soak_result *r)
{
	struct soak *s = malloc(sizeof(*s));
	if (!s)
		return r->error = -ENOMEM;
	world_init(s, o, r);
	pthread_t wd, verifier, churn;
	struct sample x = { 0 };
	int err = soak_watchdog_start(s, &wd);
	if (err)
		goto out;
	if ((err = host_new(s)))
		goto out_watchdog;
	if ((err = engine_new(s)) || (err = start_guests(s)))
		goto out_guests;
	s->t0_ns = soak_now_ns();
	s->end_ns = s->t0_ns + (uint64_t)(o->seconds * 1e9);
	if ((err = -pthread_create(&verifier, NULL, verifier_main, s)))
		goto out_guests;
	if ((err = -pthread_create(&churn, NULL, churn_main, s))) {
		atomic_store(&s->stop, true);
		pthread_join(verifier, NULL);
		goto out_guests;
	}
	control_loop(s, &x);
	finish(s, verifier, churn, &x);
	fill_result(s, &x);
	goto out_watchdog;
out_guests:
	for (unsigned i = 0; i < SOAK_SLOTS; i++)
		guest_retire(s, &s->slot[i]);
	mv_policy_free(s->p);
	mv_host_free(s->h);
out_watchdog:
	soak_watchdog_stop(s, wd);
out:
	r->error = err;
	if (r->mismatches || r->log_errors)
		soak_faults_print(stderr);
	world_fini(s);
	free(s);
	return err ? err : r->mismatches || r->hung ? -EIO : 0;
}

void soak_print_json(FILE *f, const struct soak_result *r)
{
	fprintf(f, "{\"seconds\": %.1f, \"guests_created\": %llu, \"region_readds\": %llu, "
	        "\"hint_runs\": %llu, \"injected_failures\": %llu, \"pages_merged_peak\": %llu, "
	        "\"balloon_inflated_mib\": %.1f, \"balloon_deflated_mib\": %.1f, "
	        "\"pages_verified\": %llu, \"mismatches\": %llu, \"vm_recreations\": %llu, "
	        "\"pages_zero_peak\": %llu, \"cow_breaks\": %llu, \"reported_mib\": %.1f, "
	        "\"hint_discarded_mib\": %.1f, \"verify_rounds\": %llu, \"mismatch_sightings\": %llu, "
	        "\"guest_ooms\": %llu, \"balloon_guest_errors\": %llu, \"log_errors\": %llu, "
	        "\"log_warnings\": %llu, \"setup_errors\": %llu, \"hung\": %s}\n",
	        r->seconds, (unsigned long long)r->guests_created, (unsigned long long)r->region_readds,
	        (unsigned long long)r->hint_runs, (unsigned long long)r->injected_failures,
	        (unsigned long long)r->pages_merged_peak, r->balloon_inflated_mib, r->balloon_deflated_mib,
	        (unsigned long long)r->pages_verified, (unsigned long long)r->mismatches,
	        (unsigned long long)r->vm_recreations, (unsigned long long)r->pages_zero_peak,
	        (unsigned long long)r->cow_breaks, r->reported_mib, r->hint_discarded_mib,
	        (unsigned long long)r->verify_rounds, (unsigned long long)r->mismatch_sightings,
	        (unsigned long long)r->ooms, (unsigned long long)r->guest_errors,
	        (unsigned long long)r->log_errors, (unsigned long long)r->log_warnings,
	        (unsigned long long)r->setup_errors, r->hung ? "true" : "false");
}
