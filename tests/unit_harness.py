"""Helpers shared by the block-level tests: each runs one hardware unit (or the
core) in Amaranth's simulator against the instruction-level simulator
(``sim/isa_sim.py``) or a model of its documented behaviour.

A test of an execution unit runs it with a single testbench that advances the
clock through :class:`Harness`. Each cycle the harness first lets every part
drive its inputs (stream valid/ready, arbitration signals), then samples the
settled outputs (memory ports, stream transfers), then ticks and finally
updates the parts (memories apply writes and return read data). One testbench
doing all of it in that order leaves no race between drivers.

Memory rows are plain ints packed as stream words (:func:`fxpgen.isa.pack_row`):
the hardware row layouts (``hw/buffers.py``) put lane ``j`` at the same bits, so
a row read from a port compares directly with the instruction-level simulator's
packed rows. Hazard masks come from :func:`fxpgen.isa.footprint` (the Python twin
of ``hw/hazards.py``), so the tests do not reuse the logic they check.
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
from amaranth import Elaboratable, Module, Signal
from amaranth.hdl import ResetInserter, Value
from amaranth.sim import Simulator

from fxpgen.config import REGIONS, CoreConfig
from fxpgen.hw.hazards import resource_index
from fxpgen.isa import INSN_BITS, UNREGIONED, Addr, ErrorCode, Instruction, Mem, Opcode, footprint, pack_rows, \
    regions_spanned, unpack_rows
from fxpgen.sim.isa_sim import Machine, ProgramError

__all__ = ["CONFIGS", "config_id", "HOLD", "Top", "Harness", "MemoryModel", "StreamSource",
           "StreamSink", "RandomBit", "simulate", "run_insn", "check_end", "random_rows",
           "random_machine", "random_stream", "random_fault", "random_vector_insn", "machine_with",
           "machine_rows", "hazard_mask", "addresses", "first_fault"]

#: Small cores, one of each array shape (square, and both ways of a lane group):
#: memories a few rows deep so that random addresses reach every region and the
#: end of memory, in different proportions (the address widths differ), table
#: depths that are not powers of two, and narrow accumulators (odd widths too) so
#: that accumulation and aligned adds saturate often.
CONFIGS = [
    CoreConfig(rows=2, cols=2, acc_width=20, spad_depth=16, wbuf_depth=8, acc_depth=16, table_depth=3),
    CoreConfig(rows=2, cols=4, acc_width=18, spad_depth=8, wbuf_depth=4, acc_depth=32, table_depth=5),
    CoreConfig(rows=4, cols=2, acc_width=19, spad_depth=32, wbuf_depth=16, acc_depth=8, table_depth=4),
    CoreConfig(rows=4, cols=4, acc_width=24, spad_depth=16, wbuf_depth=4, acc_depth=16, table_depth=4),
]

#: Cycles a faulted unit is watched for holding its error, and then for staying
#: quiet once aborted.
HOLD = 4


def config_id(cfg: CoreConfig) -> str:
    """The test id of a configuration: its array shape, ``"<rows>x<cols>"``."""
    return f"{cfg.rows}x{cfg.cols}"


# --- running a unit in the simulator -----------------------------------------------------


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


def simulate(dut, bench) -> None:
    """Simulate ``dut`` with one clock and the async testbench ``bench(ctx)``."""
    sim = Simulator(dut)
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
        """Settle and tick: one whole cycle."""
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
        """One cycle with ``top``'s reset high."""
        ctx.set(top.rst, 1)
        await self.step(ctx)
        ctx.set(top.rst, 0)


async def run_insn(ctx, h: Harness, ctrl, check_cycle, limit: int, insn) -> ErrorCode:
    """Clock a started unit cycle by cycle: settle, then ``check_cycle(ctx, error)``
    checks the settled cycle (``error`` is what the unit reports) and returns true
    once the unit is done or has faulted; that cycle ends too. Returns the last
    error reported; fails if ``insn`` runs ``limit`` cycles."""
    for _ in range(limit):
        h.settle(ctx)
        error = ErrorCode(ctx.get(ctrl.error))
        done = check_cycle(ctx, error)
        await h.tick(ctx)
        if done:
            return error
    raise AssertionError(f"{insn} did not finish")


