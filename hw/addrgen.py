"""Two nested affine address loops driving up to three address streams.

Iteration ``(i1, i0)`` of ``for i1 in range(count1): for i0 in range(count0)``
points stream ``g`` at ``g.base + i1 * g.stride1 + i0 * g.stride0``, computed by
additions only. Each address is checked against its memory's depth and the
stream's region mask before anything uses it.

Addresses are kept in ``addr_bits`` (the largest memory's) plus one sticky bit set
once the exact address reaches ``2**addr_bits``: strides are unsigned, so an address
only grows and, once beyond every memory, stays beyond. This keeps the
accumulators as narrow as the memories while faulting exactly where the
instruction-level simulator's exact integers do.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from fxpgen.config import REGIONS
from fxpgen.isa import AddrGen, COUNT_BITS, ErrorCode

__all__ = ["AddressLoops", "check_address", "loop_addr_bits"]


def loop_addr_bits(cfg) -> int:
    """Address bits of the loops for ``cfg``: enough for its largest memory."""
    return max(max(cfg.spad_depth, cfg.wbuf_depth, cfg.acc_depth, cfg.table_depth,
                   cfg.lut_depth) - 1, 1).bit_length()


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
    pending, ``last`` on the final one; ``addr[k]`` is stream k's current address:
    ``addr_bits`` bits and, above them, the sticky beyond-``2**addr_bits`` bit.
    """

    def __init__(self, streams: int, addr_bits: int = 16):
        if not 1 <= addr_bits <= 16:
            raise ValueError(f"addr_bits must be in 1..16, not {addr_bits}")
        self._streams, self._addr_bits = streams, addr_bits
        ADDR_WIDTH = addr_bits + 1
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
        n, L = self._streams, self._addr_bits
        i0 = Signal(COUNT_BITS)
        i1 = Signal(COUNT_BITS)
        end0 = Signal(COUNT_BITS)
        end1 = Signal(COUNT_BITS)
        # A stride keeps its low L bits and whether it alone reaches 2**L.
        stride0 = [Signal(L + 1, name=f"stride0_{k}") for k in range(n)]
        stride1 = [Signal(L + 1, name=f"stride1_{k}") for k in range(n)]
        row = [Signal(L + 1, name=f"row_{k}") for k in range(n)]
        # Whether i0 and i1 are at their ends, kept in registers (set a cycle ahead,
        # from the counts and the next indices), so ``last`` is one AND of flip-flops
        # and the units' ready signals that follow it carry no comparator.
        last0 = Signal()
        last1 = Signal()
        m.d.comb += self.last.eq(self.valid & last0 & last1)

        def narrow(value):
            return Cat(value[:L], value[L:].any())

        def add(a, stride):
            total = a[:L] + stride[:L]              # L + 1 bits: the carry on top
            return Cat(total[:L], a[L] | stride[L] | total[L])

        with m.If(self.start):
            m.d.sync += [
                self.valid.eq((self.count0 != 0) & (self.count1 != 0)),
                i0.eq(0), i1.eq(0),
                end0.eq(self.count0 - 1), end1.eq(self.count1 - 1),
                last0.eq(self.count0 == 1), last1.eq(self.count1 == 1),
            ]
            for k in range(n):
                g = self.gens[k]
                m.d.sync += [stride0[k].eq(narrow(g.stride0)), stride1[k].eq(narrow(g.stride1)),
                             row[k].eq(narrow(g.base)), self.addr[k].eq(narrow(g.base))]
        with m.Elif(self.advance & self.valid):
            with m.If(self.last):
                m.d.sync += self.valid.eq(0)
            with m.Elif(last0):
                m.d.sync += [i0.eq(0), i1.eq(i1 + 1), last0.eq(end0 == 0), last1.eq(i1 + 1 == end1)]
                for k in range(n):
                    nxt = add(row[k], stride1[k])
                    m.d.sync += [row[k].eq(nxt), self.addr[k].eq(nxt)]
            with m.Else():
                m.d.sync += [i0.eq(i0 + 1), last0.eq(i0 + 1 == end0)]
                for k in range(n):
                    m.d.sync += self.addr[k].eq(add(self.addr[k], stride0[k]))
        return m
