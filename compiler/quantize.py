"""Quantizer: float graph + calibration data -> :class:`~fxpgen.compiler.qgraph.QGraph`.

Passes, each small and testable alone:

1. :func:`~fxpgen.compiler.fold.prepare` (BatchNorm, Gemm, global and odd-window pools);
2. :func:`fuse`: group float nodes into quantized layers. A ReLU/Clip joins the conv or
   add before it; an Add joins a conv whose output only it reads (the conv's
   ``residual``/``align``); a ReLU/Clip nobody can take becomes a depthwise 1x1 conv
   of weight 1; MaxPool, AvgPool, Concat, Slice, Shuffle and Resize stay themselves;
3. :func:`calibrate`: run the float graph on the calibration set and choose every
   tensor's format (docs/numerics.md); :func:`unify_concat_inputs` gives each
   concat's inputs its format; :func:`exact_clips` adds the table of each exact Clip;
4. weights (each conv's in the width ``weight_bits`` gives it, 8 bits by default),
   biases and shifts for each layer, checked against the hardware's ranges (each
   conv's bias less the mean error of its rounded weights, :func:`weight_error_bias`);
5. the report, including the SQNR the golden model actually reaches per layer.

Clip(0, c) (ReLU6) is exact by default (``clip="exact"``). Between convs,
:func:`~fxpgen.compiler.fold.prepare` has rescaled it to ``c' = 255 * 2**-fl``
(:mod:`~fxpgen.compiler.clip_scale`), and the requantizer's saturation is the clip.
Elsewhere the layer it joins applies a ReLU saturating at the unsigned output
format's limit ``255 * 2**-fl``, then :func:`exact_clips` adds a lookup table
``y = min(x, clip_code(c))`` (:func:`clip_code`: the code of c, or the largest code
under c) unless that limit is already at most c. With ``clip="saturate"`` neither is
done: the format's limit is the clipping level and values between c and it pass
unclipped. In all, the fl is the one whose clipped output is closest (RMS) to the
float Clip output on the calibration set (F8Net's PACT reading: the clipping level
is the format's range); the report gives c and the bound of every such layer.

Steps 1 to 3 do not depend on the weights: :func:`calibrate_graph` runs them once
and :func:`build_layer` and :func:`assemble` then give the graph at any weight widths,
as the width search of :mod:`~fxpgen.compiler.mixed_precision` does.

Formats follow docs/numerics.md otherwise. Where it is silent: an AvgPool output keeps
its input's signedness and, in "std" mode, takes the std rule capped at the finest fl
that holds the calibration maximum (a pooled ReLU map has a mean large against its std,
which the rule alone would saturate). Elsewhere the std rule is applied as written, so
a tensor whose mean is large against its std saturates: the report notes every tensor
with more than 1% of its calibration values saturated ("grid" mode avoids it).

Concat. A concat moves bytes and changes no value, so its inputs and its output share
one format (:func:`concat_format`): the finest that holds every input's range,
signed if any input is, with the smallest input fl (one less for an unsigned input
when the common format is signed). An input produced by a conv, add or average pool
that only the concat reads is requantized into that format by its producer; any
other input (a max pool's or slice's, which keep their input's format, the graph
input, a tensor read elsewhere) in another format gets a copy: an add of the tensor
with itself, ``requantize(2a, fl_a + 1 - fl)``, which is ``requantize(a, fl_a - fl)``
exactly. A Slice, a Shuffle and a Resize keep their input's format.

Lookup tables and products. A nonlinear function (:class:`~fxpgen.compiler.graph.Unary`)
becomes a :class:`~fxpgen.compiler.qgraph.QLut`; its output format is chosen from the
calibration output like any other (signed when some value is negative, fl by the
mode's rule) and its table is the float function on the input format's grid, every one
of the 256 input bytes, quantized to the output format (:func:`lut_table`). A Mul
becomes a :class:`~fxpgen.compiler.qgraph.QMul` with the same output-format rule and
``shift = fl_a + fl_b - fl_out``.

Fixed formats (a QCDQ model, :mod:`fxpgen.compiler.qdq`). A tensor whose format the
graph's quantizer fixes takes that format instead of the rule's; a layer whose weight
fl it fixes takes that fl (the weights, on that grid, quantize exactly). A tensor
without a quantizer follows the rules above: a max pool, slice, shuffle or resize
keeps its input's format, a concat takes the common one, any other layer output is
calibrated, so it needs calibration data; without them (``calib`` None) every such
tensor must be fixed, and the report is computed on random inputs spanning the
input format's range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from fxpgen import numerics
from fxpgen.compiler.fold import prepare
from fxpgen.compiler.golden import quantize_input, run_golden_batch
from fxpgen.compiler.graph import (UNARY_FUNCTIONS, Add, AvgPool, Clip, Concat, Conv, Graph,
                                   MaxPool, Mul, Relu, Resize, Shuffle, Slice, Unary, UnsupportedOp,
                                   run_float)
from fxpgen.compiler.qdq import FixedFormats
from fxpgen.compiler.qgraph import (QAdd, QAvgPool, QConcat, QConv, QGraph, QLut, QMaxPool, QMul,
                                    QResize, QShuffle, QSlice, QTensor)
from fxpgen.numerics import Format

__all__ = ["quantize", "fuse", "calibrate", "concat_format", "unify_concat_inputs", "exact_clips",
           "clip_code", "CLIP_MODES",
           "check_hardware_ranges", "HardwareRangeError", "fit_shift_fields", "weight_error_bias",
           "Layer", "sqnr_db", "lut_table", "SHIFT_RANGE", "ALIGN_RANGE", "ADD_SHIFT_RANGE",
           "Calibration", "calibrate_graph", "build_layer", "assemble", "weight_layers",
           "graph_weight_layers", "weight_memory", "WeightBitsError"]

#: Inclusive ranges of the hardware's shift fields (signed 6-bit shift and align,
#: 4-bit ADD operand shifts).
SHIFT_RANGE = (-32, 31)
ALIGN_RANGE = (-32, 31)
ADD_SHIFT_RANGE = (0, 15)

#: How a Clip(0, c) is quantized (module docstring): exactly, or as the saturation of
#: its output format.
CLIP_MODES = ("exact", "saturate")


class HardwareRangeError(ValueError):
    """A shift or alignment the quantizer derived does not fit the hardware's field."""


@dataclass
class Layer:
    """One quantized layer: the float nodes it absorbs and what it reads and writes.

    ``kind`` is "conv", "add", "maxpool", "avgpool", "concat", "slice", "shuffle",
    "resize", "lut", "mul", "copy" (a concat input requantized into the concat's
    format) or "clip" (the table of an exact Clip, :func:`exact_clips`). ``pre`` is the tensor before the
    fused ReLU/Clip (the std of an unsigned output is taken there, docs/numerics.md).
    ``position`` is the index of the last absorbed float node: sorting by it gives a
    valid execution order even when an Add joins a conv that ran earlier than its
    residual.
    """

    kind: str
    name: str
    inputs: list[str]
    output: str
    pre: str
    position: int
    fused: list[str]
    conv: Conv | None = None
    residual: str | None = None
    relu: bool = False
    clip_max: float | None = None
    clip_scale: float = 1.0
    pool: MaxPool | AvgPool | None = None
    identity: bool = False
    node: Concat | Slice | Shuffle | Resize | Unary | Mul | None = None


