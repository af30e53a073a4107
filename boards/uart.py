"""An 8N1 UART: receiver and transmitter as byte streams.

``divisor`` is clock cycles per bit (``round(f_clk / baud)``, at least 4). The
receiver synchronizes the line through two registers, samples each bit in its middle
and drops a byte whose stop bit is low (counted on ``framing_errors``). There is no
receive buffer beyond one byte: the consumer must take each byte within one byte
time (the bridge always does, in one cycle).
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UartRx", "UartTx", "uart_divisor"]


def uart_divisor(clk_hz: float, baud: int) -> int:
    """Clock cycles per bit; raises ValueError when the baud rate is off by more than
    2% or needs fewer than 4 cycles per bit."""
    divisor = round(clk_hz / baud)
    if divisor < 4:
        raise ValueError(f"baud rate {baud} is too fast for a {clk_hz / 1e6:g} MHz clock "
                         f"(needs at least 4 clock cycles per bit)")
    error = abs(clk_hz / divisor - baud) / baud
    if error > 0.02:
        raise ValueError(f"baud rate {baud} is {error:.1%} off at {clk_hz / 1e6:g} MHz "
                         f"(divisor {divisor}); choose another rate or clock")
    return divisor


class UartRx(wiring.Component):
    """``rx`` line in, received bytes out on ``data`` (``valid`` for one cycle per
    byte; a byte not taken that cycle is lost, see the module docstring)."""

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError(f"divisor must be at least 4, not {divisor}")
        self._divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "data": Out(stream.Signature(8)),
            "framing_errors": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        sync_rx = Signal(2, init=0b11)
        m.d.sync += sync_rx.eq(Cat(self.rx, sync_rx[0]))
        line = sync_rx[1]
        timer = Signal(range(d + 1))
        bit = Signal(range(10))
        shreg = Signal(8)
        m.d.sync += self.data.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):                  # a glitch, not a start bit
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [timer.eq(d - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [timer.eq(d - 1), shreg.eq(Cat(shreg[1:], line)), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    with m.If(line):
                        m.d.sync += [self.data.payload.eq(shreg), self.data.valid.eq(1)]
                    with m.Else():
                        m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
                    m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """Bytes in on ``data`` (taken when the transmitter is idle), ``tx`` line out."""

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError(f"divisor must be at least 4, not {divisor}")
        self._divisor = divisor
        super().__init__({
            "data": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        timer = Signal(range(d))
        shreg = Signal(10, init=0x3FF)
        bits = Signal(range(11))
        m.d.comb += [self.tx.eq(shreg[0]), self.data.ready.eq(bits == 0)]
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [shreg.eq(Cat(C(0, 1), self.data.payload, C(1, 1))),
                         bits.eq(10), timer.eq(d - 1)]
        with m.Elif(bits != 0):
            with m.If(timer != 0):
                m.d.sync += timer.eq(timer - 1)
            with m.Else():
                m.d.sync += [shreg.eq(Cat(shreg[1:], C(1, 1))), bits.eq(bits - 1), timer.eq(d - 1)]
        return m
