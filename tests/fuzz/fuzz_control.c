/* fuzz_control.c - libFuzzer harness: memvirtd's control commands (md_command) against
 * arbitrary lines from a client the socket let in.
 *
 * An input is text as a client would send it: split at newlines, each line cut at 1023
 * bytes (the daemon's line buffer), handed to md_command() of one daemon whose settings
 * start empty for every input (its state directory is a temporary directory; it starts no
 * worker and has no agents). Every few lines a policy period runs (md_tick: the real
 * /proc figures), so status and the snapshot see the settings the commands made.
 *
 * Checks: every answer is one JSON object with "v": 1 and either "ok", "error" or the
 * status ("host", "vms", "waiting"), on one line; an answer with "error" changed nothing
 * (the settings and the policy text are as before); the settings always make a policy the
 * engine accepts. tests/fuzz/test_fuzz_control.c includes this file (MV_FUZZ_NO_MAIN) to
 * replay the seeds (tests/fuzz/corpus-control) and every regression
 * (tests/fuzz/regressions-control) in `make test`.
 */
#include "daemon.h"
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MV_FUZZ_NO_MAIN
#define FC_FAIL(...) fail_msg(__VA_ARGS__)
#else
#define FC_FAIL(...) do { fprintf(stderr, "fuzz_control: " __VA_ARGS__); \
	fprintf(stderr, "\n"); abort(); } while (0)
#endif
#define FC_CHECK(c) do { if (!(c)) FC_FAIL("check failed: %s (line %d)", #c, __LINE__); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct md fc_d;
static char fc_dir[64];

/* The state directory goes with the process (a mkdtemp path: no quoting needed). */
static void fc_cleanup(void)
{
	char cmd[96];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", fc_dir);
	if (system(cmd)) {
		/* nothing more to do at exit */
	}
}

static void fc_setup(void)
{
	struct md *d = &fc_d;
	snprintf(fc_dir, sizeof(fc_dir), "/tmp/memvirt-fuzz-control-XXXXXX");
	FC_CHECK(mkdtemp(fc_dir));
	atexit(fc_cleanup);
	d->o.state_dir = fc_dir;
	d->o.no_workers = true;
	d->o.log = fopen("/dev/null", "w");
	FC_CHECK(d->o.log);
	d->afd = d->cfd = d->ep = d->sig = d->timer = -1;
	for (unsigned i = 0; i < MD_MAX_AGENTS; i++)
		d->agents[i].fd = -1;
	for (unsigned i = 0; i < MD_MAX_CLIENTS; i++)
		d->clients[i].fd = -1;
	pthread_mutex_init(&d->snap_lock, NULL);
	struct mv_policy_config pc;
	mv_policy_config_init(&pc);
	pc.log = md_decision;
	pc.log_opaque = d;
	FC_CHECK(mv_policy_new(&pc, &d->pol) == 0);
}

static void fc_check_answer(const char *line, const char *ans, const struct md_settings *before,
                            const char *text_before)
{
	FC_CHECK(!strchr(ans, '\n'));
	json_object *o = json_tokener_parse(ans), *v;
	FC_CHECK(o && json_object_is_type(o, json_type_object));
	FC_CHECK(json_object_object_get_ex(o, "v", &v) && json_object_get_int(v) == 1);
	bool err = json_object_object_get_ex(o, "error", NULL);
	FC_CHECK(err || json_object_object_get_ex(o, "ok", NULL) ||
	         json_object_object_get_ex(o, "host", NULL));
	if (err) {
		FC_CHECK(!memcmp(before, &fc_d.set, sizeof(*before)));
		FC_CHECK(!strcmp(text_before, fc_d.conf_text ? fc_d.conf_text : ""));
	}
	json_object_put(o);
	(void)line;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct md_settings before;
	static char line[MD_LINE];
	if (!fc_d.pol)
		fc_setup();
	char err[300];
	memset(&fc_d.set, 0, sizeof(fc_d.set));
	FC_CHECK(md_policy_reload(&fc_d, &fc_d.set, err, sizeof(err)) == 0);
	struct md_client c = { .fd = -1 };
	size_t pos = 0;
	for (unsigned nline = 0; pos < size; nline++) {
		size_t n = 0;
		while (pos < size && data[pos] != '\n') {
			if (n < sizeof(line) - 1)
				line[n++] = data[pos] ? (char)data[pos] : ' ';
			pos++;
		}
		pos++;
		line[n] = 0;
		before = fc_d.set;
		char *text_before = strdup(fc_d.conf_text ? fc_d.conf_text : "");
		FC_CHECK(text_before);
		c.follow = false;
		char *ans = md_command(&fc_d, &c, line);
		if (ans && *ans)
			fc_check_answer(line, ans, &before, text_before);
		free(ans);
		free(text_before);
		if (nline % 4 == 3)
			md_tick(&fc_d);
	}
	return 0;
}
