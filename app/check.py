"""``fxpgen check``: a random int8 GEMM on the RTL against the golden model."""

from __future__ import annotations

from typing import Callable

import numpy as np

from fxpgen.app.engines import make_engine
from fxpgen.compiler.gemm import build_gemm, gemm_reference, random_gemm
from fxpgen.config import CoreConfig
from fxpgen.sim.engine import GemmRunnable

__all__ = ["run_check"]


def run_check(cfg: CoreConfig, m: int, k: int, n: int, *, seed: int = 0, stall: float = 0.0,
              progress: Callable[[str], None] | None = None) -> dict:
    """Run the GEMM through the RTL, the instruction-level simulator and the golden
    model; return a report (bit-identity, cycle counters, utilization, timings)."""
    say = progress or (lambda msg: None)
    a, b, shift = random_gemm(m, k, n, seed)
    program = GemmRunnable(build_gemm(cfg, a, b, shift), gemm_reference(a, b, shift, cfg.acc_width))
    golden = program.golden([None])[0]

    say(f"instruction-level simulator: {len(program.words)} instructions")
    try:
        isa_ok = bool(np.array_equal(make_engine("isa").run(program, [None]).outputs[0], golden))
    except RuntimeError:            # the simulator stopped on an error
        isa_ok = False

    say("building the Verilator model (cached after the first build of a configuration)")
    rtl = make_engine("rtl", seed=seed, stall_prob=stall, strict=False)
    model = rtl.model(cfg)
    say(f"running on the RTL ({'built' if model.rebuilt else 'cached'} model)")
    per_input, info = rtl.run_segments(cfg, [program.segments(None)])
    r = per_input[0]
    c = r["layers"][-1]
    failure = r.get("failure")
    got = None if failure else program.decode(r["results"])
    ideal = m * k * n / (cfg.rows * cfg.cols)
    return {
        "config": cfg.as_dict(),
        "gemm": {"m": m, "k": k, "n": n, "seed": seed},
        "bit_identical": got is not None and bool(np.array_equal(got, golden)),
        "isa_sim_identical": isa_ok,
        "rtl_error": failure["error"] if failure else "NONE",
        "timed_out": failure["timed_out"] if failure else False,
        "cycles": c["cycles"],
        "ideal_cycles": ideal,
        "utilization": ideal / c["cycles"] if c["cycles"] else 0.0,
        "mac_cycles": c["mac_cycles"],
        "stall_dispatch": c["stall_dispatch"],
        "stall_data": c["stall_data"],
        "stall_result": c["stall_result"],
        "instructions": len(program.words),
        "chunk": program.program.plan.chunk,
        "rebuilt": info["rebuilt"],
        "verilator_build_s": info["verilator_build_s"],
        "sim_s": info["sim_s"],
        "stall_prob": stall,
    }
