/* index.c - the content index of a trust domain: liburcu's lock-free hash table.
 *
 * Key: (XXH3 of the page, NUMA node). One node per key. A node is unstable (a guest page
 * seen once with that content) or stable (a canonical page in the store). Lookups run
 * under rcu_read_lock without locks; changes take the domain lock, so promotion of an
 * unstable node and removal of a dying stable node never race each other.
 * A stable node's `refs` counts guest pages mapped to it. Getting a reference succeeds
 * only while refs > 0, so a slot being freed is never mapped again.
 */
#include "ksm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct key { uint64_t hash; uint32_t nid; };

static int match(struct cds_lfht_node *ln, const void *k)
{
	const struct mv_node *n = caa_container_of(ln, struct mv_node, lf);
	const struct key *key = k;
	return n->hash == key->hash && n->nid == key->nid;
}

static struct mv_node *node_of(struct cds_lfht_node *ln)
{
	return ln ? caa_container_of(ln, struct mv_node, lf) : NULL;
}

/* cds_lfht_for_each_entry(), without container_of() on the NULL that ends the walk
 * (pointer arithmetic on NULL: undefined, and fatal under the fuzzers' UBSan). */
#define for_each_node(d, it, n) \
	for (cds_lfht_first((d)->index, (it)); ((n) = node_of(cds_lfht_iter_get_node(it))); \
	     cds_lfht_next((d)->index, (it)))

int mv__index_new(struct mv_domain *d)
{
	d->index = cds_lfht_new_flavor(1024, 1024, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING,
	                               &urcu_bp_flavor, NULL);
	return d->index ? 0 : -ENOMEM;
}

/*
 * The domain grew to `pages` guest pages: size the table for them now. Growing lazily
 * (by chain length, in liburcu's call_rcu thread) lags far behind a first scan that
 * inserts hundreds of thousands of pages, and long chains make every lookup slow.
 * Not under rcu_read_lock.
 */
void mv__index_size_for(struct mv_domain *d, int64_t pages)
{
	unsigned long want = 1024;
	while (want < (unsigned long)pages / 4 && want < (1ul << 24))
		want <<= 1;
	cds_lfht_resize(d->index, want);
}

/* Only once no reader or writer can reach the domain. */
void mv__index_free(struct mv_domain *d)
{
	struct cds_lfht_iter it;
	struct mv_node *n;
	if (!d->index)
		return;
	for_each_node(d, &it, n) {
		cds_lfht_del(d->index, &n->lf);
		free(n);
	}
	cds_lfht_destroy(d->index, NULL);
	d->index = NULL;
}

struct mv_node *mv__index_find(struct mv_domain *d, uint64_t hash, uint32_t nid)
{
	struct key k = { hash, nid };
	struct cds_lfht_iter it;
	cds_lfht_lookup(d->index, hash, match, &k, &it);
	return node_of(cds_lfht_iter_get_node(&it));
}

static void free_node_rcu(struct rcu_head *head)
{
	free(caa_container_of(head, struct mv_node, rcu));
}

/* Lookup that keeps the iterator, for replace. Domain lock and rcu_read_lock held. */
static struct mv_node *find_iter(struct mv_domain *d, uint64_t hash, uint32_t nid,
                                 struct cds_lfht_iter *it)
{
	struct key k = { hash, nid };
	cds_lfht_lookup(d->index, hash, match, &k, it);
	struct cds_lfht_node *ln = cds_lfht_iter_get_node(it);
	return ln ? caa_container_of(ln, struct mv_node, lf) : NULL;
}

/* Publish n for its key, replacing `expect` (NULL: the key must be absent). Locked. */
static int publish(struct mv_domain *d, struct mv_node *n, struct mv_node *expect)
{
	struct cds_lfht_iter it;
	struct mv_node *cur = find_iter(d, n->hash, n->nid, &it);
	if (cur != expect)
		return -EEXIST;
	if (!cur) {
		cds_lfht_add(d->index, n->hash, &n->lf);
		atomic_fetch_add(&d->unstable, !n->stable);
		return 0;
	}
	if (cds_lfht_replace(d->index, &it, n->hash, match, &(struct key){ n->hash, n->nid }, &n->lf))
		return -EEXIST;
	atomic_fetch_add(&d->unstable, (int64_t)!n->stable - !cur->stable);
	call_rcu(&cur->rcu, free_node_rcu);
	return 0;
}

