"""An analytical cycle model of the core: the counters the RTL freezes at each HALT,
predicted from the instruction words and the :class:`~fxpgen.config.CoreConfig`
(no simulator to build; the repeats of a layer's instruction patterns are added
up, not walked: :class:`_Repeats`), with every stream assumed never to stall.

The model follows the hardware rule by rule (``docs/performance.md``):

- Dispatch (``hw/controller.py``): instructions leave in order, at most one a cycle;
  one is dispatched in the first cycle its unit is ready and no other unit still
  holds a resource it declares (a write against another unit's reads or writes, a
  read against another unit's writes; ``hw/hazards.py``). HALT and SYNC wait until
  every unit is idle. A segment's counters run from the cycle after its first
  instruction is taken to its HALT's dispatch, inclusive.
- Every unit starts its address loops the cycle after dispatch and issues one
  iteration a cycle; what differs is how long it stays busy, when it is ready for
  its next instruction and how long it holds each resource (:func:`_op`), from the
  latencies of :class:`Latencies`, read off the hardware's own constants.
- LOAD writes a row only in cycles where the vector unit (scratchpad) or the matmul
  write-back (accumulators) leaves the shared write port free (``hw/buffers.py``),
  so its end is found by walking the other units' write intervals.

What the model leaves out: stream stalls (the data, instruction and result streams
are always ready, as in a stall-free run of the native harness) and faults (a
program that stops on an error has no meaningful timing).
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import functools
import gc
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fxpgen.config import REGIONS, CoreConfig
from fxpgen.hw.array import SystolicArray
from fxpgen.hw.controller import UNIT_OF
from fxpgen.hw.hazards import HAZARD_BITS, resource_index
from fxpgen.hw.requant import Requantizer
from fxpgen.hw.stages import FAST, Stages
from fxpgen.hw.store import FIFO_DEPTH
from amaranth.lib import data

from fxpgen.isa import (Addr, AddrGen, Insn, Instruction, Mem, Opcode, footprint, opcode_of, read_port,
                        region_of, weight_bits)

from .engine import Engine, EngineResult, Progress, Runnable

__all__ = ["Latencies", "Slice", "SegmentTiming", "ProgramTiming", "estimate", "estimate_words",
           "ModelEngine"]

#: The dispatcher's own track: HALT and SYNC, and the cycles an instruction waits.
CONTROL = "control"


@dataclass(frozen=True)
class Latencies:
    """The fixed delays of the core, in cycles, each taken from the hardware.

    matmul_write
        From a MATMUL iteration's issue to its accumulator write-back: the
        scratchpad read, the activation register, then
        :attr:`SystolicArray.LATENCY` (:meth:`Stages.matmul_write_delay`).
    vector_write
        From a vector iteration's issue to its scratchpad write: the source reads,
        the read and operand registers, then :attr:`Requantizer.LATENCY`
        (:meth:`Stages.vector_write_delay`).
    loadw_drain
        From the weight-buffer read that completes a LOADW's tile row to that row
        entering the array: the synchronous read (``hw/loadw.py``). The rows enter
        one a cycle, narrow weights too: each row is read only when needed.
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
    def of(cls, cfg: CoreConfig, stages: Stages = FAST) -> "Latencies":
        """The delays of ``cfg``'s core built with pipeline registers ``stages``."""
        return cls(matmul_write=stages.matmul_write_delay(SystolicArray.latency(cfg.rows, cfg.cols)),
                   vector_write=stages.vector_write_delay(Requantizer.LATENCY),
                   loadw_drain=1, store_drain=3, store_fifo=FIFO_DEPTH)


@dataclass
class Slice:
    """One instruction on the timeline, in counted cycles: the cycles the core's
    ``cycles`` counter counts, numbered from 1, the segments one after another (the
    two cycles between a HALT and the next segment's first instruction, which no
    counter counts, left out). The instruction became the current one in cycle
    ``waiting``, was dispatched in ``dispatch``, and its unit worked on it from
    ``first`` to ``last`` (inclusive; empty for no iterations): a MATMUL while its
    vectors enter the array (its drain overlaps the next MATMUL), any other unit
    until it is idle again. HALT and SYNC occupy their dispatch cycle."""

    index: int
    opcode: Opcode
    unit: str
    layer: str
    waiting: int
    dispatch: int
    first: int
    last: int


