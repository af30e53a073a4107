"""Tests of the instruction-level simulator (fxpgen.sim.isa_sim).

Expected values are computed independently: numpy for matmuls and convs, and a
plain-Python, one-iteration-at-a-time reference interpreter (``RefMachine``) with
its own integer rounding/saturation for the randomized differential tests, which
exercise the simulator's bulk (vectorised, chunked) execution paths.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import replace

import numpy as np
import pytest

import fxpgen.sim.isa_sim as isa_sim
from fxpgen.config import CoreConfig
from fxpgen.isa import (INSN_BITS, Addr, ErrorCode, Instruction, Mem, Opcode, pack_row,
                        unpack_row)
from fxpgen.numerics import requantize
from fxpgen.sim.isa_sim import Machine, ProgramError, RunResult, run_program

SMALL = dict(spad_depth=64, wbuf_depth=32, acc_depth=64, table_depth=4)
CONFIGS = [CoreConfig(rows=r, cols=c, **SMALL) for r, c in [(2, 2), (4, 4), (4, 8), (8, 4), (8, 8)]]
CFG_IDS = [f"{c.rows}x{c.cols}" for c in CONFIGS]


def A(base=0, s0=0, s1=0, regions=None):
    return Addr(base, s0, s1, regions)


def ins(op, c0=1, c1=1, x=A(), y=A(), z=A(), **params):
    return Instruction(op, params, c0, c1, x, y, z)


def enc(cfg, *insns):
    return [i.encode(cfg) for i in insns]


def load(mem, n, base=0, stride=1):
    return ins(Opcode.LOAD, n, 1, z=A(base, stride), mem=mem)


def store(mem, n, base=0, stride=1):
    return ins(Opcode.STORE, n, 1, x=A(base, stride), mem=mem)


HALT = ins(Opcode.HALT)
SYNC = ins(Opcode.SYNC)


def spad_words(cfg, rows):
    """SPAD rows (values -128..255, stored as bytes) as data words."""
    return [pack_row(Mem.SPAD, [int(v) & 0xFF for v in r], cfg) for r in np.asarray(rows)]


def acc_words(cfg, rows):
    return [pack_row(Mem.ACC, r, cfg) for r in np.asarray(rows).tolist()]


def wbuf_words(cfg, rows):
    return [pack_row(Mem.WBUF, r, cfg) for r in np.asarray(rows).tolist()]


def table_words(cfg, shifts, aligns):
    return [pack_row(Mem.TABLE, list(zip(s, a)), cfg)
            for s, a in zip(np.asarray(shifts).tolist(), np.asarray(aligns).tolist())]


def unpack_spad(cfg, words, signed=False):
    return np.array([unpack_row(Mem.SPAD, w, cfg, signed) for w in words], dtype=np.int64)


def unpack_acc(cfg, words):
    return np.array([unpack_row(Mem.ACC, w, cfg) for w in words], dtype=np.int64)


def acc_limits(cfg):
    return -(1 << (cfg.acc_width - 1)), (1 << (cfg.acc_width - 1)) - 1


# --- plain-Python integer reference ------------------------------------------------


def rhe(v: int, n: int) -> int:
    """v * 2**-n, round half to even (n > 0), exact left shift otherwise."""
    if n <= 0:
        return v << -n
    q = v >> n
    rem = v - (q << n)
    half = 1 << (n - 1)
    return q + (1 if rem > half or (rem == half and q & 1) else 0)


def clamp(v, lo, hi):
    return max(lo, min(hi, v))


def sat8(v, signed, relu):
    lo, hi = (-127, 127) if signed else (0, 255)
    return clamp(v, 0 if relu else lo, hi)


def s8(b):
    return b - 256 if b >= 128 else b


class RefMachine:
    """Straightforward interpreter: one iteration at a time, Python ints."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.spad = [[0] * cfg.lanes for _ in range(cfg.spad_depth)]
        self.wbuf = [[0] * cfg.cols for _ in range(cfg.wbuf_depth)]
        self.acc = [[0] * cfg.cols for _ in range(cfg.acc_depth)]
        self.table = [[(0, 0)] * cfg.cols for _ in range(cfg.table_depth)]
        self.banks = [[[0] * cfg.cols for _ in range(cfg.rows)] for _ in range(2)]

    def sat(self, v):
        return clamp(v, *acc_limits(self.cfg))

    def shl(self, v, s):
        # An aligned operand keeps one bit more than the accumulator, so that a
        # shifted value beyond it still saturates the sum (docs/numerics.md).
        return clamp(v << s, -(1 << self.cfg.acc_width), (1 << self.cfg.acc_width) - 1)

    def run(self, program, data):
        cfg = self.cfg
        res = RunResult()
        dpos = 0
        depth = {Mem.SPAD: cfg.spad_depth, Mem.WBUF: cfg.wbuf_depth, Mem.ACC: cfg.acc_depth,
                 Mem.TABLE: cfg.table_depth}
        for pc, word in enumerate(program):
            if word & 0xF not in {o.value for o in Opcode}:
                res.error, res.error_pc = ErrorCode.ILLEGAL_OPCODE, pc
                break
            insn = Instruction.decode(word)
            op, p = insn.opcode, insn.params
            if op is Opcode.HALT:
                res.halts += 1
                continue
            if op is Opcode.SYNC:
                continue
            bad = ((op is Opcode.STORE and p["mem"] not in (0, 2))
                   or (op is Opcode.LOADW and (insn.count0 != -(-cfg.rows * (8 - 2 * p["narrow"]) // 8)
                                               or insn.count1 != 1))
                   or (op is Opcode.MATMUL and p["lane"] >= cfg.matmul_lanes)
                   or (op is Opcode.REQUANT and (p["lane"] >= cfg.requant_lanes
                                                 or p["table"] >= cfg.table_depth)))
            if bad:
                res.error, res.error_pc = ErrorCode.BAD_FIELD, pc
                break
            streams = [(s, insn.stream_mem(s)) for s in "xyz" if insn.stream_mem(s) is not None]
            written = set()
            err = None
            n = insn.iterations
            for it in range(n):
                i1, i0 = divmod(it, insn.count0)
                ad = {}
                for s, mem in streams:
                    g = getattr(insn, s)
                    a = g.base + i1 * g.stride1 + i0 * g.stride0
                    if a >= depth[mem]:
                        err = ErrorCode.ADDRESS
                    elif mem is not Mem.TABLE and not g.regions >> (a * 4 // depth[mem]) & 1:
                        err = ErrorCode.REGION
                    if err:
                        break
                    ad[s] = a
                if err:
                    break
                for s, mem in streams:
                    if mem is Mem.SPAD and s != "z" and ad[s] in written and op is not Opcode.MATMUL:
                        raise ProgramError(f"instruction {pc}")
                if op in (Opcode.ADD, Opcode.MAX, Opcode.REQUANT):
                    written.add(ad["z"])
                if op is Opcode.LOAD:
                    if dpos >= len(data):
                        raise ProgramError(f"instruction {pc}")
                    w = data[dpos]
                    dpos += 1
                    mem = Mem(p["mem"])
                    row = unpack_row(mem, w, cfg, signed=mem is Mem.WBUF)
                    {Mem.SPAD: self.spad, Mem.WBUF: self.wbuf, Mem.ACC: self.acc,
                     Mem.TABLE: self.table}[mem][ad["z"]] = row
                elif op is Opcode.STORE:
                    mem = Mem(p["mem"])
                    row = (self.spad if mem is Mem.SPAD else self.acc)[ad["x"]]
                    res.results.append(pack_row(mem, row, cfg))
                    res.lasts.append(it == n - 1)
                elif op is Opcode.LOADW:
                    # Column j's weights: b-bit fields of the bytes j read so far; a
                    # row enters once all its bits are read.
                    b = 8 - 2 * p["narrow"]
                    if it == 0:
                        lanes = [0] * cfg.cols
                    for j, v in enumerate(self.wbuf[ad["x"]]):
                        lanes[j] |= (v & 0xFF) << (8 * it)
                    for i in range(min(cfg.rows, 8 * (it + 1) // b)):
                        self.banks[p["bank"]][i] = [
                            ((lane >> (b * i)) & ((1 << b) - 1)) - ((lane >> (b * i + b - 1) & 1) << b)
                            for lane in lanes]
                elif op is Opcode.MATMUL:
                    lo = p["lane"] * cfg.rows
                    a = self.spad[ad["x"]][lo:lo + cfg.rows]
                    if p["act_signed"]:
                        a = [s8(v) for v in a]
                    W = self.banks[p["bank"]]
                    prod = [sum(a[i] * W[i][j] for i in range(cfg.rows)) for j in range(cfg.cols)]
                    old = self.acc[ad["z"]]
                    self.acc[ad["z"]] = ([self.sat(o + v) for o, v in zip(old, prod)]
                                         if p["accumulate"] else prod)
                    res.macs += 1
                elif op is Opcode.REQUANT:
                    lo = p["lane"] * cfg.cols
                    acc = self.acc[ad["x"]]
                    if p["residual"]:
                        r = self.spad[ad["y"]][lo:lo + cfg.cols]
                        if p["res_signed"]:
                            r = [s8(v) for v in r]
                    else:
                        r = [0] * cfg.cols
                    out = []
                    for j in range(cfg.cols):
                        nj, aj = self.table[p["table"]][j]
                        s = self.sat(self.shl(acc[j], max(-aj, 0)) + self.shl(r[j], max(aj, 0)))
                        out.append(sat8(rhe(s, nj), p["out_signed"], p["relu"]) & 0xFF)
                    row = list(self.spad[ad["z"]])
                    row[lo:lo + cfg.cols] = out
                    self.spad[ad["z"]] = row
                elif op in (Opcode.ADD, Opcode.MAX):
                    xa = self.spad[ad["x"]]
                    yb = self.spad[ad["y"]]
                    if op is Opcode.ADD:
                        a = [s8(v) if p["a_signed"] else v for v in xa]
                        b = [s8(v) if p["b_signed"] else v for v in yb]
                        out = [sat8(rhe(self.sat(self.shl(u, p["a_shift"]) + self.shl(v, p["b_shift"])),
                                        p["shift"]), p["out_signed"], p["relu"]) for u, v in zip(a, b)]
                    else:
                        f = s8 if p["a_signed"] else (lambda v: v)
                        out = [max(f(u), f(v)) for u, v in zip(xa, yb)]
                    self.spad[ad["z"]] = [v & 0xFF for v in out]
            if err:
                res.error, res.error_pc = err, pc
                break
        res.data_used = dpos
        return res

    def state(self):
        return dict(
            spad=np.array(self.spad, dtype=np.int64),
            wbuf=np.array(self.wbuf, dtype=np.int64),
            acc=np.array(self.acc, dtype=np.int64),
            table_shift=np.array([[s for s, _ in r] for r in self.table], dtype=np.int64),
            table_align=np.array([[a for _, a in r] for r in self.table], dtype=np.int64),
            banks=np.array(self.banks, dtype=np.int64),
        )


def sim_state(m: Machine):
    return {k: getattr(m, k).astype(np.int64) for k in
            ("spad", "wbuf", "acc", "table_shift", "table_align", "banks")}


def assert_same_result(a: RunResult, b: RunResult):
    assert a.error == b.error
    assert a.error_pc == b.error_pc
    assert a.results == b.results
    assert a.lasts == b.lasts
    assert (a.halts, a.data_used, a.macs) == (b.halts, b.data_used, b.macs)


# --- LOAD / STORE --------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_load_store_spad_roundtrip(cfg):
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, (5, cfg.lanes))
    words = spad_words(cfg, rows)
    r = run_program(cfg, enc(cfg, load(Mem.SPAD, 5, base=3, stride=2),
                             store(Mem.SPAD, 5, base=3, stride=2)), words)
    assert r.error is ErrorCode.NONE and r.error_pc is None
    assert r.results == words
    assert r.lasts == [False] * 4 + [True]
    assert r.data_used == 5 and r.macs == 0
    assert all(0 <= w < (1 << cfg.bus_width) for w in r.results)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_load_store_acc_roundtrip(cfg):
    lo, hi = acc_limits(cfg)
    rng = np.random.default_rng(2)
    rows = rng.integers(lo, hi, (4, cfg.cols), endpoint=True)
    rows[0, :] = lo
    rows[1, :] = hi
    rows[2, 0] = -1
    words = acc_words(cfg, rows)
    m = Machine(cfg)
    r = m.run(enc(cfg, load(Mem.ACC, 4, base=10), store(Mem.ACC, 4, base=10)), words)
    assert r.results == words
    np.testing.assert_array_equal(m.acc[10:14], rows)
    np.testing.assert_array_equal(unpack_acc(cfg, r.results), rows)


def test_acc_store_matches_pack_row_odd_width():
    cfg = CoreConfig(rows=2, cols=2, acc_width=19, **SMALL)   # fields straddle bytes
    vals = [[-(1 << 18), (1 << 18) - 1], [-1, 12345], [0, -77777]]
    words = acc_words(cfg, vals)
    r = run_program(cfg, enc(cfg, load(Mem.ACC, 3), store(Mem.ACC, 3)), words)
    assert r.results == words
    assert r.results == [pack_row(Mem.ACC, v, cfg) for v in vals]


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_load_wbuf_and_table(cfg):
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (3, cfg.cols))
    sh = rng.integers(-32, 32, (2, cfg.cols))
    al = rng.integers(-32, 32, (2, cfg.cols))
    m = Machine(cfg)
    r = m.run(enc(cfg, load(Mem.WBUF, 3, base=1), load(Mem.TABLE, 2, base=2)),
              wbuf_words(cfg, w) + table_words(cfg, sh, al))
    assert r.error is ErrorCode.NONE and r.data_used == 5 and r.results == []
    np.testing.assert_array_equal(m.wbuf[1:4], w)
    np.testing.assert_array_equal(m.table_shift[2:4], sh)
    np.testing.assert_array_equal(m.table_align[2:4], al)
    assert m.wbuf.dtype == np.int8 and m.table_shift.dtype == np.int8


def test_load_uses_low_bits_only():
    cfg = CONFIGS[1]   # 4x4: SPAD row is 32 bits of a 128-bit bus
    word = (0xDEADBEEF << 64) | 0x04030201
    m = Machine(cfg)
    r = m.run(enc(cfg, load(Mem.SPAD, 1), store(Mem.SPAD, 1)), [word])
    assert r.results == [0x04030201]
    assert list(m.spad[0]) == [1, 2, 3, 4]


def test_load_repeated_row_keeps_last():
    cfg = CONFIGS[1]
    words = spad_words(cfg, [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    m = Machine(cfg)
    r = m.run(enc(cfg, load(Mem.SPAD, 3, base=7, stride=0)), words)
    assert r.data_used == 3
    assert list(m.spad[7]) == [9, 10, 11, 12]


def test_store_two_level_loop_order():
    cfg = CONFIGS[1]
    rows = np.arange(16 * 4).reshape(16, 4) % 256
    st = ins(Opcode.STORE, 2, 3, x=A(1, 5, 2), mem=Mem.SPAD)
    r = run_program(cfg, enc(cfg, load(Mem.SPAD, 16), st), spad_words(cfg, rows))
    order = [1 + i1 * 2 + i0 * 5 for i1 in range(3) for i0 in range(2)]
    np.testing.assert_array_equal(unpack_spad(cfg, r.results), rows[order])
    assert r.lasts == [False] * 5 + [True]


def test_zero_count_does_nothing():
    cfg = CONFIGS[1]
    r = run_program(cfg, enc(cfg, ins(Opcode.STORE, 0, 5, x=A(999, regions=0), mem=Mem.SPAD),
                             ins(Opcode.LOAD, 3, 0, z=A(999, regions=0), mem=Mem.SPAD)), [])
    assert r.error is ErrorCode.NONE and r.results == [] and r.data_used == 0


# --- LOADW / MATMUL ------------------------------------------------------------------


def matmul_program(cfg, n, *, bank=0, accumulate=0, act_signed=0, lane=0, zbase=0, load_acc=0):
    return enc(cfg,
               load(Mem.WBUF, cfg.rows, base=4),
               ins(Opcode.LOADW, cfg.rows, 1, x=A(4, 1), bank=bank),
               load(Mem.SPAD, n, base=8),
               *([load(Mem.ACC, n, base=zbase)] if load_acc else []),
               ins(Opcode.MATMUL, n, 1, x=A(8, 1), z=A(zbase, 1), bank=bank,
                   accumulate=accumulate, act_signed=act_signed, lane=lane),
               store(Mem.ACC, n, base=zbase))


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
@pytest.mark.parametrize("act_signed", [0, 1])
def test_matmul_equals_numpy(cfg, act_signed):
    rng = np.random.default_rng(10 + act_signed)
    n = 7
    W = rng.integers(-128, 128, (cfg.rows, cfg.cols))
    W[0, 0] = -128
    X = rng.integers(0, 256, (n, cfg.lanes))
    X[0, :] = 255
    prog = matmul_program(cfg, n, act_signed=act_signed, bank=1)
    m = Machine(cfg)
    r = m.run(prog, wbuf_words(cfg, W) + spad_words(cfg, X))
    assert r.error is ErrorCode.NONE and r.macs == n
    a = X[:, :cfg.rows]
    if act_signed:
        a = np.where(a >= 128, a - 256, a)
    np.testing.assert_array_equal(unpack_acc(cfg, r.results), a @ W)
    np.testing.assert_array_equal(m.banks[1], W)


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c.lanes > c.rows], ids=lambda c: f"{c.rows}x{c.cols}")
def test_matmul_lanes(cfg):
    rng = np.random.default_rng(12)
    W = rng.integers(-127, 128, (cfg.rows, cfg.cols))
    X = rng.integers(0, 256, (3, cfg.lanes))
    for lane in range(cfg.matmul_lanes):
        r = run_program(cfg, matmul_program(cfg, 3, lane=lane), wbuf_words(cfg, W) + spad_words(cfg, X))
        a = X[:, lane * cfg.rows:(lane + 1) * cfg.rows]
        np.testing.assert_array_equal(unpack_acc(cfg, r.results), a @ W)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_matmul_accumulate_and_saturation(cfg):
    lo, hi = acc_limits(cfg)
    rng = np.random.default_rng(13)
    n = 6
    W = rng.integers(-127, 128, (cfg.rows, cfg.cols))
    X = rng.integers(0, 256, (n, cfg.lanes))
    A0 = rng.integers(-1000, 1000, (n, cfg.cols))
    A0[0, :] = hi
    A0[1, :] = lo
    A0[2, :] = hi - 5
    prog = matmul_program(cfg, n, accumulate=1, act_signed=1, zbase=20, load_acc=1)
    r = run_program(cfg, prog, wbuf_words(cfg, W) + spad_words(cfg, X) + acc_words(cfg, A0))
    a = np.where(X[:, :cfg.rows] >= 128, X[:, :cfg.rows] - 256, X[:, :cfg.rows])
    np.testing.assert_array_equal(unpack_acc(cfg, r.results), np.clip(A0 + a @ W, lo, hi))


def test_matmul_saturation_is_sequential_for_repeated_row():
    """z stride 0: the same ACC row accumulates every iteration, saturating at each
    step (sat(sat(hi + p) - p) != hi)."""
    cfg = CONFIGS[0]   # 2x2, acc_width 32
    lo, hi = acc_limits(cfg)
    W = [[1, 0], [0, 1]]
    X = [[100, 0], [156, 0], [0, 7]]   # as int8: 100, -100, 7
    m = Machine(cfg)
    prog = enc(cfg, load(Mem.WBUF, 2), ins(Opcode.LOADW, 2, 1, x=A(0, 1)),
               load(Mem.SPAD, 3), load(Mem.ACC, 1, base=5),
               ins(Opcode.MATMUL, 3, 1, x=A(0, 1), z=A(5, 0), accumulate=1, act_signed=1),
               store(Mem.ACC, 1, base=5))
    r = m.run(prog, wbuf_words(cfg, W) + spad_words(cfg, X) + acc_words(cfg, [[hi - 50, lo + 3]]))
    # col0: hi-50 +100 -> hi; -100 -> hi-100; +0 -> hi-100. col1: lo+3 +0 +0 +7.
    assert unpack_acc(cfg, r.results).tolist() == [[hi - 100, lo + 10]]
    assert r.macs == 3


def test_matmul_repeated_row_no_saturation_sums():
    cfg = CONFIGS[1]
    rng = np.random.default_rng(14)
    W = rng.integers(-127, 128, (4, 4))
    X = rng.integers(0, 256, (6, 4))
    # z = 30 + (i % 2): two rows accumulating three vectors each
    prog = enc(cfg, load(Mem.WBUF, 4), ins(Opcode.LOADW, 4, 1, x=A(0, 1)), load(Mem.SPAD, 6),
               ins(Opcode.MATMUL, 2, 3, x=A(0, 1, 2), z=A(30, 1, 0), accumulate=1),
               store(Mem.ACC, 2, base=30))
    r = run_program(cfg, prog, wbuf_words(cfg, W) + spad_words(cfg, X))
    P = X @ W
    np.testing.assert_array_equal(unpack_acc(cfg, r.results), [P[0::2].sum(0), P[1::2].sum(0)])


def test_matmul_overwrite_repeated_row_keeps_last():
    cfg = CONFIGS[1]
    W = np.eye(4, dtype=int)
    X = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    prog = enc(cfg, load(Mem.WBUF, 4), ins(Opcode.LOADW, 4, 1, x=A(0, 1)), load(Mem.SPAD, 3),
               ins(Opcode.MATMUL, 3, 1, x=A(0, 1), z=A(2, 0)), store(Mem.ACC, 1, base=2))
    r = run_program(cfg, prog, wbuf_words(cfg, W) + spad_words(cfg, X))
    assert unpack_acc(cfg, r.results).tolist() == [[9, 10, 11, 12]]


def test_matmul_non_accumulate_exact_at_min_acc_width():
    """Extreme products fit exactly in acc_width = psum_width (no saturation)."""
    cfg = CoreConfig(rows=8, cols=8, acc_width=20, **SMALL)
    assert cfg.psum_width == 20
    W = np.full((8, 8), -128)
    X = np.full((2, 8), 255)
    X[1] = 128   # int8 -128
    for act_signed in (0, 1):
        r = run_program(cfg, matmul_program(cfg, 2, act_signed=act_signed),
                        wbuf_words(cfg, W) + spad_words(cfg, X))
        a = np.where(X >= 128, X - 256, X) if act_signed else X
        np.testing.assert_array_equal(unpack_acc(cfg, r.results), a @ W)


def test_weight_banks_double_buffered():
    cfg = CONFIGS[1]
    rng = np.random.default_rng(15)
    W0, W1 = rng.integers(-127, 128, (2, 4, 4))
    X = rng.integers(0, 256, (2, 4))
    prog = enc(cfg, load(Mem.WBUF, 8), ins(Opcode.LOADW, 4, 1, x=A(0, 1), bank=0),
               ins(Opcode.LOADW, 4, 1, x=A(4, 1), bank=1), load(Mem.SPAD, 2),
               ins(Opcode.MATMUL, 2, 1, x=A(0, 1), z=A(0, 1), bank=0),
               ins(Opcode.MATMUL, 2, 1, x=A(0, 1), z=A(0, 1), bank=1, accumulate=1),
               store(Mem.ACC, 2))
    r = run_program(cfg, prog, wbuf_words(cfg, np.vstack([W0, W1])) + spad_words(cfg, X))
    np.testing.assert_array_equal(unpack_acc(cfg, r.results), X @ W0 + X @ W1)
    assert r.macs == 4


def test_loadw_strided_rows():
    cfg = CONFIGS[1]
    W = np.arange(-20, 12).reshape(8, 4)
    m = Machine(cfg)
    m.run(enc(cfg, load(Mem.WBUF, 8), ins(Opcode.LOADW, 4, 1, x=A(7, 0, 0))),
          wbuf_words(cfg, W))
    np.testing.assert_array_equal(m.banks[0], np.repeat(W[7:8], 4, 0))
    m.run(enc(cfg, ins(Opcode.LOADW, 4, 1, x=A(1, 2), bank=1)), [])
    np.testing.assert_array_equal(m.banks[1], W[[1, 3, 5, 7]])


# --- REQUANT -------------------------------------------------------------------------


def ref_requant_row(cfg, acc, shift, align, r, out_signed, relu):
    lo, hi = acc_limits(cfg)
    out = []
    for j in range(len(acc)):
        a = clamp(acc[j] << max(-align[j], 0), lo, hi)
        b = clamp(r[j] << max(align[j], 0), lo, hi)
        out.append(sat8(rhe(clamp(a + b, lo, hi), shift[j]), out_signed, relu))
    return out


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
@pytest.mark.parametrize("out_signed,relu,residual,res_signed",
                         [(0, 0, 0, 0), (1, 0, 0, 0), (1, 1, 0, 0), (0, 1, 1, 0),
                          (1, 0, 1, 1), (1, 1, 1, 0), (0, 0, 1, 1)])
def test_requant(cfg, out_signed, relu, residual, res_signed):
    rng = np.random.default_rng(20 + 2 * out_signed + relu)
    lo, hi = acc_limits(cfg)
    n = 6
    acc = rng.integers(-5000, 5000, (n, cfg.cols))
    acc[0, :] = hi
    acc[1, :] = lo
    acc[2, 0] = 6    # ties for round-half-even
    acc[2, -1] = 10
    shift = rng.integers(-4, 9, cfg.cols)
    shift[0] = 2
    shift[-1] = 2
    align = rng.integers(-3, 4, cfg.cols) if residual else np.zeros(cfg.cols, int)
    resid = rng.integers(0, 256, (n, cfg.lanes))
    prior = rng.integers(0, 256, (n, cfg.lanes))    # bytes of other lanes survive
    lanes = cfg.requant_lanes
    lane = lanes - 1
    prog = enc(cfg, load(Mem.ACC, n, base=3), load(Mem.TABLE, 1, base=1),
               load(Mem.SPAD, n, base=0), load(Mem.SPAD, n, base=40),
               ins(Opcode.REQUANT, n, 1, x=A(3, 1), y=A(0, 1), z=A(40, 1), table=1, lane=lane,
                   relu=relu, out_signed=out_signed, residual=residual, res_signed=res_signed),
               store(Mem.SPAD, n, base=40))
    data = (acc_words(cfg, acc) + table_words(cfg, [shift], [align]) + spad_words(cfg, resid)
            + spad_words(cfg, prior))
    r = run_program(cfg, prog, data)
    assert r.error is ErrorCode.NONE
    got = unpack_spad(cfg, r.results, signed=bool(out_signed))
    expect = prior.copy()
    if out_signed:
        expect = np.where(expect >= 128, expect - 256, expect)
    sl = slice(lane * cfg.cols, (lane + 1) * cfg.cols)
    for i in range(n):
        rr = resid[i, sl].tolist() if residual else [0] * cfg.cols
        if residual and res_signed:
            rr = [s8(v) for v in rr]
        expect[i, sl] = ref_requant_row(cfg, acc[i].tolist(), shift.tolist(), align.tolist(), rr,
                                        out_signed, relu)
    np.testing.assert_array_equal(got, expect)
    # cross-check the plain reference against the golden numerics module (no residual)
    if not residual:
        np.testing.assert_array_equal(expect[:, sl], requantize(acc, shift, bool(out_signed), bool(relu)))


def test_requant_round_half_even_and_align_on_acc():
    cfg = CoreConfig(rows=2, cols=2, **SMALL)
    # column 0: shift 1 on 3 -> 2 (tie to even), column 1: align -2 shifts acc left by 2
    prog = enc(cfg, load(Mem.ACC, 1), load(Mem.TABLE, 1),
               ins(Opcode.REQUANT, 1, 1, x=A(0), z=A(5), out_signed=1),
               store(Mem.SPAD, 1, base=5))
    r = run_program(cfg, prog, acc_words(cfg, [[3, -5]]) + table_words(cfg, [[1, 0]], [[0, -2]]))
    assert unpack_spad(cfg, r.results, signed=True).tolist() == [[2, -20]]


def test_requant_lanes_8x4():
    cfg = CONFIGS[3]   # rows 8, cols 4, lanes 8: two requant lanes per SPAD row
    acc = [[1, 2, 3, 4], [5, 6, 7, 8]]
    prog = enc(cfg, load(Mem.ACC, 2),
               ins(Opcode.REQUANT, 1, 1, x=A(0), z=A(9), lane=0),
               ins(Opcode.REQUANT, 1, 1, x=A(1), z=A(9), lane=1),
               store(Mem.SPAD, 1, base=9))
    r = run_program(cfg, prog, acc_words(cfg, acc))
    assert unpack_spad(cfg, r.results).tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]


# --- ADD / MAX -----------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
@pytest.mark.parametrize("a_signed,b_signed,out_signed,relu,a_shift,b_shift,shift",
                         [(0, 0, 0, 0, 0, 0, 0), (1, 1, 1, 0, 1, 0, 1), (0, 1, 1, 1, 3, 0, 2),
                          (1, 0, 0, 0, 0, 2, -1), (1, 1, 1, 0, 15, 15, 31), (0, 0, 1, 0, 2, 5, -32)])
def test_add(cfg, a_signed, b_signed, out_signed, relu, a_shift, b_shift, shift):
    rng = np.random.default_rng(30)
    n = 5
    X = rng.integers(0, 256, (n, cfg.lanes))
    Y = rng.integers(0, 256, (n, cfg.lanes))
    X[0, :2] = [127, 128]
    Y[0, :2] = [255, 1]
    prog = enc(cfg, load(Mem.SPAD, 2 * n),
               ins(Opcode.ADD, n, 1, x=A(0, 1), y=A(n, 1), z=A(32, 1), a_shift=a_shift,
                   b_shift=b_shift, shift=shift, relu=relu, out_signed=out_signed,
                   a_signed=a_signed, b_signed=b_signed),
               store(Mem.SPAD, n, base=32))
    r = run_program(cfg, prog, spad_words(cfg, np.vstack([X, Y])))
    lo, hi = acc_limits(cfg)
    ea = np.where((X >= 128) & bool(a_signed), X - 256, X)
    eb = np.where((Y >= 128) & bool(b_signed), Y - 256, Y)
    exp = [[sat8(rhe(clamp(clamp(int(u) << a_shift, lo, hi) + clamp(int(v) << b_shift, lo, hi), lo, hi),
                     shift), out_signed, relu) for u, v in zip(ru, rv)] for ru, rv in zip(ea, eb)]
    np.testing.assert_array_equal(unpack_spad(cfg, r.results, signed=bool(out_signed)), exp)


def test_add_in_place_same_iteration_allowed():
    cfg = CONFIGS[1]
    prog = enc(cfg, load(Mem.SPAD, 4),
               ins(Opcode.ADD, 2, 1, x=A(0, 1), y=A(2, 1), z=A(0, 1)),
               store(Mem.SPAD, 4))
    rows = [[1, 2, 3, 4], [5, 6, 7, 8], [10, 20, 30, 40], [50, 60, 70, 80]]
    r = run_program(cfg, prog, spad_words(cfg, rows))
    assert unpack_spad(cfg, r.results).tolist() == [[11, 22, 33, 44], [55, 66, 77, 88]] + rows[2:]


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
@pytest.mark.parametrize("a_signed", [0, 1])
def test_max(cfg, a_signed):
    rng = np.random.default_rng(40)
    X = rng.integers(0, 256, (4, cfg.lanes))
    Y = rng.integers(0, 256, (4, cfg.lanes))
    X[0, :2] = [200, 5]
    Y[0, :2] = [5, 200]
    prog = enc(cfg, load(Mem.SPAD, 8),
               ins(Opcode.MAX, 2, 2, x=A(0, 1, 2), y=A(4, 1, 2), z=A(20, 2, 1), a_signed=a_signed,
                   b_signed=1 - a_signed),   # b_signed is ignored by MAX
               store(Mem.SPAD, 4, base=20))
    r = run_program(cfg, prog, spad_words(cfg, np.vstack([X, Y])))
    if a_signed:
        exp = np.maximum(np.where(X >= 128, X - 256, X), np.where(Y >= 128, Y - 256, Y)) & 0xFF
    else:
        exp = np.maximum(X, Y)
    # iteration (i1, i0) reads row i1*2+i0 and writes row 20 + i0*2 + i1
    order = [0, 2, 1, 3]
    np.testing.assert_array_equal(unpack_spad(cfg, r.results), exp[order])


# --- HALT / SYNC, state --------------------------------------------------------------


def test_halt_sync_continue():
    cfg = CONFIGS[1]
    rows = [[1, 2, 3, 4], [5, 6, 7, 8]]
    prog = enc(cfg, load(Mem.SPAD, 1), store(Mem.SPAD, 1), HALT, SYNC,
               load(Mem.SPAD, 1, base=1), store(Mem.SPAD, 2), HALT, HALT)
    r = run_program(cfg, prog, spad_words(cfg, rows))
    assert r.halts == 3 and r.error is ErrorCode.NONE
    assert unpack_spad(cfg, r.results).tolist() == [rows[0]] + rows
    assert r.lasts == [True, False, True]
    assert r.data_used == 2


def test_state_persists_across_runs():
    cfg = CONFIGS[1]
    m = Machine(cfg)
    for k in ("spad", "wbuf", "acc", "table_shift", "table_align", "banks"):
        assert not getattr(m, k).any()
    assert m.spad.dtype == np.uint8 and m.acc.dtype == np.int64 and m.banks.shape == (2, 4, 4)
    W = np.arange(16).reshape(4, 4) - 8
    r1 = m.run(enc(cfg, load(Mem.WBUF, 4), ins(Opcode.LOADW, 4, 1, x=A(0, 1)),
                   load(Mem.SPAD, 1, base=3), HALT), wbuf_words(cfg, W) + spad_words(cfg, [[1, 2, 3, 4]]))
    assert r1.halts == 1 and r1.data_used == 5
    r2 = m.run(enc(cfg, ins(Opcode.MATMUL, 1, 1, x=A(3), z=A(0)), store(Mem.ACC, 1), HALT), [])
    assert r2.data_used == 0 and r2.macs == 1
    assert unpack_acc(cfg, r2.results).tolist() == [(np.array([1, 2, 3, 4]) @ W).tolist()]
    # a fresh machine starts from zero
    r3 = run_program(cfg, enc(cfg, ins(Opcode.MATMUL, 1, 1, x=A(3), z=A(0)), store(Mem.ACC, 1)), [])
    assert r3.results == [0]


# --- conv as shifted matmuls ---------------------------------------------------------


@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[4]], ids=["4x4", "8x8"])
def test_conv3x3_as_shifted_matmuls(cfg):
    """A padded 3x3 conv: one accumulating MATMUL per kernel tap over a two-level
    address loop (no im2col), weight tiles double-buffered, then REQUANT + STORE."""
    C, K, H, Wd = cfg.rows, cfg.cols, 5, 6
    rng = np.random.default_rng(50)
    img = rng.integers(0, 256, (H, Wd, C))
    wt = rng.integers(-127, 128, (3, 3, C, K))
    shift = rng.integers(6, 10, K)
    pad = np.zeros((H + 2, Wd + 2, C), dtype=np.int64)
    pad[1:-1, 1:-1] = img
    Wp = Wd + 2
    spad_rows = np.zeros(((H + 2) * Wp, cfg.lanes), dtype=np.int64)
    spad_rows[:, :C] = pad.reshape(-1, C)
    cfg2 = cfg.replace(spad_depth=256, wbuf_depth=128, acc_depth=64)
    prog = [load(Mem.SPAD, len(spad_rows)), load(Mem.WBUF, 9 * C), load(Mem.TABLE, 1)]
    for tap in range(9):
        dy, dx = divmod(tap, 3)
        prog.append(ins(Opcode.LOADW, C, 1, x=A(tap * C, 1), bank=tap % 2))
        prog.append(ins(Opcode.MATMUL, Wd, H, x=A(dy * Wp + dx, 1, Wp), z=A(0, 1, Wd),
                        bank=tap % 2, accumulate=int(tap > 0)))
    prog += [ins(Opcode.REQUANT, H * Wd, 1, x=A(0, 1), z=A(100, 1), relu=1),
             store(Mem.SPAD, H * Wd, base=100), HALT]
    data = (spad_words(cfg2, spad_rows) + wbuf_words(cfg2, wt.reshape(9 * C, K))
            + table_words(cfg2, [shift], [np.zeros(K, int)]))
    r = run_program(cfg2, enc(cfg2, *prog), data)
    assert r.error is ErrorCode.NONE and r.macs == 9 * H * Wd and r.halts == 1
    acc = np.zeros((H, Wd, K), dtype=np.int64)
    for dy in range(3):
        for dx in range(3):
            acc += pad[dy:dy + H, dx:dx + Wd] @ wt[dy, dx]
    exp = requantize(acc.reshape(-1, K), shift, signed=False, relu=True)
    np.testing.assert_array_equal(unpack_spad(cfg2, r.results)[:, :K], exp)


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [0, 12, 13, 15])
def test_illegal_opcode(opcode):
    cfg = CONFIGS[1]
    good = enc(cfg, load(Mem.SPAD, 1), store(Mem.SPAD, 1))
    bad = enc(cfg, HALT)[0] & ~0xF | opcode
    r = run_program(cfg, good + [bad] + good, spad_words(cfg, [[1, 2, 3, 4]] * 2))
    assert r.error is ErrorCode.ILLEGAL_OPCODE and r.error_pc == 2
    assert unpack_spad(cfg, r.results).tolist() == [[1, 2, 3, 4]] and r.lasts == [True]
    assert r.data_used == 1


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_bad_fields(cfg):
    lanes_mm = cfg.matmul_lanes
    lanes_rq = cfg.requant_lanes
    cases = [
        ins(Opcode.STORE, 1, 1, mem=Mem.WBUF),
        ins(Opcode.STORE, 1, 1, mem=Mem.TABLE),
        ins(Opcode.LOADW, cfg.rows - 1, 1, x=A(0, 1)),
        ins(Opcode.LOADW, cfg.rows + 1, 1, x=A(0, 1)),
        ins(Opcode.LOADW, cfg.rows, 2, x=A(0, 1)),
        ins(Opcode.MATMUL, 1, 1, lane=lanes_mm),
        ins(Opcode.MATMUL, 1, 1, lane=15),
        ins(Opcode.REQUANT, 1, 1, lane=lanes_rq),
        ins(Opcode.REQUANT, 1, 1, table=cfg.table_depth),
        ins(Opcode.REQUANT, 0, 0, table=255),   # checked even with no iterations
    ]
    for insn in cases:
        m = Machine(cfg)
        prog = enc(cfg, load(Mem.SPAD, 1), store(Mem.SPAD, 1), insn, store(Mem.SPAD, 1))
        r = m.run(prog, spad_words(cfg, [[7] * cfg.lanes]))
        assert r.error is ErrorCode.BAD_FIELD and r.error_pc == 2, insn
        assert len(r.results) == 1
        assert not m.banks.any() and not m.acc.any()
    # the largest legal values are accepted
    ok = enc(cfg, ins(Opcode.MATMUL, 1, 1, lane=lanes_mm - 1),
             ins(Opcode.REQUANT, 1, 1, lane=lanes_rq - 1, table=cfg.table_depth - 1),
             ins(Opcode.LOADW, cfg.rows, 1, x=A(0, 1)), store(Mem.ACC, 1))
    assert run_program(cfg, ok, []).error is ErrorCode.NONE


