"""Running one convolution of a large network on the core, in bands of output rows.

A 224x224 feature map does not fit the scratchpad (16-bit row addresses), so the
utilization bench runs each conv layer on its own, a band of output rows at a time.
For output rows ``[y0, y1)`` of a conv with stride ``s``, kernel height ``kh`` and
pads ``(top, left, bottom, right)`` the band needs input rows

    [y0 * s - top, (y1 - 1) * s - top + kh)

clipped to the map. The band is a one-op :class:`~fxpgen.compiler.qgraph.QGraph`
whose input is that crop and whose conv keeps the left and right pads and has a top
(bottom) pad only where the band's window reaches above (below) the map: the band's
output is then exactly rows ``[y0, y1)`` of the layer's output (``band_golden``
checks it in numpy, the bench on the RTL).

A band program is the lowering of that graph with one extra HALT after the input
load (:func:`fxpgen.sim.segments.with_input_halt`), so its three HALT segments are: input load (the zero border and the crop, from
the data stream), the layer itself (weights, biases, shifts, matmuls, requantization:
what the layer costs inside a whole-network run, which starts each layer on an idle
core after the previous layer's HALT), and the output store.

A fused residual (``QConv.residual``) is dropped from the band graph: the lowering
can only take one input map from the stream. The matmul schedule is the same; the
requantization reads no residual operand. The band's integers are then checked
against the golden conv without the residual (``align`` is kept, as the hardware
applies it with a zero residual too).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fxpgen.compiler.conv_plan import rows_per_chunk
from fxpgen.compiler.golden import run_golden
from fxpgen.compiler.lower import Lowered, lower
from fxpgen.compiler.qgraph import QConv, QGraph, QTensor
from fxpgen.compiler.tiling import DoesNotFit, ceil_div
from fxpgen.config import CoreConfig
from fxpgen.sim.engine import NetworkProgram

__all__ = ["BandRows", "band_rows", "band_op", "band_graph", "band_golden", "layer_graph",
           "BandProgram", "band_program", "plan_bands", "spad_rows_for_band"]


@dataclass(frozen=True)
class BandRows:
    """Input rows ``[in0, in1)`` of the map a band of output rows ``[y0, y1)`` reads,
    and the zero rows it adds above (``pad_top``) and below (``pad_bottom``)."""

    y0: int
    y1: int
    in0: int
    in1: int
    pad_top: int
    pad_bottom: int


def band_rows(y0: int, y1: int, stride: int, kh: int, pad_top: int, in_h: int) -> BandRows:
    """The input rows output rows ``[y0, y1)`` need (see the module docstring)."""
    if not 0 <= y0 < y1:
        raise ValueError(f"empty or negative band [{y0}, {y1})")
    lo = y0 * stride - pad_top
    hi = (y1 - 1) * stride - pad_top + kh
    in0, in1 = max(lo, 0), min(hi, in_h)
    return BandRows(y0, y1, in0, in1, in0 - lo, hi - in1)


def _conv_dims(qg: QGraph, op: QConv):
    _, in_h, _ = qg.tensor(op.input).shape
    _, out_h, _ = qg.tensor(op.output).shape
    return in_h, out_h


def band_op(op: QConv, rows: BandRows, *, name_in: str, name_out: str) -> QConv:
    """``op`` restricted to a band: new tensor names, top/bottom pads of the band,
    no residual."""
    _, left, _, right = op.pads
    return dataclasses.replace(op, input=name_in, output=name_out,
                               pads=(rows.pad_top, left, rows.pad_bottom, right), residual=None)


def band_graph(qg: QGraph, op: QConv, y0: int, y1: int, x: np.ndarray) -> tuple[QGraph, np.ndarray]:
    """The one-op graph of output rows ``[y0, y1)`` of ``op`` and its input, the crop
    of the layer's input map ``x`` (C, H, W) integers."""
    in_t, out_t = qg.tensor(op.input), qg.tensor(op.output)
    in_h, out_h = _conv_dims(qg, op)
    if not 0 <= y0 < y1 <= out_h:
        raise ValueError(f"{op.name}: band [{y0}, {y1}) is outside the {out_h} output rows")
    rows = band_rows(y0, y1, op.stride[0], op.weight.shape[2], op.pads[0], in_h)
    if rows.in1 <= rows.in0:
        raise ValueError(f"{op.name}: output rows [{y0}, {y1}) read only padding")
    crop = np.asarray(x)[:, rows.in0:rows.in1, :]
    c, _, w = (int(v) for v in in_t.shape)
    co, _, ow = (int(v) for v in out_t.shape)
    name_in, name_out = f"{op.name}.in[{y0}:{y1}]", f"{op.name}.out[{y0}:{y1}]"
    bop = band_op(op, rows, name_in=name_in, name_out=name_out)
    tensors = {name_in: QTensor(name_in, (c, rows.in1 - rows.in0, w), in_t.fmt),
               name_out: QTensor(name_out, (co, y1 - y0, ow), out_t.fmt)}
    return QGraph(tensors, [bop], name_in, name_out, dict(qg.meta)), crop


