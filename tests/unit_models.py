"""Shared pieces of the block-level tests of the vector unit, the controller, the
unit port and the core (``tests/test_vector.py``, ``test_controller.py``,
``test_unit_port.py``, ``test_core.py``): small configurations, the Amaranth
simulator runner, memories played by the testbench, random instructions and
machine states, and hazard masks taken from :func:`fxpgen.isa.footprint` (the
Python twin of ``hw/hazards.py``, so the tests do not reuse the logic they check).
"""

from __future__ import annotations

import random

import numpy as np
from amaranth.sim import Simulator

from fxpgen.config import REGIONS, CoreConfig
from fxpgen.hw.hazards import resource_index
from fxpgen.isa import Addr, Instruction, Mem, Opcode, footprint, pack_row, regions_spanned
from fxpgen.sim.isa_sim import Machine, ProgramError

__all__ = ["SHAPES", "shape_id", "small_config", "run", "footprint_bits", "PlayedMemory",
           "random_state", "random_stream", "random_vector_insn", "machine_memories", "addresses"]

#: Array shapes of the block tests: square, and both ways of a lane group.
SHAPES = [(2, 2), (4, 4), (2, 4), (4, 2)]


def shape_id(shape) -> str:
    return f"{shape[0]}x{shape[1]}"


def small_config(rows: int, cols: int) -> CoreConfig:
    """Tiny memories (16 rows: four regions of four) so that random addresses reach
    every region and the end of memory, and a narrow accumulator (20 bits) so that
    aligned adds saturate often."""
    return CoreConfig(rows=rows, cols=cols, acc_width=20, spad_depth=16, wbuf_depth=8,
                      acc_depth=16, table_depth=4, counter_width=16)


def run(dut, bench) -> None:
    """Simulate ``dut`` with one clock and the async testbench ``bench(ctx)``."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def footprint_bits(insn: Instruction) -> tuple[int, int]:
    """(reads, writes) hazard masks of ``insn`` from the ISA's declared footprint."""
    fp = footprint(insn)
    return (sum(1 << resource_index(r) for r in fp.reads),
            sum(1 << resource_index(r) for r in fp.writes))


class PlayedMemory:
    """A memory of ``depth`` rows of ``lanes`` fields of ``width`` bits played by the
    testbench behind one write port and any number of read ports, with the
    behaviour of ``amaranth.lib.memory``: a read port with ``en`` returns the row
    (before this edge's write) one cycle after its address; a write port writes the
    fields its ``en`` bits select. Every access is checked to lie inside the memory:
    the units must never touch a faulting address."""

    def __init__(self, name: str, rows: list[int], lanes: int, width: int):
        self.name, self.rows, self.lanes, self.width = name, list(rows), lanes, width
        self.reads: list[int] = []
        self.writes: list[tuple[int, int]] = []

    @property
    def depth(self) -> int:
        return len(self.rows)

    def sample_read(self, ctx, port):
        """The (en, addr) of ``port`` before a clock edge."""
        en, addr = ctx.get(port.en), ctx.get(port.addr)
        if en:
            assert addr < self.depth, f"{self.name}: read at row {addr} beyond depth {self.depth}"
        return en, addr

    def sample_write(self, ctx, port):
        en, addr = ctx.get(port.en), ctx.get(port.addr)
        if en:
            assert addr < self.depth, f"{self.name}: write at row {addr} beyond depth {self.depth}"
        return en, addr, ctx.get(port.data.as_value())

    def after_edge(self, ctx, reads, ports, write=None):
        """After a clock edge: drive each read port's data from the request sampled
        before it, then apply the sampled write (``en`` bit i enables field i)."""
        for (en, addr), port in zip(reads, ports):
            if en:
                self.reads.append(addr)
                ctx.set(port.data.as_value(), self.rows[addr])
        if write is not None and write[0]:
            en, addr, value = write
            field = (1 << self.width) - 1
            mask = sum(field << (i * self.width) for i in range(self.lanes) if en >> i & 1)
            self.writes.append((addr, en))
            self.rows[addr] = (self.rows[addr] & ~mask) | (value & mask)


def random_state(cfg: CoreConfig, rng: random.Random) -> Machine:
    """A machine whose scratchpad, accumulators and shift table hold random values:
    accumulators small, large or at the ends of their range; shifts and alignments
    over their whole signed 6-bit range, most often where models use them."""
    m = Machine(cfg)
    nrng = np.random.default_rng(rng.getrandbits(64))
    m.spad[:] = nrng.integers(0, 256, m.spad.shape)
    lo, hi = -(1 << (cfg.acc_width - 1)), (1 << (cfg.acc_width - 1)) - 1
    for idx in np.ndindex(m.acc.shape):
        m.acc[idx] = rng.choice([rng.randint(-300, 300), rng.randint(lo, hi), lo, hi, 0])
    for idx in np.ndindex(m.table_shift.shape):
        m.table_shift[idx] = rng.choice([rng.randint(-32, 31), rng.randint(0, 12)])
        m.table_align[idx] = rng.choice([0, rng.randint(-4, 4), rng.randint(-32, 31)])
    return m


