"""Max pooling, element-wise adds and products, lookup tables, channel-group copies
(concat, slice) and nearest-neighbour upsampling on the vector unit (MAX, ADD, MUL,
LUT): one instruction per channel group (and, for MAX, per kernel tap or upsampling
offset) whose two address loops walk the output pixels, ``ox`` inner and ``oy``
outer (the input pixels for upsampling)."""

from __future__ import annotations

from fxpgen.isa import COUNT_MAX, Addr, Instruction, Mem, Opcode, pack_row

from .emit import Emitter
from .layout import MapLayout
from .qgraph import QAdd, QGraph, QLut, QMaxPool, QMul, QResize, QSlice

__all__ = ["emit_maxpool", "emit_add", "emit_mul", "emit_lut", "lut_slot", "load_lut_table",
           "emit_lut_groups", "emit_concat", "emit_slice", "emit_resize", "emit_maxpool_rows",
           "emit_maxpool_ring_row", "emit_add_rows"]


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


def emit_mul(em: Emitter, qg: QGraph, op: QMul, a_lay: MapLayout, b_lay: MapLayout,
             out_lay: MapLayout) -> None:
    """One MUL per channel group; a per-channel ``b`` (C, 1, 1) is one row read at every
    pixel (its address stream has strides 0)."""
    params = {"shift": op.shift, "relu": int(op.relu),
              "out_signed": int(qg.tensor(op.output).fmt.signed),
              "a_signed": int(qg.tensor(op.a).fmt.signed), "b_signed": int(qg.tensor(op.b).fmt.signed)}
    broadcast = (b_lay.height, b_lay.width) != (a_lay.height, a_lay.width)
    oh, ow = out_lay.height, out_lay.width
    for g in range(out_lay.groups):
        y = Addr(b_lay.pixel(0, 0) + g) if broadcast else _walk(b_lay, g)
        em.emit(Instruction(Opcode.MUL, params, ow, oh, x=_walk(a_lay, g), y=y,
                            z=_walk(out_lay, g)))


def lut_slot(qg: QGraph, op: QLut, tables: int) -> int:
    """The lookup table ``op`` loads: each table layer takes the next of ``tables`` slots,
    so the tables of a program coexist when they fit (every layer still loads its own,
    so any slot count works)."""
    return [o for o in qg.ops if isinstance(o, QLut)].index(op) % tables


def emit_lut(em: Emitter, op: QLut, slot: int, in_lay: MapLayout, out_lay: MapLayout) -> None:
    """LOAD the op's table into lookup table ``slot`` (256 one-byte words), then one LUT
    per channel group (:func:`emit_lut_groups`)."""
    load_lut_table(em, op, slot)
    emit_lut_groups(em, slot, in_lay, out_lay)


def load_lut_table(em: Emitter, op: QLut, slot: int) -> None:
    """LOAD the op's table into lookup table ``slot`` (256 one-byte words)."""
    words = [pack_row(Mem.LUT, [int(v) & 0xFF], em.cfg) for v in op.table]
    em.load(Mem.LUT, Addr(256 * slot, 1), len(words), 1, words)


def emit_lut_groups(em: Emitter, slot: int, in_lay: MapLayout, out_lay: MapLayout) -> None:
    """One LUT through table ``slot`` per channel group of the output map. The spare bytes
    of a last, partial group are looked up too; they stay in spare channels nobody reads
    as data."""
    for g in range(out_lay.groups):
        em.emit(Instruction(Opcode.LUT, {"table": slot}, out_lay.width, out_lay.height,
                            x=_walk(in_lay, g), z=_walk(out_lay, g)))


def _copy_group(em: Emitter, src: MapLayout, g_src: int, dst: MapLayout, g_dst: int) -> None:
    """Channel group ``g_src`` of every pixel of ``src`` into group ``g_dst`` of ``dst``:
    the MAX of the group with itself, which is the group (in either signedness)."""
    x = _walk(src, g_src)
    em.emit(Instruction(Opcode.MAX, {"a_signed": 0}, dst.width, dst.height,
                        x=x, y=x, z=_walk(dst, g_dst)))


def emit_concat(em: Emitter, in_lays: list[MapLayout], out_lay: MapLayout) -> None:
    """Copy each input's channel groups to its offset in the output; every input but the
    last fills whole groups (:func:`~fxpgen.compiler.channel_ops.concat_aligned`), the
    last one's spare bytes land in the output's spare bytes."""
    offset = 0
    for lay in in_lays:
        for g in range(lay.groups):
            _copy_group(em, lay, g, out_lay, offset + g)
        offset += lay.groups


