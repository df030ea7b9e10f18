/* memvirt.c - the memvirt command line: density, explain, benchmarks, restore. */
#include "../bench/bench.h"

#include <errno.h>
#include <memvirt/memvirt.h>
#include <memvirt/policy.h>
#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
	fprintf(f, "usage: memvirt <command> [options]\n\n"
	        "commands:\n"
	        "  density [--profile P] [--budget-mib N] [--json]  guests that fit, per configuration\n"
	        "  density --guests uml [--guest-mib N] ...         the same with real Linux guests (UML)\n"
	        "  explain [FILE...]                                policy decision log for people\n"
	        "  bench scan [--profile P] [--vs-ksm] [--json]   page sharing vs kernel KSM\n"
	        "  bench balloon [--json]                           balloon inflate/deflate speed\n"
	        "  bench guest [--ws LIST] [--no-ksm] [--json]      what each engine costs a running guest\n"
	        "  balloon-backend --socket PATH [--control PATH]   the balloon device as a vhost-user\n"
	        "                                                   backend (crosvm, cloud-hypervisor, UML)\n"
	        "  balloon-ctl CONTROL COMMAND...                   a command to a running balloon-backend\n"
	        "  daemon [--config F] [--metrics H:P] ...          memvirtd: the policy over every VM of\n"
	        "                                                   the host (memvirt daemon --help)\n"
	        "  status [--json]                                  memvirtd's host and VMs\n"
	        "  top [--interval-ms MS]                           the same, refreshing\n"
	        "  set VM min=SIZE max=SIZE|none shares=N           a VM's limits and shares (kept)\n"
	        "  host goal=floor|ratio|budget floor=SIZE ratio=X budget=SIZE  the host's goal (kept)\n"
	        "  vm add NAME SOCKET [min=.. max=.. shares=..]     serve a vhost-user VM's balloon\n"
	        "  vm remove NAME                                   stop serving it\n"
	        "  reload                                           re-read memvirtd's config file\n"
	        "  explain --follow [--json]                        memvirtd's decisions, live\n"
	        "                                                   (daemon commands: --control PATH or\n"
	        "                                                   MEMVIRT_CONTROL; default\n"
	        "                                                   /run/memvirt/control.sock)\n"
	        "  restore                                          put back kernel settings a run that\n"
	        "                                                   was killed left changed (journal)\n"
	        "  version                                          library version\n"
	        "  help                                             this text\n"
	        "\n`memvirt density --help`, `memvirt bench scan --help`, `memvirt bench guest --help`\n"
	        "for their options.\n"
	        "Kernel settings a command changes are restored when it ends, even on a signal; their\n"
	        "originals are journaled first, so after SIGKILL or a crash the next command that\n"
	        "changes settings, or `memvirt restore`, puts them back.\n");
}

/* Render decision logs (JSON lines) from files, or stdin, for people. */
static int explain_main(int argc, char **argv)
{
	if (argc < 2)
		return mv_policy_explain(stdin, stdout) ? 1 : 0;
	int bad = 0;
	for (int i = 1; i < argc; i++) {
		FILE *f = fopen(argv[i], "r");
		if (!f) {
			fprintf(stderr, "memvirt explain: %s: %s\n", argv[i], strerror(errno));
			bad = 1;
			continue;
		}
		if (argc > 2)
			printf("== %s\n", argv[i]);
		bad |= mv_policy_explain(f, stdout) != 0;
		fclose(f);
	}
	return bad;
}

int main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	if (!strcmp(argv[1], "version")) {
		printf("memvirt %s\n", mv_version());
		return 0;
	}
	if (!strcmp(argv[1], "density"))
		return density_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "balloon-ctl"))
		return balloon_ctl_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "balloon-backend"))
		return balloon_backend_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "restore"))
		return restore_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "explain") && argc >= 3 && !strcmp(argv[2], "--follow"))
		return daemon_cli_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "explain"))
		return explain_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "daemon"))
		return daemon_main(argc - 1, argv + 1);
	static const char *const admin[] = { "status", "top", "set", "host", "vm", "reload" };
	for (unsigned i = 0; i < sizeof(admin) / sizeof(admin[0]); i++)
		if (!strcmp(argv[1], admin[i]))
			return daemon_cli_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "bench") && argc >= 3 && !strcmp(argv[2], "scan"))
		return bench_scan_main(argc - 2, argv + 2);
	if (!strcmp(argv[1], "bench") && argc >= 3 && !strcmp(argv[2], "balloon"))
		return bench_balloon_main(argc - 2, argv + 2);
	if (!strcmp(argv[1], "bench") && argc >= 3 && !strcmp(argv[2], "guest"))
		return bench_guest_main(argc - 2, argv + 2);
	fprintf(stderr, "memvirt: unknown command '%s'\n\n", argv[1]);
	usage(stderr);
	return 2;
}