def test_address_error_partial_store():
    cfg = CONFIGS[1]   # spad_depth 64
    rows = np.arange(4 * 4).reshape(4, 4)
    prog = enc(cfg, load(Mem.SPAD, 4, base=60),
               store(Mem.SPAD, 6, base=60),       # rows 64, 65 are out of range
               store(Mem.SPAD, 1))
    r = run_program(cfg, prog, spad_words(cfg, rows))
    assert r.error is ErrorCode.ADDRESS and r.error_pc == 1
    np.testing.assert_array_equal(unpack_spad(cfg, r.results), rows)
    assert r.lasts == [False] * 4


def test_address_error_partial_load_does_not_consume():
    cfg = CONFIGS[1]
    m = Machine(cfg)
    words = spad_words(cfg, [[1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]])
    r = m.run(enc(cfg, load(Mem.SPAD, 3, base=62)), words)
    assert r.error is ErrorCode.ADDRESS and r.error_pc == 0 and r.data_used == 2
    assert m.spad[62:].tolist() == [[1] * 4, [2] * 4]


def test_address_error_table_depth_and_huge_addresses():
    cfg = CONFIGS[1]   # table_depth 4
    r = run_program(cfg, enc(cfg, load(Mem.TABLE, 2, base=3)), [0, 0])
    assert r.error is ErrorCode.ADDRESS and r.data_used == 1
    # the loops never wrap: base + i1 * stride1 + i0 * stride0 is an exact integer
    r = run_program(cfg, enc(cfg, ins(Opcode.STORE, 2, 2, x=A(0, 0, 0xFFFF, 0xF), mem=Mem.SPAD)), [])
    assert r.error is ErrorCode.ADDRESS and len(r.results) == 2