def emit_slice(em: Emitter, op: QSlice, in_lay: MapLayout, out_lay: MapLayout, lanes: int) -> None:
    """Copy the channel groups from ``op.start`` (a multiple of ``lanes``) on."""
    for g in range(out_lay.groups):
        _copy_group(em, in_lay, op.start // lanes + g, out_lay, g)


def emit_resize(em: Emitter, op: QResize, in_lay: MapLayout, out_lay: MapLayout) -> None:
    """Output pixel (f*y + dy, f*x + dx) is input pixel (y, x): per channel group and
    offset (dy, dx), one MAX of the input with itself walks the input pixels and
    writes every f-th output pixel of every f-th row from (dy, dx)."""
    f = op.factor
    for g in range(out_lay.groups):
        x = _walk(in_lay, g)
        for dy in range(f):
            for dx in range(f):
                em.emit(Instruction(Opcode.MAX, {"a_signed": 0}, in_lay.width, in_lay.height,
                                    x=x, y=x, z=_walk(out_lay, g, dy, dx, f, f)))


def emit_maxpool_rows(em: Emitter, qg: QGraph, op: QMaxPool, in_lay: MapLayout, in_y: int,
                      out_lay: MapLayout, out_y: int, nrow: int) -> None:
    """:func:`emit_maxpool` for ``nrow`` output rows, written from row ``out_y`` of
    ``out_lay``, whose kernel row 0 reads row ``in_y`` of ``in_lay`` (a band buffer of
    an off-chip map, or the resident map)."""
    sy, sx = op.stride
    kh, kw = op.kernel
    pl = op.pads[1]
    signed = int(qg.tensor(op.input).fmt.signed)
    ow = out_lay.width
    for g in range(out_lay.groups):
        z = _walk(out_lay, g, out_y)
        first = True
        for ky in range(kh):
            for kx in range(kw):
                x = _walk(in_lay, g, in_y + ky, kx - pl, sy, sx)
                em.emit(Instruction(Opcode.MAX, {"a_signed": signed}, ow, nrow,
                                    x=x if first else z, y=x, z=z))
                first = False


def emit_maxpool_ring_row(em: Emitter, qg: QGraph, op: QMaxPool, slots: list[MapLayout],
                          out_lay: MapLayout, out_y: int) -> None:
    """One output row of ``op``, written to row ``out_y`` of ``out_lay``, from a ring
    of one-row buffers of input rows, kernel row ``ky`` in ``slots[ky]``; the slot of
    kernel row 0 is overwritten (its row is not read again, the stride being at least
    1). The kernel is separated: the MAXes of the kernel rows accumulate in that
    slot over whole padded rows (one contiguous run each), then one MAX per kernel
    column walks it into the output row. Each MAX is one instruction over every channel
    group of every pixel (groups inner, pixels outer), so the vector unit's fixed cost
    per instruction (its write delay) is paid ``kh + kw - 2`` times per output row, not
    per channel group and tap."""
    sx = op.stride[1]
    kh, kw = op.kernel
    pl = op.pads[1]
    signed = {"a_signed": int(qg.tensor(op.input).fmt.signed)}
    run = slots[0].padded_w * slots[0].groups
    acc = slots[0].base
    for ky in range(1, kh):
        src = slots[ky].base
        for k0 in range(0, run, COUNT_MAX):
            k = min(COUNT_MAX, run - k0)
            em.emit(Instruction(Opcode.MAX, signed, k, 1, x=Addr(acc + k0, 1), y=Addr(src + k0, 1),
                                z=Addr(acc + k0, 1)))
    g, ow = out_lay.groups, out_lay.width
    z = Addr(out_lay.pixel(out_y, 0), 1, g)
    taps = [Addr(slots[0].pixel(0, kx - pl), 1, sx * g) for kx in range(kw)]
    em.emit(Instruction(Opcode.MAX, signed, g, ow, x=taps[0], y=taps[min(1, kw - 1)], z=z))
    for tap in taps[2:]:
        em.emit(Instruction(Opcode.MAX, signed, g, ow, x=z, y=tap, z=z))


def emit_add_rows(em: Emitter, qg: QGraph, op: QAdd, a: tuple[MapLayout, int], b: tuple[MapLayout, int],
                  out: tuple[MapLayout, int], nrow: int) -> None:
    """:func:`emit_add` for ``nrow`` rows; each operand a (layout, first row) pair: a band
    buffer of an off-chip map from row 0, or a resident map from the chunk's row."""
    params = {"a_shift": op.a_shift, "b_shift": op.b_shift, "shift": op.shift, "relu": int(op.relu),
              "out_signed": int(qg.tensor(op.output).fmt.signed),
              "a_signed": int(qg.tensor(op.a).fmt.signed), "b_signed": int(qg.tensor(op.b).fmt.signed)}
    out_lay = out[0]
    for g in range(out_lay.groups):
        em.emit(Instruction(Opcode.ADD, params, out_lay.width, nrow,
                            x=_walk(a[0], g, a[1]), y=_walk(b[0], g, b[1]), z=_walk(out_lay, g, out[1])))
