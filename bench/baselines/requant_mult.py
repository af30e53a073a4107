"""The conventional requantizer (gemmlowp / TFLite): a vector of lanes rescaling by a
per-column int32 multiplier and a right shift.

fxpgen itself never multiplies by anything but a power of two (:mod:`.requant`). This
unit is the INT32 requantization F8Net claims to make unnecessary, built as a drop-in
replacement for :class:`~.requant.Requantizer` so that ``bench/requant_area.py`` can
synthesize both and compare their cost. Cycles 1, 2 and the final saturation are the
shift unit's own code (its helpers); only the rescaling differs. Per lane (the
formulas of :mod:`fxpgen.numerics` and :mod:`bench.baselines.gemmlowp`):

- Cycle 1: align both operands by left shift, saturated to acc_width + 1 bits.
- Cycle 2: ``s = sat(x + y)`` to acc_width (:func:`fxpgen.numerics.aligned_add`) or
  ``s = max(x, y)``.
- Cycle 3: multiply: ``p = s * M0``, an exact acc_width x 32 signed product.
- Cycle 4: ``h = saturating_rounding_doubling_high_mul(s, M0)``, computed as
  ``floor((p + 2**30) / 2**31)`` saturated to int32 (the same value as gemmlowp's
  nudge-and-truncate); the right shift of ``rounding_divide_by_pot(h, shift)`` and
  its rounding decision (ties away from zero).
- Cycle 5: the rounding increment; saturate to int8 [-127, 127] or uint8 [0, 255],
  and to >= 0 with ReLU. Max bypasses cycles 3 to 5 (format kept).

The result bytes appear ``LATENCY`` cycles after the operands.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from fxpgen.hw.pe import ACT_WIDTH
from fxpgen.hw.requant import SHIFT_AMOUNT_WIDTH, output_byte, saturate, shift_left_saturate

__all__ = ["MultiplierRequantizer", "MULTIPLIER_WIDTH", "RIGHT_SHIFT_WIDTH"]

#: Width of the per-column multiplier M0 (signed Q31).
MULTIPLIER_WIDTH = 32
#: Width of the per-column right shift (0..31, gemmlowp's exponent range).
RIGHT_SHIFT_WIDTH = 5


def doubling_high_mul(m: Module, product, acc_width: int, name: str):
    """gemmlowp's SaturatingRoundingDoublingHighMul from the exact product ``a * M0``:
    ``floor((p + 2**30) / 2**31)``, saturated to int32. Only ``a == M0 == INT32_MIN``
    (acc_width 32) overflows, to ``2**31``."""
    # |p| <= 2**(acc_width + 30), so the quotient lies in [-2**(w-1), 2**(w-1)].
    high = Signal(signed(acc_width + 1), name=f"{name}_high")
    m.d.comb += high.eq((product + (1 << 30)) >> 31)
    if acc_width + 1 > 32:
        return saturate(m, high, 32, name)
    return high


def rounding_divide_by_pot(m: Module, value, exponent, name: str):
    """gemmlowp's RoundingDivideByPOT: ``value * 2**-exponent`` rounded to nearest,
    ties away from zero (exponent unsigned, 0..31). Its ``remainder > threshold``
    test is ``guard & (sticky | value >= 0)``: a negative tie rounds down. Returns
    ``(shifted, round_up)``, the result being ``shifted + round_up``, as
    :func:`.requant.shift_round_half_even` does, so a register can sit between."""
    width = len(value)
    shifted = Signal(signed(width), name=name)
    guard = Signal(name=f"{name}_guard")
    sticky = Signal(name=f"{name}_sticky")
    below = Signal(width, name=f"{name}_below")  # mask of the bits under the guard bit
    guard_pos = Signal(len(exponent), name=f"{name}_guard_pos")
    round_up = Signal(name=f"{name}_round_up")
    m.d.comb += [
        guard_pos.eq(exponent - 1),
        shifted.eq(value >> exponent),
        guard.eq((value >> guard_pos)[0]),
        below.eq(~(Const(-1, width) << guard_pos)[:width]),
        sticky.eq((value.as_unsigned() & below) != 0),
        round_up.eq((exponent != 0) & guard & (sticky | ~value[-1])),
    ]
    return shifted, round_up


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
    - ``LATENCY`` is one more than the shift unit's (a stage for the multiplier).

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

    LATENCY = 5

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
        flags = {"valid": 1, "op_max": 1, "relu": 1, "out_signed": 1}
        scale = {"multiplier": data.ArrayLayout(signed(MULTIPLIER_WIDTH), L),
                 "shift": data.ArrayLayout(unsigned(RIGHT_SHIFT_WIDTH), L)}

        # Cycle 1: align both operands.
        s0 = Signal(data.StructLayout({
            **flags, **scale,
            "x": data.ArrayLayout(signed(W + 1), L),
            "y": data.ArrayLayout(signed(W + 1), L)}))
        m.d.sync += [getattr(s0, f).eq(getattr(ops, f)) for f in flags]
        for i in range(L):
            ln = ops.lane[i]
            m.d.sync += [s0.x[i].eq(shift_left_saturate(m, ln.a, ln.a_shift, W + 1, f"x{i}")),
                         s0.y[i].eq(shift_left_saturate(m, ln.b, ln.b_shift, W + 1, f"y{i}")),
                         s0.multiplier[i].eq(ln.multiplier), s0.shift[i].eq(ln.shift)]

        # Cycle 2: add with saturation, or take the max.
        s1 = Signal(data.StructLayout({**flags, **scale, "sum": data.ArrayLayout(signed(W), L)}))
        m.d.sync += [getattr(s1, f).eq(getattr(s0, f)) for f in flags]
        for i in range(L):
            x, y = s0.x[i], s0.y[i]
            total = Signal(signed(W + 2), name=f"total{i}")
            m.d.comb += total.eq(x + y)
            with m.If(s0.op_max):
                m.d.sync += s1.sum[i].eq(Mux(x > y, x, y))
            with m.Else():
                m.d.sync += s1.sum[i].eq(saturate(m, total, W, f"sum{i}"))
            m.d.sync += [s1.multiplier[i].eq(s0.multiplier[i]), s1.shift[i].eq(s0.shift[i])]

        # Cycle 3: multiply; the max result rides along.
        s2 = Signal(data.StructLayout({
            **flags, "shift": scale["shift"],
            "product": data.ArrayLayout(signed(W + MULTIPLIER_WIDTH), L),
            "max": data.ArrayLayout(8, L)}))
        m.d.sync += [getattr(s2, f).eq(getattr(s1, f)) for f in flags]
        for i in range(L):
            m.d.sync += [s2.product[i].eq(s1.sum[i] * s1.multiplier[i]),
                         s2.shift[i].eq(s1.shift[i]), s2.max[i].eq(s1.sum[i][:8])]

        # Cycle 4: round the high half, shift, and decide the rounding (half away).
        high_width = min(W + 1, 32)
        s3 = Signal(data.StructLayout({
            **flags,
            "shifted": data.ArrayLayout(signed(high_width), L),
            "round_up": data.ArrayLayout(1, L),
            "max": data.ArrayLayout(8, L)}))
        m.d.sync += [getattr(s3, f).eq(getattr(s2, f)) for f in flags]
        for i in range(L):
            high = doubling_high_mul(m, s2.product[i], W, f"h{i}")
            shifted, round_up = rounding_divide_by_pot(m, high, s2.shift[i], f"r{i}")
            m.d.sync += [s3.shifted[i].eq(shifted), s3.round_up[i].eq(round_up),
                         s3.max[i].eq(s2.max[i])]

        # Cycle 5: round, saturate to the 8-bit output range.
        m.d.sync += self.result.valid.eq(s3.valid)
        for i in range(L):
            r = Signal(signed(high_width + 1), name=f"rounded{i}")
            m.d.comb += r.eq(s3.shifted[i] + s3.round_up[i])
            byte = output_byte(m, r, s3.out_signed, s3.relu, f"out{i}")
            m.d.sync += self.result.data[i].eq(Mux(s3.op_max, s3.max[i], byte))
        return m
