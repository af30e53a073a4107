"""Concat, Slice and Shuffle along the channels where the scratchpad layout cannot simply
copy channel groups.

A map stores channel c of a pixel in row ``c // lanes``, byte ``c % lanes``
(:mod:`~fxpgen.compiler.layout`), and the vector unit's MAX and ADD work byte for byte
on whole rows: they move a channel group from one map to another but cannot move a
byte to another lane. So a concat whose inputs before the last each fill whole groups
(C a multiple of ``lanes``), and a slice starting at a group boundary, are copies of
groups (:func:`~fxpgen.compiler.vector_ops.emit_concat`,
:func:`~fxpgen.compiler.vector_ops.emit_slice`). The others are rewritten here into
1x1 convolutions whose weights are 0 or 1, which the systolic array computes exactly:

- a slice ``x[start:stop]``: weight ``W[j, start + j] = 1``, shift 0;
- a shuffle ``y[c] = x[perm[c]]`` (one that no conv folded,
  :mod:`~fxpgen.compiler.shuffle_fold`): weight ``W[c, perm[c]] = 1``, shift 0;
- a concat of ``x_0 .. x_n-1``: ``t_0 = E_0 x_0``, ``t_k = E_k x_k + t_k-1`` (the
  previous map as the residual, align 0, shift 0), where ``E_k`` places ``x_k``'s
  channels at its offset in the output and zeros elsewhere; ``t_n-1`` is the output.

The inputs and output of a concat share one format (the quantizer's rule), as do a
slice's and a shuffle's, so every accumulator holds a value of that format and the
requantization by 0 keeps it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .qgraph import QConcat, QConv, QGraph, QShuffle, QSlice, QTensor

__all__ = ["concat_aligned", "slice_aligned", "expand_unaligned"]


def concat_aligned(qg: QGraph, op: QConcat, lanes: int) -> bool:
    """Whether every input but the last fills whole channel groups."""
    return all(qg.tensor(t).shape[0] % lanes == 0 for t in op.sources[:-1])


def slice_aligned(op: QSlice, lanes: int) -> bool:
    """Whether the slice starts at a channel group."""
    return op.start % lanes == 0


def expand_unaligned(qg: QGraph, lanes: int) -> QGraph:
    """``qg`` with every shuffle, and every concat and slice the layout cannot copy by
    channel groups, rewritten into 1x1 convolutions (module docstring); ``qg`` itself
    when there is none."""
    tensors, ops = dict(qg.tensors), []
    for op in qg.ops:
        if isinstance(op, QConcat) and not concat_aligned(qg, op, lanes):
            ops += _concat_convs(qg, op, tensors)
        elif isinstance(op, QSlice) and not slice_aligned(op, lanes):
            ops.append(_slice_conv(qg, op))
        elif isinstance(op, QShuffle):
            ops.append(_pick_conv(qg, op.name, op.input, op.output, op.perm))
        else:
            ops.append(op)
    if len(ops) == len(qg.ops) and all(a is b for a, b in zip(ops, qg.ops)):
        return qg
    return dataclasses.replace(qg, tensors=tensors, ops=ops)


def _concat_convs(qg: QGraph, op: QConcat, tensors: dict[str, QTensor]) -> list[QConv]:
    out = qg.tensor(op.output)
    c_out = out.shape[0]
    convs, prev, offset = [], None, 0
    for k, src in enumerate(op.sources):
        c = qg.tensor(src).shape[0]
        weight = np.zeros((c_out, c, 1, 1), np.int8)
        weight[offset + np.arange(c), np.arange(c)] = 1
        last = k == len(op.sources) - 1
        name = op.output if last else f"{op.output}/{k}"
        tensors[name] = QTensor(name, out.shape, out.fmt)
        convs.append(QConv(op.name if last else f"{op.name}/{k}", src, name, weight,
                           np.zeros(c_out, np.int64), residual=prev))
        prev, offset = name, offset + c
    return convs


def _slice_conv(qg: QGraph, op: QSlice) -> QConv:
    return _pick_conv(qg, op.name, op.input, op.output, range(op.start, op.stop))


def _pick_conv(qg: QGraph, name: str, src: str, out: str, picks) -> QConv:
    """The 1x1 conv ``y[j] = x[picks[j]]``."""
    picks = list(picks)
    weight = np.zeros((len(picks), qg.tensor(src).shape[0], 1, 1), np.int8)
    weight[np.arange(len(picks)), picks] = 1
    return QConv(name, src, out, weight, np.zeros(len(picks), np.int64))
