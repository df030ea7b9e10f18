/* journal.c - the restore journal on disk: where it lives, its locks, checked reading and
 * durable writing.  Everything but rj_locate() is async-signal-safe. */
#include "journal.h"
#include "ksmctl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define RJ_FILE_MAX	8192	/* more than RJ_MAX_ENTRIES full lines */
#define RJ_MAP_COUNT	"/proc/sys/vm/max_map_count"

/* ---- strings without stdio ---- */

/* A bounded, always NUL-terminated string being built; full once something did not fit. */
struct sb {
	char *p;
	size_t size, len;
	bool full;
};

static void sb_add(struct sb *b, const char *s)
{
	if (!b->p || !b->size)
		return;
	for (; *s; s++) {
		if (b->len + 1 >= b->size) {
			b->full = true;
			break;
		}
		b->p[b->len++] = *s;
	}
	b->p[b->len] = '\0';
}

static void sb_num(struct sb *b, long v)
{
	char d[24];
	size_t i = sizeof(d) - 1;
	unsigned long u = v < 0 ? 0 - (unsigned long)v : (unsigned long)v;
	d[i] = '\0';
	do
		d[--i] = (char)('0' + u % 10);
	while ((u /= 10));
	if (v < 0)
		d[--i] = '-';
	sb_add(b, d + i);
}

static int join(char *dst, size_t size, const char *a, const char *b)
{
	struct sb s = { dst, size, 0, false };
	sb_add(&s, a);
	sb_add(&s, b);
	return s.full ? -ENAMETOOLONG : 0;
}

/* Decimal 1..INT_MAX, digits only; 0 if it is not one. */
static int parse_pos(const char *s, const char *end)
{
	long v = 0;
	if (s == end || end - s > 10)
		return 0;
	for (; s < end; s++) {
		if (*s < '0' || *s > '9')
			return 0;
		v = v * 10 + (*s - '0');
	}
	return v > INT_MAX ? 0 : (int)v;
}

/* ---- location and locks ---- */

static int locate_default(char *file, size_t size)
{
	const char *base;
	if (geteuid() == 0)
		return join(file, size, "/var/lib/memvirt/restore.journal", "");
	base = getenv("XDG_STATE_HOME");
	if (base && base[0] == '/')
		return join(file, size, base, "/memvirt/restore.journal");
	base = getenv("HOME");
	if (base && base[0] == '/')
		return join(file, size, base, "/.local/state/memvirt/restore.journal");
	return -ENOENT;
}

int rj_locate(struct rj_loc *loc)
{
	const char *env = getenv(RJ_ENV);
	char *slash;
	int r;

	memset(loc, 0, sizeof(*loc));
	loc->lock_fd = -1;
	loc->overridden = env && *env;
	if (loc->overridden)
		r = env[0] == '/' ? join(loc->file, sizeof(loc->file), env, "") : -EINVAL;
	else
		r = locate_default(loc->file, sizeof(loc->file));
	if (!r)
		r = join(loc->lock, sizeof(loc->lock), loc->file, ".lock");
	if (!r)
		r = join(loc->tmp, sizeof(loc->tmp), loc->file, ".tmp");
	if (r)
		return r;
	memcpy(loc->dir, loc->file, sizeof(loc->dir));
	slash = strrchr(loc->dir, '/');
	slash[slash == loc->dir] = '\0';	/* "/x" -> "/" */
	return 0;
}

/* mkdir -p with mode 0700 for what is created. */
static int make_dirs(char *dir)
{
	for (char *p = dir + 1;; p++) {
		char c = *p;
		if (c != '/' && c != '\0')
			continue;
		*p = '\0';
		int r = mkdir(dir, 0700) && errno != EEXIST ? -errno : 0;
		*p = c;
		if (r || !c)
			return r;
	}
}

static int read_holder(int fd)
{
	char buf[16];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	char *end = buf;
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	while (*end >= '0' && *end <= '9')
		end++;
	return parse_pos(buf, end);
}

static void write_holder(int fd)
{
	char buf[24];
	struct sb b = { buf, sizeof(buf), 0, false };
	sb_num(&b, getpid());
	sb_add(&b, "\n");
	if (ftruncate(fd, 0) == 0 && pwrite(fd, buf, b.len, 0) < 0)
		return;	/* only informative: who holds the lock */
}

