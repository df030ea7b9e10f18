#!/usr/bin/env python3
"""qemu_interop.py - memvirt's guest driver (balloon-driver/pvh/) against QEMU's own
virtio-balloon device, driven through QMP as a management tool drives it.

  qemu_interop.py GUEST_ELF

Starts qemu-system-x86_64 -accel tcg -M microvm with guest RAM preallocated (so that
what the balloon gives back shows in QEMU's RSS), then: `balloon` to inflate, the
guest's driver inflates and checks its memory, `query-balloon` reports the new size and
QEMU's RSS drops; `balloon` back to deflate; guest statistics through
guest-stats-polling-interval and `qom-get guest-stats`; free page reporting dropping
RSS further; deflate on OOM (a target beyond what the guest can spare, then the guest
allocates more). Prints the QMP exchange. Exit 0 = passed, 77 = skip, 1 = failed.
QEMU is started by this script and killed by its PID at the end whatever happens.
"""
import ctypes
import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
RAM = 128 * MIB
BALLOON = 32 * MIB
WAIT_S = 60
# QEMU 7.2 does not add virtio_mmio.device= for a PVH ELF kernel: name all 24 windows of
# microvm (0xfeb00000, 512 bytes apart); the guest takes the one holding a balloon.
WINDOWS = " ".join("virtio_mmio.device=512@0x%x:%d" % (0xfeb00000 + i * 512, 12 + i)
                   for i in range(24))


