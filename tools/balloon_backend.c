/* balloon_backend.c - `memvirt balloon-backend`: memvirt's virtio-balloon device as a
 * vhost-user backend, for crosvm, cloud-hypervisor or user-mode Linux. */
#include "bench.h"
#include "vu_serve.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: memvirt balloon-backend --socket PATH [options]\n\n"
	        "Listen on PATH and serve one virtio-balloon device per vhost-user connection.\n"
	        "  --socket PATH        vhost-user socket (a stale socket file is replaced)\n"
	        "  --control PATH       control socket: one command per line, a JSON line back:\n"
	        "                         target [ID] SIZE   balloon target (units K, M, G)\n"
	        "                         info               every connection's state\n"
	        "                         stats [ID]         ask the guest for fresh statistics\n"
	        "                         hint start|stop [ID]  free page hint run\n"
	        "                       (memvirt balloon-ctl PATH target 512M)\n"
	        "  --target SIZE        target for every new connection (default 0)\n"
	        "  --log-ms N           a JSON info line per connection every N ms (default 1000; 0 off)\n"
	        "  --max-conns N        connections served at once (default 8)\n"
	        "  --features LIST      balloon features offered, comma-separated (default all):\n"
	        "                       tell-host,stats,deflate-on-oom,free-page-hint,page-poison,\n"
	        "                       page-reporting\n"
	        "  --inband             offer in-band notifications\n"
	        "  --no-release         acknowledge pages but release none (transport baseline)\n"
	        "  --attach PATH --name VM  serve one VM under memvirtd (its agent socket): the\n"
	        "                       daemon decides the target (memvirt vm add starts this)\n"
	        "Examples: cloud-hypervisor ... --generic-vhost-user socket=PATH,virtio_id=5,queue_sizes=[256,256,256,256,256]\n"
	        "          linux.uml mem=512M ... virtio_uml.device=PATH:5\n"
	        "Runs until SIGINT or SIGTERM.\n");
}

/* A comma-separated list of feature names: the mask, or 0 after a message. */
static uint64_t parse_features(const char *list)
{
	static const char *const names[] = { "tell-host", "stats", "deflate-on-oom",
	                                      "free-page-hint", "page-poison", "page-reporting" };
	char buf[256], *save = NULL;
	uint64_t mask = 0;
	snprintf(buf, sizeof(buf), "%s", list);
	for (char *w = strtok_r(buf, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
		unsigned i = 0;
		while (i < 6 && strcmp(w, names[i]))
			i++;
		if (i == 6) {
			fprintf(stderr, "memvirt balloon-backend: --features: unknown feature '%s' "
			        "(tell-host, stats, deflate-on-oom, free-page-hint, page-poison, "
			        "page-reporting)\n", w);
			return 0;
		}
		mask |= 1ull << i;
	}
	if (!mask)
		fprintf(stderr, "memvirt balloon-backend: --features wants at least one feature\n");
	return mask;
}

static int parse(int argc, char **argv, struct vu_serve_opts *o)
{
	static const struct option lo[] = {
		{ "socket", 1, 0, 's' }, { "control", 1, 0, 'c' }, { "target", 1, 0, 't' },
		{ "target-mib", 1, 0, 'T' }, { "log-ms", 1, 0, 'l' }, { "max-conns", 1, 0, 'm' },
		{ "features", 1, 0, 'f' }, { "inband", 0, 0, 'i' }, { "no-release", 0, 0, 'n' },
		{ "attach", 1, 0, 'a' }, { "name", 1, 0, 'N' }, { "help", 0, 0, 'h' }, { 0 } };
	int c;
	double mib;
	uint64_t v;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': o->socket = optarg; break;
		case 'c': o->control = optarg; break;
		case 't': case 'T':
			if (bench_arg_size_mib(c == 't' ? "--target" : "--target-mib", optarg, 0, 1 << 24, 1, &mib))
				return 2;
			o->target_bytes = (uint64_t)(mib * 1048576.0);
			break;
		case 'l':
			if (bench_arg_uint("--log-ms", optarg, 0, 3600000, &v))
				return 2;
			o->log_every_ms = (unsigned)v;
			break;
		case 'm':
			if (bench_arg_uint("--max-conns", optarg, 1, 64, &v))
				return 2;
			o->max_conns = (unsigned)v;
			break;
		case 'f':
			if (!(o->features = parse_features(optarg)))
				return 2;
			break;
		case 'i': o->inband = true; break;
		case 'n': o->no_release = true; break;
		case 'a': o->attach = optarg; break;
		case 'N': o->name = optarg; break;
		case 'h': usage(stdout); return 1;
		default: usage(stderr); return 2;
		}
	}
	if (!o->attach != !o->name) {
		fprintf(stderr, "memvirt balloon-backend: --attach and --name go together\n");
		return 2;
	}
	if (optind != argc || !o->socket) {
		fprintf(stderr, "memvirt balloon-backend: %s\n", optind != argc ? "unexpected argument" : "--socket PATH is required");
		return 2;
	}
	return 0;
}

