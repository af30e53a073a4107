"""REQUANT, ADD, MAX, MUL and LUT: the vector unit around the requantizer.

- Cycle 0: check addresses; read the source rows (accumulator or scratchpad, the
  residual/second operand from the scratchpad) and the shift-table entry. Two
  scratchpad operands in one bank (:data:`fxpgen.isa.PORT_REGIONS`; by the region
  masks) share its read port: x is read (and then held) a cycle before the
  iteration issues with y, so such an instruction issues every other cycle, and
  holds the scratchpad's write port from a cycle before its first write to its last
  (``spad_hold``), so the loader does not write between its writes.
- Cycle 1: the memories' read data enters ``stages.vector_read`` registers
  (:mod:`fxpgen.hw.stages`): a block RAM's clock-to-out without its output
  register is most of a cycle at 100 MHz.
- Cycle 1 + vector_read: build the lane operands: REQUANT uses the per-column
  shift and alignment from the table and the residual bytes of its lane; ADD and
  MAX use the instruction's scalar shifts on every scratchpad byte; MUL multiplies
  the two bytes of each lane (one 9 x 9-bit signed multiplier a lane, the only one
  in the unit) and requantizes the product with its scalar shift; LUT sends every
  byte as the address of its lane's lookup-table memory. The operands pass
  ``stages.vector_operands`` registers to the requantizer, so the multiplier (a
  DSP block) and the alignment shifters are in different cycles; the looked-up
  bytes are registered as long.
- The next ``Requantizer.LATENCY`` cycles: requantize (LUT: the looked-up bytes
  join in the requantizer's second cycle and pass through).
- Cycle ``write_delay``: write the bytes to the scratchpad (REQUANT only the
  ``cols`` bytes of its lane; the write port's lane enables keep the rest of the row).
"""

from typing import NamedTuple

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from fxpgen.config import CoreConfig
from fxpgen.isa import AluParams, ErrorCode, LutParams, Mem, MulParams, Opcode, RequantParams

from .addrgen import check_address
from .delay import delay
from .stages import FAST, Stages
from .buffers import LUT_ENTRY, acc_row, addr_width, read_sig, spad_row, table_row, write_sig
from .unit_port import UnitControl, report, unit_loops
from .hazards import LUT_BIT, TABLE_BIT, mem_bits, port_bits
from .requant import Requantizer

__all__ = ["VectorUnit"]


class _Rows(NamedTuple):
    """The read data of the unit's memories, ``stages.vector_read`` cycles late."""
    x: Value
    y: Value
    acc: data.View
    table: data.View


class _Insn(NamedTuple):
    """The running instruction's fields, latched at ``start``."""
    is_requant: Signal
    op_max: Signal
    op_mul: Signal
    op_lut: Signal
    rparams: Signal
    aparams: Signal
    mparams: Signal
    lparams: Signal
    regions: list[Signal]
    uses_y: Signal
    paired: Signal


