"""A harness whose free inputs are every input of the design under proof."""

from __future__ import annotations

from typing import Callable

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from .observe import elaborate_observed

__all__ = ["FreeInputs", "Rewired", "member", "port_name"]


def member(component, path: tuple):
    """The port of ``component`` at a flattened signature ``path``."""
    value = component
    for name in path:
        value = value[name] if isinstance(name, int) else getattr(value, name)
    return value


def port_name(path: tuple) -> str:
    """The harness port that drives the design's input at ``path``."""
    return "__".join(str(p) for p in path)


class FreeInputs(wiring.Component):
    """Base of the harnesses that drive every input of ``make_dut()`` from a port
    of their own (``ctrl__start`` for ``ctrl.start``), so the solver picks each on
    every cycle. Subclasses call :meth:`drive` in ``elaborate``."""

    def __init__(self, make_dut: Callable[[], wiring.Component]):
        self._dut = make_dut()
        super().__init__({port_name(path): In(value.shape())
                          for path, port, value in self._dut.signature.flatten(self._dut)
                          if port.flow == In})

    @property
    def dut(self) -> wiring.Component:
        return self._dut

    def drive(self, m: Module, observe: bool = False):
        """Add the design to ``m`` with its inputs driven; returns it, or with
        ``observe`` ``(design, signals)``: the signals it drives, by name
        (:func:`~.observe.elaborate_observed`)."""
        dut = self._dut
        if observe:
            m.submodules.dut, signals = elaborate_observed(dut)
        else:
            m.submodules.dut = dut
        for path, port, value in dut.signature.flatten(dut):
            if port.flow == In:
                m.d.comb += value.eq(getattr(self, port_name(path)))
        return (dut, signals) if observe else dut


class Rewired(wiring.Component):
    """A mutant: ``inner`` behind a wrapper with its signature, every port passed
    through except those in ``tamper`` (flattened path -> function of the value
    passed through, giving the value that replaces it)."""

    def __init__(self, inner: wiring.Component, tamper: dict):
        self._inner, self._tamper = inner, tamper
        super().__init__(inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self._inner
        for path, port, value in self.signature.flatten(self):
            inner_value = member(inner, path)
            change = self._tamper.get(path, lambda v: v)
            if port.flow == In:
                m.d.comb += inner_value.eq(change(value))
            else:
                m.d.comb += value.eq(change(inner_value))
        return m
