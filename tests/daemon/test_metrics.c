/* test_metrics.c - the daemon's metrics: the text as prometheus_client's parser reads it and
 * memvirt's naming rules (tests/daemon/promcheck.py), the textfile written atomically, the
 * HTTP endpoint on loopback only, answering GET /metrics, 404 and 405. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "metrics.h"
#include "testutil.h"

#define PYTHON "/usr/bin/python3"
#define PROMCHECK MV_SRC_DIR "/tests/daemon/promcheck.py"
#define MIB (1024ull * 1024)
#define GIB (1024 * MIB)
#define WEB2 "we\"b\\1"

static struct md_vm_view vms[3];
static struct md_wait_view waiting[1];
static struct md_snapshot snap;
static char dir[64];

static void rule(const char *kind, const char *name, uint64_t count)
{
	struct md_rule_count *r = &snap.rules[snap.nr_rules++];
	snprintf(r->kind, sizeof(r->kind), "%s", kind);
	snprintf(r->rule, sizeof(r->rule), "%s", name);
	r->count = count;
}

/* web1: a vhost-user VM with every statistic and the scanner. */
static void vm_web1(struct md_vm_view *v)
{
	snprintf(v->name, sizeof(v->name), "web1");
	snprintf(v->domain, sizeof(v->domain), "vm:web1");
	snprintf(v->source, sizeof(v->source), "vhost-user");
	snprintf(v->client, sizeof(v->client), "qemu-system-x86");
	v->ram_bytes = 8 * GIB;
	v->has_balloon = true;
	v->balloon = (struct mv_balloon_info){ .target_bytes = GIB, .actual_bytes = GIB, .held_bytes = GIB,
		.released_bytes = 3 * GIB, .inflated_bytes = 2 * GIB, .deflated_bytes = GIB,
		.reported_bytes = 512 * MIB, .hinted_bytes = 256 * MIB, .guest_errors = 2,
		.stats_valid = 0xffff, .stats_age_ns = 1500000000 };
	for (int t = 0; t < MV_BSTAT_NR; t++)
		v->balloon.stats[t] = 1000 + t;
	v->balloon.stats[MV_BSTAT_MEMTOT] = 7 * GIB;
	v->balloon.stats[MV_BSTAT_MEMFREE] = 2 * GIB;
	v->balloon.stats[MV_BSTAT_AVAIL] = 3 * GIB;
	v->scanner_valid = true;
	v->scanner = (struct mv_scan_stats){ .pages_scanned = 1u << 22, .pages_shared = 1000,
		.pages_sharing = 30000, .pages_zero = 5000, .pages_volatile = 12, .cow_breaks = 77,
		.full_scans = 9, .cpu_ns = 1500000000, .cow_debt_bytes = 140 * MIB };
	v->min_bytes = GIB;
	v->shares = 2000;
	snprintf(v->rule, sizeof(v->rule), "hold");
	v->decided_bytes = GIB;
	v->report_age_ns = 250000000;
}

/* we"b\1: a linked VMM (agent) whose balloon is stalled, with a few statistics only. */
static void vm_web2(struct md_vm_view *v)
{
	snprintf(v->name, sizeof(v->name), "%s", WEB2);
	snprintf(v->domain, sizeof(v->domain), "tenant-a");
	snprintf(v->source, sizeof(v->source), "agent");
	v->ram_bytes = 4 * GIB;
	v->has_balloon = true;
	v->balloon = (struct mv_balloon_info){ .target_bytes = 2 * GIB, .actual_bytes = GIB + 64 * MIB,
		.held_bytes = GIB + 64 * MIB, .stalled = true, .stalled_ns = 9000000000,
		.stall_gap_bytes = 960 * MIB, .stats_age_ns = 3000000000,
		.stats_valid = 1u << MV_BSTAT_MEMFREE | 1u << MV_BSTAT_AVAIL | 1u << MV_BSTAT_OOM_KILLS };
	v->balloon.stats[MV_BSTAT_MEMFREE] = 100 * MIB;
	v->balloon.stats[MV_BSTAT_AVAIL] = 300 * MIB;
	v->balloon.stats[MV_BSTAT_OOM_KILLS] = 1;
	v->min_bytes = 256 * MIB;
	v->max_bytes = 3 * GIB;
	v->shares = 1000;
	snprintf(v->rule, sizeof(v->rule), "stall_backoff");
	v->decided_bytes = GIB + 64 * MIB;
}

