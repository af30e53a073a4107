"""Nonlinear activations as lookup tables (LUT) and element-wise products (MUL), end to
end: the ONNX import against onnx's reference evaluator, each table within one output
quantization step of the reference function, the golden model equal to the
instruction-level simulator on several cores, and a squeeze-excitation block on the
RTL."""

import numpy as np
import pytest
from onnx import helper

from fxpgen.compiler.golden import quantize_input, run_golden
from fxpgen.compiler.lower import lower
from fxpgen.compiler.quantize import quantize
from fxpgen.config import CoreConfig
from fxpgen.isa import Addr, ErrorCode, Instruction, Mem, Opcode
from fxpgen.sim.isa_sim import Machine
from fxpgen.compiler.graph import Mul, Unary
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.qgraph import QLut, QMul
from fxpgen.models.zoo import TestModel, reference
from fxpgen.numerics import dequantize

from op_checks import check_compiled, check_float_import, check_native_rtl, conv, data

SHAPE = (3, 8, 8)

#: ONNX op, attributes, opset, the graph function it becomes.
UNARY_CASES = {
    "sigmoid": ("Sigmoid", {}, 17, "sigmoid"),
    "hardsigmoid": ("HardSigmoid", {"alpha": 0.25, "beta": 0.4}, 17, "hardsigmoid"),
    "hardswish": ("HardSwish", {}, 17, "hardswish"),
    "tanh": ("Tanh", {}, 17, "tanh"),
    "gelu": ("Gelu", {}, 20, "gelu"),
    "gelu_tanh": ("Gelu", {"approximate": "tanh"}, 20, "gelu_tanh"),
    "leakyrelu": ("LeakyRelu", {"alpha": 0.1}, 17, "leakyrelu"),
}


def unary_model(seed: int, op: str, attrs: dict, opset: int):
    """conv 3 -> 8 (3x3, no ReLU: signed) -> op -> conv 8 -> 4."""
    m = TestModel(seed)
    y = conv(m, "x", 3, 8, k=3, relu=False)
    y = m.node(op, [y], [f"{y}_{op}"], **attrs)
    return m.model((1,) + SHAPE, conv(m, y, 8, 4, relu=False), opset=opset)


def clip_model(seed: int, lo: float, hi: float):
    m = TestModel(seed)
    y = conv(m, "x", 3, 8, k=3, relu=False)
    y = m.node("Clip", [y, m.const("lo", np.float32(lo)), m.const("hi", np.float32(hi))], ["clip"])
    return m.model((1,) + SHAPE, conv(m, y, 8, 4, relu=False))


def silu_model(seed: int):
    m = TestModel(seed)
    y = conv(m, "x", 3, 8, k=3, relu=False)
    s = m.node("Sigmoid", [y], ["sig"])
    y = m.node("Mul", [y, s], ["silu"])
    return m.model((1,) + SHAPE, conv(m, y, 8, 4, relu=False))


def se_model(seed: int):
    """A squeeze-excitation block: conv -> x; GAP -> 1x1 conv -> ReLU -> 1x1 conv ->
    Sigmoid -> Mul(x, s) (s per channel, broadcast over the pixels)."""
    m = TestModel(seed)
    x = conv(m, "x", 3, 8, k=3)
    g = m.node("GlobalAveragePool", [x], ["gap"])
    s = conv(m, g, 8, 4)
    s = m.node("Sigmoid", [conv(m, s, 4, 8, relu=False)], ["gate"])
    y = m.node("Mul", [x, s], ["scaled"])
    return m.model((1,) + SHAPE, conv(m, y, 8, 4, relu=False))


def se_classifier_model(seed: int):
    """The squeeze-excitation block under a classifier head: GAP -> Flatten -> Gemm
    (the Flatten is bypassed while the Mul is in the graph)."""
    m = TestModel(seed)
    x = conv(m, "x", 3, 8, k=3)
    s = m.node("Sigmoid", [conv(m, m.node("GlobalAveragePool", [x], ["gap"]), 8, 8, relu=False)],
               ["gate"])
    y = m.node("GlobalAveragePool", [m.node("Mul", [x, s], ["scaled"])], ["pooled"])
    flat = m.node("Flatten", [y], ["flat"], axis=1)
    out = m.node("Gemm", [flat, m.w("fc_w", (5, 8)), m.w("fc_b", (5,))], ["logits"], transB=1)
    return m.model((1,) + SHAPE, out)


