"""Feature maps kept off chip: which maps the lowering spills to the host's memory,
and the band lowering of the layers that read or write them.

Spill policy (:func:`spill_plan`). Walking the ops in order, while the maps live
at an op (its inputs, its output and every map read later) take more scratchpad
rows than a budget less the op's band buffers (one output row's, as if every map
it may spill were off chip), the largest of them that may go off chip does. A map may go
off chip when its producer and every consumer can run in bands (:data:`BANDED_OPS`):
convolutions (any kernel, stride and groups, with a residual), average and max
pools, adds, concats, slices, nearest upsampling, lookup tables and products; neither
the network's input (streamed in bands by its own rule) nor a product's per-channel
operand (read whole at every pixel). The plans are tried in three tiers
(:data:`SPILL_TIERS`, :func:`spill_plans`): first only maps the conv family alone
reads and writes (so what compiled before the other ops could band lowers as it
did), then every map that may go off chip but the network's output, then the output
too. Its producer then STOREs its rows chunk by chunk as it computes them, and
they are the program's output words. Within a tier the
lowering tries the budgets ``spad_depth`` x 1, 3/4, 1/2, 1/4 and 0 in turn (the
bands and chunk buffers need room, and first-fit allocation leaves holes); the first
plan that lowers then gets back on chip, one at a time in :func:`recall_order`, every
map whose return still lowers and shrinks no banded layer's chunks.

Band lowering (:func:`lower_banded`). A layer that reads or writes an off-chip map
runs in chunks of output rows: it LOADs the input rows of each chunk (with the
kernel's halo; rows outside the map as the map's border byte) into a band buffer,
and an off-chip residual's or second operand's rows into bands of their own,
computes the chunk into a chunk buffer when its output is off chip, and STOREs the
chunk's rows to the result stream, where they become host buffer k
(:class:`~fxpgen.compiler.emit.HostBuffer`). A chunk is as many output rows as
the accumulators hold (:func:`~fxpgen.compiler.conv_plan.rows_per_chunk`, for a
conv), fewer when its buffers would not fit the largest free block. A conv whose
weights are LOADed once may double-buffer its input band (:func:`_double_bands`).

When even one output row's buffers do not fit, and only when no spill plan lowers
otherwise (the lowering's ``narrow`` attempts), a conv with an off-chip output runs
in windows of columns (:mod:`~fxpgen.compiler.column_bands`) and a global pool
over an off-chip input in bands of its kernel rows
(:mod:`~fxpgen.compiler.pool_bands`).

The row ops (concat, slice, upsampling, lookup, product) have no halo and no
accumulators: a chunk is as many input rows as the buffers fit, and the op's
whole-map emitter runs on windows of the chunk's rows
(:meth:`~fxpgen.compiler.layout.MapLayout.window`). A concat copies each operand's
band into its channel groups of the chunk, as it copies whole maps on chip: its
producers do not store straight into their slice of an off-chip concat map,
because a host buffer is one run of result words per map, and every consumer's band
would then be gathered from several buffers, a pixel's channel groups from each.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Iterator

from fxpgen.config import REGIONS
from fxpgen.isa import COUNT_MAX

from .column_bands import ColumnSource, emit_conv_columns, window_input
from .conv_emit import ConvBands
from .conv_plan import band_slabs, plan_slabs, rows_per_chunk, slab_span
from .emit import HostBuffer, load_band, store_rows
from .layout import MapLayout, last_uses, pad_byte, plan_borders
from .pool_bands import PoolBands, emit_pool_bands, whole_slab
from .qgraph import QAdd, QAvgPool, QConcat, QConv, QGraph, QLut, QMaxPool, QMul, QResize, QSlice
from .tiling import DoesNotFit, ceil_div
from .vector_ops import (emit_add_rows, emit_concat, emit_lut_groups, emit_maxpool_ring_row, emit_maxpool_rows,
                         emit_mul, emit_resize, emit_slice, load_lut_table, lut_slot)

if TYPE_CHECKING:
    from .lower import _Lowering

__all__ = ["CONV_BANDED_OPS", "ROW_BANDED_OPS", "BANDED_OPS", "SPILL_TIERS", "BUDGET_FRACTIONS",
           "spillable", "spill_plans", "spill_plan", "recall_order", "touches_offchip", "lower_banded"]

#: Ops that can run in bands of rows over off-chip maps: the convolution family,
#: whose maps the lowering spills first, then the ops that copy or transform rows.
CONV_BANDED_OPS = (QConv, QAvgPool, QMaxPool, QAdd)
ROW_BANDED_OPS = (QConcat, QSlice, QResize, QLut, QMul)
BANDED_OPS = CONV_BANDED_OPS + ROW_BANDED_OPS
#: The spill tiers tried in turn: the ops that may read or write off-chip maps, and
#: whether the network's output may go off chip too (last, so that a network that
#: compiled with its output resident keeps its program).
SPILL_TIERS = ((CONV_BANDED_OPS, False), (BANDED_OPS, False), (BANDED_OPS, True))
#: The cycles a weight tile holds its bank beyond the vectors it serves (the map
#: sweep's estimate, :func:`_map_sweep`; measured on the 8x8 core).
DRAIN = 29
#: The map sweep is taken when its estimate is below this fraction of the usual
#: order's: nearer, the estimate's error decides (MobileNetV2's 14x14 1x1 convs lost
#: 0.3% with 1).
MARGIN = 0.98
#: The spill budgets tried, as fractions of ``spad_depth``.
BUDGET_FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.0)


def spillable(qg: QGraph, ops: tuple[type, ...] = BANDED_OPS, output: bool = False) -> set[str]:
    """The maps that may go off chip: produced and read only by ``ops``; neither a
    MUL's per-channel operand nor the network's input, nor its output unless
    ``output``."""
    ok = {op.output for op in qg.ops if isinstance(op, ops)}
    for op in qg.ops:
        if not isinstance(op, ops):
            ok -= set(op.inputs)
        elif isinstance(op, QMul) and qg.tensor(op.b).shape != qg.tensor(op.a).shape:
            ok.discard(op.b)
    return ok - {qg.input} - (set() if output else {qg.output})


def spill_plans(qg: QGraph, lanes: int, spad_depth: int, input_streamed: bool) -> Iterator[frozenset[str]]:
    """The spill plans to try in turn, each new and not empty: per tier of
    :data:`SPILL_TIERS`, :func:`spill_plan` for every budget of :data:`BUDGET_FRACTIONS`."""
    seen = set()
    for ops, output in SPILL_TIERS:
        ok = spillable(qg, ops, output)
        for frac in BUDGET_FRACTIONS:
            spilled = spill_plan(qg, lanes, int(spad_depth * frac), input_streamed, ok)
            if spilled and spilled not in seen:
                seen.add(spilled)
                yield spilled


def recall_order(qg: QGraph, lanes: int, spilled: frozenset[str]) -> list[str]:
    """The maps of ``spilled`` in the order the lowering tries to bring them back on
    chip: the latest produced first, the smallest first among maps of one op (a late
    map is small and lives where the scratchpad is emptier)."""
    rows, _ = _map_rows(qg, lanes)
    born = {op.output: i for i, op in enumerate(qg.ops)}
    return sorted(spilled, key=lambda t: (-born.get(t, -1), rows[t], t))


def _map_rows(qg: QGraph, lanes: int) -> tuple[dict[str, int], dict[str, int]]:
    """Scratchpad rows of every map, with its borders, and of one of its rows."""
    border, _ = plan_borders(qg)
    rows, row = {}, {}
    for name, t in qg.tensors.items():
        c, h, w = t.shape
        b = border[name]
        row[name] = (w + b[1] + b[3]) * ceil_div(c, lanes)
        rows[name] = (h + b[0] + b[2]) * row[name]
    return rows, row


def spill_plan(qg: QGraph, lanes: int, budget: int, input_streamed: bool,
               ok: set[str] | None = None) -> frozenset[str]:
    """The maps of ``ok`` (default :func:`spillable`) to keep off chip so that the
    resident maps live at every op take at most ``budget`` scratchpad rows less the
    op's band buffers (largest first; module docstring)."""
    rows, row = _map_rows(qg, lanes)
    born = {op.output: i for i, op in enumerate(qg.ops)}
    if not input_streamed:
        born[qg.input] = -1
    last = last_uses(qg)
    ok = spillable(qg) if ok is None else ok
    spilled: set[str] = set()
    for i, op in enumerate(qg.ops):
        live = [t for t, b in born.items() if b <= i <= last.get(t, b)]
        room = budget - _band_rows(op, ok, row)
        while sum(rows[t] for t in live if t not in spilled) > room:
            candidates = [t for t in live if t in ok and t not in spilled]
            if not candidates:
                break
            spilled.add(max(candidates, key=lambda t: (rows[t], t)))
    return frozenset(spilled)


