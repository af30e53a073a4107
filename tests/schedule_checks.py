"""Checks shared by the tests of the compiler's schedules: a lowered network computes
the golden model's outputs on the instruction-level simulator, and on the native RTL
in exactly the cycle model's cycles, layer by layer."""

import numpy as np

from fxpgen.compiler.golden import run_golden_batch
from fxpgen.sim.cycle_model import estimate_words
from fxpgen.sim.engine import IsaEngine, NetworkProgram


def model_layer_cycles(low) -> list[int]:
    """The cycle model's ``cycles`` of every HALT segment (layer) of the lowered ``low``."""
    timing = estimate_words(low.cfg, list(low.words), list(low.layers))
    return [s.counters["cycles"] for s in timing.segments]


def assert_isa_is_golden(low, qg, xs) -> None:
    """``low`` (lowered from ``qg``) gives the golden model's outputs for images ``xs``
    on the instruction-level simulator."""
    out = IsaEngine().run(NetworkProgram.from_lowered(low, qg), xs).outputs
    golden = run_golden_batch(qg, np.stack(xs))[qg.output]
    assert all(np.array_equal(o, g) for o, g in zip(out, golden))


def assert_native_is_golden_in_model_cycles(low, qg, xs) -> None:
    """``low`` gives the golden model's outputs on the native RTL, every layer in the
    cycle model's cycles."""
    from fxpgen.sim.rtl_engines import NativeEngine
    res = NativeEngine(batch=2).run(NetworkProgram.from_lowered(low, qg), xs)
    golden = run_golden_batch(qg, np.stack(xs))[qg.output]
    assert all(np.array_equal(o, g) for o, g in zip(res.outputs, golden))
    assert [layer["cycles"] for layer in res.layers[0]] == model_layer_cycles(low)
