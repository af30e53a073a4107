"""A convolution whose output is off chip and whose buffers for one whole output row
do not fit the scratchpad: computed one output row at a time, in windows of
columns.

A banded conv (:mod:`~fxpgen.compiler.offchip`) holds ``kh`` input rows of the
input's full width and one output row of every channel; a 256-wide row of 64
channels alone takes 2048 scratchpad rows on the 8x8 core. Here each output row
``oy`` is cut into windows of ``wc`` output columns from ``x0``: the window's band
holds the ``kh`` input rows it reads, columns ``x0 * sx - pad_left`` on, ``(wc - 1)
* sx + kw`` of them (outside the map, the map's border byte), every channel group;
the conv runs on the band as on a map of that width with no padding
(:func:`~fxpgen.compiler.conv_emit.emit_conv` on a one-row plan of ``wc`` output
columns), into a chunk buffer of ``wc`` pixels, whose words are then STOREd: the
windows of a row one after another, so the output's words stay row-major, as its
consumers (or the host, for the network's output) read them. Weights and shift
table are reloaded for every window.

The input's rows come from its host buffer (``run`` words of every ``stride``: the
window's columns of each row), from the streamed image (a piece a row), or, for a
resident input, are read in place (the band is then a view of the map).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fxpgen.isa import Addr, Instruction, Mem, Opcode, pack_row

from .conv_emit import ConvBands, emit_conv
from .conv_plan import ConvPlan
from .emit import Emitter, HostPiece, InputPiece
from .layout import MapLayout

__all__ = ["ColumnSource", "window_input", "emit_conv_columns"]


@dataclass(frozen=True)
class ColumnSource:
    """Where the conv's input rows are: ``resident`` its layout in the scratchpad, else
    host buffer ``buffer`` (None: the streamed image) of a (``height`` x ``width``)
    map of ``groups`` channel groups; ``pad_byte`` the byte of the pixels outside it."""

    height: int
    width: int
    groups: int
    pad_byte: int
    buffer: int | None = None
    resident: MapLayout | None = None


def window_input(plan: ConvPlan, wc: int) -> int:
    """Input columns a window of ``wc`` output columns reads."""
    return (wc - 1) * plan.stride[1] + plan.kernel[1]


def emit_conv_columns(em: Emitter, plan: ConvPlan, src: ColumnSource, band: MapLayout | None,
                      chunk: MapLayout, res_lay: MapLayout | None) -> None:
    """Emit ``plan`` row by row in windows of ``chunk.width`` output columns (module
    docstring): ``band`` holds ``kh`` input rows of the widest window (None for a
    resident input), ``chunk`` one output row of it; ``res_lay`` a resident residual."""
    oh, ow = plan.out_size
    if plan.note:
        em.notes.append(plan.note)
    for oy in range(oh):
        for x0 in range(0, ow, chunk.width):
            wc = min(chunk.width, ow - x0)
            one = dataclasses.replace(plan, out_size=(1, wc), pads=(0, 0, 0, 0), in_height=plan.kernel[0],
                                      rows_per_chunk=1, banded=False, note=None, slabs=None)
            win = _window_band(em, plan, src, band, oy, x0, wc)
            res = None
            if res_lay is not None:
                res = MapLayout(res_lay.pixel(oy, x0), res_lay.channels, 1, res_lay.padded_w, (0, 0, 0, 0),
                                res_lay.groups)
            # The chunk buffer's rows go to the result stream as the conv ends (its bands).
            emit_conv(em, one, win, dataclasses.replace(chunk, width=wc), res, ConvBands(out_buffer=True))


def _window_band(em: Emitter, plan: ConvPlan, src: ColumnSource, band: MapLayout | None, oy: int, x0: int,
                 wc: int) -> MapLayout:
    """The input of window (``oy``, ``x0``, ``wc`` columns) as a map of ``kh`` rows with
    no border: LOADed into ``band``, or a view of a resident input."""
    kh = plan.kernel[0]
    iy0, ix0 = oy * plan.stride[0] - plan.pads[0], x0 * plan.stride[1] - plan.pads[1]
    win = window_input(plan, wc)
    if src.resident is not None:
        lay = src.resident
        return MapLayout(lay.pixel(iy0, ix0), lay.channels, kh, lay.padded_w, (0, 0, 0, 0), lay.groups)
    g = band.groups
    view = MapLayout(band.base, band.channels, kh, win, (0, 0, 0, 0), g)
    pad = pack_row(Mem.SPAD, [src.pad_byte] * em.cfg.lanes, em.cfg)
    y_in = (max(iy0, 0), min(iy0 + kh, src.height))
    x_in = (max(ix0, 0), min(ix0 + win, src.width))
    for a, b in ((iy0, min(iy0 + kh, y_in[0])), (max(iy0, y_in[1]), iy0 + kh)):
        if a < b:
            em.load(Mem.SPAD, Addr(view.pixel(a - iy0, 0), 1, win * g), win * g, b - a, [pad] * (win * g * (b - a)))
    n = y_in[1] - y_in[0]
    if n <= 0:
        return view
    for a, b in ((ix0, min(ix0 + win, x_in[0])), (max(ix0, x_in[1]), ix0 + win)):
        if a < b:
            em.load(Mem.SPAD, Addr(view.pixel(y_in[0] - iy0, a - ix0), 1, win * g), (b - a) * g, n,
                    [pad] * ((b - a) * g * n))
    inside = (x_in[1] - x_in[0]) * g
    first = (y_in[0] * src.width + x_in[0]) * g
    z = Addr(view.pixel(y_in[0] - iy0, x_in[0] - ix0), 1, win * g)
    if src.buffer is not None:
        em.host_pieces.append(HostPiece(len(em.data), len(em.pieces), src.buffer, first, inside * n, inside,
                                        src.width * g))
        em.emit(Instruction(Opcode.LOAD, {"mem": Mem.SPAD.value}, inside, n, z=z))
        return view
    for k in range(n):
        em.pieces.append(InputPiece(len(em.data), first + k * src.width * g, inside))
        em.emit(Instruction(Opcode.LOAD, {"mem": Mem.SPAD.value}, inside, 1, z=Addr(z.base + k * win * g, 1)))
    return view
