#!/bin/sh
# test_vmm.sh - the reference VMM (vmm/, linked through pkg-config against the installed
# library) runs the bare-metal guest (balloon-driver/pvh/) under KVM: the scanner merges
# the guest's duplicate pages while its vCPU runs, the guest's driver inflates the balloon
# to 16 MiB and host RSS of guest RAM drops by as much, then deflates; the guest checks
# every byte it wrote after each step. Then the policy engine instead of fixed targets:
# a host goal no host meets makes it reclaim from the guest down to the VM's min_mib.
# /dev/kvm here emulates guest code (~2 MIPS), so the guest's work is tiny.
set -u
b="${MV_SRC:?}/${MV_B:?}"
if [ -n "${MV_SAN:-}" ]; then echo "SKIP: the reference VMM links the plain library (SAN=$MV_SAN)"; exit 0; fi
[ -e /dev/kvm ] || { echo "SKIP: no /dev/kvm"; exit 0; }
tmp=$(mktemp -d /tmp/memvirt-vmm.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT
out=$tmp/out
# Free page reporting off (memvirt.report_ms=0): the RSS drop measured is the balloon's.
timeout -s KILL 90 "$b/memvirt-vmm" --kernel "$b/guest/memvirt-guest.elf" --mem 64 --prefault \
	--settle-ms 100 --wait-merged 120 --target 16,0 --timeout 75 \
	--append "memvirt.work_pages=256 memvirt.report_ms=0" >"$out" 2>&1
rc=$?
cat "$out"
[ $rc -eq 77 ] && { echo "SKIP: the VMM cannot run here"; exit 0; }
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
[ $rc -eq 0 ] || fail "memvirt-vmm exit status $rc"
grep -q '^guest: check: FAILED' "$out" && fail "the guest found a byte it wrote changed"
[ "$(grep -c '^guest: check: ok' "$out")" -ge 3 ] || fail "the guest did not check its memory after boot, inflate and deflate"
merged=$(sed -n 's/^vmm: scanner: \([0-9]*\) pages merged.*/\1/p' "$out")
[ "${merged:-0}" -ge 120 ] || fail "the scanner merged ${merged:-no} of the guest's 128 duplicate pages while it ran"
# "balloon at 16 MiB (...): guest RAM resident A -> B MiB": at least 15 MiB given back.
drop=$(sed -n 's/^vmm: balloon at 16 MiB.*resident \([0-9.]*\) -> \([0-9.]*\) MiB/\1 \2/p' "$out" |
	awk '{ printf "%d", $1 - $2 }')
[ "${drop:-0}" -ge 15 ] || fail "host RSS of guest RAM dropped by ${drop:-?} MiB for a 16 MiB balloon"

printf '[host]\nfloor_mib = 100000000\nperiod_ms = 500\n\n[vm guest0]\nmin_mib = 40\n' >"$tmp/policy.ini"
timeout -s KILL 30 "$b/memvirt-vmm" --kernel "$b/guest/memvirt-guest.elf" --mem 64 --timeout 6 \
	--policy "$tmp/policy.ini" --decisions "$tmp/decisions.jsonl" --append "memvirt.report_ms=0" >"$out" 2>&1
rc=$?
cat "$out"
[ $rc -eq 0 ] || fail "memvirt-vmm --policy: exit status $rc"
# 64 MiB of RAM, min_mib 40: a 24 MiB balloon, 6144 pages, reached and checked.
grep -q '^guest: check: ok [0-9]* pages target 6144$' "$out" || fail "the policy engine's target (24 MiB) was not reached"
grep -q '"rule":"share_reclaim"' "$tmp/decisions.jsonl" || fail "no share_reclaim decision record"

[ $fails -eq 0 ] && echo "ok   reference VMM: $merged pages merged while the vCPU ran, RSS -$drop MiB at 16 MiB, guest checks passed; policy engine target reached"
[ $fails -eq 0 ]
