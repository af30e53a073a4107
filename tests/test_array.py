"""Amaranth-simulator tests of the systolic array (``hw/array.py``); expected values
from numpy."""

import numpy as np
import pytest

from fxpgen.hw.array import SystolicArray

from unit_harness import simulate


@pytest.mark.parametrize("rows,cols", [(2, 2), (4, 4), (4, 8), (8, 4), (3, 5)])
def test_array_matches_numpy(rows, cols, seed):
    """Each vector comes out as ``act @ W[bank]``, exactly ``LATENCY`` cycles after it
    entered, one a cycle, with both banks loaded through the weight port."""
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
        for t in range(n + dut.LATENCY + 3):
            if t < n:
                ctx.set(dut.act, {"valid": 1, "bank": int(banks[t]), "data": acts[t].tolist()})
            else:
                ctx.set(dut.act.valid, 0)
            if ctx.get(dut.psum.valid):
                got.append((t, [ctx.get(dut.psum.data[j]) for j in range(cols)]))
            await ctx.tick()

    simulate(dut, bench)
    assert dut.LATENCY == rows + cols
    assert [t for t, _ in got] == [k + dut.LATENCY for k in range(n)]
    assert [v for _, v in got] == [e.tolist() for e in expected]
