"""A planned convolution (:class:`~fxpgen.compiler.conv_plan.ConvPlan`) as instructions.

For every group of n-tiles: LOAD their weight tiles and shift-table rows; then for
every chunk of output rows (after LOADing its band when the input is streamed) and
every n-tile of the group: LOAD the bias into an accumulator block, one accumulating
MATMUL per nonzero (tap, k-tile) tile whose two address loops walk the output pixels
(``ox`` inner, ``oy`` outer) and read the input pixel each one needs for that tap
(no im2col copy), and a REQUANT of the block into the output map (with the residual
when fused). Accumulator blocks alternate between the two halves of the accumulators.
"""

from __future__ import annotations

import numpy as np

from fxpgen.isa import Addr, Instruction, Mem, Opcode, pack_row, pack_rows

from .conv_plan import ConvPlan, ConvTile, TileGroup
from .emit import Emitter, load_band
from .layout import MapLayout

__all__ = ["emit_conv"]


def emit_conv(em: Emitter, plan: ConvPlan, in_lay: MapLayout, out_lay: MapLayout,
              res_lay: MapLayout | None) -> None:
    """Emit ``plan`` reading ``in_lay`` (a band buffer when ``plan.banded``), writing
    ``out_lay``, adding ``res_lay`` when the conv has a fused residual."""
    if plan.note:
        em.notes.append(plan.note)
    _ConvEmission(em, plan, in_lay, out_lay, res_lay).run()


class _ConvEmission:
    """The emission of one plan, step by step; ``block`` counts accumulator blocks."""

    def __init__(self, em: Emitter, plan: ConvPlan, in_lay: MapLayout, out_lay: MapLayout,
                 res_lay: MapLayout | None):
        self.em, self.cfg, self.plan = em, em.cfg, plan
        self.in_lay, self.out_lay, self.res_lay = in_lay, out_lay, res_lay
        self.block = 0

    def run(self) -> None:
        plan = self.plan
        oh = plan.out_size[0]
        for group in plan.groups:
            where = {} if group.streamed else self.load_tiles(
                [(nt, t) for nt in group.n_tiles for t in plan.tiles[nt]])
            self.load_table(group)
            for oy0 in range(0, oh, plan.rows_per_chunk):
                self.chunk(group, oy0, min(plan.rows_per_chunk, oh - oy0), where)

    def load_tiles(self, tiles: list[tuple[int, ConvTile]]) -> dict[tuple[int, int, int, int], int]:
        """LOAD the (n-tile, tile) pairs' weights from weight-buffer row 0; the row offset of
        each by (n-tile, ky, kx, kt)."""
        R = self.cfg.rows
        where = {(nt, tile.ky, tile.kx, tile.kt): k * R for k, (nt, tile) in enumerate(tiles)}
        # One pack for all the tiles (R rows each): a network has 10**5 tiles.
        words = pack_rows(Mem.WBUF, np.concatenate([tile.weight for _, tile in tiles]),
                          self.cfg) if tiles else []
        if words:
            self.em.load(Mem.WBUF, Addr(0, 1, R), R, len(words) // R, words)
        return where

    def load_table(self, group: TileGroup) -> None:
        """LOAD the group's shift-table rows, n-tile ``first`` at entry 0."""
        table = [pack_row(Mem.TABLE, list(self.plan.table[nt]), self.cfg) for nt in group.n_tiles]
        self.em.load(Mem.TABLE, Addr(0, 1), len(table), 1, table)

    def chunk(self, group: TileGroup, oy0: int, nrow: int, where: dict) -> None:
        """Output rows ``oy0 .. oy0 + nrow - 1`` of every n-tile of ``group``."""
        plan = self.plan
        # The input row that kernel row 0 reads for output row oy0, in the input
        # layout's coordinates: a streamed input's band starts there.
        iy0 = oy0 * plan.stride[0] - plan.pads[0]
        if plan.banded:
            load_band(self.em, self.in_lay, iy0, (nrow - 1) * plan.stride[0] + plan.kernel[0],
                      plan.in_height)
            iy0 = 0
        half = self.cfg.acc_depth // 2
        for nt in group.n_tiles:
            acc_base = (self.block % 2) * half
            self.block += 1
            self.load_bias(nt, acc_base, nrow)
            bank = 0
            for batch in plan.batches(group, nt):
                if group.streamed:
                    where = self.load_tiles([(nt, t) for t in batch])
                for tile in batch:
                    self.matmul(nt, tile, where, bank, acc_base, iy0, nrow)
                    bank ^= 1
            self.requant(nt, nt - group.first, acc_base, oy0, nrow)

    def load_bias(self, nt: int, acc_base: int, nrow: int) -> None:
        """LOAD n-tile ``nt``'s bias into every accumulator row of the block."""
        ow = self.plan.out_size[1]
        brow = pack_row(Mem.ACC, list(self.plan.bias[nt]), self.cfg)
        self.em.load(Mem.ACC, Addr(acc_base, 1, ow), ow, nrow, [brow] * (nrow * ow))

    def matmul(self, nt: int, tile: ConvTile, where: dict, bank: int, acc_base: int,
               iy0: int, nrow: int) -> None:
        """LOADW ``tile`` into ``bank`` and accumulate its products over the chunk."""
        plan, lay = self.plan, self.in_lay
        sy, sx = plan.stride
        self.em.emit(Instruction(Opcode.LOADW, {"bank": bank}, self.cfg.rows, 1,
                                 x=Addr(where[(nt, tile.ky, tile.kx, tile.kt)], 1)))
        group, lane = divmod(tile.kt, self.cfg.matmul_lanes)
        x0 = lay.pixel(iy0 + tile.ky, tile.kx - plan.pads[1]) + group
        self.em.emit(Instruction(
            Opcode.MATMUL,
            {"bank": bank, "accumulate": 1, "act_signed": int(plan.in_signed), "lane": lane},
            plan.out_size[1], nrow,
            x=Addr(x0, sx * lay.groups, sy * lay.padded_w * lay.groups),
            z=Addr(acc_base, 1, plan.out_size[1])))

    def requant(self, nt: int, table: int, acc_base: int, oy0: int, nrow: int) -> None:
        """REQUANT the block into n-tile ``nt``'s channels of the output rows, with
        shift-table entry ``table`` (and the residual when fused)."""
        plan, out, res = self.plan, self.out_lay, self.res_lay
        ow = plan.out_size[1]
        group, lane = divmod(nt, self.cfg.requant_lanes)
        params = {"table": table, "lane": lane, "relu": int(plan.relu), "out_signed": int(plan.out_signed)}
        y = Addr()
        if plan.residual:
            params.update(residual=1, res_signed=int(plan.res_signed))
            y = Addr(res.pixel(oy0, 0) + group, res.groups, res.padded_w * res.groups)
        self.em.emit(Instruction(
            Opcode.REQUANT, params, ow, nrow, x=Addr(acc_base, 1, ow), y=y,
            z=Addr(out.pixel(oy0, 0) + group, out.groups, out.padded_w * out.groups)))
