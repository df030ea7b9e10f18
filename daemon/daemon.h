/* daemon.h - memvirtd's private types: the VMs it knows, its links, its admin's settings. */
#ifndef MD_DAEMON_H
#define MD_DAEMON_H

#include "snapshot.h"
#include "attach_wire.h"

#include <memvirt/memvirt.h>
#include <memvirt/policy.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/*
 * Overview. One thread runs an epoll loop over: signals (signalfd), the policy period
 * (timerfd), the agent socket and its links, the control socket and its clients. The
 * metrics listener (libmicrohttpd) has a thread of its own and only reads the snapshot,
 * under snap_lock.
 *
 *   agents (VMMs linking libmemvirt, and the daemon's own per-VM vhost-user workers)
 *     --REPORT--> md_vm table --> mv_policy_step() --> SET_TARGET / SET_SHARE --> agents
 *   admin --control socket--> settings (persisted) --> the policy text --> the engine
 *
 * A VM added by the admin with a vhost-user socket is served by a worker process
 * (`memvirt balloon-backend --attach`), which hosts the device and reports like any VMM:
 * a worker outlives a daemon restart (the guest keeps its device: Linux's virtio_uml
 * cannot reconnect) and connects to the next daemon.
 */

#define MD_MAX_AGENTS   64
#define MD_MAX_CLIENTS  16
#define MD_MAX_VMS      256
#define MD_MAX_ADDED    64
#define MD_LINE         1024
#define MD_BACKLOG      64        /* decision records kept for `explain --follow` */

struct md_agent {
	int fd;                       /* -1: slot free */
	unsigned id;
	pid_t pid;                    /* SO_PEERCRED */
	bool hello;                   /* HELLO received, WELCOME sent */
	char client[MV_AW_CLIENT];
	struct mv__aw_rx *rx;
	bool scan_valid;              /* the host scanner block of its last report */
	struct mv_scan_stats scan;
};

/* A VM reported by an agent. */
struct md_vm {
	bool used;
	unsigned agent;               /* md_agent.id of its reporter */
	bool attached;                /* attached to the policy engine */
	struct mv__aw_vm r;           /* the latest report */
	uint64_t report_ns;
	char rule[MD_RULE], cap[MD_RULE];
	uint64_t decided;
};

/* A VM the admin added with a vhost-user socket. */
struct md_added {
	char name[MD_NAME];
	char socket[108];
	pid_t worker;                 /* our child serving it, 0: none */
	uint64_t spawn_ns;            /* last start of a worker */
	bool restored;                /* from the state file: its worker may be alive, give it
	                                 time to link before starting another */
};

/* The admin's settings (persisted in STATE_DIR/state.json). */
struct md_vm_set {
	char name[MD_NAME];
	bool has_min, has_max, has_shares;
	uint64_t min_mib, max_mib;    /* max 0 = no cap */
	double shares;
};

struct md_settings {
	char goal[16];                /* "" = the config file's */
	bool has_floor, has_ratio, has_budget;
	uint64_t floor_mib, budget_mib;
	double ratio;
	unsigned nr_vms;
	struct md_vm_set vms[MD_MAX_VMS];
	unsigned nr_added;
	struct md_added added[MD_MAX_ADDED];
};

struct md_client {
	int fd;                       /* -1: free */
	bool follow;                  /* streams decision records */
	char line[MD_LINE];
	size_t n;
};

struct md_opts {
	const char *config;           /* policy INI; missing = defaults */
	const char *state_dir;
	const char *control;
	const char *agent;
	const char *metrics;          /* "127.0.0.1:9477" or NULL */
	const char *textfile;         /* node_exporter textfile or NULL */
	const char *self;             /* the memvirt binary, for workers */
	const char *meminfo, *psi;    /* host input files, NULL = /proc */
	bool no_workers;              /* start no worker process (the control fuzzer) */
	FILE *log;
};

struct md {
	struct md_opts o;
	int ep, sig, timer, afd, cfd;
	struct mv_policy *pol;
	struct md_agent agents[MD_MAX_AGENTS];
	unsigned next_agent;
	struct md_vm vms[MD_MAX_VMS];
	struct md_client clients[MD_MAX_CLIENTS];
	struct md_settings set;
	char *conf_text;              /* the config file as last loaded (NULL: none) */
	uint64_t poll_seq, ticks, start_ns;
	gid_t group;                  /* the memvirt group, (gid_t)-1 if none */
	bool stop;
	/* decision records: the backlog and counts by rule */
	char *backlog[MD_BACKLOG];
	unsigned backlog_next;
	struct md_rule_count rules[MD_MAX_RULES];
	unsigned nr_rules;
	struct mv_policy_outputs last;
	struct mv_policy_host_inputs host;
	double share;
	/* the snapshot the metrics thread reads */
	pthread_mutex_t snap_lock;
	struct md_snapshot snap;
	struct md_http *http;
};

uint64_t md_now_ns(void);
void md_log(struct md *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* settings.c */
int md_parse_size_mib(const char *v, uint64_t *mib, char *err, size_t errlen);
bool md_name_ok(const char *name);
int md_settings_load(struct md *d);
int md_settings_save(struct md *d);
int md_policy_reload(struct md *d, const struct md_settings *s, char *err, size_t errlen);
struct md_vm_set *md_settings_vm(struct md_settings *s, const char *name, bool create);
void md_goal(struct md *d, char *goal, size_t len, uint64_t *bytes, double *ratio);
void md_vm_limits(struct md *d, const char *name, uint64_t *min, uint64_t *max, double *shares);

/* agents.c */
int md_listen_unix(struct md *d, const char *path);
int md_agents_listen(struct md *d);
void md_agent_accept(struct md *d);
void md_agent_event(struct md *d, struct md_agent *a);
void md_agents_poll(struct md *d);
int md_agent_set_target(struct md *d, struct md_vm *v, uint64_t bytes);
void md_agents_set_share(struct md *d, double share);
struct md_agent *md_agent_by_id(struct md *d, unsigned id);
struct md_vm *md_vm_find(struct md *d, const char *name);
bool md_peer_allowed(struct md *d, int fd, pid_t *pid, char *why, size_t whylen);

/* workers.c */
void md_workers_check(struct md *d);
void md_workers_reap(struct md *d);
void md_worker_stop(struct md *d, struct md_added *a);

/* tick.c */
void md_tick(struct md *d);
void md_snapshot_update(struct md *d);
void md_decision(void *opaque, const char *line);

/* control.c */
int md_control_listen(struct md *d);
void md_control_accept(struct md *d);
void md_control_event(struct md *d, struct md_client *c);
void md_control_broadcast(struct md *d, const char *line);
bool md_client_send(struct md_client *c, const char *line);

/* commands.c */
char *md_command(struct md *d, struct md_client *c, char *line);
char *md_status_json(struct md *d);

#endif