def test_table_ignores_region_mask():
    cfg = CONFIGS[1]
    m = Machine(cfg)
    r = m.run(enc(cfg, ins(Opcode.LOAD, 1, 1, z=A(3, regions=0), mem=Mem.TABLE)),
              table_words(cfg, [[1, 2, 3, 4]], [[-1, -2, -3, -4]]))
    assert r.error is ErrorCode.NONE
    assert m.table_shift[3].tolist() == [1, 2, 3, 4] and m.table_align[3].tolist() == [-1, -2, -3, -4]


def test_region_error():
    cfg = CONFIGS[1]   # spad_depth 64: regions of 16 rows
    m = Machine(cfg)
    words = spad_words(cfg, [[i] * 4 for i in range(4)])
    # rows 14, 15 in region 0; row 16 in region 1 is outside the mask
    r = m.run(enc(cfg, ins(Opcode.LOAD, 4, 1, z=A(14, 1, 0, 0b0001), mem=Mem.SPAD)), words)
    assert r.error is ErrorCode.REGION and r.error_pc == 0 and r.data_used == 2
    assert m.spad[14:17, 0].tolist() == [0, 1, 0]
    # a mask that only allows higher regions
    r = run_program(cfg, enc(cfg, ins(Opcode.STORE, 1, 1, x=A(0, regions=0b1110), mem=Mem.SPAD)), [])
    assert r.error is ErrorCode.REGION and r.results == []


