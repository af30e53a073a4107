"""Helpers shared by the block-level tests of the execution units and buffers.

A test runs one unit alone in Amaranth's simulator with a single testbench that
advances the clock through :class:`Harness`. Each cycle the harness first lets
every part drive its inputs (stream valid/ready, arbitration signals), then
samples the settled outputs (memory ports, stream transfers), then ticks and
finally updates the parts (memories apply writes and return read data). One
testbench doing all of it in that order leaves no race between drivers.

Memory rows are plain ints packed as stream words (:func:`fxpgen.isa.pack_row`):
the hardware row layouts (``hw/buffers.py``) put lane ``j`` at the same bits, so
a row read from a port compares directly with the instruction-level simulator's
packed rows.
"""

from __future__ import annotations

import random

import numpy as np
from amaranth import Elaboratable, Module, Signal
from amaranth.hdl import ResetInserter
from amaranth.sim import Simulator

from fxpgen.config import REGIONS, CoreConfig
from fxpgen.hw.hazards import resource_index
from fxpgen.isa import INSN_BITS, Addr, Mem, footprint, pack_rows, unpack_rows
from fxpgen.sim.isa_sim import Machine

__all__ = ["Top", "Harness", "MemoryModel", "StreamSource", "StreamSink", "RandomBit", "simulate",
           "random_rows", "random_stream", "machine_with", "machine_rows", "hazard_mask",
           "iteration_addresses", "first_fault"]


class Top(Elaboratable):
    """The unit(s) under test, wired by the statements in ``wires`` (as in
    ``hw/core.py``), plus a test-driven synchronous reset ``rst``, so one simulation
    can run many instructions and recover from a latched error."""

    def __init__(self, wires=(), **units):
        self.units = units
        self.wires = list(wires)
        self.rst = Signal()

    def elaborate(self, platform):
        m = Module()
        for name, unit in self.units.items():
            m.submodules[name] = unit
        m.d.comb += self.wires
        return ResetInserter(self.rst)(m)


def simulate(top, bench):
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


class Harness:
    """Clocks the simulation one cycle at a time for a list of parts (objects with
    ``drive(ctx)``, ``sample(ctx, cycle)``, ``update(ctx)``). ``cycle`` counts the
    clock edges so far; a value sampled in cycle ``n`` was present before edge
    ``n + 1``."""

    def __init__(self, *parts):
        self.parts = list(parts)
        self.cycle = 0
        self._settled = False

    def settle(self, ctx):
        """Drive this cycle's inputs and sample the settled outputs; the test may
        then read and check outputs before :meth:`tick`."""
        # Settling twice would sample one transfer twice.
        assert not self._settled, "cycle already settled: tick first"
        self._settled = True
        for p in self.parts:
            p.drive(ctx)
        for p in self.parts:
            p.sample(ctx, self.cycle)

    async def tick(self, ctx):
        """End the settled cycle with a clock edge."""
        assert self._settled, "settle before tick"
        self._settled = False
        await ctx.tick()
        self.cycle += 1
        for p in self.parts:
            p.update(ctx)

    async def step(self, ctx):
        self.settle(ctx)
        await self.tick(ctx)

    async def start(self, ctx, ctrl, word: int, pc: int):
        """One cycle with ``start`` high and ``word`` on ``ctrl.insn``. Afterwards the
        instruction port holds the complement of ``word``, as the controller moves on
        to the next instruction: a unit must latch what it needs at start."""
        ctx.set(ctrl.insn.as_value(), word)
        ctx.set(ctrl.pc, pc)
        ctx.set(ctrl.start, 1)
        await self.step(ctx)
        ctx.set(ctrl.start, 0)
        ctx.set(ctrl.insn.as_value(), word ^ ((1 << INSN_BITS) - 1))
        ctx.set(ctrl.pc, ~pc & 0xFFFF_FFFF)

    async def reset(self, ctx, top: Top):
        ctx.set(top.rst, 1)
        await self.step(ctx)
        ctx.set(top.rst, 0)


