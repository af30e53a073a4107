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
from amaranth.hdl import Assert, Assume
from amaranth.lib import wiring

from fxpgen.boards import protocol
from fxpgen.boards.bridge import _KINDS, FrameReceiver, FrameSender, WordBuffer
from fxpgen.boards.protocol import FrameType
from fxpgen.config import CoreConfig
from fxpgen.hw.store import StoreUnit

from .free import FreeInputs, Rewired, member

__all__ = ["StreamRuleHarness", "ready_blind", "STORE_CONFIG", "store_harness", "word_buffer_harness",
           "ReplyOverwritingReceiver", "reply_harness", "stream_rule", "SenderHarness"]

#: A small core for the store unit: 2x2 lanes, shallow memories.
STORE_CONFIG = CoreConfig(rows=2, cols=2, acc_width=20, spad_depth=16, wbuf_depth=8,
                          acc_depth=16, table_depth=3)


def stream_rule(m: Module, s, name: str) -> tuple[Signal, Value]:
    """``(stalled, kept)`` for the stream ``s``: whether its word was offered and not
    taken on the previous cycle, and whether the rule holds on this one (no stall,
    or the same word still offered)."""
    stalled = Signal(name=f"{name}_stalled")
    held = Signal.like(s.payload, name=f"{name}_held")
    m.d.sync += [stalled.eq(s.valid & ~s.ready), held.eq(s.payload)]
    return stalled, ~stalled | (s.valid & (Value.cast(s.payload) == Value.cast(held)))


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
            _, kept = stream_rule(m, getattr(dut, name), name)
            m.d.comb += Assert(kept | exempt, f"{name}: a stalled word stays, unchanged")
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


class SenderHarness(StreamRuleHarness):
    """The rule on the frame sender's ``tx`` (the bridge's byte stream to the UART)
    on a 2x2 core with 16-bit counters and 16-byte buffers, with every input free
    except two, which the sender reads live while a frame is sent:

    - ``result`` obeys the stream rule (as the ``streams`` proof shows the core's
      result stream does, except that a core error drops the word: the store
      unit's FIFO then still holds it, which is not proven);
    - ``counters`` do not change: the core's counters stand still from a HALT (or
      an error) until the next program starts. A STATUS frame sent while the core
      runs reads them live, and its counter bytes may change while ``tx`` stalls:
      the byte sent is the one taken, and its CRC is computed over that byte.

    ``mutant``: the sender told every byte is taken, whatever ``tx.ready`` says."""

    def __init__(self, mutant: bool = False):
        cfg = CoreConfig(rows=2, cols=2, acc_width=20, spad_depth=16, wbuf_depth=8,
                         acc_depth=16, table_depth=3, counter_width=16)
        self._cfg = cfg
        self._prefix = "inner." if mutant else ""

        def make():
            sender = FrameSender(cfg, protocol.info_payload(cfg, 16, 16, rom_insns=0), 16)
            return ready_blind(sender, "tx") if mutant else sender
        super().__init__(make, ("tx",))

    def elaborate(self, platform):
        m = Module()
        dut, signals = self.drive(m, observe=True)
        _, kept = stream_rule(m, dut.tx, "tx")
        m.d.comb += Assert(kept, "tx: a stalled byte stays, unchanged")
        result_stalled, result_kept = stream_rule(m, dut.result, "result")
        counters = Cat(*dut.counters)
        counted = Signal(name="counters_seen")
        held = Signal.like(counters, name="counters_held")
        m.d.sync += [counted.eq(1), held.eq(counters)]
        m.d.comb += [Assume(result_kept), Assume(~counted | (counters == held))]
        # Invariants: a frame ends after its CRC; a RESULT frame has its length and
        # holds the word it sends until its last payload byte.
        busy, kind, pos, length = (signals[self._prefix + k] for k in ("busy", "kind", "pos", "length"))
        result_frame = busy & (kind == _KINDS.index(FrameType.RESULT))
        m.d.comb += [
            Assert(~busy | (pos <= 6 + length), "a frame ends after its CRC"),
            Assert(~result_frame | (length == protocol.bus_bytes(self._cfg) + 1), "a RESULT frame's length"),
            Assert(~(result_frame & (pos <= 4 + length)) | result_stalled, "a RESULT frame's word is held"),
        ]
        return m
