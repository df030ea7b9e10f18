/* settings.c - the admin's settings: sizes, persistence, and the policy they make with the
 * config file. */
#include "daemon.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* "512M", "2G", "1.5G", "1048576" (bytes), "0": a whole number of MiB. */
int md_parse_size_mib(const char *v, uint64_t *mib, char *err, size_t errlen)
{
	char *end;
	errno = 0;
	double x = strtod(v, &end);
	double unit = 1;
	if (end == v || errno || !isfinite(x) || x < 0)
		goto bad;
	switch (toupper((unsigned char)*end)) {
	case 'K': unit = 1024.0; end++; break;
	case 'M': unit = 1048576.0; end++; break;
	case 'G': unit = 1073741824.0; end++; break;
	case 'T': unit = 1099511627776.0; end++; break;
	}
	if (unit > 1 && (!strcmp(end, "iB") || !strcmp(end, "B")))
		end += strlen(end);
	if (*end)
		goto bad;
	double bytes = x * unit;
	if (bytes > (double)(1ull << 50)) {
		snprintf(err, errlen, "'%s' is too large (at most 1P)", v);
		return -ERANGE;
	}
	if (fmod(bytes, 1048576.0) != 0) {
		snprintf(err, errlen, "'%s' is not a whole number of MiB", v);
		return -EINVAL;
	}
	*mib = (uint64_t)(bytes / 1048576.0);
	return 0;
bad:
	snprintf(err, errlen, "'%s' is not a size (a number with K, M, G or T, e.g. 512M)", v);
	return -EINVAL;
}

/* The policy's rule for [vm NAME], and what the control line can carry: no spaces. */
bool md_name_ok(const char *name)
{
	size_t n = strlen(name);
	if (!n || n >= MD_NAME)
		return false;
	for (const char *c = name; *c; c++)
		if (!isgraph((unsigned char)*c) || *c == ']' || *c == '"' || *c == '\\')
			return false;
	return true;
}

struct md_vm_set *md_settings_vm(struct md_settings *s, const char *name, bool create)
{
	for (unsigned i = 0; i < s->nr_vms; i++)
		if (!strcmp(s->vms[i].name, name))
			return &s->vms[i];
	if (!create || s->nr_vms >= MD_MAX_VMS)
		return NULL;
	struct md_vm_set *v = &s->vms[s->nr_vms++];
	memset(v, 0, sizeof(*v));
	snprintf(v->name, sizeof(v->name), "%s", name);
	return v;
}

/* ---- the policy text: the config file with the admin's settings laid over it ---- */

struct entry {
	char sect[80], key[64], val[200];
};

struct entries {
	unsigned n, cap;
	struct entry *e;
};

static int collect(void *user, const char *sect, const char *key, const char *val)
{
	struct entries *es = user;
	if (es->n == es->cap) {
		unsigned cap = es->cap ? es->cap * 2 : 32;
		struct entry *e = realloc(es->e, cap * sizeof(*e));
		if (!e)
			return 0;
		es->e = e, es->cap = cap;
	}
	struct entry *e = &es->e[es->n++];
	snprintf(e->sect, sizeof(e->sect), "%s", sect);
	snprintf(e->key, sizeof(e->key), "%s", key);
	snprintf(e->val, sizeof(e->val), "%s", val);
	return 1;
}

/* Set (or add) sect.key = val. */
static int put(struct entries *es, const char *sect, const char *key, const char *val)
{
	for (unsigned i = 0; i < es->n; i++)
		if (!strcmp(es->e[i].sect, sect) && !strcmp(es->e[i].key, key)) {
			snprintf(es->e[i].val, sizeof(es->e[i].val), "%s", val);
			return 0;
		}
	return collect(es, sect, key, val) ? 0 : -ENOMEM;
}

