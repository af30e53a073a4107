"""Exact Clip(0, c) at no cost: rescale it to the saturation of an unsigned format.

The requantizer clamps a ReLU's output at 0 and at the format's limit
``L = 255 * 2**-fl``, a power-of-two multiple of 255 that a bound such as 6 never is.
Positive scaling commutes with Clip, so ``clip(y, 0, c) = clip(s * y, 0, s * c) / s``:
with ``s = L / c`` the producing conv computes ``s * y`` (its weights and bias times
s), the requantizer's saturation at L is the clip at c exactly (code 255 stands for c),
and the convs reading the clipped map take the ``1 / s`` in their weights. The float
graph computes the same function before and after; only the clipped map is stored
scaled, on a grid of ``c / 255`` rather than ``2**-fl`` (finer: for c = 6, 6 / 255
against u8.5's 1 / 32).

A Clip is rescaled when a conv that nothing else reads produces its input and every
reader of its output is a conv, or an average or max pool read only by convs (or by
such pools: pools commute with a positive scale); neither tensor may be the graph output. Any
other Clip keeps its bound and is made exact by a lookup table
(:func:`~fxpgen.compiler.quantize.exact_clips`).
"""

from __future__ import annotations

import math

from .graph import AvgPool, Clip, Conv, Graph, MaxPool

__all__ = ["scale_clips", "clip_scale"]


def clip_scale(c: float) -> tuple[float, float]:
    """The bound ``L = 255 * 2**-fl`` a Clip(0, ``c``) is rescaled to, with fl the one
    putting ``s = L / c`` in [1, 2), and that scale s. ``c`` > 0, real units."""
    fl = math.floor(math.log2(255 / c))
    bound = 255 * 2.0 ** -fl
    return bound, bound / c


def _conv_readers(graph: Graph, t: str) -> list[Conv] | None:
    """The convs that read ``t``, directly or through pools; None if anything else
    reads it or it or a pool's output is the graph output."""
    if t == graph.output:
        return None
    convs = []
    for r in graph.consumers(t):
        if isinstance(r, (AvgPool, MaxPool)):
            inner = _conv_readers(graph, r.output)
            if inner is None:
                return None
            convs += inner
        elif isinstance(r, Conv):
            convs.append(r)
        else:
            return None
    return convs


def scale_clips(graph: Graph) -> Graph:
    """Rescale every Clip(0, c) the module docstring allows to the saturation bound of
    :func:`clip_scale`; a prepared graph (:func:`~fxpgen.compiler.fold.prepare`) in,
    the same function out."""
    g = graph.rebuild(graph.copy_nodes())
    for clip in [n for n in g.nodes if isinstance(n, Clip)]:
        if clip.max is None or clip.max <= 0:
            continue
        prod = g.producer(clip.input)
        readers = _conv_readers(g, clip.output)
        if not isinstance(prod, Conv) or g.uses(clip.input) != 1 or not readers:
            continue
        bound, s = clip_scale(clip.max)
        if s == 1:
            continue
        prod.weight = prod.weight * s
        prod.bias = prod.bias * s
        clip.max, clip.scale = bound, s
        for conv in {id(c): c for c in readers}.values():
            conv.weight = conv.weight / s
    return g
