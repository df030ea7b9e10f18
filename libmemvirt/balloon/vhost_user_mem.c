/* vhost_user_mem.c - the frontend's memory table: checked whole, mapped, and made the
 * VM's regions, so that the balloon device reads rings and releases pages through them. */
#include "vhost_user_int.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static bool overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

/* A region is 4 KiB aligned in guest-physical memory and in its file, does not wrap,
 * lies inside its file, and overlaps no other region of the table, neither in guest
 * addresses nor in frontend addresses. */
static int region_check(const struct vu_region *r, unsigned i, const struct vu_region *all, int fd)
{
	uint64_t ps = MV_PAGE_SIZE;
	if (!r->size || (r->gpa | r->size | r->offset) & (ps - 1) || r->gpa + r->size < r->gpa ||
	    r->uaddr + r->size < r->uaddr || r->offset + r->size < r->offset ||
	    r->size > (uint64_t)SIZE_MAX / 2)
		return -EINVAL;
	for (unsigned j = 0; j < i; j++)
		if (overlap(r->gpa, r->size, all[j].gpa, all[j].size) ||
		    overlap(r->uaddr, r->size, all[j].uaddr, all[j].size))
			return -EINVAL;
	struct stat st;
	if (fstat(fd, &st) || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < r->offset + r->size)
		return -EINVAL; /* not a memory file, or a region beyond its end */
	return 0;
}

static void unmap_all(struct vu_mreg *m, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		if (m[i].map)
			munmap(m[i].map, m[i].size);
		if (m[i].fd >= 0)
			close(m[i].fd);
	}
}

/* Forget the table: regions out of the VM first (the device stops reading them), then
 * unmapped. */
void mv__vu_mem_clear(struct mv_vhost_user *vu)
{
	for (unsigned i = 0; i < vu->nmem; i++)
		mv_vm_region_remove(vu->vm, i);
	unmap_all(vu->mem, vu->nmem);
	vu->nmem = 0;
}

/* Map and register a checked table; on failure nothing of it stays. */
static int install(struct mv_vhost_user *vu, struct vu_mreg *m, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		int err = mv_vm_region_add(vu->vm, i, m[i].gpa, m[i].map, m[i].size, MV_REGION_NEVER_MERGE);
		if (err) {
			while (i--)
				mv_vm_region_remove(vu->vm, i);
			return err;
		}
	}
	memcpy(vu->mem, m, n * sizeof(*m));
	vu->nmem = n;
	return 0;
}

/* The VM's regions become the new table's; if they cannot (the VM refuses a region),
 * the old table is put back and stays in force. The old mappings go only on success. */
static int replace(struct mv_vhost_user *vu, struct vu_mreg *m, unsigned n)
{
	struct vu_mreg old[VU_MAX_REGIONS];
	unsigned nold = vu->nmem;
	memcpy(old, vu->mem, nold * sizeof(*old));
	for (unsigned i = 0; i < nold; i++)
		mv_vm_region_remove(vu->vm, i);
	vu->nmem = 0;
	int err = install(vu, m, n);
	if (!err) {
		unmap_all(old, nold);
		return 0;
	}
	if (install(vu, old, nold)) {
		mv__log(vu->vm->host, MV_LOG_ERROR, "vm %s vhost-user: the old memory table could not "
		        "be put back: no guest memory until the next SET_MEM_TABLE", vu->vm->name);
		unmap_all(old, nold);
	}
	return err;
}

/* The table in force, sent again (QEMU does on every start): replacing it would give the
 * regions new identities and forget which of their pages are in the balloon. */
static bool same_table(const struct mv_vhost_user *vu, const struct vu_mem *t, const int *fds)
{
	if (t->n != vu->nmem)
		return false;
	for (unsigned i = 0; i < t->n; i++) {
		const struct vu_region *r = &t->r[i];
		const struct vu_mreg *m = &vu->mem[i];
		struct stat st;
		if (fstat(fds[i], &st) || r->gpa != m->gpa || r->size != m->size ||
		    r->uaddr != m->uaddr || r->offset != m->offset || (uint64_t)st.st_dev != m->dev ||
		    (uint64_t)st.st_ino != m->ino)
			return false;
	}
	return true;
}

int mv__vu_mem_set(struct mv_vhost_user *vu, const struct vu_mem *t, uint32_t size,
                   const int *fds, unsigned nfds)
{
	if (size < 8 || t->n == 0 || t->n > VU_MAX_REGIONS || size < 8 + 32ull * t->n ||
	    nfds != t->n)
		return -EINVAL;
	for (unsigned i = 0; i < t->n; i++) {
		int err = region_check(&t->r[i], i, t->r, fds[i]);
		if (err)
			return err;
	}
	if (same_table(vu, t, fds))
		return 1;
	struct vu_mreg m[VU_MAX_REGIONS];
	unsigned n = 0;
	int err = 0;
	for (; n < t->n; n++) {
		const struct vu_region *r = &t->r[n];
		void *p = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
		               fds[n], (off_t)r->offset);
		if (p == MAP_FAILED) {
			err = -errno;
			break;
		}
		struct stat st;
		fstat(fds[n], &st); /* it succeeded in region_check() */
		m[n] = (struct vu_mreg){ r->gpa, r->size, r->uaddr, r->offset, st.st_dev, st.st_ino, p, -1 };
	}
	if (!err)
		err = replace(vu, m, n);
	if (err) {
		unmap_all(m, n);
		return err;
	}
	for (unsigned i = 0; i < n; i++) /* ours from here on: the caller closes the rest */
		vu->mem[i].fd = fds[i];
	return 0;
}

bool mv__vu_mem_gpa(const struct mv_vhost_user *vu, uint64_t ua, uint64_t len, uint64_t *gpa)
{
	for (unsigned i = 0; i < vu->nmem; i++) {
		const struct vu_mreg *m = &vu->mem[i];
		if (ua >= m->uaddr && ua - m->uaddr < m->size && len <= m->size - (ua - m->uaddr)) {
			*gpa = m->gpa + (ua - m->uaddr);
			return true;
		}
	}
	return false;
}

uint64_t mv__vu_mem_file_bytes(const struct mv_vhost_user *vu)
{
	uint64_t sum = 0;
	for (unsigned i = 0; i < vu->nmem; i++) {
		struct stat st;
		bool seen = false; /* regions of one file count once */
		for (unsigned j = 0; j < i; j++) {
			struct stat sj;
			if (!fstat(vu->mem[j].fd, &sj) && !fstat(vu->mem[i].fd, &st) &&
			    sj.st_dev == st.st_dev && sj.st_ino == st.st_ino)
				seen = true;
		}
		if (!seen && !fstat(vu->mem[i].fd, &st))
			sum += (uint64_t)st.st_blocks * 512;
	}
	return sum;
}
