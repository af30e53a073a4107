"""The digits CNN that ships with fxpgen (``fxpgen/models/digits``, made by
``scripts/train_digits.py``): a valid ONNX graph of supported ops whose float accuracy,
as ``onnx.reference.ReferenceEvaluator`` computes it, is the one meta.json records."""

import json

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from fxpgen.models import digits_assets

SUPPORTED_OPS = {"Conv", "BatchNormalization", "Relu", "Add", "MaxPool", "Flatten", "Gemm"}


@pytest.fixture(scope="module")
def assets():
    return digits_assets()


@pytest.fixture(scope="module")
def model(assets):
    return onnx.load(str(assets["model"]))


@pytest.fixture(scope="module")
def meta(assets):
    return json.loads(assets["meta"].read_text())


def test_assets_exist_and_are_small(assets):
    for key in ("model", "calib", "test_x", "test_y", "meta"):
        assert assets[key].is_file(), key
    total = sum(assets[k].stat().st_size for k in ("model", "calib", "test_x", "test_y", "meta"))
    assert total < 512 * 1024


def test_model_passes_checker(model):
    onnx.checker.check_model(model, full_check=True)


def test_ops_are_exactly_the_supported_set(model):
    assert {n.op_type for n in model.graph.node} == SUPPORTED_OPS
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


def test_interface(model):
    def dims(vi):
        return [d.dim_value for d in vi.type.tensor_type.shape.dim]

    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, dims(inp)) == ("input", [1, 1, 8, 8])
    assert (out.name, dims(out)) == ("logits", [1, 10])
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer)


def test_data_files(assets, meta):
    calib = np.load(assets["calib"])
    x = np.load(assets["test_x"])
    y = np.load(assets["test_y"])
    assert calib.dtype == np.float32 and calib.shape == (256, 1, 8, 8)
    assert x.dtype == np.float32 and x.shape == (meta["test_count"], 1, 8, 8)
    assert y.dtype == np.int64 and y.shape == (meta["test_count"],)
    assert set(np.unique(y)) == set(range(10))
    for a in (calib, x):
        # x = img * 255 / 4096 with img in 0..16: exact multiples of 255/4096 in [0, 255/256]
        img = a.astype(np.float64) * 4096 / 255
        assert np.array_equal(img, np.round(img)) and img.min() >= 0 and img.max() <= 16


def test_reference_accuracy_matches_meta(model, assets, meta):
    x = np.load(assets["test_x"])
    y = np.load(assets["test_y"])
    sess = ReferenceEvaluator(model)
    pred = np.array([int(np.argmax(sess.run(None, {"input": x[i:i + 1]})[0])) for i in range(len(x))])
    correct = int((pred == y).sum())
    assert correct == meta["test_correct"]
    assert correct / len(y) == meta["test_accuracy"]
    assert meta["test_accuracy"] >= 0.97
