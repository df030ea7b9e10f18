/* explain.c - decision records rendered for people (`memvirt explain`). */
#include "policy.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- reading fields ---- */

static json_object *get(json_object *o, const char *k)
{
	json_object *v = NULL;
	return o && json_object_object_get_ex(o, k, &v) ? v : NULL;
}

static double num(json_object *o, const char *k) { return json_object_get_double(get(o, k)); }
static bool flag(json_object *o, const char *k) { return json_object_get_boolean(get(o, k)); }

static const char *str(json_object *o, const char *k)
{
	json_object *v = get(o, k);
	return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
}

/* Bytes as MiB, in one of a few rotating buffers (up to 8 per printf). */
static const char *mib(double bytes)
{
	static __thread char buf[8][32];
	static __thread unsigned i;
	char *b = buf[i++ % 8];
	double m = bytes / (double)MV_MIB;
	snprintf(b, 32, m == (double)(long long)m ? "%.0f MiB" : "%.1f MiB", m);
	return b;
}

/* ---- text per kind ---- */

static const char *cap_text(const char *cap)
{
	static const char *const caps[][2] = {
		{ "rate_limit", "max_step_mib per period" },
		{ "min_mib", "the VM's min_mib" },
		{ "max_mib", "the VM's max_mib" },
		{ "lead", "an inflate may lead the guest's progress by one step only" },
		{ "balloon_empty", "nothing left in the balloon" },
		{ "scanner_max_cpu", "scanner_max_cpu" },
		{ "scanner_min_cpu", "scanner_min_cpu" },
	};
	for (unsigned i = 0; i < sizeof(caps) / sizeof(caps[0]); i++)
		if (!strcmp(cap, caps[i][0]))
			return caps[i][1];
	return cap;
}

static void host_why(FILE *f, json_object *o)
{
	const char *rule = str(o, "rule");
	json_object *in = get(o, "in"), *psi = get(o, "psi");
	double need = num(o, "need");
	if (!strcmp(rule, "pressure_reclaim"))
		fprintf(f, "    why: memory pressure: PSI some %.2f%%, full %.2f%% (high marks %.2f%%, %.2f%%;"
		        " pressure lasts until both are at or below %.2f%%, %.2f%%): reclaim %s\n",
		        num(in, "psi_some"), num(in, "psi_full"), num(psi, "some_high"),
		        num(psi, "full_high"), num(psi, "some_low"), num(psi, "full_low"), mib(need));
	else if (!strcmp(rule, "goal_reclaim"))
		fprintf(f, "    why: the host goal is missed by %s: reclaim it\n", mib(need));
	else if (!strcmp(rule, "give_back"))
		fprintf(f, "    why: the goal is met with %s to spare beyond its band and PSI is calm: "
		        "give it back\n", mib(-need));
	else if (!strcmp(rule, "hold_psi_band"))
		fprintf(f, "    why: memory could go back, but PSI (some %.2f%%, full %.2f%%) is above "
		        "its low marks: hold\n", num(in, "psi_some"), num(in, "psi_full"));
	else
		fprintf(f, "    why: the goal is met within its band: hold\n");
}

static void host_goal(FILE *f, json_object *o)
{
	json_object *in = get(o, "in"), *g = get(o, "goal");
	if (!strcmp(str(g, "kind"), "floor"))
		fprintf(f, "    goal: keep %s free: predicted %s (available %s, inflating %s, COW "
		        "breaks -%s)\n", mib(num(g, "floor")), mib(num(in, "pred_avail")),
		        mib(num(in, "avail")), mib(num(in, "in_flight")), mib(num(in, "cow_pred")));
	else if (!strcmp(str(g, "kind"), "ratio"))
		fprintf(f, "    goal: overcommit ratio %.2f: guests hold %s of a budget of %s\n",
		        num(g, "ratio"), mib(num(in, "granted")), mib(num(g, "budget")));
	else
		fprintf(f, "    goal: guests hold %s of a budget of %s\n",
		        mib(num(in, "granted")), mib(num(g, "budget")));
	if (num(o, "guard_delta") != 0 || num(o, "unplaced") != 0)
		fprintf(f, "    guard rules moved %s; %s not placed this period (VM limits, rate limits)\n",
		        mib(num(o, "guard_delta")), mib(num(o, "unplaced")));
}

