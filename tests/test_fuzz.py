"""The random program generator's coverage, and differential fuzzing of the core
(``bench/fuzz.py``): random programs on the Verilator-native harness against the
instruction-level simulator.

Replay a failure with FXPGEN_SEED=<seed printed by the test>, or a saved batch with
``python -m bench.fuzz --replay FILE``.
"""

import random

import pytest

from bench.fuzz import SHAPES, batch_cases, check_batch, compare, expect, fuzz_shape, replay, save_failure
from fxpgen.isa import ErrorCode
from fxpgen.sim.isa_sim import Machine
from fxpgen.sim.randprog import (coverage, coverage_bins, error_targets, random_config,
                                 random_error_program, random_program)

#: Shapes of the default differential run: square and rows > cols (one shift-table
#: entry, one lookup table, 4096-row scratchpad).
CI_SHAPES = ("2x2", "8x4")
CI_PROGRAMS = 1200


@pytest.mark.parametrize("shape", ["8x4", "8x8"])
def test_random_programs_hit_every_coverage_bin(shape, seed):
    """A few thousand programs, half of them error programs (the targets in turn),
    hit every bin, and every error program stops where and as its target says."""
    cfg, rng = SHAPES[shape], random.Random(seed)
    targets = error_targets(cfg)
    programs = [random_program(cfg, rng) if k % 2 else
                random_error_program(cfg, rng, target=targets[k // 2 % len(targets)])
                for k in range(1500)]
    hits = coverage(cfg, programs)
    assert [b for b in coverage_bins(cfg) if not hits[b]] == []
    for p in programs:
        if p.fault:
            run = Machine(cfg).run(p.words(cfg), p.data)
            assert (run.error.name.lower(), run.error_pc) == (p.fault[0], len(p.instructions) - 3), p.fault


def test_programs_on_random_cores_run_or_fault_as_generated(seed):
    """On random cores (any shape, accumulator width, memory and table sizes), legal
    programs run to their last HALT on the simulator and error programs stop at their
    faulting instruction with their target's error."""
    rng = random.Random(seed)
    for _ in range(20):
        cfg = random_config(rng)
        machine = Machine(cfg)
        for k in range(20):
            p = random_program(cfg, rng) if k % 2 else random_error_program(cfg, rng)
            run = machine.run(p.words(cfg), p.data)
            want = (p.fault[0], len(p.instructions) - 3) if p.fault else ("none", None)
            assert (run.error.name.lower(), run.error_pc) == want, (cfg, p.fault)


@pytest.mark.rtl
def test_a_departure_from_the_simulator_is_reported(seed, tmp_path):
    """Programs that agree pass; the same runs against a wrong result word, MAC count
    or error pc do not; a saved batch replays."""
    cfg = SHAPES["2x2"]
    cases, _, _ = batch_cases(cfg, seed, 0, 40)
    problems, _, results = check_batch(cfg, cases, seed, {})
    assert problems == []
    machine, since_reset, tampered = Machine(cfg), 0, 0
    for c, r in zip(cases, results):
        since_reset = 0 if r.raw["reset_before"] else since_reset
        e = expect(machine, c)
        assert compare(cfg, c, e, r, since_reset) is None
        if e.run.error is not ErrorCode.NONE:
            e.run.error_pc += 1
        elif e.run.results:
            e.run.results[-1] ^= 1
        else:
            e.halts[-1] = (e.halts[-1][0], e.halts[-1][1] + 1, e.halts[-1][2])
        assert compare(cfg, c, e, r, since_reset) is not None
        tampered += 1
        since_reset += len(c.words)
    assert tampered == len(cases)
    assert replay(save_failure(tmp_path, "2x2", cfg, seed, {}, cases, len(cases) - 1, "none")) == 0


def _fuzz(shape, programs, seed):
    tally = fuzz_shape(shape, SHAPES[shape], programs, seed, batch=400, progress=False)
    assert tally.failures == []
    assert (tally.mismatches, tally.hangs) == (0, 0)
    assert tally.programs == programs and tally.error_programs > 0
    assert [b for b in coverage_bins(SHAPES[shape]) if not tally.coverage[b]] == []


@pytest.mark.rtl
@pytest.mark.parametrize("shape", CI_SHAPES)
def test_fuzz_core_against_isa_simulator(shape, seed):
    _fuzz(shape, CI_PROGRAMS, seed)


@pytest.mark.slow
@pytest.mark.rtl
@pytest.mark.parametrize("shape", list(SHAPES))
def test_fuzz_campaign(shape, seed):
    """100,000 programs per shape (35 to 80 minutes each on an unloaded core)."""
    _fuzz(shape, 100_000, seed)
