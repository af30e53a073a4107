"""Proof 1: the pipelined requantizer equals the arithmetic of fxpgen.numerics.

:class:`RequantReference` is one requantizer lane written straight from the rules
of :mod:`fxpgen.numerics`, with exact-width arithmetic and comparisons instead of
the hardware's capped shifters and sign-bit reductions:

- ``x = align(a, a_shift)``, ``y = align(b, b_shift)``: ``v * 2**min(s, 63)``
  clamped to ``acc_width + 1`` bits (:func:`~fxpgen.numerics.shift_left_saturate`);
- add: ``requantize(clamp(x + y, acc_width), shift, out_signed, relu)``
  (:func:`~fxpgen.numerics.aligned_add`, :func:`~fxpgen.numerics.requantize`:
  round-half-even right shift, left shift capped at 15, 8-bit saturation);
- max: ``max(x, y)``, its low byte (:func:`~fxpgen.numerics.maximum`; the format
  is kept).

:class:`RequantHarness` feeds the same free operands to the reference and to a
one-lane :class:`~fxpgen.hw.requant.Requantizer` and asserts that the unit's
byte and valid equal the reference's, ``LATENCY`` cycles later, on every cycle.
"""

from __future__ import annotations

from unittest import mock

from amaranth import *
from amaranth.hdl import Assert
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from fxpgen.hw import requant as requant_module
from fxpgen.hw.pe import ACT_WIDTH
from fxpgen.hw.requant import SHIFT_AMOUNT_WIDTH, Requantizer

__all__ = ["RequantReference", "RequantHarness", "TieUpRequantizer"]

#: numerics.shift_left_saturate caps alignment shifts here.
_ALIGN_CAP = 63
#: numerics.requantize caps left shifts (negative ``shift``) here.
_LEFT_CAP = 15


def _clamp(m: Module, value, lo: int, hi: int, name: str, width: int):
    out = Signal(signed(width), name=name)
    m.d.comb += out.eq(Mux(value < lo, lo, Mux(value > hi, hi, value)))
    return out


def _align(m: Module, value, amount, width: int, name: str):
    """``clamp(value * 2**min(amount, 63))`` to a signed ``width``-bit range."""
    capped = Mux(amount > _ALIGN_CAP, _ALIGN_CAP, amount)
    exact = Signal(signed(len(value) + _ALIGN_CAP), name=f"{name}_exact")
    m.d.comb += exact.eq(value << capped)
    return _clamp(m, exact, -(1 << (width - 1)), (1 << (width - 1)) - 1, name, width)


def _requantize(m: Module, s, shift, out_signed, relu):
    """numerics.requantize: the exact rounded value, then the 8-bit range."""
    n = Signal(signed(7), name="n")
    m.d.comb += n.eq(Mux(shift < -_LEFT_CAP, -_LEFT_CAP, shift))
    right = Signal(5, name="right")
    m.d.comb += right.eq(Mux(n > 0, n, 0))
    q = Signal(signed(len(s)), name="q")
    rem = Signal(signed(34), name="rem")           # 0 <= rem < 2**31
    half = Signal(signed(33), name="half")
    up = Signal(name="up")
    m.d.comb += [
        q.eq(s >> right),
        rem.eq(s - (q << right)),
        half.eq(Const(1, 33) << (right - 1)[:5]),
        up.eq((rem > half) | ((rem == half) & q[0])),
    ]
    exact = Signal(signed(len(s) + _LEFT_CAP + 1), name="exact")
    with m.If(n > 0):
        m.d.comb += exact.eq(q + up)
    with m.Else():
        m.d.comb += exact.eq(s << (-n)[:4])
    lo = Signal(signed(9), name="lo")
    hi = Signal(signed(9), name="hi")
    m.d.comb += [lo.eq(Mux(out_signed & ~relu, -127, 0)), hi.eq(Mux(out_signed, 127, 255))]
    return Mux(exact < lo, lo, Mux(exact > hi, hi, exact))[:8]


