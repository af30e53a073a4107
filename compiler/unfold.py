"""Unfolding the first convolution's kernel taps into input channels, on the host.

A convolution with few input channels fills few of the array's rows: ResNet-18's
first layer (3 channels, 7x7 kernel) uses 3 of the 8 rows of the default 8x8 core in
each of its 49 matmuls per n-tile. The host can instead send the image laid out so
that every pixel holds the input pixels several kernel taps read. Two layouts:

- *row unfold*: every pixel holds the ``kw`` input pixels one row of the kernel reads,

      U[kx * C + c, y, ox] = X[c, y, ox * sx + kx - pad_left]      (0 outside the image)

  and the convolution becomes a ``kh x 1`` convolution over ``U`` with stride
  ``(sy, 1)``, no left or right padding and weight ``W'[co, kx * C + c, ky, 0] =
  W[co, c, ky, kx]``: ``kh * ceil(kw * C / rows)`` k-tiles instead of
  ``kh * kw * ceil(C / rows)``. The host sends ``kw / sx`` times the image's pixels.
- *full unfold* (an im2col on the host): every output pixel holds all the
  ``kh * kw`` input pixels its kernel reads,

      U[(ky * kw + kx) * C + c, oy, ox] = X[c, oy * sy + ky - pad_top, ox * sx + kx - pad_left]

  and the convolution becomes a 1x1 convolution with stride 1 and weight
  ``W'[co, (ky * kw + kx) * C + c, 0, 0] = W[co, c, ky, kx]``: ``ceil(kh * kw * C / rows)``
  k-tiles (MobileNetV2's 3x3 layer on 8 rows: 4 instead of the row unfold's 6; ResNet-18's
  7x7: 19 instead of 21). The host sends ``kh * kw / (sy * sx)`` times the image's pixels.

Either is the same sums of the same products. :func:`unfold_choices` ranks the plain
conv and both unfolds by the cycles their first layer costs, counted: one cycle per
matmul vector (k-tiles x output pixels x n-tiles) and one per input LOAD word (a
scratchpad row of the input map as the conv reads it, ``ceil(channels / lanes)`` per
pixel); the lowering takes the cheapest that fits the memories. Counting needs no
lowering, so ranking costs nothing, while the two terms are what the unfolds trade:
fewer matmuls against a longer input stream (ResNet-18 on 8x8 at 224: the full unfold
saves 200,704 vectors and loads 163,072 more words than the row unfold, and the cycle
model finds it 239,458 cycles faster, the loads partly overlapping the matmuls). On
a tie the simpler layout wins.

Only the network's input can be unfolded (the host lays it out); the golden model
and the quantized graph keep the original convolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fxpgen.config import CoreConfig

from .tiling import ceil_div
from .qgraph import QConv, QGraph, QTensor

__all__ = ["InputUnfold", "unfold_choices", "sole_consumer"]


@dataclass(frozen=True)
class InputUnfold:
    """How the host unfolds a (``channels``, ``height``, ``width``) image for a conv
    with ``kh x kw`` taps, strides (``stride_y``, ``stride``) and top and left padding
    ``pad_top``, ``pad_left`` into (``kh * kw * channels``, ``out_height``,
    ``out_width``). The row unfold is ``kh = 1``, ``stride_y = 1``, ``pad_top = 0``
    and ``out_height = height`` (the defaults: every image row kept)."""

    channels: int
    height: int
    width: int
    kw: int
    stride: int
    pad_left: int
    out_width: int
    kh: int = 1
    stride_y: int = 1
    pad_top: int = 0
    out_height: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """The image's shape before unfolding."""
        return (self.channels, self.height, self.width)

    @property
    def unfolded_shape(self) -> tuple[int, int, int]:
        """The shape of the map the host sends."""
        oh = self.height if self.out_height is None else self.out_height
        return (self.kh * self.kw * self.channels, oh, self.out_width)

    def header(self) -> dict:
        """The fields for a program's header, those at their defaults left out (a row
        unfold's header is the one programs had before the full unfold)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The unfolded map of an image (C, H, W)."""
        x = np.asarray(x)
        if x.shape != self.shape:
            raise ValueError(f"input is {x.shape}, the program expects {self.shape}")
        _, oh, ow = self.unfolded_shape
        rows = np.arange(oh)[:, None] * self.stride_y + np.arange(self.kh)[None, :]
        cols = np.arange(ow)[:, None] * self.stride + np.arange(self.kw)[None, :]
        padded = np.zeros((self.channels, max(int(rows.max()) + 1, self.pad_top + self.height),
                           max(int(cols.max()) + 1, self.pad_left + self.width)), x.dtype)
        padded[:, self.pad_top:self.pad_top + self.height, self.pad_left:self.pad_left + self.width] = x
        u = padded[:, rows][:, :, :, cols]                       # (C, oh, kh, ow, kw)
        return np.transpose(u, (2, 4, 0, 1, 3)).reshape(self.unfolded_shape)