/* batch: no balloon (so no statistics) and no scanner. */
static void vm_batch(struct md_vm_view *v)
{
	snprintf(v->name, sizeof(v->name), "batch");
	snprintf(v->domain, sizeof(v->domain), "tenant-a");
	snprintf(v->source, sizeof(v->source), "vhost-user");
	v->ram_bytes = 2 * GIB;
	v->min_bytes = 256 * MIB;
	v->shares = 500.5;
	snprintf(v->rule, sizeof(v->rule), "no_balloon");
}

static void make_snapshot(void)
{
	memset(&snap, 0, sizeof(snap));
	memset(vms, 0, sizeof(vms));
	vm_web1(&vms[0]);
	vm_web2(&vms[1]);
	vm_batch(&vms[2]);
	snprintf(waiting[0].name, sizeof(waiting[0].name), "db");
	snap = (struct md_snapshot){ .now_ns = 123456789000, .uptime_ns = 3600000000001,
		.host = { .psi_valid = true, .psi_some_avg10 = 12.5, .psi_full_avg10 = 0.25,
			  .psi_some_total_us = 4000001, .psi_full_total_us = 300,
			  .mem_total_bytes = 16 * GIB, .mem_available_bytes = 3 * GIB },
		.goal_bytes = 2 * GIB, .pressured = true, .need_bytes = -64 * (int64_t)MIB,
		.scanner_cpu_share = 0.1, .ticks = 3600, .balloon_bytes = 2 * GIB + 64 * MIB,
		.shared_bytes = 30000 * 4096ull, .zero_bytes = 5000 * 4096ull, .reported_bytes = 512 * MIB,
		.nr_vms = 3, .vms = vms, .nr_waiting = 1, .waiting = waiting };
	snprintf(snap.goal, sizeof(snap.goal), "floor");
	snprintf(snap.host_rule, sizeof(snap.host_rule), "pressure_reclaim");
	rule("host", "pressure_reclaim", 40);
	rule("vm", "stall_backoff", 3);
	rule("apply_error", "set_target", 1);
}

static char *render(const struct md_snapshot *s)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	assert_non_null(f);
	assert_int_equal(md_metrics_render(s, f), 0);
	assert_int_equal(fclose(f), 0);
	return buf;
}

/* Run argv with stdout into out (NULL: inherited), stderr dropped if quiet; its exit
 * status, or -1. */
static int run_q(char *const argv[], const char *out, bool quiet)
{
	pid_t pid = fork();
	int st;

	if (pid == 0) {
		if ((out && !freopen(out, "w", stdout)) || (quiet && !freopen("/dev/null", "w", stderr)))
			_exit(127);
		execv(argv[0], argv);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &st, 0) != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int run(char *const argv[], const char *out)
{
	return run_q(argv, out, false);
}

static bool have_promcheck(void)
{
	char *argv[] = { PYTHON, "-c", "import prometheus_client.parser", NULL };
	return access(PYTHON, X_OK) == 0 && run_q(argv, "/dev/null", true) == 0;
}

#define NEED_PROMCHECK() do { if (!have_promcheck()) \
	TU_SKIP(PYTHON " or its prometheus_client (python3-prometheus-client) is missing"); } while (0)

static void put_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = calloc(1, 1 << 20);
	assert_non_null(f);
	assert_non_null(buf);
	size_t n = fread(buf, 1, (1 << 20) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* promcheck.py on a file with the three VMs expected; its family list, or NULL if it failed. */
static char *promcheck_file(const char *path)
{
	char list[128];
	snprintf(list, sizeof(list), "%s/families", dir);
	char *argv[] = { PYTHON, PROMCHECK, (char *)path, "--vm", "web1", "--vm", WEB2,
			 "--vm", "batch", NULL };
	if (run(argv, list) != 0)
		return NULL;
	return slurp(list);
}

static char *promcheck_text(const char *text)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/text.prom", dir);
	put_file(path, text);
	return promcheck_file(path);
}

