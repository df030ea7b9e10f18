/* metrics.c - the daemon's snapshot as Prometheus text (0.0.4), as a textfile, over HTTP. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include "metrics.h"

#define PAGE_BYTES 4096ull

/* ---- Text ---- */

/* How a per-VM value is stored and printed. */
enum md_kind { K_U64, K_BOOL, K_F64, K_NS };  /* K_NS: nanoseconds, printed as seconds */
/* When a VM has the series at all. */
enum md_cond { C_ALL, C_BALLOON, C_STAT, C_STATS_AGE, C_SCANNER };

struct vm_metric {
	const char *name, *type, *help;
	enum md_cond cond;
	int tag;                      /* C_STAT: MV_BSTAT_* the guest must have reported */
	enum md_kind kind;
	size_t off;                   /* of the value in struct md_vm_view */
};

#define VF(f) offsetof(struct md_vm_view, f)
#define BF(f) offsetof(struct md_vm_view, balloon.f)
#define SF(f) offsetof(struct md_vm_view, scanner.f)
#define G "gauge"
#define C "counter"
#define STAT(name, type, help, tag) { name, type, help, C_STAT, tag, K_U64, BF(stats[tag]) }

static const struct vm_metric vm_metrics[] = {
	{ "memvirt_vm_ram_bytes", G, "Guest RAM.", C_ALL, 0, K_U64, VF(ram_bytes) },
	{ "memvirt_vm_min_bytes", G, "Memory the VM always keeps (policy min_mib).", C_ALL, 0, K_U64, VF(min_bytes) },
	{ "memvirt_vm_max_bytes", G, "Memory the VM never exceeds (policy max_mib); 0 means no cap.", C_ALL, 0, K_U64, VF(max_bytes) },
	{ "memvirt_vm_shares", G, "Relative right to memory under contention (policy shares).", C_ALL, 0, K_F64, VF(shares) },
	{ "memvirt_vm_decided_target_bytes", G, "Balloon target the policy last chose.", C_ALL, 0, K_U64, VF(decided_bytes) },
	{ "memvirt_vm_report_age_seconds", G, "Time since the VM's last report.", C_ALL, 0, K_NS, VF(report_age_ns) },
	{ "memvirt_vm_balloon_target_bytes", G, "Balloon size asked of the guest.", C_BALLOON, 0, K_U64, BF(target_bytes) },
	{ "memvirt_vm_balloon_actual_bytes", G, "Balloon size the guest reports.", C_BALLOON, 0, K_U64, BF(actual_bytes) },
	{ "memvirt_vm_balloon_held_bytes", G, "Pages the device holds as ballooned now.", C_BALLOON, 0, K_U64, BF(held_bytes) },
	{ "memvirt_vm_balloon_stalled", G, "1 if the balloon made no progress toward its target for the stall time.", C_BALLOON, 0, K_BOOL, BF(stalled) },
	{ "memvirt_vm_balloon_needs_reset", G, "1 if the device needs a reset after a malformed request.", C_BALLOON, 0, K_BOOL, BF(needs_reset) },
	{ "memvirt_vm_balloon_released_bytes_total", C, "Host memory given back (inflate, reporting, hints).", C_BALLOON, 0, K_U64, BF(released_bytes) },
	{ "memvirt_vm_balloon_inflated_bytes_total", C, "Pages inflated, from the queues.", C_BALLOON, 0, K_U64, BF(inflated_bytes) },
	{ "memvirt_vm_balloon_deflated_bytes_total", C, "Pages deflated, from the queues.", C_BALLOON, 0, K_U64, BF(deflated_bytes) },
	{ "memvirt_vm_balloon_reported_bytes_total", C, "Free page reporting.", C_BALLOON, 0, K_U64, BF(reported_bytes) },
	{ "memvirt_vm_balloon_hinted_bytes_total", C, "Free page hints received.", C_BALLOON, 0, K_U64, BF(hinted_bytes) },
	{ "memvirt_vm_balloon_guest_errors_total", C, "Guest requests or PFNs refused.", C_BALLOON, 0, K_U64, BF(guest_errors) },
	STAT("memvirt_vm_guest_free_bytes", G, "Guest free memory (MemFree).", MV_BSTAT_MEMFREE),
	STAT("memvirt_vm_guest_available_bytes", G, "Guest available memory (MemAvailable).", MV_BSTAT_AVAIL),
	STAT("memvirt_vm_guest_total_bytes", G, "Guest total memory (MemTotal).", MV_BSTAT_MEMTOT),
	STAT("memvirt_vm_guest_caches_bytes", G, "Guest page cache.", MV_BSTAT_CACHES),
	STAT("memvirt_vm_guest_swap_in_bytes_total", C, "Guest memory swapped in.", MV_BSTAT_SWAP_IN),
	STAT("memvirt_vm_guest_swap_out_bytes_total", C, "Guest memory swapped out.", MV_BSTAT_SWAP_OUT),
	STAT("memvirt_vm_guest_major_faults_total", C, "Guest major page faults.", MV_BSTAT_MAJFLT),
	STAT("memvirt_vm_guest_minor_faults_total", C, "Guest minor page faults.", MV_BSTAT_MINFLT),
	STAT("memvirt_vm_guest_oom_kills_total", C, "Guest OOM kills.", MV_BSTAT_OOM_KILLS),
	STAT("memvirt_vm_guest_alloc_stalls_total", C, "Guest allocation stalls.", MV_BSTAT_ALLOC_STALLS),
	{ "memvirt_vm_guest_stats_age_seconds", G, "Time since the guest's last statistics report.", C_STATS_AGE, 0, K_NS, BF(stats_age_ns) },
	{ "memvirt_vm_scanner_pages_merged", G, "Guest pages backed by a page shared in the VM's trust domain (the saving is the domain's: memvirt_host_saved_bytes).", C_SCANNER, 0, K_U64, SF(pages_merged) },
	{ "memvirt_vm_scanner_pages_zero", G, "Zero pages released.", C_SCANNER, 0, K_U64, SF(pages_zero) },
	{ "memvirt_vm_scanner_pages_volatile", G, "Pages found written again since the last look.", C_SCANNER, 0, K_U64, SF(pages_volatile) },
	{ "memvirt_vm_scanner_cow_debt_bytes", G, "Memory needed if every shared and zero page were written.", C_SCANNER, 0, K_U64, SF(cow_debt_bytes) },
	{ "memvirt_vm_scanner_cow_breaks_total", C, "Merged pages that got a private copy on write.", C_SCANNER, 0, K_U64, SF(cow_breaks) },
	{ "memvirt_vm_scanner_pages_scanned_total", C, "Pages hashed.", C_SCANNER, 0, K_U64, SF(pages_scanned) },
	{ "memvirt_vm_scanner_full_scans_total", C, "Complete passes over the VM's memory.", C_SCANNER, 0, K_U64, SF(full_scans) },
	{ "memvirt_vm_scanner_cpu_seconds_total", C, "CPU time spent scanning.", C_SCANNER, 0, K_NS, SF(cpu_ns) },
};

