"""The interface between the controller and each execution unit.

The controller presents a decoded instruction on ``insn``/``pc`` and pulses
``start`` when the unit is ``ready`` and no hazard blocks it. A unit reports the
resources it still reads and writes (``reads``/``writes``, see
:mod:`fxpgen.hw.hazards`), whether it has work in flight (``busy``), and an error
code with the faulting instruction's ``pc``; ``abort`` stops it for good.
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from fxpgen.isa import ErrorCode, Insn

from .hazards import HAZARD_BITS

__all__ = ["UnitControl", "PC_WIDTH", "unit_loops", "report"]

PC_WIDTH = 32


class UnitControl(wiring.Signature):
    """Seen from the controller: ``start``/``insn``/``pc``/``abort`` go out."""

    def __init__(self):
        super().__init__({
            "start": Out(1),
            "insn": Out(Insn),
            "pc": Out(PC_WIDTH),
            "abort": Out(1),
            "ready": In(1),
            "busy": In(1),
            "reads": In(HAZARD_BITS),
            "writes": In(HAZARD_BITS),
            "error": In(ErrorCode),
            "error_pc": In(PC_WIDTH),
        })


def unit_loops(m: Module, ctrl, streams: tuple[str, ...], cfg):
    """The address loops of a unit, started by ``ctrl.start`` with the instruction's
    counts and the named address streams; also the latched ``pc`` of the
    instruction. Returns ``(loops, pc)``."""
    from .addrgen import AddressLoops, loop_addr_bits
    m.submodules.loops = loops = AddressLoops(len(streams), loop_addr_bits(cfg))
    m.d.comb += [
        loops.start.eq(ctrl.start),
        loops.count0.eq(ctrl.insn.count0),
        loops.count1.eq(ctrl.insn.count1),
    ]
    for k, s in enumerate(streams):
        m.d.comb += loops.gens[k].eq(getattr(ctrl.insn, s))
    pc = Signal(PC_WIDTH, name="pc")
    with m.If(ctrl.start):
        m.d.sync += pc.eq(ctrl.pc)
    return loops, pc


def report(m: Module, ctrl, *, ready, busy, reads, writes, error, pc, active):
    """Drive a unit's status towards the controller; ``error`` counts only while
    the loops are ``active`` and the unit is not aborted."""
    m.d.comb += [
        ctrl.ready.eq(ready),
        ctrl.busy.eq(busy),
        ctrl.reads.eq(reads),
        ctrl.writes.eq(writes),
        ctrl.error.eq(Mux(active & ~ctrl.abort, error, ErrorCode.NONE)),
        ctrl.error_pc.eq(pc),
    ]
