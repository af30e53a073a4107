#!/usr/bin/env python
"""Train the digits CNN with Brevitas's fixed-point quantizers, export it as QCDQ ONNX,
compile it with fxpgen and check the golden model against Brevitas bit for bit.

The network is the shipped digits CNN (``scripts/train_digits.py``) without its
BatchNorms, which a quantization-aware model cannot fold without moving its weights off
their power-of-two grid; each conv has a bias instead:

    QuantIdentity (u8, the input)
    QuantConv2d 3x3 1->8 pad 1 + QuantReLU (u8)                       -> r1
    QuantConv2d 3x3 8->8 pad 1, + r1, QuantReLU (u8)                  -> r2
    MaxPool 2x2 stride 2
    QuantConv2d 3x3 8->16 pad 1 + QuantReLU (u8), flatten             -> 256
    QuantLinear 256->10, output quantizer (s8, narrow)                -> logits

Quantizers, chosen so that Brevitas computes fxpgen's integers (docs/qat.md):

- weights ``Int8WeightPerTensorFixedPoint`` (per tensor, power-of-two scale, narrow
  range [-127, 127]: fxpgen's signed format);
- activations ``Uint8ActPerTensorFixedPoint`` after each ReLU and on the input (the
  whole [0, 255]: fxpgen's unsigned format); the logits ``Int8ActPerTensorFixedPoint``
  with ``narrow_range=True`` (fxpgen never produces -128);
- biases ``Int32Bias`` (scale = input scale x weight scale: the accumulator's grid,
  so fxpgen's ``bias_quantize`` takes the integer unrounded);
- every quantizer rounds half to even (``torch.round``; ONNX's QuantizeLinear does
  too), as fxpgen's requantizer does, and saturates at its range.

Between quantizers everything is exact: a product of an 8-bit weight and an 8-bit
activation, summed over at most 256 taps, stays below 2**24 units of the accumulator's
grid, so float32 holds every partial sum exactly and Brevitas's ``round(acc * 2**-n)`` is
fxpgen's round-half-even shift. The checks: the golden model's output integers equal
Brevitas's quantized logits divided by their scale on the whole test set (the script
exits with status 1 otherwise), and the instruction-level simulator equals the golden
model on the first images.

Data and split as ``scripts/train_digits.py`` (scikit-learn's digits, no download).
Needs the ``train`` extra (torch, brevitas). Prints a JSON summary; with ``--out``
writes ``model.onnx`` (QCDQ) and ``summary.json`` there.

Usage:  python scripts/train_qat_digits.py [--out DIR] [--epochs 150] [--seed 0]
            [--images N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from brevitas import nn as qnn
from brevitas.export import export_onnx_qcdq
from brevitas.quant import (Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Int32Bias,
                            Uint8ActPerTensorFixedPoint)
from torch import nn

from fxpgen.app.flow import compile_model, run_compiled
from fxpgen.config import CoreConfig

OPSET = 17
CFG = CoreConfig(rows=8, cols=8)


class Int8ActNarrow(Int8ActPerTensorFixedPoint):
    """Signed 8-bit activations in [-127, 127], fxpgen's signed format."""

    narrow_range = True


def _conv(cin: int, cout: int) -> qnn.QuantConv2d:
    return qnn.QuantConv2d(cin, cout, 3, padding=1, bias=True,
                           weight_quant=Int8WeightPerTensorFixedPoint, bias_quant=Int32Bias)


def _relu() -> qnn.QuantReLU:
    return qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, return_quant_tensor=True)


