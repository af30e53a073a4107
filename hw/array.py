"""The rows x cols weight-stationary systolic array (TPU style).

An activation vector enters unskewed on ``act``; row i is delayed by i cycles so the
vector crosses the array as a diagonal wavefront. Column j's sum leaves the bottom
row at cycle ``rows + j + 1`` (each PE registers its product, then its sum) and is
delayed by ``cols - 1 - j`` more cycles, so the whole result vector appears on
``psum`` ``LATENCY = rows + cols`` cycles after the vector entered. One vector per cycle: ``rows * cols`` MACs every cycle.

Weights shift upward through the columns, one row per cycle on ``weights``; after
``rows`` rows, the first row loaded sits in array row 0.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .pe import ACT_WIDTH, build_pe

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """Weight-stationary array with double-buffered weights.

    Ports
    -----
    act : In
        ``valid``, ``bank`` (weight bank to use) and ``data`` (rows x 9-bit signed).
    weights : In
        ``valid``, ``bank`` (bank being loaded), ``data`` (one row: cols x int8).
    psum : Out
        ``valid`` and ``data`` (cols x psum_width signed), LATENCY cycles after ``act``.
    """

    def __init__(self, rows: int, cols: int, psum_width: int):
        if rows < 1 or cols < 1:
            raise ValueError(f"array shape must be positive, not {rows}x{cols}")
        min_width = 17 + (rows - 1).bit_length()
        if psum_width < min_width:
            raise ValueError(f"psum_width must be at least {min_width} for {rows} rows, not {psum_width}")
        self._rows, self._cols, self._psum_width = rows, cols, psum_width
        super().__init__({
            "act": In(data.StructLayout({
                "valid": 1, "bank": 1, "data": data.ArrayLayout(signed(ACT_WIDTH), rows)})),
            "weights": In(data.StructLayout({
                "valid": 1, "bank": 1, "data": data.ArrayLayout(signed(8), cols)})),
            "psum": Out(data.StructLayout({
                "valid": 1, "data": data.ArrayLayout(signed(psum_width), cols)})),
        })

    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    psum_width = property(lambda self: self._psum_width)

    @property
    def LATENCY(self) -> int:
        return self.latency(self._rows, self._cols)

    @staticmethod
    def latency(rows: int, cols: int) -> int:
        """:attr:`LATENCY` of a ``rows`` x ``cols`` array, without building one."""
        return rows + cols

    @staticmethod
    def _delay(m, sig, n, name):
        """``sig`` delayed by ``n`` cycles through a register chain."""
        for k in range(n):
            r = Signal.like(sig, name=f"{name}_d{k}")
            m.d.sync += r.eq(sig)
            sig = r
        return sig

    def elaborate(self, platform):
        m = Module()
        R, C, W = self._rows, self._cols, self._psum_width

        act = [[Signal(signed(ACT_WIDTH), name=f"act_{i}_{j}") for j in range(C + 1)] for i in range(R)]
        bank = [[Signal(name=f"bank_{i}_{j}") for j in range(C + 1)] for i in range(R)]
        psum = [[Signal(signed(W), name=f"psum_{i}_{j}") for j in range(C)] for i in range(R + 1)]
        wchain = [[Signal(signed(8), name=f"wchain_{i}_{j}") for j in range(C)] for i in range(R + 1)]

        # Skew: row i sees the vector i cycles after row 0.
        for i in range(R):
            m.d.comb += [
                act[i][0].eq(self._delay(m, self.act.data[i], i, f"skew_act{i}")),
                bank[i][0].eq(self._delay(m, self.act.bank, i, f"skew_bank{i}")),
            ]
        for j in range(C):
            m.d.comb += [psum[0][j].eq(0), wchain[R][j].eq(self.weights.data[j])]

        for i in range(R):
            for j in range(C):
                build_pe(m, act_in=act[i][j], bank_in=bank[i][j], psum_in=psum[i][j],
                         w_in=wchain[i + 1][j], w_load=self.weights.valid,
                         w_load_bank=self.weights.bank,
                         act_out=act[i][j + 1], bank_out=bank[i][j + 1],
                         psum_out=psum[i + 1][j], w_out=wchain[i][j], name=f"pe_{i}_{j}_")

        # De-skew: column j leaves at rows + j + 1; align all columns to rows + cols.
        for j in range(C):
            m.d.comb += self.psum.data[j].eq(self._delay(m, psum[R][j], C - 1 - j, f"deskew{j}"))
        m.d.comb += self.psum.valid.eq(self._delay(m, self.act.valid, self.LATENCY, "valid"))
        return m
