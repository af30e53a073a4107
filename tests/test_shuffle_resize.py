"""Channel shuffle (Reshape -> Transpose -> Reshape) and nearest-neighbour Resize /
Upsample: import (float, against onnx's reference evaluator), the golden model
against the reference, shuffles folded into the convs reading them or lowered as 1x1
convs, upsampling on the vector unit, lowering on several core shapes (the
instruction-level simulator equal to the golden model bit for bit), the quantized
graph on disk, and one network on the RTL."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from fxpgen.compiler.golden import quantize_input, run_golden_batch
from fxpgen.compiler.graph import Resize, Shuffle, UnsupportedOp
from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx, nearest_is_repeat
from fxpgen.compiler.qgraph import QResize, QShuffle
from fxpgen.compiler.quantize import quantize
from fxpgen.models.zoo import TestModel, reference
from fxpgen.numerics import quantize as quantize_to
from fxpgen.sim.isa_sim import run_program

from op_checks import CONFIGS, check_compiled, check_native_rtl, check_float_import, conv, data

def channel_shuffle(m, x, c, h, w, groups, name="shuffle"):
    """torch.onnx's channel shuffle; the first shape written with torch's 0 and -1."""
    v = m.node("Reshape", [x, m.const(f"{name}_s5", np.array([0, groups, -1, h, w]))], [f"{name}_5d"])
    t = m.node("Transpose", [v], [f"{name}_t"], perm=[0, 2, 1, 3, 4], name=name)
    return m.node("Reshape", [t, m.const(f"{name}_s4", np.array([1, c, h, w]))], [f"{name}_out"])


def unit(seed, c, groups):
    """A shufflenet unit: split, one branch through convs, concat, shuffle, a conv."""
    m = TestModel(seed)
    x = conv(m, "x", 3, c)
    half = c // 2
    a = m.node("Split", [x, m.const("sizes", np.array([half, c - half]))], ["a", "b"], axis=1)
    b2 = conv(m, conv(m, "b", c - half, c - half), c - half, c - half, 3)
    cat = m.node("Concat", [a, b2], ["cat"], axis=1)
    conv(m, channel_shuffle(m, cat, c, 6, 5, groups), c, 5, relu=False)
    return m.model((1, 3, 6, 5), "shuffle_out_c5_1"), (3, 6, 5)


def unit_v2(seed, c):
    """ShuffleNetV2's stride-1 unit twice: shuffle, split, the second half through a
    conv, concat with the first half; the kept half is a slice of a shuffle read by a
    concat, the concat's shuffle read by the next unit's split."""
    m = TestModel(seed)
    x = conv(m, "x", 3, c)
    for k in range(2):
        s = channel_shuffle(m, x, c, 5, 6, 2, name=f"sh{k}")
        a, b = f"a{k}", f"b{k}"
        m.node("Split", [s, m.const(f"sz{k}", np.array([c // 2, c // 2]))], [a, b], axis=1)
        x = m.node("Concat", [a, conv(m, b, c // 2, c // 2, 3)], [f"cat{k}"], axis=1)
    conv(m, x, c, 4, relu=False)
    return m.model((1, 3, 5, 6), "cat1_c4_1"), (3, 5, 6)


def shuffle_into_concat(seed, c):
    """A shuffle concatenated with another map, the concat read by two convs: the
    concat takes the unshuffled map and the convs the permutation."""
    m = TestModel(seed)
    x = conv(m, "x", 3, c)
    cat = m.node("Concat", [channel_shuffle(m, x, c, 4, 5, 2), conv(m, "x", 3, 3, 3)], ["cat"], axis=1)
    m.node("Add", [conv(m, cat, c + 3, 6, relu=False), conv(m, cat, c + 3, 6, 3, relu=False)], ["y"])
    return m.model((1, 3, 4, 5), "y"), (3, 4, 5)


def shuffle_then_pool(seed, c):
    """A shuffle read by a max pool and an add: nothing to fold it into."""
    m = TestModel(seed)
    x = conv(m, "x", 3, c)
    s = channel_shuffle(m, x, c, 6, 6, 4)
    p = m.node("MaxPool", [s], ["p"], kernel_shape=[2, 2], strides=[2, 2])
    m.node("Add", [p, m.node("MaxPool", [x], ["q"], kernel_shape=[2, 2], strides=[2, 2])], ["y"])
    return m.model((1, 3, 6, 6), "y"), (3, 6, 6)


def upsample_head(seed, c, factor, **resize):
    """conv -> Resize (scales) -> conv, a segmentation head."""
    m = TestModel(seed)
    x = conv(m, "x", 3, c, 3)
    r = m.node("Resize", [x, "", m.const("scales", np.array([1, 1, factor, factor], np.float32))],
               ["up"], mode="nearest", **resize)
    conv(m, r, c, 3, 3, relu=False)
    return m.model((1, 3, 4, 5), "up_c3_3"), (3, 4, 5)


def sized_head(seed, c):
    """Resize given by sizes with the default half_pixel / round_prefer_floor modes,
    read by a concat with a conv at the upsampled size (a detection neck)."""
    m = TestModel(seed)
    x = conv(m, "x", 3, c)
    small = m.node("MaxPool", [x], ["small"], kernel_shape=[2, 2], strides=[2, 2])
    r = m.node("Resize", [conv(m, small, c, c), "", "", m.const("sizes", np.array([1, c, 6, 8]))],
               ["up"], mode="nearest")
    cat = m.node("Concat", [r, conv(m, x, c, 5)], ["cat"], axis=1)
    conv(m, cat, c + 5, 4, relu=False)
    return m.model((1, 3, 6, 8), "cat_c4_1"), (3, 6, 8)


def upsample_opset9(seed, c):
    m = TestModel(seed)
    x = conv(m, "x", 3, c)
    r = m.node("Upsample", [x, m.const("scales", np.array([1, 1, 3, 3], np.float32))], ["up"],
               mode="nearest")
    conv(m, r, c, 4, relu=False)
    return m.model((1, 3, 3, 4), "up_c4_1", opset=9), (3, 3, 4)


MODELS = {"unit16": lambda s: unit(s, 16, 2), "unit12g3": lambda s: unit(s, 12, 3),
          "v2_16": lambda s: unit_v2(s, 16), "v2_10": lambda s: unit_v2(s, 10),
          "pool_shuffle": lambda s: shuffle_then_pool(s, 8),
          "concat_shuffle": lambda s: shuffle_into_concat(s, 8),
          "resize_x2": lambda s: upsample_head(s, 6, 2, coordinate_transformation_mode="asymmetric",
                                               nearest_mode="floor"),
          "resize_x3": lambda s: upsample_head(s, 9, 3),
          "resize_sizes": lambda s: sized_head(s, 8), "upsample9": lambda s: upsample_opset9(s, 5)}


@pytest.mark.parametrize("name", MODELS)
def test_float_import_matches_reference(name, seed):
    model, shape = MODELS[name](seed)
    g = check_float_import(model, shape, seed)
    assert all(len(t.shape) == 3 for t in g.tensors.values())


@pytest.mark.parametrize("name", MODELS)
def test_compiled_isa_equals_golden_and_golden_follows_reference(name, seed, tmp_path):
    model, shape = MODELS[name](seed)
    check_compiled(model, shape, seed, tmp_path)


def _single(build, shape, opset=17):
    m = TestModel(0)
    build(m)
    return m.model((1,) + shape, "y", opset=opset)


@pytest.mark.parametrize("build", [
    lambda m, c: m.node("MaxPool", [channel_shuffle(m, "x", c, 3, 4, 2)], ["y"], kernel_shape=[1, 1]),
    lambda m, c: m.node("Resize", ["x", "", m.const("s", np.array([1, 1, 2, 2], np.float32))], ["y"],
                     mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="round_prefer_floor"),
    lambda m, c: m.node("Resize", ["x", "", m.const("s", np.array([1, 1, 3, 3], np.float32))], ["y"],
                     mode="nearest", coordinate_transformation_mode="pytorch_half_pixel",
                     nearest_mode="round_prefer_ceil"),
])
@pytest.mark.parametrize("channels", [8, 6])
def test_moving_bytes_is_exact(build, channels, seed):
    """A shuffle and an upsampling of the input change no value: the golden model is
    the reference's output quantized, and so is the program."""
    shape = (channels, 3, 4)
    model = _single(lambda m: build(m, channels), shape)
    qg, _ = quantize(load_onnx(model), data(seed, shape, 8))
    # float32 values, as the reference evaluator computes them: a float64 value just
    # above a rounding tie would otherwise become the tie itself in the reference.
    test = data(seed + 3, shape, 4).astype(np.float32)
    want = quantize_to(reference(model, test), qg.tensor(qg.output).fmt)
    xs = quantize_input(qg, test)
    assert np.array_equal(run_golden_batch(qg, xs)[qg.output], want)
    for cfg in CONFIGS.values():
        low = lower(qg, cfg)
        res = run_program(cfg, [i.encode(cfg) for i in low.instructions],
                          low.data(low.image_words(np.asarray(xs[0], np.int64))))
        assert np.array_equal(low.decode_output(res.results), want[0])


