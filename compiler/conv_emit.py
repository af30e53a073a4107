"""A planned convolution (:class:`~fxpgen.compiler.conv_plan.ConvPlan`) as instructions.

For every group of n-tiles: LOAD their weight tiles and shift-table rows (the plan's
distinct rows once, before the first group, when they fit the table); then for
every chunk of output rows (after LOADing its band when the input is streamed) and
every n-tile of the group: LOAD the bias into an accumulator block, one accumulating
MATMUL per nonzero (tap, k-tile) tile whose two address loops walk the output pixels
(``ox`` inner, ``oy`` outer) and read the input pixel each one needs for that tap
(no im2col copy), and a REQUANT of the block into the output map (with the residual
when fused). Accumulator blocks alternate between the two halves of the accumulators.

Weight loads (a group's tiles, or a batch of a streamed n-tile's) alternate between
the two halves of the weight buffer when a conv needs more than one, and each is
emitted before the matmuls of the load it follows: the in-order dispatcher finds the
LOAD unit free, which fills one half while LOADW and MATMUL read the other.

Off-chip maps (:class:`ConvBands`). When the residual or the output is kept in the
host's memory, the loops turn: for every chunk, LOAD the input band and the
residual's rows, run every group of n-tiles (reloading their weights when there
is more than one group) into a chunk buffer, and STORE the chunk's rows; so does
an off-chip input of one chunk, its band LOADed once for all groups. With a
second band buffer (:class:`ConvBands` ``in_spare``, one group of n-tiles), the
next chunk's band rows are LOADed into it after this chunk's bias LOADs, while the
array computes this chunk on the other. A plan
with slabs (a grouped or depthwise conv whose band of all channels would not fit)
LOADs the band a slab of channel groups at a time and runs the slab's n-tiles on it.
A plan with a map sweep (``ConvPlan.sweep``, a dense conv over a small off-chip
map) keeps a sweep of n-tiles' blocks in one accumulator half across the slabs
of its band: per slab, the band LOADed and the sweep's tiles that read it
accumulated, so that each weight tile serves every output row of the chunk.

Batches. A program compiled for N images (:class:`ImageMaps`: the maps of images
1 .. N - 1) LOADWs every weight tile once for the N images' MATMULs, back to back.
Each image's accumulator block of the chunk lies in the next of the four
accumulator regions, round robin (:func:`image_blocks`): the bias LOAD of the next
image and the REQUANT of the one before then touch other regions than an image's
MATMULs, so the in-order dispatcher runs them while that image keeps the array busy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fxpgen.isa import PORT_REGIONS, Addr, Instruction, Mem, Opcode, narrow_of, pack_row, pack_rows, pack_tiles

from .conv_plan import ConvPlan, ConvTile, TileGroup
from .emit import Emitter, load_band, store_rows
from .layout import MapLayout

__all__ = ["ConvBands", "ImageMaps", "emit_conv", "image_blocks"]

#: The accumulator regions (:mod:`fxpgen.isa`) the images' blocks take in turn.
ACC_REGIONS = 4


@dataclass(frozen=True)
class ImageMaps:
    """One image's input, output and residual maps of a conv in a batched program."""

    in_lay: MapLayout
    out_lay: MapLayout
    res_lay: MapLayout | None


#: The accumulator regions in the order images take them: each in another read-port
#: bank than the one before (0, 2, 1, 3), so one image's REQUANT never waits for the
#: next image's MATMULs over the bank's read port.
IMAGE_REGIONS = sorted(range(ACC_REGIONS), key=lambda r: (r % PORT_REGIONS[Mem.ACC], r))


