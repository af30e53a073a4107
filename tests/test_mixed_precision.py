"""The weight-width search (``compiler/mixed_precision.py``) on the shipped digits model:
what it finds, that its measurements are the quantizer's and the golden model's, and
the golden model resumed from a layer."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fxpgen.compiler.fold import prepare
from fxpgen.compiler.golden import predict, quantize_input, run_golden_batch, run_golden_from
from fxpgen.compiler.graph import run_float
from fxpgen.compiler.mixed_precision import search_weight_bits
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.quantize import quantize
from fxpgen.models import digits_assets
from fxpgen.numerics import WEIGHT_BITS


@pytest.fixture(scope="module")
def digits():
    a = digits_assets()
    return (load_onnx(str(a["model"])), np.load(a["calib"]), np.load(a["test_x"]),
            np.load(a["test_y"]))


def accuracy(qg, x, y) -> float:
    return float(np.mean(predict(qg, x).reshape(len(x), -1).argmax(axis=1) == y))


def float_accuracy(g, x, y) -> float:
    return float(np.mean(run_float(prepare(g), x)[g.output].reshape(len(x), -1).argmax(1) == y))


def test_accuracy_budget_on_digits_gives_6x_smaller_weights(digits):
    """The search spends its budget on half the test images (every other one) and
    is judged on the other half, which it never saw."""
    g, calib, x, y = digits
    seen, held = (x[0::2], y[0::2]), (x[1::2], y[1::2])
    t0 = time.monotonic()
    widths, report = search_weight_bits(g, calib, budget=1.0, labels=seen[1], eval_x=seen[0])
    seconds = time.monotonic() - t0
    qg, qreport = quantize(g, calib, weight_bits=widths)
    float_acc, held_float = float_accuracy(g, *seen), float_accuracy(g, *held)
    all8_acc = accuracy(quantize(g, calib)[0], *seen)
    mixed_acc, held_mixed = accuracy(qg, *seen), accuracy(qg, *held)
    memory = qreport["weight_memory"]
    print(f"widths {widths}; {memory['bits'] / memory['weights']:.2f} bits a weight, "
          f"{memory['vs_float']:.2f}x smaller than float, {memory['vs_int8']:.2f}x than 8-bit; "
          f"searched on: float {float_acc:.4f}, all-8 {all8_acc:.4f}, mixed {mixed_acc:.4f}; "
          f"held out: float {held_float:.4f}, mixed {held_mixed:.4f}; "
          f"{report['measurements']} measurements in {seconds:.2f} s")
    print("sensitivities (points):", {n: e["sensitivity"] for n, e in report["layers"].items()})
    assert set(widths) == {"conv1", "conv2", "conv3", "fc"}
    assert set(widths.values()) <= set(WEIGHT_BITS)
    assert memory["vs_float"] >= 6.0 and memory["bits"] <= memory["weights"] * 16 / 3
    assert mixed_acc >= float_acc - 0.01 and held_mixed >= held_float - 0.01
    # The search's own figures are those of the quantizer and the golden model.
    assert report["memory"] == memory
    assert report["float_accuracy"] == float_acc
    assert report["all8"] == pytest.approx(100 * all8_acc)
    assert report["result"] == pytest.approx(100 * mixed_acc)
    assert report["floor"] == pytest.approx(100 * float_acc - 1.0)
    assert seconds < 20


@pytest.mark.rtl
def test_mixed_precision_digits_runs_bit_exactly_on_the_rtl(digits, tmp_path):
    """The widths the accuracy search picks, compiled for the default core: the
    program LOADWs narrow tiles and the native RTL's outputs on test images are the
    golden model's, bit for bit."""
    from fxpgen.app.flow import compile_model, run_compiled
    from fxpgen.compiler.program import load_qgraph
    from fxpgen.config import CoreConfig
    g, calib, x, y = digits
    widths, _ = search_weight_bits(g, calib, budget=1.0, labels=y[0::2], eval_x=x[0::2])
    assert min(widths.values()) < 8
    summary = compile_model(digits_assets()["model"], calib, CoreConfig(), tmp_path, weight_bits=widths)
    assert summary["weight_memory"]["vs_float"] >= 6.0
    out = run_compiled(tmp_path, x[1:12:2], "native")
    qg = load_qgraph(tmp_path)
    assert out["golden_identical"] is True
    assert np.array_equal(out["outputs"], run_golden_batch(qg, quantize_input(qg, x[1:12:2]))[qg.output])


