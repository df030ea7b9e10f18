/* domain.c - trust domains: created on first use by name, freed with their last VM. */
#include "ksm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void domain_destroy(struct mv_domain *d)
{
	mv__index_free(d);
	for (unsigned i = 0; i < d->nr_stores; i++)
		mv__store_free_all(d->stores[i]);
	free(d->stores);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

static int domain_create(struct mv_host *h, const char *name, struct mv_domain **out)
{
	static _Atomic uint32_t next_store_id = 1;
	struct mv_domain *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	snprintf(d->name, sizeof(d->name), "%s", name);
	d->host = h;
	d->refs = 1;
	pthread_mutex_init(&d->lock, NULL);
	d->nr_stores = h->cfg.cross_node_merge ? 1 : h->topo.nr_nodes;
	d->stores = calloc(d->nr_stores, sizeof(*d->stores));
	int err = d->stores ? mv__index_new(d) : -ENOMEM;
	for (unsigned i = 0; !err && i < d->nr_stores; i++)
		err = mv__store_new(h, atomic_fetch_add(&next_store_id, 1) & 0x3fff, i, &d->stores[i]);
	if (err) {
		domain_destroy(d);
		return err;
	}
	*out = d;
	return 0;
}

/* Find or create the domain `name` and take a reference. host->lock held. */
int mv__domain_get(struct mv_host *h, const char *name, struct mv_domain **out)
{
	struct mv_domain *d;
	cds_list_for_each_entry(d, &h->domains, link)
		if (!strcmp(d->name, name)) {
			d->refs++;
			*out = d;
			return 0;
		}
	int err = domain_create(h, name, &d);
	if (err)
		return err;
	cds_list_add(&d->link, &h->domains);
	*out = d;
	return 0;
}

/* Drop a reference; the last one frees the domain (its VMs are all unmerged by then).
 * host->lock held; waits for RCU readers, which never take host->lock. */
void mv__domain_put(struct mv_domain *d)
{
	if (--d->refs)
		return;
	cds_list_del(&d->link);
	synchronize_rcu();
	domain_destroy(d);
}
