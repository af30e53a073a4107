"""Mixed-precision weights, FxP-QNet style: the width each conv layer's weights are
stored in, chosen by a sensitivity search (docs/mixed_precision.md).

Every conv layer with weights may take a width of :data:`~fxpgen.numerics.WEIGHT_BITS`
(:func:`~fxpgen.compiler.quantize.quantize`'s ``weight_bits``). The search measures
what each narrower width costs each layer alone (its *sensitivity*: the drop of the
metric when only that layer is narrowed, every other at 8 bits), then narrows the
network one step at a time, the step of least measured loss per weight bit saved
first. After each step the whole network is measured again; a step that breaks the
budget is undone and its layer keeps its width. The search ends when no layer can
be narrowed further.

Measurements are the golden model's integers, what the hardware computes: output
SQNR against the float graph on the calibration set, or top-1 accuracy on labelled
images. The calibration (float run, activation formats) is done once, each layer is
quantized once per width, and a measurement reruns the network only from the first
layer it changes (:func:`~fxpgen.compiler.golden.run_golden_from`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fxpgen import numerics
from fxpgen.compiler.golden import quantize_input, run_golden_from
from fxpgen.compiler.graph import Graph, run_float
from fxpgen.compiler.qdq import FixedFormats
from fxpgen.compiler.qgraph import QGraph
from fxpgen.compiler.quantize import (Calibration, HardwareRangeError, assemble, build_layer,
                                      calibrate_graph, check_hardware_ranges, sqnr_db, weight_layers,
                                      weight_memory)

__all__ = ["search_weight_bits", "METRICS"]

#: What the search keeps within its budget, and the budget's unit.
METRICS = {"sqnr": "dB", "accuracy": "points"}


@dataclass
class _Net:
    """The quantized network at any weight widths, each layer built once per width."""

    cal: Calibration
    options: dict
    ops: dict = field(default_factory=dict)

    def op(self, k: int, bits: int):
        if (k, bits) not in self.ops:
            self.ops[k, bits] = build_layer(self.cal, self.cal.layers[k], bits=bits, **self.options)[0]
        return self.ops[k, bits]

    def graph(self, widths: dict[str, int]) -> QGraph:
        ops = [self.op(k, widths.get(layer.name, 8)) for k, layer in enumerate(self.cal.layers)]
        return assemble(self.cal, ops, per_channel=self.options["per_channel"],
                        weight_mode=self.options["weight_mode"])


@dataclass
class _Measure:
    """The metric of a network on its data, in the budget's unit (dB or points)."""

    net: _Net
    xs: np.ndarray
    score: Callable[[QGraph, np.ndarray], float]
    index: dict[str, int]
    runs: int = 0

    def __call__(self, widths: dict[str, int], base: tuple[dict, dict] | None = None):
        """(score, env) of the network at ``widths``; ``base`` = (widths, env) of a
        measured network, whose tensors before the first changed layer are reused.
        A width whose shifts do not fit the hardware scores -inf."""
        qg = self.net.graph(widths)
        try:
            check_hardware_ranges(qg)
        except HardwareRangeError:
            return float("-inf"), None
        self.runs += 1
        if base is None:
            env, start = {qg.input: self.xs}, 0
        else:
            changed = [self.index[n] for n in self.index if widths.get(n, 8) != base[0].get(n, 8)]
            env, start = base[1], min(changed, default=len(qg.ops))
        env = run_golden_from(qg, env, start)
        return self.score(qg, env[qg.output]), env


def search_weight_bits(graph: Graph, calib: np.ndarray | None, *, budget: float, metric: str | None = None,
                       labels: np.ndarray | None = None, eval_x: np.ndarray | None = None,
                       choices: tuple[int, ...] = numerics.WEIGHT_BITS, mode: str = "std",
                       per_channel: bool = False, weight_mode: str = "std", acc_bits: int = 32,
                       fine_formats: bool = True, bias_correction: bool = True, clip: str = "exact",
                       fixed: FixedFormats | None = None,
                       progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, int], dict]:
    """The weight width of every conv layer (module docstring), for
    :func:`~fxpgen.compiler.quantize.quantize`'s ``weight_bits``.

    ``metric`` "sqnr" (the default without ``labels``): the golden output's SQNR
    against the float graph on ``calib`` may fall ``budget`` dB under the all-8-bit
    network's. "accuracy" (the default with ``labels``): top-1 accuracy on ``eval_x``
    (default ``calib``) with ``labels`` may fall ``budget`` points (1 = 0.01) under the
    float graph's. ``choices``: the widths allowed. The quantizer options are
    :func:`~fxpgen.compiler.quantize.quantize`'s; layers whose weights ``fixed`` gives
    stay 8-bit. ``progress`` is called with (measurements done, at most how many in
    all) after each measurement.

    Returns the widths (of every conv layer with weights but those ``fixed`` gives)
    and a report: ``metric``, ``unit``, ``budget``, ``floor`` (the least score
    allowed), ``all8`` and ``result`` (the score at 8 bits everywhere and at the
    widths found; accuracy in points),
    ``float_accuracy`` (accuracy only), ``layers`` (each: ``weights``,
    ``weight_bits``, ``sensitivity``: width -> drop from ``all8``), ``memory`` and
    ``memory_all8`` (:func:`~fxpgen.compiler.quantize.weight_memory`), ``steps`` (each
    step tried: layer, width, score, accepted), ``measurements`` and ``seconds``.
    """
    t0 = time.monotonic()
    metric = metric or ("accuracy" if labels is not None else "sqnr")
    choices = sorted({int(b) for b in choices} | {8}, reverse=True)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if any(b not in numerics.WEIGHT_BITS for b in choices):
        raise ValueError(f"weight widths must be among {numerics.WEIGHT_BITS}, not {choices}")
    if not budget >= 0:
        raise ValueError(f"budget must be a number >= 0, not {budget!r}")
    cal = calibrate_graph(graph, calib, mode=mode, acc_bits=acc_bits, fine_formats=fine_formats,
                          clip=clip, fixed=fixed)
    net = _Net(cal, {"per_channel": per_channel, "weight_mode": weight_mode,
                     "bias_correction": bias_correction})
    measure, reference, extra = _metric(net, metric, labels, eval_x)
    given = fixed.weights if fixed else {}
    counts = {n: c for n, c in weight_layers(cal.layers).items() if n not in given}
    all8, env8 = measure({})
    floor = (all8 if metric == "sqnr" else reference) - budget
    tick = progress or (lambda done, total: None)
    sens = _sensitivities(measure, counts, choices, (all8, env8), all8 - floor, tick)
    widths, result, steps = _greedy(measure, counts, choices, sens, (all8, env8), floor, tick)
    return widths, {
        "metric": metric, "unit": METRICS[metric], "budget": budget, "floor": floor,
        "all8": all8, "result": result, **extra,
        "layers": {n: {"weights": c, "weight_bits": widths[n], "sensitivity": sens[n]}
                   for n, c in counts.items()},
        "memory": weight_memory(weight_layers(cal.layers), widths),
        "memory_all8": weight_memory(weight_layers(cal.layers), {}),
        "steps": steps, "measurements": measure.runs, "seconds": time.monotonic() - t0,
    }


