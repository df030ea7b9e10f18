/* vufront.h - a fake vhost-user frontend for the backend's tests: the wire as a frontend
 * writes it, a socketpair and guest memory in a memfd, messages sent and the backend
 * dispatched in turn (never allowed to block: SIGALRM cuts a blocked call short and the
 * test fails), virtio_uml's handshake, the guest's side of split rings, and a fixture whose
 * teardown checks that no descriptor and no memfd mapping outlived the backend. Included
 * by test_vhost_user*.c only. */
#ifndef MV_VUFRONT_H
#define MV_VUFRONT_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <memvirt/memvirt.h>
#include <memvirt/balloon.h>
#include <memvirt/vhost_user.h>
#include "testutil.h"

/* The wire, as a frontend writes it (not the backend's own definitions). */
enum { GET_FEATURES = 1, SET_FEATURES = 2, SET_OWNER = 3, SET_MEM_TABLE = 5, SET_LOG_BASE = 6,
       SET_VRING_NUM = 8, SET_VRING_ADDR = 9, SET_VRING_BASE = 10, GET_VRING_BASE = 11,
       SET_VRING_KICK = 12, SET_VRING_CALL = 13, SET_VRING_ERR = 14, GET_PROTOCOL_FEATURES = 15,
       SET_PROTOCOL_FEATURES = 16, SET_VRING_ENABLE = 18, SET_BACKEND_REQ_FD = 21,
       GET_CONFIG = 24, SET_CONFIG = 25, RESET_DEVICE = 34, VRING_KICK = 35 };
enum { B_CONFIG_CHANGE = 2, B_VRING_CALL = 4 };
#define VERSION    1u
#define FL_REPLY   (1u << 2)
#define FL_NEED    (1u << 3)
#define PF(b)      (1ull << (b))
#define PF_WANT    (PF(3) | PF(5) | PF(9)) /* REPLY_ACK, BACKEND_REQ, CONFIG: virtio_uml's */
#define PF_INBAND  PF(14)
#define F_PROTO    (1ull << 30)
#define V1         (1ull << MV_VIRTIO_F_VERSION_1)
#define FB(x)      (1ull << MV_BALLOON_F_##x)
#define NOFD       (1ull << 8)

struct hdr { uint32_t req, flags, size; };
struct vstate { uint32_t index, num; };
struct vaddr { uint32_t index, flags; uint64_t desc, used, avail, log; };
struct vregion { uint64_t gpa, size, uaddr, offset; };
struct vmem { uint32_t n, pad; struct vregion r[9]; };
struct vcfg { uint32_t offset, size, flags; uint8_t data[260]; };

/* Guest memory: one memfd of MEM bytes at guest-physical 0; the frontend says it has
 * it mapped at UA. Rings of NUM entries at RING(q), PFN lists in pages from DATA,
 * pages to inflate from VICTIM. */
#define MEM_PAGES  1024u
#define MEM        ((uint64_t)MEM_PAGES * TPAGE)
#define UA         0x7f1200000000ull
#define NUM        64u
#define QMAX       256u
#define NQ         2
#define RING(q)    (0x10000ull + (uint64_t)(q) * 0x4000ull)
#define DATA       0x80000ull
#define VICTIM     0x100000ull

struct fe {
	struct mv_host *h;
	struct mv_vm *vm;
	struct mv_vhost_user *vu;
	int sock, chan;                 /* our ends: the connection, the backend channel */
	int memfd;
	uint8_t *mem;                   /* the memfd, as the guest sees it */
	int kick[NQ], call[NQ];         /* our copies */
	uint16_t avail_idx[NQ], last_used[NQ];
	unsigned data_next, victim_next;
	bool inband;
	const void *arg;                /* the case, for tests run from a table */
	long fds0, maps0;               /* descriptors, memfd mappings before the connection */
};

static volatile sig_atomic_t alarmed, sigpipes;
/* Options of the next fe_new() (the device's release thread, the call thread). */
static struct { bool release_thread, call_thread; } fe_opts;

static inline void on_alarm(int sig) { alarmed = 1; }
static inline void on_pipe(int sig) { sigpipes++; }

