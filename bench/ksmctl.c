/* ksmctl.c - KSM/sysctl knobs that restore themselves, also after a crash (through journal.c). */
#include "ksmctl.h"
#include "journal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KC_RUN_PATH	KC_KSM_DIR "/run"
#define KC_UNMERGE_TRIES	3
#define KC_UNMERGE_WAIT_POLLS	200	/* x 10 ms per try */

/* ---- small async-signal-safe helpers (no stdio, no malloc, no locale) ---- */

static size_t str_len(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

static bool str_eq(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

void kc__sleep_ns(long ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000L, .tv_nsec = ns % 1000000000L };
	nanosleep(&ts, NULL);	/* an interruption only shortens a poll */
}

ssize_t kc__read_small(const char *path, char *buf, size_t size)
{
	size_t len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while (len + 1 < size) {
		ssize_t n = read(fd, buf + len, size - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int err = -errno;
			close(fd);
			return err;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	close(fd);
	return (ssize_t)len;
}

/* One write() of the whole string: sysfs/sysctl stores report their error there. */
static int write_str(const char *path, const char *s)
{
	size_t len = str_len(s);
	ssize_t n;
	int err = 0;
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	do
		n = write(fd, s, len);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		err = -errno;
	else if ((size_t)n != len)
		err = -EIO;
	close(fd);
	return err;
}

/* Decimal long, optional sign, surrounding blanks allowed, nothing else. */
static int parse_long(const char *s, long *out)
{
	unsigned long v = 0, lim;
	bool neg = false, digits = false;
	while (*s == ' ' || *s == '\t')
		s++;
	if (*s == '-' || *s == '+')
		neg = *s++ == '-';
	lim = neg ? (unsigned long)LONG_MAX + 1 : (unsigned long)LONG_MAX;
	for (; *s >= '0' && *s <= '9'; s++, digits = true) {
		unsigned d = (unsigned)(*s - '0');
		if (v > (lim - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	while (*s == ' ' || *s == '\t' || *s == '\n')
		s++;
	if (!digits || *s)
		return -EINVAL;
	*out = neg ? (long)(0 - v) : (long)v;
	return 0;
}

/*
 * Canonical form of a knob's content: trailing blanks stripped, and for a
 * selection such as "[none] scan-time" only the selected word, which is what
 * the file accepts back.
 */
static void normalize(char *s)
{
	size_t len = str_len(s);
	char *open_br = s, *close_br;
	while (len && (s[len - 1] == '\n' || s[len - 1] == ' ' || s[len - 1] == '\t'))
		s[--len] = '\0';
	while (*open_br && *open_br != '[')
		open_br++;
	if (!*open_br)
		return;
	for (close_br = open_br + 1; *close_br && *close_br != ']'; close_br++)
		;
	if (!*close_br)
		return;
	*close_br = '\0';
	memmove(s, open_br + 1, (size_t)(close_br - open_br));
}

static ssize_t read_norm(const char *path, char *buf, size_t size)
{
	ssize_t n = kc__read_small(path, buf, size);
	if (n >= 0)
		normalize(buf);
	return n < 0 ? n : (ssize_t)str_len(buf);
}

int kc__read_long(const char *path, long *out)
{
	char buf[64];
	ssize_t n = kc__read_small(path, buf, sizeof(buf));
	return n < 0 ? (int)n : parse_long(buf, out);
}

/* ---- the table of remembered settings ---- */

struct kc_setting {
	char path[RJ_PATH_MAX];
	char orig[RJ_VALUE_MAX];	/* normalized original content */
	_Atomic int pending;	/* changed since the last restore */
	pid_t owner;		/* the process that changed it: only it restores it */
};

static struct kc_setting settings[KC_MAX_SETTINGS];
static _Atomic int nsettings;		/* entries below it are complete */
static _Atomic int table_lock;		/* spin lock, taken with our signals blocked */
static _Atomic int atexit_done, signals_done;
/* The restore journal, shared with fork()ed children; written with the table locked. */
static struct rj_loc jloc = { .lock_fd = -1 };
static _Atomic int jopen;		/* jloc located, run lock held by this run */
static _Atomic pid_t jowner;		/* the process that took the run lock */
static const int kc_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGQUIT };

static void lock_table(void)
{
	while (atomic_exchange(&table_lock, 1))
		kc__sleep_ns(1000000);
}

static void unlock_table(void)
{
	atomic_store(&table_lock, 0);
}

static void kc_sigset(sigset_t *set)
{
	sigemptyset(set);
	for (size_t i = 0; i < sizeof(kc_signals) / sizeof(kc_signals[0]); i++)
		sigaddset(set, kc_signals[i]);
}

/*
 * Normal context: block our signals in this thread while it holds the lock,
 * so our own handler can never spin on a lock this thread holds.
 */
static void enter_table(sigset_t *old)
{
	sigset_t set;
	kc_sigset(&set);
	pthread_sigmask(SIG_BLOCK, &set, old);
	lock_table();
}

static void leave_table(const sigset_t *old)
{
	unlock_table();
	pthread_sigmask(SIG_SETMASK, old, NULL);
}

/* Changed by this process and not restored yet. */
static bool mine(struct kc_setting *s)
{
	return atomic_load(&s->pending) && s->owner == getpid();
}

static bool is_run(const char *path)
{
	return str_eq(path, KC_RUN_PATH);
}

/* Knobs the kernel refuses to change (-EBUSY) while any KSM page is shared. */
static bool needs_unshared(const char *path)
{
	return str_eq(path, KC_KSM_DIR "/merge_across_nodes") || str_eq(path, KC_KSM_DIR "/max_page_sharing");
}

static void keep_first(int *err, int r)
{
	if (r < 0 && !*err)
		*err = r;
}

static bool ksm_all_unmerged(void)
{
	long shared = 1, sharing = 1, zero = 0;
	if (kc__read_long(KC_KSM_DIR "/pages_shared", &shared) < 0 ||
	    kc__read_long(KC_KSM_DIR "/pages_sharing", &sharing) < 0)
		return false;
	if (kc__read_long(KC_KSM_DIR "/ksm_zero_pages", &zero) < 0)
		zero = 0;	/* older kernels have no such counter */
	return shared == 0 && sharing == 0 && zero == 0;
}

/*
 * run=2 unmerges every KSM page (KSM-placed zero pages too) in the writer's
 * context and leaves ksmd idle.  The kernel only acts when the value changes,
 * so a run already at 2 goes through 0 first.  A failed unmerge (-ENOMEM, or
 * -EINTR on a signal) leaves run at 0; we try again a few times.
 */
static int ksm_unmerge_all(void)
{
	int err = -EBUSY;
	for (int attempt = 0; attempt < KC_UNMERGE_TRIES; attempt++) {
		char cur[16];
		if (read_norm(KC_RUN_PATH, cur, sizeof(cur)) >= 0 && str_eq(cur, "2"))
			write_str(KC_RUN_PATH, "0");
		int r = write_str(KC_RUN_PATH, "2");
		if (r < 0) {
			err = r;
			continue;
		}
		for (int i = 0; i < KC_UNMERGE_WAIT_POLLS; i++) {
			if (ksm_all_unmerged())
				return 0;
			kc__sleep_ns(10000000L);
		}
		err = -EBUSY;
	}
	return err;
}

/* Write one original back unless it is already there. */
static int restore_one(struct kc_setting *s)
{
	char cur[64];
	int r = 0;
	if (read_norm(s->path, cur, sizeof(cur)) < 0 || !str_eq(cur, s->orig))
		r = write_str(s->path, s->orig);
	if (r == 0)
		atomic_store(&s->pending, 0);
	return r;
}

static int restore_table(void)
{
	int n = atomic_load(&nsettings), run_idx = -1, err = 0;
	bool unmerge = false;
	char run_final[64], cur[64];

	for (int i = 0; i < n; i++) {
		if (!mine(&settings[i]))
			continue;
		if (is_run(settings[i].path))
			run_idx = i;
		else if (needs_unshared(settings[i].path) &&
			 (read_norm(settings[i].path, cur, sizeof(cur)) < 0 || !str_eq(cur, settings[i].orig)))
			unmerge = true;
	}
	if (run_idx >= 0 && !str_eq(settings[run_idx].orig, "1"))
		unmerge = true;

	/* The run value to end with: the remembered one, else the one found now. */
	if (run_idx >= 0) {
		memcpy(run_final, settings[run_idx].orig, sizeof(run_final));
	} else if (unmerge) {
		ssize_t r = read_norm(KC_RUN_PATH, run_final, sizeof(run_final));
		if (r < 0) {
			keep_first(&err, (int)r);
			unmerge = false;
		}
	}

	if (unmerge)
		keep_first(&err, ksm_unmerge_all());
	for (int i = n - 1; i >= 0; i--)
		if (i != run_idx && mine(&settings[i]))
			keep_first(&err, restore_one(&settings[i]));
	if (run_idx >= 0) {
		keep_first(&err, restore_one(&settings[run_idx]));
	} else if (unmerge) {
		if (read_norm(KC_RUN_PATH, cur, sizeof(cur)) < 0 || !str_eq(cur, run_final))
			keep_first(&err, write_str(KC_RUN_PATH, run_final));
	}
	return err;
}

/* ---- the journal's side of the table ---- */

/* This process's settings still to restore, as journal entries, in order of first change. */
static int own_entries(struct rj_entry *e)
{
	int n = atomic_load(&nsettings), k = 0;
	for (int i = 0; i < n; i++) {
		if (!mine(&settings[i]))
			continue;
		e[k].pid = getpid();
		memcpy(e[k].path, settings[i].path, sizeof(e[k].path));
		memcpy(e[k].value, settings[i].orig, sizeof(e[k].value));
		k++;
	}
	return k;
}

static int journal_sync(void)
{
	struct rj_entry own[KC_MAX_SETTINGS];
	return atomic_load(&jopen) ? rj_sync(&jloc, own, own_entries(own)) : 0;
}

/* Append an entry of this process; NULL when the table is full. */
static struct kc_setting *add_entry(const char *path, const char *orig, int pending)
{
	int n = atomic_load(&nsettings);
	if (n == KC_MAX_SETTINGS)
		return NULL;
	memcpy(settings[n].orig, orig, str_len(orig) + 1);
	memcpy(settings[n].path, path, str_len(path) + 1);
	settings[n].owner = getpid();
	atomic_store(&settings[n].pending, pending);
	atomic_store(&nsettings, n + 1);	/* publish the complete entry to the handlers */
	return &settings[n];
}

/* Journal entries of processes that are gone (every entry if `all`) become ours, to restore. */
static int adopt(bool all, struct rj_entry *taken, char *why, size_t why_size)
{
	int k = rj_take_over(&jloc, all, taken, KC_MAX_SETTINGS - atomic_load(&nsettings), why, why_size);
	for (int i = 0; i < k; i++)
		add_entry(taken[i].path, taken[i].value, 1);
	return k;
}

/* Has this process a part in the journal: it took the run lock, or changed something? */
static bool in_journal(void)
{
	int n = atomic_load(&nsettings);
	if (!atomic_load(&jopen))
		return false;
	if (atomic_load(&jowner) == getpid())
		return true;
	for (int i = 0; i < n; i++)
		if (settings[i].owner == getpid())
			return true;
	return false;
}

static int restore_locked(void)
{
	struct rj_entry taken[KC_MAX_SETTINGS];
	bool journal = in_journal();
	int err = 0;

	if (journal)
		keep_first(&err, adopt(false, taken, NULL, 0));	/* the run's children that were killed */
	keep_first(&err, restore_table());
	if (journal)
		keep_first(&err, journal_sync());	/* restored entries leave the journal */
	return err;
}

int kc_settings_restore(void)
{
	sigset_t old;
	int r;
	enter_table(&old);
	r = restore_locked();
	leave_table(&old);
	return r;
}

static void on_exit_restore(void)
{
	kc_settings_restore();
}

/* Async-signal-safe: system calls (journal.c's too), prebuilt strings, lock-free atomics. */
static void on_signal(int sig)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	int saved_errno = errno;

	lock_table();	/* our signals are blocked here; another thread may hold it briefly */
	restore_locked();	/* what this process changed, if anything */
	unlock_table();
	sigemptyset(&dfl.sa_mask);
	sigaction(sig, &dfl, NULL);
	raise(sig);	/* pending until the handler returns, then kills by default */
	errno = saved_errno;
}

/* Called with the table locked. A signal ignored at install time stays ignored. */
static int install_handlers(void)
{
	struct sigaction sa, old;

	if (!atomic_load(&atexit_done)) {
		if (atexit(on_exit_restore))
			return -ENOMEM;
		atomic_store(&atexit_done, 1);
	}
	if (atomic_load(&signals_done))
		return 0;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	kc_sigset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(kc_signals) / sizeof(kc_signals[0]); i++) {
		if (sigaction(kc_signals[i], NULL, &old) < 0)
			return -errno;
		if (old.sa_handler == SIG_IGN)
			continue;
		if (sigaction(kc_signals[i], &sa, NULL) < 0)
			return -errno;
	}
	atomic_store(&signals_done, 1);
	return 0;
}

/* Find this process's entry for path, or add one holding the file's current content. */
static int remember(const char *path, struct kc_setting **out)
{
	int n = atomic_load(&nsettings);
	char buf[256];
	ssize_t len;

	for (int i = 0; i < n; i++) {
		if (settings[i].owner == getpid() && str_eq(settings[i].path, path)) {
			*out = &settings[i];
			return 0;
		}
	}
	if (n == KC_MAX_SETTINGS)
		return -ENOSPC;
	len = read_norm(path, buf, sizeof(buf));
	if (len < 0)
		return (int)len;
	if ((size_t)len >= sizeof(settings[n].orig))
		return -EOVERFLOW;
	if (!rj_entry_ok(path, buf))
		return -EINVAL;		/* the journal could not hold it */
	*out = add_entry(path, buf, 0);
	return 0;
}

/* Journal the original (once), then write the new value. */
static int change(struct kc_setting *s, const char *val)
{
	int was_pending = atomic_load(&s->pending), r;
	char cur[64];

	if (!was_pending) {
		atomic_store(&s->pending, 1);	/* before the write: a signal now restores it */
		r = journal_sync();		/* the original is on disk before anything changes */
		if (r) {
			atomic_store(&s->pending, 0);
			return r;
		}
	}
	r = write_str(s->path, val);
	/* A refused write (e.g. -EACCES) that changed nothing leaves nothing to restore. */
	if (r && !was_pending && read_norm(s->path, cur, sizeof(cur)) >= 0 && str_eq(cur, s->orig)) {
		atomic_store(&s->pending, 0);
		journal_sync();
	}
	return r;
}

/* Restore what adopt() took over from a run that is gone, and say how it went. */
static int restore_taken(const struct rj_entry *t, int k, struct kc_restored *out)
{
	int r = k > 0 ? restore_locked() : 0;
	char cur[64];

	if (out) {
		out->n = k;
		out->pid = k > 0 ? t[0].pid : 0;
	}
	for (int i = 0; out && i < k; i++) {
		memcpy(out->e[i].path, t[i].path, sizeof(out->e[i].path));
		memcpy(out->e[i].orig, t[i].value, sizeof(out->e[i].orig));
		out->e[i].restored = read_norm(t[i].path, cur, sizeof(cur)) >= 0 && str_eq(cur, t[i].value);
	}
	return r < 0 ? r : k;
}

/* Note what the files taken over hold before they are restored. */
static void note_found(const struct rj_entry *t, int k, struct kc_restored *out)
{
	for (int i = 0; out && i < k; i++)
		if (read_norm(t[i].path, out->e[i].found, sizeof(out->e[i].found)) < 0)
			memcpy(out->e[i].found, "?", 2);
}

static void explain_busy(char *why, size_t why_size, int holder)
{
	if (why && why_size)
		snprintf(why, why_size, "memvirt run %d %s holds the restore journal (lock %s); it restores "
			 "its settings when it ends", holder, rj_pid_alive(holder) ? "(running)" :
			 "(gone, but a process it started still runs)", jloc.lock);
}

/*
 * Once per run: locate the journal, take the run lock, and apply a journal a
 * run that is gone left behind.  Returns the entries applied, or -errno.
 */
static int journal_open(struct kc_restored *out, char *why, size_t why_size)
{
	struct rj_entry taken[KC_MAX_SETTINGS];
	int holder = 0, r, k;

	if (atomic_load(&jopen))
		return 0;
	r = install_handlers();
	if (!r)
		r = rj_locate(&jloc);
	if (!r)
		r = rj_lock_run(&jloc, &holder);
	if (r == -EBUSY)
		explain_busy(why, why_size, holder);
	if (r)
		return r;
	atomic_store(&jowner, getpid());
	atomic_store(&jopen, 1);
	k = adopt(true, taken, why, why_size);
	if (k < 0) {
		atomic_store(&jopen, 0);
		rj_unlock_run(&jloc);
		return k;
	}
	note_found(taken, k, out);
	return restore_taken(taken, k, out);
}

int kc_setting_set(const char *path, long value)
{
	struct kc_setting *s = NULL;
	char val[32];
	sigset_t old;
	int r;

	if (!path || path[0] != '/')
		return -EINVAL;
	if (str_len(path) >= sizeof(settings[0].path))
		return -ENAMETOOLONG;
	if (access(path, W_OK) < 0)
		return -errno;	/* nothing will change: nothing to journal */
	snprintf(val, sizeof(val), "%ld", value);

	enter_table(&old);
	r = journal_open(NULL, NULL, 0);
	if (r > 0)
		r = 0;
	if (!r && !rj_path_allowed(&jloc, path))
		r = -EPERM;
	if (!r)
		r = remember(path, &s);
	if (!r)
		r = change(s, val);
	leave_table(&old);
	return r;
}

int kc_journal_apply(struct kc_restored *out, char *why, size_t why_size)
{
	struct stat st;
	sigset_t old;
	int r = 0;

	if (why && why_size)
		why[0] = '\0';
	if (out)
		out->n = out->pid = 0;
	enter_table(&old);
	if (!atomic_load(&jopen)) {
		r = rj_locate(&jloc);
		if (r == -EINVAL && why && why_size)
			snprintf(why, why_size, RJ_ENV " must be an absolute file name");
		if (r == -ENOENT)
			r = 0;	/* no home for a journal: none was ever written */
		/* No lock file and no journal: nothing was ever journaled here; create nothing. */
		else if (!r && (stat(jloc.lock, &st) == 0 || stat(jloc.file, &st) == 0))
			r = journal_open(out, why, why_size);
	}
	leave_table(&old);
	return r;
}

const char *kc_journal_file(void)
{
	return jloc.file;
}

int kc_journal_release(void)
{
	int n, r = 0;
	sigset_t old;

	enter_table(&old);
	n = atomic_load(&nsettings);
	for (int i = 0; i < n; i++)
		if (mine(&settings[i]))
			r = -EBUSY;
	if (!r) {
		atomic_store(&nsettings, 0);
		atomic_store(&jopen, 0);
		rj_unlock_run(&jloc);
	}
	leave_table(&old);
	return r;
}

long kc_map_count_raise(long want)
{
	long cur = 65530;
	FILE *f = fopen("/proc/sys/vm/max_map_count", "re");
	if (f) {
		if (fscanf(f, "%ld", &cur) != 1)
			cur = 65530;
		fclose(f);
	}
	if (cur >= want || kc_setting_set("/proc/sys/vm/max_map_count", want))
		return cur;
	return want;
}
