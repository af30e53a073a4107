"""An analytical cycle model of the core: the counters the RTL freezes at each HALT,
predicted from the instruction words and the :class:`~fxpgen.config.CoreConfig` in
a fraction of a second, with every stream assumed never to stall.

The model follows the hardware rule by rule (``docs/performance.md``):

- Dispatch (``hw/controller.py``): instructions leave in order, at most one a cycle;
  one is dispatched in the first cycle its unit is ready and no other unit still
  holds a resource it declares (a write against another unit's reads or writes, a
  read against another unit's writes; ``hw/hazards.py``). HALT and SYNC wait until
  every unit is idle. A segment's counters run from the cycle after its first
  instruction is taken to its HALT's dispatch, inclusive.
- Every unit starts its address loops the cycle after dispatch and issues one
  iteration a cycle; what differs is how long it stays busy, when it is ready for
  its next instruction and how long it holds each resource (:func:`_unit_timing`),
  from the latencies of :class:`Latencies`, read off the hardware's own constants.
- LOAD writes a row only in cycles where the vector unit (scratchpad) or the matmul
  write-back (accumulators) leaves the shared write port free (``hw/buffers.py``),
  so its end is found by walking the other units' write intervals.

What the model leaves out: stream stalls (the data, instruction and result streams
are always ready, as in a stall-free run of the native harness) and faults (a
program that stops on an error has no meaningful timing).
"""

from __future__ import annotations

import bisect
import functools
import time
from dataclasses import dataclass, field
from typing import Sequence

from fxpgen.config import REGIONS, CoreConfig
from fxpgen.hw.array import SystolicArray
from fxpgen.hw.controller import UNIT_OF
from fxpgen.hw.hazards import resource_index
from fxpgen.hw.requant import Requantizer
from fxpgen.hw.store import FIFO_DEPTH
from fxpgen.isa import Addr, Instruction, Mem, Opcode, footprint, region_of

from .engine import Engine, EngineResult, Progress, Runnable
from .segments import split_layers

__all__ = ["Latencies", "Slice", "SegmentTiming", "ProgramTiming", "estimate", "estimate_words",
           "ModelEngine"]

#: The dispatcher's own track: HALT and SYNC, and the cycles an instruction waits.
CONTROL = "control"


@dataclass(frozen=True)
class Latencies:
    """The fixed delays of the core, in cycles, each taken from the hardware.

    matmul_write
        From a MATMUL iteration's issue to its accumulator write-back: the
        scratchpad read, then :attr:`SystolicArray.LATENCY` (``hw/matmul.py``).
    vector_write
        From a vector iteration's issue to its scratchpad write: the source reads,
        then :attr:`Requantizer.LATENCY` (``hw/vector.py``).
    loadw_drain
        From the last weight-buffer read of a LOADW to the last row entering the
        array: the synchronous read (``hw/loadw.py``).
    store_drain
        From the last row read by a STORE to the result stream taking it: the
        synchronous read, then two cycles through the ``SyncFIFOBuffered`` (its
        inner memory's read, then its output register; ``hw/store.py``).
    store_fifo
        Rows a STORE may have read and not yet sent (``hw.store.FIFO_DEPTH``).
    """

    matmul_write: int
    vector_write: int
    loadw_drain: int
    store_drain: int
    store_fifo: int

    @classmethod
    @functools.cache
    def of(cls, cfg: CoreConfig) -> "Latencies":
        array = SystolicArray(cfg.rows, cfg.cols, cfg.psum_width)
        array._MustUse__silence = True     # built for its LATENCY only, never elaborated
        return cls(matmul_write=1 + array.LATENCY, vector_write=1 + Requantizer.LATENCY,
                   loadw_drain=1, store_drain=3, store_fifo=FIFO_DEPTH)


@dataclass
class Slice:
    """One instruction on the timeline, in cycles from the start of the program:
    it became the current instruction at ``waiting``, was dispatched at
    ``dispatch`` and kept its unit busy until ``end`` (exclusive; ``dispatch + 1``
    for HALT and SYNC)."""

    index: int
    opcode: Opcode
    unit: str
    layer: str
    waiting: int
    dispatch: int
    end: int


