/* tick.c - one policy period over every VM of the host, its decisions, and the snapshot
 * that status, top and /metrics read. */
#include "daemon.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void count_rule(struct md *d, const char *kind, const char *rule)
{
	for (unsigned i = 0; i < d->nr_rules; i++)
		if (!strcmp(d->rules[i].kind, kind) && !strcmp(d->rules[i].rule, rule)) {
			d->rules[i].count++;
			return;
		}
	if (d->nr_rules == MD_MAX_RULES)
		return;
	struct md_rule_count *r = &d->rules[d->nr_rules++];
	snprintf(r->kind, sizeof(r->kind), "%s", kind);
	snprintf(r->rule, sizeof(r->rule), "%s", rule);
	r->count = 1;
}

/* STATE_DIR/decisions.jsonl, kept under 16 MiB (one older file: .1). */
static void journal(struct md *d, const char *line)
{
	char path[512], old[520];
	snprintf(path, sizeof(path), "%s/decisions.jsonl", d->o.state_dir);
	struct stat st;
	if (!stat(path, &st) && st.st_size > (16 << 20)) {
		snprintf(old, sizeof(old), "%s.1", path);
		rename(path, old);
	}
	FILE *f = fopen(path, "ae");
	if (f) {
		fprintf(f, "%s\n", line);
		fclose(f);
	}
}

/* The engine's log sink: every decision record. */
void md_decision(void *opaque, const char *line)
{
	struct md *d = opaque;
	json_object *o = json_tokener_parse(line), *k, *r;
	if (o && json_object_object_get_ex(o, "kind", &k) && json_object_object_get_ex(o, "rule", &r))
		count_rule(d, json_object_get_string(k), json_object_get_string(r));
	json_object_put(o);
	free(d->backlog[d->backlog_next]);
	d->backlog[d->backlog_next] = strdup(line);
	d->backlog_next = (d->backlog_next + 1) % MD_BACKLOG;
	journal(d, line);
	md_control_broadcast(d, line);
}

static void host_scanner(struct md *d, struct mv_policy_host_inputs *h)
{
	h->scanner_valid = false;
	memset(&h->scanner, 0, sizeof(h->scanner));
	for (unsigned i = 0; i < MD_MAX_AGENTS; i++) {
		const struct md_agent *a = &d->agents[i];
		if (a->fd < 0 || !a->scan_valid)
			continue;
		h->scanner_valid = true;
		const uint64_t *src = (const uint64_t *)&a->scan;
		uint64_t *dst = (uint64_t *)&h->scanner;
		for (size_t j = 0; j < sizeof(a->scan) / sizeof(uint64_t); j++)
			dst[j] += src[j];
	}
}

/* VMs that have memory (a running guest) and a fresh report (at most three periods old:
 * a link that stops answering polls is not decided on) take part. */
static unsigned gather(struct md *d, struct mv_policy_vm_inputs *in, struct md_vm **of)
{
	unsigned n = 0;
	uint64_t now = md_now_ns(), stale = 3ull * mv_policy_period_ms(d->pol) * 1000000ull;
	for (unsigned i = 0; i < MD_MAX_VMS; i++) {
		struct md_vm *v = &d->vms[i];
		if (!v->used || !v->r.ram_bytes || now - v->report_ns > stale)
			continue;
		if (!v->attached) {
			int rc = mv_policy_attach(d->pol, v->r.name, NULL, NULL);
			if (rc && rc != -EEXIST) {
				md_log(d, "memvirtd: vm %s: not under the policy: %s", v->r.name,
				       mv_strerror(rc));
				continue;
			}
			v->attached = true;
		}
		in[n] = (struct mv_policy_vm_inputs){
			.name = v->r.name, .ram_bytes = v->r.ram_bytes,
			.has_balloon = v->r.has_balloon, .balloon = v->r.balloon,
			.scanner_valid = v->r.scanner_valid, .scanner = v->r.scanner,
		};
		of[n++] = v;
	}
	return n;
}

static void apply(struct md *d, struct md_vm **of, const struct mv_policy_outputs *out)
{
	for (unsigned i = 0; i < out->nr_vms && i < out->cap_vms; i++) {
		const struct mv_policy_vm_outputs *o = &out->vms[i];
		struct md_vm *v = of[i];
		snprintf(v->rule, sizeof(v->rule), "%s", o->rule ? o->rule : "");
		snprintf(v->cap, sizeof(v->cap), "%s", o->cap ? o->cap : "");
		v->decided = o->target_bytes;
		if (o->changed && v->r.has_balloon)
			md_agent_set_target(d, v, o->target_bytes);
	}
	if (out->scanner_changed) {
		d->share = out->scanner_cpu_share;
		md_agents_set_share(d, d->share);
	}
}

