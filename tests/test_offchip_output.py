"""The network's output map off chip, and a global average pool whose channel group
outgrows the scratchpad (:mod:`fxpgen.compiler.offchip`,
:mod:`fxpgen.compiler.pool_bands`), on the 4x4 core with a 1024-row scratchpad of
``tests/test_offchip.py``: the output's producer stores its rows as it computes them,
the pool adds band after band of its input into its accumulators; the instruction-level
simulator and (marker ``rtl``) the native engine give the golden model's integers, and
the cycle model the native engine's counters."""

import numpy as np
import pytest

from fxpgen.compiler.golden import quantize_input, run_golden_batch
from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.qgraph import QAvgPool
from fxpgen.compiler.quantize import quantize
from fxpgen.compiler.tiling import DoesNotFit
from fxpgen.config import CoreConfig
from fxpgen.isa import Mem, Opcode
from fxpgen.models.zoo import TestModel
from fxpgen.sim.engine import IsaEngine, NetworkProgram

from op_checks import conv, data

TINY = CoreConfig(rows=4, cols=4, spad_depth=1024, wbuf_depth=256, acc_depth=256)

#: Each network and its input (C, H, W): a conv head of 16 channels (its 2304-row
#: output alone outgrows the scratchpad), an upsampling head (a row op storing its
#: output), one conv straight from the streamed image, and a global average pool whose
#: one channel group of 40x40 pixels takes 1600 rows. Then convs whose one output row
#: and its input band do not fit either, so they run in windows of columns: 256
#: channels from the streamed image (a 1024-row output row and a 54-row band), 112
#: from an off-chip map (896 and 204), 480 from a resident image (960 rows; 924 free).
SHAPES = {"conv_head": (3, 24, 24), "upsample_head": (3, 24, 24), "one_conv": (3, 24, 24),
          "global_pool": (3, 40, 40), "wide_conv": (3, 16, 16), "wide_head": (3, 32, 32),
          "wide_resident": (3, 8, 8)}


def _net(kind: str, seed: int):
    m = TestModel(seed)
    if kind == "conv_head":
        y = conv(m, conv(m, "x", 3, 8, 3), 8, 16, 3, relu=False)
    elif kind == "upsample_head":
        y = m.node("Resize", [conv(m, "x", 3, 8, 3), "", m.const("scales", np.array([1, 1, 2, 2], np.float32))],
                   ["up"], mode="nearest")
    elif kind == "one_conv":
        y = conv(m, "x", 3, 32, 3, relu=False)
    elif kind == "wide_conv":
        y = conv(m, "x", 3, 256, 3, relu=False)
    elif kind == "wide_head":
        y = conv(m, conv(m, "x", 3, 8, 3), 8, 112, 3, relu=False)
    elif kind == "wide_resident":
        y = conv(m, "x", 3, 480, 3, relu=False)
    else:
        y = m.node("GlobalAveragePool", [conv(m, "x", 3, 16, 3)], ["gap"])
    return m.model((1,) + SHAPES[kind], y)


def _compiled(kind: str, seed: int):
    shape = SHAPES[kind]
    qg, _ = quantize(load_onnx(_net(kind, seed)), data(seed, shape, 8))
    return qg, [np.asarray(quantize_input(qg, x), np.int64) for x in data(seed + 3, shape, 2)]


