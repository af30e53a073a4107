"""Amaranth-simulator tests of the address loops (``hw/addrgen.py``)."""

from fxpgen.hw.addrgen import AddressLoops

from unit_harness import simulate


def test_address_loops_order():
    """The loops visit ``base + i1 * stride1 + i0 * stride0`` with i0 innermost, flag
    the last iteration, and a zero count starts nothing."""
    dut = AddressLoops(2)
    seen = []

    async def bench(ctx):
        ctx.set(dut.start, 1)
        ctx.set(dut.count0, 3)
        ctx.set(dut.count1, 2)
        ctx.set(dut.gens[0], {"base": 10, "stride0": 1, "stride1": 100, "regions": 15})
        ctx.set(dut.gens[1], {"base": 0, "stride0": 0, "stride1": 7, "regions": 15})
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.advance, 1)
        for _ in range(10):
            if ctx.get(dut.valid):
                seen.append((ctx.get(dut.addr[0]), ctx.get(dut.addr[1]), ctx.get(dut.last)))
            await ctx.tick()
        ctx.set(dut.start, 1)
        ctx.set(dut.count0, 0)
        await ctx.tick()
        assert not ctx.get(dut.valid)

    simulate(dut, bench)
    assert seen == [(10, 0, 0), (11, 0, 0), (12, 0, 0), (110, 7, 0), (111, 7, 0), (112, 7, 1)]
