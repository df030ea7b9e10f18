/* journal.h - the restore journal: originals of changed kernel settings kept on disk, so that
 * a run killed before it could restore them (SIGKILL, crash, OOM kill) is undone later. */
#ifndef MEMVIRT_BENCH_JOURNAL_H
#define MEMVIRT_BENCH_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The file (text, one record a line, each line ends with '\n'):
 *
 *   memvirt-restore-journal 1
 *   <pid> <path> <original value>
 *   ...
 *   end <number of entries>
 *
 * <pid> is the process that changed the setting and will restore it, <path>
 * an absolute path without blanks, the value the rest of the line (printable
 * ASCII, 1..63 bytes).  Entries are listed in the order they were first
 * changed.  The file is replaced whole (temp file, fsync, rename, fsync of the
 * directory), so a reader sees the old or the new version, never a mix.
 *
 * Where it lives: $MEMVIRT_JOURNAL (an absolute file name) if set; else
 * /var/lib/memvirt/restore.journal for root, $XDG_STATE_HOME/memvirt/ or
 * ~/.local/state/memvirt/restore.journal for others.
 *
 * Which paths an entry may name: the knobs KC_KSM_DIR/<name> and
 * /proc/sys/vm/max_map_count; with $MEMVIRT_JOURNAL set also regular files
 * (not symlinks) of our own in the journal's directory, not named like the
 * journal (tests use that).  The journal itself must be a regular file owned
 * by us and writable by nobody else, or it is refused.
 *
 * Two locks, both next to the journal:
 *   - the run lock, flock() on "<journal>.lock": taken by the first process
 *     of a run that changes settings, held until it exits and inherited by
 *     its fork()ed children (they are the same run).  Another run finds it
 *     taken (-EBUSY); the file holds the pid of the run that took it.  Once
 *     it is free, every entry left in the journal is stale: its run is gone.
 *   - the write lock, flock() on the journal's directory, taken around each
 *     read-modify-write of the file by the processes of one run.
 *
 * Unless said otherwise functions return 0 or -errno, never print, and are
 * async-signal-safe (system calls and hand-made string code only).
 */

#define RJ_VERSION_TAG	"memvirt-restore-journal 1"
#define RJ_MAX_ENTRIES	32
#define RJ_PATH_MAX	128
#define RJ_VALUE_MAX	64
#define RJ_ENV		"MEMVIRT_JOURNAL"

struct rj_entry {
	int pid;			/* the process that restores it */
	char path[RJ_PATH_MAX];
	char value[RJ_VALUE_MAX];	/* the original content, normalized */
};

struct rj_loc {
	char file[256];		/* the journal */
	char dir[256];		/* its directory */
	char lock[264];		/* file + ".lock" */
	char tmp[264];		/* file + ".tmp" */
	bool overridden;	/* location from $MEMVIRT_JOURNAL */
	int lock_fd;		/* run lock held through it, or -1 */
};

/* Fill loc from the environment and the effective uid; creates nothing. Not
 * async-signal-safe (getenv). -ENOENT without a home, -ENAMETOOLONG. */
int rj_locate(struct rj_loc *loc);

/* Create the directory (0700) and take the run lock without waiting; writes
 * our pid into the lock file. -EBUSY with *holder the pid found in the lock
 * file (0 if unreadable) when another run holds it. */
int rj_lock_run(struct rj_loc *loc, int *holder);
void rj_unlock_run(struct rj_loc *loc);

/* The write lock: returns a descriptor of the directory, locked, for
 * rj_store(); rj_end() unlocks and closes it. */
int rj_begin(const struct rj_loc *loc);
void rj_end(int dir_fd);

/*
 * Read and check the whole journal into e[max].  Returns the number of
 * entries (0 if there is no journal), -EBADMSG for a malformed file or
 * -EPERM for an entry naming a path outside the allowed set or a journal not
 * safely ours (nothing is returned then), -errno otherwise.  why (may be
 * NULL) receives one reason per bad line, "line 3: ...; line 5: ...".
 */
int rj_load(const struct rj_loc *loc, struct rj_entry *e, int max, char *why, size_t why_size);

/* Replace the journal by e[n], durably; n == 0 removes it. Call between
 * rj_begin() and rj_end() with the descriptor rj_begin() returned. */
int rj_store(const struct rj_loc *loc, int dir_fd, const struct rj_entry *e, int n);

/*
 * Merge our entries into the journal, under the write lock: entries of other
 * processes stay as they are, ours (pid == getpid()) stay where they are if
 * still in own[n_own] and go otherwise, the rest of own[] is added last.
 */
int rj_sync(const struct rj_loc *loc, const struct rj_entry *own, int n_own);

/*
 * Under the write lock, take over the entries of processes that are gone
 * (every entry, whoever wrote it, if `all`: a journal whose run is gone): at
 * most max of them are copied to taken[] (with the pid that wrote them) and
 * relabelled as ours in the journal.  Returns how many, or rj_load()'s error.
 */
int rj_take_over(const struct rj_loc *loc, bool all, struct rj_entry *taken, int max, char *why,
		 size_t why_size);

/* Can an entry hold this path and value (format only: no blanks in the path,
 * printable value of 1..RJ_VALUE_MAX-1 bytes)? */
bool rj_entry_ok(const char *path, const char *value);

/* May a journal entry at loc name path (see above)? */
bool rj_path_allowed(const struct rj_loc *loc, const char *path);

/* Does process pid exist (a zombie counts)? */
bool rj_pid_alive(int pid);

#endif
