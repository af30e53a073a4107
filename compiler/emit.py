"""The emitter: instructions with the layer each serves, the data stream they
consume, and the loads every lowering shares (border fills, image rows, bands of a
streamed input or of an off-chip map, stores of an off-chip map's rows).

Streamed input. An image that does not fit next to the maps the network needs is
not kept: its consumer reads a band buffer that each chunk of output rows LOADs from
the data stream (rows above or below the image as zero words). The data stream then
carries the image in overlapping pieces between the constant words
(:class:`InputPiece`).

Off-chip maps. A map kept in the host's memory (host buffer k, :class:`HostBuffer`)
is the run of result words its producer STOREs, its interior pixels row-major as
the image's words; a consumer LOADs bands of its rows back, and the data stream
carries those words as :class:`HostPiece` references to the earlier results.
"""

from __future__ import annotations

from dataclasses import dataclass

from fxpgen.config import CoreConfig
from fxpgen.isa import COUNT_MAX, Addr, Instruction, Mem, Opcode, pack_row

from .layout import MapLayout

__all__ = ["Emitter", "InputPiece", "HostPiece", "HostBuffer", "load_band", "store_rows"]


@dataclass(frozen=True)
class InputPiece:
    """Image words ``[first, first + count)`` of
    :meth:`~fxpgen.compiler.lower.Lowered.image_words` go into the
    data stream before constant word ``at``."""

    at: int
    first: int
    count: int


@dataclass(frozen=True)
class HostPiece:
    """``count`` words of host buffer ``buffer`` go into the data stream before constant
    word ``at``, after the first ``after_inputs`` image pieces: word k is buffer word
    ``offset + (k // run) * stride + k % run`` (``run`` words of every ``stride``: some
    channel groups of every pixel; all words from ``offset`` on with 1 and 1)."""

    at: int
    after_inputs: int
    buffer: int
    offset: int
    count: int
    run: int = 1
    stride: int = 1


@dataclass(frozen=True)
class HostBuffer:
    """Off-chip map ``name``: result words ``[result_at, result_at + count)`` of the
    program, its interior pixels row-major (``groups`` words a pixel)."""

    name: str
    result_at: int
    count: int


