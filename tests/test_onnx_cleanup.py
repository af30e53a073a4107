"""The ONNX clean-up pass on graphs written as ``torch.onnx.export`` writes them: the
cleaned graph computes what the original does (onnx's reference evaluator on both), it
holds only ops the importer supports, and it compiles end to end to the same program a
hand-written equivalent compiles to."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from fxpgen.app.flow import compile_model, load_compiled
from fxpgen.compiler.golden import predict, quantize_input, run_golden_batch
from fxpgen.compiler.onnx_cleanup import cleanup
from fxpgen.compiler.onnx_frontend import SUPPORTED_OPS, UnsupportedOp, load_onnx
from fxpgen.compiler.quantize import sqnr_db
from fxpgen.config import CoreConfig
from fxpgen.models.zoo import TestModel, reference

IMG = (3, 8, 8)


def i64(*v):
    return np.array(v, np.int64)


def features(m: TestModel, weight_identity: bool = False) -> str:
    """Conv -> Relu, the part every case shares (weights drawn first, in one order)."""
    w = m.w("W", (6, 3, 3, 3))
    if weight_identity:
        w = m.node("Identity", [w], ["W_copy"], name="Identity_0")
    c = m.node("Conv", ["x", w, m.w("B", (6,), 0.1)], ["c"], pads=[1, 1, 1, 1],
               name="/features/conv/Conv")
    return m.node("Relu", [c], ["r"], name="/features/relu/Relu")


def classifier(m: TestModel, v: str) -> str:
    return m.node("Gemm", [v, m.w("FW", (4, 6)), m.w("FB", (4,), 0.1)], ["y"], transB=1,
                  name="/classifier/Gemm")


def torch_flatten(m: TestModel, p: str) -> str:
    """``torch.flatten(p, 1)`` as the TorchScript exporter writes it."""
    s = m.node("Shape", [p], ["shape"], name="/Shape")
    n = m.node("Gather", [s, m.const("zero", np.int64(0))], ["n"], axis=0, name="/Gather")
    u = m.node("Unsqueeze", [n, m.const("ax0", i64(0))], ["n1"], name="/Unsqueeze")
    minus1 = m.node("Constant", [], ["minus1"], value=helper.make_tensor(
        "minus1", TensorProto.INT64, [1], [-1]), name="/Constant")
    cat = m.node("Concat", [u, minus1], ["target"], axis=0, name="/Concat")
    return m.node("Reshape", [p, cat], ["flat"], name="/Reshape")


def channel_reshape(m: TestModel, p: str) -> str:
    """Reshape to (N, C) from Cast/Div/Slice arithmetic on the shape."""
    s = m.node("Shape", [p], ["shape"], name="/Shape")
    ch = m.node("Gather", [s, m.const("one", np.int64(1))], ["ch"], axis=0, name="/Gather")
    cf = m.node("Cast", [ch], ["cf"], to=TensorProto.FLOAT, name="/Cast")
    half = m.node("Div", [cf, m.const("two", np.float32(2))], ["half"], name="/Div")
    hi = m.node("Cast", [half], ["hi"], to=TensorProto.INT64, name="/Cast_1")
    cc = m.node("Mul", [hi, m.const("two_i", np.int64(2))], ["cc"], name="/Mul")
    u = m.node("Unsqueeze", [cc, m.const("ax0", i64(0))], ["c1"], name="/Unsqueeze")
    n = m.node("Slice", [s, m.const("s0", i64(0)), m.const("s1", i64(1))], ["n"],
               name="/Slice")
    cat = m.node("Concat", [n, u], ["target"], axis=0, name="/Concat")
    return m.node("Reshape", [p, cat], ["flat"], name="/Reshape")


def reduce_mean(m: TestModel, r: str, keepdims: int, axes_input: bool, axes=(2, 3)) -> str:
    if axes_input:
        return m.node("ReduceMean", [r, m.const("axes", i64(*axes))], ["p"], keepdims=keepdims,
                      name="/ReduceMean")
    return m.node("ReduceMean", [r], ["p"], axes=list(axes), keepdims=keepdims,
                  name="/ReduceMean")


def exported(kind: str, seed: int):
    """(exporter-style model, the same network written with supported ops only)."""
    m, plain = TestModel(seed), TestModel(seed)
    opset, batch = 17, 1
    r = features(m, weight_identity=kind == "identity_weight")
    pr = features(plain)
    pooled = plain.node("GlobalAveragePool", [pr], ["p"])
    classifier(plain, plain.node("Flatten", [pooled], ["flat"]))
    if kind in ("identity_weight", "identity_activation", "dropout", "dropout_training_inputs"):
        if kind == "identity_activation":
            r = m.node("Identity", [r], ["r_copy"], name="Identity_1")
        elif kind == "dropout":
            r = m.node("Dropout", [r], ["d"], name="/dropout/Dropout")
        elif kind == "dropout_training_inputs":
            r = m.node("Dropout", [r, m.const("ratio", np.float32(0.5)),
                                   m.const("training", np.bool_(False))], ["d", "mask"],
                       name="/dropout/Dropout")
        classifier(m, m.node("Flatten", [m.node("GlobalAveragePool", [r], ["p"])], ["flat"]))
    elif kind == "shape_flatten":
        batch = "N"
        classifier(m, torch_flatten(m, m.node("GlobalAveragePool", [r], ["p"])))
    elif kind == "shape_cast_div":
        classifier(m, channel_reshape(m, m.node("GlobalAveragePool", [r], ["p"])))
    elif kind == "reducemean_keep1_attr":
        classifier(m, m.node("Flatten", [reduce_mean(m, r, 1, False)], ["flat"]))
    elif kind == "reducemean_keep0_attr":
        classifier(m, reduce_mean(m, r, 0, False))
    elif kind == "reducemean_keep0_input":
        opset = 18
        classifier(m, reduce_mean(m, r, 0, True, axes=(-2, -1)))
    elif kind == "reducemean_keep1_input":
        opset = 18
        classifier(m, torch_flatten(m, reduce_mean(m, r, 1, True)))
    else:
        raise KeyError(kind)
    out = m.model((batch,) + IMG, "y", opset=opset)
    out.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    return out, plain.model((1,) + IMG, "y")


KINDS = ["identity_weight", "identity_activation", "dropout", "dropout_training_inputs",
         "shape_flatten", "shape_cast_div", "reducemean_keep1_attr", "reducemean_keep0_attr",
         "reducemean_keep0_input", "reducemean_keep1_input"]


@pytest.mark.parametrize("kind", KINDS)
def test_cleaned_graph_computes_the_same(kind, seed):
    model, _ = exported(kind, seed)
    cleaned = cleanup(model)
    assert {n.op_type for n in cleaned.graph.node} <= set(SUPPORTED_OPS)
    read = {i for n in cleaned.graph.node for i in n.input}
    assert {t.name for t in cleaned.graph.initializer} <= read
    assert cleaned.graph.output[0].name == "y"
    x = np.random.default_rng(seed).uniform(-1, 1, (4, 1) + IMG).astype(np.float32)
    before, after = ReferenceEvaluator(model), ReferenceEvaluator(cleaned)
    for xi in x:
        want = before.run(None, {"x": xi})[0]
        got = after.run(None, {"x": xi})[0]
        assert got.shape == want.shape
        # Only the mean's summation order may differ (ReduceMean vs GlobalAveragePool).
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_exported_graph_compiles_like_its_plain_twin(kind, seed, tmp_path):
    model, plain = exported(kind, seed)
    rng = np.random.default_rng(seed + 1)
    calib, test = rng.uniform(0, 1, (16,) + IMG), rng.uniform(0, 1, (8,) + IMG)
    compile_model(model, calib, CoreConfig(), tmp_path / "exported")
    compile_model(plain, calib, CoreConfig(), tmp_path / "plain")
    (prog, qg), (twin_prog, twin) = (load_compiled(tmp_path / d) for d in ("exported", "plain"))
    assert prog.words == twin_prog.words and prog.consts == twin_prog.consts
    xq = quantize_input(qg, test)
    np.testing.assert_array_equal(run_golden_batch(qg, xq)[qg.output],
                                  run_golden_batch(twin, xq)[twin.output])
    ref = reference(model, test.astype(np.float32))
    got = predict(qg, test).reshape(ref.shape)
    step = 2.0 ** -qg.tensor(qg.output).fmt.fl
    # A few layers of 8-bit rounding: the error stays near the output's step and far
    # below the signal.
    assert np.abs(got - ref).max() <= 8 * step
    assert sqnr_db(ref, got) > 20


def test_graph_with_nothing_to_clean_is_unchanged(seed):
    m = TestModel(seed)
    classifier(m, m.node("Flatten", [m.node("GlobalAveragePool", [features(m)], ["p"])],
                         ["flat"]))
    model = m.model((1,) + IMG, "y")
    assert cleanup(model).SerializeToString() == model.SerializeToString()


def test_training_dropout_stays_and_is_reported(seed):
    m = TestModel(seed)
    d = m.node("Dropout", [features(m), m.const("ratio", np.float32(0.5)),
                           m.const("training", np.bool_(True))], ["d"], name="/dropout/Dropout")
    m.node("Relu", [d], ["y"], name="/relu/Relu")
    model = m.model((1,) + IMG, "y")
    assert [n.op_type for n in cleanup(model).graph.node].count("Dropout") == 1
    with pytest.raises(UnsupportedOp, match=r"Dropout \(1\): '/dropout/Dropout'"):
        load_onnx(model)


def test_identity_to_output_of_the_input_stays(seed):
    m = TestModel(seed)
    m.node("Identity", ["x"], ["y"], name="copy")
    model = m.model((1,) + IMG, "y")
    assert [n.name for n in cleanup(model).graph.node] == ["copy"]


def test_unnamed_nodes_keep_their_original_index_names(seed):
    m = TestModel(seed)
    w = m.node("Identity", [m.w("W", (6, 3, 3, 3))], ["W_copy"], name="")
    m.node("Conv", ["x", w], ["c"], name="")
    m.node("Softmax", ["c"], ["y"], name="")
    with pytest.raises(UnsupportedOp, match=r"Softmax \(1\): 'Softmax_2'"):
        load_onnx(m.model((1,) + IMG, "y"))


def test_dropped_constants_leave_the_inputs_too(seed):
    """Older exporters list initializers among the graph inputs as well."""
    model, _ = exported("dropout_training_inputs", seed)
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in model.graph.initializer)
    cleaned = cleanup(model)
    assert "ratio" not in {i.name for i in cleaned.graph.input}
    assert [type(n).__name__ for n in load_onnx(model).nodes] == [
        "Conv", "Relu", "GlobalAvgPool", "Flatten", "Gemm"]


def torch_bn(m: TestModel, x: str, c: int, name: str, dynamo: bool) -> str:
    """``nn.BatchNorm2d`` in eval mode as exported: the TorchScript exporter writes
    ``training_mode=0`` and ``momentum``, the dynamo one ``momentum`` only."""
    attrs = {"epsilon": 1e-5, "momentum": 0.9}
    if not dynamo:
        attrs["training_mode"] = 0
    return m.node("BatchNormalization", [
        x, m.const(f"{name}.weight", m.rng.uniform(0.5, 1.5, c).astype(np.float32)),
        m.w(f"{name}.bias", (c,), 0.1), m.w(f"{name}.running_mean", (c,), 0.1),
        m.const(f"{name}.running_var", m.rng.uniform(0.5, 2, c).astype(np.float32))],
        [f"{name}_out"], name=f"/{name}/BatchNormalization", **attrs)


def densenet(seed: int, dynamo: bool):
    """torchvision's DenseNet features as exported: stem conv -> relu -> max pool, two
    dense layers (BN -> ReLU -> 1x1 conv -> ReLU -> 3x3 conv on the Concat of all
    earlier features), the final BN on the block's Concat, ReLU, pooling, Linear. The
    TorchScript exporter keeps the first layer's one-input Concat; the dynamo one drops
    it, so that BN reads the MaxPool."""
    m = TestModel(seed)
    c = m.node("Conv", ["x", m.w("W0", (8, 3, 3, 3)), m.w("B0", (8,), 0.1)], ["c0"],
               pads=[1, 1, 1, 1], name="/features/conv0/Conv")
    p = m.node("MaxPool", [m.node("Relu", [c], ["r0"], name="/features/relu0/Relu")], ["p0"],
               kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="/features/pool0/MaxPool")
    features, width = [p], 8
    for k in (1, 2):
        cat = (features[0] if dynamo and len(features) == 1 else
               m.node("Concat", list(features), [f"cat{k}"], axis=1, name=f"/layer{k}/Concat"))
        n1 = torch_bn(m, cat, width, f"layer{k}.norm1", dynamo)
        r1 = m.node("Relu", [n1], [f"r{k}a"], name=f"/layer{k}/relu1/Relu")
        c1 = m.node("Conv", [r1, m.w(f"W{k}a", (8, width, 1, 1)), m.w(f"B{k}a", (8,), 0.1)],
                    [f"c{k}a"], name=f"/layer{k}/conv1/Conv")
        r2 = m.node("Relu", [c1], [f"r{k}b"], name=f"/layer{k}/relu2/Relu")
        features.append(m.node("Conv", [r2, m.w(f"W{k}b", (4, 8, 3, 3))], [f"c{k}b"],
                               pads=[1, 1, 1, 1], name=f"/layer{k}/conv2/Conv"))
        width += 4
    cat = m.node("Concat", features, ["block"], axis=1, name="/block/Concat")
    r = m.node("Relu", [torch_bn(m, cat, width, "norm5", dynamo)], ["r5"], name="/Relu")
    flat = m.node("Flatten", [m.node("GlobalAveragePool", [r], ["gap"], name="/GlobalAveragePool")],
                  ["flat"], name="/Flatten")
    m.node("Gemm", [flat, m.w("FW", (4, width)), m.w("FB", (4,), 0.1)], ["y"], transB=1,
           name="/classifier/Gemm")
    return m.model((1,) + IMG, "y", opset=18 if dynamo else 17)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_lone_batchnorm_becomes_a_depthwise_conv(dynamo, seed, tmp_path):
    model = densenet(seed, dynamo)
    cleaned = cleanup(model)
    bns = [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]
    convs = {n.name: n for n in cleaned.graph.node if n.op_type == "Conv"}
    assert "BatchNormalization" not in {n.op_type for n in cleaned.graph.node}
    for name, c in zip(bns, (8, 12, 16)):
        attrs = {a.name: helper.get_attribute_value(a) for a in convs[name].attribute}
        assert attrs["group"] == c and attrs["kernel_shape"] == [1, 1]
    x = np.random.default_rng(seed).uniform(-1, 1, (4, 1) + IMG).astype(np.float32)
    before, after = ReferenceEvaluator(model), ReferenceEvaluator(cleaned)
    for xi in x:
        np.testing.assert_allclose(after.run(None, {"x": xi})[0],
                                   before.run(None, {"x": xi})[0], rtol=1e-4, atol=1e-5)
    rng = np.random.default_rng(seed + 1)
    calib, test = rng.uniform(0, 1, (16,) + IMG), rng.uniform(0, 1, (8,) + IMG)
    compile_model(model, calib, CoreConfig(), tmp_path)
    _, qg = load_compiled(tmp_path)
    ref = reference(model, test.astype(np.float32)).reshape(-1)
    got = predict(qg, test).reshape(-1)
    # A per-channel scale quantized with one weight format per layer costs more than a
    # folded BN (SQNR 6-35 dB over seeds), so only the direction is checked: a wrong
    # scale, bias or channel order gives a cosine far below 0.9.
    assert ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got)) > 0.9


def test_batchnorm_after_a_conv_or_an_activation_stays(seed):
    """Only a BN after a Concat or a pooling is rewritten: after a Conv the fold pass
    folds it, and elsewhere (after a Relu, or a Conv read twice) the fold pass's error
    names it."""
    m = TestModel(seed)
    c = m.node("Conv", ["x", m.w("W", (6, 3, 3, 3))], ["c"], pads=[1, 1, 1, 1], name="/conv/Conv")
    b1 = torch_bn(m, c, 6, "bn1", dynamo=False)
    r = m.node("Relu", [b1], ["r"], name="/relu/Relu")
    b2 = torch_bn(m, r, 6, "bn2", dynamo=False)
    p = m.node("AveragePool", [b2], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="/pool/AveragePool")
    b3 = torch_bn(m, p, 6, "bn3", dynamo=True)
    m.node("Relu", [b3], ["y"], name="/relu2/Relu")
    cleaned = cleanup(m.model((1,) + IMG, "y"))
    assert [(n.op_type, n.name) for n in cleaned.graph.node] == [
        ("Conv", "/conv/Conv"), ("BatchNormalization", "/bn1/BatchNormalization"),
        ("Relu", "/relu/Relu"), ("BatchNormalization", "/bn2/BatchNormalization"),
        ("AveragePool", "/pool/AveragePool"), ("Conv", "/bn3/BatchNormalization"),
        ("Relu", "/relu2/Relu")]
