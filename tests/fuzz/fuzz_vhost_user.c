/* fuzz_vhost_user.c - libFuzzer harness: a hostile vhost-user frontend against the
 * balloon's vhost-user backend (mv_vhost_user_*).
 *
 * One host and one VM are made once per process; each input gets a fresh connection (a
 * socketpair, mv_vhost_user_new on one end) and plays the frontend on the other,
 * dispatching the backend as it goes, in the same thread. At the end the backend is
 * freed and every descriptor the input made is closed: the process must then hold
 * exactly the descriptors and memfd mappings it held before the input.
 *
 * An input is a program. Byte 0 configures the backend: bits 0-5 the balloon features
 * offered, bit 6 in-band notifications, bit 7 queue_max 16 instead of 256. Then
 * operations, an opcode byte (mod OP_NR) and its operands, little-endian; a program that
 * ends inside an operand reads zeros.
 *
 *   0 MSG    a message (below), then one dispatch unless its flags byte has bit 5
 *   1 SPLIT  cut:u16, then a message as for MSG, sent in two pieces (the descriptors with
 *            the first) with a dispatch after each
 *   2 DISPATCH
 *   3 KICK   r:u8            8 bytes (or 1 to a pipe) into resource r's frontend end
 *   4 MEMW   r:u8 off:u32 n:u8 bytes[n]    into memfd resource r (pwrite)
 *   5 PUSH   r:u8 q:u8 num:u8 n:u8 then n x pfn:u16: an inflate/deflate-style request of
 *            n PFNs on ring q of size 1 << (num & 7), laid out in memfd r as the seeds set
 *            rings up (ring q at FV_RING(q): desc, avail at +0x400, used at +0x800; PFN
 *            lists from FV_LISTS), without a kick
 *   6 ADMIN  what:u8 arg:u32  (target, stats request, hint start/stop, info, config read)
 *   7 DRAIN  read every reply and backend-channel message waiting, empty every call fd
 *   8 CLOSE  how:u8  shut the connection down for writing (even) or close it (odd)
 *   9 DROP   r:u8  close both ends of resource r
 *
 * A message: req:u8 (0xf0 and above: a u32 follows, else req mod 40), fl:u8 (bit 0
 * NEED_REPLY, bit 5 no dispatch, bit 6 a u32 size field follows: the header lies about
 * its size, bit 7 raw header flags u32 follow, else version 1), len:u16 (mod 600) and
 * that many payload bytes, then nfd:u8 (mod 16: up to 15 descriptors, past the 8 a
 * message may carry) and per descriptor kind:u8, mod 8:
 *   0 a new memfd of 1 + (u8 mod 64) pages (kind bit 3: sealed against shrinking)
 *   1 a new eventfd (kind bit 3: blocking)
 *   2 a new pipe, its read end sent     3 a new pipe, its write end sent (kind bit 3: our
 *                                          read end closed at once)
 *   4 a new socketpair, one end sent    5 resource u8 (mod count) sent again
 *   6 /dev/null                         7 the frontend's own end of the connection
 * Each new descriptor is a resource (at most FV_MAX_RES per input), referred to by its
 * index in order of creation.
 *
 * Checks: after every operation mv_vhost_user_info() and mv_balloon_info() stay
 * consistent; the backend never raises SIGPIPE; dispatch never blocks (libFuzzer's
 * -timeout, and SIGALRM in the replay); nothing leaks. tests/fuzz/test_fuzz_vhost_user.c
 * includes this file (MV_FUZZ_NO_MAIN) to replay the seeds (tests/fuzz/corpus-vhost-user,
 * written by gen_corpus_vhost_user.py) and every regression in `make test`.
 */
#include "fuzz_input.h"
#include <memvirt/memvirt.h>
#include <memvirt/balloon.h>
#include <memvirt/vhost_user.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <urcu-bp.h>

#define FV_MAX_RES    40
#define FV_MAX_PAGES  64
#define FV_PG         4096u
#define FV_RING(q)    (0x1000ull + (uint64_t)(q) * 0x1000ull)
#define FV_LISTS      0x8000ull       /* 8 PFN lists of up to 128 entries */
#define FV_PF_OFFERED 0x6228ull       /* REPLY_ACK, BACKEND_REQ, CONFIG, RESET_DEVICE, INBAND */
#define FV_V1         (1ull << MV_VIRTIO_F_VERSION_1)

