"""The analytical cycle model (:mod:`fxpgen.sim.cycle_model`) against the core: the
counters of every HALT segment it predicts equal, within the issue's bounds (2% on
a program's total cycles, 5% on each segment's), those the native harness reads
from the generated Verilog, on random programs (every opcode, colliding regions,
zero-count loops), random small networks on cores of several shapes (rows < cols,
rows > cols, memories small enough to force off-chip maps) and the shipped digits
model. The MAC cycles and the instruction counts are exact by construction and
checked exactly. Replay a failure with FXPGEN_SEED=<seed printed by the test>.
"""

import functools
import random

import numpy as np
import pytest

from fxpgen.compiler.golden import quantize_input, run_golden_batch
from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.quantize import quantize
from fxpgen.config import CoreConfig
from fxpgen.isa import Opcode, opcode_of
from fxpgen.models.zoo import TestModel
from fxpgen.sim.cycle_model import ModelEngine, estimate, estimate_words
from fxpgen.sim.engine import NetworkProgram

from op_checks import conv, data

#: The issue's bounds: a program's total cycles, and each HALT segment's.
TOTAL_TOLERANCE = 0.02
SEGMENT_TOLERANCE = 0.05

SMALL = {"4x8": CoreConfig(rows=4, cols=8, spad_depth=4096, wbuf_depth=1024, acc_depth=2048),
         "8x4": CoreConfig(rows=8, cols=4, spad_depth=4096, wbuf_depth=1024, acc_depth=2048),
         "4x4-offchip": CoreConfig(rows=4, cols=4, spad_depth=1024, wbuf_depth=256, acc_depth=256)}


def random_network(seed: int, size: int):
    """A 3x3 conv to 8 to 16 channels on a 3 x size x size input, then a random chain
    of 3x3 and 1x1 convs, residual blocks, max pools and depthwise convs, ending in
    a 1x1 conv to 4 channels."""
    rng = np.random.default_rng(seed)
    m, c = TestModel(seed), int(rng.choice([8, 12, 16]))
    x = conv(m, "x", 3, c, 3)
    for k in range(int(rng.integers(2, 5))):
        kind = rng.choice(["conv", "conv", "residual", "maxpool", "depthwise"])
        if kind == "residual":
            a = conv(m, conv(m, x, c, c, 3), c, c, 3, relu=False)
            x = m.node("Relu", [m.node("Add", [x, a], [f"{x}_add"])], [f"{x}_add_r"])
        elif kind == "maxpool":
            x = m.node("MaxPool", [x], [f"{x}_p"], kernel_shape=[2, 2], strides=[2, 2])
        elif kind == "depthwise":
            d = m.node("Conv", [x, m.w(f"{x}_dw", (c, 1, 3, 3)), m.w(f"{x}_dwb", (c,), 0.1)],
                       [f"{x}_dwc"], pads=[1, 1, 1, 1], group=c, strides=[1, 1])
            x = m.node("Relu", [d], [f"{d}_r"])
        else:
            cout = int(rng.choice([4, 8, 12, 16]))
            x, c = conv(m, x, c, cout, int(rng.choice([1, 3]))), cout
    y = conv(m, x, c, 4, 1)
    return m.model((1, 3, size, size), y)


def compiled(model, cfg: CoreConfig, seed: int, shape) -> tuple[NetworkProgram, list]:
    qg, _ = quantize(load_onnx(model), data(seed, shape, 4))
    xs = [np.asarray(quantize_input(qg, x), np.int64) for x in data(seed + 3, shape, 1)]
    return NetworkProgram.from_lowered(lower(qg, cfg), qg), xs


def relative_error(model: int, rtl: int) -> float:
    return abs(model - rtl) / rtl if rtl else float(model != rtl)


def assert_close(predicted: list[dict], measured: list[dict], where: str) -> None:
    """Segment by segment within :data:`SEGMENT_TOLERANCE`, the total within
    :data:`TOTAL_TOLERANCE`; MAC cycles and instructions exact. Prints the worst error."""
    assert [p["layer"] for p in predicted] == [m["layer"] for m in measured], where
    worst = max((relative_error(p["cycles"], m["cycles"]), p["layer"])
                for p, m in zip(predicted, measured))
    total = relative_error(sum(p["cycles"] for p in predicted), sum(m["cycles"] for m in measured))
    print(f"{where}: total error {total:.4%}, worst segment {worst[1]} {worst[0]:.4%}")
    for p, m in zip(predicted, measured):
        at = f"{where}, {m['layer']}: model {p['cycles']}, RTL {m['cycles']}"
        assert relative_error(p["cycles"], m["cycles"]) <= SEGMENT_TOLERANCE, at
        assert (p["mac_cycles"], p["insns"]) == (m["mac_cycles"], m["insns"]), at
    assert total <= TOTAL_TOLERANCE, where


