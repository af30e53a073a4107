"""Concat and Slice/Split along the channels, MaxPool ceil_mode=1 and explicit Pad:
import (float, against onnx's reference evaluator), quantization (one format per
concat), the golden model against the reference, lowering on several core shapes
(the instruction-level simulator equal to the golden model bit for bit, channel
counts that are and are not multiples of ``lanes``), the quantized graph on disk, and
one network on the RTL."""

import numpy as np
import pytest

from fxpgen.compiler.golden import quantize_input, run_golden_batch
from fxpgen.compiler.graph import Concat, Slice, UnsupportedOp
from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.qgraph import QAdd, QConcat, QConv, QSlice
from fxpgen.compiler.quantize import concat_format, quantize
from fxpgen.models.zoo import TestModel, reference
from fxpgen.numerics import Format, quantize as quantize_to
from fxpgen.sim.isa_sim import run_program

from op_checks import CONFIGS, check_compiled, check_native_rtl, check_float_import, conv, data

def fire(seed, cin, squeeze, e1, e3):
    """A squeezenet fire module, then a ceil-mode max pool (googlenet's) and a 1x1 head."""
    m = TestModel(seed)
    s = conv(m, "x", cin, squeeze)
    cat = m.node("Concat", [conv(m, s, squeeze, e1), conv(m, s, squeeze, e3, 3)], ["cat"], axis=1)
    p = m.node("MaxPool", [cat], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    conv(m, p, e1 + e3, 4, relu=False, name="head")
    return m.model((1, cin, 9, 9), "p_c4_1"), (cin, 9, 9)


def shuffle(seed, c, split):
    """A shufflenet unit: a channel split, one branch through convs, the other kept,
    concatenated (the kept half needs no copy when formats agree, else one)."""
    m = TestModel(seed)
    x = conv(m, "x", 3, c)
    a, b = m.node("Split", [x, m.const("sizes", np.array([split, c - split]))], ["a", "b"], axis=1)[0], "b"
    b2 = conv(m, conv(m, b, c - split, c - split), c - split, c - split, 3)
    cat = m.node("Concat", [a, b2], ["cat"], axis=1)
    conv(m, cat, c, 5, relu=False)
    return m.model((1, 3, 6, 7), "cat_c5_1"), (3, 6, 7)


def three_way(seed, c):
    """The graph input, a slice of a conv (onnx Slice) and a padded conv, concatenated."""
    m = TestModel(seed)
    y = conv(m, "x", 4, 2 * c)
    sl = m.node("Slice", [y, m.const("st", np.array([c + 1])), m.const("en", np.array([2 * c])),
                          m.const("ax", np.array([1]))], ["sl"])
    pad = m.node("Pad", ["x", m.const("pads", np.array([0, 0, 0, 2, 0, 0, 1, 0]))], ["xp"])
    z = m.node("Conv", [pad, m.w("Wz", (c, 4, 3, 3), 0.3)], ["z"], pads=[1, 0, 0, 0])
    m.node("Concat", ["x", sl, z], ["cat"], axis=1)
    return m.model((1, 4, 5, 5), "cat"), (4, 5, 5)


MODELS = {"fire8": lambda s: fire(s, 3, 8, 8, 8), "fire5": lambda s: fire(s, 3, 5, 5, 3),
          "fire16": lambda s: fire(s, 5, 6, 16, 16),
          "shuffle16": lambda s: shuffle(s, 16, 8), "shuffle12": lambda s: shuffle(s, 12, 6),
          "shuffle32": lambda s: shuffle(s, 32, 16), "three_way": lambda s: three_way(s, 6)}


@pytest.mark.parametrize("name", MODELS)
def test_float_import_matches_reference(name, seed):
    model, shape = MODELS[name](seed)
    check_float_import(model, shape, seed)


@pytest.mark.parametrize("name", MODELS)
def test_compiled_isa_equals_golden_and_golden_follows_reference(name, seed, tmp_path):
    model, shape = MODELS[name](seed)
    qg, _ = check_compiled(model, shape, seed, tmp_path)
    for op in qg.ops:
        if isinstance(op, QConcat):
            assert len({qg.tensor(t).fmt for t in [*op.sources, op.output]}) == 1


def _single(build, shape):
    m = TestModel(0)
    build(m)
    return m.model((1,) + shape, "y")


@pytest.mark.parametrize("build", [
    lambda m: m.node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    lambda m: m.node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0],
                     ceil_mode=1),
    lambda m: m.node("Concat", ["x", m.node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], pads=[1] * 4)],
                     ["y"], axis=1),
    lambda m: m.node("Slice", ["x", m.const("s", np.array([2])), m.const("e", np.array([-1])),
                               m.const("a", np.array([1]))], ["y"]),
])
@pytest.mark.parametrize("channels", [8, 5])
def test_moving_bytes_is_exact(build, channels, seed):
    """Max pools (ceil mode's extra window too), concats and slices of the input change no
    value: the golden model is the reference's output quantized, and so is the program."""
    shape = (channels, 6, 7)
    model = _single(build, shape)
    qg, _ = quantize(load_onnx(model), data(seed, shape, 8))
    # float32 values, as the reference evaluator computes them: a float64 value just
    # above a rounding tie would otherwise become the tie itself in the reference.
    test = data(seed + 3, shape, 4).astype(np.float32)
    want = quantize_to(reference(model, test), qg.tensor(qg.output).fmt)
    xs = quantize_input(qg, test)
    assert np.array_equal(run_golden_batch(qg, xs)[qg.output], want)
    cfg = CONFIGS["4x8"]
    low = lower(qg, cfg)
    res = run_program(cfg, [i.encode(cfg) for i in low.instructions],
                      low.data(low.image_words(np.asarray(xs[0], np.int64))))
    assert np.array_equal(low.decode_output(res.results), want[0])


