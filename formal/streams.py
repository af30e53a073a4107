"""Proof 4: the stream rules on output streams.

On an output stream, once ``valid`` is raised it stays high, with the same
``payload``, until the cycle ``ready`` takes the word. :class:`StreamRuleHarness`
drives every input of a component freely (its memories' read data, its control,
the streams' ``ready``) and asserts the rule on the named output streams on every
cycle; ``exempt`` names an input that may legitimately drop a word, on the cycle
it is high or the next (a unit's ``ctrl.abort`` stops it for good; a buffer's
``clear`` empties it). A reset also restarts the rule.

The store unit's ``result`` is the core's output stream (``core.result``); the
core only wires it through. The bridge's word buffers drive the core's ``insn``
and ``data`` streams.
"""

from __future__ import annotations

from typing import Callable

from amaranth import *
from amaranth.hdl import Assert
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from fxpgen.boards.bridge import WordBuffer
from fxpgen.config import CoreConfig
from fxpgen.hw.store import StoreUnit

__all__ = ["StreamRuleHarness", "ReadyBlind", "STORE_CONFIG", "store_harness", "word_buffer_harness"]

#: A small core for the store unit: 2x2 lanes, shallow memories.
STORE_CONFIG = CoreConfig(rows=2, cols=2, acc_width=20, spad_depth=16, wbuf_depth=8,
                          acc_depth=16, table_depth=3)


def _member(component, path: tuple):
    value = component
    for name in path:
        value = value[name] if isinstance(name, int) else getattr(value, name)
    return value


def _port_name(path: tuple) -> str:
    return "__".join(str(p) for p in path)


class ReadyBlind(wiring.Component):
    """Mutant: ``inner`` (a component) seen through a wrapper that tells it every
    word of ``stream`` is taken, whatever the consumer's ``ready`` says."""

    def __init__(self, inner, stream: str):
        self._inner, self._stream = inner, stream
        super().__init__(inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self._inner
        for path, member, value in self.signature.flatten(self):
            inner_value = _member(inner, path)
            if path == (self._stream, "ready"):
                m.d.comb += inner_value.eq(1)
            elif member.flow == In:
                m.d.comb += inner_value.eq(value)
            else:
                m.d.comb += value.eq(inner_value)
        return m


class StreamRuleHarness(wiring.Component):
    """Every input of ``make_dut()`` free; the rule asserted on ``streams`` (output
    stream names) unless the input at path ``exempt`` is high."""

    def __init__(self, make_dut: Callable[[], wiring.Component], streams: tuple[str, ...],
                 exempt: tuple | None = None):
        self._dut = make_dut()
        self._streams, self._exempt = streams, exempt
        inputs = {_port_name(path): In(value.shape())
                  for path, member, value in self._dut.signature.flatten(self._dut)
                  if member.flow == In}
        super().__init__(inputs)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self._dut
        for path, member, value in dut.signature.flatten(dut):
            if member.flow == In:
                m.d.comb += value.eq(getattr(self, _port_name(path)))
        exempt = _member(dut, self._exempt) if self._exempt else C(0)
        # A synchronous input (a clear) drops the word a cycle later.
        was_exempt = Signal(name="was_exempt")
        m.d.sync += was_exempt.eq(exempt)
        exempt = exempt | was_exempt
        for name in self._streams:
            s = getattr(dut, name)
            stalled = Signal(name=f"{name}_stalled")
            held = Signal.like(s.payload, name=f"{name}_held")
            m.d.sync += [stalled.eq(s.valid & ~s.ready), held.eq(s.payload)]
            m.d.comb += Assert(~stalled | exempt | (s.valid & (Value.cast(s.payload) == Value.cast(held))),
                               f"{name}: a stalled word stays, unchanged")
        return m


def store_harness(mutant: bool = False) -> StreamRuleHarness:
    """The rule on the store unit's (the core's) result stream."""
    def make():
        unit = StoreUnit(STORE_CONFIG)
        return ReadyBlind(unit, "result") if mutant else unit
    return StreamRuleHarness(make, ("result",), ("ctrl", "abort"))


def word_buffer_harness(mutant: bool = False) -> StreamRuleHarness:
    """The rule on a bridge word buffer's ``out`` (the core's insn and data streams
    come from two of them): 8 bytes deep, 2-byte words."""
    def make():
        buffer = WordBuffer(8, 2, 16)
        return ReadyBlind(buffer, "out") if mutant else buffer
    return StreamRuleHarness(make, ("out",), ("clear",))
