"""STORE: scratchpad or accumulator rows -> result stream.

Rows are read one cycle ahead into a small FIFO, so the result stream can stall at
any time without losing or repeating a row; a read is issued only when the FIFO is
sure to have room for it.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from fxpgen.config import CoreConfig
from fxpgen.isa import ErrorCode, Mem

from .addrgen import check_address
from .buffers import acc_row, addr_width, read_sig, spad_row
from .unit_port import UnitControl, report, unit_loops
from .hazards import mem_bits, port_bits

__all__ = ["StoreUnit", "ResultWord"]

FIFO_DEPTH = 4


def ResultWord(cfg: CoreConfig):
    """Result-stream payload: one memory row in ``data``, ``last`` on a STORE's final row."""
    return data.StructLayout({"data": unsigned(cfg.bus_width), "last": 1})


class StoreUnit(wiring.Component):
    def __init__(self, cfg: CoreConfig):
        self._cfg = cfg
        super().__init__({
            "ctrl": In(UnitControl()),
            "result": Out(stream.Signature(ResultWord(cfg))),
            "spad_rd": In(read_sig(cfg.spad_depth, spad_row(cfg))),
            "acc_rd": In(read_sig(cfg.acc_depth, acc_row(cfg))),
            "stall": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        ctrl = self.ctrl
        loops, pc = unit_loops(m, ctrl, ("x",), self._cfg)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=cfg.bus_width + 1, depth=FIFO_DEPTH)
        mem = Signal(Mem)
        regions = Signal(4)
        pending = Signal()        # a row read last cycle, landing in the FIFO now
        pending_last = Signal()
        pending_mem = Signal(Mem)

        with m.If(ctrl.start):
            m.d.sync += [mem.eq(ctrl.insn.params.store.mem), regions.eq(ctrl.insn.x.regions)]

        addr = loops.addr[0]
        err = Signal(ErrorCode)
        spad_err = check_address(m, addr, addr_width(cfg.spad_depth), regions, "spad")
        acc_err = check_address(m, addr, addr_width(cfg.acc_depth), regions, "acc")
        m.d.comb += err.eq(Mux(mem == Mem.SPAD, spad_err, acc_err))

        issue = Signal()
        m.d.comb += issue.eq(loops.valid & (err == ErrorCode.NONE) & ~ctrl.abort
                             & (fifo.w_level + pending < FIFO_DEPTH))
        m.d.comb += [
            loops.advance.eq(issue),
            self.spad_rd.addr.eq(addr), self.spad_rd.en.eq(issue & (mem == Mem.SPAD)),
            self.acc_rd.addr.eq(addr), self.acc_rd.en.eq(issue & (mem == Mem.ACC)),
        ]
        m.d.sync += [pending.eq(issue), pending_last.eq(loops.last), pending_mem.eq(mem)]

        row = Mux(pending_mem == Mem.SPAD, self.spad_rd.data.as_value(), self.acc_rd.data.as_value())
        m.d.comb += [
            fifo.w_data.eq(row | (pending_last << cfg.bus_width)),
            fifo.w_en.eq(pending),
            self.result.payload.eq(fifo.r_data),
            self.result.valid.eq(fifo.r_rdy & ~ctrl.abort),
            fifo.r_en.eq(self.result.ready & ~ctrl.abort),
        ]

        reading = loops.valid | pending
        # Busy until the last row has left: a row just written is in the FIFO (its
        # level counts it) a cycle before the FIFO's output shows it.
        holding = fifo.w_level != 0
        report(m, ctrl, ready=~reading & ~holding, busy=reading | holding,
               reads=Mux(reading, mem_bits(mem, regions), 0),
               writes=Mux(reading, port_bits(mem, regions), 0),
               error=err, pc=pc, active=loops.valid)
        m.d.comb += self.stall.eq(fifo.r_rdy & ~self.result.ready)
        return m