def fuse(graph: Graph) -> list[Layer]:
    """Group the nodes of a prepared graph (see :func:`~fxpgen.compiler.fold.prepare`)
    into quantized layers, in execution order."""
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    absorbed: set[str] = set()

    def only_reader(t: str):
        readers = graph.consumers(t)
        return readers[0] if graph.uses(t) == 1 and readers else None

    def absorb(layer: Layer, node) -> None:
        layer.output = node.output
        layer.position = index[node.name]
        layer.fused.append(node.name)
        absorbed.add(node.name)

    layers = []
    for i, n in enumerate(graph.nodes):
        if n.name in absorbed:
            continue
        if isinstance(n, Conv):
            layer = Layer("conv", n.name, [n.input], n.output, n.output, i, [n.name], conv=n)
            r = only_reader(n.output)
            # When both inputs of an Add are convs, the first one takes it; the layer
            # then runs at the Add's position, after the other branch.
            if isinstance(r, Add) and r.name not in absorbed:
                layer.residual = r.b if r.a == n.output else r.a
                layer.inputs.append(layer.residual)
                absorb(layer, r)
                layer.pre = r.output
        elif isinstance(n, Add):
            layer = Layer("add", n.name, [n.a, n.b], n.output, n.output, i, [n.name])
        elif isinstance(n, (Relu, Clip)):
            # Nothing took this activation (its input is read elsewhere, or comes from a
            # pool or the graph input): an identity depthwise conv applies it.
            c = graph.shape(n.input)[0]
            ident = Conv(n.name, n.input, n.output, np.ones((c, 1, 1, 1)), np.zeros(c), groups=c)
            layer = Layer("conv", n.name, [n.input], n.output, n.input, i, [n.name],
                          conv=ident, relu=True, identity=True,
                          clip_max=n.max if isinstance(n, Clip) else None)
        elif isinstance(n, (MaxPool, AvgPool)):
            kind = "maxpool" if isinstance(n, MaxPool) else "avgpool"
            layer = Layer(kind, n.name, [n.input], n.output, n.output, i, [n.name], pool=n)
        elif isinstance(n, (Concat, Slice, Shuffle, Resize, Unary, Mul)):
            kind = {"Unary": "lut"}.get(n.OP, n.OP.lower())
            layer = Layer(kind, n.name, list(n.inputs), n.output, n.output, i, [n.name], node=n)
        else:
            raise TypeError(f"{n.name}: {n.OP} must be folded before fusion (run prepare)")
        if layer.kind in ("conv", "add"):
            while isinstance(r := only_reader(layer.output), (Relu, Clip)):
                bound = r.max if isinstance(r, Clip) else None
                if layer.relu and layer.clip_max is not None:
                    bound = layer.clip_max if bound is None else min(bound, layer.clip_max)
                layer.relu, layer.clip_max = True, bound
                layer.clip_scale = r.scale if isinstance(r, Clip) else layer.clip_scale
                absorb(layer, r)
        layers.append(layer)
    layers.sort(key=lambda layer: layer.position)
    return layers


def _std(x: np.ndarray) -> float:
    return float(np.std(x)) if x.size else 0.0


def _fl_limit(x: np.ndarray, signed: bool, fine: bool) -> int:
    """Finest fl the quantizer gives data ``x``: the finest format whose range reaches 1
    (s8.7, u8.8) or, with ``fine`` and data all smaller, the finest holding max |x|.

    Without ``fine``, activations of deep stacks that shrink under 2**-8 round to zero;
    with it, a format finer than s8.7/u8.8 never saturates the calibration maximum
    (the std rule would, on data whose mean is large against its std)."""
    classic = numerics.SIGNED_FL_MAX if signed else numerics.UNSIGNED_FL_MAX
    if not fine or not np.any(x):
        return classic
    return max(classic, _fit_fl(x, signed, numerics.FL_MAX))


def _act_fl(pre: np.ndarray, out: np.ndarray, signed: bool, mode: str, fine: bool) -> int:
    hi = _fl_limit(out, signed, fine)
    if mode == "grid":
        return numerics.fl_grid_search(out.reshape(-1), signed, hi)
    return numerics.fl_from_std(_std(pre), signed, hi)


def calibrate(graph: Graph, layers: list[Layer], acts: dict[str, np.ndarray],
              mode: str = "std", fine: bool = True, given: dict[str, Format] | None = None,
              clip: str = "exact") -> tuple[dict[str, Format], dict[str, dict]]:
    """Choose the format of the input and of every layer's output.

    ``acts``: float tensors of the calibration batch (from :func:`run_float`). Input:
    u8.8 when the data lie in [0, 1), else by the rule (unsigned if all >= 0). Outputs
    with a fused ReLU/Clip are unsigned with the std taken before the activation;
    others signed; MaxPool, Slice, Shuffle and Resize keep their input's format; AvgPool keeps its
    signedness; a Concat takes :func:`concat_format` of its inputs. With ``fine``,
    data all smaller than s8.7's or u8.8's range may take a finer format, never finer
    than one that holds its maximum (:func:`_fl_limit`). A tensor in
    ``given`` (formats a quantized graph fixes) takes that format; a kept format must
    then agree with it (:class:`~fxpgen.compiler.graph.UnsupportedOp` otherwise).
    A Clip(0, c) output takes :func:`_clip_fl`, clipped at c with ``clip`` "exact"
    (:data:`CLIP_MODES`). Returns the formats and per-tensor statistics for the report.
    """
    formats: dict[str, Format] = {}
    stats: dict[str, dict] = {}
    x = acts[graph.input]
    if x.size and x.min() >= 0 and x.max() < 1:
        formats[graph.input] = Format(False, 8)
        rule = "u8.8: calibration data in [0, 1)"
    else:
        signed = bool(x.size and x.min() < 0)
        formats[graph.input] = Format(signed, _act_fl(x, x, signed, mode, fine))
        rule = mode
    given = given or {}
    if graph.input in given:
        formats[graph.input], rule = given[graph.input], _GIVEN
    stats[graph.input] = {"std": _std(x), "std_of": graph.input, "rule": rule}
    for layer in layers:
        src = layer.inputs[0]
        pre = layer.pre
        if layer.kind in ("maxpool", "slice", "shuffle", "resize"):
            fmt, rule = formats[src], "kept from input"
        elif layer.kind == "concat":
            fmt, rule = concat_format([formats[t] for t in layer.inputs]), "common of the inputs"
        elif layer.kind == "avgpool" and mode == "std":
            # A pooled ReLU map has a mean large against its std, which the std rule
            # alone would mostly saturate: cap it at the finest fl holding the maximum.
            signed, out = formats[src].signed, acts[layer.output]
            hi = _fl_limit(out, signed, fine)
            fl = min(numerics.fl_from_std(_std(out), signed, hi), _fit_fl(out, signed, hi))
            fmt, rule = Format(signed, fl), "std, capped to hold the calibration maximum"
        elif layer.kind in ("lut", "mul"):
            out = acts[layer.output]
            signed = bool(out.size and out.min() < 0)
            fmt, rule = Format(signed, _act_fl(out, out, signed, mode, fine)), mode
        elif layer.clip_max is not None:
            clipped = acts[layer.output]
            c = layer.clip_max if clip == "exact" else None
            fmt = Format(False, _clip_fl(acts[pre], clipped, _fl_limit(clipped, False, fine), c))
            rule = f"Clip(0, {layer.clip_max:g}), {clip}: fl of least RMS error"
        else:
            signed = formats[src].signed if layer.kind == "avgpool" else not layer.relu
            fmt = Format(signed, _act_fl(acts[pre], acts[layer.output], signed, mode, fine))
            rule = mode
        if layer.output in given:
            if rule == "kept from input" and given[layer.output] != fmt:
                raise UnsupportedOp(f"{layer.name}: {layer.kind} keeps its input's format {fmt}, but "
                                    f"the graph quantizes its output to {given[layer.output]}")
            fmt, rule = given[layer.output], _GIVEN
        formats[layer.output] = fmt
        stats[layer.output] = {"std": _std(acts[pre]), "std_of": pre, "rule": rule}
    return formats, stats