def test_error_stream_order_x_before_z():
    cfg = CONFIGS[1]
    W = np.eye(4, dtype=int)
    base = enc(cfg, load(Mem.WBUF, 4), ins(Opcode.LOADW, 4, 1, x=A(0, 1)), load(Mem.SPAD, 3))
    data = wbuf_words(cfg, W) + spad_words(cfg, [[1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]])
    # iteration 2: x is a REGION fault and z an ADDRESS fault -> x wins
    mm = ins(Opcode.MATMUL, 3, 1, x=A(14, 1, 0, 0b0001), z=A(62, 1, 0, 0xF))
    m = Machine(cfg)
    r = m.run(base + enc(cfg, mm), data)
    assert r.error is ErrorCode.REGION and r.error_pc == 3 and r.macs == 2
    # same x but z faulting one iteration earlier -> z's error at iteration 1
    m2 = Machine(cfg)
    mm2 = ins(Opcode.MATMUL, 3, 1, x=A(14, 1, 0, 0b0001), z=A(63, 1, 0, 0xF))
    r2 = m2.run(base + enc(cfg, mm2), data)
    assert r2.error is ErrorCode.ADDRESS and r2.macs == 1


def test_error_y_stream_and_requant_y_unused():
    cfg = CONFIGS[1]
    # ADD y address out of range at iteration 1; iteration 0 took effect
    prog = enc(cfg, load(Mem.SPAD, 2),
               ins(Opcode.ADD, 2, 1, x=A(0, 1), y=A(63, 1), z=A(10, 1)))
    m = Machine(cfg)
    r = m.run(prog, spad_words(cfg, [[1, 2, 3, 4], [0, 0, 0, 0]]))
    assert r.error is ErrorCode.ADDRESS and r.error_pc == 1
    assert m.spad[10].tolist() == [1, 2, 3, 4] and not m.spad[11].any()
    # REQUANT without residual ignores y entirely
    rq = ins(Opcode.REQUANT, 1, 1, x=A(0), y=A(5000, 0, 0, 0), z=A(0), residual=0)
    assert run_program(cfg, enc(cfg, rq), []).error is ErrorCode.NONE
    rq = ins(Opcode.REQUANT, 1, 1, x=A(0), y=A(5000, 0, 0, 0xF), z=A(0), residual=1)
    assert run_program(cfg, enc(cfg, rq), []).error is ErrorCode.ADDRESS