@dataclass
class SegmentTiming:
    """One HALT segment's counters, named as the core's (``docs/core.md``), and the
    cycle of the program at which it started (its first instruction taken)."""

    layer: str
    start: int
    counters: dict

    def as_layer(self) -> dict:
        """The engines' per-layer record: ``{"layer", **counters}``."""
        return {"layer": self.layer, **self.counters}


@dataclass
class ProgramTiming:
    """A program's predicted segments and, when asked for, its timeline."""

    segments: list[SegmentTiming]
    slices: list[Slice] = field(default_factory=list)

    @property
    def cycles(self) -> int:
        return sum(s.counters["cycles"] for s in self.segments)


class _Port:
    """Cycles a shared memory write port is taken by its priority writer: disjoint
    intervals ``[start, end]`` in increasing order."""

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []

    def take(self, start: int, end: int) -> None:
        if self.ends and start == self.ends[-1] + 1:
            self.ends[-1] = end
        else:
            self.starts.append(start)
            self.ends.append(end)

    def finish(self, first: int, rows: int) -> int:
        """The cycle of the last of ``rows`` writes made one a free cycle from ``first`` on."""
        pos, k = first, bisect.bisect_left(self.ends, first)
        while k < len(self.starts):
            free = self.starts[k] - pos
            if free >= rows:
                break
            if free > 0:
                rows -= free
            pos = max(pos, self.ends[k] + 1)
            k += 1
        return pos + rows - 1


def _bits(resources) -> list[int]:
    return [resource_index(r) for r in resources]


