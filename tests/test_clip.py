"""Clip(0, 6) (ReLU6) exact: a Clip between convs rescaled to the saturation of its
format (``compiler/clip_scale.py``), a Clip with no conv after it clipped by a lookup
table; calibration data that push the pre-activation above 6, the golden model against
onnx's reference evaluator, the instruction-level simulator and the native RTL."""

import numpy as np
import pytest

from fxpgen.compiler.clip_scale import clip_scale, scale_clips
from fxpgen.compiler.fold import prepare
from fxpgen.compiler.golden import quantize_input, run_golden_batch
from fxpgen.compiler.graph import Clip, run_float
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.qgraph import QLut
from fxpgen.compiler.quantize import clip_code, quantize
from fxpgen.models.zoo import TestModel, reference
from fxpgen.numerics import Format, dequantize

from op_checks import check_compiled, check_native_rtl, data

SHAPE = (3, 8, 8)


def relu6(m: TestModel, x: str, name: str) -> str:
    return m.node("Clip", [x, m.const(f"{name}_lo", np.float32(0)), m.const(f"{name}_hi", np.float32(6))],
                  [name])


def wide_conv(m: TestModel, x: str, cin: int, cout: int, name: str) -> str:
    """A 3x3 conv whose outputs on [0, 1) images spread over about -20..20, so that a
    ReLU6 after it clips a good part of them."""
    return m.node("Conv", [x, m.w(f"{name}_W", (cout, cin, 3, 3), 3.0), m.w(f"{name}_B", (cout,), 1.0)],
                  [name], pads=[1] * 4)


def relu6_model(seed: int):
    """conv -> ReLU6 -> conv -> ReLU6 (the output): the first Clip is rescaled, the
    second, read by no conv, becomes a table."""
    m = TestModel(seed)
    y = relu6(m, wide_conv(m, "x", 3, 8, "c1"), "r1")
    y = m.node("Conv", [y, m.w("c2_W", (8, 8, 3, 3), 0.5), m.w("c2_B", (8,), 1.0)], ["c2"], pads=[1] * 4)
    return m.model((1,) + SHAPE, relu6(m, y, "r2"))


def test_calibration_pushes_the_pre_activations_above_6(seed):
    """Both Clips clip: over 1,300 seeds the least clipped share was 2.2% (c1) and 1.0%
    (c2), so 0.5% (80 of 16,384 values) leaves margin without being vacuous."""
    g = load_onnx(relu6_model(seed))
    acts = run_float(g, data(seed, SHAPE, 32))
    for pre in ("c1", "c2"):
        assert np.mean(acts[pre] > 6) > 0.005, pre


def test_clip_between_convs_is_rescaled_to_the_saturation(seed):
    """The rescaled graph computes the same function; the Clip's bound is 255 * 2**-fl
    and the conv before it is multiplied by s, the conv after it divided by s."""
    model = relu6_model(seed)
    g = prepare(load_onnx(model), scale_clip_bounds=False)
    scaled = scale_clips(g)
    bound, s = clip_scale(6.0)
    assert bound == 255 / 32 and s == pytest.approx(255 / 192)
    assert [n.max for n in scaled.nodes if isinstance(n, Clip)] == [bound, 6.0]
    c1, c2 = (n for n in scaled.nodes if n.OP == "Conv")
    o1, o2 = (n for n in g.nodes if n.OP == "Conv")
    assert np.allclose(c1.weight, o1.weight * s) and np.allclose(c1.bias, o1.bias * s)
    assert np.allclose(c2.weight, o2.weight / s) and np.array_equal(c2.bias, o2.bias)
    x = data(seed, SHAPE, 4)
    ref = reference(model, x)
    assert np.abs(run_float(scaled, x)[scaled.output] - ref).max() <= 1e-4 * np.abs(ref).max()


