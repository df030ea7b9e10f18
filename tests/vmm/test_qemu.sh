#!/bin/sh
# test_qemu.sh - memvirt's guest driver (the bare-metal guest) against a device nobody
# here wrote: QEMU 7.2's virtio-balloon on -M microvm under TCG, driven through QMP
# (tests/vmm/qemu_interop.py). Skipped without qemu-system-x86_64 or python3.
set -u
b="${MV_SRC:?}/${MV_B:?}"
if [ -n "${MV_SAN:-}" ]; then echo "SKIP: the guest image is built in the plain build (SAN=$MV_SAN)"; exit 0; fi
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 0; }
exec timeout -s KILL 240 python3 "$MV_SRC/tests/vmm/qemu_interop.py" "$b/guest/memvirt-guest.elf"