def fit_shift_fields(layers: list[Layer], formats: dict[str, Format], acc_bits: int) -> None:
    """Coarsen, in place, the fine formats whose shifts would outgrow the requantizer's
    field or whose bias would outgrow the accumulator: a conv's or average pool's
    input (and residual) at most ``SHIFT_RANGE[1]`` fractional bits finer than its
    output, less the pool's ``log2(divisor)``; a conv's input no finer than
    :func:`_bias_fl_max`. A conv's weight fl then fits from 0 up (:func:`_build_conv`).

    Data that much finer than the layer's output carry nothing above its least
    significant bit (a classifier reading vanished features: its output is its bias),
    so the dropped bits are below what the layer keeps. A format is coarsened with the
    maps that share it (max pool, slice, shuffle, resize); never the network's input
    or a concat's. Coarsening an output widens its producer's shift, so the walk runs
    backwards until nothing changes."""
    producer = {layer.output: layer for layer in layers}
    changed = True
    while changed:
        changed = False
        for layer in reversed(layers):
            if layer.kind == "conv":
                cap = formats[layer.output].fl + SHIFT_RANGE[1]
                if formats[layer.conv.input].fl > _bias_fl_max(layer, acc_bits):
                    changed |= _coarsen(layer.conv.input, _bias_fl_max(layer, acc_bits), producer, formats)
                srcs = [layer.conv.input] + ([layer.residual] if layer.residual else [])
            elif layer.kind == "avgpool":
                log2 = numerics.avgpool_fl_shift(layer.pool.divisor)
                cap = formats[layer.output].fl + SHIFT_RANGE[1] - log2
                srcs = [layer.pool.input]
            else:
                continue
            for src in srcs:
                if formats[src].fl > cap:
                    changed |= _coarsen(src, cap, producer, formats)


def _bias_fl_max(layer: Layer, acc_bits: int) -> int:
    """The finest accumulator fl (input fl + weight fl) at which the conv's bias takes at
    most a quarter of the accumulator's range, leaving the rest to the products."""
    b = float(np.max(np.abs(layer.conv.bias))) if layer.conv.bias.size else 0.0
    if b == 0.0:
        return numerics.FL_MAX
    return int(np.floor(np.log2(2.0 ** (acc_bits - 3) / b)))


def _coarsen(t: str, fl: int, producer: dict, formats: dict[str, Format]) -> bool:
    chain = [t]
    while t in producer and producer[t].kind in ("maxpool", "slice", "shuffle", "resize"):
        t = producer[t].inputs[0]
        chain.append(t)
    if t not in producer or producer[t].kind in ("concat", "copy"):
        return False
    for name in chain:
        formats[name] = Format(formats[name].signed, max(fl, 0))
    return True
_GIVEN = "fixed by the graph's quantizer"
_DERIVED = ("kept from input", "common of the inputs", _GIVEN)


def _check_fixed(g: Graph, layers: list[Layer], fixed: FixedFormats, stats: dict[str, dict],
                 calibrated: bool) -> None:
    """Every fixed tensor is one the quantized graph stores; without calibration data,
    every layer output whose format needs statistics is fixed."""
    stored = {g.input} | {layer.output for layer in layers}
    for t in fixed.activations:
        if t not in stored:
            raise UnsupportedOp(f"{fixed.quantizers[t]}: quantizes {t!r}, which fxpgen computes "
                                "inside a fused layer (conv + add + ReLU) and never stores; "
                                "quantize only the fused layer's output")
    if not calibrated:
        free = [t for t in [g.input] + [layer.output for layer in layers]
                if stats[t]["rule"] not in _DERIVED]
        if free:
            raise ValueError(f"no quantizer in the graph fixes the format of {', '.join(free)}: "
                             "give calibration data to choose it")


def _fixed_samples(g: Graph, fixed: FixedFormats, n: int = 8) -> np.ndarray:
    """Stand-in calibration inputs for a graph whose quantizers fix every format: ``n``
    random images spanning the input format's range (seed 0), for the report."""
    fmt = fixed.activations.get(g.input)
    if fmt is None:
        raise ValueError(f"no quantizer in the graph fixes the format of the input {g.input}: "
                         "give calibration data to choose it")
    q = np.random.default_rng(0).integers(fmt.lo, fmt.hi + 1, (n,) + g.shape(g.input))
    return numerics.dequantize(q, fmt)


def concat_format(fmts: list[Format]) -> Format:
    """The one format of a concat's inputs and output: the finest holding every input's
    range, signed if any input is; fl the smallest input fl, one less for an unsigned
    input going into a signed format (whose top half it would lose), at least 0."""
    signed = any(f.signed for f in fmts)
    return Format(signed, max(min(f.fl - int(signed and not f.signed) for f in fmts), 0))


def unify_concat_inputs(graph: Graph, layers: list[Layer], formats: dict[str, Format],
                        stats: dict[str, dict]) -> list[Layer]:
    """Give every concat's inputs the concat's format: retarget the format of an input
    that a conv, add or average pool produces and only the concat reads; insert a copy
    layer (kind "copy") before the concat for any other input in another format.
    Updates ``formats`` and ``stats``; returns the layers in execution order."""
    producer = {layer.output: layer for layer in layers}
    out = []
    for layer in layers:
        if layer.kind == "concat":
            fmt = formats[layer.output]
            for k, t in enumerate(layer.inputs):
                if formats[t] == fmt:
                    continue
                prod = producer.get(t)
                if (prod is not None and prod.kind in ("conv", "add", "avgpool")
                        and graph.uses(t) == 1):
                    formats[t] = fmt
                    stats[t] = {**stats[t], "rule": f"{stats[t]['rule']}; the format of "
                                f"{layer.name}, which it feeds"}
                    continue
                copy = Layer("copy", f"{layer.name}/copy{k}", [t], f"{t}/{layer.name}", t,
                             layer.position, [])
                formats[copy.output] = fmt
                stats[copy.output] = {**stats[t], "rule": f"copy into the format of {layer.name}"}
                layer.inputs[k] = copy.output
                out.append(copy)
        out.append(layer)
    return out