def layer_graph(qg: QGraph, op: QConv) -> QGraph:
    """The whole layer as a one-op graph (no residual), for its golden output."""
    out_h = qg.tensor(op.output).shape[1]
    g, _ = band_graph(qg, op, 0, out_h, np.zeros(qg.tensor(op.input).shape, np.int64))
    return g


def band_golden(qg: QGraph, op: QConv, y0: int, y1: int, x: np.ndarray) -> np.ndarray:
    """Golden output (C, y1 - y0, W) of a band, computed from its crop alone."""
    g, crop = band_graph(qg, op, y0, y1, x)
    return run_golden(g, np.asarray(crop, np.int64))[g.output]


def spad_rows_for_band(qg: QGraph, op: QConv, n: int, cfg: CoreConfig) -> int:
    """Scratchpad rows an interior band of ``n`` output rows takes (input map with
    its border plus output map), as the lowering lays them out."""
    c, _, w = qg.tensor(op.input).shape
    co, _, ow = qg.tensor(op.output).shape
    _, left, _, right = op.pads
    kh, s = op.weight.shape[2], op.stride[0]
    in_rows = ((n - 1) * s + kh) * (w + left + right) * ceil_div(c, cfg.lanes)
    return in_rows + n * ow * ceil_div(co, cfg.lanes)


@dataclass
class BandProgram:
    """A band's runnable program (a HALT after the input load, so three HALT
    segments: input, layer, output) and the band's input, the crop."""

    y0: int
    y1: int
    program: NetworkProgram
    crop: np.ndarray

    @property
    def lowered(self) -> Lowered:
        return self.program.view


def band_program(qg: QGraph, op: QConv, y0: int, y1: int, x: np.ndarray,
                 cfg: CoreConfig) -> BandProgram:
    """Lower a band for ``cfg`` (raises :class:`DoesNotFit`)."""
    g, crop = band_graph(qg, op, y0, y1, x)
    # Only the network's input is unfolded for its conv (the host lays it out), as in
    # the whole-network program.
    low = lower(g, cfg, unfold=op.input == qg.input)
    program = NetworkProgram.from_lowered(low, g, input_halt=True)
    crop = np.asarray(crop, np.int64)
    n_segs = len(program.segments(crop))
    if n_segs != 3:
        raise AssertionError(f"{op.name}: a band program should have 3 HALT segments, not {n_segs}")
    return BandProgram(y0, y1, program, crop)


def plan_bands(qg: QGraph, op: QConv, cfg: CoreConfig) -> list[tuple[int, int]]:
    """Output-row bands of ``op``: the whole layer if it fits, else the largest band
    height whose interior band fits the scratchpad, rounded down to whole
    accumulator chunks so the bands run the same chunks as the whole layer would."""
    out_h, out_w = qg.tensor(op.output).shape[1:]
    n = out_h
    while n > 1 and spad_rows_for_band(qg, op, n, cfg) > cfg.spad_depth:
        n -= 1
    if spad_rows_for_band(qg, op, n, cfg) > cfg.spad_depth:
        raise DoesNotFit(f"{op.name}: one output row needs {spad_rows_for_band(qg, op, 1, cfg)} "
                         f"scratchpad rows, spad_depth is {cfg.spad_depth}")
    rpc = rows_per_chunk(cfg, out_h, out_w)
    if n < out_h and n >= rpc:
        n = n // rpc * rpc
    return [(y, min(y + n, out_h)) for y in range(0, out_h, n)]


def band_programs(qg: QGraph, op: QConv, x: np.ndarray, cfg: CoreConfig) -> list[BandProgram]:
    """Programs of every band of ``op``; shrinks the band height if a band does not
    lower (the size estimate is a lower bound of what the lowering needs)."""
    bands = plan_bands(qg, op, cfg)
    while True:
        try:
            return [band_program(qg, op, y0, y1, x, cfg) for y0, y1 in bands]
        except DoesNotFit:
            n = bands[0][1] - bands[0][0]
            if n == 1:
                raise
            n -= 1
            out_h = qg.tensor(op.output).shape[1]
            bands = [(y, min(y + n, out_h)) for y in range(0, out_h, n)]
