/* density_cli.c - `memvirt density` options and report: table, CSV, PNG (gnuplot), JSON. */
#include "bench.h"
#include "density.h"
#include "ksmctl.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *const density_stop_names[] = { "budget", "guest OOM", "error", "max guests", "time bound" };

FILE *density_log_open(const struct density_opts *o, enum density_config c)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/decisions-%s.jsonl", o->log_dir, density_config_names[c]);
	return fopen(path, "w");
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: memvirt density [options]\n"
	        "  Add simulated guests one at a time until host memory (PSS) would exceed the\n"
	        "  budget or a guest runs out of memory, for each configuration side by side.\n"
	        "  --profile P        idle (default), web, db, clones\n"
	        "  --budget-mib N     host memory budget (default 1024)\n"
	        "  --scale X          guest size factor on the profile's (default 0.25)\n"
	        "  --configs LIST     of none,balloon,sharing,both,ksm (default all; ksm needs root)\n"
	        "  --max-guests N     stop there (default %d)\n"
	        "  --policy FILE      policy engine configuration (INI, see policy/README.md)\n"
	        "  --out DIR          density.csv, density.png and decision logs (default memvirt-density)\n"
	        "  --json             one JSON object on stdout instead of the table\n"
	        "  --guests sim|uml   sim (default): simulated guests; uml: real Linux guests\n"
	        "                     (User-mode Linux, root) for none and balloon only, beside\n"
	        "                     the simulated figures of the same size (density-uml.csv/.png)\n"
	        "  --guest-mib N      uml: guest RAM (default: the profile's RAM x scale, 256 MiB)\n"
	        "  --max-time S       uml: bound on each configuration's run (default 600)\n"
	        "  uml defaults: --max-guests 12, --configs none,balloon\n",
	        DENSITY_MAX_GUESTS);
}

static int parse_configs(const char *list, bool *on)
{
	memset(on, 0, DC_NR * sizeof(*on));
	char *copy = strdup(list), *save = NULL;
	int err = 0;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int k = 0;
		while (k < DC_NR && strcmp(t, density_config_names[k]))
			k++;
		if (k == DC_NR) {
			fprintf(stderr, "memvirt density: unknown configuration '%s'\n", t);
			err = -EINVAL;
		} else {
			on[k] = true;
		}
	}
	free(copy);
	return err;
}

static int parse(int argc, char **argv, struct density_opts *o)
{
	static const struct option opts[] = {
		{ "profile", required_argument, NULL, 'p' }, { "budget-mib", required_argument, NULL, 'b' },
		{ "scale", required_argument, NULL, 's' }, { "configs", required_argument, NULL, 'c' },
		{ "max-guests", required_argument, NULL, 'm' }, { "policy", required_argument, NULL, 'P' },
		{ "out", required_argument, NULL, 'o' }, { "json", no_argument, NULL, 'j' },
		{ "guests", required_argument, NULL, 'g' }, { "guest-mib", required_argument, NULL, 'G' },
		{ "max-time", required_argument, NULL, 'T' },
		{ "help", no_argument, NULL, 'h' }, { 0 } };
	const char *profile = "idle", *configs = NULL;
	bool max_given = false;
	int c, err = 0;
	double mib;
	uint64_t n;
	while (!err && (c = getopt_long(argc, argv, "p:b:s:c:m:P:o:jg:G:T:h", opts, NULL)) != -1) {
		switch (c) {
		case 'p': profile = optarg; break;
		case 'b':
			err = bench_arg_size_mib("--budget-mib", optarg, 64, 1 << 30, 1, &mib);
			o->budget_mib = (uint64_t)mib;
			break;
		case 's': err = bench_arg_double("--scale", optarg, 0.001, 4, &o->scale); break;
		case 'c': configs = optarg; break;
		case 'm':
			err = bench_arg_uint("--max-guests", optarg, 1, DENSITY_MAX_GUESTS, &n);
			o->max_guests = (unsigned)n;
			max_given = true;
			break;
		case 'g':
			if (strcmp(optarg, "sim") && strcmp(optarg, "uml")) {
				fprintf(stderr, "memvirt density: --guests: sim or uml, not '%s'\n", optarg);
				err = -EINVAL;
			}
			o->uml = !strcmp(optarg, "uml");
			break;
		case 'G':
			err = bench_arg_uint("--guest-mib", optarg, 64, 1 << 16, &n);
			o->guest_mib = (unsigned)n;
			break;
		case 'T': err = bench_arg_double("--max-time", optarg, 10, 86400, &o->run_max_s); break;
		case 'P': o->policy_file = optarg; break;
		case 'o': o->out_dir = optarg; break;
		case 'j': o->json = o->quiet = true; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -EINVAL;
		}
	}
	if (err)
		return err;
	if (o->uml && !max_given)
		o->max_guests = 12; /* enough for 256 MiB balloon guests to reach 1024 MiB */
	if (!configs)
		configs = o->uml ? "none,balloon" : "none,balloon,sharing,both,ksm";
	if (!(o->profile = mvw_profile_find(profile))) {
		fprintf(stderr, "memvirt density: unknown profile '%s' (idle, web, db, clones)\n", profile);
		return -EINVAL;
	}
	if (o->guest_mib) /* the guest's RAM given outright: the scale follows */
		o->scale = (double)o->guest_mib * (1 << 20) / (double)o->profile->ram_bytes;
	if (o->budget_mib < 64 || !(o->scale > 0 && o->scale <= 4) || !o->max_guests ||
	    o->max_guests > DENSITY_MAX_GUESTS) {
		fprintf(stderr, "memvirt density: need --budget-mib >= 64, 0 < --scale <= 4, "
		        "1 <= --max-guests <= %d\n", DENSITY_MAX_GUESTS);
		return -EINVAL;
	}
	return parse_configs(configs, o->configs);
}