static void put_head(FILE *out, const char *name, const char *type, const char *help)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value, at most max bytes of s, escaped as the format asks. */
static void put_escaped(FILE *out, const char *s, size_t max)
{
	for (size_t i = 0; i < max && s[i]; i++) {
		if (s[i] == '\\' || s[i] == '"')
			fputc('\\', out);
		if (s[i] == '\n')
			fputs("\\n", out);
		else
			fputc(s[i], out);
	}
}

static void put_label(FILE *out, const char *sep, const char *key, const char *val, size_t max)
{
	fprintf(out, "%s%s=\"", sep, key);
	put_escaped(out, val, max);
	fputc('"', out);
}

static void put_f64(FILE *out, double v)
{
	if (isnan(v))
		fputs("NaN", out);
	else if (isinf(v))
		fputs(v > 0 ? "+Inf" : "-Inf", out);
	else
		fprintf(out, "%.15g", v);
}

/* A count of 10^-digits units as a decimal number of whole units, exactly. */
static void put_scaled(FILE *out, uint64_t v, uint64_t per, int digits)
{
	fprintf(out, "%" PRIu64 ".%0*" PRIu64, v / per, digits, v % per);
}

static void put_vm_value(FILE *out, const struct vm_metric *m, const struct md_vm_view *v)
{
	const char *p = (const char *)v + m->off;

	switch (m->kind) {
	case K_U64: fprintf(out, "%" PRIu64, *(const uint64_t *)p); break;
	case K_BOOL: fputs(*(const bool *)p ? "1" : "0", out); break;
	case K_F64: put_f64(out, *(const double *)p); break;
	case K_NS: put_scaled(out, *(const uint64_t *)p, 1000000000, 9); break;
	}
}

static bool vm_has(const struct vm_metric *m, const struct md_vm_view *v)
{
	switch (m->cond) {
	case C_ALL: return true;
	case C_BALLOON: return v->has_balloon;
	case C_STAT: return v->has_balloon && (v->balloon.stats_valid & (1u << m->tag));
	case C_STATS_AGE: return v->has_balloon && v->balloon.stats_age_ns != UINT64_MAX;
	case C_SCANNER: return v->scanner_valid;
	}
	return false;
}