static bool has_line_prefix(const char *text, const char *prefix)
{
	size_t n = strlen(prefix);
	for (const char *p = text; p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (!strncmp(p, prefix, n))
			return true;
	return false;
}

static int setup(void **state)
{
	snprintf(dir, sizeof(dir), "/tmp/memvirt-metrics-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	make_snapshot();
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* The rendered text parses, follows the naming rules, and every family is listed. */
static void test_render_parses(void **state)
{
	NEED_PROMCHECK();
	char *text = render(&snap);
	char *fams = promcheck_text(text);
	if (!fams)
		fail_msg("promcheck.py refused the text:\n%s", text);
	fputs(fams, stdout);
	assert_non_null(strstr(fams, "memvirt_vm_balloon_released_bytes_total counter 2\n"));
	assert_non_null(strstr(fams, "memvirt_vm_guest_free_bytes gauge 2\n"));
	assert_non_null(strstr(fams, "memvirt_vm_guest_oom_kills_total counter 2\n"));
	assert_non_null(strstr(fams, "memvirt_vm_guest_swap_in_bytes_total counter 1\n"));
	assert_non_null(strstr(fams, "memvirt_vm_scanner_cpu_seconds_total counter 1\n"));
	assert_non_null(strstr(fams, "memvirt_vm_ram_bytes gauge 3\n"));
	assert_non_null(strstr(fams, "memvirt_host_saved_bytes gauge 3\n"));
	assert_non_null(strstr(fams, "memvirt_decisions_total counter 3\n"));
	free(fams);
	free(text);
}

/* The checker itself: it fails on what it is there to catch. */
static void test_promcheck_catches(void **state)
{
	static const char *const bad[] = {
		"# HELP memvirt_a_total A.\n# TYPE memvirt_a_total counter\nmemvirt_a_total{vm=\"x} 1\n",
		"# HELP memvirt_a A.\n# TYPE memvirt_a counter\nmemvirt_a 1\n",
		"# HELP memvirt_a_bytes A.\n# TYPE memvirt_a_bytes gauge\nmemvirt_a_bytes{vm=\"x\"} 1\nmemvirt_a_bytes{vm=\"x\"} 2\n",
		"# HELP memvirt_a_mib A.\n# TYPE memvirt_a_mib gauge\nmemvirt_a_mib 1\n",
		"# HELP memvirt_a_bytes_free A.\n# TYPE memvirt_a_bytes_free gauge\nmemvirt_a_bytes_free 1\n",
		"memvirt_a_bytes 1\n",
		"# HELP memvirt_a_bytes A.\n# TYPE memvirt_a_bytes gauge\nmemvirt_a_bytes 1 2 3 4\n",
	};
	char path[128];

	NEED_PROMCHECK();
	snprintf(path, sizeof(path), "%s/bad.prom", dir);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		put_file(path, bad[i]);
		char *argv[] = { PYTHON, PROMCHECK, path, NULL };
		if (run_q(argv, "/dev/null", true) != 1)
			fail_msg("promcheck.py accepted:\n%s", bad[i]);
	}
}

/* Series appear only for what is known; values are exact; the odd name is escaped. */
static void test_render_content(void **state)
{
	char *text = render(&snap);
	assert_true(has_line_prefix(text, "memvirt_vm_balloon_stalled{vm=\"we\\\"b\\\\1\",domain=\"tenant-a\",source=\"agent\"} 1\n"));
	assert_true(has_line_prefix(text, "memvirt_vm_balloon_stalled{vm=\"web1\",domain=\"vm:web1\",source=\"vhost-user\"} 0\n"));
	assert_false(has_line_prefix(text, "memvirt_vm_guest_free_bytes{vm=\"batch\""));
	assert_false(has_line_prefix(text, "memvirt_vm_balloon_target_bytes{vm=\"batch\""));
	assert_false(has_line_prefix(text, "memvirt_vm_scanner_pages_merged{vm=\"batch\""));
	assert_false(has_line_prefix(text, "memvirt_vm_guest_swap_in_bytes_total{vm=\"we\\\""));
	assert_true(has_line_prefix(text, "memvirt_vm_guest_oom_kills_total{vm=\"we\\\"b\\\\1\",domain=\"tenant-a\",source=\"agent\"} 1\n"));
	assert_true(has_line_prefix(text, "memvirt_vm_scanner_cpu_seconds_total{vm=\"web1\",domain=\"vm:web1\",source=\"vhost-user\"} 1.500000000\n"));
	assert_true(has_line_prefix(text, "memvirt_vm_shares{vm=\"batch\",domain=\"tenant-a\",source=\"vhost-user\"} 500.5\n"));
	assert_true(has_line_prefix(text, "memvirt_host_psi_some_avg10_ratio 0.125\n"));
	assert_true(has_line_prefix(text, "memvirt_host_psi_some_stall_seconds_total 4.000001\n"));
	assert_true(has_line_prefix(text, "memvirt_host_goal_bytes{goal=\"floor\"} 2147483648\n"));
	assert_true(has_line_prefix(text, "memvirt_host_need_bytes -67108864\n"));
	assert_true(has_line_prefix(text, "memvirt_host_saved_bytes{source=\"sharing\"} 122880000\n"));
	assert_true(has_line_prefix(text, "memvirt_decisions_total{kind=\"apply_error\",rule=\"set_target\"} 1\n"));
	assert_true(has_line_prefix(text, "memvirt_uptime_seconds 3600.000000001\n"));
	assert_false(has_line_prefix(text, "memvirt_host_cgroup_limit_bytes"));
	assert_false(has_line_prefix(text, "memvirt_host_goal_ratio"));
	free(text);
}

/* Without PSI, with a cgroup, the ratio goal and a newline in a name: still valid. */
static void test_render_variants(void **state)
{
	NEED_PROMCHECK();
	snap.host.psi_valid = false;
	snap.host.cgroup_limit_bytes = 12 * GIB;
	snap.host.cgroup_usage_bytes = 10 * GIB;
	snprintf(snap.goal, sizeof(snap.goal), "ratio");
	snap.goal_ratio = 1.5;
	char *text = render(&snap);
	assert_false(has_line_prefix(text, "memvirt_host_psi_"));
	assert_true(has_line_prefix(text, "memvirt_host_cgroup_usage_bytes 10737418240\n"));
	assert_true(has_line_prefix(text, "memvirt_host_goal_ratio 1.5\n"));
	char *fams = promcheck_text(text);
	assert_non_null(fams);
	free(fams);
	free(text);

	snprintf(vms[2].name, sizeof(vms[2].name), "a\nb");
	text = render(&snap);
	assert_true(has_line_prefix(text, "memvirt_vm_ram_bytes{vm=\"a\\nb\",domain=\"tenant-a\",source=\"vhost-user\"} 2147483648\n"));
	char path[128];
	snprintf(path, sizeof(path), "%s/nl.prom", dir);
	put_file(path, text);
	char *argv[] = { PYTHON, PROMCHECK, path, "--vm", "a\nb", NULL };
	assert_int_equal(run(argv, "/dev/null"), 0);
	free(text);
	make_snapshot();
}

/* No VMs at all: no per-VM family, the host's still there. */
static void test_render_empty(void **state)
{
	NEED_PROMCHECK();
	snap.nr_vms = 0;
	snap.nr_rules = 0;
	char *text = render(&snap);
	assert_false(has_line_prefix(text, "# HELP memvirt_vm_"));
	assert_true(has_line_prefix(text, "memvirt_vms 0\n"));
	char path[128];
	snprintf(path, sizeof(path), "%s/empty.prom", dir);
	put_file(path, text);
	char *argv[] = { PYTHON, PROMCHECK, path, NULL };
	assert_int_equal(run(argv, "/dev/null"), 0);
	free(text);
	make_snapshot();
}

/* A stream that fails is an error, not a silent short text. */
static void test_render_write_error(void **state)
{
	FILE *f = fopen("/dev/full", "w");
	if (!f)
		TU_SKIP("/dev/full: %s", strerror(errno));
	setvbuf(f, NULL, _IONBF, 0);
	assert_int_equal(md_metrics_render(&snap, f), -EIO);
	fclose(f);
}

static int count_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;
	assert_non_null(d);
	while ((e = readdir(d)))
		n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	closedir(d);
	return n;
}

/* The textfile: complete, 0644, replaced atomically, no temporary left over. */
static void test_textfile(void **state)
{
	char sub[128], path[160];
	struct stat st;

	snprintf(sub, sizeof(sub), "%s/textfile", dir);
	assert_int_equal(mkdir(sub, 0755), 0);
	snprintf(path, sizeof(path), "%s/memvirt.prom", sub);
	put_file(path, "stale\n");
	assert_int_equal(md_metrics_textfile(&snap, path), 0);
	assert_int_equal(md_metrics_textfile(&snap, path), 0);
	assert_int_equal(count_entries(sub), 1);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0644);
	char *text = render(&snap), *file = slurp(path);
	assert_string_equal(file, text);
	free(file);
	free(text);
	if (have_promcheck()) {
		char *fams = promcheck_file(path);
		assert_non_null(fams);
		free(fams);
	}
	snprintf(path, sizeof(path), "%s/missing/memvirt.prom", sub);
	assert_int_equal(md_metrics_textfile(&snap, path), -ENOENT);
	assert_int_equal(count_entries(sub), 1);
}

