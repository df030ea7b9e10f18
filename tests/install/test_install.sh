#!/bin/sh
# test_install.sh - the installed library as its users link it: `make install` into a
# temporary prefix, then linkcheck.c built with pkg-config only (PKG_CONFIG_PATH to that
# prefix, nothing from the build tree), shared and fully static, as C and as C++, and run.
# Run by tests/run-tests through the wrapper the Makefile writes (MV_SRC, MV_B, MV_SAN).
set -u
src=${MV_SRC:?}; san=${MV_SAN:-}
if [ -n "$san" ]; then echo "SKIP: install-and-link checks run in the plain build (SAN=$san)"; exit 0; fi
for t in pkg-config cc c++ readelf; do
	command -v $t >/dev/null || { echo "SKIP: $t not found (make deps installs it)"; exit 0; }
done
tmp=$(mktemp -d /tmp/memvirt-install.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# A fresh environment, as a user's shell: no make state inherited from `make test`.
env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -C "$src" --no-print-directory -s install \
	PREFIX="$tmp/usr" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; echo "FAIL: make install"; exit 1; }
export PKG_CONFIG_PATH="$tmp/usr/lib/pkgconfig"
lib="$tmp/usr/lib/libmemvirt.so"
echo "installed into $tmp/usr: $(cd "$tmp/usr" && find . -type f | sort | tr '\n' ' ')"

# The shared library records everything it needs (libm for fmin/fmax among them) and
# leaves nothing to a symbol only some builds of a dependency have.
needed=$(readelf -d "$lib" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
echo "libmemvirt.so needs: $needed"
case " $needed" in *" libm.so"*) ;; *) fail "libmemvirt.so does not record libm";; esac
if nm -D --undefined-only "$lib" | grep -q 'XXH'; then fail "libmemvirt.so needs xxHash symbols"; fi
pkg-config --exists memvirt || fail "pkg-config does not find memvirt: $(pkg-config --print-errors memvirt 2>&1)"
# The daemon's unit runs the installed CLI; systemd accepts it where systemd is there.
unit="$tmp/usr/lib/systemd/system/memvirtd.service"
grep -q "^ExecStart=$tmp/usr/bin/memvirt daemon " "$unit" 2>/dev/null || fail "memvirtd.service missing or not for $tmp/usr/bin"
if command -v systemd-analyze >/dev/null; then
	systemd-analyze verify "$unit" >"$tmp/verify.log" 2>&1 || { cat "$tmp/verify.log"; fail "systemd-analyze verify memvirtd.service"; }
fi
echo "pkg-config --libs --static memvirt: $(pkg-config --libs --static memvirt)"

# build NAME COMPILER LANG LINK...: compile linkcheck.c as LANG, link, run; 77 = skip.
build_run() {
	name=$1; comp=$2; lang=$3; shift 3
	if ! $comp -x "$lang" "$src/tests/install/linkcheck.c" -x none $(pkg-config --cflags memvirt) \
		-o "$tmp/$name" "$@" >"$tmp/$name.log" 2>&1; then
		cat "$tmp/$name.log"; fail "$name: link"; return
	fi
	out=$(LD_LIBRARY_PATH="$tmp/usr/lib" timeout -k 5 60 "$tmp/$name" 2>&1); rc=$?
	case $rc in
	0) echo "ok   $name: $out";;
	77) echo "SKIP: $name: $out"; skipped=1;;
	*) echo "$out"; fail "$name: exit status $rc";;
	esac
}
skipped=0
shared=$(pkg-config --libs memvirt)
static=$(pkg-config --libs --static memvirt)
build_run c-shared cc c $shared
build_run c++-shared c++ c++ $shared
# The shared builds must use the installed .so, not a copy linked in.
if [ -x "$tmp/c-shared" ] && ! LD_LIBRARY_PATH="$tmp/usr/lib" ldd "$tmp/c-shared" | grep -q "$tmp/usr/lib/libmemvirt.so"; then
	fail "c-shared does not load the installed libmemvirt.so"
fi
# Fully static, as the issue's user tried: every library from its .a.
build_run c-static cc c -static $static
build_run c++-static c++ c++ -static $static
if [ -x "$tmp/c-static" ] && readelf -d "$tmp/c-static" 2>/dev/null | grep -q NEEDED; then
	fail "c-static is not static"
fi
# libmemvirt.a with the system's shared libraries (the common static use).
build_run c-archive cc c "$tmp/usr/lib/libmemvirt.a" $(echo "$static" | sed 's/-lmemvirt//')

echo "install-and-link checks: $fails failed"
[ "$fails" -eq 0 ]