def exact_clips(layers: list[Layer], formats: dict[str, Format], stats: dict[str, dict],
                acts: dict[str, np.ndarray]) -> list[Layer]:
    """Make every Clip(0, c) a conv or add absorbed exact: when its output format's
    limit lies above c, the layer now writes ``<output>/relu`` (its ReLU saturating at
    the limit) and a "clip" layer after it, a lookup table ``min(x, clip_code(c))`` in
    the same format, writes the output. Run once the formats are final (the table's
    bound depends on them). Updates ``formats``, ``stats`` and ``acts`` (the float
    ReLU for the new tensor); returns the layers in execution order."""
    out = []
    for layer in layers:
        out.append(layer)
        if layer.clip_max is None or layer.kind not in ("conv", "add"):
            continue
        fmt = formats[layer.output]
        if clip_code(layer.clip_max, fmt) >= fmt.hi:
            continue
        mid = f"{layer.output}/relu"
        formats[mid] = fmt
        stats[mid] = {**stats[layer.output], "rule": f"the format of {layer.output}, which it feeds"}
        acts[mid] = np.maximum(acts[layer.pre], 0.0)
        out.append(Layer("clip", f"{layer.name}/clip", [mid], layer.output, mid, layer.position,
                         [], clip_max=layer.clip_max))
        layer.output = mid
    return out


def _fit_fl(x: np.ndarray, signed: bool, hi: int) -> int:
    """Finest fl in 0..``hi`` whose range holds every value of ``x`` (0 if none does)."""
    fmt = Format(signed, 0)
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return max([f for f in range(hi + 1) if m <= fmt.hi * 2.0 ** -f] or [0])


def clip_code(c: float, fmt: Format) -> int:
    """The upper bound of an exact Clip(0, ``c``) in ``fmt``: the code of c when the
    format holds it exactly, else the largest code under c (never above c, so the
    clipped output never exceeds the float bound), at most ``fmt.hi``."""
    return int(min(np.floor(c * 2.0 ** fmt.fl), fmt.hi))


def _clip_fl(pre: np.ndarray, clipped: np.ndarray, hi: int, c: float | None = None) -> int:
    """Format of a Clip(0, c) output computed as a ReLU that saturates at the format's
    limit ``255 * 2**-fl`` and, given ``c`` (the exact clip), at :func:`clip_code`: the
    fl in 0..``hi`` whose clipped ``quantize(pre)`` is closest (RMS) to the float Clip
    output on the calibration set (ties to the finer format). This weighs the rounding
    step against values clipped below c where c is not representable, and without
    ``c`` against values in (c, limit] left unclipped or (limit, c] clipped."""
    best_fl, best_err = 0, np.inf
    for fl in range(hi + 1):
        fmt = Format(False, fl)
        q = numerics.quantize(pre, fmt)
        if c is not None:
            q = np.minimum(q, clip_code(c, fmt))
        err = float(np.sqrt(np.mean((numerics.dequantize(q, fmt) - clipped) ** 2)))
        if err <= best_err:
            best_fl, best_err = fl, err
    return best_fl


def _weight_fl(w: np.ndarray, per_channel: bool, mode: str, fine: bool, bits: int = 8) -> np.ndarray:
    """Fractional length of each output channel's weights (one shared value unless
    ``per_channel``), by the std rule or the grid search, at most :func:`_fl_limit`.
    Weights narrower than 8 bits always take the grid search at their width: the std
    rule's constant is calibrated for 8 bits (docs/mixed_precision.md measures both)."""
    cout = w.shape[0]
    groups = w.reshape(cout, -1) if per_channel else w.reshape(1, -1)
    fls = []
    for v in groups:
        hi = _fl_limit(v, True, fine)
        if mode == "grid" or bits < 8:
            fls.append(numerics.fl_grid_search(v, True, hi, bits))
            continue
        std = _std(v)
        if std == 0:
            # A constant group (e.g. one weight per channel) makes the std rule pick
            # the finest fl whatever the value; take the finest that still holds max |w|.
            fls.append(_fit_fl(v, True, hi))
        else:
            fls.append(numerics.fl_from_std(std, True, hi))
    return np.broadcast_to(np.asarray(fls, np.int64), (cout,)).copy()


def _in_range(where: str, what: str, values, rng: tuple[int, int]) -> None:
    v = np.asarray(values)
    if v.size and (v.min() < rng[0] or v.max() > rng[1]):
        raise HardwareRangeError(f"{where}: {what} {int(v.min())}..{int(v.max())} does not fit "
                                 f"the hardware field range {rng[0]}..{rng[1]}")