static void write_csv(const struct density_opts *o, const struct density_result *r)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/density.csv", o->out_dir);
	FILE *f = fopen(path, "w");
	if (!f)
		return;
	fprintf(f, "config,guests,host_mib,fits\n");
	for (int c = 0; c < DC_NR; c++)
		for (unsigned i = 0; r[c].ran && i < r[c].steps; i++)
			fprintf(f, "%s,%u,%.1f,%d\n", density_config_names[c], i + 1, r[c].series[i],
			        i < r[c].guests);
	fclose(f);
}

/* Host memory against guests, one line per configuration, the budget as a bar. */
static void write_png(const struct density_opts *o, const struct density_result *r)
{
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "gnuplot 2>/dev/null");
	FILE *g = popen(cmd, "w");
	if (!g)
		return;
	fprintf(g, "set terminal pngcairo size 900,560\nset output '%s/density.png'\n"
	        "set title 'memvirt density: %s guests (x%.2g) in %llu MiB'\n"
	        "set xlabel 'guests'\nset ylabel 'host memory, PSS (MiB)'\nset key left top\n"
	        "set grid\nset datafile separator ','\n",
	        o->out_dir, o->profile->name, o->scale, (unsigned long long)o->budget_mib);
	fprintf(g, "plot %llu with lines dt 2 lw 2 lc 'black' title 'budget'",
	        (unsigned long long)o->budget_mib);
	for (int c = 0; c < DC_NR; c++)
		if (r[c].ran)
			fprintf(g, ", '%s/density.csv' using ($2):(strcol(1) eq '%s' ? $3 : NaN) "
			        "with linespoints lw 2 title '%s'", o->out_dir, density_config_names[c],
			        density_config_names[c]);
	fprintf(g, "\n");
	pclose(g);
}

static void print_table(const struct density_opts *o, const struct density_result *r)
{
	printf("\n%s guests (%.0f MiB each), host budget %llu MiB\n\n", o->profile->name,
	       (double)o->profile->ram_bytes * o->scale / (1 << 20), (unsigned long long)o->budget_mib);
	printf("%-8s %6s %9s %9s %9s %9s %7s %5s %10s  %s\n", "config", "guests", "host MiB",
	       "balloon", "shared", "zero", "CPU s", "OOMs", "mismatches", "stopped by");
	for (int c = 0; c < DC_NR; c++) {
		const struct density_result *x = &r[c];
		if (!x->ran)
			continue;
		printf("%-8s %6u %9.0f %9.0f %9.0f %9.0f %7.2f %5llu %10llu  %s%s%s\n",
		       density_config_names[c], x->guests, x->host_mib, x->balloon_mib, x->sharing_mib,
		       x->zero_mib, x->cpu_s, (unsigned long long)x->guest_ooms,
		       (unsigned long long)x->mismatches, density_stop_names[x->stop], x->why[0] ? ": " : "", x->why);
	}
	if (r[DC_NONE].ran && r[DC_NONE].guests && r[DC_BOTH].ran)
		printf("\nboth / none: %.2fx", (double)r[DC_BOTH].guests / r[DC_NONE].guests);
	if (r[DC_KSM].ran && r[DC_KSM].guests && r[DC_BOTH].ran)
		printf("   both / ksm: %.2fx", (double)r[DC_BOTH].guests / r[DC_KSM].guests);
	printf("\nwrote %s/density.csv, %s/density.png and decisions-*.jsonl (memvirt explain)\n",
	       o->out_dir, o->out_dir);
}