def sole_consumer(qg: QGraph):
    """The op that is the only reader of the graph's input, reading it once (and the
    input is not the output); else None."""
    users = [op for op in qg.ops if qg.input in op.inputs]
    if len(users) == 1 and qg.input != qg.output and list(users[0].inputs).count(qg.input) == 1:
        return users[0]
    return None


def unfold_choices(qg: QGraph, cfg: CoreConfig) -> list[tuple[QGraph, InputUnfold | None]]:
    """The graph as the host may send its input: plain (None) and, when the input's
    only consumer is an ungrouped conv with more than one tap, with its taps unfolded
    by row (when ``kw > 1``) and in full (when ``kh > 1``); cheapest first by the
    first layer's counted cycles (see the module docstring), the plain graph first
    among equals."""
    op = sole_consumer(qg)
    if not isinstance(op, QConv) or op.groups != 1 or op.weight.shape[2] * op.weight.shape[3] == 1:
        return [(qg, None)]
    _, cin, kh, kw = op.weight.shape
    _, h, w = qg.tensor(qg.input).shape
    _, oh, ow = qg.tensor(op.output).shape
    unfolds = []
    if kw > 1:
        unfolds.append(InputUnfold(cin, h, w, kw, op.stride[1], op.pads[1], ow))
    if kh > 1:
        unfolds.append(InputUnfold(cin, h, w, kw, op.stride[1], op.pads[1], ow,
                                   kh, op.stride[0], op.pads[0], oh))
    choices = [(qg, None)] + [(_unfolded(qg, op, u), u) for u in unfolds]
    return sorted(choices, key=lambda choice: _first_layer_cycles(choice[0], cfg))


def _unfolded(qg: QGraph, op: QConv, unfold: InputUnfold) -> QGraph:
    """``qg`` reading ``unfold``'s map, its first conv ``op`` rewritten to match."""
    cout, cin, kh, kw = op.weight.shape
    if unfold.kh == 1:
        weight = np.transpose(op.weight, (0, 3, 1, 2)).reshape(cout, kw * cin, kh, 1)
        conv = dataclasses.replace(op, weight=weight, stride=(op.stride[0], 1),
                                   pads=(op.pads[0], 0, op.pads[2], 0))
    else:
        weight = np.transpose(op.weight, (0, 2, 3, 1)).reshape(cout, kh * kw * cin, 1, 1)
        conv = dataclasses.replace(op, weight=weight, stride=(1, 1), pads=(0, 0, 0, 0))
    t = qg.tensor(qg.input)
    tensors = {**qg.tensors, qg.input: QTensor(qg.input, unfold.unfolded_shape, t.fmt)}
    ops = [conv if o is op else o for o in qg.ops]
    return dataclasses.replace(qg, tensors=tensors, ops=ops)


def _first_layer_cycles(qg: QGraph, cfg: CoreConfig) -> int:
    """Matmul vectors of the input's consumer plus the input map's LOAD words."""
    op = sole_consumer(qg)
    cout, cin, kh, kw = op.weight.shape
    _, oh, ow = qg.tensor(op.output).shape
    c, h, w = qg.tensor(qg.input).shape
    vectors = kh * kw * ceil_div(cin, cfg.rows) * oh * ow * ceil_div(cout, cfg.cols)
    return vectors + h * w * ceil_div(c, cfg.lanes)
