"""Amaranth-simulator tests of the processing element (``hw/pe.py``)."""

from fxpgen.hw.pe import ProcessingElement

from unit_harness import simulate


def test_pe_macs_with_both_banks():
    """A PE multiplies its activation by the weight of the bank it is told, adds the
    partial sum a cycle later, and passes activation and bank on."""
    dut = ProcessingElement(psum_width=20)

    async def bench(ctx):
        for bank, w in ((0, -7), (1, 100)):
            ctx.set(dut.w_load, 1)
            ctx.set(dut.w_load_bank, bank)
            ctx.set(dut.w_in, w)
            await ctx.tick()
        ctx.set(dut.w_load, 0)
        # The partial sum joins one cycle after its activation (the product's stage).
        cases = ((0, 255, 5, 5 - 7 * 255), (1, -128, -3, -3 - 12800), (0, -1, 0, 7))
        for t in range(len(cases) + 1):
            if t < len(cases):
                bank, act, _, _ = cases[t]
                ctx.set(dut.act_in, act)
                ctx.set(dut.bank_in, bank)
            if 1 <= t <= len(cases):
                ctx.set(dut.psum_in, cases[t - 1][2])
            await ctx.tick()
            if t < len(cases):
                assert ctx.get(dut.act_out) == cases[t][1]
                assert ctx.get(dut.bank_out) == cases[t][0]
            if t >= 1:
                assert ctx.get(dut.psum_out) == cases[t - 1][3]

    simulate(dut, bench)