/* One per-VM family: its head (only if some VM has the series), then a series per VM. */
static void put_vm_family(FILE *out, const struct vm_metric *m, const struct md_snapshot *s)
{
	bool head = false;

	for (unsigned i = 0; i < s->nr_vms; i++) {
		const struct md_vm_view *v = &s->vms[i];
		if (!vm_has(m, v))
			continue;
		if (!head)
			put_head(out, m->name, m->type, m->help);
		head = true;
		fputs(m->name, out);
		put_label(out, "{", "vm", v->name, sizeof(v->name));
		put_label(out, ",", "domain", v->domain, sizeof(v->domain));
		put_label(out, ",", "source", v->source, sizeof(v->source));
		fputs("} ", out);
		put_vm_value(out, m, v);
		fputc('\n', out);
	}
}

static void one_u64(FILE *out, const char *name, const char *type, const char *help, uint64_t v)
{
	put_head(out, name, type, help);
	fprintf(out, "%s %" PRIu64 "\n", name, v);
}

static void one_f64(FILE *out, const char *name, const char *help, double v)
{
	put_head(out, name, G, help);
	fprintf(out, "%s ", name);
	put_f64(out, v);
	fputc('\n', out);
}

static void one_scaled(FILE *out, const char *name, const char *type, const char *help,
		       uint64_t v, uint64_t per, int digits)
{
	put_head(out, name, type, help);
	fprintf(out, "%s ", name);
	put_scaled(out, v, per, digits);
	fputc('\n', out);
}

static void put_psi(FILE *out, const struct mv_policy_host_inputs *h)
{
	if (!h->psi_valid)
		return;
	one_f64(out, "memvirt_host_psi_some_avg10_ratio",
		"Share of the last 10 s some task stalled on memory (PSI some avg10 / 100).", h->psi_some_avg10 / 100);
	one_f64(out, "memvirt_host_psi_full_avg10_ratio",
		"Share of the last 10 s all tasks stalled on memory (PSI full avg10 / 100).", h->psi_full_avg10 / 100);
	one_scaled(out, "memvirt_host_psi_some_stall_seconds_total", C,
		   "Time some task stalled on memory (PSI some total).", h->psi_some_total_us, 1000000, 6);
	one_scaled(out, "memvirt_host_psi_full_stall_seconds_total", C,
		   "Time all tasks stalled on memory (PSI full total).", h->psi_full_total_us, 1000000, 6);
}

static void put_memory(FILE *out, const struct md_snapshot *s)
{
	const struct mv_policy_host_inputs *h = &s->host;

	one_u64(out, "memvirt_host_memory_total_bytes", G, "Host MemTotal.", h->mem_total_bytes);
	one_u64(out, "memvirt_host_memory_available_bytes", G, "Host MemAvailable.", h->mem_available_bytes);
	if (h->cgroup_limit_bytes) {
		one_u64(out, "memvirt_host_cgroup_limit_bytes", G, "Memory limit of the policy's cgroup.", h->cgroup_limit_bytes);
		one_u64(out, "memvirt_host_cgroup_usage_bytes", G, "Memory usage of the policy's cgroup.", h->cgroup_usage_bytes);
	}
}

static void put_goal(FILE *out, const struct md_snapshot *s)
{
	put_head(out, "memvirt_host_goal_bytes", G,
		 "The host goal: memory kept available (floor), granted at most (ratio, ratio x host memory) or budget.");
	fputs("memvirt_host_goal_bytes", out);
	put_label(out, "{", "goal", s->goal, sizeof(s->goal));
	fprintf(out, "} %" PRIu64 "\n", s->goal_bytes);
	if (!strcmp(s->goal, "ratio"))
		one_f64(out, "memvirt_host_goal_ratio", "The overcommit ratio of the ratio goal.", s->goal_ratio);
	one_u64(out, "memvirt_host_pressured", G, "1 if the host is under memory pressure (PSI hysteresis).", s->pressured);
	put_head(out, "memvirt_host_need_bytes", G, "Memory the host needs back (negative: can give to guests).");
	fprintf(out, "memvirt_host_need_bytes %" PRId64 "\n", s->need_bytes);
	one_f64(out, "memvirt_host_scanner_cpu_share", "CPU share of the page-sharing scanner (cores per worker).",
		s->scanner_cpu_share);
}

