"""The requantization unit: a vector of lanes doing shift-only rescaling.

Per lane (the formulas of :mod:`fxpgen.numerics`, no multiplier anywhere):

- Cycle 1: align both operands by left shift, saturated to acc_width + 1 bits.
- Cycle 2: either ``s = sat(x + y)`` to acc_width (requantize / residual add /
  element-wise add: :func:`fxpgen.numerics.aligned_add`) or ``s = max(x, y)`` (max
  pooling).
- Cycles 3-4: ``requantize(s, shift)``: round-half-even arithmetic right shift for
  ``shift > 0``, left shift for ``shift <= 0`` (cycle 3: the shift and the rounding
  decision; cycle 4: the rounding increment); saturate to int8 [-127, 127] or
  uint8 [0, 255], and to >= 0 with ReLU. Max bypasses these stages (format kept).
- Table lookups (LUT) arrive one cycle after their operands, from the lookup-table
  memories, and replace the max in cycle 2: the byte then rides the max path out.

The result bytes appear ``LATENCY`` cycles after the operands.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .pe import ACT_WIDTH

__all__ = ["Requantizer", "SHIFT_AMOUNT_WIDTH"]

#: Width of the alignment shift amounts (0..63; the ISA uses 0..32).
SHIFT_AMOUNT_WIDTH = 6


def _fits(value, width: int):
    """Whether signed ``value`` fits in ``width`` bits: its bits from ``width - 1`` up
    are all copies of the sign (a reduction, no comparator)."""
    top = value.as_unsigned()[width - 1:]
    return top.all() | ~top.any()


def saturate(m: Module, value, width: int, name: str):
    """``clamp(value)`` to a signed ``width``-bit range."""
    out = Signal(signed(width), name=name)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    with m.If(_fits(value, width)):
        m.d.comb += out.eq(value)
    with m.Elif(value < 0):
        m.d.comb += out.eq(lo)
    with m.Else():
        m.d.comb += out.eq(hi)
    return out


def shift_left_saturate(m: Module, value, amount, width: int, name: str):
    """``clamp(value << amount)`` to a signed ``width``-bit range. Amounts of
    ``width - 1`` or more saturate every nonzero value (and leave 0 at 0) exactly as
    ``width - 1`` does, so the shifter is capped there."""
    cap = width - 1
    capped = Signal(range(cap + 1), name=f"{name}_amount")
    m.d.comb += capped.eq(Mux(amount > cap, cap, amount))
    wide = Signal(signed(len(value) + cap), name=f"{name}_wide")
    m.d.comb += wide.eq(value << capped)
    return saturate(m, wide, width, name)


def shift_round_half_even(m: Module, value, shift, name: str):
    """``value * 2**-shift`` rounded half to even (shift > 0), or ``value << -shift``
    with the amount capped at 15 (shift <= 0; larger shifts saturate any nonzero
    value at 8 bits anyway). Returns ``(shifted, round_up)``: the result is
    ``shifted + round_up``, left to the caller so a register can sit between."""
    width = len(value)
    shifted = Signal(signed(width + 16), name=name)
    right = Signal(5, name=f"{name}_right")
    left = Signal(4, name=f"{name}_left")
    m.d.comb += [
        right.eq(Mux(shift > 0, shift[:5], 0)),
        left.eq(Mux(shift < -15, 15, Mux(shift < 0, (-shift)[:4], 0))),
    ]
    q = Signal(signed(width), name=f"{name}_q")
    guard = Signal(name=f"{name}_guard")
    sticky = Signal(name=f"{name}_sticky")
    below = Signal(width, name=f"{name}_below")  # mask of the bits under the guard bit
    guard_pos = Signal(5, name=f"{name}_guard_pos")
    round_up = Signal(name=f"{name}_round_up")
    m.d.comb += [
        guard_pos.eq(right - 1),
        q.eq(value >> right),
        guard.eq((value >> guard_pos)[0]),
        below.eq(~(Const(-1, width) << guard_pos)[:width]),
        sticky.eq((value.as_unsigned() & below) != 0),
        round_up.eq((shift > 0) & guard & (sticky | q[0])),
        shifted.eq(Mux(shift > 0, q, value << left)),
    ]
    return shifted, round_up


def output_byte(m: Module, r, out_signed, relu, name: str):
    """``r`` saturated to int8 [-127, 127] (``out_signed``) or uint8 [0, 255], and to
    >= 0 with ``relu``; as a byte. Range checks are sign-bit reductions."""
    out = Signal(8, name=name)
    neg = r[-1]
    with m.If(out_signed):
        with m.If(neg & relu):
            m.d.comb += out.eq(0)
        with m.Elif(~_fits(r, 8)):
            m.d.comb += out.eq(Mux(neg, -127, 127))
        with m.Elif(r[:8] == 0x80):                 # -128 -> -127
            m.d.comb += out.eq(-127)
        with m.Else():
            m.d.comb += out.eq(r[:8])
    with m.Else():
        with m.If(neg):
            m.d.comb += out.eq(0)
        with m.Elif(r.as_unsigned()[8:].any()):
            m.d.comb += out.eq(255)
        with m.Else():
            m.d.comb += out.eq(r[:8])
    return out


class Requantizer(wiring.Component):
    """``lanes`` requantization lanes with a fixed latency.

    Ports
    -----
    operands : In
        ``valid``; per-instruction ``op_max``, ``relu``, ``out_signed``; per lane
        ``a`` (signed acc_width), ``b`` (signed 9-bit), ``a_shift``, ``b_shift``
        (left shifts, unsigned) and ``shift`` (requantization shift, signed 6-bit).
        ``op_lookup`` (with ``op_max``) passes ``lookup`` through instead.
    lookup : In
        Per lane, the looked-up byte of an ``op_lookup`` operand, one cycle after it.
    result : Out
        ``valid`` and ``data`` (lanes x 8-bit two's complement / unsigned bytes).
    """

    LATENCY = 4

    def __init__(self, lanes: int, acc_width: int):
        if lanes < 1:
            raise ValueError(f"lanes must be positive, not {lanes}")
        if acc_width < 16:
            raise ValueError(f"acc_width must be at least 16, not {acc_width}")
        self._lanes, self._acc_width = lanes, acc_width
        lane = data.StructLayout({
            "a": signed(acc_width), "b": signed(ACT_WIDTH),
            "a_shift": unsigned(SHIFT_AMOUNT_WIDTH), "b_shift": unsigned(SHIFT_AMOUNT_WIDTH),
            "shift": signed(6),
        })
        super().__init__({
            "operands": In(data.StructLayout({
                "valid": 1, "op_max": 1, "op_lookup": 1, "relu": 1, "out_signed": 1,
                "lane": data.ArrayLayout(lane, lanes)})),
            "lookup": In(data.ArrayLayout(unsigned(8), lanes)),
            "result": Out(data.StructLayout({
                "valid": 1, "data": data.ArrayLayout(unsigned(8), lanes)})),
        })

    lanes = property(lambda self: self._lanes)
    acc_width = property(lambda self: self._acc_width)

    def elaborate(self, platform):
        m = Module()
        W = self._acc_width
        ops = self.operands

        flags = {"valid": 1, "op_max": 1, "op_lookup": 1, "relu": 1, "out_signed": 1}

        # Cycle 1: align both operands.
        s0 = Signal(data.StructLayout({
            **flags,
            "x": data.ArrayLayout(signed(W + 1), self._lanes),
            "y": data.ArrayLayout(signed(W + 1), self._lanes),
            "shift": data.ArrayLayout(signed(6), self._lanes)}))
        m.d.sync += [getattr(s0, f).eq(getattr(ops, f)) for f in flags]
        for i in range(self._lanes):
            ln = ops.lane[i]
            m.d.sync += [s0.x[i].eq(shift_left_saturate(m, ln.a, ln.a_shift, W + 1, f"x{i}")),
                         s0.y[i].eq(shift_left_saturate(m, ln.b, ln.b_shift, W + 1, f"y{i}")),
                         s0.shift[i].eq(ln.shift)]

        # Cycle 2: add with saturation, take the max, or take the looked-up byte.
        s1 = Signal(data.StructLayout({
            **flags,
            "sum": data.ArrayLayout(signed(W), self._lanes),
            "shift": data.ArrayLayout(signed(6), self._lanes)}))
        m.d.sync += [getattr(s1, f).eq(getattr(s0, f)) for f in flags]
        for i in range(self._lanes):
            x, y = s0.x[i], s0.y[i]
            total = Signal(signed(W + 2), name=f"total{i}")
            m.d.comb += total.eq(x + y)
            with m.If(s0.op_lookup):
                m.d.sync += s1.sum[i].eq(self.lookup[i])
            with m.Elif(s0.op_max):
                m.d.sync += s1.sum[i].eq(Mux(x > y, x, y))
            with m.Else():
                m.d.sync += s1.sum[i].eq(saturate(m, total, W, f"sum{i}"))
            m.d.sync += s1.shift[i].eq(s0.shift[i])

        # Cycle 3: shift, and decide the rounding (half to even).
        s2 = Signal(data.StructLayout({
            **flags,
            "shifted": data.ArrayLayout(signed(W + 16), self._lanes),
            "round_up": data.ArrayLayout(1, self._lanes),
            "max": data.ArrayLayout(8, self._lanes)}))
        m.d.sync += [getattr(s2, f).eq(getattr(s1, f)) for f in flags]
        for i in range(self._lanes):
            shifted, round_up = shift_round_half_even(m, s1.sum[i], s1.shift[i], f"r{i}")
            m.d.sync += [s2.shifted[i].eq(shifted), s2.round_up[i].eq(round_up),
                         s2.max[i].eq(s1.sum[i][:8])]

        # Cycle 4: round, saturate to the 8-bit output range.
        m.d.sync += self.result.valid.eq(s2.valid)
        for i in range(self._lanes):
            r = Signal(signed(W + 17), name=f"rounded{i}")
            m.d.comb += r.eq(s2.shifted[i] + s2.round_up[i])
            byte = output_byte(m, r, s2.out_signed, s2.relu, f"out{i}")
            m.d.sync += self.result.data[i].eq(Mux(s2.op_max, s2.max[i], byte))
        return m