def _band_rows(op, ok: set[str], row: dict[str, int]) -> int:
    """Scratchpad rows of ``op``'s band buffers for one output row, were every map of
    ``ok`` it reads or writes off chip (the input band with the kernel's rows)."""
    kh = 1
    if isinstance(op, QConv):
        kh = op.weight.shape[2]
    elif isinstance(op, (QAvgPool, QMaxPool)):
        kh = op.kernel[0]
    f = op.factor if isinstance(op, QResize) else 1
    n = sum(row[t] for t in {*op.inputs[1:]} & ok) + (f * row[op.output] if op.output in ok else 0)
    return n + (kh * row[op.inputs[0]] if op.inputs[0] in ok else 0)


def lower_banded(lo: "_Lowering", op, streamed: bool) -> MapLayout | None:
    """Lower ``op`` in bands (its input streamed when ``streamed``, or some of its maps
    off chip); the streamed input's layout as the host sees it, else None."""
    if isinstance(op, (QConv, QAvgPool)):
        return _conv(lo, op, streamed)
    if isinstance(op, QMaxPool):
        _maxpool(lo, op)
    elif isinstance(op, QAdd):
        _add(lo, op)
    else:
        _rowwise(lo, op)
    return None


def touches_offchip(lo: "_Lowering", op) -> bool:
    """Whether ``op`` reads or writes an off-chip map."""
    return any(t in lo.offchip for t in [*op.inputs, op.output])