static int overlay(struct entries *es, const struct md_settings *s)
{
	char v[64], sect[80];
	int rc = 0;
	if (s->goal[0])
		rc |= put(es, "host", "goal", s->goal);
	if (s->has_floor && snprintf(v, sizeof(v), "%llu", (unsigned long long)s->floor_mib))
		rc |= put(es, "host", "floor_mib", v);
	if (s->has_ratio && snprintf(v, sizeof(v), "%.6g", s->ratio))
		rc |= put(es, "host", "ratio", v);
	if (s->has_budget && snprintf(v, sizeof(v), "%llu", (unsigned long long)s->budget_mib))
		rc |= put(es, "host", "budget_mib", v);
	for (unsigned i = 0; i < s->nr_vms; i++) {
		const struct md_vm_set *m = &s->vms[i];
		snprintf(sect, sizeof(sect), "vm %s", m->name);
		if (m->has_min && snprintf(v, sizeof(v), "%llu", (unsigned long long)m->min_mib))
			rc |= put(es, sect, "min_mib", v);
		if (m->has_max && snprintf(v, sizeof(v), "%llu", (unsigned long long)m->max_mib))
			rc |= put(es, sect, "max_mib", v);
		if (m->has_shares && snprintf(v, sizeof(v), "%.6g", m->shares))
			rc |= put(es, sect, "shares", v);
	}
	return rc;
}

/* Sections in order of first appearance, each with its keys. */
static char *emit(const struct entries *es)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return NULL;
	for (unsigned i = 0; i < es->n; i++) {
		bool first = true;
		for (unsigned j = 0; j < i && first; j++)
			first = strcmp(es->e[j].sect, es->e[i].sect) != 0;
		if (!first)
			continue;
		fprintf(f, "[%s]\n", es->e[i].sect);
		for (unsigned j = i; j < es->n; j++)
			if (!strcmp(es->e[j].sect, es->e[i].sect))
				fprintf(f, "%s = %s\n", es->e[j].key, es->e[j].val);
	}
	if (fclose(f)) {
		free(text);
		return NULL;
	}
	return text;
}

static int read_config(struct md *d, char **text, char *err, size_t errlen)
{
	*text = NULL;
	if (!d->o.config)
		return 0;
	FILE *f = fopen(d->o.config, "r");
	if (!f) {
		if (errno == ENOENT)
			return 0; /* no file: the defaults */
		snprintf(err, errlen, "%s: %s", d->o.config, strerror(errno));
		return -errno;
	}
	char *buf = calloc(1, 1 << 20);
	size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
	bool bad = !buf || ferror(f) || !feof(f);
	fclose(f);
	if (bad) {
		snprintf(err, errlen, "%s: %s", d->o.config, buf ? "read error or larger than 1 MiB"
		                                                : "out of memory");
		free(buf);
		return buf ? -EIO : -ENOMEM;
	}
	buf[n] = 0;
	*text = buf;
	return 0;
}

/* The config file alone must be a valid policy (its messages name its lines); then with
 * s laid over it. On success the engine runs the result and s becomes the settings. */
int md_policy_reload(struct md *d, const struct md_settings *s, char *err, size_t errlen)
{
	char *conf, *text = NULL;
	struct entries es = { 0 };
	int rc = read_config(d, &conf, err, errlen);
	if (rc)
		return rc;
	struct mv_policy_config pc;
	mv_policy_config_init(&pc);
	struct mv_policy *scratch;
	char msg[256] = "";
	if ((rc = mv_policy_new(&pc, &scratch)))
		goto out;
	rc = mv_policy_load_string(scratch, conf ? conf : "", msg, sizeof(msg));
	mv_policy_free(scratch);
	if (rc) {
		snprintf(err, errlen, "%s: %s", d->o.config, msg);
		goto out;
	}
	rc = -ENOMEM;
	if ((conf && ini_parse_string(conf, collect, &es) != 0) || overlay(&es, s) ||
	    !(text = emit(&es)))
		goto out;
	rc = mv_policy_load_string(d->pol, text, msg, sizeof(msg));
	if (rc) {
		/* The file alone was fine: the admin's settings conflict with it. Drop the
		 * generated text's line number, which names nothing the admin wrote. */
		const char *m = !strncmp(msg, "line ", 5) && strchr(msg, ':') ? strchr(msg, ':') + 2 : msg;
		snprintf(err, errlen, "%s", m);
		goto out;
	}
	if (s != &d->set)
		d->set = *s;
	free(d->conf_text);
	d->conf_text = text;
	text = NULL;
out:
	free(text);
	free(es.e);
	free(conf);
	return rc;
}

/* ---- persistence: STATE_DIR/state.json, version 1 ---- */

static void jadd_u(json_object *o, const char *k, uint64_t v)
{
	json_object_object_add(o, k, json_object_new_uint64(v));
}

