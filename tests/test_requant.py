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

    got = []

    async def bench(ctx):
        for t in range(len(cases) + dut.LATENCY):
            if t < len(cases):
                ctx.set(dut.operands, cases[t])
            else:
                ctx.set(dut.operands.valid, 0)
            await ctx.tick()
            if ctx.get(dut.result.valid):
                got.append([ctx.get(dut.result.data[i]) for i in range(lanes)])

    simulate(dut, bench)
    assert len(got) == len(cases)
    for k, (g, c) in enumerate(zip(got, cases)):
        assert g == expect(c), (k, c)
