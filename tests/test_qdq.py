"""Quantized (QCDQ) ONNX models in: the formats come from the graph's QuantizeLinear /
DequantizeLinear pairs (``compiler/qdq.py``), no calibration is needed, and the golden
model's integers are those of onnx's reference evaluator, bit for bit."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from fxpgen.compiler.golden import quantize_input, run_golden, run_golden_batch
from fxpgen.compiler.graph import UnsupportedOp
from fxpgen.compiler.lower import lower
from fxpgen.compiler.qdq import load_qdq
from fxpgen.compiler.quantize import quantize
from fxpgen.config import CoreConfig
from fxpgen.numerics import Format
from fxpgen.sim.isa_sim import run_program

SHAPE = (1, 6, 6)
CFG = CoreConfig(rows=4, cols=8, spad_depth=4096, wbuf_depth=512, acc_depth=512)


class _Builder:
    """A QCDQ graph as Brevitas's export writes it: activations through QuantizeLinear,
    an optional Clip and DequantizeLinear; weights and biases as integer constants
    through DequantizeLinear."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list = []
        self.inits: list = []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qdq(self, x: str, fl: int, signed: bool, name: str, clip: tuple | None = None,
            zero: int = 0, scale: float | None = None) -> str:
        dtype = np.int8 if signed else np.uint8
        s = self.const(f"{name}_s", np.float32(2.0 ** -fl if scale is None else scale))
        z = self.const(f"{name}_z", dtype(zero))
        q = f"{name}_q"
        self.nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [q], name=f"{name}/Q"))
        if clip is not None:
            lo, hi = (self.const(f"{name}_{k}", dtype(v)) for k, v in zip("lh", clip))
            self.nodes.append(helper.make_node("Clip", [q, lo, hi], [f"{name}_c"], name=f"{name}/Clip"))
            q = f"{name}_c"
        self.nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [f"{name}_dq"],
                                           name=f"{name}/DQ"))
        return f"{name}_dq"

    def weight(self, name: str, shape, fl: int, scale=None) -> str:
        w = self.const(f"{name}_int", self.rng.integers(-127, 128, shape).astype(np.int8))
        s = self.const(f"{name}_s", np.asarray(2.0 ** -fl if scale is None else scale, np.float32))
        z = self.const(f"{name}_z", np.int8(0))
        self.nodes.append(helper.make_node("DequantizeLinear", [w, s, z], [f"{name}_dq"],
                                           name=f"{name}/DQ"))
        return f"{name}_dq"

    def bias(self, name: str, n: int, fl: int) -> str:
        b = self.const(f"{name}_int", self.rng.integers(-2000, 2000, n).astype(np.int32))
        s = self.const(f"{name}_s", np.float32(2.0 ** -fl))
        z = self.const(f"{name}_z", np.int32(0))
        self.nodes.append(helper.make_node("DequantizeLinear", [b, s, z], [f"{name}_dq"],
                                           name=f"{name}/DQ"))
        return f"{name}_dq"

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    def model(self, output: str) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "qcdq", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, (1,) + SHAPE)], [helper.make_tensor_value_info(
                output, TensorProto.FLOAT, None)], self.inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


