"""A compiled program baked into the bitstream: instruction and constant-data ROMs
that feed the core on a RUN command, so the host only sends each input image.

The core's data stream in a compiled program is the constant words before the
image (``data_before``), the image's words, then the constant words after it
(``data_after``); see :mod:`fxpgen.compiler.program`. The sequencer passes the
image's words through from the UART bridge's data stream in between.
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from fxpgen.isa import INSN_BITS

__all__ = ["BakedProgram", "RomStream"]


class RomStream(wiring.Component):
    """Words ``init[start .. start + count)`` of a ROM out on ``out`` after ``start``
    pulses (``busy`` until the last word is taken)."""

    def __init__(self, width: int, words: list[int]):
        if not words:
            raise ValueError("a ROM needs at least one word")
        self._width, self._words = width, list(words)
        n = len(words)
        super().__init__({
            "start": In(1), "first": In(range(n + 1)), "count": In(range(n + 1)),
            "busy": Out(1),
            "out": Out(stream.Signature(width)),
        })

    def elaborate(self, platform):
        m = Module()
        n = len(self._words)
        m.submodules.mem = mem = Memory(shape=self._width, depth=n, init=self._words)
        rd = mem.read_port()
        addr, end = Signal(range(n + 1)), Signal(range(n + 1))
        take = ~self.out.valid | self.out.ready
        more = addr != end
        m.d.comb += [rd.addr.eq(addr), rd.en.eq(take), self.out.payload.eq(rd.data),
                     self.busy.eq(more | self.out.valid)]
        with m.If(self.start):
            m.d.sync += [addr.eq(self.first), end.eq(self.first + self.count), self.out.valid.eq(0)]
        with m.Elif(take):
            m.d.sync += self.out.valid.eq(more)
            with m.If(more):
                m.d.sync += addr.eq(addr + 1)
        return m


class BakedProgram(wiring.Component):
    """On ``run``: the baked instructions on ``insn``; on ``data`` the constant words
    before the image, ``n_input`` words passed through from ``input``, then the
    constant words after it. ``active`` until every instruction and word is taken."""

    def __init__(self, bus_width: int, words: list[int], data_before: list[int],
                 data_after: list[int], n_input: int):
        if not words:
            raise ValueError("a baked program needs instructions")
        self._bus_width = bus_width
        self._words, self._before, self._after = list(words), list(data_before), list(data_after)
        self._n_input = n_input
        super().__init__({
            "run": In(1),
            "active": Out(1),
            "insn": Out(stream.Signature(INSN_BITS)),
            "input": In(stream.Signature(bus_width)),
            "data": Out(stream.Signature(bus_width)),
        })

    @property
    def n_insns(self) -> int:
        return len(self._words)

    def elaborate(self, platform):
        m = Module()
        consts = self._before + self._after or [0]
        m.submodules.insn_rom = irom = RomStream(INSN_BITS, self._words)
        m.submodules.data_rom = drom = RomStream(self._bus_width, consts)
        m.d.comb += [irom.start.eq(self.run), irom.first.eq(0), irom.count.eq(len(self._words))]
        wiring.connect(m, irom.out, wiring.flipped(self.insn))

        n_before, n_after, n_input = len(self._before), len(self._after), self._n_input
        passed = Signal(range(n_input + 1))
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.run):
                    m.d.comb += [drom.start.eq(1), drom.first.eq(0), drom.count.eq(n_before)]
                    m.next = "BEFORE"
            with m.State("BEFORE"):
                wiring.connect(m, drom.out, wiring.flipped(self.data))
                with m.If(~drom.busy & ~drom.start):
                    m.d.sync += passed.eq(0)
                    m.next = "INPUT"
            with m.State("INPUT"):
                m.d.comb += [self.data.payload.eq(self.input.payload),
                             self.data.valid.eq(self.input.valid & (passed != n_input)),
                             self.input.ready.eq(self.data.ready & (passed != n_input))]
                with m.If(self.data.valid & self.data.ready):
                    m.d.sync += passed.eq(passed + 1)
                with m.If(passed == n_input):
                    m.d.comb += [drom.start.eq(1), drom.first.eq(n_before), drom.count.eq(n_after)]
                    m.next = "AFTER"
            with m.State("AFTER"):
                wiring.connect(m, drom.out, wiring.flipped(self.data))
                with m.If(~drom.busy & ~drom.start):
                    m.next = "IDLE"
        m.d.comb += self.active.eq(irom.busy | ~fsm.ongoing("IDLE"))
        return m
