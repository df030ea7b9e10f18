/* daemon_cli.c - the admin's commands on memvirtd's control socket: status, set, host,
 * vm add|remove, reload, explain --follow, top. */
#include "bench.h"

#include <errno.h>
#include <json-c/json.h>
#include <memvirt/policy.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_CONTROL "/run/memvirt/control.sock"

/* --control PATH (taken out of argv), else $MEMVIRT_CONTROL, else the default. */
static const char *control_path(int *argc, char **argv)
{
	const char *p = getenv("MEMVIRT_CONTROL");
	for (int i = 1; i < *argc; i++) {
		if (strcmp(argv[i], "--control") || i + 1 >= *argc)
			continue;
		p = argv[i + 1];
		memmove(argv + i, argv + i + 2, (size_t)(*argc - i - 2) * sizeof(*argv));
		*argc -= 2;
		break;
	}
	return p && *p ? p : DEFAULT_CONTROL;
}

static FILE *ctl_open(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(a.sun_path)) {
		fprintf(stderr, "memvirt: %s: path too long\n", path);
		return NULL;
	}
	strcpy(a.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		fprintf(stderr, "memvirt: cannot reach memvirtd at %s: %s%s\n", path, strerror(errno),
		        errno == ENOENT || errno == ECONNREFUSED ? " (is `memvirt daemon` running? "
		        "--control PATH or MEMVIRT_CONTROL name another socket)" : "");
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	return fdopen(fd, "r+");
}

/* Send "1 WORDS..." and read the one-line answer into a parsed object (NULL: said why). */
static json_object *request(FILE *f, int n, char **words)
{
	fputs("1", f);
	for (int i = 0; i < n; i++)
		fprintf(f, " %s", words[i]);
	fputc('\n', f);
	fflush(f);
	char *line = NULL;
	size_t cap = 0;
	json_object *o = getline(&line, &cap, f) > 0 ? json_tokener_parse(line) : NULL;
	if (!o)
		fprintf(stderr, "memvirt: no answer from memvirtd\n");
	free(line);
	return o;
}

static const char *err_of(json_object *o)
{
	json_object *e;
	return json_object_object_get_ex(o, "error", &e) ? json_object_get_string(e) : NULL;
}

static json_object *at(json_object *o, const char *path)
{
	char buf[128], *save = NULL;
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *k = strtok_r(buf, ".", &save); o && k; k = strtok_r(NULL, ".", &save))
		if (!json_object_object_get_ex(o, k, &o))
			return NULL;
	return o;
}

static double num(json_object *o, const char *path)
{
	json_object *x = at(o, path);
	return x ? json_object_get_double(x) : 0;
}

static const char *str(json_object *o, const char *path)
{
	json_object *x = at(o, path);
	return x ? json_object_get_string(x) : "-";
}

/* MiB, or "-" when the figure is absent. */
static void mib_col(char *buf, size_t len, json_object *o, const char *path)
{
	json_object *x = at(o, path);
	if (x)
		snprintf(buf, len, "%.0f", json_object_get_double(x) / 1048576.0);
	else
		snprintf(buf, len, "-");
}

static void render_status(FILE *out, json_object *s)
{
	json_object *h = at(s, "host");
	fprintf(out, "host: goal %s %.0f MiB, guests granted %.0f MiB, rule %s%s, need %+.0f MiB\n",
	        str(h, "goal"), num(h, "goal_bytes") / 1048576.0, num(h, "granted_bytes") / 1048576.0,
	        str(h, "rule"), json_object_get_boolean(at(h, "pressured")) ? ", PRESSURED" : "",
	        num(h, "need_bytes") / 1048576.0);
	fprintf(out, "      MemTotal %.0f MiB, MemAvailable %.0f MiB, PSI some %.2f%% full %.2f%%, "
	        "scanner %.3f cores\n", num(h, "mem_total_bytes") / 1048576.0,
	        num(h, "mem_available_bytes") / 1048576.0, num(h, "psi.some_avg10"),
	        num(h, "psi.full_avg10"), num(h, "scanner_cpu_share"));
	fprintf(out, "saved: balloon %.0f MiB, sharing %.0f MiB, zero pages %.0f MiB (free page "
	        "reporting released %.0f MiB in all)\n", num(h, "savings.balloon_bytes") / 1048576.0,
	        num(h, "savings.sharing_bytes") / 1048576.0, num(h, "savings.zero_bytes") / 1048576.0,
	        num(h, "savings.reported_bytes") / 1048576.0);
	fprintf(out, "\n%-16s %-10s %7s %7s %7s %5s %6s %6s %7s %7s %6s %6s %6s  %s\n", "VM",
	        "SOURCE", "RAM", "TARGET", "ACTUAL", "STALL", "SHARED", "ZERO", "FREE", "AVAIL",
	        "MIN", "MAX", "SHARES", "LAST DECISION");
	json_object *vms = at(s, "vms");
	for (size_t i = 0; vms && i < json_object_array_length(vms); i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		char c[8][16];
		mib_col(c[0], 16, v, "balloon.target_bytes");
		mib_col(c[1], 16, v, "balloon.actual_bytes");
		mib_col(c[2], 16, v, "guest.free_bytes");
		mib_col(c[3], 16, v, "guest.available_bytes");
		mib_col(c[4], 16, v, "settings.max_bytes");
		if (!num(v, "settings.max_bytes"))
			snprintf(c[4], 16, "none");
		const char *cap = str(v, "decision.cap");
		fprintf(out, "%-16s %-10s %7.0f %7s %7s %5s %6.0f %6.0f %7s %7s %6.0f %6s %6.0f  %s%s%s\n",
		        str(v, "name"), str(v, "source"), num(v, "ram_bytes") / 1048576.0, c[0], c[1],
		        json_object_get_boolean(at(v, "balloon.stalled")) ? "yes" : "no",
		        num(v, "shared_bytes") / 1048576.0, num(v, "zero_bytes") / 1048576.0, c[2], c[3],
		        num(v, "settings.min_bytes") / 1048576.0, c[4], num(v, "settings.shares"),
		        str(v, "decision.rule"), strcmp(cap, "-") ? " cut by " : "",
		        strcmp(cap, "-") ? cap : "");
	}
	json_object *w = at(s, "waiting");
	for (size_t i = 0; w && i < json_object_array_length(w); i++) {
		json_object *v = json_object_array_get_idx(w, i);
		fprintf(out, "%-16s %-10s waiting for its VMM on %s\n", str(v, "name"), "vhost-user",
		        str(v, "socket"));
	}
	fprintf(out, "(sizes in MiB)\n");
}

