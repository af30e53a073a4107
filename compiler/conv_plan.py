"""The tiling of one convolution or average pool: a plain value computed from the op,
its graph and the core configuration, before any instruction is emitted.

Grouped and depthwise convolutions, and average pooling (a depthwise conv with
weights 1), share the dense path: their per-tap weight matrix (Cin x Cout) is
block-diagonal and its all-zero (rows x cols) tiles are skipped. The weight tiles of
as many n-tiles as fit the weight buffer (half of it when they need more than one
load), and as many as the shift table holds, are loaded together; an n-tile whose
tiles alone exceed that is streamed in batches of half the buffer for every chunk
of output rows (one half is LOADed while the array reads the other). A chunk
is as many output rows as half the accumulators hold (the other half serves the
chunk before it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fxpgen.config import CoreConfig
from fxpgen.isa import COUNT_MAX, loadw_rows, narrow_of
from fxpgen.numerics import WEIGHT_BITS, acc_bound, acc_range

from .qgraph import QAvgPool, QConv, QGraph
from .tiling import DoesNotFit, ceil_div

__all__ = ["ConvTile", "TileGroup", "Slab", "ConvPlan", "ConvConstants", "conv_constants", "plan_conv",
           "plan_slabs", "slab_span", "band_slabs", "rows_per_chunk"]


@dataclass(frozen=True)
class ConvTile:
    """One nonzero weight tile: kernel tap (``ky``, ``kx``), k-tile ``kt``; ``weight`` is
    (rows x cols) int, input channel ``kt * rows + i`` by output channel of the n-tile."""

    ky: int
    kx: int
    kt: int
    weight: np.ndarray


@dataclass(frozen=True)
class TileGroup:
    """N-tiles ``first .. stop - 1``, whose weight tiles share one weight-buffer load and
    whose shift-table rows one table load; ``streamed``: one n-tile whose tiles exceed
    the buffer (half of it when the conv needs several loads), loaded in batches for
    every chunk."""

    first: int
    stop: int
    streamed: bool

    @property
    def n_tiles(self) -> range:
        return range(self.first, self.stop)


@dataclass(frozen=True)
class Slab:
    """Input channel groups ``first .. first + size - 1`` loaded as a band of their own,
    and the groups of n-tiles that read only them (:func:`plan_slabs`)."""

    first: int
    size: int
    groups: tuple[TileGroup, ...]


@dataclass(frozen=True)
class ConvPlan:
    """How a conv (or average pool) runs on a core: its tiles, their grouping, its
    chunks of output rows and the constants it loads."""

    name: str
    kernel: tuple[int, int]                  # kh, kw
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]          # top, left, bottom, right
    in_height: int                           # rows of the input image (a band's source)
    out_size: tuple[int, int]                # output height, width in pixels
    k_tiles: int                             # ceil(Cin / rows)
    n_tiles: int                             # ceil(Cout / cols)
    tiles: tuple[tuple[ConvTile, ...], ...]  # nonzero tiles of each n-tile, tap-major
    groups: tuple[TileGroup, ...]
    wbuf_tiles: int                          # tiles the weight buffer holds
    rows_per_chunk: int                      # output rows per accumulator block
    banded: bool                             # input is a band buffer loaded per chunk
    bias: tuple[tuple[int, ...], ...]        # per n-tile, cols accumulator values
    table: tuple[tuple[tuple[int, int], ...], ...]  # per n-tile, cols (shift, align)
    relu: bool
    residual: str | None
    in_signed: bool
    out_signed: bool
    res_signed: bool
    note: str | None                         # the accumulator can saturate
    matmul_lanes: int                        # k-tiles one scratchpad row holds
    slabs: tuple[Slab, ...] | None = None    # banded input loaded a few channel groups at a time
    #: The map sweep: n-tiles whose accumulator blocks stay in one half across every
    #: slab of the input band (0: the usual order), and those slabs (:func:`band_slabs`).
    sweep: int = 0
    band_slabs: tuple[tuple[int, int, int], ...] = ()
    #: The width of the conv's weights (:data:`~fxpgen.numerics.WEIGHT_BITS`) and the
    #: weight-buffer rows a tile of them takes, packed (:func:`~fxpgen.isa.loadw_rows`).
    weight_bits: int = 8
    tile_rows: int = 0

    @property
    def stream_halves(self) -> int:
        """How many weight loads the weight buffer holds at once: two (one half is
        LOADed while the array reads the other) unless it holds a single tile."""
        return 2 if self.wbuf_tiles >= 2 else 1

    @property
    def half_tiles(self) -> int:
        """The tiles of one weight-buffer half (:attr:`stream_halves`)."""
        return self.wbuf_tiles // self.stream_halves

    def slab_batches(self, nt: int, first: int, stop: int) -> list[tuple[ConvTile, ...]]:
        """The weight-buffer loads of n-tile ``nt``'s tiles that read input channel groups
        ``first .. stop - 1`` in a map sweep: as few as fit a weight-buffer half, of
        sizes differing by at most one tile; one empty load when there are none."""
        tiles = tuple(t for t in self.tiles[nt] if first <= t.kt // self.matmul_lanes < stop)
        n = max(1, ceil_div(len(tiles), self.half_tiles))
        cuts = [len(tiles) * i // n for i in range(n + 1)]
        return [tiles[a:b] for a, b in zip(cuts, cuts[1:])]

    def batches(self, group: TileGroup, nt: int) -> list[tuple[ConvTile, ...]]:
        """The weight-buffer loads of n-tile ``nt``: one (all its tiles) unless streamed,
        then as few batches as fit a weight-buffer half, of sizes differing by at most
        one tile."""
        tiles = self.tiles[nt]
        if not group.streamed:
            return [tiles]
        n = ceil_div(len(tiles), self.half_tiles)
        cuts = [len(tiles) * i // n for i in range(n + 1)]
        return [tiles[a:b] for a, b in zip(cuts, cuts[1:])]


def rows_per_chunk(cfg: CoreConfig, oh: int, ow: int) -> int:
    """Output rows of a conv that one accumulator block (half the accumulators) holds."""
    return max(1, min(oh, (cfg.acc_depth // 2) // max(ow, 1)))


@dataclass(frozen=True)
class ConvConstants:
    """What a conv's plan takes from the op and the core alone, whatever its chunks:
    its nonzero tiles, their bias and shift-table rows, the saturation note."""

    tiles: tuple[tuple[ConvTile, ...], ...]
    bias: tuple[tuple[int, ...], ...]
    table: tuple[tuple[tuple[int, int], ...], ...]
    note: str | None


def conv_constants(qg: QGraph, op: QConv | QAvgPool, cfg: CoreConfig) -> ConvConstants:
    """The :class:`ConvConstants` of ``op`` on ``cfg``. Raise :class:`DoesNotFit` when a
    shift leaves -32..31 or an output row exceeds half the accumulators or a loop count."""
    weight, bias, groups, shift, _, _, align = _conv_params(qg, op)
    cout = weight.shape[0]
    cin = qg.tensor(op.input).shape[0]
    ow = qg.tensor(op.output).shape[2]
    tiles = _nonzero_tiles(weight, groups, cin, cfg)
    note = _acc_bound_note(op.name, weight, bias, qg.tensor(op.input).fmt.signed, cfg)
    table = _table_rows(op.name, shift, align, cout, len(tiles), cfg)
    if ow > cfg.acc_depth // 2 or ow > COUNT_MAX:
        raise DoesNotFit(f"{op.name}: an output row of {ow} pixels exceeds half the accumulators "
                         f"({cfg.acc_depth // 2}) or a loop count")
    return ConvConstants(tiles, _bias_rows(bias, cout, len(tiles), cfg), table, note)


def plan_conv(qg: QGraph, op: QConv | QAvgPool, cfg: CoreConfig,
              band_rows_per_chunk: int | None = None, chunk_rows: int | None = None,
              consts: ConvConstants | None = None) -> ConvPlan:
    """The plan of ``op`` (a conv or average pool of ``qg``) on ``cfg``; with
    ``band_rows_per_chunk`` its input is a band buffer and a chunk is that many output
    rows; with ``chunk_rows`` alone (an off-chip output or residual), a chunk is that
    many output rows of a resident input; ``consts`` its :func:`conv_constants` when
    already computed. Raise :class:`DoesNotFit` as :func:`conv_constants` does."""
    c = consts or conv_constants(qg, op, cfg)
    kh, kw = (op.weight.shape[2:] if isinstance(op, QConv) else op.kernel)
    cin, in_h, _ = qg.tensor(op.input).shape
    _, oh, ow = qg.tensor(op.output).shape
    residual = op.residual if isinstance(op, QConv) else None
    # Weights narrower than the core unpacks go in its narrowest width that holds
    # them (a b-bit weight is a valid wider one): the same integers reach the array.
    bits = min(b for b in WEIGHT_BITS[:cfg.weight_widths] if b >= getattr(op, "weight_bits", 8))
    tile_rows = loadw_rows(cfg, narrow_of(bits))
    return ConvPlan(
        name=op.name, kernel=(kh, kw), stride=tuple(op.stride), pads=tuple(op.pads),
        in_height=in_h, out_size=(oh, ow), k_tiles=ceil_div(cin, cfg.rows), n_tiles=len(c.tiles),
        tiles=c.tiles, groups=_group_n_tiles(c.tiles, cfg, tile_rows),
        wbuf_tiles=cfg.wbuf_depth // tile_rows, weight_bits=bits, tile_rows=tile_rows,
        rows_per_chunk=band_rows_per_chunk or chunk_rows or rows_per_chunk(cfg, oh, ow),
        banded=band_rows_per_chunk is not None, bias=c.bias, table=c.table,
        relu=bool(op.relu) if isinstance(op, QConv) else False, residual=residual,
        in_signed=qg.tensor(op.input).fmt.signed, out_signed=qg.tensor(op.output).fmt.signed,
        res_signed=bool(residual) and qg.tensor(residual).fmt.signed, note=c.note,
        matmul_lanes=cfg.matmul_lanes)


def plan_slabs(plan: ConvPlan, cfg: CoreConfig, in_groups: int, size: int) -> tuple[Slab, ...] | None:
    """Cut the n-tiles of ``plan`` (input of ``in_groups`` channel groups) into
    consecutive runs that each read at most ``size`` consecutive groups: the slabs
    of a grouped or depthwise conv whose band of every channel would not fit. None
    when an n-tile reads more than ``size`` groups (a dense conv)."""
    runs: list[list[int]] = []                 # [first group, stop group, first n-tile, stop n-tile]
    lanes = cfg.matmul_lanes
    for nt, tiles in enumerate(plan.tiles):
        gs = [t.kt // lanes for t in tiles]
        lo, hi = (min(gs), max(gs) + 1) if gs else (runs[-1][0] if runs else 0, 0)
        if hi - lo > size:
            return None
        if runs and lo >= runs[-1][0] and hi <= runs[-1][0] + size:
            runs[-1][1], runs[-1][3] = max(runs[-1][1], hi), nt + 1
        else:
            runs.append([lo, max(hi, lo + 1), nt, nt + 1])
    return tuple(Slab(min(g0, in_groups - size), size,
                      tuple(TileGroup(g.first + nt0, g.stop + nt0, g.streamed)
                            for g in _group_n_tiles(plan.tiles[nt0:nt1], cfg, plan.tile_rows)))
                 for g0, _, nt0, nt1 in runs)


def band_slabs(in_groups: int, size: int) -> tuple[tuple[int, int, int], ...]:
    """The input's ``in_groups`` channel groups cut into as few slabs of at most ``size``
    as there must be, of sizes differing by at most one: per slab (the first group of
    its band of ``ceil(in_groups / slabs)`` groups, its first group, its stop group); the
    last band starts early rather than pass the map's last group."""
    n = ceil_div(in_groups, size)
    width = ceil_div(in_groups, n)
    cuts = [in_groups * i // n for i in range(n + 1)]
    return tuple((min(a, in_groups - width), a, b) for a, b in zip(cuts, cuts[1:]))


def slab_span(plan: ConvPlan, cfg: CoreConfig) -> int:
    """The most input channel groups one n-tile of ``plan`` reads (from its first to its
    last): :func:`plan_slabs` gives None for any smaller size."""
    lanes = cfg.matmul_lanes
    spans = [max(t.kt for t in tiles) // lanes - min(t.kt for t in tiles) // lanes + 1
             for tiles in plan.tiles if tiles]
    return max(spans, default=0)


def _conv_params(qg: QGraph, op):
    """(weight int (Cout, Cin/g, kh, kw), bias, groups, shift, relu, residual, align);
    an average pool as a depthwise conv with weights 1."""
    if isinstance(op, QConv):
        return np.asarray(op.weight, np.int64), op.bias, op.groups, op.shift, op.relu, op.residual, op.align
    c = qg.tensor(op.input).shape[0]
    kh, kw = op.kernel
    w = np.ones((c, 1, kh, kw), np.int64)
    return w, np.zeros(c, np.int64), c, np.full(c, op.shift, np.int64), False, None, np.zeros(c, np.int64)


def _nonzero_tiles(weight: np.ndarray, groups: int, cin: int,
                   cfg: CoreConfig) -> tuple[tuple[ConvTile, ...], ...]:
    """Per n-tile, its (tap, k-tile) tiles that hold a nonzero weight, in tap-major order.

    The tiles cut the per-tap weight matrices (Cin x Cout, padded to whole tiles,
    block-diagonal for groups) into rows x cols blocks. Each is built alone from the
    groups it meets: a whole matrix per tap would be Cin x Cout int64 words, 1.6 GB
    for the 7x7 average pool over ResNet-50's 2048 channels."""
    R, C = cfg.rows, cfg.cols
    cout, cin_g, kh, kw = weight.shape
    cout_g = cout // groups
    taps = np.transpose(weight, (2, 3, 1, 0))               # (kh, kw, cin_g, cout)
    out = []
    for o0 in range(0, cout, C):
        o1 = min(o0 + C, cout)
        g0, g1 = o0 // cout_g, (o1 - 1) // cout_g + 1       # the groups of these outputs
        tiles = []
        for ky in range(kh):
            for kx in range(kw):
                for kt in range(g0 * cin_g // R, ceil_div(g1 * cin_g, R)):
                    tile = _tile(taps[ky, kx], range(g0, g1), cin_g, cout_g, kt * R, o0, cin, cfg)
                    if tile.any():
                        tiles.append(ConvTile(ky, kx, kt, tile))
        out.append(tuple(tiles))
    return tuple(out)


def _tile(tap: np.ndarray, groups: range, cin_g: int, cout_g: int, i0: int, o0: int, cin: int,
          cfg: CoreConfig) -> np.ndarray:
    """The rows x cols block at input channel ``i0``, output channel ``o0`` of one tap's
    block-diagonal matrix; ``tap`` is (cin_g, Cout), the diagonal blocks side by side."""
    tile = np.zeros((cfg.rows, cfg.cols), np.int64)
    for g in groups:
        a0, a1 = max(g * cin_g, i0), min((g + 1) * cin_g, i0 + cfg.rows, cin)
        b0, b1 = max(g * cout_g, o0), min((g + 1) * cout_g, o0 + cfg.cols, tap.shape[1])
        if a0 < a1 and b0 < b1:
            tile[a0 - i0:a1 - i0, b0 - o0:b1 - o0] = tap[a0 - g * cin_g:a1 - g * cin_g, b0:b1]
    return tile


def _acc_bound_note(name: str, weight: np.ndarray, bias: np.ndarray, in_signed: bool,
                    cfg: CoreConfig) -> str | None:
    """A note naming the first output channel whose largest reachable |acc| exceeds
    the accumulator's range; None when none can."""
    _, hi = acc_range(cfg.acc_width)
    bound = acc_bound(weight, bias, in_signed)
    if bound.max() <= hi:
        return None
    c = int(bound.argmax())
    return (f"{name}: output channel {c} can reach |acc| = {int(bound[c])} > {hi}; "
            "the accumulator saturates there")


def _table_rows(name: str, shift, align, cout: int, n_tiles: int,
                cfg: CoreConfig) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per n-tile, the (shift, align) of its ``cols`` channels (0, 0 past ``cout``)."""
    C = cfg.cols
    sh = np.zeros(n_tiles * C, np.int64)
    al = np.zeros(n_tiles * C, np.int64)
    sh[:cout], al[:cout] = shift, align
    if not (np.all((-32 <= sh) & (sh <= 31)) and np.all((-32 <= al) & (al <= 31))):
        raise DoesNotFit(f"{name}: shifts must be in -32..31")
    return tuple(tuple(zip(sh[nt * C:(nt + 1) * C].tolist(), al[nt * C:(nt + 1) * C].tolist()))
                 for nt in range(n_tiles))


def _bias_rows(bias, cout: int, n_tiles: int, cfg: CoreConfig) -> tuple[tuple[int, ...], ...]:
    """Per n-tile, the bias of its ``cols`` channels (0 past ``cout``)."""
    b = np.zeros(n_tiles * cfg.cols, np.int64)
    b[:cout] = bias
    return tuple(tuple(b[nt * cfg.cols:(nt + 1) * cfg.cols].tolist()) for nt in range(n_tiles))


def _group_n_tiles(tiles, cfg: CoreConfig, tile_rows: int) -> tuple[TileGroup, ...]:
    """Consecutive n-tiles whose tiles (``tile_rows`` weight-buffer rows each) fit the
    weight buffer together, at most ``table_depth`` of them; an n-tile alone larger
    than the buffer on its own, streamed. When they need more than one group, a group
    takes at most half the buffer (the next is LOADed into the other half meanwhile),
    and an n-tile larger than half is streamed in batches of half."""
    cap = cfg.wbuf_depth // tile_rows
    if sum(map(len, tiles)) > cap or len(tiles) > cfg.table_depth:
        cap = max(1, cap // 2)
    groups = []
    nt0 = 0
    while nt0 < len(tiles):
        if len(tiles[nt0]) > cap:
            groups.append(TileGroup(nt0, nt0 + 1, True))
            nt0 += 1
            continue
        nt1, n = nt0, 0
        while nt1 < len(tiles) and n + len(tiles[nt1]) <= cap and nt1 - nt0 < cfg.table_depth:
            n += len(tiles[nt1])
            nt1 += 1
        groups.append(TileGroup(nt0, nt1, False))
        nt0 = nt1
    return tuple(groups)