class MemoryModel:
    """A memory of ``rows`` (ints) behind the unit's ports: synchronous reads (data
    one cycle after the address), writes with per-lane enables. A read port listed
    in ``transparent`` returns the row written in the same cycle. Every enabled read
    and write is recorded as ``(cycle, addr)`` / ``(cycle, addr, row)``."""

    def __init__(self, rows, *, read=(), write=(), transparent=()):
        self.rows = list(rows)
        self.read_ports = list(read)
        self.write_ports = list(write)
        self.transparent = [any(p is t for t in transparent) for p in self.read_ports]
        self.reads = [[] for _ in self.read_ports]
        self.writes = []
        self._pending = None

    def drive(self, ctx):
        pass

    def sample(self, ctx, cycle):
        reads = [(ctx.get(p.en), ctx.get(p.addr)) for p in self.read_ports]
        writes = [(ctx.get(p.en), ctx.get(p.addr), ctx.get(p.data.as_value()), len(p.en),
                   len(p.data.as_value())) for p in self.write_ports]
        for k, (en, addr) in enumerate(reads):
            if en:
                self.reads[k].append((cycle, addr))
        self._pending = (cycle, reads, writes)

    def update(self, ctx):
        cycle, reads, writes = self._pending
        before = list(self.rows)
        for en, addr, value, lanes, width in writes:
            if not en:
                continue
            gran = width // lanes
            mask = sum(((1 << gran) - 1) << (gran * i) for i in range(lanes) if en >> i & 1)
            self.rows[addr] = (self.rows[addr] & ~mask) | (value & mask)
            self.writes.append((cycle, addr, self.rows[addr]))
        for port, transparent, (en, addr) in zip(self.read_ports, self.transparent, reads):
            if en:
                ctx.set(port.data.as_value(), (self.rows if transparent else before)[addr])


class StreamSource:
    """Sends ``words`` on an ``amaranth.lib.stream`` input of the unit, raising
    ``valid`` in a cycle with probability ``p_valid`` and then holding it (and the
    payload) until the transfer. ``sent`` counts the transfers."""

    def __init__(self, stream, words, rng: random.Random, p_valid: float = 1.0):
        self.stream, self.words, self.rng, self.p_valid = stream, list(words), rng, p_valid
        self.sent = 0
        self._valid = False

    def drive(self, ctx):
        if not self._valid and self.sent < len(self.words):
            self._valid = self.rng.random() < self.p_valid
        ctx.set(self.stream.valid, self._valid)
        if self._valid:
            ctx.set(self.stream.payload, self.words[self.sent])

    def sample(self, ctx, cycle):
        if self._valid and ctx.get(self.stream.ready):
            self.sent += 1
            self._valid = False

    def update(self, ctx):
        pass


class StreamSink:
    """Takes words from a stream output of the unit, ``ready`` high in a cycle with
    probability ``p_ready``; ``received`` holds ``(cycle, payload)`` of each
    transfer (payload as an int)."""

    def __init__(self, stream, rng: random.Random, p_ready: float = 1.0):
        self.stream, self.rng, self.p_ready = stream, rng, p_ready
        self.received = []
        self._ready = False

    def drive(self, ctx):
        self._ready = self.rng.random() < self.p_ready
        ctx.set(self.stream.ready, self._ready)

    def sample(self, ctx, cycle):
        if self._ready and ctx.get(self.stream.valid):
            self.received.append((cycle, ctx.get(self.stream.payload.as_value())))

    def update(self, ctx):
        pass


class RandomBit:
    """Drives a 1-bit input high in a cycle with probability ``p``; ``value`` is this
    cycle's."""

    def __init__(self, signal, rng: random.Random, p: float = 1.0):
        self.signal, self.rng, self.p = signal, rng, p
        self.value = 1

    def drive(self, ctx):
        self.value = int(self.rng.random() < self.p)
        ctx.set(self.signal, self.value)

    def sample(self, ctx, cycle):
        pass

    def update(self, ctx):
        pass


# --- random state and instructions ----------------------------------------------------


def random_rows(rng: random.Random, mem: Mem, cfg: CoreConfig, depth: int | None = None) -> list[int]:
    """Random packed rows filling ``mem`` (ACC values spread over the whole range,
    extremes included, so saturation is exercised)."""
    depth = cfg.depth(mem) if depth is None else depth
    if mem is Mem.ACC:
        lo, hi = -(1 << (cfg.acc_width - 1)), (1 << (cfg.acc_width - 1)) - 1
        vals = [[rng.choice([lo, hi, rng.randrange(lo, hi + 1), rng.randrange(-999, 1000)])
                 for _ in range(cfg.cols)] for _ in range(depth)]
        return pack_rows(Mem.ACC, vals, cfg)
    width = {Mem.SPAD: 8 * cfg.lanes, Mem.WBUF: 8 * cfg.cols, Mem.TABLE: 12 * cfg.cols}[mem]
    return [rng.getrandbits(width) for _ in range(depth)]


