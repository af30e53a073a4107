"""Channel shuffles folded into the convolutions that read them, before lowering.

A :class:`~fxpgen.compiler.qgraph.QShuffle` ``y[c] = x[perm[c]]`` read by an ungrouped
conv costs nothing: the conv reads ``x`` with its weight's input channels moved,
``W'[:, perm[c]] = W[:, c]`` (zero for channels of ``x`` that ``perm`` does not pick),
the same products of the same integers, so the same accumulators. Two rewrites bring
more shuffles next to a conv:

- a slice of a shuffle is the shuffle of the slice of ``perm``, a shuffle of a shuffle
  one shuffle;
- a concat whose every reader is an ungrouped conv (reading it as its input) and
  whose sources include whole-map shuffles concatenates the shuffles' inputs instead,
  followed by the one shuffle that restores the order, which the convs then fold.

A shuffle left without readers is removed; the ones that remain are lowered as 1x1
convolutions by :mod:`~fxpgen.compiler.channel_ops`. The golden model runs the graph
before these rewrites: every value of the tensors the program keeps is the same.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .qgraph import QConcat, QConv, QGraph, QShuffle, QSlice, QTensor

__all__ = ["fold_shuffles"]


def fold_shuffles(qg: QGraph) -> QGraph:
    """``qg`` with its shuffles folded as the module docstring says; ``qg`` itself when
    it has none."""
    if not any(isinstance(op, QShuffle) for op in qg.ops):
        return qg
    tensors, ops = dict(qg.tensors), []
    producer: dict[str, object] = {}
    for op in qg.ops:
        src = producer.get(op.inputs[0]) if op.inputs else None
        if isinstance(op, QSlice) and isinstance(src, QShuffle):
            new = [QShuffle(op.name, src.input, op.output, src.perm[op.start:op.stop])]
        elif isinstance(op, QShuffle) and isinstance(src, QShuffle):
            new = [QShuffle(op.name, src.input, op.output, tuple(src.perm[c] for c in op.perm))]
        elif _conv_folds(op) and isinstance(src, QShuffle):
            new = [_fold_into_conv(tensors, op, src)]
        elif isinstance(op, QConcat) and _only_read_by_convs(qg, op.output):
            new = _unshuffle_concat(tensors, op, producer)
        else:
            new = [op]
        ops += new
        producer.update((o.output, o) for o in new)
    ops = _without_dead_shuffles(ops, qg.output)
    return dataclasses.replace(qg, tensors=tensors, ops=ops)


def _conv_folds(op) -> bool:
    return isinstance(op, QConv) and op.groups == 1


def _only_read_by_convs(qg: QGraph, name: str) -> bool:
    readers = [op for op in qg.ops if name in op.inputs]
    return (name != qg.output and bool(readers)
            and all(_conv_folds(op) and op.residual != name for op in readers))


def _fold_into_conv(tensors: dict[str, QTensor], conv: QConv, shuffle: QShuffle) -> QConv:
    w = conv.weight
    weight = np.zeros((w.shape[0], tensors[shuffle.input].shape[0]) + w.shape[2:], w.dtype)
    weight[:, list(shuffle.perm)] = w
    return dataclasses.replace(conv, input=shuffle.input, weight=weight)


def _whole(tensors: dict[str, QTensor], op) -> bool:
    """Whether ``op`` is a shuffle of every channel of its input."""
    return isinstance(op, QShuffle) and len(op.perm) == tensors[op.input].shape[0]


def _unshuffle_concat(tensors: dict[str, QTensor], op: QConcat, producer: dict) -> list:
    """The concat of the whole-map shuffles' inputs and the shuffle restoring the
    concat's order (module docstring); ``[op]`` when no source is such a shuffle."""
    srcs = [producer.get(t) for t in op.sources]
    if not any(_whole(tensors, s) for s in srcs):
        return [op]
    perm, offset = [], 0
    for t, s in zip(op.sources, srcs):
        picks = s.perm if _whole(tensors, s) else range(tensors[t].shape[0])
        perm += [offset + int(c) for c in picks]
        offset += len(picks)
    inner = f"{op.output}/unshuffled"
    tensors[inner] = dataclasses.replace(tensors[op.output], name=inner)
    sources = tuple(s.input if _whole(tensors, s) else t for t, s in zip(op.sources, srcs))
    return [QConcat(op.name, sources, inner),
            QShuffle(f"{op.name}/order", inner, op.output, tuple(perm))]


def _without_dead_shuffles(ops: list, output: str) -> list:
    """``ops`` without the shuffles nobody reads (a removal can free another's input)."""
    while True:
        read = {t for op in ops for t in op.inputs} | {output}
        dead = [op for op in ops if isinstance(op, QShuffle) and op.output not in read]
        if not dead:
            return ops
        gone = {id(op) for op in dead}
        ops = [op for op in ops if id(op) not in gone]
