/* test_attach.c - the agent protocol's codec, and a link (mv_host_attach) against a fake
 * memvirtd written here: reports equal to the devices' own figures, decisions applied or
 * refused, malformed streams, daemon restarts, VMs removed or refused by the daemon. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <memvirt/attach.h>
#include <memvirt/balloon.h>
#include <memvirt/memvirt.h>
#include "internal.h"
#include "attach_wire.h"
#include "testutil.h"

#define MiB      (1ull << 20)
#define A_PAGES  4096u           /* alpha: 16 MiB, with a balloon */
#define B_PAGES  2048u           /* beta: 8 MiB, no balloon */
#define WAIT_MS  10000           /* every wait for the link is bounded by this */

struct fx {
	struct mv_host *h;
	struct mv_vm *vm[2];
	uint8_t *mem[2];
	struct mv_balloon *b;
	struct mv_balloon_ops ops;
	struct mv_attach *a;
	char dir[64], path[108];
	int lfd, conn;               /* the fake daemon's listening socket, its connection */
	struct mv__aw_rx rx;
	struct mv__aw_vm vms[MV_AW_MAX_VMS];
	_Atomic unsigned warnings;   /* WARN lines the link logged */
};

static void on_irq(void *opaque, int q) { (void)opaque; (void)q; }
static uint64_t on_now(void *opaque) { (void)opaque; return 1000000000ull; }

static void on_log(void *opaque, enum mv_log_level lvl, const char *msg)
{
	struct fx *f = opaque;
	if (lvl <= MV_LOG_WARN)
		atomic_fetch_add(&f->warnings, 1);
	if (getenv("MV_TEST_VERBOSE"))
		fprintf(stderr, "[link] %s\n", msg);
}

/* ---- the fake daemon ---- */

static void d_listen(struct fx *f)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->path);
	f->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(f->lfd >= 0);
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(f->lfd, 4), 0);
}

static void d_stop(struct fx *f)
{
	if (f->conn >= 0)
		close(f->conn);
	if (f->lfd >= 0)
		close(f->lfd);
	f->conn = f->lfd = -1;
	unlink(f->path);
}

static void d_recv(struct fx *f, struct mv__aw_msg *m, uint16_t type)
{
	for (;;) {
		long n = mv__aw_next(&f->rx, m, f->vms);
		assert_true(n >= 0);
		if (n > 0) {
			assert_int_equal(m->type, type);
			return;
		}
		struct pollfd p = { .fd = f->conn, .events = POLLIN };
		assert_int_equal(poll(&p, 1, WAIT_MS), 1);
		assert_int_equal(mv__aw_read(f->conn, &f->rx), 0);
	}
}

static void d_send(struct fx *f, const struct mv__aw_msg *m)
{
	assert_int_equal(mv__aw_send(f->conn, m, WAIT_MS), 0);
}

/* Accept the link's connection: HELLO, answered with WELCOME. */
static void d_accept(struct fx *f, struct mv__aw_msg *hello)
{
	struct pollfd p = { .fd = f->lfd, .events = POLLIN };
	assert_int_equal(poll(&p, 1, WAIT_MS), 1);
	f->conn = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
	assert_true(f->conn >= 0);
	f->rx.len = 0;
	d_recv(f, hello, MV_AW_HELLO);
	struct mv__aw_msg w = { .type = MV_AW_WELCOME, .u.welcome.period_ms = 1000 };
	d_send(f, &w);
}

static void d_poll(struct fx *f, uint64_t seq, struct mv__aw_msg *rep)
{
	struct mv__aw_msg p = { .type = MV_AW_POLL, .u.poll.seq = seq };
	d_send(f, &p);
	d_recv(f, rep, MV_AW_REPORT);
	assert_int_equal(rep->u.report.seq, seq);
}

/* The link ends the connection: whatever it sent before, then end of stream. */
static void d_expect_eof(struct fx *f)
{
	for (;;) {
		struct pollfd p = { .fd = f->conn, .events = POLLIN };
		assert_int_equal(poll(&p, 1, WAIT_MS), 1);
		int rc = mv__aw_read(f->conn, &f->rx);
		f->rx.len = 0;
		if (rc == -ECONNRESET)
			break;
		assert_int_equal(rc, 0);
	}
	close(f->conn);
	f->conn = -1;
}

static void d_target(struct fx *f, const char *name, uint64_t bytes)
{
	struct mv__aw_msg m = { .type = MV_AW_SET_TARGET, .u.set_target.target_bytes = bytes };
	snprintf(m.u.set_target.name, sizeof(m.u.set_target.name), "%s", name);
	d_send(f, &m);
}

