"""The Verilator-native harness (``fxpgen.sim.native``) against the cocotb harness
(``fxpgen.sim.core_rtl``) on the same generated Verilog: the same result words,
the same per-HALT counters and the same errors, on random programs, error
programs and a compiled network.

Each shape's two models (native and cocotb) are built once per module and reused.
Replay a failure with FXPGEN_SEED=<seed printed by the test>.
"""

import functools
import random

import numpy as np
import pytest

from fxpgen.config import CoreConfig
from fxpgen.sim.rtl_engines import NativeEngine, RtlEngine
from fxpgen.sim.segments import LayerSegment, split_layers
from fxpgen.isa import Addr, CoreState, ErrorCode, Instruction, Mem, Opcode
from fxpgen.sim.core_rtl import RtlProgram, core_model, run_on_rtl
from fxpgen.sim.isa_sim import Machine
from fxpgen.sim.native import PROFILES, build_native, native_model, run_on_native
from fxpgen.sim.randprog import ERROR_KINDS, random_error_program, random_program
from fxpgen.sim.rtl import BuildError

from bench.fuzz import Case, expect

pytestmark = pytest.mark.rtl

SHAPES = [(2, 2), (4, 8)]
PROGRAMS_PER_SHAPE = 8


def small_config(rows, cols):
    """Small memories, so random instructions collide on regions (as in test_core_rtl)."""
    return CoreConfig(rows=rows, cols=cols, spad_depth=64, wbuf_depth=32, acc_depth=64, table_depth=4)


@functools.cache
def models(cfg):
    """(native model, cocotb model) of ``cfg``, built once per test session."""
    return native_model(cfg), core_model(cfg)


@pytest.fixture(scope="module", params=SHAPES, ids=[f"{r}x{c}" for r, c in SHAPES])
def shape(request):
    cfg = small_config(*request.param)
    return (cfg, *models(cfg))


def assert_same_run(native, cocotb, where, counters=True):
    assert len(native) == len(cocotb), where
    for k, (n, c) in enumerate(zip(native, cocotb)):
        at = f"{where}, program {k}"
        assert n.raw["ran"], at
        assert (n.timed_out, n.state, n.error, n.error_pc) == (c.timed_out, c.state, c.error, c.error_pc), at
        assert n.results == c.results, f"{at}: result stream differs"
        assert n.lasts == c.lasts, f"{at}: last flags differ"
        if counters:
            assert n.counters == c.counters, at
            if n.state == CoreState.HALTED.value:
                assert n.raw["halts_seen"] == c.raw["halts_seen"], at
                assert n.raw["halts"][-1]["counters"] == c.counters, at


def test_random_programs_match_cocotb(shape, seed):
    cfg, native, cocotb = shape
    rng = random.Random(seed)
    programs = [random_program(cfg, rng) for _ in range(PROGRAMS_PER_SHAPE)]
    machine = Machine(cfg)
    parts = [expect(machine, Case(p.words(cfg), p.data, False)) for p in programs]
    expected = [x.run for x in parts]
    jobs = [RtlProgram(p.words(cfg), p.data, len(e.results), max_cycles=200_000)
            for p, e in zip(programs, expected)]
    got, info = run_on_native(cfg, jobs, seed=seed, model=native)
    ref, _ = run_on_rtl(cfg, jobs, seed=seed, model=cocotb)
    print(f"native: {info['cycles']} cycles, {info['cycles_per_s']:.0f} cycles/s")
    assert_same_run(got, ref, f"seed {seed}")
    for k, (r, e, x) in enumerate(zip(got, expected, parts)):
        assert r.state == CoreState.HALTED.value, f"program {k} (seed {seed})"
        assert r.results == e.results, f"program {k} (seed {seed}): differs from the ISA simulator"
        assert r.counters["mac_cycles"] == x.halts[-1][1], f"program {k} (seed {seed})"


def test_random_programs_under_backpressure(shape, seed):
    """Random stalls on every stream: the stalls differ between the harnesses, the
    results may not."""
    cfg, native, cocotb = shape
    rng = random.Random(seed)
    programs = [random_program(cfg, rng) for _ in range(PROGRAMS_PER_SHAPE)]
    machine = Machine(cfg)
    parts = [expect(machine, Case(p.words(cfg), p.data, False)) for p in programs]
    expected = [x.run for x in parts]
    jobs = [RtlProgram(p.words(cfg), p.data, len(e.results), max_cycles=200_000)
            for p, e in zip(programs, expected)]
    stall = {"insn": 0.3, "data": 0.4, "result": 0.6}
    got, _ = run_on_native(cfg, jobs, seed=seed, stall_prob=stall, model=native)
    ref, _ = run_on_rtl(cfg, jobs, seed=seed, stall_prob=stall, model=cocotb)
    assert_same_run(got, ref, f"seed {seed}", counters=False)
    for k, (r, e, x) in enumerate(zip(got, expected, parts)):
        assert r.results == e.results, f"program {k} (seed {seed}): differs from the ISA simulator"
        # The counters at the end are those of the last HALT's part.
        assert r.counters["mac_cycles"] == x.halts[-1][1], f"program {k} (seed {seed})"
    if sum(len(e.results) for e in expected) > 8:
        # Every HALT's counters: a program's last part may store nothing.
        stalls = sum(h["counters"]["stall_result"] for r in got for h in r.raw["halts"])
        assert stalls > 0, "the result stream never stalled"