static void vm_why(FILE *f, json_object *o)
{
	const char *rule = str(o, "rule");
	json_object *in = get(o, "in"), *s = get(o, "settings"), *h = get(o, "hold");
	if (!strcmp(rule, "oom_deflate"))
		fprintf(f, "    why: the guest reported %.0f new OOM kill(s): deflate at once, then a "
		        "cool-down without reclaim\n", num(in, "oom_kills_new"));
	else if (!strcmp(rule, "alloc_stall_deflate"))
		fprintf(f, "    why: the guest reported %.0f new allocation stalls: deflate at once, then "
		        "a cool-down without reclaim\n", num(in, "alloc_stalls_new"));
	else if (!strcmp(rule, "stall_backoff"))
		fprintf(f, "    why: the balloon stalled at %s: the target goes back to what the guest "
		        "reached, and reclaim backs off\n", mib(num(in, "actual")));
	else if (!strcmp(rule, "min_restore"))
		fprintf(f, "    why: the VM had less than its min_mib (%s): deflate toward it\n",
		        mib(num(s, "min")));
	else if (!strcmp(rule, "max_cap"))
		fprintf(f, "    why: the VM had more than its max_mib (%s): inflate toward it\n",
		        mib(num(s, "max")));
	else if (!strcmp(rule, "share_reclaim") || !strcmp(rule, "share_give"))
		fprintf(f, "    why: the %s shares per MiB of the VMs it could %s (rho %.4g: %.0f "
		        "shares, %.0f%% of its memory active, idle memory taxed at tau %.2f; %.4g "
		        "after)\n", rule[6] == 'r' ? "lowest" : "highest",
		        rule[6] == 'r' ? "take from" : "give to", num(in, "rho"), num(s, "shares"),
		        100 * num(in, "f"), num(s, "tau"), num(in, "rho_after"));
	else if (!strcmp(rule, "cooldown"))
		fprintf(f, "    why: left out of reclaim: cooling down after '%s' (%.1f s left)\n",
		        str(h, "reason"), num(h, "left_ns") / 1e9);
	else if (!strcmp(rule, "majflt_guard"))
		fprintf(f, "    why: left out of reclaim: %.0f major faults/s (thrashing)\n",
		        num(in, "majflt_rate"));
	else if (!strcmp(rule, "no_balloon"))
		fprintf(f, "    why: no balloon: its memory cannot be reclaimed\n");
	else
		fprintf(f, "    why: no rule moves this VM (host: %s)\n", str(get(o, "host"), "rule"));
}

static void render_vm(FILE *f, json_object *o)
{
	json_object *t = get(o, "target"), *in = get(o, "in");
	double from = num(t, "from"), to = num(t, "to");
	if (from == to)
		fprintf(f, " vm %s: %s, balloon stays at %s", str(o, "vm"), str(o, "rule"), mib(to));
	else
		fprintf(f, " vm %s: %s, balloon %s -> %s (%s%s)", str(o, "vm"), str(o, "rule"),
		        mib(from), mib(to), to > from ? "+" : "-", mib(to > from ? to - from : from - to));
	if (*str(o, "cap"))
		fprintf(f, ", capped by %s", cap_text(str(o, "cap")));
	fprintf(f, "\n");
	vm_why(f, o);
	fprintf(f, "    guest: %s RAM, balloon reached %s%s; stats %s: free %s, caches %s, active %s\n",
	        mib(num(in, "ram")), mib(num(in, "actual")), flag(in, "stalled") ? " (stalled)" : "",
	        str(in, "stats"), mib(num(in, "free")), mib(num(in, "caches")), mib(num(in, "active")));
}

static void render_scanner(FILE *f, json_object *o)
{
	json_object *cpu = get(o, "cpu"), *in = get(o, "in");
	fprintf(f, " scanner: %s, CPU share %.3g -> %.3g cores", str(o, "rule"), num(cpu, "from"),
	        num(cpu, "to"));
	if (*str(o, "cap"))
		fprintf(f, ", capped by %s", cap_text(str(o, "cap")));
	fprintf(f, "\n    why: %s; since the last step %.0f pages saved, %.0f COW breaks, %.0f full "
	        "passes\n", flag(in, "want") ? "the host wants memory" : "the host is not short",
	        num(in, "saved_new"), num(in, "cow_breaks_new"), num(in, "full_scans_new"));
}

static void render(FILE *f, json_object *o, double t0)
{
	const char *kind = str(o, "kind");
	fprintf(f, "[+%.3fs #%.0f]", (num(o, "t_ns") - t0) / 1e9, num(o, "seq"));
	if (!strcmp(kind, "host")) {
		fprintf(f, " host: %s%s\n", str(o, "rule"), flag(o, "pressured") ? " (pressured)" : "");
		host_why(f, o);
		host_goal(f, o);
	} else if (!strcmp(kind, "vm")) {
		render_vm(f, o);
	} else if (!strcmp(kind, "scanner")) {
		render_scanner(f, o);
	} else {
		fprintf(f, " error: %s%s%s failed: %s (%.0f)\n", str(o, "rule"),
		        *str(o, "vm") ? " for vm " : "", str(o, "vm"), str(o, "error"), num(o, "err"));
	}
}

static bool is_record(json_object *o)
{
	static const char *const kinds[] = { "host", "vm", "scanner", "apply_error" };
	if (!o || !json_object_is_type(o, json_type_object) || num(o, "v") != 1 || !*str(o, "rule"))
		return false;
	for (unsigned i = 0; i < 4; i++)
		if (!strcmp(str(o, "kind"), kinds[i]))
			return true;
	return false;
}

MV_API int mv_policy_explain(FILE *in, FILE *out)
{
	if (!in || !out)
		return -EINVAL;
	char *line = NULL;
	size_t cap = 0;
	unsigned long lineno = 0, bad = 0;
	double t0 = -1;
	while (getline(&line, &cap, in) > 0) {
		lineno++;
		if (strspn(line, " \t\r\n") == strlen(line))
			continue;
		json_object *o = json_tokener_parse(line);
		if (!is_record(o)) {
			fprintf(out, "line %lu: not a decision record, skipped\n", lineno);
			bad++;
		} else {
			t0 = t0 < 0 ? num(o, "t_ns") : t0;
			render(out, o, t0);
		}
		json_object_put(o);
	}
	bool rerr = ferror(in);
	free(line);
	if (rerr || fflush(out) || ferror(out))
		return -EIO;
	return bad ? -EBADMSG : 0;
}
