"""Proof 5: the UART bridge never commits a damaged frame.

:class:`BridgeHarness` feeds free bytes (any timing, any content) to the
:class:`~fxpgen.boards.bridge.FrameReceiver` with free buffer levels and reply
back-pressure. Beside it, a shadow computes CRC-16/CCITT-FALSE bit by bit, as the
standard defines it (polynomial 0x1021, initial 0xFFFF, no reflection), over the
bytes the receiver takes as the frame's header and payload, and keeps the two CRC
bytes the frame carries. It asserts, on every cycle:

- a buffer is committed only when the frame is decided and the carried CRC equals
  the CRC of the frame's bytes;
- when a frame whose CRC does not match is decided, nothing is committed and every
  buffer holding bytes written since its last commit or rollback is rolled back;
- invariants: the receiver's table-free CRC equals the bit-serial one, and
  uncommitted bytes only exist in the target buffer of a stream frame being received.

A :class:`~fxpgen.boards.bridge.WordBuffer` hands out only committed bytes (it reads
up to its ``committed`` pointer); that part is not proven here.
"""

from __future__ import annotations

from amaranth import *
from amaranth.hdl import Assert
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In

from fxpgen.boards.bridge import FrameReceiver
from fxpgen.boards.protocol import SYNC

from .observe import elaborate_observed, fsm_states

__all__ = ["BridgeHarness", "CrcBlindReceiver", "crc16_bitwise"]

#: Inside a frame, after its header check: bytes may be written in these states.
_AFTER_CHECK = ("PAYLOAD", "CRC0", "CRC1", "DECIDE")


def crc16_bitwise(crc, byte):
    """CRC-16/CCITT-FALSE after one more byte, one bit at a time."""
    c = (crc ^ (byte << 8))[:16]
    for _ in range(8):
        c = Mux(c[15], (c << 1) ^ 0x1021, c << 1)[:16]
    return c


class CrcBlindReceiver(FrameReceiver):
    """Mutant: the receiver decides frames without comparing the CRC."""

    def _decide(self, m, f):
        super()._decide(m, f._replace(crc_rx=f.crc))


class BridgeHarness(wiring.Component):
    """Free bytes into a frame receiver (``dut_class``) with two 2-byte-word buffers
    of 16 bytes; see the module doc."""

    TIMEOUT = 3

    def __init__(self, dut_class: type[FrameReceiver] = FrameReceiver):
        self._dut_class = dut_class
        super().__init__({
            "rx_valid": In(1), "rx_byte": In(8), "reply_ready": In(1),
            "buf_free": In(data.ArrayLayout(range(17), 2)),
        })

    def elaborate(self, platform):
        m = Module()
        dut = self._dut_class(self.TIMEOUT, (2, 2), (16, 16), has_rom=False)
        m.submodules.dut, sig = elaborate_observed(dut, platform)
        m.d.comb += [dut.rx.valid.eq(self.rx_valid), dut.rx.payload.eq(self.rx_byte),
                     dut.reply.ready.eq(self.reply_ready),
                     dut.buf_free[0].eq(self.buf_free[0]), dut.buf_free[1].eq(self.buf_free[1])]
        state = sig["fsm_state"]
        codes = fsm_states(state)

        def in_state(*names):
            return Cat(*(state == codes[n] for n in names)).any()

        took = self.rx_valid & (sig["idle"] != self.TIMEOUT)
        crc = Signal(16, name="shadow_crc")
        crc_rx = Signal(16, name="shadow_crc_rx")
        with m.If(in_state("SYNC") & self.rx_valid & (self.rx_byte == SYNC)):
            m.d.sync += crc.eq(0xFFFF)
        with m.If(took & (in_state("TYPE", "SEQ", "LEN0", "LEN1")
                          | (in_state("PAYLOAD") & (sig["remaining"] != 0)))):
            m.d.sync += crc.eq(crc16_bitwise(crc, self.rx_byte))
        with m.If(took & in_state("CRC0")):
            m.d.sync += crc_rx[:8].eq(self.rx_byte)
        with m.If(took & in_state("CRC1")):
            m.d.sync += crc_rx[8:].eq(self.rx_byte)

        bad = in_state("DECIDE") & (crc != crc_rx)
        m.d.comb += [
            Assert(~in_state("TYPE", "SEQ", "LEN0", "LEN1", "CHECK", *_AFTER_CHECK)
                   | (sig["crc"] == crc), "the receiver's CRC is CRC-16/CCITT-FALSE"),
            Assert(~in_state("DECIDE") | (sig["crc_rx"] == crc_rx), "carried CRC kept"),
            Assert(~in_state("CRC1") | (sig["crc_rx"][:8] == crc_rx[:8]), "carried CRC low byte kept"),
            Assert((dut.buf_commit == 0) | (in_state("DECIDE") & (crc == crc_rx)),
                   "commit only a frame whose CRC matches"),
        ]
        for b in range(2):
            pending = Signal(name=f"pending{b}")
            with m.If(dut.buf_commit[b] | dut.buf_rollback[b]):
                m.d.sync += pending.eq(0)
            with m.Elif(dut.buf_wr_en[b]):
                m.d.sync += pending.eq(1)
            m.d.comb += [
                Assert(~pending | (in_state(*_AFTER_CHECK) & sig["is_stream"] & (sig["target"] == b)),
                       f"buffer {b}: uncommitted bytes belong to the frame being received"),
                Assert(~(bad & pending) | dut.buf_rollback[b],
                       f"buffer {b}: a damaged frame's bytes are rolled back"),
            ]
        return m