static void d_expect_refuse(struct fx *f, uint16_t type, int err, const char *name)
{
	struct mv__aw_msg m;
	d_recv(f, &m, MV_AW_REFUSE);
	assert_int_equal(m.u.refuse.type, type);
	assert_int_equal(m.u.refuse.err, err);
	assert_string_equal(m.u.refuse.name, name);
	assert_true(m.u.refuse.why[0]);
}

static struct mv_attach_info info_of(struct fx *f)
{
	struct mv_attach_info i;
	assert_int_equal(mv_attach_info(f->a, &i), 0);
	return i;
}

/* ---- fixture: a host, two VMs (alpha with a balloon), a daemon listening, a link ---- */

static void link_new(struct fx *f, struct mv_host *h, unsigned retry_ms)
{
	struct mv_attach_config c;
	mv_attach_config_init(&c);
	c.client = "test-vmm";
	c.retry_ms = retry_ms;
	c.log = on_log;
	c.log_opaque = f;
	assert_int_equal(mv_host_attach(h, f->path, &c, &f->a), 0);
	assert_int_equal(mv_attach_add_vm(f->a, "alpha", f->vm[0], f->b), 0);
	assert_int_equal(mv_attach_add_vm(f->a, "beta", f->vm[1], NULL), 0);
}

static void vm_new(struct fx *f, unsigned i, const char *name, unsigned pages)
{
	struct mv_vm_config vc;
	mv_vm_config_init(&vc);
	vc.name = name;
	assert_int_equal(mv_vm_new(f->h, &vc, &f->vm[i]), 0);
	f->mem[i] = tu_guest_alloc(pages);
	assert_int_equal(mv_vm_region_add(f->vm[i], 0, 0, f->mem[i], pages * TPAGE, 0), 0);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	snprintf(f->dir, sizeof(f->dir), "/tmp/mv-attach.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/agent.sock", f->dir);
	f->h = tu_host();
	vm_new(f, 0, "alpha", A_PAGES);
	vm_new(f, 1, "beta", B_PAGES);
	f->ops = (struct mv_balloon_ops){ .interrupt = on_irq, .now_ns = on_now };
	struct mv_balloon_config bc;
	mv_balloon_config_init(&bc);
	bc.ops = &f->ops;
	bc.opaque = f;
	assert_int_equal(mv_balloon_new(f->vm[0], &bc, &f->b), 0);
	f->conn = -1;
	d_listen(f);
	link_new(f, f->h, 10);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	mv_attach_free(f->a);
	d_stop(f);
	rmdir(f->dir);
	mv_balloon_free(f->b);
	mv_vm_free(f->vm[1]);
	mv_vm_free(f->vm[0]);
	mv_host_free(f->h);
	tu_guest_free(f->mem[0], A_PAGES);
	tu_guest_free(f->mem[1], B_PAGES);
	free(f);
	return 0;
}

/* ---- the codec ---- */

static void fill_vm(struct mv__aw_vm *v, const char *name, uint64_t seed)
{
	memset(v, 0, sizeof(*v));
	snprintf(v->name, sizeof(v->name), "%s", name);
	v->ram_bytes = seed << 20;
	v->has_balloon = true;
	v->scanner_valid = seed & 1;
	v->balloon.target_bytes = seed * 4096;
	v->balloon.actual_bytes = seed * 4096 + 1;
	v->balloon.hint_discarded_bytes = ~seed;
	v->balloon.stalled = true;
	v->balloon.needs_reset = seed & 2;
	v->balloon.stats_valid = 0xbeef;
	v->balloon.stats_age_ns = UINT64_MAX;
	for (unsigned i = 0; i < MV_BSTAT_NR; i++)
		v->balloon.stats[i] = seed * 100 + i;
	v->scanner.pages_scanned = seed + 7;
	v->scanner.chunks_backed_off = 1ull << 63;
}

