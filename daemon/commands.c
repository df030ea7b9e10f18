/* commands.c - the control socket's commands: status, set, host, vm add|remove, reload,
 * follow. Each checks everything before it changes anything. */
#include "daemon.h"

#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORDS 16

static char *error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *error(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_object *o = json_object_new_object();
	json_object_object_add(o, "v", json_object_new_int(1));
	json_object_object_add(o, "error", json_object_new_string(msg));
	char *s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return s;
}

static char *ok(void)
{
	return strdup("{\"v\":1,\"ok\":true}");
}

/* ---- status ---- */

static void u(json_object *o, const char *k, uint64_t v)
{
	json_object_object_add(o, k, json_object_new_uint64(v));
}

static json_object *host_json(const struct md_snapshot *s)
{
	json_object *h = json_object_new_object(), *sv = json_object_new_object();
	json_object_object_add(h, "goal", json_object_new_string(s->goal));
	u(h, "goal_bytes", s->goal_bytes);
	if (s->goal_ratio > 0)
		json_object_object_add(h, "goal_ratio", json_object_new_double(s->goal_ratio));
	json_object_object_add(h, "rule", json_object_new_string(s->host_rule));
	json_object_object_add(h, "pressured", json_object_new_boolean(s->pressured));
	json_object_object_add(h, "need_bytes", json_object_new_int64(s->need_bytes));
	u(h, "mem_total_bytes", s->host.mem_total_bytes);
	u(h, "mem_available_bytes", s->host.mem_available_bytes);
	if (s->host.cgroup_limit_bytes)
		u(h, "cgroup_limit_bytes", s->host.cgroup_limit_bytes);
	if (s->host.psi_valid) {
		json_object *p = json_object_new_object();
		json_object_object_add(p, "some_avg10", json_object_new_double(s->host.psi_some_avg10));
		json_object_object_add(p, "full_avg10", json_object_new_double(s->host.psi_full_avg10));
		json_object_object_add(h, "psi", p);
	}
	json_object_object_add(h, "scanner_cpu_share", json_object_new_double(s->scanner_cpu_share));
	u(h, "ticks", s->ticks);
	uint64_t granted = 0;
	for (unsigned i = 0; i < s->nr_vms; i++)
		granted += s->vms[i].ram_bytes - (s->vms[i].has_balloon ? s->vms[i].balloon.target_bytes : 0);
	u(h, "granted_bytes", granted);
	u(sv, "balloon_bytes", s->balloon_bytes);
	u(sv, "sharing_bytes", s->shared_bytes);
	u(sv, "zero_bytes", s->zero_bytes);
	u(sv, "reported_bytes", s->reported_bytes);
	json_object_object_add(h, "savings", sv);
	return h;
}

static json_object *vm_json(const struct md_vm_view *v)
{
	json_object *o = json_object_new_object(), *b = json_object_new_object();
	json_object *g = json_object_new_object(), *st = json_object_new_object();
	json_object *dec = json_object_new_object();
	json_object_object_add(o, "name", json_object_new_string(v->name));
	json_object_object_add(o, "source", json_object_new_string(v->source));
	json_object_object_add(o, "client", json_object_new_string(v->client));
	u(o, "ram_bytes", v->ram_bytes);
	if (v->has_balloon) {
		u(b, "target_bytes", v->balloon.target_bytes);
		u(b, "actual_bytes", v->balloon.actual_bytes);
		json_object_object_add(b, "stalled", json_object_new_boolean(v->balloon.stalled));
		u(b, "reported_bytes", v->balloon.reported_bytes);
		json_object_object_add(o, "balloon", b);
	} else {
		json_object_put(b);
	}
	json_object_object_add(o, "domain", json_object_new_string(v->domain));
	/* its pages backed by a page shared with others (the saving is its domain's) */
	u(o, "shared_bytes", v->scanner_valid ? v->scanner.pages_merged * 4096 : 0);
	u(o, "zero_bytes", v->scanner_valid ? v->scanner.pages_zero * 4096 : 0);
	const struct mv_balloon_info *bi = &v->balloon;
	if (v->has_balloon && bi->stats_valid >> MV_BSTAT_MEMFREE & 1)
		u(g, "free_bytes", bi->stats[MV_BSTAT_MEMFREE]);
	if (v->has_balloon && bi->stats_valid >> MV_BSTAT_AVAIL & 1)
		u(g, "available_bytes", bi->stats[MV_BSTAT_AVAIL]);
	if (v->has_balloon && bi->stats_valid >> MV_BSTAT_OOM_KILLS & 1)
		u(g, "oom_kills", bi->stats[MV_BSTAT_OOM_KILLS]);
	json_object_object_add(o, "guest", g);
	u(st, "min_bytes", v->min_bytes);
	u(st, "max_bytes", v->max_bytes);
	json_object_object_add(st, "shares", json_object_new_double(v->shares));
	json_object_object_add(o, "settings", st);
	json_object_object_add(dec, "rule", json_object_new_string(v->rule));
	if (v->cap[0])
		json_object_object_add(dec, "cap", json_object_new_string(v->cap));
	u(dec, "target_bytes", v->decided_bytes);
	json_object_object_add(o, "decision", dec);
	return o;
}