@dataclass
class SegmentTiming:
    """One HALT segment's counters, named as the core's (``docs/core.md``), and the
    counted cycle before its first (see :class:`Slice`)."""

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


@dataclass(frozen=True)
class _Op:
    """What the model needs of one instruction word, every cycle an offset from its
    dispatch: its unit's ``ready`` again, its ``busy`` end, the ``last`` cycle of its
    slice, how long it holds each hazard bit (``(bit, offset)``), and the shared
    write port it waits for (LOAD) or takes (``take``: first and last offset of the
    matmul's or the vector unit's writes). A LOAD's end depends on the port and is
    left to :meth:`_Core.settle_load`."""

    opcode: Opcode
    unit: str | None
    n: int
    reads: tuple[int, ...]
    writes: tuple[int, ...]
    ready: int = 1
    busy: int = 0
    last: int = 0
    r_holds: tuple[tuple[int, int], ...] = ()
    w_holds: tuple[tuple[int, int], ...] = ()
    port: int | None = None
    take: tuple[int, int] | None = None
    #: :attr:`checks` less the places no instruction of the program ever sets
    #: (:func:`_watching`), which stay -1; what :meth:`_Core.go` reads.
    watch: tuple[int, ...] = field(default=(), compare=False, repr=False)

    @functools.cached_property
    def bits(self) -> tuple[int, ...]:
        """The hazard bits it reads or writes."""
        return self.reads + self.writes

    @functools.cached_property
    def write_set(self) -> frozenset:
        """The hazard bits it writes, as a set."""
        return frozenset(self.writes)

    @functools.cached_property
    def macs(self) -> int:
        """The array's MAC cycles: one per MATMUL iteration."""
        return self.n if self.opcode is Opcode.MATMUL else 0

    @functools.cached_property
    def checks(self) -> tuple[int, ...]:
        """The places in :attr:`_Core.ends` its hazard check reads: the other units'
        holds of what it reads for writing, of what it writes for reading or writing."""
        others = [u for u in _UNITS if u != self.unit]
        return (tuple(_held(o, "w", b) for o in others for b in self.reads)
                + tuple(_held(o, rw, b) for o in others for b in self.writes for rw in "rw"))

    @functools.cached_property
    def holds(self) -> tuple[tuple[int, int], ...]:
        """Its holds (:attr:`r_holds`, :attr:`w_holds`) as places in :attr:`_Core.ends`."""
        return (tuple((_held(self.unit, "r", b), e) for b, e in self.r_holds)
                + tuple((_held(self.unit, "w", b), e) for b, e in self.w_holds))


#: :func:`~fxpgen.hw.hazards.resource_index`, asked again for every distinct word.
_bit = functools.cache(resource_index)

#: Per accumulator region, its hazard bit and its read port (asked for every MATMUL).
_ACC_REGIONS = tuple((_bit((Mem.ACC, r)), read_port(Mem.ACC, r)) for r in range(REGIONS))

#: The memories whose write port LOAD shares, in the order of :attr:`_Core.ports`
#: (:attr:`_Op.port` is a place in it).
_PORTS = (Mem.SPAD, Mem.ACC)

#: The units with instructions, in the order of :attr:`_Core.ends`.
_UNITS = sorted(set(UNIT_OF.values()))


def _held(unit: str, rw: str, bit: int) -> int:
    """The place in :attr:`_Core.ends` of the last cycle ``unit`` holds hazard ``bit``
    for reading (``rw`` "r") or for writing ("w")."""
    return (2 * _UNITS.index(unit) + (rw == "w")) * HAZARD_BITS + bit


def _address_bits(stream: str) -> int:
    """The bits of an instruction word holding ``stream``'s base and strides."""
    at = dict(data.Layout.cast(Insn))[stream].offset
    mask = 0
    for name, f in data.Layout.cast(AddrGen):
        if name != "regions":
            mask |= ((1 << f.width) - 1) << (at + f.offset)
    return mask


