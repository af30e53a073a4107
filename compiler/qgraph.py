"""The quantized graph: what the quantizer produces, the golden model executes and
the lowering turns into a program.

Feature maps are (C, H, W) int8 tensors (batch 1, channel-first as in ONNX); a
vector is (C, 1, 1). Every tensor has a :class:`~fxpgen.numerics.Format`. Every op's
integer semantics is stated in its docstring using :mod:`fxpgen.numerics`; the
golden model implements exactly that and the hardware computes exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fxpgen.numerics import WEIGHT_BITS, Format, weight_range

__all__ = ["QTensor", "QConv", "QMaxPool", "QAvgPool", "QAdd", "QConcat", "QSlice", "QShuffle",
           "QResize", "QLut", "QMul", "QGraph", "QOp"]


@dataclass
class QTensor:
    """A named int8 feature map of ``shape`` (C, H, W) in format ``fmt``."""

    name: str
    shape: tuple[int, int, int]
    fmt: Format


@dataclass
class QConv:
    """Convolution (also fully connected layers, as a kernel covering the whole map).

    ``weight``: int8 (Cout, Cin // groups, kh, kw) in ``weight_range(weight_bits)``
    ([-127, 127] at 8 bits, [-7, 7] at 4); ``bias``: int64 (Cout,)
    in the accumulator format ``fl_x + fl_w[c]``; ``pads`` = (top, left, bottom, right)
    of zeros (value 0 in the input format). Per output channel c and pixel:

        acc = saturate_acc(sum(w * x) + bias[c])
        r   = residual[c, pixel] if residual else 0
        s   = aligned_add(acc, max(-align[c], 0), r, max(align[c], 0))
        y   = requantize(s, shift[c], out.fmt.signed, relu)

    ``align[c]`` brings acc and the residual to one fractional length (> 0 shifts the
    residual left, < 0 the accumulator); ``shift[c] = fl_common[c] - fl_out``.
    ``weight_bits`` (:data:`~fxpgen.numerics.WEIGHT_BITS`) is the width the weights are
    stored in; the hardware sign-extends them to int8, so the arithmetic is the same.
    """

    name: str
    input: str
    output: str
    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    groups: int = 1
    shift: np.ndarray = None
    relu: bool = False
    residual: str | None = None
    align: np.ndarray = None
    weight_bits: int = 8

    def __post_init__(self):
        bits = self.weight_bits
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in WEIGHT_BITS:
            raise ValueError(f"{self.name}: weight_bits must be one of {WEIGHT_BITS}, not {bits!r}")
        self.weight_bits = int(bits)
        lo, hi = weight_range(self.weight_bits)
        w = np.asarray(self.weight)
        if w.size and (w.min() < lo or w.max() > hi):
            raise ValueError(f"{self.name}: {self.weight_bits}-bit weights must lie in [{lo}, {hi}], "
                             f"not {w.min()}..{w.max()}")
        cout = self.weight.shape[0]
        if self.shift is None:
            self.shift = np.zeros(cout, np.int64)
        if self.align is None:
            self.align = np.zeros(cout, np.int64)

    @property
    def inputs(self) -> list[str]:
        return [self.input] + ([self.residual] if self.residual else [])


@dataclass
class QMaxPool:
    """Max pooling; the format is kept. Padding uses the input format's lowest value
    (0 unsigned, -127 signed), which no window maximum can be below."""

    name: str
    input: str
    output: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def inputs(self) -> list[str]:
        return [self.input]


@dataclass
class QAvgPool:
    """Average pooling as a sum and a shift: ``y = requantize(sum over the window, shift,
    out.fmt.signed)`` with ``shift = fl_x + log2(window) - fl_out`` for a power-of-two
    window. (The quantizer folds the correction of other window sizes into the
    preceding layer's weights.) Zero padding counts in the window."""

    name: str
    input: str
    output: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    shift: int = 0

    @property
    def inputs(self) -> list[str]:
        return [self.input]


@dataclass
class QAdd:
    """Element-wise add of two int8 maps of one shape:
    ``y = requantize(aligned_add(a, a_shift, b, b_shift), shift, out.fmt.signed, relu)``
    with ``a_shift``, ``b_shift`` in 0..15 (align to the larger fl)."""

    name: str
    a: str
    b: str
    output: str
    a_shift: int = 0
    b_shift: int = 0
    shift: int = 0
    relu: bool = False

    @property
    def inputs(self) -> list[str]:
        return [self.a, self.b]


@dataclass
class QConcat:
    """Channel concatenation: ``y = concatenate(sources, axis=channels)``. Every source
    and the output have one format (the quantizer makes them so), so no value changes."""

    name: str
    sources: tuple[str, ...]
    output: str

    @property
    def inputs(self) -> list[str]:
        return list(self.sources)


@dataclass
class QSlice:
    """Channels ``start .. stop`` of the input, ``y = x[start:stop]``; the format is kept."""

    name: str
    input: str
    output: str
    start: int
    stop: int

    @property
    def inputs(self) -> list[str]:
        return [self.input]


@dataclass
class QShuffle:
    """Channels picked by ``perm``, ``y[c] = x[perm[c]]`` (distinct input channels; a
    permutation of all of them for a channel shuffle); the format is kept."""

    name: str
    input: str
    output: str
    perm: tuple[int, ...]

    @property
    def inputs(self) -> list[str]:
        return [self.input]


@dataclass
class QResize:
    """Nearest-neighbour upsampling by the integer ``factor``,
    ``y[c, i, j] = x[c, i // factor, j // factor]``; the format is kept."""

    name: str
    input: str
    output: str
    factor: int

    @property
    def inputs(self) -> list[str]:
        return [self.input]


@dataclass
class QLut:
    """An element-wise function as a 256-entry table: ``y = table[x mod 256]``, the
    input byte's two's complement bits as the index (an int8 -1 reads entry 255).
    ``table``: int64 (256,), values in the output format's range."""

    name: str
    input: str
    output: str
    table: np.ndarray

    @property
    def inputs(self) -> list[str]:
        return [self.input]


@dataclass
class QMul:
    """Element-wise product ``y = requantize(a * b, shift, out.fmt.signed, relu)`` (the
    8-bit product is exact) with ``shift = fl_a + fl_b - fl_out`` in -32..31. ``b`` is a
    map of ``a``'s shape or a per-channel vector (C, 1, 1) broadcast over the pixels."""

    name: str
    a: str
    b: str
    output: str
    shift: int = 0
    relu: bool = False

    @property
    def inputs(self) -> list[str]:
        return [self.a, self.b]


QOp = QConv | QMaxPool | QAvgPool | QAdd | QConcat | QSlice | QShuffle | QResize | QLut | QMul


@dataclass
class QGraph:
    """Ops in execution (topological) order, their tensors, the graph input and output."""

    tensors: dict[str, QTensor]
    ops: list
    input: str
    output: str
    meta: dict = field(default_factory=dict)

    def tensor(self, name: str) -> QTensor:
        return self.tensors[name]

    def macs(self, op) -> int:
        """Multiply-accumulates ``op`` asks of the array: a convolution's (fully
        connected layers included) ``Cout * Cin / groups * kh * kw * oh * ow``, the
        true count without padding or tiling; 0 for every other op."""
        if not isinstance(op, QConv):
            return 0
        _, oh, ow = self.tensor(op.output).shape
        return int(np.prod(op.weight.shape)) * oh * ow
