"""Proof 3: memory safety of the address streams.

:class:`AddrGenHarness` drives :class:`~fxpgen.hw.addrgen.AddressLoops` (one
stream, ``addr_bits`` wide) with free loop counts, bases, strides, region masks and
advance requests, and keeps the exact address ``base + i1 * stride1 + i0 * stride0``
in a wide shadow (by the same additions, never wrapping). It asserts, on every
cycle:

- the stream's address is the exact one: its low ``addr_bits`` bits, and the sticky
  bit set exactly when the exact address is ``2**addr_bits`` or more (likewise the
  latched strides and the row start: the invariants the induction needs);
- :func:`~fxpgen.hw.addrgen.check_address`, for a memory of ``2**addr_bits`` rows
  and one of half that, passes an address (``ErrorCode.NONE``) exactly when the
  exact address is below the depth and its region (the top two bits of a
  depth-wide address) is in the instruction's mask; ``ADDRESS`` exactly when it is
  at or beyond the depth.

So no address that passes the check lies outside its memory or its regions, for
any field values. Every unit gates its memory enables with this check.
"""

from __future__ import annotations

from amaranth import *
from amaranth.hdl import Assert
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from fxpgen.config import REGIONS
from fxpgen.hw.addrgen import AddressLoops, check_address
from fxpgen.isa import COUNT_BITS, AddrGen, ErrorCode

from .observe import elaborate_observed

__all__ = ["AddrGenHarness", "check_address_off_by_one"]

#: Wide enough for base + 2 * (2**COUNT_BITS - 1) * (2**16 - 1) and the bounds'
#: products, never wrapping.
_EXACT_BITS = 16 + COUNT_BITS + 2


def check_address_off_by_one(m: Module, addr, depth_log2, regions, name: str):
    """Mutant of :func:`~fxpgen.hw.addrgen.check_address` with an off-by-one depth
    check: the address equal to the depth passes. ``depth_log2`` an int or a signal."""
    err = Signal(ErrorCode, name=f"{name}_err")
    region = Signal(range(REGIONS), name=f"{name}_region")
    region_shift = Signal(5, name=f"{name}_region_shift")
    m.d.comb += [region_shift.eq(depth_log2 - 2), region.eq(addr >> region_shift)]
    # addr > 2**depth_log2, where the shipped check has addr >= 2**depth_log2.
    with m.If((addr != 0) & (((addr - 1) >> depth_log2) != 0)):
        m.d.comb += err.eq(ErrorCode.ADDRESS)
    with m.Elif(~regions.bit_select(region, 1)):
        m.d.comb += err.eq(ErrorCode.REGION)
    with m.Else():
        m.d.comb += err.eq(ErrorCode.NONE)
    return err


class AddrGenHarness(wiring.Component):
    """Free inputs into one-stream address loops and the address checks of two
    memories; ``check`` is the check under proof (the shipped one by default)."""

    def __init__(self, addr_bits: int, check=check_address):
        self._addr_bits, self._check = addr_bits, check
        super().__init__({
            "start": In(1), "count0": In(COUNT_BITS), "count1": In(COUNT_BITS),
            "gen": In(AddrGen), "advance": In(1),
        })

    def _encode(self, exact):
        """The loops' encoding: low ``addr_bits`` bits and the sticky bit above."""
        L = self._addr_bits
        return Cat(exact[:L], exact[L:].any())

    def elaborate(self, platform):
        m = Module()
        L = self._addr_bits
        dut = AddressLoops(1, L)
        m.submodules.dut, sig = elaborate_observed(dut, platform)
        m.d.comb += [dut.start.eq(self.start), dut.count0.eq(self.count0),
                     dut.count1.eq(self.count1), dut.gens[0].eq(self.gen),
                     dut.advance.eq(self.advance)]
        exact = Signal(_EXACT_BITS, name="exact_addr")
        row = Signal(_EXACT_BITS, name="exact_row")
        stride0 = Signal(16, name="exact_stride0")
        stride1 = Signal(16, name="exact_stride1")
        regions = Signal(REGIONS, name="exact_regions")
        with m.If(self.start):
            m.d.sync += [exact.eq(self.gen.base), row.eq(self.gen.base),
                         stride0.eq(self.gen.stride0), stride1.eq(self.gen.stride1),
                         regions.eq(self.gen.regions)]
        with m.Elif(self.advance & dut.valid & ~dut.last):
            with m.If(sig["last0"]):
                m.d.sync += [row.eq(row + stride1), exact.eq(row + stride1)]
            with m.Else():
                m.d.sync += exact.eq(exact + stride0)
        # Bounds that keep the shadow from wrapping in the induction's free start
        # state: row <= (i1 + 1) * max_stride, exact <= row + i0 * max_stride.
        i0, i1, top = sig["i0"], sig["i1"], (1 << 16) - 1
        m.d.comb += [
            Assert(~dut.valid | ((i0 <= sig["end0"]) & (i1 <= sig["end1"])),
                   "loop counters within their counts"),
            Assert(~dut.valid | ((sig["last0"] == (i0 == sig["end0"]))
                                 & (sig["last1"] == (i1 == sig["end1"]))),
                   "the end flags are the counters' comparisons"),
            Assert(~dut.valid | (row <= (i1 + 1) * top), "row start bounded"),
            Assert(~dut.valid | (exact <= row + i0 * top), "address bounded"),
        ]
        m.d.comb += [
            Assert(dut.addr[0] == self._encode(exact), "address is the exact one"),
            Assert(sig["row_0"] == self._encode(row), "row start is the exact one"),
            Assert(sig["stride0_0"] == self._encode(stride0), "stride0 kept"),
            Assert(sig["stride1_0"] == self._encode(stride1), "stride1 kept"),
        ]
        # The region mask the units latch at start, as the shadow does.
        for depth_log2 in (L, L - 1):
            err = self._check(m, dut.addr[0], depth_log2, regions, f"mem{depth_log2}")
            inside = (exact >> depth_log2) == 0
            allowed = regions.bit_select(exact[depth_log2 - 2:depth_log2], 1)
            m.d.comb += [
                Assert((err == ErrorCode.NONE) == (inside & allowed),
                       f"depth 2**{depth_log2}: passes exactly the in-memory, in-region addresses"),
                Assert((err == ErrorCode.ADDRESS) == ~inside,
                       f"depth 2**{depth_log2}: ADDRESS exactly beyond the depth"),
            ]
        return m
