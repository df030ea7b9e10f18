#!/usr/bin/env python3
"""gen_corpus.py - write the seed corpus of the balloon fuzzer (tests/fuzz/corpus/).

Each seed is a program in the format tests/fuzz/fuzz_balloon.c documents: byte 0 sets
up the device (features offered, prefault, small queues), then operations. Seeds walk the
paths a real guest takes (negotiation, inflate, deflate, statistics, reporting, hinting,
page poison, the compacted queue numbers) and a few a hostile one does (descriptors out of
RAM, loops, an avail index running ahead, PFNs in the hole, indirect descriptors).

Usage: tests/fuzz/gen_corpus.py [outdir]   (default: the corpus/ next to this script)
"""
import os
import struct
import sys

OP = dict(MMIO_WRITE=0, MMIO_READ=1, MEM_WRITE=2, ADMIN=3, SETUP=4, PUSH=5, NOTIFY=6,
          PFNS=7, STATS=8, HINT=9, REPORT=10, CLOCK=11, TRANSPORT=12, ACTUAL=13)
F_MTH, F_STATS, F_DOO, F_HINT, F_POISON, F_REPORT = (1 << b for b in range(6))
ALL = 0x3f
QSIZE_64 = 5                      # SETUP flags: ring size 2 << 5
RAM0, RAM1 = 4 << 20, 2 << 20     # folded address space: region 0, then region 1


def u8(v): return struct.pack('<B', v & 0xff)
def u16(v): return struct.pack('<H', v & 0xffff)
def u32(v): return struct.pack('<I', v & 0xffffffff)
def u64(v): return struct.pack('<Q', v & 0xffffffffffffffff)


def setup(feat, flags=QSIZE_64, poison=0):
    return u8(OP['SETUP']) + u8(feat) + u8(flags) + u32(poison)


def pfns(q, pages, raw=False):
    pages = list(pages)
    assert len(pages) < 256
    body = b''.join(u32(p) if raw else u16(p) for p in pages)
    return u8(OP['PFNS']) + u8(q) + u8(1 if raw else 0) + u8(len(pages)) + body


def admin(what, arg=0):
    names = dict(target=0, target_small=1, stats=2, hint_start=3, hint_stop=4, info=5)
    return u8(OP['ADMIN']) + u8(names[what]) + u32(arg)


def stats(entries):
    return u8(OP['STATS']) + u8(len(entries)) + b''.join(u16(t) + u64(v) for t, v in entries)


def hint(mode, pages=(), ident=0):
    out = u8(OP['HINT']) + u8(mode) + (u32(ident) if mode == 2 else b'')
    return out + u8(len(pages)) + b''.join(u32(a) + u8(n - 1) for a, n in pages)


def report(runs):
    return u8(OP['REPORT']) + u8(len(runs) - 1) + b''.join(u32(a) + u16(n - 1) for a, n in runs)


def push(q, descs):
    body = b''.join(u8(k) + u32(a) + u32(n) + u8(nx) for k, a, n, nx in descs)
    return u8(OP['PUSH']) + u8(q) + u8(len(descs) - 1) + body


def mem(addr, data):
    return u8(OP['MEM_WRITE']) + u32(addr) + u8(len(data)) + data


def mmio(off, val, size=4, write=True):
    lens = {1: 0, 2: 1, 4: 2, 8: 3}
    if write:
        return u8(OP['MMIO_WRITE']) + u16(off) + u8(lens[size]) + u64(val)
    return u8(OP['MMIO_READ']) + u16(off) + u8(lens[size])


def notify(q): return u8(OP['NOTIFY']) + u8(q)
def clock(ms): return u8(OP['CLOCK']) + u32(ms)
def actual(v): return u8(OP['ACTUAL']) + u32(v)


def transport(what, body=b''):
    return u8(OP['TRANSPORT']) + u8(what) + body


def ring_avail_idx(q, num=64):
    return 0x1000 + q * 0x2000 + 16 * num + 2


def mem_block(addr, data):
    out = b''
    for o in range(0, len(data), 255):
        out += mem(addr + o, data[o:o + 255])
    return out


def pfn_array(first, n):
    return b''.join(u32(first + i) for i in range(n))


def hint_many(ranges):
    out = b''
    for k in range(0, len(ranges), 3):
        out += hint(0, ranges[k:k + 3])
    return out


