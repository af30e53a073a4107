"""The float graph: what the front ends produce and the folding passes rewrite.

A :class:`Graph` is a list of nodes in execution (topological) order over named
tensors. Batch size is 1 and never appears in a shape: a feature map is ``(C, H, W)``
and a vector (the output of Flatten or Gemm) is ``(C, 1, 1)``, as in the quantized
graph. Every node has one output tensor.

Weights are float64 numpy arrays. Each node knows its output shape
(``out_shape``) and how to compute itself on a batch (``run``, arrays of shape
``(N,) + shape``); :func:`run_float` chains them. The executor is the reference for
calibration statistics and for the folding passes' exactness tests, so it favours
plain, obviously correct numpy over speed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

__all__ = [
    "UnsupportedOp", "Shape", "Tensor", "Conv", "Gemm", "BatchNorm", "Relu", "Clip", "Unary",
    "UNARY_FUNCTIONS", "Mul",
    "MaxPool", "AvgPool", "GlobalAvgPool", "Add", "Flatten", "Concat", "Slice", "Pad", "Shuffle", "Resize", "Node",
    "Graph", "run_float",
    "conv2d_float", "pool_out_size", "window_taps",
]

Shape = tuple[int, int, int]


class UnsupportedOp(ValueError):
    """The model uses an op, attribute or pattern the compiler cannot map.

    The message names the node, the op and the reason, e.g.
    ``"Conv_3: dilations=[2, 2] is not supported (only 1)"``.
    """


@dataclass
class Tensor:
    """A named float tensor of ``shape`` (C, H, W); vectors are (C, 1, 1)."""

    name: str
    shape: Shape


def pool_out_size(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int) -> int:
    """Output length of a conv/pool along one axis (floor mode)."""
    return (size + pad_lo + pad_hi - kernel) // stride + 1


def _window_shape(node, shape: Shape, kernel: tuple[int, int]) -> Shape:
    c, h, w = shape
    pt, pl, pb, pr = node.pads
    ho = pool_out_size(h, kernel[0], node.stride[0], pt, pb)
    wo = pool_out_size(w, kernel[1], node.stride[1], pl, pr)
    if ho < 1 or wo < 1:
        raise ValueError(f"{node.name} ({node.OP}): kernel {kernel} does not fit the padded "
                         f"input {shape}")
    return c, ho, wo


def window_taps(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                pads: tuple[int, int, int, int], value):
    """The sliding windows of a conv/pool over the last two axes of ``x`` (..., H, W).

    ``pads`` = (top, left, bottom, right) rows and columns of ``value`` around the
    input. Returns ``(ho, wo, taps)`` where ``taps`` yields ``(i, j, view)`` for each
    kernel tap: the strided view of the padded ``x`` that the tap covers, of shape
    (..., ho, wo).
    """
    pt, pl, pb, pr = pads
    kh, kw = kernel
    sh, sw = stride
    ho = pool_out_size(x.shape[-2], kh, sh, pt, pb)
    wo = pool_out_size(x.shape[-1], kw, sw, pl, pr)
    xp = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(pt, pb), (pl, pr)], constant_values=value)

    def taps():
        for i in range(kh):
            for j in range(kw):
                yield i, j, xp[..., i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
    return ho, wo, taps()


def conv2d_float(x: np.ndarray, weight: np.ndarray, stride: tuple[int, int],
                 pads: tuple[int, int, int, int], groups: int) -> np.ndarray:
    """Grouped 2-D convolution without bias, one einsum per kernel tap.

    ``x``: (N, Cin, H, W); ``weight``: (Cout, Cin // groups, kh, kw); zero padding
    ``pads`` = (top, left, bottom, right). Returns (N, Cout, Ho, Wo) float64.
    """
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    xg = np.asarray(x, np.float64).reshape(n, groups, cin_g, h, w)
    ho, wo, taps = window_taps(xg, (kh, kw), stride, pads, 0.0)
    wg = np.asarray(weight, np.float64).reshape(groups, cout // groups, cin_g, kh, kw)
    out = np.zeros((n, groups, cout // groups, ho, wo))
    for i, j, view in taps:
        out += np.einsum("ngchw,gdc->ngdhw", view, wg[:, :, :, i, j], optimize=True)
    return out.reshape(n, cout, ho, wo)


@dataclass
class Conv:
    """2-D convolution: ``weight`` (Cout, Cin // groups, kh, kw), ``bias`` (Cout,),
    ``pads`` = (top, left, bottom, right) of zeros."""

    name: str
    input: str
    output: str
    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    groups: int = 1
    OP: ClassVar[str] = "Conv"

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        cout, cin_g, kh, kw = self.weight.shape
        if shape[0] != cin_g * self.groups or cout % self.groups:
            raise ValueError(f"{self.name} (Conv): weight {self.weight.shape} with groups="
                             f"{self.groups} does not fit input {shape}")
        return (cout,) + _window_shape(self, shape, (kh, kw))[1:]

    def run(self, x: np.ndarray) -> np.ndarray:
        y = conv2d_float(x, self.weight, self.stride, self.pads, self.groups)
        return y + self.bias[None, :, None, None]


@dataclass
class Gemm:
    """Fully connected layer on a vector (K, 1, 1): ``y = weight @ x + bias`` with
    ``weight`` (N, K) (ONNX's transB and alpha/beta already applied), ``bias`` (N,)."""

    name: str
    input: str
    output: str
    weight: np.ndarray
    bias: np.ndarray
    OP: ClassVar[str] = "Gemm"

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        n, k = self.weight.shape
        if shape != (k, 1, 1):
            raise ValueError(f"{self.name} (Gemm): weight ({n}, {k}) needs a ({k}, 1, 1) "
                             f"vector input, not {shape}")
        return n, 1, 1

    def run(self, x: np.ndarray) -> np.ndarray:
        y = x.reshape(x.shape[0], -1) @ self.weight.T + self.bias
        return y[:, :, None, None]


@dataclass
class BatchNorm:
    """Inference batch normalization per channel:
    ``(x - mean) / sqrt(var + eps) * scale + bias``."""

    name: str
    input: str
    output: str
    scale: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float = 1e-5
    OP: ClassVar[str] = "BatchNormalization"

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        if shape[0] != len(self.scale):
            raise ValueError(f"{self.name} (BatchNormalization): {len(self.scale)} channels, "
                             f"input {shape}")
        return shape

    def run(self, x: np.ndarray) -> np.ndarray:
        def c(v):
            return np.asarray(v, np.float64)[None, :, None, None]
        return (x - c(self.mean)) / np.sqrt(c(self.var) + self.eps) * c(self.scale) + c(self.bias)


@dataclass
class Relu:
    """``max(x, 0)``."""

    name: str
    input: str
    output: str
    OP: ClassVar[str] = "Relu"

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0.0)


@dataclass
class Clip:
    """``clip(x, 0, max)`` (the front end accepts only a lower bound of 0); ``max``
    None means no upper bound. ``scale`` > 0 is the factor
    :func:`~fxpgen.compiler.clip_scale.scale_clips` multiplied the clip's input and
    bound by (its readers divide it out): the model's own bound is ``max / scale``."""

    name: str
    input: str
    output: str
    max: float | None = None
    scale: float = 1.0
    OP: ClassVar[str] = "Clip"

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, 0.0, np.inf if self.max is None else self.max)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a large positive argument overflows; tanh does not and is equal.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


_erf = np.vectorize(math.erf, otypes=[np.float64])

#: The element-wise functions a :class:`Unary` node computes, by name; each takes the
#: node's ``args`` after ``x`` (ONNX's attributes, in the order listed by the front end).
UNARY_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "sigmoid": _sigmoid,
    "hardsigmoid": lambda x, alpha, beta: np.clip(alpha * x + beta, 0.0, 1.0),
    "hardswish": lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "silu": lambda x: x * _sigmoid(x),
    "tanh": np.tanh,
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                                    * (x + 0.044715 * x ** 3))),
    "leakyrelu": lambda x, alpha: np.where(x >= 0, x, alpha * x),
    "clip": lambda x, lo, hi: np.clip(x, lo, hi),
}


