"""The vector unit (``hw/vector.py``: REQUANT, ADD, MAX, MUL, LUT) alone in Amaranth's
simulator, its memories and its controller played by the testbench, against the
instruction-level simulator running the same instructions from the same state."""

import random
from dataclasses import replace

import pytest

from fxpgen.hw.hazards import LUT_BIT
from fxpgen.hw.requant import Requantizer
from fxpgen.hw.stages import COMPACT, FAST
from fxpgen.hw.vector import VectorUnit
from fxpgen.config import REGIONS
from fxpgen.isa import ErrorCode, Mem, Opcode, read_port

from unit_harness import (CONFIGS, Harness, MemoryModel, addresses, config_id, hazard_mask,
                          machine_rows, random_machine, random_vector_insn, simulate)



def paired(insn) -> bool:
    """Whether ``insn`` reads two scratchpad operands through one bank's read port."""
    if insn.opcode not in (Opcode.ADD, Opcode.MAX, Opcode.MUL):
        return False
    x, y = ({read_port(Mem.SPAD, r) for r in range(REGIONS) if a.regions >> r & 1} for a in (insn.x, insn.y))
    return bool(x & y)


def run_vector(cfg, machine, insns, pcs, abort_at=None, as_run=None, stages=FAST):
    """Run ``insns`` one after another through a VectorUnit (pipeline registers
    ``stages``) whose memories start as ``machine``'s, then on ``machine`` itself, one
    instruction a run, stopping at the first error. At each instruction's end the played scratchpad must equal the
    machine's, and on the way the unit must:

    - issue one iteration a cycle, reading exactly the rows of those iterations
      (accumulators for REQUANT, ``x`` and ``y`` of the scratchpad otherwise, ``y``
      only with a residual) and writing each result ``write_delay`` cycles later
      (``1 + vector_read + vector_operands + Requantizer.LATENCY``); with ``x`` and
      ``y`` in one scratchpad bank (:func:`paired`), one iteration every other
      cycle: ``x`` read in the first, ``y`` and the issue in the second;
    - report the ISA footprint: its reads and read ports while it issues (LUT's
      lookup tables, read a cycle after the issue, until the last write), its
      writes until the last write, ``busy`` exactly that long and ``ready``
      otherwise; hold the scratchpad's write port (``spad_hold``) on every cycle it
      writes and, paired, the cycle before each write;
    - LUT: look up every byte of each ``x`` row in its lane's table
      ``1 + vector_read`` cycles after the row is read;
    - report a fault in the cycle of the faulting iteration with that
      instruction's ``pc``, and stop reporting it once aborted;
    - once aborted (``abort_at``: that many cycles into the last instruction, as
      when another unit faults), issue nothing more but finish the writes of the
      iterations issued: ``as_run`` are then the instructions the machine runs.

    Returns the (error, error_pc) pairs seen, one per instruction run.
    """
    dut = VectorUnit(cfg, stages)
    write_delay = 1 + stages.vector_read + stages.vector_operands + Requantizer.LATENCY
    assert dut.write_delay == write_delay
    spad = MemoryModel(machine_rows(machine, Mem.SPAD), read=[dut.spad_rd_x, dut.spad_rd_y],
                       write=[dut.spad_wr], name="spad", hold=False)
    acc = MemoryModel(machine_rows(machine, Mem.ACC), read=[dut.acc_rd], name="acc", hold=False)
    table = MemoryModel(machine_rows(machine, Mem.TABLE), read=[dut.table_rd], name="table")
    lut = MemoryModel(machine_rows(machine, Mem.LUT), read=list(dut.lut_rd), name="lut")
    read_ports = {dut.acc_rd: acc, dut.table_rd: table, dut.spad_rd_x: spad, dut.spad_rd_y: spad}
    h = Harness(acc, table, spad, lut)
    ctrl = dut.ctrl
    seen = []      # (error, error_pc) of each instruction run
    after = []     # the played scratchpad after each instruction without error

    async def bench(ctx):
        async def tick():
            """One cycle: the row each read port read in it (None if none) and the
            scratchpad rows written."""
            writes = len(spad.writes)
            await h.step(ctx)
            return ({p: m.read_in(p, h.cycle - 1) for p, m in read_ports.items()},
                    [addr for _, addr, _ in spad.writes[writes:]])

        for insn, pc in zip(insns, pcs):
            assert ctx.get(ctrl.ready) and not ctx.get(ctrl.busy)
            n = insn.iterations
            fp_reads, fp_writes, fp_ports = hazard_mask(insn)
            step = 2 if paired(insn) else 1     # cycles an iteration
            span = step * n
            await h.start(ctx, ctrl, insn.encode(cfg), pc)
            x, y, z = (addresses(getattr(insn, s), insn.count0, insn.count1) for s in "xyz")
            issued, written, error, cycle = [], [], (ErrorCode.NONE, None), 0
            stopped = None     # the cycle from which the unit may issue nothing
            uses_y = insn.stream_mem("y") is not None
            lut_reads = (1 << LUT_BIT) if insn.opcode is Opcode.LUT else 0
            while ctx.get(ctrl.busy):
                assert not ctx.get(ctrl.ready)
                if cycle == abort_at and pc == pcs[-1]:
                    ctx.set(ctrl.abort, 1)
                    stopped = cycle
                e = ErrorCode(ctx.get(ctrl.error))
                if stopped is None:
                    assert ctx.get(ctrl.reads) == (fp_reads if cycle < span else lut_reads), cycle
                    assert ctx.get(ctrl.writes) == fp_writes | (fp_ports if cycle < span else 0), cycle
                    if e is not ErrorCode.NONE:
                        error, stopped = (e, ctx.get(ctrl.error_pc)), cycle
                        assert cycle == step * len(issued), "the fault is reported in its iteration's cycle"
                elif ctx.get(ctrl.abort):
                    assert e is ErrorCode.NONE, "an aborted unit reports no error"
                # The write port is held from a cycle before the first write (paired)
                # to the last.
                assert ctx.get(dut.spad_hold) == (cycle - write_delay in issued
                                                  or step == 2 and cycle + 1 - write_delay in issued)
                reads, writes = await tick()
                if stopped is None and cycle < span:
                    # Paired operands: x in the first cycle, y and the issue in the second.
                    k, phase = divmod(cycle, step)
                    issuing = phase == step - 1
                    if issuing:
                        issued.append(cycle)
                    if insn.opcode is Opcode.REQUANT:
                        assert reads[dut.acc_rd] == x[k]
                        assert reads[dut.spad_rd_x] is None
                    else:
                        assert reads[dut.spad_rd_x] == (x[k] if phase == 0 else None)
                        assert reads[dut.acc_rd] is None
                    assert reads[dut.spad_rd_y] == (y[k] if uses_y and issuing else None)
                else:
                    assert all(reads[p] is None for p in (dut.acc_rd, dut.spad_rd_x, dut.spad_rd_y)), cycle
                looked_up = [lut.read_in(p, h.cycle - 1) for p in dut.lut_rd]
                read_at = cycle - 1 - stages.vector_read
                if insn.opcode is Opcode.LUT and read_at in issued:
                    row = spad.rows[x[read_at]]
                    base = 256 * insn.params["table"]
                    assert looked_up == [base + (row >> (8 * i) & 0xFF) for i in range(cfg.lanes)]
                else:
                    assert looked_up == [None] * cfg.lanes, cycle
                for addr in writes:
                    written.append(addr)
                    assert cycle - write_delay == issued[len(written) - 1]
                if stopped is not None:
                    # The controller latches an error at this edge and aborts the unit.
                    ctx.set(ctrl.abort, 1)
                    if cycle >= stopped + write_delay:
                        break
                cycle += 1
            else:
                assert cycle == (span + write_delay if n else 0), "busy from start to the last write"
                assert ctx.get(ctrl.reads) == 0 and ctx.get(ctrl.writes) == 0
            assert written == z[:len(issued)]
            seen.append(error)
            if error[0] is not ErrorCode.NONE:
                return
            after.append(list(spad.rows))

    simulate(dut, bench)

    for k, (insn, (err, err_pc)) in enumerate(zip(as_run or insns, seen)):
        res = machine.run([insn.encode(cfg)], [])
        where = f"instruction {k} {insn}"
        assert err is res.error, f"{where}: {err.name} != {res.error.name}"
        if err is not ErrorCode.NONE:
            assert err_pc == pcs[k], where
            assert spad.rows == machine_rows(machine, Mem.SPAD), f"{where}: scratchpad differs"
            return seen
        assert after[k] == machine_rows(machine, Mem.SPAD), f"{where}: scratchpad differs"
    assert len(seen) == len(insns)
    return seen


