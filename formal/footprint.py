"""Proof 6 (hazard safety, the units' part): every memory access of a unit lies
inside the footprint it reports to the controller.

The controller dispatches an instruction only when its read and write masks
(:mod:`fxpgen.hw.hazards`: a bit per memory region) do not conflict with what the
busy units report; that is safe only if each unit really confines its accesses to
the masks it reports. :class:`FootprintHarness` drives every input of a unit
freely and asserts, on every cycle, that each enabled memory port's region (the
top two bits of its address; the table is one resource) has its bit set in the
unit's ``ctrl.reads`` (read ports) or ``ctrl.writes`` (write ports).

Proven for the STORE, LOAD and LOADW units with no assumption on their inputs.
:mod:`.memory` proves the same of every unit, the MATMUL and vector units
included, started as the controller starts it, together with memory safety and
the unit's half of the contract with the controller.
"""

from __future__ import annotations

from amaranth import *
from amaranth.hdl import Assert

from fxpgen.config import CoreConfig
from fxpgen.hw.hazards import MEM_BASE, TABLE_BIT, mem_bits
from fxpgen.hw.load import LoadUnit
from fxpgen.hw.loadw import WeightLoader
from fxpgen.hw.store import StoreUnit
from fxpgen.isa import Mem

from .free import FreeInputs, Rewired

__all__ = ["FootprintHarness", "UNITS", "FOOTPRINT_CONFIG", "mask_blind"]

#: A small core: 2x2 lanes, shallow memories.
FOOTPRINT_CONFIG = CoreConfig(rows=2, cols=2, acc_width=20, spad_depth=16, wbuf_depth=8,
                              acc_depth=16, table_depth=3)

#: Per unit: how to build it for a configuration, and its memory ports with the
#: memory each reaches and how.
UNITS = {
    "store": (StoreUnit, {"spad_rd": (Mem.SPAD, "r"), "acc_rd": (Mem.ACC, "r")}),
    "loadw": (WeightLoader, {"wbuf_rd": (Mem.WBUF, "r")}),
    "load": (LoadUnit, {"spad_wr": (Mem.SPAD, "w"), "wbuf_wr": (Mem.WBUF, "w"),
                        "acc_wr": (Mem.ACC, "w"), "table_wr": (Mem.TABLE, "w")}),
}


def mask_blind(unit, mem: Mem, access: str) -> Rewired:
    """Mutant: ``unit`` leaving ``mem`` out of the footprint it reports for
    ``access`` ("r" or "w")."""
    path = ("ctrl", "reads" if access == "r" else "writes")
    return Rewired(unit, {path: lambda mask: mask & ~mem_bits(mem, 0b1111)})


class FootprintHarness(FreeInputs):
    """Every input of the unit ``name`` of :data:`UNITS` (on
    :data:`FOOTPRINT_CONFIG`) free; each enabled memory port asserted inside the
    reported masks. ``mutant``: the unit's first port's memory left out of its
    mask (:func:`mask_blind`)."""

    def __init__(self, name: str, mutant: bool = False):
        build, self._ports = UNITS[name]
        mem, access = next(iter(self._ports.values()))

        def make():
            unit = build(FOOTPRINT_CONFIG)
            return mask_blind(unit, mem, access) if mutant else unit
        super().__init__(make)

    def elaborate(self, platform):
        m = Module()
        unit = self.drive(m)
        for name, (mem, access) in self._ports.items():
            port = getattr(unit, name)
            mask = unit.ctrl.reads if access == "r" else unit.ctrl.writes
            if mem is Mem.TABLE:
                bit = Const(TABLE_BIT)
            else:
                bit = MEM_BASE[mem] + (port.addr >> (len(port.addr) - 2))
            m.d.comb += Assert(~Value.cast(port.en).any() | mask.bit_select(bit, 1),
                               f"{name}: access inside the reported footprint")
        return m