static void put_savings(FILE *out, const struct md_snapshot *s)
{
	static const char *const src[] = { "balloon", "sharing", "zero" };
	const uint64_t val[] = { s->balloon_bytes, s->shared_bytes, s->zero_bytes };

	put_head(out, "memvirt_host_saved_bytes", G,
		 "Guest memory the host does not back now, by source (balloons, page sharing, zero pages).");
	for (unsigned i = 0; i < 3; i++)
		fprintf(out, "memvirt_host_saved_bytes{source=\"%s\"} %" PRIu64 "\n", src[i], val[i]);
	one_u64(out, "memvirt_host_reported_bytes_total", C,
		"Guest memory released by free page reporting, summed over VMs.", s->reported_bytes);
}

static void put_decisions(FILE *out, const struct md_snapshot *s)
{
	unsigned n = s->nr_rules < MD_MAX_RULES ? s->nr_rules : MD_MAX_RULES;

	if (!n)
		return;
	put_head(out, "memvirt_decisions_total", C, "Decision records written, by kind and rule.");
	for (unsigned i = 0; i < n; i++) {
		const struct md_rule_count *r = &s->rules[i];
		fputs("memvirt_decisions_total", out);
		put_label(out, "{", "kind", r->kind, sizeof(r->kind));
		put_label(out, ",", "rule", r->rule, sizeof(r->rule));
		fprintf(out, "} %" PRIu64 "\n", r->count);
	}
}

int md_metrics_render(const struct md_snapshot *s, FILE *out)
{
	for (size_t i = 0; i < sizeof(vm_metrics) / sizeof(vm_metrics[0]); i++)
		put_vm_family(out, &vm_metrics[i], s);
	put_psi(out, &s->host);
	put_memory(out, s);
	put_goal(out, s);
	put_savings(out, s);
	one_u64(out, "memvirt_vms", G, "VMs served now.", s->nr_vms);
	one_u64(out, "memvirt_vms_waiting", G, "VMs configured that have no VMM connected.", s->nr_waiting);
	put_decisions(out, s);
	one_u64(out, "memvirt_policy_ticks_total", C, "Policy periods run.", s->ticks);
	one_scaled(out, "memvirt_uptime_seconds", G, "Time since the daemon started.", s->uptime_ns, 1000000000, 9);
	return ferror(out) ? -EIO : 0;
}

/* ---- Textfile ---- */

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int err = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd))
		err = -errno;
	close(fd);
	return err;
}

/* Render into the open temp file fd (consumed), flushed and fsync'ed. */
static int write_tmp(const struct md_snapshot *s, int fd)
{
	FILE *f = fdopen(fd, "w");
	int err;

	if (!f) {
		err = -errno;
		close(fd);
		return err;
	}
	err = md_metrics_render(s, f);
	if (!err && fflush(f))
		err = -errno;
	if (!err && fsync(fileno(f)))
		err = -errno;
	if (fclose(f) && !err)
		err = -errno;
	return err;
}

int md_metrics_textfile(const struct md_snapshot *s, const char *path)
{
	const char *slash = strrchr(path, '/');
	int dlen = slash ? (int)(slash - path) : 1;
	const char *dir = slash ? path : ".";
	char tmp[4096], dirbuf[4096];
	int fd, err;

	if (slash == path)
		dlen = 1;
	/* Not *.prom: the collector must never read a half-written file. */
	if (snprintf(tmp, sizeof(tmp), "%.*s/.%s.XXXXXX", dlen, dir, slash ? slash + 1 : path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	snprintf(dirbuf, sizeof(dirbuf), "%.*s", dlen, dir);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fchmod(fd, 0644)) {
		err = -errno;
		close(fd);
		goto err_unlink;
	}
	err = write_tmp(s, fd);
	if (err)
		goto err_unlink;
	if (rename(tmp, path)) {
		err = -errno;
		goto err_unlink;
	}
	return fsync_dir(dirbuf);
err_unlink:
	unlink(tmp);
	return err;
}

/* ---- HTTP ---- */

struct md_http {
	struct MHD_Daemon *mhd;
	int (*fill)(void *opaque, FILE *out);
	void *opaque;
	unsigned port;
};

/* HOST of "HOST:PORT" into host (brackets removed), PORT into *port. */
static int split_listen(const char *listen, char *host, size_t size, unsigned *port)
{
	const char *colon = strrchr(listen, ':'), *h = listen;
	size_t hlen;
	char *end;

	if (!colon || !colon[1] || strspn(colon + 1, "0123456789") != strlen(colon + 1))
		return -EINVAL;
	errno = 0;
	unsigned long v = strtoul(colon + 1, &end, 10);
	if (errno || v > 65535)
		return -EINVAL;
	hlen = (size_t)(colon - listen);
	if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
		h++;
		hlen -= 2;
	}
	if (hlen == 0 || hlen >= size || memchr(h, '[', hlen) || memchr(h, ']', hlen))
		return -EINVAL;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	*port = (unsigned)v;
	return 0;
}

