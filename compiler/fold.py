"""Folding passes: rewrite a float graph into one the quantizer can map.

Each pass is a function ``Graph -> Graph`` that leaves its argument untouched and keeps
the float function of the graph (up to float rounding):

- :func:`fold_batchnorm`: BatchNorm into the preceding Conv/Gemm;
- :func:`gemm_to_conv`: Flatten + Gemm into a Conv whose kernel covers the whole map,
  a Gemm on a vector into a 1x1 Conv, identity Flattens removed;
- :func:`lower_global_pool`: GlobalAvgPool into an AvgPool over the whole map;
- :func:`fold_avgpool_correction`: for a window that is not a power of two, the factor
  ``2**ceil(log2(w)) / w`` into the conv before (or, failing that, after) the pool, so
  the pool divides by a power of two, i.e. becomes a shift;
- :func:`fold_pad`: an explicit zero Pad into the padding of the convs and average
  pools reading it.

:func:`prepare` runs :func:`fold_pad` first, then the others in that order; afterwards
only Conv, Relu, Clip, MaxPool, AvgPool, Add, Concat, Slice, Shuffle and Resize remain.
"""

from __future__ import annotations

import math

import numpy as np

from fxpgen.compiler.clip_scale import scale_clips
from fxpgen.compiler.graph import (Add, AvgPool, BatchNorm, Clip, Concat, Conv, Flatten, Gemm,
                                   GlobalAvgPool, Graph, MaxPool, Mul, Pad, Relu, Resize, Shuffle,
                                   Slice, Unary, UnsupportedOp)

__all__ = ["fold_batchnorm", "gemm_to_conv", "lower_global_pool", "fold_avgpool_correction",
           "fold_pad", "prepare", "PREPARED_OPS"]

#: Node types left after :func:`prepare`.
PREPARED_OPS = (Conv, Relu, Clip, MaxPool, AvgPool, Add, Concat, Slice, Shuffle, Resize, Unary, Mul)


def _who(node) -> str:
    return node.name if node.OP in node.name else f"{node.name} ({node.OP})"


def _producer(nodes: list, name: str):
    return next((n for n in nodes if n.output == name), None)


def _uses(nodes: list, output: str, name: str) -> int:
    return sum(n.inputs.count(name) for n in nodes) + (name == output)