char *md_status_json(struct md *d)
{
	json_object *o = json_object_new_object(), *vms = json_object_new_array();
	json_object *w = json_object_new_array();
	pthread_mutex_lock(&d->snap_lock);
	const struct md_snapshot *s = &d->snap;
	json_object_object_add(o, "v", json_object_new_int(1));
	json_object_object_add(o, "host", host_json(s));
	for (unsigned i = 0; i < s->nr_vms; i++)
		json_object_array_add(vms, vm_json(&s->vms[i]));
	for (unsigned i = 0; i < s->nr_waiting; i++) {
		json_object *x = json_object_new_object();
		json_object_object_add(x, "name", json_object_new_string(s->waiting[i].name));
		json_object_object_add(x, "socket", json_object_new_string(s->waiting[i].socket));
		json_object_array_add(w, x);
	}
	pthread_mutex_unlock(&d->snap_lock);
	json_object_object_add(o, "vms", vms);
	json_object_object_add(o, "waiting", w);
	char *txt = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return txt;
}

/* ---- changes: parsed into a copy, checked as a policy, then taken ---- */

static char *commit(struct md *d, struct md_settings *s)
{
	char err[300];
	int rc = md_policy_reload(d, s, err, sizeof(err));
	if (rc)
		return error("%s: nothing changed", err);
	rc = md_settings_save(d);
	md_snapshot_update(d);
	if (rc)
		return error("applied, but not saved in %s: %s", d->o.state_dir, mv_strerror(rc));
	return ok();
}

static bool number(const char *v, double lo, double hi, double *out)
{
	char *end;
	double x = strtod(v, &end);
	if (end == v || *end || !isfinite(x) || x < lo || x > hi)
		return false;
	*out = x;
	return true;
}

/* One key=value of `set VM`. NULL, or the error. */
static char *vm_key(struct md_vm_set *m, char *kv)
{
	char *eq = strchr(kv, '='), err[200];
	if (!eq || eq == kv)
		return error("'%s': expected key=value (min=SIZE, max=SIZE|none, shares=N)", kv);
	*eq = 0;
	const char *k = kv, *v = eq + 1;
	if (!strcmp(k, "min") || !strcmp(k, "max")) {
		uint64_t mib = 0;
		bool none = !strcmp(k, "max") && !strcmp(v, "none");
		if (!none && md_parse_size_mib(v, &mib, err, sizeof(err)))
			return error("%s: %s", k, err);
		if (!strcmp(k, "min"))
			m->has_min = true, m->min_mib = mib;
		else
			m->has_max = true, m->max_mib = mib;
		return NULL;
	}
	if (!strcmp(k, "shares")) {
		if (!number(v, 1e-6, 1e9, &m->shares))
			return error("shares: '%s' is not a number in (0, 1e9]", v);
		m->has_shares = true;
		return NULL;
	}
	return error("unknown setting '%s' (min, max, shares)", k);
}

static char *cmd_set(struct md *d, char **w, int n, struct md_settings *s)
{
	if (n < 2)
		return error("usage: set VM min=SIZE max=SIZE|none shares=N");
	if (!md_name_ok(w[0]))
		return error("'%s' is not a VM name (1-63 printable characters, no spaces, ']', "
		             "quotes or backslashes)", w[0]);
	struct md_vm_set *m = md_settings_vm(s, w[0], true);
	if (!m)
		return error("settings for %d VMs at most", MD_MAX_VMS);
	for (int i = 1; i < n; i++) {
		char *e = vm_key(m, w[i]);
		if (e)
			return e;
	}
	return commit(d, s);
}

static char *host_key(struct md_settings *s, char *kv)
{
	char *eq = strchr(kv, '='), err[200];
	if (!eq || eq == kv)
		return error("'%s': expected key=value (goal=floor|ratio|budget, floor=SIZE, "
		             "ratio=X, budget=SIZE)", kv);
	*eq = 0;
	const char *k = kv, *v = eq + 1;
	if (!strcmp(k, "goal")) {
		if (strcmp(v, "floor") && strcmp(v, "ratio") && strcmp(v, "budget"))
			return error("goal: '%s' is not floor, ratio or budget", v);
		snprintf(s->goal, sizeof(s->goal), "%s", v);
	} else if (!strcmp(k, "floor") || !strcmp(k, "budget")) {
		uint64_t mib;
		if (md_parse_size_mib(v, &mib, err, sizeof(err)))
			return error("%s: %s", k, err);
		if (!strcmp(k, "floor"))
			s->has_floor = true, s->floor_mib = mib;
		else
			s->has_budget = true, s->budget_mib = mib;
	} else if (!strcmp(k, "ratio")) {
		if (!number(v, 0.1, 100, &s->ratio))
			return error("ratio: '%s' is not a number in [0.1, 100]", v);
		s->has_ratio = true;
	} else {
		return error("unknown host setting '%s' (goal, floor, ratio, budget)", k);
	}
	return NULL;
}