def qcdq_model(seed: int, **bad) -> onnx.ModelProto:
    """Input u8.8 -> Conv 3x3 (w 2**-6, Int32-style bias) + Relu -> u8.4 -> MaxPool 2x2 ->
    Conv 3x3 + residual-free Relu -> u8.3 -> Flatten -> Gemm -> s8.3 (narrow, Clip), the
    graph output. ``bad`` replaces one quantizer's argument (error tests)."""
    m = _Builder(np.random.default_rng(seed))
    x = m.qdq("x", 8, False, "in", **bad.get("in", {}))
    y = m.node("Conv", [x, m.weight("w1", (4, 1, 3, 3), 6, **bad.get("w1", {})),
                        m.bias("b1", 4, 14)], "conv1", pads=[1] * 4)
    y = m.qdq(m.node("Relu", [y], "relu1"), 4, False, "a1", **bad.get("a1", {}))
    y = m.node("MaxPool", [y], "pool", kernel_shape=[2, 2], strides=[2, 2])
    y = m.node("Conv", [y, m.weight("w2", (8, 4, 3, 3), 7), m.bias("b2", 8, 11)], "conv2",
               pads=[1] * 4)
    y = m.qdq(m.node("Relu", [y], "relu2"), 3, False, "a2")
    y = m.node("Flatten", [y], "flat")
    y = m.node("Gemm", [y, m.weight("w3", (10, 72), 7), m.bias("b3", 10, 10)], "fc", transB=1)
    y = m.qdq(y, 3, True, "out", **{"clip": (-127, 127), **bad.get("out", {})})
    return m.model(y)


