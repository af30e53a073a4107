"""Block-level tests of the STORE unit (``hw/store.py``) in Amaranth's simulator: random
STORE instructions, one at a time, against the instruction-level simulator, with the
scratchpad and accumulators played by the test and random backpressure on the
result stream."""

import random

import pytest

from fxpgen.hw.store import StoreUnit
from fxpgen.isa import ErrorCode, Instruction, Mem, Opcode

from unit_harness import (CONFIGS, Harness, MemoryModel, StreamSink, Top, addresses,
                          check_end, config_id, first_fault, hazard_mask, machine_with,
                          random_fault, random_rows, random_stream, run_insn, simulate)

INSNS = 40


def random_store(rng, cfg):
    mem = rng.choice([Mem.SPAD, Mem.ACC])
    count0, count1 = rng.randint(1, 6), rng.randint(1, 3)
    x = random_stream(rng, cfg.depth(mem), count0, count1, random_fault(rng))
    return Instruction(Opcode.STORE, {"mem": mem.value}, count0, count1, x=x)


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_store_matches_isa_sim(cfg, seed):
    """Each STORE sends exactly the words the instruction-level simulator sends (rows
    of SPAD or ACC, zero-extended, ``last`` on the final iteration's row only), in
    order, whatever the result stream's backpressure: nothing lost or repeated. A
    faulting STORE reports the code and its pc, reads no row from the faulting
    iteration on, still delivers the rows before it, and sends nothing once
    aborted. The unit is busy (and not ready) until its last row has left and idle a cycle later,
    declares the read regions while it reads and no writes, flags ``stall`` exactly
    when a row waits for the stream, and sends one row a cycle without backpressure."""
    rng = random.Random(seed)
    top = Top(store=StoreUnit(cfg))
    unit = top.units["store"]
    ctrl = unit.ctrl
    mems = {Mem.SPAD: MemoryModel(random_rows(rng, Mem.SPAD, cfg), read=[unit.spad_rd], name="spad",
                                  hold=False),
            Mem.ACC: MemoryModel(random_rows(rng, Mem.ACC, cfg), read=[unit.acc_rd], name="acc", hold=False)}
    faults = []

    async def bench(ctx):
        for _ in range(INSNS):
            insn = random_store(rng, cfg)
            mem = Mem(insn.params["mem"])
            mach = machine_with(cfg, spad=mems[Mem.SPAD].rows, acc=mems[Mem.ACC].rows)
            res = mach.run([insn.encode(cfg)], [])
            expected = [w | last << cfg.bus_width for w, last in zip(res.results, res.lasts)]
            executed = first_fault(insn, cfg)
            assert len(expected) == executed
            pc = rng.getrandbits(32)
            p_ready = rng.choice([1.0, 0.7, 0.3])
            sink = StreamSink(unit.result, rng, p_ready)
            h = Harness(sink, *mems.values())
            reads_before = {mm: len(model.reads[0]) for mm, model in mems.items()}
            expect_reads, _, expect_ports = hazard_mask(insn)

            def check_cycle(ctx, error):
                busy = ctx.get(ctrl.busy)
                issued = len(mems[mem].reads[0]) - reads_before[mem]
                reading = ctx.get(unit.spad_rd.en) or ctx.get(unit.acc_rd.en)
                assert ctx.get(ctrl.ready) == (not busy)
                assert ctx.get(ctrl.reads) in (0, expect_reads)
                # The memory bank's read port is held while the memory is read.
                assert ctx.get(ctrl.writes) == (expect_ports if ctx.get(ctrl.reads) else 0)
                if reading or (issued < executed and error == ErrorCode.NONE):
                    assert ctx.get(ctrl.reads) == expect_reads
                assert ctx.get(unit.stall) == (ctx.get(unit.result.valid) and not sink._ready)
                if error != ErrorCode.NONE:
                    return len(sink.received) == len(expected)
                if len(sink.received) < len(expected):
                    assert busy
                    return False
                if busy:
                    # The FIFO's level lags its output by a cycle.
                    assert h.cycle <= sink.received[-1][0] + 1
                return not busy

            await h.start(ctx, ctrl, insn.encode(cfg), pc)
            error = await run_insn(ctx, h, ctrl, check_cycle, 20 * insn.iterations + 20, insn)
            await check_end(ctx, h, top, ctrl, error, res.error, pc, faults,
                            lambda ctx: not ctx.get(unit.result.valid))
            if error == ErrorCode.NONE and p_ready == 1.0:
                cycles = [c for c, _ in sink.received]
                assert cycles == list(range(cycles[0], cycles[0] + len(cycles)))
            assert [w for _, w in sink.received] == expected
            assert [a for _, a in mems[mem].reads[0][reads_before[mem]:]] == \
                addresses(insn.x, insn.count0, insn.count1)[:executed]
            assert all(len(model.reads[0]) == reads_before[mm]
                       for mm, model in mems.items() if mm is not mem)
            ctx.set(unit.result.ready, 0)

    simulate(top, bench)
    assert faults, "no instruction faulted: the random streams need more faults"
