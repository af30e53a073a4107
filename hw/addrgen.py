"""Two nested affine address loops driving up to three address streams.

Iteration ``(i1, i0)`` of ``for i1 in range(count1): for i0 in range(count0)``
points stream ``g`` at ``g.base + i1 * g.stride1 + i0 * g.stride0``, computed by
additions only. Each address is checked against its memory's depth and the
stream's region mask before anything uses it.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from fxpgen.config import REGIONS
from fxpgen.isa import AddrGen, COUNT_BITS, ErrorCode

__all__ = ["AddressLoops", "ADDR_WIDTH", "check_address"]

#: Internal address width: base + 4095 * 65535 * 2 never overflows it.
ADDR_WIDTH = 30


def check_address(m: Module, addr, depth_log2, regions, name: str):
    """Return an ``ErrorCode`` signal for ``addr`` in a memory of ``2**depth_log2``
    rows whose allowed regions are the mask ``regions``. ``depth_log2`` may be a
    Python int or a signal (when the memory is chosen by the instruction)."""
    err = Signal(ErrorCode, name=f"{name}_err")
    region = Signal(range(REGIONS), name=f"{name}_region")
    above = Signal(name=f"{name}_above")
    if isinstance(depth_log2, int):
        region_shift = depth_log2 - 2
    else:
        region_shift = Signal(5, name=f"{name}_region_shift")
        m.d.comb += region_shift.eq(depth_log2 - 2)
    m.d.comb += [above.eq((addr >> depth_log2) != 0),
                 region.eq(addr >> region_shift)]
    with m.If(above):
        m.d.comb += err.eq(ErrorCode.ADDRESS)
    with m.Elif(~regions.bit_select(region, 1)):
        m.d.comb += err.eq(ErrorCode.REGION)
    with m.Else():
        m.d.comb += err.eq(ErrorCode.NONE)
    return err


class AddressLoops(wiring.Component):
    """Loop counters and ``streams`` address accumulators.

    ``start`` (with ``count0``, ``count1``, ``gens``) loads a new loop nest;
    ``advance`` steps to the next iteration. ``valid`` is high while an iteration is
    pending, ``last`` on the final one; ``addr[k]`` is stream k's current address.
    """

    def __init__(self, streams: int):
        self._streams = streams
        super().__init__({
            "start": In(1),
            "count0": In(COUNT_BITS),
            "count1": In(COUNT_BITS),
            "gens": In(data.ArrayLayout(AddrGen, streams)),
            "advance": In(1),
            "valid": Out(1),
            "last": Out(1),
            "addr": Out(data.ArrayLayout(ADDR_WIDTH, streams)),
        })

    def elaborate(self, platform):
        m = Module()
        n = self._streams
        i0 = Signal(COUNT_BITS)
        i1 = Signal(COUNT_BITS)
        end0 = Signal(COUNT_BITS)
        end1 = Signal(COUNT_BITS)
        stride0 = [Signal(16, name=f"stride0_{k}") for k in range(n)]
        stride1 = [Signal(16, name=f"stride1_{k}") for k in range(n)]
        row = [Signal(ADDR_WIDTH, name=f"row_{k}") for k in range(n)]
        last0 = Signal()
        m.d.comb += [
            last0.eq(i0 == end0),
            self.last.eq(self.valid & last0 & (i1 == end1)),
        ]
        with m.If(self.start):
            m.d.sync += [
                self.valid.eq((self.count0 != 0) & (self.count1 != 0)),
                i0.eq(0), i1.eq(0),
                end0.eq(self.count0 - 1), end1.eq(self.count1 - 1),
            ]
            for k in range(n):
                g = self.gens[k]
                m.d.sync += [stride0[k].eq(g.stride0), stride1[k].eq(g.stride1),
                             row[k].eq(g.base), self.addr[k].eq(g.base)]
        with m.Elif(self.advance & self.valid):
            with m.If(self.last):
                m.d.sync += self.valid.eq(0)
            with m.Elif(last0):
                m.d.sync += [i0.eq(0), i1.eq(i1 + 1)]
                for k in range(n):
                    m.d.sync += [row[k].eq(row[k] + stride1[k]),
                                 self.addr[k].eq(row[k] + stride1[k])]
            with m.Else():
                m.d.sync += i0.eq(i0 + 1)
                for k in range(n):
                    m.d.sync += self.addr[k].eq(self.addr[k] + stride0[k])
        return m
