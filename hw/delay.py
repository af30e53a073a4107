"""Delay lines: a value through a chain of registers, the pipeline stages that cut
the long paths of the core (block RAM outputs, multipliers, adders)."""

from amaranth import *

__all__ = ["delay"]


def delay(m: Module, value, cycles: int, name: str):
    """``value`` (a value or a view) through ``cycles`` registers in ``m``'s sync
    domain, named ``name`` (``name_d0``, ``name_d1``... for more than one)."""
    for k in range(cycles):
        reg = Signal.like(value, name=f"{name}_d{k}" if cycles > 1 else name)
        m.d.sync += reg.eq(value)
        value = reg
    return value