def image_blocks(acc_depth: int, images: int, block: int) -> list[int] | None:
    """The first accumulator row of each image's block of ``block`` rows: image i in
    region ``IMAGE_REGIONS[i % 4]``, after the blocks of the images before it there;
    None when they do not fit."""
    region = acc_depth // ACC_REGIONS
    if -(-images // ACC_REGIONS) * block > region:
        return None
    return [IMAGE_REGIONS[i % ACC_REGIONS] * region + (i // ACC_REGIONS) * block for i in range(images)]


@dataclass(frozen=True)
class ConvBands:
    """Where a banded conv's maps come from and go: ``in_buffer`` the host buffer the
    input band is read from (None: the image) and the byte of its rows outside the
    map; ``res_buffer`` the host buffer of an off-chip residual (its layout then a
    chunk-sized band); ``out_buffer`` set when the output layout is a chunk buffer
    whose rows go to the result stream; ``in_groups`` the input's channel groups when
    the plan has slabs (the band then holds one slab's)."""

    in_buffer: int | None = None
    in_pad_byte: int = 0
    res_buffer: int | None = None
    out_buffer: bool = False
    in_groups: int | None = None      # the input map's channel groups, when the band holds a slab
    #: A second band buffer: the next chunk's band is LOADed into it, row by row after
    #: the bias LOADs of this chunk's n-tiles, while this chunk's MATMULs read the other.
    in_spare: MapLayout | None = None

    @property
    def chunk_outer(self) -> bool:
        """Whether a chunk is finished (residual read, output stored) before the next."""
        return self.res_buffer is not None or self.out_buffer


def emit_conv(em: Emitter, plan: ConvPlan, in_lay: MapLayout, out_lay: MapLayout,
              res_lay: MapLayout | None, bands: ConvBands | None = None,
              more: tuple[ImageMaps, ...] = ()) -> None:
    """Emit ``plan`` reading ``in_lay`` (a band buffer when ``plan.banded``), writing
    ``out_lay``, adding ``res_lay`` when the conv has a fused residual; ``bands`` says
    which of them are bands of off-chip maps; ``more`` the maps of a batch's other
    images (resident maps only; a chunk's blocks of all the images must fit
    :func:`image_blocks`)."""
    if plan.note:
        em.notes.append(plan.note)
    if more and (bands or plan.banded or plan.slabs):
        raise ValueError(f"{plan.name}: a batch of images needs resident maps")
    images = (ImageMaps(in_lay, out_lay, res_lay), *more)
    _ConvEmission(em, plan, in_lay, out_lay, res_lay, bands or ConvBands(), images).run()


class _ConvEmission:
    """The emission of one plan, step by step; ``block`` counts accumulator blocks."""

    def __init__(self, em: Emitter, plan: ConvPlan, in_lay: MapLayout, out_lay: MapLayout,
                 res_lay: MapLayout | None, bands: ConvBands, images: tuple[ImageMaps, ...]):
        self.em, self.cfg, self.plan = em, em.cfg, plan
        self.in_lay, self.out_lay, self.res_lay = in_lay, out_lay, res_lay
        self.bands = bands
        self.images = images
        self.block = 0
        self.group0 = 0        # the input channel group at the band's group 0 (a slab's first)
        self.half = 0          # the weight-buffer half the next weight load goes to
        self.fits = False      # the weights in use fit one half (the other may be LOADed)
        # A weight load made ahead of its turn: (its key, its tiles' rows).
        self.ahead: tuple[tuple, dict] | None = None
        # Chunks repeat their instructions and weight loads: each is built once, by key.
        self.runs: dict[tuple, list[Instruction]] = {}
        self.packed: dict[tuple, list[int]] = {}
        # The band buffer the next chunk's band goes to, and its rows still to LOAD
        # there: (band row, input row).
        self.spare: MapLayout | None = None
        self.band_ahead: list[tuple[int, int]] = []
        # The shift table is one hazard resource: a LOAD into it waits for the REQUANT
        # reading it, with the array idle. When the plan's distinct rows fit the table
        # (every layer with per-layer formats, any of at most table_depth n-tiles),
        # they are LOADed once, where the first group's would be, and each n-tile's
        # REQUANT reads its row's entry; else each group LOADs its rows from entry 0.
        self.table_rows = [pack_row(Mem.TABLE, list(r), self.cfg) for r in plan.table]
        distinct = list(dict.fromkeys(self.table_rows))
        self.entries = ([distinct.index(r) for r in self.table_rows] if len(distinct) <= self.cfg.table_depth
                        else None)
        self.table_once = distinct if self.entries is not None else None

    def run(self) -> None:
        if self.plan.sweep:
            self.run_sweeps()
            return
        if self.plan.slabs:
            self.run_slabs()
            return
        plan = self.plan
        oh = plan.out_size[0]
        # A band of one chunk is LOADed once for every group, not once per group.
        if self.bands.chunk_outer or (plan.banded and plan.rows_per_chunk >= oh):
            self.run_chunk_outer()
            return
        for g, group in enumerate(plan.groups):
            where = self.load_group(group)
            for oy0 in range(0, oh, plan.rows_per_chunk):
                more = oy0 + plan.rows_per_chunk < oh
                after = group if more else _after(plan.groups, g, False)
                self.chunk(group, oy0, min(plan.rows_per_chunk, oh - oy0), where, after=after)

    def run_chunk_outer(self) -> None:
        """Chunk by chunk: its bands, every group of n-tiles, its rows stored."""
        plan, bands = self.plan, self.bands
        oh = plan.out_size[0]
        once = len(plan.groups) == 1
        where = {}
        if once:
            where = self.load_group(plan.groups[0])
        # Two band buffers when the chunk's LOADs are the bias LOADs alone: a weight
        # LOAD queued behind a band LOAD would hold the in-order dispatcher.
        self.spare = bands.in_spare if plan.banded and once and not plan.groups[0].streamed else None
        for oy0 in range(0, oh, plan.rows_per_chunk):
            nrow = min(plan.rows_per_chunk, oh - oy0)
            if plan.banded and (self.spare is None or oy0 == 0):
                self.load_input_band(oy0, nrow)
            oy1 = oy0 + plan.rows_per_chunk
            if self.spare is not None and oy1 < oh:
                n_in = (min(plan.rows_per_chunk, oh - oy1) - 1) * plan.stride[0] + plan.kernel[0]
                self.band_ahead = [(k, oy1 * plan.stride[0] - plan.pads[0] + k) for k in range(n_in)]
            if bands.res_buffer is not None:
                load_band(self.em, self.res_lay, oy0, nrow, oh, bands.res_buffer)
            for g, group in enumerate(plan.groups):
                if not once:
                    where = self.load_group(group)
                self.chunk(group, oy0, nrow, where, load=False,
                           after=_after(plan.groups, g, oy0 + nrow < oh))
            if self.spare is not None:
                self.load_band_ahead(len(self.band_ahead))
                self.in_lay, self.spare = self.spare, self.in_lay
            if bands.out_buffer:
                store_rows(self.em, self.out_lay, 0, nrow)

    def run_slabs(self) -> None:
        """Chunk by chunk, slab by slab: the slab's channel groups of the input band,
        its groups of n-tiles; then the chunk's rows stored."""
        plan, bands = self.plan, self.bands
        oh, sy = plan.out_size[0], plan.stride[0]
        order = [group for slab in plan.slabs for group in slab.groups]
        for oy0 in range(0, oh, plan.rows_per_chunk):
            nrow = min(plan.rows_per_chunk, oh - oy0)
            if bands.res_buffer is not None:
                load_band(self.em, self.res_lay, oy0, nrow, oh, bands.res_buffer)
            visited = 0
            for slab in plan.slabs:
                load_band(self.em, self.in_lay, oy0 * sy - plan.pads[0], (nrow - 1) * sy + plan.kernel[0],
                          plan.in_height, bands.in_buffer, bands.in_pad_byte, slab.first, bands.in_groups)
                self.group0 = slab.first
                for group in slab.groups:
                    after = _after(order, visited, oy0 + nrow < oh)
                    visited += 1
                    self.chunk(group, oy0, nrow, self.load_group(group), load=False, after=after)
            if bands.out_buffer:
                store_rows(self.em, self.out_lay, 0, nrow)

    def run_sweeps(self) -> None:
        """The map sweep: chunk by chunk (its residual rows LOADed first, its rows stored
        last), sweep by sweep of ``plan.sweep`` n-tiles whose blocks share one
        accumulator half: for every slab of input channel groups, its band LOADed and
        each n-tile's tiles that read it accumulated (the bias LOADed before the first
        slab); the sweep's REQUANTs after the last."""
        plan, bands = self.plan, self.bands
        oh, ow = plan.out_size
        sy, half = plan.stride[0], self.cfg.acc_depth // 2
        sweeps = [range(n0, min(n0 + plan.sweep, plan.n_tiles)) for n0 in range(0, plan.n_tiles, plan.sweep)]
        steps = [(s, j, nt, k, batch) for s, sweep in enumerate(sweeps) for j, slab in enumerate(plan.band_slabs)
                 for nt in sweep for k, batch in enumerate(plan.slab_batches(nt, *slab[1:]))]
        bank = 0
        for oy0 in range(0, oh, plan.rows_per_chunk):
            nrow = min(plan.rows_per_chunk, oh - oy0)
            if bands.res_buffer is not None:
                load_band(self.em, self.res_lay, oy0, nrow, oh, bands.res_buffer)
            for i, (s, j, nt, k, batch) in enumerate(steps):
                sweep = sweeps[s]
                if (j, nt, k) == (0, sweep.start, 0):
                    self.load_table(TileGroup(sweep.start, sweep.stop, False))
                    acc0 = (self.block % 2) * half
                    self.block += 1
                if (nt, k) == (sweep.start, 0):
                    load_band(self.em, self.in_lay, oy0 * sy - plan.pads[0], (nrow - 1) * sy + plan.kernel[0],
                              plan.in_height, bands.in_buffer, bands.in_pad_byte, plan.band_slabs[j][0],
                              bands.in_groups)
                    self.group0 = plan.band_slabs[j][0]
                acc = acc0 + (nt - sweep.start) * nrow * ow
                if (j, k) == (0, 0):
                    self.load_bias(nt, acc, nrow)
                where = self.take(("sweep", nt, j, k), [(nt, t) for t in batch])
                if i + 1 < len(steps) or oy0 + nrow < oh:
                    _, j1, nt1, k1, batch1 = steps[(i + 1) % len(steps)]
                    self.prefetch(("sweep", nt1, j1, k1), [(nt1, t) for t in batch1])
                self.em.emit_all(self.matmuls(nt, k, batch, where, bank, acc, 0, nrow))
                bank ^= len(batch) % 2
                if i + 1 == len(steps) or steps[i + 1][0] != s:
                    for n in sweep:
                        self.requant(n, n - sweep.start, acc0 + (n - sweep.start) * nrow * ow, oy0, nrow)
            if bands.out_buffer:
                store_rows(self.em, self.out_lay, 0, nrow)

    def load_group(self, group: TileGroup) -> dict:
        """LOAD a group's weight tiles (none when streamed; unless LOADed ahead) and
        shift-table rows."""
        where = {} if group.streamed else self.take(*self.first_load(group))
        self.load_table(group)
        return where

    def first_load(self, group: TileGroup) -> tuple[tuple, list[tuple[int, ConvTile]]]:
        """The key and (n-tile, tile) pairs of the first weight load a visit of ``group``
        makes: all its tiles, or a streamed n-tile's first batch."""
        plan = self.plan
        if group.streamed:
            return ("batch", group.first, 0), [(group.first, t) for t in plan.batches(group, group.first)[0]]
        return ("group", group.first), [(nt, t) for nt in group.n_tiles for t in plan.tiles[nt]]

    def put(self, key: tuple, pairs: list[tuple[int, ConvTile]]) -> None:
        """LOAD weight load ``key`` into the next half of the weight buffer (from row 0
        when it needs more than half) and keep it as the one ahead."""
        plan = self.plan
        if len(pairs) > plan.half_tiles:
            base, self.half = 0, 0
        else:
            base, self.half = self.half * plan.half_tiles * plan.tile_rows, (self.half + 1) % plan.stream_halves
        self.ahead = (key, self.load_tiles(pairs, base))

    def take(self, key: tuple, pairs: list[tuple[int, ConvTile]]) -> dict:
        """The rows of weight load ``key``, LOADed now unless it was LOADed ahead."""
        if self.ahead is None or self.ahead[0] != key:
            self.put(key, pairs)
        where = self.ahead[1]
        self.ahead = None
        self.fits = len(pairs) <= self.plan.half_tiles
        return where

    def prefetch(self, key: tuple, pairs: list[tuple[int, ConvTile]]) -> None:
        """LOAD weight load ``key`` ahead, into the half the weights in use leave free,
        when both fit a half: placed before the matmuls of the last weights in use, the
        LOAD unit fills one half while LOADW and MATMUL drain the other."""
        if self.plan.stream_halves == 2 and self.fits and len(pairs) <= self.plan.half_tiles:
            self.put(key, pairs)

    def load_input_band(self, oy0: int, nrow: int) -> None:
        """LOAD the input rows output rows ``oy0 .. oy0 + nrow - 1`` read into the band."""
        plan = self.plan
        load_band(self.em, self.in_lay, oy0 * plan.stride[0] - plan.pads[0],
                  (nrow - 1) * plan.stride[0] + plan.kernel[0], plan.in_height,
                  self.bands.in_buffer, self.bands.in_pad_byte)

    def load_band_ahead(self, n: int) -> None:
        """LOAD the next ``n`` rows of :attr:`band_ahead` into the spare band buffer, one
        LOAD a row."""
        plan = self.plan
        for k, iy in self.band_ahead[:n]:
            load_band(self.em, self.spare.window(k, 1), iy, 1, plan.in_height, self.bands.in_buffer,
                      self.bands.in_pad_byte)
        del self.band_ahead[:n]

    def load_tiles(self, tiles: list[tuple[int, ConvTile]], base: int = 0) -> dict[tuple[int, int, int, int], int]:
        """LOAD the (n-tile, tile) pairs' weights from weight-buffer row ``base``; the row
        offset of each by (n-tile, ky, kx, kt)."""
        P = self.plan.tile_rows
        where = {(nt, tile.ky, tile.kx, tile.kt): base + k * P for k, (nt, tile) in enumerate(tiles)}
        if not tiles:
            return where
        key = ("tiles", tiles[0][0], id(tiles[0][1]), len(tiles))
        if key not in self.packed:
            # One pack for all the tiles (P rows each): a network has 10**5 tiles.
            rows = pack_tiles(np.stack([tile.weight for _, tile in tiles]), self.plan.weight_bits)
            self.packed[key] = pack_rows(Mem.WBUF, rows.reshape(-1, self.cfg.cols), self.cfg)
        words = self.packed[key]
        self.em.load(Mem.WBUF, Addr(base, 1, P), P, len(words) // P, words)
        return where

    def load_table(self, group: TileGroup) -> None:
        """LOAD the group's shift-table rows, n-tile ``first`` at entry 0 (or the
        plan's distinct rows, the first time, when they fit the table)."""
        if self.entries is not None:
            if self.table_once:
                self.em.load(Mem.TABLE, Addr(0, 1), len(self.table_once), 1, self.table_once)
                self.table_once = None
            return
        table = self.table_rows[group.first:group.stop]
        self.em.load(Mem.TABLE, Addr(0, 1), len(table), 1, table)

    def chunk(self, group: TileGroup, oy0: int, nrow: int, where: dict, load: bool = True,
              after: TileGroup | None = None) -> None:
        """Output rows ``oy0 .. oy0 + nrow - 1`` of every n-tile of ``group`` (``load``:
        LOADing a banded input's rows first); ``after`` the group whose chunk is emitted
        next, if any, whose first weight load goes ahead of this chunk's last matmuls."""
        plan = self.plan
        # The input row that kernel row 0 reads for output row oy0, in the input
        # layout's coordinates: a streamed input's band starts there.
        iy0 = oy0 * plan.stride[0] - plan.pads[0]
        if plan.banded:
            if load:
                self.load_input_band(oy0, nrow)
            iy0 = 0
        if len(self.images) > 1:
            self.chunk_images(group, oy0, nrow, where, iy0)
            return
        half = self.cfg.acc_depth // 2
        for nt in group.n_tiles:
            acc_base = (self.block % 2) * half
            self.block += 1
            self.load_bias(nt, acc_base, nrow)
            if self.band_ahead:
                self.load_band_ahead(-(-len(self.band_ahead) // (group.stop - nt)))
            if group.streamed:
                self.stream(nt, group, after, acc_base, iy0, nrow)
            else:
                if nt == group.stop - 1 and after is not None and after != group:
                    self.prefetch(*self.first_load(after))
                self.em.emit_all(self.matmuls(nt, 0, plan.tiles[nt], where, 0, acc_base, iy0, nrow))
            self.requant(nt, nt - group.first, acc_base, oy0, nrow)

    def chunk_images(self, group: TileGroup, oy0: int, nrow: int, where: dict, iy0: int) -> None:
        """:meth:`chunk` for a batch: per tile, one LOADW and every image's MATMUL. The
        bias LOADs go between the first tile's MATMULs and the REQUANTs between the
        last's when a MATMUL outlasts the array's drain (the write-backs a LOAD or
        REQUANT in the same region waits for); shorter ones, all before and all after."""
        plan, images = self.plan, self.images
        block = nrow * plan.out_size[1]
        blocks = image_blocks(self.cfg.acc_depth, len(images), block)
        between = block >= self.cfg.rows + self.cfg.cols
        for nt in group.n_tiles:
            batches = plan.batches(group, nt)
            first, last = (0, 0), (len(batches) - 1, len(batches[-1]) - 1)
            bank = 0
            for k, batch in enumerate(batches):
                if group.streamed:
                    where = self.take(("batch", nt, k), [(nt, t) for t in batch])
                for j, tile in enumerate(batch):
                    if (k, j) == first and not between:
                        for b in blocks:
                            self.load_bias(nt, b, nrow)
                    for i, maps in enumerate(images):
                        loadw, matmul = self.tile_insns(nt, tile, where, bank, maps.in_lay, blocks[i], iy0,
                                                        nrow)
                        if i == 0:
                            self.em.emit(loadw)
                        if (k, j) == first and between:
                            self.load_bias(nt, blocks[i], nrow)
                        self.em.emit(matmul)
                        if (k, j) == last and between and i:
                            self.requant(nt, nt - group.first, blocks[i - 1], oy0, nrow, images[i - 1])
                    bank ^= 1
            for i in range(len(images) - 1 if between else 0, len(images)):
                self.requant(nt, nt - group.first, blocks[i], oy0, nrow, images[i])

    def stream(self, nt: int, group: TileGroup, after: TileGroup | None, acc_base: int,
               iy0: int, nrow: int) -> None:
        """Streamed n-tile ``nt``'s batches, alternating between the weight buffer's halves:
        each batch's LOAD is placed before the matmuls of the batch before it (the first
        load of ``after`` before this n-tile's last batch), so that the LOAD unit fills
        one half while LOADW and MATMUL drain the other."""
        batches = self.plan.batches(group, nt)
        bank = 0
        for k, batch in enumerate(batches):
            where = self.take(("batch", nt, k), [(nt, t) for t in batch])
            if k + 1 < len(batches):
                self.prefetch(("batch", nt, k + 1), [(nt, t) for t in batches[k + 1]])
            elif after is not None:
                self.prefetch(*self.first_load(after))
            self.em.emit_all(self.matmuls(nt, k, batch, where, bank, acc_base, iy0, nrow))
            bank ^= len(batch) % 2

    def load_bias(self, nt: int, acc_base: int, nrow: int) -> None:
        """LOAD n-tile ``nt``'s bias into every accumulator row of the block."""
        ow = self.plan.out_size[1]
        key = ("bias", nt)
        if key not in self.packed:
            self.packed[key] = [pack_row(Mem.ACC, list(self.plan.bias[nt]), self.cfg)]
        self.em.load(Mem.ACC, Addr(acc_base, 1, ow), ow, nrow, self.packed[key] * (nrow * ow))

    def matmuls(self, nt: int, k: int, batch: tuple[ConvTile, ...], where: dict, bank: int,
                acc_base: int, iy0: int, nrow: int) -> list[Instruction]:
        """Batch ``k`` of n-tile ``nt``: per tile, LOADW it into the bank (alternating from
        ``bank``) and accumulate its products over the chunk."""
        at = where[(nt, batch[0].ky, batch[0].kx, batch[0].kt)] if batch else 0
        key = (nt, k, bank, acc_base, iy0, nrow, self.group0, at, self.in_lay.base)
        if key in self.runs:
            return self.runs[key]
        out = []
        for tile in batch:
            out += self.tile_insns(nt, tile, where, bank, self.in_lay, acc_base, iy0, nrow)
            bank ^= 1
        self.runs[key] = out
        return out

    def tile_insns(self, nt: int, tile: ConvTile, where: dict, bank: int, lay: MapLayout, acc_base: int,
                   iy0: int, nrow: int) -> tuple[Instruction, Instruction]:
        """The LOADW of ``tile`` into ``bank`` and its MATMUL over the chunk of map ``lay``
        into the block at ``acc_base``."""
        plan, cfg = self.plan, self.cfg
        sy, sx = plan.stride
        ow = plan.out_size[1]
        g, row = lay.groups, lay.padded_w * lay.groups
        group, lane = divmod(tile.kt, cfg.matmul_lanes)
        # Tap (ky, kx) reads from this row on, moved ky rows and kx pixels.
        x00 = lay.pixel(iy0, -plan.pads[1]) - self.group0
        return (Instruction(Opcode.LOADW, {"bank": bank, "narrow": narrow_of(plan.weight_bits)},
                            plan.tile_rows, 1, x=Addr(where[(nt, tile.ky, tile.kx, tile.kt)], 1)),
                Instruction(Opcode.MATMUL, {"bank": bank, "accumulate": 1, "act_signed": int(plan.in_signed),
                                            "lane": lane},
                            ow, nrow, x=Addr(x00 + tile.ky * row + tile.kx * g + group, sx * g, sy * row),
                            z=Addr(acc_base, 1, ow)))

    def requant(self, nt: int, table: int, acc_base: int, oy0: int, nrow: int,
                maps: ImageMaps | None = None) -> None:
        """REQUANT the block into n-tile ``nt``'s channels of the output rows (of the
        image of ``maps`` in a batch), with shift-table entry ``table`` (and the
        residual when fused)."""
        plan = self.plan
        out, res = (maps.out_lay, maps.res_lay) if maps else (self.out_lay, self.res_lay)
        ow = plan.out_size[1]
        # A chunk buffer or residual band holds the chunk's rows from its row 0.
        out_y = 0 if self.bands.out_buffer else oy0
        res_y = 0 if self.bands.res_buffer is not None else oy0
        group, lane = divmod(nt, self.cfg.requant_lanes)
        if self.entries is not None:
            table = self.entries[nt]
        params = {"table": table, "lane": lane, "relu": int(plan.relu), "out_signed": int(plan.out_signed)}
        y = Addr()
        if plan.residual:
            params.update(residual=1, res_signed=int(plan.res_signed))
            y = Addr(res.pixel(res_y, 0) + group, res.groups, res.padded_w * res.groups)
        self.em.emit(Instruction(
            Opcode.REQUANT, params, ow, nrow, x=Addr(acc_base, 1, ow), y=y,
            z=Addr(out.pixel(out_y, 0) + group, out.groups, out.padded_w * out.groups)))


def _after(order: list[TileGroup], g: int, more: bool) -> TileGroup | None:
    """The group visited after ``order[g]`` when a chunk visits the groups ``order`` in
    turn (``more``: another chunk follows)."""
    if g + 1 < len(order):
        return order[g + 1]
    return order[0] if more else None