async def check_end(ctx, h: Harness, top: Top, ctrl, error: ErrorCode, expected: ErrorCode, pc: int,
                    faults: list, quiet, *, hold: int = HOLD, drain: int = HOLD) -> None:
    """Check the end of an instruction that ended reporting ``error``: it is the ISA
    simulator's ``expected``. After a fault (appended to ``faults``) the unit gives
    the instruction's ``pc`` and keeps reporting the error, busy, for ``hold``
    cycles (until the controller aborts it); once aborted it reports no error and
    its output stays quiet (``quiet(ctx)`` true) for ``drain`` cycles; then a reset
    readies it for the next instruction."""
    assert error == expected
    if error == ErrorCode.NONE:
        return
    faults.append(error)
    assert ctx.get(ctrl.error_pc) == pc
    for _ in range(hold):
        await h.step(ctx)
        assert ctx.get(ctrl.error) == error and ctx.get(ctrl.busy)
    ctx.set(ctrl.abort, 1)
    for _ in range(drain):
        await h.step(ctx)
        assert ctx.get(ctrl.error) == ErrorCode.NONE
        assert quiet(ctx)
    ctx.set(ctrl.abort, 0)
    await h.reset(ctx, top)


# --- parts the harness clocks --------------------------------------------------------------


class MemoryModel:
    """A memory of ``rows`` (ints) behind the unit's ports, with the behaviour of
    ``amaranth.lib.memory``: synchronous reads (data one cycle after the address, the
    row before that edge's writes), writes with per-lane enables. A read port listed
    in ``transparent`` returns the row written in the same cycle. Every enabled read
    and write is recorded as ``(cycle, addr)`` (in ``reads``, a list per read port) /
    ``(cycle, addr, row)``, and checked to lie inside the memory: the units must
    never touch a faulting address. Without ``hold`` (the scratchpad's and the
    accumulators' banks), a port's data is all ones in every cycle not after a read
    of it, so a unit that used it then would be caught."""

    def __init__(self, rows, *, read=(), write=(), transparent=(), name: str = "memory",
                 hold: bool = True):
        self.hold = hold
        self.rows = list(rows)
        self.name = name
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
        writes = [(ctx.get(p.en), ctx.get(p.addr), ctx.get(Value.cast(p.data)), len(p.en),
                   len(Value.cast(p.data))) for p in self.write_ports]
        for what, en, addr in [("read", *r) for r in reads] + [("write", *w[:2]) for w in writes]:
            assert not en or addr < len(self.rows), \
                f"{self.name}: {what} at row {addr} beyond depth {len(self.rows)}"
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
                ctx.set(Value.cast(port.data), (self.rows if transparent else before)[addr])
            elif not self.hold:
                ctx.set(Value.cast(port.data), (1 << len(Value.cast(port.data))) - 1)

    def read_in(self, port, cycle: int) -> int | None:
        """The row ``port`` read in ``cycle``, None if it read none."""
        k = next(k for k, p in enumerate(self.read_ports) if p is port)
        return next((addr for c, addr in self.reads[k] if c == cycle), None)


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


# --- the instruction-level simulator's state as packed rows -------------------------------


def random_rows(rng: random.Random, mem: Mem, cfg: CoreConfig) -> list[int]:
    """Random packed rows filling ``mem``: accumulators small, anywhere in their range
    or at its ends (so saturation is exercised); shifts and alignments over their
    whole signed 6-bit range, most often where models use them."""
    depth = cfg.depth(mem)
    if mem is Mem.ACC:
        lo, hi = -(1 << (cfg.acc_width - 1)), (1 << (cfg.acc_width - 1)) - 1
        return pack_rows(Mem.ACC, [[rng.choice([rng.randint(-300, 300), rng.randint(lo, hi), lo, hi, 0])
                                    for _ in range(cfg.cols)] for _ in range(depth)], cfg)
    if mem is Mem.TABLE:
        return pack_rows(Mem.TABLE, [[(rng.choice([rng.randint(-32, 31), rng.randint(0, 12)]),
                                       rng.choice([0, rng.randint(-4, 4), rng.randint(-32, 31)]))
                                      for _ in range(cfg.cols)] for _ in range(depth)], cfg)
    width = {Mem.SPAD: 8 * cfg.lanes, Mem.WBUF: 8 * cfg.cols, Mem.LUT: 8}[mem]
    return [rng.getrandbits(width) for _ in range(depth)]