# --- without the RTL -------------------------------------------------------------------


def test_the_model_engine_gives_the_golden_outputs_and_a_row_per_segment(seed):
    qg, _ = quantize(load_onnx(random_network(seed, 8)), data(seed, (3, 8, 8), 4))
    xs = [np.asarray(quantize_input(qg, x), np.int64) for x in data(seed + 3, (3, 8, 8), 2)]
    program = NetworkProgram.from_lowered(lower(qg, SMALL["4x8"]), qg)
    res = ModelEngine().run(program, xs)
    golden = run_golden_batch(qg, np.stack(xs))[qg.output]
    assert all(np.array_equal(o, g) for o, g in zip(res.outputs, golden))
    names = [s.layer for s in program.segments(xs[0])]
    assert [l["layer"] for l in res.layers[0]] == names
    assert res.layers[0] == res.layers[1]
    halts = sum(opcode_of(w) == Opcode.HALT.value for w in program.words)
    assert len(res.layers[0]) == halts
    for row in res.layers[0]:
        assert row["cycles"] == row["stall_dispatch"] + row["insns"]


def test_the_mac_cycles_are_the_instruction_level_simulators(seed):
    from bench.fuzz import Case, expect
    from fxpgen.sim.isa_sim import Machine
    from fxpgen.sim.randprog import random_program

    cfg = CoreConfig(rows=4, cols=8, spad_depth=64, wbuf_depth=32, acc_depth=64, table_depth=4)
    rng = random.Random(seed)
    for _ in range(10):
        p = random_program(cfg, rng)
        words = p.words(cfg)
        run = expect(Machine(cfg), Case(words, p.data, False))
        timing = estimate_words(cfg, words, ["p"] * len(words))
        assert [(s.counters["mac_cycles"], s.counters["insns"]) for s in timing.segments] == \
            [(macs, insns) for _, macs, insns in run.halts]


# --- against the native harness --------------------------------------------------------


@functools.cache
def native(cfg: CoreConfig):
    from fxpgen.sim.native import native_model
    return native_model(cfg)


@pytest.mark.rtl
@pytest.mark.parametrize("shape", [(2, 2), (4, 8), (8, 4)], ids=["2x2", "4x8", "8x4"])
def test_random_programs_on_the_native_harness(shape, seed):
    from fxpgen.sim.core_rtl import RtlProgram
    from fxpgen.sim.native import run_on_native
    from fxpgen.sim.randprog import random_program

    cfg = CoreConfig(rows=shape[0], cols=shape[1], spad_depth=64, wbuf_depth=32, acc_depth=64,
                     table_depth=4)
    rng = random.Random(seed)
    programs = [random_program(cfg, rng) for _ in range(24)]
    jobs = [RtlProgram(p.words(cfg), p.data, -1, max_cycles=200_000) for p in programs]
    got, _ = run_on_native(cfg, jobs, model=native(cfg))
    for k, (p, r) in enumerate(zip(programs, got)):
        words = p.words(cfg)
        timing = estimate_words(cfg, words, [f"halt {h}" for h in range(len(words))])
        measured = [{"layer": s.layer, **h["counters"]}
                    for s, h in zip(timing.segments, r.raw["halts"])]
        assert len(measured) == len(timing.segments)
        assert_close([s.as_layer() for s in timing.segments], measured, f"seed {seed}, program {k}")


@pytest.mark.rtl
def test_a_matmul_keeps_the_region_the_one_before_still_writes():
    """A MATMUL starts as the one before issues its last vector; a region the first
    still writes back stays held past the second's own (shorter) hold of it, so the
    REQUANT reading it waits (found by a random program: 6 cycles short before)."""
    from fxpgen.isa import Addr, Instruction
    from fxpgen.sim.core_rtl import RtlProgram
    from fxpgen.sim.native import run_on_native

    cfg = CoreConfig(rows=4, cols=8, spad_depth=64, wbuf_depth=32, acc_depth=64, table_depth=4)
    mm = {"bank": 1, "accumulate": 0, "act_signed": 0}
    program = [
        Instruction(Opcode.MATMUL, {**mm, "lane": 1}, 1, 1, x=Addr(35, 1, 0, 14), z=Addr(40, 7, 0, 4)),
        Instruction(Opcode.MATMUL, {**mm, "lane": 0}, 8, 1, x=Addr(34, 0, 0, 4), z=Addr(19, 1, 0, 14)),
        Instruction(Opcode.REQUANT, {"table": 3, "lane": 0, "relu": 0, "out_signed": 1}, 1, 1,
                    x=Addr(36, 0, 0, 4), z=Addr(59, 0, 0, 8)),
        Instruction(Opcode.HALT),
    ]
    words = [i.encode(cfg) for i in program]
    (r,), _ = run_on_native(cfg, [RtlProgram(words, [], -1, max_cycles=10_000)], model=native(cfg))
    timing = estimate_words(cfg, words, ["halt"] * len(words))
    assert [h["counters"]["cycles"] for h in r.raw["halts"]] == [s.counters["cycles"] for s in timing.segments]
    # The REQUANT waits for the first MATMUL's write-back, not the second's last issue.
    assert timing.segments[0].counters["cycles"] >= 1 + cfg.rows + cfg.cols


