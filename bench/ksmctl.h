/* ksmctl.h - kernel-knob (KSM, sysctl) settings that restore themselves (ksmctl.c) and
 * process measurements for `bench scan --vs-ksm` (ksmstat.c). */
#ifndef MEMVIRT_BENCH_KSMCTL_H
#define MEMVIRT_BENCH_KSMCTL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Unless said otherwise every function returns 0 on success or -errno.
 * Nothing here prints, exits or aborts.
 */

#define KC_KSM_DIR "/sys/kernel/mm/ksm"

/*
 * Kernel-wide settings (house rule: whatever is changed is restored).
 *
 * kc_setting_set() remembers the original content of a sysctl/sysfs file the
 * first time this process changes that path (up to KC_MAX_SETTINGS paths),
 * writes it to the restore journal (journal.h) and only then writes `value`.
 * The path must be one the journal may name (-EPERM otherwise) and writable
 * (else -errno from access(), and nothing is journaled).  The first call
 * takes the journal's run lock (-EBUSY while another run holds it) and
 * applies a journal left behind by a run that is gone, as kc_journal_apply()
 * does; it also installs handlers for SIGINT, SIGTERM, SIGHUP, SIGPIPE (a
 * closed pipe: `memvirt density | head`) and SIGQUIT (not for a signal that
 * is ignored at that time) and an atexit() handler; they call
 * kc_settings_restore() and, for a signal, re-raise it with the default
 * disposition so the process still dies of it.  A handler installed later by
 * the caller replaces ours: it must then call kc_settings_restore() itself.
 * Each process restores only what it changed itself: a fork()ed child shares
 * the run lock and the handlers, and restores the settings it changes, never
 * the ones it inherited.  The original is remembered even if the write fails;
 * a refused write that changed nothing leaves nothing to restore.  Paths are
 * compared as strings: name KSM knobs exactly as KC_KSM_DIR "/<knob>".
 *
 * kc_settings_restore() first takes over journal entries of processes of this
 * run that are gone (a child killed by SIGKILL), then writes every changed
 * original back, in reverse order of first change, and removes what it
 * restored from the journal (the journal goes once empty); it is
 * async-signal-safe and idempotent.  KSM needs this order:
 *   1. if `run` was changed and was not 1, or a knob that the kernel refuses to
 *      change while pages are shared (merge_across_nodes, max_page_sharing)
 *      differs from its original: write run=2, which unmerges every KSM page
 *      (including KSM-placed zero pages) synchronously and keeps ksmd idle,
 *      then wait until pages_shared, pages_sharing and ksm_zero_pages are 0;
 *   2. restore the other knobs, in that reverse order;
 *   3. write `run` last (its original, or the value found before step 1).
 * So when run was originally 0, afterwards nothing stays merged and every knob
 * equals its original.  Returns the first error met, but tries every entry;
 * a later call retries the entries that failed (they stay in the journal).
 */
#define KC_MAX_SETTINGS 32

int kc_setting_set(const char *path, long value);
int kc_settings_restore(void);

/*
 * Apply the restore journal left behind by a run that ended without
 * restoring (killed, crashed), as `memvirt restore` does: every entry is
 * checked first (nothing is written if one is bad), then restored as
 * kc_settings_restore() does and removed from the journal.  Takes the run
 * lock and keeps it, as a run about to change settings needs; creates nothing
 * when no run ever journaled here.  Returns the number of entries applied
 * (0: nothing to restore; also when this process already holds the journal),
 * or -EBUSY (another run that is alive holds it), -EBADMSG (malformed
 * journal), -EPERM (an entry names a path outside the allowed set, or the
 * file is not safely ours), or another -errno; `why` (why_size bytes, may be
 * NULL) then says what, line by line.  out (may be NULL) lists the entries
 * applied; after a failed restore out->e[i].restored tells which made it.
 */