def _host_buffer(lo: "_Lowering", name: str) -> None:
    """Register off-chip map ``name`` as the next host buffer, stored from the next result word."""
    c, h, w = lo.qg.tensor(name).shape
    em = lo.em
    lo.host[name] = len(em.buffers)
    em.buffers.append(HostBuffer(name, em.n_results, h * w * ceil_div(c, lo.cfg.lanes)))


def _buffer(lo: "_Lowering", name: str, height: int, border: tuple[int, int, int, int], what: str,
            taken: list[MapLayout], groups: int | None = None, top: bool = True,
            apart: tuple[MapLayout, ...] = ()) -> MapLayout:
    """A band or chunk buffer of ``height`` rows of map ``name`` (of ``groups`` of its
    channel groups: a slab) at the top of the scratchpad (in no hazard region of
    ``apart`` if it can; at the bottom of the first free block that holds it, with
    ``top`` false), its side borders filled; appended to ``taken`` (freed after the
    layer)."""
    c, _, w = lo.qg.tensor(name).shape
    if groups is not None and groups != ceil_div(c, lo.cfg.lanes):
        c = groups * lo.cfg.lanes
    lay = MapLayout(0, c, height, w, border, ceil_div(c, lo.cfg.lanes))
    base = (lo.alloc.alloc_apart(lay.rows, what, [(a.base, a.rows) for a in apart], top) if apart
            else lo.alloc.alloc(lay.rows, what, top=top))
    lay = dataclasses.replace(lay, base=base)
    taken.append(lay)
    if any(border):
        lo.em.fill(lay, pad_byte(lo.pad_signed.get(name, False)))
    return lay


def _side_border(lo: "_Lowering", name: str) -> tuple[int, int, int, int]:
    b = lo.border[name]
    return (0, b[1], 0, b[3])


def _row_rows(lo: "_Lowering", name: str, border: tuple[int, int, int, int],
              groups: int | None = None) -> int:
    """Scratchpad rows of one row of map ``name`` (of ``groups`` of its channel groups)
    with ``border``'s sides."""
    c, _, w = lo.qg.tensor(name).shape
    return (w + border[1] + border[3]) * (groups or ceil_div(c, lo.cfg.lanes))


def _chunk_rows(lo: "_Lowering", op, most: int, need: Callable[[int], int]) -> int:
    """The most output rows per chunk, at most ``most``, whose buffers (``need(rows)``
    scratchpad rows) fit the largest free block."""
    free = lo.alloc.largest()
    rows = most
    while rows >= 1 and need(rows) > free:
        rows -= 1
    if rows < 1:
        raise DoesNotFit(f"{op.name}: the buffers of one output row in bands take {need(1)} "
                         f"scratchpad rows, {free} are free")
    lo.chunks[op.name] = rows
    return rows


def _check_row(lo: "_Lowering", name: str) -> None:
    c, _, w = lo.qg.tensor(name).shape
    if w * ceil_div(c, lo.cfg.lanes) > COUNT_MAX:
        raise DoesNotFit(f"rows of map {name} exceed a loop count in words")