def test_sqnr_budget_holds_and_sensitivities_are_single_layer_drops(digits):
    g, calib, _, _ = digits
    calls = []
    widths, report = search_weight_bits(g, calib, budget=1.0, progress=lambda d, t: calls.append((d, t)))
    _, all8 = quantize(g, calib)
    _, mixed = quantize(g, calib, weight_bits=widths)
    print(f"SQNR budget 1 dB: widths {widths}, all-8 {all8['output_sqnr_db']:.2f} dB, "
          f"mixed {mixed['output_sqnr_db']:.2f} dB, {mixed['weight_memory']['vs_int8']:.2f}x smaller "
          "than 8-bit")
    assert report["metric"] == "sqnr" and report["unit"] == "dB"
    assert report["all8"] == all8["output_sqnr_db"] and report["result"] == mixed["output_sqnr_db"]
    assert mixed["output_sqnr_db"] >= all8["output_sqnr_db"] - 1.0
    assert mixed["weight_memory"]["bits"] < all8["weight_memory"]["bits"]
    for name, entry in report["layers"].items():
        for bits, drop in entry["sensitivity"].items():
            if drop is not None:
                _, one = quantize(g, calib, weight_bits={name: bits})
                assert drop == all8["output_sqnr_db"] - one["output_sqnr_db"]
    # Every accepted step kept the budget, every refused one broke it.
    for step in report["steps"]:
        assert (step["score"] >= report["floor"]) == step["accepted"]
    assert calls and calls[-1][0] == calls[-1][1] == report["measurements"]
    assert all(d <= t for d, t in calls)


def test_tighter_budgets_never_save_more(digits):
    g, calib, _, _ = digits
    saved = []
    for budget in (0.0, 1.0, 6.0):
        widths, report = search_weight_bits(g, calib, budget=budget)
        assert report["result"] >= report["all8"] - budget
        saved.append(report["memory"]["bits"])
    assert saved[0] >= saved[1] >= saved[2] and saved[2] < saved[0]


def test_search_arguments_checked(digits):
    g, calib, x, y = digits
    with pytest.raises(ValueError, match="metric must be one of sqnr, accuracy"):
        search_weight_bits(g, calib, budget=1.0, metric="mse")
    with pytest.raises(ValueError, match="needs labels"):
        search_weight_bits(g, calib, budget=1.0, metric="accuracy")
    with pytest.raises(ValueError, match="budget must be a number >= 0"):
        search_weight_bits(g, calib, budget=-1.0)
    with pytest.raises(ValueError, match="one label per image"):
        search_weight_bits(g, calib, budget=1.0, labels=y[:10], eval_x=x)
    with pytest.raises(ValueError, match="for metric='accuracy'"):
        search_weight_bits(g, calib, budget=1.0, metric="sqnr", labels=y, eval_x=x)
    with pytest.raises(ValueError, match="weight widths must be among"):
        search_weight_bits(g, calib, budget=1.0, choices=(8, 3))


def test_only_allowed_widths_are_chosen(digits):
    g, calib, x, y = digits
    widths, report = search_weight_bits(g, calib, budget=5.0, labels=y, eval_x=x, choices=(8, 6))
    assert set(widths.values()) <= {8, 6}
    assert all(set(e["sensitivity"]) == {6} for e in report["layers"].values())


def test_golden_resumed_from_a_layer_equals_a_full_run(digits, seed):
    g, calib, _, _ = digits
    rng = np.random.default_rng(seed)
    a, _ = quantize(g, calib)
    name = str(rng.choice(sorted(a.meta["weight_bits"])))
    k = [op.name for op in a.ops].index(name)
    b, _ = quantize(g, calib, weight_bits={name: int(rng.choice(WEIGHT_BITS[1:]))})
    xs = quantize_input(a, calib[:32])
    env_a = run_golden_batch(a, xs)
    resumed = run_golden_from(b, env_a, k)
    full = run_golden_batch(b, xs)
    assert resumed.keys() == full.keys()
    assert all(np.array_equal(resumed[t], full[t]) for t in full)
    assert all(env_a[t] is not resumed[t] for t in [op.output for op in b.ops[k:]])