def random_stream(rng: random.Random, depth: int, count0: int, count1: int) -> Addr:
    """An address stream over a memory of ``depth`` rows that stays in range and in
    its regions most of the time; otherwise it runs past the depth (sometimes past
    2**16 rows through a large stride) or leaves a random region mask."""
    base = rng.randrange(depth) if rng.random() < 0.85 else rng.randrange(depth, depth + 4)
    span = max(1, depth // max(count0, count1))
    stride0 = rng.choice([0, 1, 1, rng.randrange(span), rng.randrange(span + 2)])
    stride1 = rng.choice([0, count0, rng.randrange(span), rng.randrange(2 * span)])
    if rng.random() < 0.04:
        stride1 = rng.randrange(1 << 15, 1 << 16)
    regions = rng.choice([(1 << REGIONS) - 1, None, None, rng.randrange(1 << REGIONS)])
    return Addr(base, stride0, stride1, regions)


def iteration_addresses(insn, stream: str) -> list[int]:
    """Exact row addresses of ``stream`` over all iterations of ``insn``, in order."""
    a = getattr(insn, stream)
    return [a.base + i1 * a.stride1 + i0 * a.stride0
            for i1 in range(insn.count1) for i0 in range(insn.count0)]


def first_fault(insn, cfg: CoreConfig) -> int:
    """Index of the first iteration whose address faults (``iterations`` if none)."""
    for t in range(insn.iterations):
        for s in ("x", "y", "z"):
            mem = insn.stream_mem(s)
            if mem is None:
                continue
            addr, depth = iteration_addresses(insn, s)[t], cfg.depth(mem)
            if addr >= depth or (mem is not Mem.TABLE
                                 and not getattr(insn, s).regions >> (addr * REGIONS // depth) & 1):
                return t
    return insn.iterations


def hazard_mask(insn) -> tuple[int, int]:
    """The ``(reads, writes)`` hazard masks the controller expects from ``insn``'s
    declared footprint (:func:`fxpgen.isa.footprint`)."""
    fp = footprint(insn)
    return (sum(1 << resource_index(r) for r in fp.reads),
            sum(1 << resource_index(r) for r in fp.writes))


# --- the instruction-level simulator's state as packed rows -------------------------------


def machine_with(cfg: CoreConfig, *, spad=None, wbuf=None, acc=None, table=None, banks=None) -> Machine:
    """A :class:`Machine` whose memories hold the given packed rows (others zero)."""
    mach = Machine(cfg)
    if spad is not None:
        mach.spad[:] = unpack_rows(Mem.SPAD, spad, cfg, signed=False)
    if wbuf is not None:
        mach.wbuf[:] = unpack_rows(Mem.WBUF, wbuf, cfg)
    if acc is not None:
        mach.acc[:] = unpack_rows(Mem.ACC, acc, cfg)
    if table is not None:
        pairs = np.array([[[((w >> 12 * j) & 0x3F), (w >> (12 * j + 6)) & 0x3F]
                           for j in range(cfg.cols)] for w in table], dtype=np.int64)
        pairs -= (pairs >> 5 & 1) << 6
        mach.table_shift[:] = pairs[..., 0]
        mach.table_align[:] = pairs[..., 1]
    if banks is not None:
        mach.banks[:] = np.asarray(banks)
    return mach


def machine_rows(mach: Machine, mem: Mem) -> list[int]:
    """``mem`` of ``mach`` as packed rows."""
    cfg = mach.cfg
    if mem is Mem.SPAD:
        return pack_rows(Mem.SPAD, mach.spad, cfg)
    if mem is Mem.WBUF:
        return pack_rows(Mem.WBUF, mach.wbuf, cfg)
    if mem is Mem.ACC:
        return pack_rows(Mem.ACC, mach.acc, cfg)
    return [sum(((int(s) & 0x3F) | (int(a) & 0x3F) << 6) << 12 * j
                for j, (s, a) in enumerate(zip(rs, ra)))
            for rs, ra in zip(mach.table_shift, mach.table_align)]