def _metric(net: _Net, metric: str, labels, eval_x) -> tuple[_Measure, float, dict]:
    """The measure of ``metric``, the float graph's score (accuracy) and report facts."""
    cal = net.cal
    index = {layer.name: k for k, layer in enumerate(cal.layers)}
    if metric == "sqnr":
        if labels is not None or eval_x is not None:
            raise ValueError("labels and eval_x are for metric='accuracy'; SQNR is measured on calib")
        ref = cal.acts[cal.graph.output]

        def sqnr(qg, y):
            return sqnr_db(ref, numerics.dequantize(y, qg.tensor(qg.output).fmt))
        xs = quantize_input(net.graph({}), cal.calib)
        return _Measure(net, xs, sqnr, index), float("nan"), {}
    if labels is None:
        raise ValueError("metric='accuracy' needs labels")
    x = np.asarray(cal.calib if eval_x is None else eval_x, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if x.ndim != 4 or len(x) != len(labels) or x.shape[1:] != cal.calib.shape[1:]:
        raise ValueError(f"eval_x must have shape (N,) + {cal.calib.shape[1:]} with one label per "
                         f"image, not {x.shape} and {labels.shape[0]} labels")

    def points(y) -> float:
        return 100.0 * float(np.mean(np.argmax(y.reshape(len(y), -1), axis=1) == labels))
    float_points = points(run_float(cal.graph, x)[cal.graph.output])
    xs = quantize_input(net.graph({}), x)
    return (_Measure(net, xs, lambda qg, y: points(y), index), float_points,
            {"float_accuracy": float_points / 100, "images": int(len(x))})


def _sensitivities(measure, counts, choices, base, room, tick) -> dict[str, dict[int, float | None]]:
    """Per layer and narrower width, the drop from the all-8 score with only that
    layer narrowed; None (not measured) under a width whose drop is beyond ``room``
    already, which no step can then reach."""
    total = 2 * len(counts) * (len(choices) - 1)       # at most as many steps again
    sens = {}
    for n in counts:
        sens[n] = dict.fromkeys(choices[1:])
        for b in choices[1:]:
            score, _ = measure({n: b}, ({}, base[1]))
            sens[n][b] = base[0] - score
            tick(measure.runs, total)
            if not sens[n][b] <= room:
                break
    return sens


def _greedy(measure, counts, choices, sens, base, floor, tick) -> tuple[dict[str, int], float, list[dict]]:
    """Narrow one layer a step at a time, least loss per saved bit first (module
    docstring); a step whose layer alone breaks the floor is not tried."""
    widths = {n: 8 for n in counts}
    score, env = base
    active = set(counts) if score >= floor else set()
    steps = []

    def step(n):
        """(cost per saved bit, -saved bits, name) of narrowing ``n`` one width."""
        cur = widths[n]
        drop = sens[n][choices[choices.index(cur) + 1]]
        loss = float("inf") if drop is None else max(drop - (sens[n][cur] if cur != 8 else 0.0), 0.0)
        saved = counts[n] * (cur - choices[choices.index(cur) + 1])
        return loss / saved, -saved, n

    while active:
        n = min(active, key=step)
        nxt = choices[choices.index(widths[n]) + 1]
        drop = sens[n][nxt]
        ok = drop is not None and base[0] - drop >= floor
        if ok:
            trial = {**widths, n: nxt}
            s, e = measure(trial, (widths, env))
            ok = s >= floor
            steps.append({"layer": n, "weight_bits": nxt, "score": s, "accepted": ok})
            if ok:
                widths, score, env = trial, s, e
        if not ok or nxt == choices[-1]:
            active.discard(n)
        left = sum(len(choices) - 1 - choices.index(widths[m]) for m in active)
        tick(measure.runs, measure.runs + left)
    return widths, score, steps