#ifdef MV_FUZZ_NO_MAIN
#define FV_FAIL(...) fail_msg(__VA_ARGS__)
#else
#define FV_FAIL(...) do { fprintf(stderr, "fuzz_vhost_user: " __VA_ARGS__); \
	fprintf(stderr, "\n"); abort(); } while (0)
#endif
#define FV_CHECK(c) do { if (!(c)) FV_FAIL("check failed: %s (line %d)", #c, __LINE__); } while (0)

enum { OP_MSG, OP_SPLIT, OP_DISPATCH, OP_KICK, OP_MEMW, OP_PUSH, OP_ADMIN, OP_DRAIN, OP_CLOSE,
       OP_DROP, OP_NR };
enum { RES_MEMFD, RES_EVENTFD, RES_PIPE, RES_SOCK, RES_NULL };

/* A descriptor the input made: `sent` went to the backend, `ours` is the frontend's
 * end (the same for a memfd or an eventfd). -1 when closed. */
struct fv_res {
	int kind, sent, ours;
	uint64_t size;                /* memfd bytes */
};

static struct fv {
	struct mv_host *h;
	struct mv_vm *vm;
	struct mv_vhost_user *vu;
	int sock;                     /* the frontend's end; -1 once closed */
	bool over;                    /* dispatch ended the connection */
	struct fv_res res[FV_MAX_RES];
	unsigned nres;
	uint16_t avail[5];
	unsigned lists;
	long fds0, maps0;
} V;

static volatile sig_atomic_t fv_in_backend;
#ifdef MV_FUZZ_NO_MAIN
static volatile sig_atomic_t fv_alarmed;
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- the process: descriptors and memfd mappings ---- */

static long fv_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	long n = 0;
	if (!d)
		return -1;
	for (struct dirent *e; (e = readdir(d));)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static long fv_count_maps(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	long n = 0;
	char line[512];
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		n += strstr(line, "/memfd:") != NULL;
	fclose(f);
	return n;
}

static void fv_on_pipe(int sig)
{
	if (fv_in_backend)
		FV_FAIL("the backend raised SIGPIPE");
}

/* ---- the backend ---- */

static void fv_check(void)
{
	struct mv_vhost_user_info i;
	struct mv_balloon_info b;
	FV_CHECK(mv_vhost_user_info(V.vu, &i) == 0);
	FV_CHECK(mv_balloon_info(mv_vhost_user_balloon(V.vu), &b) == 0);
	FV_CHECK(i.regions <= 8);
	FV_CHECK(i.ram_bytes <= 8ull * FV_MAX_PAGES * FV_PG);
	FV_CHECK(!i.regions == !i.ram_bytes);
	FV_CHECK(i.bad_messages <= i.messages);
	FV_CHECK((i.protocol_features & ~FV_PF_OFFERED) == 0);
	FV_CHECK(!i.running || (b.status & 0x04));
	FV_CHECK(b.held_bytes <= b.inflated_bytes && b.held_bytes % FV_PG == 0);
	FV_CHECK((b.features & ~(0x3full | FV_V1)) == 0);
	FV_CHECK(!b.needs_reset || (b.status & 0x40));
	FV_CHECK(mv_balloon_nr_queues(mv_vhost_user_balloon(V.vu)) <= 5);
}

#ifdef MV_FUZZ_NO_MAIN
static void fv_on_alarm(int sig)
{
	fv_alarmed = 1;
}
#endif

/* One dispatch; the connection is over after an error. Replayed without libFuzzer, a
 * dispatch that blocks is cut short by SIGALRM and fails. */
static void fv_dispatch(void)
{
	if (V.over)
		return;
#ifdef MV_FUZZ_NO_MAIN
	fv_alarmed = 0;
	alarm(5);
#endif
	fv_in_backend = 1;
	int r = mv_vhost_user_dispatch(V.vu);
	fv_in_backend = 0;
#ifdef MV_FUZZ_NO_MAIN
	alarm(0);
	if (fv_alarmed)
		FV_FAIL("mv_vhost_user_dispatch blocked");
#endif
	FV_CHECK(r == 0 || r == -ECONNRESET || r == -EPROTO);
	V.over = r < 0;
}

/* ---- resources ---- */

static struct fv_res *fv_res_new(int kind, int sent, int ours, uint64_t size)
{
	if (sent < 0 || V.nres == FV_MAX_RES) {
		if (sent >= 0)
			close(sent);
		if (ours >= 0 && ours != sent)
			close(ours);
		return NULL;
	}
	V.res[V.nres] = (struct fv_res){ kind, sent, ours, size };
	return &V.res[V.nres++];
}

