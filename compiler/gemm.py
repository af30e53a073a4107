"""Lowering of one int8 GEMM with per-column shift requantization to a program.

``Y = requantize(A @ B, shift[n])`` with A (M x K) and B (K x N) int8 and Y int8.
This is the workload of ``fxpgen check`` and the building block the network
compiler reuses.

Memory plan (every memory split into four regions, see :mod:`fxpgen.isa`):

- weight buffer: every weight tile, ``rows`` rows each, in order of use (tile
  (nt, kt) is number ``nt * k_tiles + kt``), in up to four pieces, one region each
  (:func:`weight_pieces`);
- scratchpad: A chunks double-buffered in regions 0 and 1, output chunks in
  regions 2 and 3; a pixel's K (or N) values are ``ceil(K / lanes)`` consecutive rows;
- accumulators: chunk c in region ``c % 2``, n-tile nt at ``nt * chunk``;
- shift table: one entry per n-tile.

Schedule: M is cut into chunks, the first and the last small (:func:`chunk_sizes`):
what must precede the first matmul (the first weight piece and the first chunk of
A) and follow the last (the last chunk's requantization and store) is then short.
Chunk c streams one matmul per (n-tile, k-tile) pair, double-buffering weight
tiles between the two banks. The later weight pieces and the table (during chunk
0), the load of chunk c+1, the requantization of chunk c-1 and its store are
placed between chunk c's matmuls where an estimate of the time says their unit is
free and their inputs ready: the in-order dispatcher then keeps the array busy
while the other units work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fxpgen import numerics
from fxpgen.config import REGIONS, CoreConfig
from fxpgen.isa import COUNT_MAX, Addr, Instruction, Mem, Opcode, pack_row, pack_rows, unpack_rows

from .tiling import DoesNotFit, ceil_div

__all__ = ["GemmPlan", "GemmProgram", "plan_gemm", "edge_rows", "chunk_sizes", "weight_pieces", "build_gemm",
           "gemm_reference", "random_gemm"]


@dataclass(frozen=True)
class GemmPlan:
    """Tiling of an M x K x N GEMM on a core."""

    m: int
    k: int
    n: int
    k_tiles: int          # ceil(K / rows)
    n_tiles: int          # ceil(N / cols)
    a_groups: int         # scratchpad rows per A row
    y_groups: int         # scratchpad rows per Y row
    chunk: int            # most A rows in one chunk: the memory regions' layout stride
    sizes: tuple[int, ...]  # A rows of each chunk, in order; they add up to m

    @property
    def chunks(self) -> int:
        return len(self.sizes)

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n


def edge_rows(cfg: CoreConfig) -> int:
    """A rows of the first and the last chunk: few, so that little work precedes the
    first matmul and follows the last, yet enough that a matmul outlasts the weight
    tile load and the write-back latency that separate it from the next matmul on
    the same bank (about ``2 * rows + cols`` cycles)."""
    return 4 * max(cfg.rows, cfg.cols)


def chunk_sizes(m: int, chunk: int, edge: int, growth: float = float("inf")) -> tuple[int, ...]:
    """Rows of each chunk: a first and a last chunk of ``edge`` rows when M leaves
    room for them, and between them as few chunks of at most ``chunk`` rows as
    possible, of equal size within one row, after a ramp from the first chunk
    where each chunk is at most ``growth`` times the one before (the A rows of a
    chunk must load while the chunk before runs its matmuls). A smaller M of at
    least ``edge`` rows is cut in two halves (or more if ``chunk`` is short), so
    that one half's loads and the other's requantization overlap matmuls."""
    if m < 3 * min(edge, chunk):
        return tuple(_even_split(m, max(ceil_div(m, chunk), 2 if m >= max(edge, 2) else 1)))
    edge = min(edge, chunk)
    rest, ramp, size = m - 2 * edge, [], edge
    while rest > 0:
        size = max(edge, int(min(size * growth, chunk)))
        if size == chunk:
            break
        ramp.append(min(size, rest))
        rest -= ramp[-1]
    middle = _even_split(rest, ceil_div(rest, chunk)) if rest else []
    return (edge, *ramp, *middle, edge)


def _even_split(total: int, parts: int) -> list[int]:
    """``total`` cut into ``parts`` sizes that differ by at most one, largest first."""
    q, r = divmod(total, parts)
    return [q + 1] * r + [q] * (parts - r)


def plan_gemm(cfg: CoreConfig, m: int, k: int, n: int) -> GemmPlan:
    """Choose the chunk size; raise :class:`DoesNotFit` naming the memory that is short."""
    for name, v in (("M", m), ("K", k), ("N", n)):
        if v < 1:
            raise ValueError(f"GEMM dimension {name} must be positive, not {v}")
    if k > 1 << 16:
        raise DoesNotFit(f"K={k} could overflow the {cfg.acc_width}-bit accumulator "
                         "(int8 x int8 sums need K <= 65536)")
    k_tiles, n_tiles = ceil_div(k, cfg.rows), ceil_div(n, cfg.cols)
    a_groups = ceil_div(k_tiles, cfg.matmul_lanes)
    y_groups = ceil_div(n_tiles, cfg.requant_lanes)
    weight_rows = k_tiles * n_tiles * cfg.rows
    if weight_rows > cfg.wbuf_depth:
        raise DoesNotFit(f"B needs {weight_rows} weight-buffer rows ({k_tiles}x{n_tiles} tiles of "
                         f"{cfg.rows}) but wbuf_depth is {cfg.wbuf_depth}: "
                         f"{weight_rows - cfg.wbuf_depth} rows short")
    if n_tiles > cfg.table_depth:
        raise DoesNotFit(f"N={n} needs {n_tiles} shift-table entries but table_depth is "
                         f"{cfg.table_depth}")
    spad_q = cfg.spad_depth // REGIONS
    acc_q = cfg.acc_depth // REGIONS
    limits = {
        "scratchpad region (A chunk)": spad_q // a_groups,
        "scratchpad region (Y chunk)": spad_q // y_groups,
        "accumulator region": acc_q // n_tiles,
    }
    chunk = min(m, COUNT_MAX, *limits.values())
    if chunk < 1:
        worst = min(limits, key=limits.get)
        raise DoesNotFit(f"one row of the GEMM does not fit a {worst}: raise the memory depth")
    return GemmPlan(m, k, n, k_tiles, n_tiles, a_groups, y_groups, chunk,
                    chunk_sizes(m, chunk, edge_rows(cfg), k_tiles * n_tiles / a_groups))


@dataclass
class GemmProgram:
    """Instruction and data words of a GEMM, and how to read its results."""

    cfg: CoreConfig
    plan: GemmPlan
    instructions: list[Instruction]
    data: list[int]

    @property
    def words(self) -> list[int]:
        return [i.encode(self.cfg) for i in self.instructions]

    @property
    def n_results(self) -> int:
        return self.plan.m * self.plan.y_groups

    def decode_results(self, words) -> np.ndarray:
        """Y (M x N, int64) from the result-stream words."""
        p = self.plan
        rows = unpack_rows(Mem.SPAD, words, self.cfg, signed=True)
        return rows.reshape(p.m, p.y_groups * self.cfg.lanes)[:, :p.n]


def gemm_reference(a: np.ndarray, b: np.ndarray, shift: np.ndarray, acc_width: int = 32) -> np.ndarray:
    """The golden model: ``requantize(A @ B, shift)`` to signed int8, per column."""
    acc = numerics.matmul_accumulate(np.zeros((a.shape[0], b.shape[1]), np.int64), a, b, acc_width)
    return numerics.requantize(acc, np.asarray(shift)[None, :], signed=True)


def random_gemm(m: int, k: int, n: int, seed: int):
    """Random int8 A (m x k), B (k x n) and per-column shifts that keep most outputs
    inside int8: about log2(std of the sums / 32), jittered by +-1."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k))
    b = rng.integers(-128, 128, (k, n))
    base = int(np.clip(np.round(np.log2(74.0 * 74.0 * np.sqrt(k) / 32.0)), 0, 31))
    shift = np.clip(base + rng.integers(-1, 2, n), 0, 31)
    return a, b, shift