def test_build_profiles_run_alike(seed):
    """Every build profile of ``PROFILES`` runs random programs under random stalls
    to the same record as the baseline build: result words, states, the counters at
    every HALT, the cycle each program starts and ends in."""
    cfg = small_config(2, 2)
    rng = random.Random(seed)
    programs = [random_program(cfg, rng) for _ in range(PROGRAMS_PER_SHAPE)]
    machine = Machine(cfg)
    expected = [expect(machine, Case(p.words(cfg), p.data, False)).run for p in programs]
    jobs = [RtlProgram(p.words(cfg), p.data, len(e.results), max_cycles=200_000)
            for p, e in zip(programs, expected)]
    stall = {"insn": 0.3, "data": 0.4, "result": 0.6}
    runs = {name: run_on_native(cfg, jobs, seed=seed, stall_prob=stall,
                                model=native_model(cfg, profile=name))
            for name in PROFILES}
    base, base_info = runs["baseline"]
    assert [r.results for r in base] == [e.results for e in expected], f"seed {seed}"
    for name, (got, info) in runs.items():
        assert info["cycles"] == base_info["cycles"], f"profile {name}, seed {seed}"
        assert [r.raw for r in got] == [r.raw for r in base], f"profile {name}, seed {seed}"


def test_error_programs_match_cocotb(shape, seed):
    """One error program of each kind, each followed by a legal program: the core
    stops with the right error and error_pc, is reset, and runs the next one."""
    cfg, native, cocotb = shape
    rng = random.Random(seed)
    programs, kinds = [], []
    for kind in ERROR_KINDS:
        programs += [random_error_program(cfg, rng, kind), random_program(cfg, rng)]
        kinds += [kind, None]
    fresh = [Machine(cfg).run(p.words(cfg), p.data) for p in programs]
    jobs = [RtlProgram(p.words(cfg), p.data, -1 if kind else len(e.results), max_cycles=20_000)
            for p, kind, e in zip(programs, kinds, fresh)]
    got, _ = run_on_native(cfg, jobs, seed=seed, model=native)
    ref, _ = run_on_rtl(cfg, jobs, seed=seed, model=cocotb)
    assert_same_run(got, ref, f"seed {seed}")
    since_reset = 0   # error_pc counts instructions from reset
    for k, (r, kind, e, job) in enumerate(zip(got, kinds, fresh, jobs)):
        where = f"program {k} ({kind or 'legal'}, seed {seed})"
        if kind:
            assert r.state == CoreState.ERROR.value, where
            assert r.error == e.error.value, f"{where}: {ErrorCode(r.error).name} != {e.error.name}"
            assert r.error_pc == since_reset + e.error_pc, where
            since_reset = 0
        else:
            assert r.state == CoreState.HALTED.value, where
            assert r.raw["reset_before"], where
            since_reset += len(job.words)


def test_a_program_past_its_cycle_limit_times_out_and_the_next_one_runs():
    cfg = small_config(2, 2)
    native, _ = models(cfg)
    # A LOAD of 4 rows with no data words waits forever.
    stuck = RtlProgram([Instruction(Opcode.LOAD, {"mem": Mem.SPAD.value}, 4, 1, z=Addr(0, 1)).encode(cfg),
                        Instruction(Opcode.HALT).encode(cfg)], [], 0, max_cycles=500)
    store = [Instruction(Opcode.LOAD, {"mem": Mem.SPAD.value}, 2, 1, z=Addr(8, 1)),
             Instruction(Opcode.STORE, {"mem": Mem.SPAD.value}, 2, 1, x=Addr(8, 1)),
             Instruction(Opcode.HALT)]
    ok = RtlProgram([i.encode(cfg) for i in store], [0x1234, 0xBEEF], 2)
    got, info = run_on_native(cfg, [stuck, ok], model=native)
    assert got[0].timed_out and got[0].raw["timeout_reason"] == "cycles"
    assert 500 <= got[0].raw["sim_cycles"] < 510
    assert not got[1].timed_out and got[1].raw["reset_before"]
    assert got[1].state == CoreState.HALTED.value
    assert got[1].results == [0x1234, 0xBEEF] and got[1].lasts == [False, True]
    assert got[1].counters["insns"] == 3
    assert info["cycles"] > 500 and info["stopped"] is None


