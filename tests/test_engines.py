"""The engine interface: the registry, the runnable programs, the one cycle budget and
the one input-HALT edit; golden, isa, native and rtl outputs on a small compiled
network through the registry."""

import numpy as np
import pytest

from bench.layer_bands import band_programs
from fxpgen.app.engines import ENGINES, engine_class, make_engine
from fxpgen.compiler.gemm import build_gemm, gemm_reference, random_gemm
from fxpgen.compiler.lower import lower
from fxpgen.config import CoreConfig
from fxpgen.isa import Instruction, Opcode
from fxpgen.sim.engine import GemmRunnable, NetworkProgram
from fxpgen.sim.segments import cycle_budget, with_input_halt

from test_lower import conv_net

SMALL = CoreConfig(rows=4, cols=4, spad_depth=512, wbuf_depth=256, acc_depth=256)


def test_unknown_engine_names_the_choices():
    assert set(ENGINES) == {"golden", "isa", "rtl", "native", "board", "model"}
    with pytest.raises(ValueError, match="unknown engine 'gpu'; choose one of golden, isa, rtl, native, "
                                         "board, model"):
        engine_class("gpu")
    assert make_engine("native", batch=3).batch == 3


def test_input_halt_cuts_after_the_input_load():
    qg, _ = conv_net(3, 6, 6, 4, 3, 1, 1)
    low = lower(qg, SMALL)
    insns, layers = with_input_halt(low.instructions, low.layers)
    cut = max(i for i, n in enumerate(low.layers) if n == "input") + 1
    assert insns[cut].opcode is Opcode.HALT and layers[cut] == "input"
    assert insns[:cut] == low.instructions[:cut] and insns[cut + 1:] == low.instructions[cut:]
    assert len(insns) == len(low.instructions) + 1


def test_network_program_segments_and_decoding(seed):
    """The runnable of a lowering: its data stream is the lowering's for the input,
    the input HALT makes the input load a segment of its own, and decoding the
    golden model's words gives the golden output."""
    qg, x = conv_net(3, 6, 6, 4, 3, 1, 1, seed=seed)
    low = lower(qg, SMALL)
    plain = NetworkProgram.from_lowered(low, qg)
    halted = NetworkProgram.from_lowered(low, qg, input_halt=True)
    assert plain.stream(x) == low.data(low.image_words(x))
    assert plain.words == [i.encode(SMALL) for i in low.instructions]
    segs, segs_h = plain.segments(x), halted.segments(x)
    assert len(segs_h) == len(segs) + 1 and segs_h[0].layer == "input" and segs_h[0].n_results == 0
    assert sum(len(s.data) for s in segs_h) == len(plain.stream(x))
    isa = make_engine("isa").run(halted, [x])
    assert np.array_equal(isa.outputs[0], halted.golden([x])[0]) and isa.layers is None


def test_gemm_runnable_on_the_isa_engine():
    a, b, shift = random_gemm(37, 19, 11, 5)
    prog = build_gemm(SMALL, a, b, shift)
    run = GemmRunnable(prog, gemm_reference(a, b, shift, SMALL.acc_width))
    assert run.stream(None) == prog.data and len(run.segments(None)) == 1
    res = make_engine("isa").run(run, [None, None])
    assert all(np.array_equal(y, run.reference) for y in res.outputs) and len(res.outputs) == 2


def _old_budgets(seg, stall, program_vectors, program_words, program_data):
    """The limits the one budget replaces: the segment formula, the band and digits
    benches' (over the whole program) and ``fxpgen check``'s."""
    insns = [Instruction.decode(w) for w in seg.words]
    macs_over_rc = sum(i.iterations for i in insns if i.opcode is Opcode.MATMUL)
    return [200_000 + 2 * sum(64 + 2 * i.iterations for i in insns) + 4 * len(seg.data) + 8 * seg.n_results,
            200_000 + 4 * program_vectors + 400 * program_words + 8 * program_data,
            200_000 + 4 * program_vectors + 400 * len(seg.words),
            int(20 * (macs_over_rc + len(seg.words) * 64 + len(seg.data) + seg.n_results)
                / max(1e-3, 1 - stall)) + 10_000]


def test_cycle_budget_covers_a_long_band_matmul():
    """A 16-channel 3x3 conv over a 56x56 map, in bands on the bench's big core: the
    layer segment streams thousands of vectors; its budget is at least every
    formula it replaces, restricted to the segment, and several times the vectors."""
    from bench.utilization import BIG_MEMORIES
    qg, x = conv_net(16, 56, 56, 16, 3, 1, 1, seed=1)
    cfg = CoreConfig(8, 8, **BIG_MEMORIES)
    op = qg.ops[0]
    bp = band_programs(qg, op, x, cfg)[0]
    segs = bp.program.segments(bp.crop)
    layer = segs[1]
    vectors = sum(Instruction.decode(w).iterations for w in layer.words
                  if Instruction.decode(w).opcode is Opcode.MATMUL)
    assert vectors >= 2000
    for stall in (0.0, 0.2, 0.5):
        budget = cycle_budget(layer, stall)
        assert budget >= 20 * vectors / (1 - stall)
        assert all(budget >= old for old in _old_budgets(layer, stall, vectors, len(layer.words),
                                                          len(layer.data)))
    with pytest.raises(ValueError, match="stall_prob"):
        cycle_budget(layer, 1.0)


@pytest.mark.rtl
def test_golden_isa_native_rtl_agree_through_the_registry(seed):
    """A small conv network with its input load cut off by a HALT: the four engines
    give the same integers, and the RTL engines the same counters, under the
    cycle budget of every segment."""
    qg, _ = conv_net(3, 6, 6, 4, 3, 1, 1, seed=seed)
    rng = np.random.default_rng(seed)
    xs = [rng.integers(0, 256, (3, 6, 6)) for _ in range(3)]
    program = NetworkProgram.from_lowered(lower(qg, SMALL), qg, input_halt=True)
    results = {name: make_engine(name, **({"batch": 2} if name in ("rtl", "native") else {}))
               .run(program, xs) for name in ("golden", "isa", "native", "rtl")}
    for name, res in results.items():
        assert len(res.outputs) == 3
        assert all(np.array_equal(y, g) for y, g in zip(res.outputs, results["golden"].outputs)), name
    assert results["native"].layers == results["rtl"].layers
    segs = program.segments(xs[0])
    assert [l["layer"] for l in results["native"].layers[0]] == [s.layer for s in segs]
    assert all(l["cycles"] < cycle_budget(s) for l, s in zip(results["native"].layers[0], segs))
    assert results["native"].info["cycles"] > 0 and results["rtl"].info["sim_s"] > 0