def build_gemm(cfg: CoreConfig, a: np.ndarray, b: np.ndarray, shift: np.ndarray) -> GemmProgram:
    """Program computing ``gemm_reference(a, b, shift)`` on a core built for ``cfg``.

    ``a``: (M, K) int8, ``b``: (K, N) int8, ``shift``: (N,) right shifts in -32..31.
    """
    a, b, shift = np.asarray(a), np.asarray(b), np.asarray(shift)
    p = plan_gemm(cfg, *_gemm_shape(a, b, shift))
    em = _GemmEmitter(cfg, p, a)
    em.run(b, shift)
    return GemmProgram(cfg, p, em.prog, em.data)


def _gemm_shape(a: np.ndarray, b: np.ndarray, shift: np.ndarray) -> tuple[int, int, int]:
    """(M, K, N) of operands that agree; else ValueError saying how they differ."""
    m, k = a.shape
    k2, n = b.shape
    if k2 != k:
        raise ValueError(f"A is {m}x{k} but B is {k2}x{n}: inner dimensions differ")
    if shift.shape != (n,):
        raise ValueError(f"shift must have N={n} entries, not shape {shift.shape}")
    return m, k, n


def weight_pieces(cfg: CoreConfig, p: GemmPlan) -> list[tuple[int, int, int]]:
    """Where B's weight tiles go and in which LOADs: ``(first tile, tiles, first row)``
    per LOAD, tiles numbered in order of use (``nt * k_tiles + kt``). Each LOAD fills
    a weight-buffer region of its own, so that the weight-tile loads reading the
    tiles already there never wait for it: the first holds the tiles of the first
    n-tile (or as few more as let the rest fit), the later regions are filled from
    the last one back, so that the loads grow along the first chunk. Tiles that
    would straddle a region boundary make B one LOAD."""
    region = cfg.wbuf_depth // REGIONS
    tiles, cap = p.k_tiles * p.n_tiles, region // cfg.rows
    if tiles > REGIONS * cap:
        return [(0, tiles, 0)]
    first = min(cap, tiles, max(p.k_tiles, tiles - (REGIONS - 1) * cap))
    rest = tiles - first
    sizes = [min(cap, max(0, rest - (REGIONS - 1 - r) * cap)) for r in range(1, REGIONS)]
    pieces, t = [(0, first, 0)], first
    for r, size in enumerate(sizes, start=1):
        if size:
            pieces.append((t, size, r * region))
            t += size
    return pieces