int md_settings_save(struct md *d)
{
	const struct md_settings *s = &d->set;
	json_object *o = json_object_new_object(), *vms = json_object_new_array();
	json_object *added = json_object_new_array(), *h = json_object_new_object();
	json_object_object_add(o, "v", json_object_new_int(1));
	if (s->goal[0])
		json_object_object_add(h, "goal", json_object_new_string(s->goal));
	if (s->has_floor)
		jadd_u(h, "floor_mib", s->floor_mib);
	if (s->has_ratio)
		json_object_object_add(h, "ratio", json_object_new_double(s->ratio));
	if (s->has_budget)
		jadd_u(h, "budget_mib", s->budget_mib);
	json_object_object_add(o, "host", h);
	for (unsigned i = 0; i < s->nr_vms; i++) {
		json_object *v = json_object_new_object();
		json_object_object_add(v, "name", json_object_new_string(s->vms[i].name));
		if (s->vms[i].has_min)
			jadd_u(v, "min_mib", s->vms[i].min_mib);
		if (s->vms[i].has_max)
			jadd_u(v, "max_mib", s->vms[i].max_mib);
		if (s->vms[i].has_shares)
			json_object_object_add(v, "shares", json_object_new_double(s->vms[i].shares));
		json_object_array_add(vms, v);
	}
	json_object_object_add(o, "vms", vms);
	for (unsigned i = 0; i < s->nr_added; i++) {
		json_object *v = json_object_new_object();
		json_object_object_add(v, "name", json_object_new_string(s->added[i].name));
		json_object_object_add(v, "socket", json_object_new_string(s->added[i].socket));
		json_object_array_add(added, v);
	}
	json_object_object_add(o, "vhost_user", added);
	char path[512], tmp[520];
	snprintf(path, sizeof(path), "%s/state.json", d->o.state_dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	const char *txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
	int rc = 0, fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	size_t len = strlen(txt);
	if (fd < 0 || write(fd, txt, len) != (ssize_t)len || write(fd, "\n", 1) != 1 || fsync(fd))
		rc = -errno ? -errno : -EIO;
	if (fd >= 0)
		close(fd);
	if (!rc && rename(tmp, path))
		rc = -errno;
	if (rc)
		unlink(tmp);
	int dfd = rc ? -1 : open(d->o.state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) { /* the rename itself reaches the disk */
		fsync(dfd);
		close(dfd);
	}
	json_object_put(o);
	return rc;
}

/* A MiB count the policy takes (0 .. 2^30), else the key is dropped. */
static bool get_u(json_object *o, const char *k, uint64_t *v)
{
	json_object *x;
	if (!json_object_object_get_ex(o, k, &x) || !json_object_is_type(x, json_type_int))
		return false;
	int64_t i = json_object_get_int64(x);
	if (i < 0 || i > (1ll << 30))
		return false;
	*v = (uint64_t)i;
	return true;
}

/* A number in (lo, hi], else the key is dropped. */
static bool get_d(json_object *o, const char *k, double lo, double hi, double *v)
{
	json_object *x;
	if (!json_object_object_get_ex(o, k, &x) ||
	    (!json_object_is_type(x, json_type_double) && !json_object_is_type(x, json_type_int)))
		return false;
	double d = json_object_get_double(x);
	if (!(d > lo && d <= hi))
		return false;
	*v = d;
	return true;
}

static const char *get_s(json_object *o, const char *k)
{
	json_object *x;
	return json_object_object_get_ex(o, k, &x) && json_object_is_type(x, json_type_string)
	       ? json_object_get_string(x) : NULL;
}

static void load_vms(struct md_settings *s, json_object *arr)
{
	for (size_t i = 0; arr && i < json_object_array_length(arr); i++) {
		json_object *v = json_object_array_get_idx(arr, i);
		const char *name = get_s(v, "name");
		struct md_vm_set *m = name && md_name_ok(name) ? md_settings_vm(s, name, true) : NULL;
		if (!m)
			continue;
		m->has_min = get_u(v, "min_mib", &m->min_mib);
		m->has_max = get_u(v, "max_mib", &m->max_mib);
		m->has_shares = get_d(v, "shares", 0, 1e9, &m->shares);
	}
}

static void load_added(struct md_settings *s, json_object *arr)
{
	for (size_t i = 0; arr && i < json_object_array_length(arr); i++) {
		json_object *v = json_object_array_get_idx(arr, i);
		const char *name = get_s(v, "name"), *sock = get_s(v, "socket");
		if (!name || !sock || !md_name_ok(name) || strlen(sock) >= 108 || *sock != '/' ||
		    s->nr_added >= MD_MAX_ADDED)
			continue;
		struct md_added *a = &s->added[s->nr_added++];
		memset(a, 0, sizeof(*a));
		snprintf(a->name, sizeof(a->name), "%s", name);
		snprintf(a->socket, sizeof(a->socket), "%s", sock);
		a->restored = true;
	}
}

/* The settings of the last run, or none. A file that does not parse or has another
 * version is an error: the daemon does not start over settings it cannot read. */
int md_settings_load(struct md *d)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/state.json", d->o.state_dir);
	if (access(path, F_OK))
		return errno == ENOENT ? 0 : -errno;
	json_object *o = json_object_from_file(path), *x;
	if (!o || !json_object_object_get_ex(o, "v", &x) || json_object_get_int(x) != 1) {
		md_log(d, "memvirtd: %s: not a version 1 state file; move it away to start afresh",
		       path);
		json_object_put(o);
		return -EINVAL;
	}
	struct md_settings *s = &d->set;
	memset(s, 0, sizeof(*s));
	json_object *h = NULL, *vms = NULL, *added = NULL;
	json_object_object_get_ex(o, "host", &h);
	json_object_object_get_ex(o, "vms", &vms);
	json_object_object_get_ex(o, "vhost_user", &added);
	const char *goal = h ? get_s(h, "goal") : NULL;
	if (goal && (!strcmp(goal, "floor") || !strcmp(goal, "ratio") || !strcmp(goal, "budget")))
		snprintf(s->goal, sizeof(s->goal), "%s", goal);
	if (h) {
		s->has_floor = get_u(h, "floor_mib", &s->floor_mib);
		s->has_ratio = get_d(h, "ratio", 0.0999, 100, &s->ratio);
		s->has_budget = get_u(h, "budget_mib", &s->budget_mib);
	}
	load_vms(s, vms);
	load_added(s, added);
	json_object_put(o);
	return 0;
}