def test_clip_not_before_a_conv_keeps_its_bound(seed):
    """A Clip read by anything but convs (and pools before convs), or the graph output,
    is left alone; a Clip whose input something else reads too, as well."""
    m = TestModel(seed)
    a = relu6(m, wide_conv(m, "x", 3, 8, "c1"), "r1")
    b = m.node("Add", [a, wide_conv(m, "x", 3, 8, "c2")], ["sum"])
    g = prepare(load_onnx(m.model((1,) + SHAPE, b)), scale_clip_bounds=False)
    assert [n.max for n in scale_clips(g).nodes if isinstance(n, Clip)] == [6.0]
    m = TestModel(seed)
    y = wide_conv(m, "x", 3, 8, "c1")
    r = relu6(m, y, "r1")
    out = m.node("Add", [m.node("Conv", [r, m.w("c3_W", (8, 8, 1, 1))], ["c3"]), y], ["sum"])
    g = prepare(load_onnx(m.model((1,) + SHAPE, out)), scale_clip_bounds=False)
    assert [n.max for n in scale_clips(g).nodes if isinstance(n, Clip)] == [6.0]


def test_clip_before_a_global_pool_and_classifier_is_rescaled(seed):
    m = TestModel(seed)
    y = m.node("GlobalAveragePool", [relu6(m, wide_conv(m, "x", 3, 8, "c1"), "r1")], ["gap"])
    out = m.node("Gemm", [m.node("Flatten", [y], ["flat"]), m.w("fc_W", (5, 8))], ["fc"], transB=1)
    model = m.model((1,) + SHAPE, out)
    g = prepare(load_onnx(model))
    assert [n.max for n in g.nodes if isinstance(n, Clip)] == [clip_scale(6.0)[0]]
    x = data(seed, SHAPE, 4)
    ref = reference(model, x)
    assert np.abs(run_float(g, x)[g.output].reshape(ref.shape) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_clip_code_is_c_or_the_largest_code_under_it():
    assert clip_code(6.0, Format(False, 5)) == 192
    assert clip_code(6.0, Format(False, 6)) == 255             # 3.98 < 6: the format's limit
    assert clip_code(0.7, Format(False, 8)) == 179             # 0.69921875 <= 0.7 < 180 / 256
    assert clip_code(255 / 32, Format(False, 5)) == 255


def test_relu6_is_exact_on_golden_and_isa_simulator(seed, tmp_path):
    """The output Clip is a table min(x, code(6)): the golden outputs never exceed
    code(6) and reach it; they are onnx's within the quantization step; the
    instruction-level simulator gives the golden model's integers (op_checks)."""
    model = relu6_model(seed)
    qg, _ = check_compiled(model, SHAPE, seed, tmp_path)
    [lut] = [op for op in qg.ops if isinstance(op, QLut)]
    assert lut.output == qg.output
    fmt = qg.tensor(qg.output).fmt
    code = clip_code(6.0, fmt)
    assert code < fmt.hi
    assert np.array_equal(lut.table, np.minimum(np.arange(256), code))
    test = data(seed + 7, SHAPE, 16)
    got = run_golden_batch(qg, quantize_input(qg, test))[qg.output]
    assert got.max() == code and np.mean(got == code) > 0.02
    ref = reference(model, test)
    assert ref.max() == pytest.approx(6.0)
    # Where the float pre-activation is clearly above 6, the output is code(6) exactly:
    # a saturating ReLU6 at 7.97 (u8.5) would let up to 1.97 through there.
    pre = run_float(load_onnx(model), test)["c2"].reshape(ref.shape)
    clipped = pre > 6.5
    assert np.mean(clipped) > 0.02 and np.all(got[clipped] == code)
    # Elsewhere the output's own rounding plus the first layers' noise, on average
    # under one step of the output format.
    assert np.mean(np.abs(dequantize(got, fmt) - ref)) <= 2.0 ** -fmt.fl


def test_saturating_clip_lets_values_above_6_through(seed):
    """The same graph with ``clip="saturate"``: no table, and outputs above 6."""
    qg, _ = quantize(load_onnx(relu6_model(seed)), data(seed, SHAPE, 32), clip="saturate")
    assert not any(isinstance(op, QLut) for op in qg.ops)
    out = run_golden_batch(qg, quantize_input(qg, data(seed + 7, SHAPE, 16)))[qg.output]
    assert dequantize(out, qg.tensor(qg.output).fmt).max() > 6


@pytest.mark.rtl
def test_relu6_on_the_rtl(seed, tmp_path):
    """The rescaled Clip and the table on the native RTL engine, bit-identical to the
    golden model."""
    check_native_rtl(relu6_model(seed), SHAPE, seed, tmp_path)