def test_error_in_later_instruction_keeps_earlier_effects():
    cfg = CONFIGS[1]
    m = Machine(cfg)
    prog = enc(cfg, load(Mem.SPAD, 1), store(Mem.SPAD, 1), HALT,
               load(Mem.ACC, 1, base=64), store(Mem.SPAD, 1))
    r = m.run(prog, spad_words(cfg, [[9, 8, 7, 6]]) + [5])
    assert r.error is ErrorCode.ADDRESS and r.error_pc == 3
    assert r.halts == 1 and len(r.results) == 1 and r.data_used == 1


def test_program_error_out_of_data():
    cfg = CONFIGS[1]
    with pytest.raises(ProgramError, match="instruction 1"):
        run_program(cfg, enc(cfg, load(Mem.SPAD, 1), load(Mem.SPAD, 3, base=4)), [0, 0, 0])
    # a faulting LOAD iteration does not wait for data
    r = run_program(cfg, enc(cfg, load(Mem.SPAD, 3, base=63)), [0])
    assert r.error is ErrorCode.ADDRESS and r.data_used == 1


def test_program_error_intra_instruction_hazard():
    cfg = CONFIGS[1]
    words = spad_words(cfg, [[i] * 4 for i in range(8)])
    # iteration 1 reads row 1 (x), which iteration 0 wrote (z = 1)
    with pytest.raises(ProgramError, match="instruction 1"):
        run_program(cfg, enc(cfg, load(Mem.SPAD, 8),
                             ins(Opcode.ADD, 3, 1, x=A(0, 1), y=A(4, 1), z=A(1, 1))), words)
    with pytest.raises(ProgramError, match="instruction 1"):
        run_program(cfg, enc(cfg, load(Mem.SPAD, 8),
                             ins(Opcode.MAX, 2, 1, x=A(0, 1), y=A(5, 1), z=A(6, 1))), words)
    with pytest.raises(ProgramError, match="instruction 0"):
        run_program(cfg, enc(cfg, ins(Opcode.REQUANT, 2, 1, x=A(0, 1), y=A(3, 1), z=A(4, 1),
                                      residual=1)), [])
    # without residual REQUANT reads no SPAD row: no hazard
    r = run_program(cfg, enc(cfg, ins(Opcode.REQUANT, 2, 1, x=A(0, 1), y=A(3, 1), z=A(4, 1))), [])
    assert r.error is ErrorCode.NONE
    # reading a row the same instruction writes *later* is fine (reads see old data)
    r = run_program(cfg, enc(cfg, load(Mem.SPAD, 8),
                             ins(Opcode.ADD, 3, 1, x=A(1, 1), y=A(4, 1), z=A(0, 1)),
                             store(Mem.SPAD, 3)), words)
    assert unpack_spad(cfg, r.results)[:, 0].tolist() == [1 + 4, 2 + 5, 3 + 6]
    # a hazard after a fault never executes: the error is reported instead
    r = run_program(cfg, enc(cfg, ins(Opcode.ADD, 3, 1, x=A(0, 1), y=A(63, 1), z=A(1, 1))), [])
    assert r.error is ErrorCode.ADDRESS


