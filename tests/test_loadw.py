"""Block-level tests of the LOADW unit (``hw/loadw.py``) in Amaranth's simulator: random
LOADW instructions, one at a time, against the instruction-level simulator, with the
weight buffer played by the test and the rows the unit sends toward the array's
weight port recorded."""

import random

import pytest

from fxpgen.hw.loadw import WeightLoader
from fxpgen.hw.hazards import resource_index
from fxpgen.isa import Addr, ErrorCode, Instruction, Mem, Opcode, loadw_rows, pack_row, weight_bits

from unit_harness import (CONFIGS, HOLD, Harness, MemoryModel, Top, addresses, check_end,
                          config_id, first_fault, hazard_mask, machine_with, random_fault, random_rows,
                          random_stream, run_insn, simulate)

INSNS = 40


def random_loadw(rng, cfg):
    narrow = rng.randrange(cfg.weight_widths)
    n = loadw_rows(cfg, narrow)
    x = random_stream(rng, cfg.wbuf_depth, n, 1, random_fault(rng))
    return Instruction(Opcode.LOADW, {"bank": rng.randrange(2), "narrow": narrow}, n, 1, x=x)


@pytest.mark.parametrize("cfg", CONFIGS + [CONFIGS[-1].replace(weight_widths=1)], ids=config_id)
def test_loadw_matches_isa_sim(cfg, seed):
    """Each LOADW, of 8-, 6-, 4- or 2-bit weights, sends the weight rows the
    instruction-level simulator puts in the bank, in order, tagged with the bank, one
    a cycle from the cycle after start: row i leaves at start + i + 1, and WBUF row k
    is read at start + floor(8k / b), the cycle before the first row needing its bits
    (at 8 bits: every cycle). A faulting LOADW reports the code and its pc, reads
    nothing from the faulting iteration on, sends only the rows the reads before it
    complete, and nothing once aborted. The unit is busy (not ready) until its last
    row has left, declares the WBUF regions while it reads and the bank until the
    last row has left."""
    rng = random.Random(seed)
    top = Top(loadw=WeightLoader(cfg))
    unit = top.units["loadw"]
    ctrl = unit.ctrl
    wbuf = MemoryModel(random_rows(rng, Mem.WBUF, cfg), read=[unit.wbuf_rd], name="wbuf")
    h = Harness(wbuf)
    faults = []

    async def bench(ctx):
        for _ in range(INSNS):
            insn = random_loadw(rng, cfg)
            bank = insn.params["bank"]
            mach = machine_with(cfg, wbuf=wbuf.rows)
            res = mach.run([insn.encode(cfg)], [])
            executed = first_fault(insn, cfg)
            pc = rng.getrandbits(32)
            before = len(wbuf.reads[0])
            expect_reads, expect_writes, _ = hazard_mask(insn)
            assert expect_writes == 1 << resource_index(("BANK", bank))

            sent = []

            width = weight_bits(insn.params["narrow"])

            def check_cycle(ctx, error):
                reads = [c for c, _ in wbuf.reads[0][before:]]
                issued_before = len([c for c in reads if c < h.cycle])
                reading = error != ErrorCode.NONE or issued_before < insn.iterations
                busy = reading or h.cycle <= start + cfg.rows
                assert ctx.get(ctrl.busy) == busy
                assert ctx.get(ctrl.ready) == (not busy)
                assert ctx.get(ctrl.reads) == (expect_reads if reading else 0)
                assert ctx.get(ctrl.writes) == (expect_writes if busy else 0)
                if ctx.get(unit.weights.valid):
                    assert ctx.get(unit.weights.bank) == bank
                    sent.append((h.cycle, ctx.get(unit.weights.data.as_value())))
                return error != ErrorCode.NONE or not busy

            await h.start(ctx, ctrl, insn.encode(cfg), pc)
            start = h.cycle
            error = await run_insn(ctx, h, ctrl, check_cycle, cfg.rows + 10, insn)
            await check_end(ctx, h, top, ctrl, error, res.error, pc, faults,
                            lambda ctx: not ctx.get(unit.weights.valid))
            reads = wbuf.reads[0][before:]
            assert reads == list(zip([start + 8 * k // width for k in range(executed)],
                                     addresses(insn.x, insn.count0, insn.count1)[:executed]))
            done = min(cfg.rows, 8 * executed // width)
            assert sent == [(start + i + 1, pack_row(Mem.WBUF, mach.banks[bank][i], cfg))
                            for i in range(done)]

    simulate(top, bench)
    assert faults, "no instruction faulted: the random streams need more faults"


@pytest.mark.parametrize("cfg", CONFIGS[2:], ids=config_id)
def test_abort_stops_loadw_mid_tile(cfg, seed):
    """An abort (another unit's error) in the middle of a valid LOADW stops it at
    once: no weight row reaches the array from that cycle on, however many were
    read, no further read is issued, and the unit reports no error of its own."""
    rng = random.Random(seed)
    top = Top(loadw=WeightLoader(cfg))
    unit = top.units["loadw"]
    wbuf = MemoryModel(random_rows(rng, Mem.WBUF, cfg), read=[unit.wbuf_rd], name="wbuf")
    h = Harness(wbuf)
    insn = Instruction(Opcode.LOADW, {"bank": rng.randrange(2)}, cfg.rows, 1,
                       x=Addr(0, 1, 0)).with_regions(cfg)

    async def bench(ctx):
        await h.start(ctx, unit.ctrl, insn.encode(cfg), 0)
        for _ in range(rng.randint(1, cfg.rows - 1)):
            await h.step(ctx)
        ctx.set(unit.ctrl.abort, 1)
        reads = len(wbuf.reads[0])
        for _ in range(HOLD):
            h.settle(ctx)
            assert not ctx.get(unit.weights.valid)
            assert ctx.get(unit.ctrl.error) == ErrorCode.NONE
            await h.tick(ctx)
        assert 0 < reads < cfg.rows and len(wbuf.reads[0]) == reads

    simulate(top, bench)
