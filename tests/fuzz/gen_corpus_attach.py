#!/usr/bin/env python3
"""gen_corpus_attach.py - write the seed corpus of the agent protocol fuzzer
(tests/fuzz/corpus-attach/).

Each seed is a byte stream as tests/fuzz/fuzz_attach.c takes it: messages of the protocol
libmemvirt/attach_wire.h describes (12-byte little-endian header, then the payload of
its type), one after the other. The seeds hold a daemon's side of a session (WELCOME,
polls, targets, shares, refusals), an agent's (HELLO, reports of 0, 2 and 64 VMs), and
streams that end badly: a wrong magic, version, type or length, an oversized length, a
name without its NUL, a reserved byte set, a message cut short.

Usage: tests/fuzz/gen_corpus_attach.py [outdir]   (default: corpus-attach/ here)
"""
import os
import struct
import sys

MAGIC, VERSION = 0x4741564d, 1
HELLO, WELCOME, POLL, REPORT, SET_TARGET, SET_SHARE, REFUSE = range(1, 8)
NAME, DOMAIN, CLIENT, WHY = 64, 80, 80, 96
SCAN_U64 = 17          # the counters of struct mv_scan_stats
BALLOON_U64 = 14 + 16  # target .. stats_age_ns, then stats[16]


def u8(v): return struct.pack('<B', v & 0xff)
def u16(v): return struct.pack('<H', v & 0xffff)
def u32(v): return struct.pack('<I', v & 0xffffffff)
def u64(v): return struct.pack('<Q', v & 0xffffffffffffffff)


def field(s, size):
    b = s.encode()
    assert len(b) < size
    return b + bytes(size - len(b))


def msg(typ, payload, length=None, magic=MAGIC, version=VERSION):
    n = len(payload) if length is None else length
    return u32(magic) + u16(version) + u16(typ) + u32(n) + payload


def scan_block(valid, seed):
    return u8(valid) + bytes(7) + b''.join(u64(seed * 1000 + i) for i in range(SCAN_U64))


def vm_block(name, seed, balloon=True, scanner=True):
    out = field(name, NAME) + field('vm:' + name, DOMAIN) + u64(seed << 24)
    out += u8(balloon) + u8(scanner) + u8(seed & 1) + u8(0) + u32(0x3ff if balloon else 0)
    out += b''.join(u64(seed * 4096 + i) for i in range(BALLOON_U64))
    return out + scan_block(scanner, seed)


def hello(pid, client): return msg(HELLO, u32(pid) + field(client, CLIENT))
def welcome(ms): return msg(WELCOME, u32(ms))
def poll(seq): return msg(POLL, u64(seq))
def set_target(name, b): return msg(SET_TARGET, field(name, NAME) + u64(b))
def set_share(mc): return msg(SET_SHARE, u64(mc))


def refuse(typ, err, name, why):
    return msg(REFUSE, u16(typ) + u16(0) + u32(err) + field(name, NAME) + field(why, WHY))


def report(seq, vms, host=True):
    body = u64(seq) + scan_block(host, 7) + u32(len(vms)) + u32(0)
    return msg(REPORT, body + b''.join(vms))


def daemon_session():
    return (welcome(1000) + poll(1) + set_target('alpha', 4 << 20) + set_share(250000)
            + poll(2) + refuse(REPORT, -17, 'beta', 'name in use') + set_target('gamma', 0)
            + set_share(0) + poll(3))


def agent_session():
    return (hello(4242, 'qemu-1') + report(1, [vm_block('alpha', 1), vm_block('beta', 2, False, False)])
            + refuse(SET_TARGET, -2, 'gamma', 'no VM of that name on this link') + report(2, [], host=False))


def report_full():
    return report(9, [vm_block('vm%d' % i, i, i % 2 == 0, i % 3 == 0) for i in range(64)])


def bad_magic(): return poll(1) + msg(POLL, u64(2), magic=0x12345678)
def bad_version(): return welcome(500) + msg(POLL, u64(2), version=2)
def bad_type(): return poll(1) + msg(9, u64(0))
def wrong_length(): return poll(1) + msg(POLL, u64(2) + u8(0))
def oversized(): return welcome(10) + msg(REPORT, b'', length=(1 << 16) + 1)
def unterminated_name(): return poll(1) + msg(SET_TARGET, b'x' * NAME + u64(4096))
def reserved_set(): return msg(REFUSE, u16(SET_SHARE) + u16(1) + u32(-34) + bytes(NAME) + bytes(WHY))
def cut_short(): return daemon_session() + set_target('alpha', 8 << 20)[:40]


def nr_vms_mismatch():
    r = bytearray(report(1, [vm_block('a', 1), vm_block('b', 2)]))
    r[12 + 8 + 8 + SCAN_U64 * 8] = 3  # nr_vms says 3, the length 2
    return bytes(r)


SEEDS = {
    'daemon_session': daemon_session,
    'agent_session': agent_session,
    'report_64_vms': report_full,
    'bad_magic': bad_magic,
    'bad_version': bad_version,
    'bad_type': bad_type,
    'wrong_length': wrong_length,
    'oversized_length': oversized,
    'nr_vms_mismatch': nr_vms_mismatch,
    'unterminated_name': unterminated_name,
    'reserved_set': reserved_set,
    'cut_short': cut_short,
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), 'corpus-attach')
    os.makedirs(out, exist_ok=True)
    for name, make in SEEDS.items():
        with open(os.path.join(out, name), 'wb') as f:
            f.write(make())
    print(f'{len(SEEDS)} seeds in {out}')


if __name__ == '__main__':
    main()
