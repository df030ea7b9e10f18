#!/usr/bin/env python3
"""gen_corpus_vhost_user.py - write the seed corpus of the vhost-user fuzzer
(tests/fuzz/corpus-vhost-user/).

Each seed is a program in the format tests/fuzz/fuzz_vhost_user.c documents: byte 0
configures the backend, then operations. The seeds walk virtio_uml's bring-up (owner,
features, protocol features, backend channel, features, memory table, per ring call, num,
base, addresses, then kicks and enables), inflate through a ring, config reads and target
changes, a ring stopped and resumed, a device reset, in-band notifications, and a few
things a hostile frontend does (refused tables, split and malformed messages, a call pipe
without a reader).

Usage: tests/fuzz/gen_corpus_vhost_user.py [outdir]   (default: corpus-vhost-user/ here)
"""
import os
import struct
import sys

OP = dict(MSG=0, SPLIT=1, DISPATCH=2, KICK=3, MEMW=4, PUSH=5, ADMIN=6, DRAIN=7, CLOSE=8, DROP=9)
REQ = dict(GET_FEATURES=1, SET_FEATURES=2, SET_OWNER=3, SET_MEM_TABLE=5, SET_VRING_NUM=8,
           SET_VRING_ADDR=9, SET_VRING_BASE=10, GET_VRING_BASE=11, SET_VRING_KICK=12,
           SET_VRING_CALL=13, GET_PROTOCOL_FEATURES=15, SET_PROTOCOL_FEATURES=16,
           SET_VRING_ENABLE=18, SET_BACKEND_REQ_FD=21, GET_CONFIG=24, SET_CONFIG=25,
           RESET_DEVICE=34, VRING_KICK=35)
PF = (1 << 3) | (1 << 5) | (1 << 9)       # REPLY_ACK, BACKEND_REQ, CONFIG (virtio_uml's)
PF_INBAND = 1 << 14
V1, PROTO = 1 << 32, 1 << 30
F_MTH, F_STATS, F_REPORT = 1, 2, 32
UA = 0x7f1200000000
PAGES = 64
NUM = 16
NOFD = 1 << 8


def u8(v): return struct.pack('<B', v & 0xff)
def u16(v): return struct.pack('<H', v & 0xffff)
def u32(v): return struct.pack('<I', v & 0xffffffff)
def u64(v): return struct.pack('<Q', v & 0xffffffffffffffff)


def ring(q): return 0x1000 + q * 0x1000


# descriptors to attach
def memfd(pages=PAGES, sealed=True): return u8(0 | (8 if sealed else 0)) + u8(pages - 1)
def eventfd(): return u8(1)
def pipe_read_end(): return u8(2)
def pipe_write_end(broken=False): return u8(3 | (8 if broken else 0))
def sock(): return u8(4)
def again(res): return u8(5) + u8(res)


class Prog:
    """A program, counting the resources its descriptors create."""

    def __init__(self, conf):
        self.b = u8(conf)
        self.nres = 0

    def res(self, fds):
        first = self.nres
        self.nres += sum(1 for d in fds if d[0] & 7 not in (5, 7))
        return first

    def msg(self, req, payload=b'', need=True, fds=(), nodispatch=False, flags=None, size=None,
            split=None):
        fl = (1 if need else 0) | (0x20 if nodispatch else 0) | (0x40 if size is not None else 0) \
            | (0x80 if flags is not None else 0)
        out = u8(OP['SPLIT']) + u16(split) if split is not None else u8(OP['MSG'])
        out += u8(REQ[req] if isinstance(req, str) else req) + u8(fl)
        out += (u32(flags) if flags is not None else b'') + (u32(size) if size is not None else b'')
        out += u16(len(payload)) + payload + u8(len(fds)) + b''.join(fds)
        self.b += out
        return self.res(fds)

    def op(self, name, body=b''):
        self.b += u8(OP[name]) + body

    def push(self, mem, q, pfns):
        self.op('PUSH', u8(mem) + u8(q) + u8(NUM.bit_length() - 1) + u8(len(pfns))
                + b''.join(u16(p) for p in pfns))


