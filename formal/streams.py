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
and ``data`` streams; the frame receiver's ``reply`` asks the frame sender for
ACK, NAK, STATUS and INFO frames.
"""

from __future__ import annotations

from typing import Callable

from amaranth import *
from amaranth.hdl import Assert
from amaranth.lib import wiring

from fxpgen.boards.bridge import FrameReceiver, WordBuffer
from fxpgen.config import CoreConfig
from fxpgen.hw.store import StoreUnit

from .free import FreeInputs, Rewired, member

__all__ = ["StreamRuleHarness", "ready_blind", "STORE_CONFIG", "store_harness", "word_buffer_harness",
           "ReplyOverwritingReceiver", "reply_harness"]

#: A small core for the store unit: 2x2 lanes, shallow memories.
STORE_CONFIG = CoreConfig(rows=2, cols=2, acc_width=20, spad_depth=16, wbuf_depth=8,
                          acc_depth=16, table_depth=3)


def ready_blind(inner: wiring.Component, stream: str) -> Rewired:
    """Mutant: ``inner`` told every word of ``stream`` is taken, whatever the
    consumer's ``ready`` says."""
    return Rewired(inner, {(stream, "ready"): lambda ready: C(1)})


class StreamRuleHarness(FreeInputs):
    """Every input of ``make_dut()`` free; the rule asserted on ``streams`` (output
    stream names) unless the input at path ``exempt`` is high."""

    def __init__(self, make_dut: Callable[[], wiring.Component], streams: tuple[str, ...],
                 exempt: tuple | None = None):
        super().__init__(make_dut)
        self._streams, self._exempt = streams, exempt

    def elaborate(self, platform):
        m = Module()
        dut = self.drive(m)
        exempt = member(dut, self._exempt) if self._exempt else C(0)
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
        return ready_blind(unit, "result") if mutant else unit
    return StreamRuleHarness(make, ("result",), ("ctrl", "abort"))


def word_buffer_harness(mutant: bool = False) -> StreamRuleHarness:
    """The rule on a bridge word buffer's ``out`` (the core's insn and data streams
    come from two of them): 8 bytes deep, 2-byte words."""
    def make():
        buffer = WordBuffer(8, 2, 16)
        return ready_blind(buffer, "out") if mutant else buffer
    return StreamRuleHarness(make, ("out",), ("clear",))


class ReplyOverwritingReceiver(FrameReceiver):
    """Mutant: the receiver puts every reply on ``reply`` at once, replacing one
    the sender has not taken yet (the bridge before its REPLY state)."""

    def _reply(self, m, f, rtype, rreason=0):
        m.d.sync += self._offer(f, rtype, rreason)
        m.next = "SYNC"


def reply_harness(mutant: bool = False) -> StreamRuleHarness:
    """The rule on the frame receiver's ``reply`` stream: timeout 3 cycles, two
    16-byte buffers of 2-byte words (as the ``bridge`` proof)."""
    cls = ReplyOverwritingReceiver if mutant else FrameReceiver
    return StreamRuleHarness(lambda: cls(3, (2, 2), (16, 16), has_rom=False), ("reply",))