/* Every type once, with fields that tell each other apart. */
static unsigned sample_msgs(struct mv__aw_msg *m, struct mv__aw_vm *vms)
{
	memset(m, 0, 7 * sizeof(*m));
	m[0].type = MV_AW_HELLO;
	m[0].u.hello.pid = 0x01020304;
	strcpy(m[0].u.hello.client, "vmm one");
	m[1].type = MV_AW_WELCOME;
	m[1].u.welcome.period_ms = 250;
	m[2].type = MV_AW_POLL;
	m[2].u.poll.seq = 0x1122334455667788ull;
	m[3].type = MV_AW_REPORT;
	m[3].u.report.seq = 9;
	m[3].u.report.scanner_valid = true;
	m[3].u.report.scanner.cpu_ns = 123456789;
	m[3].u.report.nr_vms = 2;
	m[3].vms = vms;
	fill_vm(&vms[0], "vm-a", 3);
	char long63[MV_AW_NAME];
	memset(long63, 'b', sizeof(long63) - 1);
	long63[sizeof(long63) - 1] = 0;
	fill_vm(&vms[1], long63, 4);
	m[4].type = MV_AW_SET_TARGET;
	strcpy(m[4].u.set_target.name, "vm-a");
	m[4].u.set_target.target_bytes = 8 * MiB;
	m[5].type = MV_AW_SET_SHARE;
	m[5].u.set_share.micro_cores = 150000;
	m[6].type = MV_AW_REFUSE;
	m[6].u.refuse.type = MV_AW_REPORT;
	m[6].u.refuse.err = -EEXIST;
	strcpy(m[6].u.refuse.name, "vm-a");
	strcpy(m[6].u.refuse.why, "name in use");
	return 7;
}

static void wire_round_trip(void **state)
{
	struct mv__aw_msg m[7], d;
	static struct mv__aw_vm vms[2], out[MV_AW_MAX_VMS];
	static uint8_t buf[MV_AW_HDR + MV_AW_MAX_PAYLOAD], again[sizeof(buf)];
	unsigned n = sample_msgs(m, vms);
	for (unsigned i = 0; i < n; i++) {
		long len = mv__aw_encode(&m[i], buf, sizeof(buf));
		assert_true(len >= MV_AW_HDR);
		assert_memory_equal(buf, "MVAG\x01\x00", 6);
		assert_int_equal(buf[6] | buf[7] << 8, m[i].type);
		assert_int_equal(buf[8] | buf[9] << 8 | buf[10] << 16 | (uint32_t)buf[11] << 24, len - MV_AW_HDR);
		assert_int_equal(mv__aw_decode(buf, (size_t)len, &d, out), len);
		assert_int_equal(d.type, m[i].type);
		if (m[i].type == MV_AW_REPORT) {
			assert_memory_equal(out, vms, sizeof(vms));
			assert_int_equal(d.u.report.nr_vms, 2);
			assert_memory_equal(&d.u.report.scanner, &m[i].u.report.scanner,
			                    sizeof(struct mv_scan_stats));
		} else {
			assert_memory_equal(&d.u, &m[i].u, sizeof(d.u));
		}
		assert_int_equal(mv__aw_encode(&d, again, sizeof(again)), len);
		assert_memory_equal(again, buf, (size_t)len);
	}
	/* POLL's seq, little-endian right after the header */
	assert_int_equal(mv__aw_encode(&m[2], buf, sizeof(buf)), MV_AW_HDR + 8);
	assert_int_equal(buf[MV_AW_HDR], 0x88);
	assert_int_equal(buf[MV_AW_HDR + 7], 0x11);
}

static long encode_type(uint16_t type, uint8_t *buf, size_t cap)
{
	static struct mv__aw_vm vms[2];
	struct mv__aw_msg m[7];
	sample_msgs(m, vms);
	return mv__aw_encode(&m[type - 1], buf, cap);
}

static void wire_truncated(void **state)
{
	static uint8_t buf[MV_AW_HDR + MV_AW_MAX_PAYLOAD];
	static struct mv__aw_vm out[MV_AW_MAX_VMS];
	struct mv__aw_msg d;
	for (uint16_t t = MV_AW_HELLO; t <= MV_AW_REFUSE; t++) {
		long len = encode_type(t, buf, sizeof(buf));
		assert_true(len > 0);
		for (long cut = 0; cut < len; cut++)
			assert_int_equal(mv__aw_decode(buf, (size_t)cut, &d, out), 0);
		assert_int_equal(encode_type(t, buf, (size_t)len - 1), -ENOSPC);
	}
}

/* Set n bytes of an encoded message of `type` to val: the decoder refuses it. */
static void expect_refused_n(uint16_t type, size_t off, size_t n, uint8_t val)
{
	static uint8_t buf[MV_AW_HDR + MV_AW_MAX_PAYLOAD];
	static struct mv__aw_vm out[MV_AW_MAX_VMS];
	struct mv__aw_msg d;
	long len = encode_type(type, buf, sizeof(buf));
	assert_true(len > 0 && off + n <= (size_t)len);
	memset(buf + off, val, n);
	assert_int_equal(mv__aw_decode(buf, (size_t)len, &d, out), -EPROTO);
}