def state(index, num): return u32(index) + u32(num)


def vaddr(q, base=UA):
    r = ring(q)
    return u32(q) + u32(0) + u64(base + r) + u64(base + r + 0x800) + u64(base + r + 0x400) + u64(0)


def table(regions):
    return u32(len(regions)) + u32(0) + b''.join(u64(g) + u64(s) + u64(a) + u64(o) for g, s, a, o in regions)


def probe(p, inband=False):
    p.msg('SET_OWNER', need=False)
    p.msg('GET_FEATURES', need=False)
    p.msg('GET_PROTOCOL_FEATURES', need=False)
    p.msg('SET_PROTOCOL_FEATURES', u64(PF | (PF_INBAND if inband else 0)), need=False)
    return p.msg('SET_BACKEND_REQ_FD', fds=[sock()])


def bring_up(p, features=F_MTH, nq=2, inband=False):
    """virtio_uml's sequence; returns (memfd resource, kick resources by queue)."""
    probe(p, inband)
    p.msg('SET_FEATURES', u64(features | V1 | PROTO))
    mem = p.msg('SET_MEM_TABLE', table([(0, PAGES * 4096, UA, 0)]), fds=[memfd()])
    for q in range(nq):
        if inband:
            p.msg('SET_VRING_CALL', u64(q | NOFD))
        else:
            p.msg('SET_VRING_CALL', u64(q), fds=[eventfd()])
        p.msg('SET_VRING_NUM', state(q, NUM))
        p.msg('SET_VRING_BASE', state(q, 0))
        p.msg('SET_VRING_ADDR', vaddr(q))
    kicks = []
    for q in range(nq):
        if inband:
            p.msg('SET_VRING_KICK', u64(q | NOFD))
            kicks.append(None)
        else:
            kicks.append(p.msg('SET_VRING_KICK', u64(q), fds=[eventfd()]))
    for q in range(nq):
        p.msg('SET_VRING_ENABLE', state(q, 1))
    return mem, kicks


def inflate(p, mem, kicks, q, pfns):
    p.push(mem, q, pfns)
    if kicks[q] is None:
        p.msg('VRING_KICK', state(q, 0))
    else:
        p.op('KICK', u8(kicks[q]))
        p.op('DISPATCH')
    p.op('DRAIN')


def seed_handshake_inflate():
    p = Prog(0x3f)
    mem, kicks = bring_up(p)
    inflate(p, mem, kicks, 0, range(16, 24))
    p.op('ADMIN', u8(0) + u32(8))
    p.msg('GET_CONFIG', u32(0) + u32(8) + u32(0) + bytes(8))
    p.msg('SET_CONFIG', u32(4) + u32(4) + u32(0) + u32(8))
    inflate(p, mem, kicks, 1, range(16, 20))
    p.op('ADMIN', u8(5) + u32(0))
    return p.b


def seed_inband():
    p = Prog(0x7f)
    mem, kicks = bring_up(p, inband=True)
    inflate(p, mem, kicks, 0, [30, 31, 32, 999])
    p.op('ADMIN', u8(0) + u32(4))
    p.op('DRAIN')
    return p.b


def seed_vring_base():
    p = Prog(0x3f)
    mem, kicks = bring_up(p)
    inflate(p, mem, kicks, 0, [40])
    p.msg('GET_VRING_BASE', state(0, 0), need=False)
    p.push(mem, 0, [41, 42])
    p.msg('SET_VRING_BASE', state(0, 1))
    p.msg('SET_VRING_ADDR', vaddr(0))
    p.msg('SET_VRING_KICK', u64(0), fds=[eventfd()])
    p.op('DRAIN')
    return p.b


def seed_reset_device():
    p = Prog(0x3f)
    mem, kicks = bring_up(p)
    inflate(p, mem, kicks, 0, [50, 51])
    p.msg('RESET_DEVICE')
    p.msg('SET_FEATURES', u64(F_MTH | F_STATS | F_REPORT | V1 | PROTO))
    for q in range(4):
        p.msg('SET_VRING_CALL', u64(q), fds=[eventfd()])
        p.msg('SET_VRING_NUM', state(q, NUM))
        p.msg('SET_VRING_ADDR', vaddr(q))
        p.msg('SET_VRING_KICK', u64(q), fds=[eventfd()])
    p.op('ADMIN', u8(1) + u32(0))
    p.op('DRAIN')
    return p.b


