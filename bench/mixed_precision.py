"""Mixed-precision weights on the shipped digits model (docs/mixed_precision.md).

The weight-width search (:func:`fxpgen.compiler.mixed_precision.search_weight_bits`)
with an accuracy budget on half the test images (every other one) and with
output-SQNR budgets on the calibration set, per layer and per channel: the widths
found, bits a weight, weight memory against float32 and int8, output SQNR on the
calibration set, and the golden model's accuracy on the other half of the test
images (which no search sees) and on all of them. With ``--rules``, the rule for narrow weight formats: every
layer at 6, 4 or 2 bits with the grid search at that width (the quantizer's rule)
against F8Net's std rule with its constant scaled by the range, ``40 * (2**(b-1) - 1)
/ 127`` (substituted for the quantizer's weight-format function for the run), on the
digits model and on the zoo's ``resnet18`` and ``mobilenetv2`` (32x32, random
weights, 4 uniform calibration images).

    python -m bench.mixed_precision
    python -m bench.mixed_precision --rules

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

from fxpgen import numerics
from fxpgen.compiler import quantize as quantizer
from fxpgen.compiler.fold import prepare
from fxpgen.compiler.golden import predict
from fxpgen.compiler.graph import run_float
from fxpgen.compiler.mixed_precision import search_weight_bits
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.models import digits_assets, zoo

SQNR_BUDGETS = (0.5, 1.0, 2.0, 3.0, 6.0)


def digits():
    a = digits_assets()
    return load_onnx(str(a["model"])), np.load(a["calib"]), np.load(a["test_x"]), np.load(a["test_y"])


def accuracy(qg, x, y) -> float:
    return float(np.mean(predict(qg, x).reshape(len(x), -1).argmax(axis=1) == y))


def search_table() -> list[str]:
    g, calib, x, y = digits()
    scores = lambda f: f"{f(x[1::2], y[1::2]):.4f} | {f(x, y):.4f}"      # noqa: E731
    lines = [f"float accuracy: held-out half | all {scores(lambda a, b: _float_accuracy(g, a, b))}", "",
             "| budget | weights | conv1 | conv2 | conv3 | fc | bits a weight | vs float | vs 8-bit "
             "| output SQNR (dB) | held-out accuracy | test accuracy | measurements | search (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    runs = [(f"{b:g} dB SQNR", {"budget": b}) for b in SQNR_BUDGETS]
    runs.insert(0, ("1 point accuracy (searched half)",
                    {"budget": 1.0, "labels": y[0::2], "eval_x": x[0::2]}))
    for per_channel in (False, True):
        qg, report = quantizer.quantize(g, calib, per_channel=per_channel)
        lines.append(_row("all 8-bit", per_channel, report, scores(lambda a, b: accuracy(qg, a, b)),
                          None, None))
        for label, kw in runs:
            t0 = time.monotonic()
            widths, search = search_weight_bits(g, calib, per_channel=per_channel, **kw)
            seconds = time.monotonic() - t0
            qg, report = quantizer.quantize(g, calib, per_channel=per_channel, weight_bits=widths)
            lines.append(_row(label, per_channel, report, scores(lambda a, b: accuracy(qg, a, b)),
                              search, seconds))
    return lines


def _float_accuracy(g, x, y) -> float:
    return float(np.mean(run_float(prepare(g), x)[g.output].reshape(len(x), -1).argmax(1) == y))


def _row(label, per_channel, report, acc: str, search, seconds) -> str:
    m = report["weight_memory"]
    widths = [report["layers"][n]["weight_bits"] for n in ("conv1", "conv2", "conv3", "fc")]
    tail = f"{search['measurements']} | {seconds:.2f}" if search else "- | -"
    return (f"| {label} | {'per channel' if per_channel else 'per layer'} | "
            + " | ".join(map(str, widths))
            + f" | {m['bits'] / m['weights']:.2f} | {m['vs_float']:.2f}x | {m['vs_int8']:.2f}x | "
            f"{report['output_sqnr_db']:.2f} | {acc} | {tail} |")


@contextlib.contextmanager
def scaled_std_rule():
    """The quantizer's narrow weight formats by F8Net's std rule, its constant 40
    scaled by the width's range, instead of the grid search."""
    grid = quantizer._weight_fl

    def rule(w, per_channel, mode, fine, bits=8):
        if bits == 8:
            return grid(w, per_channel, mode, fine, bits)
        groups = w.reshape(len(w), -1) if per_channel else w.reshape(1, -1)
        c = 40.0 * numerics.weight_range(bits)[1] / numerics.SIGNED_MAX
        fls = [max([f for f in range(quantizer._fl_limit(v, True, fine) + 1)
                    if float(np.std(v)) * 2.0 ** f <= c] or [0]) for v in groups]
        return np.broadcast_to(np.asarray(fls, np.int64), (len(w),)).copy()
    quantizer._weight_fl = rule
    try:
        yield
    finally:
        quantizer._weight_fl = grid


def rules_table() -> list[str]:
    g, calib, x, y = digits()
    nets = [("digits", g, calib)]
    for name in ("resnet18", "mobilenetv2"):
        z = load_onnx(getattr(zoo, name)())
        nets.append((name, z, np.random.default_rng(0).uniform(0, 1, (4,) + z.shape(z.input))))
    lines = ["| network | weights | width | grid: output SQNR (dB) | scaled std: output SQNR (dB) "
             "| grid: test accuracy | scaled std: test accuracy |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, net, cal in nets:
        widths = quantizer.graph_weight_layers(net)
        for per_channel in (False, True):
            for bits in (6, 4, 2):
                cells = []
                for ctx in (contextlib.nullcontext(), scaled_std_rule()):
                    with ctx:
                        qg, report = quantizer.quantize(net, cal, per_channel=per_channel,
                                                        weight_bits=dict.fromkeys(widths, bits))
                    cells.append((report["output_sqnr_db"],
                                  accuracy(qg, x, y) if name == "digits" else None))
                acc = [f"{a:.4f}" if a is not None else "-" for _, a in cells]
                lines.append(f"| {name} | {'per channel' if per_channel else 'per layer'} | {bits} | "
                             f"{cells[0][0]:.2f} | {cells[1][0]:.2f} | {acc[0]} | {acc[1]} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", action="store_true", help="compare the rules for narrow weight formats")
    args = ap.parse_args()
    print("\n".join(rules_table() if args.rules else search_table()))


if __name__ == "__main__":
    main()