def test_ceil_mode_grows_the_bottom_and_right_padding():
    g = load_onnx(_single(lambda m: m.node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                           ceil_mode=1), (2, 8, 6)))
    assert g.nodes[0].pads == (0, 0, 1, 1) and g.shape("y") == (2, 4, 3)


def test_pad_folds_into_conv_padding():
    m = TestModel(0)
    pad = m.node("Pad", ["x", m.const("pads", np.array([0, 0, 1, 2, 0, 0, 3, 0]))], ["xp"])
    m.node("Conv", [pad, m.w("W", (2, 3, 3, 3))], ["y"], pads=[1, 0, 0, 1])
    g = load_onnx(m.model((1, 3, 5, 5), "y"))
    qg, _ = quantize(g, data(0, (3, 5, 5), 4))
    assert [type(op) for op in qg.ops] == [QConv] and qg.ops[0].pads == (2, 2, 3, 1)
    assert qg.ops[0].input == "x"


def test_concat_format_holds_every_input():
    assert concat_format([Format(False, 8), Format(False, 5)]) == Format(False, 5)
    assert concat_format([Format(False, 6), Format(True, 7)]) == Format(True, 5)
    assert concat_format([Format(False, 0), Format(True, 3)]) == Format(True, 0)


def test_producers_requantize_into_the_concat_format_and_the_rest_is_copied(seed):
    model, shape = three_way(seed, 6)
    qg, _ = quantize(load_onnx(model), data(seed, shape, 16))
    cat = next(op for op in qg.ops if isinstance(op, QConcat))
    fmt = qg.tensor("cat").fmt
    # The conv z writes the concat's format itself; the input and the slice keep theirs
    # and are copied when that differs.
    assert cat.sources[2] == "z" and qg.tensor("z").fmt == fmt
    for src, orig in zip(cat.sources[:2], ("x", "sl")):
        if qg.tensor(orig).fmt == fmt:
            assert src == orig
        else:
            copy = next(op for op in qg.ops if op.output == src)
            assert isinstance(copy, QAdd) and copy.a == copy.b == orig
            assert copy.shift == qg.tensor(orig).fmt.fl + 1 - fmt.fl