static char *cmd_host(struct md *d, char **w, int n, struct md_settings *s)
{
	if (n < 1)
		return error("usage: host goal=floor|ratio|budget floor=SIZE ratio=X budget=SIZE");
	for (int i = 0; i < n; i++) {
		char *e = host_key(s, w[i]);
		if (e)
			return e;
	}
	return commit(d, s);
}

static char *vm_add(struct md *d, char **w, int n, struct md_settings *s)
{
	if (n < 2)
		return error("usage: vm add NAME SOCKET [min=SIZE max=SIZE shares=N]");
	if (!md_name_ok(w[0]))
		return error("'%s' is not a VM name (1-63 printable characters, no spaces, ']', "
		             "quotes or backslashes)", w[0]);
	if (w[1][0] != '/' || strlen(w[1]) >= sizeof(s->added[0].socket))
		return error("socket '%s': an absolute path shorter than 108 bytes, please", w[1]);
	for (unsigned i = 0; i < s->nr_added; i++) {
		if (!strcmp(s->added[i].name, w[0]))
			return error("vm %s is added already (socket %s)", w[0], s->added[i].socket);
		if (!strcmp(s->added[i].socket, w[1]))
			return error("socket %s serves vm %s already", w[1], s->added[i].name);
	}
	if (md_vm_find(d, w[0]))
		return error("a VMM reports a VM named %s already", w[0]);
	if (s->nr_added >= MD_MAX_ADDED)
		return error("%d vhost-user VMs at most", MD_MAX_ADDED);
	struct md_added *a = &s->added[s->nr_added++];
	memset(a, 0, sizeof(*a));
	snprintf(a->name, sizeof(a->name), "%s", w[0]);
	snprintf(a->socket, sizeof(a->socket), "%s", w[1]);
	if (n > 2) {
		struct md_vm_set *m = md_settings_vm(s, w[0], true);
		for (int i = 2; m && i < n; i++) {
			char *e = vm_key(m, w[i]);
			if (e)
				return e;
		}
	}
	char *r = commit(d, s);
	md_workers_check(d);
	return r;
}

static char *vm_remove(struct md *d, char **w, int n, struct md_settings *s)
{
	if (n != 1)
		return error("usage: vm remove NAME");
	for (unsigned i = 0; i < s->nr_added; i++) {
		if (strcmp(s->added[i].name, w[0]))
			continue;
		struct md_added gone = s->added[i];
		s->added[i] = s->added[--s->nr_added];
		char *r = commit(d, s);
		bool taken = true; /* even if not saved: the daemon no longer serves it */
		for (unsigned j = 0; j < d->set.nr_added; j++)
			taken &= strcmp(d->set.added[j].name, gone.name) != 0;
		if (taken)
			md_worker_stop(d, &gone);
		return r;
	}
	return error("vm %s was not added with `vm add` (VMs of a linked VMM leave with it)", w[0]);
}

static char *cmd_follow(struct md *d, struct md_client *c)
{
	c->follow = true;
	bool sent = md_client_send(c, "{\"v\":1,\"ok\":true,\"following\":true}");
	for (unsigned i = 0; sent && i < MD_BACKLOG; i++) {
		const char *l = d->backlog[(d->backlog_next + i) % MD_BACKLOG];
		if (l) /* the recent past first, then live */
			sent = md_client_send(c, l);
	}
	return sent ? strdup("") : NULL;
}

char *md_command(struct md *d, struct md_client *c, char *line)
{
	char *w[MAX_WORDS], *save = NULL;
	int n = 0;
	for (char *t = strtok_r(line, " \t\r", &save); t; t = strtok_r(NULL, " \t\r", &save)) {
		if (n == MAX_WORDS)
			return error("too many words (at most %d)", MAX_WORDS);
		w[n++] = t;
	}
	if (n == 0 || strcmp(w[0], "1"))
		return error("each command starts with the protocol version, 1 (e.g. \"1 status\")");
	if (n == 1)
		return error("no command (status, set, host, vm, reload, follow)");
	static struct md_settings s; /* a copy to change: taken only if it is a valid policy */
	s = d->set;
	const char *cmd = w[1];
	if (!strcmp(cmd, "status") && n == 2)
		return md_status_json(d);
	if (!strcmp(cmd, "set"))
		return cmd_set(d, w + 2, n - 2, &s);
	if (!strcmp(cmd, "host"))
		return cmd_host(d, w + 2, n - 2, &s);
	if (!strcmp(cmd, "vm") && n >= 3 && !strcmp(w[2], "add"))
		return vm_add(d, w + 3, n - 3, &s);
	if (!strcmp(cmd, "vm") && n >= 3 && !strcmp(w[2], "remove"))
		return vm_remove(d, w + 3, n - 3, &s);
	if (!strcmp(cmd, "reload") && n == 2)
		return commit(d, &s);
	if (!strcmp(cmd, "follow") && n == 2)
		return cmd_follow(d, c);
	return error("unknown command '%s' (status, set VM k=v..., host k=v..., vm add NAME "
	             "SOCKET, vm remove NAME, reload, follow)", cmd);
}