static void expect_refused(uint16_t type, size_t off, uint8_t val)
{
	expect_refused_n(type, off, 1, val);
}

static void wire_malformed(void **state)
{
	expect_refused(MV_AW_POLL, 0, 'X');                     /* magic */
	expect_refused(MV_AW_POLL, 4, 2);                       /* version */
	expect_refused(MV_AW_POLL, 6, 8);                       /* unknown type */
	expect_refused(MV_AW_POLL, 6, 0);
	expect_refused(MV_AW_POLL, 8, 9);                       /* length not POLL's */
	expect_refused(MV_AW_SET_SHARE, 6, MV_AW_WELCOME);      /* SET_SHARE's length as WELCOME */
	expect_refused(MV_AW_HELLO, MV_AW_HDR + 4, 0);          /* empty client */
	expect_refused(MV_AW_SET_TARGET, MV_AW_HDR, 0);         /* empty name */
	expect_refused_n(MV_AW_SET_TARGET, MV_AW_HDR, MV_AW_NAME, 'x'); /* not terminated */
	expect_refused_n(MV_AW_HELLO, MV_AW_HDR + 4, MV_AW_CLIENT, 'x');
	expect_refused_n(MV_AW_REPORT, MV_AW_HDR + 160, MV_AW_NAME, 'x'); /* a VM's name */
	expect_refused(MV_AW_SET_TARGET, MV_AW_HDR + 10, 'x');  /* bytes after the NUL */
	expect_refused(MV_AW_REFUSE, MV_AW_HDR + 2, 1);         /* reserved */
	expect_refused(MV_AW_REPORT, MV_AW_HDR + 8, 2);         /* a bool that is 2 */
	expect_refused(MV_AW_REPORT, MV_AW_HDR + 9, 1);         /* reserved */
	expect_refused(MV_AW_REPORT, MV_AW_HDR + 8 + 144, 3);   /* nr_vms not the length's */
	/* only a header: an oversized or wrong length is refused before the payload comes */
	uint8_t h[MV_AW_HDR] = { 'M', 'V', 'A', 'G', 1, 0, MV_AW_REPORT, 0, 0x01, 0x00, 0x01, 0x00 };
	struct mv__aw_msg d;
	assert_int_equal(mv__aw_decode(h, sizeof(h), &d, NULL), -EPROTO);
	h[6] = MV_AW_POLL, h[8] = 7, h[10] = 0;
	assert_int_equal(mv__aw_decode(h, sizeof(h), &d, NULL), -EPROTO);
	h[8] = 8;
	assert_int_equal(mv__aw_decode(h, sizeof(h), &d, NULL), 0);
	/* what cannot be encoded */
	struct mv__aw_msg m = { .type = 8 };
	uint8_t buf[256];
	assert_int_equal(mv__aw_encode(&m, buf, sizeof(buf)), -EINVAL);
	m = (struct mv__aw_msg){ .type = MV_AW_SET_TARGET };
	assert_int_equal(mv__aw_encode(&m, buf, sizeof(buf)), -EINVAL);
	memset(m.u.set_target.name, 'x', sizeof(m.u.set_target.name));
	assert_int_equal(mv__aw_encode(&m, buf, sizeof(buf)), -EINVAL);
	m = (struct mv__aw_msg){ .type = MV_AW_REPORT, .u.report.nr_vms = MV_AW_MAX_VMS + 1 };
	assert_int_equal(mv__aw_encode(&m, buf, sizeof(buf)), -EINVAL);
}

static void wire_stream(void **state)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	static uint8_t buf[2 * (MV_AW_HDR + MV_AW_MAX_PAYLOAD)];
	long a = encode_type(MV_AW_REPORT, buf, sizeof(buf) / 2);
	long b = encode_type(MV_AW_POLL, buf + a, sizeof(buf) / 2);
	static struct mv__aw_rx rx;
	static struct mv__aw_vm out[MV_AW_MAX_VMS];
	struct mv__aw_msg m;
	assert_int_equal(write(sv[0], buf, 5), 5);
	assert_int_equal(mv__aw_read(sv[1], &rx), 0);
	assert_int_equal(mv__aw_next(&rx, &m, out), 0);
	assert_int_equal(write(sv[0], buf + 5, (size_t)(a + b - 5)), a + b - 5);
	assert_int_equal(mv__aw_read(sv[1], &rx), 0);
	assert_int_equal(mv__aw_next(&rx, &m, out), a);
	assert_int_equal(m.type, MV_AW_REPORT);
	assert_string_equal(out[0].name, "vm-a");
	assert_int_equal(mv__aw_next(&rx, &m, out), b);
	assert_int_equal(m.type, MV_AW_POLL);
	assert_int_equal(mv__aw_next(&rx, &m, out), 0);
	assert_int_equal(rx.len, 0);
	close(sv[0]);
	assert_int_equal(mv__aw_read(sv[1], &rx), -ECONNRESET);
	assert_int_equal(mv__aw_send(sv[1], &m, 100), -EPIPE); /* and no SIGPIPE */
	close(sv[1]);
}