@pytest.mark.rtl
@pytest.mark.parametrize("name", list(SMALL))
def test_random_networks_on_the_native_engine(name, seed):
    from fxpgen.sim.rtl_engines import NativeEngine

    cfg = SMALL[name]
    size = 24 if name.endswith("offchip") else 12
    program, xs = compiled(random_network(seed, size), cfg, seed, (3, size, size))
    assert bool(program.result_refs()) == name.endswith("offchip")
    measured = NativeEngine(batch=1, model=native(cfg)).run(program, xs).layers[0]
    predicted = [s.as_layer() for s in estimate(program).segments]
    assert_close(predicted, measured, f"{name}, seed {seed}")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[NetworkProgram, list]:
    """The shipped digits model compiled as ``fxpgen demo`` does for the default core,
    and its first test image."""
    from fxpgen.app.flow import compile_model, load_compiled
    from fxpgen.models import digits_assets

    a = digits_assets()
    out = tmp_path_factory.mktemp("digits")
    compile_model(a["model"], np.load(a["calib"]), CoreConfig(), out)
    prog, qg = load_compiled(out)
    x = np.asarray(quantize_input(qg, np.load(a["test_x"])[0]), np.int64)
    return NetworkProgram.from_program(prog, qg), [x]


def test_a_program_files_word_table_gives_the_counters_of_its_words(digits):
    """A program read from its file is timed through the file's table of distinct
    words: the same counters as from the words themselves."""
    program, _ = digits
    assert program.word_table is not None
    through_table = estimate(program).segments
    from_words = estimate_words(program.cfg, program.words, program.layers).segments
    assert len(through_table) > 1
    assert [(s.layer, s.counters) for s in through_table] == [(s.layer, s.counters) for s in from_words]
    with pytest.raises(ValueError, match="word table indexes"):
        estimate_words(program.cfg, program.words[:-1], program.layers[:-1], table=program.word_table)


@pytest.mark.rtl
def test_the_digits_model_on_the_native_engine(digits):
    from fxpgen.sim.rtl_engines import NativeEngine

    program, xs = digits
    cfg = program.cfg
    measured = NativeEngine(batch=1, model=native(cfg)).run(program, xs).layers[0]
    predicted = [s.as_layer() for s in estimate(program).segments]
    assert_close(predicted, measured, "digits on 8x8")


def test_skipping_the_repeats_changes_no_counter(monkeypatch):
    """The walk without a timeline adds up the repeats of each pattern once the
    state repeats; with a timeline it walks every instruction: the same counters."""
    from fxpgen.models.zoo import resnet18
    from fxpgen.sim import cycle_model

    program, _ = compiled(resnet18(), CoreConfig(), 0, (3, 32, 32))
    walked, open_skips, nested = [], [], []
    go, skip = cycle_model._Core.go, cycle_model._Repeats.skip

    def counting(core, op, after):
        walked.append(op)
        return go(core, op, after)

    def skipping(self, core, k, end, d, macs):
        open_skips.append(k)
        after = skip(self, core, k, end, d, macs)
        open_skips.pop()
        nested.append(bool(open_skips) and after[3])
        return after

    monkeypatch.setattr(cycle_model._Core, "go", counting)
    monkeypatch.setattr(cycle_model._Repeats, "skip", skipping)
    fast = estimate(program)
    monkeypatch.undo()
    full = estimate(program, timeline=True)
    # Most instructions were skipped, not walked one by one, some by a skip inside
    # the settling run of an outer pattern.
    assert 0 < len(walked) < len(program.words) // 4
    assert any(nested)
    assert [s.counters for s in fast.segments] == [s.counters for s in full.segments]
