"""Unfolding the first convolution's row of kernel taps into input channels, on the host.

A convolution with few input channels fills few of the array's rows: ResNet-18's
first layer (3 channels, 7x7 kernel) uses 3 of the 16 rows of a 16x16 core in each
of its 49 matmuls per n-tile. The host can instead send the image laid out so that
every pixel holds the ``kw`` input pixels one row of the kernel reads:

    U[kx * C + c, y, ox] = X[c, y, ox * sx + kx - pad_left]      (0 outside the image)

The convolution is then a ``kh x 1`` convolution over ``U`` with stride ``(sy, 1)``,
no left or right padding, and weight ``W'[co, kx * C + c, ky, 0] = W[co, c, ky, kx]``:
the same sums of the same products, in ``ceil(kw * C / rows)`` k-tiles per kernel row
instead of ``kw * ceil(C / rows)`` (ResNet-18 on 16x16: 14 matmuls per n-tile instead
of 49). The host sends ``kw / sx`` times the image's bytes; while ``C`` is below the
scratchpad row's lanes, the scratchpad holds about as many rows as before.

Only the network's input can be unfolded (the host lays it out); the golden model
and the quantized graph keep the original convolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .tiling import ceil_div
from .qgraph import QConv, QGraph, QTensor

__all__ = ["InputUnfold", "unfold_input", "sole_consumer"]


@dataclass(frozen=True)
class InputUnfold:
    """How the host unfolds a (``channels``, ``height``, ``width``) image for a conv
    with ``kw`` taps per row, horizontal stride ``stride`` and left padding
    ``pad_left`` into (``kw * channels``, ``height``, ``out_width``)."""

    channels: int
    height: int
    width: int
    kw: int
    stride: int
    pad_left: int
    out_width: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """The image's shape before unfolding."""
        return (self.channels, self.height, self.width)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The unfolded map of an image (C, H, W)."""
        x = np.asarray(x)
        if x.shape != self.shape:
            raise ValueError(f"input is {x.shape}, the program expects {self.shape}")
        cols = np.arange(self.out_width)[:, None] * self.stride + np.arange(self.kw)[None, :]
        padded = np.zeros((self.channels, self.height, max(int(cols.max()) + 1, self.pad_left + self.width)),
                          x.dtype)
        padded[:, :, self.pad_left:self.pad_left + self.width] = x
        u = padded[:, :, cols]                                   # (C, H, out_width, kw)
        return np.transpose(u, (3, 0, 1, 2)).reshape(self.kw * self.channels, self.height, self.out_width)


def sole_consumer(qg: QGraph):
    """The op that is the only reader of the graph's input, reading it once (and the
    input is not the output); else None."""
    users = [op for op in qg.ops if qg.input in op.inputs]
    if len(users) == 1 and qg.input != qg.output and list(users[0].inputs).count(qg.input) == 1:
        return users[0]
    return None


def unfold_input(qg: QGraph, rows: int) -> tuple[QGraph, InputUnfold] | None:
    """``qg`` with its input unfolded for its first convolution, when that is the
    input's only consumer (an ungrouped conv with more than one tap per row) and
    unfolding takes fewer k-tiles of ``rows`` input channels; else None."""
    op = sole_consumer(qg)
    if not isinstance(op, QConv):
        return None
    cout, cin, kh, kw = op.weight.shape
    if op.groups != 1 or kw == 1:
        return None
    if ceil_div(kw * cin, rows) >= kw * ceil_div(cin, rows):
        return None
    t = qg.tensor(qg.input)
    _, h, w = t.shape
    ow = qg.tensor(op.output).shape[2]
    unfold = InputUnfold(cin, h, w, kw, op.stride[1], op.pads[1], ow)
    weight = np.transpose(op.weight, (0, 3, 1, 2)).reshape(cout, kw * cin, kh, 1)
    conv = dataclasses.replace(op, weight=weight, stride=(op.stride[0], 1),
                               pads=(op.pads[0], 0, op.pads[2], 0))
    tensors = {**qg.tensors, qg.input: QTensor(qg.input, (kw * cin, h, ow), t.fmt)}
    ops = [conv if o is op else o for o in qg.ops]
    return dataclasses.replace(qg, tensors=tensors, ops=ops), unfold