def check_hardware_ranges(qgraph: QGraph) -> None:
    """Raise :class:`HardwareRangeError` if a shift or alignment of ``qgraph`` does not
    fit its hardware field: QConv shift and align in -32..31, QAvgPool and QAdd shift
    in -32..31, QAdd a_shift/b_shift in 0..15."""
    for op in qgraph.ops:
        where = f"{op.name} ({type(op).__name__})"
        if isinstance(op, QConv):
            _in_range(where, "shift", op.shift, SHIFT_RANGE)
            _in_range(where, "align", op.align, ALIGN_RANGE)
        elif isinstance(op, QAvgPool):
            _in_range(where, "shift", op.shift, SHIFT_RANGE)
        elif isinstance(op, QMul):
            _in_range(where, "shift", op.shift, SHIFT_RANGE)
        elif isinstance(op, QAdd):
            _in_range(where, "shift", op.shift, SHIFT_RANGE)
            _in_range(where, "a_shift", op.a_shift, ADD_SHIFT_RANGE)
            _in_range(where, "b_shift", op.b_shift, ADD_SHIFT_RANGE)


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - test)^2)``
    in dB (inf when the two are equal)."""
    ref = np.asarray(ref, np.float64)
    noise = float(np.sum((ref - np.asarray(test, np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10 * np.log10(signal / noise))


def _format_mse(f: np.ndarray, fmt: Format) -> float:
    """Mean squared error of quantizing float data ``f`` straight into ``fmt``."""
    return float(np.mean((numerics.dequantize(numerics.quantize(f, fmt), fmt) - f) ** 2))


def _predicted_mse(layer: Layer, op, info: dict, acts, fmt: Format, mse: dict) -> float:
    """First-order error model of one layer, in squared real units per element.

    Independent rounding errors add: a conv passes its input's error times the mean
    sum of squared weights of a channel, adds the weight error times K * E[x^2]
    (K taps per output), the residual's error and its own output rounding; an add sums
    its operands' errors; a max-pool passes its input's; an average pool adds its
    rounding to its input's (not crediting the averaging, so it errs high).
    """
    own = _format_mse(acts[layer.output], fmt)
    if isinstance(op, QConv):
        w = layer.conv.weight
        cout = w.shape[0]
        fl_w = np.broadcast_to(np.asarray(info["fl_w"], np.float64), (cout,))
        w_err = op.weight * np.exp2(-fl_w).reshape((-1,) + (1,) * (w.ndim - 1)) - w
        sum_w2 = float(np.mean(np.sum(w.reshape(cout, -1) ** 2, axis=1)))
        ex2 = float(np.mean(acts[op.input] ** 2))
        m = mse[op.input] * sum_w2 + float(np.mean(w_err ** 2)) * w[0].size * ex2 + own
        return m + (mse[op.residual] if op.residual else 0.0)
    if isinstance(op, QAdd):
        return mse[op.a] + mse[op.b] + own
    if isinstance(op, QMul):
        return (mse[op.a] * float(np.mean(acts[op.b] ** 2))
                + mse[op.b] * float(np.mean(acts[op.a] ** 2)) + own)
    if isinstance(op, QConcat):
        sizes = [acts[t].shape[1] for t in op.sources]
        return float(np.average([mse[t] for t in op.sources], weights=sizes))
    if isinstance(op, (QMaxPool, QSlice, QShuffle, QResize)):
        return mse[op.input]
    if layer.kind == "copy":
        return mse[op.a] + own
    return mse[op.input] + own


def _int_range(v) -> list[int]:
    v = np.asarray(v)
    return [int(v.min()), int(v.max())] if v.size else [0, 0]


def _compact(v):
    """A per-channel array as one int when all channels agree (the report's fl_w)."""
    v = np.asarray(v)
    return int(v[0]) if v.size and np.all(v == v[0]) else [int(e) for e in v]


def weight_error_bias(w_err: np.ndarray, x_mean: np.ndarray, groups: int) -> np.ndarray:
    """The mean output error of rounded weights, per output channel: each output's
    ``sum(w_err * x)`` with every input at its channel's calibration mean (padding
    ignored). ``w_err``: (Cout, Cin // groups, kh, kw), quantized minus float weights
    in real units; ``x_mean``: (Cin,). Subtracted from the bias, it cancels the shift
    a layer's rounding adds to its output's mean (bias correction, Nagel et al. 2019)."""
    cout, cin_g = w_err.shape[:2]
    per_input = w_err.reshape(cout, cin_g, -1).sum(axis=2)
    group_of_output = np.arange(cout) // (cout // groups)
    means = np.asarray(x_mean, np.float64).reshape(groups, cin_g)[group_of_output]
    return np.sum(per_input * means, axis=1)


def _fixed_weights(conv: Conv, fl: int) -> tuple[np.ndarray, np.ndarray]:
    """The graph's weight fl of ``conv`` per output channel and its integer weights,
    ``weight * 2**fl`` exactly. Any fl may come from the graph (a layer of small
    weights has fl 8 or more): it only enters the layer's shift. The weights must lie
    on their grid (a BatchNorm or pool factor folded in afterwards moves them)."""
    scaled = conv.weight * 2.0 ** fl
    if not np.array_equal(scaled, np.round(scaled)):
        raise UnsupportedOp(f"{conv.name}: its weights are off the grid 2**-{fl} of its quantizer "
                            "after folding (a BatchNorm or pool factor folded into it?)")
    return np.full(conv.weight.shape[0], fl, np.int64), scaled.astype(np.int64)


def _build_conv(layer: Layer, formats, per_channel, weight_mode, acc_bits, fine, x_mean,
                weight_fls=None, bits: int = 8):
    conv = layer.conv
    fx = formats[conv.input]
    fout = formats[layer.output]
    cout = conv.weight.shape[0]
    if layer.identity:
        fl_w = np.zeros(cout, np.int64)
        wq = np.ones(conv.weight.shape, np.int64)
    elif conv.name in (weight_fls or {}):
        fl_w, wq = _fixed_weights(conv, weight_fls[conv.name])
    else:
        # Fine formats can make fl_x + fl_w - fl_out outgrow the requantizer's shift
        # field; weight bits below what the shift keeps are dropped there instead.
        fl_w_max = SHIFT_RANGE[1] + fout.fl - fx.fl
        if fine:
            fl_w_max = min(fl_w_max, _bias_fl_max(layer, acc_bits) - fx.fl)
        fl_w = np.clip(_weight_fl(conv.weight, per_channel, weight_mode, fine, bits), 0,
                       max(0, fl_w_max))
        wq = numerics.quantize_weight(conv.weight, fl_w.reshape((-1,) + (1,) * (conv.weight.ndim - 1)),
                                      bits)
    w_float = conv.weight
    w_scale = np.exp2(fl_w.astype(np.float64)).reshape((-1,) + (1,) * (w_float.ndim - 1))
    correction = (np.zeros(cout) if x_mean is None or layer.identity else
                  weight_error_bias(wq / w_scale - w_float, x_mean, conv.groups))
    bias = numerics.bias_quantize(conv.bias - correction, fx.fl, fl_w, acc_bits)
    fl_acc = fx.fl + fl_w
    if layer.residual:
        fl_r = formats[layer.residual].fl
        align = fl_acc - fl_r             # > 0: residual shifted left; < 0: accumulator
        fl_common = np.maximum(fl_acc, fl_r)
    else:
        align = np.zeros(cout, np.int64)
        fl_common = fl_acc
    shift = (fl_common - fout.fl).astype(np.int64)
    op = QConv(layer.name, conv.input, layer.output, wq.astype(np.int8), bias, tuple(conv.stride),
               tuple(conv.pads), conv.groups, shift, layer.relu, layer.residual,
               align.astype(np.int64), bits)
    # Worst case |sum(w * x) + b| over any input in the input format's range.
    acc_bound = int(np.max(numerics.acc_bound(wq, bias, fx.signed))) if cout else 0
    w_scaled = w_float * w_scale
    info = {
        "fl_w": _compact(fl_w),
        "weight_range": _int_range(wq),
        "weight_float_range": [float(w_float.min()), float(w_float.max())],
        # Weights beyond the range of their width and format (clipped to it).
        "weight_saturated": 0 if layer.identity else
        int(np.sum(np.abs(w_scaled) > numerics.weight_range(bits)[1] + 0.5)),
        "weight_sqnr_db": float("inf") if layer.identity else
        sqnr_db(w_scaled, wq),
        "bias_range": _int_range(bias),
        # Bias correction, real units: the largest |change| over the channels.
        "bias_correction": float(np.max(np.abs(correction))) if cout else 0.0,
        "shift_min": int(shift.min()), "shift_max": int(shift.max()),
        "align_min": int(op.align.min()), "align_max": int(op.align.max()),
        "acc_bound": acc_bound,
        "acc_overflow_possible": acc_bound > numerics.acc_range(acc_bits)[1],
        "identity": layer.identity,
    }
    return op, info


def lut_table(node: Unary, fin: Format, fout: Format) -> np.ndarray:
    """The 256 entries of ``node``'s table: entry ``b`` is the function of the value the
    byte ``b`` holds in ``fin`` (two's complement for a signed format, so entry 128, the
    never-produced -128, is computed too), quantized to ``fout`` (round half to even,
    saturate). Returns int64 (256,) in ``fout``'s range."""
    b = np.arange(256, dtype=np.int64)
    q = np.where(b >= 128, b - 256, b) if fin.signed else b
    return numerics.quantize(UNARY_FUNCTIONS[node.fn](numerics.dequantize(q, fin), *node.args),
                             fout)


def _build(layer: Layer, formats, per_channel, weight_mode, acc_bits, fine, x_mean, weight_fls=None,
           bits: int = 8):
    fout = formats[layer.output]
    if layer.kind == "conv":
        return _build_conv(layer, formats, per_channel, weight_mode, acc_bits, fine, x_mean, weight_fls,
                           bits)
    if layer.kind == "copy":
        src = layer.inputs[0]
        op = QAdd(layer.name, src, src, layer.output, 0, 0, formats[src].fl + 1 - fout.fl)
        return op, {"shift_min": op.shift, "shift_max": op.shift}
    if layer.kind == "concat":
        return QConcat(layer.name, tuple(layer.inputs), layer.output), {}
    if layer.kind == "slice":
        n = layer.node
        return QSlice(layer.name, n.input, n.output, n.start, n.stop), {}
    if layer.kind == "shuffle":
        n = layer.node
        return QShuffle(layer.name, n.input, n.output, tuple(int(c) for c in n.perm)), {}
    if layer.kind == "resize":
        n = layer.node
        return QResize(layer.name, n.input, n.output, n.factor), {}
    if layer.kind == "clip":
        code = clip_code(layer.clip_max, fout)
        return QLut(layer.name, layer.inputs[0], layer.output,
                    np.minimum(np.arange(256, dtype=np.int64), code)), {"clip_code": code}
    if layer.kind == "lut":
        n = layer.node
        return QLut(layer.name, n.input, n.output, lut_table(n, formats[n.input], fout)), \
            {"function": n.fn}
    if layer.kind == "mul":
        n = layer.node
        op = QMul(layer.name, n.a, n.b, n.output,
                  formats[n.a].fl + formats[n.b].fl - fout.fl)
        return op, {"shift_min": op.shift, "shift_max": op.shift}
    if layer.kind == "add":
        a, b = layer.inputs
        fl = max(formats[a].fl, formats[b].fl)
        op = QAdd(layer.name, a, b, layer.output, fl - formats[a].fl, fl - formats[b].fl,
                  fl - fout.fl, layer.relu)
        return op, {"a_shift": op.a_shift, "b_shift": op.b_shift,
                    "shift_min": op.shift, "shift_max": op.shift}
    p = layer.pool
    if layer.kind == "maxpool":
        return QMaxPool(layer.name, p.input, p.output, tuple(p.kernel), tuple(p.stride),
                        tuple(p.pads)), {}
    log2 = numerics.avgpool_fl_shift(p.divisor)
    if log2 is None:   # pragma: no cover - fold_avgpool_correction guarantees a power of two
        raise ValueError(f"{p.name}: divisor {p.divisor} is not a power of two")
    shift = formats[p.input].fl + log2 - fout.fl
    op = QAvgPool(layer.name, p.input, p.output, tuple(p.kernel), tuple(p.stride),
                  tuple(p.pads), int(shift))
    return op, {"window": p.kernel[0] * p.kernel[1], "divisor": p.divisor,
                "shift_min": op.shift, "shift_max": op.shift}


def quantize(graph: Graph, calib: np.ndarray | None, *, mode: str = "std", per_channel: bool = False,
             weight_mode: str = "std", acc_bits: int = 32, fine_formats: bool = True,
             bias_correction: bool = True, clip: str = "exact",
             on_graph: Callable[[QGraph], None] | None = None,
             fixed: FixedFormats | None = None,
             weight_bits: dict[str, int] | None = None) -> tuple[QGraph, dict]:
    """Quantize a float graph with calibration data.

    ``graph``: as loaded (folding runs here); ``calib``: float inputs (N, C, H, W) or
    one (C, H, W). ``mode`` "std" (F8Net's rule) or "grid" (RMS-optimal fl) chooses
    activation formats; ``weight_mode`` the same for weights (docs/numerics.md: std of the
    folded weight), per layer or, with ``per_channel``, per output channel.
    ``acc_bits`` is the accumulator width the QGraph is computed with (``meta``).
    ``fine_formats`` lets data and weights all far under 1 take formats finer than
    s8.7/u8.8 (:func:`_fl_limit`); ``bias_correction`` subtracts from each conv's bias
    the mean output error of its rounded weights on the calibration set
    (:func:`weight_error_bias`). docs/numerics.md gives the measured effect of each.
    ``clip`` (:data:`CLIP_MODES`) quantizes Clip(0, c) exactly or as the saturation of
    its output format (module docstring).

    ``weight_bits``: conv layer name (the QConv's) -> width its weights are stored in,
    one of :data:`~fxpgen.numerics.WEIGHT_BITS`; layers not named stay 8-bit. Narrower
    weights saturate to :func:`~fxpgen.numerics.weight_range` and take the RMS-optimal
    fl at their width (docs/mixed_precision.md). A name that is no conv layer with
    weights, a width not in the list, or a narrower width for weights ``fixed`` gives
    is a :class:`WeightBitsError`.

    Returns the :class:`QGraph` and a report (plain dict): ``tensors`` (format and
    statistics of every tensor), ``layers`` (in op order: op, inputs, output, format,
    shifts min/max, weight fl and width, ranges, clipped count and ``weight_sqnr_db``,
    accumulator bound, measured ``sqnr_db`` of the golden model against the float graph
    on the calibration set, ``format_sqnr_db``, the SQNR of quantizing the float tensor
    straight into its format (the best the layer can reach), and
    ``predicted_sqnr_db``, a first-order error model propagating input, weight and
    rounding errors (see :func:`_predicted_mse`)), ``output_sqnr_db`` (measured),
    ``weight_memory`` (:func:`weight_memory`) and ``notes`` (Clip bounds, folded pool
    factors, saturation warnings).

    ``on_graph`` is called with the :class:`QGraph` as soon as it is checked, before
    the report's golden run on the calibration set (as long again as the rest), so a
    caller can start work on it meanwhile; it must not change the graph.

    ``fixed``: the formats a quantized graph's quantizers fix
    (:func:`~fxpgen.compiler.qdq.load_qdq`), used instead of the rules (module
    docstring); then ``calib`` may be None if they fix every format that would need it.

    Raises :class:`~fxpgen.compiler.graph.UnsupportedOp` for graphs the passes cannot
    map and :class:`HardwareRangeError` for shifts outside the hardware's fields.
    """
    if mode not in ("std", "grid") or weight_mode not in ("std", "grid"):
        raise ValueError(f"mode and weight_mode must be 'std' or 'grid', not {mode!r}, "
                         f"{weight_mode!r}")
    if clip not in CLIP_MODES:
        raise ValueError(f"clip must be one of {', '.join(CLIP_MODES)}, not {clip!r}")
    g, layers = _fused(graph, clip, fixed)
    widths = _weight_widths(layers, fixed, weight_bits)
    cal = _calibrate_fused(g, layers, calib, mode=mode, acc_bits=acc_bits, fine_formats=fine_formats,
                           clip=clip, fixed=fixed)
    built = [build_layer(cal, layer, bits=widths.get(layer.name, 8), per_channel=per_channel,
                         weight_mode=weight_mode, bias_correction=bias_correction)
             for layer in cal.layers]
    qg = assemble(cal, [op for op, _ in built], per_channel=per_channel, weight_mode=weight_mode)
    check_hardware_ranges(qg)
    if on_graph is not None:
        on_graph(qg)
    options = {"fine_formats": fine_formats, "bias_correction": bias_correction, "clip": clip}
    return qg, _report(qg, cal, [info for _, info in built], options)


class WeightBitsError(ValueError):
    """A weight width asked of :func:`quantize` that the graph cannot take: an unknown
    layer, a width not in :data:`~fxpgen.numerics.WEIGHT_BITS`, or weights the graph
    fixes."""


@dataclass
class Calibration:
    """What :func:`quantize` settles before it quantizes any weight: the prepared
    graph, its layers, the float tensors of the calibration batch and every tensor's
    format. Activation formats do not depend on the weights, so layers of any weight
    width are built on one calibration (:func:`build_layer`, :func:`assemble`) with the
    same result as a fresh :func:`quantize`."""

    graph: Graph
    layers: list[Layer]
    acts: dict[str, np.ndarray]
    formats: dict[str, Format]
    stats: dict[str, dict]
    calib: np.ndarray
    fixed: FixedFormats | None
    mode: str
    acc_bits: int
    fine_formats: bool


def calibrate_graph(graph: Graph, calib: np.ndarray | None, *, mode: str = "std", acc_bits: int = 32,
                    fine_formats: bool = True, clip: str = "exact",
                    fixed: FixedFormats | None = None) -> Calibration:
    """Steps 1 to 3 of :func:`quantize` (same arguments): fold, fuse, run the float
    graph on the calibration set and choose every tensor's format."""
    g, layers = _fused(graph, clip, fixed)
    return _calibrate_fused(g, layers, calib, mode=mode, acc_bits=acc_bits,
                            fine_formats=fine_formats, clip=clip, fixed=fixed)


def _fused(graph: Graph, clip: str, fixed: FixedFormats | None) -> tuple[Graph, list[Layer]]:
    g = prepare(graph, scale_clip_bounds=clip == "exact" and fixed is None)
    return g, fuse(g)


def _calibrate_fused(g: Graph, layers: list[Layer], calib, *, mode, acc_bits, fine_formats, clip,
                     fixed) -> Calibration:
    calibrated = calib is not None
    if not calibrated:
        if fixed is None:
            raise ValueError("calibration data are needed for a graph without quantizers")
        calib = _fixed_samples(g, fixed)
    calib = np.asarray(calib, np.float64)
    if calib.shape == g.shape(g.input):
        calib = calib[None]
    if calib.ndim != 4 or calib.shape[1:] != g.shape(g.input) or len(calib) == 0:
        raise ValueError(f"calibration data must have shape (N,) + {g.shape(g.input)} with "
                         f"N >= 1, not {calib.shape}")
    if not np.all(np.isfinite(calib)):
        raise ValueError("calibration data must be finite")
    acts = run_float(g, calib)
    formats, stats = calibrate(g, layers, acts, mode, fine_formats,
                               fixed.activations if fixed else None, clip)
    if fixed is not None:
        _check_fixed(g, layers, fixed, stats, calibrated)
    layers = unify_concat_inputs(g, layers, formats, stats)
    if fine_formats and fixed is None:
        fit_shift_fields(layers, formats, acc_bits)
    for layer in layers:
        if layer.kind == "copy":
            acts[layer.output] = acts[layer.pre]
    if clip == "exact":
        layers = exact_clips(layers, formats, stats, acts)
    return Calibration(g, layers, acts, formats, stats, calib, fixed, mode, acc_bits, fine_formats)


def build_layer(cal: Calibration, layer: Layer, *, bits: int = 8, per_channel: bool = False,
                weight_mode: str = "std", bias_correction: bool = True) -> tuple[object, dict]:
    """Step 4 of :func:`quantize` for one layer of ``cal``: its op (a conv's weights
    ``bits`` wide) and the report's facts about it."""
    # A weight the graph fixes keeps its bias too: no correction for it.
    fixed = cal.fixed.weights if cal.fixed else {}
    conv = layer.kind == "conv"
    x_mean = (cal.acts[layer.conv.input].mean(axis=(0, 2, 3))
              if bias_correction and conv and layer.conv.name not in fixed else None)
    op, info = _build(layer, cal.formats, per_channel, weight_mode, cal.acc_bits, cal.fine_formats,
                      x_mean, fixed, bits)
    if conv:
        info["weight_bits"] = bits
    return op, info


def assemble(cal: Calibration, ops: list, *, per_channel: bool = False,
             weight_mode: str = "std") -> QGraph:
    """The :class:`QGraph` of ``cal``'s layers built as ``ops`` (one per layer, in
    order); its ``meta`` records the options and, under ``weight_bits``, the width of
    every conv with weights (identity convs, which apply a ReLU, have none)."""
    names = [cal.graph.input] + [layer.output for layer in cal.layers]
    tensors = {t: QTensor(t, tuple(cal.acts[t].shape[1:]), cal.formats[t]) for t in names}
    widths = {op.name: op.weight_bits for op, layer in zip(ops, cal.layers)
              if layer.kind == "conv" and not layer.identity}
    qg = QGraph(tensors, list(ops), cal.graph.input, cal.graph.output,
                meta={"acc_bits": cal.acc_bits, "mode": cal.mode, "weight_mode": weight_mode,
                      "per_channel": per_channel, "weight_bits": widths,
                      "fused": {layer.name: list(layer.fused) for layer in cal.layers}})
    if cal.graph.output not in tensors:
        raise ValueError(f"graph output {cal.graph.output!r} is not a layer output")
    return qg


def weight_layers(layers: list[Layer]) -> dict[str, int]:
    """Name -> number of weights of every conv layer with weights (identity convs,
    which apply a ReLU, excluded): the layers a width may be asked for."""
    return {layer.name: int(layer.conv.weight.size) for layer in layers
            if layer.kind == "conv" and not layer.identity}


def graph_weight_layers(graph: Graph, fixed: FixedFormats | None = None) -> dict[str, int]:
    """:func:`weight_layers` of a float graph as :func:`quantize` fuses it, those whose
    weights ``fixed`` gives left out (they stay 8-bit)."""
    _, layers = _fused(graph, "exact", fixed)
    given = fixed.weights if fixed else {}
    # A conv layer is named after its conv node.
    return {name: n for name, n in weight_layers(layers).items() if name not in given}


def _weight_widths(layers: list[Layer], fixed: FixedFormats | None,
                   weight_bits: dict[str, int] | None) -> dict[str, int]:
    """``weight_bits`` checked against the graph's layers (:class:`WeightBitsError`)."""
    convs = {layer.name: layer for layer in layers if layer.kind == "conv"}
    given = fixed.weights if fixed else {}
    for name, bits in (weight_bits or {}).items():
        layer = convs.get(name)
        if layer is None:
            raise WeightBitsError(f"weight width for {name!r}: no conv layer of the graph has that name "
                                  f"(conv layers: {', '.join(weight_layers(layers)) or 'none'})")
        if layer.identity:
            raise WeightBitsError(f"weight width for {name!r}: it applies a ReLU/Clip as an identity "
                                  "conv and has no weights of its own")
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) \
                or bits not in numerics.WEIGHT_BITS:
            raise WeightBitsError(f"weight width of {name!r} must be one of "
                                  f"{', '.join(map(str, numerics.WEIGHT_BITS))}, not {bits!r}")
        if bits != 8 and layer.conv.name in given:
            raise WeightBitsError(f"weight width of {name!r}: its weights are fixed 8-bit by the "
                                  f"graph's quantizer, they cannot be {bits}-bit")
    return {name: int(bits) for name, bits in (weight_bits or {}).items()}


