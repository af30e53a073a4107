"""A conv's off-chip output chunk goes in no hazard region of its input band
(:meth:`~fxpgen.compiler.layout.SpadAllocator.alloc_apart`): its REQUANTs and STOREs
then never wait for the MATMULs reading the band, nor the next band's LOAD for the
STORE. A 1x1 conv over a 64-channel off-chip map on the 4x4 core of
``test_offchip`` runs in fewer cycles than with the chunk next to the band (56,990
cycles then), and every engine still computes the golden model's outputs."""

import numpy as np
import pytest

from fxpgen.compiler.golden import quantize_input
from fxpgen.compiler.layout import SpadAllocator
from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.quantize import quantize
from fxpgen.models.zoo import TestModel

from op_checks import conv, data
from schedule_checks import assert_isa_is_golden, assert_native_is_golden_in_model_cycles, model_layer_cycles
from test_offchip import TINY

SHAPE = (3, 40, 40)
#: The 1x1 conv's cycles on the cycle model with the chunk apart from the band.
APART_CYCLES = 55_391


def _compiled(seed: int):
    m = TestModel(seed)
    y = conv(m, conv(m, "x", 3, 64, 3), 64, 4, 1)
    qg, _ = quantize(load_onnx(m.model((1,) + SHAPE, y)), data(seed, SHAPE, 4))
    return qg, [np.asarray(quantize_input(qg, x), np.int64) for x in data(seed + 3, SHAPE, 2)]


def test_chunk_apart_from_band_cuts_cycles(monkeypatch, seed):
    qg, xs = _compiled(seed)
    low = lower(qg, TINY)
    assert [b.name for b in low.host_buffers] == [qg.ops[0].output]
    with monkeypatch.context() as m:
        m.setattr(SpadAllocator, "alloc_apart",
                  lambda self, rows, what, avoid, top=True, fallback=None: self.alloc(rows, what, top=top))
        beside = lower(qg, TINY)
    apart_cycles, beside_cycles = model_layer_cycles(low)[-1], model_layer_cycles(beside)[-1]
    assert apart_cycles <= APART_CYCLES < beside_cycles
    assert_isa_is_golden(low, qg, xs)


@pytest.mark.rtl
def test_chunk_apart_on_the_native_engine(seed):
    """The RTL computes the golden model's outputs in the cycle model's cycles."""
    qg, xs = _compiled(seed)
    assert_native_is_golden_in_model_cycles(lower(qg, TINY), qg, xs)