def product_model(seed: int):
    """Two conv branches multiplied element-wise (one signed, one unsigned)."""
    m = TestModel(seed)
    a = conv(m, "x", 3, 8, k=3, relu=False)
    b = conv(m, "x", 3, 8, k=1)
    y = m.node("Mul", [a, b], ["prod"])
    return m.model((1,) + SHAPE, conv(m, y, 8, 4, relu=False))


def single_op(op: str, attrs: dict, opset: int, c: int):
    """The ONNX op alone on a (1, c, 1, 1) input, for onnx's reference evaluator."""
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "one",
                          [helper.make_tensor_value_info("x", 1, [1, c, 1, 1])],
                          [helper.make_tensor_value_info("y", 1, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def check_tables_follow_reference(qg, onnx_op: str, attrs: dict, opset: int) -> None:
    """Every entry of every table of ``qg`` is onnx's reference function of the entry's
    input value, quantized: within one output step (float32 evaluation may move a
    value across a rounding tie), or saturated at the format's limit."""
    luts = [op for op in qg.ops if isinstance(op, QLut)]
    assert luts
    for op in luts:
        fin, fout = qg.tensor(op.input).fmt, qg.tensor(op.output).fmt
        b = np.arange(256)
        q = np.where(b >= 128, b - 256, b) if fin.signed else b
        x = dequantize(q, fin)
        ref = reference(single_op(onnx_op, attrs, opset, 256),
                        x.reshape(1, 256, 1, 1).astype(np.float32))[0].reshape(-1)
        got = dequantize(op.table, fout)
        lo, hi = dequantize(fout.lo, fout), dequantize(fout.hi, fout)
        step = 2.0 ** -fout.fl
        assert np.all(np.abs(got - np.clip(ref, lo, hi)) <= step + 1e-6), op.name


@pytest.mark.parametrize("case", list(UNARY_CASES))
def test_unary_activation_is_one_table(case, seed, tmp_path):
    onnx_op, attrs, opset, fn = UNARY_CASES[case]
    model = unary_model(seed, onnx_op, attrs, opset)
    g = check_float_import(model, SHAPE, seed)
    assert [n.fn for n in g.nodes if isinstance(n, Unary)] == [fn]
    qg, _ = check_compiled(model, SHAPE, seed, tmp_path)
    check_tables_follow_reference(qg, onnx_op, attrs, opset)


def test_clip_with_a_nonzero_lower_bound_is_a_table(seed, tmp_path):
    model = clip_model(seed, -0.5, 0.75)
    g = check_float_import(model, SHAPE, seed)
    assert [(n.fn, n.args) for n in g.nodes if isinstance(n, Unary)] == [("clip", (-0.5, 0.75))]
    qg, _ = check_compiled(model, SHAPE, seed, tmp_path)
    luts = [op for op in qg.ops if isinstance(op, QLut)]
    assert len(luts) == 1
    fout = qg.tensor(luts[0].output).fmt
    got = dequantize(luts[0].table, fout)
    assert got.min() >= -0.5 - 2.0 ** -fout.fl and got.max() <= 0.75 + 2.0 ** -fout.fl


def test_mul_of_x_and_its_sigmoid_is_one_silu_table(seed, tmp_path):
    model = silu_model(seed)
    g = check_float_import(model, SHAPE, seed)
    assert [n.fn for n in g.nodes if isinstance(n, Unary)] == ["silu"]
    assert not any(isinstance(n, Mul) for n in g.nodes)
    qg, _ = check_compiled(model, SHAPE, seed, tmp_path)
    assert sum(isinstance(op, QLut) for op in qg.ops) == 1


def test_mul_of_two_maps(seed, tmp_path):
    model = product_model(seed)
    check_float_import(model, SHAPE, seed)
    qg, x = check_compiled(model, SHAPE, seed, tmp_path)
    [mul] = [op for op in qg.ops if isinstance(op, QMul)]
    assert {qg.tensor(mul.a).fmt.signed, qg.tensor(mul.b).fmt.signed} == {True, False}
    gold = run_golden(qg, x)
    assert np.any(gold[mul.output] != 0)


def test_squeeze_excitation_block(seed, tmp_path):
    model = se_model(seed)
    g = check_float_import(model, SHAPE, seed)
    [mul] = [n for n in g.nodes if isinstance(n, Mul)]
    assert g.shape(mul.b) == (8, 1, 1)
    qg, _ = check_compiled(model, SHAPE, seed, tmp_path)
    assert {type(op) for op in qg.ops} >= {QLut, QMul}


def test_squeeze_excitation_under_a_classifier_head(seed, tmp_path):
    """Folding the Flatten before the Gemm rewires the graph's inputs around every node,
    a Mul's two included (torchvision's MobileNetV3 and EfficientNet stopped there)."""
    qg, _ = check_compiled(se_classifier_model(seed), SHAPE, seed, tmp_path)
    assert any(isinstance(op, QMul) for op in qg.ops)


def test_mul_by_a_constant_is_refused(seed):
    m = TestModel(seed)
    y = conv(m, "x", 3, 8)
    y = m.node("Mul", [y, m.w("k", (1, 8, 1, 1))], ["scaled"])
    with pytest.raises(ValueError, match="constant"):
        load_onnx(m.model((1,) + SHAPE, y))


def test_golden_lut_indexes_by_the_bytes_bits(seed):
    """An int8 input indexes the table by its two's complement byte."""
    model = unary_model(seed, "Tanh", {}, 17)
    from fxpgen.compiler.quantize import quantize
    from op_checks import data
    qg, _ = quantize(load_onnx(model), data(seed, SHAPE, 8))
    [lut] = [op for op in qg.ops if isinstance(op, QLut)]
    assert qg.tensor(lut.input).fmt.signed
    x = run_golden(qg, quantize_input(qg, data(seed + 3, SHAPE, 1)[0]))
    src = x[lut.input]
    assert np.any(src < 0)
    assert np.array_equal(x[lut.output], np.asarray(lut.table)[np.where(src < 0, src + 256, src)])


@pytest.mark.rtl
def test_squeeze_excitation_on_the_rtl(seed, tmp_path):
    """The squeeze-excitation block (LUT and broadcast MUL) on the native RTL engine,
    bit-identical to the golden model."""
    check_native_rtl(se_model(seed), SHAPE, seed, tmp_path)


# -- a core built without the lookup tables and the lane multipliers ---------------

BARE = CoreConfig(rows=2, cols=2, spad_depth=64, wbuf_depth=16, acc_depth=16, lut_tables=0,
                  lane_multipliers=False)


def _refused_programs(cfg: CoreConfig) -> list[tuple[list[int], list[int], ErrorCode]]:
    """(words, data, the error expected at instruction 1): a LUT, a MUL, a table load."""
    halt = Instruction(Opcode.HALT).encode(cfg)
    sync = Instruction(Opcode.SYNC).encode(cfg)
    lut = Instruction(Opcode.LUT, {"table": 0}, 1, 1, x=Addr(0), z=Addr(1)).encode(cfg)
    mul = Instruction(Opcode.MUL, {"shift": 3}, 1, 1, x=Addr(0), y=Addr(0), z=Addr(1)).encode(cfg)
    load = Instruction(Opcode.LOAD, {"mem": Mem.LUT.value}, 1, 1, z=Addr(0)).encode(cfg)
    return [([sync, lut, halt], [], ErrorCode.BAD_FIELD),
            ([sync, mul, halt], [], ErrorCode.BAD_FIELD),
            ([sync, load, halt], [7], ErrorCode.ADDRESS)]


def test_a_core_without_tables_or_multipliers_refuses_lut_mul_and_table_loads():
    for words, data, error in _refused_programs(BARE):
        r = Machine(BARE).run(words, data)
        assert (r.error, r.error_pc) == (error, 1)
    for words, data, _ in _refused_programs(CoreConfig(rows=2, cols=2, spad_depth=64,
                                                      wbuf_depth=16, acc_depth=16)):
        assert Machine(CoreConfig(rows=2, cols=2, spad_depth=64, wbuf_depth=16,
                                  acc_depth=16)).run(words, data).error is ErrorCode.NONE


@pytest.mark.rtl
def test_a_core_without_tables_or_multipliers_refuses_them_on_the_rtl(seed):
    """The RTL built without the parts stops where the ISA simulator does."""
    from fxpgen.sim.core_rtl import RtlProgram
    from fxpgen.sim.native import run_on_native
    for words, data, error in _refused_programs(BARE):
        [r], _ = run_on_native(BARE, [RtlProgram(words, data, -1, max_cycles=5_000)], seed=seed)
        assert (ErrorCode(r.error), r.error_pc) == (error, 1)


def test_compiling_lut_or_mul_for_a_core_without_them_names_the_part(seed):
    qg, _ = quantize(load_onnx(se_model(seed)), data(seed, SHAPE, 8))
    with pytest.raises(ValueError, match="lookup tables"):
        lower(qg, CoreConfig(lut_tables=0))
    with pytest.raises(ValueError, match="lane multipliers"):
        lower(qg, CoreConfig(lane_multipliers=False))