/* ---- HTTP ---- */

static int fills;

static int fill(void *opaque, FILE *out)
{
	fills++;
	return md_metrics_render(opaque, out);
}

static int fill_fails(void *opaque, FILE *out)
{
	fputs("half", out);
	return -EAGAIN;
}

/* One HTTP/1.0 request to port; the whole answer (status line, headers, body) in a new buffer. */
static char *http(int family, unsigned port, const char *method, const char *path)
{
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	char req[256], *buf = calloc(1, 1 << 20);
	size_t len = 0;
	ssize_t n;
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_non_null(buf);
	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (family == AF_INET)
		assert_int_equal(connect(fd, (struct sockaddr *)&in, sizeof(in)), 0);
	else
		assert_int_equal(connect(fd, (struct sockaddr *)&in6, sizeof(in6)), 0);
	snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n", method, path);
	assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
	while ((n = read(fd, buf + len, (1 << 20) - 1 - len)) > 0)
		len += (size_t)n;
	assert_true(n == 0);
	close(fd);
	return buf;
}

static int status_of(const char *resp)
{
	int code = 0;
	assert_int_equal(sscanf(resp, "HTTP/1.%*d %d", &code), 1);
	return code;
}

/* The value of header name (case-insensitive) in a copy, or NULL. */
static char *header(const char *resp, const char *name)
{
	const char *end = strstr(resp, "\r\n\r\n");
	size_t n = strlen(name);
	for (const char *p = strstr(resp, "\r\n"); p && p < end; p = strstr(p + 2, "\r\n"))
		if (!strncasecmp(p + 2, name, n) && p[2 + n] == ':')
			return strndup(p + 3 + n + strspn(p + 3 + n, " "), strcspn(p + 3 + n + strspn(p + 3 + n, " "), "\r"));
	return NULL;
}