static int fv_memfd(unsigned pages, bool sealed)
{
	int fd = memfd_create("fv-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -1;
	if (ftruncate(fd, (off_t)pages * FV_PG) ||
	    (sealed && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW))) {
		close(fd);
		return -1;
	}
	return fd;
}

/* A descriptor to attach, as the input says; -1 for none. */
static int fv_attach(struct fz_in *in)
{
	uint8_t kind = U8(in);
	int p[2] = { -1, -1 };
	struct fv_res *r = NULL;
	switch (kind & 7) {
	case 0: {
		unsigned pages = 1 + U8(in) % FV_MAX_PAGES;
		int fd = fv_memfd(pages, kind & 8);
		r = fv_res_new(RES_MEMFD, fd, fd, (uint64_t)pages * FV_PG);
		break;
	}
	case 1: {
		int fd = eventfd(0, EFD_CLOEXEC | (kind & 8 ? 0 : EFD_NONBLOCK));
		r = fv_res_new(RES_EVENTFD, fd, fd, 0);
		break;
	}
	case 2: case 3:
		if (pipe2(p, O_CLOEXEC | O_NONBLOCK))
			return -1;
		r = (kind & 7) == 2 ? fv_res_new(RES_PIPE, p[0], p[1], 0) : fv_res_new(RES_PIPE, p[1], p[0], 0);
		if (r && (kind & 7) == 3 && kind & 8)
			close(r->ours), r->ours = -1;
		break;
	case 4:
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, p))
			return -1;
		r = fv_res_new(RES_SOCK, p[0], p[1], 0);
		break;
	case 5: {
		uint8_t i = U8(in);
		return V.nres ? V.res[i % V.nres].sent : -1;
	}
	case 6:
		r = fv_res_new(RES_NULL, open("/dev/null", O_RDWR | O_CLOEXEC), -1, 0);
		break;
	default:
		return V.sock;
	}
	return r ? r->sent : -1;
}

static void fv_res_close(struct fv_res *r)
{
	if (r->ours >= 0 && r->ours != r->sent)
		close(r->ours);
	if (r->sent >= 0)
		close(r->sent);
	r->ours = r->sent = -1;
}

/* ---- the frontend ---- */

