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

__all__ = ["UnitControl", "PC_WIDTH"]

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
