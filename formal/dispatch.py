"""Proof 7 (hazard safety, the controller's part): two units never write the same
memory region or weight bank at the same time, and no unit reads a region another
unit is still writing.

:class:`DispatchHarness` drives the :class:`~fxpgen.hw.controller.Controller`
with a free instruction stream and replaces every unit by its proven contract
(:mod:`.contract`): each unit's ``ready``, ``busy``, ``error`` and reported masks
are free, except that the masks stay inside what the contract allows. It asserts,
on every cycle:

- for every two units, one's write mask meets neither the other's read nor its
  write mask (with the unit proofs, ``memory-*``, that every access lies inside
  the reported masks, this is the hazard rule on the memories and banks
  themselves);
- the controller's side of the contract: a unit is started only when ready, with
  an instruction of its own opcodes whose fields are legal, one unit a cycle;
- the invariant that closes the induction: the masks the contract allows two
  units never conflict either.
"""

from __future__ import annotations

from itertools import combinations
from unittest.mock import patch

from amaranth import *
from amaranth.hdl import Assert, Assume

import fxpgen.hw.controller as controller_module
from fxpgen.config import CoreConfig
from fxpgen.hw.controller import UNITS, Controller
from fxpgen.hw.hazards import BANK_BASE, insn_footprint

from .contract import allowed_masks, controller_guarantee, within
from .free import FreeInputs

__all__ = ["DispatchHarness", "BankBlindController", "DISPATCH_CONFIG"]

#: The controller's only use of the configuration is the field rules and the
#: counters: a small core, the narrowest counters.
DISPATCH_CONFIG = CoreConfig(rows=2, cols=2, acc_width=20, spad_depth=16, wbuf_depth=8,
                             acc_depth=16, table_depth=3, counter_width=16)


def _conflict(reads_a, writes_a, reads_b, writes_b) -> Value:
    return ((writes_a & (reads_b | writes_b)) | (writes_b & reads_a)) != 0


class BankBlindController(Controller):
    """Mutant: the controller's hazard check leaves the weight banks out of the
    write mask of the instruction it dispatches (a LOADW may refill a bank the
    MATMUL unit still reads)."""

    def elaborate(self, platform):
        def blind(m, insn, name="fp"):
            reads, writes = insn_footprint(m, insn, name)
            return reads, writes & ~(0b11 << BANK_BASE)
        with patch.object(controller_module, "insn_footprint", blind):
            return super().elaborate(platform)


class DispatchHarness(FreeInputs):
    """A controller (``controller_class``, on :data:`DISPATCH_CONFIG`) with free
    inputs and its units replaced by their contracts; see the module doc."""

    def __init__(self, controller_class: type[Controller] = Controller):
        super().__init__(lambda: controller_class(DISPATCH_CONFIG))

    def elaborate(self, platform):
        m = Module()
        ctl = self.drive(m)
        units = {u: getattr(ctl, u) for u in UNITS}
        allowed = {}
        for name, c in units.items():
            allowed[name] = allowed_masks(m, c, name)
            m.d.comb += [Assume(within(c.reads, allowed[name][0])),
                         Assume(within(c.writes, allowed[name][1])),
                         Assert(controller_guarantee(m, c, name, DISPATCH_CONFIG),
                                f"{name}: started only when ready, with its own legal instruction")]
        starts = Cat(*(c.start for c in units.values()))
        m.d.comb += Assert((starts & (starts - 1)) == 0, "one unit started a cycle")
        for a, b in combinations(UNITS, 2):
            ca, cb = units[a], units[b]
            m.d.comb += [
                Assert(~_conflict(ca.reads, ca.writes, cb.reads, cb.writes),
                       f"{a} and {b}: no region or bank written by one is read or written by the other"),
                Assert(~_conflict(*allowed[a], *allowed[b]), f"{a} and {b}: allowed masks disjoint"),
            ]
        return m
