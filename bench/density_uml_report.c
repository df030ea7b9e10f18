/* density_uml_report.c - `memvirt density --guests uml`: the runs (real guests, then the
 * simulated ones of the same size and budget) and their report: table, JSON, CSV, PNG. */
#include "bench.h"
#include "density.h"
#include "uml.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIB (1ull << 20)

/* The two configurations a real guest run has. */
static const enum density_config uml_configs[] = { DC_NONE, DC_BALLOON };
#define NR_UML_CONFIGS 2

struct pair {
	bool on;
	struct density_result uml, sim;
};

static double per_guest(const struct density_result *x)
{
	return x->guests ? x->host_mib / x->guests : 0;
}

static double ratio(double a, double b)
{
	return b > 0 ? a / b : 0;
}

static void write_csv(const struct density_opts *o, const struct pair *p)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/density-uml.csv", o->out_dir);
	FILE *f = fopen(path, "w");
	if (!f)
		return;
	fprintf(f, "source,config,guests,host_mib,fits\n");
	for (int k = 0; k < NR_UML_CONFIGS; k++) {
		const char *name = density_config_names[uml_configs[k]];
		for (unsigned i = 0; p[k].on && i < p[k].uml.steps; i++)
			fprintf(f, "uml,%s,%u,%.1f,%d\n", name, i + 1, p[k].uml.series[i], i < p[k].uml.guests);
		for (unsigned i = 0; p[k].on && i < p[k].sim.steps; i++)
			fprintf(f, "sim,%s,%u,%.1f,%d\n", name, i + 1, p[k].sim.series[i], i < p[k].sim.guests);
	}
	fclose(f);
}

/* Host memory against guests: real guests solid, simulated dashed, the budget as a bar. */
static void write_png(const struct density_opts *o, const struct pair *p)
{
	FILE *g = popen("gnuplot 2>/dev/null", "w");
	if (!g)
		return;
	fprintf(g, "set terminal pngcairo size 900,560\nset output '%s/density-uml.png'\n"
	        "set title 'memvirt density: %u MiB Linux guests (UML) vs simulated %s, in %llu MiB'\n"
	        "set xlabel 'guests'\nset ylabel 'host memory (MiB)'\nset key left top\n"
	        "set grid\nset datafile separator ','\n", o->out_dir, density_uml_guest_mib(o),
	        o->profile->name, (unsigned long long)o->budget_mib);
	fprintf(g, "plot %llu with lines dt 2 lw 2 lc 'black' title 'budget'", (unsigned long long)o->budget_mib);
	for (int k = 0; k < NR_UML_CONFIGS; k++) {
		const char *name = density_config_names[uml_configs[k]];
		if (!p[k].on)
			continue;
		fprintf(g, ", '%s/density-uml.csv' using ($3):(strcol(1) eq 'uml' && strcol(2) eq '%s' ? $4 : NaN) "
		        "with linespoints lw 2 lc %d title 'Linux %s'", o->out_dir, name, k + 1, name);
		fprintf(g, ", '%s/density-uml.csv' using ($3):(strcol(1) eq 'sim' && strcol(2) eq '%s' ? $4 : NaN) "
		        "with linespoints lw 1 dt 3 lc %d title 'simulated %s'", o->out_dir, name, k + 1, name);
	}
	fprintf(g, "\n");
	pclose(g);
}

static void heading(const struct density_opts *o)
{
	unsigned mib = density_uml_guest_mib(o);
	printf("\nLinux guests (UML, %u MiB each: %u MiB working set held and checked, %u MiB touched "
	       "and freed; min %u MiB under the daemon), host budget %llu MiB, floor %u%%\n"
	       "beside: simulated %s guests of the same size and budget\n\n", mib, mib * DENSITY_UML_WS_PCT / 100,
	       mib * DENSITY_UML_STALE_PCT / 100, density_uml_min_mib(o), (unsigned long long)o->budget_mib,
	       o->floor_pct, o->profile->name);
}