/* A loopback address literal (or "localhost") and port as a socket address; -EINVAL otherwise. */
static int parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *len)
{
	struct sockaddr_in *in = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	char host[INET6_ADDRSTRLEN];
	unsigned port;

	memset(ss, 0, sizeof(*ss));
	if (!listen || split_listen(listen, host, sizeof(host), &port))
		return -EINVAL;
	if (!strcmp(host, "localhost"))
		strcpy(host, "127.0.0.1");
	if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
		if ((ntohl(in->sin_addr.s_addr) >> 24) != 127)
			return -EINVAL;
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)port);
		*len = sizeof(*in);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1 && IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		*len = sizeof(*in6);
		return 0;
	}
	return -EINVAL;
}

/* A listening socket bound to ss; the port it got in *port. 0 or -errno. */
static int listen_on(const struct sockaddr_storage *ss, socklen_t len, int *fdp, unsigned *port)
{
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, err;
	struct sockaddr_storage got;
	socklen_t glen = sizeof(got);

	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)))
		goto err_sock;
	if (ss->ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)))
		goto err_sock;
	if (bind(fd, (const struct sockaddr *)ss, len) || listen(fd, 16))
		goto err_sock;
	if (getsockname(fd, (struct sockaddr *)&got, &glen))
		goto err_sock;
	*port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
						 : ((struct sockaddr_in *)&got)->sin_port);
	*fdp = fd;
	return 0;
err_sock:
	err = -errno;
	close(fd);
	return err;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, struct MHD_Response *r,
			     const char *type, const char *allow)
{
	enum MHD_Result ret;

	if (!r)
		return MHD_NO;
	if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type) != MHD_YES ||
	    (allow && MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow) != MHD_YES))
		ret = MHD_NO;
	else
		ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *body,
				  const char *allow)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body,
								 MHD_RESPMEM_PERSISTENT);
	return reply(c, status, r, "text/plain; charset=utf-8", allow);
}

static enum MHD_Result reply_metrics(struct md_http *h, struct MHD_Connection *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	int err;

	if (!f)
		return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n", NULL);
	err = h->fill(h->opaque, f);
	if (fclose(f) || err) {
		free(buf);
		return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "metrics unavailable\n", NULL);
	}
	struct MHD_Response *r = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
	if (!r)
		free(buf);
	return reply(c, MHD_HTTP_OK, r, "text/plain; version=0.0.4; charset=utf-8", NULL);
}

/* Called on the first line and headers (req_cls NULL), per body chunk, then once more. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_size, void **req_cls)
{
	struct md_http *h = cls;

	if (!*req_cls) {
		*req_cls = h;
		return MHD_YES;
	}
	if (*upload_size) {           /* a body is not wanted: read and dropped */
		*upload_size = 0;
		return MHD_YES;
	}
	if (strcmp(url, "/metrics"))
		return reply_text(c, MHD_HTTP_NOT_FOUND, "not found\n", NULL);
	if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
		return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n", "GET, HEAD");
	return reply_metrics(h, c);
}

int md_http_start(const char *listen, int (*fill)(void *opaque, FILE *out), void *opaque,
		  struct md_http **out)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct md_http *h;
	int fd = -1, err;

	if (!fill || !out || parse_listen(listen, &ss, &len))
		return -EINVAL;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->fill = fill;
	h->opaque = opaque;
	err = listen_on(&ss, len, &fd, &h->port);
	if (err)
		goto err_listen;
	/* MHD owns fd from here; on a failed start it may already have closed it: not closed
	 * again here (a leak at worst, never a double close in a threaded daemon). */
	h->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO, 0, NULL, NULL,
				  on_request, h, MHD_OPTION_LISTEN_SOCKET, fd,
				  MHD_OPTION_CONNECTION_LIMIT, 16u, MHD_OPTION_CONNECTION_TIMEOUT, 10u,
				  MHD_OPTION_END);
	if (!h->mhd) {
		err = -EIO;
		goto err_listen;
	}
	*out = h;
	return 0;
err_listen:
	free(h);
	return err;
}

unsigned md_http_port(struct md_http *h)
{
	return h->port;
}

void md_http_stop(struct md_http *h)
{
	if (!h)
		return;
	MHD_stop_daemon(h->mhd);
	free(h);
}