def test_invalid_words_rejected():
    cfg = CONFIGS[1]
    with pytest.raises(ValueError):
        run_program(cfg, [1 << INSN_BITS], [])
    with pytest.raises(ValueError):
        run_program(cfg, enc(cfg, load(Mem.SPAD, 1)), [1 << cfg.bus_width])
    with pytest.raises(ValueError):
        run_program(cfg, enc(cfg, load(Mem.SPAD, 1)), [-1])


# --- randomized differential test against the plain reference ------------------------


def random_addr(rng, depth, c0, c1):
    """Mostly in range (so programs run a while), sometimes anything."""
    wild = rng.random() < 0.015
    for _ in range(20):
        base = rng.randrange(depth + 4)
        s0 = rng.choice([0, 1, 1, 2, rng.randrange(depth)])
        s1 = rng.choice([0, 1, c0, rng.randrange(depth)])
        if wild or base + max(c0 - 1, 0) * s0 + max(c1 - 1, 0) * s1 < depth:
            break
    else:
        base, s0, s1 = rng.randrange(depth), 0, rng.choice([0, 1]) if c1 <= depth else 0
        if base + (c1 - 1) * s1 >= depth:
            base = 0
    regions = rng.randrange(16) if rng.random() < 0.015 else 0xF
    return Addr(base, s0, s1, regions)


