"""An average pool of one output row (a global average pool) whose input, even one
slab of channel groups of it, does not fit the scratchpad: accumulated over bands of
its kernel rows.

Every output row of a convolution reads ``kh`` input rows at once
(:mod:`~fxpgen.compiler.conv_emit`); a global pool's one output row reads them all.
Its sum, though, is one accumulating MATMUL per kernel tap (the depthwise weights 1
of :func:`~fxpgen.compiler.conv_plan.plan_conv`), and the accumulators keep it
between MATMULs: so each band of input rows is LOADed from the pool's off-chip input
in turn and the MATMULs of the taps in its rows add into the same accumulator rows.
The bias goes in before the first band and one REQUANT follows the last, so the
integers are those of the whole-map pool, tap for tap in the same order.

Per slab of channel groups (:func:`~fxpgen.compiler.conv_plan.plan_slabs`, the
narrowest the n-tiles allow) and run of its n-tiles (as many as the shift table and
the accumulators hold at once, an output row each): LOAD the run's shift-table rows
and biases; per band, LOAD its rows and, per n-tile, the distinct weight tiles its
taps there use (one for a pool) and one LOADW and MATMUL per tap; then REQUANT each
n-tile into the output row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fxpgen.config import CoreConfig
from fxpgen.isa import Addr, Instruction, Mem, Opcode, pack_row, pack_rows

from .conv_plan import ConvPlan, ConvTile, Slab, TileGroup
from .emit import Emitter, load_band
from .layout import MapLayout
from .tiling import DoesNotFit

__all__ = ["PoolBands", "emit_pool_bands", "whole_slab"]


@dataclass(frozen=True)
class PoolBands:
    """Where a banded pool reads and writes: ``band`` a buffer of a slab's channel
    groups (``band.height`` kernel rows at a time), ``buffer`` the input's host buffer
    of ``in_groups`` channel groups, ``pad_byte`` its rows outside the map, ``out``
    the output row (a chunk buffer of one row when the output is off chip)."""

    band: MapLayout
    buffer: int
    pad_byte: int
    in_groups: int
    out: MapLayout


def emit_pool_bands(em: Emitter, plan: ConvPlan, maps: PoolBands, slabs: tuple[Slab, ...]) -> None:
    """Emit ``plan`` (one output row) over bands of ``maps.band.height`` input rows,
    slab by slab of ``slabs`` (module docstring)."""
    cfg = em.cfg
    ow = plan.out_size[1]
    per_run = min(cfg.table_depth, cfg.acc_depth // ow)
    for slab in slabs:
        n_tiles = [nt for g in slab.groups for nt in g.n_tiles]
        for i in range(0, len(n_tiles), per_run):
            _run(em, plan, maps, slab.first, n_tiles[i:i + per_run])


def _run(em: Emitter, plan: ConvPlan, maps: PoolBands, group0: int, n_tiles: list[int]) -> None:
    """N-tiles ``n_tiles`` (reading the slab from channel group ``group0``), n-tile k
    in accumulator rows ``k * ow ..`` and shift-table entry k."""
    cfg = em.cfg
    ow = plan.out_size[1]
    kh = plan.kernel[0]
    em.load(Mem.TABLE, Addr(0, 1), len(n_tiles), 1,
            [pack_row(Mem.TABLE, list(plan.table[nt]), cfg) for nt in n_tiles])
    for k, nt in enumerate(n_tiles):
        em.load(Mem.ACC, Addr(k * ow, 1, ow), ow, 1, [pack_row(Mem.ACC, list(plan.bias[nt]), cfg)] * ow)
    rows = maps.band.height
    bank = 0
    for k0 in range(0, kh, rows):
        n = min(rows, kh - k0)
        load_band(em, maps.band, k0 - plan.pads[0], n, plan.in_height, maps.buffer, maps.pad_byte, group0,
                  maps.in_groups if maps.band.groups != maps.in_groups else None)
        for k, nt in enumerate(n_tiles):
            tiles = [t for t in plan.tiles[nt] if k0 <= t.ky < k0 + n]
            where = _load_weights(em, plan, tiles)
            for tile in tiles:
                em.emit(Instruction(Opcode.LOADW, {"bank": bank}, cfg.rows, 1,
                                    x=Addr(where[tile.weight.tobytes()], 1)))
                em.emit(_matmul(plan, maps.band, tile, tile.ky - k0, bank, k * ow, group0, cfg))
                bank ^= 1
    for k, nt in enumerate(n_tiles):
        _requant(em, plan, maps.out, nt, k, k * ow)


def _load_weights(em: Emitter, plan: ConvPlan, tiles: list[ConvTile]) -> dict[bytes, int]:
    """LOAD the distinct weights of ``tiles`` from weight-buffer row 0; the row of each."""
    cfg = em.cfg
    distinct: dict[bytes, np.ndarray] = {}
    for t in tiles:
        distinct.setdefault(t.weight.tobytes(), t.weight)
    if len(distinct) > plan.wbuf_tiles:
        raise DoesNotFit(f"{plan.name}: the {len(distinct)} distinct weight tiles of a band exceed the "
                         f"weight buffer ({plan.wbuf_tiles} tiles)")
    if distinct:
        words = pack_rows(Mem.WBUF, np.concatenate(list(distinct.values())), cfg)
        em.load(Mem.WBUF, Addr(0, 1, cfg.rows), cfg.rows, len(distinct), words)
    return {key: k * cfg.rows for k, key in enumerate(distinct)}


def _matmul(plan: ConvPlan, band: MapLayout, tile: ConvTile, band_y: int, bank: int, acc_base: int,
            group0: int, cfg: CoreConfig) -> Instruction:
    """The MATMUL of ``tile`` (kernel row ``band_y`` of the band) adding into the
    accumulator row(s) at ``acc_base``."""
    sx = plan.stride[1]
    g, row = band.groups, band.padded_w * band.groups
    group, lane = divmod(tile.kt, cfg.matmul_lanes)
    x0 = band.pixel(band_y, tile.kx - plan.pads[1]) - group0 + group
    return Instruction(Opcode.MATMUL, {"bank": bank, "accumulate": 1, "act_signed": int(plan.in_signed),
                                       "lane": lane},
                       plan.out_size[1], 1, x=Addr(x0, sx * g, row), z=Addr(acc_base, 1, plan.out_size[1]))


def _requant(em: Emitter, plan: ConvPlan, out: MapLayout, nt: int, table: int, acc_base: int) -> None:
    """REQUANT n-tile ``nt``'s accumulators into its channels of the output row."""
    ow = plan.out_size[1]
    group, lane = divmod(nt, em.cfg.requant_lanes)
    params = {"table": table, "lane": lane, "relu": int(plan.relu), "out_signed": int(plan.out_signed)}
    em.emit(Instruction(Opcode.REQUANT, params, ow, 1, x=Addr(acc_base, 1, ow),
                        z=Addr(out.pixel(0, 0) + group, out.groups, out.padded_w * out.groups)))


def whole_slab(plan: ConvPlan, in_groups: int) -> tuple[Slab, ...]:
    """One slab of every channel group, for a plan that reads them all at once."""
    return (Slab(0, in_groups, tuple(TileGroup(nt, nt + 1, False) for nt in range(plan.n_tiles))),)