/* ---- the link ---- */

static void check_balloon(const struct mv_balloon_info *want, const struct mv_balloon_info *got)
{
	assert_int_equal(got->target_bytes, want->target_bytes);
	assert_int_equal(got->actual_bytes, want->actual_bytes);
	assert_int_equal(got->held_bytes, want->held_bytes);
	assert_int_equal(got->released_bytes, want->released_bytes);
	assert_int_equal(got->inflated_bytes, want->inflated_bytes);
	assert_int_equal(got->deflated_bytes, want->deflated_bytes);
	assert_int_equal(got->reported_bytes, want->reported_bytes);
	assert_int_equal(got->hinted_bytes, want->hinted_bytes);
	assert_int_equal(got->hint_discarded_bytes, want->hint_discarded_bytes);
	assert_int_equal(got->stalled, want->stalled);
	assert_int_equal(got->stalled_ns, want->stalled_ns);
	assert_int_equal(got->stall_gap_bytes, want->stall_gap_bytes);
	assert_int_equal(got->needs_reset, want->needs_reset);
	assert_int_equal(got->guest_errors, want->guest_errors);
	assert_int_equal(got->features, want->features);
	assert_int_equal(got->stats_valid, want->stats_valid);
	assert_memory_equal(got->stats, want->stats, sizeof(got->stats));
	assert_int_equal(got->stats_age_ns, want->stats_age_ns);
}

/* The report lists exactly `names`, in order, each as its devices say. */
static void check_report(struct fx *f, const struct mv__aw_msg *rep, const char *const *names,
                         unsigned n, bool scanner)
{
	struct mv_scan_stats want_scan;
	assert_int_equal(rep->u.report.nr_vms, n);
	assert_int_equal(rep->u.report.scanner_valid, scanner);
	if (scanner) {
		assert_int_equal(mv_host_stats(f->h, &want_scan), 0);
		assert_memory_equal(&rep->u.report.scanner, &want_scan, sizeof(want_scan));
	}
	for (unsigned i = 0; i < n; i++) {
		const struct mv__aw_vm *v = &rep->vms[i];
		bool alpha = !strcmp(names[i], "alpha");
		assert_string_equal(v->name, names[i]);
		assert_string_equal(v->domain, mv_vm_domain(f->vm[alpha ? 0 : 1]));
		assert_int_equal(v->ram_bytes, (alpha ? A_PAGES : B_PAGES) * TPAGE);
		assert_int_equal(v->has_balloon, alpha);
		if (alpha) {
			struct mv_balloon_info want;
			assert_int_equal(mv_balloon_info(f->b, &want), 0);
			check_balloon(&want, &v->balloon);
		}
		assert_int_equal(v->scanner_valid, scanner);
		if (scanner) {
			assert_int_equal(mv_vm_stats(f->vm[alpha ? 0 : 1], &want_scan), 0);
			assert_memory_equal(&v->scanner, &want_scan, sizeof(want_scan));
		}
	}
}

static const char *const BOTH[] = { "alpha", "beta" };

static void hello_welcome_report(void **state)
{
	struct fx *f = *state;
	struct mv__aw_msg m;
	d_accept(f, &m);
	assert_int_equal(m.u.hello.pid, (uint32_t)getpid());
	assert_string_equal(m.u.hello.client, "test-vmm");
	d_poll(f, 7, &m);
	check_report(f, &m, BOTH, 2, true);
	struct mv_attach_info i = info_of(f);
	assert_true(i.connected);
	assert_int_equal(i.connects, 1);
	assert_int_equal(i.polls, 1);
	assert_int_equal(i.refused, 0);
}

static uint64_t target_of(struct fx *f)
{
	struct mv_balloon_info bi;
	assert_int_equal(mv_balloon_info(f->b, &bi), 0);
	return bi.target_bytes;
}

