"""The contract between the controller and a unit, in both directions; the
``dispatch`` proof assumes each half its unit proofs assert, and asserts the half
the unit proofs assume.

A unit's reported masks (``reads``, ``writes``: :mod:`fxpgen.hw.hazards`) only
shrink, except that a ``start`` may add the footprint of the instruction it starts
(:func:`~fxpgen.hw.hazards.insn_footprint` of ``insn``), from the next cycle on:
``mask(t + 1) <= mask(t) | (start(t) ? footprint(insn(t)) : 0)``, and every mask is
empty after a reset. :func:`allowed_masks` keeps the right side in registers.

The controller, in turn, starts a unit only when the unit is ``ready``, only with
an instruction of the unit's opcodes whose fields are legal on the core
(:func:`controller_guarantee`), and one unit a cycle.
"""

from __future__ import annotations

from amaranth import *
from amaranth.hdl import Assert, Assume

from fxpgen.config import CoreConfig
from fxpgen.hw.controller import UNIT_OF, bad_field
from fxpgen.hw.hazards import HAZARD_BITS, insn_footprint

from .free import FreeInputs

__all__ = ["allowed_masks", "within", "controller_guarantee", "ContractHarness"]


def allowed_masks(m: Module, ctrl, name: str) -> tuple[Signal, Signal]:
    """``(reads, writes)``: registers holding, on every cycle, the widest masks the
    contract lets the unit behind ``ctrl`` (a :class:`~fxpgen.hw.unit_port.UnitControl`
    seen from either side) report."""
    fp_reads, fp_writes = insn_footprint(m, ctrl.insn, name=f"{name}_fp")
    reads = Signal(HAZARD_BITS, name=f"{name}_allowed_reads")
    writes = Signal(HAZARD_BITS, name=f"{name}_allowed_writes")
    m.d.sync += [reads.eq(ctrl.reads | Mux(ctrl.start, fp_reads, 0)),
                 writes.eq(ctrl.writes | Mux(ctrl.start, fp_writes, 0))]
    return reads, writes


def within(mask, allowed) -> Value:
    """Whether every bit of ``mask`` is set in ``allowed``."""
    return (mask & ~allowed) == 0


def controller_guarantee(m: Module, ctrl, unit: str, cfg: CoreConfig) -> Value:
    """Whether this cycle's ``start`` of the unit ``unit`` (a name of
    :data:`~fxpgen.hw.controller.UNITS`) keeps the controller's side: no start, or a
    start of a ready unit with one of its opcodes and legal fields on ``cfg``."""
    ops = [op.value for op, u in UNIT_OF.items() if u == unit]
    legal = ctrl.insn.opcode.matches(*ops) & ~bad_field(m, ctrl.insn, cfg)
    return ~ctrl.start | (ctrl.ready & legal)


class ContractHarness(FreeInputs):
    """The unit's half of the contract, proven: every input of the unit ``name``
    (built by ``make``, on ``cfg``) free, its starts as the controller makes them
    (assumed: :func:`controller_guarantee`), and its reported masks asserted inside
    :func:`allowed_masks` on every cycle. Subclasses add further properties in
    :meth:`properties`."""

    def __init__(self, name: str, make, cfg: CoreConfig):
        self._name, self._cfg = name, cfg
        super().__init__(lambda: make(cfg))

    def elaborate(self, platform):
        m = Module()
        dut, signals = self.drive(m, observe=True)
        ctrl = dut.ctrl
        m.d.comb += Assume(controller_guarantee(m, ctrl, self._name, self._cfg))
        reads, writes = allowed_masks(m, ctrl, self._name)
        m.d.comb += [Assert(within(ctrl.reads, reads), "reads inside the started instructions' footprints"),
                     Assert(within(ctrl.writes, writes), "writes inside the started instructions' footprints")]
        self.properties(m, dut, signals)
        return m

    def properties(self, m: Module, dut, signals: dict) -> None:
        """Assertions beyond the contract (none here)."""