class VectorUnit(wiring.Component):
    """Executes REQUANT, ADD, MAX, MUL and LUT: reads through ``acc_rd``,
    ``spad_rd_x``, ``spad_rd_y``, ``table_rd`` and one ``lut_rd`` port a lane, writes
    byte lanes through ``spad_wr``; ``stages`` sets its pipeline registers."""

    def __init__(self, cfg: CoreConfig, stages: Stages = FAST):
        self._cfg = cfg
        self._stages = stages
        super().__init__({
            "ctrl": In(UnitControl()),
            "spad_rd_x": In(read_sig(cfg.spad_depth, spad_row(cfg))),
            "spad_rd_y": In(read_sig(cfg.spad_depth, spad_row(cfg))),
            "acc_rd": In(read_sig(cfg.acc_depth, acc_row(cfg))),
            "table_rd": In(read_sig(cfg.table_depth, table_row(cfg))),
            "spad_wr": In(write_sig(cfg.spad_depth, spad_row(cfg), 1)),
            "spad_hold": Out(1),
            **({"lut_rd": In(read_sig(cfg.lut_depth, LUT_ENTRY)).array(cfg.lanes)}
               if cfg.lut_tables else {}),
        })

    @property
    def write_delay(self) -> int:
        """Cycles from an iteration's issue (its reads) to its scratchpad write."""
        return self._stages.vector_write_delay(Requantizer.LATENCY)

    def elaborate(self, platform):
        m = Module()
        st = self._stages
        loops, pc = unit_loops(m, self.ctrl, ("x", "y", "z"), self._cfg)
        m.submodules.requant = rq = Requantizer(self._cfg.lanes, self._cfg.acc_width)
        insn = self._latch(m)
        x_addr, y_addr, z_addr = loops.addr[0], loops.addr[1], loops.addr[2]
        err = self._address_error(m, insn, x_addr, y_addr, z_addr)
        issue, y_phase = self._issue(m, insn, loops, err)

        # The write address and a valid bit travel beside the operands through the
        # pipeline; meta[k] is cycle 1 + k.
        meta_layout = data.StructLayout({"valid": 1, "addr": addr_width(self._cfg.spad_depth)})
        issued = Signal(meta_layout)
        m.d.comb += [issued.valid.eq(issue), issued.addr.eq(z_addr)]
        meta, stage = [], issued
        for k in range(self.write_delay):
            stage = delay(m, stage, 1, f"meta{k + 1}")
            meta.append(stage)
        rows = self._read_rows(m, insn, y_phase)
        ops = Signal.like(rq.operands)
        self._operands(m, insn, rows, ops, meta[st.vector_read].valid)
        m.d.comb += rq.operands.eq(delay(m, ops, st.vector_operands, "ops"))
        if self._cfg.lut_tables:
            self._lookup(m, insn, rows, rq.lookup, meta[st.vector_read].valid)
        self._write_back(m, insn, rq.result.data, meta[-1])
        m.d.comb += self.spad_hold.eq(meta[-1].valid | (insn.paired & meta[-2].valid))

        pipeline = Cat(*(r.valid for r in meta))
        busy = Signal()
        m.d.comb += busy.eq(loops.valid | (pipeline != 0))
        self._report(m, insn, loops.valid, busy, err, pc)
        return m

    def _latch(self, m: Module) -> _Insn:
        """Latch the opcode, the parameters and the region masks at ``start``."""
        ctrl = self.ctrl
        is_requant = Signal()
        op_max = Signal()
        op_mul = Signal()
        op_lut = Signal()
        rparams = Signal(RequantParams)
        aparams = Signal(AluParams)
        mparams = Signal(MulParams)
        lparams = Signal(LutParams)
        regions = [Signal(4, name=f"{s}_regions") for s in "xyz"]
        with m.If(ctrl.start):
            m.d.sync += [
                is_requant.eq(ctrl.insn.opcode == Opcode.REQUANT),
                op_max.eq(ctrl.insn.opcode == Opcode.MAX),
                # A core without the lookup tables or the lane multipliers refuses
                # LUT or MUL (field rules), so they never start here.
                op_mul.eq((ctrl.insn.opcode == Opcode.MUL) & self._cfg.lane_multipliers),
                op_lut.eq((ctrl.insn.opcode == Opcode.LUT) & (self._cfg.lut_tables > 0)),
                rparams.eq(ctrl.insn.params.requant),
                aparams.eq(ctrl.insn.params.alu),
                mparams.eq(ctrl.insn.params.mul),
                lparams.eq(ctrl.insn.params.lut),
                regions[0].eq(ctrl.insn.x.regions),
                regions[1].eq(ctrl.insn.y.regions),
                regions[2].eq(ctrl.insn.z.regions),
            ]
        uses_y = Signal()
        paired = Signal()
        m.d.comb += [
            uses_y.eq(Mux(is_requant, rparams.residual, ~op_lut)),
            paired.eq(uses_y & ~is_requant
                      & ((port_bits(Mem.SPAD, regions[0]) & port_bits(Mem.SPAD, regions[1])) != 0)),
        ]
        return _Insn(is_requant, op_max, op_mul, op_lut, rparams, aparams, mparams, lparams,
                     regions, uses_y, paired)

    def _address_error(self, m: Module, insn: _Insn, x_addr, y_addr, z_addr) -> Signal:
        """Cycle 0: the first fault of x (accumulator for REQUANT, else scratchpad),
        y (only if read), z."""
        spad_aw, acc_aw = addr_width(self._cfg.spad_depth), addr_width(self._cfg.acc_depth)
        x_err = Signal(ErrorCode)
        m.d.comb += x_err.eq(Mux(insn.is_requant,
                                 check_address(m, x_addr, acc_aw, insn.regions[0], "xa"),
                                 check_address(m, x_addr, spad_aw, insn.regions[0], "xs")))
        y_err = check_address(m, y_addr, spad_aw, insn.regions[1], "y")
        z_err = check_address(m, z_addr, spad_aw, insn.regions[2], "z")
        err = Signal(ErrorCode)
        with m.If(x_err != ErrorCode.NONE):
            m.d.comb += err.eq(x_err)
        with m.Elif(insn.uses_y & (y_err != ErrorCode.NONE)):
            m.d.comb += err.eq(y_err)
        with m.Else():
            m.d.comb += err.eq(z_err)
        return err

    def _issue(self, m: Module, insn: _Insn, loops, err) -> Signal:
        """Cycle 0: issue the current iteration when its addresses are good; read
        the source rows and the shift-table entry."""
        x_addr, y_addr = loops.addr[0], loops.addr[1]
        go = Signal()
        issue = Signal()
        y_phase = Signal()           # paired operands: x was read last cycle
        m.d.comb += [
            go.eq(loops.valid & (err == ErrorCode.NONE) & ~self.ctrl.abort),
            issue.eq(go & (~insn.paired | y_phase)),
            loops.advance.eq(issue),
            self.acc_rd.addr.eq(x_addr), self.acc_rd.en.eq(issue & insn.is_requant),
            self.spad_rd_x.addr.eq(x_addr),
            self.spad_rd_x.en.eq(go & ~insn.is_requant & ~y_phase),
            self.spad_rd_y.addr.eq(y_addr), self.spad_rd_y.en.eq(issue & insn.uses_y),
            self.table_rd.addr.eq(insn.rparams.table), self.table_rd.en.eq(issue & insn.is_requant),
        ]
        with m.If(self.ctrl.start):
            m.d.sync += y_phase.eq(0)
        with m.Elif(go & insn.paired):
            m.d.sync += y_phase.eq(~y_phase)
        return issue, y_phase

    def _read_rows(self, m: Module, insn: _Insn, y_phase) -> _Rows:
        """The read data of the scratchpad, accumulator and table ports, registered;
        paired, ``x`` as it came a cycle before ``y``."""
        x_held = Signal.like(self.spad_rd_x.data.as_value(), name="x_held")
        with m.If(y_phase):
            m.d.sync += x_held.eq(self.spad_rd_x.data)
        x = Signal(spad_row(self._cfg), name="x_data")
        m.d.comb += x.eq(Mux(insn.paired, x_held, self.spad_rd_x.data.as_value()))
        ports = (("x", x), ("y", self.spad_rd_y.data), ("acc", self.acc_rd.data),
                 ("table", self.table_rd.data))
        return _Rows(*(delay(m, data, self._stages.vector_read, f"{name}_row")
                       for name, data in ports))

    def _operands(self, m: Module, insn: _Insn, rows: _Rows, ops, valid) -> None:
        """Cycle 1 + vector_read: the requantizer's mode and the operands of every
        lane, from the registered ``rows``."""
        L, C = self._cfg.lanes, self._cfg.cols
        rparams, aparams, op_max = insn.rparams, insn.aparams, insn.op_max
        mparams = insn.mparams
        m.d.comb += [
            ops.valid.eq(valid),
            ops.op_max.eq(op_max | insn.op_lut),
            ops.op_lookup.eq(insn.op_lut),
            ops.relu.eq(Mux(insn.is_requant, rparams.relu,
                            Mux(insn.op_mul, mparams.relu, aparams.relu & ~op_max))),
            ops.out_signed.eq(Mux(insn.is_requant, rparams.out_signed,
                                  Mux(insn.op_mul, mparams.out_signed, aparams.out_signed))),
        ]
        x_row = rows.x.as_value()
        y_row = rows.y.as_value()
        residual = Signal(8 * C)
        m.d.comb += residual.eq(y_row.word_select(rparams.lane, 8 * C) if L > C else y_row)
        b_signed = Mux(op_max, aparams.a_signed, aparams.b_signed)
        for i in range(L):
            with m.If(insn.is_requant):
                if i < C:
                    m.d.comb += self._requant_lane(insn, rows, ops.lane[i], i,
                                                   residual[8 * i:8 * i + 8])
            if self._cfg.lane_multipliers:
                with m.Elif(insn.op_mul):
                    m.d.comb += self._mul_lane(insn, ops.lane[i], x_row[8 * i:8 * i + 8],
                                               y_row[8 * i:8 * i + 8])
            with m.Else():
                m.d.comb += self._alu_lane(insn, ops.lane[i], x_row[8 * i:8 * i + 8],
                                           y_row[8 * i:8 * i + 8], b_signed)

    @staticmethod
    def _requant_lane(insn: _Insn, rows: _Rows, ln, i: int, rb) -> list:
        """REQUANT's column ``i``: the accumulator, the residual byte ``rb`` (or 0),
        and the shift and alignment of the column's table entry."""
        rparams = insn.rparams
        entry = rows.table[i]
        return [
            ln.a.eq(rows.acc[i]),
            ln.b.eq(Mux(rparams.residual,
                        Mux(rparams.res_signed, rb.as_signed(), rb.as_unsigned()), 0)),
            ln.a_shift.eq(Mux(entry.align < 0, -entry.align, 0)),
            ln.b_shift.eq(Mux(entry.align > 0, entry.align, 0)),
            ln.shift.eq(entry.shift),
        ]

    def _alu_lane(self, insn: _Insn, ln, xb, yb, b_signed) -> list:
        """ADD's or MAX's byte lane: bytes ``xb`` and ``yb`` extended by their
        signedness, the instruction's scalar shifts (none for MAX)."""
        aparams, op_max = insn.aparams, insn.op_max
        return [
            ln.a.eq(Mux(aparams.a_signed, xb.as_signed(), xb.as_unsigned())),
            ln.b.eq(Mux(b_signed, yb.as_signed(), yb.as_unsigned())),
            ln.a_shift.eq(Mux(op_max, 0, aparams.a_shift)),
            ln.b_shift.eq(Mux(op_max, 0, aparams.b_shift)),
            ln.shift.eq(Mux(op_max, 0, aparams.shift)),
        ]

    def _mul_lane(self, insn: _Insn, ln, xb, yb) -> list:
        """MUL's byte lane: the exact product of the bytes ``xb`` and ``yb`` (each
        extended by its signedness; at most 17 bits), requantized by the scalar shift."""
        mparams = insn.mparams
        a = Mux(mparams.a_signed, xb.as_signed(), xb.as_unsigned())
        b = Mux(mparams.b_signed, yb.as_signed(), yb.as_unsigned())
        return [ln.a.eq(a * b), ln.b.eq(0), ln.a_shift.eq(0), ln.b_shift.eq(0),
                ln.shift.eq(mparams.shift)]

    def _lookup(self, m: Module, insn: _Insn, rows: _Rows, lookup, valid) -> None:
        """Cycle 1 + vector_read: every scratchpad byte addresses its lane's copy of
        table ``table``; the bytes reach the requantizer's ``lookup`` the cycle after
        its operands, as it expects."""
        x_row = rows.x.as_value()
        for i, port in enumerate(self.lut_rd):
            m.d.comb += [port.addr.eq(Cat(x_row[8 * i:8 * i + 8], insn.lparams.table)),
                         port.en.eq(valid & insn.op_lut),
                         lookup[i].eq(delay(m, port.data, self._stages.vector_operands,
                                            f"looked_up{i}"))]

    def _write_back(self, m: Module, insn: _Insn, result, wb) -> None:
        """After the requantizer: write ``result`` at ``wb.addr``, REQUANT only into
        the ``cols`` bytes of its lane."""
        L, C = self._cfg.lanes, self._cfg.cols
        groups = self._cfg.requant_lanes
        lane_en = Signal(L)
        m.d.comb += lane_en.eq(Mux(insn.is_requant,
                                   Const((1 << C) - 1, L) << (insn.rparams.lane * C) if groups > 1
                                   else (1 << C) - 1,
                                   (1 << L) - 1))
        m.d.comb += [self.spad_wr.addr.eq(wb.addr),
                     self.spad_wr.en.eq(Mux(wb.valid, lane_en, 0))]
        for i in range(L):
            # REQUANT's column j lands in byte lane*cols + j: replicate the columns
            # across the row and let the lane enables pick the group.
            src = Mux(insn.is_requant, result[i % C], result[i])
            m.d.comb += self.spad_wr.data[i].eq(src)

    def _report(self, m: Module, insn: _Insn, active, busy, err, pc) -> None:
        """Status to the controller: the memories read while the loops run, the
        scratchpad region written until the pipeline drains."""
        regions = insn.regions
        y_bits = Mux(insn.uses_y, mem_bits(Mem.SPAD, regions[1]), 0)
        x_bits = Mux(insn.is_requant, mem_bits(Mem.ACC, regions[0]) | (1 << TABLE_BIT),
                     mem_bits(Mem.SPAD, regions[0]))
        ports = (Mux(insn.uses_y, port_bits(Mem.SPAD, regions[1]), 0)
                 | Mux(insn.is_requant, port_bits(Mem.ACC, regions[0]), port_bits(Mem.SPAD, regions[0])))
        # The tables are read a cycle after the loops issue: held until the drain.
        lut_bits = Mux(busy & insn.op_lut, 1 << LUT_BIT, 0)
        report(m, self.ctrl, ready=~busy, busy=busy,
               reads=Mux(active, x_bits | y_bits, 0) | lut_bits,
               writes=Mux(busy, mem_bits(Mem.SPAD, regions[2]), 0) | Mux(active, ports, 0),
               error=err, pc=pc, active=active)

