"""The whole core (``hw/core.py``) in Amaranth's simulator, driven through its
streams with random stalls, against the instruction-level simulator: single
instructions and short programs, legal and faulting. Long random programs run on
Verilator in ``tests/test_core_rtl.py``; these stay small and fast."""

import random

import pytest

from fxpgen.hw.core import Core
from fxpgen.isa import Addr, CoreState, ErrorCode, Instruction, Mem, Opcode, pack_row
from fxpgen.sim.isa_sim import Machine
from fxpgen.sim.randprog import ERROR_KINDS, SHORT, random_error_program, random_program

from unit_harness import CONFIGS, config_id, simulate


def run_core(cfg, words, data, rng, stall=0.3, max_cycles=4000):
    """Stream ``words`` and ``data`` into a Core (each word offered with probability
    ``1 - stall`` a cycle; the result stream ready likewise) until it halts or
    stops on an error; returns (results, lasts, state, error, error_pc,
    mac_cycles)."""
    dut = Core(cfg)
    out = {"results": [], "lasts": []}

    async def bench(ctx):
        pos = {"insn": 0, "data": 0}
        sources = {"insn": words, "data": data}
        for _ in range(max_cycles):
            offered = {}
            for name, items in sources.items():
                port = getattr(dut, name)
                offered[name] = pos[name] < len(items) and rng.random() >= stall
                ctx.set(port.valid, offered[name])
                if offered[name]:
                    ctx.set(port.payload, items[pos[name]])
            take = rng.random() >= stall
            ctx.set(dut.result.ready, take)
            result = None
            if take and ctx.get(dut.result.valid):
                result = (ctx.get(dut.result.payload.data), ctx.get(dut.result.payload.last))
            moved = {n: offered[n] and ctx.get(getattr(dut, n).ready) for n in sources}
            state = CoreState(ctx.get(dut.state))
            if state is CoreState.ERROR or (state is CoreState.HALTED and pos["insn"] == len(words)):
                out.update(state=state, error=ErrorCode(ctx.get(dut.error)),
                           error_pc=ctx.get(dut.error_pc), macs=ctx.get(dut.mac_cycles))
                return
            await ctx.tick()
            for n in sources:
                pos[n] += moved[n]
            if result is not None:
                out["results"].append(result[0])
                out["lasts"].append(bool(result[1]))
        raise AssertionError(f"the core neither halted nor stopped in {max_cycles} cycles")

    simulate(dut, bench)
    return out


def check_program(cfg, words, data, rng):
    """Run a program on the core and on the ISA simulator and compare: the same
    results, ``last`` flags and MAC count after HALT, or the same error and pc with
    a prefix of the results."""
    expected = Machine(cfg).run(words, data)
    got = run_core(cfg, words, data, rng)
    assert got["error"] is expected.error
    if expected.error is ErrorCode.NONE:
        assert got["state"] is CoreState.HALTED
        assert got["results"] == expected.results, "result stream differs"
        assert got["lasts"] == expected.lasts
        assert got["macs"] == expected.macs
    else:
        assert got["state"] is CoreState.ERROR
        assert got["error_pc"] == expected.error_pc
        assert got["results"] == expected.results[:len(got["results"])]
    return expected


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_short_programs_match_isa_simulator(cfg, seed):
    """Short random programs (every opcode, random regions, lanes and flags) give
    the ISA simulator's result stream, ``last`` flags and MAC count, with random
    stalls on all three streams."""
    rng = random.Random(seed)
    opcodes = set()
    for _ in range(4):
        prog = random_program(cfg, rng, length=(3, 8), profile=SHORT)
        opcodes |= {i.opcode for i in prog.instructions}
        check_program(cfg, prog.words(cfg), prog.data, rng)
    assert len(opcodes) >= 5


@pytest.mark.parametrize("kind", ERROR_KINDS)
def test_error_programs_stop_with_the_simulators_error(kind, seed):
    """A short legal prefix then a faulting instruction of each kind: the core stops
    in ERROR with the simulator's error code and pc, having sent a prefix of the
    simulator's results, and runs nothing after the fault."""
    cfg = CONFIGS[0]
    rng = random.Random(seed)
    for _ in range(2):
        prog = random_error_program(cfg, rng, kind, profile=SHORT)
        expected = check_program(cfg, prog.words(cfg), prog.data, rng)
        assert expected.error is not ErrorCode.NONE


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_every_lookup_table_entry_reaches_every_lane(cfg, seed):
    """Random contents in the first and the last lookup table (LOAD mem=lut, one entry
    a word), then LUT over rows holding every byte value in every lane: the core
    looks up what the ISA simulator does, however small its other memories."""
    rng = random.Random(seed)
    last = cfg.lut_tables - 1
    tables = {t: [rng.randrange(256) for _ in range(256)] for t in (0, last)}
    rows = [[(r * cfg.lanes + lane * 37) % 256 for lane in range(cfg.lanes)]
            for r in range(256 // cfg.lanes + 1)]
    n = min(len(rows), cfg.spad_depth // 2)
    insns = [Instruction(Opcode.LOAD, {"mem": Mem.LUT.value}, 256, 1, z=Addr(256 * t, 1))
             for t in tables]
    insns += [Instruction(Opcode.LOAD, {"mem": Mem.SPAD.value}, n, 1, z=Addr(0, 1))]
    insns += [Instruction(Opcode.LUT, {"table": t}, n, 1, x=Addr(0, 1), z=Addr(n, 1))
              for t in tables]
    insns += [Instruction(Opcode.STORE, {"mem": Mem.SPAD.value}, n, 1, x=Addr(n, 1)),
              Instruction(Opcode.HALT)]
    data = [pack_row(Mem.LUT, [v], cfg) for t in tables for v in tables[t]]
    data += [pack_row(Mem.SPAD, r, cfg) for r in rows[:n]]
    expected = check_program(cfg, [i.encode(cfg) for i in insns], data, rng)
    looked_up = {v for w in expected.results for v in w.to_bytes(cfg.lanes, "little")}
    assert looked_up <= set(tables[last]) and len(looked_up) > 1