def _out(lo: "_Lowering", op) -> MapLayout | None:
    """The resident output map, placed; None (and a host buffer) when it is off chip.
    The network's output off chip takes no host buffer: its rows, stored as they are
    computed, are the result words of no buffer, which are the output's."""
    if op.output in lo.offchip:
        _check_row(lo, op.output)
        if op.output != lo.qg.output:
            _host_buffer(lo, op.output)
        return None
    return lo.place(op.output, apart=tuple(op.inputs))


def _conv(lo: "_Lowering", op: QConv | QAvgPool, streamed: bool) -> MapLayout | None:
    qg, cfg = lo.qg, lo.cfg
    out_lay = _out(lo, op)
    _, h, _ = qg.tensor(op.input).shape
    _, oh, ow = qg.tensor(op.output).shape
    kh = op.weight.shape[2] if isinstance(op, QConv) else op.kernel[0]
    sy = op.stride[0]
    residual = op.residual if isinstance(op, QConv) else None
    in_band = streamed or op.input in lo.offchip
    res_band = residual in lo.offchip
    in_border = _side_border(lo, op.input)

    in_groups = ceil_div(qg.tensor(op.input).shape[0], cfg.lanes)
    slab = in_groups

    def need_of(r: int, groups: int) -> int:
        n = ((r - 1) * sy + kh) * _row_rows(lo, op.input, in_border, groups) if in_band else 0
        n += r * _row_rows(lo, residual, (0, 0, 0, 0)) if res_band else 0
        return n + (r * _row_rows(lo, op.output, (0, 0, 0, 0)) if out_lay is None else 0)

    def need(r: int) -> int:
        return need_of(r, slab)

    slabs = None
    if op.input in lo.offchip and need(1) > lo.alloc.largest():
        # A grouped or depthwise conv can read its band a few channel groups at a time.
        # The widest slab that fits, or the narrowest an n-tile allows (no slabs then).
        whole = lo.plan_conv(op, 1)
        span = slab_span(whole, cfg)
        for slab in range(in_groups - 1, 0, -1):
            if slab < span or need(1) <= lo.alloc.largest():
                break
        slabs = plan_slabs(whole, cfg, in_groups, slab) if in_groups > 1 else None
        slab = slab if slabs else in_groups
    if lo.narrow and need(1) > lo.alloc.largest():
        if isinstance(op, QAvgPool) and oh == 1 and op.input in lo.offchip:
            _pool_in_bands(lo, op, out_lay)
            return None
        if out_lay is None and not res_band:
            return _conv_in_columns(lo, op, streamed)
    rows = _chunk_rows(lo, op, rows_per_chunk(cfg, oh, ow), need)
    double, sweep = False, None
    if op.input in lo.offchip and not slabs and isinstance(op, QConv):
        sweep = _map_sweep(lo, op, rows, need_of, in_groups, _row_rows(lo, op.input, in_border, 1))
    if sweep:
        rows, slab, _ = sweep
        lo.chunks[op.name] = rows
    elif in_band and not slabs:
        rows, double = _double_bands(lo, op, rows, need, _row_rows(lo, op.input, in_border, slab))
    taken: list[MapLayout] = []
    in_lay = (_buffer(lo, op.input, (rows - 1) * sy + kh, in_border,
                      f"the band of input {op.input} of {op.name}", taken, slab)
              if in_band else lo.layouts[op.input])
    res_lay = None
    if residual:
        res_lay = (_buffer(lo, residual, rows, (0, 0, 0, 0), f"the band of residual {residual}", taken)
                   if res_band else lo.layouts[residual])
    if out_lay is None:
        # Apart from the input band: a REQUANT or STORE of the chunk in a hazard region
        # of the band would wait for the MATMULs reading it, and the next band's LOAD
        # for the STORE. At the top when that leaves no room for the second band.
        what = f"the chunk of output {op.output}"
        out_lay = _buffer(lo, op.output, rows, (0, 0, 0, 0), what, taken, apart=(in_lay,) if in_band else ())
        if double and lo.alloc.largest() < in_lay.rows:
            lo.alloc.release(out_lay.base, out_lay.rows)
            taken.pop()
            out_lay = _buffer(lo, op.output, rows, (0, 0, 0, 0), what, taken, top=False)
    spare = None
    if double:
        # Apart from the chunk too: the chunk's STORE would hold the read port of a
        # bank the MATMULs over the second band read.
        spare = _buffer(lo, op.input, in_lay.height, in_border, f"the second band of input {op.input} of {op.name}",
                        taken, apart=(out_lay,))
    plan = lo.plan_conv(op, rows if in_band else None, chunk_rows=rows)
    if slabs:
        plan = dataclasses.replace(plan, slabs=plan_slabs(plan, cfg, in_groups, slab))
    if sweep:
        plan = dataclasses.replace(plan, sweep=sweep[2], band_slabs=band_slabs(in_groups, slab))
    bands = ConvBands(in_buffer=lo.host.get(op.input), in_pad_byte=pad_byte(lo.pad_signed.get(op.input, False)),
                      res_buffer=lo.host.get(residual) if res_band else None,
                      out_buffer=op.output in lo.offchip, in_groups=in_groups, in_spare=spare)
    lo.emit_conv(plan, in_lay, out_lay, res_lay, bands)
    _free(lo, taken)
    if streamed:
        return dataclasses.replace(in_lay, height=h, border=tuple(lo.border[op.input]))
    return None


