#!/usr/bin/python3
"""promcheck.py - check Prometheus text (0.0.4) with prometheus_client's parser and memvirt's naming rules.

Usage: promcheck.py FILE [--vm NAME]...   (FILE "-" reads stdin)
Prints one line per family (name as in its TYPE line, type, number of series).
Exit 0 if it parses and follows the rules, 1 with the reasons on stderr if not, 2 without
prometheus_client.
"""
import math
import re
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    print("promcheck: prometheus_client missing: %s" % e, file=sys.stderr)
    sys.exit(2)

NAME = re.compile(r"^memvirt_[a-z0-9_]*[a-z0-9]$")
# A sample line as the 0.0.4 format has it: name, labels (escaped values), value, timestamp.
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{(%s(,%s)*,?)?\})? '
                    r'([-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?|NaN|[-+]Inf)( -?[0-9]+)?$' % (LABEL, LABEL))
BAD_UNITS = ("_ms", "_us", "_ns", "_mib", "_kib", "_percent", "_kb", "_mb")


def raw_checks(text, errors):
    """HELP and TYPE once per family, before its samples; a family's samples together."""
    types, helps, seen, current = {}, set(), set(), None
    for n, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            if len(parts) < 4:
                errors.append("line %d: short comment line" % n)
                continue
            name = parts[2]
            if line.startswith("# HELP "):
                if name in helps:
                    errors.append("line %d: second HELP for %s" % (n, name))
                helps.add(name)
            else:
                if name in types:
                    errors.append("line %d: second TYPE for %s" % (n, name))
                types[name] = parts[3]
                if name not in helps:
                    errors.append("line %d: TYPE before HELP for %s" % (n, name))
            current = name
            continue
        if line.startswith("#"):
            continue
        if not SAMPLE.match(line):
            errors.append("line %d: not a sample line: %r" % (n, line))
        name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
        if name != current:
            errors.append("line %d: %s outside its family (HELP/TYPE missing or samples split)" % (n, name))
        if name in seen and name != current:
            errors.append("line %d: %s samples not contiguous" % (n, name))
        seen.add(name)
    for name in helps - set(types):
        errors.append("%s: HELP without TYPE" % name)
    return types


def name_checks(types, errors):
    for name, typ in types.items():
        if not NAME.match(name):
            errors.append("%s: not memvirt_[a-z0-9_]" % name)
        if any(u in name + "_" for u in (b + "_" for b in BAD_UNITS)):
            errors.append("%s: not in base units (bytes, seconds, ratio)" % name)
        if typ == "counter" and not name.endswith("_total"):
            errors.append("%s: counter without _total" % name)
        if typ == "gauge":
            if name.endswith("_total"):
                errors.append("%s: gauge named like a counter" % name)
            for unit in ("bytes", "seconds"):
                if "_%s_" % unit in name + "_" and not name.endswith("_" + unit):
                    errors.append("%s: gauge whose unit %s is not its suffix" % (name, unit))
        if typ not in ("counter", "gauge"):
            errors.append("%s: unexpected type %s" % (name, typ))


def series_checks(families, errors):
    series = set()
    for fam in families:
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            if key in series:
                errors.append("duplicate series %s%s" % (s.name, dict(key[1])))
            series.add(key)
            if fam.type == "counter" and (math.isnan(s.value) or s.value < 0):
                errors.append("%s: counter value %r" % (s.name, s.value))
    return series


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    text = sys.stdin.read() if argv[1] == "-" else open(argv[1], encoding="utf-8").read()
    want_vms = [argv[i + 1] for i in range(2, len(argv) - 1) if argv[i] == "--vm"]
    errors = []
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser raises ValueError and others on bad input
        print("promcheck: parse error: %r" % e, file=sys.stderr)
        return 1
    types = raw_checks(text, errors)
    name_checks(types, errors)
    series = series_checks(families, errors)
    vms = {dict(labels).get("vm") for _, labels in series}
    for vm in want_vms:
        if vm not in vms:
            errors.append("no series for vm=%r (have %r)" % (vm, sorted(v for v in vms if v)))
    if len(families) != len(types):
        errors.append("parser saw %d families, TYPE lines %d" % (len(families), len(types)))
    by_base = {(n[:-6] if t == "counter" else n): n for n, t in types.items()}
    for fam in families:
        print("%s %s %d" % (by_base.get(fam.name, fam.name), fam.type, len(fam.samples)))
    for e in errors:
        print("promcheck: %s" % e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