@pytest.mark.parametrize("transform", ["asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners"])
@pytest.mark.parametrize("mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_nearest_modes_against_the_reference(transform, mode, factor):
    """The table of accepted modes is exactly where onnx's reference repeats pixels, on
    maps of several sizes."""
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest",
                            coordinate_transformation_mode=transform, nearest_mode=mode)
    repeats = []
    for h, w in ((5, 4), (3, 7), (12, 9)):
        x = np.arange(2 * h * w, dtype=np.float32).reshape(1, 2, h, w)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), "s")])
        y = ReferenceEvaluator(helper.make_model(g)).run(None, {"x": x})[0]
        repeats.append(np.array_equal(y, x.repeat(factor, 2).repeat(factor, 3)))
    assert [nearest_is_repeat(transform, mode, factor)] * 3 == repeats


def test_the_shuffle_imports_as_one_permutation():
    g = load_onnx(_single(lambda m: channel_shuffle(m, "x", 6, 2, 2, 3) and
                          m.node("Relu", ["shuffle_out"], ["y"]), (6, 2, 2)))
    sh = next(n for n in g.nodes if isinstance(n, Shuffle))
    assert sh.name == "shuffle" and sh.perm == (0, 2, 4, 1, 3, 5)
    assert set(g.tensors) == {"x", "shuffle_out", "y"}


