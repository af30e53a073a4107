"""The schedule of streamed weights (``compiler/conv_emit.py``): a conv whose n-tile's
weight tiles exceed the weight buffer keeps the array busy while its batches are
LOADed, on the cycle model and on the generated Verilog, with the golden model's
integers. Replay a failure with FXPGEN_SEED=<seed printed by the test>.

The conv: 32 -> 16 channels, 3x3, on a 4x4 map, on a 4x4 core whose weight buffer
holds 64 tiles: each of its 4 n-tiles has 9 taps x 8 k-tiles = 72 tiles, streamed
in three batches of 24 (half the buffer each) for its one chunk of 16 output pixels.
Measured on the cycle model: 5,069 cycles for 4,608 MAC cycles (occupancy 0.909);
6,088 cycles (0.757) when every batch was LOADed at row 0 after the previous
batch's last LOADW.
"""

import functools

import numpy as np
import pytest

from fxpgen.compiler.golden import quantize_input, run_golden_batch
from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.quantize import quantize
from fxpgen.config import CoreConfig
from fxpgen.models.zoo import TestModel
from fxpgen.sim.cycle_model import estimate
from fxpgen.sim.engine import NetworkProgram

from op_checks import conv, data

CFG = CoreConfig(rows=4, cols=4, spad_depth=1024, wbuf_depth=256, acc_depth=256)
SIZE = 4
#: Occupancy (MAC cycles / cycles) of the streamed conv at least, in percent.
OCCUPANCY_PERCENT = 88


@functools.cache
def streamed_conv(seed: int) -> tuple[NetworkProgram, list[np.ndarray], np.ndarray]:
    """A 1x1 conv to 32 channels, then the streamed 3x3 conv to 16: its program on
    :data:`CFG`, two input images and their golden outputs."""
    m = TestModel(seed)
    x = conv(m, "x", 3, 32, 1)
    model = m.model((1, 3, SIZE, SIZE), conv(m, x, 32, 16, 3))
    qg, _ = quantize(load_onnx(model), data(seed, (3, SIZE, SIZE), 4))
    xs = [np.asarray(quantize_input(qg, x), np.int64) for x in data(seed + 3, (3, SIZE, SIZE), 2)]
    low = lower(qg, CFG)
    return NetworkProgram.from_lowered(low, qg), xs, run_golden_batch(qg, np.stack(xs))[qg.output]


def conv_row(layers: list[dict]) -> dict:
    """The counters of the streamed conv's segment (the second)."""
    assert len(layers) == 3
    return layers[1]


def test_the_streamed_conv_keeps_the_array_busy_on_the_cycle_model(seed):
    program, _, _ = streamed_conv(seed)
    row = conv_row([s.as_layer() for s in estimate(program).segments])
    assert row["mac_cycles"] == 4 * 72 * SIZE * SIZE          # 4 n-tiles x 72 tiles x 16 pixels
    assert row["mac_cycles"] * 100 >= OCCUPANCY_PERCENT * row["cycles"], row


@pytest.mark.rtl
def test_the_streamed_conv_on_the_native_engine(seed):
    from fxpgen.sim.native import native_model
    from fxpgen.sim.rtl_engines import NativeEngine

    program, xs, golden = streamed_conv(seed)
    res = NativeEngine(batch=1, model=native_model(CFG)).run(program, xs)
    assert all(np.array_equal(o, g) for o, g in zip(res.outputs, golden))
    predicted = [s.as_layer() for s in estimate(program).segments]
    for layers in res.layers:
        row = conv_row(layers)
        assert row["mac_cycles"] * 100 >= OCCUPANCY_PERCENT * row["cycles"], row
        assert {k: row[k] for k in ("cycles", "mac_cycles", "insns")} == \
            {k: conv_row(predicted)[k] for k in ("cycles", "mac_cycles", "insns")}