def _double_bands(lo: "_Lowering", op: QConv | QAvgPool, rows: int, need: Callable[[int], int],
                  band_row: int) -> tuple[int, bool]:
    """The output rows a chunk of a conv over an input band, and whether the band is
    double-buffered (:class:`~fxpgen.compiler.conv_emit.ConvBands` ``in_spare``): when
    its weights are LOADed once, with the most rows whose buffers and a second band
    fit, if the estimate of its cycles (a band word a cycle, a tile ``rows + cols``
    cycles and a vector a cycle) says the overlap wins over ``rows`` without it."""
    cfg = lo.cfg
    plan = lo.plan_conv(op, rows)
    _, oh, ow = lo.qg.tensor(op.output).shape
    if rows >= oh or len(plan.groups) != 1 or plan.groups[0].streamed:
        return rows, False
    sy, kh = op.stride[0], plan.kernel[0]
    tiles = sum(len(t) for t in plan.tiles)
    free = lo.alloc.largest()

    def load(r: int) -> int:
        return ((r - 1) * sy + kh) * band_row

    def compute(r: int) -> int:
        return tiles * (r * ow + cfg.rows + cfg.cols)

    two = rows
    while two >= 1 and need(two) + load(two) > free:
        two -= 1
    if two < 1:
        return rows, False
    single = ceil_div(oh, rows) * (load(rows) + compute(rows))
    double = load(two) + ceil_div(oh, two) * max(load(two), compute(two))
    if double >= single:
        return rows, False
    lo.chunks[op.name] = two
    return two, True


