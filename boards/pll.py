"""PLL settings for a target clock, and the PLL primitives that make it.

The searches follow the vendors' rules (as the icepll and ecppll tools do): the
phase detector and VCO ranges of the iCE40 and ECP5 PLLs. Each returns the settings
whose output is closest to the target, with the frequency actually reached.
"""

from __future__ import annotations

from amaranth import *

__all__ = ["Ice40Pll", "Ecp5Pll", "ice40_pll_settings", "ecp5_pll_settings", "sync_domain"]


def ice40_pll_settings(f_in: float, f_out: float) -> dict:
    """SB_PLL40 (SIMPLE feedback): ``f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)``
    with the phase detector in 10..133 MHz and the VCO in 533..1066 MHz."""
    best = None
    for divr in range(16):
        pfd = f_in / (divr + 1)
        if not 10e6 <= pfd <= 133e6:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533e6 <= vco <= 1066e6:
                continue
            for divq in range(1, 7):
                f = vco / 2 ** divq
                if best is None or abs(f - f_out) < abs(best["f_out"] - f_out):
                    filt = next(k for k, lim in enumerate((17e6, 26e6, 44e6, 66e6, 101e6, 1e12), 1) if pfd < lim)
                    best = {"DIVR": divr, "DIVF": divf, "DIVQ": divq, "FILTER_RANGE": filt, "f_out": f}
    if best is None:
        raise ValueError(f"no iCE40 PLL setting makes {f_out / 1e6:g} MHz from {f_in / 1e6:g} MHz")
    return best


def ecp5_pll_settings(f_in: float, f_out: float) -> dict:
    """EHXPLLL (feedback from CLKOP): ``f_out = f_in * CLKFB_DIV / CLKI_DIV`` with the
    phase detector in 3.125..400 MHz and the VCO (``f_out * CLKOP_DIV``) in 400..800 MHz."""
    best = None
    for clki in range(1, 129):
        pfd = f_in / clki
        if not 3.125e6 <= pfd <= 400e6:
            continue
        for clkfb in range(1, 81):
            f = pfd * clkfb
            ops = [k for k in range(1, 129) if 400e6 <= f * k <= 800e6]
            if not ops:
                continue
            clkop = min(ops, key=lambda k: abs(f * k - 600e6))     # VCO mid-range
            if best is None or abs(f - f_out) < abs(best["f_out"] - f_out):
                best = {"CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop, "f_out": f}
    if best is None:
        raise ValueError(f"no ECP5 PLL setting makes {f_out / 1e6:g} MHz from {f_in / 1e6:g} MHz")
    return best


class Ice40Pll(Elaboratable):
    """SB_PLL40_PAD fed straight by the oscillator's pad (``pad``: the raw I/O port
    of the clock pin; the pad is the PLL's dedicated input, so it must not also go
    through an input buffer). Outputs ``clk`` and ``lock``."""

    def __init__(self, pad, f_in: float, f_out: float):
        self.pad, self.settings = pad, ice40_pll_settings(f_in, f_out)
        self.f_out = self.settings["f_out"]
        self.clk = Signal(name="pll_clk")
        self.lock = Signal(name="pll_lock")

    def elaborate(self, platform):
        m = Module()
        s = self.settings
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
            p_DIVR=s["DIVR"], p_DIVF=s["DIVF"], p_DIVQ=s["DIVQ"], p_FILTER_RANGE=s["FILTER_RANGE"],
            i_PACKAGEPIN=self.pad, i_RESETB=C(1), i_BYPASS=C(0),
            o_PLLOUTGLOBAL=self.clk, o_LOCK=self.lock)
        return m


class Ecp5Pll(Elaboratable):
    """EHXPLLL from ``clk_in``; outputs ``clk`` and ``lock``."""

    def __init__(self, clk_in, f_in: float, f_out: float):
        self.clk_in, self.f_in = clk_in, f_in
        self.settings = ecp5_pll_settings(f_in, f_out)
        self.f_out = self.settings["f_out"]
        self.clk = Signal(name="pll_clk")
        self.lock = Signal(name="pll_lock")

    def elaborate(self, platform):
        m = Module()
        s = self.settings
        clk, lock = self.clk, self.lock
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{self.f_in / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{self.f_out / 1e6:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=s["CLKI_DIV"], p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=s["CLKOP_DIV"],
            p_CLKOP_CPHASE=s["CLKOP_DIV"] - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            p_CLKFB_DIV=s["CLKFB_DIV"],
            i_RST=C(0), i_STDBY=C(0), i_CLKI=self.clk_in, o_CLKOP=clk, i_CLKFB=clk,
            i_PHASESEL0=C(0), i_PHASESEL1=C(0), i_PHASEDIR=C(1),
            i_PHASESTEP=C(1), i_PHASELOADREG=C(1), i_PLLWAKESYNC=C(0), i_ENCLKOP=C(0),
            o_LOCK=lock)
        return m


def sync_domain(m: Module, platform, clk, lock, f_out: float) -> None:
    """The ``sync`` domain on ``clk``, in reset until ``lock`` has held for 2**10 cycles."""
    m.domains.sync = cd = ClockDomain("sync")
    m.domains.por = por = ClockDomain("por", reset_less=True)
    m.d.comb += [cd.clk.eq(clk), por.clk.eq(clk)]
    count = Signal(11, name="por_count")
    with m.If(~lock):
        m.d.por += count.eq(0)
    with m.Elif(~count[-1]):
        m.d.por += count.eq(count + 1)
    m.d.comb += cd.rst.eq(~count[-1])
    if platform is not None:
        platform.add_clock_constraint(clk, f_out)
