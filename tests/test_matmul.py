"""Block-level tests of the MATMUL unit (``hw/matmul.py``) driving the real systolic
array (``hw/array.py``), wired as in ``hw/core.py``, in Amaranth's simulator: random
MATMUL instructions against the instruction-level simulator, with the scratchpad and
the accumulators (read port transparent to the write port, as in ``hw/buffers.py``)
played by the test and the weight banks loaded through the array's weight port."""

import random

import numpy as np
import pytest

from fxpgen.config import REGIONS
from fxpgen.hw.array import SystolicArray
from fxpgen.hw.hazards import resource_index
from fxpgen.hw.matmul import MatmulUnit
from fxpgen.hw.stages import COMPACT, FAST
from fxpgen.isa import Addr, ErrorCode, Instruction, Mem, Opcode, read_port

from unit_harness import (CONFIGS, Harness, MemoryModel, Top, addresses, check_end,
                          config_id, first_fault, hazard_mask, machine_rows, machine_with, random_fault,
                          random_rows, random_stream, run_insn, simulate)

INSNS = 25


def build(cfg, rng, stages=FAST):
    """The MATMUL unit (pipeline registers ``stages``) wired to a systolic array, and
    the scratchpad and accumulators (random rows) behind its ports."""
    arr = SystolicArray(cfg.rows, cfg.cols, cfg.psum_width)
    mm = MatmulUnit(cfg, arr.LATENCY, stages)
    top = Top(wires=[arr.act.eq(mm.act), mm.psum.eq(arr.psum)], mm=mm, arr=arr)
    spad = MemoryModel(random_rows(rng, Mem.SPAD, cfg), read=[mm.spad_rd], name="spad", hold=False)
    acc = MemoryModel(random_rows(rng, Mem.ACC, cfg), read=[mm.acc_rd], write=[mm.acc_wr],
                      transparent=[mm.acc_rd], name="acc", hold=False)
    return top, mm, arr, spad, acc


def random_matmul(rng, cfg, count0=None, count1=None):
    count0 = rng.randint(1, 5) if count0 is None else count0
    count1 = rng.randint(1, 3) if count1 is None else count1
    params = {"bank": rng.randrange(2), "accumulate": rng.randrange(2),
              "act_signed": rng.randrange(2), "lane": rng.randrange(cfg.matmul_lanes)}
    x = random_stream(rng, cfg.spad_depth, count0, count1, random_fault(rng, 0.25))
    z = random_stream(rng, cfg.acc_depth, count0, count1, random_fault(rng, 0.25))
    return Instruction(Opcode.MATMUL, params, count0, count1, x=x, z=z)


async def load_banks(ctx, h, arr, banks):
    """Shift both weight banks in through the array's weight port, row 0 first."""
    for b in range(2):
        for row in banks[b]:
            ctx.set(arr.weights, {"valid": 1, "bank": b, "data": [int(w) for w in row]})
            await h.step(ctx)
    ctx.set(arr.weights.valid, 0)