def reference_ints(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The integers of the graph's last quantizer (its Clip's output), by onnx's
    reference evaluator, one image at a time."""
    ref = ReferenceEvaluator(model)
    return np.stack([ref.run(["out_c"], {"x": img[None].astype(np.float32)})[0][0] for img in x])


def test_formats_from_the_graph(seed):
    graph, fixed = load_qdq(qcdq_model(seed))
    qg, report = quantize(graph, None, fixed=fixed)
    fmts = {name: t.fmt for name, t in qg.tensors.items()}
    assert fmts["x"] == Format(False, 8)
    assert fmts["relu1_out"] == Format(False, 4)
    assert fmts["pool_out"] == Format(False, 4)
    assert fmts["relu2_out"] == Format(False, 3)
    assert fmts[qg.output] == Format(True, 3) and qg.output == "out_dq"
    assert fixed.weights == {"conv1": 6, "conv2": 7, "fc": 7}
    assert report["tensors"]["relu1_out"]["rule"] == "fixed by the graph's quantizer"


def test_golden_equals_reference_and_isa(seed):
    model = qcdq_model(seed)
    graph, fixed = load_qdq(model)
    qg, _ = quantize(graph, None, fixed=fixed)
    x = np.random.default_rng(seed + 1).uniform(-0.1, 1.1, (16,) + SHAPE)
    got = run_golden_batch(qg, quantize_input(qg, x))[qg.output].reshape(len(x), -1)
    want = reference_ints(model, x).astype(np.int64)
    assert np.array_equal(got, want)
    assert np.any(want != 0) and np.any(np.abs(want) == 127)
    low = lower(qg, CFG)
    xi = np.asarray(quantize_input(qg, x[0]), np.int64)
    res = run_program(CFG, [i.encode(CFG) for i in low.instructions], low.data(low.image_words(xi)))
    assert res.error.name == "NONE", (res.error, res.error_pc)
    assert np.array_equal(low.decode_output(res.results), run_golden(qg, xi)[qg.output])


def test_calibration_fills_unquantized_tensors(seed):
    m = _Builder(np.random.default_rng(seed))
    x = m.qdq("x", 8, False, "in")
    y = m.node("Conv", [x, m.weight("w1", (4, 1, 3, 3), 6), m.bias("b1", 4, 14)], "conv1",
               pads=[1] * 4)
    model = m.model(m.node("Relu", [y], "relu1"))
    graph, fixed = load_qdq(model)
    with pytest.raises(ValueError, match=r"^no quantizer in the graph fixes the format of relu1_out"):
        quantize(graph, None, fixed=fixed)
    calib = np.random.default_rng(seed).uniform(0, 1, (8,) + SHAPE)
    qg, report = quantize(graph, calib, fixed=fixed)
    assert qg.tensor("x").fmt == Format(False, 8)
    assert report["tensors"]["relu1_out"]["rule"] == "std"


@pytest.mark.parametrize("bad, message", [
    ({"a1": {"scale": 0.1}}, r"^a1/Q \(QuantizeLinear\): scale 0\.1\d* is not a power of two"),
    ({"w1": {"scale": 0.01}}, r"^w1/DQ \(DequantizeLinear\): scale 0\.0\d* is not a power of two"),
    ({"a1": {"zero": 3}}, r"^a1/Q \(QuantizeLinear\): zero point \[3\] is not 0"),
    ({"w1": {"scale": [2.0 ** -6] * 4}}, r"^w1/DQ \(DequantizeLinear\): per-channel scales"),
    ({"out": {"clip": None}}, r"^out/Q \(QuantizeLinear\): range \[-128, 127\] is not fxpgen's"),
    ({"a1": {"scale": 2.0 ** -9}}, r"^a1/Q \(QuantizeLinear\): scale 2\*\*-9 gives fl 9, outside 0\.\.8"),
])
def test_errors_name_the_node(seed, bad, message):
    model = qcdq_model(seed, **bad)
    with pytest.raises(UnsupportedOp, match=message) as err:
        graph, fixed = load_qdq(model)
        quantize(graph, None, fixed=fixed)
    assert "\n" not in str(err.value)


def test_float_model_has_no_fixed_formats(seed):
    m = _Builder(np.random.default_rng(seed))
    w = m.const("w", np.ones((2, 1, 1, 1), np.float32))
    _, fixed = load_qdq(m.model(m.node("Conv", ["x", w], "conv")))
    assert fixed is None


def test_cli_compiles_without_calibration(tmp_path, seed):
    from click.testing import CliRunner

    from fxpgen.app.cli import main
    from fxpgen.compiler.program import load_qgraph

    onnx.save(qcdq_model(seed), tmp_path / "q.onnx")
    res = CliRunner().invoke(main, ["compile", str(tmp_path / "q.onnx"), "--rows", "4", "--cols", "8",
                                    "-o", str(tmp_path / "out"), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["fixed_formats"] is True
    assert load_qgraph(tmp_path / "out").tensor("relu1_out").fmt == Format(False, 4)


def test_cli_needs_calibration_for_a_float_model(tmp_path, seed):
    from click.testing import CliRunner

    from fxpgen.app.cli import main

    m = _Builder(np.random.default_rng(seed))
    onnx.save(m.model(m.node("Relu", ["x"], "relu")), tmp_path / "f.onnx")
    res = CliRunner().invoke(main, ["compile", str(tmp_path / "f.onnx"), "-o", str(tmp_path / "out"),
                                    "--quiet"])
    assert res.exit_code == 1
    assert res.output.strip() == ("Error: --calib is needed: the model has no QuantizeLinear/"
                                  "DequantizeLinear to take its formats from")


def test_a_quantizer_inside_a_fused_layer_is_refused(seed):
    m = _Builder(np.random.default_rng(seed))
    x = m.qdq("x", 8, False, "in")
    y = m.node("Conv", [x, m.weight("w1", (4, 1, 3, 3), 6), m.bias("b1", 4, 14)], "conv1",
               pads=[1] * 4)
    y = m.qdq(y, 4, True, "pre", clip=(-127, 127))
    model = m.model(m.qdq(m.node("Relu", [y], "relu1"), 4, False, "a1"))
    graph, fixed = load_qdq(model)
    with pytest.raises(UnsupportedOp, match=r"^pre/Q \(QuantizeLinear\): quantizes 'conv1_out', "
                       r"which fxpgen computes inside a fused layer"):
        quantize(graph, None, fixed=fixed)


def test_a_max_pool_keeps_its_format(seed):
    m = _Builder(np.random.default_rng(seed))
    y = m.node("MaxPool", [m.qdq("x", 8, False, "in")], "pool", kernel_shape=[2, 2], strides=[2, 2])
    graph, fixed = load_qdq(m.model(m.qdq(y, 6, False, "p")))
    with pytest.raises(UnsupportedOp, match=r"^pool: maxpool keeps its input's format u8\.8, but "
                       r"the graph quantizes its output to u8\.6$"):
        quantize(graph, None, fixed=fixed)