/* status [--json], set, host, vm, reload: one request, its answer. */
static int one(const char *path, int n, char **words, bool json, bool table)
{
	FILE *f = ctl_open(path);
	if (!f)
		return 1;
	json_object *o = request(f, n, words);
	fclose(f);
	if (!o)
		return 1;
	const char *e = err_of(o);
	int rc = e ? 1 : 0;
	if (e)
		fprintf(stderr, "memvirt %s: %s\n", words[0], e);
	else if (json)
		printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	else if (table)
		render_status(stdout, o);
	else
		printf("ok\n");
	json_object_put(o);
	return rc;
}

static int follow(const char *path, bool json)
{
	FILE *f = ctl_open(path);
	if (!f)
		return 1;
	char *arg = "follow";
	json_object *o = request(f, 1, &arg);
	const char *e = o ? err_of(o) : "no answer";
	if (e) {
		fprintf(stderr, "memvirt explain --follow: %s\n", e);
		json_object_put(o);
		fclose(f);
		return 1;
	}
	json_object_put(o);
	setvbuf(stdout, NULL, _IOLBF, 0);
	int rc = 0;
	if (json) {
		char *line = NULL;
		size_t cap = 0;
		while (getline(&line, &cap, f) > 0)
			fputs(line, stdout);
		free(line);
	} else {
		rc = mv_policy_explain(f, stdout) ? 1 : 0;
	}
	fclose(f);
	fprintf(stderr, "memvirt explain --follow: memvirtd closed the stream\n");
	return rc;
}

static volatile sig_atomic_t top_stop;
static void on_int(int sig) { top_stop = sig; }

static int top(const char *path, unsigned iterations, unsigned interval_ms)
{
	signal(SIGINT, on_int);
	signal(SIGTERM, on_int);
	for (unsigned i = 0; !top_stop && (!iterations || i < iterations); i++) {
		FILE *f = ctl_open(path);
		char *arg = "status";
		json_object *o = f ? request(f, 1, &arg) : NULL;
		if (f)
			fclose(f);
		if (!o)
			return 1;
		printf("\033[H\033[2Jmemvirt top - every %.1f s, Ctrl-C to quit\n\n", interval_ms / 1e3);
		render_status(stdout, o);
		fflush(stdout);
		json_object_put(o);
		if (!iterations || i + 1 < iterations)
			usleep(interval_ms * 1000);
	}
	return 0;
}

int daemon_cli_main(int argc, char **argv)
{
	const char *path = control_path(&argc, argv);
	const char *cmd = argv[0];
	for (int i = 1; i < argc; i++)
		if (strpbrk(argv[i], " \t\r\n")) {
			fprintf(stderr, "memvirt %s: '%s': words cannot contain spaces\n", cmd, argv[i]);
			return 2;
		}
	bool json = argc >= 2 && !strcmp(argv[argc - 1], "--json");
	if (!strcmp(cmd, "status"))
		return one(path, 1, argv, json, true);
	if (!strcmp(cmd, "set") || !strcmp(cmd, "host") || !strcmp(cmd, "vm") || !strcmp(cmd, "reload"))
		return argc > 16 ? (fprintf(stderr, "memvirt %s: too many arguments\n", cmd), 2)
		                 : one(path, argc, argv, false, false);
	if (!strcmp(cmd, "explain"))
		return follow(path, json);
	if (!strcmp(cmd, "top")) {
		uint64_t it = 0, ms = 1000;
		for (int i = 1; i + 1 < argc; i += 2) {
			if (!strcmp(argv[i], "--iterations") && !bench_arg_uint("--iterations", argv[i + 1], 1, 1000000, &it))
				continue;
			if (!strcmp(argv[i], "--interval-ms") && !bench_arg_uint("--interval-ms", argv[i + 1], 100, 3600000, &ms))
				continue;
			fprintf(stderr, "usage: memvirt top [--iterations N] [--interval-ms MS] [--control PATH]\n");
			return 2;
		}
		return top(path, (unsigned)it, (unsigned)ms);
	}
	return 2;
}
