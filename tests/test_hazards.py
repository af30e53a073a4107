"""The controller's hardware footprint (hazard masks) equals the ISA's Python
footprint for random instructions, and the core's dispatch respects hazards."""

import random

from amaranth import Module, Signal
from amaranth.sim import Simulator

from fxpgen.config import CoreConfig
from fxpgen.hw.hazards import HAZARD_BITS, insn_footprint, resource_index
from fxpgen.isa import INSN_BITS, Insn, Opcode, footprint
from fxpgen.sim.randprog import random_program


def test_hardware_footprint_matches_isa_footprint(seed):
    rng = random.Random(seed)
    cfg = CoreConfig(rows=4, cols=8, spad_depth=64, wbuf_depth=32, acc_depth=64, table_depth=4)
    insns = []
    while len(insns) < 300:
        insns += [i for i in random_program(cfg, rng).instructions]
    insns = [i.with_regions(cfg) for i in insns]

    m = Module()
    word = Signal(INSN_BITS)
    reads, writes = insn_footprint(m, Insn(word))
    got = []

    async def bench(ctx):
        for insn in insns:
            ctx.set(word, insn.encode(cfg))
            got.append((ctx.get(reads), ctx.get(writes)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()

    def mask(resources):
        return sum(1 << resource_index(r) for r in resources)

    for insn, (r, w) in zip(insns, got):
        fp = footprint(insn)
        assert (r, w) == (mask(fp.reads), mask(fp.writes | fp.ports)), insn
    assert HAZARD_BITS == 22
    assert {i.opcode for i in insns} >= set(Opcode) - {Opcode.SYNC}
