"""Fidelity of fxpgen's shift-only fixed point next to onnxruntime's static int8
quantization, both against the float model.

    python -m bench.fidelity [--models digits,resnet18,mobilenetv2] [--test 128]

For each model, one calibration set feeds the quantizers: fxpgen's default
(``quantize``: F8Net's std rule, per-layer weight formats, power-of-two scales,
shift-only requantization), fxpgen with its finest options (grid-searched activation
and weight formats, per-channel weight formats) and onnxruntime's ``quantize_static`` (QDQ format, int8
weights per output channel, uint8 activations, float scales, MinMax calibration, the
settings its documentation recommends for CNNs on CPU). Each output is compared with
the float model's (onnxruntime, the model as is) on a test set: cosine similarity
(per image, averaged), SQNR over the whole test set, top-1 agreement with float, and
top-1 accuracy where there are labels.

Models: the shipped digits CNN (its calibration set, 256 images, and its 360 labelled
test images) and the zoo's ResNet-18 and MobileNetV2 shapes at 32x32 with random
weights (``fxpgen/models/zoo.py``; 64 uniform [0, 1) calibration images, ``--test``
test images). Writes ``bench/results/fidelity.json`` and ``fidelity.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from fxpgen.compiler.golden import predict
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.quantize import quantize, sqnr_db
from fxpgen.models import digits_assets, zoo

RESULTS = Path(__file__).resolve().parent / "results"

#: fxpgen's quantizer options measured, by result key, with their table labels.
FXPGEN_VARIANTS = {
    "fxpgen": ({}, "fxpgen default (std rule, per-layer weights)"),
    "fxpgen_grid_per_channel": ({"mode": "grid", "weight_mode": "grid", "per_channel": True},
                                "fxpgen grid formats, per-channel weights"),
}


def dataset(name: str, n_test: int) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray, np.ndarray | None]:
    """The model, calibration images, test images and test labels (None if unlabelled)."""
    if name == "digits":
        a = digits_assets()
        return onnx.load(a["model"]), np.load(a["calib"]), np.load(a["test_x"]), np.load(a["test_y"])
    rng = np.random.default_rng(0)
    model = getattr(zoo, name)()
    shape = (3, 32, 32)
    return model, rng.uniform(0, 1, (64,) + shape), rng.uniform(0, 1, (n_test,) + shape), None


def run_ort(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    """Outputs (N, K) of an ONNX model on onnxruntime's CPU provider, one image at a time."""
    import onnxruntime as ort
    src = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.stack([sess.run(None, {name: img[None].astype(np.float32)})[0].reshape(-1) for img in x])


def ort_int8(model: onnx.ModelProto, calib: np.ndarray, workdir: Path) -> str:
    """Path of onnxruntime's static int8 QDQ model (per-channel weights) of ``model``."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{model.graph.input[0].name: img[None].astype(np.float32)}
                               for img in calib])

        def get_next(self):
            return next(self.items, None)

    src, dst = workdir / "float.onnx", workdir / "int8.onnx"
    onnx.save(model, src)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return str(dst)


def metrics(ref: np.ndarray, test: np.ndarray, labels: np.ndarray | None) -> dict:
    """Cosine (mean per image), SQNR (dB, whole set), top-1 agreement with ``ref`` and
    accuracy (None without labels) of outputs ``test`` (N, K)."""
    norm = np.linalg.norm(ref, axis=1) * np.linalg.norm(test, axis=1)
    cos = np.where(norm > 0, np.sum(ref * test, axis=1) / np.where(norm > 0, norm, 1), 0.0)
    pred = np.argmax(test, axis=1)
    return {"cosine": float(np.mean(cos)), "sqnr_db": sqnr_db(ref, test),
            "top1_agreement": float(np.mean(pred == np.argmax(ref, axis=1))),
            "accuracy": None if labels is None else float(np.mean(pred == labels))}


def measure(name: str, n_test: int) -> dict:
    model, calib, test, labels = dataset(name, n_test)
    ref = run_ort(model, test)
    graph = load_onnx(model)
    out = {"calibration_images": int(len(calib)), "test_images": int(len(test)),
           "float_accuracy": None if labels is None else float(np.mean(np.argmax(ref, 1) == labels))}
    for key, (options, _) in FXPGEN_VARIANTS.items():
        qg, _ = quantize(graph, calib, **options)
        out[key] = metrics(ref, predict(qg, test).reshape(len(test), -1), labels)
    with tempfile.TemporaryDirectory() as tmp:
        out["onnxruntime_int8"] = metrics(ref, run_ort(ort_int8(model, calib, Path(tmp)), test), labels)
    return out


def markdown(results: dict) -> str:
    def acc(v):
        return "-" if v is None else f"{v:.4f}"
    lines = ["| model | quantizer | cosine to float | SQNR (dB) | top-1 agreement | accuracy (float) |",
             "|---|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        rows = [(key, label) for key, (_, label) in FXPGEN_VARIANTS.items()]
        for key, label in rows + [("onnxruntime_int8", "onnxruntime int8 QDQ, per-channel")]:
            m = r[key]
            lines.append(f"| {name} | {label} | {m['cosine']:.4f} | {m['sqnr_db']:.1f} | "
                         f"{m['top1_agreement']:.3f} | {acc(m['accuracy'])} ({acc(r['float_accuracy'])}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="digits,resnet18,mobilenetv2")
    p.add_argument("--test", type=int, default=128, help="test images of the unlabelled models")
    a = p.parse_args(argv)
    results = {name: measure(name, a.test) for name in a.models.split(",")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fidelity.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "fidelity.md").write_text(markdown(results))
    sys.stdout.write(markdown(results))
    return results


if __name__ == "__main__":
    main()
