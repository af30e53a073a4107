"""The board-level design: the core behind the UART bridge, with an optional
baked program, and the clock/reset/pin wrapper for a real board.

:class:`BoardTop` is portable (ports ``uart_rx``, ``uart_tx``, ``leds``): the tests
simulate exactly it. :class:`BoardDesign` adds what a board needs: the PLL that
makes the target clock from the board's oscillator, a power-on reset held until the
PLL locks, and the UART and LED pins of the platform.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from fxpgen.config import CoreConfig
from fxpgen.hw.controller import COUNTERS
from fxpgen.hw.core import Core
from fxpgen.hw.stages import FAST, Stages
from fxpgen.isa import CoreState

from . import protocol
from .bridge import UartBridge
from .rom import BakedProgram
from .uart import UartRx, UartTx

__all__ = ["BoardTop", "BoardDesign", "baked_parts"]


def baked_parts(program) -> dict:
    """What a :class:`BakedProgram` needs from a loaded program
    (:class:`fxpgen.compiler.program.Program`); a program that streams its input in
    bands, or that runs a batch of images (``--batch``), cannot be baked (ValueError)."""
    import numpy as np
    if program.batch > 1:
        raise ValueError(f"cannot bake this program: it runs {program.batch} images at a time "
                         "(compile --batch); a baked program takes one image, so compile it without --batch")
    low = program.lowered_view()
    n_input = len(low.image_words(np.zeros(low.input_shape, np.int64)))
    try:
        before, after = low.split_data()
    except ValueError as e:
        raise ValueError(f"cannot bake this program: {e}") from None
    return {"words": program.words, "data_before": before, "data_after": after, "n_input": n_input}


class BoardTop(wiring.Component):
    """Core + UART bridge (+ baked program).

    Parameters
    ----------
    cfg : CoreConfig
    divisor : int
        Clock cycles per UART bit.
    baked : dict or None
        ``words``, ``data_before``, ``data_after``, ``n_input`` of a program to put
        in ROM (:func:`baked_parts`).
    insn_buffer, data_buffer : int
        Bytes of the bridge's stream buffers (powers of two).
    stages : Stages
        The core's pipeline registers (:mod:`fxpgen.hw.stages`).
    banked : bool
        Whether the core's scratchpad and accumulators are banked (:mod:`fxpgen.hw.buffers`).
    """

    def __init__(self, cfg: CoreConfig, divisor: int, *, baked: dict | None = None,
                 insn_buffer: int = 1024, data_buffer: int = 2048, stages: Stages = FAST,
                 banked: bool = True):
        self._cfg, self._divisor, self._baked, self._stages = cfg, divisor, baked, stages
        self._banked = banked
        self._buffers = (insn_buffer, data_buffer)
        super().__init__({"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1), "leds": Out(4)})

    @property
    def cfg(self) -> CoreConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        timeout = protocol.TIMEOUT_BYTES * 10 * self._divisor
        rom_insns = len(self._baked["words"]) if self._baked else 0
        m.submodules.uart_rx = urx = UartRx(self._divisor)
        m.submodules.uart_tx = utx = UartTx(self._divisor)
        m.submodules.bridge = br = UartBridge(cfg, timeout_cycles=timeout, insn_buffer=self._buffers[0],
                                              data_buffer=self._buffers[1], rom_insns=rom_insns)
        core = Core(cfg, self._stages, self._banked)
        m.submodules.core = ResetInserter(br.core_reset)(core)
        m.d.comb += [urx.rx.eq(self.uart_rx), self.uart_tx.eq(utx.tx)]
        wiring.connect(m, urx.data, br.rx)
        wiring.connect(m, br.tx, utx.data)
        wiring.connect(m, core.result, br.result)
        m.d.comb += [br.state.eq(core.state.as_value()), br.error.eq(core.error.as_value()), br.error_pc.eq(core.error_pc)]
        for port, name in zip(br.counters, COUNTERS):
            m.d.comb += port.eq(getattr(core, name))

        if self._baked:
            rom = BakedProgram(cfg.bus_width, **self._baked)
            m.submodules.rom = ResetInserter(br.core_reset)(rom)
            m.d.comb += rom.run.eq(br.run)
            wiring.connect(m, br.data, rom.input)
            with m.If(rom.active):
                wiring.connect(m, rom.insn, core.insn)
                wiring.connect(m, rom.data, core.data)
            with m.Else():
                wiring.connect(m, br.insn, core.insn)     # no data until RUN
        else:
            wiring.connect(m, br.insn, core.insn)
            wiring.connect(m, br.data, core.data)

        # LEDs: running, halted, error, and a heartbeat (bit 23 of a free counter).
        beat = Signal(24)
        m.d.sync += beat.eq(beat + 1)
        m.d.comb += self.leds.eq(Cat(core.state == CoreState.RUNNING, core.state == CoreState.HALTED,
                                     core.state == CoreState.ERROR, beat[-1]))
        return m


class BoardDesign(Elaboratable):
    """A :class:`BoardTop` on a board from :mod:`fxpgen.boards.platforms`."""

    def __init__(self, board, cfg: CoreConfig, *, clock_hz: float, baud: int, baked: dict | None = None,
                 insn_buffer: int = 1024, data_buffer: int = 2048):
        from .uart import uart_divisor
        self.board, self.cfg, self.clock_hz, self.baud = board, cfg, clock_hz, baud
        self.divisor = uart_divisor(clock_hz, baud)
        self.top = BoardTop(cfg, self.divisor, baked=baked, insn_buffer=insn_buffer,
                            data_buffer=data_buffer, stages=board.stages, banked=board.banked)

    def elaborate(self, platform):
        m = Module()
        self.board.clock(m, platform, self.clock_hz)
        m.submodules.top = top = self.top
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_pin = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_pin = tx = io.Buffer("o", uart.tx)
        m.d.comb += [top.uart_rx.eq(rx.i), tx.o.eq(top.uart_tx)]
        for k in range(self.board.leds):
            led = io.Buffer("o", platform.request("led", k, dir="-"))
            m.submodules[f"led{k}"] = led
            m.d.comb += led.o.eq(top.leds[k])
        self.board.extra_pins(m, platform)
        return m