static void fv_send(const uint8_t *buf, size_t len, const int *fds, unsigned nfds)
{
	union { char b[CMSG_SPACE(16 * sizeof(int))]; struct cmsghdr align; } cm;
	struct iovec iov = { (void *)buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (V.sock < 0 || !len)
		return;
	if (nfds) {
		mh.msg_control = cm.b;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	if (sendmsg(V.sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		/* a backend that stopped reading: the message is lost, as a real one would be */
	}
}

/* Build a message from the input; *dispatch says whether one dispatch should follow. */
static size_t fv_message(struct fz_in *in, uint8_t *buf, int *fds, unsigned *nfds, bool *dispatch)
{
	uint32_t req = U8(in);
	req = req >= 0xf0 ? U32(in) : req % 40;
	uint8_t fl = U8(in);
	uint32_t flags = 1u | (fl & 1 ? 1u << 3 : 0);
	if (fl & 0x80)
		flags = U32(in);
	uint32_t lie = fl & 0x40 ? U32(in) : 0;
	size_t len = U16(in) % 600;
	for (size_t i = 0; i < len; i++)
		buf[12 + i] = U8(in);
	uint32_t size = fl & 0x40 ? lie : (uint32_t)len;
	memcpy(buf, &req, 4);
	memcpy(buf + 4, &flags, 4);
	memcpy(buf + 8, &size, 4);
	unsigned n = U8(in) % 16;
	*nfds = 0;
	for (unsigned i = 0; i < n; i++) {
		int fd = fv_attach(in);
		if (fd >= 0)
			fds[(*nfds)++] = fd;
	}
	*dispatch = !(fl & 0x20);
	return 12 + len;
}

static void op_msg(struct fz_in *in, bool split)
{
	uint8_t buf[12 + 600];
	int fds[16];
	unsigned nfds;
	bool dispatch;
	size_t cut = split ? U16(in) : 0;
	size_t len = fv_message(in, buf, fds, &nfds, &dispatch);
	if (!split) {
		fv_send(buf, len, fds, nfds);
		if (dispatch)
			fv_dispatch();
		return;
	}
	cut = cut % len;
	fv_send(buf, cut, fds, nfds);
	fv_dispatch();
	fv_send(buf + cut, len - cut, cut ? NULL : fds, cut ? 0 : nfds);
	fv_dispatch();
}

static struct fv_res *fv_pick(struct fz_in *in)
{
	uint8_t i = U8(in);
	return V.nres ? &V.res[i % V.nres] : NULL;
}

static void op_kick(struct fz_in *in)
{
	struct fv_res *r = fv_pick(in);
	uint64_t one = 1;
	if (!r || r->ours < 0)
		return;
	if (r->kind == RES_SOCK)
		send(r->ours, &one, 8, MSG_DONTWAIT | MSG_NOSIGNAL);
	else if (r->kind == RES_EVENTFD || r->kind == RES_PIPE)
		if (write(r->ours, &one, r->kind == RES_PIPE ? 1 : 8) < 0) {
			/* full, or nobody reads: the frontend's own problem */
		}
}

static void fv_pwrite(struct fv_res *r, uint64_t off, const void *p, size_t n)
{
	if (r->kind != RES_MEMFD || r->sent < 0 || off > r->size || n > r->size - off)
		return;
	if (pwrite(r->sent, p, n, (off_t)off) < 0) {
		/* sealed against writes, or gone: nothing written */
	}
}

static void op_memw(struct fz_in *in)
{
	struct fv_res *r = fv_pick(in);
	uint64_t off = U32(in) % (FV_MAX_PAGES * FV_PG);
	uint8_t n = U8(in), buf[256];
	for (unsigned i = 0; i < n; i++)
		buf[i] = U8(in);
	if (r)
		fv_pwrite(r, off, buf, n);
}

/* A request of PFNs on ring q, written the way a driver would (no kick). */
static void op_push(struct fz_in *in)
{
	struct fv_res *r = fv_pick(in);
	unsigned q = U8(in) % 5, num = 1u << (U8(in) & 7), n = U8(in) % 128;
	uint32_t pfn[128];
	for (unsigned i = 0; i < n; i++)
		pfn[i] = U16(in);
	if (!r)
		return;
	uint64_t list = FV_LISTS + (uint64_t)(V.lists++ % 8) * 0x200, ring = FV_RING(q);
	uint16_t idx = V.avail[q] % num, flags = 0, next = 0;
	uint32_t len = 4 * n;
	fv_pwrite(r, list, pfn, len);
	fv_pwrite(r, ring + 16ull * idx, &list, 8);
	fv_pwrite(r, ring + 16ull * idx + 8, &len, 4);
	fv_pwrite(r, ring + 16ull * idx + 12, &flags, 2);
	fv_pwrite(r, ring + 16ull * idx + 14, &next, 2);
	fv_pwrite(r, ring + 0x400 + 4 + 2ull * idx, &idx, 2);
	V.avail[q]++;
	fv_pwrite(r, ring + 0x400 + 2, &V.avail[q], 2);
}

static void op_admin(struct fz_in *in)
{
	struct mv_balloon *b = mv_vhost_user_balloon(V.vu);
	unsigned what = U8(in) % 6;
	uint32_t arg = U32(in);
	uint8_t cfg[16];
	fv_in_backend = 1;
	switch (what) {
	case 0: mv_balloon_set_target(b, (uint64_t)(arg % 4096) * FV_PG); break;
	case 1: mv_balloon_stats_request(b); break;
	case 2: mv_balloon_hint_start(b); break;
	case 3: mv_balloon_hint_stop(b); break;
	case 4: mv_balloon_config_read(b, arg % 16, cfg, 16 - arg % 16); break;
	default: break; /* info: checked after every operation */
	}
	fv_in_backend = 0;
}

/* Read what waits for the frontend: replies, backend-channel messages, calls. */
static void op_drain(void)
{
	uint8_t buf[4096];
	while (V.sock >= 0 && recv(V.sock, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
	for (unsigned i = 0; i < V.nres; i++) {
		struct fv_res *r = &V.res[i];
		if (r->ours >= 0 && r->kind == RES_SOCK)
			while (recv(r->ours, buf, sizeof(buf), MSG_DONTWAIT) > 0)
				;
		else if (r->ours >= 0 && (r->kind == RES_PIPE || r->kind == RES_EVENTFD) &&
		         (r->kind == RES_PIPE || fcntl(r->ours, F_GETFL) & O_NONBLOCK))
			while (read(r->ours, buf, sizeof(buf)) > 0)
				;
	}
}

static void op_close(struct fz_in *in)
{
	uint8_t how = U8(in);
	if (V.sock < 0)
		return;
	if (how & 1) {
		close(V.sock);
		V.sock = -1;
	} else {
		shutdown(V.sock, SHUT_WR);
	}
}

static void fv_op(struct fz_in *in)
{
	switch (U8(in) % OP_NR) {
	case OP_MSG: op_msg(in, false); break;
	case OP_SPLIT: op_msg(in, true); break;
	case OP_DISPATCH: fv_dispatch(); break;
	case OP_KICK: op_kick(in); break;
	case OP_MEMW: op_memw(in); break;
	case OP_PUSH: op_push(in); break;
	case OP_ADMIN: op_admin(in); break;
	case OP_DRAIN: op_drain(); break;
	case OP_CLOSE: op_close(in); break;
	case OP_DROP: {
		struct fv_res *r = fv_pick(in);
		if (r)
			fv_res_close(r);
		break;
	}
	}
}

/* What the input did (MV_FUZZ_VERBOSE=1: for checking seeds). */
static void fv_print(void)
{
	struct mv_vhost_user_info i;
	struct mv_balloon_info b;
	mv_vhost_user_info(V.vu, &i);
	mv_balloon_info(mv_vhost_user_balloon(V.vu), &b);
	fprintf(stderr, "%s running %d regions %u ram %llu messages %llu refused %llu kicks %llu "
	        "calls %llu protocol %#llx | status %#x features %#llx inflated %llu held %llu "
	        "released %llu errors %llu\n", V.over ? "ended" : "open", i.running, i.regions,
	        (unsigned long long)i.ram_bytes, (unsigned long long)i.messages,
	        (unsigned long long)i.bad_messages, (unsigned long long)i.kicks,
	        (unsigned long long)i.calls, (unsigned long long)i.protocol_features, b.status,
	        (unsigned long long)b.features, (unsigned long long)b.inflated_bytes,
	        (unsigned long long)b.held_bytes, (unsigned long long)b.released_bytes,
	        (unsigned long long)b.guest_errors);
}

/* ---- lifetime ---- */

/* 0, or -1 when this machine cannot run a memvirt host (the caller skips). */
static int fv_init(void)
{
	static int state; /* 0 not tried, 1 ready, -1 failed */
	if (state)
		return state > 0 ? 0 : -1;
	state = -1;
	struct mv_host_config hc;
	mv_host_config_init(&hc);
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "fuzz-vhost-user";
	if (mv_host_new(&hc, &V.h) || mv_vm_new(V.h, &vc, &V.vm))
		return -1;
	struct sigaction sa = { .sa_handler = fv_on_pipe };
	sigaction(SIGPIPE, &sa, NULL);
#ifdef MV_FUZZ_NO_MAIN
	struct sigaction al = { .sa_handler = fv_on_alarm }; /* no SA_RESTART: cuts a wait short */
	sigaction(SIGALRM, &al, NULL);
#endif
	state = 1;
	return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	if (fv_init()) {
		fprintf(stderr, "fuzz_vhost_user: no memvirt host on this machine\n");
		abort();
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (fv_init())
		FV_FAIL("no memvirt host");
	struct fz_in in = { data, size };
	uint8_t conf = U8(&in);
	V.fds0 = fv_count_fds();
	V.maps0 = fv_count_maps();
	int sv[2];
	FV_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	struct mv_vhost_user_config c;
	mv_vhost_user_config_init(&c);
	c.balloon.features = conf & 0x3f;
	c.balloon.queue_max = conf & 0x80 ? 16 : 256;
	c.inband_notifications = conf & 0x40;
	FV_CHECK(mv_vhost_user_new(V.vm, sv[1], &c, &V.vu) == 0);
	V.sock = sv[0];
	V.over = false;
	V.nres = V.lists = 0;
	memset(V.avail, 0, sizeof(V.avail));
	while (in.n) {
		fv_op(&in);
		fv_check();
	}
	if (getenv("MV_FUZZ_VERBOSE"))
		fv_print();
	mv_vhost_user_free(V.vu);
	V.vu = NULL;
	rcu_barrier(); /* the regions' deferred frees: an input ends with all it allocated freed */
	for (unsigned i = 0; i < V.nres; i++)
		fv_res_close(&V.res[i]);
	if (V.sock >= 0)
		close(V.sock);
	long fds = fv_count_fds(), maps = fv_count_maps();
	if (fds != V.fds0 || maps != V.maps0)
		FV_FAIL("leaked: %ld descriptors, %ld memfd mappings", fds - V.fds0, maps - V.maps0);
	return 0;
}
