"""The map sweep (:func:`fxpgen.compiler.offchip._map_sweep`): a dense conv over a
small off-chip map whose weights take several loads keeps a sweep of n-tiles'
accumulator blocks across slabs of its input band, so that each weight tile serves
more output rows. On a 4x4 core with a 1024-row scratchpad, the 6x6x64 map of a
3x3 conv with a fused residual takes the sweep; its program runs as the golden
model on the instruction-level simulator (and, marker ``rtl``, on the native
engine in the cycle model's cycles) in fewer cycles than the usual order's."""

import numpy as np
import pytest

from fxpgen.compiler import offchip
from fxpgen.compiler.golden import quantize_input
from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.quantize import quantize
from fxpgen.models.zoo import TestModel
from fxpgen.sim.cycle_model import estimate_words

from op_checks import conv, data
from schedule_checks import assert_isa_is_golden, assert_native_is_golden_in_model_cycles
from test_offchip import SHAPE, TINY

#: The sweep conv's cycles are at most this fraction of the usual order's
#: (measured: 0.85).
GAIN = 0.9


def _net(seed: int):
    m = TestModel(seed)
    a = conv(m, "x", 3, 16, 3)
    for k in range(2):
        a = m.node("MaxPool", [a], [f"p{k}"], kernel_shape=[2, 2], strides=[2, 2])
    b = conv(m, a, 16, 64, 3)
    s = m.node("Add", [b, conv(m, b, 64, 64, 3, relu=False, name="swept")], ["s"])
    y = conv(m, m.node("Relu", [s], ["s_r"]), 64, 4, 1)
    return m.model((1,) + SHAPE, y)


def _compiled(seed: int):
    qg, _ = quantize(load_onnx(_net(seed)), data(seed, SHAPE, 8))
    return qg, [np.asarray(quantize_input(qg, x), np.int64) for x in data(seed + 3, SHAPE, 2)]


def _swept_cycles(low) -> int:
    timing = estimate_words(low.cfg, list(low.words), list(low.layers))
    return sum(s.counters["cycles"] for s in timing.segments if s.as_layer().get("layer") == "swept")


def test_the_map_sweep_cuts_cycles(monkeypatch, seed):
    qg, xs = _compiled(seed)
    chosen = {}
    sweep = offchip._map_sweep

    def spy(lo, op, *args):
        chosen[op.name] = sweep(lo, op, *args)
        return chosen[op.name]

    monkeypatch.setattr(offchip, "_map_sweep", spy)
    low = lower(qg, TINY)
    assert chosen.get("swept")
    monkeypatch.setattr(offchip, "_map_sweep", lambda *a: None)
    usual = lower(qg, TINY)
    assert 0 < _swept_cycles(low) <= GAIN * _swept_cycles(usual)
    for program in (low, usual):
        assert_isa_is_golden(program, qg, xs)


@pytest.mark.rtl
def test_the_map_sweep_on_the_native_engine(seed):
    """The RTL runs the sweep as the golden model, in the cycle model's cycles."""
    qg, xs = _compiled(seed)
    assert_native_is_golden_in_model_cycles(lower(qg, TINY), qg, xs)