def weight_memory(counts: dict[str, int], widths: dict[str, int]) -> dict:
    """The weight storage of conv layers with ``counts`` weights each stored ``widths``
    bits wide (8 where not given): ``weights`` (their number), ``bits`` (in all), and
    what float32 and int8 would take, ``float_bits`` and ``int8_bits``, with the ratios
    ``vs_float`` and ``vs_int8``."""
    n = sum(counts.values())
    bits = sum(c * widths.get(name, 8) for name, c in counts.items())
    return {"weights": n, "bits": bits, "float_bits": 32 * n, "int8_bits": 8 * n,
            "vs_float": 32 * n / bits if bits else 0.0, "vs_int8": 8 * n / bits if bits else 0.0}


def _clip_note(layer: Layer, fmt: Format, clip: str) -> str:
    """The report's line on the Clip(0, c) a conv or add absorbed: its bound."""
    head = f"{layer.name}: Clip(0, {layer.clip_max / layer.clip_scale:g})"
    limit = fmt.hi * 2.0 ** -fmt.fl
    if layer.clip_scale != 1.0:
        return (f"{head} exact: rescaled by {layer.clip_scale:.4g} to {layer.clip_max:g}, "
                f"the saturation of {fmt}")
    if clip == "saturate":
        return f"{head} quantized as ReLU saturating at {limit:g} ({fmt})"
    bound = clip_code(layer.clip_max, fmt) * 2.0 ** -fmt.fl
    how = "by a lookup table" if bound < limit else "by the format's limit"
    return f"{head} exact: clipped at {bound:g} ({fmt}) {how}"