/* Remember page idx of r under its hash. `stale`: the unstable node found for the key,
 * whose page no longer has that content; it gives way. Lock-free when the key is new. */
void mv__index_add_unstable(struct mv_domain *d, uint64_t hash, uint32_t nid,
                            struct mv_region *r, uint64_t idx, struct mv_node *stale)
{
	struct mv_node *n = calloc(1, sizeof(*n));
	if (!n)
		return; /* the page simply is not findable: no harm */
	n->hash = hash;
	n->nid = nid;
	n->region = r;
	n->idx = (uint32_t)idx;
	int err = 0;
	rcu_read_lock();
	if (!stale) {
		struct key k = { hash, nid };
		err = cds_lfht_add_unique(d->index, hash, match, &k, &n->lf) == &n->lf ? 0 : -EEXIST;
		if (!err)
			atomic_fetch_add(&d->unstable, 1);
	} else {
		pthread_mutex_lock(&d->lock);
		err = publish(d, n, stale);
		pthread_mutex_unlock(&d->lock);
	}
	rcu_read_unlock();
	if (err)
		free(n);
}

/* Forget the unstable nodes that point into r, or all of them (r == NULL). */
void mv__index_drop_region(struct mv_domain *d, const struct mv_region *r)
{
	struct cds_lfht_iter it;
	struct mv_node *n;
	rcu_read_lock();
	pthread_mutex_lock(&d->lock);
	for_each_node(d, &it, n)
		if (!n->stable && (!r || n->region == r) && !cds_lfht_del(d->index, &n->lf)) {
			atomic_fetch_sub(&d->unstable, 1);
			call_rcu(&n->rcu, free_node_rcu);
		}
	pthread_mutex_unlock(&d->lock);
	rcu_read_unlock();
}

/*
 * Make `content` canonical: copy it into a store slot (`preferred` when free) and publish
 * a stable node with one reference, replacing the unstable node `old` (may be NULL).
 * -EEXIST if the key changed meanwhile (another worker was first).
 */
int mv__index_promote(struct mv_domain *d, struct mv_node *old, uint64_t hash, uint32_t nid,
                      const void *content, int64_t preferred, struct mv_node **out)
{
	struct mv_store *s = d->stores[nid];
	struct mv_node *n = calloc(1, sizeof(*n));
	if (!n)
		return -ENOMEM;
	n->hash = hash;
	n->nid = nid;
	n->stable = true;
	atomic_init(&n->refs, 1);
	rcu_read_lock();
	pthread_mutex_lock(&d->lock);
	int err = mv__store_alloc(s, preferred, &n->slot);
	if (!err) {
		err = d->host->prim->store_write(s->fd, (off_t)n->slot * (off_t)MV_PAGE_SIZE, content);
		if (!err)
			err = publish(d, n, old);
		if (err)
			mv__store_release(d->host, s, n->slot);
		else
			mv__store_bind(s, n->slot, n);
	}
	pthread_mutex_unlock(&d->lock);
	rcu_read_unlock();
	if (err) {
		free(n);
		return err;
	}
	atomic_fetch_add(&d->c.v[MV_C_SHARED], 1);
	atomic_fetch_add(&d->host->c.v[MV_C_SHARED], 1);
	*out = n;
	return 0;
}

bool mv__node_get(struct mv_node *n)
{
	int32_t r = atomic_load(&n->refs);
	while (r > 0)
		if (atomic_compare_exchange_weak(&n->refs, &r, r + 1))
			return true;
	return false;
}

/* Drop `refs` references; the last one frees the canonical page and the node. */
void mv__node_put(struct mv_domain *d, struct mv_node *n, int32_t refs)
{
	if (atomic_fetch_sub(&n->refs, refs) != refs)
		return;
	rcu_read_lock();
	pthread_mutex_lock(&d->lock);
	if (!cds_lfht_del(d->index, &n->lf)) {
		mv__store_release(d->host, d->stores[n->nid], n->slot);
		atomic_fetch_sub(&d->c.v[MV_C_SHARED], 1);
		atomic_fetch_sub(&d->host->c.v[MV_C_SHARED], 1);
		call_rcu(&n->rcu, free_node_rcu);
	}
	pthread_mutex_unlock(&d->lock);
	rcu_read_unlock();
}