def test_run_native_names_the_image_and_layer_of_an_error():
    cfg = small_config(2, 2)
    native, _ = models(cfg)
    halt = Instruction(Opcode.HALT).encode(cfg)
    good = LayerSegment("conv1", [halt], [], 0)
    bad = LayerSegment("fc", [halt & ~0xF | 15, halt], [], 0)   # opcode 15 is illegal
    images, info = NativeEngine(model=native).run_segments(cfg, [[good], [good]])
    assert [img["layers"][0]["layer"] for img in images] == ["conv1", "conv1"]
    assert images[0]["layers"][0]["insns"] == 1 and info["cycles"] > 0
    with pytest.raises(RuntimeError,
                       match=r"image 1, layer fc: stopped with ILLEGAL_OPCODE at instruction 2"):
        NativeEngine(model=native).run_segments(cfg, [[good], [good, bad]])


def test_a_streamed_input_is_bit_identical_on_the_rtl(shape, seed):
    """A 1x12x4 image kept whole needs 84 of the 64 scratchpad rows: the program
    streams it in two bands. The RTL gives the golden model's integers, under
    backpressure too, and the native harness the cocotb one's counters."""
    from test_lower import conv_net

    from fxpgen.compiler.lower import lower
    from fxpgen.compiler.golden import run_golden

    cfg, native, cocotb = shape
    qg, x = conv_net(1, 12, 4, 2, 3, 2, 1, seed=seed)
    low = lower(qg, cfg, unfold=False)
    assert low.input_streamed and len(low.input_pieces) == 2
    segs = [split_layers([i.encode(cfg) for i in low.instructions], low.layers, low.data(low.image_words(x)))]
    got, _ = NativeEngine(model=native).run_segments(cfg, segs)
    ref, _ = RtlEngine(model=cocotb).run_segments(cfg, segs)
    assert got == ref
    assert np.array_equal(low.decode_output(got[0]["results"]), run_golden(qg, x)["y"])
    stalled, _ = NativeEngine(model=native, stall_prob=0.3, seed=1).run_segments(cfg, segs)
    assert stalled[0]["results"] == got[0]["results"]


def test_a_failed_build_shows_the_compiler_output(tmp_path):
    broken = "module fxpgen_core(input clk);\n  this is not verilog;\nendmodule\n"
    with pytest.raises(BuildError, match=r"(?s)failed.*tail of .*build\.log.*fxpgen_core\.v"):
        build_native("broken", broken, {"insn": 202, "data": 64, "result": 65, "counter": 32}, tmp_path)


# --- a compiled network on an 8x8 core --------------------------------------------------


@pytest.fixture(scope="module")
def digits_8x8(tmp_path_factory):
    """The shipped digits CNN compiled for an 8x8 core: (cfg, program, qgraph, lowered)."""
    from fxpgen.app.flow import compile_model, load_compiled
    from fxpgen.models import digits_assets

    cfg = CoreConfig(rows=8, cols=8)
    a = digits_assets()
    out = tmp_path_factory.mktemp("digits8x8")
    compile_model(a["model"], np.load(a["calib"]), cfg, out)
    prog, qg = load_compiled(out)
    return cfg, prog, qg, prog.lowered_view()


def digits_segments(digits, images):
    from fxpgen.models import digits_assets
    from fxpgen.compiler.golden import quantize_input

    _, prog, qg, low = digits
    x = np.load(digits_assets()["test_x"])[:images]
    xq = [np.asarray(quantize_input(qg, img), np.int64) for img in x]
    segs = [split_layers(prog.words, prog.layers, low.data(low.image_words(q))) for q in xq]
    return xq, segs


def test_digits_network_bit_identical_to_golden_on_8x8(digits_8x8):
    from fxpgen.compiler.golden import run_golden_batch

    cfg, _, qg, low = digits_8x8
    xq, segs = digits_segments(digits_8x8, 2)
    images, info = NativeEngine(model=models(cfg)[0]).run_segments(cfg, segs)
    print(f"native: {info['cycles']} cycles, {info['cycles_per_s']:.0f} cycles/s")
    got = np.stack([low.decode_output(img["results"]) for img in images])
    golden = np.asarray(run_golden_batch(qg, np.stack(xq))[qg.output])
    assert np.array_equal(got, golden)
    assert [l["layer"] for l in images[0]["layers"]][:2] == ["conv1", "conv2"]
    assert all(l["cycles"] > 0 for img in images for l in img["layers"])


def test_digits_network_counters_match_cocotb_on_8x8(digits_8x8):
    cfg = digits_8x8[0]
    native, cocotb = models(cfg)
    _, segs = digits_segments(digits_8x8, 2)
    got, _ = NativeEngine(model=native).run_segments(cfg, segs)
    ref, _ = RtlEngine(model=cocotb).run_segments(cfg, segs)
    assert got == ref
