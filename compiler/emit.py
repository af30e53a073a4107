"""The emitter: instructions with the layer each serves, the data stream they
consume, and the loads every lowering shares (border fills, image rows, bands of a
streamed input).

Streamed input. An image that does not fit next to the maps the network needs is
not kept: its consumer reads a band buffer that each chunk of output rows LOADs from
the data stream (rows above or below the image as zero words). The data stream then
carries the image in overlapping pieces between the constant words
(:class:`InputPiece`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fxpgen.config import CoreConfig
from fxpgen.isa import COUNT_MAX, Addr, Instruction, Mem, Opcode, pack_row

from .layout import MapLayout

__all__ = ["Emitter", "InputPiece", "load_band"]


@dataclass(frozen=True)
class InputPiece:
    """Image words ``[first, first + count)`` of
    :meth:`~fxpgen.compiler.lower.Lowered.image_words` go into the
    data stream before constant word ``at``."""

    at: int
    first: int
    count: int


class Emitter:
    """Instructions, the layer each serves (``layer`` when emitted), the constant data
    words, where the image's words go in, and notes for the report."""

    def __init__(self, cfg: CoreConfig):
        self.cfg = cfg
        self.insns: list[Instruction] = []
        self.layers: list[str] = []
        self.data: list[int] = []
        self.pieces: list[InputPiece] = []
        self.layer = ""
        self.notes: list[str] = []

    def emit(self, insn: Instruction, data=()):
        """Append ``insn`` and the data words it consumes."""
        self.insns.append(insn)
        self.layers.append(self.layer)
        self.data.extend(data)

    def load(self, mem: Mem, z: Addr, count0: int, count1: int, words: list[int]):
        """LOAD ``count0 x count1`` constant words into ``mem`` along ``z``."""
        assert len(words) == count0 * count1
        self.emit(Instruction(Opcode.LOAD, {"mem": mem.value}, count0, count1, z=z), words)

    def load_image_rows(self, lay: MapLayout, y: int, image_y0: int, n: int):
        """LOAD image rows ``[image_y0, image_y0 + n)`` into rows ``y ..`` of ``lay``."""
        row = lay.width * lay.groups
        for k0 in range(0, n, COUNT_MAX):
            k = min(COUNT_MAX, n - k0)
            self.pieces.append(InputPiece(len(self.data), (image_y0 + k0) * row, k * row))
            self.emit(Instruction(Opcode.LOAD, {"mem": Mem.SPAD.value}, row, k,
                                  z=Addr(lay.pixel(y + k0, 0), 1, lay.padded_w * lay.groups)))

    def fill(self, lay: MapLayout, value_byte: int):
        """Write ``value_byte`` into every border row of a map."""
        word = pack_row(Mem.SPAD, [value_byte] * self.cfg.lanes, self.cfg)
        t, left, b, r = lay.border
        wp, g = lay.padded_w, lay.groups
        if t:
            self._fill_rows(lay.base, t * wp * g, word)
        if b:
            self._fill_rows(lay.base + (t + lay.height) * wp * g, b * wp * g, word)
        for x0, width in ((-left, left), (lay.width, r)):
            if not width:
                continue
            for y0 in range(0, lay.height, COUNT_MAX):
                hh = min(COUNT_MAX, lay.height - y0)
                self.load(Mem.SPAD, Addr(lay.pixel(y0, x0), 1, wp * g), width * g, hh,
                          [word] * (width * g * hh))

    def _fill_rows(self, first: int, n: int, word: int):
        """``word`` into scratchpad rows ``[first, first + n)``, a loop count at a time."""
        for start in range(0, n, COUNT_MAX):
            k = min(COUNT_MAX, n - start)
            self.load(Mem.SPAD, Addr(first + start, 1), k, 1, [word] * k)


def load_band(em: Emitter, band: MapLayout, iy0: int, n: int, height: int):
    """Fill rows ``0 .. n`` of a band buffer with image rows ``iy0 .. iy0 + n``: zero words
    for the rows outside the ``height``-row image, image rows from the data stream."""
    row = band.width * band.groups
    zero = pack_row(Mem.SPAD, [0] * em.cfg.lanes, em.cfg)
    inside0, inside1 = max(iy0, 0), min(iy0 + n, height)
    for a, b in ((iy0, min(iy0 + n, 0)), (max(iy0, height), iy0 + n)):
        if a < b:
            em.load(Mem.SPAD, Addr(band.pixel(a - iy0, 0), 1, band.padded_w * band.groups), row, b - a,
                    [zero] * (row * (b - a)))
    if inside0 < inside1:
        em.load_image_rows(band, inside0 - iy0, inside0, inside1 - inside0)