def _layer_ops(low, name):
    return [i.opcode.name for i, layer in zip(low.instructions, low.layers) if layer == name]


@pytest.mark.parametrize("name", ["unit16", "v2_16", "concat_shuffle"])
def test_shuffles_read_by_convs_cost_nothing(name):
    """The unit's shuffle folds into the conv after it. In the v2 units the slice of
    each shuffle that a branch conv reads folds into that conv, and the kept half,
    which a concat reads, is the one 1x1 pick conv left per unit."""
    model, shape = MODELS[name](0)
    qg, _ = quantize(load_onnx(model), data(0, shape, 8))
    shuffles = [op for op in qg.ops if isinstance(op, QShuffle)]
    assert shuffles
    low = lower(qg, CONFIGS["8x8"])
    convs = [op.name for op in qg.ops if type(op).__name__ == "QConv"]
    convs += ["Split_5:0", "Split_12:0"] if name == "v2_16" else []
    matmul_layers = {layer for i, layer in zip(low.instructions, low.layers) if i.opcode.name == "MATMUL"}
    assert matmul_layers == set(convs), (sorted(matmul_layers), convs)


def test_a_shuffle_nothing_folds_is_a_pick_conv():
    model, shape = MODELS["pool_shuffle"](0)
    qg, _ = quantize(load_onnx(model), data(0, shape, 8))
    low = lower(qg, CONFIGS["8x8"])
    assert "MATMUL" in _layer_ops(low, "shuffle")


