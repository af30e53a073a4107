"""What every engine runs and returns: a :class:`Runnable` program (a compiled network
or the GEMM of ``fxpgen check``), the :class:`Engine` interface and its
:class:`EngineResult`.

An engine takes a runnable and a list of inputs and gives one output array per
input. The runnable knows the core configuration, the instruction words, the layer
of each instruction, the data stream of one input, how to decode that input's
result words and the golden reference, so the engines need nothing else: the
golden model and the instruction-level simulator here, the RTL engines in
:mod:`fxpgen.sim.rtl_engines`, the board in :mod:`fxpgen.boards.engine`, all
looked up by name in :mod:`fxpgen.app.engines`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import numpy as np

from fxpgen.compiler.gemm import GemmProgram
from fxpgen.compiler.golden import run_golden_batch
from fxpgen.compiler.lower import Lowered
from fxpgen.compiler.qgraph import QGraph
from fxpgen.config import CoreConfig
from fxpgen.isa import ErrorCode

from .segments import LayerSegment, resolve_data, split_layers, with_input_halt

__all__ = ["Runnable", "NetworkProgram", "GemmRunnable", "EngineResult", "Engine", "GoldenEngine",
           "IsaEngine"]

#: ``progress(n)`` is called with the number of inputs finished since the last call.
Progress = Callable[[int], None]


class Runnable:
    """A program an engine can run: ``cfg``, ``words`` (instruction words) and
    ``layers`` (the layer each instruction serves), and per input its data
    stream, the decoding of its result words and the golden reference."""

    cfg: CoreConfig
    words: list[int]
    layers: list[str]
    #: The distinct words and each instruction's place among them, where the program
    #: came from a file that stores them so (:attr:`~fxpgen.compiler.program.Program.word_table`).
    word_table: tuple[list[int], np.ndarray] | None = None

    def stream(self, x) -> list[int]:
        """The data words (bus-width integers) the program consumes for input ``x``."""
        raise NotImplementedError

    def decode(self, results: list[int]) -> np.ndarray:
        """One input's output array (int64) from its result words, in stream order."""
        raise NotImplementedError

    def golden(self, inputs: Sequence) -> list[np.ndarray]:
        """The golden model's output array for each of ``inputs``."""
        raise NotImplementedError

    def result_refs(self) -> list[tuple[int, int, int, int, int]]:
        """Where the data stream takes the program's own earlier result words (off-chip
        maps): ``(data word, result word, count, run, stride)``
        (:attr:`~fxpgen.sim.segments.LayerSegment.refs`); none by default."""
        return []

    def segments(self, x) -> list[LayerSegment]:
        """The program cut at its HALTs, with input ``x``'s data (and references to
        earlier results, :attr:`~fxpgen.sim.segments.LayerSegment.refs`)."""
        return split_layers(self.words, self.layers, self.stream(x), self.result_refs())


@dataclass
class NetworkProgram(Runnable):
    """A compiled network; an input is its quantized map (C, H, W) of integers in the
    input format, an output the output map (C, H, W) in the output format; for a
    program compiled for a batch of N images (:attr:`batch`), an input is N maps
    (N, C, H, W) and an output N maps.

    ``view`` packs inputs and decodes outputs (a :class:`Lowered`, or the
    :meth:`~fxpgen.compiler.program.Program.lowered_view` of a program file)."""

    cfg: CoreConfig
    words: list[int]
    layers: list[str]
    view: Lowered
    qgraph: QGraph
    word_table: tuple[list[int], np.ndarray] | None = None

    @classmethod
    def from_program(cls, prog, qgraph: QGraph) -> "NetworkProgram":
        """From a program file and its quantized graph, as ``load_compiled`` returns them."""
        return cls(prog.cfg, list(prog.words), list(prog.layers), prog.lowered_view(), qgraph,
                   prog.word_table)

    @classmethod
    def from_lowered(cls, low: Lowered, qgraph: QGraph, *, input_halt: bool = False) -> "NetworkProgram":
        """From a lowering in memory; ``input_halt`` adds a HALT after the input load
        (:func:`~fxpgen.sim.segments.with_input_halt`), so the input load is a
        segment of its own."""
        if not input_halt:
            return cls(low.cfg, list(low.words), list(low.layers), low, qgraph)
        insns, layers = with_input_halt(low.instructions, low.layers)
        return cls(low.cfg, [i.encode(low.cfg) for i in insns], layers, low, qgraph)

    @property
    def batch(self) -> int:
        """Images per run of the program."""
        return self.view.batch

    def check_input(self, x) -> np.ndarray:
        """Input ``x`` as int64 (C, H, W), or (N, C, H, W) for a batch of N, checked as
        every engine needs it: the input tensor's shape, integers (an integral float
        array passes) in the input format's range; ValueError saying what is wrong
        otherwise."""
        t = self.qgraph.tensor(self.qgraph.input)
        x = np.asarray(x)
        shape = tuple(t.shape) if self.batch == 1 else (self.batch, *t.shape)
        if x.shape != shape:
            raise ValueError(f"quantized input of shape {x.shape}, the program's input {t.name} "
                             f"is {shape}" + (f" (a batch of {self.batch})" if self.batch > 1 else ""))
        if x.dtype.kind == "f":
            integral = bool(np.all(np.isfinite(x) & (x == np.round(x))))
        else:
            integral = x.dtype.kind in "iu"
        if not integral:
            raise ValueError(f"quantized input of {x.dtype} that are not all integers; quantize "
                             "float inputs with fxpgen.compiler.golden.quantize_input")
        lo, hi = int(np.min(x)), int(np.max(x))
        if lo < t.fmt.lo or hi > t.fmt.hi:
            raise ValueError(f"quantized input spans {lo}..{hi}, outside its format {t.fmt} "
                             f"({t.fmt.lo}..{t.fmt.hi})")
        return x.astype(np.int64)

    def stream(self, x) -> list[int]:
        return self.view.data(self.view.image_words(self.check_input(x)))

    def result_refs(self) -> list[tuple[int, int, int, int, int]]:
        return self.view.result_refs()

    def decode(self, results: list[int]) -> np.ndarray:
        return self.view.decode_output(results)

    def golden(self, inputs: Sequence) -> list[np.ndarray]:
        if not len(inputs):
            return []
        xs = np.stack([self.check_input(x) for x in inputs])
        out = run_golden_batch(self.qgraph, xs.reshape(-1, *xs.shape[-3:]))[self.qgraph.output]
        if self.batch > 1:
            out = out.reshape(len(inputs), self.batch, *out.shape[1:])
        return list(out)


