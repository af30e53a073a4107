"""The engines that run the generated core's Verilog: ``rtl`` (cocotb + Verilator,
:mod:`fxpgen.sim.core_rtl`) and ``native`` (the Verilator-native harness,
:mod:`fxpgen.sim.native`, the same results and counters many times faster).

Both cut every input's program at its HALTs (:func:`~fxpgen.sim.segments.split_layers`),
give each segment the cycle limit :func:`~fxpgen.sim.segments.cycle_budget`, and run
the segments of up to ``batch`` inputs one after another in one simulation; the
counters the core froze at each HALT are that segment's (usually one layer's).
Both play the host of off-chip maps: a segment's data words that reference
earlier results are filled when the segment starts (in the native harness, and
in the cocotb module)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar, Sequence

from fxpgen.config import CoreConfig
from fxpgen.isa import CoreState, ErrorCode

from .engine import Engine, EngineResult, Progress, Runnable
from .segments import LayerSegment, cycle_budget

if TYPE_CHECKING:      # the simulators import the hardware generator: only when one runs
    from .core_rtl import RtlProgram, RtlResult

__all__ = ["SegmentEngine", "RtlEngine", "NativeEngine"]

#: Wall-clock floor of one simulation, in seconds.
MIN_TIMEOUT_S = 1800.0


class SegmentEngine(Engine):
    """Common part of the RTL engines.

    batch
        Inputs per simulation.
    seed, stall_prob
        Random stalls on the instruction, data and result streams: a probability in
        [0, 1) for all three or ``{"insn": p, "data": p, "result": p}``.
    strict
        Raise RuntimeError naming the input and layer when a segment times out, stops
        on an error or returns another number of result words; with False the
        input's output is None and ``info["failures"]`` says what happened.
    model
        A built simulator to use instead of building one per configuration."""

    checked_against_golden = True
    #: How the error messages name the engine.
    label: ClassVar[str]
    #: A low estimate of the simulated cycles per second, for the wall-clock limit.
    min_cycles_per_s: ClassVar[float]

    def __init__(self, *, batch: int = 16, seed: int = 0, stall_prob: float | dict = 0.0,
                 strict: bool = True, model=None):
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.batch, self.seed, self.stall_prob, self.strict = batch, seed, stall_prob, strict
        self._given = model
        self._models: dict[CoreConfig, object] = {}

    @classmethod
    def from_options(cls, *, batch: int | None = None, **_) -> "SegmentEngine":
        return cls() if batch is None else cls(batch=batch)

    def model(self, cfg: CoreConfig):
        """The simulator of the core for ``cfg`` (built, or found in the cache, on first use)."""
        if self._given is not None:
            return self._given
        if cfg not in self._models:
            self._models[cfg] = self._build(cfg)
        return self._models[cfg]

    def _build(self, cfg: CoreConfig):
        raise NotImplementedError

    def _simulate(self, cfg: CoreConfig, programs: list["RtlProgram"], model,
                  timeout_s: float, refs: list[tuple[int, ...]]
                  ) -> tuple[list["RtlResult"], dict]:
        """Run ``programs``; ``refs`` as for :func:`~fxpgen.sim.native.run_on_native`."""
        raise NotImplementedError

    def _max_stall(self) -> float:
        p = self.stall_prob
        return max(p.values(), default=0.0) if isinstance(p, dict) else float(p)

    def run_segments(self, cfg: CoreConfig, segments_per_input: list[list[LayerSegment]],
                     names: list[str] | None = None) -> tuple[list[dict], dict]:
        """Run inputs (each a list of segments) in one simulation. Returns, per input,
        ``{"results": [int, ...], "layers": [{"layer": name, **counters}, ...]}``
        (and, when not strict and a segment failed, ``"failure"``: ``{"message",
        "layer", "error", "timed_out"}`` of the first failed segment), and
        the simulator's timing info. ``names`` name the inputs in messages
        (default ``image k``)."""
        from .core_rtl import RtlProgram
        names = names or [f"image {k}" for k in range(len(segments_per_input))]
        stall = self._max_stall()
        programs, owners, refs = [], [], []
        for k, segs in enumerate(segments_per_input):
            base = len(programs)
            for s in segs:
                refs += [(len(programs), at, base, *rest) for at, *rest in s.refs]
                programs.append(RtlProgram(s.words, s.data, s.n_results,
                                           max_cycles=cycle_budget(s, stall)))
                owners.append((k, s))
        timeout_s = max(MIN_TIMEOUT_S, 3 * sum(p.max_cycles for p in programs) / self.min_cycles_per_s)
        results, info = self._simulate(cfg, programs, self.model(cfg), timeout_s, refs)
        per_input = [{"results": [], "layers": []} for _ in segments_per_input]
        for (k, seg), r in zip(owners, results):
            problem = _problem(r, seg, info)
            if problem is not None:
                message = f"{self.label} run of {names[k]}, layer {seg.layer}: {problem}"
                if self.strict:
                    raise RuntimeError(message)
                per_input[k].setdefault("failure", {"message": message, "layer": seg.layer,
                                                    "error": ErrorCode(r.error).name,
                                                    "timed_out": r.timed_out})
            per_input[k]["results"] += r.results
            per_input[k]["layers"].append({"layer": seg.layer, **r.counters})
        return per_input, info

    def run(self, program: Runnable, inputs: Sequence, *, progress: Progress | None = None) -> EngineResult:
        return self.run_all([(program, inputs)], progress=progress)[0]

    def run_all(self, jobs: Sequence[tuple[Runnable, Sequence]], *,
                progress: Progress | None = None) -> list[EngineResult]:
        """Every ``(program, inputs)`` pair; the inputs of consecutive jobs for the same
        core share simulations, ``batch`` inputs each. ``info`` of every result holds
        the totals of the whole call: ``seconds``, ``sim_s``, ``verilator_build_s``
        and ``rebuilt`` (of the last model used), and ``cycles`` and
        ``cycles_per_s`` when the simulator counts them."""
        t0 = time.monotonic()
        units = [(j, k, p, x) for j, (p, xs) in enumerate(jobs) for k, x in enumerate(xs)]
        out = [EngineResult([None] * len(xs), [None] * len(xs), {}) for _, xs in jobs]
        failures: list[list[dict]] = [[] for _ in jobs]
        totals: dict = {"sim_s": 0.0}
        i = 0
        while i < len(units):
            cfg = units[i][2].cfg
            chunk = []
            while i < len(units) and len(chunk) < self.batch and units[i][2].cfg == cfg:
                chunk.append(units[i])
                i += 1
            names = [f"image {k}" if len(jobs) == 1 else f"program {j} image {k}" for j, k, _, _ in chunk]
            per_input, info = self.run_segments(cfg, [p.segments(x) for _, _, p, x in chunk], names)
            for (j, k, p, _), r in zip(chunk, per_input):
                out[j].outputs[k] = None if "failure" in r else p.decode(r["results"])
                out[j].layers[k] = r["layers"]
                if "failure" in r:
                    failures[j].append({"input": k, **r["failure"]})
            model = self.model(cfg)
            totals["sim_s"] += info["sim_s"]
            totals.update(verilator_build_s=model.build_s, rebuilt=model.rebuilt)
            if "cycles" in info:
                totals["cycles"] = totals.get("cycles", 0) + info["cycles"]
            if progress:
                progress(len(chunk))
        if "cycles" in totals:
            totals["cycles_per_s"] = totals["cycles"] / totals["sim_s"] if totals["sim_s"] else 0.0
        totals["seconds"] = time.monotonic() - t0
        for res, fails in zip(out, failures):
            res.info = {**totals, **({"failures": fails} if fails else {})}
        return out


def _problem(r: "RtlResult", seg: LayerSegment, info: dict) -> str | None:
    """Why a segment's run is not a good one, or None."""
    if not r.raw.get("ran", True):
        return f"not reached (the run stopped: {info.get('stopped')})"
    if r.timed_out:
        return f"timed out in state {CoreState(r.state).name}"
    if r.state != CoreState.HALTED.value:
        return f"stopped with {ErrorCode(r.error).name} at instruction {r.error_pc}"
    if len(r.results) != seg.n_results:
        return f"{len(r.results)} result words, expected {seg.n_results}"
    return None


class RtlEngine(SegmentEngine):
    """cocotb + Verilator (:func:`fxpgen.sim.core_rtl.run_on_rtl`)."""

    name = "rtl"
    label = "RTL"
    min_cycles_per_s = 5_000

    def _build(self, cfg: CoreConfig):
        from .core_rtl import core_model
        return core_model(cfg)

    def _simulate(self, cfg, programs, model, timeout_s, refs):
        from .core_rtl import run_on_rtl
        return run_on_rtl(cfg, programs, seed=self.seed, stall_prob=self.stall_prob, model=model,
                          timeout_s=timeout_s, refs=refs)


class NativeEngine(SegmentEngine):
    """The Verilator-native harness (:func:`fxpgen.sim.native.run_on_native`); its info
    also has ``cycles`` and ``cycles_per_s``."""

    name = "native"
    label = "native"
    min_cycles_per_s = 2_000_000

    def _build(self, cfg: CoreConfig):
        from .native import native_model
        return native_model(cfg)

    def _simulate(self, cfg, programs, model, timeout_s, refs):
        from .native import run_on_native
        return run_on_native(cfg, programs, seed=self.seed, stall_prob=self.stall_prob, model=model,
                             timeout_s=timeout_s, refs=refs)
