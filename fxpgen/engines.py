"""Running a compiled network: the golden model, the instruction-level simulator
and the RTL (Verilator) give the same integers."""

from __future__ import annotations

from dataclasses import dataclass

from .config import CoreConfig
from .isa import ErrorCode, Instruction, Opcode, opcode_of

__all__ = ["split_layers", "LayerSegment", "cycle_budget", "run_isa", "run_rtl", "run_native"]


@dataclass
class LayerSegment:
    """Instructions up to and including one HALT, with the data words they consume
    and the number of result words they produce."""

    layer: str
    words: list[int]
    data: list[int]
    n_results: int


def cycle_budget(seg: "LayerSegment") -> int:
    """A generous cycle limit for one segment: every instruction serialised with
    its iterations, plus the data and result words, with room for stalls."""
    work = 0
    for w in seg.words:
        try:
            work += 64 + 2 * Instruction.decode(w).iterations
        except ValueError:          # an illegal word: the core stops on it at once
            work += 64
    return 200_000 + 2 * work + 4 * len(seg.data) + 8 * seg.n_results


def split_layers(words: list[int], layers: list[str], data: list[int]) -> list[LayerSegment]:
    """Cut a program at its HALTs (one per layer)."""
    segments, cur, pos, n_res, name = [], [], 0, 0, None
    d0 = 0
    for w, layer in zip(words, layers):
        cur.append(w)
        if opcode_of(w) == Opcode.HALT.value:
            segments.append(LayerSegment(name or layer, cur, data[d0:pos], n_res))
            cur, d0, n_res, name = [], pos, 0, None
            continue
        insn = Instruction.decode(w)
        if name is None and layer not in ("input",):
            name = layer
        if insn.opcode is Opcode.LOAD:
            pos += insn.iterations
        elif insn.opcode is Opcode.STORE:
            n_res += insn.iterations
    if cur:
        segments.append(LayerSegment(name or "tail", cur, data[d0:pos], n_res))
    if pos != len(data):
        raise ValueError(f"the program's LOADs take {pos} data words but {len(data)} were given")
    return segments


def run_isa(cfg: CoreConfig, words: list[int], data: list[int]) -> list[int]:
    """Result words of the instruction-level simulator; raises on an error."""
    from .sim.isa_sim import run_program
    res = run_program(cfg, words, data)
    if res.error is not ErrorCode.NONE:
        raise RuntimeError(f"instruction-level simulator stopped: {res.error.name} at "
                           f"instruction {res.error_pc}")
    return res.results


def run_rtl(cfg: CoreConfig, segments_per_image: list[list[LayerSegment]], *, seed: int = 0,
            stall_prob: float = 0.0, model=None):
    """Run images (each a list of layer segments) on the RTL in one simulation.
    Returns, per image, the result words and the per-layer counters, and timing info."""
    from .sim.core_rtl import RtlProgram, run_on_rtl
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
    from .sim.native import run_native as run
    return run(cfg, segments_per_image, seed=seed, stall_prob=stall_prob, model=model)