static void set_target_applied(void **state)
{
	struct fx *f = *state;
	struct mv__aw_msg m;
	d_accept(f, &m);
	d_target(f, "alpha", 4 * MiB);
	d_poll(f, 1, &m);
	assert_int_equal(target_of(f), 4 * MiB);
	assert_int_equal(m.vms[0].balloon.target_bytes, 4 * MiB);
	check_report(f, &m, BOTH, 2, true);
	assert_int_equal(info_of(f).targets_applied, 1);
}

static void set_target_refused(void **state)
{
	struct fx *f = *state;
	struct mv__aw_msg m;
	d_accept(f, &m);
	d_target(f, "gamma", 4 * MiB);
	d_expect_refuse(f, MV_AW_SET_TARGET, -ENOENT, "gamma");
	d_target(f, "alpha", A_PAGES * TPAGE + TPAGE);
	d_expect_refuse(f, MV_AW_SET_TARGET, -ERANGE, "alpha");
	d_target(f, "alpha", 4 * MiB + 1);
	d_expect_refuse(f, MV_AW_SET_TARGET, -EINVAL, "alpha");
	d_target(f, "beta", 4 * MiB);
	d_expect_refuse(f, MV_AW_SET_TARGET, -ENODEV, "beta");
	d_poll(f, 2, &m); /* the connection goes on */
	assert_int_equal(target_of(f), 0);
	struct mv_attach_info i = info_of(f);
	assert_int_equal(i.refused, 4);
	assert_int_equal(i.targets_applied, 0);
	assert_int_equal(i.connects, 1);
	d_target(f, "alpha", A_PAGES * TPAGE); /* all of its RAM is allowed */
	d_poll(f, 3, &m);
	assert_int_equal(target_of(f), A_PAGES * TPAGE);
}

static void set_share(void **state)
{
	struct fx *f = *state;
	struct mv__aw_msg m = { .type = MV_AW_SET_SHARE, .u.set_share.micro_cores = 250000 };
	struct mv__aw_msg r;
	d_accept(f, &r);
	d_send(f, &m);
	d_poll(f, 1, &r);
	assert_int_equal(atomic_load(&f->h->cpu_share_ppm), 250000);
	assert_int_equal(info_of(f).shares_applied, 1);
	uint64_t bad[] = { 0, 1000001, UINT64_MAX };
	for (unsigned i = 0; i < 3; i++) {
		m.u.set_share.micro_cores = bad[i];
		d_send(f, &m);
		d_expect_refuse(f, MV_AW_SET_SHARE, -ERANGE, "");
	}
	assert_int_equal(atomic_load(&f->h->cpu_share_ppm), 250000);
	struct mv_attach_info i = info_of(f);
	assert_int_equal(i.shares_applied, 1);
	assert_int_equal(i.refused, 3);
}

/* A raw message: header fields as given, then plen payload bytes of zero. */
static void d_send_raw(struct fx *f, uint32_t magic, uint16_t type, uint32_t len, size_t plen)
{
	uint8_t buf[MV_AW_HDR + 64] = { 0 };
	uint8_t h[MV_AW_HDR] = { magic, magic >> 8, magic >> 16, magic >> 24, MV_AW_VERSION, 0,
	                         type, type >> 8, len, len >> 8, len >> 16, len >> 24 };
	memcpy(buf, h, sizeof(h));
	assert_true(plen <= 64);
	assert_int_equal(send(f->conn, buf, MV_AW_HDR + plen, MSG_NOSIGNAL), MV_AW_HDR + plen);
}

static void malformed_reconnects(void **state)
{
	struct fx *f = *state;
	struct { uint32_t magic; uint16_t type; uint32_t len; size_t plen; } bad[] = {
		{ 0x12345678, MV_AW_POLL, 8, 8 },                  /* bad magic */
		{ MV_AW_MAGIC, MV_AW_POLL, 9, 9 },                 /* wrong length */
		{ MV_AW_MAGIC, MV_AW_REPORT, MV_AW_MAX_PAYLOAD + 1, 0 }, /* oversized */
		{ MV_AW_MAGIC, MV_AW_HELLO, 36, 36 },              /* not a daemon's message */
	};
	struct mv__aw_msg m;
	for (unsigned i = 0; i < 4; i++) {
		d_accept(f, &m);
		d_poll(f, i, &m);
		d_send_raw(f, bad[i].magic, bad[i].type, bad[i].len, bad[i].plen);
		d_expect_eof(f);
		struct mv_attach_info inf = info_of(f);
		assert_int_equal(inf.refused, i + 1);
	}
	d_accept(f, &m);
	d_poll(f, 9, &m);
	check_report(f, &m, BOTH, 2, true);
	struct mv_attach_info inf = info_of(f);
	assert_int_equal(inf.connects, 5);
	assert_true(inf.connected);
}