def acc_bit(cfg, addr):
    return 1 << resource_index((Mem.ACC, addr * REGIONS // cfg.acc_depth))


def acc_port_bit(cfg, addr):
    return 1 << resource_index(read_port(Mem.ACC, addr * REGIONS // cfg.acc_depth))


@pytest.mark.parametrize("stages", [FAST, COMPACT], ids=["fast", "compact"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_matmul_matches_isa_sim(cfg, stages, seed):
    """Each MATMUL leaves the accumulators exactly as the instruction-level simulator
    does (lane select, int8/uint8 activations, either bank, overwrite or saturating
    accumulate, repeated rows accumulated in order through the transparent read).
    It issues one vector a cycle from the cycle after start, reads SPAD row x and
    writes ACC row z of each iteration, the write ``1 + matmul_act +
    SystolicArray.LATENCY`` cycles after the issue. A faulting MATMUL reports the code and its pc, issues
    nothing from the faulting iteration on, and still writes back the vectors
    before it once aborted. It is ready exactly from the cycle of its last vector
    (issued, or faulting: the fault aborts what starts with it),
    busy until its last write-back, and declares the SPAD regions and bank it reads
    and the ACC regions it writes while issuing, then the bank and regions of the
    vectors still in flight."""
    rng = random.Random(seed)
    top, mm, arr, spad, acc = build(cfg, rng, stages)
    ctrl = mm.ctrl
    h = Harness(spad, acc)
    latency = mm.write_delay
    assert latency == 1 + stages.matmul_act + cfg.rows + cfg.cols
    faults = []

    async def bench(ctx):
        for _ in range(INSNS):
            banks = np.array([[[rng.randrange(-128, 128) for _ in range(cfg.cols)]
                               for _ in range(cfg.rows)] for _ in range(2)])
            await load_banks(ctx, h, arr, banks)
            insn = random_matmul(rng, cfg)
            mach = machine_with(cfg, spad=spad.rows, acc=acc.rows, banks=banks)
            res = mach.run([insn.encode(cfg)], [])
            executed = first_fault(insn, cfg)
            assert res.macs == executed
            pc = rng.getrandbits(32)
            x_reads, writes = len(spad.reads[0]), len(acc.writes)
            expect_reads, expect_writes, expect_ports = hazard_mask(insn)
            bank = 1 << resource_index(("BANK", insn.params["bank"]))
            z = addresses(insn.z, insn.count0, insn.count1)

            issues = []

            def check_cycle(ctx, error):
                issuing = ctx.get(mm.issuing)
                if issuing:
                    issues.append(h.cycle)
                done = len(acc.writes) - writes
                pending = error != ErrorCode.NONE or len(issues) - issuing < insn.iterations
                in_flight = [z[k] for k in range(done, len(issues) - issuing)]
                last = len(issues) - issuing == insn.iterations - 1     # the loops' last vector
                assert ctx.get(ctrl.ready) == (len(issues) == insn.iterations
                                               or (error != ErrorCode.NONE and last))
                assert ctx.get(ctrl.busy) == (pending or bool(in_flight))
                assert ctx.get(ctrl.reads) == ((expect_reads if pending else 0)
                                               | (bank if in_flight else 0))
                assert ctx.get(ctrl.writes) == ((expect_writes | expect_ports if pending else 0)
                                                | sum({acc_bit(cfg, a) for a in in_flight})
                                                | sum({acc_port_bit(cfg, a) for a in in_flight}))
                return error != ErrorCode.NONE or not ctx.get(ctrl.busy)

            await h.start(ctx, ctrl, insn.encode(cfg), pc)
            start = h.cycle
            error = await run_insn(ctx, h, ctrl, check_cycle, insn.iterations + latency + 5, insn)
            # Aborted at once, it still writes back what it issued.
            await check_end(ctx, h, top, ctrl, error, res.error, pc, faults,
                            lambda ctx: not ctx.get(mm.issuing), hold=0, drain=latency + 2)
            assert issues == list(range(start, start + executed))
            assert [c for c, _ in spad.reads[0][x_reads:]] == issues
            assert [a for _, a in spad.reads[0][x_reads:]] == addresses(insn.x, insn.count0, insn.count1)[:executed]
            assert [c for c, _, _ in acc.writes[writes:]] == [c + latency for c in issues]
            assert [a for _, a, _ in acc.writes[writes:]] == z[:executed]
            assert acc.rows == machine_rows(mach, Mem.ACC)

    simulate(top, bench)
    assert faults, "no instruction faulted: the random streams need more faults"


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=config_id)
def test_back_to_back_matmuls_keep_the_array_full(cfg, seed):
    """The next MATMUL is accepted in the cycle the current one issues its last
    vector, so consecutive matmuls issue on consecutive cycles with no bubble, even
    when both accumulate into the same rows, one bank each: the second reads the
    rows the first is still writing back through the transparent read, and the
    accumulators end as the instruction-level simulator leaves them."""
    rng = random.Random(seed)
    top, mm, arr, spad, acc = build(cfg, rng)
    ctrl = mm.ctrl
    h = Harness(spad, acc)
    banks = np.array([[[rng.randrange(-128, 128) for _ in range(cfg.cols)]
                       for _ in range(cfg.rows)] for _ in range(2)])
    program = []
    for b in range(4):
        n = rng.randint(1, 4)
        program.append(Instruction(
            Opcode.MATMUL, {"bank": b % 2, "accumulate": 1, "act_signed": rng.randrange(2),
                            "lane": rng.randrange(cfg.matmul_lanes)}, n, 1,
            x=Addr(rng.randrange(cfg.spad_depth - n), 1, 0),
            z=Addr(rng.randrange(2), rng.randrange(2), 0)).with_regions(cfg))
    mach = machine_with(cfg, spad=spad.rows, acc=acc.rows, banks=banks)
    res = mach.run([i.encode(cfg) for i in program], [])
    assert res.error == ErrorCode.NONE
    issues = []

    async def bench(ctx):
        await load_banks(ctx, h, arr, banks)
        queue = list(program)
        for _ in range(res.macs + 2 * arr.LATENCY + 10):
            h.settle(ctx)
            if ctx.get(mm.issuing):
                issues.append(h.cycle)
            start = bool(queue) and ctx.get(ctrl.ready)
            ctx.set(ctrl.start, start)
            if start:
                ctx.set(ctrl.insn.as_value(), queue.pop(0).encode(cfg))
            await h.tick(ctx)
        ctx.set(ctrl.start, 0)
        assert not ctx.get(ctrl.busy)

    simulate(top, bench)
    assert len(issues) == res.macs
    assert issues == list(range(issues[0], issues[0] + res.macs))
    assert acc.rows == machine_rows(mach, Mem.ACC)