def _store_last_issue(d: int, n: int, lat: Latencies) -> int:
    """The cycle a STORE of ``n`` rows dispatched at ``d`` reads its last row: one a
    cycle while its reads in flight stay below the FIFO's depth (each is in flight
    for ``store_drain`` cycles after its read)."""
    window = lat.store_drain + 1
    if lat.store_fifo >= window:
        return d + n
    return d + 1 + ((n - 1) // lat.store_fifo) * window + (n - 1) % lat.store_fifo


def _last_touches(a: Addr, count0: int, count1: int, depth: int) -> dict[int, int]:
    """The last iteration (counted in loop order) whose address lies in each region of
    a ``depth``-row memory that the loops reach. Addresses grow along both loops
    (strides are unsigned), so within one pass of the inner loop a region's
    iterations are consecutive: the outer loop is walked backwards until every
    region between the lowest and the highest address is found or ruled out."""
    size = depth // REGIONS
    hi = a.base + (count0 - 1) * a.stride0 + (count1 - 1) * a.stride1
    todo = set(range(region_of(a.base, depth), min(region_of(hi, depth), REGIONS - 1) + 1))
    found: dict[int, int] = {}
    for i1 in range(count1 - 1, -1, -1):
        row = a.base + i1 * a.stride1
        for r in sorted(todo):
            top = (r + 1) * size - 1
            if top < row:
                continue
            i0 = count0 - 1 if a.stride0 == 0 else min(count0 - 1, (top - row) // a.stride0)
            if row + i0 * a.stride0 >= r * size:
                found[r] = i1 * count0 + i0
        todo -= found.keys()
        if not todo:
            break
    return found


def _matmul_holds(insn: Instruction, d: int, lat: Latencies, cfg: CoreConfig,
                  writes: list[int]) -> list[tuple[int, int]]:
    """MATMUL's accumulator regions: the declared ones while its loops run, then each
    region its vectors write until the last of them is written back (the matmul
    unit counts vectors in flight per region of their address, ``hw/matmul.py``)."""
    last = d + insn.iterations
    ends = {b: last for b in writes}
    for r, k in _last_touches(insn.z, insn.count0, insn.count1, cfg.acc_depth).items():
        b = resource_index((Mem.ACC, r))
        ends[b] = max(ends.get(b, last), d + 1 + k + lat.matmul_write)
    return list(ends.items())


def _unit_timing(insn: Instruction, d: int, n: int, lat: Latencies, cfg: CoreConfig,
                 reads: list[int], writes: list[int]
                 ) -> tuple[int, int, list[tuple[int, int]], list[tuple[int, int]]]:
    """A non-LOAD instruction dispatched at ``d`` with ``n > 0`` iterations: ``(ready,
    busy_end, read_holds, write_holds)``, where ``ready`` is the first cycle its unit
    accepts another instruction, ``busy_end`` the last cycle the unit is busy with
    it, and the holds ``(bit, last cycle held)`` per hazard bit it declares."""
    last = d + n
    op = insn.opcode
    if op is Opcode.MATMUL:
        # Ready as its last vector issues; the accumulator regions and the bank stay
        # marked until that vector's write-back.
        wb = last + lat.matmul_write
        bank = resource_index(("BANK", insn.params.get("bank", 0)))
        return (last, wb, [(b, wb if b == bank else last) for b in reads],
                _matmul_holds(insn, d, lat, cfg, writes))
    if op is Opcode.LOADW:
        drained = last + lat.loadw_drain
        return drained + 1, drained, [(b, last) for b in reads], [(b, drained) for b in writes]
    if op is Opcode.STORE:
        issued = _store_last_issue(d, n, lat)
        sent = issued + lat.store_drain
        return sent + 1, sent, [(b, issued + 1) for b in reads], []
    wb = last + lat.vector_write
    lut = resource_index((Mem.LUT, 0))
    return (wb + 1, wb, [(b, wb if b == lut else last) for b in reads], [(b, wb) for b in writes])


class _Core:
    """The state the model keeps between instructions of one segment."""

    def __init__(self, cfg: CoreConfig, lat: Latencies):
        self.cfg, self.lat = cfg, lat
        self.ready = dict.fromkeys(set(UNIT_OF.values()), 0)
        self.busy_end = dict.fromkeys(self.ready, 0)
        self.r_end = {u: {} for u in self.ready}
        self.w_end = {u: {} for u in self.ready}
        self.ports = {Mem.SPAD: _Port(), Mem.ACC: _Port()}
        self.load: tuple | None = None    # a LOAD whose end is not known yet

    def settle_load(self) -> None:
        """Find the end of the pending LOAD from the write-port intervals known so far.

        Only an instruction that waits for the LOAD asks, so every interval not yet
        known lies after it."""
        if self.load is None:
            return
        d, n, mem, writes, s = self.load
        port = self.ports.get(mem)
        end = port.finish(d + 1, n) if port is not None else d + n
        self.ready["load"], self.busy_end["load"] = end + 1, end
        for b in writes:
            self.w_end["load"][b] = end
        if s is not None:
            s.end = s.dispatch + end - d + 1
        self.load = None

    def earliest(self, unit: str, reads: list[int], writes: list[int]) -> int:
        """The first cycle the hazard check and ``unit``'s ready let the instruction go."""
        if self.load is not None and (unit == "load" or set(self.load[3]) & set(reads + writes)):
            self.settle_load()
        t = self.ready[unit]
        for other in self.ready:
            if other == unit:
                continue
            w_end, r_end = self.w_end[other], self.r_end[other]
            for b in reads:
                t = max(t, w_end.get(b, -1) + 1)
            for b in writes:
                t = max(t, w_end.get(b, -1) + 1, r_end.get(b, -1) + 1)
        return t

    def idle(self) -> int:
        """The first cycle every unit is idle."""
        self.settle_load()
        return max(self.busy_end.values()) + 1

    def dispatch(self, insn: Instruction, unit: str, d: int, reads: list[int], writes: list[int],
                 s: Slice | None) -> int:
        """Start ``insn`` on ``unit`` at cycle ``d``; the last cycle it keeps the unit
        busy. A LOAD's end waits for :meth:`settle_load`, which sets it in ``s``."""
        n = insn.iterations
        if n == 0:
            self.ready[unit] = max(self.ready[unit], d + 1)
            return d
        if unit == "load":
            mem = Mem(insn.params.get("mem", 0))
            self.load = (d, n, mem, writes, s)
            return d
        ready, busy_end, r_holds, w_holds = _unit_timing(insn, d, n, self.lat, self.cfg, reads, writes)
        self.ready[unit], self.busy_end[unit] = ready, busy_end
        for b, e in r_holds:
            self.r_end[unit][b] = e
        for b, e in w_holds:
            self.w_end[unit][b] = e
        if unit == "matmul":
            self.ports[Mem.ACC].take(d + 1 + self.lat.matmul_write, d + n + self.lat.matmul_write)
        elif unit == "vector":
            self.ports[Mem.SPAD].take(d + 1 + self.lat.vector_write, d + n + self.lat.vector_write)
        return busy_end


def _segment(insns: Sequence[Instruction], first: int, start: int, layer: str, cfg: CoreConfig,
             lat: Latencies, slices: list[Slice] | None) -> SegmentTiming:
    """Time one segment (instructions up to its HALT) taken at program cycle ``start``;
    its instructions are ``first, first + 1, ...`` of the program."""
    core, d, macs = _Core(cfg, lat), 0, 0
    for k, insn in enumerate(insns):
        waiting = d + 1
        unit = UNIT_OF.get(insn.opcode)
        s = None
        if unit is None:
            d = max(waiting, core.idle())
            end = d
        else:
            fp = footprint(insn)
            reads, writes = _bits(fp.reads), _bits(fp.writes)
            d = max(waiting, core.earliest(unit, reads, writes))
            if slices is not None:
                s = Slice(first + k, insn.opcode, unit, layer, start + waiting, start + d, 0)
            end = core.dispatch(insn, unit, d, reads, writes, s)
            if insn.opcode is Opcode.MATMUL:
                macs += insn.iterations
        if slices is not None:
            s = s or Slice(first + k, insn.opcode, CONTROL, layer, start + waiting, start + d, 0)
            s.end = s.end or start + end + 1
            slices.append(s)
        if insn.opcode is Opcode.HALT:
            break
    counters = {"cycles": d, "mac_cycles": macs, "stall_dispatch": d - (k + 1), "stall_data": 0,
                "stall_result": 0, "insns": k + 1}
    return SegmentTiming(layer, start, counters)


def estimate_words(cfg: CoreConfig, words: Sequence[int], layers: Sequence[str], *,
                   timeline: bool = False) -> ProgramTiming:
    """The counters of every HALT segment of a program (instruction words and the
    layer of each), and with ``timeline`` every instruction's :class:`Slice`.

    Segments follow one another as in the native harness: the next segment's first
    instruction is taken two cycles after a HALT's dispatch (the cycle the core
    shows HALTED, then the next)."""
    lat = Latencies.of(cfg)
    insns = [Instruction.decode(w) for w in words]
    n_data = sum(i.iterations for i in insns if i.opcode is Opcode.LOAD)
    cuts = split_layers(list(words), list(layers), [0] * n_data)
    slices: list[Slice] | None = [] if timeline else None
    segments, first, start = [], 0, 0
    for cut in cuts:
        seg = _segment(insns[first:first + len(cut.words)], first, start, cut.layer, cfg, lat,
                       slices)
        segments.append(seg)
        first += len(cut.words)
        start += seg.counters["cycles"] + 2
    return ProgramTiming(segments, slices or [])


def estimate(program: Runnable, *, timeline: bool = False) -> ProgramTiming:
    """:func:`estimate_words` of a runnable program (a compiled network or a GEMM)."""
    return estimate_words(program.cfg, program.words, program.layers, timeline=timeline)


class ModelEngine(Engine):
    """The cycle model as an engine: the golden model's outputs, and per input the
    counters :func:`estimate` predicts (the same for every input: the core's timing
    does not depend on the data). ``info`` has ``seconds`` and ``model_s``, the
    time the estimate took."""

    name = "model"

    def run(self, program: Runnable, inputs: Sequence, *, progress: Progress | None = None) -> EngineResult:
        t0 = time.monotonic()
        timing = estimate(program)
        model_s = time.monotonic() - t0
        outputs = program.golden(inputs)
        if progress:
            progress(len(inputs))
        layers = [[s.as_layer() for s in timing.segments] for _ in inputs]
        return EngineResult(outputs, layers, {"seconds": time.monotonic() - t0, "model_s": model_s})