static void print_table(const struct density_opts *o, const struct pair *p)
{
	heading(o);
	printf("%-8s %13s %9s %17s %17s %17s %9s %5s %10s %7s  %s\n", "config", "guests", "real/sim",
	       "host MiB", "MiB per guest", "balloon MiB", "reported", "OOMs", "mismatches", "wall s", "stopped by");
	printf("%-8s %6s %6s %9s %8s %8s %8s %8s %8s %8s\n", "", "real", "sim", "", "real", "sim", "real",
	       "sim", "real", "sim");
	for (int k = 0; k < NR_UML_CONFIGS; k++) {
		const struct density_result *u = &p[k].uml, *s = &p[k].sim;
		if (!p[k].on)
			continue;
		printf("%-8s %6u %6u %9.2f %8.0f %8.0f %8.0f %8.0f %8.0f %8.0f %9.0f %5llu %10llu %7.0f  %s%s%s\n",
		       density_config_names[uml_configs[k]], u->guests, s->guests,
		       ratio(u->guests, s->guests), u->host_mib, s->host_mib, per_guest(u), per_guest(s),
		       u->balloon_mib, s->balloon_mib, u->reported_mib, (unsigned long long)u->guest_ooms,
		       (unsigned long long)u->mismatches, u->wall_s, density_stop_names[u->stop],
		       u->why[0] ? ": " : "", u->why);
	}
	if (p[0].on && p[1].on)
		printf("\nballoon / none: real %.2fx, simulated %.2fx\n",
		       ratio(p[1].uml.guests, p[0].uml.guests), ratio(p[1].sim.guests, p[0].sim.guests));
	printf("\nreal: host MiB = the guests' RAM files' resident pages, reported = freed pages the guests\n"
	       "reported (free page reporting, cumulative); sim: host MiB = the simulation's PSS.\n"
	       "wrote %s/density-uml.csv, %s/density-uml.png, daemon-uml.log, decisions-uml-balloon.jsonl\n",
	       o->out_dir, o->out_dir);
}

static json_object *result_json(const struct density_result *x, bool uml)
{
	json_object *j = json_object_new_object();
	json_object_object_add(j, "guests", json_object_new_int(x->guests));
	json_object_object_add(j, "host_mib", json_object_new_double(x->host_mib));
	json_object_object_add(j, "host_mib_per_guest", json_object_new_double(per_guest(x)));
	json_object_object_add(j, "balloon_mib", json_object_new_double(x->balloon_mib));
	if (uml)
		json_object_object_add(j, "reported_mib", json_object_new_double(x->reported_mib));
	json_object_object_add(j, "guest_ooms", json_object_new_int64((int64_t)x->guest_ooms));
	json_object_object_add(j, "mismatches", json_object_new_int64((int64_t)x->mismatches));
	json_object_object_add(j, "wall_s", json_object_new_double(x->wall_s));
	json_object *series = json_object_new_array();
	for (unsigned i = 0; i < x->steps; i++)
		json_object_array_add(series, json_object_new_double(x->series[i]));
	json_object_object_add(j, "host_mib_series", series);
	json_object_object_add(j, "stopped_by", json_object_new_string(density_stop_names[x->stop]));
	if (x->why[0])
		json_object_object_add(j, "error", json_object_new_string(x->why));
	return j;
}