@dataclass
class GemmRunnable(Runnable):
    """The GEMM of ``fxpgen check``: A is already in the program's data, so every
    input is the same (any value, e.g. ``None``); the output is Y (M x N), the
    golden reference ``reference`` (:func:`~fxpgen.compiler.gemm.gemm_reference`)."""

    program: GemmProgram
    reference: np.ndarray

    @property
    def cfg(self) -> CoreConfig:
        return self.program.cfg

    @property
    def words(self) -> list[int]:
        return self.program.words

    @property
    def layers(self) -> list[str]:
        return ["gemm"] * len(self.program.instructions)

    def stream(self, x) -> list[int]:
        return list(self.program.data)

    def decode(self, results: list[int]) -> np.ndarray:
        return self.program.decode_results(results)

    def golden(self, inputs: Sequence) -> list[np.ndarray]:
        return [np.asarray(self.reference, np.int64) for _ in inputs]


@dataclass
class EngineResult:
    """What a run gives: ``outputs``, one int64 array per input (None for an input the
    engine could not finish, when it was asked not to raise); ``layers``, per input
    the counters the core froze at each HALT (``{"layer", "cycles", "mac_cycles",
    "stall_dispatch", "stall_data", "stall_result", "insns"}``; None for engines
    without a cycle model); ``info``, timings and engine details (``seconds`` wall
    time of the run, and e.g. ``verilator_build_s``, ``sim_s``, ``cycles``)."""

    outputs: list
    layers: list[list[dict]] | None = None
    info: dict = field(default_factory=dict)


class Engine:
    """Runs runnables. ``name`` is the registry's key; ``checked_against_golden``
    says whether ``fxpgen run`` compares its outputs with the golden model's (it
    does for every engine but the golden model itself). :meth:`run_all` lets an engine put many
    programs in one simulation; the default runs them one after another."""

    name: ClassVar[str]
    checked_against_golden: ClassVar[bool] = False

    @classmethod
    def from_options(cls, **options) -> "Engine":
        """The engine built from the run options of ``fxpgen run`` (``batch``, ``port``,
        ``baud``, ``timeout``, ``baked``, ...), taking those it has and ignoring the
        rest; None means "the engine's default"."""
        return cls()

    def run(self, program: Runnable, inputs: Sequence, *, progress: Progress | None = None) -> EngineResult:
        """Outputs (and counters) of ``program`` for each of ``inputs``."""
        raise NotImplementedError

    def run_all(self, jobs: Sequence[tuple[Runnable, Sequence]], *,
                progress: Progress | None = None) -> list[EngineResult]:
        """:meth:`run` of every ``(program, inputs)`` pair."""
        return [self.run(p, xs, progress=progress) for p, xs in jobs]


class GoldenEngine(Engine):
    """The golden model (:mod:`fxpgen.compiler.golden`), a batch at a time."""

    name = "golden"

    def run(self, program: Runnable, inputs: Sequence, *, progress: Progress | None = None) -> EngineResult:
        outputs = program.golden(inputs)
        if progress:
            progress(len(inputs))
        return EngineResult(outputs)


class IsaEngine(Engine):
    """The instruction-level simulator (:mod:`fxpgen.sim.isa_sim`), an input at a
    time; raises RuntimeError when the program stops on an error. A program with
    off-chip maps runs segment by segment on one machine, each segment's
    referenced data words filled from the results so far (the host's part)."""

    name = "isa"
    checked_against_golden = True

    def run(self, program: Runnable, inputs: Sequence, *, progress: Progress | None = None) -> EngineResult:
        outputs = []
        hosted = bool(program.result_refs())
        for k, x in enumerate(inputs):
            results = _run_hosted(program, x, k) if hosted else _run_whole(program, x, k)
            outputs.append(program.decode(results))
            if progress:
                progress(1)
        return EngineResult(outputs)


def _run_whole(program: Runnable, x, k: int) -> list[int]:
    from .isa_sim import run_program
    res = run_program(program.cfg, program.words, program.stream(x))
    _check(res, k, 0)
    return res.results


def _run_hosted(program: Runnable, x, k: int) -> list[int]:
    """Segment by segment, filling the references to earlier results."""
    from .isa_sim import Machine
    machine, results, pc = Machine(program.cfg), [], 0
    for seg in program.segments(x):
        res = machine.run(seg.words, resolve_data(seg, results))
        _check(res, k, pc)
        results += res.results
        pc += len(seg.words)
    return results


def _check(res, k: int, pc0: int) -> None:
    if res.error is not ErrorCode.NONE:
        raise RuntimeError(f"instruction-level simulator stopped: {res.error.name} at "
                           f"instruction {pc0 + res.error_pc} (input {k})")
