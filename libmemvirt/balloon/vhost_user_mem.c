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
		mv_vm_region_remove(vu->vm, vu->mem[i].slot);
	unmap_all(vu->mem, vu->nmem);
	vu->nmem = 0;
}

static bool same_region(const struct vu_region *r, const struct stat *st, const struct vu_mreg *m)
{
	return r->gpa == m->gpa && r->size == m->size && r->uaddr == m->uaddr &&
	       r->offset == m->offset && (uint64_t)st->st_dev == m->dev && (uint64_t)st->st_ino == m->ino;
}

static int add(struct mv_vhost_user *vu, const struct vu_mreg *m)
{
	return mv_vm_region_add(vu->vm, m->slot, m->gpa, m->map, m->size, MV_REGION_NEVER_MERGE);
}

/* The VM's regions become the new table's: `from[j]` is the old entry region j keeps
 * (-1: m[j] is newly mapped). Kept regions stay in the VM as they are; the others leave
 * it and the new ones join under free slots. If the VM refuses one, the old table is
 * put back and stays in force. */
static int switch_over(struct mv_vhost_user *vu, struct vu_mreg *m, const int *from, unsigned n)
{
	bool kept[VU_MAX_REGIONS] = { false };
	uint32_t used = 0;
	for (unsigned j = 0; j < n; j++)
		if (from[j] >= 0) {
			kept[from[j]] = true;
			used |= 1u << vu->mem[from[j]].slot;
		}
	for (unsigned i = 0; i < vu->nmem; i++)
		if (!kept[i])
			mv_vm_region_remove(vu->vm, vu->mem[i].slot);
	int err = 0;
	unsigned j = 0;
	for (; j < n && !err; j++) {
		if (from[j] >= 0)
			continue;
		m[j].slot = (uint32_t)__builtin_ctz(~used);
		used |= 1u << m[j].slot;
		err = add(vu, &m[j]);
	}
	if (!err)
		return 0;
	while (j--) /* undo: the new ones out, the old ones back */
		if (from[j] < 0)
			mv_vm_region_remove(vu->vm, m[j].slot);
	for (unsigned i = 0; i < vu->nmem; i++)
		if (!kept[i] && add(vu, &vu->mem[i]))
			mv__log(vu->vm->host, MV_LOG_ERROR, "vm %s vhost-user: region at gpa 0x%llx could not "
			        "be put back", vu->vm->name, (unsigned long long)vu->mem[i].gpa);
	return err;
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
	/* regions the table in force has too keep their mapping, their region and with it
	 * which of their pages are in the balloon (QEMU sends the table again on every start
	 * and hot-plug); the others are mapped */
	struct vu_mreg m[VU_MAX_REGIONS];
	int from[VU_MAX_REGIONS];
	bool taken[VU_MAX_REGIONS] = { false };
	unsigned n = t->n, j = 0;
	int err = 0;
	for (; j < n && !err; j++) {
		const struct vu_region *r = &t->r[j];
		struct stat st;
		fstat(fds[j], &st); /* it succeeded in region_check() */
		m[j] = (struct vu_mreg){ .fd = -1 };
		from[j] = -1;
		for (unsigned i = 0; i < vu->nmem && from[j] < 0; i++)
			if (!taken[i] && same_region(r, &st, &vu->mem[i]))
				from[j] = (int)i;
		if (from[j] >= 0) {
			taken[from[j]] = true;
			continue;
		}
		void *p = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
		               fds[j], (off_t)r->offset);
		if (p == MAP_FAILED)
			err = -errno;
		else
			m[j] = (struct vu_mreg){ r->gpa, r->size, r->uaddr, r->offset, st.st_dev, st.st_ino,
			                         p, -1, 0 };
	}
	if (!err)
		err = switch_over(vu, m, from, n);
	if (err) {
		for (unsigned k = 0; k < j; k++)
			if (from[k] < 0 && m[k].map)
				munmap(m[k].map, m[k].size);
		return err;
	}
	/* in force: the new table's entries, descriptors taken or closed; the old rest goes */
	struct vu_mreg old[VU_MAX_REGIONS];
	unsigned nold = vu->nmem;
	memcpy(old, vu->mem, nold * sizeof(*old));
	for (j = 0; j < n; j++) {
		if (from[j] >= 0) {
			vu->mem[j] = old[from[j]];
			close(fds[j]);
		} else {
			vu->mem[j] = m[j];
			vu->mem[j].fd = fds[j];
		}
	}
	vu->nmem = n;
	for (unsigned i = 0; i < nold; i++)
		if (!taken[i])
			unmap_all(&old[i], 1);
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