static void test_http_metrics(void **state)
{
	struct md_http *h;
	assert_int_equal(md_http_start("127.0.0.1:0", fill, &snap, &h), 0);
	unsigned port = md_http_port(h);
	assert_true(port > 0 && port < 65536);

	char *resp = http(AF_INET, port, "GET", "/metrics");
	assert_int_equal(status_of(resp), 200);
	char *type = header(resp, "Content-Type");
	assert_non_null(type);
	assert_string_equal(type, "text/plain; version=0.0.4; charset=utf-8");
	free(type);
	char *body = strstr(resp, "\r\n\r\n") + 4, *text = render(&snap);
	assert_string_equal(body, text);
	if (have_promcheck()) {
		char *fams = promcheck_text(body);
		assert_non_null(fams);
		free(fams);
	}
	free(text);
	free(resp);

	resp = http(AF_INET, port, "GET", "/nope");
	assert_int_equal(status_of(resp), 404);
	free(resp);
	resp = http(AF_INET, port, "GET", "/metrics/x");
	assert_int_equal(status_of(resp), 404);
	free(resp);
	resp = http(AF_INET, port, "POST", "/metrics");
	assert_int_equal(status_of(resp), 405);
	free(resp);
	resp = http(AF_INET, port, "DELETE", "/metrics");
	assert_int_equal(status_of(resp), 405);
	free(resp);
	int before = fills;
	md_http_stop(h);
	assert_int_equal(fills, before);
	assert_int_equal(before, 1);
}

