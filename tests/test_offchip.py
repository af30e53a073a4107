"""Feature maps larger than the scratchpad, kept off chip (:mod:`fxpgen.compiler.offchip`):
small networks of every op that can run in bands (convs, pools, adds, concats,
slices, upsampling, lookup tables, products) compiled for a 4x4 core with a 1024-row
scratchpad, where their 8x24x24 maps (1352 rows with the border) cannot stay, run on
the instruction-level simulator (and, marker ``rtl``, the native engine) exactly as
the golden model."""

import numpy as np
import pytest

from fxpgen.compiler.golden import quantize_input, run_golden_batch
from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.program import load_program, load_qgraph, save_program, save_qgraph
from fxpgen.compiler.qgraph import QConcat, QLut, QMul, QResize, QSlice
from fxpgen.compiler.quantize import quantize
from fxpgen.config import CoreConfig
from fxpgen.models.zoo import TestModel
from fxpgen.sim.engine import IsaEngine, NetworkProgram
from fxpgen.sim.segments import split_layers

from op_checks import conv, data

TINY = CoreConfig(rows=4, cols=4, spad_depth=1024, wbuf_depth=256, acc_depth=256)
SHAPE = (3, 24, 24)


def _net(kind: str, seed: int):
    m = TestModel(seed)
    if kind == "chain":
        y = conv(m, conv(m, conv(m, "x", 3, 8, 3), 8, 8, 3), 8, 4, 1)
    elif kind == "residual":
        a = conv(m, "x", 3, 8, 3)
        s = m.node("Add", [a, conv(m, a, 8, 8, 3, relu=False)], ["s"])
        y = conv(m, m.node("Relu", [s], ["s_r"]), 8, 4, 1)
    elif kind == "depthwise":
        a = conv(m, "x", 3, 8, 3)
        d = m.node("Conv", [a, m.w("dw_w", (8, 1, 3, 3)), m.w("dw_b", (8,), 0.1)], ["dw"],
                   pads=[1, 1, 1, 1], group=8, strides=[2, 2])
        y = conv(m, conv(m, m.node("Relu", [d], ["dw_r"]), 8, 8, 1), 8, 4, 1)
    elif kind == "slabs":
        a = conv(m, "x", 3, 32, 3)
        d = m.node("Conv", [a, m.w("dw_w", (32, 1, 3, 3)), m.w("dw_b", (32,), 0.1)], ["dw"],
                   pads=[1, 1, 1, 1], group=32, strides=[2, 2])
        y = conv(m, m.node("Relu", [d], ["dw_r"]), 32, 4, 1)
    elif kind == "maxpool":
        p = m.node("MaxPool", [conv(m, "x", 3, 8, 3)], ["p"], kernel_shape=[3, 3], strides=[2, 2],
                   pads=[1, 1, 1, 1])
        y = conv(m, p, 8, 4, 3)
    elif kind == "concat":
        c = m.node("Concat", [conv(m, "x", 3, 8, 3), conv(m, "x", 3, 8, 1)], ["cat"], axis=1)
        y = conv(m, c, 16, 4, 1)
    elif kind == "gated":
        gate = m.node("Sigmoid", [conv(m, "x", 3, 8, 1, relu=False)], ["gate"])
        y = conv(m, m.node("Mul", [conv(m, "x", 3, 8, 3, relu=False), gate], ["gated"]), 8, 4, 1)
    elif kind == "excite":
        gate = m.node("Sigmoid", [conv(m, m.node("GlobalAveragePool", ["x"], ["gap"]), 3, 8)], ["gate"])
        y = conv(m, m.node("Mul", [conv(m, "x", 3, 8, 3), gate], ["scaled"]), 8, 4, 1)
    elif kind == "slice_resize":
        a = conv(m, "x", 3, 8, 3)
        hi = m.node("Slice", [conv(m, a, 8, 16, 1), m.const("st", np.array([8])), m.const("en", np.array([16])),
                              m.const("ax", np.array([1]))], ["hi"])
        p = m.node("MaxPool", [hi], ["p"], kernel_shape=[2, 2], strides=[2, 2])
        r = m.node("Resize", [p, "", m.const("scales", np.array([1, 1, 2, 2], np.float32))], ["up"],
                   mode="nearest")
        y = conv(m, m.node("Concat", [r, a], ["cat"], axis=1), 16, 4, 1)
    elif kind == "global_pool":
        y = m.node("GlobalAveragePool", [conv(m, "x", 3, 16, 3)], ["gap"])
    return m.model((1,) + SHAPE, y)


