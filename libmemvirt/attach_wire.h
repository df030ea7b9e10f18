/* attach_wire.h - the agent protocol between a VMM (mv_host_attach()) and memvirtd. */
#ifndef MV_ATTACH_WIRE_H
#define MV_ATTACH_WIRE_H

#include <memvirt/balloon.h>
#include <memvirt/host.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * A stream of messages over a SOCK_STREAM unix socket. Every integer is little-endian;
 * every message is a 12-byte header and a payload of exactly the size its type has:
 *
 *   u32 magic "MVAG" (0x4741564d)   u16 version (1)   u16 type   u32 payload length
 *
 * A reader refuses (and ends the connection on) a wrong magic or version, a payload
 * larger than MV_AW_MAX_PAYLOAD, a length that is not its type's, an unknown type, and
 * names that are not NUL-terminated within their field. Sizes (bytes) and counters are
 * u64; the scanner share travels as u64 micro-cores.
 *
 *   type               dir    payload
 *   HELLO        1    a->d   u32 pid, char client[80]
 *   WELCOME      2    d->a   u32 period_ms (how often polls will come)
 *   POLL         3    d->a   u64 seq
 *   REPORT       4    a->d   u64 seq (of the poll answered), host scanner block, u32 nr_vms
 *                            (<= MV_AW_MAX_VMS), u32 0, nr_vms VM blocks
 *   SET_TARGET   5    d->a   char name[64], u64 target_bytes
 *   SET_SHARE    6    d->a   u64 micro-cores per scanner worker (> 0, <= 1e6)
 *   REFUSE       7    both   u16 type refused, u16 0, i32 -errno, char name[64], char why[96]
 *
 *   scanner block: u8 valid, 7 bytes 0, the 17 u64 of struct mv_scan_stats in header order
 *   VM block:      char name[64], char domain[80] (its trust domain, may be empty),
 *                  u64 ram_bytes, u8 has_balloon, u8 scanner_valid,
 *                  u8 stalled, u8 needs_reset, u32 stats_valid, then u64: target, actual,
 *                  held, released, inflated, deflated, reported, hinted, hint_discarded,
 *                  stalled_ns, stall_gap, guest_errors, features, stats_age_ns,
 *                  stats[16]; then the scanner block of the VM
 *
 * A REPORT's blocks carry exactly the fields of struct mv_balloon_info and
 * struct mv_scan_stats listed above (status is not sent). A VM's scanner counters are
 * mv_vm_stats() (pages_sharing is a domain figure, 0 there); the host block is
 * mv_host_stats().
 */

#define MV_AW_MAGIC       0x4741564du
#define MV_AW_VERSION     1
#define MV_AW_HDR         12
#define MV_AW_NAME        64
#define MV_AW_DOMAIN      80
#define MV_AW_CLIENT      80
#define MV_AW_WHY         96
#define MV_AW_MAX_VMS     64
#define MV_AW_MAX_PAYLOAD (1u << 16)

enum mv__aw_type {
	MV_AW_HELLO = 1, MV_AW_WELCOME = 2, MV_AW_POLL = 3, MV_AW_REPORT = 4,
	MV_AW_SET_TARGET = 5, MV_AW_SET_SHARE = 6, MV_AW_REFUSE = 7,
};

struct mv__aw_vm {
	char name[MV_AW_NAME];
	char domain[MV_AW_DOMAIN];
	uint64_t ram_bytes;
	bool has_balloon;
	struct mv_balloon_info balloon;
	bool scanner_valid;
	struct mv_scan_stats scanner;
};

/* One decoded message. For REPORT, vms points into the caller's array. */
struct mv__aw_msg {
	uint16_t type;
	union {
		struct { uint32_t pid; char client[MV_AW_CLIENT]; } hello;
		struct { uint32_t period_ms; } welcome;
		struct { uint64_t seq; } poll;
		struct {
			uint64_t seq;
			bool scanner_valid;
			struct mv_scan_stats scanner;
			uint32_t nr_vms;
		} report;
		struct { char name[MV_AW_NAME]; uint64_t target_bytes; } set_target;
		struct { uint64_t micro_cores; } set_share;
		struct { uint16_t type; int32_t err; char name[MV_AW_NAME]; char why[MV_AW_WHY]; } refuse;
	} u;
	struct mv__aw_vm *vms;             /* REPORT: u.report.nr_vms entries */
};

/*
 * Encode m (header included) into buf of cap bytes; for REPORT, m->vms holds
 * m->u.report.nr_vms entries. Returns the size written, or -EINVAL (bad type, too many
 * VMs, a name that does not fit) / -ENOSPC (cap too small).
 */
long mv__aw_encode(const struct mv__aw_msg *m, uint8_t *buf, size_t cap);

/*
 * Decode one message from buf (len bytes available). Returns the size it took (> 0),
 * 0 when buf does not yet hold a whole message, or -EPROTO (any check above failed;
 * the connection must end). For REPORT, vms (cap MV_AW_MAX_VMS entries) receives the VMs.
 */
long mv__aw_decode(const uint8_t *buf, size_t len, struct mv__aw_msg *m,
                   struct mv__aw_vm *vms);

/* A connection's receive side: bytes read so far, at most one message plus a header. */
struct mv__aw_rx {
	uint8_t buf[MV_AW_HDR + MV_AW_MAX_PAYLOAD];
	size_t len;
};

/*
 * Read what fd has (non-blocking) into rx. Returns 0 (more may come later), -ECONNRESET
 * (end of stream), or -errno of recv.
 */
int mv__aw_read(int fd, struct mv__aw_rx *rx);
/* Take the next whole message out of rx: as mv__aw_decode(). */
long mv__aw_next(struct mv__aw_rx *rx, struct mv__aw_msg *m, struct mv__aw_vm *vms);
/* Encode and send m whole (MSG_NOSIGNAL; waits at most timeout_ms for room, then
 * -ETIMEDOUT: a peer that does not read is dropped, never waited for). 0 or -errno. */
int mv__aw_send(int fd, const struct mv__aw_msg *m, unsigned timeout_ms);

#endif
