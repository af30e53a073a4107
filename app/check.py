"""``fxpgen check``: a random int8 GEMM on the RTL against the golden model."""

from __future__ import annotations

from typing import Callable

import numpy as np

from fxpgen.compiler.gemm import build_gemm, gemm_reference, random_gemm
from fxpgen.config import CoreConfig
from fxpgen.isa import ErrorCode

__all__ = ["run_check"]


def run_check(cfg: CoreConfig, m: int, k: int, n: int, *, seed: int = 0, stall: float = 0.0,
              progress: Callable[[str], None] | None = None) -> dict:
    """Run the GEMM through the RTL, the instruction-level simulator and the golden
    model; return a report (bit-identity, cycle counters, utilization, timings)."""
    from fxpgen.sim.core_rtl import RtlProgram, core_model, run_on_rtl
    from fxpgen.sim.isa_sim import run_program

    say = progress or (lambda msg: None)
    a, b, shift = random_gemm(m, k, n, seed)
    program = build_gemm(cfg, a, b, shift)
    words = program.words
    golden = gemm_reference(a, b, shift, cfg.acc_width)

    say(f"instruction-level simulator: {len(words)} instructions")
    isa = run_program(cfg, words, program.data)
    isa_ok = isa.error is ErrorCode.NONE and np.array_equal(program.decode_results(isa.results), golden)

    say("building the Verilator model (cached after the first build of a configuration)")
    model = core_model(cfg)
    say(f"running on the RTL ({'built' if model.rebuilt else 'cached'} model)")
    # Generous bound: every instruction serialised, plus stalls.
    max_cycles = int(20 * (program.plan.macs // (cfg.rows * cfg.cols) + len(words) * 64
                           + len(program.data) + program.n_results) / max(1e-3, 1 - stall)) + 10_000
    results, info = run_on_rtl(cfg, [RtlProgram(words, program.data, program.n_results)],
                               seed=seed, stall_prob=stall, max_cycles=max_cycles, model=model)
    r = results[0]
    rtl_ok = (not r.timed_out and r.error == ErrorCode.NONE.value and r.state == 2
              and len(r.results) == program.n_results
              and np.array_equal(program.decode_results(r.results), golden))
    c = r.counters
    ideal = m * k * n / (cfg.rows * cfg.cols)
    return {
        "config": cfg.as_dict(),
        "gemm": {"m": m, "k": k, "n": n, "seed": seed},
        "bit_identical": bool(rtl_ok),
        "isa_sim_identical": bool(isa_ok),
        "rtl_error": ErrorCode(r.error).name,
        "timed_out": r.timed_out,
        "cycles": c["cycles"],
        "ideal_cycles": ideal,
        "utilization": ideal / c["cycles"] if c["cycles"] else 0.0,
        "mac_cycles": c["mac_cycles"],
        "stall_dispatch": c["stall_dispatch"],
        "stall_data": c["stall_data"],
        "stall_result": c["stall_result"],
        "instructions": len(words),
        "chunk": program.plan.chunk,
        "rebuilt": info["rebuilt"],
        "verilator_build_s": info["verilator_build_s"],
        "sim_s": info["sim_s"],
        "stall_prob": stall,
    }