class RequantReference(wiring.Component):
    """One requantizer lane as combinational arithmetic (``acc_width`` >= 2 bits):
    ``byte`` is the result of the operands on the same cycle."""

    def __init__(self, acc_width: int):
        if acc_width < 2:
            raise ValueError(f"acc_width must be at least 2, not {acc_width}")
        self._acc_width = acc_width
        super().__init__({
            "a": In(signed(acc_width)), "b": In(signed(ACT_WIDTH)),
            "a_shift": In(SHIFT_AMOUNT_WIDTH), "b_shift": In(SHIFT_AMOUNT_WIDTH),
            "shift": In(signed(6)), "op_max": In(1), "relu": In(1), "out_signed": In(1),
            "byte": Out(8),
        })

    acc_width = property(lambda self: self._acc_width)

    def elaborate(self, platform):
        m = Module()
        W = self._acc_width
        x = _align(m, self.a, self.a_shift, W + 1, "x")
        y = _align(m, self.b, self.b_shift, W + 1, "y")
        s = _clamp(m, x + y, -(1 << (W - 1)), (1 << (W - 1)) - 1, "sum", W)
        larger = Signal(signed(max(W + 1, 8)), name="larger")   # sign-extended to a byte
        m.d.comb += larger.eq(Mux(x > y, x, y))
        with m.If(self.op_max):
            m.d.comb += self.byte.eq(larger[:8])
        with m.Else():
            m.d.comb += self.byte.eq(_requantize(m, s, self.shift, self.out_signed, self.relu))
        return m


_ship_round = requant_module.shift_round_half_even


def _round_half_up(m: Module, value, shift, name: str):
    """The shipped rounding with ties rounded up instead of to even."""
    shifted, _ = _ship_round(m, value, shift, name)
    round_up = Signal(name=f"{name}_tie_up")
    m.d.comb += round_up.eq((shift > 0) & (value >> (shift[:5] - 1)[:5])[0])
    return shifted, round_up


class TieUpRequantizer(Requantizer):
    """Mutant: the shipped requantizer with ties rounded up (a flipped tie rule)."""

    def elaborate(self, platform):
        with mock.patch.object(requant_module, "shift_round_half_even", _round_half_up):
            return super().elaborate(platform)


class RequantHarness(wiring.Component):
    """Free operands into a one-lane requantizer (``dut_class``) and the reference;
    asserts equal bytes and valids ``LATENCY`` cycles later."""

    def __init__(self, acc_width: int, dut_class: type[Requantizer] = Requantizer):
        self._acc_width, self._dut_class = acc_width, dut_class
        super().__init__({
            "valid": In(1), "op_max": In(1), "relu": In(1), "out_signed": In(1),
            "a": In(signed(acc_width)), "b": In(signed(ACT_WIDTH)),
            "a_shift": In(SHIFT_AMOUNT_WIDTH), "b_shift": In(SHIFT_AMOUNT_WIDTH),
            "shift": In(signed(6)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self._dut_class(1, self._acc_width)
        m.submodules.ref = ref = RequantReference(self._acc_width)
        lane = dut.operands.lane[0]
        for flag in ("valid", "op_max", "relu", "out_signed"):
            m.d.comb += getattr(dut.operands, flag).eq(getattr(self, flag))
        for field in ("a", "b", "a_shift", "b_shift", "shift"):
            m.d.comb += [getattr(lane, field).eq(getattr(self, field)),
                         getattr(ref, field).eq(getattr(self, field))]
        for flag in ("op_max", "relu", "out_signed"):
            m.d.comb += getattr(ref, flag).eq(getattr(self, flag))
        byte, valid = ref.byte, self.valid
        for k in range(dut.LATENCY):
            byte_d, valid_d = Signal(8, name=f"ref_byte_d{k}"), Signal(name=f"ref_valid_d{k}")
            m.d.sync += [byte_d.eq(byte), valid_d.eq(valid)]
            byte, valid = byte_d, valid_d
        m.d.comb += [Assert(dut.result.data[0] == byte, "requantized byte equals the reference"),
                     Assert(dut.result.valid == valid, "valid follows LATENCY cycles later")]
        return m