/* fill failing is a 500, and no partial text goes out. */
static void test_http_fill_error(void **state)
{
	struct md_http *h;
	assert_int_equal(md_http_start("localhost:0", fill_fails, NULL, &h), 0);
	char *resp = http(AF_INET, md_http_port(h), "GET", "/metrics");
	assert_int_equal(status_of(resp), 500);
	assert_null(strstr(resp, "half"));
	free(resp);
	md_http_stop(h);
	md_http_stop(NULL);
}

static void test_http_ipv6(void **state)
{
	struct md_http *h;
	int err = md_http_start("[::1]:0", fill, &snap, &h);
	if (err == -EAFNOSUPPORT || err == -EADDRNOTAVAIL)
		TU_SKIP("no IPv6 loopback: %s", strerror(-err));
	assert_int_equal(err, 0);
	char *resp = http(AF_INET6, md_http_port(h), "GET", "/metrics");
	assert_int_equal(status_of(resp), 200);
	free(resp);
	md_http_stop(h);
}

/* Only loopback, only HOST:PORT. */
static void test_http_refused(void **state)
{
	static const char *const bad[] = { "0.0.0.0:9000", "10.0.0.1:1", "[::]:9000", "::ffff:127.0.0.1:1",
		"[::ffff:127.0.0.1]:1", "192.168.1.1:80", "example.com:80", "127.0.0.1", "127.0.0.1:",
		"127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+80", "127.0.0.1:80x", ":9000", "[::1:9000",
		"[]:1", "127.0.0.1 :1", "" };
	struct md_http *h = NULL;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int err = md_http_start(bad[i], fill, &snap, &h);
		if (err != -EINVAL)
			fail_msg("md_http_start(\"%s\") = %d, not -EINVAL", bad[i], err);
	}
	assert_int_equal(md_http_start(NULL, fill, &snap, &h), -EINVAL);
	assert_int_equal(md_http_start("127.0.0.1:0", NULL, &snap, &h), -EINVAL);
	assert_null(h);
	/* A port in use is the bind's error. */
	assert_int_equal(md_http_start("127.0.0.2:0", fill, &snap, &h), 0);
	char taken[32];
	snprintf(taken, sizeof(taken), "127.0.0.2:%u", md_http_port(h));
	struct md_http *h2;
	assert_int_equal(md_http_start(taken, fill, &snap, &h2), -EADDRINUSE);
	md_http_stop(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_promcheck_catches, setup, teardown),
		cmocka_unit_test_setup_teardown(test_render_parses, setup, teardown),
		cmocka_unit_test_setup_teardown(test_render_content, setup, teardown),
		cmocka_unit_test_setup_teardown(test_render_variants, setup, teardown),
		cmocka_unit_test_setup_teardown(test_render_empty, setup, teardown),
		cmocka_unit_test_setup_teardown(test_render_write_error, setup, teardown),
		cmocka_unit_test_setup_teardown(test_textfile, setup, teardown),
		cmocka_unit_test_setup_teardown(test_http_metrics, setup, teardown),
		cmocka_unit_test_setup_teardown(test_http_fill_error, setup, teardown),
		cmocka_unit_test_setup_teardown(test_http_ipv6, setup, teardown),
		cmocka_unit_test_setup_teardown(test_http_refused, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
