"""The unit port (``hw/unit_port.py``): ``unit_loops`` and ``report``, the two
helpers every execution unit builds its side of the controller interface with,
in a harness that exposes them, in Amaranth's simulator."""

import itertools
import random

from amaranth import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from fxpgen.hw.addrgen import loop_addr_bits
from fxpgen.hw.hazards import HAZARD_BITS
from fxpgen.hw.unit_port import PC_WIDTH, UnitControl, report, unit_loops
from fxpgen.isa import Addr, ErrorCode, Instruction, Opcode

from unit_harness import CONFIGS, addresses, simulate


class PortHarness(wiring.Component):
    """A unit made of nothing but its port: loops over ``x``, ``y``, ``z`` advanced by
    ``advance``, and a status driven from the harness's inputs."""

    def __init__(self, cfg):
        self._cfg = cfg
        bits = loop_addr_bits(cfg) + 1
        super().__init__({
            "ctrl": In(UnitControl()),
            "advance": In(1),
            "valid": Out(1),
            "last": Out(1),
            "addr": Out(data.ArrayLayout(bits, 3)),
            "pc": Out(PC_WIDTH),
            "ready": In(1), "busy": In(1), "reads": In(HAZARD_BITS), "writes": In(HAZARD_BITS),
            "error": In(ErrorCode), "active": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        loops, pc = unit_loops(m, self.ctrl, ("x", "y", "z"), self._cfg)
        m.d.comb += [loops.advance.eq(self.advance), self.valid.eq(loops.valid),
                     self.last.eq(loops.last), self.addr.eq(loops.addr), self.pc.eq(pc)]
        report(m, self.ctrl, ready=self.ready, busy=self.busy, reads=self.reads, writes=self.writes,
               error=self.error, pc=pc, active=self.active)
        return m


def loop_view(a: int, bits: int) -> int:
    """An exact address as the loops hold it: its low ``bits`` bits, and above them
    the sticky bit of having reached ``2**bits``."""
    return a % (1 << bits) | ((1 << bits) if a >> bits else 0)


def test_unit_loops_latch_the_pc_and_walk_every_stream(seed):
    """``start`` latches the instruction's ``pc`` (kept while the controller presents
    other instructions) and loads the loops with its counts and streams: under
    random ``advance``, the addresses of x, y and z follow the ISA's iteration order
    exactly (beyond the largest memory as the sticky bit), ``last`` marks the final
    iteration, and a zero count runs nothing."""
    cfg = CONFIGS[0]
    bits = loop_addr_bits(cfg)
    rng = random.Random(seed)
    dut = PortHarness(cfg)
    insns = []
    for _ in range(30):
        c0, c1 = rng.choice([0, 1, 2, 3, 5]), rng.choice([0, 1, 1, 2, 3])
        streams = {s: Addr(rng.choice([0, rng.randrange(20), rng.randrange(1 << 16)]),
                           rng.choice([0, 1, 3, rng.randrange(1 << 16)]),
                           rng.choice([0, 4, rng.randrange(1 << 16)]), rng.randrange(16))
                   for s in "xyz"}
        insns.append((Instruction(rng.choice(list(Opcode)), {}, c0, c1, **streams), rng.randrange(1 << 32)))

    async def bench(ctx):
        for insn, pc in insns:
            ctx.set(dut.ctrl.insn.as_value(), insn.encode())
            ctx.set(dut.ctrl.pc, pc)
            ctx.set(dut.ctrl.start, 1)
            await ctx.tick()
            ctx.set(dut.ctrl.start, 0)
            # Whatever the controller presents next must not disturb the running loops.
            ctx.set(dut.ctrl.insn.as_value(), rng.getrandbits(len(dut.ctrl.insn.as_value())))
            ctx.set(dut.ctrl.pc, rng.randrange(1 << 32))
            expected = list(zip(*(addresses(getattr(insn, s), insn.count0, insn.count1) for s in "xyz")))
            seen = []
            # Random advances until every iteration has been taken (the bound only
            # stops a loop that never ends), then two idle cycles.
            cycles = 0
            while len(seen) < len(expected) and cycles < 50 * len(expected) + 2:
                assert ctx.get(dut.pc) == pc
                adv = rng.random() < 0.6
                ctx.set(dut.advance, adv)
                assert ctx.get(dut.valid)
                assert ctx.get(dut.last) == (len(seen) == len(expected) - 1)
                if adv:
                    seen.append(tuple(ctx.get(dut.addr[k]) for k in range(3)))
                await ctx.tick()
                cycles += 1
            for _ in range(2):
                ctx.set(dut.advance, rng.random() < 0.6)
                assert not ctx.get(dut.valid)
                await ctx.tick()
            assert seen == [tuple(loop_view(a, bits) for a in it) for it in expected], insn

    simulate(dut, bench)


def test_report_masks_errors_when_inactive_or_aborted(seed):
    """``report`` passes ready, busy and the hazard masks through and gives the
    latched ``pc`` as ``error_pc``; the error reaches the controller only while the
    loops are active and the unit is not aborted, for every error code."""
    cfg = CONFIGS[0]
    rng = random.Random(seed)
    dut = PortHarness(cfg)

    async def bench(ctx):
        pc = rng.randrange(1 << 32)
        ctx.set(dut.ctrl.pc, pc)
        ctx.set(dut.ctrl.start, 1)
        await ctx.tick()
        ctx.set(dut.ctrl.start, 0)
        for active, abort, error in itertools.product((0, 1), (0, 1), ErrorCode):
            status = {"ready": rng.randrange(2), "busy": rng.randrange(2),
                      "reads": rng.getrandbits(HAZARD_BITS), "writes": rng.getrandbits(HAZARD_BITS)}
            for name, v in status.items():
                ctx.set(getattr(dut, name), v)
            ctx.set(dut.active, active)
            ctx.set(dut.ctrl.abort, abort)
            ctx.set(dut.error, error)
            for name, v in status.items():
                assert ctx.get(getattr(dut.ctrl, name)) == v, name
            shown = ErrorCode(ctx.get(dut.ctrl.error))
            assert shown is (error if active and not abort else ErrorCode.NONE), (active, abort, error)
            assert ctx.get(dut.ctrl.error_pc) == pc

    simulate(dut, bench)