/* ---- what the policy in force says (the text the engine runs, defaults where silent) ---- */

struct lookup {
	const char *sect, *key;
	char val[200];
	bool found;
};

static int find_key(void *user, const char *sect, const char *key, const char *val)
{
	struct lookup *l = user;
	if (!strcmp(sect, l->sect) && !strcmp(key, l->key)) {
		snprintf(l->val, sizeof(l->val), "%s", val);
		l->found = true;
	}
	return 1;
}

/* sect.key of the policy in force as a number, or dflt. */
static double in_force(struct md *d, const char *sect, const char *key, double dflt)
{
	struct lookup l = { sect, key, "", false };
	if (d->conf_text)
		ini_parse_string(d->conf_text, find_key, &l);
	return l.found ? strtod(l.val, NULL) : dflt;
}

/* The goal in force (policy/README.md's defaults). */
void md_goal(struct md *d, char *goal, size_t len, uint64_t *bytes, double *ratio)
{
	struct lookup l = { "host", "goal", "floor", false };
	if (d->conf_text)
		ini_parse_string(d->conf_text, find_key, &l);
	snprintf(goal, len, "%s", l.val);
	uint64_t total = d->host.mem_total_bytes;
	if (d->host.cgroup_limit_bytes && d->host.cgroup_limit_bytes < total)
		total = d->host.cgroup_limit_bytes;
	double r = in_force(d, "host", "ratio", 1.0);
	*ratio = !strcmp(l.val, "ratio") ? r : 0;
	*bytes = !strcmp(l.val, "floor") ? (uint64_t)in_force(d, "host", "floor_mib", 1024) << 20
	         : !strcmp(l.val, "budget") ? (uint64_t)in_force(d, "host", "budget_mib", 1024) << 20
	         : (uint64_t)(r * (double)total);
}

/* A VM's limits and shares in force. */
void md_vm_limits(struct md *d, const char *name, uint64_t *min, uint64_t *max, double *shares)
{
	char sect[80];
	snprintf(sect, sizeof(sect), "vm %s", name);
	*min = (uint64_t)in_force(d, sect, "min_mib", 256) << 20;
	*max = (uint64_t)in_force(d, sect, "max_mib", 0) << 20;
	*shares = in_force(d, sect, "shares", 1000);
}