int rj_lock_run(struct rj_loc *loc, int *holder)
{
	char dir[sizeof(loc->dir)];
	int fd, r;

	memcpy(dir, loc->dir, sizeof(dir));
	r = make_dirs(dir);
	if (r)
		return r;
	fd = open(loc->lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		r = errno == EWOULDBLOCK ? -EBUSY : -errno;
		if (holder)
			*holder = read_holder(fd);
		close(fd);
		return r;
	}
	write_holder(fd);
	loc->lock_fd = fd;
	return 0;
}

void rj_unlock_run(struct rj_loc *loc)
{
	if (loc->lock_fd >= 0)
		close(loc->lock_fd);	/* releases the flock unless a child still shares it */
	loc->lock_fd = -1;
}

int rj_begin(const struct rj_loc *loc)
{
	int fd = open(loc->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while (flock(fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			int err = -errno;
			close(fd);
			return err;
		}
	}
	return fd;
}

void rj_end(int dir_fd)
{
	close(dir_fd);	/* drops the lock */
}

bool rj_pid_alive(int pid)
{
	return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

/* ---- which paths an entry may name ---- */

static bool is_knob_name(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
			return false;
	return true;
}

/* A regular file of ours directly in the journal's directory, not one of the journal's own. */
static bool is_own_file(const struct rj_loc *loc, const char *path)
{
	size_t dl = strlen(loc->dir);
	const char *name = path + (dl == 1 ? 1 : dl + 1), *jname = strrchr(loc->file, '/') + 1;
	struct stat st;

	if (strncmp(path, loc->dir, dl) || (dl > 1 && path[dl] != '/'))
		return false;
	if (!*name || strchr(name, '/') || name[0] == '.' || !strncmp(name, jname, strlen(jname)))
		return false;
	return lstat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid();
}

bool rj_path_allowed(const struct rj_loc *loc, const char *path)
{
	if (!strcmp(path, RJ_MAP_COUNT))
		return true;
	if (!strncmp(path, KC_KSM_DIR "/", sizeof(KC_KSM_DIR)))
		return is_knob_name(path + sizeof(KC_KSM_DIR));
	return loc->overridden && is_own_file(loc, path);
}

/* ---- reading ---- */

struct parse {
	const struct rj_loc *loc;
	struct sb why;
	int err;		/* first error met */
	int line;
};

/* Quote a line of the file: what is not printable shows as '?' (no escapes on a terminal). */
static void sb_add_clean(struct sb *b, const char *s)
{
	char c[2] = { 0, 0 };
	for (; *s && !b->full; s++) {
		c[0] = *s >= 0x20 && *s <= 0x7e ? *s : '?';
		sb_add(b, c);
	}
}

/* Line 0: about the whole file. */
static void bad(struct parse *ps, int err, const char *what, const char *detail)
{
	if (!ps->err)
		ps->err = err;
	if (ps->why.len)
		sb_add(&ps->why, "; ");
	if (ps->line) {
		sb_add(&ps->why, "line ");
		sb_num(&ps->why, ps->line);
		sb_add(&ps->why, ": ");
	}
	sb_add_clean(&ps->why, what);
	sb_add_clean(&ps->why, detail);
}

static bool printable(const char *s, const char *end)
{
	for (; s < end; s++)
		if (*s < 0x20 || *s > 0x7e)
			return false;
	return true;
}

bool rj_entry_ok(const char *path, const char *value)
{
	size_t plen = strlen(path), vlen = strlen(value);
	return path[0] == '/' && plen < RJ_PATH_MAX && !strchr(path, ' ') && printable(path, path + plen) &&
	       vlen > 0 && vlen < RJ_VALUE_MAX && printable(value, value + vlen);
}

/* "<pid> <path> <value>" into *e; false after saying why. */
static bool parse_entry(struct parse *ps, const char *s, struct rj_entry *e)
{
	const char *sp1 = strchr(s, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
	size_t plen = sp2 ? (size_t)(sp2 - sp1 - 1) : 0;

	if (!sp2 || !(e->pid = parse_pos(s, sp1))) {
		bad(ps, -EBADMSG, "not '<pid> <path> <value>': ", s);
		return false;
	}
	if (plen >= RJ_PATH_MAX || strlen(sp2 + 1) >= RJ_VALUE_MAX) {
		bad(ps, -EBADMSG, "path or value too long: ", s);
		return false;
	}
	memcpy(e->path, sp1 + 1, plen);
	e->path[plen] = '\0';
	memcpy(e->value, sp2 + 1, strlen(sp2 + 1) + 1);
	if (!rj_entry_ok(e->path, e->value)) {
		bad(ps, -EBADMSG, "bad path or value: ", s);
		return false;
	}
	if (!rj_path_allowed(ps->loc, e->path)) {
		bad(ps, -EPERM, e->path, " is not a setting memvirt changes (refused)");
		return false;
	}
	return true;
}

/* The "end <n>" line: n, or -1 after saying why. */
static int parse_end(struct parse *ps, const char *s)
{
	int n = parse_pos(s + 4, s + strlen(s));
	if (!n && strcmp(s, "end 0"))
		bad(ps, -EBADMSG, "bad end line: ", s);
	return n || !strcmp(s, "end 0") ? n : -1;
}

static int parse_text(struct parse *ps, char *p, char *stop, struct rj_entry *e, int max)
{
	int n = 0, end = -2;	/* -2: no end line yet */

	for (; p < stop; ps->line++) {
		char *nl = memchr(p, '\n', (size_t)(stop - p));
		if (!nl) {
			bad(ps, -EBADMSG, "no newline at its end: the file is cut short", "");
			break;
		}
		*nl = '\0';
		if (end != -2)
			bad(ps, -EBADMSG, "text after the end line: ", p);
		else if (ps->line == 1 && strcmp(p, RJ_VERSION_TAG))
			bad(ps, -EBADMSG, "not a journal of this memvirt (want '" RJ_VERSION_TAG "'): ", p);
		else if (ps->line > 1 && !strncmp(p, "end ", 4))
			end = parse_end(ps, p);
		else if (ps->line > 1 && n == max)
			bad(ps, -EBADMSG, "more entries than memvirt ever writes", "");
		else if (ps->line > 1 && parse_entry(ps, p, &e[n]))
			n++;
		p = nl + 1;
	}
	ps->line = 0;
	if (end == -2 && !ps->err)
		bad(ps, -EBADMSG, "no end line: the file is cut short", "");
	else if (end >= 0 && end != n && !ps->err)
		bad(ps, -EBADMSG, "the end line counts entries the file does not have", "");
	return ps->err ? ps->err : n;
}

/* The journal must be ours alone: a regular file of our uid that nobody else may write. */
static int check_owner(int fd, struct sb *why)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISREG(st.st_mode) && st.st_uid == geteuid() && !(st.st_mode & (S_IWGRP | S_IWOTH)))
		return 0;
	sb_add(why, "not a regular file of ours that only we can write (refused)");
	return -EPERM;
}

static ssize_t read_all(int fd, char *buf, size_t size)
{
	size_t len = 0;
	while (len < size) {
		ssize_t n = read(fd, buf + len, size - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		len += (size_t)n;
	}
	return (ssize_t)len;
}

int rj_load(const struct rj_loc *loc, struct rj_entry *e, int max, char *why, size_t why_size)
{
	char text[RJ_FILE_MAX + 1];
	struct parse ps = { loc, { why, why_size, 0, false }, 0, 1 };
	int fd = open(loc->file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	ssize_t len;

	sb_add(&ps.why, "");
	if (fd < 0 && errno == ENOENT)
		return 0;
	if (fd < 0 && errno == ELOOP)
		sb_add(&ps.why, "a symbolic link (refused)");
	if (fd < 0)
		return errno == ELOOP ? -EPERM : -errno;
	len = check_owner(fd, &ps.why);
	if (!len)
		len = read_all(fd, text, sizeof(text));
	close(fd);
	if (len < 0)
		return (int)len;
	if ((size_t)len > RJ_FILE_MAX) {
		sb_add(&ps.why, "larger than any journal memvirt writes");
		return -EBADMSG;
	}
	if (len == 0) {
		sb_add(&ps.why, "empty: the file is cut short");
		return -EBADMSG;
	}
	return parse_text(&ps, text, text + len, e, max);
}

/* ---- writing ---- */

static void format(struct sb *b, const struct rj_entry *e, int n)
{
	sb_add(b, RJ_VERSION_TAG "\n");
	for (int i = 0; i < n; i++) {
		sb_num(b, e[i].pid);
		sb_add(b, " ");
		sb_add(b, e[i].path);
		sb_add(b, " ");
		sb_add(b, e[i].value);
		sb_add(b, "\n");
	}
	sb_add(b, "end ");
	sb_num(b, n);
	sb_add(b, "\n");
}

static int write_file(const char *path, const char *text, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600), err = 0;
	if (fd < 0)
		return -errno;
	while (len && !err) {
		ssize_t n = write(fd, text, len);
		if (n < 0 && errno != EINTR)
			err = -errno;
		if (n > 0) {
			text += n;
			len -= (size_t)n;
		}
	}
	if (!err && fsync(fd) < 0)
		err = -errno;
	if (close(fd) < 0 && !err)
		err = -errno;
	return err;
}

int rj_store(const struct rj_loc *loc, int dir_fd, const struct rj_entry *e, int n)
{
	char text[RJ_FILE_MAX];
	struct sb b = { text, sizeof(text), 0, false };
	int r = 0;

	if (n == 0) {
		if (unlink(loc->file) < 0 && errno != ENOENT)
			return -errno;
		return fsync(dir_fd) < 0 ? -errno : 0;
	}
	format(&b, e, n);
	if (b.full)
		return -E2BIG;
	r = write_file(loc->tmp, text, b.len);
	if (!r && rename(loc->tmp, loc->file) < 0)
		r = -errno;
	if (r) {
		unlink(loc->tmp);
		return r;
	}
	return fsync(dir_fd) < 0 ? -errno : 0;
}

/* ---- merging and taking over ---- */

static bool same(const struct rj_entry *a, const struct rj_entry *b)
{
	return a->pid == b->pid && !strcmp(a->path, b->path) && !strcmp(a->value, b->value);
}

static bool listed(const struct rj_entry *e, int n, const struct rj_entry *x)
{
	for (int i = 0; i < n; i++)
		if (same(&e[i], x))
			return true;
	return false;
}

static int merge(struct rj_entry *e, int n, int me, const struct rj_entry *own, int n_own)
{
	int k = 0;
	for (int i = 0; i < n; i++)
		if (e[i].pid != me || listed(own, n_own, &e[i]))
			e[k++] = e[i];
	for (int j = 0; j < n_own; j++) {
		if (listed(e, k, &own[j]))
			continue;
		if (k == RJ_MAX_ENTRIES)
			return -ENOSPC;
		e[k++] = own[j];
	}
	return k;
}

int rj_sync(const struct rj_loc *loc, const struct rj_entry *own, int n_own)
{
	struct rj_entry e[RJ_MAX_ENTRIES];
	int fd = rj_begin(loc), n;

	if (fd < 0)
		return fd;
	n = rj_load(loc, e, RJ_MAX_ENTRIES, NULL, 0);
	if (n >= 0)
		n = merge(e, n, getpid(), own, n_own);
	if (n >= 0)
		n = rj_store(loc, fd, e, n);
	rj_end(fd);
	return n < 0 ? n : 0;
}

int rj_take_over(const struct rj_loc *loc, bool all, struct rj_entry *taken, int max, char *why,
		 size_t why_size)
{
	struct rj_entry e[RJ_MAX_ENTRIES];
	int fd = rj_begin(loc), n, k = 0, me = getpid();

	if (fd < 0)
		return fd;
	n = rj_load(loc, e, RJ_MAX_ENTRIES, why, why_size);
	for (int i = 0; i < n && k < max; i++) {
		if (!all && (e[i].pid == me || rj_pid_alive(e[i].pid)))
			continue;
		taken[k++] = e[i];
		e[i].pid = me;
	}
	if (k > 0)
		n = rj_store(loc, fd, e, n);
	rj_end(fd);
	return n < 0 ? n : k;
}
