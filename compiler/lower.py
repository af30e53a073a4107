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
from fxpgen.numerics import acc_range

from .gemm import DoesNotFit, ceil_div
from .qgraph import QAdd, QAvgPool, QConv, QGraph, QMaxPool

__all__ = ["lower", "Lowered", "MapLayout", "DoesNotFit"]


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


@dataclass
class Lowered:
    """A program: instructions with the layer each serves, the data stream with the
    input image's place in it, and the layouts of the input and output maps."""

    cfg: CoreConfig
    instructions: list[Instruction]
    layers: list[str]                        # source layer of every instruction
    data_before: list[int]                   # data words before the input image
    data_after: list[int]                    # data words after it
    input_layout: MapLayout
    output_layout: MapLayout
    input_signed: bool
    output_signed: bool
    spad_rows_used: int = 0
    notes: list[str] = field(default_factory=list)

    def data(self, image_words: list[int]) -> list[int]:
        return self.data_before + image_words + self.data_after

    def image_words(self, x_q: np.ndarray) -> list[int]:
        """Data words of an input map (C, H, W) int: the interior pixels, row-major."""
        lay = self.input_layout
        c, h, w = x_q.shape
        if (c, h, w) != (lay.channels, lay.height, lay.width):
            raise ValueError(f"input is {x_q.shape}, the program expects "
                             f"{(lay.channels, lay.height, lay.width)}")
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

    def alloc(self, rows: int, what: str) -> int:
        for i, (start, size) in enumerate(self.free):
            if size >= rows:
                self.free[i] = (start + rows, size - rows)
                self.high = max(self.high, start + rows)
                return start
        largest = max((s for _, s in self.free), default=0)
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
        self.layer = ""
        self.notes: list[str] = []

    def emit(self, insn: Instruction, data=()):
        self.insns.append(insn)
        self.layers.append(self.layer)
        self.data.extend(data)

    def load(self, mem: Mem, z: Addr, count0: int, count1: int, words: list[int]):
        assert len(words) == count0 * count1
        self.emit(Instruction(Opcode.LOAD, {"mem": mem.value}, count0, count1, z=z), words)

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


def lower(qg: QGraph, cfg: CoreConfig) -> Lowered:
    """Lower ``qg`` to a program for ``cfg``; raise :class:`DoesNotFit` when a layer or
    map does not fit the memories."""
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

    def place(name: str) -> MapLayout:
        t = qg.tensor(name)
        c, h, w = t.shape
        lay = MapLayout(0, c, h, w, tuple(border[name]), ceil_div(c, L))
        lay = dataclasses.replace(lay, base=alloc.alloc(lay.rows, f"feature map {name} {t.shape}"))
        layouts[name] = lay
        if any(lay.border):
            em.fill(lay, _pad_byte(pad_signed.get(name, False)))
        return lay

    # The input image: its LOAD is the first data the program consumes.
    em.layer = "input"
    in_lay = place(qg.input)
    data_before = list(em.data)
    em.data.clear()
    if in_lay.width * in_lay.groups > COUNT_MAX:
        raise DoesNotFit(f"input rows of {in_lay.width * in_lay.groups} words exceed a loop count")
    for y0 in range(0, in_lay.height, COUNT_MAX):
        hh = min(COUNT_MAX, in_lay.height - y0)
        em.emit(Instruction(Opcode.LOAD, {"mem": Mem.SPAD.value}, in_lay.width * in_lay.groups, hh,
                            z=Addr(in_lay.pixel(y0, 0), 1, in_lay.padded_w * in_lay.groups)))

    for i, op in enumerate(qg.ops):
        em.layer = op.name
        out_lay = place(op.output)
        if isinstance(op, (QConv, QAvgPool)):
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
    return Lowered(cfg, em.insns, em.layers, data_before, em.data, in_lay, out_lay,
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


def _lower_conv(em: _Emitter, qg: QGraph, op, layouts, out_lay: MapLayout):
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
    x_max = 127 if in_fmt.signed else 255
    bound = np.abs(weight).reshape(cout, -1).sum(axis=1) * x_max + np.abs(bias)
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
    rows_per_chunk = max(1, min(oh, acc_rows_per_block // max(ow, 1)))
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
                        group, lane = divmod(kt, L // R)
                        x0 = in_lay.pixel(oy0 * sy + ky - pt, kx - pl) + group
                        em.emit(Instruction(
                            Opcode.MATMUL,
                            {"bank": bank, "accumulate": 1, "act_signed": int(in_fmt.signed),
                             "lane": lane},
                            ow, nrow,
                            x=Addr(x0, sx * in_lay.groups, sy * in_lay.padded_w * in_lay.groups),
                            z=Addr(acc_base, 1, ow)))
                        bank ^= 1
                group, lane = divmod(nt, L // C)
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
