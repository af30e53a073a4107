"""The conventional requantizer (gemmlowp / TFLite): a vector of lanes rescaling by a
per-column int32 multiplier and a right shift.

fxpgen itself never multiplies by anything but a power of two (:mod:`.requant`). This
unit is the INT32 requantization F8Net claims to make unnecessary, built as a drop-in
replacement for :class:`~.requant.Requantizer` so that ``bench/requant_area.py`` can
synthesize both and compare their cost. Per lane (the formulas of
:mod:`fxpgen.numerics`):

- Cycle 1: exactly the shift unit's cycle 1: align both operands by left shift, then
  ``s = sat(x + y)`` to acc_width (:func:`fxpgen.numerics.aligned_add`) or
  ``s = max(x, y)``.
- Cycle 2: multiply: ``p = s * M0``, an exact acc_width x 32 signed product.
- Cycle 3: ``h = saturating_rounding_doubling_high_mul(s, M0)``, computed as
  ``floor((p + 2**30) / 2**31)`` saturated to int32 (the same value as gemmlowp's
  nudge-and-truncate); ``r = rounding_divide_by_pot(h, shift)`` (ties away from zero);
  saturate to int8 [-127, 127] or uint8 [0, 255], and to >= 0 with ReLU. Max bypasses
  cycles 2 and 3 (format kept).

The result bytes appear ``LATENCY`` cycles after the operands.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .pe import ACT_WIDTH
from .requant import SHIFT_AMOUNT_WIDTH, shift_left_saturate

__all__ = ["MultiplierRequantizer", "MULTIPLIER_WIDTH", "RIGHT_SHIFT_WIDTH"]

#: Width of the per-column multiplier M0 (signed Q31).
MULTIPLIER_WIDTH = 32
#: Width of the per-column right shift (0..31, gemmlowp's exponent range).
RIGHT_SHIFT_WIDTH = 5

INT32_MAX = (1 << 31) - 1


def align_add_or_max(m: Module, lane, op_max, width: int, name: str):
    """Cycle 1 of both requantizers: ``max(x, y)`` or ``sat(x + y)`` to ``width`` bits,
    with ``x = sat(a << a_shift)`` and ``y = sat(b << b_shift)`` to ``width + 1`` bits."""
    x = shift_left_saturate(m, lane.a, lane.a_shift, width + 1, f"{name}_x")
    y = shift_left_saturate(m, lane.b, lane.b_shift, width + 1, f"{name}_y")
    total = Signal(signed(width + 2), name=f"{name}_total")
    out = Signal(signed(width), name=name)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    m.d.comb += total.eq(x + y)
    with m.If(op_max):
        m.d.comb += out.eq(Mux(x > y, x, y))
    with m.Elif(total > hi):
        m.d.comb += out.eq(hi)
    with m.Elif(total < lo):
        m.d.comb += out.eq(lo)
    with m.Else():
        m.d.comb += out.eq(total)
    return out


def doubling_high_mul(m: Module, product, acc_width: int, name: str):
    """gemmlowp's SaturatingRoundingDoublingHighMul from the exact product ``a * M0``:
    ``floor((p + 2**30) / 2**31)``, saturated to int32. Only ``a == M0 == INT32_MIN``
    (acc_width 32) overflows, to ``2**31``."""
    # |p| <= 2**(acc_width + 30), so the quotient lies in [-2**(w-1), 2**(w-1)].
    high = Signal(signed(acc_width + 1), name=f"{name}_high")
    out = Signal(signed(min(acc_width + 1, 32)), name=name)
    m.d.comb += high.eq((product + (1 << 30)) >> 31)
    if acc_width + 1 > 32:
        m.d.comb += out.eq(Mux(high > INT32_MAX, INT32_MAX, high))
    else:
        m.d.comb += out.eq(high)
    return out


def rounding_divide_by_pot(m: Module, value, exponent, name: str):
    """gemmlowp's RoundingDivideByPOT: ``value * 2**-exponent`` rounded to nearest,
    ties away from zero (exponent unsigned, 0..31). Its ``remainder > threshold``
    test is ``guard & (sticky | value >= 0)``: a negative tie rounds down."""
    width = len(value)
    q = Signal(signed(width), name=f"{name}_q")
    guard = Signal(name=f"{name}_guard")
    sticky = Signal(name=f"{name}_sticky")
    below = Signal(width, name=f"{name}_below")  # mask of the bits under the guard bit
    guard_pos = Signal(len(exponent), name=f"{name}_guard_pos")
    out = Signal(signed(width + 1), name=name)
    m.d.comb += [
        guard_pos.eq(exponent - 1),
        q.eq(value >> exponent),
        guard.eq((value >> guard_pos)[0]),
        below.eq((Const(1, width + 1) << guard_pos) - 1),
        sticky.eq((value.as_unsigned() & below) != 0),
        out.eq(q + ((exponent != 0) & guard & (sticky | ~value[-1]))),
    ]
    return out


class MultiplierRequantizer(wiring.Component):
    """``lanes`` conventional requantization lanes with a fixed latency.

    A drop-in replacement for :class:`~.requant.Requantizer` with these differences:

    - each lane's ``shift`` (signed 6-bit: right shift if > 0, left shift if <= 0)
      becomes the pair ``multiplier`` (M0, signed 32-bit Q31) and ``shift`` (unsigned
      5-bit right shift, 0..31): the real scale is ``M0 * 2**-31 * 2**-shift``;
    - scales >= 1 (TFLite's left shift) go through ``a_shift``, which saturates to
      acc_width + 1 bits where TFLite's ``x * (1 << left_shift)`` would wrap;
    - rounding is gemmlowp's, not half-to-even: ties towards +infinity in the high
      multiply, then ties away from zero in the shift (two roundings);
    - ``acc_width`` is at most 32 (the multiply is gemmlowp's int32 one);
    - ``LATENCY`` is 3, not 2 (one more stage for the multiplier).

    Ports
    -----
    operands : In
        ``valid``; per-instruction ``op_max``, ``relu``, ``out_signed``; per lane
        ``a`` (signed acc_width), ``b`` (signed 9-bit), ``a_shift``, ``b_shift``
        (left shifts, unsigned), ``multiplier`` (M0, signed 32-bit) and ``shift``
        (right shift, unsigned 5-bit).
    result : Out
        ``valid`` and ``data`` (lanes x 8-bit two's complement / unsigned bytes).
    """

    LATENCY = 3

    def __init__(self, lanes: int, acc_width: int = 32):
        if lanes < 1:
            raise ValueError(f"lanes must be positive, not {lanes}")
        if not 16 <= acc_width <= 32:
            raise ValueError(f"acc_width must be in 16..32 (an int32 multiply), not {acc_width}")
        self._lanes, self._acc_width = lanes, acc_width
        lane = data.StructLayout({
            "a": signed(acc_width), "b": signed(ACT_WIDTH),
            "a_shift": unsigned(SHIFT_AMOUNT_WIDTH), "b_shift": unsigned(SHIFT_AMOUNT_WIDTH),
            "multiplier": signed(MULTIPLIER_WIDTH), "shift": unsigned(RIGHT_SHIFT_WIDTH),
        })
        super().__init__({
            "operands": In(data.StructLayout({
                "valid": 1, "op_max": 1, "relu": 1, "out_signed": 1,
                "lane": data.ArrayLayout(lane, lanes)})),
            "result": Out(data.StructLayout({
                "valid": 1, "data": data.ArrayLayout(unsigned(8), lanes)})),
        })

    lanes = property(lambda self: self._lanes)
    acc_width = property(lambda self: self._acc_width)

    def elaborate(self, platform):
        m = Module()
        W, L = self._acc_width, self._lanes
        ops = self.operands
        control = {"valid": 1, "op_max": 1, "relu": 1, "out_signed": 1}

        # Cycle 1: align, then add with saturation or take the max.
        s1 = Signal(data.StructLayout({
            **control,
            "sum": data.ArrayLayout(signed(W), L),
            "multiplier": data.ArrayLayout(signed(MULTIPLIER_WIDTH), L),
            "shift": data.ArrayLayout(unsigned(RIGHT_SHIFT_WIDTH), L)}))
        m.d.sync += [s1.valid.eq(ops.valid), s1.op_max.eq(ops.op_max),
                     s1.relu.eq(ops.relu), s1.out_signed.eq(ops.out_signed)]
        for i in range(L):
            ln = ops.lane[i]
            m.d.sync += [
                s1.sum[i].eq(align_add_or_max(m, ln, ops.op_max, W, f"sum{i}")),
                s1.multiplier[i].eq(ln.multiplier),
                s1.shift[i].eq(ln.shift),
            ]

        # Cycle 2: multiply; the max result rides along.
        s2 = Signal(data.StructLayout({
            **control,
            "product": data.ArrayLayout(signed(W + MULTIPLIER_WIDTH), L),
            "shift": data.ArrayLayout(unsigned(RIGHT_SHIFT_WIDTH), L),
            "max": data.ArrayLayout(unsigned(8), L)}))
        m.d.sync += [s2.valid.eq(s1.valid), s2.op_max.eq(s1.op_max),
                     s2.relu.eq(s1.relu), s2.out_signed.eq(s1.out_signed)]
        for i in range(L):
            m.d.sync += [
                s2.product[i].eq(s1.sum[i] * s1.multiplier[i]),
                s2.shift[i].eq(s1.shift[i]),
                s2.max[i].eq(s1.sum[i][:8]),
            ]

        # Cycle 3: high multiply rounding, rounding shift, saturation to 8 bits.
        lo = Signal(signed(9))
        hi = Signal(signed(10))
        m.d.comb += [
            lo.eq(Mux(s2.relu | ~s2.out_signed, 0, -127)),
            hi.eq(Mux(s2.out_signed, 127, 255)),
        ]
        m.d.sync += self.result.valid.eq(s2.valid)
        for i in range(L):
            h = doubling_high_mul(m, s2.product[i], W, f"h{i}")
            r = rounding_divide_by_pot(m, h, s2.shift[i], f"r{i}")
            with m.If(s2.op_max):
                m.d.sync += self.result.data[i].eq(s2.max[i])
            with m.Elif(r > hi):
                m.d.sync += self.result.data[i].eq(hi[:8])
            with m.Elif(r < lo):
                m.d.sync += self.result.data[i].eq(lo[:8])
            with m.Else():
                m.d.sync += self.result.data[i].eq(r[:8])
        return m
