"""ONNX front end and folding passes: the float graph executor against
``onnx.reference.ReferenceEvaluator`` op by op, every rejection path, and the folding
passes' exactness in float."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx.reference
import pytest
from onnx import TensorProto, helper, numpy_helper

from fxpgen.compiler.fold import (PREPARED_OPS, fold_avgpool_correction, fold_batchnorm,
                                  gemm_to_conv, lower_global_pool, prepare)
from fxpgen.compiler.graph import (AvgPool, BatchNorm, Conv, Flatten, Gemm, Graph, Relu,
                                   UnsupportedOp, run_float)
from fxpgen.compiler.onnx_frontend import SUPPORTED_OPS, load_onnx

from fxpgen.models.zoo import TestModel, reference

SEED = 0   # set per test by _weights_and_data_seed


@pytest.fixture(autouse=True)
def _weights_and_data_seed(seed):
    """Every test of this file draws its weights and data from the ``seed`` fixture;
    the models are built by helpers several calls away from the test, so the seed
    reaches them through this module global."""
    global SEED
    SEED = seed


# ---- model building --------------------------------------------------------------------

class M(TestModel):
    def __init__(self, seed=None):
        super().__init__(SEED if seed is None else seed)


def assert_float_matches(model, x: np.ndarray, graph: Graph | None = None) -> None:
    g = graph or load_onnx(model)
    ref = reference(model, x)
    got = run_float(g, x.reshape((len(x),) + g.shape(g.input)))[g.output]
    got = got.reshape(ref.shape)
    scale = max(float(np.abs(ref).max()), 1e-6)
    assert np.abs(got - ref).max() <= 1e-4 * scale


def inputs(shape, n=3, lo=-1.0, hi=1.0):
    return np.random.default_rng(SEED + 1).uniform(lo, hi, (n,) + tuple(shape[1:]))


# ---- per-op float executor -------------------------------------------------------------

def conv_model(cin=3, cout=4, k=(3, 3), hw=(7, 6), bias=True, **attrs):
    m = M()
    groups = attrs.get("group", 1)
    ins = ["x", m.w("W", (cout, cin // groups) + k)] + ([m.w("B", (cout,))] if bias else [])
    m.node("Conv", ins, ["y"], **attrs)
    return m.model((1, cin) + hw, "y")


CONV_CASES = {
    "basic": dict(pads=[1, 1, 1, 1]),
    "stride2_asym_pads": dict(strides=[2, 2], pads=[0, 1, 1, 0]),
    "rect_kernel_stride": dict(k=(3, 1), strides=[2, 1], pads=[1, 0, 1, 0]),
    "groups2": dict(cin=4, cout=6, group=2, pads=[1, 1, 1, 1]),
    "depthwise": dict(cin=5, cout=5, group=5, pads=[1, 1, 1, 1]),
    "depthwise_mult2": dict(cin=3, cout=6, group=3),
    "no_bias_1x1": dict(k=(1, 1), bias=False),
    "same_upper": dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    "valid": dict(auto_pad="VALID", kernel_shape=[3, 3]),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_float(case):
    model = conv_model(**CONV_CASES[case])
    assert_float_matches(model, inputs((1, CONV_CASES[case].get("cin", 3), 7, 6)))


def gemm_model(kind):
    m = M()
    if kind == "flatten_gemm_transB":
        f = m.node("Flatten", ["x"], ["f"])
        m.node("Gemm", [f, m.w("W", (5, 2 * 3 * 4)), m.w("C", (5,))], ["y"], transB=1)
        return m.model((1, 2, 3, 4), "y")
    if kind == "flatten_gemm_alpha_beta":
        f = m.node("Flatten", ["x"], ["f"], axis=0)
        m.node("Gemm", [f, m.w("W", (24, 5)), m.w("C", (1, 5))], ["y"], alpha=0.5, beta=2.0)
        return m.model((1, 2, 3, 4), "y")
    if kind == "reshape_gemm_no_c":
        f = m.node("Reshape", ["x", m.const("s", np.array([1, -1], np.int64))], ["f"])
        m.node("Gemm", [f, m.w("W", (5, 24))], ["y"], transB=1)
        return m.model((1, 2, 3, 4), "y")
    if kind == "reshape_zero_matmul_add":
        f = m.node("Reshape", ["x", m.const("s", np.array([0, -1], np.int64))], ["f"])
        mm = m.node("MatMul", [f, m.w("W", (24, 5))], ["mm"])
        m.node("Add", [mm, m.w("b", (5,))], ["y"])
        return m.model((1, 2, 3, 4), "y")
    if kind in ("gap_reshape_minus1_n", "gap_reshape_1_n", "gap_flatten"):
        pooled = m.node("GlobalAveragePool", ["x"], ["p"])
        target = {"gap_reshape_minus1_n": [-1, 2], "gap_reshape_1_n": [1, 2]}.get(kind)
        f = (m.node("Reshape", [pooled, m.const("s", np.array(target, np.int64))], ["f"])
             if target else m.node("Flatten", [pooled], ["f"], axis=1))
        m.node("Gemm", [f, m.w("W", (5, 2)), m.w("C", (5,))], ["y"], transB=1)
        return m.model((1, 2, 3, 4), "y")
    if kind == "vector_input_two_gemms":
        h = m.node("Gemm", ["x", m.w("W1", (7, 6)), m.w("C1", (7,))], ["h"], transB=1)
        r = m.node("Relu", [h], ["r"])
        m.node("Gemm", [r, m.w("W2", (7, 3))], ["y"])
        return m.model((1, 6), "y")
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["flatten_gemm_transB", "flatten_gemm_alpha_beta",
                                  "reshape_gemm_no_c", "reshape_zero_matmul_add",
                                  "gap_reshape_minus1_n", "gap_reshape_1_n", "gap_flatten",
                                  "vector_input_two_gemms"])
def test_gemm_float(kind):
    model = gemm_model(kind)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = inputs(shape)
    g = load_onnx(model)
    assert_float_matches(model, x, g)
    assert_float_matches(model, x, prepare(g))   # as convs


def test_reshape_to_rank1_vector_matmul():
    m = M()
    f = m.node("Reshape", ["x", m.const("s", np.array([24], np.int64))], ["f"])
    m.node("MatMul", [f, m.w("W", (24, 5))], ["y"])
    model = m.model((1, 2, 3, 4), "y")
    g = load_onnx(model)
    ev = onnx.reference.ReferenceEvaluator(model)
    for x in inputs((1, 2, 3, 4)):
        want = ev.run(None, {"x": x[None].astype(np.float32)})[0]
        got = run_float(g, x)[g.output].reshape(want.shape)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def misc_model(kind, opset=17):
    m = M()
    if kind == "conv_bn_relu":
        c = m.node("Conv", ["x", m.w("W", (4, 3, 3, 3))], ["c"], pads=[1, 1, 1, 1])
        bn = m.node("BatchNormalization",
                    [c, m.w("s", (4,)), m.w("b", (4,)), m.w("m", (4,)),
                     m.const("v", m.rng.uniform(0.5, 2, 4).astype(np.float32))], ["bn"],
                    epsilon=1e-3)
        m.node("Relu", [bn], ["y"])
    elif kind == "clip6":
        m.node("Clip", ["x", m.const("lo", np.float32(0)), m.const("hi", np.float32(0.5))], ["y"])
    elif kind == "clip_no_max":
        m.node("Clip", ["x", m.const("lo", np.float32(0))], ["y"])
    elif kind == "clip_opset6":
        m.node("Clip", ["x"], ["y"], min=0.0, max=0.25)
        return m.model((1, 3, 5, 5), "y", opset=6)
    elif kind == "maxpool":
        m.node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    elif kind == "maxpool_rect":
        m.node("MaxPool", ["x"], ["y"], kernel_shape=[2, 3], strides=[1, 2])
    elif kind == "avgpool":
        m.node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    # Windows of 9 and 25 elements: a conv in front takes the correction factor.
    elif kind == "avgpool_pad_counted":
        c = m.node("Conv", ["x", m.w("W", (3, 3, 1, 1))], ["c"])
        m.node("AveragePool", [c], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
               count_include_pad=1)
    elif kind == "avgpool_ceil_same_size":
        c = m.node("Conv", ["x", m.w("W", (3, 3, 1, 1))], ["c"])
        m.node("AveragePool", [c], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    elif kind == "gap_flatten":
        c = m.node("Conv", ["x", m.w("W", (3, 3, 1, 1))], ["c"])
        p = m.node("GlobalAveragePool", [c], ["p"])
        m.node("Flatten", [p], ["y"])
    elif kind == "add":
        c = m.node("Conv", ["x", m.w("W", (3, 3, 1, 1))], ["c"])
        r = m.node("Relu", ["x"], ["r"])
        m.node("Add", [c, r], ["y"])
    elif kind == "conv_add_bias":
        c = m.node("Conv", ["x", m.w("W", (4, 3, 3, 3))], ["c"])
        m.node("Add", [m.w("b", (1, 4, 1, 1)), c], ["y"])
    elif kind == "constant_node_weight":
        m.nodes.append(helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(
            m.rng.normal(0, 0.3, (2, 3, 1, 1)).astype(np.float32))))
        m.node("Conv", ["x", "W"], ["y"])
    else:
        raise KeyError(kind)
    return m.model((1, 3, 5, 5), "y", opset=opset)


MISC = ["conv_bn_relu", "clip6", "clip_no_max", "clip_opset6", "maxpool", "maxpool_rect",
        "avgpool", "avgpool_pad_counted", "avgpool_ceil_same_size", "gap_flatten", "add",
        "conv_add_bias", "constant_node_weight"]


@pytest.mark.parametrize("kind", MISC)
def test_misc_float(kind):
    model = misc_model(kind)
    g = load_onnx(model)
    x = inputs((1, 3, 5, 5))
    assert_float_matches(model, x, g)
    assert_float_matches(model, x, prepare(g))


def test_symbolic_batch_and_shapes():
    m = M()
    m.node("Conv", ["x", m.w("W", (4, 3, 3, 3))], ["y"], strides=[2, 2])
    model = m.model(("N", 3, 9, 8), "y")
    g = load_onnx(model)
    assert g.shape("x") == (3, 9, 8) and g.shape("y") == (4, 4, 3)
    assert_float_matches(model, inputs((1, 3, 9, 8)), g)


def test_load_from_path_and_bytes(tmp_path):
    model = conv_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for src in (path, str(path), model.SerializeToString()):
        g = load_onnx(src)
        assert [type(n) for n in g.nodes] == [Conv]


def test_run_float_single_and_batch():
    g = load_onnx(conv_model())
    x = inputs((1, 3, 7, 6))
    batch = run_float(g, x)["y"]
    assert np.allclose(run_float(g, x[1])["y"], batch[1])
    with pytest.raises(ValueError, match="shape"):
        run_float(g, x[:, :2])


# ---- rejections ------------------------------------------------------------------------

def rejected(model, match):
    with pytest.raises(UnsupportedOp, match=match):
        prepare(load_onnx(model))


def test_reject_unknown_op():
    m = M()
    m.node("Softmax", ["x"], ["y"], name="foo")
    rejected(m.model((1, 3, 4, 4), "y"),
             r"^1 node of unsupported ops:\n  Softmax \(1\): 'foo'\nsupported: Add, AveragePool")


def test_reject_other_domain():
    m = M()
    m.nodes.append(helper.make_node("Relu", ["x"], ["y"], name="r", domain="com.example"))
    model = m.model((1, 3, 4, 4), "y")
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    rejected(model, r"Relu \(domain com.example\) \(1\): 'r'")


def test_reject_lists_every_unsupported_op_and_node_once():
    m = M()
    x = m.node("Identity", ["x"], ["x_copy"], name="Identity_0")
    s = m.node("Softplus", [x], ["s"], name="/act/Softplus")
    for i in range(7):
        s = m.node("Softmax", [s], [f"sm{i}"], name=f"/head/Softmax_{i}")
    e = m.node("Erf", [s], ["e"], name="/gelu/Erf")
    m.node("Relu", [m.node("Conv", [e, m.w("W", (2, 3, 1, 1))], ["c"], dilations=[2, 2])],
           ["y"])
    with pytest.raises(UnsupportedOp) as err:
        load_onnx(m.model((1, 3, 4, 4), "y"))
    msg = str(err.value)
    assert msg.splitlines() == [
        "9 nodes of unsupported ops:",
        "  Softplus (1): '/act/Softplus'",
        "  Softmax (7): " + ", ".join(f"'/head/Softmax_{i}'" for i in range(5))
        + " ... and 2 more",
        "  Erf (1): '/gelu/Erf'",
        "supported: " + ", ".join(SUPPORTED_OPS)]
    assert "Identity" not in msg and "dilations" not in msg


def test_reject_dilations():
    m = M()
    m.node("Conv", ["x", m.w("W", (2, 3, 3, 3))], ["y"], dilations=[2, 2], name="Conv_3")
    rejected(m.model((1, 3, 8, 8), "y"),
             r"^Conv_3: dilations=\[2, 2\] is not supported \(only 1\)$")


def test_reject_names_op_when_name_does_not():
    m = M()
    m.node("Conv", ["x", m.w("W", (2, 3, 3, 3))], ["y"], dilations=[1, 2], name="c3")
    rejected(m.model((1, 3, 8, 8), "y"), r"^c3 \(Conv\): dilations=\[1, 2\] is not supported")


@pytest.mark.parametrize("shape, match", [
    ((2, 3, 4, 4), r"input 'x': batch size 2 is not supported \(only 1\)"),
    ((1, 3, 4), r"input 'x': rank 3 is not supported"),
    ((1, "C", 4, 4), r"only the batch dimension may be symbolic"),
])
def test_reject_input_shapes(shape, match):
    m = M()
    m.node("Relu", ["x"], ["y"])
    rejected(m.model(shape, "y"), match)


def test_reject_non_float_input_and_two_inputs():
    m = M()
    m.node("Add", ["x", "z"], ["y"])
    g = helper.make_graph(m.nodes, "t", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2]),
        helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    rejected(helper.make_model(g), r"model has 2 inputs \(x, z\)")
    m = M()
    m.node("Relu", ["x"], ["y"])
    g = helper.make_graph(m.nodes, "t", [
        helper.make_tensor_value_info("x", TensorProto.INT8, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, None)])
    rejected(helper.make_model(g), r"input 'x': element type INT8 is not supported")


@pytest.mark.parametrize("target", [[1, 3, 16], [3, -1], [2, -1], [1, 2, 24]])
def test_reject_reshape_not_flat(target):
    m = M()
    m.node("Reshape", ["x", m.const("s", np.array(target, np.int64))], ["y"], name="Reshape_0")
    rejected(m.model((1, 3, 4, 4), "y"),
             "^" + re.escape(f"Reshape_0: shape={target} is not supported (only a flat vector "
                             "[1, 48] or [48])"))


def test_reject_flatten_axis():
    m = M()
    m.node("Flatten", ["x"], ["y"], axis=2, name="fl")
    rejected(m.model((1, 3, 4, 4), "y"), r"fl \(Flatten\): axis=2 is not supported")


def test_reject_flatten_read_by_non_gemm():
    m = M()
    f = m.node("Flatten", ["x"], ["f"], name="fl")
    r = m.node("Relu", [f], ["r"])
    m.node("Gemm", [r, m.w("W", (48, 2))], ["y"])
    rejected(m.model((1, 3, 4, 4), "y"), r"fl \(Flatten\): the flattened \(3, 4, 4\) map is read "
                                         r"by Relu_1 ; only Gemm".replace(" ;", ";"))


def test_reject_bn_without_conv():
    m = M()
    r = m.node("Relu", ["x"], ["r"])
    m.node("BatchNormalization", [r, m.w("s", (3,)), m.w("b", (3,)), m.w("m", (3,)),
                                  m.const("v", np.ones(3, np.float32))], ["y"], name="bn")
    g = load_onnx(m.model((1, 3, 4, 4), "y"))
    with pytest.raises(UnsupportedOp, match=r"bn \(BatchNormalization\): a BatchNorm must follow "
                                            r"a Conv or Gemm.*comes from Relu_0"):
        fold_batchnorm(g)


def test_reject_bn_on_input_and_on_shared_conv():
    m = M()
    m.node("BatchNormalization", ["x", m.w("s", (3,)), m.w("b", (3,)), m.w("m", (3,)),
                                  m.const("v", np.ones(3, np.float32))], ["y"], name="bn")
    rejected(m.model((1, 3, 4, 4), "y"), "comes from the graph input")
    m = M()
    c = m.node("Conv", ["x", m.w("W", (3, 3, 1, 1))], ["c"], name="conv")
    bn = m.node("BatchNormalization", [c, m.w("s", (3,)), m.w("b", (3,)), m.w("m", (3,)),
                                       m.const("v", np.ones(3, np.float32))], ["bn"], name="bn")
    m.node("Add", [c, bn], ["y"])
    rejected(m.model((1, 3, 4, 4), "y"), r"output 'c' of conv \(Conv\) is also read elsewhere")


@pytest.mark.parametrize("build, match", [
    (lambda m: m.node("Clip", ["x", m.const("lo", np.float32(1)), m.const("hi", np.float32(-1))],
                      ["y"], name="cl"), r"cl \(Clip\): min=1.0 > max=-1.0 is not supported"),
    (lambda m: m.node("Clip", ["x", m.const("lo", np.float32(0)), m.const("hi", np.float32(-1))],
                      ["y"], name="cl"), r"cl \(Clip\): max=-1.0 is not supported \(only > 0\)"),
    (lambda m: m.node("Gemm", [m.node("Flatten", ["x"], ["f"]), m.w("W", (2, 48))], ["y"],
                      transA=1, name="g"), r"g \(Gemm\): transA=1 is not supported"),
    (lambda m: m.node("MatMul", [m.w("A", (1, 48)), m.node("Flatten", ["x"], ["f"])], ["y"],
                      name="mm"), r"mm \(MatMul\): a constant left operand"),
    (lambda m: m.node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                      name="ap"), r"ap \(AveragePool\): count_include_pad=0 with pads"),
    (lambda m: m.node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
                      name="ap"), r"ap \(AveragePool\): ceil_mode=1 is not supported"),
    (lambda m: m.node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], name="mp"), None),
    (lambda m: m.node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[2, 0, 0, 0],
                      name="mp"), r"mp \(MaxPool\): pads=\[2, 0, 0, 0\] is not supported"),
    (lambda m: m.node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2],
                      name="mp"), r"mp \(MaxPool\): dilations=\[2, 2\]"),
    (lambda m: m.node("Add", ["x", m.w("b", (3, 1, 1))], ["y"], name="a"),
     r"a \(Add\): adding a constant is only supported as the bias"),
    (lambda m: m.node("Add", [m.node("Conv", ["x", m.w("W", (3, 3, 1, 1))], ["c"]),
                              m.w("b", (1, 1, 4, 4))], ["y"], name="a"),
     r"a \(Add\): constant of shape \[1, 1, 4, 4\] varies within a channel"),
    (lambda m: m.node("Add", ["x", m.node("GlobalAveragePool", ["x"], ["p"])], ["y"], name="a"),
     r"a \(Add\): broadcasting \[1, 3, 4, 4\] \+ \[1, 3, 1, 1\] is not supported"),
    (lambda m: m.node("Conv", ["x", m.w("W", (2, 3, 3, 3))], ["y"], auto_pad="FOO", name="c"),
     r"c \(Conv\): auto_pad=FOO"),
    (lambda m: m.node("BatchNormalization", [m.node("Conv", ["x", m.w("W", (3, 3, 1, 1))], ["c"]),
                                             m.w("s", (3,)), m.w("b", (3,)), m.w("m", (3,)),
                                             m.w("v", (3,))], ["y"], training_mode=1, name="bn"),
     r"bn \(BatchNormalization\): training_mode=1"),
])
def test_reject_attributes(build, match):
    m = M()
    build(m)
    if match is None:   # the MaxPool Indices output: used as the graph output
        model = m.model((1, 3, 4, 4), "idx")
        match = r"mp \(MaxPool\): output 'idx' \(beyond the first\) is used"
    else:
        model = m.model((1, 3, 4, 4), "y")
    rejected(model, match)


def test_reject_non_power_of_two_pool_without_conv():
    m = M()
    r = m.node("Relu", ["x"], ["r"])
    p = m.node("AveragePool", [r], ["p"], kernel_shape=[3, 3], strides=[3, 3], name="ap")
    m.node("Add", [p, p], ["y"])
    g = lower_global_pool(load_onnx(m.model((1, 3, 6, 6), "y")))
    with pytest.raises(UnsupportedOp, match=r"ap \(AveragePool\): window of 9 elements is not a "
                                            r"power of two.*16/9"):
        fold_avgpool_correction(g)


# ---- folding passes --------------------------------------------------------------------

def test_bn_folding_is_exact_in_float():
    model = misc_model("conv_bn_relu")
    g = load_onnx(model)
    folded = fold_batchnorm(g)
    assert not any(isinstance(n, BatchNorm) for n in folded.nodes)
    assert any(isinstance(n, BatchNorm) for n in g.nodes)         # argument untouched
    x = inputs((1, 3, 5, 5), n=4)
    a, b = run_float(g, x)["y"], run_float(folded, x)["y"]
    assert np.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_bn_after_gemm_folds():
    m = M()
    f = m.node("Flatten", ["x"], ["f"])
    gm = m.node("Gemm", [f, m.w("W", (4, 12)), m.w("C", (4,))], ["g"], transB=1)
    m.node("BatchNormalization", [gm, m.w("s", (4,)), m.w("b", (4,)), m.w("m", (4,)),
                                  m.const("v", np.full(4, 0.7, np.float32))], ["y"])
    model = m.model((1, 3, 2, 2), "y")
    g = load_onnx(model)
    folded = fold_batchnorm(g)
    assert [type(n) for n in folded.nodes] == [Flatten, Gemm]
    x = inputs((1, 3, 2, 2))
    assert np.allclose(run_float(g, x)["y"], run_float(folded, x)["y"], rtol=1e-12, atol=1e-12)
    assert_float_matches(model, x, prepare(g))


def test_gemm_to_conv_uses_c_major_flatten_order():
    # One weight set per output: output n reads only element n of the flattened map,
    # i.e. channel n // 6, row (n % 6) // 3, column n % 3.
    n_out, c, h, w = 5, 2, 2, 3
    weight = np.zeros((n_out, c * h * w))
    for n in range(n_out):
        weight[n, n] = 1.0
    nodes = [Flatten("fl", "x", "f"), Gemm("fc", "f", "y", weight, np.zeros(n_out))]
    g = Graph.build("x", (c, h, w), nodes, "y")
    conv = gemm_to_conv(g)
    assert [type(n) for n in conv.nodes] == [Conv]
    k = conv.nodes[0].weight
    assert k.shape == (n_out, c, h, w)
    for n in range(n_out):
        assert k[n, n // 6, (n % 6) // 3, n % 3] == 1.0
    x = np.arange(c * h * w, dtype=float).reshape(c, h, w)
    assert run_float(conv, x)["y"].ravel().tolist() == list(range(n_out))


def test_identity_flatten_keeps_output_name():
    m = M()
    c = m.node("Conv", ["x", m.w("W", (4, 3, 5, 5))], ["c"])
    m.node("Flatten", [c], ["y"])
    g = load_onnx(m.model((1, 3, 5, 5), "y"))
    p = prepare(g)
    assert [type(n) for n in p.nodes] == [Conv] and p.output == "y" and p.nodes[0].output == "y"


def test_global_pool_correction_before_and_after():
    # Before: conv -> relu -> GAP 7x7: the conv is scaled by 64/49.
    m = M()
    c = m.node("Conv", ["x", m.w("W", (4, 3, 1, 1)), m.w("B", (4,))], ["c"], name="conv")
    r = m.node("Relu", [c], ["r"])
    m.node("GlobalAveragePool", [r], ["y"])
    model = m.model((1, 3, 7, 7), "y")
    g = load_onnx(model)
    p = prepare(g)
    pool = p.nodes[-1]
    assert isinstance(pool, AvgPool) and pool.kernel == (7, 7) and pool.divisor == 64
    assert np.allclose(p.nodes[0].weight, g.nodes[0].weight * 64 / 49)
    assert np.allclose(p.nodes[0].bias, g.nodes[0].bias * 64 / 49)
    assert_float_matches(model, inputs((1, 3, 7, 7)), p)
    # After: add -> GAP 3x3 -> flatten -> gemm: the classifier is scaled by 16/9.
    m = M()
    c = m.node("Conv", ["x", m.w("W", (3, 3, 1, 1))], ["c"])
    a = m.node("Add", [c, "x"], ["a"])
    gp = m.node("GlobalAveragePool", [a], ["gp"])
    f = m.node("Flatten", [gp], ["f"])
    m.node("Gemm", [f, m.w("Wf", (2, 3)), m.w("C", (2,))], ["y"], transB=1, name="fc")
    model = m.model((1, 3, 3, 3), "y")
    g = load_onnx(model)
    p = prepare(g)
    fc = next(n for n in p.nodes if n.name == "fc")
    assert np.allclose(fc.weight.reshape(2, 3), g.nodes[-1].weight * 16 / 9)
    assert next(n for n in p.nodes if isinstance(n, AvgPool)).divisor == 16
    assert_float_matches(model, inputs((1, 3, 3, 3)), p)


def test_correction_scales_clip_bound():
    m = M()
    c = m.node("Conv", ["x", m.w("W", (4, 3, 1, 1))], ["c"])
    r = m.node("Clip", [c, m.const("lo", np.float32(0)), m.const("hi", np.float32(0.2))], ["r"])
    m.node("AveragePool", [r], ["y"], kernel_shape=[3, 1], strides=[3, 1])
    model = m.model((1, 3, 6, 2), "y")
    p = prepare(load_onnx(model))
    assert p.nodes[1].max == pytest.approx(0.2 * 4 / 3)
    assert_float_matches(model, inputs((1, 3, 6, 2)), p)


def test_prepare_leaves_only_prepared_ops():
    m = M()
    c = m.node("Conv", ["x", m.w("W", (4, 3, 3, 3))], ["c"], pads=[1, 1, 1, 1])
    bn = m.node("BatchNormalization", [c, m.w("s", (4,)), m.w("b", (4,)), m.w("m", (4,)),
                                       m.const("v", np.ones(4, np.float32))], ["bn"])
    r = m.node("Relu", [bn], ["r"])
    gp = m.node("GlobalAveragePool", [r], ["gp"])
    f = m.node("Flatten", [gp], ["f"])
    m.node("Gemm", [f, m.w("Wf", (3, 4))], ["y"], transB=1)
    p = prepare(load_onnx(m.model((1, 3, 4, 4), "y")))
    assert all(isinstance(n, PREPARED_OPS) for n in p.nodes)
    assert [type(n).__name__ for n in p.nodes] == ["Conv", "Relu", "AvgPool", "Conv"]
    assert isinstance(p.nodes[1], Relu)
