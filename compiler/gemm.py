"""Lowering of one int8 GEMM with per-column shift requantization to a program.

``Y = requantize(A @ B, shift[n])`` with A (M x K) and B (K x N) int8 and Y int8.
This is the workload of ``fxpgen check`` and the building block the network
compiler reuses.

Memory plan (every memory split into four regions, see :mod:`fxpgen.isa`):

- weight buffer: every weight tile, ``rows`` rows each, tile (nt, kt) at
  ``(nt * k_tiles + kt) * rows``;
- scratchpad: A chunks double-buffered in regions 0 and 1, output chunks in
  regions 2 and 3; a pixel's K (or N) values are ``ceil(K / lanes)`` consecutive rows;
- accumulators: chunk c in region ``c % 2``, n-tile nt at ``nt * chunk``;
- shift table: one entry per n-tile.

Schedule: M is cut into chunks. Chunk c streams one matmul per (n-tile, k-tile)
pair, double-buffering weight tiles between the two banks. The loads of chunk c+1,
the requantization of chunk c-1 and its store are placed between chunk c's
matmuls, spaced so that none of them waits for its unit: the in-order dispatcher
then keeps the array busy while the other units work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fxpgen import numerics
from fxpgen.config import REGIONS, CoreConfig
from fxpgen.isa import COUNT_MAX, Addr, Instruction, Mem, Opcode, pack_row, pack_rows, unpack_rows

from .tiling import DoesNotFit, ceil_div

__all__ = ["GemmPlan", "GemmProgram", "plan_gemm", "build_gemm", "gemm_reference", "random_gemm"]


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
    chunk: int            # A rows per chunk
    chunks: int

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n


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
    return GemmPlan(m, k, n, k_tiles, n_tiles, a_groups, y_groups, chunk, ceil_div(m, chunk))


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
    em.load_weights(b)
    em.load_table(shift)
    em.run_chunks()
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


class _GemmEmitter:
    """The instructions and data words of one planned GEMM, appended step by step."""

    def __init__(self, cfg: CoreConfig, p: GemmPlan, a: np.ndarray):
        self.cfg, self.p = cfg, p
        self.spad_q, self.acc_q = cfg.spad_depth // REGIONS, cfg.acc_depth // REGIONS
        self.ap = np.zeros((p.m, p.a_groups * cfg.lanes), np.int64)
        self.ap[:, :p.k] = a
        self.prog: list[Instruction] = []
        self.data: list[int] = []

    def load_weights(self, b: np.ndarray) -> None:
        """LOAD every weight tile: tile (nt, kt) row i = B[kt*R + i, nt*C : nt*C + C], zero padded."""
        p, cfg = self.p, self.cfg
        R, C = cfg.rows, cfg.cols
        bp = np.zeros((p.k_tiles * R, p.n_tiles * C), np.int64)
        bp[:p.k, :p.n] = b
        tiles = [bp[kt * R:(kt + 1) * R, nt * C:(nt + 1) * C]
                 for nt in range(p.n_tiles) for kt in range(p.k_tiles)]
        self.data += pack_rows(Mem.WBUF, np.concatenate(tiles), cfg)
        self.prog.append(Instruction(Opcode.LOAD, {"mem": Mem.WBUF.value}, R, p.k_tiles * p.n_tiles,
                                     z=Addr(0, 1, R)))

    def load_table(self, shift: np.ndarray) -> None:
        """LOAD one shift-table entry per n-tile (alignment 0)."""
        p, C = self.p, self.cfg.cols
        sp = np.zeros(p.n_tiles * C, np.int64)
        sp[:p.n] = shift
        for nt in range(p.n_tiles):
            self.data.append(pack_row(Mem.TABLE, [(int(s), 0) for s in sp[nt * C:(nt + 1) * C]], self.cfg))
        self.prog.append(Instruction(Opcode.LOAD, {"mem": Mem.TABLE.value}, p.n_tiles, 1, z=Addr(0, 1)))

    def rows_of(self, c: int) -> int:
        """A rows in chunk ``c``."""
        return min(self.p.chunk, self.p.m - c * self.p.chunk)

    def load_a(self, c: int) -> Instruction:
        """The LOAD of chunk ``c`` of A into scratchpad region ``c % 2``; its words go
        into the data stream now."""
        p, L = self.p, self.cfg.lanes
        mc = self.rows_of(c)
        self.data.extend(pack_rows(Mem.SPAD, self.ap[c * p.chunk:c * p.chunk + mc].reshape(-1, L), self.cfg))
        return Instruction(Opcode.LOAD, {"mem": Mem.SPAD.value}, p.a_groups, mc,
                           z=Addr((c % 2) * self.spad_q, 1, p.a_groups))

    def requant(self, c: int, nt: int) -> Instruction:
        """REQUANT of n-tile ``nt`` of chunk ``c`` into scratchpad region ``2 + c % 2``."""
        p, cfg = self.p, self.cfg
        return Instruction(Opcode.REQUANT, {"table": nt, "lane": nt % cfg.requant_lanes, "out_signed": 1},
                           self.rows_of(c), 1,
                           x=Addr((c % 2) * self.acc_q + nt * p.chunk, 1),
                           z=Addr((2 + c % 2) * self.spad_q + nt // cfg.requant_lanes, p.y_groups))

    def store(self, c: int) -> Instruction:
        """STORE of chunk ``c``'s Y rows."""
        p = self.p
        return Instruction(Opcode.STORE, {"mem": Mem.SPAD.value}, p.y_groups, self.rows_of(c),
                           x=Addr((2 + c % 2) * self.spad_q, 1, p.y_groups))

    def pairs(self, c: int, bank0: int):
        """(LOADW, MATMUL) per (n-tile, k-tile) of chunk ``c``, banks alternating from ``bank0``."""
        p, cfg, R = self.p, self.cfg, self.cfg.rows
        mc = self.rows_of(c)
        bank = bank0
        for nt in range(p.n_tiles):
            for kt in range(p.k_tiles):
                yield [
                    Instruction(Opcode.LOADW, {"bank": bank}, R, 1,
                                x=Addr((nt * p.k_tiles + kt) * R, 1)),
                    Instruction(Opcode.MATMUL, {"bank": bank, "accumulate": int(kt > 0),
                                                "act_signed": 1, "lane": kt % cfg.matmul_lanes},
                                mc, 1,
                                x=Addr((c % 2) * self.spad_q + kt // cfg.matmul_lanes, p.a_groups),
                                z=Addr((c % 2) * self.acc_q + nt * p.chunk, 1)),
                ]
                bank ^= 1

    def neighbour_work(self, c: int) -> dict[int, list[Instruction]]:
        """Work of chunks ``c + 1`` and ``c - 1`` by the pair index of chunk ``c`` it
        follows, so that its unit is free by then: a REQUANT takes about one matmul's
        time, so REQUANTs go every second pair and the STORE two pairs after the last."""
        p = self.p
        slots: dict[int, list[Instruction]] = {}
        if c + 1 < p.chunks:
            slots.setdefault(0, []).append(self.load_a(c + 1))
        if c > 0:
            for nt in range(p.n_tiles):
                slots.setdefault(1 + 2 * nt, []).append(self.requant(c - 1, nt))
            slots.setdefault(2 * p.n_tiles + 2, []).append(self.store(c - 1))
        return slots

    def run_chunks(self) -> None:
        """Every chunk's matmuls with its neighbours' work between them, then the last
        chunk's requantization, its store and the HALT."""
        p = self.p
        self.prog.append(self.load_a(0))
        bank = 0
        n_pairs = p.n_tiles * p.k_tiles
        for c in range(p.chunks):
            slots = self.neighbour_work(c)
            for idx, pair in enumerate(self.pairs(c, bank)):
                self.prog.extend(pair)
                self.prog.extend(slots.pop(idx, []))
            bank ^= n_pairs & 1
            for idx in sorted(slots):
                self.prog.extend(slots[idx])
        last = p.chunks - 1
        self.prog.extend(self.requant(last, nt) for nt in range(p.n_tiles))
        self.prog.append(self.store(last))
        self.prog.append(Instruction(Opcode.HALT))