def _replace_input(nodes: list, old: str, new: str) -> None:
    for n in nodes:
        if isinstance(n, (Add, Mul)):
            n.a = new if n.a == old else n.a
            n.b = new if n.b == old else n.b
        elif isinstance(n, Concat):
            n.sources = tuple(new if s == old else s for s in n.sources)
        elif n.input == old:
            n.input = new


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold every BatchNorm into the Conv or Gemm that produces its input:
    ``w' = w * s``, ``b' = (b - mean) * s + beta`` with ``s = scale / sqrt(var + eps)``
    per output channel.

    Raises :class:`UnsupportedOp` if a BatchNorm's input is not produced by a Conv/Gemm,
    or if that output is also read elsewhere (folding would change the other reader).
    """
    nodes = graph.copy_nodes()
    for bn in [n for n in nodes if isinstance(n, BatchNorm)]:
        prod = _producer(nodes, bn.input)
        if not isinstance(prod, (Conv, Gemm)):
            src = "the graph input" if prod is None else f"{_who(prod)}"
            raise UnsupportedOp(f"{_who(bn)}: a BatchNorm must follow a Conv or Gemm to be folded, "
                                f"but its input {bn.input!r} comes from {src}")
        if _uses(nodes, graph.output, bn.input) != 1:
            raise UnsupportedOp(f"{_who(bn)}: the output {bn.input!r} of {_who(prod)} is also "
                                "read elsewhere, so the BatchNorm cannot be folded into it")
        s = np.asarray(bn.scale, np.float64) / np.sqrt(np.asarray(bn.var, np.float64) + bn.eps)
        prod.weight = prod.weight * s.reshape((-1,) + (1,) * (prod.weight.ndim - 1))
        prod.bias = (prod.bias - bn.mean) * s + bn.bias
        prod.output = bn.output
        nodes.remove(bn)
    return graph.rebuild(nodes)


def _bypass_identity(nodes: list, output: str, node) -> str:
    """Remove a node that computes the identity; returns the (maybe new) graph output.
    The graph output keeps its name where possible (the identity's input is renamed)."""
    nodes.remove(node)
    prod = _producer(nodes, node.input)
    if node.output == output and prod is not None and _uses(nodes, output, node.input) == 0:
        prod.output = node.output
        return output
    _replace_input(nodes, node.output, node.input)
    return node.input if node.output == output else output


def gemm_to_conv(graph: Graph) -> Graph:
    """Turn every Gemm into a Conv, so that every layer is a convolution.

    A Gemm fed by ``Flatten(x)`` with x of shape (C, H, W) becomes a conv over x whose
    (C, H, W) kernel covers the whole map: weight ``(N, C*H*W)`` reshaped to
    ``(N, C, H, W)``, which is exactly ONNX's C-major flatten order. A Gemm on any
    other vector (K, 1, 1) becomes a 1x1 conv. Flattens of a vector are removed.

    Raises :class:`UnsupportedOp` if a Flatten of a map is read by anything but a Gemm
    (the quantized graph has no reshape).
    """
    nodes = graph.copy_nodes()
    output = graph.output
    shapes = {k: t.shape for k, t in graph.tensors.items()}
    for fl in [n for n in nodes if isinstance(n, Flatten) and shapes[n.input][1:] == (1, 1)]:
        output = _bypass_identity(nodes, output, fl)
    for i, gm in enumerate(nodes):
        if not isinstance(gm, Gemm):
            continue
        src = _producer(nodes, gm.input)
        if isinstance(src, Flatten):
            x = src.input
            c, h, w = shapes[x]
        else:
            x = gm.input
            c, h, w = shapes[x][0], 1, 1
        weight = gm.weight.reshape(gm.weight.shape[0], c, h, w)
        nodes[i] = Conv(gm.name, x, gm.output, weight, np.asarray(gm.bias, np.float64))
    for fl in [n for n in nodes if isinstance(n, Flatten)]:
        readers = [n for n in nodes if fl.output in n.inputs]
        if readers or fl.output == output:
            what = ", ".join(_who(r) for r in readers) or "the graph output"
            raise UnsupportedOp(f"{_who(fl)}: the flattened {shapes[fl.input]} map is read by "
                                f"{what}; only Gemm/MatMul may read a flattened map")
        nodes.remove(fl)
    return graph.rebuild(nodes, output)


def lower_global_pool(graph: Graph) -> Graph:
    """GlobalAvgPool -> AvgPool with a kernel covering the whole (H, W) map."""
    nodes = graph.copy_nodes()
    for i, n in enumerate(nodes):
        if isinstance(n, GlobalAvgPool):
            _, h, w = graph.shape(n.input)
            nodes[i] = AvgPool(n.name, n.input, n.output, (h, w), (1, 1))
    return graph.rebuild(nodes)


def _fold_correction_before(nodes: list, output: str, pool: AvgPool, f: float) -> str | None:
    """Scale the conv feeding ``pool`` (through Relu/Clip/MaxPool only, each read once)
    by ``f``; returns the conv's name, or None if there is no such conv."""
    path = []
    t = pool.input
    while True:
        if _uses(nodes, output, t) != 1:
            return None
        prod = _producer(nodes, t)
        if isinstance(prod, Conv):
            break
        # Positive scaling commutes with these (Clip's bound scales along).
        if not isinstance(prod, (Relu, Clip, MaxPool)):
            return None
        path.append(prod)
        t = prod.input
    prod.weight = prod.weight * f
    prod.bias = prod.bias * f
    for n in path:
        if isinstance(n, Clip) and n.max is not None:
            n.max = n.max * f
    return prod.name


def _fold_correction_after(nodes: list, output: str, pool: AvgPool, f: float) -> str | None:
    """Scale the weights of the one conv reading ``pool``'s output by ``f`` (the pool's
    output shrank by ``1 / f``); returns its name, or None if there is no such conv."""
    readers = [n for n in nodes if pool.output in n.inputs]
    if _uses(nodes, output, pool.output) != 1 or len(readers) != 1:
        return None
    reader = readers[0]
    if not isinstance(reader, Conv):
        return None
    reader.weight = reader.weight * f
    return reader.name


def fold_avgpool_correction(graph: Graph) -> Graph:
    """Make every AvgPool divide by a power of two.

    For a window of ``w`` elements that is not a power of two, the pool is changed to
    divide by ``p = 2**ceil(log2(w))`` and the factor ``f = p / w`` (64/49 for 7x7) is
    folded into the weights and bias of the conv producing the pool's input, when that
    conv feeds only the pool (possibly through Relu, Clip and MaxPool, which commute
    with a positive scale). Otherwise, into the weights of the one conv reading the pool
    (e.g. the classifier after a ResNet's global pool). Raises :class:`UnsupportedOp`
    when neither exists.
    """
    nodes = graph.copy_nodes()
    for pool in [n for n in nodes if isinstance(n, AvgPool)]:
        w = pool.divisor
        if w & (w - 1) == 0:
            continue
        p = 1 << math.ceil(math.log2(w))
        f = p / w
        if (_fold_correction_before(nodes, graph.output, pool, f) is None
                and _fold_correction_after(nodes, graph.output, pool, f) is None):
            raise UnsupportedOp(
                f"{_who(pool)}: window of {w} elements is not a power of two, and the "
                f"correction {p}/{w} can be folded neither into a conv feeding only this pool "
                "(through Relu/Clip/MaxPool) nor into the single conv reading its output")
        pool.divisor = p
    return graph.rebuild(nodes)


def fold_pad(graph: Graph) -> Graph:
    """Fold every Pad into the padding of the nodes reading it, which must all be Conv
    or AvgPool: both pad with zeros, as the Pad does (an AvgPool counts padding in its
    window, as it counts the Pad's zeros). A max pool pads with -inf, and other nodes
    do not pad: raise :class:`UnsupportedOp` naming the Pad and the reader."""
    nodes = graph.copy_nodes()
    for pad in [n for n in nodes if isinstance(n, Pad)]:
        readers = [n for n in nodes if pad.output in n.inputs]
        bad = [n for n in readers if not isinstance(n, (Conv, AvgPool))]
        if bad or pad.output == graph.output:
            what = f"{_who(bad[0])} reads it" if bad else "it is the graph output"
            raise UnsupportedOp(f"{_who(pad)}: an explicit Pad is supported only when every reader "
                                f"is a Conv or AveragePool (it becomes their zero padding); {what}")
        for n in readers:
            n.input = pad.input
            n.pads = tuple(a + b for a, b in zip(n.pads, pad.pads))
        nodes.remove(pad)
    return graph.rebuild(nodes)


def prepare(graph: Graph, scale_clip_bounds: bool = True) -> Graph:
    """All folding passes in order; the result holds only :data:`PREPARED_OPS`. With
    ``scale_clip_bounds``, last, every Clip(0, c) between convs is rescaled to the
    saturation of an unsigned format (:func:`~fxpgen.compiler.clip_scale.scale_clips`:
    exact at no cost; the quantizer's ``clip="saturate"`` and fixed formats go without)."""
    g = fold_avgpool_correction(lower_global_pool(gemm_to_conv(fold_batchnorm(fold_pad(graph)))))
    if scale_clip_bounds:
        g = scale_clips(g)
    for n in g.nodes:
        if not isinstance(n, PREPARED_OPS):   # pragma: no cover - the passes remove them
            raise UnsupportedOp(f"{_who(n)}: left over after folding")
    return g