def _map_rows(qg, name: str, cfg: CoreConfig) -> int:
    c, h, w = qg.tensor(name).shape
    return h * w * -(-c // cfg.lanes)


def _golden(qg, xs):
    return run_golden_batch(qg, np.stack(xs))[qg.output]


@pytest.mark.parametrize("kind", ["conv_head", "upsample_head", "one_conv"])
def test_an_output_larger_than_the_scratchpad_goes_off_chip(kind, seed):
    """The output map alone does not fit: its producer stores it (no final STORE, no
    host buffer of its own), and its words decode to the golden model's output."""
    qg, xs = _compiled(kind, seed)
    assert _map_rows(qg, qg.output, TINY) > TINY.spad_depth
    assert "output" in lower(qg, TINY.replace(spad_depth=16384)).layers    # what fits is stored at the end
    low = lower(qg, TINY)
    assert "output" not in low.layers
    assert qg.output not in {b.name for b in low.host_buffers}
    assert low.spad_rows_used <= TINY.spad_depth
    out = IsaEngine().run(NetworkProgram.from_lowered(low, qg), xs).outputs
    assert all(np.array_equal(o, g) for o, g in zip(out, _golden(qg, xs)))


def test_the_output_words_are_the_stored_rows(seed):
    """With the output off chip the result stream is the off-chip maps' runs and the
    output's rows, stored by its producer; the output words leave out the runs."""
    qg, _ = _compiled("conv_head", seed)
    low = lower(qg, TINY)
    (buf,) = low.host_buffers
    n_out = _map_rows(qg, qg.output, TINY)
    results = list(range(buf.count + n_out))
    assert buf.result_at == 0 and low.output_words(results) == results[buf.count:]


@pytest.mark.parametrize("kind, stream_input", [("wide_conv", None), ("wide_head", None),
                                                 ("wide_resident", False)])
def test_a_row_too_wide_for_the_scratchpad_runs_in_windows_of_columns(kind, stream_input, seed):
    """The output's producer stores each output row in several windows of columns, in
    order, so the output words stay row-major: the golden model's output."""
    qg, xs = _compiled(kind, seed)
    low = lower(qg, TINY, stream_input=stream_input)
    c, h, w = qg.tensor(qg.output).shape
    row = w * -(-c // TINY.lanes)
    stores = [i.count0 * i.count1 for i, layer in zip(low.instructions, low.layers)
              if layer == qg.ops[-1].name and i.opcode is Opcode.STORE]
    assert len(stores) > h and max(stores) < row and sum(stores) == h * row
    assert low.input_streamed == (stream_input is None)
    out = IsaEngine().run(NetworkProgram.from_lowered(low, qg), xs).outputs
    assert all(np.array_equal(o, g) for o, g in zip(out, _golden(qg, xs)))


def _pool_loads(low, pool: str) -> int:
    """Scratchpad LOADs of the pool's layer."""
    return sum(1 for insn, layer in zip(low.instructions, low.layers)
               if layer == pool and insn.opcode is Opcode.LOAD and insn.params["mem"] == Mem.SPAD.value)


def test_a_global_pool_too_large_for_the_scratchpad_runs_in_bands(seed):
    """One channel group of the pool's 16x40x40 input takes 1600 rows of the 1024:
    the pool LOADs it in bands of rows, adding each into the same accumulators; one
    REQUANT per n-tile at the end, the golden model's integers."""
    qg, xs = _compiled("global_pool", seed)
    pool = next(op for op in qg.ops if isinstance(op, QAvgPool))
    c, h, w = qg.tensor(pool.input).shape
    assert h * w > TINY.spad_depth
    low = lower(qg, TINY)
    assert pool.input in {b.name for b in low.host_buffers}
    n_tiles = -(-c // TINY.cols)
    assert _pool_loads(low, pool.name) > n_tiles       # more than one band per n-tile
    requants = [i for i, layer in zip(low.instructions, low.layers) if layer == pool.name
                and i.opcode is Opcode.REQUANT]
    assert len(requants) == n_tiles
    out = IsaEngine().run(NetworkProgram.from_lowered(low, qg), xs).outputs
    assert all(np.array_equal(o, g) for o, g in zip(out, _golden(qg, xs)))


@pytest.mark.parametrize("cfg", [CoreConfig(rows=4, cols=8, spad_depth=256, wbuf_depth=256, acc_depth=256),
                                 CoreConfig(rows=8, cols=4, spad_depth=256, wbuf_depth=256, acc_depth=256)],
                         ids=["4x8", "8x4"])
def test_a_banded_global_pool_on_other_core_shapes(cfg, seed):
    """rows < cols (two k-tiles per n-tile) and rows > cols (two n-tiles per channel
    group); the scratchpad holds 6 of the 24 input rows of a channel group."""
    m = TestModel(seed)
    model = m.model((1, 3, 24, 24), m.node("GlobalAveragePool", [conv(m, "x", 3, 24, 3)], ["gap"]))
    qg, _ = quantize(load_onnx(model), data(seed, (3, 24, 24), 8))
    xs = [np.asarray(quantize_input(qg, x), np.int64) for x in data(seed + 3, (3, 24, 24), 2)]
    pool = qg.ops[-1]
    low = lower(qg, cfg)
    assert pool.input in {b.name for b in low.host_buffers} and 24 * 24 > cfg.spad_depth
    out = IsaEngine().run(NetworkProgram.from_lowered(low, qg), xs).outputs
    assert all(np.array_equal(o, g) for o, g in zip(out, _golden(qg, xs)))


def test_what_still_does_not_fit_is_reported(seed):
    """With 32 scratchpad rows, one 40-pixel row of one channel group of the pool's
    input does not fit: the error names the pool, the map, the memory and the
    figures, and the scratchpad depth that fits."""
    from fxpgen.app.flow import lower_for_user
    qg, _ = _compiled("global_pool", seed)
    pool = qg.ops[-1]
    with pytest.raises(DoesNotFit, match=rf"{pool.name}: one row of input {pool.input} \(1 of its 4 channel "
                                         r"groups\) takes 40 scratchpad rows, \d+ are free.*--spad-depth \d+"):
        lower_for_user(qg, TINY.replace(spad_depth=32))


@pytest.mark.rtl
@pytest.mark.parametrize("kind", ["conv_head", "upsample_head", "global_pool", "wide_conv", "wide_head"])
def test_on_the_native_engine(kind, seed):
    """golden = ISA simulator = native RTL; the cycle model's counters are the native
    engine's, segment for segment (the global pool's)."""
    from fxpgen.sim.cycle_model import estimate
    from fxpgen.sim.rtl_engines import NativeEngine
    qg, xs = _compiled(kind, seed)
    program = NetworkProgram.from_lowered(lower(qg, TINY), qg)
    res = NativeEngine(batch=2).run(program, xs)
    assert all(np.array_equal(o, g) for o, g in zip(res.outputs, _golden(qg, xs)))
    if kind == "global_pool":
        predicted = [s.as_layer() for s in estimate(program).segments]
        assert len(predicted) == len(res.layers[0])
        for p, m in zip(predicted, res.layers[0]):
            assert {k: p[k] for k in m} == m, (p, m)
