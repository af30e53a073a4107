"""The golden model: a :class:`~fxpgen.compiler.qgraph.QGraph` executed exactly as its op
docstrings state, with :mod:`fxpgen.numerics` doing every rounding and saturation.

All arithmetic is int64 numpy, except where float64 is provably exact: a convolution
whose every partial sum stays under 2**53 in magnitude is one float64 matrix product
per image (BLAS), the others one integer einsum per kernel tap. Every function works
on a batch ``(N, C, H, W)`` too, the images being independent.
"""

from __future__ import annotations

import functools

import numpy as np

from fxpgen import numerics
from .graph import window_taps
from .qgraph import (QAdd, QAvgPool, QConcat, QConv, QGraph, QLut, QMaxPool, QMul, QResize,
                     QShuffle, QSlice)

__all__ = ["run_golden", "run_golden_batch", "run_golden_from", "quantize_input", "dequantize_output",
           "predict", "conv_accumulate"]


def conv_accumulate(x: np.ndarray, weight: np.ndarray, stride=(1, 1), pads=(0, 0, 0, 0),
                    groups: int = 1) -> np.ndarray:
    """Exact integer ``sum(w * x)`` of a grouped convolution with zero padding.

    ``x``: (N, Cin, H, W) integers, ``weight``: (Cout, Cin // groups, kh, kw) integers,
    ``pads`` = (top, left, bottom, right). Returns (N, Cout, Ho, Wo) int64, not
    saturated (int8 x uint8 products summed in int64 cannot overflow for any real layer).
    """
    x = np.asarray(x, np.int64)
    w = np.asarray(weight, np.int64)
    n, cin = x.shape[:2]
    cout, cin_g, kh, kw = w.shape
    if cin != cin_g * groups:
        raise ValueError(f"weight {w.shape} with groups={groups} does not fit {cin} channels")
    # Depthwise convs (one channel per group) are faster as the einsum.
    if cin_g > 1 and x.size and w.size and _bound(x) * _bound(w) * cin_g * kh * kw < 2 ** 53:
        return _accumulate_float64(x, w, stride, pads, groups)
    ho, wo, taps = window_taps(x.reshape(n, groups, cin_g, *x.shape[2:]), (kh, kw), stride,
                               pads, 0)
    wg = w.reshape(groups, cout // groups, cin_g, kh, kw)
    acc = np.zeros((n, groups, cout // groups, ho, wo), np.int64)
    for i, j, view in taps:
        acc += np.einsum("ngchw,gdc->ngdhw", view, wg[:, :, :, i, j])
    return acc.reshape(n, cout, ho, wo)


def _accumulate_float64(x: np.ndarray, w: np.ndarray, stride, pads, groups: int) -> np.ndarray:
    """:func:`conv_accumulate` as one float64 product of each image's windows (rows: output
    pixels, columns: a group's channels x kernel taps) with the weights. Exact only when
    every partial sum of integers is under 2**53 in magnitude, as the caller checks: then
    no rounding happens in any summation order."""
    n, _, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    wt = w.reshape(groups, cout // groups, cin_g * kh * kw).transpose(0, 2, 1).astype(np.float64)
    out = []
    for img in x:
        ho, wo, taps = window_taps(img.reshape(groups, cin_g, h, wd).astype(np.float64), (kh, kw),
                                   stride, pads, 0)
        cols = np.stack([view for _, _, view in taps], axis=-1)       # (g, c, ho, wo, taps)
        cols = cols.transpose(0, 2, 3, 1, 4).reshape(groups, ho * wo, cin_g * kh * kw)
        out.append(np.matmul(cols, wt).transpose(0, 2, 1))            # (g, cout / g, ho * wo)
    return np.stack(out).astype(np.int64).reshape(n, cout, ho, wo)


def _bound(a: np.ndarray) -> int:
    """The largest magnitude in an integer array, as a Python integer."""
    return max(abs(int(a.min())), abs(int(a.max())))


def _per_channel(v) -> np.ndarray:
    return np.asarray(v, np.int64)[None, :, None, None]


def _run_conv(op: QConv, env: dict, g: QGraph, bits: int) -> np.ndarray:
    w = np.asarray(op.weight)
    if not np.issubdtype(w.dtype, np.integer) or w.size and (w.min() < -127 or w.max() > 127):
        raise ValueError(f"{op.name}: weights must be integers in [-127, 127]")
    acc = numerics.saturate_acc(
        conv_accumulate(env[op.input], w, op.stride, op.pads, op.groups) + _per_channel(op.bias),
        bits)
    al = _per_channel(op.align)
    r = env[op.residual] if op.residual else 0
    if op.residual and r.shape != acc.shape:
        raise ValueError(f"{op.name}: residual {op.residual!r} has shape {r.shape[1:]}, the "
                         f"output {acc.shape[1:]}")
    s = numerics.aligned_add(acc, np.maximum(-al, 0), r, np.maximum(al, 0), bits)
    return numerics.requantize(s, _per_channel(op.shift), g.tensor(op.output).fmt.signed, op.relu)


def _run_maxpool(op: QMaxPool, env: dict, g: QGraph, bits: int) -> np.ndarray:
    lo = g.tensor(op.input).fmt.lo
    _, _, taps = window_taps(env[op.input], op.kernel, op.stride, op.pads, lo)
    return functools.reduce(numerics.maximum, (v for _, _, v in taps))


def _run_avgpool(op: QAvgPool, env: dict, g: QGraph, bits: int) -> np.ndarray:
    _, _, taps = window_taps(env[op.input], op.kernel, op.stride, op.pads, 0)
    total = sum(v for _, _, v in taps)
    return numerics.requantize(total, op.shift, g.tensor(op.output).fmt.signed)


def _run_add(op: QAdd, env: dict, g: QGraph, bits: int) -> np.ndarray:
    s = numerics.aligned_add(env[op.a], op.a_shift, env[op.b], op.b_shift, bits)
    return numerics.requantize(s, op.shift, g.tensor(op.output).fmt.signed, op.relu)


def _run_concat(op: QConcat, env: dict, g: QGraph, bits: int) -> np.ndarray:
    fmts = {g.tensor(t).fmt for t in [*op.sources, op.output]}
    if len(fmts) != 1:
        raise ValueError(f"{op.name}: concatenated maps differ in format: {sorted(map(str, fmts))}")
    return np.concatenate([env[t] for t in op.sources], axis=1)


def _run_slice(op: QSlice, env: dict, g: QGraph, bits: int) -> np.ndarray:
    return env[op.input][:, op.start:op.stop]


def _run_shuffle(op: QShuffle, env: dict, g: QGraph, bits: int) -> np.ndarray:
    return env[op.input][:, list(op.perm)]


def _run_resize(op: QResize, env: dict, g: QGraph, bits: int) -> np.ndarray:
    return env[op.input].repeat(op.factor, axis=2).repeat(op.factor, axis=3)


def _run_lut(op: QLut, env: dict, g: QGraph, bits: int) -> np.ndarray:
    table = np.asarray(op.table, np.int64)
    fmt = g.tensor(op.output).fmt
    if table.shape != (256,) or table.min() < fmt.lo or table.max() > fmt.hi:
        raise ValueError(f"{op.name}: the table must hold 256 values in [{fmt.lo}, {fmt.hi}] ({fmt})")
    return table[env[op.input] & 0xFF]


def _run_mul(op: QMul, env: dict, g: QGraph, bits: int) -> np.ndarray:
    return numerics.requantize(env[op.a] * env[op.b], op.shift, g.tensor(op.output).fmt.signed,
                               op.relu)


_RUN = {QConv: _run_conv, QMaxPool: _run_maxpool, QAvgPool: _run_avgpool, QAdd: _run_add,
        QConcat: _run_concat, QSlice: _run_slice, QShuffle: _run_shuffle, QResize: _run_resize,
        QLut: _run_lut, QMul: _run_mul}


def run_golden_batch(qgraph: QGraph, xs_q: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``qgraph`` on a batch of quantized inputs ``xs_q`` (N, C, H, W), integers in
    the input tensor's format. Returns every tensor by name, (N, C, H, W) int64."""
    xs = np.asarray(xs_q)
    inp = qgraph.tensor(qgraph.input)
    if not np.issubdtype(xs.dtype, np.integer):
        raise TypeError(f"quantized input must be integers, not {xs.dtype} "
                        "(use quantize_input for float data)")
    if xs.ndim != 4 or xs.shape[1:] != tuple(inp.shape):
        raise ValueError(f"input batch must have shape (N,) + {tuple(inp.shape)}, not {xs.shape}")
    if xs.size and (xs.min() < inp.fmt.lo or xs.max() > inp.fmt.hi):
        raise ValueError(f"input values must lie in [{inp.fmt.lo}, {inp.fmt.hi}] ({inp.fmt})")
    return run_golden_from(qgraph, {qgraph.input: xs.astype(np.int64)})


def run_golden_from(qgraph: QGraph, env: dict[str, np.ndarray], start: int = 0) -> dict[str, np.ndarray]:
    """Run ``qgraph.ops[start:]`` on the tensors ``env`` holds: the input and every
    tensor the ops before ``start`` write, as a run of any graph whose first ``start``
    ops are these gives them (a graph that differs from an earlier one from op
    ``start`` on is measured again without its unchanged head). Returns a new dict,
    ``env`` and the new tensors; ``env`` itself is not changed."""
    bits = int(qgraph.meta.get("acc_bits", 32))
    env = dict(env)
    for op in qgraph.ops[start:]:
        y = _RUN[type(op)](op, env, qgraph, bits)
        want = tuple(qgraph.tensor(op.output).shape)
        if y.shape[1:] != want:
            raise ValueError(f"{op.name}: computed shape {y.shape[1:]}, graph says {want}")
        env[op.output] = y
    return env


def run_golden(qgraph: QGraph, x_q: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``qgraph`` on one quantized input ``x_q`` (C, H, W) (integers in the input
    format). Returns every tensor by name as (C, H, W) int64."""
    x = np.asarray(x_q)
    return {k: v[0] for k, v in run_golden_batch(qgraph, x[None]).items()}


def quantize_input(qgraph: QGraph, x_float: np.ndarray) -> np.ndarray:
    """Float input (any leading batch dimensions) to the input tensor's 8-bit format."""
    return numerics.quantize(x_float, qgraph.tensor(qgraph.input).fmt)


def dequantize_output(qgraph: QGraph, y_q: np.ndarray, name: str | None = None) -> np.ndarray:
    """Integer tensor ``name`` (default: the graph output) back to float, ``q * 2**-fl``."""
    return numerics.dequantize(y_q, qgraph.tensor(name or qgraph.output).fmt)


def predict(qgraph: QGraph, x_float: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Quantize float inputs, run the golden model, dequantize the output.

    ``x_float``: (C, H, W) or (N, C, H, W); the result has the same batchedness. The
    batch is processed ``batch_size`` images at a time to bound memory.
    """
    x = np.asarray(x_float, np.float64)
    single = x.ndim == 3
    xs = quantize_input(qgraph, x[None] if single else x)
    outs = [run_golden_batch(qgraph, xs[i:i + batch_size])[qgraph.output]
            for i in range(0, len(xs), batch_size)]
    y = dequantize_output(qgraph, np.concatenate(outs) if outs else
                          np.zeros((0,) + tuple(qgraph.tensor(qgraph.output).shape), np.int64))
    return y[0] if single else y