#: Per raw opcode, the bits of a word its timing can depend on: all but the address
#: bases and strides (hazards follow the region masks), except a MATMUL's z stream,
#: whose addresses set when each accumulator region is last written (:func:`_last_touches`).
#: Bits above the word's width are kept, so that a too wide word is still decoded
#: (and rejected).
_TIMED_BITS = {op.value: ~(_address_bits("x") | _address_bits("y")
                           | (0 if op is Opcode.MATMUL else _address_bits("z")))
               for op in Opcode}


def _store_last_issue(n: int, lat: Latencies) -> int:
    """The cycle, counted from its dispatch, in which a STORE of ``n`` rows reads its
    last row: one a cycle while its rows in flight stay below the FIFO's depth (each
    is in flight for ``store_drain`` cycles after its read)."""
    window = lat.store_drain + 1
    if lat.store_fifo >= window:
        return n
    return 1 + ((n - 1) // lat.store_fifo) * window + (n - 1) % lat.store_fifo


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


def _op(word: int, cfg: CoreConfig, lat: Latencies) -> _Op:
    """The timing of an instruction word (:class:`_Op`)."""
    insn = Instruction.decode(word)
    unit = UNIT_OF.get(insn.opcode)
    if unit is None:
        return _Op(insn.opcode, None, 0, (), ())
    fp = footprint(insn)
    reads = tuple(_bit(r) for r in fp.reads)
    writes = tuple(_bit(r) for r in fp.writes)
    n = insn.iterations
    if n == 0:
        return _Op(insn.opcode, unit, 0, reads, writes + tuple(_bit(p) for p in fp.ports))
    if unit == "load":
        mem = Mem(insn.params.get("mem", 0))
        return _Op(insn.opcode, unit, n, reads, writes,
                   port=_PORTS.index(mem) if mem in _PORTS else None)
    return _timed_op(insn, unit, n, reads, writes, fp.ports, cfg, lat)


def _paired(insn: Instruction) -> bool:
    """Whether a vector instruction's two scratchpad operands share a bank's read
    port (by their region masks), so it issues every other cycle."""
    if insn.opcode not in (Opcode.ADD, Opcode.MAX, Opcode.MUL):
        return False
    x, y = ({read_port(Mem.SPAD, r) for r in range(REGIONS) if (a.regions or 0) >> r & 1}
            for a in (insn.x, insn.y))
    return not x.isdisjoint(y)


def _timed_op(insn: Instruction, unit: str, n: int, reads: tuple[int, ...], writes: tuple[int, ...],
              ports: frozenset, cfg: CoreConfig, lat: Latencies) -> _Op:
    """:func:`_op` of an instruction with iterations on a unit other than LOAD; its
    read ``ports`` are held as long as the reads they serve."""
    op = insn.opcode
    claims = tuple(_bit(p) for p in ports)
    if op is Opcode.MATMUL:
        # Ready as its last vector issues; the bank, and each accumulator region,
        # stay marked until their last vector is written back; the accumulator
        # read port of a bank until its last region is.
        wb = n + lat.matmul_write
        bank = _bit(("BANK", insn.params.get("bank", 0)))
        ends = dict.fromkeys(writes, n)
        for r, k in _last_touches(insn.z, insn.count0, insn.count1, cfg.acc_depth).items():
            b = _bit((Mem.ACC, r))
            ends[b] = max(ends.get(b, n), 1 + k + lat.matmul_write)
        for p in ports:
            if p[0] == "ACC_PORT":
                served = [ends[b] for b, q in _ACC_REGIONS if q == p and b in ends]
                ends[_bit(p)] = max(served)
            else:
                ends[_bit(p)] = n
        return _Op(op, unit, n, reads, writes + claims, ready=n, busy=wb, last=n,
                   r_holds=tuple((b, wb if b == bank else n) for b in reads),
                   w_holds=tuple(ends.items()), port=_PORTS.index(Mem.ACC), take=(1 + lat.matmul_write, wb))
    if op is Opcode.LOADW:
        # A row is read the cycle before the first tile row needing its bits enters.
        width = weight_bits(insn.params.get("narrow", 0))
        read = 8 * (n - 1) // width + 1
        drained = cfg.rows + lat.loadw_drain
        return _Op(op, unit, n, reads, writes, ready=drained + 1, busy=drained, last=drained,
                   r_holds=tuple((b, read) for b in reads), w_holds=tuple((b, drained) for b in writes))
    if op is Opcode.STORE:
        issued = _store_last_issue(n, lat)
        sent = issued + lat.store_drain
        return _Op(op, unit, n, reads, claims, ready=sent + 1, busy=sent, last=sent,
                   r_holds=tuple((b, issued + 1) for b in reads),
                   w_holds=tuple((b, issued + 1) for b in claims))
    span = 2 * n if _paired(insn) else n
    wb = span + lat.vector_write
    lut = _bit((Mem.LUT, 0))
    return _Op(op, unit, n, reads, writes + claims, ready=wb + 1, busy=wb, last=wb,
               r_holds=tuple((b, wb if b == lut else span) for b in reads),
               w_holds=tuple((b, wb) for b in writes) + tuple((b, span) for b in claims),
               port=_PORTS.index(Mem.SPAD), take=(1 + lat.vector_write, wb))


class _Core:
    """The state the model keeps between the instructions of one segment: per unit
    its ready cycle, its last busy cycle and (:attr:`ends`) the last cycle it holds
    each hazard bit; the shared write ports; the LOAD whose end is not known yet."""

    def __init__(self):
        self.ready = dict.fromkeys(_UNITS, 0)
        self.busy_end = dict.fromkeys(_UNITS, 0)
        #: Per unit, per reading and writing, per hazard bit (:func:`_held`): one flat
        #: list, so that a hazard check is one ``max`` over the places it reads.
        self.ends = [-1] * (2 * len(_UNITS) * HAZARD_BITS)
        self.ports = [_Port() for _ in _PORTS]
        self.load: tuple | None = None
        self.load_bits: frozenset = frozenset()

    def settle_load(self) -> None:
        """Find the end of the pending LOAD from the write-port intervals known so far.

        Only an instruction that waits for the LOAD asks, so every interval not yet
        known lies after it."""
        d, op, s = self.load
        end = self.ports[op.port].finish(d + 1, op.n) if op.port is not None else d + op.n
        self.ready["load"], self.busy_end["load"] = end + 1, end
        for b in op.writes:
            self.ends[_held("load", "w", b)] = end
        if s is not None:
            s.last = s.dispatch - d + end
        self.load, self.load_bits = None, frozenset()

    def relative(self, d: int) -> tuple:
        """Everything that can still delay an instruction dispatched after cycle ``d``,
        in cycles after ``d`` (0 for what is over by then)."""
        def rel(values):
            return tuple(v - d if v > d else 0 for v in values)
        lo = d if self.load is None else min(d, self.load[0])
        ports = []
        for port in self.ports:
            k = bisect.bisect_right(port.ends, lo)
            # An interval under way at ``lo`` counts from ``lo``: writes merge into one
            # interval while they run back to back, and its start, which nothing later
            # reads, would otherwise keep the state from ever repeating.
            ports.append((tuple(max(v, lo) - d for v in port.starts[k:]),
                          tuple(v - d for v in port.ends[k:])))
        load = None if self.load is None else (self.load[0] - d, self.load[1])
        return rel(self.ready.values()), rel(self.busy_end.values()), rel(self.ends), tuple(ports), load

    def shift(self, d: int, delta: int) -> None:
        """Move every cycle of the state ``delta`` cycles later, dropping the write
        intervals over before cycle ``d`` and the pending LOAD (nothing dispatched
        after ``d`` can see them)."""
        lo = d if self.load is None else min(d, self.load[0])
        for port in self.ports:
            k = bisect.bisect_right(port.ends, lo)
            port.starts[:] = [v + delta for v in port.starts[k:]]
            port.ends[:] = [v + delta for v in port.ends[k:]]
        for u in self.ready:
            self.ready[u] += delta
            self.busy_end[u] += delta
        self.ends[:] = [v + delta for v in self.ends]
        if self.load is not None:
            d, op, s = self.load
            self.load = (d + delta, op, s)

    def idle(self) -> int:
        """The first cycle every unit is idle."""
        if self.load is not None:
            self.settle_load()
        return max(self.busy_end.values()) + 1

    def go(self, op: _Op, after: int) -> int:
        """Dispatch ``op`` in the first cycle after ``after`` (the cycle the instruction
        before it left in) that its unit's ready and the hazard check let it go, and
        return that cycle. A LOAD's end is settled when something waits for it."""
        unit = op.unit
        if unit is None:
            return max(after + 1, self.idle())
        if self.load is not None and (unit == "load" or not self.load_bits.isdisjoint(op.bits)):
            self.settle_load()
        ready, ends = self.ready, self.ends
        d = ready[unit]
        if d <= after:
            d = after + 1
        if op.watch:
            e = max(map(ends.__getitem__, op.watch))
            if e >= d:
                d = e + 1
        if op.n == 0:
            ready[unit] = d + 1
            return d
        if unit == "load":
            self.load, self.load_bits = (d, op, None), op.write_set
            return d
        ready[unit] = d + op.ready
        if d + op.busy > self.busy_end[unit]:
            self.busy_end[unit] = d + op.busy
        # A MATMUL starts while the one before still drains: a resource stays held
        # until the later of the two lets it go.
        for i, e in op.holds:
            e += d
            if e > ends[i]:
                ends[i] = e
        take = op.take
        if take is not None:
            self.ports[op.port].take(d + take[0], d + take[1])
        return d


def _segment(by_id: Sequence[_Op], ids: list[int], first: int, start: int, layer: str,
             slices: list[Slice] | None) -> SegmentTiming:
    """Time one segment (instructions up to its HALT, the only HALT in it) whose
    counted cycles follow ``start``; its instructions are ``first, first + 1, ...`` of
    the program, of timings ``by_id[i] for i in ids``. Without a timeline, the
    repeats of periodic stretches are skipped (:class:`_Repeats`)."""
    core = _Core()
    if slices is None:
        d, macs = _Repeats(by_id, ids).walk(core, 0, len(ids) - 1, 0, 0)
        d, macs = _step(core, by_id[ids[-1]], d, macs)
    else:
        d, macs = _timeline(core, by_id, ids, first, start, layer, slices)
    counters = {"cycles": d, "mac_cycles": macs, "stall_dispatch": d - len(ids), "stall_data": 0,
                "stall_result": 0, "insns": len(ids)}
    return SegmentTiming(layer, start, counters)


def _step(core: _Core, op: _Op, d: int, macs: int) -> tuple[int, int]:
    """Dispatch ``op`` after an instruction that left in ``d``: its dispatch cycle and
    the MAC cycles so far."""
    return core.go(op, d), macs + op.macs


def _timeline(core: _Core, by_id: Sequence[_Op], ids: list[int], first: int, start: int,
              layer: str, slices: list[Slice]) -> tuple[int, int]:
    """Walk a segment instruction by instruction, appending each one's :class:`Slice`;
    the HALT's dispatch cycle and the MAC cycles (arguments as :func:`_segment`'s)."""
    d = macs = 0
    for k, i in enumerate(ids):
        op = by_id[i]
        waiting, d = d + 1, core.go(op, d)
        last = d if op.unit is None else d + op.last
        s = Slice(first + k, op.opcode, op.unit or CONTROL, layer, start + waiting, start + d,
                  start + d + (op.unit is not None), start + last)
        slices.append(s)
        if core.load is not None and core.load[0] == d:
            core.load = (d, op, s)    # its end goes into the slice once settled
        macs += op.macs
    return d, macs


class _Repeats:
    """Skips repeats in a segment: a compiled layer is long runs of the same few
    instruction patterns, and once the core's state relative to the last dispatch
    (:meth:`_Core.relative`) comes back to what it was a pattern earlier, every
    further repeat of the pattern takes the same cycles and leaves the state shifted
    by them. The pattern at instruction ``k`` is the shortest ``ids[k:k + p]`` that the
    next ``p`` instructions repeat and whose first :attr:`BLOCK` instructions recur
    at ``k + p`` (``p`` up to :attr:`WINDOW`); ``ids`` number the segment's
    instructions, equal for equal timing (:class:`_Op`). Patterns nest (a layer's
    outer loop repeats runs of its inner loop's pattern), so the repeats a pattern
    is run for until the state settles skip the repeats inside them in turn."""

    #: The longest pattern: a layer's outer loop (a block of inner repeats) is up to 72,000
    #: instructions long in ResNet-50 at 224.
    WINDOW = 1 << 17
    #: Instructions that must recur for a pattern to be tried.
    BLOCK = 128
    #: Patterns run to reach a repeating state before giving up at a position.
    TRIES = 4
    #: Instructions to the next look after a first failed one; each further failure
    #: doubles it, a skip resets it (the search costs up to a few windows).
    BACKOFF = 64

    def __init__(self, by_id: Sequence[_Op], ids: list[int]):
        self.by_id = by_id
        self.ids = ids
        self.raw = array.array("I", ids).tobytes()

    def period(self, k: int, end: int) -> int | None:
        """The pattern's length at ``k``: the first later start of the next
        :attr:`BLOCK` instructions from which the instructions since ``k`` repeat,
        both copies before ``end``."""
        ids, raw, width = self.ids, self.raw, 4
        block = raw[k * width:(k + self.BLOCK) * width]
        pos = (k + 1) * width
        for _ in range(8):
            j = raw.find(block, pos, (k + self.WINDOW + self.BLOCK) * width)
            if j < 0:
                return None
            if j % width:
                pos = j + 1
                continue
            j //= width
            if 2 * j - k > end:
                return None
            if ids[k:j] == ids[j:2 * j - k]:
                return j - k
            pos = (j + 1) * width
        return None

    def walk(self, core: _Core, k: int, end: int, d: int, macs: int) -> tuple[int, int]:
        """Run instructions ``k`` to ``end - 1`` (the one before ``k`` left in ``d``),
        skipping repeats; the last one's dispatch cycle and the MAC cycles so far."""
        by_id, ids = self.by_id, self.ids
        next_check, backoff = k, self.BACKOFF
        while k < end:
            if k >= next_check:
                k2, d, macs, skipped = self.skip(core, k, end, d, macs)
                if skipped:
                    next_check, backoff = k2, self.BACKOFF
                else:
                    next_check, backoff = k2 + backoff, 2 * backoff
                k = k2
                continue
            op = by_id[ids[k]]
            d = core.go(op, d)
            macs += op.macs
            k += 1
        return d, macs

    def skip(self, core: _Core, k: int, end: int, d: int, macs: int
             ) -> tuple[int, int, int, bool]:
        """Run from instruction ``k`` (the one before it left in ``d``) until the state
        repeats, then skip every further whole repeat before ``end``; the new
        ``(k, d, macs)`` and whether repeats were skipped."""
        p = self.period(k, end)
        if p is None:
            return k, d, macs, False
        ids, pattern = self.ids, self.ids[k:k + p]
        before, d0, m0 = core.relative(d), d, macs
        for _ in range(self.TRIES):
            if k + p > end or ids[k:k + p] != pattern:
                break
            d, macs = self.walk(core, k, k + p, d, macs)
            k += p
            now = core.relative(d)
            if now == before:
                r = 0
                while k + (r + 1) * p <= end and ids[k + r * p:k + (r + 1) * p] == pattern:
                    r += 1
                core.shift(d, r * (d - d0))
                return k + r * p, d + r * (d - d0), macs + r * (macs - m0), True
            before, d0, m0 = now, d, macs
        return k, d, macs, False


def _cuts(halts: Sequence[int], n: int, layers: Sequence[str]) -> list[tuple[int, int, str]]:
    """The HALT segments ``(first, end, layer)`` of a program of ``n`` instructions
    with HALTs at ``halts``, named as :func:`~fxpgen.sim.segments.split_layers`
    names them: after the first layer other than ``"input"`` they serve, else after
    their HALT's (or "tail" for instructions after the last HALT)."""
    cuts, first = [], 0
    last_halt = halts[-1] + 1 if halts else 0
    for end in [h + 1 for h in halts] + ([n] if last_halt < n else []):
        halted = end <= last_halt
        name = next((layers[k] for k in range(first, end - halted) if layers[k] != "input"), None)
        cuts.append((first, end, name or (layers[end - 1] if halted else "tail")))
        first = end
    return cuts


class _TimingIds(dict):
    """The id of each instruction word looked up in it: words of equal timing
    (:class:`_Op`) share an id, numbered as they first appear (:attr:`interned`).
    Only the bits timing can depend on are decoded, once (:data:`_TIMED_BITS`)."""

    def __init__(self, cfg: CoreConfig, lat: Latencies):
        super().__init__()
        self.cfg, self.lat = cfg, lat
        self.interned: dict[_Op, int] = {}
        self.by_bits: dict[int, int] = {}

    def __missing__(self, word: int) -> int:
        bits = word & _TIMED_BITS.get(opcode_of(word), -1)
        if bits not in self.by_bits:
            op = _op(word, self.cfg, self.lat)
            self.by_bits[bits] = self.interned.setdefault(op, len(self.interned))
        self[word] = n = self.by_bits[bits]
        return n


def _watching(ops: Sequence[_Op]) -> list[_Op]:
    """``ops`` with their :attr:`~_Op.watch`: a program's instructions hold a few dozen
    of the hazard places, and a check of the others would only read -1."""
    held = {i for op in ops if op.unit is not None for i, _ in op.holds}
    held |= {_held("load", "w", b) for op in ops if op.unit == "load" for b in op.writes}
    return [dataclasses.replace(op, watch=tuple(i for i in op.checks if i in held))
            if op.unit is not None else op for op in ops]


def _positions(ids: list[int], wanted: Sequence[int]) -> list[int]:
    """The positions in ``ids`` of the values ``wanted``, in increasing order."""
    found = []
    for v in wanted:
        k = -1
        try:
            while True:
                k = ids.index(v, k + 1)
                found.append(k)
        except ValueError:
            pass    # no more
    return sorted(found)


def estimate_words(cfg: CoreConfig, words: Sequence[int], layers: Sequence[str], *,
                   timeline: bool = False,
                   table: tuple[Sequence[int], np.ndarray] | None = None) -> ProgramTiming:
    """The counters of every HALT segment of a program (instruction words and the
    layer of each), and with ``timeline`` every instruction's :class:`Slice`. With
    ``table`` (the distinct words and each word's place among them, as a program file
    holds them), the words are looked up through it."""
    # The walk makes many small tuples and no reference cycles: the collector's full
    # passes would only trace the program's million-entry lists (a third of a first run).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _estimate(cfg, words, layers, timeline, table)
    finally:
        if collecting:
            gc.enable()


def _estimate(cfg: CoreConfig, words: Sequence[int], layers: Sequence[str], timeline: bool,
              table: tuple[Sequence[int], np.ndarray] | None) -> ProgramTiming:
    lat = Latencies.of(cfg)
    id_of = _TimingIds(cfg, lat)
    if table is not None:
        distinct, index = table
        if len(index) != len(words):
            raise ValueError(f"the word table indexes {len(index)} words, the program has {len(words)}")
        ids = np.fromiter(map(id_of.__getitem__, distinct), np.int64, len(distinct))[index].tolist()
    else:
        # Hashing every word is most of the cost outside the walk, hence a single pass.
        ids = list(map(id_of.__getitem__, words))
    by_id = _watching(list(id_of.interned))
    halts = _positions(ids, [i for i, op in enumerate(by_id) if op.opcode is Opcode.HALT])
    slices: list[Slice] | None = [] if timeline else None
    segments, start = [], 0
    # Every segment starts on an idle core, so equal instruction timings give equal
    # counters: a network's repeated blocks are timed once.
    timed: dict[bytes, dict] = {}
    for first, end, layer in _cuts(halts, len(ids), layers):
        key = array.array("I", ids[first:end]).tobytes()
        if slices is None and key in timed:
            seg = SegmentTiming(layer, start, dict(timed[key]))
        else:
            seg = _segment(by_id, ids[first:end], first, start, layer, slices)
            timed[key] = seg.counters
        segments.append(seg)
        start += seg.counters["cycles"]
    return ProgramTiming(segments, slices or [])


def estimate(program: Runnable, *, timeline: bool = False) -> ProgramTiming:
    """:func:`estimate_words` of a runnable program (a compiled network or a GEMM)."""
    return estimate_words(program.cfg, program.words, program.layers, timeline=timeline,
                          table=program.word_table)


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