def seed_bad_tables():
    p = Prog(0x3f)
    mem, kicks = bring_up(p)
    p.msg('SET_MEM_TABLE', table([(0, 0x20000, UA, 0), (0x10000, 0x20000, UA + 0x100000, 0)]),
          fds=[memfd(), memfd()])
    p.msg('SET_MEM_TABLE', table([(0, 0x1000, UA, 0)]), fds=[pipe_read_end()])
    p.msg('SET_MEM_TABLE', table([(0, 0x41000, UA, 0)]), fds=[memfd(PAGES, False)])
    p.msg('SET_MEM_TABLE', table([(0, PAGES * 4096, UA, 0), (1 << 20, 0x4000, UA + (1 << 20), 0)]),
          fds=[again(mem), memfd(4)])
    inflate(p, mem, kicks, 0, [60])
    return p.b


def seed_split_and_malformed():
    p = Prog(0x3f)
    probe(p)
    p.msg('SET_FEATURES', u64(F_MTH | V1 | PROTO), split=5)
    p.msg('SET_MEM_TABLE', table([(0, PAGES * 4096, UA, 0)]), fds=[memfd()], split=20)
    p.msg('GET_FEATURES', u64(0), need=False)
    p.msg('SET_OWNER', flags=2)
    return p.b


def seed_call_pipe():
    p = Prog(0x3f)
    mem, kicks = bring_up(p)
    p.msg('SET_VRING_CALL', u64(0), fds=[pipe_write_end(broken=True)])
    inflate(p, mem, kicks, 0, [44])
    p.msg('SET_VRING_CALL', u64(0), fds=[sock()])
    inflate(p, mem, kicks, 0, [45])
    k = p.msg('SET_VRING_KICK', u64(1), fds=[pipe_read_end()])
    p.op('KICK', u8(k))
    p.op('DISPATCH')
    p.op('DROP', u8(k))                     # the kick pipe's writer goes away
    p.op('DISPATCH')
    p.msg('SET_VRING_KICK', u64(1 | NOFD))  # polling: not offered
    p.op('CLOSE', u8(0))
    p.op('DISPATCH')
    return p.b


def seed_two_regions():
    p = Prog(0x3f)
    probe(p)
    p.msg('SET_FEATURES', u64(V1 | PROTO))
    mem = p.msg('SET_MEM_TABLE', table([(0, PAGES * 4096, UA, 0), (1 << 20, 0x8000, UA + (1 << 20), 0)]),
                fds=[memfd(), memfd(8, False)])
    for q in range(2):
        p.msg('SET_VRING_CALL', u64(q), fds=[eventfd()])
        p.msg('SET_VRING_NUM', state(q, NUM))
        p.msg('SET_VRING_ADDR', vaddr(q))
        k = p.msg('SET_VRING_KICK', u64(q), fds=[eventfd()])
        p.msg('SET_VRING_ENABLE', state(q, 1))
    p.push(mem, 0, [0x100, 0x101, 20])
    p.op('KICK', u8(k - 2))
    p.op('DISPATCH')
    p.op('DRAIN')
    return p.b


SEEDS = {
    'handshake_inflate': seed_handshake_inflate,
    'inband': seed_inband,
    'vring_base_resume': seed_vring_base,
    'reset_device': seed_reset_device,
    'bad_tables': seed_bad_tables,
    'split_and_malformed': seed_split_and_malformed,
    'call_pipe_and_socket': seed_call_pipe,
    'two_regions': seed_two_regions,
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), 'corpus-vhost-user')
    os.makedirs(out, exist_ok=True)
    for name, make in SEEDS.items():
        with open(os.path.join(out, name), 'wb') as f:
            f.write(make())
    print(f'{len(SEEDS)} seeds in {out}')


if __name__ == '__main__':
    main()