class Emitter:
    """Instruction words, the layer each serves (``layer`` when emitted), the constant
    data words, where the image's words go in, and notes for the report."""

    def __init__(self, cfg: CoreConfig):
        self.cfg = cfg
        self.words: list[int] = []           # instruction words, one int object per distinct word
        self.layers: list[str] = []
        self.data: list[int] = []
        self.pieces: list[InputPiece] = []
        self.host_pieces: list[HostPiece] = []
        self.buffers: list[HostBuffer] = []
        self.n_results = 0
        self.layer = ""
        self.notes: list[str] = []
        # A program is millions of instructions but a few thousand distinct ones: each
        # is encoded once (by value), and a run of them (a conv's matmuls, repeated for
        # every chunk of rows) once per layer (by identity; the runs are kept alive
        # here until the layer changes, so that an identity is never reused meanwhile).
        self._by_value: dict[tuple, int] = {}
        self._runs: dict[int, tuple[list[Instruction], list[int]]] = {}
        self._runs_layer = ""

    def emit(self, insn: Instruction, data=()):
        """Append ``insn`` and the data words it consumes (and count the result words
        a STORE produces)."""
        if insn.opcode is Opcode.STORE:
            self.n_results += insn.count0 * insn.count1
        self.words.append(self._encode(insn))
        self.layers.append(self.layer)
        self.data.extend(data)

    def emit_all(self, insns: list[Instruction]):
        """Append instructions that consume no data and store no result (no STORE). The
        list must not change afterwards: emitted again, its words are found by its identity."""
        if self._runs_layer != self.layer:
            self._runs, self._runs_layer = {}, self.layer
        run = self._runs.get(id(insns))
        if run is None:
            run = self._runs[id(insns)] = (insns, [self._encode(insn) for insn in insns])
        self.words += run[1]
        self.layers += [self.layer] * len(insns)

    def _encode(self, insn: Instruction) -> int:
        """``insn``'s word, encoded once per distinct instruction."""
        # The address fields themselves: hashing and comparing Addr objects costs
        # several times more. Parameters given in another order only cost another
        # encoding of the same word.
        x, y, z = insn.x, insn.y, insn.z
        key = (insn.opcode, tuple(insn.params.items()), insn.count0, insn.count1,
               x.base, x.stride0, x.stride1, x.regions, y.base, y.stride0, y.stride1, y.regions,
               z.base, z.stride0, z.stride1, z.regions)
        word = self._by_value.get(key)
        if word is None:
            word = self._by_value[key] = insn.encode(self.cfg)
        return word

    def load(self, mem: Mem, z: Addr, count0: int, count1: int, words: list[int]):
        """LOAD ``count0 x count1`` constant words into ``mem`` along ``z``."""
        assert len(words) == count0 * count1
        self.emit(Instruction(Opcode.LOAD, {"mem": mem.value}, count0, count1, z=z), words)

    def load_image_rows(self, lay: MapLayout, y: int, image_y0: int, n: int, offset: int = 0):
        """LOAD image rows ``[image_y0, image_y0 + n)`` into rows ``y ..`` of ``lay``; the
        image's words start at word ``offset`` of the run's images (a batch's image k
        at k times an image's words)."""
        row = lay.width * lay.groups
        for k0 in range(0, n, COUNT_MAX):
            k = min(COUNT_MAX, n - k0)
            self.pieces.append(InputPiece(len(self.data), offset + (image_y0 + k0) * row, k * row))
            self.emit(Instruction(Opcode.LOAD, {"mem": Mem.SPAD.value}, row, k,
                                  z=Addr(lay.pixel(y + k0, 0), 1, lay.padded_w * lay.groups)))

    def load_host_rows(self, lay: MapLayout, y: int, buffer: int, src_y0: int, n: int,
                       group0: int = 0, map_groups: int | None = None):
        """LOAD rows ``[src_y0, src_y0 + n)`` of host buffer ``buffer`` into rows ``y ..``
        of ``lay``; with ``map_groups`` (the map's channel groups), ``lay`` holds only
        its groups ``group0 .. group0 + lay.groups - 1``."""
        row = lay.width * lay.groups
        full = map_groups or lay.groups
        run, stride = (1, 1) if full == lay.groups else (lay.groups, full)
        for k0 in range(0, n, COUNT_MAX):
            k = min(COUNT_MAX, n - k0)
            self.host_pieces.append(HostPiece(len(self.data), len(self.pieces), buffer,
                                              (src_y0 + k0) * lay.width * full + group0, k * row,
                                              run, stride))
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


def load_band(em: Emitter, band: MapLayout, iy0: int, n: int, height: int,
              buffer: int | None = None, pad_byte: int = 0, group0: int = 0,
              map_groups: int | None = None):
    """Fill rows ``0 .. n`` of a band buffer with rows ``iy0 .. iy0 + n`` of the image
    (``buffer`` None) or of host buffer ``buffer`` (channel groups ``group0 ..`` of a
    map of ``map_groups``, :meth:`Emitter.load_host_rows`): words of ``pad_byte`` for
    the rows outside the ``height``-row map, its rows from the data stream."""
    row = band.width * band.groups
    zero = pack_row(Mem.SPAD, [pad_byte] * em.cfg.lanes, em.cfg)
    inside0, inside1 = max(iy0, 0), min(iy0 + n, height)
    for a, b in ((iy0, min(iy0 + n, 0)), (max(iy0, height), iy0 + n)):
        if a < b:
            em.load(Mem.SPAD, Addr(band.pixel(a - iy0, 0), 1, band.padded_w * band.groups), row, b - a,
                    [zero] * (row * (b - a)))
    if inside0 >= inside1:
        return
    if buffer is None:
        em.load_image_rows(band, inside0 - iy0, inside0, inside1 - inside0)
    else:
        em.load_host_rows(band, inside0 - iy0, buffer, inside0, inside1 - inside0, group0, map_groups)


def store_rows(em: Emitter, lay: MapLayout, y: int, n: int):
    """STORE the interior of rows ``y .. y + n`` of ``lay`` to the result stream, row-major."""
    row = lay.width * lay.groups
    for k0 in range(0, n, COUNT_MAX):
        k = min(COUNT_MAX, n - k0)
        em.emit(Instruction(Opcode.STORE, {"mem": Mem.SPAD.value}, row, k,
                            x=Addr(lay.pixel(y + k0, 0), 1, lay.padded_w * lay.groups)))