class QatDigits(nn.Module):
    """The digits CNN with fixed-point quantizers (module docstring)."""

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=Uint8ActPerTensorFixedPoint, return_quant_tensor=True)
        self.conv1, self.relu1 = _conv(1, 8), _relu()
        self.conv2, self.relu2 = _conv(8, 8), _relu()
        self.pool = nn.MaxPool2d(2, 2)
        self.conv3, self.relu3 = _conv(8, 16), _relu()
        self.fc = qnn.QuantLinear(256, 10, bias=True, weight_quant=Int8WeightPerTensorFixedPoint,
                                  bias_quant=Int32Bias, output_quant=Int8ActNarrow,
                                  return_quant_tensor=True)

    def forward(self, x):
        r1 = self.relu1(self.conv1(self.inp(x)))
        r2 = self.relu2(self.conv2(r1) + r1.value)
        r3 = self.relu3(self.conv3(self.pool(r2)))
        return self.fc(torch.flatten(r3, 1))


def load_split():
    """Train and test images in [0, 255/256] (N, 1, 8, 8) float32 and their labels, as
    ``scripts/train_digits.py`` splits them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float64) * 255.0 / 4096.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return train_test_split(x, d.target.astype(np.int64), test_size=0.2, random_state=0,
                            stratify=d.target)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    """Adam with a cosine schedule, cross-entropy, random +-1 pixel shifts."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for epoch in range(epochs):
        total = 0.0
        for idx in np.array_split(rng.permutation(len(x)), max(len(x) // 64, 1)):
            dy, dx = rng.integers(-1, 2, 2)
            batch = torch.roll(xt[idx], (int(dy), int(dx)), (2, 3))
            loss = nn.functional.cross_entropy(model(batch).value, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}", file=sys.stderr, flush=True)
    model.eval()


def brevitas_ints(model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Brevitas's quantized logits as integers (value / scale) and the scale."""
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    scale = float(out.scale)
    ints = (out.value / out.scale).double().numpy()
    if not np.array_equal(ints, np.round(ints)):
        raise AssertionError("Brevitas's quantized logits are not integers times their scale")
    return np.round(ints).astype(np.int64), scale


class _Logits(nn.Module):
    """The model's quantized logits as one tensor, the exported graph's one output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).value


def export(model: nn.Module, path: Path) -> None:
    """QCDQ ONNX by Brevitas's TorchScript exporter (the dynamo one refuses Int32Bias)."""
    export_onnx_qcdq(_Logits(model).eval(), args=torch.zeros(1, 1, 8, 8), export_path=str(path),
                     opset_version=OPSET, dynamo=False)


def round_trip(model: nn.Module, x: np.ndarray, y: np.ndarray, workdir: Path,
               isa_images: int = 8) -> dict:
    """Export, compile without calibration data and compare: the summary dict."""
    export(model, workdir / "model.onnx")
    compile_model(workdir / "model.onnx", None, CFG, workdir / "program")
    want, scale = brevitas_ints(model, x)
    gold = run_compiled(workdir / "program", x, "golden")["outputs"].reshape(len(x), -1)
    isa = run_compiled(workdir / "program", x[:isa_images], "isa")["outputs"].reshape(-1, 10)
    return {
        "images": int(len(x)),
        "golden_equals_brevitas": bool(np.array_equal(gold, want)),
        "mismatched_images": int(np.sum(np.any(gold != want, axis=1))),
        "isa_equals_golden": bool(np.array_equal(isa, gold[:isa_images])),
        "logit_scale": scale,
        "brevitas_accuracy": float(np.mean(np.argmax(want, axis=1) == y)),
        "fxpgen_accuracy": float(np.mean(np.argmax(gold, axis=1) == y)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write model.onnx and summary.json here")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, help="test images to check (default: all)")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    # The network is tiny: more threads only add synchronisation.
    torch.set_num_threads(1)
    x_tr, x_te, y_tr, y_te = load_split()
    x_te, y_te = x_te[:a.images], y_te[:a.images]
    model = QatDigits()
    train(model, x_tr, y_tr, a.epochs, a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        summary = {"epochs": a.epochs, "seed": a.seed, **round_trip(model, x_te, y_te, work)}
        if a.out:
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "model.onnx").write_bytes((work / "model.onnx").read_bytes())
            (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0 if summary["golden_equals_brevitas"] and summary["isa_equals_golden"] else 1


if __name__ == "__main__":
    sys.exit(main())