static void print_json(const struct density_opts *o, const struct density_result *r)
{
	json_object *root = json_object_new_object(), *cs = json_object_new_object();
	json_object_object_add(root, "profile", json_object_new_string(o->profile->name));
	json_object_object_add(root, "budget_mib", json_object_new_int64((int64_t)o->budget_mib));
	json_object_object_add(root, "scale", json_object_new_double(o->scale));
	for (int c = 0; c < DC_NR; c++) {
		const struct density_result *x = &r[c];
		if (!x->ran)
			continue;
		json_object *j = json_object_new_object();
		json_object_object_add(j, "guests", json_object_new_int(x->guests));
		json_object_object_add(j, "host_mib", json_object_new_double(x->host_mib));
		json_object_object_add(j, "guest_ooms", json_object_new_int64((int64_t)x->guest_ooms));
		json_object_object_add(j, "mismatches", json_object_new_int64((int64_t)x->mismatches));
		json_object_object_add(j, "cpu_s", json_object_new_double(x->cpu_s));
		json_object_object_add(j, "balloon_mib", json_object_new_double(x->balloon_mib));
		json_object_object_add(j, "shared_mib", json_object_new_double(x->sharing_mib));
		json_object_object_add(j, "zero_mib", json_object_new_double(x->zero_mib));
		json_object_object_add(j, "wall_s", json_object_new_double(x->wall_s));
		json_object_object_add(j, "stopped_by", json_object_new_string(density_stop_names[x->stop]));
		if (x->why[0])
			json_object_object_add(j, "error", json_object_new_string(x->why));
		json_object_object_add(cs, density_config_names[c], j);
	}
	json_object_object_add(root, "configs", cs);
	if (r[DC_NONE].ran && r[DC_NONE].guests && r[DC_BOTH].ran)
		json_object_object_add(root, "both_vs_none", json_object_new_double((double)r[DC_BOTH].guests / r[DC_NONE].guests));
	if (r[DC_KSM].ran && r[DC_KSM].guests && r[DC_BOTH].ran)
		json_object_object_add(root, "both_vs_ksm", json_object_new_double((double)r[DC_BOTH].guests / r[DC_KSM].guests));
	printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY));
	json_object_put(root);
}

int density_main(int argc, char **argv)
{
	struct density_opts o = { .scale = 0.25, .budget_mib = 1024, .floor_pct = 5, .guest_floor_pct = 2,
	                          .max_guests = 40, .period_ms = 250, .settle_max_s = 30, .run_max_s = 600,
	                          .out_dir = "memvirt-density" };
	if (parse(argc, argv, &o))
		return 2;
	if (o.uml)
		return density_uml_main(&o);
	if (o.configs[DC_KSM] && !kc_ksm_available()) {
		fprintf(stderr, "memvirt density: kernel KSM comparison skipped (needs root and %s)\n", KC_KSM_DIR);
		o.configs[DC_KSM] = false;
	}
	if (mkdir(o.out_dir, 0755) && errno != EEXIST) {
		fprintf(stderr, "memvirt density: %s: %s\n", o.out_dir, strerror(errno));
		return 1;
	}
	o.log_dir = o.out_dir;
	if (bench_settings_recover("memvirt density"))
		return 1;
	if (o.configs[DC_SHARING] || o.configs[DC_BOTH]) {
		/* isolated duplicates (libraries, page cache) need a mapping each */
		long was = kc_map_count_raise(0), now = kc_map_count_raise(1L << 20);
		if (now > was && !o.quiet)
			fprintf(stderr, "raised vm.max_map_count %ld -> %ld for this run (restored on exit)\n", was, now);
		else if (now < (1L << 20) && !o.quiet)
			fprintf(stderr, "vm.max_map_count is %ld (not root?): sharing stops at that many mappings\n", now);
	}
	struct density_result r[DC_NR] = { 0 };
	int failed = 0;
	for (int c = 0; c < DC_NR; c++) {
		if (!o.configs[c])
			continue;
		if (!o.quiet)
			fprintf(stderr, "%s ...\n", density_config_names[c]);
		int err = density_run_one(&o, c, &r[c]);
		r[c].ran = !err;
		failed |= err || r[c].stop == DS_ERROR || r[c].mismatches;
		if (err)
			fprintf(stderr, "memvirt density: %s: %s\n", density_config_names[c], mv_strerror(err));
	}
	write_csv(&o, r);
	write_png(&o, r);
	if (o.json)
		print_json(&o, r);
	else
		print_table(&o, r);
	return failed ? 1 : 0;
}
