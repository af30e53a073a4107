"""Run programs on the generated core under Verilator (cocotb), as a pure function
of (configuration, programs, seed, stall probabilities).

The model is built once per distinct Verilog text and cached under
``fxpgen.tools.cache_dir() / "rtl"``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fxpgen.config import CoreConfig
from fxpgen.hw.verilog import TOP_NAME, generate_verilog
from fxpgen.tools import cache_dir

from .rtl import VerilatorModel, build_model, run_cocotb

__all__ = ["core_model", "RtlProgram", "RtlResult", "run_on_rtl"]

TEST_MODULE = "fxpgen.sim.cocotb_core"


@dataclass
class RtlProgram:
    """One program for the RTL: instruction words, data words and how many result
    words to wait for (-1 when the program is expected to stop on an error)."""

    words: list[int]
    data: list[int]
    n_results: int
    max_cycles: int | None = None


@dataclass
class RtlResult:
    results: list[int]
    lasts: list[bool]
    state: int
    error: int
    error_pc: int
    counters: dict
    timed_out: bool
    raw: dict = field(repr=False, default_factory=dict)


def core_model(cfg: CoreConfig) -> VerilatorModel:
    """The Verilator model of the core for ``cfg`` (built on first use)."""
    return build_model(f"core-{cfg.name}", generate_verilog(cfg), TOP_NAME, cache_dir() / "rtl")


def run_on_rtl(cfg: CoreConfig, programs: list[RtlProgram], *, seed: int = 0,
               stall_prob: float | dict = 0.0, max_cycles: int = 2_000_000,
               timeout_s: float = 1800.0, model: VerilatorModel | None = None,
               refs: list[tuple[int, ...]] = ()) -> tuple[list[RtlResult], dict]:
    """Run ``programs`` one after another on one core (memories persist between
    them; the core is reset after a program that stopped on an error). Returns the
    per-program results and timing information (build and simulation seconds).
    ``refs`` fill data words from earlier results as for
    :func:`fxpgen.sim.native.run_on_native`."""
    t0 = time.monotonic()
    model = model or core_model(cfg)
    build_s = time.monotonic() - t0
    if not isinstance(stall_prob, dict):
        stall_prob = {"insn": stall_prob, "data": stall_prob, "result": stall_prob}
    job = {
        "programs": [{"insns": [hex(w) for w in p.words], "data": [hex(d) for d in p.data],
                      "n_results": p.n_results,
                      **({"max_cycles": p.max_cycles} if p.max_cycles else {})}
                     for p in programs],
        **({"refs": [list(r) for r in refs]} if refs else {}),
        "seed": seed,
        "stall_prob": stall_prob,
        "max_cycles": max_cycles,
    }
    t1 = time.monotonic()
    out = run_cocotb(model, TEST_MODULE, job, timeout_s=timeout_s)
    sim_s = time.monotonic() - t1
    results = [RtlResult([int(w, 16) for w in r["results"]], [bool(x) for x in r["lasts"]],
                         r["state"], r["error"], r["error_pc"], r["counters"], r["timed_out"], r)
               for r in out["programs"]]
    return results, {"build_s": build_s, "rebuilt": model.rebuilt,
                     "verilator_build_s": model.build_s, "sim_s": sim_s}