def _map_sweep(lo: "_Lowering", op: QConv, rows: int, need_of: Callable[[int, int], int],
               in_groups: int, band_row: int) -> tuple[int, int, int] | None:
    """The map sweep of a dense conv over an off-chip input whose weights take more
    than one load (:meth:`~fxpgen.compiler.conv_emit._ConvEmission.run_sweeps`): the
    output rows of a chunk, the channel groups of a slab (a band row of one group is
    ``band_row`` scratchpad rows) and the n-tiles of a sweep whose estimated cycles
    are the fewest, when below :data:`MARGIN` times the usual order's with ``rows``
    rows a chunk; else None. The estimate: a band word a cycle, not overlapped (a
    slab's band is LOADed once per sweep), plus ``2 * DRAIN`` a band LOAD (it waits
    for the MATMULs before it to drain, the MATMULs after it for the LOAD); a tile
    serving ``m`` vectors ``max(m, (m + DRAIN) / 2)`` cycles (it holds one of the
    two weight banks ``m + DRAIN`` cycles)."""
    cfg = lo.cfg
    plan = lo.plan_conv(op, rows)
    _, oh, ow = lo.qg.tensor(op.output).shape
    if len(plan.groups) == 1 and not plan.groups[0].streamed:
        return None
    tiles = sum(len(t) for t in plan.tiles)
    free = lo.alloc.largest()

    def band(r: int, groups: int) -> int:
        return ((r - 1) * op.stride[0] + plan.kernel[0]) * band_row * groups

    def cost(r: int, groups: int, sweeps: int) -> float:
        slabs = ceil_div(in_groups, groups)
        total = 0.0
        for oy0 in range(0, oh, r):
            m = min(r, oh - oy0) * ow
            loads = sweeps * slabs * (band(min(r, oh - oy0), groups) + 2 * DRAIN)
            total += loads + tiles * max(m, (m + DRAIN) / 2)
        return total

    best, best_cost = None, MARGIN * cost(rows, in_groups, 1)
    for r in range(rows + 1, min(oh, COUNT_MAX) + 1):
        n = min(cfg.table_depth, (cfg.acc_depth // 2) // (r * ow), plan.n_tiles)
        groups = next((g for g in range(in_groups, 0, -1) if need_of(r, g) <= free), 0)
        if n < 1 or groups < 1:
            continue
        groups = ceil_div(in_groups, ceil_div(in_groups, groups))
        c = cost(r, groups, ceil_div(plan.n_tiles, n))
        if c < best_cost:
            best, best_cost = (r, groups, n), c
    return best


def _conv_in_columns(lo: "_Lowering", op: QConv | QAvgPool, streamed: bool) -> MapLayout | None:
    """A conv with an off-chip output whose buffers for one whole output row do not
    fit: row by row in windows of as many output columns as fit
    (:mod:`~fxpgen.compiler.column_bands`); the streamed input's layout as the host
    sees it, else None."""
    qg, cfg = lo.qg, lo.cfg
    c, h, w = qg.tensor(op.input).shape
    cout, _, ow = qg.tensor(op.output).shape
    g_in, g_out = ceil_div(c, cfg.lanes), ceil_div(cout, cfg.lanes)
    plan = lo.plan_conv(op)
    resident = None if streamed or op.input in lo.offchip else lo.layouts[op.input]

    def need(wc: int) -> int:
        return (0 if resident else plan.kernel[0] * window_input(plan, wc) * g_in) + wc * g_out

    free = lo.alloc.largest()
    wc = ow
    while wc >= 1 and (need(wc) > free or window_input(plan, wc) * g_in > COUNT_MAX):
        wc -= 1
    lo.chunks[op.name] = 0
    if wc < 1:
        raise DoesNotFit(f"{op.name}: one output pixel takes {need(1)} scratchpad rows ({plan.kernel[0]} input "
                         f"rows of {window_input(plan, 1)} pixels of {op.input} and its output), {free} are free")
    taken: list[MapLayout] = []

    def buffer(lay: MapLayout, what: str) -> MapLayout:
        lay = dataclasses.replace(lay, base=lo.alloc.alloc(lay.rows, what, top=True))
        taken.append(lay)
        return lay

    band = None
    if resident is None:
        band = buffer(MapLayout(0, c, plan.kernel[0], window_input(plan, wc), (0, 0, 0, 0), g_in),
                      f"the band of input {op.input} of {op.name}")
    chunk = buffer(MapLayout(0, cout, 1, wc, (0, 0, 0, 0), g_out), f"the chunk of output {op.output}")
    residual = op.residual if isinstance(op, QConv) else None
    if not lo.dry:
        src = ColumnSource(h, w, g_in, pad_byte(lo.pad_signed.get(op.input, False)), lo.host.get(op.input),
                           resident)
        emit_conv_columns(lo.em, plan, src, band, chunk, lo.layouts[residual] if residual else None)
    _free(lo, taken)
    return MapLayout(0, c, h, w, tuple(lo.border[op.input]), g_in) if streamed else None


def _pool_in_bands(lo: "_Lowering", op: QAvgPool, out_lay: MapLayout | None) -> None:
    """A pool of one output row whose input rows do not fit at once, even a slab of
    them: its sum accumulated over bands of its kernel rows
    (:mod:`~fxpgen.compiler.pool_bands`), the narrowest slab its n-tiles allow."""
    cfg = lo.cfg
    in_groups = ceil_div(lo.qg.tensor(op.input).shape[0], cfg.lanes)
    lo.chunks[op.name] = 0
    plan = lo.plan_conv(op, 1)
    span = max(1, slab_span(plan, cfg))
    slabs = plan_slabs(plan, cfg, in_groups, span) if span < in_groups else None
    size = span if slabs else in_groups
    taken: list[MapLayout] = []
    store = out_lay is None
    if store:
        out_lay = _buffer(lo, op.output, 1, (0, 0, 0, 0), f"the chunk of output {op.output}", taken)
    in_border = _side_border(lo, op.input)
    row = _row_rows(lo, op.input, in_border, size)
    free = lo.alloc.largest()
    if row > free:
        raise DoesNotFit(f"{op.name}: one row of input {op.input} ({size} of its {in_groups} channel "
                         f"groups) takes {row} scratchpad rows, {free} are free")
    band = _buffer(lo, op.input, min(op.kernel[0], free // row), in_border,
                   f"the band of input {op.input} of {op.name}", taken, size)
    if not lo.dry:
        maps = PoolBands(band, lo.host[op.input], pad_byte(lo.pad_signed.get(op.input, False)), in_groups,
                         out_lay)
        emit_pool_bands(lo.em, plan, maps, slabs or whole_slab(plan, in_groups))
        if store:
            store_rows(lo.em, out_lay, 0, 1)
    _free(lo, taken)


def _maxpool(lo: "_Lowering", op: QMaxPool) -> None:
    """A max pool with an off-chip input or output: over an off-chip input, a ring of
    input rows (:func:`_maxpool_ring`); over a resident one, chunks of output rows."""
    if op.input in lo.offchip:
        _maxpool_ring(lo, op)
        return
    qg = lo.qg
    out_lay = _out(lo, op)
    _, oh, _ = qg.tensor(op.output).shape
    rows = _chunk_rows(lo, op, min(oh, COUNT_MAX), lambda r: r * _row_rows(lo, op.output, (0, 0, 0, 0)))
    taken: list[MapLayout] = []
    out_lay = _buffer(lo, op.output, rows, (0, 0, 0, 0), f"the chunk of output {op.output}", taken)
    for oy0 in range(0, 0 if lo.dry else oh, rows):
        nrow = min(rows, oh - oy0)
        emit_maxpool_rows(lo.em, qg, op, lo.layouts[op.input], oy0 * op.stride[0] - op.pads[0], out_lay, 0, nrow)
        store_rows(lo.em, out_lay, 0, nrow)
    _free(lo, taken)


def _maxpool_ring(lo: "_Lowering", op: QMaxPool) -> None:
    """A max pool over an off-chip input, one output row at a time from a ring of its
    kernel's rows: each input row is LOADed once, into slot ``iy mod kh``, and each
    output row costs ``kh + kw - 2`` MAX instructions
    (:func:`~fxpgen.compiler.vector_ops.emit_maxpool_ring_row`). The slots and the
    output lie in different scratchpad banks when they fit, so that a MAX reads its
    two rows in one cycle (:data:`fxpgen.isa.PORT_REGIONS`). An off-chip output's rows
    go to a chunk buffer of as many rows as fit, STOREd when full."""
    qg = lo.qg
    out_lay = _out(lo, op)
    _, h, _ = qg.tensor(op.input).shape
    _, oh, _ = qg.tensor(op.output).shape
    kh, sy, pt = op.kernel[0], op.stride[0], op.pads[0]
    in_border = _side_border(lo, op.input)
    ring_rows = kh * _row_rows(lo, op.input, in_border)
    store = out_lay is None
    row_out = _row_rows(lo, op.output, (0, 0, 0, 0))
    most = min(oh, COUNT_MAX, max(1, lo.cfg.spad_depth // REGIONS // row_out))
    rows = _chunk_rows(lo, op, most, lambda r: ring_rows + (r * row_out if store else 0))
    taken: list[MapLayout] = []
    if store:
        out_lay = _buffer(lo, op.output, rows, (0, 0, 0, 0), f"the chunk of output {op.output}", taken)
    ring: list[MapLayout] = []
    for k in range(kh):
        ring.append(_buffer(lo, op.input, 1, in_border, f"row {k} of the ring of input rows of {op.input} of "
                            f"{op.name}", taken, top=False, apart=(*ring, out_lay)))
    pad = pad_byte(lo.pad_signed.get(op.input, False))
    loaded = -pt - 1
    for oy in range(0 if lo.dry else oh):
        iy0 = oy * sy - pt
        for iy in range(max(iy0, loaded + 1), iy0 + kh):
            load_band(lo.em, ring[iy % kh], iy, 1, h, lo.host[op.input], pad)
        loaded = iy0 + kh - 1
        out_y = oy % rows if store else oy
        emit_maxpool_ring_row(lo.em, qg, op, [ring[(iy0 + k) % kh] for k in range(kh)], out_lay, out_y)
        if store and (out_y == rows - 1 or oy == oh - 1):
            store_rows(lo.em, out_lay, 0, out_y + 1)
    _free(lo, taken)


def _add(lo: "_Lowering", op: QAdd) -> None:
    qg = lo.qg
    out_lay = _out(lo, op)
    _, oh, _ = qg.tensor(op.output).shape
    banded = [t for t in dict.fromkeys((op.a, op.b)) if t in lo.offchip]

    def need(r: int) -> int:
        n = sum(r * _row_rows(lo, t, (0, 0, 0, 0)) for t in banded)
        return n + (r * _row_rows(lo, op.output, (0, 0, 0, 0)) if out_lay is None else 0)

    rows = _chunk_rows(lo, op, min(oh, COUNT_MAX), need)
    taken: list[MapLayout] = []
    bands = {t: _buffer(lo, t, rows, (0, 0, 0, 0), f"the band of {t} of {op.name}", taken) for t in banded}
    store = out_lay is None
    if store:
        out_lay = _buffer(lo, op.output, rows, (0, 0, 0, 0), f"the chunk of output {op.output}", taken)
    for oy0 in range(0, 0 if lo.dry else oh, rows):
        nrow = min(rows, oh - oy0)
        for t, band in bands.items():
            load_band(lo.em, band, oy0, nrow, oh, lo.host[t])

        def rows_of(t: str) -> tuple[MapLayout, int]:
            return (bands[t], 0) if t in bands else (lo.layouts[t], oy0)

        emit_add_rows(lo.em, qg, op, rows_of(op.a), rows_of(op.b), (out_lay, 0 if store else oy0), nrow)
        if store:
            store_rows(lo.em, out_lay, 0, nrow)
    _free(lo, taken)


def _rowwise(lo: "_Lowering", op: QConcat | QSlice | QResize | QLut | QMul) -> None:
    """A concat, slice, upsampling, lookup or product in chunks of input rows: each
    chunk LOADs the rows of its off-chip operands into bands, runs the op's emitter on
    windows of the chunk's rows (:meth:`~fxpgen.compiler.layout.MapLayout.window`) and
    STOREs an off-chip output's rows (``factor`` of them per input row, upsampling).
    A MUL's per-channel operand is resident and read whole by every chunk."""
    qg = lo.qg
    out_lay = _out(lo, op)
    f = op.factor if isinstance(op, QResize) else 1
    _, h, _ = qg.tensor(op.inputs[0]).shape
    banded = [t for t in dict.fromkeys(op.inputs) if t in lo.offchip]

    def need(r: int) -> int:
        n = sum(r * _row_rows(lo, t, (0, 0, 0, 0)) for t in banded)
        return n + (r * f * _row_rows(lo, op.output, (0, 0, 0, 0)) if out_lay is None else 0)

    rows = _chunk_rows(lo, op, min(h, COUNT_MAX // f), need)
    taken: list[MapLayout] = []
    bands = {t: _buffer(lo, t, rows, (0, 0, 0, 0), f"the band of {t} of {op.name}", taken) for t in banded}
    store = out_lay is None
    if store:
        out_lay = _buffer(lo, op.output, rows * f, (0, 0, 0, 0), f"the chunk of output {op.output}", taken)
    slot = lut_slot(qg, op, lo.cfg.lut_tables) if isinstance(op, QLut) else 0
    if isinstance(op, QLut) and not lo.dry:
        load_lut_table(lo.em, op, slot)
    for y0 in range(0, 0 if lo.dry else h, rows):
        nrow = min(rows, h - y0)
        for t, band in bands.items():
            load_band(lo.em, band, y0, nrow, h, lo.host[t])

        def window(t: str) -> MapLayout:
            if t in bands:
                return bands[t].window(0, nrow)
            lay = lo.layouts[t]
            return lay if lay.height != h else lay.window(y0, nrow)

        out = out_lay.window(0 if store else y0 * f, nrow * f)
        _ROW_EMITTERS[type(op)](lo, op, [window(t) for t in op.inputs], out, slot)
        if store:
            store_rows(lo.em, out_lay, 0, nrow * f)
    _free(lo, taken)


def _free(lo: "_Lowering", taken: list[MapLayout]) -> None:
    for lay in taken:
        lo.alloc.release(lay.base, lay.rows)


#: The whole-map emitter of each row op, on windows: (lowering, op, its input windows
#: in ``op.inputs``' order, its output window, its lookup table slot).
_ROW_EMITTERS = {
    QConcat: lambda lo, op, ins, out, slot: emit_concat(lo.em, ins, out),
    QSlice: lambda lo, op, ins, out, slot: emit_slice(lo.em, op, ins[0], out, lo.cfg.lanes),
    QResize: lambda lo, op, ins, out, slot: emit_resize(lo.em, op, ins[0], out),
    QLut: lambda lo, op, ins, out, slot: emit_lut_groups(lo.em, slot, ins[0], out),
    QMul: lambda lo, op, ins, out, slot: emit_mul(lo.em, lo.qg, op, ins[0], ins[1], out),
}