def _compiled(kind: str, seed: int):
    qg, _ = quantize(load_onnx(_net(kind, seed)), data(seed, SHAPE, 8))
    return qg, [np.asarray(quantize_input(qg, x), np.int64) for x in data(seed + 3, SHAPE, 2)]


#: The networks whose maps go off chip: the conv family's, then every other op's
#: (concat, lookup table, product with a map and per channel, slice, upsampling).
KINDS = ["chain", "residual", "depthwise", "maxpool", "concat", "gated", "excite", "slice_resize"]


@pytest.mark.parametrize("kind", KINDS)
def test_offchip_maps_run_as_the_golden_model(kind, seed):
    qg, xs = _compiled(kind, seed)
    assert not lower(qg, TINY.replace(spad_depth=8192)).host_buffers     # what fits stays on chip
    low = lower(qg, TINY)
    assert low.host_buffers and low.host_pieces
    assert low.spad_rows_used <= TINY.spad_depth
    program = NetworkProgram.from_lowered(low, qg)
    out = IsaEngine().run(program, xs).outputs
    golden = run_golden_batch(qg, np.stack(xs))[qg.output]
    assert all(np.array_equal(o, g) for o, g in zip(out, golden))


def test_program_file_keeps_the_host_pieces(tmp_path, seed):
    qg, xs = _compiled("residual", seed)
    low = lower(qg, TINY)
    save_program(tmp_path / "program.fxp", low)
    save_qgraph(tmp_path, qg)
    view = load_program(tmp_path / "program.fxp", TINY).lowered_view()
    assert view.host_pieces == low.host_pieces and view.host_buffers == low.host_buffers
    assert view.result_refs() == low.result_refs()
    assert view.data(view.image_words(xs[0])) == low.data(low.image_words(xs[0]))
    program = NetworkProgram.from_program(load_program(tmp_path / "program.fxp"), load_qgraph(tmp_path))
    out = IsaEngine().run(program, xs[:1]).outputs[0]
    assert np.array_equal(out, run_golden_batch(qg, np.stack(xs[:1]))[qg.output][0])


def test_result_refs_point_to_earlier_segments_only(seed):
    qg, xs = _compiled("chain", seed)
    low = lower(qg, TINY)
    program = NetworkProgram.from_lowered(low, qg)
    segs = program.segments(xs[0])
    before = 0
    for seg in segs:
        assert all(first + (n - 1) // run * stride + (n - 1) % run < before
                   for _, first, n, run, stride in seg.refs)
        before += seg.n_results
    assert sum(len(s.refs) for s in segs) == len(low.result_refs())
    at, first, count, run, stride = low.result_refs()[0]
    with pytest.raises(ValueError, match="references result word"):
        split_layers(program.words, program.layers, program.stream(xs[0]), [(at, first + 10 ** 6, count, run, stride)])