static void print_json(const struct density_opts *o, const struct pair *p)
{
	json_object *root = json_object_new_object(), *cs = json_object_new_object();
	unsigned mib = density_uml_guest_mib(o);
	json_object_object_add(root, "guests", json_object_new_string("uml"));
	json_object_object_add(root, "sim_profile", json_object_new_string(o->profile->name));
	json_object_object_add(root, "guest_mib", json_object_new_int((int)mib));
	json_object_object_add(root, "working_set_mib", json_object_new_int((int)(mib * DENSITY_UML_WS_PCT / 100)));
	json_object_object_add(root, "stale_mib", json_object_new_int((int)(mib * DENSITY_UML_STALE_PCT / 100)));
	json_object_object_add(root, "min_mib", json_object_new_int((int)density_uml_min_mib(o)));
	json_object_object_add(root, "budget_mib", json_object_new_int64((int64_t)o->budget_mib));
	json_object_object_add(root, "floor_pct", json_object_new_int((int)o->floor_pct));
	for (int k = 0; k < NR_UML_CONFIGS; k++) {
		if (!p[k].on)
			continue;
		json_object *j = json_object_new_object();
		json_object_object_add(j, "uml", result_json(&p[k].uml, true));
		json_object_object_add(j, "sim", result_json(&p[k].sim, false));
		json_object_object_add(j, "uml_vs_sim_guests",
		                       json_object_new_double(ratio(p[k].uml.guests, p[k].sim.guests)));
		json_object_object_add(j, "uml_vs_sim_mib_per_guest",
		                       json_object_new_double(ratio(per_guest(&p[k].uml), per_guest(&p[k].sim))));
		json_object_object_add(cs, density_config_names[uml_configs[k]], j);
	}
	json_object_object_add(root, "configs", cs);
	if (p[0].on && p[1].on) {
		json_object *b = json_object_new_object();
		json_object_object_add(b, "uml", json_object_new_double(ratio(p[1].uml.guests, p[0].uml.guests)));
		json_object_object_add(b, "sim", json_object_new_double(ratio(p[1].sim.guests, p[0].sim.guests)));
		json_object_object_add(root, "balloon_vs_none", b);
	}
	printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY));
	json_object_put(root);
}

/* Configurations a real guest run cannot do are named and dropped. */
static void uml_configs_only(struct density_opts *o)
{
	char skipped[80] = "";
	for (int c = 0; c < DC_NR; c++) {
		if (!o->configs[c] || c == DC_NONE || c == DC_BALLOON)
			continue;
		size_t n = strlen(skipped);
		snprintf(skipped + n, sizeof(skipped) - n, "%s%s", n ? ", " : "", density_config_names[c]);
		o->configs[c] = false;
	}
	if (skipped[0])
		fprintf(stderr, "memvirt density --guests uml: runs none and balloon only; skipped: %s\n", skipped);
}

static int run_pair(const struct density_opts *o, enum density_config c, struct pair *p)
{
	struct density_opts sim = *o;
	sim.uml = false;
	sim.log_dir = NULL;
	sim.scale = (double)density_uml_guest_mib(o) * MIB / (double)o->profile->ram_bytes;
	if (!o->quiet)
		fprintf(stderr, "uml %s ...\n", density_config_names[c]);
	int err = density_uml_run_one(o, c, &p->uml);
	if (!err) {
		if (!o->quiet)
			fprintf(stderr, "simulated %s ...\n", density_config_names[c]);
		err = density_run_one(&sim, c, &p->sim);
	}
	if (err)
		fprintf(stderr, "memvirt density: %s: %s\n", density_config_names[c], mv_strerror(err));
	p->on = !err;
	return err || p->uml.stop == DS_ERROR || p->uml.mismatches || p->sim.mismatches;
}

int density_uml_main(struct density_opts *o)
{
	const char *why = mv_uml_unavailable();
	if (why) {
		fprintf(stderr, "memvirt density --guests uml: skipped: %s\n", why);
		return 77;
	}
	uml_configs_only(o);
	o->quiet = false; /* the progress lines go to stderr, a JSON report to stdout */
	if (!o->configs[DC_NONE] && !o->configs[DC_BALLOON]) {
		fprintf(stderr, "memvirt density --guests uml: nothing to run (--configs none,balloon)\n");
		return 2;
	}
	if (density_uml_guest_mib(o) < 64) {
		fprintf(stderr, "memvirt density --guests uml: guests of at least 64 MiB, please\n");
		return 2;
	}
	if (mkdir(o->out_dir, 0755) && errno != EEXIST) {
		fprintf(stderr, "memvirt density: %s: %s\n", o->out_dir, strerror(errno));
		return 1;
	}
	struct pair p[NR_UML_CONFIGS] = { 0 };
	int failed = 0;
	for (int k = 0; k < NR_UML_CONFIGS; k++)
		if (o->configs[uml_configs[k]])
			failed |= run_pair(o, uml_configs[k], &p[k]);
	write_csv(o, p);
	write_png(o, p);
	if (o->json)
		print_json(o, p);
	else
		print_table(o, p);
	return failed ? 1 : 0;
}
