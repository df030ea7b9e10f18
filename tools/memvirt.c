/* memvirt.c - the memvirt command line: benchmarks now, density and explain later. */
#include "../bench/bench.h"

#include <memvirt/memvirt.h>
#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
	fprintf(f, "usage: memvirt <command> [options]\n\n"
	        "commands:\n"
	        "  bench scan [--profile P] [--vs-ksm] [--json]   page sharing vs kernel KSM\n"
	        "  bench balloon [--json]                           balloon inflate/deflate speed\n"
	        "  version                                          library version\n"
	        "  help                                             this text\n"
	        "\n`memvirt bench scan --help` lists the profiles.\n");
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
	if (!strcmp(argv[1], "bench") && argc >= 3 && !strcmp(argv[2], "scan"))
		return bench_scan_main(argc - 2, argv + 2);
	if (!strcmp(argv[1], "bench") && argc >= 3 && !strcmp(argv[2], "balloon"))
		return bench_balloon_main(argc - 2, argv + 2);
	fprintf(stderr, "memvirt: unknown command '%s'\n\n", argv[1]);
	usage(stderr);
	return 2;
}