SEEDS = {
    'inflate': u8(ALL) + setup(0) + pfns(0, range(512, 520)) + admin('info'),
    'inflate_deflate_tell_host': u8(ALL) + setup(F_MTH) + pfns(0, range(600, 616))
        + admin('target_small', 64) + pfns(1, range(604, 612)) + actual(8) + mmio(0x104, 0, write=False),
    'stats': u8(ALL) + setup(F_STATS) + stats([(4, 1 << 30), (5, 4 << 30), (200, 7)])
        + admin('stats') + stats([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]) + admin('stats'),
    'report': u8(ALL) + setup(F_REPORT) + report([(0x200000, 512), (RAM0, 512)]),
    'report_poison': u8(ALL) + setup(F_REPORT | F_POISON, QSIZE_64 | 0x20, 0xaaaaaaaa)
        + mem(0x200000, b'\xaa' * 64) + report([(0x200000, 16)]),
    'hint_run': u8(ALL) + setup(F_HINT) + admin('hint_start') + hint(0, [(0x300000, 16), (RAM0 + 4096, 4)])
        + mem(0x300000 + 4096, b'guest data') + hint(1) + admin('hint_stop') + admin('info'),
    'hint_stale_id': u8(ALL) + setup(F_HINT | F_STATS) + admin('hint_start') + hint(2, [(0x300000, 8)], 12345)
        + admin('hint_stop') + admin('hint_start') + hint(0, [(0x300000, 8)]),
    'all_features': u8(ALL) + setup(ALL) + stats([(4, 100)]) + pfns(0, range(700, 800))
        + admin('stats') + stats([(4, 99)]) + pfns(1, range(700, 750)) + admin('hint_start')
        + hint(0, [(0x100000, 32)]) + hint(1) + report([(0x200000, 512)]) + admin('hint_stop')
        + clock(6000) + admin('target_small', 200) + actual(50),
    'report_queue_2': u8(F_REPORT) + setup(F_REPORT) + report([(RAM0, 256)]),
    'report_queue_3': u8(F_REPORT | F_HINT) + setup(F_REPORT | F_HINT) + report([(0x10000, 1)]),
    'thp_block_tell_host': u8(ALL) + setup(F_MTH) + mem(0x200000, b'x') + pfns(0, range(512, 640))
        + pfns(0, range(640, 768)) + pfns(0, range(768, 896)) + pfns(0, range(896, 1024))
        + pfns(1, range(600, 610)) + pfns(0, range(600, 612)),
    'prefault_deflate': u8(ALL | 0x40) + setup(0) + pfns(0, range(300, 340)) + pfns(1, range(300, 340)),
    'desc_outside_ram': u8(ALL) + setup(0) + push(0, [(0x02, 0x500000, 64, 0)]) + notify(0)
        + push(0, [(0xf2, 0xfffff000, 0x2000, 0)]) + notify(0),
    'desc_loop': u8(ALL) + setup(0) + push(0, [(0x08, 0x10000, 8, 0)]) + notify(0),
    'avail_idx_ahead': u8(ALL) + setup(F_STATS) + mem(ring_avail_idx(0), u16(0xfff0)) + notify(0)
        + admin('info'),
    'pfns_out_of_ram': u8(ALL) + setup(0) + pfns(0, [0x400, 0x5ff, 0x800, 0xffffffff, 0x600, 0x7ff], raw=True)
        + pfns(1, [0x600, 0x600, 0x12345], raw=True),
    'stats_huge_len': u8(ALL) + setup(F_STATS) + push(2, [(0x00, 0x20000, 0xffffffff, 0)]) + notify(2)
        + admin('stats'),
    'indirect': u8(ALL) + setup(0) + push(0, [(0x04, 0x20000, 64, 0)]) + notify(0),
    'mmio_noise': u8(0x80 | ALL) + mmio(0x44, 1) + mmio(0x70, 8) + mmio(0x100, 5) + mmio(0x10c, 7)
        + mmio(0x64, 0xffffffff) + mmio(0x50, 9) + mmio(0x30, 7) + mmio(0x38, 3) + mmio(0x1f8, 1, 8)
        + mmio(0x0fc, 0, write=False) + mmio(0x103, 0, 1, write=False),
    'bad_queue_setup': u8(ALL) + setup(0, QSIZE_64 | 0x10)
        + transport(2, u8(0) + u8(0x10) + u16(3) + u32(0x1000) + u32(0x2000) + u32(0x3000))
        + transport(2, u8(7) + u8(0xf0) + u16(64) + u32(0) + u32(0) + u32(0)) + mmio(0x70, 15),
    'thp_whole_block_tell_host': u8(ALL) + setup(F_MTH) + mem(0x200000, b'x')
        + mem_block(0x20000, pfn_array(512, 512)) + push(0, [(0x00, 0x20000, 2048, 0)]) + notify(0)
        + pfns(1, range(512, 520)),
    'hint_many_ranges': u8(ALL) + setup(F_HINT, 7) + admin('hint_start')
        + hint_many([(0x100000 + 8192 * i, 1) for i in range(360)] + [(RAM0 + 8192 * i, 1) for i in range(200)])
        + hint(1) + admin('hint_stop'),
    'avail_head_out_of_range': u8(ALL) + setup(0) + pfns(0, [5]) + mem(0x1000 + 16 * 64 + 4 + 2, u16(999))
        + mem(0x1000 + 16 * 64 + 2, u16(2)) + notify(0),
    'neighbours_kept': u8(ALL) + mem(0x1ff000, b'below') + mem(0x210000, b'above') + mem(RAM0 - 8, b'r0 end!!')
        + mem(RAM0, b'r1 start') + mem(RAM0 + 0x8000, b'r1 next') + mem(0x0a0000, b'lowdata')
        + mem(0x201000, b'reported') + mem(RAM0 + 0x1000, b'inflated') + mem(RAM0 + 0x7000, b'hinted')
        + setup(F_REPORT | F_HINT | F_MTH) + report([(0x200000, 16)]) + pfns(0, [RAM0 // 4096 + 1, 0x9f])
        + admin('hint_start') + hint(0, [(RAM0 + 0x7000, 1)]) + hint(1) + admin('hint_stop')
        + pfns(1, [0x9f]) + mem(0x9f000, b'reused'),
    'reset_midway': u8(ALL) + setup(F_MTH) + pfns(0, range(100, 132)) + transport(1, u8(0))
        + pfns(0, range(140, 150)) + setup(F_MTH) + pfns(1, range(100, 132)),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), 'corpus')
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), 'wb') as f:
            f.write(data)
    print(f'{len(SEEDS)} seeds in {out}')


if __name__ == '__main__':
    main()