def machine_with(cfg: CoreConfig, *, spad=None, wbuf=None, acc=None, table=None, banks=None,
                 lut=None) -> Machine:
    """A :class:`Machine` whose memories hold the given packed rows (others zero)."""
    mach = Machine(cfg)
    if spad is not None:
        mach.spad[:] = unpack_rows(Mem.SPAD, spad, cfg, signed=False)
    if wbuf is not None:
        mach.wbuf[:] = unpack_rows(Mem.WBUF, wbuf, cfg)
    if acc is not None:
        mach.acc[:] = unpack_rows(Mem.ACC, acc, cfg)
    if table is not None:
        pairs = unpack_rows(Mem.TABLE, table, cfg)
        mach.table_shift[:] = pairs[..., 0]
        mach.table_align[:] = pairs[..., 1]
    if banks is not None:
        mach.banks[:] = np.asarray(banks)
    if lut is not None:
        mach.lut[:] = np.asarray(lut)
    return mach


def random_machine(rng: random.Random, cfg: CoreConfig) -> Machine:
    """A machine whose memories hold :func:`random_rows`."""
    return machine_with(cfg, **{mem.name.lower(): random_rows(rng, mem, cfg) for mem in Mem})


def machine_rows(mach: Machine, mem: Mem) -> list[int]:
    """``mem`` of ``mach`` as packed rows."""
    if mem is Mem.TABLE:
        return pack_rows(Mem.TABLE, np.stack([mach.table_shift, mach.table_align], axis=-1), mach.cfg)
    if mem is Mem.LUT:
        return [int(v) for v in mach.lut]
    return pack_rows(mem, {Mem.SPAD: mach.spad, Mem.WBUF: mach.wbuf, Mem.ACC: mach.acc}[mem], mach.cfg)


# --- random instructions and what they should do ---------------------------------------------


def addresses(a: Addr, count0: int, count1: int) -> list[int]:
    """Rows a stream visits, iteration by iteration (exact integers)."""
    return [a.base + i1 * a.stride1 + i0 * a.stride0 for i1 in range(count1) for i0 in range(count0)]


def random_fault(rng: random.Random, p: float = 0.4) -> str | None:
    """With probability ``p`` a fault kind for :func:`random_stream`, else None."""
    return rng.choice(["address", "region"]) if rng.random() < p else None