def machine_memories(m: Machine) -> dict[str, list[int]]:
    """The machine's scratchpad, accumulator and shift-table rows as row words (the
    bit layout of the hardware memories, which is the stream layout of
    :func:`fxpgen.isa.pack_row`)."""
    cfg = m.cfg
    return {
        "spad": [pack_row(Mem.SPAD, r, cfg) for r in m.spad.tolist()],
        "acc": [pack_row(Mem.ACC, r, cfg) for r in m.acc.tolist()],
        "table": [pack_row(Mem.TABLE, list(zip(s, a)), cfg)
                  for s, a in zip(m.table_shift.tolist(), m.table_align.tolist())],
    }


def addresses(a: Addr, c0: int, c1: int) -> list[int]:
    """Rows a stream visits, iteration by iteration (exact integers)."""
    return [a.base + i1 * a.stride1 + i0 * a.stride0 for i1 in range(c1) for i0 in range(c0)]


def random_stream(rng: random.Random, depth: int, c0: int, c1: int, fault: str | None = None) -> Addr:
    """A random address stream over ``depth`` rows: in range with its exact or a wider
    region mask, or (``fault``) one that walks off the memory (``"address"``, also
    with strides near 2**16) or leaves a region it touches out of its mask
    (``"region"``)."""
    s0 = rng.choice([0, 1, 1, 2, 3, rng.randint(0, depth // 2)])
    s1 = rng.choice([0, c0 * s0, c0 * s0 + 1, rng.randint(0, depth // 2)])
    while (c0 - 1) * s0 + (c1 - 1) * s1 >= depth:
        s0, s1 = s0 // 2, s1 // 2
    span = (c0 - 1) * s0 + (c1 - 1) * s1
    base = rng.randint(0, depth - 1 - span)
    a = Addr(base, s0, s1)
    mask = regions_spanned(a, c0, c1, depth)
    if rng.random() < 0.3:
        mask |= rng.randrange(1 << REGIONS)
    if fault == "address":
        if rng.random() < 0.5:
            return Addr(rng.randint(depth - 2, depth - 1), rng.randint(1, 3), s1, (1 << REGIONS) - 1)
        return Addr(base, rng.randrange(depth, 1 << 16), rng.randrange(1 << 16), (1 << REGIONS) - 1)
    if fault == "region":
        used = sorted({a_ * REGIONS // depth for a_ in addresses(a, c0, c1)})
        mask &= ~(1 << rng.choice(used))
    return Addr(base, s0, s1, mask)


def random_vector_insn(cfg: CoreConfig, rng: random.Random, fault_prob: float = 0.25) -> Instruction:
    """A random REQUANT, ADD or MAX that the ISA simulator accepts (no iteration reads
    a row an earlier one wrote), every parameter drawn over its legal range (MAX gets
    random ADD fields, which it must ignore; REQUANT without residual a random ``y``,
    which it must not read). With ``fault_prob`` one stream faults."""
    while True:
        op = rng.choice([Opcode.REQUANT, Opcode.ADD, Opcode.MAX])
        c0 = rng.choice([1, 2, 3, 4, rng.randint(1, 8), 0 if rng.random() < 0.1 else 1])
        c1 = rng.choice([1, 1, 2, 3])
        if op is Opcode.REQUANT:
            params = {"table": rng.randrange(cfg.table_depth), "lane": rng.randrange(cfg.requant_lanes),
                      "relu": rng.randrange(2), "out_signed": rng.randrange(2),
                      "residual": rng.randrange(2), "res_signed": rng.randrange(2)}
            used = ["x", "y", "z"] if params["residual"] else ["x", "z"]
        else:
            params = {"a_shift": rng.choice([0, 0, 1, 2, rng.randint(0, 15)]),
                      "b_shift": rng.choice([0, 0, 1, rng.randint(0, 15)]),
                      "shift": rng.choice([0, 1, 2, rng.randint(-32, 31)]),
                      "relu": rng.randrange(2), "out_signed": rng.randrange(2),
                      "a_signed": rng.randrange(2), "b_signed": rng.randrange(2)}
            used = ["x", "y", "z"]
        faulty = rng.choice(used) if rng.random() < fault_prob else None
        kind = rng.choice(["address", "region"])
        streams = {}
        for s in ("x", "y", "z"):
            depth = cfg.acc_depth if (op is Opcode.REQUANT and s == "x") else cfg.spad_depth
            if s in used:
                streams[s] = random_stream(rng, depth, max(c0, 1), c1, kind if s == faulty else None)
            else:
                streams[s] = Addr(rng.randrange(1 << 16), rng.randrange(1 << 16), rng.randrange(1 << 16),
                                  rng.randrange(1 << REGIONS))
        insn = Instruction(op, params, c0, c1, **streams)
        try:
            Machine(cfg).run([insn.encode(cfg)], [])
        except ProgramError:    # an iteration reads a row an earlier one wrote
            continue
        return insn
