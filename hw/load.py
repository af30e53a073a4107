"""LOAD: data stream -> scratchpad, weight buffer, accumulators, shift table or
lookup tables.

One row per accepted word. The loader yields the scratchpad and accumulator write
ports to the vector unit and the matmul writeback (it simply does not accept the
word that cycle).
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from fxpgen.config import CoreConfig
from fxpgen.isa import ErrorCode, Mem, UNREGIONED

from .addrgen import check_address
from .buffers import LUT_ENTRY, acc_row, addr_width, spad_row, table_row, wbuf_row, write_sig
from .unit_port import UnitControl, report, unit_loops
from .hazards import mem_bits

__all__ = ["LoadUnit"]


class LoadUnit(wiring.Component):
    def __init__(self, cfg: CoreConfig):
        self._cfg = cfg
        super().__init__({
            "ctrl": In(UnitControl()),
            "data": In(stream.Signature(unsigned(cfg.bus_width))),
            "spad_wr": In(write_sig(cfg.spad_depth, spad_row(cfg), 1)),
            "spad_free": In(1),
            "wbuf_wr": In(write_sig(cfg.wbuf_depth, wbuf_row(cfg))),
            "acc_wr": In(write_sig(cfg.acc_depth, acc_row(cfg))),
            "acc_free": In(1),
            "table_wr": In(write_sig(cfg.table_depth, table_row(cfg))),
            **({"lut_wr": In(write_sig(cfg.lut_depth, LUT_ENTRY))} if cfg.lut_tables else {}),
            "stall": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        ctrl = self.ctrl
        loops, pc = unit_loops(m, ctrl, ("z",), self._cfg)
        mem = Signal(Mem)
        regions = Signal(4)
        with m.If(ctrl.start):
            m.d.sync += [mem.eq(ctrl.insn.params.load.mem), regions.eq(ctrl.insn.z.regions)]

        addr = loops.addr[0]
        depth_log2 = Signal(range(17))
        with m.Switch(mem):
            for mm, depth in ((Mem.SPAD, cfg.spad_depth), (Mem.WBUF, cfg.wbuf_depth),
                              (Mem.ACC, cfg.acc_depth)):
                with m.Case(mm):
                    m.d.comb += depth_log2.eq(addr_width(depth))
        err = Signal(ErrorCode)
        region_err = check_address(m, addr, depth_log2, regions, "z")
        single_depth = Mux(mem == Mem.TABLE, cfg.table_depth, cfg.lut_depth)
        m.d.comb += err.eq(Mux(mem.as_value().matches(*UNREGIONED),
                               Mux(addr >= single_depth, ErrorCode.ADDRESS, ErrorCode.NONE),
                               region_err))

        free = Signal()
        m.d.comb += free.eq(Mux(mem == Mem.SPAD, self.spad_free,
                                Mux(mem == Mem.ACC, self.acc_free, 1)))
        ok = Signal()
        m.d.comb += ok.eq(loops.valid & (err == ErrorCode.NONE) & ~ctrl.abort)
        m.d.comb += self.data.ready.eq(ok & free)
        write = self.data.valid & self.data.ready
        m.d.comb += loops.advance.eq(write)

        payload = self.data.payload
        ports = [(self.spad_wr, Mem.SPAD, spad_row(cfg)), (self.wbuf_wr, Mem.WBUF, wbuf_row(cfg)),
                 (self.acc_wr, Mem.ACC, acc_row(cfg)), (self.table_wr, Mem.TABLE, table_row(cfg))]
        if cfg.lut_tables:
            ports.append((self.lut_wr, Mem.LUT, LUT_ENTRY))
        for port, mm, layout in ports:
            width = Shape.cast(layout).width
            en_width = len(port.en)
            m.d.comb += [
                port.addr.eq(addr),
                port.data.eq(payload[:width]),
                port.en.eq(Mux(write & (mem == mm), (1 << en_width) - 1, 0)),
            ]

        report(m, ctrl, ready=~loops.valid, busy=loops.valid, reads=0,
               writes=Mux(loops.valid, mem_bits(mem, regions), 0),
               error=err, pc=pc, active=loops.valid)
        m.d.comb += self.stall.eq(ok & free & ~self.data.valid)
        return m