static void wait_disconnected(struct fx *f)
{
	for (int ms = 0; info_of(f).connected; ms += 10) {
		assert_true(ms < WAIT_MS);
		usleep(10000);
	}
}

static void daemon_restart(void **state)
{
	struct fx *f = *state;
	struct mv__aw_msg m;
	d_accept(f, &m);
	d_poll(f, 1, &m);
	d_stop(f);
	wait_disconnected(f);
	d_listen(f);
	d_accept(f, &m);
	assert_string_equal(m.u.hello.client, "test-vmm");
	d_poll(f, 1, &m);
	check_report(f, &m, BOTH, 2, true);
	assert_int_equal(info_of(f).connects, 2);
}

/* The link ends its connection when freed (the daemon forgets its VMs), and stops at
 * once while it waits to connect again, whatever retry_ms says. */
static void free_ends_link(void **state)
{
	struct fx *f = *state;
	struct mv__aw_msg m;
	d_accept(f, &m);
	d_poll(f, 1, &m);
	mv_attach_free(f->a);
	f->a = NULL;
	d_expect_eof(f);
}

static void free_while_absent(void **state)
{
	struct fx *f = *state;
	mv_attach_free(f->a);
	d_stop(f);
	link_new(f, f->h, 600000);
	usleep(50000); /* most likely waiting out retry_ms by now */
	mv_attach_free(f->a); /* returns: a wait of 600 s would outlast the runner's timeout */
	f->a = NULL;
}

static void remove_vm(void **state)
{
	struct fx *f = *state;
	struct mv__aw_msg m;
	d_accept(f, &m);
	assert_int_equal(mv_attach_remove_vm(f->a, "alpha"), 0);
	assert_int_equal(mv_attach_remove_vm(f->a, "alpha"), -ENOENT);
	d_poll(f, 1, &m);
	const char *beta[] = { "beta" };
	check_report(f, &m, beta, 1, true);
	d_target(f, "alpha", 4 * MiB);
	d_expect_refuse(f, MV_AW_SET_TARGET, -ENOENT, "alpha");
	assert_int_equal(target_of(f), 0);
	assert_int_equal(mv_attach_add_vm(f->a, "alpha", f->vm[0], f->b), 0);
	d_poll(f, 2, &m);
	const char *again[] = { "beta", "alpha" };
	check_report(f, &m, again, 2, true);
}

static void daemon_refuses_name(void **state)
{
	struct fx *f = *state;
	struct mv__aw_msg m = { .type = MV_AW_REFUSE };
	d_accept(f, &m);
	m = (struct mv__aw_msg){ .type = MV_AW_REFUSE, .u.refuse = { .type = MV_AW_REPORT, .err = -EEXIST } };
	strcpy(m.u.refuse.name, "alpha");
	strcpy(m.u.refuse.why, "another VMM uses that name");
	unsigned warned = atomic_load(&f->warnings);
	d_send(f, &m);
	d_poll(f, 1, &m);
	const char *beta[] = { "beta" };
	check_report(f, &m, beta, 1, true);
	assert_true(atomic_load(&f->warnings) > warned);
	d_target(f, "alpha", 4 * MiB); /* not under the daemon now */
	d_expect_refuse(f, MV_AW_SET_TARGET, -ENOENT, "alpha");
	d_stop(f); /* a new connection tries the name again: it may be free there */
	wait_disconnected(f);
	d_listen(f);
	d_accept(f, &m);
	d_poll(f, 2, &m);
	check_report(f, &m, BOTH, 2, true);
	m = (struct mv__aw_msg){ .type = MV_AW_REFUSE, .u.refuse = { .type = MV_AW_REPORT, .err = -EEXIST } };
	strcpy(m.u.refuse.name, "alpha");
	strcpy(m.u.refuse.why, "another VMM uses that name");
	d_send(f, &m);
	d_poll(f, 3, &m);
	check_report(f, &m, beta, 1, true);
	assert_int_equal(mv_attach_remove_vm(f->a, "alpha"), 0);
	assert_int_equal(mv_attach_add_vm(f->a, "alpha", f->vm[0], f->b), 0);
	d_poll(f, 4, &m);
	const char *both[] = { "beta", "alpha" };
	check_report(f, &m, both, 2, true);
}

