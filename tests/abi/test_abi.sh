#!/bin/sh
# test_abi.sh - the public ABI of the built libmemvirt.so against the baseline kept in the
# tree (tests/abi/libmemvirt.abi, abidw XML of the public headers' types). Any difference
# fails: a change of the ABI is a deliberate step. Compatible (functions added): refresh
# with `make abi-baseline` and raise MV_VERSION_MINOR. Incompatible (removed or changed):
# also raise MV_VERSION_MAJOR, which changes the soname.
# Run by tests/run-tests through the wrapper the Makefile writes (MV_SRC, MV_B, MV_SAN),
# and by `make check-abi`.
set -u
src=${MV_SRC:?}; b=${MV_B:?}; san=${MV_SAN:-}
base="$src/tests/abi/libmemvirt.abi"
lib="$src/$b/libmemvirt.so"
if [ -n "$san" ]; then echo "SKIP: the ABI is checked in the plain build (SAN=$san)"; exit 0; fi
command -v abidiff >/dev/null || { echo "SKIP: abidiff not found (Debian abigail-tools; make deps installs it)"; exit 0; }
if ! readelf -S "$lib" | grep -q '\.debug_info'; then
	echo "SKIP: $lib has no debug information (CFLAGS without -g): abidw cannot see its types"; exit 0
fi
tmp=$(mktemp -d /tmp/memvirt-abi.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT
# The same command as `make abi-baseline`: one abidw for both sides.
sh "$src/tests/abi/abidw.sh" "$src" "$lib" >"$tmp/cur.abi" || { echo "FAIL: abidw"; exit 1; }
abidiff "$base" "$tmp/cur.abi" >"$tmp/report" 2>&1; rc=$?
cat "$tmp/report"
if [ $rc -eq 0 ]; then echo "ok   public ABI unchanged against tests/abi/libmemvirt.abi"; exit 0; fi
if [ $((rc & 8)) -ne 0 ]; then
	echo "FAIL: incompatible ABI change: raise MV_VERSION_MAJOR (the soname) in include/memvirt/memvirt.h, then make abi-baseline"
elif [ $((rc & 4)) -ne 0 ]; then
	echo "FAIL: the public ABI changed (compatibly): raise MV_VERSION_MINOR, then make abi-baseline"
else
	echo "FAIL: abidiff failed (exit status $rc)"
fi
exit 1