def _count(low, opcode):
    return sum(i.opcode.name == opcode for i in low.instructions)


def test_aligned_concat_and_slice_are_group_copies_others_matmuls():
    cfg = CONFIGS["8x8"]
    for name, matmul_layers in (("shuffle16", False), ("shuffle12", True)):
        model, shape = MODELS[name](0)
        qg, _ = quantize(load_onnx(model), data(0, shape, 8))
        low = lower(qg, cfg)
        lay = {op.name: [i.opcode.name for i, l in zip(low.instructions, low.layers) if l == op.name]
               for op in qg.ops if isinstance(op, (QConcat, QSlice))}
        uses_matmul = any("MATMUL" in v for v in lay.values())
        assert uses_matmul == matmul_layers, (name, lay)


@pytest.mark.parametrize("build, match", [
    (lambda m: m.node("MaxPool", [m.node("Pad", ["x", m.const("p", np.array([0, 0, 1, 1, 0, 0, 1, 1]))],
                                          ["xp"], name="pd")], ["y"], kernel_shape=[2, 2]),
     r"pd \(Pad\): an explicit Pad is supported only when every reader is a Conv or AveragePool "
     r"\(it becomes their zero padding\); MaxPool_1 reads it"),
    (lambda m: m.node("Pad", ["x", m.const("p", np.array([0, 1, 0, 0, 0, 0, 0, 0]))], ["y"], name="pd"),
     r"pd \(Pad\): pads=\[0, 1, 0, 0, 0, 0, 0, 0\] is not supported \(only >= 0 on H and W\)"),
    (lambda m: m.node("Pad", ["x", m.const("p", np.zeros(8, np.int64)), m.const("v", np.array(1.0))],
                      ["y"], name="pd"), r"pd \(Pad\): mode=constant value=1 is not supported"),
    (lambda m: m.node("Pad", ["x", m.const("p", np.zeros(8, np.int64))], ["y"], mode="reflect", name="pd"),
     r"pd \(Pad\): mode=reflect"),
    (lambda m: m.node("Concat", ["x", "x"], ["y"], axis=2, name="cc"),
     r"cc \(Concat\): axis=2 is not supported \(only 1: the channels\)"),
    (lambda m: m.node("Slice", ["x", m.const("s", np.array([1])), m.const("e", np.array([3])),
                                m.const("a", np.array([2]))], ["y"], name="sl"),
     r"sl \(Slice\): only slicing the channels \(axis 1\) is supported"),
    (lambda m: m.node("Slice", ["x", m.const("s", np.array([0])), m.const("e", np.array([3])),
                                m.const("a", np.array([1])), m.const("t", np.array([2]))], ["y"], name="sl"),
     r"sl \(Slice\): steps=\[2\] is not supported \(only 1\)"),
    (lambda m: m.node("Split", ["x"], ["y", "z"], axis=2, name="sp"),
     r"sp \(Split\): axis=2 is not supported"),
])
def test_rejections_name_node_op_and_reason(build, match):
    with pytest.raises(UnsupportedOp, match=match):
        quantize(load_onnx(_single(build, (4, 4, 4))), np.zeros((1, 4, 4, 4)))


def test_split_without_sizes_splits_evenly():
    g = load_onnx(_single(lambda m: m.node("Split", ["x"], ["a", "y"], axis=1, num_outputs=2), (6, 3, 3)))
    assert [(n.start, n.stop) for n in g.nodes if isinstance(n, Slice)] == [(0, 3), (3, 6)]
    assert not [n for n in g.nodes if isinstance(n, Concat)]


@pytest.mark.rtl
def test_a_fire_module_on_the_native_rtl_equals_golden(tmp_path, seed):
    model, shape = fire(seed, 3, 5, 8, 8)
    check_native_rtl(model, shape, seed, tmp_path)