@pytest.mark.parametrize("stages", [FAST, COMPACT], ids=["fast", "compact"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_random_instructions_match_isa_simulator(cfg, stages, seed):
    """Random REQUANT/ADD/MAX/MUL/LUT instructions (every lane, residual, signedness,
    relu, shift and alignment, lookup table; strides, broadcast rows, repeated rows,
    faults by address and by region)
    write what the ISA simulator writes, stop where it stops, and keep the unit's
    timing and footprint contract (see :func:`run_vector`)."""
    rng = random.Random(seed)
    opcodes, errors, pairs = set(), set(), set()
    for _ in range(12):
        machine = random_machine(rng, cfg)
        insns = [random_vector_insn(cfg, rng, fault_prob=0.15) for _ in range(6)]
        seen = run_vector(cfg, machine, insns, [rng.randrange(1 << 32) for _ in insns],
                          stages=stages)
        opcodes |= {i.opcode for i in insns[:len(seen)]}
        pairs |= {paired(i) for i in insns[:len(seen)]}
        errors |= {e for e, _ in seen}
    assert opcodes == {Opcode.REQUANT, Opcode.ADD, Opcode.MAX, Opcode.MUL, Opcode.LUT}
    assert pairs == {False, True}
    assert ErrorCode.NONE in errors and len(errors) > 1


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_abort_stops_issue_and_drains(cfg, seed):
    """An abort in the middle of a legal instruction (another unit faulted): the unit
    issues no further iteration, writes those already issued, and reports no error;
    the scratchpad is what the ISA simulator leaves after the iterations before it."""
    rng = random.Random(seed)
    for _ in range(6):
        insn = replace(random_vector_insn(cfg, rng, fault_prob=0), count1=1)
        while insn.count0 < 2:
            insn = replace(random_vector_insn(cfg, rng, fault_prob=0), count1=1)
        cut = rng.randrange(1, insn.count0)
        seen = run_vector(cfg, random_machine(rng, cfg), [insn], [rng.randrange(1 << 32)],
                          abort_at=cut * (2 if paired(insn) else 1), as_run=[replace(insn, count0=cut)])
        assert seen == [(ErrorCode.NONE, None)]
