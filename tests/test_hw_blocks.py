"""Amaranth-simulator unit tests of the datapath blocks: PE, array, requantizer,
address loops. Expected values come from fxpgen.numerics and numpy."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from fxpgen import numerics
from fxpgen.hw.addrgen import AddressLoops
from fxpgen.hw.array import SystolicArray
from fxpgen.hw.pe import ProcessingElement
from fxpgen.hw.requant import Requantizer


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_pe_macs_with_both_banks():
    dut = ProcessingElement(psum_width=20)

    async def bench(ctx):
        for bank, w in ((0, -7), (1, 100)):
            ctx.set(dut.w_load, 1)
            ctx.set(dut.w_load_bank, bank)
            ctx.set(dut.w_in, w)
            await ctx.tick()
        ctx.set(dut.w_load, 0)
        # The partial sum joins one cycle after its activation (the product's stage).
        cases = ((0, 255, 5, 5 - 7 * 255), (1, -128, -3, -3 - 12800), (0, -1, 0, 7))
        for t in range(len(cases) + 1):
            if t < len(cases):
                bank, act, _, _ = cases[t]
                ctx.set(dut.act_in, act)
                ctx.set(dut.bank_in, bank)
            if 1 <= t <= len(cases):
                ctx.set(dut.psum_in, cases[t - 1][2])
            await ctx.tick()
            if t < len(cases):
                assert ctx.get(dut.act_out) == cases[t][1]
                assert ctx.get(dut.bank_out) == cases[t][0]
            if t >= 1:
                assert ctx.get(dut.psum_out) == cases[t - 1][3]

    run(dut, bench)


@pytest.mark.parametrize("rows,cols", [(2, 2), (4, 4), (4, 8), (8, 4), (3, 5)])
def test_array_matches_numpy(rows, cols):
    seed = random.randrange(2**32)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    dut = SystolicArray(rows, cols, 17 + (rows - 1).bit_length())
    w = [rng.integers(-128, 128, (rows, cols)) for _ in range(2)]
    n = 12
    acts = rng.integers(-128, 256, (n, rows))
    banks = rng.integers(0, 2, n)
    expected = [acts[k] @ w[banks[k]] for k in range(n)]
    got = []

    async def bench(ctx):
        for b in range(2):
            for i in range(rows):
                ctx.set(dut.weights, {"valid": 1, "bank": b, "data": w[b][i].tolist()})
                await ctx.tick()
        ctx.set(dut.weights.valid, 0)
        cycle = 0
        issued = {}
        for t in range(n + dut.LATENCY + 3):
            if t < n:
                ctx.set(dut.act, {"valid": 1, "bank": int(banks[t]), "data": acts[t].tolist()})
                issued[t] = t
            else:
                ctx.set(dut.act.valid, 0)
            if ctx.get(dut.psum.valid):
                got.append((t, [ctx.get(dut.psum.data[j]) for j in range(cols)]))
            await ctx.tick()
            cycle += 1

    run(dut, bench)
    assert [t for t, _ in got] == [k + dut.LATENCY for k in range(n)]
    assert [v for _, v in got] == [e.tolist() for e in expected]


@pytest.mark.parametrize("acc_width", [32, 24, 20])
def test_requantizer_matches_numerics(acc_width):
    seed = random.randrange(2**32)
    print("seed", seed)
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

    run(dut, bench)
    assert len(got) == len(cases)
    for k, (g, c) in enumerate(zip(got, cases)):
        assert g == expect(c), (k, c)


def test_address_loops_order():
    dut = AddressLoops(2)
    seen = []

    async def bench(ctx):
        ctx.set(dut.start, 1)
        ctx.set(dut.count0, 3)
        ctx.set(dut.count1, 2)
        ctx.set(dut.gens[0], {"base": 10, "stride0": 1, "stride1": 100, "regions": 15})
        ctx.set(dut.gens[1], {"base": 0, "stride0": 0, "stride1": 7, "regions": 15})
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.advance, 1)
        for _ in range(10):
            if ctx.get(dut.valid):
                seen.append((ctx.get(dut.addr[0]), ctx.get(dut.addr[1]), ctx.get(dut.last)))
            await ctx.tick()
        ctx.set(dut.start, 1)
        ctx.set(dut.count0, 0)
        await ctx.tick()
        assert not ctx.get(dut.valid)

    run(dut, bench)
    assert seen == [(10, 0, 0), (11, 0, 0), (12, 0, 0), (110, 7, 0), (111, 7, 0), (112, 7, 1)]
