/* restore_cli.c - `memvirt restore`: put back the kernel settings a run that was killed left
 * changed, from the restore journal; and the one-line notice of commands that do it first. */
#include "bench.h"
#include "ksmctl.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static const char *journal_name(void)
{
	return kc_journal_file()[0] ? kc_journal_file() : "restore journal";
}

/* One line on stderr: why the journal was not applied. */
static void refused(const char *who, int err, const char *why)
{
	bool bad = err == -EBADMSG || err == -EPERM;
	fprintf(stderr, "%s: %s: %s%s\n", who, journal_name(), why[0] ? why : strerror(-err),
	        bad ? "; nothing restored: check the file, then remove it" : "");
}

static void restore_usage(FILE *f)
{
	fprintf(f, "usage: memvirt restore\n"
	        "  Put back the kernel settings (KSM knobs, vm.max_map_count) that a memvirt run\n"
	        "  changed and could not restore (killed with SIGKILL, crashed), from the restore\n"
	        "  journal: /var/lib/memvirt/restore.journal for root, else\n"
	        "  $XDG_STATE_HOME or ~/.local/state/memvirt/restore.journal; $MEMVIRT_JOURNAL\n"
	        "  names another file. Every other command that changes settings does this first.\n");
}

int restore_main(int argc, char **argv)
{
	struct kc_restored out;
	char why[1024];

	if (argc > 1) {
		bool help = !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h");
		restore_usage(help ? stdout : stderr);
		return help ? 0 : 2;
	}
	int r = kc_journal_apply(&out, why, sizeof(why));
	if (r < 0 && out.n == 0) {
		refused("memvirt restore", r, why);
		return 1;
	}
	if (out.n == 0) {
		printf("nothing to restore\n");
		return 0;
	}
	printf("from %s, left by memvirt pid %d:\n", journal_name(), out.pid);
	for (int i = 0; i < out.n; i++)
		printf("  %s %s: %s -> %s\n", out.e[i].restored ? "restored" : "NOT restored", out.e[i].path,
		       out.e[i].found, out.e[i].orig);
	if (r < 0)
		fprintf(stderr, "memvirt restore: %s; what failed stays in the journal\n", strerror(-r));
	return r < 0 ? 1 : 0;
}

int bench_settings_recover(const char *who)
{
	struct kc_restored out;
	char why[1024];
	int r = kc_journal_apply(&out, why, sizeof(why));

	if (out.n > 0)
		fprintf(stderr, "%s: restored %d kernel setting%s that memvirt pid %d left changed (%s)%s\n", who,
		        out.n, out.n == 1 ? "" : "s", out.pid, journal_name(),
		        r < 0 ? "; some failed, see memvirt restore" : "");
	else if (r < 0)
		refused(who, r, why);
	return r < 0 ? -1 : 0;
}
