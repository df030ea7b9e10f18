/* policy.c - the engine's lifetime, its VMs, loading the policy, the locked entry points. */
#include "policy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

MV_API void mv_policy_config_init(struct mv_policy_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->size = sizeof(*cfg);
}

static int copy_path(char *dst, const char *src, const char *dflt)
{
	const char *s = src ? src : dflt;
	if (!*s || strlen(s) >= MV_POL_PATH_MAX)
		return -EINVAL;
	strcpy(dst, s);
	return 0;
}

MV_API int mv_policy_new(const struct mv_policy_config *cfg, struct mv_policy **out)
{
	struct mv_policy_config dflt;
	if (!out)
		return -EINVAL;
	if (!cfg) {
		mv_policy_config_init(&dflt);
		cfg = &dflt;
	}
	if (cfg->size != sizeof(*cfg))
		return -EINVAL;
	struct mv_policy *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->cfg = *cfg;
	if (copy_path(p->psi_path, cfg->psi_path, "/proc/pressure/memory") ||
	    copy_path(p->meminfo_path, cfg->meminfo_path, "/proc/meminfo")) {
		free(p);
		return -EINVAL;
	}
	p->cfg.psi_path = p->psi_path;
	p->cfg.meminfo_path = p->meminfo_path;
	mv__pcfg_defaults(&p->conf);
	p->scan_share = p->conf.scan_cpu;
	pthread_mutex_init(&p->lock, NULL);
	*out = p;
	return 0;
}

MV_API void mv_policy_free(struct mv_policy *p)
{
	if (!p)
		return;
	mv__pcfg_free(&p->conf);
	free(p->vms);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

/* Swap in a parsed policy; the state stays. */
static void install(struct mv_policy *p, struct mv__pcfg *next)
{
	pthread_mutex_lock(&p->lock);
	struct mv__pcfg old = p->conf;
	p->conf = *next;
	pthread_mutex_unlock(&p->lock);
	mv__pcfg_free(&old);
}

MV_API int mv_policy_load_string(struct mv_policy *p, const char *text, char *err, size_t errlen)
{
	if (!p || !text)
		return -EINVAL;
	struct mv__pcfg next;
	int rc = mv__pcfg_parse_string(text, &next, err, errlen);
	if (!rc)
		install(p, &next);
	return rc;
}

MV_API int mv_policy_load_file(struct mv_policy *p, const char *path, char *err, size_t errlen)
{
	if (!p || !path)
		return -EINVAL;
	struct mv__pcfg next;
	int rc = mv__pcfg_parse_file(path, &next, err, errlen);
	if (!rc)
		install(p, &next);
	return rc;
}

/* Names as [vm NAME] can spell them: printable, no ']', no blank at either end. */
static bool name_ok(const char *name)
{
	size_t n = name ? strlen(name) : 0;
	if (!n || n >= MV_POL_NAME_MAX || name[0] == ' ' || name[n - 1] == ' ')
		return false;
	for (size_t i = 0; i < n; i++)
		if (name[i] < 0x20 || name[i] > 0x7e || name[i] == ']')
			return false;
	return true;
}

static int attach_locked(struct mv_policy *p, const char *name, struct mv_vm *vm,
                         struct mv_balloon *balloon)
{
	for (unsigned i = 0; i < p->nr_vms; i++)
		if (!strcmp(p->vms[i].name, name))
			return -EEXIST;
	if (p->nr_vms == p->cap_vms) {
		unsigned cap = p->cap_vms ? p->cap_vms * 2 : 8;
		struct mv__pvm *v = realloc(p->vms, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		p->vms = v;
		p->cap_vms = cap;
	}
	struct mv__pvm *st = &p->vms[p->nr_vms++];
	memset(st, 0, sizeof(*st));
	strcpy(st->name, name);
	st->vm = vm;
	st->balloon = balloon;
	return 0;
}

MV_API int mv_policy_attach(struct mv_policy *p, const char *name, struct mv_vm *vm,
                            struct mv_balloon *balloon)
{
	if (!p || !name_ok(name) || (balloon && !vm))
		return -EINVAL;
	pthread_mutex_lock(&p->lock);
	int rc = attach_locked(p, name, vm, balloon);
	pthread_mutex_unlock(&p->lock);
	return rc;
}

MV_API int mv_policy_detach(struct mv_policy *p, const char *name)
{
	if (!p || !name)
		return -EINVAL;
	int rc = -ENOENT;
	pthread_mutex_lock(&p->lock);
	for (unsigned i = 0; i < p->nr_vms; i++) {
		if (strcmp(p->vms[i].name, name))
			continue;
		memmove(&p->vms[i], &p->vms[i + 1], (p->nr_vms - i - 1) * sizeof(p->vms[0]));
		p->nr_vms--;
		rc = 0;
		break;
	}
	pthread_mutex_unlock(&p->lock);
	return rc;
}

MV_API unsigned mv_policy_nr_vms(struct mv_policy *p)
{
	if (!p)
		return 0;
	pthread_mutex_lock(&p->lock);
	unsigned n = p->nr_vms;
	pthread_mutex_unlock(&p->lock);
	return n;
}

MV_API unsigned mv_policy_period_ms(struct mv_policy *p)
{
	if (!p)
		return 0;
	pthread_mutex_lock(&p->lock);
	unsigned ms = (unsigned)p->conf.period_ms;
	pthread_mutex_unlock(&p->lock);
	return ms;
}

MV_API int mv_policy_step(struct mv_policy *p, const struct mv_policy_inputs *in,
                          struct mv_policy_outputs *out)
{
	if (!p || !in)
		return -EINVAL;
	pthread_mutex_lock(&p->lock);
	int rc = mv__policy_step_locked(p, in, out);
	pthread_mutex_unlock(&p->lock);
	return rc;
}
