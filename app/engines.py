"""Running a compiled network: the golden model, the instruction-level simulator
and the RTL (Verilator) give the same integers."""

from __future__ import annotations

from fxpgen.config import CoreConfig
from fxpgen.isa import ErrorCode
from fxpgen.sim.segments import LayerSegment, cycle_budget

__all__ = ["run_isa", "run_rtl", "run_native"]


def run_isa(cfg: CoreConfig, words: list[int], data: list[int]) -> list[int]:
    """Result words of the instruction-level simulator; raises on an error."""
    from fxpgen.sim.isa_sim import run_program
    res = run_program(cfg, words, data)
    if res.error is not ErrorCode.NONE:
        raise RuntimeError(f"instruction-level simulator stopped: {res.error.name} at "
                           f"instruction {res.error_pc}")
    return res.results


def run_rtl(cfg: CoreConfig, segments_per_image: list[list[LayerSegment]], *, seed: int = 0,
            stall_prob: float = 0.0, model=None):
    """Run images (each a list of layer segments) on the RTL in one simulation.
    Returns, per image, the result words and the per-layer counters, and timing info."""
    from fxpgen.sim.core_rtl import RtlProgram, run_on_rtl
    programs, owners = [], []
    for k, segs in enumerate(segments_per_image):
        for s in segs:
            programs.append(RtlProgram(s.words, s.data, s.n_results,
                                       max_cycles=cycle_budget(s)))
            owners.append((k, s.layer))
    results, info = run_on_rtl(cfg, programs, seed=seed, stall_prob=stall_prob, model=model)
    images = [{"results": [], "layers": []} for _ in segments_per_image]
    for (k, layer), r in zip(owners, results):
        if r.timed_out or r.state != 2:
            raise RuntimeError(f"RTL run of image {k}, layer {layer}: "
                               + ("timed out" if r.timed_out else f"stopped with {ErrorCode(r.error).name}"))
        images[k]["results"] += r.results
        images[k]["layers"].append({"layer": layer, **r.counters})
    return images, info


def run_native(cfg: CoreConfig, segments_per_image: list[list[LayerSegment]], *, seed: int = 0,
               stall_prob: float = 0.0, model=None):
    """Like :func:`run_rtl`, in the Verilator-native harness (no Python per cycle):
    the same results and per-layer counters, many times faster. Timing info also
    has ``cycles`` and ``cycles_per_s``."""
    from fxpgen.sim.native import run_native as run
    return run(cfg, segments_per_image, seed=seed, stall_prob=stall_prob, model=model)