def die_with_parent():
    """In QEMU's child, before exec: SIGKILL when this script dies (even by SIGKILL)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return -1.0


class QMP:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(WAIT_S)
        self.s.connect(path)
        self.f = self.s.makefile("rw")
        print("qmp <- %s" % self.f.readline().strip())
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        line = json.dumps(req)
        print("qmp -> %s" % line)
        self.f.write(line + "\n")
        self.f.flush()
        while True:
            resp = json.loads(self.f.readline())
            if "event" in resp:
                print("qmp <- %s" % json.dumps(resp))
                continue
            print("qmp <- %s" % json.dumps(resp))
            if "error" in resp:
                raise RuntimeError("%s: %s" % (name, resp["error"]))
            return resp["return"]


class Serial:
    def __init__(self, path):
        self.path, self.seen, self.pending = path, 0, []

    def lines(self):
        try:
            with open(self.path, errors="replace") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        out = data.splitlines()
        if not data.endswith("\n"):
            out = out[:-1]
        new, self.seen = out[self.seen:], len(out)
        for line in new:
            print("guest: %s" % line[:160])
        return new

    def wait(self, pred, what, proc):
        """The next line (new since the last wait) that pred accepts."""
        end = time.time() + WAIT_S
        while time.time() < end:
            self.pending += self.lines()
            while self.pending:
                line = self.pending.pop(0)
                if line.startswith("check: FAILED"):
                    raise RuntimeError("the guest found a byte it wrote changed")
                if pred(line):
                    return line
            if proc.poll() is not None:
                raise RuntimeError("QEMU exited (%d) while waiting for %s" % (proc.returncode, what))
            time.sleep(0.1)
        raise RuntimeError("timed out waiting for %s" % what)


def check_line(pages):
    return lambda l: l.startswith("check: ok") and l.endswith(" target %d" % pages)


def run(guest, tmp):
    qmp_path, serial_path = os.path.join(tmp, "qmp.sock"), os.path.join(tmp, "serial.log")
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-M", "microvm", "-m", "%dM" % (RAM // MIB),
            "-mem-prealloc", "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "file:" + serial_path, "-qmp", "unix:%s,server=on,wait=off" % qmp_path,
            "-global", "virtio-mmio.force-legacy=false",
            "-device", "virtio-balloon-device,id=balloon0,free-page-reporting=on,deflate-on-oom=on",
            "-kernel", guest,
            # the first free page report after 10 s: the balloon's figures come first
            "-append", "memvirt.work_pages=256 memvirt.grow_pages=512 memvirt.report_ms=10000 " + WINDOWS]
    print("$ " + " ".join(argv[:-1]) + " '...'")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        end = time.time() + WAIT_S
        while not os.path.exists(qmp_path):
            if proc.poll() is not None or time.time() > end:
                raise RuntimeError("QEMU did not start: %s" % proc.stdout.read().decode(errors="replace"))
            time.sleep(0.05)
        qmp = QMP(qmp_path)
        serial = Serial(serial_path)
        serial.wait(check_line(0), "the guest to boot and check its memory", proc)
        rss0 = rss_mib(proc.pid)
        before = qmp.cmd("query-balloon")["actual"]
        if before != RAM:
            raise RuntimeError("query-balloon: %d before inflating, expected %d" % (before, RAM))

        qmp.cmd("balloon", value=RAM - BALLOON)
        serial.wait(check_line(BALLOON // 4096), "the guest to inflate to %d MiB" % (BALLOON // MIB), proc)
        time.sleep(0.5)
        after = qmp.cmd("query-balloon")["actual"]
        rss1 = rss_mib(proc.pid)
        print("inflate: query-balloon %d -> %d MiB; QEMU RSS %.1f -> %.1f MiB"
              % (before // MIB, after // MIB, rss0, rss1))
        if after != RAM - BALLOON:
            raise RuntimeError("query-balloon says %d after inflating" % after)
        if rss0 - rss1 < 0.9 * BALLOON / MIB:
            raise RuntimeError("QEMU's RSS dropped by %.1f MiB only" % (rss0 - rss1))

        qmp.cmd("balloon", value=RAM)
        serial.wait(check_line(0), "the guest to deflate", proc)
        time.sleep(0.5)
        back = qmp.cmd("query-balloon")["actual"]
        print("deflate: query-balloon %d MiB; QEMU RSS %.1f MiB" % (back // MIB, rss_mib(proc.pid)))
        if back != RAM:
            raise RuntimeError("query-balloon says %d after deflating" % back)

        qmp.cmd("qom-set", path="/machine/peripheral/balloon0",
                property="guest-stats-polling-interval", value=1)
        end = time.time() + WAIT_S
        while True:
            serial.lines()
            st = qmp.cmd("qom-get", path="/machine/peripheral/balloon0", property="guest-stats")
            s = st.get("stats", {})
            if st.get("last-update", 0) and s.get("stat-total-memory", -1) > 0:
                break
            if time.time() > end:
                raise RuntimeError("no guest statistics")
            time.sleep(1)
        print("stats: total %d MiB, free %d MiB, available %d MiB"
              % (s["stat-total-memory"] // MIB, s.get("stat-free-memory", -1) // MIB,
                 s.get("stat-available-memory", -1) // MIB))

        rss2 = rss_mib(proc.pid)
        end = time.time() + WAIT_S
        while rss_mib(proc.pid) > rss2 - 32 and time.time() < end:
            serial.lines()
            time.sleep(0.5)
        rss3 = rss_mib(proc.pid)
        print("free page reporting: QEMU RSS %.1f -> %.1f MiB" % (rss2, rss3))
        if rss2 - rss3 < 32:
            raise RuntimeError("free page reporting gave back %.1f MiB only" % (rss2 - rss3))
        # Deflate on OOM: a target beyond what the guest can spare stops the driver at its
        # floor; the workload then allocates 2 MiB more and the driver deflates on OOM.
        qmp.cmd("balloon", value=4 * MIB)
        line = serial.wait(lambda l: l.startswith("balloon: at the floor"), "the driver to stop at its floor", proc)
        floor = RAM - int(line.split()[-1]) * 4096
        line = serial.wait(lambda l: l.startswith("grow:"), "the guest to grow at the floor", proc)
        deflated_kib = int(re.search(r"(\d+) KiB of them deflated on OOM", line).group(1))
        serial.wait(lambda l: l.startswith("check: ok"), "the guest to check after growing", proc)
        oom = qmp.cmd("query-balloon")["actual"]
        print("deflate on OOM: %d KiB given back by the driver; guest size %.1f MiB at the floor, "
              "query-balloon %.1f MiB after" % (deflated_kib, floor / MIB, oom / MIB))
        if deflated_kib < 1024 or oom - floor < deflated_kib * 1024:
            raise RuntimeError("the driver deflated %d KiB on OOM, QEMU saw %d" % (deflated_kib, oom - floor))
        qmp.cmd("balloon", value=RAM)
        serial.wait(check_line(0), "the guest to deflate after OOM", proc)
        serial.lines()
        qmp.cmd("quit")
        proc.wait(timeout=10)
        print("ok   QEMU 7.2 virtio-balloon: inflate %d MiB (RSS -%.1f MiB), deflate, stats, "
              "free page reporting (RSS -%.1f MiB), deflate on OOM (%d KiB)"
              % (BALLOON // MIB, rss0 - rss1, rss2 - rss3, deflated_kib))
        return 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def main():
    if shutil.which("qemu-system-x86_64") is None:
        print("SKIP: qemu-system-x86_64 not found (make deps installs qemu-system-x86)")
        return 0
    with tempfile.TemporaryDirectory(prefix="memvirt-qemu.") as tmp:
        try:
            return run(sys.argv[1], tmp)
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
            print("FAIL: %s" % e)
            return 1


if __name__ == "__main__":
    sys.exit(main())