def has_hazard(insn):
    reads = [s for s in "xy" if insn.stream_mem(s) is Mem.SPAD and insn.stream_mem("z") is Mem.SPAD]
    if not reads:
        return False
    written = set()
    for it in range(insn.iterations):
        i1, i0 = divmod(it, insn.count0)
        row = {s: getattr(insn, s).base + i1 * getattr(insn, s).stride1 + i0 * getattr(insn, s).stride0
               for s in "xyz"}
        if any(row[s] in written for s in reads):
            return True
        written.add(row["z"])
    return False


def random_program(rng, cfg, length):
    ops = [Opcode.LOAD] * 4 + [Opcode.STORE] * 2 + [Opcode.LOADW] * 2 + [Opcode.MATMUL] * 4 + \
          [Opcode.REQUANT] * 2 + [Opcode.ADD, Opcode.MAX, Opcode.HALT, Opcode.SYNC]
    prog, data = [], []
    for _ in range(length):
        if rng.random() < 0.005:
            prog.append(rng.choice([0, 12, 15]) | rng.getrandbits(INSN_BITS) & ~0xF)
            continue
        op = rng.choice(ops)
        c0, c1 = rng.choice([1, 2, 3, 5]), rng.choice([1, 1, 2, 4])
        if rng.random() < 0.03:
            c0 = 0
        params = {}
        if op is Opcode.LOAD:
            params = dict(mem=rng.randrange(4))
        elif op is Opcode.STORE:
            params = dict(mem=rng.choice([0, 2] * 10 + [1]))
        elif op is Opcode.LOADW:
            params = dict(bank=rng.randrange(2), narrow=rng.randrange(4))
            rows = -(-cfg.rows * (8 - 2 * params["narrow"]) // 8)
            c0, c1 = (rows, 1) if rng.random() < 0.98 else (rows + 1, 1)
        elif op is Opcode.MATMUL:
            params = dict(bank=rng.randrange(2), accumulate=rng.randrange(2),
                          act_signed=rng.randrange(2),
                          lane=rng.randrange(cfg.matmul_lanes + (rng.random() < 0.01)))
        elif op is Opcode.REQUANT:
            params = dict(table=rng.randrange(cfg.table_depth + (rng.random() < 0.01)),
                          lane=rng.randrange(cfg.requant_lanes), relu=rng.randrange(2),
                          out_signed=rng.randrange(2), residual=rng.randrange(2),
                          res_signed=rng.randrange(2))
        elif op in (Opcode.ADD, Opcode.MAX):
            params = dict(a_shift=rng.choice([0, 1, 4, 15]), b_shift=rng.choice([0, 2, 15]),
                          shift=rng.randrange(-32, 32), relu=rng.randrange(2),
                          out_signed=rng.randrange(2), a_signed=rng.randrange(2),
                          b_signed=rng.randrange(2))
            if op is Opcode.MAX:
                params = dict(a_signed=params["a_signed"])
        else:
            c0 = c1 = 1
        insn = Instruction(op, params, c0, c1)
        streams = {}
        for s in "xyz":
            mem = insn.stream_mem(s)
            if mem is None:
                streams[s] = Addr(rng.randrange(1 << 16), 0, 0, rng.randrange(16))
            else:
                streams[s] = random_addr(rng, cfg.depth(mem), c0, c1)
        insn = Instruction(op, params, c0, c1, **streams)
        # Keep most programs free of intra-instruction hazards so they run on.
        for _ in range(10):
            if not has_hazard(insn) or rng.random() < 0.2:
                break
            insn = replace(insn, z=random_addr(rng, cfg.spad_depth, c0, c1))
        prog.append(insn.encode(cfg))
        if op is Opcode.LOAD:
            data += [rng.getrandbits(cfg.bus_width) for _ in range(c0 * c1)]
    return prog, data


DIFF_CONFIGS = [
    CoreConfig(rows=2, cols=2, acc_width=18, spad_depth=16, wbuf_depth=8, acc_depth=8, table_depth=3),
    CoreConfig(rows=4, cols=8, acc_width=19, spad_depth=16, wbuf_depth=8, acc_depth=16, table_depth=2),
    CoreConfig(rows=8, cols=4, acc_width=24, spad_depth=32, wbuf_depth=16, acc_depth=8, table_depth=4),
    CoreConfig(rows=4, cols=4, acc_width=32, spad_depth=8, wbuf_depth=4, acc_depth=4, table_depth=1),
    CoreConfig(rows=1, cols=4, acc_width=17, spad_depth=16, wbuf_depth=4, acc_depth=8, table_depth=2),
    CoreConfig(rows=4, cols=1, acc_width=48, spad_depth=16, wbuf_depth=4, acc_depth=8, table_depth=2),
]


@pytest.mark.parametrize("chunk", [isa_sim.CHUNK, 3])
@pytest.mark.parametrize("cfg", DIFF_CONFIGS, ids=lambda c: c.name)
def test_differential_random_programs(cfg, chunk, monkeypatch):
    monkeypatch.setattr(isa_sim, "CHUNK", chunk)
    rng = random.Random(zlib.crc32(f"{cfg.name}/{chunk}".encode()))
    outcomes = {"ok": 0, "error": 0, "program_error": 0}
    for trial in range(30):
        prog, data = random_program(rng, cfg, rng.randrange(5, 40))
        sim, ref = Machine(cfg), RefMachine(cfg)
        # Saturation-prone state: random ACC contents near the limits.
        lo, hi = acc_limits(cfg)
        init = [[rng.choice([lo, hi, lo + 3, hi - 3, rng.randrange(lo, hi)]) for _ in range(cfg.cols)]
                for _ in range(cfg.acc_depth)]
        sim.acc[:] = init
        ref.acc = [list(r) for r in init]
        for run in range(2):     # state carries over to a second program
            try:
                expect = ref.run(prog, data)
            except ProgramError:
                with pytest.raises(ProgramError):
                    sim.run(prog, data)
                outcomes["program_error"] += 1
                break
            got = sim.run(prog, data)
            assert_same_result(got, expect)
            for k, v in ref.state().items():
                np.testing.assert_array_equal(sim_state(sim)[k], v,
                                              err_msg=f"{k} trial {trial} run {run}")
            outcomes["error" if got.error is not ErrorCode.NONE else "ok"] += 1
            prog, data = random_program(rng, cfg, rng.randrange(5, 40))
    assert outcomes["ok"] >= 5 and outcomes["error"] >= 5, outcomes


def test_large_instruction_chunks_consistent(monkeypatch):
    """An instruction spanning several chunks behaves like one big batch."""
    cfg = CoreConfig(rows=4, cols=4, spad_depth=256, acc_depth=64, wbuf_depth=8)
    rng = np.random.default_rng(60)
    W = rng.integers(-127, 128, (4, 4))
    X = rng.integers(0, 256, (256, 4))
    prog = enc(cfg, load(Mem.WBUF, 4), ins(Opcode.LOADW, 4, 1, x=A(0, 1)), load(Mem.SPAD, 256),
               ins(Opcode.MATMUL, 64, 4, x=A(0, 1, 64), z=A(0, 1, 0), accumulate=1),
               ins(Opcode.STORE, 64, 1, x=A(0, 1), mem=Mem.ACC))
    data = wbuf_words(cfg, W) + spad_words(cfg, X)
    expected = (X @ W).reshape(4, 64, 4).sum(0)
    for chunk in (isa_sim.CHUNK, 7, 64, 100):
        monkeypatch.setattr(isa_sim, "CHUNK", chunk)
        r = run_program(cfg, prog, data)
        np.testing.assert_array_equal(unpack_acc(cfg, r.results), expected)
        assert r.macs == 256
