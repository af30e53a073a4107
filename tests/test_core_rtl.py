"""The generated core on Verilator (cocotb) against the instruction-level simulator,
bit for bit: random programs with random stalls on every stream, error programs,
and the throughput of the array.

Each shape's model is built once (cached by Verilog text) and every program of a
test runs in one simulation, one after another on the same core.
Replay a failure with FXPGEN_SEED=<seed printed by the test>.
"""

import random

import numpy as np
import pytest

from fxpgen.config import CoreConfig
from fxpgen.hw.stages import FAST
from fxpgen.isa import Addr, CoreState, ErrorCode, Instruction, Mem, Opcode, pack_rows
from fxpgen.sim.core_rtl import RtlProgram, run_on_rtl
from fxpgen.sim.isa_sim import Machine
from fxpgen.sim.randprog import ERROR_KINDS, random_error_program, random_program

from bench.fuzz import Case, expect

pytestmark = pytest.mark.rtl

SHAPES = [(2, 2), (4, 4), (8, 8), (4, 8)]
#: Shapes whose cocotb runs only the slow set makes (the fuzz tests and the native
#: harness's random programs cover them by default): each is a model build and two
#: minutes of simulation on the default run's critical path.
SLOW_SHAPES = {(4, 4), (8, 8), (4, 8)}
PROGRAMS_PER_SHAPE = 50


def small_config(rows, cols):
    """Small memories, so random instructions collide on regions and the hazard
    logic is exercised."""
    return CoreConfig(rows=rows, cols=cols, spad_depth=64, wbuf_depth=32, acc_depth=64, table_depth=4)


@pytest.mark.parametrize("rows,cols", [pytest.param(r, c, marks=[pytest.mark.slow] * ((r, c) in SLOW_SHAPES))
                                       for r, c in SHAPES], ids=[f"{r}x{c}" for r, c in SHAPES])
def test_random_programs_match_isa_simulator(rows, cols, seed):
    cfg = small_config(rows, cols)
    rng = random.Random(seed)
    programs = [random_program(cfg, rng) for _ in range(PROGRAMS_PER_SHAPE)]
    machine = Machine(cfg)
    # Run HALT by HALT: the counters at the end are those of the last HALT's part.
    parts = [expect(machine, Case(p.words(cfg), p.data, False)) for p in programs]
    expected = [x.run for x in parts]
    assert all(e.error is ErrorCode.NONE for e in expected)
    # Each program gets its own stall probabilities, from none to heavy.
    stall = rng.choice([0.0, 0.1, 0.3, 0.6])
    results, _ = run_on_rtl(cfg, [RtlProgram(p.words(cfg), p.data, len(e.results), max_cycles=200_000)
                                  for p, e in zip(programs, expected)],
                            seed=seed, stall_prob={"insn": stall, "data": rng.choice([0.0, 0.3, 0.5]),
                                                   "result": rng.choice([0.0, 0.3, 0.5])})
    opcodes = {i.opcode for p in programs for i in p.instructions}
    assert opcodes >= {Opcode.LOAD, Opcode.STORE, Opcode.LOADW, Opcode.MATMUL, Opcode.REQUANT,
                       Opcode.ADD, Opcode.MAX, Opcode.MUL, Opcode.LUT, Opcode.HALT}
    assert sum(len(e.results) for e in expected) > 0
    for k, (r, e, x) in enumerate(zip(results, expected, parts)):
        where = f"program {k} (seed {seed})"
        assert not r.timed_out, f"{where} timed out in state {CoreState(r.state).name}"
        assert r.state == CoreState.HALTED.value, where
        assert r.results == e.results, f"{where}: result stream differs"
        assert r.lasts == e.lasts, f"{where}: last flags differ"
        assert r.raw["halts_seen"] == len(x.halts) == e.halts, where
        assert r.counters["mac_cycles"] == x.halts[-1][1], where


@pytest.mark.parametrize("rows,cols", SHAPES, ids=[f"{r}x{c}" for r, c in SHAPES])
def test_error_programs_stop_with_the_simulators_error(rows, cols, seed):
    cfg = small_config(rows, cols)
    rng = random.Random(seed)
    programs = [random_error_program(cfg, rng, kind) for kind in ERROR_KINDS for _ in range(3)]
    expected = [Machine(cfg).run(p.words(cfg), p.data) for p in programs]
    # The core resets after each error but its memories persist; every expected
    # value here comes from a fresh simulator, so compare only what does not
    # depend on earlier memory contents: the error, where it happened, and that
    # the result stream is a prefix of the simulator's.
    results, _ = run_on_rtl(cfg, [RtlProgram(p.words(cfg), p.data, -1, max_cycles=20_000)
                                  for p in programs], seed=seed, stall_prob=0.2)
    for k, (r, e) in enumerate(zip(results, expected)):
        where = f"error program {k} ({ERROR_KINDS[k // 3]}, seed {seed})"
        assert e.error is not ErrorCode.NONE, where
        assert not r.timed_out, f"{where}: the core hung instead of stopping"
        assert r.state == CoreState.ERROR.value, where
        assert r.error == e.error.value, f"{where}: {ErrorCode(r.error).name} != {e.error.name}"
        assert r.error_pc == e.error_pc, where
        assert len(r.results) <= len(e.results), where


