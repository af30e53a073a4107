"""Quantized ONNX in: QuantizeLinear/DequantizeLinear pairs -> fixed formats.

A model trained with fixed-point quantizers (Brevitas's ``Int8WeightPerTensorFixedPoint``,
``Int8ActPerTensorFixedPoint``, ``Uint8ActPerTensorFixedPoint``) and exported as QCDQ
ONNX carries its formats in the graph: every scale is a power of two, ``2**-fl``, and
every zero point 0. :func:`strip_qdq` removes the quantizers and returns the float
model left (what the front end imports) together with the formats they stood for
(:class:`FixedFormats`), which the quantizer then uses instead of its statistics
(``quantize(..., fixed=...)``). The patterns, as Brevitas's QCDQ export writes them:

- an activation: ``x -> QuantizeLinear -> [Clip] -> DequantizeLinear -> y``; the
  readers of ``y`` read ``x``, and ``x`` gets the format: signed for an int8 zero point
  (then the range must be the narrow [-127, 127], a Clip to it: Brevitas's
  ``narrow_range=True``), unsigned for uint8 (the whole [0, 255]);
- a weight or bias: ``constant integers -> [Clip] -> DequantizeLinear`` (or a constant
  float through QuantizeLinear first); it becomes the float constant ``scale * int``,
  exact in float64, and a weight's fl is recorded for the Conv, Gemm or MatMul reading
  it (any integer fl: it enters only the layer's shift, whose range the quantizer
  checks). A weight must hold int8 in [-127, 127]; a bias's scale must be no finer than
  the accumulator's ``2**-(fl_x + fl_w)`` (Brevitas's ``Int32Bias`` is exactly it), so
  that it lands on the accumulator's grid without rounding.

Every scale must be one power of two per tensor (per-channel scales are refused) and
every zero point 0; anything else raises :class:`~fxpgen.compiler.graph.UnsupportedOp`
in one line naming the node and the scale. A model without QuantizeLinear and
DequantizeLinear comes back unchanged with no formats. QONNX's ``Quant`` nodes are not
read (export QCDQ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from fxpgen import numerics
from fxpgen.compiler.graph import Graph, UnsupportedOp
from fxpgen.compiler.onnx_cleanup import name_nodes
from fxpgen.compiler.onnx_frontend import load_onnx, read_model
from fxpgen.numerics import Format

__all__ = ["FixedFormats", "strip_qdq", "load_qdq", "QDQ_OPS"]

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_WEIGHT_READERS = ("Conv", "Gemm", "MatMul")


@dataclass
class FixedFormats:
    """Formats a quantized graph fixes: ``activations`` by tensor name (the tensor a
    QuantizeLinear read), ``weights`` as the weight fl of each Conv/Gemm/MatMul by
    node name (one per layer), ``quantizers`` the QuantizeLinear that fixed each
    activation, as errors name it ("name (QuantizeLinear)")."""

    activations: dict[str, Format] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    quantizers: dict[str, str] = field(default_factory=dict)


def load_qdq(model) -> tuple[Graph, FixedFormats | None]:
    """Import a model (path, bytes or ``ModelProto``) that may hold QuantizeLinear and
    DequantizeLinear: the float graph and the formats its quantizers fix, or None
    for a float model."""
    proto = read_model(model)
    stripped, fixed = strip_qdq(proto)
    return load_onnx(stripped), fixed


def strip_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, FixedFormats | None]:
    """A copy of ``model`` without its QuantizeLinear/Clip/DequantizeLinear quantizers,
    and the formats they fix (None when it has none). See the module docstring."""
    if not any(n.op_type in QDQ_OPS for n in model.graph.node):
        return model, None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    name_nodes(out.graph)
    return out, _Stripper(out.graph).run()


def _fl_of(who: str, scale: np.ndarray) -> int:
    """``fl`` of a power-of-two scale ``2**-fl`` (one value per tensor)."""
    s = np.asarray(scale, np.float64)
    if s.size != 1:
        raise UnsupportedOp(f"{who}: per-channel scales ({s.size} values) are not supported; "
                            "use one power-of-two scale per tensor")
    v = float(s.reshape(-1)[0])
    mant, exp = math.frexp(v)
    if v <= 0 or mant != 0.5:
        raise UnsupportedOp(f"{who}: scale {v!r} is not a power of two (fxpgen's formats are "
                            "2**-fl; train with fixed-point quantizers)")
    return 1 - exp


class _Stripper:
    def __init__(self, graph: onnx.GraphProto):
        self.g = graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.producer = {o: n for n in graph.node for o in n.output}
        self.fixed = FixedFormats()
        # Dequantized constant -> (its DequantizeLinear, fl, smallest and largest integer).
        self.const_fl: dict[str, tuple[str, int, int, int]] = {}
        self.dropped: set[str] = set()
        self.rename: dict[str, str] = {}

    def run(self) -> FixedFormats:
        dequantized = {i for n in self.g.node if n.op_type in ("Clip", "DequantizeLinear")
                       for i in n.input}
        for node in list(self.g.node):
            if node.op_type == "DequantizeLinear":
                self._dequantize(node)
            elif node.op_type == "QuantizeLinear" and node.output[0] not in dequantized:
                raise UnsupportedOp(f"{node.name} (QuantizeLinear): not followed by a "
                                    "DequantizeLinear (only Q/DQ pairs are supported)")
        self._rewrite()
        self._weights_per_layer()
        return self.fixed

    def _scale_zero(self, node) -> tuple[int, np.ndarray]:
        who = f"{node.name} ({node.op_type})"
        for i, what in ((1, "scale"), (2, "zero point")):
            if len(node.input) > i and node.input[i] and node.input[i] not in self.consts:
                raise UnsupportedOp(f"{who}: {what} {node.input[i]!r} is not a constant")
        fl = _fl_of(who, self.consts[node.input[1]])
        zp = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else \
            np.zeros((), np.uint8)
        if np.any(zp != 0):
            raise UnsupportedOp(f"{who}: zero point {zp.reshape(-1).tolist()} is not 0 (fxpgen's "
                                "formats are symmetric)")
        return fl, zp

    def _clip_bounds(self, clip, dtype) -> tuple[int, int]:
        info = np.iinfo(dtype)
        lo, hi = info.min, info.max
        if clip is None:
            return lo, hi
        args = [self.consts.get(i) if i else None for i in list(clip.input[1:3])]
        if any(i and i not in self.consts for i in clip.input[1:3]):
            raise UnsupportedOp(f"{clip.name} (Clip): bounds are not constant")
        if len(args) > 0 and args[0] is not None:
            lo = max(lo, int(args[0]))
        if len(args) > 1 and args[1] is not None:
            hi = min(hi, int(args[1]))
        return lo, hi

    def _dequantize(self, dq) -> None:
        src = dq.input[0]
        clip = self.producer.get(src)
        clip = clip if clip is not None and clip.op_type == "Clip" else None
        if clip is not None:
            src = clip.input[0]
        q = self.producer.get(src)
        q = q if q is not None and q.op_type == "QuantizeLinear" else None
        # The QuantizeLinear is checked first: errors name the quantizer a user wrote.
        q_fl, q_zp = self._scale_zero(q) if q is not None else (None, None)
        fl, zp = self._scale_zero(dq)
        dtype = zp.dtype if q is None else q_zp.dtype
        lo, hi = self._clip_bounds(clip, dtype)
        if q is not None:
            if q_fl != fl:
                raise UnsupportedOp(f"{dq.name} (DequantizeLinear): scale 2**-{fl} differs from "
                                    f"its QuantizeLinear {q.name}'s")
            x = q.input[0]
            if x in self.consts:
                # QuantizeLinear rounds half to even, as np.rint does.
                ints = np.clip(np.rint(np.asarray(self.consts[x], np.float64) * 2.0 ** fl), lo, hi)
                self._constant(dq, ints, fl)
            else:
                self._activation(dq, q, x, fl, dtype, lo, hi)
            self.dropped.add(q.name)
        elif src in self.consts:
            self._constant(dq, np.clip(np.asarray(self.consts[src], np.int64), lo, hi), fl)
        else:
            raise UnsupportedOp(f"{dq.name} (DequantizeLinear): its input {src!r} is neither a "
                                "constant nor a QuantizeLinear's output")
        self.dropped.add(dq.name)
        if clip is not None:
            self.dropped.add(clip.name)

    def _activation(self, dq, q, x: str, fl: int, dtype, lo: int, hi: int) -> None:
        signed = np.issubdtype(dtype, np.signedinteger)
        who = f"{q.name} (QuantizeLinear)"
        if dtype not in (np.int8, np.uint8):
            raise UnsupportedOp(f"{who}: {np.dtype(dtype).name} activations are not supported "
                                "(only int8 and uint8)")
        want = (numerics.SIGNED_MIN, numerics.SIGNED_MAX) if signed else (0, numerics.UNSIGNED_MAX)
        if (lo, hi) != want:
            raise UnsupportedOp(f"{who}: range [{lo}, {hi}] is not fxpgen's [{want[0]}, {want[1]}] "
                                "(signed activations are narrow range: Brevitas's "
                                "narrow_range=True)")
        top = numerics.SIGNED_FL_MAX if signed else numerics.UNSIGNED_FL_MAX
        if not 0 <= fl <= top:
            raise UnsupportedOp(f"{who}: scale 2**-{fl} gives fl {fl}, outside 0..{top} of a "
                                f"{'signed' if signed else 'unsigned'} format")
        fmt = Format(bool(signed), fl)
        if self.fixed.activations.get(x, fmt) != fmt:
            raise UnsupportedOp(f"{who}: tensor {x!r} is quantized twice, to "
                                f"{self.fixed.activations[x]} and {fmt}")
        self.fixed.activations[x] = fmt
        self.fixed.quantizers[x] = who
        self.rename[dq.output[0]] = x

    def _constant(self, dq, ints: np.ndarray, fl: int) -> None:
        """A quantized weight or bias: the float constant ``int * 2**-fl`` (exact)."""
        name = dq.output[0]
        value = np.asarray(ints, np.float64) * 2.0 ** -fl
        self.consts[name] = value
        self.g.initializer.append(numpy_helper.from_array(value, name))
        lo = int(ints.min()) if ints.size else 0
        hi = int(ints.max()) if ints.size else 0
        self.const_fl[name] = (dq.name, fl, lo, hi)

    def _rewrite(self) -> None:
        """Drop the quantizer nodes; readers of a dequantized activation read the tensor
        the quantizer read. A graph output keeps its name: its producer is renamed."""
        outputs = {o.name for o in self.g.output}
        for y, x in list(self.rename.items()):
            if y in outputs:
                for n in self.g.node:
                    n.output[:] = [y if o == x else o for o in n.output]
                    if n.op_type not in QDQ_OPS:
                        n.input[:] = [y if i == x else i for i in n.input]
                self.fixed.activations[y] = self.fixed.activations.pop(x)
                self.fixed.quantizers[y] = self.fixed.quantizers.pop(x)
                del self.rename[y]
        kept = [n for n in self.g.node if n.name not in self.dropped]
        for n in kept:
            n.input[:] = [self.rename.get(i, i) for i in n.input]
        del self.g.node[:]
        self.g.node.extend(kept)

    def _weights_per_layer(self) -> None:
        for n in self.g.node:
            if n.op_type not in _WEIGHT_READERS or len(n.input) < 2 or n.input[1] not in self.const_fl:
                continue
            who = f"{n.name} ({n.op_type})"
            dq, fl, lo, hi = self.const_fl[n.input[1]]
            if lo < numerics.SIGNED_MIN or hi > numerics.SIGNED_MAX:
                raise UnsupportedOp(f"{who}: weight integers {lo}..{hi} (from {dq}) leave fxpgen's "
                                    "narrow range [-127, 127] (Brevitas's narrow_range=True)")
            self.fixed.weights[n.name] = fl
            x = n.input[0]
            if len(n.input) > 2 and n.input[2] in self.const_fl and x in self.fixed.activations:
                dq_b, fl_b = self.const_fl[n.input[2]][:2]
                fl_acc = self.fixed.activations[x].fl + fl
                if fl_b > fl_acc:
                    raise UnsupportedOp(f"{dq_b} (DequantizeLinear): bias scale 2**-{fl_b} is finer "
                                        f"than the accumulator's 2**-{fl_acc} of {n.name}; "
                                        "quantize the bias with scale = input scale x weight "
                                        "scale (Brevitas's Int32Bias)")
