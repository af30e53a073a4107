"""The controller: fetch, decode, hazard check, in-order dispatch, status and
performance counters.

One decoded instruction waits in ``cur``. It is dispatched to its unit in the cycle
the unit is ready and none of the resources it declares (region masks, weight
bank) conflicts with what another unit still reads or writes; the next instruction
is taken from the stream in the same cycle, so dispatch sustains one instruction a
cycle. HALT and SYNC wait for every unit to go idle. A decode error (illegal opcode,
bad field) or a unit's address error latches ``error``/``error_pc``, aborts every
unit and stops fetching: the core never hangs and never writes past a fault.
"""

import functools
import operator

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from fxpgen.config import CoreConfig
from fxpgen.isa import FIELD_RULES, INSN_BITS, CoreState, ErrorCode, Insn, Opcode, field_rules

from .unit_port import PC_WIDTH, UnitControl
from .hazards import insn_footprint

__all__ = ["Controller", "UNITS", "UNIT_OF", "bad_field"]

#: Execution units, in error-priority order.
UNITS = ("load", "store", "loadw", "matmul", "vector")
UNIT_OF = {
    Opcode.LOAD: "load", Opcode.STORE: "store", Opcode.LOADW: "loadw",
    Opcode.MATMUL: "matmul", Opcode.REQUANT: "vector", Opcode.ADD: "vector", Opcode.MAX: "vector",
    Opcode.LUT: "vector", Opcode.MUL: "vector",
}
COUNTERS = ("cycles", "mac_cycles", "stall_dispatch", "stall_data", "stall_result", "insns")


def bad_field(m: Module, cur, cfg: CoreConfig) -> Value:
    """Whether the decoded instruction view ``cur`` breaks a field rule of its opcode on
    core ``cfg`` (:data:`~fxpgen.isa.FIELD_RULES`); combinational logic added to ``m``."""
    bad = Signal()
    with m.Switch(cur.opcode):
        for op in dict.fromkeys(r.opcode for r in FIELD_RULES):
            with m.Case(op):
                broken = (r.broken_expr(cur, cfg) for r in field_rules(op))
                m.d.comb += bad.eq(functools.reduce(operator.or_, broken))
    return bad


class Controller(wiring.Component):
    def __init__(self, cfg: CoreConfig):
        self._cfg = cfg
        members = {
            "insn": In(stream.Signature(unsigned(INSN_BITS))),
            "state": Out(CoreState),
            "error": Out(ErrorCode),
            "error_pc": Out(PC_WIDTH),
            "mac_issue": In(1),
            "stall_data": In(1),
            "stall_result": In(1),
        }
        for u in UNITS:
            members[u] = Out(UnitControl())
        for c in COUNTERS:
            members[f"count_{c}"] = Out(cfg.counter_width)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        units = {u: getattr(self, u) for u in UNITS}

        cur = Signal(Insn)
        cur_valid = Signal()
        cur_pc = Signal(PC_WIDTH)
        next_pc = Signal(PC_WIDTH)
        running = self.state == CoreState.RUNNING
        errored = self.state == CoreState.ERROR

        legal = Signal()
        m.d.comb += legal.eq(cur.opcode.matches(*(op.value for op in Opcode)))
        bad = bad_field(m, cur, self._cfg)
        reads, writes = insn_footprint(m, cur)

        all_idle = Signal()
        m.d.comb += all_idle.eq(Cat(*(u.busy for u in units.values())) == 0)

        dispatch = Signal()
        halting = Signal()
        for name, u in units.items():
            m.d.comb += [u.insn.eq(cur), u.pc.eq(cur_pc), u.abort.eq(errored)]
            ops = [op.value for op, un in UNIT_OF.items() if un == name]
            # A unit's own in-flight work is ordered by its pipeline (only the matmul
            # unit accepts while busy), so only the other units can conflict.
            others = [o for o in units.values() if o is not u]
            busy_w = Signal.like(writes, name=f"busy_w_{name}")
            busy_r = Signal.like(reads, name=f"busy_r_{name}")
            w_expr, r_expr = Const(0, len(writes)), Const(0, len(reads))
            for o in others:
                w_expr, r_expr = w_expr | o.writes, r_expr | o.reads
            m.d.comb += [busy_w.eq(w_expr), busy_r.eq(r_expr)]
            conflict = ((writes & (busy_r | busy_w)) | (reads & busy_w)) != 0
            go = cur_valid & cur.opcode.matches(*ops) & ~bad & u.ready & ~conflict & ~errored
            m.d.comb += u.start.eq(go)
            with m.If(go):
                m.d.comb += dispatch.eq(1)
        with m.If(cur_valid & cur.opcode.matches(Opcode.HALT, Opcode.SYNC) & all_idle & ~errored):
            m.d.comb += dispatch.eq(1)
            m.d.comb += halting.eq(cur.opcode == Opcode.HALT)

        # Fetch: refill ``cur`` when it is empty or leaving; not in the cycle a HALT
        # completes, so HALTED is visible for at least one cycle.
        decode_error = cur_valid & (~legal | bad)
        m.d.comb += self.insn.ready.eq((~cur_valid | dispatch) & ~halting & ~errored & ~decode_error)
        accept = self.insn.valid & self.insn.ready
        with m.If(accept):
            m.d.sync += [cur.eq(self.insn.payload), cur_valid.eq(1), cur_pc.eq(next_pc),
                         next_pc.eq(next_pc + 1)]
        with m.Elif(dispatch):
            m.d.sync += cur_valid.eq(0)

        # Errors: decode first, then units in priority order; the first one sticks.
        err_code = Signal(ErrorCode)
        err_pc = Signal(PC_WIDTH)
        with m.If(decode_error):
            m.d.comb += [err_code.eq(Mux(legal, ErrorCode.BAD_FIELD, ErrorCode.ILLEGAL_OPCODE)),
                         err_pc.eq(cur_pc)]
        for u in units.values():
            with m.Elif(u.error != ErrorCode.NONE):
                m.d.comb += [err_code.eq(u.error), err_pc.eq(u.error_pc)]

        counters = {c: getattr(self, f"count_{c}") for c in COUNTERS}
        with m.If(~errored & (err_code != ErrorCode.NONE)):
            m.d.sync += [self.state.eq(CoreState.ERROR), self.error.eq(err_code),
                         self.error_pc.eq(err_pc)]
        with m.Elif(halting):
            m.d.sync += self.state.eq(CoreState.HALTED)
        with m.Elif(accept & ~running):
            m.d.sync += self.state.eq(CoreState.RUNNING)
            m.d.sync += [c.eq(0) for c in counters.values()]

        # Each counter adds one under an enable, so the late conditions (dispatch
        # above all) drive only the flip-flops' enables, not an adder's carry in.
        counts = {"cycles": 1, "mac_cycles": self.mac_issue, "stall_dispatch": cur_valid & ~dispatch,
                  "stall_data": self.stall_data, "stall_result": self.stall_result, "insns": dispatch}
        for name, when in counts.items():
            with m.If(running & when):
                m.d.sync += counters[name].eq(counters[name] + 1)
        return m