def random_stream(rng: random.Random, depth: int, count0: int, count1: int,
                  fault: str | None = None) -> Addr:
    """A random address stream over ``depth`` rows: in range with its exact or a wider
    region mask, or (``fault``) one that walks off the memory (``"address"``, also
    with strides near 2**16) or leaves a region it touches out of its mask
    (``"region"``)."""
    s0 = rng.choice([0, 1, 1, 2, 3, rng.randint(0, depth // 2)])
    s1 = rng.choice([0, count0 * s0, count0 * s0 + 1, rng.randint(0, depth // 2)])
    while (count0 - 1) * s0 + (count1 - 1) * s1 >= depth:
        s0, s1 = s0 // 2, s1 // 2
    span = (count0 - 1) * s0 + (count1 - 1) * s1
    base = rng.randint(0, depth - 1 - span)
    a = Addr(base, s0, s1)
    mask = regions_spanned(a, count0, count1, depth)
    if rng.random() < 0.3:
        mask |= rng.randrange(1 << REGIONS)
    if fault == "address":
        if rng.random() < 0.5:
            return Addr(rng.randint(depth - 2, depth - 1), rng.randint(1, 3), s1, (1 << REGIONS) - 1)
        return Addr(base, rng.randrange(depth, 1 << 16), rng.randrange(1 << 16), (1 << REGIONS) - 1)
    if fault == "region":
        used = sorted({row * REGIONS // depth for row in addresses(a, count0, count1)})
        mask &= ~(1 << rng.choice(used))
    return Addr(base, s0, s1, mask)


def random_vector_insn(cfg: CoreConfig, rng: random.Random, fault_prob: float = 0.25) -> Instruction:
    """A random REQUANT, ADD, MAX, MUL or LUT that the ISA simulator accepts (no
    iteration reads a row an earlier one wrote), every parameter drawn over its legal
    range (MAX gets random ADD fields, which it must ignore; REQUANT without residual
    and LUT a random ``y``, which they must not read; MUL's ``y`` often has stride 0,
    a broadcast row). With ``fault_prob`` one stream faults."""
    while True:
        op = rng.choice([Opcode.REQUANT, Opcode.ADD, Opcode.MAX, Opcode.MUL, Opcode.LUT])
        c0 = rng.choice([1, 2, 3, 4, rng.randint(1, 8), 0 if rng.random() < 0.1 else 1])
        c1 = rng.choice([1, 1, 2, 3])
        if op is Opcode.REQUANT:
            params = {"table": rng.randrange(cfg.table_depth), "lane": rng.randrange(cfg.requant_lanes),
                      "relu": rng.randrange(2), "out_signed": rng.randrange(2),
                      "residual": rng.randrange(2), "res_signed": rng.randrange(2)}
            used = ["x", "y", "z"] if params["residual"] else ["x", "z"]
        elif op is Opcode.LUT:
            params, used = {"table": rng.randrange(cfg.lut_tables)}, ["x", "z"]
        elif op is Opcode.MUL:
            params = {"shift": rng.choice([0, 7, 8, rng.randint(0, 16), rng.randint(-32, 31)]),
                      "relu": rng.randrange(2), "out_signed": rng.randrange(2),
                      "a_signed": rng.randrange(2), "b_signed": rng.randrange(2)}
            used = ["x", "y", "z"]
        else:
            params = {"a_shift": rng.choice([0, 0, 1, 2, rng.randint(0, 15)]),
                      "b_shift": rng.choice([0, 0, 1, rng.randint(0, 15)]),
                      "shift": rng.choice([0, 1, 2, rng.randint(-32, 31)]),
                      "relu": rng.randrange(2), "out_signed": rng.randrange(2),
                      "a_signed": rng.randrange(2), "b_signed": rng.randrange(2)}
            used = ["x", "y", "z"]
        fault, faulty = random_fault(rng, fault_prob), rng.choice(used)
        streams = {}
        for s in ("x", "y", "z"):
            depth = cfg.acc_depth if (op is Opcode.REQUANT and s == "x") else cfg.spad_depth
            if s in used:
                streams[s] = random_stream(rng, depth, max(c0, 1), c1, fault if s == faulty else None)
            else:
                streams[s] = Addr(rng.randrange(1 << 16), rng.randrange(1 << 16), rng.randrange(1 << 16),
                                  rng.randrange(1 << REGIONS))
        if op is Opcode.MUL and rng.random() < 0.4 and "y" != faulty:
            streams["y"] = replace(streams["y"], stride0=0)
        insn = Instruction(op, params, c0, c1, **streams)
        try:
            Machine(cfg).run([insn.encode(cfg)], [])
        except ProgramError:    # an iteration reads a row an earlier one wrote
            continue
        return insn


def first_fault(insn: Instruction, cfg: CoreConfig) -> int:
    """Index of the first iteration whose address faults (``iterations`` if none)."""
    for t in range(insn.iterations):
        for s in ("x", "y", "z"):
            mem = insn.stream_mem(s)
            if mem is None:
                continue
            addr, depth = addresses(getattr(insn, s), insn.count0, insn.count1)[t], cfg.depth(mem)
            if addr >= depth or (mem not in UNREGIONED
                                 and not getattr(insn, s).regions >> (addr * REGIONS // depth) & 1):
                return t
    return insn.iterations


def hazard_mask(insn: Instruction) -> tuple[int, int, int]:
    """The ``(reads, writes, ports)`` hazard masks of ``insn``'s declared footprint
    (:func:`fxpgen.isa.footprint`); a unit reports the read ports among its writes."""
    fp = footprint(insn)
    return tuple(sum(1 << resource_index(r) for r in rs) for rs in (fp.reads, fp.writes, fp.ports))
