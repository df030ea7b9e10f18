/* sim_int.h - the simulated guest's state, shared by its wiring and threads (sim.c) and
 * its memory: RAM, allocator and guest stats (simmem.c). */
#ifndef MVG_SIM_INT_H
#define MVG_SIM_INT_H

#include "sim.h"
#include "galloc.h"
#include "vubridge.h"

#include <pthread.h>
#include <stdatomic.h>

#define MIB            (1ull << 20)
#define GIB            (1ull << 30)

struct ram {
	uint8_t *hva;
	uint64_t gpa, bytes;
	uint64_t offset;               /* in the memfd (vhost-user) */
};

struct mvg_sim {
	struct mvg_sim_config cfg;
	struct mv_vm *vm;
	struct mv_balloon *b;
	struct mv_balloon_ops ops;
	struct ram ram[2];
	unsigned nram;
	struct mvg__galloc *ga;
	int memfd;                     /* guest RAM's file over vhost-user, else -1 */
	struct mvg__vub *vub;          /* the bridge over vhost-user, else NULL */

	struct mvg_balloon *drv;       /* mvg_balloon_size() bytes */
	struct mvg_platform plat;
	bool drv_ok;                   /* mvg_balloon_init succeeded */
	pthread_mutex_t drv_lock;      /* serialises every mvg_balloon_* call */
	pthread_t drv_thread;
	bool drv_running;              /* under ctl_lock */
	atomic_bool drv_stop;
	pthread_mutex_t ctl_lock;      /* start / stop of the driver thread */

	pthread_mutex_t irq_lock;      /* guards irq_pending */
	pthread_cond_t irq_cond;
	bool irq_pending;              /* interrupt since the driver last waited */

	pthread_t io_thread;
	bool io_running;
	pthread_mutex_t io_lock;       /* guards io_pending, io_stop */
	pthread_cond_t io_cond;
	uint32_t io_pending;           /* bit per queue with a notify not handled yet */
	bool io_stop;

	pthread_mutex_t stats_lock;    /* guards user_stats */
	struct mvg_guest_stats user_stats;
	atomic_uint_fast64_t oom_kills;
};

/* sim.c: an interrupt for the driver (wakes its wait). */
void mvg__sim_raise_irq(struct mvg_sim *s);

/* simmem.c. Guest RAM: laid out, mapped (memfd-backed over vhost-user), registered with
 * a new VM of host when in-process, and handed to the allocator; free_ram undoes what
 * was done. The platform's memory hooks (pages, map, free bytes, stats, reporting). */
int mvg__sim_setup_ram(struct mvg_sim *s, struct mv_host *host);
void mvg__sim_free_ram(struct mvg_sim *s);
void mvg__sim_platform_mem(struct mvg_sim *s);

#endif
