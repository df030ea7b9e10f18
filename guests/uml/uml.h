/* uml.h - boot a real Linux guest (User-mode Linux) as a child process and run commands in it. */
#ifndef MV_UML_H
#define MV_UML_H

#include <stddef.h>
#include <sys/types.h>

/*
 * The guest is Debian's /usr/bin/linux.uml with a read-only hostfs root built by `make`
 * (build/uml-root: busybox, guests/uml/init, memtool, virtio_balloon.ko). Its process tree:
 *
 *   caller -> unshare --pid --kill-child -> timeout -s KILL (pid 1 of a new pid namespace)
 *          -> setarch -R linux.uml (the UML kernel; it calls setsid) -> its helper processes
 *
 * The pid namespace is what bounds the guest's life: whichever of these dies - the caller's
 * thread (PR_SET_PDEATHSIG), unshare, timeout when timeout_s expires, or mv_uml_kill() - the
 * kernel kills every process in the namespace; UML's helpers cannot be orphaned.
 * Needs root (CAP_SYS_ADMIN for the namespace) and ptrace.
 *
 * Threads: one guest handle is used by one thread at a time; distinct guests are independent.
 */

struct mv_uml;

struct mv_uml_opts {
	unsigned mem_mib;            /* guest RAM in MiB; 0: 128 */
	const char *balloon_socket;  /* NULL: no balloon; else a listening vhost-user socket:
	                              * virtio_uml.device=SOCK:5, and start fails unless the guest's
	                              * virtio_balloon driver bound to it */
	const char *cmdline_extra;   /* appended to the kernel command line (spaces split), or NULL */
	unsigned timeout_s;          /* whole-life bound: the guest is SIGKILLed after it; 0: 600 */
	unsigned boot_timeout_ms;    /* wait for the init's ready line; 0: 20000 */
	const char *root;            /* root directory; NULL: $MV_UML_ROOT, else the build's root */
	char *diag;                  /* optional, caller-owned: on a failed start, why and the */
	size_t diag_cap;             /* console's last lines (NUL-terminated, truncated to diag_cap) */
};

/* NULL if a guest can be started here, else a static string saying what is missing. */
const char *mv_uml_unavailable(void);

/*
 * Boot a guest and wait for its init's ready line (o NULL: defaults). On success *out owns
 * the guest: release it with mv_uml_kill(). The guest dies with the calling thread.
 * Returns 0 or -errno: -ENOENT (no kernel, root or socket), -ENOTSOCK,
 * -ECONNREFUSED (nothing listens on balloon_socket, checked before booting; a backend that
 * accepts but never answers blocks the boot and shows as -ETIMEDOUT), -ENODEV (the balloon
 * did not bind), -EIO (the guest died while booting), -ETIMEDOUT, -EINVAL.
 */
int mv_uml_start(const struct mv_uml_opts *o, struct mv_uml **out);

/*
 * Run `cmd` (one line of busybox sh, at most MV_UML_CMD_MAX bytes) in the guest, stdin
 * /dev/null, in its own process group. Its console output (stdout and stderr) goes to out,
 * NUL-terminated and truncated to cap (out may be NULL with cap 0); output beyond cap is read
 * and dropped. Returns the exit status (0-255; 128+N if killed by signal N), or -ETIMEDOUT
 * if it outlived timeout_ms (0: 10000; the guest then SIGKILLs its process group and stays
 * usable), -EPIPE if the guest is gone, -EINVAL / -E2BIG for a bad command.
 * Output of background jobs that arrives between commands is dropped.
 */
#define MV_UML_CMD_MAX 2048
int mv_uml_run(struct mv_uml *g, const char *cmd, char *out, size_t cap, unsigned timeout_ms);

/* Host pid of the UML kernel's main process (its /proc/PID/maps shows guest RAM). */
pid_t mv_uml_pid(const struct mv_uml *g);

/*
 * SIGKILL everything the guest consists of, reap it, remove its temporary files, free g.
 * Returns 0 once no process of the guest is left, -EBUSY if one still is. NULL is a no-op.
 */
int mv_uml_kill(struct mv_uml *g);

#endif
