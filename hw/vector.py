"""REQUANT, ADD and MAX: the vector unit around the requantizer.

- Cycle 0: check addresses; read the source rows (accumulator or scratchpad, the
  residual/second operand from the scratchpad) and the shift-table entry.
- Cycle 1: build the lane operands: REQUANT uses the per-column shift and alignment
  from the table and the residual bytes of its lane; ADD and MAX use the
  instruction's scalar shifts on every scratchpad byte.
- Cycles 2..1+Requantizer.LATENCY: requantize.
- Then: write the bytes to the scratchpad (REQUANT only the ``cols`` bytes of its
  lane; the write port's lane enables keep the rest of the row).
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In

from fxpgen.config import CoreConfig
from fxpgen.isa import AluParams, ErrorCode, Mem, Opcode, RequantParams

from .addrgen import check_address
from .buffers import acc_row, addr_width, read_sig, spad_row, table_row, write_sig
from .unit_port import UnitControl, report, unit_loops
from .hazards import TABLE_BIT, mem_bits
from .requant import Requantizer

__all__ = ["VectorUnit"]


class VectorUnit(wiring.Component):
    def __init__(self, cfg: CoreConfig):
        self._cfg = cfg
        super().__init__({
            "ctrl": In(UnitControl()),
            "spad_rd_x": In(read_sig(cfg.spad_depth, spad_row(cfg))),
            "spad_rd_y": In(read_sig(cfg.spad_depth, spad_row(cfg))),
            "acc_rd": In(read_sig(cfg.acc_depth, acc_row(cfg))),
            "table_rd": In(read_sig(cfg.table_depth, table_row(cfg))),
            "spad_wr": In(write_sig(cfg.spad_depth, spad_row(cfg), 1)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        L, C = cfg.lanes, cfg.cols
        ctrl = self.ctrl
        loops, pc = unit_loops(m, ctrl, ("x", "y", "z"), self._cfg)
        m.submodules.requant = rq = Requantizer(L, cfg.acc_width)

        is_requant = Signal()
        op_max = Signal()
        rparams = Signal(RequantParams)
        aparams = Signal(AluParams)
        regions = [Signal(4, name=f"{s}_regions") for s in "xyz"]
        with m.If(ctrl.start):
            m.d.sync += [
                is_requant.eq(ctrl.insn.opcode == Opcode.REQUANT),
                op_max.eq(ctrl.insn.opcode == Opcode.MAX),
                rparams.eq(ctrl.insn.params.requant),
                aparams.eq(ctrl.insn.params.alu),
                regions[0].eq(ctrl.insn.x.regions),
                regions[1].eq(ctrl.insn.y.regions),
                regions[2].eq(ctrl.insn.z.regions),
            ]
        uses_y = Signal()
        m.d.comb += uses_y.eq(~is_requant | rparams.residual)

        # Cycle 0: address checks (x, then y, then z) and reads.
        x_addr, y_addr, z_addr = loops.addr[0], loops.addr[1], loops.addr[2]
        spad_aw, acc_aw = addr_width(cfg.spad_depth), addr_width(cfg.acc_depth)
        x_err = Signal(ErrorCode)
        m.d.comb += x_err.eq(Mux(is_requant, check_address(m, x_addr, acc_aw, regions[0], "xa"),
                                 check_address(m, x_addr, spad_aw, regions[0], "xs")))
        y_err = check_address(m, y_addr, spad_aw, regions[1], "y")
        z_err = check_address(m, z_addr, spad_aw, regions[2], "z")
        err = Signal(ErrorCode)
        with m.If(x_err != ErrorCode.NONE):
            m.d.comb += err.eq(x_err)
        with m.Elif(uses_y & (y_err != ErrorCode.NONE)):
            m.d.comb += err.eq(y_err)
        with m.Else():
            m.d.comb += err.eq(z_err)
        issue = Signal()
        m.d.comb += [
            issue.eq(loops.valid & (err == ErrorCode.NONE) & ~ctrl.abort),
            loops.advance.eq(issue),
            self.acc_rd.addr.eq(x_addr), self.acc_rd.en.eq(issue & is_requant),
            self.spad_rd_x.addr.eq(x_addr), self.spad_rd_x.en.eq(issue & ~is_requant),
            self.spad_rd_y.addr.eq(y_addr), self.spad_rd_y.en.eq(issue & uses_y),
            self.table_rd.addr.eq(rparams.table), self.table_rd.en.eq(1),
        ]

        # Cycle 1: operands.
        meta_layout = data.StructLayout({"valid": 1, "addr": spad_aw})
        s1 = Signal(meta_layout)
        m.d.sync += [s1.valid.eq(issue), s1.addr.eq(z_addr)]
        ops = rq.operands
        m.d.comb += [
            ops.valid.eq(s1.valid),
            ops.op_max.eq(op_max),
            ops.relu.eq(Mux(is_requant, rparams.relu, aparams.relu & ~op_max)),
            ops.out_signed.eq(Mux(is_requant, rparams.out_signed, aparams.out_signed)),
        ]
        x_row = self.spad_rd_x.data.as_value()
        y_row = self.spad_rd_y.data.as_value()
        residual = Signal(8 * C)
        m.d.comb += residual.eq(y_row.word_select(rparams.lane, 8 * C) if L > C else y_row)
        b_signed = Mux(op_max, aparams.a_signed, aparams.b_signed)
        for i in range(L):
            ln = ops.lane[i]
            xb, yb = x_row[8 * i:8 * i + 8], y_row[8 * i:8 * i + 8]
            with m.If(is_requant):
                if i < C:
                    entry = self.table_rd.data[i]
                    rb = residual[8 * i:8 * i + 8]
                    m.d.comb += [
                        ln.a.eq(self.acc_rd.data[i]),
                        ln.b.eq(Mux(rparams.residual,
                                    Mux(rparams.res_signed, rb.as_signed(), rb.as_unsigned()), 0)),
                        ln.a_shift.eq(Mux(entry.align < 0, -entry.align, 0)),
                        ln.b_shift.eq(Mux(entry.align > 0, entry.align, 0)),
                        ln.shift.eq(entry.shift),
                    ]
            with m.Else():
                m.d.comb += [
                    ln.a.eq(Mux(aparams.a_signed, xb.as_signed(), xb.as_unsigned())),
                    ln.b.eq(Mux(b_signed, yb.as_signed(), yb.as_unsigned())),
                    ln.a_shift.eq(Mux(op_max, 0, aparams.a_shift)),
                    ln.b_shift.eq(Mux(op_max, 0, aparams.b_shift)),
                    ln.shift.eq(Mux(op_max, 0, aparams.shift)),
                ]

        # Write-back after the requantizer.
        meta = [s1]
        for k in range(Requantizer.LATENCY):
            r = Signal(meta_layout, name=f"meta{k + 1}")
            m.d.sync += r.eq(meta[-1])
            meta.append(r)
        wb = meta[-1]
        groups = cfg.requant_lanes
        lane_en = Signal(L)
        m.d.comb += lane_en.eq(Mux(is_requant,
                                   Const((1 << C) - 1, L) << (rparams.lane * C) if groups > 1
                                   else (1 << C) - 1,
                                   (1 << L) - 1))
        m.d.comb += [self.spad_wr.addr.eq(wb.addr),
                     self.spad_wr.en.eq(Mux(wb.valid, lane_en, 0))]
        for i in range(L):
            # REQUANT's column j lands in byte lane*cols + j: replicate the columns
            # across the row and let the lane enables pick the group.
            src = Mux(is_requant, rq.result.data[i % C], rq.result.data[i])
            m.d.comb += self.spad_wr.data[i].eq(src)

        pipeline = Cat(*(r.valid for r in meta))
        busy = Signal()
        m.d.comb += busy.eq(loops.valid | (pipeline != 0))
        y_bits = Mux(uses_y, mem_bits(Mem.SPAD, regions[1]), 0)
        x_bits = Mux(is_requant, mem_bits(Mem.ACC, regions[0]) | (1 << TABLE_BIT),
                     mem_bits(Mem.SPAD, regions[0]))
        report(m, ctrl, ready=~busy, busy=busy, reads=Mux(loops.valid, x_bits | y_bits, 0),
               writes=Mux(busy, mem_bits(Mem.SPAD, regions[2]), 0), error=err, pc=pc,
               active=loops.valid)
        return m
