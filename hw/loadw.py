"""LOADW: one weight tile from the weight buffer into a bank of the array.

Reads ``rows`` weight-buffer rows, one a cycle; each enters the bottom of the array
the next cycle and shifts the chosen bank upward, so the tile loads into one bank
while a matmul streams through the other.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from fxpgen.config import CoreConfig
from fxpgen.isa import ErrorCode, Mem

from .addrgen import check_address
from .buffers import addr_width, read_sig, wbuf_row
from .unit_port import UnitControl, report, unit_loops
from .hazards import bank_bit, mem_bits

__all__ = ["WeightLoader"]


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
        regions = Signal(4)
        pending = Signal()
        with m.If(ctrl.start):
            m.d.sync += [bank.eq(ctrl.insn.params.loadw.bank), regions.eq(ctrl.insn.x.regions)]

        err = check_address(m, loops.addr[0], addr_width(cfg.wbuf_depth), regions, "x")
        issue = Signal()
        m.d.comb += [
            issue.eq(loops.valid & (err == ErrorCode.NONE) & ~ctrl.abort),
            loops.advance.eq(issue),
            self.wbuf_rd.addr.eq(loops.addr[0]),
            self.wbuf_rd.en.eq(issue),
        ]
        m.d.sync += pending.eq(issue)
        m.d.comb += [
            self.weights.valid.eq(pending & ~ctrl.abort),
            self.weights.bank.eq(bank),
            self.weights.data.eq(self.wbuf_rd.data),
        ]

        busy = loops.valid | pending
        report(m, ctrl, ready=~busy, busy=busy,
               reads=Mux(loops.valid, mem_bits(Mem.WBUF, regions), 0),
               writes=Mux(busy, bank_bit(bank), 0), error=err, pc=pc, active=loops.valid)
        return m