@dataclass
class _Work:
    """An instruction to place between a chunk's matmuls: its data words, the unit it
    occupies, its estimated cycles on it, the earliest estimated cycle it can start
    and the index of the pair of chunk 0 it must precede (``None``: none)."""

    insn: Instruction
    unit: str
    cycles: int
    after: int = 0
    before: int | None = None
    words: list[int] = field(default_factory=list)


class _GemmEmitter:
    """The instructions and data words of one planned GEMM, appended step by step.

    Times are estimates in cycles from the first matmul, counting each matmul as its
    A rows (the array's rate); they only choose where side work goes."""

    def __init__(self, cfg: CoreConfig, p: GemmPlan, a: np.ndarray):
        self.cfg, self.p = cfg, p
        self.spad_q, self.acc_q = cfg.spad_depth // REGIONS, cfg.acc_depth // REGIONS
        self.ap = np.zeros((p.m, p.a_groups * cfg.lanes), np.int64)
        self.ap[:, :p.k] = a
        self.starts = np.concatenate([[0], np.cumsum(p.sizes)]).tolist()
        self.pieces = weight_pieces(cfg, p)
        self.tile_row = [row + (t - first) * cfg.rows for first, n, row in self.pieces
                         for t in range(first, first + n)]
        self.prog: list[Instruction] = []
        self.data: list[int] = []

    def emit(self, w: _Work) -> None:
        self.prog.append(w.insn)
        self.data.extend(w.words)

    def weight_loads(self, b: np.ndarray) -> list[_Work]:
        """A LOAD per weight piece: tile (nt, kt) row i = B[kt*R + i, nt*C : nt*C + C],
        zero padded; each must precede the first pair of chunk 0 that uses it."""
        p, cfg = self.p, self.cfg
        R, C = cfg.rows, cfg.cols
        bp = np.zeros((p.k_tiles * R, p.n_tiles * C), np.int64)
        bp[:p.k, :p.n] = b
        tiles = [bp[kt * R:(kt + 1) * R, nt * C:(nt + 1) * C]
                 for nt in range(p.n_tiles) for kt in range(p.k_tiles)]
        return [_Work(Instruction(Opcode.LOAD, {"mem": Mem.WBUF.value}, R, n, z=Addr(row, 1, R)),
                      "load", n * R, before=first,
                      words=pack_rows(Mem.WBUF, np.concatenate(tiles[first:first + n]), cfg))
                for first, n, row in self.pieces]

    def load_table(self, shift: np.ndarray) -> _Work:
        """LOAD of one shift-table entry per n-tile (alignment 0)."""
        p, C = self.p, self.cfg.cols
        sp = np.zeros(p.n_tiles * C, np.int64)
        sp[:p.n] = shift
        words = [pack_row(Mem.TABLE, [(int(s), 0) for s in sp[nt * C:(nt + 1) * C]], self.cfg)
                 for nt in range(p.n_tiles)]
        return _Work(Instruction(Opcode.LOAD, {"mem": Mem.TABLE.value}, p.n_tiles, 1, z=Addr(0, 1)),
                     "load", p.n_tiles, words=words)

    def load_a(self, c: int) -> _Work:
        """The LOAD of chunk ``c`` of A into scratchpad region ``c % 2``."""
        p, L = self.p, self.cfg.lanes
        mc, m0 = p.sizes[c], self.starts[c]
        words = pack_rows(Mem.SPAD, self.ap[m0:m0 + mc].reshape(-1, L), self.cfg)
        return _Work(Instruction(Opcode.LOAD, {"mem": Mem.SPAD.value}, p.a_groups, mc,
                                 z=Addr((c % 2) * self.spad_q, 1, p.a_groups)),
                     "load", len(words), words=words)

    def requant(self, c: int, nt: int, after: int = 0) -> _Work:
        """REQUANT of n-tile ``nt`` of chunk ``c`` into scratchpad region ``2 + c % 2``,
        from estimated cycle ``after`` on."""
        p, cfg = self.p, self.cfg
        mc = p.sizes[c]
        insn = Instruction(Opcode.REQUANT, {"table": nt, "lane": nt % cfg.requant_lanes, "out_signed": 1},
                           mc, 1,
                           x=Addr(self.acc_row(c, nt), 1),
                           z=Addr((2 + c % 2) * self.spad_q + nt // cfg.requant_lanes, p.y_groups))
        return _Work(insn, "vector", mc + self.write_delay(), after)

    def store(self, c: int) -> _Work:
        """STORE of chunk ``c``'s Y rows (it waits for their requantization: :meth:`place`)."""
        p = self.p
        insn = Instruction(Opcode.STORE, {"mem": Mem.SPAD.value}, p.y_groups, p.sizes[c],
                           x=Addr((2 + c % 2) * self.spad_q, 1, p.y_groups))
        return _Work(insn, "store", p.sizes[c] * p.y_groups + self.write_delay())

    def acc_row(self, c: int, nt: int) -> int:
        """First accumulator row of n-tile ``nt`` of chunk ``c``: regions 0 and 2 by
        turns, or for the last chunk regions 1 and 3 by turns (starting in the bank the
        chunk before is not in), so that each of its n-tiles is requantized while the
        next one's matmuls write the other region. The regions of each pair lie in
        different accumulator banks (:data:`fxpgen.isa.PORT_REGIONS`): a REQUANT and
        the MATMULs beside it never wait for one bank's read port."""
        if c == self.p.chunks - 1:
            last = (3, 1) if c % 2 else (1, 3)
            return last[nt % 2] * self.acc_q + nt // 2 * self.p.chunk
        return 2 * (c % 2) * self.acc_q + nt * self.p.chunk

    def write_delay(self) -> int:
        """Estimated cycles from an iteration's issue to its write: the array's depth
        and width plus the pipeline registers around it."""
        return self.cfg.rows + self.cfg.cols + 2

    def pairs(self, c: int, bank0: int):
        """(LOADW, MATMUL) per (n-tile, k-tile) of chunk ``c``, banks alternating from ``bank0``."""
        p, cfg, R = self.p, self.cfg, self.cfg.rows
        mc = p.sizes[c]
        bank = bank0
        for nt in range(p.n_tiles):
            for kt in range(p.k_tiles):
                yield [
                    Instruction(Opcode.LOADW, {"bank": bank}, R, 1,
                                x=Addr(self.tile_row[nt * p.k_tiles + kt], 1)),
                    Instruction(Opcode.MATMUL, {"bank": bank, "accumulate": int(kt > 0),
                                                "act_signed": 1, "lane": kt % cfg.matmul_lanes},
                                mc, 1,
                                x=Addr((c % 2) * self.spad_q + kt // cfg.matmul_lanes, p.a_groups),
                                z=Addr(self.acc_row(c, nt), 1)),
                ]
                bank ^= 1

    def side_work(self, c: int, t: int, loads: list[_Work]) -> list[_Work]:
        """The work of chunk ``c``'s neighbours, in order, chunk ``c`` starting at
        estimated cycle ``t``: ``loads`` (the weights still to load), the load of
        chunk ``c + 1``, then the requantization of chunk ``c - 1`` (once its last
        matmul is written back) and its store; in the last chunk, its own n-tiles'
        requantization as each is written back, and its store."""
        p = self.p
        work = list(loads)
        if c + 1 < p.chunks:
            work.append(self.load_a(c + 1))
        if c > 0:
            work += [self.requant(c - 1, nt, t + self.write_delay()) for nt in range(p.n_tiles)]
            work.append(self.store(c - 1))
        if c == p.chunks - 1:
            # Written back after its last pair starts, so placed after that pair.
            pair_cycles = p.k_tiles * p.sizes[c]
            work += [self.requant(c, nt, t + (nt + 1) * pair_cycles + self.write_delay())
                     for nt in range(p.n_tiles)]
            work.append(self.store(c))
        return work

    def place(self, work: list[_Work], c: int, t: int, free: dict[str, int]) -> dict[int, list[_Work]]:
        """Chunk ``c``'s ``work`` by the pair it follows: the first pair that starts
        once its unit is free and its inputs are ready, and no later than it must.
        ``free`` (estimated cycle each unit is free, and ``"dispatch"``: when the work
        after the chunk's last pair is dispatched) is updated."""
        p = self.p
        tau, n_pairs = p.sizes[c], p.n_tiles * p.k_tiles
        slots: dict[int, list[_Work]] = {}
        for w in work:
            if w.unit == "store":
                w.after = max(w.after, free["vector"])
            start = max(free[w.unit], w.after)
            idx = min(n_pairs, ceil_div(max(start - t, 0), tau))
            if w.before is not None:
                idx = min(idx, w.before - 1)
            slots.setdefault(idx, []).append(w)
            start = max(start, t + idx * tau)
            free[w.unit] = start + w.cycles
            if idx == n_pairs:
                free["dispatch"] = max(free["dispatch"], start)
        return slots

    def run(self, b: np.ndarray, shift: np.ndarray) -> None:
        """Weights, table and chunks with their neighbours' work between their
        matmuls, then the HALT."""
        p = self.p
        first, *loads = self.weight_loads(b)
        table = self.load_table(shift)
        if p.chunks == 1:
            # Its own requantization, which starts after its first n-tile, is the
            # first; in a longer GEMM that of chunk 0 comes in chunk 1, after the table.
            table.before = p.k_tiles
        loads.append(table)
        self.emit(first)
        self.emit(self.load_a(0))
        free = dict.fromkeys(("load", "vector", "store", "dispatch"), 0)
        bank, t = 0, 0
        n_pairs = p.n_tiles * p.k_tiles
        for c in range(p.chunks):
            slots = self.place(self.side_work(c, t, loads if c == 0 else []), c, t, free)
            for idx, pair in enumerate(self.pairs(c, bank)):
                self.prog.extend(pair)
                for w in slots.pop(idx, []):
                    self.emit(w)
            bank ^= n_pairs & 1
            for w in slots.pop(n_pairs, []):
                self.emit(w)
            # The next chunk starts when this one's matmuls end, the work after them
            # is dispatched and its A is loaded (the last load placed).
            t = max(t + n_pairs * p.sizes[c], free["dispatch"], free["load"])
        self.prog.append(Instruction(Opcode.HALT))