static inline void *G(struct fe *f, uint64_t gpa)
{
	assert_true(gpa < MEM);
	return f->mem + gpa;
}

static inline uint64_t file_bytes(struct fe *f)
{
	struct stat st;
	assert_int_equal(fstat(f->memfd, &st), 0);
	return (uint64_t)st.st_blocks * 512;
}

/* ---- messages ---- */

/* Dispatch, which must come back at once: a call blocked in a syscall is cut short by
 * SIGALRM (installed without SA_RESTART) and reported as such. */
static inline int dispatch(struct fe *f)
{
	alarmed = 0;
	alarm(3);
	int r = mv_vhost_user_dispatch(f->vu);
	alarm(0);
	if (alarmed)
		fail_msg("mv_vhost_user_dispatch blocked (cut short by SIGALRM after 3 s)");
	return r;
}

static inline void dispatch_ok(struct fe *f)
{
	assert_int_equal(dispatch(f), 0);
}

static inline void send_raw(int sock, const void *buf, size_t len, const int *fds, unsigned nfds)
{
	union { char b[CMSG_SPACE(32 * sizeof(int))]; struct cmsghdr align; } cm;
	struct iovec iov = { (void *)buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	assert_true(nfds <= 32);
	if (nfds) {
		mh.msg_control = cm.b;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	assert_int_equal(sendmsg(sock, &mh, MSG_NOSIGNAL), (ssize_t)len);
}

static inline void send_msg(struct fe *f, uint32_t req, uint32_t flags, const void *pl, uint32_t size,
                     const int *fds, unsigned nfds)
{
	uint8_t buf[12 + 1024];
	struct hdr h = { req, flags | VERSION, size };
	assert_true(size <= 1024);
	memcpy(buf, &h, sizeof(h));
	if (size)
		memcpy(buf + 12, pl, size);
	send_raw(f->sock, buf, 12 + size, fds, nfds);
}

/* The next message waiting on sock: its payload size, or -1 when none waits. */
static inline int recv_msg(int sock, struct hdr *h, void *pl, size_t cap)
{
	ssize_t n = recv(sock, h, sizeof(*h), MSG_DONTWAIT);
	if (n < 0 && errno == EAGAIN)
		return -1;
	assert_int_equal(n, sizeof(*h));
	assert_true(h->size <= cap);
	if (h->size)
		assert_int_equal(recv(sock, pl, h->size, MSG_DONTWAIT), h->size);
	return (int)h->size;
}

static inline void reply(struct fe *f, uint32_t req, void *pl, uint32_t size)
{
	struct hdr h;
	uint8_t buf[512];
	assert_int_equal(recv_msg(f->sock, &h, buf, sizeof(buf)), (int)size);
	assert_int_equal(h.req, req);
	assert_int_equal(h.flags, VERSION | FL_REPLY);
	memcpy(pl, buf, size);
}

static inline void no_reply(struct fe *f)
{
	struct hdr h;
	uint8_t buf[512];
	assert_int_equal(recv_msg(f->sock, &h, buf, sizeof(buf)), -1);
}

/* A request with NEED_REPLY: its ack (0 applied, else refused). */
static inline uint64_t ack(struct fe *f, uint32_t req, const void *pl, uint32_t size, const int *fds,
                    unsigned nfds)
{
	uint64_t st = 99;
	send_msg(f, req, FL_NEED, pl, size, fds, nfds);
	dispatch_ok(f);
	reply(f, req, &st, 8);
	no_reply(f);
	return st;
}

static inline uint64_t ack_u64(struct fe *f, uint32_t req, uint64_t v)
{
	return ack(f, req, &v, 8, NULL, 0);
}

static inline uint64_t ack_state(struct fe *f, uint32_t req, uint32_t index, uint32_t num)
{
	struct vstate s = { index, num };
	return ack(f, req, &s, sizeof(s), NULL, 0);
}

/* SET_VRING_KICK/CALL/ERR of ring q with fd (-1: NOFD). */
static inline uint64_t ack_fd(struct fe *f, uint32_t req, uint64_t q, int fd)
{
	uint64_t v = q | (fd < 0 ? NOFD : 0);
	return ack(f, req, &v, 8, &fd, fd < 0 ? 0 : 1);
}

static inline uint64_t get_u64(struct fe *f, uint32_t req)
{
	uint64_t v = 0;
	send_msg(f, req, 0, NULL, 0, NULL, 0);
	dispatch_ok(f);
	reply(f, req, &v, 8);
	return v;
}

static inline uint64_t addr_ack(struct fe *f, unsigned q, uint64_t desc, uint64_t avail, uint64_t used)
{
	struct vaddr a = { q, 0, desc, used, avail, 0 };
	return ack(f, SET_VRING_ADDR, &a, sizeof(a), NULL, 0);
}

static inline struct vmem table1(void)
{
	return (struct vmem){ 1, 0, { { 0, MEM, UA, 0 } } };
}

static inline uint64_t set_table(struct fe *f, const struct vmem *m, const int *fds, unsigned nfds)
{
	return ack(f, SET_MEM_TABLE, m, 8 + 32 * m->n, fds, nfds);
}

/* ---- the guest's side of the rings ---- */

/* Make one buffer available on ring q (a chain of one descriptor unless `flags` says). */
static inline void push(struct fe *f, unsigned q, uint64_t gpa, uint32_t len, uint16_t flags, uint16_t next)
{
	uint16_t idx = f->avail_idx[q] % NUM;
	uint8_t *d = G(f, RING(q) + 16ull * idx);
	memcpy(d, &gpa, 8);
	memcpy(d + 8, &len, 4);
	memcpy(d + 12, &flags, 2);
	memcpy(d + 14, &next, 2);
	uint16_t *avail = G(f, RING(q) + 0x1000);
	avail[2 + idx] = idx;
	__atomic_store_n(&avail[1], ++f->avail_idx[q], __ATOMIC_RELEASE);
}

static inline void push_pfns(struct fe *f, unsigned q, const uint32_t *pfn, unsigned n)
{
	uint64_t buf = DATA + (uint64_t)(f->data_next++ % 64) * TPAGE;
	memcpy(G(f, buf), pfn, 4ull * n);
	push(f, q, buf, 4 * n, 0, 0);
}

/* Buffers the device returned since the last look. */
static inline unsigned used(struct fe *f, unsigned q)
{
	uint16_t idx = __atomic_load_n((uint16_t *)G(f, RING(q) + 0x2002), __ATOMIC_ACQUIRE);
	unsigned n = (uint16_t)(idx - f->last_used[q]);
	f->last_used[q] = idx;
	return n;
}

/* Interrupts on ring q since the last look (its call eventfd). */
static inline uint64_t calls(struct fe *f, unsigned q)
{
	uint64_t v = 0;
	if (read(f->call[q], &v, 8) != 8)
		return 0;
	return v;
}

static inline void kick(struct fe *f, unsigned q)
{
	if (f->inband) {
		assert_int_equal(ack_state(f, VRING_KICK, q, 0), 0);
		return;
	}
	uint64_t one = 1;
	assert_int_equal(write(f->kick[q], &one, 8), 8);
	dispatch_ok(f);
}

/* A fresh page of guest memory, written (host memory behind it). */
static inline uint32_t victim(struct fe *f)
{
	uint64_t gpa = VICTIM + (uint64_t)f->victim_next++ * TPAGE;
	memset(G(f, gpa), 0xa5, TPAGE);
	return (uint32_t)(gpa / TPAGE);
}

/* Read through the file: a read fault on a hole of a shared mapping would give the
 * page host memory again, read() of a hole does not. */
static inline bool page_zero(struct fe *f, uint32_t pfn)
{
	static const uint8_t zero[TPAGE];
	uint8_t buf[TPAGE];
	assert_int_equal(pread(f->memfd, buf, TPAGE, (off_t)pfn * TPAGE), TPAGE);
	return !memcmp(buf, zero, TPAGE);
}

/* The connection works end to end: an inflate of one page is taken from the ring, the
 * page's host memory is released (the file loses it, the guest reads zeros), the buffer
 * comes back and the interrupt fires. */
static inline void still_works(struct fe *f)
{
	uint32_t pfn = victim(f);
	push_pfns(f, 0, &pfn, 1);
	uint64_t before = file_bytes(f);
	kick(f, 0);
	assert_int_equal(used(f, 0), 1);
	if (!f->inband)
		assert_true(calls(f, 0) >= 1);
	assert_true(file_bytes(f) <= before - TPAGE);
	assert_true(page_zero(f, pfn));
}

/* ---- fixture ---- */

static inline struct fe *fe_new(bool inband)
{
	struct fe *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->inband = inband;
	f->h = tu_host();
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = "vhost-user";
	assert_int_equal(mv_vm_new(f->h, &vc, &f->vm), 0);
	f->fds0 = tu_open_fds();
	f->maps0 = tu_memfd_mappings();
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	f->sock = sv[0];
	f->chan = -1;
	f->memfd = memfd_create("guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(f->memfd >= 0);
	assert_int_equal(ftruncate(f->memfd, (off_t)MEM), 0);
	assert_int_equal(fcntl(f->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
	f->mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_SHARED, f->memfd, 0);
	assert_true(f->mem != MAP_FAILED);
	for (unsigned q = 0; q < NQ; q++)
		f->kick[q] = f->call[q] = -1;
	struct mv_vhost_user_config cfg;
	mv_vhost_user_config_init(&cfg);
	cfg.balloon.queue_max = QMAX;
	cfg.inband_notifications = inband;
	cfg.balloon.release_thread = fe_opts.release_thread;
	cfg.call_thread = fe_opts.call_thread;
	assert_int_equal(mv_vhost_user_new(f->vm, sv[1], &cfg, &f->vu), 0);
	struct sigaction sa = { .sa_handler = on_alarm };
	sigaction(SIGALRM, &sa, NULL);
	return f;
}

/* Ring q as virtio_uml sets it up, up to its addresses. */
static inline void ring_prepare(struct fe *f, unsigned q, uint16_t base)
{
	if (!f->inband) {
		f->call[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		assert_true(f->call[q] >= 0);
	}
	assert_int_equal(ack_fd(f, SET_VRING_CALL, q, f->call[q]), 0);
	assert_int_equal(ack_state(f, SET_VRING_NUM, q, NUM), 0);
	assert_int_equal(ack_state(f, SET_VRING_BASE, q, base), 0);
	assert_int_equal(addr_ack(f, q, UA + RING(q), UA + RING(q) + 0x1000, UA + RING(q) + 0x2000), 0);
}

static inline void ring_kick_fd(struct fe *f, unsigned q)
{
	if (!f->inband) {
		if (f->kick[q] >= 0)
			close(f->kick[q]);
		f->kick[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		assert_true(f->kick[q] >= 0);
	}
	assert_int_equal(ack_fd(f, SET_VRING_KICK, q, f->kick[q]), 0);
}

/* The start of virtio_uml's probe: owner, features, protocol features, backend channel. */
static inline void probe(struct fe *f)
{
	send_msg(f, SET_OWNER, 0, NULL, 0, NULL, 0);
	dispatch_ok(f);
	no_reply(f);
	uint64_t dev = get_u64(f, GET_FEATURES);
	assert_true(dev & F_PROTO);
	assert_true(dev & V1);
	assert_int_equal(dev & MV_BALLOON_FEATURES_ALL, MV_BALLOON_FEATURES_ALL);
	uint64_t want = PF_WANT | (f->inband ? PF_INBAND : 0);
	assert_int_equal(get_u64(f, GET_PROTOCOL_FEATURES) & want, want);
	send_msg(f, SET_PROTOCOL_FEATURES, 0, &want, 8, NULL, 0);
	dispatch_ok(f);
	no_reply(f);
	int ch[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ch), 0);
	assert_int_equal(ack(f, SET_BACKEND_REQ_FD, NULL, 0, &ch[1], 1), 0);
	close(ch[1]);
	f->chan = ch[0];
}

/* virtio_uml's whole bring-up: probe, then at insmod features, memory, rings, kicks,
 * enables. */
static inline void handshake(struct fe *f, uint64_t features)
{
	probe(f);
	assert_int_equal(ack_u64(f, SET_FEATURES, features | V1 | F_PROTO), 0);
	struct vmem m = table1();
	assert_int_equal(set_table(f, &m, &f->memfd, 1), 0);
	for (unsigned q = 0; q < NQ; q++) {
		memset(G(f, RING(q)), 0, 0x4000);
		ring_prepare(f, q, 0);
	}
	for (unsigned q = 0; q < NQ; q++)
		ring_kick_fd(f, q);
	for (unsigned q = 0; q < NQ; q++)
		assert_int_equal(ack_state(f, SET_VRING_ENABLE, q, 1), 0);
	struct mv_vhost_user_info vi;
	assert_int_equal(mv_vhost_user_info(f->vu, &vi), 0);
	assert_true(vi.running);
	assert_int_equal(vi.regions, 1);
	assert_int_equal(vi.ram_bytes, MEM);
	assert_int_equal(vi.protocol_features, PF_WANT | (f->inband ? PF_INBAND : 0));
}

static inline int setup_bare(void **state)
{
	*state = fe_new(false);
	return 0;
}

static inline int setup(void **state)
{
	struct fe *f = fe_new(false);
	handshake(f, FB(MUST_TELL_HOST));
	*state = f;
	return 0;
}

static inline int setup_inband(void **state)
{
	struct fe *f = fe_new(true);
	handshake(f, FB(MUST_TELL_HOST));
	*state = f;
	return 0;
}

/* Free the backend, close ours: nothing of the connection may be left open or mapped. */
static inline int teardown(void **state)
{
	struct fe *f = *state;
	mv_vhost_user_free(f->vu);
	munmap(f->mem, MEM);
	int fds[] = { f->sock, f->chan, f->memfd, f->kick[0], f->kick[1], f->call[0], f->call[1] };
	for (unsigned i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	long fds_now = tu_open_fds(), maps_now = tu_memfd_mappings(), fds0 = f->fds0, maps0 = f->maps0;
	mv_vm_free(f->vm);
	mv_host_free(f->h);
	free(f);
	assert_int_equal(fds_now, fds0);
	assert_int_equal(maps_now, maps0);
	return 0;
}

/* What a refused request must leave as it was. */
struct snap {
	struct mv_vhost_user_info vi;
	struct mv_balloon_info bi;
};

static inline struct snap snap(struct fe *f)
{
	struct snap s;
	assert_int_equal(mv_vhost_user_info(f->vu, &s.vi), 0);
	assert_int_equal(mv_balloon_info(mv_vhost_user_balloon(f->vu), &s.bi), 0);
	return s;
}

static inline void unchanged(struct fe *f, const struct snap *s)
{
	struct snap now = snap(f);
	assert_int_equal(now.vi.running, s->vi.running);
	assert_int_equal(now.vi.regions, s->vi.regions);
	assert_int_equal(now.vi.ram_bytes, s->vi.ram_bytes);
	assert_int_equal(now.vi.protocol_features, s->vi.protocol_features);
	assert_int_equal(now.bi.features, s->bi.features);
	assert_int_equal(now.bi.status, s->bi.status);
	assert_int_equal(now.bi.target_bytes, s->bi.target_bytes);
	assert_int_equal(now.bi.actual_bytes, s->bi.actual_bytes);
	assert_true(now.vi.bad_messages > s->vi.bad_messages || now.vi.messages > s->vi.messages);
}

static inline uint32_t config_u32(struct fe *f, uint32_t off)
{
	struct vcfg c = { off, 4, 0, { 0 } }, r;
	send_msg(f, GET_CONFIG, FL_NEED, &c, 12 + 4, NULL, 0);
	dispatch_ok(f);
	reply(f, GET_CONFIG, &r, 12 + 4); /* the config is the reply: no separate ack */
	no_reply(f);
	assert_int_equal(r.offset, off);
	assert_int_equal(r.size, 4);
	uint32_t v;
	memcpy(&v, r.data, 4);
	return le32toh(v);
}

#endif