def _report(qg: QGraph, cal: Calibration, infos, options: dict) -> dict:
    g, layers, acts, stats, calib = cal.graph, cal.layers, cal.acts, cal.stats, cal.calib
    gold = run_golden_batch(qg, quantize_input(qg, calib))
    tensors = {}
    for name, t in qg.tensors.items():
        f = acts[name]
        tensors[name] = {
            "format_sqnr_db": sqnr_db(f, numerics.dequantize(numerics.quantize(f, t.fmt), t.fmt)),
            "format": str(t.fmt), "signed": t.fmt.signed, "fl": t.fmt.fl, "shape": list(t.shape),
            "float_range": [float(f.min()), float(f.max())],
            # Fraction of calibration values beyond the format's range (clipped).
            "clipped_fraction": float(np.mean((f > t.fmt.hi * 2.0 ** -t.fmt.fl)
                                              | (f < t.fmt.lo * 2.0 ** -t.fmt.fl))),
            **stats[name],
        }
    mse = {qg.input: _format_mse(acts[qg.input], qg.tensor(qg.input).fmt)}
    report_layers = {}
    notes = [f"{name}: {t['clipped_fraction']:.1%} of calibration values saturate in "
             f"{t['format']} (rule: {t['rule']})"
             for name, t in tensors.items() if t["clipped_fraction"] > 0.01]
    for layer, op, info in zip(layers, qg.ops, infos):
        fmt = qg.tensor(layer.output).fmt
        ref = acts[layer.output]
        entry = {
            "op": type(op).__name__, "inputs": list(op.inputs), "output": layer.output,
            "format": str(fmt), "fused": list(layer.fused),
            **info,
            "sqnr_db": sqnr_db(ref, numerics.dequantize(gold[layer.output], fmt)),
            "format_sqnr_db": sqnr_db(ref, numerics.dequantize(numerics.quantize(ref, fmt), fmt)),
        }
        mse[layer.output] = _predicted_mse(layer, op, info, acts, fmt, mse)
        power = float(np.mean(ref ** 2))
        entry["predicted_sqnr_db"] = (float("inf") if mse[layer.output] == 0 else
                                      float(10 * np.log10(power / mse[layer.output]))
                                      if power > 0 else float("-inf"))
        if info.get("weight_saturated"):
            # Weights narrower than 8 bits take the grid search already.
            grid = qg.meta["weight_mode"] == "grid" or info["weight_bits"] < 8
            fixes = [fix for fix, used in (("per_channel=True", qg.meta["per_channel"]),
                                           ("weight_mode='grid'", grid))
                     if not used]
            notes.append(f"{layer.name}: {info['weight_saturated']} weights clip at "
                         f"+-{numerics.weight_range(info['weight_bits'])[1]} "
                         f"(fl_w {info['fl_w']})" + (f"; try {' or '.join(fixes)}" if fixes else ""))
        if layer.kind in ("conv", "add"):
            entry["relu"] = layer.relu
            if layer.clip_max is not None:
                entry["clip_max"] = layer.clip_max
                entry["clip_scale"] = layer.clip_scale
                entry["relu_upper_bound"] = fmt.hi * 2.0 ** -fmt.fl
                notes.append(_clip_note(layer, fmt, options["clip"]))
        if info.get("acc_overflow_possible"):
            notes.append(f"{layer.name}: worst-case accumulator {info['acc_bound']} exceeds "
                         f"{qg.meta['acc_bits']} bits; results saturate if reached")
        report_layers[layer.name] = entry
    for n in g.nodes:
        if isinstance(n, AvgPool) and n.divisor != n.kernel[0] * n.kernel[1]:
            notes.append(f"{n.name}: window {n.kernel[0]}x{n.kernel[1]} averaged as a sum / "
                         f"{n.divisor}; the factor {n.divisor}/{n.kernel[0] * n.kernel[1]} is "
                         "folded into a neighbouring conv")
    return {
        "mode": qg.meta["mode"], "weight_mode": qg.meta["weight_mode"],
        "per_channel": qg.meta["per_channel"], **options, "acc_bits": qg.meta["acc_bits"],
        "calibration_samples": int(len(calib)),
        "input": qg.input, "output": qg.output,
        "tensors": tensors, "layers": report_layers,
        "output_sqnr_db": sqnr_db(acts[qg.output], numerics.dequantize(
            gold[qg.output], qg.tensor(qg.output).fmt)),
        "output_nonzero_fraction": float(np.mean(gold[qg.output] != 0)),
        "weight_memory": weight_memory(weight_layers(layers), qg.meta["weight_bits"]),
        "notes": notes,
    }
