"""Block-level tests of the LOAD unit (``hw/load.py``) in Amaranth's simulator: random
LOAD instructions, one at a time, against the instruction-level simulator, with the
memories played by the test and random stalls on the data stream and on the
write ports the loader yields to the vector unit and the matmul write-back."""

import random

import pytest

from fxpgen.hw.load import LoadUnit
from fxpgen.isa import ErrorCode, Instruction, Mem, Opcode

from unit_harness import (CONFIGS, Harness, MemoryModel, RandomBit, StreamSource, Top, addresses,
                          check_end, config_id, first_fault, hazard_mask, machine_rows,
                          machine_with, random_fault, random_rows, random_stream, run_insn, simulate)

INSNS = 40


def random_load(rng, cfg):
    mem = rng.choice(list(Mem))
    count0, count1 = rng.randint(1, 4), rng.randint(1, 3)
    z = random_stream(rng, cfg.depth(mem), count0, count1, random_fault(rng))
    return Instruction(Opcode.LOAD, {"mem": mem.value}, count0, count1, z=z)


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_load_matches_isa_sim(cfg, seed):
    """Each LOAD writes exactly the rows the instruction-level simulator writes (data
    word i's low bits into row z of iteration i, for every memory), consumes as many
    data words, and faults with the same code at the same iteration, reporting the
    instruction's pc and writing nothing from the faulting iteration on. While it
    runs it is busy and not ready, declares the ``z`` regions it writes (or the
    table) and no reads, never writes a port its arbiter has not left free, and
    flags ``stall`` exactly when it waits for a data word; with no stalls it takes
    one word a cycle."""
    rng = random.Random(seed)
    top = Top(load=LoadUnit(cfg))
    unit = top.units["load"]
    ctrl = unit.ctrl
    mems = {
        Mem.SPAD: MemoryModel(random_rows(rng, Mem.SPAD, cfg), write=[unit.spad_wr], name="spad"),
        Mem.WBUF: MemoryModel(random_rows(rng, Mem.WBUF, cfg), write=[unit.wbuf_wr], name="wbuf"),
        Mem.ACC: MemoryModel(random_rows(rng, Mem.ACC, cfg), write=[unit.acc_wr], name="acc"),
        Mem.TABLE: MemoryModel(random_rows(rng, Mem.TABLE, cfg), write=[unit.table_wr], name="table"),
        Mem.LUT: MemoryModel(random_rows(rng, Mem.LUT, cfg), write=[unit.lut_wr], name="lut"),
    }
    faults = []

    async def bench(ctx):
        for _ in range(INSNS):
            insn = random_load(rng, cfg)
            mem = Mem(insn.params["mem"])
            words = [rng.getrandbits(cfg.bus_width) for _ in range(insn.iterations)]
            mach = machine_with(cfg, spad=mems[Mem.SPAD].rows, wbuf=mems[Mem.WBUF].rows,
                                acc=mems[Mem.ACC].rows, table=mems[Mem.TABLE].rows,
                                lut=mems[Mem.LUT].rows)
            res = mach.run([insn.encode(cfg)], words)
            pc = rng.getrandbits(32)
            p_valid = rng.choice([1.0, 0.6, 0.25])
            p_free = rng.choice([1.0, 1.0, 0.5])
            src = StreamSource(unit.data, words, rng, p_valid)
            spad_free = RandomBit(unit.spad_free, rng, p_free)
            acc_free = RandomBit(unit.acc_free, rng, p_free)
            h = Harness(src, spad_free, acc_free, *mems.values())
            writes_before = {mm: len(model.writes) for mm, model in mems.items()}
            _, expect_writes, _ = hazard_mask(insn)

            busy_cycles = 0

            def check_cycle(ctx, error):
                nonlocal busy_cycles
                busy = ctx.get(ctrl.busy)
                assert ctx.get(ctrl.ready) == (not busy)
                assert ctx.get(ctrl.reads) == 0
                assert ctx.get(ctrl.writes) == (expect_writes if busy else 0)
                free = {Mem.SPAD: spad_free.value, Mem.ACC: acc_free.value}.get(mem, 1)
                assert not ctx.get(unit.spad_wr.en) or spad_free.value
                assert not ctx.get(unit.acc_wr.en) or acc_free.value
                waiting = busy and error == ErrorCode.NONE and free and not ctx.get(unit.data.valid)
                assert ctx.get(unit.stall) == waiting
                if error != ErrorCode.NONE or not busy:
                    return True
                busy_cycles += 1
                return False

            await h.start(ctx, ctrl, insn.encode(cfg), pc)
            error = await run_insn(ctx, h, ctrl, check_cycle, 20 * insn.iterations + 10, insn)
            sent = src.sent
            # An aborted unit takes no further data word.
            await check_end(ctx, h, top, ctrl, error, res.error, pc, faults, lambda ctx: src.sent == sent)
            executed = first_fault(insn, cfg)
            if error == ErrorCode.NONE and p_valid == 1.0 and p_free == 1.0:
                assert busy_cycles == insn.iterations
            assert src.sent == res.data_used == executed
            new = mems[mem].writes[writes_before[mem]:]
            assert [a for _, a, _ in new] == addresses(insn.z, insn.count0, insn.count1)[:executed]
            assert all(len(model.writes) == writes_before[mm]
                       for mm, model in mems.items() if mm is not mem)
            for mm, model in mems.items():
                assert model.rows == machine_rows(mach, mm), mm
            # Leave the port idle for the next instruction.
            ctx.set(unit.data.valid, 0)

    simulate(top, bench)
    assert faults, "no instruction faulted: the random streams need more faults"