def test_upsampling_is_one_max_per_offset_and_group():
    model, shape = MODELS["resize_x3"](0)
    qg, _ = quantize(load_onnx(model), data(0, shape, 8))
    op = next(op for op in qg.ops if isinstance(op, QResize))
    assert op.factor == 3
    for cfg in CONFIGS.values():
        groups = -(-9 // cfg.lanes)
        ops = _layer_ops(lower(qg, cfg), op.name)
        # The output map's border (the next conv's padding) is filled first, with LOADs.
        assert ops.count("MAX") == 9 * groups and set(ops) == {"LOAD", "MAX", "HALT"}


def test_upsample_imports_as_resize():
    g = load_onnx(MODELS["upsample9"](0)[0])
    assert [n.factor for n in g.nodes if isinstance(n, Resize)] == [3]


def _reshape5(m, shape):
    return m.node("Reshape", ["x", m.const("s5", np.array(shape))], ["v"], name="rs")


@pytest.mark.parametrize("build, match", [
    (lambda m: m.node("Relu", [_reshape5(m, [1, 2, 3, 2, 2])], ["y"], name="r"),
     r"r \(Relu\): input 'v' is a 5-D tensor of a channel shuffle"),
    (lambda m: _reshape5(m, [1, 2, 3, 4, 1]),
     r"rs \(Reshape\): shape=\[1, 2, 3, 4, 1\] is not supported \(a 5-D Reshape only as the "
     r"\(N, g, C/g, H, W\) view of a channel shuffle\)"),
    (lambda m: m.node("Transpose", [_reshape5(m, [1, 2, 3, 2, 2])], ["y"], perm=[0, 1, 2, 4, 3], name="tr"),
     r"tr \(Transpose\): perm=\[0, 1, 2, 4, 3\] is not supported"),
    (lambda m: m.node("Transpose", ["x"], ["y"], perm=[0, 1, 3, 2], name="tr"),
     r"tr \(Transpose\): perm=\[0, 1, 3, 2\] is not supported"),
    (lambda m: m.node("Reshape", [m.node("Transpose", [_reshape5(m, [1, 2, 3, 2, 2])], ["t"],
                                         perm=[0, 2, 1, 3, 4]), m.const("s4", np.array([1, 6, 4, 1]))],
                      ["y"], name="back"),
     r"back \(Reshape\): shape=\[1, 6, 4, 1\] is not supported"),
    (lambda m: m.node("Resize", ["x", "", m.const("s", np.array([1, 1, 2, 2], np.float32))], ["y"],
                      mode="linear", name="rz"), r"rz \(Resize\): mode=linear is not supported"),
    (lambda m: m.node("Resize", ["x", "", m.const("s", np.array([1, 1, 1.5, 1.5], np.float32))], ["y"],
                      mode="nearest", name="rz"),
     r"rz \(Resize\): scales=\[1.0, 1.0, 1.5, 1.5\] is not supported \(only one integer factor"),
    (lambda m: m.node("Resize", ["x", "", "", m.const("s", np.array([1, 6, 4, 6]))], ["y"],
                      mode="nearest", name="rz"), r"rz \(Resize\): sizes=\[1, 6, 4, 6\] is not supported"),
    (lambda m: m.node("Resize", ["x", "", m.const("s", np.array([1, 1, 2, 2], np.float32))], ["y"],
                      mode="nearest", coordinate_transformation_mode="align_corners", nearest_mode="floor",
                      name="rz"),
     r"rz \(Resize\): coordinate_transformation_mode=align_corners with nearest_mode=floor "
     r"and factor 2 is not supported"),
])
def test_rejections_name_node_op_and_reason(build, match):
    with pytest.raises(UnsupportedOp, match=match):
        quantize(load_onnx(_single(build, (6, 2, 2))), np.zeros((1, 6, 2, 2)))


@pytest.mark.rtl
def test_an_upsample_head_on_the_native_rtl_equals_golden(tmp_path, seed):
    model, shape = sized_head(seed, 8)
    check_native_rtl(model, shape, seed, tmp_path)