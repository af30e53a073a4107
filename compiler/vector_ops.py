"""Max pooling and element-wise adds on the vector unit (MAX, ADD): one instruction
per channel group (and, for MAX, per kernel tap) whose two address loops walk the
output pixels, ``ox`` inner and ``oy`` outer."""

from __future__ import annotations

from fxpgen.isa import Addr, Instruction, Opcode

from .emit import Emitter
from .layout import MapLayout
from .qgraph import QAdd, QGraph, QMaxPool

__all__ = ["emit_maxpool", "emit_add"]


def _walk(lay: MapLayout, g: int, y: int = 0, x: int = 0, sy: int = 1, sx: int = 1) -> Addr:
    """Channel group ``g`` of the pixels (y + oy * sy, x + ox * sx) of ``lay``."""
    return Addr(lay.pixel(y, x) + g, sx * lay.groups, sy * lay.padded_w * lay.groups)


def emit_maxpool(em: Emitter, qg: QGraph, op: QMaxPool, in_lay: MapLayout, out_lay: MapLayout) -> None:
    """Per channel group, one MAX per kernel tap into the output map: the first takes
    the tap and itself, the rest the output so far and their tap."""
    sy, sx = op.stride
    kh, kw = op.kernel
    pt, pl = op.pads[0], op.pads[1]
    signed = int(qg.tensor(op.input).fmt.signed)
    oh, ow = out_lay.height, out_lay.width
    for g in range(out_lay.groups):
        z = _walk(out_lay, g)
        first = True
        for ky in range(kh):
            for kx in range(kw):
                x = _walk(in_lay, g, ky - pt, kx - pl, sy, sx)
                em.emit(Instruction(Opcode.MAX, {"a_signed": signed}, ow, oh,
                                    x=x if first else z, y=x, z=z))
                first = False


def emit_add(em: Emitter, qg: QGraph, op: QAdd, a_lay: MapLayout, b_lay: MapLayout,
             out_lay: MapLayout) -> None:
    """One ADD per channel group of the two maps into the output map."""
    params = {"a_shift": op.a_shift, "b_shift": op.b_shift, "shift": op.shift, "relu": int(op.relu),
              "out_signed": int(qg.tensor(op.output).fmt.signed),
              "a_signed": int(qg.tensor(op.a).fmt.signed), "b_signed": int(qg.tensor(op.b).fmt.signed)}
    oh, ow = out_lay.height, out_lay.width
    for g in range(out_lay.groups):
        em.emit(Instruction(Opcode.ADD, params, ow, oh,
                            x=_walk(a_lay, g), y=_walk(b_lay, g), z=_walk(out_lay, g)))