struct kc_restored {
	int pid;			/* the process that left the first entry */
	int n;				/* entries in e[] */
	struct {
		char path[128];
		char found[64];		/* content before (normalized), "?" if unreadable */
		char orig[64];		/* content written back */
		int restored;		/* 1 if the file now holds orig */
	} e[KC_MAX_SETTINGS];
};
int kc_journal_apply(struct kc_restored *out, char *why, size_t why_size);

/* The journal's file name as this process uses it (located on first use), or "". */
const char *kc_journal_file(void);

/* Release the run lock and forget the journal's location and every remembered
 * setting, so the next call locates them again; -EBUSY while this process has
 * settings it has not restored. */
int kc_journal_release(void);

/* Raise vm.max_map_count to at least `want` through kc_setting_set() (so it is restored
 * on exit). Returns the limit in force afterwards (the old one if raising failed). */
long kc_map_count_raise(long want);

/* KSM sysfs. */
int kc_ksm_available(void);			/* 1 if KC_KSM_DIR/run is writable, else 0 */
int kc_ksm_read(const char *knob, long *out);	/* numeric knob or counter; -EINVAL if not numeric */
int kc_ksmd_pid(void);				/* pid of the ksmd kthread, or -ENOENT */

/* Per-task figures; pid 0 means the calling process. */
int kc_task_cpu_ns(int pid, uint64_t *out);	/* utime+stime, tick granularity */
int kc_pss_kib(pid_t pid, long *out);		/* Pss: of /proc/<pid>/smaps_rollup */
int kc_rss_kib(pid_t pid, long *out);		/* Rss: of /proc/<pid>/smaps_rollup */
int kc_map_count(pid_t pid, long *out);		/* lines of /proc/<pid>/maps */

/*
 * With KSM running (run=1, set by the caller; -EINVAL otherwise), poll every
 * 50 ms until the freed pages (pages_sharing + ksm_zero_pages) have not grown
 * during 2 consecutive full_scans increments, and at least 2 full scans have
 * completed since the call.  Convergence is dated at the poll that first saw a
 * full_scans increment with the count already at its final value; *wall_s and
 * *ksmd_cpu_ns are measured from the call to that poll (the 2 confirming scans
 * are not included: kc_ksm_recheck_cpu() measures what a pass costs).
 * *freed_pages is the count at the last poll.  On timeout returns -ETIMEDOUT
 * with the figures up to then.  progress (may be NULL) is called about every
 * second.  Any output pointer may be NULL.  Writing run=2 meanwhile resets
 * full_scans to 0 and makes this time out.
 */
int kc_ksm_wait_converged(double timeout_s, double *wall_s, uint64_t *ksmd_cpu_ns, long *freed_pages,
			  void (*progress)(void *opaque, long freed, double elapsed), void *opaque);

/*
 * After convergence: wait for one full_scans increment to align, then measure
 * ksmd CPU over the next 2 full passes (5 ms polls); *cpu_s_per_pass is half
 * of it.  -ETIMEDOUT if the 3 increments take longer than timeout_s; -EINVAL
 * unless run=1.  Note: with smart_scan=1 ksmd skips pages that never merge on
 * a growing number of passes, so consecutive passes alternate between full
 * and cheap ones (here 0.2 s vs 0.02 s) and the figure depends on where the
 * 2 passes fall; set smart_scan=0 (through kc_setting_set) for a steady cost.
 * Figures have the 10 ms tick granularity of /proc/<pid>/stat.
 */
int kc_ksm_recheck_cpu(double timeout_s, double *cpu_s_per_pass);

/* Internal, shared by ksmctl.c and ksmstat.c; async-signal-safe. Read at most size-1 bytes
 * of a file, NUL-terminated: the length or -errno. A file holding one decimal number. */
ssize_t kc__read_small(const char *path, char *buf, size_t size);
int kc__read_long(const char *path, long *out);
void kc__sleep_ns(long ns);

#endif
