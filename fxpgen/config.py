"""The generator configuration: one frozen dataclass feeds the hardware, the
instruction-level simulator and the compiler, so they cannot disagree about
array shape, memory depths or word widths."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .numerics import WEIGHT_BITS

__all__ = ["CoreConfig", "REGIONS"]

#: Every memory is split into this many equal regions (by the top two address
#: bits). Instructions declare which regions each address stream may touch; the
#: controller uses those masks to let independent instructions run concurrently.
REGIONS = 4


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class CoreConfig:
    """Parameters of one generated accelerator core.

    rows, cols
        Systolic array shape: ``rows`` is the reduction (input-channel) dimension
        of one weight tile, ``cols`` the output-channel dimension. One of them must
        divide the other.
    acc_width
        Accumulator width in bits (signed, saturating).
    spad_depth, wbuf_depth, acc_depth
        Rows in the activation scratchpad (``lanes`` bytes a row), the weight buffer
        (``cols`` int8 a row) and the accumulator memory (``cols`` x ``acc_width``
        a row). Powers of two, at least 4, at most 65536.
    table_depth
        Entries in the shift table (per-column requantization shifts).
    lut_tables
        256-entry lookup tables the vector unit holds for LUT (nonlinear activations);
        every scratchpad lane keeps a copy, ``lut_tables * 256`` bytes. 0..16: 0 builds
        no tables and no lookup path (every LUT, and every LOAD into the tables, is
        refused), for devices that cannot afford them.
    lane_multipliers
        Whether the vector unit has its 8-bit multiplier per lane for MUL (elementwise
        products). Without them every MUL is refused (``BAD_FIELD``).
    counter_width
        Width of the performance counters in bits.
    weight_widths
        How many of the weight widths 8, 6, 4, 2 (:data:`fxpgen.numerics.WEIGHT_BITS`,
        in that order) LOADW unpacks: 4 all of them, 1 only 8-bit weights, without
        the unpacking logic (a narrower LOADW is refused).
    """

    rows: int = 8
    cols: int = 8
    acc_width: int = 32
    spad_depth: int = 4096
    wbuf_depth: int = 1024
    acc_depth: int = 2048
    table_depth: int = 16
    lut_tables: int = 4
    counter_width: int = 32
    lane_multipliers: bool = True
    weight_widths: int = len(WEIGHT_BITS)

    def __post_init__(self):
        for name in ("rows", "cols"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 1 <= v <= 64:
                raise ValueError(f"{name} must be an integer in 1..64, not {v!r}")
        if max(self.rows, self.cols) % min(self.rows, self.cols):
            raise ValueError(
                f"rows ({self.rows}) and cols ({self.cols}) must divide one another "
                "so that scratchpad rows hold whole array vectors")
        if max(self.rows, self.cols) // min(self.rows, self.cols) > 16:
            raise ValueError("the ratio of rows to cols must be at most 16")
        if not isinstance(self.acc_width, int) or not self.psum_width <= self.acc_width <= 48:
            raise ValueError(
                f"acc_width must be in {self.psum_width}..48 for a {self.rows}-row array "
                f"(a column sum needs {self.psum_width} bits), not {self.acc_width!r}")
        for name in ("spad_depth", "wbuf_depth", "acc_depth"):
            v = getattr(self, name)
            if not isinstance(v, int) or not _is_pow2(v) or not REGIONS <= v <= 65536:
                raise ValueError(f"{name} must be a power of two in {REGIONS}..65536, not {v!r}")
        if self.wbuf_depth < self.rows:
            raise ValueError(
                f"wbuf_depth ({self.wbuf_depth}) must hold at least one weight tile ({self.rows} rows)")
        if not isinstance(self.table_depth, int) or not 1 <= self.table_depth <= 256:
            raise ValueError(f"table_depth must be in 1..256, not {self.table_depth!r}")
        if not isinstance(self.lut_tables, int) or not 0 <= self.lut_tables <= 16:
            raise ValueError(f"lut_tables must be in 0..16, not {self.lut_tables!r}")
        if not isinstance(self.lane_multipliers, bool):
            raise ValueError(f"lane_multipliers must be True or False, not {self.lane_multipliers!r}")
        if not isinstance(self.weight_widths, int) or not 1 <= self.weight_widths <= len(WEIGHT_BITS):
            raise ValueError(f"weight_widths must be in 1..{len(WEIGHT_BITS)}, not {self.weight_widths!r}")
        if not isinstance(self.counter_width, int) or not 16 <= self.counter_width <= 64:
            raise ValueError(f"counter_width must be in 16..64, not {self.counter_width!r}")

    @property
    def lanes(self) -> int:
        """Bytes in one scratchpad row: ``max(rows, cols)``."""
        return max(self.rows, self.cols)

    @property
    def matmul_lanes(self) -> int:
        """Slices of ``rows`` bytes in a scratchpad row: the activation vectors one row
        holds, and the range of MATMUL's ``lane`` field (``lanes // rows``)."""
        return self.lanes // self.rows

    @property
    def requant_lanes(self) -> int:
        """Slices of ``cols`` bytes in a scratchpad row: the output vectors one row
        holds, and the range of REQUANT's ``lane`` field (``lanes // cols``)."""
        return self.lanes // self.cols

    @property
    def psum_width(self) -> int:
        """Bits of an exact column sum: int8 weight x 9-bit activation, ``rows`` terms."""
        return 17 + (self.rows - 1).bit_length()

    @property
    def bus_width(self) -> int:
        """Bits of one data-stream or result-stream word: wide enough for one row of
        any memory (scratchpad, weight buffer, accumulator, shift table)."""
        return max(8 * self.lanes, self.acc_width * self.cols, 12 * self.cols)

    @property
    def lut_depth(self) -> int:
        """Rows of the lookup-table memory (one byte a row): ``256 * lut_tables``."""
        return 256 * self.lut_tables

    @property
    def mul_shift_bound(self) -> int:
        """MUL's ``shift`` must be below this (its field rule): above every shift on a
        core with lane multipliers, below every one on a core without, so that there
        every MUL is refused."""
        return 32 if self.lane_multipliers else -32

    def depth(self, mem) -> int:
        """Depth of the memory named by an :class:`fxpgen.isa.Mem` member."""
        from .isa import Mem
        return {
            Mem.SPAD: self.spad_depth,
            Mem.WBUF: self.wbuf_depth,
            Mem.ACC: self.acc_depth,
            Mem.TABLE: self.table_depth,
            Mem.LUT: self.lut_depth,
        }[Mem(mem)]

    def replace(self, **changes) -> "CoreConfig":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def name(self) -> str:
        """Short identifier used for build directories and file names."""
        return (f"r{self.rows}c{self.cols}a{self.acc_width}s{self.spad_depth}"
                f"w{self.wbuf_depth}m{self.acc_depth}t{self.table_depth}k{self.counter_width}")
