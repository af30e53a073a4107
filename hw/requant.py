"""The requantization unit: a vector of lanes doing shift-only rescaling.

Per lane (the formulas of :mod:`fxpgen.numerics`, no multiplier anywhere):

- Cycle 1: align both operands by left shift, saturated to acc_width + 1 bits, then
  either ``s = sat(x + y)`` to acc_width (requantize / residual add / element-wise
  add: :func:`fxpgen.numerics.aligned_add`) or ``s = max(x, y)`` (max pooling).
- Cycle 2: ``requantize(s, shift)``: round-half-even arithmetic right shift for
  ``shift > 0``, left shift for ``shift <= 0``; saturate to int8 [-127, 127] or
  uint8 [0, 255], and to >= 0 with ReLU. Max bypasses this stage (format kept).

The result bytes appear ``LATENCY`` cycles after the operands.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .pe import ACT_WIDTH

__all__ = ["Requantizer", "SHIFT_AMOUNT_WIDTH"]

#: Width of the alignment shift amounts (0..63; the ISA uses 0..32).
SHIFT_AMOUNT_WIDTH = 6


def shift_left_saturate(m: Module, value, amount, width: int, name: str):
    """``clamp(value << amount)`` to a signed ``width``-bit range."""
    wide = Signal(signed(len(value) + 2 ** len(amount) - 1), name=f"{name}_wide")
    out = Signal(signed(width), name=name)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    m.d.comb += wide.eq(value << amount)
    with m.If(wide > hi):
        m.d.comb += out.eq(hi)
    with m.Elif(wide < lo):
        m.d.comb += out.eq(lo)
    with m.Else():
        m.d.comb += out.eq(wide)
    return out


def shift_round_half_even(m: Module, value, shift, name: str):
    """``value * 2**-shift`` rounded half to even (shift > 0), or ``value << -shift``
    with the amount capped at 15 (shift <= 0; larger shifts saturate any nonzero
    value at 8 bits anyway)."""
    width = len(value)
    out = Signal(signed(width + 16), name=name)
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
    m.d.comb += [
        guard_pos.eq(right - 1),
        q.eq(value >> right),
        guard.eq((value >> guard_pos)[0]),
        below.eq((Const(1, width + 1) << guard_pos) - 1),
        sticky.eq((value.as_unsigned() & below) != 0),
    ]
    with m.If(shift > 0):
        m.d.comb += out.eq(q + (guard & (sticky | q[0])))
    with m.Else():
        m.d.comb += out.eq(value << left)
    return out


class Requantizer(wiring.Component):
    """``lanes`` requantization lanes with a fixed latency.

    Ports
    -----
    operands : In
        ``valid``; per-instruction ``op_max``, ``relu``, ``out_signed``; per lane
        ``a`` (signed acc_width), ``b`` (signed 9-bit), ``a_shift``, ``b_shift``
        (left shifts, unsigned) and ``shift`` (requantization shift, signed 6-bit).
    result : Out
        ``valid`` and ``data`` (lanes x 8-bit two's complement / unsigned bytes).
    """

    LATENCY = 2

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
                "valid": 1, "op_max": 1, "relu": 1, "out_signed": 1,
                "lane": data.ArrayLayout(lane, lanes)})),
            "result": Out(data.StructLayout({
                "valid": 1, "data": data.ArrayLayout(unsigned(8), lanes)})),
        })

    lanes = property(lambda self: self._lanes)
    acc_width = property(lambda self: self._acc_width)

    def elaborate(self, platform):
        m = Module()
        W = self._acc_width
        lo_acc, hi_acc = -(1 << (W - 1)), (1 << (W - 1)) - 1
        ops = self.operands

        # Cycle 1: align, then add with saturation or take the max.
        s1 = Signal(data.StructLayout({
            "valid": 1, "op_max": 1, "relu": 1, "out_signed": 1,
            "sum": data.ArrayLayout(signed(W), self._lanes),
            "shift": data.ArrayLayout(signed(6), self._lanes)}))
        m.d.sync += [s1.valid.eq(ops.valid), s1.op_max.eq(ops.op_max),
                     s1.relu.eq(ops.relu), s1.out_signed.eq(ops.out_signed)]
        for i in range(self._lanes):
            ln = ops.lane[i]
            x = shift_left_saturate(m, ln.a, ln.a_shift, W + 1, f"x{i}")
            y = shift_left_saturate(m, ln.b, ln.b_shift, W + 1, f"y{i}")
            total = Signal(signed(W + 2), name=f"total{i}")
            m.d.comb += total.eq(x + y)
            with m.If(ops.op_max):
                m.d.sync += s1.sum[i].eq(Mux(x > y, x, y))
            with m.Elif(total > hi_acc):
                m.d.sync += s1.sum[i].eq(hi_acc)
            with m.Elif(total < lo_acc):
                m.d.sync += s1.sum[i].eq(lo_acc)
            with m.Else():
                m.d.sync += s1.sum[i].eq(total)
            m.d.sync += s1.shift[i].eq(ln.shift)

        # Cycle 2: shift with round-half-even, saturate to the 8-bit output range.
        lo = Signal(signed(9))
        hi = Signal(signed(10))
        m.d.comb += [
            lo.eq(Mux(s1.relu | ~s1.out_signed, 0, -127)),
            hi.eq(Mux(s1.out_signed, 127, 255)),
        ]
        m.d.sync += self.result.valid.eq(s1.valid)
        for i in range(self._lanes):
            r = shift_round_half_even(m, s1.sum[i], s1.shift[i], f"r{i}")
            with m.If(s1.op_max):
                m.d.sync += self.result.data[i].eq(s1.sum[i][:8])
            with m.Elif(r > hi):
                m.d.sync += self.result.data[i].eq(hi[:8])
            with m.Elif(r < lo):
                m.d.sync += self.result.data[i].eq(lo[:8])
            with m.Else():
                m.d.sync += self.result.data[i].eq(r[:8])
        return m
