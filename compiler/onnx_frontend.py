"""ONNX front end: a float ONNX model -> :class:`~fxpgen.compiler.graph.Graph`.

The model first goes through :func:`~fxpgen.compiler.onnx_cleanup.cleanup`, which removes
what exporters add around the layers (Identity, inference Dropout, constant shape
arithmetic, ReduceMean over H and W as GlobalAveragePool). Then supported (default
domain, batch size 1 or a symbolic batch dimension):

- Conv (2-D; strides, pads, auto_pad, groups incl. depthwise; dilations 1), weight and
  bias constant;
- Gemm (transA 0, any transB/alpha/beta, constant B and C) and MatMul with a constant
  (K, N) right operand, both on a (1, K) vector;
- BatchNormalization (inference), Relu, Clip (constant bounds: min 0 fuses as a ReLU,
  any other min is a lookup table), MaxPool, AveragePool,
  GlobalAveragePool, Add of two tensors of one shape, Flatten (axis 0 or 1) and Reshape
  to a flat (1, N) or (N,) vector (its shape a constant, maybe folded by the clean-up);
- MaxPool with ``ceil_mode=1``: the extra output row or column becomes padding at the
  bottom or right (a window never starts in that padding, as onnx defines it);
- Concat of 4-D maps along the channels (axis 1), Slice of the channels (constant
  starts/ends, step 1, other axes whole) and Split along the channels (one Slice per
  output);
- Pad (constant mode, value 0, on H and W only), folded later into the padding of the
  Conv or AveragePool reading it (:func:`~fxpgen.compiler.fold.fold_pad`);
- the channel shuffle as exported by torch.onnx, ``Reshape (N, g, C/g, H, W) -> Transpose
  perm (0, 2, 1, 3, 4) -> Reshape (N, C, H, W)``, as one
  :class:`~fxpgen.compiler.graph.Shuffle` (the 5-D tensors between are never graph
  tensors; any other 5-D Reshape or Transpose is rejected);
- Resize (mode nearest; scales or sizes giving one integer factor on H and W; the
  coordinate transformation and nearest modes for which onnx computes
  ``y[i] = x[i // f]``, :func:`nearest_is_repeat`) and Upsample (nearest), as a
  :class:`~fxpgen.compiler.graph.Resize`;
- Add of a constant right after a Conv/Gemm/MatMul whose output only it reads is taken
  as that layer's bias (how exporters often write Linear: MatMul + Add);
- Sigmoid, HardSigmoid, HardSwish, Tanh, Gelu (``approximate`` none or tanh),
  LeakyRelu: a :class:`~fxpgen.compiler.graph.Unary` each (a lookup table); ``Mul(x,
  Sigmoid(x))`` with the Sigmoid read only there is one SiLU;
- Mul of two tensors of one shape, or of a map and a (1, C, 1, 1) per-channel
  vector (squeeze-excitation), either way round;
- weights from initializers or Constant nodes.

Nodes of other ops raise one :class:`~fxpgen.compiler.graph.UnsupportedOp` listing them
all, per op; an unsupported attribute or pattern of a supported op raises at once,
naming the node, the op and the attribute or reason.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from fxpgen.compiler.graph import (Add, AvgPool, BatchNorm, Clip, Concat, Conv, Flatten, Gemm,
                                   GlobalAvgPool, Graph, MaxPool, Mul, Pad, Relu, Resize, Shuffle,
                                   Slice, Unary, UnsupportedOp)
from fxpgen.compiler.onnx_cleanup import cleanup

__all__ = ["load_onnx", "read_model", "SUPPORTED_OPS", "UnsupportedOp", "ModelFileError", "nearest_is_repeat"]

SUPPORTED_OPS = ("Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Constant", "Conv",
                 "Flatten", "Gelu", "Gemm", "GlobalAveragePool", "HardSigmoid", "HardSwish",
                 "LeakyRelu", "MatMul", "MaxPool", "Mul", "Pad", "Relu", "Reshape", "Resize",
                 "Sigmoid", "Slice", "Split", "Tanh", "Transpose", "Upsample")

#: The Transpose of a channel shuffle: (N, g, C/g, H, W) -> (N, C/g, g, H, W).
_SHUFFLE_PERM = [0, 2, 1, 3, 4]

_NAMES_SHOWN = 5   # node names listed per unsupported op before "... and N more"

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


class ModelFileError(ValueError):
    """A model file (or bytes) that holds no readable ONNX model."""


def read_model(model: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """The ``ModelProto`` of a path, serialized bytes or a ``ModelProto`` (returned as
    is). Raises :class:`ModelFileError` for a file or bytes that hold no ONNX model."""
    where = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "the model"
    try:
        if isinstance(model, (str, os.PathLike)):
            model = onnx.load(os.fspath(model))
        elif isinstance(model, bytes):
            model = onnx.load_from_string(model)
    except DecodeError as e:
        raise ModelFileError(f"{where}: not an ONNX model, or a truncated one (protobuf could not "
                             f"parse it: {e})") from None
    if not model.graph.node or not model.graph.input or not model.graph.output:
        raise ModelFileError(f"{where}: holds no ONNX graph ({len(model.graph.node)} nodes, "
                             f"{len(model.graph.input)} inputs, {len(model.graph.output)} outputs); "
                             "is it an empty file or another format?")
    return model


def load_onnx(model: str | os.PathLike | bytes | onnx.ModelProto) -> Graph:
    """Import a float ONNX model (a path, serialized bytes or a ``ModelProto``).

    Returns a :class:`Graph` with tensors in (C, H, W) (vectors (K, 1, 1)), weights in
    float64. Raises :class:`UnsupportedOp` for any op, attribute or pattern outside the
    list in the module docstring (one error listing every node of an unsupported op),
    and :class:`ModelFileError` for a file or bytes that hold no ONNX model. A model
    with QuantizeLinear/DequantizeLinear goes through
    :func:`fxpgen.compiler.qdq.load_qdq` instead, which keeps its formats.
    """
    return _Importer(cleanup(read_model(model))).run()


def _supported(node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in SUPPORTED_OPS


def _unsupported_error(nodes: list[tuple[str, str]]) -> UnsupportedOp:
    """One error for all (op, node name) pairs: per op its count and first names."""
    by_op: dict[str, list[str]] = {}
    for op, name in nodes:
        by_op.setdefault(op, []).append(name)
    lines = [f"{len(nodes)} node{'s' * (len(nodes) > 1)} of unsupported ops:"]
    for op, names in by_op.items():
        shown = ", ".join(repr(n) for n in names[:_NAMES_SHOWN])
        more = f" ... and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else ""
        lines.append(f"  {op} ({len(names)}): {shown}{more}")
    lines.append("supported: " + ", ".join(SUPPORTED_OPS))
    return UnsupportedOp("\n".join(lines))


def nearest_is_repeat(transform: str, nearest_mode: str, factor: int) -> bool:
    """Whether onnx's nearest Resize by the integer ``factor`` with this
    coordinate_transformation_mode and nearest_mode computes ``y[i] = x[i // factor]``.

    half_pixel's source coordinate ``(i + 0.5) / f - 0.5`` lies strictly within 0.5 of
    ``i // f``, so both roundings give it, floor and ceil do not; asymmetric's ``i / f``
    floors to it, and rounds to it only while no fraction exceeds 0.5 (f <= 2, the tie
    going to the floor). align_corners' ``i * (n - 1) / (f * n - 1)`` is within 0.5 of
    ``i // f`` for f = 2 (any n) but not for f = 3 (n >= 3). ``tests/test_shuffle_resize.py``
    checks this table against onnx's reference evaluator."""
    rounding = nearest_mode in ("round_prefer_floor", "round_prefer_ceil")
    if transform in ("half_pixel", "pytorch_half_pixel"):
        return rounding
    if transform == "asymmetric":
        return nearest_mode == "floor" or (nearest_mode == "round_prefer_floor" and factor <= 2)
    return transform == "align_corners" and rounding and factor <= 2


def _who(name: str, op: str) -> str:
    """How errors name a node: its name, with the op added unless the name shows it."""
    return name if op in name else f"{name} ({op})"


class _Importer:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          onnx.defs.onnx_opset_version())
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        self.shapes: dict[str, tuple[int, int, int]] = {}  # IR shapes of dynamic tensors
        self.ranks: dict[str, int] = {}                    # their ONNX ranks (2 or 4)
        self.nodes: list = []
        # The 5-D tensors of a channel shuffle being imported: (input, groups,
        # transposed, name of the Transpose).
        self.shuffle_parts: dict[str, tuple[str, int, bool, str]] = {}
        self.uses = Counter(i for n in self.g.node for i in n.input if i)
        self.uses.update(o.name for o in self.g.output)

    # ---- driver ------------------------------------------------------------------------

    def run(self) -> Graph:
        inputs = [i for i in self.g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise UnsupportedOp(f"model has {len(inputs)} inputs "
                                f"({', '.join(i.name for i in inputs)}); only one is supported")
        inp = inputs[0]
        self._add_input(inp)
        if len(self.g.output) != 1:
            raise UnsupportedOp(f"model has {len(self.g.output)} outputs; only one is supported")
        names = self._node_names()
        bad = [(self._op_label(n), name) for n, name in zip(self.g.node, names)
               if not _supported(n)]
        if bad:
            raise _unsupported_error(bad)
        for node, name in zip(self.g.node, names):
            self._node(node, name)
        out = self.g.output[0].name
        if out not in self.shapes:
            raise UnsupportedOp(f"graph output {out!r} is not computed from the input")
        return Graph.build(inp.name, self.shapes[inp.name], self.nodes, out)

    def _node_names(self) -> list[str]:
        """Names for errors and the IR: the node's, or ``{op}_{index}`` when it has none
        or repeats an earlier one (the clean-up already named nodes so)."""
        names: list[str] = []
        seen: set[str] = set()
        for idx, node in enumerate(self.g.node):
            names.append(node.name if node.name and node.name not in seen
                         else f"{node.op_type}_{idx}")
            seen.add(names[-1])
        return names

    @staticmethod
    def _op_label(node) -> str:
        dom = node.domain not in ("", "ai.onnx")
        return f"{node.op_type} (domain {node.domain})" if dom else node.op_type

    def _add_input(self, inp) -> None:
        tt = inp.type.tensor_type
        if tt.elem_type not in _FLOAT_TYPES:
            raise UnsupportedOp(f"input {inp.name!r}: element type "
                                f"{onnx.TensorProto.DataType.Name(tt.elem_type)} is not "
                                "supported (only float)")
        dims = list(tt.shape.dim)
        if len(dims) not in (2, 4):
            raise UnsupportedOp(f"input {inp.name!r}: rank {len(dims)} is not supported "
                                "(only (N, C, H, W) or (N, K))")
        batch = dims[0]
        if batch.HasField("dim_value") and batch.dim_value != 1:
            raise UnsupportedOp(f"input {inp.name!r}: batch size {batch.dim_value} is not "
                                "supported (only 1)")
        rest = []
        for d in dims[1:]:
            if not d.HasField("dim_value") or d.dim_value < 1:
                raise UnsupportedOp(f"input {inp.name!r}: only the batch dimension may be "
                                    f"symbolic, shape is {self._dims_str(dims)}")
            rest.append(d.dim_value)
        self._define(inp.name, tuple(rest) + (1,) * (4 - len(dims)), len(dims))

    @staticmethod
    def _dims_str(dims) -> str:
        return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else
                               (d.dim_param or "?") for d in dims) + "]"

    def _define(self, name: str, shape, rank: int) -> None:
        self.shapes[name] = tuple(int(s) for s in shape)
        self.ranks[name] = rank

    def _emit(self, ir_node, rank: int) -> None:
        shape = ir_node.out_shape(*(self.shapes[t] for t in ir_node.inputs))
        self.nodes.append(ir_node)
        self._define(ir_node.output, shape, rank)

    def _node(self, node, name: str) -> None:
        op = node.op_type
        who = _who(name, op)
        for i in node.input:
            if i in self.shuffle_parts and op not in ("Transpose", "Reshape"):
                raise UnsupportedOp(f"{who}: input {i!r} is a 5-D tensor of a channel shuffle; "
                                    "only its Transpose and Reshape back to 4-D may read it")
            if i and i not in self.shapes and i not in self.consts and i not in self.shuffle_parts:
                raise ValueError(f"{who}: input {i!r} is not defined before the node "
                                 "(the ONNX graph is not topologically sorted)")
        for extra in node.output[1:] if op != "Split" else ():
            if extra and self.uses[extra]:
                raise UnsupportedOp(f"{who}: output {extra!r} (beyond the first) is used; "
                                    "only the first output is supported")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        getattr(self, f"_op_{op}")(node, name, who, attrs)

    # ---- helpers -----------------------------------------------------------------------

    def _const(self, who: str, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise UnsupportedOp(f"{who}: {what} {name!r} is not a constant (initializer or "
                                "Constant node); only constant weights are supported")
        return np.asarray(self.consts[name], np.float64)

    def _dynamic(self, who: str, name: str, ranks=(4,)) -> str:
        if name not in self.shapes:
            raise UnsupportedOp(f"{who}: input {name!r} is a constant; only computed tensors "
                                "are supported there")
        if self.ranks[name] not in ranks:
            raise UnsupportedOp(f"{who}: input {name!r} has rank {self.ranks[name]}; "
                                f"rank {' or '.join(map(str, ranks))} expected")
        return name

    def _onnx_shape(self, name: str) -> tuple[int, ...]:
        c, h, w = self.shapes[name]
        return (1, c, h, w) if self.ranks[name] == 4 else (1, c)

    @staticmethod
    def _pair(who: str, attrs: dict, key: str, default) -> tuple[int, int]:
        v = list(attrs.get(key, default))
        if len(v) != 2:
            raise UnsupportedOp(f"{who}: {key}={v} is not supported (only 2-D)")
        return int(v[0]), int(v[1])

    def _pads(self, who: str, attrs: dict, shape, kernel, stride) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) from ``pads`` or ``auto_pad``."""
        auto = attrs.get("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [[0, 0], [0, 0]]
            for ax in range(2):
                size, k, s = shape[1 + ax], kernel[ax], stride[ax]
                total = max((-(-size // s) - 1) * s + k - size, 0)
                small = total // 2
                # SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the start.
                upper = auto == "SAME_UPPER"
                pads[ax] = [small, total - small] if upper else [total - small, small]
            return pads[0][0], pads[1][0], pads[0][1], pads[1][1]
        if auto == "VALID":
            return 0, 0, 0, 0
        if auto != "NOTSET":
            raise UnsupportedOp(f"{who}: auto_pad={auto} is not supported")
        p = [int(v) for v in attrs.get("pads", [0, 0, 0, 0])]
        if len(p) != 4:
            raise UnsupportedOp(f"{who}: pads={p} is not supported (only 2-D)")
        if min(p) < 0:
            raise UnsupportedOp(f"{who}: pads={p} is not supported (only >= 0)")
        return p[0], p[1], p[2], p[3]

    def _check_window(self, who, attrs, shape, kernel, stride, pads, ceil_ok=False) -> None:
        dil = [int(d) for d in attrs.get("dilations", [1, 1])]
        if any(d != 1 for d in dil):
            raise UnsupportedOp(f"{who}: dilations={dil} is not supported (only 1)")
        if attrs.get("ceil_mode", 0) and not ceil_ok:
            for ax in range(2):
                n = shape[1 + ax] + pads[ax] + pads[ax + 2] - kernel[ax]
                if n % stride[ax]:
                    raise UnsupportedOp(f"{who}: ceil_mode=1 is not supported where it changes "
                                        "the output size (only 0)")

    # ---- ops ---------------------------------------------------------------------------

    def _op_Constant(self, node, name, who, attrs) -> None:
        if "value" in attrs:
            v = numpy_helper.to_array(attrs["value"])
        elif "value_float" in attrs or "value_int" in attrs:
            v = np.asarray(attrs.get("value_float", attrs.get("value_int")))
        elif "value_floats" in attrs or "value_ints" in attrs:
            v = np.asarray(attrs.get("value_floats", attrs.get("value_ints")))
        else:
            raise UnsupportedOp(f"{who}: attribute {sorted(attrs)} is not supported "
                                "(only value, value_float(s), value_int(s))")
        self.consts[node.output[0]] = v

    def _op_Conv(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0])
        w = self._const(who, node.input[1], "weight")
        if w.ndim != 4:
            raise UnsupportedOp(f"{who}: {w.ndim - 2}-D convolution is not supported (only 2-D)")
        b = (self._const(who, node.input[2], "bias") if len(node.input) > 2 and node.input[2]
             else np.zeros(w.shape[0]))
        kernel = tuple(w.shape[2:])
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != kernel:
            raise UnsupportedOp(f"{who}: kernel_shape={list(attrs['kernel_shape'])} disagrees "
                                f"with the weight shape {list(w.shape)}")
        stride = self._pair(who, attrs, "strides", [1, 1])
        shape = self.shapes[x]
        pads = self._pads(who, attrs, shape, kernel, stride)
        self._check_window(who, attrs, shape, kernel, stride, pads)
        groups = int(attrs.get("group", 1))
        if shape[0] != w.shape[1] * groups or w.shape[0] % groups:
            raise UnsupportedOp(f"{who}: group={groups} does not fit weight {list(w.shape)} and "
                                f"{shape[0]} input channels")
        self._emit(Conv(name, x, node.output[0], w, b.reshape(-1), stride, pads, groups), 4)

    def _op_Gemm(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0], ranks=(2,))
        if attrs.get("transA", 0):
            raise UnsupportedOp(f"{who}: transA=1 is not supported (only 0)")
        b = self._const(who, node.input[1], "B")
        bt = b.T if attrs.get("transB", 0) else b          # (K, N)
        weight = float(attrs.get("alpha", 1.0)) * bt.T
        bias = np.zeros(weight.shape[0])
        if len(node.input) > 2 and node.input[2]:
            c = self._const(who, node.input[2], "C")
            try:
                bias = float(attrs.get("beta", 1.0)) * np.broadcast_to(c, (1, weight.shape[0]))[0]
            except ValueError:
                raise UnsupportedOp(f"{who}: C of shape {list(c.shape)} is not supported "
                                    f"(only a bias broadcast to (1, {weight.shape[0]}))") from None
        self._emit(Gemm(name, x, node.output[0], weight, bias.copy()), 2)

    def _op_MatMul(self, node, name, who, attrs) -> None:
        if node.input[0] in self.consts:
            raise UnsupportedOp(f"{who}: a constant left operand is not supported (only "
                                "vector x constant matrix)")
        x = self._dynamic(who, node.input[0], ranks=(2,))
        b = self._const(who, node.input[1], "right operand")
        if b.ndim != 2:
            raise UnsupportedOp(f"{who}: right operand of rank {b.ndim} is not supported "
                                "(only a (K, N) matrix)")
        self._emit(Gemm(name, x, node.output[0], b.T.copy(), np.zeros(b.shape[1])), 2)

    def _op_BatchNormalization(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0], ranks=(2, 4))
        if attrs.get("training_mode", 0):
            raise UnsupportedOp(f"{who}: training_mode=1 is not supported (only 0)")
        if not attrs.get("spatial", 1):
            raise UnsupportedOp(f"{who}: spatial=0 is not supported (only 1)")
        scale, bias, mean, var = (self._const(who, node.input[i], what).reshape(-1)
                                  for i, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
        self._emit(BatchNorm(name, x, node.output[0], scale, bias, mean, var,
                             float(attrs.get("epsilon", 1e-5))), self.ranks[x])

    def _op_Relu(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0], ranks=(2, 4))
        self._emit(Relu(name, x, node.output[0]), self.ranks[x])

    def _op_Clip(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0], ranks=(2, 4))
        if self.opset < 11:
            lo, hi = attrs.get("min"), attrs.get("max")
        else:
            def opt(i, what):
                if len(node.input) > i and node.input[i]:
                    return float(self._const(who, node.input[i], what).reshape(-1)[0])
                return None
            lo, hi = opt(1, "min"), opt(2, "max")
        if hi is not None and float(hi) >= 3.0e38:   # opset-6 default: no upper bound
            hi = None
        if lo is not None and float(lo) <= -3.0e38:
            lo = None
        if lo is None or float(lo) != 0.0:
            if lo is not None and hi is not None and not float(lo) <= float(hi):
                raise UnsupportedOp(f"{who}: min={lo} > max={hi} is not supported")
            bounds = (-np.inf if lo is None else float(lo), np.inf if hi is None else float(hi))
            self._emit(Unary(name, x, node.output[0], "clip", bounds), self.ranks[x])
            return
        if hi is not None and not float(hi) > 0:
            raise UnsupportedOp(f"{who}: max={hi} is not supported (only > 0)")
        self._emit(Clip(name, x, node.output[0], None if hi is None else float(hi)),
                   self.ranks[x])

    def _unary(self, node, name, who, fn: str, args: tuple = ()) -> None:
        x = self._dynamic(who, node.input[0], ranks=(2, 4))
        self._emit(Unary(name, x, node.output[0], fn, tuple(float(a) for a in args)),
                   self.ranks[x])

    def _op_Sigmoid(self, node, name, who, attrs) -> None:
        self._unary(node, name, who, "sigmoid")

    def _op_HardSigmoid(self, node, name, who, attrs) -> None:
        self._unary(node, name, who, "hardsigmoid",
                    (attrs.get("alpha", 0.2), attrs.get("beta", 0.5)))

    def _op_HardSwish(self, node, name, who, attrs) -> None:
        self._unary(node, name, who, "hardswish")

    def _op_Tanh(self, node, name, who, attrs) -> None:
        self._unary(node, name, who, "tanh")

    def _op_LeakyRelu(self, node, name, who, attrs) -> None:
        self._unary(node, name, who, "leakyrelu", (attrs.get("alpha", 0.01),))

    def _op_Gelu(self, node, name, who, attrs) -> None:
        approx = attrs.get("approximate", "none")
        if approx not in ("none", "tanh"):
            raise UnsupportedOp(f"{who}: approximate={approx!r} is not supported (none, tanh)")
        self._unary(node, name, who, "gelu" if approx == "none" else "gelu_tanh")

    def _op_Mul(self, node, name, who, attrs) -> None:
        a, b = node.input[0], node.input[1]
        if a not in self.shapes or b not in self.shapes:
            raise UnsupportedOp(f"{who}: multiplying by a constant is not supported (only two "
                                "computed tensors)")
        for x, s in ((a, b), (b, a)):
            prod = next((n for n in self.nodes if n.output == s), None)
            if (isinstance(prod, Unary) and prod.fn == "sigmoid" and prod.input == x
                    and self.uses[s] == 1):
                # x * sigmoid(x) is one function of x: one SiLU table.
                prod.fn, prod.output = "silu", node.output[0]
                self._define(node.output[0], self.shapes.pop(s), self.ranks.pop(s))
                return
        sa, sb = self._onnx_shape(a), self._onnx_shape(b)
        if len(sb) > len(sa) or (len(sa) == len(sb) and sb[2:] != (1, 1) and sa[2:] == (1, 1)):
            a, b, sa, sb = b, a, sb, sa
        if sa != sb and sb != (1, sa[1], 1, 1):
            raise UnsupportedOp(f"{who}: broadcasting {list(sa)} * {list(sb)} is not supported "
                                "(only equal shapes or a (1, C, 1, 1) per-channel factor)")
        self._emit(Mul(name, a, b, node.output[0]), self.ranks[a])

    def _pool_attrs(self, who, attrs, x, ceil_ok=False):
        if "kernel_shape" not in attrs:
            raise UnsupportedOp(f"{who}: kernel_shape is missing")
        kernel = self._pair(who, attrs, "kernel_shape", None)
        stride = self._pair(who, attrs, "strides", [1, 1])
        pads = self._pads(who, attrs, self.shapes[x], kernel, stride)
        self._check_window(who, attrs, self.shapes[x], kernel, stride, pads, ceil_ok)
        return kernel, stride, pads

    @staticmethod
    def _ceil_pads(shape, kernel, stride, pads) -> tuple[int, int, int, int]:
        """``pads`` with the bottom and right grown so that floor mode gives ceil mode's
        output size: ``ceil((n + pads - k) / s) + 1``, less one when the last window
        would start in the bottom/right padding (onnx's and PyTorch's rule)."""
        grown = list(pads)
        for ax in range(2):
            n, k, s, lo, hi = shape[1 + ax], kernel[ax], stride[ax], pads[ax], pads[ax + 2]
            out = -(-(n + lo + hi - k) // s) + 1
            if (out - 1) * s >= n + lo:
                out -= 1
            grown[ax + 2] = max(hi, (out - 1) * s + k - n - lo)
        return tuple(grown)

    def _op_MaxPool(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0])
        kernel, stride, pads = self._pool_attrs(who, attrs, x, ceil_ok=True)
        if max(pads[0], pads[2]) >= kernel[0] or max(pads[1], pads[3]) >= kernel[1]:
            # A window made only of padding has no defined maximum.
            raise UnsupportedOp(f"{who}: pads={list(pads)} is not supported (only pads smaller "
                                f"than the kernel {list(kernel)})")
        if attrs.get("ceil_mode", 0):
            pads = self._ceil_pads(self.shapes[x], kernel, stride, pads)
        self._emit(MaxPool(name, x, node.output[0], kernel, stride, pads), 4)

    def _op_AveragePool(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0])
        kernel, stride, pads = self._pool_attrs(who, attrs, x)
        if any(pads) and not attrs.get("count_include_pad", 0):
            # Border windows would average fewer pixels: no single shift fits them.
            raise UnsupportedOp(f"{who}: count_include_pad=0 with pads={list(pads)} is not "
                                "supported (only count_include_pad=1 or no padding)")
        self._emit(AvgPool(name, x, node.output[0], kernel, stride, pads), 4)

    def _op_GlobalAveragePool(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0])
        self._emit(GlobalAvgPool(name, x, node.output[0]), 4)

    def _op_Add(self, node, name, who, attrs) -> None:
        a, b = node.input[0], node.input[1]
        dyn = [t for t in (a, b) if t in self.shapes]
        if len(dyn) == 2:
            if self._onnx_shape(a) != self._onnx_shape(b):
                raise UnsupportedOp(f"{who}: broadcasting {list(self._onnx_shape(a))} + "
                                    f"{list(self._onnx_shape(b))} is not supported (only equal "
                                    "shapes)")
            self._emit(Add(name, a, b, node.output[0]), self.ranks[a])
        elif len(dyn) == 1:
            self._fold_constant_add(node, who, dyn[0], self.consts[b if dyn[0] == a else a])
        else:
            raise UnsupportedOp(f"{who}: both operands are constants (constant folding is not "
                                "supported)")

    def _fold_constant_add(self, node, who: str, x: str, c: np.ndarray) -> None:
        prod = next((n for n in self.nodes if n.output == x), None)
        if not isinstance(prod, (Conv, Gemm)) or self.uses[x] != 1:
            raise UnsupportedOp(f"{who}: adding a constant is only supported as the bias of a "
                                "Conv/Gemm/MatMul whose output only this Add reads")
        oshape = self._onnx_shape(x)
        try:
            cb = np.broadcast_to(np.asarray(c, np.float64), oshape)
        except ValueError:
            raise UnsupportedOp(f"{who}: constant of shape {list(np.shape(c))} does not "
                                f"broadcast to {list(oshape)}") from None
        per_channel = cb.reshape(oshape[1], -1)
        if not np.all(per_channel == per_channel[:, :1]):
            raise UnsupportedOp(f"{who}: constant of shape {list(np.shape(c))} varies within a "
                                "channel; only a per-channel bias is supported")
        prod.bias = prod.bias + per_channel[:, 0]
        prod.output = node.output[0]
        self._define(node.output[0], self.shapes.pop(x), self.ranks.pop(x))

    def _op_Flatten(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0], ranks=(2, 4))
        axis = int(attrs.get("axis", 1))
        if axis < 0:
            axis += self.ranks[x]
        if axis not in (0, 1):
            raise UnsupportedOp(f"{who}: axis={attrs.get('axis')} is not supported (only 0 or 1: "
                                "a flat vector)")
        self._emit(Flatten(name, x, node.output[0]), 2)

    @staticmethod
    def _reshape_target(attrs: dict, target: list[int], src: tuple[int, ...]) -> list[int]:
        """``target`` with 0 (copy the input's dimension unless ``allowzero``) and one -1
        (what is left) resolved against the input shape ``src``."""
        total = int(np.prod(src))
        resolved = [src[i] if v == 0 and not attrs.get("allowzero", 0) and i < len(src) else v
                    for i, v in enumerate(target)]
        if resolved.count(-1) == 1:
            known = int(np.prod([v for v in resolved if v != -1]))
            resolved = [total // known if v == -1 and known else v for v in resolved]
        return resolved

    def _op_Reshape(self, node, name, who, attrs) -> None:
        if node.input[0] in self.shuffle_parts:
            self._shuffle_merge(node, who, attrs)
            return
        x = self._dynamic(who, node.input[0], ranks=(2, 4))
        target = [int(v) for v in self._const(who, node.input[1], "shape").reshape(-1)]
        src = self._onnx_shape(x)
        resolved = self._reshape_target(attrs, target, src)
        if len(resolved) == 5:
            self._shuffle_split(node, who, x, target, resolved)
            return
        total = int(np.prod(src))
        if resolved not in ([1, total], [total]):
            raise UnsupportedOp(f"{who}: shape={target} is not supported (only a flat vector "
                                f"[1, {total}] or [{total}])")
        self._emit(Flatten(name, x, node.output[0]), 2)

    def _shuffle_part_output(self, node, who: str) -> str:
        out = node.output[0]
        if self.uses[out] != 1:
            raise UnsupportedOp(f"{who}: the 5-D tensor {out!r} is read {self.uses[out]} times; "
                                "a channel shuffle reads it once")
        return out

    def _shuffle_split(self, node, who: str, x: str, target, resolved) -> None:
        """The first Reshape of a channel shuffle, (N, C, H, W) -> (N, g, C/g, H, W)."""
        n, c, h, w = self._onnx_shape(x) if self.ranks[x] == 4 else (0, 0, 0, 0)
        g = resolved[1]
        if self.ranks[x] != 4 or g < 1 or resolved != [n, g, c // g, h, w] or c % g:
            raise UnsupportedOp(f"{who}: shape={target} is not supported (a 5-D Reshape only as "
                                "the (N, g, C/g, H, W) view of a channel shuffle)")
        self.shuffle_parts[self._shuffle_part_output(node, who)] = (x, g, False, "")

    def _op_Transpose(self, node, name, who, attrs) -> None:
        part = self.shuffle_parts.get(node.input[0])
        perm = [int(p) for p in attrs.get("perm", [])]
        if part is None or part[2] or perm != _SHUFFLE_PERM:
            raise UnsupportedOp(f"{who}: perm={perm} is not supported (a Transpose only as the "
                                f"{_SHUFFLE_PERM} of a channel shuffle, after its Reshape to "
                                "(N, g, C/g, H, W))")
        self.shuffle_parts[self._shuffle_part_output(node, who)] = (part[0], part[1], True, name)

    def _shuffle_merge(self, node, who: str, attrs) -> None:
        """The last Reshape of a channel shuffle, (N, C/g, g, H, W) -> (N, C, H, W):
        ``y[i * g + j] = x[j * C/g + i]``."""
        x, g, transposed, name = self.shuffle_parts[node.input[0]]
        n, c, h, w = self._onnx_shape(x)
        target = [int(v) for v in self._const(who, node.input[1], "shape").reshape(-1)]
        if not transposed or self._reshape_target(attrs, target, (n, c // g, g, h, w)) != [n, c, h, w]:
            raise UnsupportedOp(f"{who}: shape={target} is not supported (a 5-D tensor is only "
                                f"reshaped back to [{n}, {c}, {h}, {w}] after the Transpose "
                                "of a channel shuffle)")
        perm = tuple(int(p) for p in np.arange(c).reshape(g, c // g).T.reshape(-1))
        self._emit(Shuffle(name, x, node.output[0], perm), 4)

    def _resize_factor(self, who: str, x: str, scales, sizes) -> int:
        """The one integer factor on H and W of ``scales`` (N, C, H, W) or ``sizes``."""
        n, c, h, w = self._onnx_shape(x)
        if scales is not None and scales.size:
            s = [float(v) for v in scales.reshape(-1)]
            f = s[2] if len(s) == 4 else 0.0
            ok = len(s) == 4 and s[:2] == [1.0, 1.0] and s[2] == s[3] and f >= 1 and f == int(f)
            what = f"scales={s}"
        elif sizes is not None and sizes.size:
            s = [int(v) for v in sizes.reshape(-1)]
            f = s[2] / h if len(s) == 4 else 0.0
            ok = len(s) == 4 and s[:2] == [n, c] and s[2] % h == 0 and s[2] * w == s[3] * h and f >= 1
            what = f"sizes={s}"
        else:
            raise UnsupportedOp(f"{who}: neither scales nor sizes is given")
        if not ok:
            raise UnsupportedOp(f"{who}: {what} is not supported (only one integer factor on H "
                                "and W, N and C kept)")
        return int(f)

    def _optional_const(self, who, node, i: int, what: str):
        return self._const(who, node.input[i], what) if len(node.input) > i and node.input[i] else None

    def _op_Resize(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0])
        if attrs.get("mode", "nearest") != "nearest":
            raise UnsupportedOp(f"{who}: mode={attrs['mode']} is not supported (only nearest)")
        if self.opset < 11:   # Resize-10 is Upsample-9 renamed
            self._upsample(node, name, who, x, self._optional_const(who, node, 1, "scales"))
            return
        for key, default in (("axes", None), ("keep_aspect_ratio_policy", "stretch")):
            if attrs.get(key, default) != default:
                raise UnsupportedOp(f"{who}: {key}={attrs[key]} is not supported")
        factor = self._resize_factor(who, x, self._optional_const(who, node, 2, "scales"),
                                     self._optional_const(who, node, 3, "sizes"))
        transform = attrs.get("coordinate_transformation_mode", "half_pixel")
        mode = attrs.get("nearest_mode", "round_prefer_floor")
        if not nearest_is_repeat(transform, mode, factor):
            raise UnsupportedOp(f"{who}: coordinate_transformation_mode={transform} with "
                                f"nearest_mode={mode} and factor {factor} is not supported (only "
                                "modes giving y[i] = x[i // factor]: asymmetric with floor (or "
                                "round_prefer_floor for factor 2), half_pixel or pytorch_half_pixel "
                                "with round_prefer_floor or round_prefer_ceil, align_corners with "
                                "these for factor 2)")
        self._emit(Resize(name, x, node.output[0], factor), 4)

    def _upsample(self, node, name: str, who: str, x: str, scales) -> None:
        """Upsample and Resize-10: nearest is ``x[floor(i / scale)]``."""
        factor = self._resize_factor(who, x, scales, None)
        self._emit(Resize(name, x, node.output[0], factor), 4)

    def _op_Upsample(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0])
        if attrs.get("mode", "nearest") != "nearest":
            raise UnsupportedOp(f"{who}: mode={attrs['mode']} is not supported (only nearest)")
        scales = (np.asarray(attrs["scales"], np.float64) if "scales" in attrs
                  else self._optional_const(who, node, 1, "scales"))
        self._upsample(node, name, who, x, scales)

    def _op_Concat(self, node, name, who, attrs) -> None:
        xs = [self._dynamic(who, i) for i in node.input]
        if int(attrs.get("axis", 0)) not in (1, -3):
            raise UnsupportedOp(f"{who}: axis={attrs.get('axis')} is not supported (only 1: "
                                "the channels)")
        if len({self.shapes[x][1:] for x in xs}) != 1:
            raise UnsupportedOp(f"{who}: inputs of different height or width: "
                                f"{', '.join(str(list(self._onnx_shape(x))) for x in xs)}")
        self._emit(Concat(name, tuple(xs), node.output[0]), 4)

    def _slice_args(self, node, who, attrs) -> list[np.ndarray | None]:
        """starts, ends, axes, steps of a Slice (inputs from opset 10, attributes before)."""
        if self.opset < 10:
            return [None if k not in attrs else np.asarray(attrs[k])
                    for k in ("starts", "ends", "axes", "steps")]
        return [self._const(who, node.input[i], what).astype(np.int64)
                if len(node.input) > i and node.input[i] else None
                for i, what in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))]

    def _op_Slice(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0])
        starts, ends, axes, steps = self._slice_args(node, who, attrs)
        dims = self._onnx_shape(x)
        axes = range(len(starts)) if axes is None else [int(a) % 4 for a in axes]
        steps = np.ones(len(starts), np.int64) if steps is None else steps
        span = {ax: (0, d) for ax, d in enumerate(dims)}
        for ax, a, b, step in zip(axes, starts, ends, steps):
            if int(step) != 1:
                raise UnsupportedOp(f"{who}: steps={[int(v) for v in steps]} is not supported (only 1)")
            span[ax] = tuple(int(np.clip(v + dims[ax] if v < 0 else v, 0, dims[ax]))
                             for v in (int(a), int(b)))
        if any(span[ax] != (0, dims[ax]) for ax in (0, 2, 3)):
            raise UnsupportedOp(f"{who}: only slicing the channels (axis 1) is supported")
        self._emit(Slice(name, x, node.output[0], *span[1]), 4)

    def _op_Split(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0])
        if int(attrs.get("axis", 0)) not in (1, -3):
            raise UnsupportedOp(f"{who}: axis={attrs.get('axis', 0)} is not supported (only 1: "
                                "the channels)")
        c = self.shapes[x][0]
        if len(node.input) > 1 and node.input[1]:
            sizes = [int(v) for v in self._const(who, node.input[1], "split").reshape(-1)]
        elif "split" in attrs:
            sizes = [int(v) for v in attrs["split"]]
        else:
            n = len(node.output)
            sizes = [-(-c // n)] * (n - 1) + [c - (n - 1) * -(-c // n)]
        if len(sizes) != len(node.output) or sum(sizes) != c or min(sizes) < 1:
            raise UnsupportedOp(f"{who}: split={sizes} does not divide {c} channels into "
                                f"{len(node.output)} outputs")
        start = 0
        for k, (out, size) in enumerate(zip(node.output, sizes)):
            self._emit(Slice(f"{name}:{k}", x, out, start, start + size), 4)
            start += size

    def _op_Pad(self, node, name, who, attrs) -> None:
        x = self._dynamic(who, node.input[0])
        mode = attrs.get("mode", "constant")
        if self.opset < 11:
            pads, value = attrs.get("pads", []), float(attrs.get("value", 0.0))
        else:
            pads = self._const(who, node.input[1], "pads").astype(np.int64).reshape(-1)
            value = (float(self._const(who, node.input[2], "constant_value").reshape(-1)[0])
                     if len(node.input) > 2 and node.input[2] else 0.0)
            if len(node.input) > 3 and node.input[3]:
                raise UnsupportedOp(f"{who}: the axes input is not supported (pads of all "
                                    "four axes only)")
        p = [int(v) for v in pads]
        if mode != "constant" or value != 0.0:
            raise UnsupportedOp(f"{who}: mode={mode} value={value:g} is not supported (only "
                                "constant 0)")
        if len(p) != 8 or p[0] or p[1] or p[4] or p[5] or min(p) < 0:
            raise UnsupportedOp(f"{who}: pads={p} is not supported (only >= 0 on H and W)")
        self._emit(Pad(name, x, node.output[0], (p[2], p[3], p[6], p[7])), 4)
