"""The boards fxpgen builds for: their platform (from amaranth-boards), oscillator,
target clock, the core that fits them, and how the ``sync`` clock is made."""

from __future__ import annotations

from dataclasses import dataclass

from fxpgen.config import CoreConfig
from fxpgen.hw.stages import COMPACT, FAST, Stages

__all__ = ["Board", "BOARDS", "board"]


@dataclass(frozen=True)
class Board:
    """One board. ``family`` picks the PLL and the toolchain; ``buildable`` says
    whether its toolchain is open (YoWASP) so fxpgen runs it, or only its build
    scripts are written (vendor tools)."""

    name: str
    platform_path: str                 # "module:Class" in amaranth_boards
    family: str                        # "ice40", "ecp5", "xilinx"
    osc: str                           # the oscillator's resource name
    osc_hz: float
    clock_hz: float                    # default target clock
    config: CoreConfig                 # default core for this board
    buildable: bool = True
    buffers: tuple[int, int] = (1024, 2048)
    notes: str = ""
    leds: int = 4
    stages: Stages = FAST              # the core's pipeline registers
    banked: bool = True                # banked scratchpad and accumulators (fxpgen.hw.buffers)

    def platform(self):
        import importlib
        module, cls = self.platform_path.split(":")
        try:
            mod = importlib.import_module(f"amaranth_boards.{module}")
        except ImportError:
            raise RuntimeError("board support needs amaranth-boards: pip install 'fxpgen[boards]'") from None
        return getattr(mod, cls)()

    def clock(self, m, platform, target_hz: float):
        """Drive the ``sync`` domain at ``target_hz`` (through the PLL unless the
        oscillator already runs at it); return the frequency reached."""
        from amaranth import C
        from amaranth.lib import io
        from .pll import Ecp5Pll, Ice40Pll, sync_domain
        port = platform.request(self.osc, 0, dir="-")
        at_osc = abs(target_hz - self.osc_hz) < 1
        if not at_osc and self.family not in ("ice40", "ecp5"):
            raise ValueError(f"{self.name}: only the oscillator's {self.osc_hz / 1e6:g} MHz is supported")
        if at_osc:
            m.submodules.osc = buf = io.Buffer("i", port)
            sync_domain(m, platform, buf.i, C(1), self.osc_hz)
            return self.osc_hz
        if self.family == "ice40":
            pll = Ice40Pll(port.io, self.osc_hz, target_hz)
        else:
            m.submodules.osc = buf = io.Buffer("i", port)
            pll = Ecp5Pll(buf.i, self.osc_hz, target_hz)
        m.submodules.pll = pll
        sync_domain(m, platform, pll.clk, pll.lock, pll.f_out)
        return pll.f_out

    def extra_pins(self, m, platform) -> None:
        """Board-specific pins beyond the UART and LEDs (none so far)."""


BOARDS = {b.name: b for b in [
    Board("icebreaker", "icebreaker:ICEBreakerPlatform", "ice40", "clk12", 12e6, 18e6,
          # Without lookup tables, lane multipliers and narrow weights, with small
          # memories and 18-bit counters: the logic cells are the limit (docs/boards.md).
          CoreConfig(rows=1, cols=1, acc_width=20, spad_depth=512, wbuf_depth=64, acc_depth=128,
                     table_depth=8, counter_width=18, lut_tables=0, lane_multipliers=False,
                     weight_widths=1),
          buffers=(256, 256), leds=2,
          # No pipeline registers either: at 18 MHz the core does not need them, and
          # their flip-flops would not fit. Nor the banks' crossbar: block RAMs are not
          # what the UP5K lacks (18 of 30 with a copy per read port).
          stages=COMPACT, banked=False,
          notes="iCE40UP5K: 5280 logic cells, 8 DSPs, 30 block RAMs"),
    # 55 MHz: the default 8x8 build, with the narrow-weight LOADW, meets it at
    # 57.6 MHz (62.4 MHz at a 100 MHz target before the narrow weights; 30.5 MHz
    # before the pipeline registers of fxpgen.hw.stages, hence the old 30 MHz).
    Board("ulx3s-85f", "ulx3s:ULX3S_85F_Platform", "ecp5", "clk25", 25e6, 55e6,
          CoreConfig(rows=8, cols=8, spad_depth=4096, wbuf_depth=512, acc_depth=1024)),
    Board("ulx3s-25f", "ulx3s:ULX3S_25F_Platform", "ecp5", "clk25", 25e6, 30e6,
          CoreConfig(rows=4, cols=4, spad_depth=2048, wbuf_depth=256, acc_depth=512)),
    Board("arty-a7-35", "arty_a7:ArtyA7_35Platform", "xilinx", "clk100", 100e6, 100e6,
          CoreConfig(rows=8, cols=8, spad_depth=4096, wbuf_depth=512, acc_depth=1024),
          buildable=False, notes="Vivado build scripts are written, not run"),
]}


def board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; choose one of {', '.join(BOARDS)}") from None
