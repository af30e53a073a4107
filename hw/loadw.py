"""LOADW: one weight tile from the weight buffer into a bank of the array.

Reads weight-buffer rows, one a cycle at most; each tile row enters the bottom of
the array the cycle after the read that completes it and shifts the chosen bank
upward, so the tile loads into one bank while a matmul streams through the other.

Narrow weights (``narrow`` > 0: 6, 4 or 2 bits) come packed, each column's in its
byte lane (``OPCODE_INFO[LOADW]``). Every lane keeps the bits read but not yet used
(``fill`` of them, always fewer than a weight's width when a byte arrives, so at most
14) and sign-extends the low ``b`` to int8: the array never sees the packing. A row
is read only when the next tile row needs it, so a tile still enters one row a cycle.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from fxpgen.config import CoreConfig
from fxpgen.isa import ErrorCode, Mem
from fxpgen.numerics import WEIGHT_BITS

from .addrgen import check_address
from .buffers import addr_width, read_sig, wbuf_row
from .unit_port import UnitControl, report, unit_loops
from .hazards import bank_bit, mem_bits

__all__ = ["WeightLoader"]

#: Bits a lane holds: fewer than 8 left over plus the byte just read.
_HELD = 14


class WeightLoader(wiring.Component):
    def __init__(self, cfg: CoreConfig):
        self._cfg = cfg
        super().__init__({
            "ctrl": In(UnitControl()),
            "wbuf_rd": In(read_sig(cfg.wbuf_depth, wbuf_row(cfg))),
            "weights": Out(data.StructLayout({
                "valid": 1, "bank": 1, "data": data.ArrayLayout(signed(8), cfg.cols)})),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        ctrl = self.ctrl
        loops, pc = unit_loops(m, ctrl, ("x",), self._cfg)
        bank = Signal()
        narrow = Signal(2)
        regions = Signal(4)
        pending = Signal()
        with m.If(ctrl.start):
            m.d.sync += [bank.eq(ctrl.insn.params.loadw.bank),
                         narrow.eq(ctrl.insn.params.loadw.narrow),
                         regions.eq(ctrl.insn.x.regions)]

        widths = WEIGHT_BITS[:cfg.weight_widths]
        width = Signal(4)
        emit = Signal()
        left = Signal(5)
        err = check_address(m, loops.addr[0], addr_width(cfg.wbuf_depth), regions, "x")
        issue = Signal()
        m.d.comb += [
            width.eq(Array(widths)[narrow] if len(widths) > 1 else 8),
            issue.eq(loops.valid & (err == ErrorCode.NONE) & ~ctrl.abort & (left < width)),
            loops.advance.eq(issue),
            self.wbuf_rd.addr.eq(loops.addr[0]),
            self.wbuf_rd.en.eq(issue),
            self.weights.valid.eq(emit & ~ctrl.abort),
            self.weights.bank.eq(bank),
        ]
        m.d.sync += pending.eq(issue)
        if len(widths) == 1:
            # 8-bit weights only: each row read is the next tile row.
            m.d.comb += [emit.eq(pending), self.weights.data.eq(self.wbuf_rd.data)]
            rows_due = C(0)
        else:
            rows_due = self._unpack(m, ctrl.start, narrow, pending, width, emit, left, widths)

        # A fault counts when its read is due, so the rows the reads before it
        # complete still enter the array (as in the instruction-level simulator).
        busy = loops.valid | pending | rows_due
        report(m, ctrl, ready=~busy, busy=busy,
               reads=Mux(loops.valid, mem_bits(Mem.WBUF, regions), 0),
               writes=Mux(busy, bank_bit(bank), 0), error=err, pc=pc,
               active=loops.valid & (left < width))
        return m

    def _unpack(self, m, start, narrow, pending, width, emit, left, widths) -> Value:
        """Narrow weights: per lane, the bits held and the byte read this cycle; a tile
        row leaves when they make one, and a read is issued only when what is left
        after it is too few for the next (``left < width``). Returns whether tile rows
        are still to leave."""
        cfg = self._cfg
        rows_left = Signal(range(cfg.rows + 1))
        with m.If(start):
            m.d.sync += rows_left.eq(cfg.rows)
        with m.Elif(emit):
            m.d.sync += rows_left.eq(rows_left - 1)
        fill = Signal(4)
        have = Signal(5)
        held = [Signal(_HELD, name=f"held{j}") for j in range(cfg.cols)]
        m.d.comb += [
            have.eq(fill + Mux(pending, 8, 0)),
            emit.eq((rows_left != 0) & (have >= width)),
            left.eq(have - Mux(emit, width, 0)),
        ]
        with m.If(start):
            m.d.sync += [fill.eq(0)] + [h.eq(0) for h in held]
        with m.Else():
            m.d.sync += fill.eq(left)
        for j in range(cfg.cols):
            byte = self.wbuf_rd.data[j].as_unsigned()
            # A byte lands above the bits held; fill is even and below 8 then.
            avail = Signal(_HELD, name=f"avail{j}")
            m.d.comb += avail.eq(held[j] | Mux(pending, Array(
                byte << 2 * k for k in range(4))[fill[1:3]], 0))
            out = self.weights.data[j]
            with m.Switch(narrow):
                for code, bits in enumerate(widths):
                    with m.Case(code):
                        m.d.comb += out.eq(avail[:bits].as_signed())
                        with m.If(~start):
                            m.d.sync += held[j].eq(Mux(emit, avail >> bits, avail))
        return rows_left != 0
