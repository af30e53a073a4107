"""The requantization unit: a vector of lanes doing shift-only rescaling.

Per lane (the formulas of :mod:`fxpgen.numerics`, no multiplier anywhere):

- Cycle 1: align both operands by left shift, saturated to acc_width + 1 bits.
- Cycle 2: either ``s = sat(x + y)`` to acc_width (requantize / residual add /
  element-wise add: :func:`fxpgen.numerics.aligned_add`) or ``s = max(x, y)`` (max
  pooling), one adder for both (``y - x`` is negative iff ``x > y``).
- Cycles 3-4: ``requantize(s, shift)``: round-half-even arithmetic right shift for
  ``shift > 0``, left shift for ``shift <= 0`` (cycle 3: the shift, clamped to 9
  bits, and the rounding decision; cycle 4: the rounding increment); saturate to
  int8 [-127, 127] or uint8 [0, 255], and to >= 0 with ReLU. Max bypasses these
  stages (format kept).
- Table lookups (LUT) arrive one cycle after their operands, from the lookup-table
  memories, and replace the max in cycle 2: the byte then rides the max path out.

Range checks pick one bit of an OR chain (no comparator, no wide shift), and each
shifter computes only the bits it delivers: acc_width + 1 for the alignment, 10 for
the requantization.

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


def _at_least(value, bound: int):
    """``value >= bound`` for a constant ``bound``, as and/or logic of ``value``'s
    bits (a comparison would become a carry chain on FPGAs)."""
    bits = [value[i] for i in range(len(value))]
    if value.shape().signed:    # offset binary: flipping the sign bit keeps the order
        bits[-1] = ~bits[-1]
        bound += 1 << (len(bits) - 1)
    if bound <= 0:
        return Const(1)
    if bound >= 1 << len(bits):
        return Const(0)
    out = Const(1)
    for i, bit in enumerate(bits):         # from the least significant bit up
        out = bit & out if (bound >> i) & 1 else bit | out
    return out


def _differs_from(m: Module, value, name: str):
    """``d``: bit ``j`` tells whether a bit of signed ``value`` at position ``j`` or
    above differs from the sign bit (so the top bit is 0): an OR chain from the
    top. ``value`` fits in ``j + 1`` bits iff not ``d[j]``."""
    sign = value[-1]
    d = Signal(len(value), name=name)
    for i in range(len(value) - 1):
        m.d.comb += d[i].eq(d[i + 1] | (value[i] ^ sign))
    return d


def _step(m: Module, value, name: str):
    """``value`` driven onto a new signal, so later stages refer to it by name (the
    generated Verilog then stays linear in the number of stages)."""
    wire = Signal(len(value), name=name)
    m.d.comb += wire.eq(value)
    return wire


def _shift_left_low(m: Module, value, amount, width: int, name: str):
    """The low ``width`` bits of ``value << amount`` (``value`` sign-extended,
    ``amount`` unsigned): a barrel shifter only as wide as its output. A value
    narrower than half the output takes the small steps first (its copies of the
    sign fold away while it grows), a wider one the large steps first (they clear
    its low bits first); each order maps to fewer gates in Yosys for its case."""
    bits = value.as_signed()[:width] if len(value) >= width else \
        Cat(value, value[-1].replicate(width - len(value)))
    order = range(len(amount))
    for k in (order if 2 * len(value) <= width else reversed(order)):
        bits = _step(m, Mux(amount[k], (bits << (1 << k))[:width], bits), f"{name}_step{k}")
    return bits


def _shift_right_low(m: Module, value, amount, width: int, name: str):
    """``(low, sticky)``: the low ``width`` bits of ``value >> amount``
    (arithmetic, ``amount`` unsigned) and the OR of the bits shifted out below
    them. The large steps go first, so each step keeps only the bits the
    remaining steps can still bring into the output (the bits above those are
    never seen, so the sign stands in for them)."""
    sign = value[-1]
    bits = value
    sticky = Const(0)
    for k in reversed(range(len(amount))):
        step = 1 << k
        keep = min(width + step - 1, len(bits))
        padded = Cat(bits, sign.replicate(max(step + keep - len(bits), 0)))
        sticky = sticky | (amount[k] & padded[:step].any())
        bits = _step(m, Mux(amount[k], padded[step:step + keep], padded[:keep]),
                     f"{name}_step{k}")
    low = Cat(bits, sign.replicate(max(width - len(bits), 0)))[:width]
    return low, sticky


def _select(m: Module, bits, index, name: str):
    """``bits[index]`` for a run-time unsigned ``index`` (the last bit for indices
    past the end): a mux tree, pairs of neighbours first."""
    n = 1 << len(index)
    # Named first, so each level's bit picks slice a signal, not the whole join
    # (Amaranth's simulator would evaluate the join once per bit).
    bits = _step(m, Cat(bits, bits[-1].replicate(max(n - len(bits), 0)))[:n], f"{name}_in")
    for k in range(len(index)):
        bits = _step(m, Mux(index[k], bits[1::2], bits[0::2]), f"{name}_level{k}")
    return bits[0]


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
    """``clamp(value << amount)`` to a signed ``width``-bit range (``amount``
    unsigned, any width). The shifted value fits exactly when ``value`` fits in
    ``width - amount`` bits (its bits from ``width - 1 - amount`` up copy the sign)
    and, for amounts of ``width`` or more, is 0; then it is the shift's low
    ``width`` bits, else the bound of ``value``'s sign. The range check picks one
    bit of an OR chain over ``value`` (no comparison, no wide shift). Amounts of
    ``width - 1`` or more leave only 0 or the lower bound when the value fits, so
    the shifter has no steps that large."""
    out = Signal(signed(width), name=name)
    fits = Signal(name=f"{name}_fits")
    d = _differs_from(m, value, f"{name}_differs")
    m.d.comb += fits.eq(~_select(m, [d[min(width - 1 - k, len(d) - 1)] for k in range(width)],
                                 amount, f"{name}_fits")
                        & ~(value[-1] & _at_least(amount, width)))
    steps = (width - 2).bit_length()           # the steps 2**k below width - 1
    large = amount[steps:].any() if len(amount) > steps else Const(0)
    low = _shift_left_low(m, value, amount[:steps], width, f"{name}_shift")
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    m.d.comb += out.eq(Mux(fits & ~large, low, Mux(value[-1], lo, Mux(fits, 0, hi))))
    return out


#: Bits the rescaled value keeps: every value outside int9 saturates any 8-bit output.
RESCALED_WIDTH = 9


def shift_round_half_even(m: Module, value, shift, name: str):
    """``value * 2**-shift`` rounded half to even (shift > 0), or ``value << -shift``
    (shift <= 0), as far as an 8-bit output can tell: returns ``(shifted,
    round_up)``, ``shifted`` the unrounded result clamped to signed
    :data:`RESCALED_WIDTH` bits; ``shifted + round_up`` then saturates to any
    8-bit range exactly as the exact result does. The sum is left to the caller so
    a register can sit between.

    One window of ``RESCALED_WIDTH + 1`` bits of ``value * 2**-(shift - 1)`` holds
    the guard bit (right shifts) and the kept bits; the sticky bit is the OR of the
    bits the window's shifter drops below it. The result fits when ``value``'s bits
    from ``RESCALED_WIDTH - 1 + shift`` up copy its sign (for left shifts of
    ``RESCALED_WIDTH`` or more only 0 fits, so numerics' cap of left shifts at 15
    changes nothing). Both are indexed by ``offset = shift + 32``, the window's
    position in ``value`` over 33 zero bits: the signed shift read as offset
    binary, no adder."""
    width, kept = len(value), RESCALED_WIDTH
    half = 1 << (len(shift) - 1)
    offset = Signal(len(shift), name=f"{name}_offset")
    window = Signal(kept + 1, name=f"{name}_window")
    fits = Signal(name=f"{name}_fits")
    sticky = Signal(name=f"{name}_sticky")
    shifted = Signal(signed(kept), name=name)
    round_up = Signal(name=f"{name}_round_up")
    bound = 1 << (kept - 1)
    first = half + 1 - kept         # bits from offset - first up must copy the sign
    d = _differs_from(m, value, f"{name}_differs")
    low, below = _shift_right_low(m, Cat(Const(0, half + 1), value).as_signed(), offset,
                                  kept + 1, f"{name}_shift")
    m.d.comb += [
        offset.eq(shift.as_unsigned() ^ half),
        window.eq(low),
        sticky.eq(below),
        fits.eq(~_select(m, [d[min(max(o - first, 0), width - 1)]
                             for o in range(width + first)], offset, f"{name}_fits")
                & ~(value[-1] & ~_at_least(offset, first))),
        shifted.eq(Mux(fits, window[1:], Mux(value[-1], -bound, bound - 1))),
        round_up.eq(_at_least(offset, half + 1) & window[0] & (sticky | window[1])),
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
        # One adder does both: x + y, or y - x for the max (negative iff x > y).
        # The max and lookup results are bytes (only their low byte leaves the
        # unit), so only the sum's low byte is multiplexed.
        s1 = Signal(data.StructLayout({
            **flags,
            "sum": data.ArrayLayout(signed(W), self._lanes),
            "shift": data.ArrayLayout(signed(6), self._lanes)}))
        m.d.sync += [getattr(s1, f).eq(getattr(s0, f)) for f in flags]
        for i in range(self._lanes):
            x, y = s0.x[i], s0.y[i]
            total = Signal(signed(W + 2), name=f"total{i}")
            m.d.comb += total.eq(y + Mux(s0.op_max, ~x, x) + s0.op_max)
            added = saturate(m, total, W, f"sum{i}")
            low = Mux(s0.op_lookup, self.lookup[i],
                      Mux(s0.op_max, Mux(total[-1], x[:8], y[:8]), added[:8]))
            m.d.sync += [s1.sum[i].eq(Cat(low, added[8:])), s1.shift[i].eq(s0.shift[i])]

        # Cycle 3: shift, and decide the rounding (half to even).
        s2 = Signal(data.StructLayout({
            **flags,
            "shifted": data.ArrayLayout(signed(RESCALED_WIDTH), self._lanes),
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
            r = Signal(signed(RESCALED_WIDTH + 1), name=f"rounded{i}")
            m.d.comb += r.eq(s2.shifted[i] + s2.round_up[i])
            byte = output_byte(m, r, s2.out_signed, s2.relu, f"out{i}")
            m.d.sync += self.result.data[i].eq(Mux(s2.op_max, s2.max[i], byte))
        return m