void md_tick(struct md *d)
{
	static struct mv_policy_vm_inputs in[MD_MAX_VMS];
	static struct mv_policy_vm_outputs outv[MD_MAX_VMS];
	static struct md_vm *of[MD_MAX_VMS];
	struct mv_policy_inputs pin = { .now_ns = md_now_ns(), .vms = in };
	struct mv_policy_outputs out = { .cap_vms = MD_MAX_VMS, .vms = outv };
	int rc = mv_policy_host_read(d->pol, &pin.host);
	if (rc) {
		md_log(d, "memvirtd: host figures unreadable: %s; no decision this period",
		       mv_strerror(rc));
	} else {
		host_scanner(d, &pin.host);
		d->host = pin.host;
		pin.nr_vms = gather(d, in, of);
		rc = mv_policy_step(d->pol, &pin, &out);
		if (rc)
			md_log(d, "memvirtd: policy step failed: %s", mv_strerror(rc));
		else
			apply(d, of, &out);
		d->last = out;
		d->last.vms = NULL;
		d->ticks++;
	}
	md_agents_poll(d); /* after the targets: the next reports show them */
	md_snapshot_update(d);
}

/* ---- the snapshot ---- */

static void fill_vm(struct md *d, const struct md_vm *v, struct md_vm_view *w)
{
	memset(w, 0, sizeof(*w));
	snprintf(w->name, sizeof(w->name), "%s", v->r.name);
	struct md_agent *a = md_agent_by_id(d, v->agent);
	bool worker = a && !strncmp(a->client, "vhost-user ", 11);
	snprintf(w->source, sizeof(w->source), "%s", worker ? "vhost-user" : "agent");
	snprintf(w->domain, sizeof(w->domain), "%s", v->r.domain);
	snprintf(w->client, sizeof(w->client), "%s", a ? a->client : "");
	w->ram_bytes = v->r.ram_bytes;
	w->has_balloon = v->r.has_balloon;
	w->balloon = v->r.balloon;
	w->scanner_valid = v->r.scanner_valid;
	w->scanner = v->r.scanner;
	md_vm_limits(d, v->r.name, &w->min_bytes, &w->max_bytes, &w->shares);
	snprintf(w->rule, sizeof(w->rule), "%s", v->rule);
	snprintf(w->cap, sizeof(w->cap), "%s", v->cap);
	w->decided_bytes = v->decided;
	w->report_age_ns = md_now_ns() - v->report_ns;
}

static void fill_host(struct md *d, struct md_snapshot *s)
{
	s->now_ns = md_now_ns();
	s->uptime_ns = s->now_ns - d->start_ns;
	s->host = d->host;
	const char *rule = d->last.host_rule;
	snprintf(s->host_rule, sizeof(s->host_rule), "%s", rule ? rule : "");
	s->pressured = d->last.pressured;
	s->need_bytes = d->last.need_bytes;
	s->scanner_cpu_share = d->share;
	s->ticks = d->ticks;
	s->nr_rules = d->nr_rules;
	memcpy(s->rules, d->rules, sizeof(s->rules));
	md_goal(d, s->goal, sizeof(s->goal), &s->goal_bytes, &s->goal_ratio);
}

void md_snapshot_update(struct md *d)
{
	struct md_snapshot s = { 0 };
	unsigned n = 0;
	for (unsigned i = 0; i < MD_MAX_VMS; i++)
		n += d->vms[i].used;
	s.vms = calloc(n ? n : 1, sizeof(*s.vms));
	s.waiting = calloc(d->set.nr_added ? d->set.nr_added : 1, sizeof(*s.waiting));
	if (!s.vms || !s.waiting) {
		free(s.vms);
		free(s.waiting);
		return; /* the old snapshot stays */
	}
	fill_host(d, &s);
	for (unsigned i = 0; i < MD_MAX_VMS; i++) {
		if (!d->vms[i].used)
			continue;
		struct md_vm_view *w = &s.vms[s.nr_vms++];
		fill_vm(d, &d->vms[i], w);
		s.balloon_bytes += w->has_balloon ? w->balloon.actual_bytes : 0;
		s.reported_bytes += w->has_balloon ? w->balloon.reported_bytes : 0;
	}
	if (d->host.scanner_valid) { /* sharing saves per domain: the hosts' totals */
		s.shared_bytes = d->host.scanner.pages_sharing * 4096;
		s.zero_bytes = d->host.scanner.pages_zero * 4096;
	}
	for (unsigned i = 0; i < d->set.nr_added; i++) {
		if (md_vm_find(d, d->set.added[i].name))
			continue;
		struct md_wait_view *w = &s.waiting[s.nr_waiting++];
		snprintf(w->name, sizeof(w->name), "%s", d->set.added[i].name);
		snprintf(w->socket, sizeof(w->socket), "%s", d->set.added[i].socket);
	}
	pthread_mutex_lock(&d->snap_lock);
	free(d->snap.vms);
	free(d->snap.waiting);
	d->snap = s;
	pthread_mutex_unlock(&d->snap_lock);
}