int balloon_backend_main(int argc, char **argv)
{
	struct vu_serve_opts o = { .log_every_ms = 1000, .log = stdout };
	int r = parse(argc, argv, &o);
	if (r)
		return r == 1 ? 0 : r;
	sigset_t ss;
	sigemptyset(&ss);
	sigaddset(&ss, SIGINT);
	sigaddset(&ss, SIGTERM);
	sigprocmask(SIG_BLOCK, &ss, NULL);
	signal(SIGPIPE, SIG_IGN);
	int stop = signalfd(-1, &ss, SFD_CLOEXEC);
	struct mv_host *h = NULL;
	int err = stop < 0 ? -errno : mv_host_new(NULL, &h);
	struct vu_serve *s = NULL;
	if (!err)
		err = vu_serve_new(h, &o, &s);
	if (err) {
		fprintf(stderr, "memvirt balloon-backend: %s: %s\n", o.socket, err == -EADDRINUSE
		        ? "served by another backend already (it holds SOCKET.lock)" : err == -EEXIST
		        ? "something else is there (a file, or a socket someone listens on): not replaced"
		        : mv_strerror(err));
		mv_host_free(h);
		return err == -EADDRINUSE ? 3 : 1;
	}
	fprintf(stdout, "memvirt: balloon backend listening on %s%s%s\n", o.socket,
	        o.control ? ", control on " : "", o.control ? o.control : "");
	fflush(stdout);
	err = vu_serve_run(s, stop);
	vu_serve_free(s);
	mv_host_free(h);
	close(stop);
	return err ? 1 : 0;
}

/* `memvirt balloon-ctl PATH COMMAND...`: one command to a running balloon-backend's
 * control socket, its JSON answer on stdout (exit 1 if the answer is an error). */
int balloon_ctl_main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: memvirt balloon-ctl CONTROL-SOCKET COMMAND...\n"
		        "  commands: target [ID] SIZE, info, stats [ID], hint start|stop [ID]\n");
		return 2;
	}
	char line[256] = "";
	for (int i = 2; i < argc; i++)
		if (snprintf(line + strlen(line), sizeof(line) - strlen(line), "%s%s", i > 2 ? " " : "",
		             argv[i]) >= (int)(sizeof(line) - strlen(line))) {
			fprintf(stderr, "memvirt balloon-ctl: command too long\n");
			return 2;
		}
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (strlen(argv[1]) >= sizeof(a.sun_path)) {
		fprintf(stderr, "memvirt balloon-ctl: %s: path too long\n", argv[1]);
		return 2;
	}
	strcpy(a.sun_path, argv[1]);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct timeval tv = { 5, 0 };
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
	    connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		fprintf(stderr, "memvirt balloon-ctl: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	strcat(line, "\n");
	char reply[65536];
	size_t n = 0;
	ssize_t r = write(fd, line, strlen(line)) == (ssize_t)strlen(line) ? 0 : -1;
	while (r >= 0 && n < sizeof(reply) - 1 && !memchr(reply, '\n', n) &&
	       (r = read(fd, reply + n, sizeof(reply) - 1 - n)) > 0)
		n += (size_t)r;
	close(fd);
	reply[n] = 0;
	if (!memchr(reply, '\n', n)) {
		fprintf(stderr, "memvirt balloon-ctl: no answer from %s\n", argv[1]);
		return 1;
	}
	fputs(reply, stdout);
	return strstr(reply, "\"error\"") ? 1 : 0;
}