def matmul_program(cfg, m, tiles, bank_alternate=True):
    """Weights for ``tiles`` tiles and M activation vectors; then per tile: LOADW,
    MATMUL over all M vectors into one accumulator block; then HALT."""
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (tiles * cfg.rows, cfg.cols))
    a = rng.integers(-128, 128, (m, cfg.lanes))
    setup = [Instruction(Opcode.LOAD, {"mem": Mem.WBUF.value}, cfg.rows * tiles, 1, z=Addr(0, 1)),
             Instruction(Opcode.LOAD, {"mem": Mem.SPAD.value}, m, 1, z=Addr(0, 1))]
    data = pack_rows(Mem.WBUF, w, cfg) + pack_rows(Mem.SPAD, a, cfg)
    body = []
    for t in range(tiles):
        bank = t % 2 if bank_alternate else 0
        body += [Instruction(Opcode.LOADW, {"bank": bank}, cfg.rows, 1, x=Addr(t * cfg.rows, 1)),
                 Instruction(Opcode.MATMUL, {"bank": bank, "act_signed": 1, "accumulate": int(t > 0)},
                             m, 1, x=Addr(0, 1), z=Addr(0, 1))]
    return setup, body, data


#: Cycles a lone MATMUL program takes beyond M + rows + cols (scratchpad read, the
#: activation registers, the PE product stage, accumulator write-back); docs/core.md
#: states the same number.
MATMUL_OVERHEAD = 3 + FAST.matmul_act


@pytest.mark.parametrize("rows,cols", [(4, 4), (8, 8), pytest.param(4, 8, marks=pytest.mark.slow)])
@pytest.mark.parametrize("m", [1, 16, 100])
def test_matmul_latency_bound(rows, cols, m):
    """Weights loaded, a MATMUL of M vectors runs in at most M + rows + cols + a
    small constant cycles, measured by the core's cycle counter."""
    cfg = CoreConfig(rows=rows, cols=cols, spad_depth=256, wbuf_depth=64, acc_depth=256)
    setup, body, data = matmul_program(cfg, m, 1)
    halt = [Instruction(Opcode.HALT)]
    first = RtlProgram([i.encode(cfg) for i in setup + body[:1] + halt], data, 0)
    # The measured program: the MATMUL alone, its HALT waiting for the last write-back.
    timed = RtlProgram([i.encode(cfg) for i in body[1:] + halt], [], 0)
    results, _ = run_on_rtl(cfg, [first, timed])
    r = results[1]
    assert r.state == CoreState.HALTED.value and not r.timed_out
    assert r.counters["mac_cycles"] == m
    # The cycle counter runs from the first instruction to HALT's completion.
    assert r.counters["cycles"] <= m + rows + cols + MATMUL_OVERHEAD, r.counters


@pytest.mark.parametrize("rows,cols", [(4, 4), (8, 8)])
def test_double_buffered_weight_tiles_keep_the_array_busy(rows, cols):
    """A sequence of weight tiles, each loaded (LOADW) while the previous matmul
    streams: the array gets a vector on every cycle but the pipeline fill."""
    cfg = CoreConfig(rows=rows, cols=cols, spad_depth=256, wbuf_depth=512, acc_depth=256)
    m, tiles = 64, 12
    setup, body, data = matmul_program(cfg, m, tiles)
    halt = [Instruction(Opcode.HALT)]
    results, _ = run_on_rtl(cfg, [RtlProgram([i.encode(cfg) for i in setup + halt], data, 0),
                                  RtlProgram([i.encode(cfg) for i in body + halt], [], 0)])
    r = results[1]
    assert r.state == CoreState.HALTED.value and not r.timed_out
    busy = r.counters["mac_cycles"]
    assert busy == m * tiles
    # Only the first tile's load and the last matmul's drain are exposed.
    assert r.counters["cycles"] <= busy + rows + (rows + cols + MATMUL_OVERHEAD) + 2, r.counters
    # Single-buffered (one bank) for contrast: every tile load waits for the drain.
    setup1, body1, _ = matmul_program(cfg, m, tiles, bank_alternate=False)
    results1, _ = run_on_rtl(cfg, [RtlProgram([i.encode(cfg) for i in setup1 + halt], data, 0),
                                   RtlProgram([i.encode(cfg) for i in body1 + halt], [], 0)])
    assert results1[1].counters["cycles"] > r.counters["cycles"] + (tiles - 1) * rows
