"""The frame receiver's replies under back-pressure: a reply the sender has not
taken yet is never replaced (the ``reply`` proof shows the rule for every input;
this test shows the waiting reply is delivered after it, not dropped)."""

from __future__ import annotations

from amaranth.sim import Simulator

from fxpgen.boards.bridge import FrameReceiver
from fxpgen.boards.protocol import SYNC, FrameType, NakReason
from fxpgen.formal.streams import ReplyOverwritingReceiver

TIMEOUT = 3


def replies_taken(cls) -> list[tuple[int, int, int]]:
    """Two frames that stop after their sequence byte (seq 7, then seq 9) while the
    sender is busy; then the sender takes replies. Returns them as taken."""
    dut = cls(TIMEOUT, (2, 2), (16, 16), has_rom=False)
    taken = []

    async def bench(ctx):
        for seq in (7, 9):
            for byte in (SYNC, FrameType.INSN, seq):
                ctx.set(dut.rx.payload, byte)
                ctx.set(dut.rx.valid, 1)
                await ctx.tick()
            ctx.set(dut.rx.valid, 0)
            for _ in range(TIMEOUT + 2):
                await ctx.tick()
        ctx.set(dut.reply.ready, 1)
        for _ in range(4):
            if ctx.get(dut.reply.valid):
                r = ctx.get(dut.reply.payload)
                taken.append((r.type, r.seq, r.reason))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return taken


def test_a_pending_reply_waits_and_the_next_follows():
    nak = FrameType.NAK
    assert replies_taken(FrameReceiver) == [(nak, 7, NakReason.TIMEOUT), (nak, 9, NakReason.TIMEOUT)]


def test_the_mutant_of_the_reply_proof_loses_the_first_reply():
    assert replies_taken(ReplyOverwritingReceiver) == [(FrameType.NAK, 9, NakReason.TIMEOUT)]