def test_output_words_leave_out_the_offchip_maps(seed):
    qg, xs = _compiled("maxpool", seed)
    low = lower(qg, TINY)
    (buf,) = low.host_buffers
    c, h, w = qg.tensor(qg.output).shape
    n_out = h * w * -(-c // TINY.lanes)
    results = list(range(buf.count + n_out))
    assert buf.result_at == 0 and low.output_words(results) == results[buf.count:]


@pytest.mark.parametrize("kind, ops", [("concat", {QConcat}), ("gated", {QLut, QMul}), ("excite", {QMul}),
                                       ("slice_resize", {QSlice, QResize, QConcat})])
def test_every_kind_of_op_reads_or_writes_offchip_maps(kind, ops, seed):
    """Each of these ops reads or writes a map kept off chip (the tiny scratchpad
    leaves no choice)."""
    qg, _ = _compiled(kind, seed)
    offchip = {b.name for b in lower(qg, TINY).host_buffers}
    kinds = {type(op) for op in qg.ops if offchip & {*op.inputs, op.output}}
    assert ops <= kinds, (ops, kinds)


@pytest.mark.rtl
@pytest.mark.parametrize("kind", KINDS)
def test_offchip_maps_on_the_native_engine(kind, seed):
    from fxpgen.sim.rtl_engines import NativeEngine
    qg, xs = _compiled(kind, seed)
    program = NetworkProgram.from_lowered(lower(qg, TINY), qg)
    res = NativeEngine(batch=2).run(program, xs)
    golden = run_golden_batch(qg, np.stack(xs))[qg.output]
    assert all(np.array_equal(o, g) for o, g in zip(res.outputs, golden))
    assert len(res.layers[0]) == len(program.segments(xs[0]))


@pytest.mark.rtl
@pytest.mark.slow       # the native engine runs off-chip maps by default (test_cycle_model)
def test_offchip_maps_on_the_cocotb_engine(seed):
    """The cocotb harness plays the host too: the residual block, bit-identical."""
    from fxpgen.sim.rtl_engines import RtlEngine
    qg, xs = _compiled("residual", seed)
    program = NetworkProgram.from_lowered(lower(qg, TINY), qg)
    assert program.view.host_pieces
    res = RtlEngine(batch=2).run(program, xs[:1])
    golden = run_golden_batch(qg, np.stack(xs[:1]))[qg.output]
    assert np.array_equal(res.outputs[0], golden[0])


def test_a_depthwise_band_too_wide_goes_in_slabs(seed):
    """32 channels, 8 groups of the 4x4 core: one band of 3 rows takes 624 rows of a
    512-row scratchpad, so the depthwise conv reads it a few channel groups at a time."""
    qg, xs = _compiled("slabs", seed)
    cfg = TINY.replace(spad_depth=512)
    low = lower(qg, cfg)
    assert any(p.run > 1 for p in low.host_pieces)
    out = IsaEngine().run(NetworkProgram.from_lowered(low, qg), xs).outputs
    golden = run_golden_batch(qg, np.stack(xs))[qg.output]
    assert all(np.array_equal(o, g) for o, g in zip(out, golden))


@pytest.mark.slow
@pytest.mark.rtl
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "resnet50"])
def test_imagenet_networks_on_the_default_core(name, seed, tmp_path):
    """ResNet-18, MobileNetV2 and ResNet-50 at 224x224 (random weights) compile for the
    default 8x8 core, their large maps off chip, and run whole on the native engine as
    the golden model does, in the cycle model's cycles; prints the cycles and the
    array's MAC utilization."""
    from fxpgen.app.flow import compile_model, model_macs, run_compiled
    from fxpgen.models import zoo
    cfg = CoreConfig()
    rng = np.random.default_rng(seed)
    summary = compile_model(getattr(zoo, name)(224, 1000), rng.uniform(0, 1, (2, 3, 224, 224)), cfg,
                            tmp_path)
    assert summary["offchip_maps"]
    x = rng.uniform(0, 1, (1, 3, 224, 224))
    out = run_compiled(tmp_path, x, "native")
    assert out["golden_identical"] is True
    macs = model_macs(load_qgraph(tmp_path))
    cycles = out["cycles_per_image"]
    assert cycles == run_compiled(tmp_path, x, "model")["cycles_per_image"]
    print(f"{name} 224x224 on {cfg.name}: {len(summary['offchip_maps'])} maps off chip, "
          f"{summary['offchip_words_stored']:,} words stored, {summary['offchip_words_loaded']:,} "
          f"loaded; {cycles:,.0f} cycles, MAC utilization {macs / (cycles * cfg.rows * cfg.cols):.3f}")
