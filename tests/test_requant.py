"""Amaranth-simulator tests of the requantizer lanes (``hw/requant.py``); expected
values from fxpgen.numerics."""

import random

import pytest

from fxpgen import numerics
from fxpgen.hw.requant import Requantizer

from unit_harness import simulate


@pytest.mark.parametrize("acc_width", [32, 24, 20])
def test_requantizer_matches_numerics(acc_width, seed):
    """Every lane of the requantizer equals fxpgen.numerics (aligned add, round-half-even
    shift, saturation, ReLU; or max), one operand set a cycle."""
    rng = random.Random(seed)
    lanes = 4
    dut = Requantizer(lanes, acc_width)
    lo, hi = numerics.acc_range(acc_width)
    cases = []
    for _ in range(300):
        op_max = rng.random() < 0.2
        relu, out_signed = rng.randrange(2), rng.randrange(2)
        lane = []
        for _ in range(lanes):
            a = rng.choice([rng.randrange(lo, hi + 1), rng.randrange(-300, 300), lo, hi, 0])
            b = rng.randrange(-256, 256)
            if op_max:
                a, sa, sb, sh = rng.randrange(-128, 256), 0, 0, 0
            else:
                sa, sb = rng.choice([0, rng.randrange(33)]), rng.randrange(32)
                sh = rng.randrange(-32, 32)
            lane.append(dict(a=a, b=b, a_shift=sa, b_shift=sb, shift=sh))
        cases.append(dict(valid=1, op_max=int(op_max), relu=relu, out_signed=out_signed, lane=lane))

    def expect(c):
        out = []
        for ln in c["lane"]:
            if c["op_max"]:
                out.append(int(numerics.maximum(ln["a"], ln["b"])) & 0xFF)
            else:
                s = numerics.aligned_add(ln["a"], ln["a_shift"], ln["b"], ln["b_shift"], acc_width)
                out.append(int(numerics.requantize(s, ln["shift"], bool(c["out_signed"]),
                                                   bool(c["relu"]))) & 0xFF)
        return out

    got = _run(dut, cases)
    assert len(got) == len(cases)
    for k, (g, c) in enumerate(zip(got, cases)):
        assert g == expect(c), (k, c)


def _run(dut, cases):
    """The result bytes of ``cases`` (operand dicts, one a cycle), in order."""
    got = []

    async def bench(ctx):
        for t in range(len(cases) + dut.LATENCY):
            if t < len(cases):
                ctx.set(dut.operands, cases[t])
            else:
                ctx.set(dut.operands.valid, 0)
            await ctx.tick()
            if ctx.get(dut.result.valid):
                got.append([ctx.get(dut.result.data[i]) for i in range(dut.lanes)])

    simulate(dut, bench)
    return got


def _boundary_lanes(acc_width):
    """Operands on the edges the unit's range checks decide: accumulators around
    each power of two a requantization shift saturates at, ties of the rounding,
    and alignments just below, at and above saturation, with both signs."""
    lo, hi = numerics.acc_range(acc_width)
    lanes = []
    for n in range(-32, 32):
        values = {lo, hi, 0, 1, -1}
        for j in (n + 7, n + 8, n + 9):
            if 0 <= j < acc_width - 1:
                values |= {v for d in (-1, 0, 1) for v in (2 ** j + d, -2 ** j + d)}
        if n > 0:
            values |= {(2 * k + 1) << (n - 1) for k in (-257, -256, -1, 0, 1, 254, 255)}
        lanes += [dict(a=v, b=0, a_shift=0, b_shift=0, shift=n)
                  for v in sorted(values) if lo <= v <= hi]
    for j in range(acc_width - 1):
        for s in {acc_width - 1 - j + e for e in (-1, 0, 1, 2)}:
            if 0 <= s < 64:
                lanes += [dict(a=v, b=0, a_shift=s, b_shift=0, shift=0)
                          for v in (2 ** j, -2 ** j, 2 ** j - 1, -2 ** j - 1) if lo <= v <= hi]
    for b in (-256, -255, -1, 1, 255, 128, -128):
        for s in [*range(acc_width - 10, acc_width + 3), 63]:
            lanes += [dict(a=a, b=b, a_shift=0, b_shift=s, shift=s - 32) for a in (0, lo, hi)]
    return lanes


@pytest.mark.parametrize("acc_width", [32, 24])
def test_requantizer_boundaries(acc_width):
    """Requantize, align and add on the edges of every range check and rounding tie
    (add and max, both output formats, with and without ReLU) equal fxpgen.numerics."""
    lanes = 16
    dut = Requantizer(lanes, acc_width)
    ops = _boundary_lanes(acc_width)
    ops += [ops[-1]] * (-len(ops) % lanes)
    cases = [dict(valid=1, op_max=op_max, relu=relu, out_signed=out_signed,
                  lane=ops[k:k + lanes])
             for k in range(0, len(ops), lanes)
             for op_max, relu, out_signed in [(0, 0, 1), (0, 1, 1), (0, 0, 0), (1, 0, 0)]]
    got = _run(dut, cases)
    want = []
    for c in cases:
        row = []
        for ln in c["lane"]:
            x = numerics.align(ln["a"], ln["a_shift"], acc_width + 1)
            y = numerics.align(ln["b"], ln["b_shift"], acc_width + 1)
            if c["op_max"]:
                row.append(int(numerics.maximum(x, y)) & 0xFF)
            else:
                s = numerics.aligned_add(ln["a"], ln["a_shift"], ln["b"], ln["b_shift"], acc_width)
                row.append(int(numerics.requantize(s, ln["shift"], bool(c["out_signed"]),
                                                   bool(c["relu"]))) & 0xFF)
        want.append(row)
    assert len(got) == len(cases)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g == w, (k, cases[k])
