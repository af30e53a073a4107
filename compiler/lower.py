"""Lowering of a quantized graph to a program for one core configuration.

Layout. A feature map (C, H, W) lives in the scratchpad pixel-major with a zero
border: pixel (y, x) of the padded (H + top + bottom) x (W + left + right) map
occupies ``G = ceil(C / lanes)`` consecutive rows, channel c in row ``c // lanes``,
byte ``c % lanes``. The border is as wide as the widest padding any consumer asks
for, so padding costs nothing at run time ("padding by layout").

Convolution. For every chunk of output rows that fits the accumulators and every
n-tile of ``cols`` output channels: load the bias into the accumulator rows, then one
accumulating MATMUL per (kernel tap, k-tile of ``rows`` input channels) whose two
address loops walk the output pixels (``ox`` inner, ``oy`` outer) and read the input
pixel each one needs for that tap: no im2col copy. Grouped and depthwise
convolutions, and average pooling (a depthwise conv with weights 1), use the same
path: their per-tap weight matrix is block-diagonal and all-zero tiles are skipped.
Then REQUANT writes the n-tile to the output map (with the residual when fused).

Max pooling and element-wise adds run on the vector unit (MAX, ADD) per channel
group over the same two loops.

Every layer ends with a HALT, so the core's performance counters (cleared when a
program starts, frozen by HALT) measure each layer on its own.

Streamed input. When the input image does not fit next to the maps the network
needs (a 224x224 image, say) and its only consumer is a convolution or average pool,
the image is not kept: the consumer's input is a band buffer holding the input rows
of one output chunk, ``(rows_per_chunk - 1) * stride + kh`` rows (fewer output
rows per chunk when the band would not fit next to the output), and each chunk
LOADs its rows from the data stream before its matmuls (rows above or below the
image as zero words). The data stream then carries the image in overlapping pieces
between the constant words (:class:`InputPiece`); :meth:`Lowered.data` puts them
together. ``lower(..., stream_input=None)`` streams only when the resident image does
not fit.

Memory. Scratchpad maps are allocated first-fit and freed after their last use; the
weight tiles of one conv are loaded before its matmuls (split by n-tiles when they
do not fit the weight buffer); the shift table holds one entry per n-tile, reloaded
per layer. What does not fit raises :class:`DoesNotFit` saying what and by how much.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from fxpgen.config import CoreConfig
from fxpgen.isa import COUNT_MAX, Addr, Instruction, Mem, Opcode, pack_row, pack_rows, unpack_rows
from fxpgen.numerics import acc_bound, acc_range

from .tiling import DoesNotFit, ceil_div
from .qgraph import QAdd, QAvgPool, QConv, QGraph, QMaxPool
from .unfold import InputUnfold, sole_consumer, unfold_input

__all__ = ["lower", "Lowered", "MapLayout", "InputPiece"]


@dataclass(frozen=True)
class MapLayout:
    """Where a feature map lives in the scratchpad."""

    base: int
    channels: int
    height: int
    width: int
    border: tuple[int, int, int, int]      # top, left, bottom, right
    groups: int                             # scratchpad rows per pixel

    @property
    def padded_w(self) -> int:
        return self.width + self.border[1] + self.border[3]

    @property
    def padded_h(self) -> int:
        return self.height + self.border[0] + self.border[2]

    @property
    def rows(self) -> int:
        return self.padded_h * self.padded_w * self.groups

    def pixel(self, y: int, x: int) -> int:
        """Row of group 0 of pixel (y, x), in unpadded coordinates (may be negative
        down to minus the border)."""
        return self.base + ((y + self.border[0]) * self.padded_w + x + self.border[1]) * self.groups


@dataclass(frozen=True)
class InputPiece:
    """Image words ``[first, first + count)`` of :meth:`Lowered.image_words` go into the
    data stream before constant word ``at``."""

    at: int
    first: int
    count: int


@dataclass
class Lowered:
    """A program: instructions with the layer each serves, the data stream (constant
    words, and where the input image's words go in), and the layouts of the input and
    output maps."""

    cfg: CoreConfig
    instructions: list[Instruction]
    layers: list[str]                        # source layer of every instruction
    consts: list[int]                        # the data stream without the image
    input_pieces: list[InputPiece]           # where the image goes in, in stream order
    input_layout: MapLayout
    output_layout: MapLayout
    input_signed: bool
    output_signed: bool
    spad_rows_used: int = 0
    notes: list[str] = field(default_factory=list)
    input_unfold: InputUnfold | None = None  # how the host lays out the image, if it does

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) image the program takes."""
        if self.input_unfold is not None:
            return self.input_unfold.shape
        lay = self.input_layout
        return (lay.channels, lay.height, lay.width)

    def data(self, image_words: list[int]) -> list[int]:
        """The whole data stream for one image (:meth:`image_words`)."""
        out, pos = [], 0
        for p in self.input_pieces:
            out += self.consts[pos:p.at]
            out += image_words[p.first:p.first + p.count]
            pos = p.at
        return out + self.consts[pos:]

    @property
    def input_streamed(self) -> bool:
        """Whether the image goes in as more than one piece (:class:`InputPiece`)."""
        return len(self.input_pieces) != 1

    def split_data(self) -> tuple[list[int], list[int]]:
        """(constant words before the image, after it) of a program whose image is one
        piece; a program that streams its input in bands has no such split."""
        if self.input_streamed:
            raise ValueError(f"the program streams its input in {len(self.input_pieces)} pieces; "
                             "only a program whose input is one piece has a before/after split")
        at = self.input_pieces[0].at
        return self.consts[:at], self.consts[at:]

    def image_words(self, x_q: np.ndarray) -> list[int]:
        """Data words of an input map (C, H, W) int: the interior pixels, row-major
        (after unfolding, :mod:`fxpgen.compiler.unfold`, when the program asks for it)."""
        lay = self.input_layout
        if x_q.shape != self.input_shape:
            raise ValueError(f"input is {x_q.shape}, the program expects {self.input_shape}")
        if self.input_unfold is not None:
            x_q = self.input_unfold.apply(x_q)
        c, h, w = x_q.shape
        L = self.cfg.lanes
        px = np.zeros((h, w, lay.groups * L), np.int64)
        px[:, :, :c] = np.transpose(x_q, (1, 2, 0))
        return pack_rows(Mem.SPAD, px.reshape(-1, L), self.cfg)

    def decode_output(self, words: list[int]) -> np.ndarray:
        """The output map (C, H, W) from the result words (interior pixels)."""
        lay = self.output_layout
        L = self.cfg.lanes
        rows = unpack_rows(Mem.SPAD, words, self.cfg, signed=self.output_signed)
        px = rows.reshape(lay.height, lay.width, lay.groups * L)[:, :, :lay.channels]
        return np.transpose(px, (2, 0, 1))


class _Allocator:
    """First-fit allocation of scratchpad row ranges."""

    def __init__(self, depth: int):
        self.depth = depth
        self.free = [(0, depth)]
        self.high = 0

    def largest(self) -> int:
        """Rows in the largest free block."""
        return max((n for _, n in self.free), default=0)

    def alloc(self, rows: int, what: str, top: bool = False) -> int:
        """First fit from the bottom, or (``top``) last fit from the top: short-lived
        buffers go at the top so that freeing them leaves no hole below."""
        order = range(len(self.free) - 1, -1, -1) if top else range(len(self.free))
        for i in order:
            start, size = self.free[i]
            if size >= rows:
                if top:
                    self.free[i] = (start, size - rows)
                    start += size - rows
                else:
                    self.free[i] = (start + rows, size - rows)
                self.high = max(self.high, start + rows)
                return start
        largest = self.largest()
        raise DoesNotFit(f"{what} needs {rows} scratchpad rows but the largest free block is "
                         f"{largest} of spad_depth {self.depth}: {rows - largest} rows short")

    def release(self, start: int, rows: int) -> None:
        self.free.append((start, rows))
        self.free.sort()
        merged = []
        for s, n in self.free:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((s, n))
        self.free = [(s, n) for s, n in merged if n > 0]


class _Emitter:
    def __init__(self, cfg: CoreConfig):
        self.cfg = cfg
        self.insns: list[Instruction] = []
        self.layers: list[str] = []
        self.data: list[int] = []
        self.pieces: list[InputPiece] = []
        self.layer = ""
        self.notes: list[str] = []

    def emit(self, insn: Instruction, data=()):
        self.insns.append(insn)
        self.layers.append(self.layer)
        self.data.extend(data)

    def load(self, mem: Mem, z: Addr, count0: int, count1: int, words: list[int]):
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
        L = self.cfg.lanes
        word = pack_row(Mem.SPAD, [value_byte] * L, self.cfg)
        t, left, b, r = lay.border
        wp, g = lay.padded_w, lay.groups
        if t:
            n = t * wp * g
            for start in range(0, n, COUNT_MAX):
                k = min(COUNT_MAX, n - start)
                self.load(Mem.SPAD, Addr(lay.base + start, 1), k, 1, [word] * k)
        if b:
            n = b * wp * g
            first = lay.base + (t + lay.height) * wp * g
            for start in range(0, n, COUNT_MAX):
                k = min(COUNT_MAX, n - start)
                self.load(Mem.SPAD, Addr(first + start, 1), k, 1, [word] * k)
        for side, width in ((0, left), (1, r)):
            if not width:
                continue
            x0 = -left if side == 0 else lay.width
            for y0 in range(0, lay.height, COUNT_MAX):
                hh = min(COUNT_MAX, lay.height - y0)
                self.load(Mem.SPAD, Addr(lay.pixel(y0, x0), 1, wp * g), width * g, hh,
                          [word] * (width * g * hh))


def _pad_byte(signed: bool) -> int:
    return 0x81 if signed else 0x00     # -127 or 0: below any value of the format


def lower(qg: QGraph, cfg: CoreConfig, *, stream_input: bool | None = None,
          unfold: bool = True) -> Lowered:
    """Lower ``qg`` to a program for ``cfg``; raise :class:`DoesNotFit` when a layer or
    map does not fit the memories.

    ``stream_input``: keep the input image in the scratchpad (False), stream it in
    bands of rows to its consumer (True), or stream only when it does not fit (None).
    ``unfold``: let the host unfold the input for its first convolution when that
    takes fewer matmuls (:mod:`fxpgen.compiler.unfold`).
    """
    unfolded = unfold_input(qg, cfg.rows) if unfold else None
    if unfolded is None:
        return _lower_streamed(qg, cfg, stream_input)
    low = _lower_streamed(unfolded[0], cfg, stream_input)
    low.input_unfold = unfolded[1]
    return low


def _lower_streamed(qg: QGraph, cfg: CoreConfig, stream_input: bool | None) -> Lowered:
    consumer = _streamable_consumer(qg)
    if stream_input and consumer is None:
        raise DoesNotFit(f"the input {qg.input} can be streamed only when its one consumer is a "
                         "convolution or average pool")
    if stream_input is None:
        try:
            return _lower(qg, cfg, None)
        except DoesNotFit as resident:
            if consumer is None:
                raise
            try:
                return _lower(qg, cfg, consumer)
            except DoesNotFit as streamed:
                raise DoesNotFit(f"{streamed} (with the input streamed in bands; kept whole: "
                                 f"{resident})") from None
    return _lower(qg, cfg, consumer if stream_input else None)


def _streamable_consumer(qg: QGraph):
    """The input's only consumer when it is a conv or average pool reading it once."""
    op = sole_consumer(qg)
    return op if isinstance(op, (QConv, QAvgPool)) else None


def _rows_per_chunk(cfg: CoreConfig, oh: int, ow: int) -> int:
    """Output rows of a conv that one accumulator block (half the accumulators) holds."""
    return max(1, min(oh, (cfg.acc_depth // 2) // max(ow, 1)))


def _lower(qg: QGraph, cfg: CoreConfig, streamed_into) -> Lowered:
    """The lowering; ``streamed_into`` is the input's consumer when the input is streamed."""
    L = cfg.lanes
    em = _Emitter(cfg)

    # Borders: the widest padding any consumer needs, on each side.
    border = {name: [0, 0, 0, 0] for name in qg.tensors}
    pad_signed = {}
    for op in qg.ops:
        if isinstance(op, (QConv, QMaxPool, QAvgPool)):
            b = border[op.input]
            for k in range(4):
                b[k] = max(b[k], op.pads[k])
            if isinstance(op, QMaxPool) and any(op.pads):
                pad_signed[op.input] = qg.tensor(op.input).fmt.signed
    for name, b in border.items():
        if any(b) and name in pad_signed and pad_signed[name] and any(
                isinstance(o, (QConv, QAvgPool)) and o.input == name and any(o.pads) for o in qg.ops):
            raise DoesNotFit(f"tensor {name} is padded with zeros for a conv and with -127 for a "
                             "max pool; copy it first")

    last_use = {}
    for i, op in enumerate(qg.ops):
        for t in op.inputs:
            last_use[t] = i
    last_use[qg.output] = len(qg.ops)

    alloc = _Allocator(cfg.spad_depth)
    layouts: dict[str, MapLayout] = {}

    def place(name: str, height: int | None = None) -> MapLayout:
        t = qg.tensor(name)
        c, h, w = t.shape
        if height is None:
            lay = MapLayout(0, c, h, w, tuple(border[name]), ceil_div(c, L))
            what, top = f"feature map {name} {t.shape}", False
        else:
            b = border[name]
            lay = MapLayout(0, c, height, w, (0, b[1], 0, b[3]), ceil_div(c, L))
            what, top = f"the band of {height} rows of input {name} {t.shape}", True
        lay = dataclasses.replace(lay, base=alloc.alloc(lay.rows, what, top))
        layouts[name] = lay
        if any(lay.border):
            em.fill(lay, _pad_byte(pad_signed.get(name, False)))
        return lay

    # The input image: its LOAD is the first data the program consumes, unless the
    # image is streamed, band by band, to its consumer.
    em.layer = "input"
    c, h, w = qg.tensor(qg.input).shape
    if w * ceil_div(c, L) > COUNT_MAX:
        raise DoesNotFit(f"input rows of {w * ceil_div(c, L)} words exceed a loop count")
    if streamed_into is None:
        in_lay = place(qg.input)
        em.load_image_rows(in_lay, 0, 0, in_lay.height)

    for i, op in enumerate(qg.ops):
        em.layer = op.name
        out_lay = place(op.output)
        if op is streamed_into:
            # The band buffer takes what the output left; a smaller band means fewer
            # output rows per chunk.
            oh, ow = out_lay.height, out_lay.width
            kh = op.weight.shape[2] if isinstance(op, QConv) else op.kernel[0]
            sy = op.stride[0]
            b = border[qg.input]
            band_row = (w + b[1] + b[3]) * ceil_div(c, L)
            fit = (alloc.largest() // band_row - kh) // sy + 1
            rows_per_chunk = min(_rows_per_chunk(cfg, oh, ow), fit)
            if rows_per_chunk < 1:
                raise DoesNotFit(f"{op.name}: the band of {kh} input rows its kernel needs takes "
                                 f"{kh * band_row} scratchpad rows, {alloc.largest()} are free")
            band = place(qg.input, (rows_per_chunk - 1) * sy + kh)
            in_lay = dataclasses.replace(band, height=h, border=tuple(b))
            _lower_conv(em, qg, op, layouts, out_lay, band_rows_per_chunk=rows_per_chunk)
        elif isinstance(op, (QConv, QAvgPool)):
            _lower_conv(em, qg, op, layouts, out_lay)
        elif isinstance(op, QMaxPool):
            _lower_maxpool(em, qg, op, layouts[op.input], out_lay)
        elif isinstance(op, QAdd):
            _lower_add(em, qg, op, layouts[op.a], layouts[op.b], out_lay)
        else:
            raise TypeError(f"{op.name}: cannot lower {type(op).__name__}")
        # A HALT per layer: the core's counters then measure each layer on its own.
        em.emit(Instruction(Opcode.HALT))
        for t in set(op.inputs):
            if last_use.get(t) == i and t != qg.output:
                lay = layouts[t]
                alloc.release(lay.base, lay.rows)

    out_lay = layouts[qg.output]
    em.layer = "output"
    for y in range(out_lay.height):
        em.emit(Instruction(Opcode.STORE, {"mem": Mem.SPAD.value}, out_lay.width * out_lay.groups, 1,
                            x=Addr(out_lay.pixel(y, 0), 1)))
    em.emit(Instruction(Opcode.HALT))
    return Lowered(cfg, em.insns, em.layers, em.data, em.pieces, in_lay, out_lay,
                   qg.tensor(qg.input).fmt.signed, qg.tensor(qg.output).fmt.signed,
                   spad_rows_used=alloc.high, notes=em.notes)


def _conv_params(qg: QGraph, op):
    """(weight int (Cout, Cin/g, kh, kw), bias, groups, shift, relu, residual, align)."""
    if isinstance(op, QConv):
        return op.weight, op.bias, op.groups, op.shift, op.relu, op.residual, op.align
    c = qg.tensor(op.input).shape[0]
    kh, kw = op.kernel
    w = np.ones((c, 1, kh, kw), np.int64)
    return w, np.zeros(c, np.int64), c, np.full(c, op.shift, np.int64), False, None, np.zeros(c, np.int64)


def _lower_conv(em: _Emitter, qg: QGraph, op, layouts, out_lay: MapLayout,
                band_rows_per_chunk: int | None = None):
    """Lower a conv or average pool; with ``band_rows_per_chunk`` its input is a band
    buffer that each chunk of that many output rows LOADs from the data stream."""
    cfg = em.cfg
    R, C, L = cfg.rows, cfg.cols, cfg.lanes
    in_lay = layouts[op.input]
    weight, bias, groups, shift, relu, residual, align = _conv_params(qg, op)
    weight = np.asarray(weight, np.int64)
    cout, cin_g, kh, kw = weight.shape
    cin = in_lay.channels
    sy, sx = op.stride
    pt, pl = op.pads[0], op.pads[1]
    oh, ow = out_lay.height, out_lay.width
    in_fmt = qg.tensor(op.input).fmt
    out_fmt = qg.tensor(op.output).fmt

    # Dense per-tap weight matrices (Cin x Cout), block-diagonal for groups.
    dense = np.zeros((kh, kw, ceil_div(cin, R) * R, ceil_div(cout, C) * C), np.int64)
    cout_g = cout // groups
    for g in range(groups):
        blk = weight[g * cout_g:(g + 1) * cout_g]          # (cout_g, cin_g, kh, kw)
        dense[:, :, g * cin_g:(g + 1) * cin_g, g * cout_g:(g + 1) * cout_g] = \
            np.transpose(blk, (2, 3, 1, 0))
    k_tiles, n_tiles = ceil_div(cin, R), ceil_div(cout, C)

    # Tiles per n-tile: (tap, kt) pairs with a nonzero tile.
    work = []
    for nt in range(n_tiles):
        pairs = []
        for ky in range(kh):
            for kx in range(kw):
                for kt in range(k_tiles):
                    tile = dense[ky, kx, kt * R:(kt + 1) * R, nt * C:(nt + 1) * C]
                    if tile.any():
                        pairs.append((ky, kx, kt, tile))
        work.append(pairs)

    # Accumulator bound: the largest |acc| any output can reach.
    _, hi = acc_range(cfg.acc_width)
    bound = acc_bound(weight, bias, in_fmt.signed)
    if bound.max() > hi:
        c = int(bound.argmax())
        em.notes.append(f"{op.name}: output channel {c} can reach |acc| = {int(bound[c])} > {hi}; "
                        "the accumulator saturates there")

    # Shift table: one entry per n-tile, reloaded per layer (in slices of table_depth).
    sh = np.zeros(n_tiles * C, np.int64)
    al = np.zeros(n_tiles * C, np.int64)
    sh[:cout], al[:cout] = shift, align
    if not (np.all((-32 <= sh) & (sh <= 31)) and np.all((-32 <= al) & (al <= 31))):
        raise DoesNotFit(f"{op.name}: shifts must be in -32..31")

    # Weight buffer: the tiles of as many n-tiles as fit are loaded together; an
    # n-tile whose tiles alone exceed the buffer is streamed in buffer-sized batches
    # for every output chunk.
    cap = cfg.wbuf_depth // R
    tiles_per_nt = [len(p) for p in work]

    # Output rows per accumulator block.
    acc_rows_per_block = cfg.acc_depth // 2
    banded = band_rows_per_chunk is not None
    rows_per_chunk = band_rows_per_chunk if banded else _rows_per_chunk(cfg, oh, ow)
    if ow > acc_rows_per_block or ow > COUNT_MAX:
        raise DoesNotFit(f"{op.name}: an output row of {ow} pixels exceeds half the accumulators "
                         f"({acc_rows_per_block}) or a loop count")

    def load_tiles(pairs):
        """LOAD the tiles of ``pairs`` from weight-buffer row 0; their row offsets."""
        words, where = [], {}
        for key, tile in pairs:
            where[key] = len(words)
            words += pack_rows(Mem.WBUF, tile, cfg)
        if words:
            em.load(Mem.WBUF, Addr(0, 1, R), R, len(words) // R, words)
        return where

    block = 0
    nt0 = 0
    while nt0 < n_tiles:
        streamed = tiles_per_nt[nt0] > cap
        nt1, tiles = nt0, 0
        if streamed:
            nt1 = nt0 + 1
        else:
            while nt1 < n_tiles and tiles + tiles_per_nt[nt1] <= cap and nt1 - nt0 < cfg.table_depth:
                tiles += tiles_per_nt[nt1]
                nt1 += 1
            where = load_tiles([((nt, ky, kx, kt), tile) for nt in range(nt0, nt1)
                                for (ky, kx, kt, tile) in work[nt]])
        table = [pack_row(Mem.TABLE, list(zip(sh[nt * C:(nt + 1) * C].tolist(),
                                              al[nt * C:(nt + 1) * C].tolist())), cfg)
                 for nt in range(nt0, nt1)]
        em.load(Mem.TABLE, Addr(0, 1), len(table), 1, table)

        for oy0 in range(0, oh, rows_per_chunk):
            nrow = min(rows_per_chunk, oh - oy0)
            # The input row that kernel row 0 reads for output row oy0, in ``in_lay``'s
            # coordinates: a streamed input's band starts there.
            iy0 = oy0 * sy - pt
            if banded:
                _load_band(em, in_lay, iy0, (nrow - 1) * sy + kh, qg.tensor(op.input).shape[1])
                iy0 = 0
            for nt in range(nt0, nt1):
                acc_base = (block % 2) * acc_rows_per_block
                block += 1
                npx = nrow * ow
                b = np.zeros(C, np.int64)
                b[:min(C, cout - nt * C)] = bias[nt * C:(nt + 1) * C]
                brow = pack_row(Mem.ACC, b.tolist(), cfg)
                em.load(Mem.ACC, Addr(acc_base, 1, ow), ow, nrow, [brow] * npx)
                batches = ([work[nt][i:i + cap] for i in range(0, len(work[nt]), cap)]
                           if streamed else [work[nt]])
                bank = 0
                for batch in batches:
                    if streamed:
                        where = load_tiles([((nt, ky, kx, kt), tile) for (ky, kx, kt, tile) in batch])
                    for (ky, kx, kt, _) in batch:
                        em.emit(Instruction(Opcode.LOADW, {"bank": bank}, R, 1,
                                            x=Addr(where[(nt, ky, kx, kt)], 1)))
                        group, lane = divmod(kt, cfg.matmul_lanes)
                        x0 = in_lay.pixel(iy0 + ky, kx - pl) + group
                        em.emit(Instruction(
                            Opcode.MATMUL,
                            {"bank": bank, "accumulate": 1, "act_signed": int(in_fmt.signed),
                             "lane": lane},
                            ow, nrow,
                            x=Addr(x0, sx * in_lay.groups, sy * in_lay.padded_w * in_lay.groups),
                            z=Addr(acc_base, 1, ow)))
                        bank ^= 1
                group, lane = divmod(nt, cfg.requant_lanes)
                params = {"table": nt - nt0, "lane": lane, "relu": int(relu),
                          "out_signed": int(out_fmt.signed)}
                y = Addr()
                if residual:
                    res_lay = layouts[residual]
                    params.update(residual=1, res_signed=int(qg.tensor(residual).fmt.signed))
                    y = Addr(res_lay.pixel(oy0, 0) + group, res_lay.groups,
                             res_lay.padded_w * res_lay.groups)
                em.emit(Instruction(
                    Opcode.REQUANT, params, ow, nrow, x=Addr(acc_base, 1, ow), y=y,
                    z=Addr(out_lay.pixel(oy0, 0) + group, out_lay.groups,
                           out_lay.padded_w * out_lay.groups)))
        nt0 = nt1


def _load_band(em: _Emitter, band: MapLayout, iy0: int, n: int, height: int):
    """Fill rows ``0 .. n`` of a band buffer with image rows ``iy0 .. iy0 + n``: zero words
    for the rows outside the ``height``-row image, image rows from the data stream."""
    L = em.cfg.lanes
    row = band.width * band.groups
    zero = pack_row(Mem.SPAD, [0] * L, em.cfg)
    inside0, inside1 = max(iy0, 0), min(iy0 + n, height)
    for a, b in ((iy0, min(iy0 + n, 0)), (max(iy0, height), iy0 + n)):
        if a < b:
            em.load(Mem.SPAD, Addr(band.pixel(a - iy0, 0), 1, band.padded_w * band.groups), row, b - a,
                    [zero] * (row * (b - a)))
    if inside0 < inside1:
        em.load_image_rows(band, inside0 - iy0, inside0, inside1 - inside0)


def _lower_maxpool(em: _Emitter, qg: QGraph, op: QMaxPool, in_lay: MapLayout, out_lay: MapLayout):
    sy, sx = op.stride
    kh, kw = op.kernel
    pt, pl = op.pads[0], op.pads[1]
    signed = int(qg.tensor(op.input).fmt.signed)
    oh, ow = out_lay.height, out_lay.width
    for g in range(out_lay.groups):
        z = Addr(out_lay.pixel(0, 0) + g, out_lay.groups, out_lay.padded_w * out_lay.groups)
        first = True
        for ky in range(kh):
            for kx in range(kw):
                x = Addr(in_lay.pixel(ky - pt, kx - pl) + g, sx * in_lay.groups,
                         sy * in_lay.padded_w * in_lay.groups)
                em.emit(Instruction(Opcode.MAX, {"a_signed": signed}, ow, oh,
                                    x=x if first else z, y=x, z=z))
                first = False


def _lower_add(em: _Emitter, qg: QGraph, op: QAdd, a_lay: MapLayout, b_lay: MapLayout, out_lay: MapLayout):
    params = {"a_shift": op.a_shift, "b_shift": op.b_shift, "shift": op.shift, "relu": int(op.relu),
              "out_signed": int(qg.tensor(op.output).fmt.signed),
              "a_signed": int(qg.tensor(op.a).fmt.signed), "b_signed": int(qg.tensor(op.b).fmt.signed)}
    oh, ow = out_lay.height, out_lay.width
    for g in range(out_lay.groups):
        def walk(lay):
            return Addr(lay.pixel(0, 0) + g, lay.groups, lay.padded_w * lay.groups)
        em.emit(Instruction(Opcode.ADD, params, ow, oh, x=walk(a_lay), y=walk(b_lay), z=walk(out_lay)))