static void no_host(void **state)
{
	struct fx *f = *state;
	mv_attach_free(f->a);
	d_stop(f); /* the freed link's connection may wait in the backlog: a fresh listener */
	d_listen(f);
	link_new(f, NULL, 10);
	struct mv__aw_msg m;
	d_accept(f, &m);
	d_poll(f, 1, &m);
	check_report(f, &m, BOTH, 2, false);
	uint64_t ppm = atomic_load(&f->h->cpu_share_ppm);
	m = (struct mv__aw_msg){ .type = MV_AW_SET_SHARE, .u.set_share.micro_cores = 500000 };
	d_send(f, &m);
	d_target(f, "alpha", 8 * MiB);
	d_poll(f, 2, &m); /* no REFUSE came first: the share was ignored */
	assert_int_equal(atomic_load(&f->h->cpu_share_ppm), ppm);
	assert_int_equal(target_of(f), 8 * MiB);
	struct mv_attach_info i = info_of(f);
	assert_int_equal(i.shares_applied, 0);
	assert_int_equal(i.refused, 0);
}

static void api_errors(void **state)
{
	struct fx *f = *state;
	struct mv_attach *a = NULL;
	struct mv_attach_config c;
	char longpath[200];
	memset(longpath, 'p', sizeof(longpath) - 1);
	longpath[sizeof(longpath) - 1] = 0;
	assert_int_equal(mv_host_attach(f->h, NULL, NULL, &a), -EINVAL);
	assert_int_equal(mv_host_attach(f->h, f->path, NULL, NULL), -EINVAL);
	assert_int_equal(mv_host_attach(f->h, longpath, NULL, &a), -EINVAL);
	assert_int_equal(mv_host_attach(f->h, "", NULL, &a), -EINVAL);
	mv_attach_config_init(&c);
	c.retry_ms = 9;
	assert_int_equal(mv_host_attach(f->h, f->path, &c, &a), -EINVAL);
	mv_attach_config_init(&c);
	c.client = "a client name of eighty characters, one more than the seventy-nine that fit, ok!";
	assert_int_equal(mv_host_attach(f->h, f->path, &c, &a), -EINVAL);
	mv_attach_config_init(&c);
	c.size--;
	assert_int_equal(mv_host_attach(f->h, f->path, &c, &a), -EINVAL);
	assert_null(a);
	const char *bad[] = { "", "a b", "x]", "tab\there", "\x7f", NULL,
	                      "sixty-four-characters-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" };
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(mv_attach_add_vm(f->a, bad[i], f->vm[0], NULL), -EINVAL);
	assert_int_equal(mv_attach_add_vm(f->a, "gamma", NULL, NULL), -EINVAL);
	assert_int_equal(mv_attach_add_vm(f->a, "alpha", f->vm[0], NULL), -EEXIST);
	char name[16];
	for (unsigned i = 2; i < MV_AW_MAX_VMS; i++) {
		snprintf(name, sizeof(name), "vm%u", i);
		assert_int_equal(mv_attach_add_vm(f->a, name, f->vm[1], NULL), 0);
	}
	assert_int_equal(mv_attach_add_vm(f->a, "one-too-many", f->vm[1], NULL), -ENOSPC);
	assert_int_equal(mv_attach_remove_vm(f->a, "gamma"), -ENOENT);
	assert_int_equal(mv_attach_info(f->a, NULL), -EINVAL);
	mv_attach_free(NULL);
	/* a full report (64 VMs) goes out whole */
	struct mv__aw_msg m;
	d_accept(f, &m);
	d_poll(f, 1, &m);
	assert_int_equal(m.u.report.nr_vms, MV_AW_MAX_VMS);
	assert_string_equal(m.vms[MV_AW_MAX_VMS - 1].name, "vm63");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(wire_round_trip),
		cmocka_unit_test(wire_truncated),
		cmocka_unit_test(wire_malformed),
		cmocka_unit_test(wire_stream),
		cmocka_unit_test_setup_teardown(hello_welcome_report, setup, teardown),
		cmocka_unit_test_setup_teardown(set_target_applied, setup, teardown),
		cmocka_unit_test_setup_teardown(set_target_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(set_share, setup, teardown),
		cmocka_unit_test_setup_teardown(malformed_reconnects, setup, teardown),
		cmocka_unit_test_setup_teardown(daemon_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(free_ends_link, setup, teardown),
		cmocka_unit_test_setup_teardown(free_while_absent, setup, teardown),
		cmocka_unit_test_setup_teardown(remove_vm, setup, teardown),
		cmocka_unit_test_setup_teardown(daemon_refuses_name, setup, teardown),
		cmocka_unit_test_setup_teardown(no_host, setup, teardown),
		cmocka_unit_test_setup_teardown(api_errors, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