@dataclass
class Unary:
    """An element-wise nonlinear function ``UNARY_FUNCTIONS[fn](x, *args)`` (quantized
    as a 256-entry lookup table)."""

    name: str
    input: str
    output: str
    fn: str
    args: tuple[float, ...] = ()
    OP: ClassVar[str] = "Unary"

    def __post_init__(self):
        if self.fn not in UNARY_FUNCTIONS:
            raise ValueError(f"{self.name}: unknown function {self.fn!r}")

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def run(self, x: np.ndarray) -> np.ndarray:
        return UNARY_FUNCTIONS[self.fn](x, *self.args)


@dataclass
class _TwoOperands:
    """An element-wise node of operands ``a`` and ``b``."""

    name: str
    a: str
    b: str
    output: str

    @property
    def inputs(self) -> list[str]:
        return [self.a, self.b]


@dataclass
class Mul(_TwoOperands):
    """Element-wise product of two tensors of one shape, or of a map ``a`` (C, H, W)
    and a per-channel vector ``b`` (C, 1, 1) broadcast over the pixels."""

    OP: ClassVar[str] = "Mul"

    def out_shape(self, sa: Shape, sb: Shape) -> Shape:
        if sb != sa and sb != (sa[0], 1, 1):
            raise ValueError(f"{self.name} (Mul): operand shapes {sa} and {sb} are neither "
                             "equal nor a map and a per-channel vector")
        return sa

    def run(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a * b


@dataclass
class MaxPool:
    """Max pooling; padding never wins (it is -inf)."""

    name: str
    input: str
    output: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    OP: ClassVar[str] = "MaxPool"

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        return _window_shape(self, shape, self.kernel)

    def run(self, x: np.ndarray) -> np.ndarray:
        self.out_shape(x.shape[1:])   # raises if the window does not fit
        _, _, taps = window_taps(x, self.kernel, self.stride, self.pads, -np.inf)
        return np.max([v for _, _, v in taps], axis=0)


@dataclass
class AvgPool:
    """Average pooling: the sum over the window (zero padding counts) divided by
    ``divisor``, which is the window size ``kh * kw`` unless a folding pass moved a
    correction factor into a neighbouring conv (then the next power of two)."""

    name: str
    input: str
    output: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    divisor: int | None = None
    OP: ClassVar[str] = "AveragePool"

    def __post_init__(self):
        if self.divisor is None:
            self.divisor = self.kernel[0] * self.kernel[1]

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        return _window_shape(self, shape, self.kernel)

    def run(self, x: np.ndarray) -> np.ndarray:
        self.out_shape(x.shape[1:])   # raises if the window does not fit
        _, _, taps = window_taps(x, self.kernel, self.stride, self.pads, 0.0)
        return sum(v for _, _, v in taps) / self.divisor


@dataclass
class GlobalAvgPool:
    """Mean over H and W: (C, H, W) -> (C, 1, 1)."""

    name: str
    input: str
    output: str
    OP: ClassVar[str] = "GlobalAveragePool"

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        return shape[0], 1, 1

    def run(self, x: np.ndarray) -> np.ndarray:
        return x.mean(axis=(2, 3), keepdims=True)


@dataclass
class Add(_TwoOperands):
    """Element-wise sum of two tensors of one shape (no broadcasting)."""

    OP: ClassVar[str] = "Add"

    def out_shape(self, sa: Shape, sb: Shape) -> Shape:
        if sa != sb:
            raise ValueError(f"{self.name} (Add): operand shapes differ: {sa} and {sb}")
        return sa

    def run(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b


@dataclass
class Flatten:
    """(C, H, W) -> (C * H * W, 1, 1) in C-major order (ONNX Flatten, and Reshape to a
    flat vector)."""

    name: str
    input: str
    output: str
    OP: ClassVar[str] = "Flatten"

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        return int(np.prod(shape)), 1, 1

    def run(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], -1, 1, 1)


@dataclass
class Concat:
    """Channel concatenation of maps of one height and width, ``sources`` in order."""

    name: str
    sources: tuple[str, ...]
    output: str
    OP: ClassVar[str] = "Concat"

    @property
    def inputs(self) -> list[str]:
        return list(self.sources)

    def out_shape(self, *shapes: Shape) -> Shape:
        if len({s[1:] for s in shapes}) != 1:
            raise ValueError(f"{self.name} (Concat): inputs differ in height or width: "
                             f"{', '.join(map(str, shapes))}")
        return sum(s[0] for s in shapes), shapes[0][1], shapes[0][2]

    def run(self, *xs: np.ndarray) -> np.ndarray:
        return np.concatenate(xs, axis=1)


@dataclass
class Slice:
    """Channels ``start .. stop`` (step 1) of a map."""

    name: str
    input: str
    output: str
    start: int
    stop: int
    OP: ClassVar[str] = "Slice"

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        if not 0 <= self.start < self.stop <= shape[0]:
            raise ValueError(f"{self.name} (Slice): channels {self.start}..{self.stop} are not a "
                             f"non-empty range of the input's {shape[0]}")
        return self.stop - self.start, shape[1], shape[2]

    def run(self, x: np.ndarray) -> np.ndarray:
        return x[:, self.start:self.stop]


@dataclass
class Pad:
    """Zero padding of ``pads`` = (top, left, bottom, right) rows and columns; the
    folding passes move it into the padding of the conv or pool reading it."""

    name: str
    input: str
    output: str
    pads: tuple[int, int, int, int]
    OP: ClassVar[str] = "Pad"

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        pt, pl, pb, pr = self.pads
        return shape[0], shape[1] + pt + pb, shape[2] + pl + pr

    def run(self, x: np.ndarray) -> np.ndarray:
        pt, pl, pb, pr = self.pads
        return np.pad(x, [(0, 0), (0, 0), (pt, pb), (pl, pr)])


@dataclass
class Shuffle:
    """Channels picked by ``perm``: ``y[c] = x[perm[c]]``, the values distinct input
    channels. A channel shuffle's ``perm`` is a permutation of all of them (the front
    end's import of ``Reshape -> Transpose -> Reshape``)."""

    name: str
    input: str
    output: str
    perm: tuple[int, ...]
    OP: ClassVar[str] = "Shuffle"

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        if len(set(self.perm)) != len(self.perm) or not all(0 <= c < shape[0] for c in self.perm):
            raise ValueError(f"{self.name} (Shuffle): perm {list(self.perm)} is not a list of "
                             f"distinct channels of the input's {shape[0]}")
        return len(self.perm), shape[1], shape[2]

    def run(self, x: np.ndarray) -> np.ndarray:
        return x[:, list(self.perm)]


@dataclass
class Resize:
    """Nearest-neighbour upsampling by the integer ``factor`` on both axes:
    ``y[c, i, j] = x[c, i // factor, j // factor]``."""

    name: str
    input: str
    output: str
    factor: int
    OP: ClassVar[str] = "Resize"

    @property
    def inputs(self) -> list[str]:
        return [self.input]

    def out_shape(self, shape: Shape) -> Shape:
        return shape[0], shape[1] * self.factor, shape[2] * self.factor

    def run(self, x: np.ndarray) -> np.ndarray:
        return x.repeat(self.factor, axis=2).repeat(self.factor, axis=3)


Node = (Conv | Gemm | BatchNorm | Relu | Clip | MaxPool | AvgPool | GlobalAvgPool | Add | Flatten
        | Concat | Slice | Pad | Shuffle | Resize | Unary | Mul)


@dataclass
class Graph:
    """Nodes in execution order over named tensors, one input and one output.

    Build with :meth:`build`, which infers and checks every shape; passes return new
    graphs and never modify their argument (use :meth:`copy_nodes`).
    """

    tensors: dict[str, Tensor]
    nodes: list
    input: str
    output: str

    @classmethod
    def build(cls, input: str, input_shape: Shape, nodes: list, output: str) -> "Graph":
        """Graph of ``nodes`` (topologically ordered) fed by ``input`` of ``input_shape``;
        infers every tensor's shape and checks single assignment and ordering."""
        tensors = {input: Tensor(input, tuple(int(d) for d in input_shape))}
        names = set()
        for node in nodes:
            if node.name in names:
                raise ValueError(f"duplicate node name {node.name!r}")
            names.add(node.name)
            for t in node.inputs:
                if t not in tensors:
                    raise ValueError(f"{node.name} ({node.OP}): input {t!r} is not produced "
                                     "by an earlier node")
            if node.output in tensors:
                raise ValueError(f"{node.name} ({node.OP}): output {node.output!r} is "
                                 "already defined")
            shape = node.out_shape(*(tensors[t].shape for t in node.inputs))
            tensors[node.output] = Tensor(node.output, tuple(int(d) for d in shape))
        if output not in tensors:
            raise ValueError(f"graph output {output!r} is not produced by any node")
        return cls(tensors, list(nodes), input, output)

    def shape(self, name: str) -> Shape:
        return self.tensors[name].shape

    def producer(self, name: str):
        """The node writing tensor ``name`` (None for the graph input)."""
        for node in self.nodes:
            if node.output == name:
                return node
        return None

    def consumers(self, name: str) -> list:
        """Nodes reading ``name``, once per node."""
        return [n for n in self.nodes if name in n.inputs]

    def uses(self, name: str) -> int:
        """How many times ``name`` is read: once per node input slot, plus one if it is
        the graph output. A tensor with one use can be fused away into its reader."""
        return sum(n.inputs.count(name) for n in self.nodes) + (name == self.output)

    def copy_nodes(self) -> list:
        """Deep copies of the nodes (weights included), for passes to rewrite."""
        return copy.deepcopy(self.nodes)

    def rebuild(self, nodes: list, output: str | None = None) -> "Graph":
        """A new graph with the same input and ``nodes``; shapes re-inferred."""
        return Graph.build(self.input, self.shape(self.input), nodes,
                           self.output if output is None else output)


def run_float(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Execute ``graph`` in float64 and return every tensor by name.

    ``x`` is one input of the graph's input shape (C, H, W), or a batch (N, C, H, W);
    the results have the same batchedness.
    """
    x = np.asarray(x, np.float64)
    shape = graph.shape(graph.input)
    single = x.shape == shape
    if single:
        x = x[None]
    if x.shape[1:] != shape:
        raise ValueError(f"input must have shape {shape} or (N,) + {shape}, not {x.shape}")
    env = {graph.input: x}
    for node in graph.nodes:
        env[node.output] = node.run(*(env[t] for t in node.inputs))
    if single:
        env = {k: v[0] for k, v in env.items()}
    return env
