"""The UART bridge: frames from the host into the core's ``insn`` and ``data``
streams, the core's ``result`` stream and status back to the host.

The protocol is :mod:`fxpgen.boards.protocol`. Blocks, in dataflow order:

- :class:`FrameReceiver`: parses frames byte by byte, writes an INSN/DATA payload
  tentatively into its :class:`WordBuffer`, commits it when the checksum is good and
  rolls it back otherwise, and asks for the reply (ACK, NAK, STATUS, INFO);
- :class:`WordBuffer`: a byte FIFO with commit/rollback that assembles words for a
  core stream;
- :class:`FrameSender`: sends replies (first) and one RESULT frame per result word,
  each payload loaded into a shift register at the frame's start.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from fxpgen.config import CoreConfig
from fxpgen.isa import INSN_BITS, INSN_BYTES

from . import protocol
from .protocol import SYNC, FrameType, NakReason

__all__ = ["crc16_next", "WordBuffer", "FrameReceiver", "FrameSender", "UartBridge"]


def crc16_next(crc, byte):
    """CRC-16/CCITT-FALSE after one more byte (:func:`fxpgen.boards.protocol.crc16`),
    in the table-free form ``x = hi ^ byte; x ^= x >> 4;
    crc = (crc << 8) ^ (x << 12) ^ (x << 5) ^ x``."""
    x = crc[8:16] ^ byte
    x = (x ^ (x >> 4))[:8]
    return (Cat(C(0, 8), crc[:8]) ^ (x << 12)[:16] ^ (x << 5)[:16] ^ x)[:16]


class WordBuffer(wiring.Component):
    """Bytes in (tentatively: ``commit`` makes them visible, ``rollback`` forgets
    them), words of ``word_bytes`` out on ``out`` (first byte least significant).

    ``free`` counts the bytes that can still be written, tentative ones included.
    """

    def __init__(self, depth: int, word_bytes: int, width: int):
        if depth & (depth - 1) or depth < word_bytes:
            raise ValueError(f"buffer depth must be a power of two of at least {word_bytes}, not {depth}")
        self._depth, self._word_bytes, self._width = depth, word_bytes, width
        super().__init__({
            "wr_en": In(1), "wr_data": In(8), "commit": In(1), "rollback": In(1), "clear": In(1),
            "free": Out(range(depth + 1)),
            "out": Out(stream.Signature(width)),
        })

    def elaborate(self, platform):
        m = Module()
        depth, nbytes = self._depth, self._word_bytes
        m.submodules.mem = mem = Memory(shape=8, depth=depth, init=[])
        wr = mem.write_port()
        rd = mem.read_port()
        ptr = range(2 * depth)
        wp, committed, rp = Signal(ptr), Signal(ptr), Signal(ptr)
        m.d.comb += [wr.en.eq(self.wr_en), wr.addr.eq(wp), wr.data.eq(self.wr_data),
                     self.free.eq(depth - (wp - rp)[:len(wp)])]
        with m.If(self.wr_en):
            m.d.sync += wp.eq(wp + 1)
        with m.If(self.commit):
            m.d.sync += committed.eq(wp)
        with m.If(self.rollback):
            m.d.sync += wp.eq(committed)

        # Assembler: one byte read per cycle while the word is not full.
        word = Signal(8 * nbytes)
        count = Signal(range(nbytes + 1))
        in_flight = Signal()
        full = count == nbytes
        reading = ~full & ~(in_flight & (count == nbytes - 1)) & (rp != committed)
        m.d.comb += [rd.addr.eq(rp), rd.en.eq(reading),
                     self.out.payload.eq(word[:self._width]), self.out.valid.eq(full)]
        m.d.sync += in_flight.eq(reading)
        with m.If(reading):
            m.d.sync += rp.eq(rp + 1)
        with m.If(in_flight):
            m.d.sync += word.eq(Cat(word[8:], rd.data))
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += count.eq(in_flight)
        with m.Elif(in_flight):
            m.d.sync += count.eq(count + 1)

        with m.If(self.clear):
            m.d.sync += [wp.eq(0), committed.eq(0), rp.eq(0), count.eq(0), in_flight.eq(0)]
        return m


class FrameReceiver(wiring.Component):
    """Parses host frames from ``rx`` bytes; drives the two word buffers' write side
    and requests replies on ``reply`` (type, seq, NAK reason) for the sender."""

    def __init__(self, timeout_cycles: int, word_bytes: tuple[int, int], buffer_depths: tuple[int, int],
                 has_rom: bool):
        self._timeout = timeout_cycles
        self._word_bytes = word_bytes
        self._has_rom = has_rom
        depth = max(buffer_depths)
        super().__init__({
            "rx": In(stream.Signature(8)),
            "buf_wr_en": Out(2), "buf_wr_data": Out(8), "buf_commit": Out(2), "buf_rollback": Out(2),
            "buf_free": In(range(depth + 1)).array(2),
            "reply": Out(stream.Signature(data.StructLayout({"type": 8, "seq": 8, "reason": 8}))),
            "core_reset": Out(1),
            "run": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        byte = self.rx.payload
        got = self.rx.valid
        m.d.comb += [self.rx.ready.eq(1), self.buf_wr_data.eq(byte)]

        ftype, seq, reason = Signal(8), Signal(8), Signal(8)
        remaining = Signal(16)
        crc, crc_rx = Signal(16), Signal(16)
        target = Signal()                  # 0: insn buffer, 1: data buffer
        is_stream, duplicate = Signal(), Signal()
        last_seq, have_last = Signal(8), Signal()
        wb0, wb1 = self._word_bytes
        word_pos = Signal(range(max(wb0, wb1)))
        word_end = Mux(target, wb1 - 1, wb0 - 1)
        mask = Mux(target, 0b10, 0b01)
        idle = Signal(range(self._timeout + 1))
        crc_next = crc16_next(crc, byte)

        def reply(rtype, rreason=0):
            return [self.reply.payload.type.eq(rtype), self.reply.payload.seq.eq(seq),
                    self.reply.payload.reason.eq(rreason), self.reply.valid.eq(1)]

        with m.If(self.reply.ready):
            m.d.sync += self.reply.valid.eq(0)
        m.d.sync += [self.core_reset.eq(0), self.run.eq(0)]

        timed_out = idle == self._timeout

        def drop_on_timeout():
            """A frame that stops arriving is dropped, its tentative bytes forgotten."""
            with m.If(timed_out):
                m.d.comb += self.buf_rollback.eq(0b11)
                m.d.sync += reply(FrameType.NAK, NakReason.TIMEOUT)
                m.next = "SYNC"

        with m.FSM() as fsm:
            def header(state, nxt, *actions):
                with m.State(state):
                    drop_on_timeout()
                    with m.Elif(got):
                        m.d.sync += [crc.eq(crc_next), *actions]
                        m.next = nxt

            with m.State("SYNC"):
                with m.If(got & (byte == SYNC)):
                    m.d.sync += [crc.eq(0xFFFF), reason.eq(0), word_pos.eq(0)]
                    m.next = "TYPE"
            header("TYPE", "SEQ", ftype.eq(byte))
            header("SEQ", "LEN0", seq.eq(byte))
            header("LEN0", "LEN1", remaining[:8].eq(byte))
            header("LEN1", "CHECK", remaining[8:].eq(byte))
            with m.State("CHECK"):
                # Decide, before the payload, whether it may be written.
                stream_frame = (ftype == FrameType.INSN) | (ftype == FrameType.DATA)
                tgt = ftype == FrameType.DATA
                m.d.sync += [is_stream.eq(stream_frame), target.eq(tgt),
                             duplicate.eq(stream_frame & have_last & (seq == last_seq))]
                known = Cat(*(ftype == t for t in (FrameType.STATUS, FrameType.INFO,
                                                   FrameType.RESET, FrameType.RUN))).any()
                with m.If(stream_frame):
                    with m.If((remaining == 0) | (remaining > protocol.MAX_PAYLOAD)):
                        m.d.sync += reason.eq(NakReason.LENGTH)
                    with m.Elif(remaining > Mux(tgt, self.buf_free[1], self.buf_free[0])):
                        m.d.sync += reason.eq(NakReason.FULL)
                with m.Elif(~known):
                    m.d.sync += reason.eq(NakReason.TYPE)
                with m.Elif(remaining != 0):
                    m.d.sync += reason.eq(NakReason.LENGTH)
                m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                drop_on_timeout()
                with m.Elif(remaining == 0):
                    m.next = "CRC0"
                with m.Elif(got):
                    m.d.sync += [remaining.eq(remaining - 1), crc.eq(crc_next),
                                 word_pos.eq(Mux(word_pos == word_end, 0, word_pos + 1))]
                    writing = is_stream & (reason == 0) & ~duplicate
                    m.d.comb += self.buf_wr_en.eq(Mux(writing, mask, 0))
            with m.State("CRC0"):
                drop_on_timeout()
                with m.Elif(got):
                    m.d.sync += crc_rx[:8].eq(byte)
                    m.next = "CRC1"
            with m.State("CRC1"):
                drop_on_timeout()
                with m.Elif(got):
                    m.d.sync += crc_rx[8:].eq(byte)
                    m.next = "DECIDE"
            with m.State("DECIDE"):
                rollback = Mux(is_stream, mask, 0)
                with m.If(crc_rx != crc):
                    m.d.comb += self.buf_rollback.eq(rollback)
                    m.d.sync += reply(FrameType.NAK, NakReason.CRC)
                with m.Elif(is_stream & (word_pos != 0)):
                    m.d.comb += self.buf_rollback.eq(rollback)
                    m.d.sync += reply(FrameType.NAK, NakReason.LENGTH)
                with m.Elif(reason != 0):
                    m.d.comb += self.buf_rollback.eq(rollback)
                    m.d.sync += reply(FrameType.NAK, reason)
                with m.Elif(is_stream):
                    m.d.comb += self.buf_commit.eq(mask)
                    m.d.sync += [last_seq.eq(seq), have_last.eq(1), *reply(FrameType.ACK)]
                with m.Elif(ftype == FrameType.STATUS):
                    m.d.sync += reply(FrameType.STATUS_REPLY)
                with m.Elif(ftype == FrameType.INFO):
                    m.d.sync += reply(FrameType.INFO_REPLY)
                with m.Elif(ftype == FrameType.RESET):
                    m.d.sync += [self.core_reset.eq(1), have_last.eq(0), *reply(FrameType.ACK)]
                with m.Else():                  # RUN
                    if self._has_rom:
                        m.d.sync += [self.run.eq(1), *reply(FrameType.ACK)]
                    else:
                        m.d.sync += reply(FrameType.NAK, NakReason.NO_ROM)
                m.next = "SYNC"

        waiting = ~fsm.ongoing("SYNC") & ~fsm.ongoing("CHECK") & ~fsm.ongoing("DECIDE")
        with m.If(got | ~waiting | timed_out):
            m.d.sync += idle.eq(0)
        with m.Else():
            m.d.sync += idle.eq(idle + 1)
        return m


class FrameSender(wiring.Component):
    """Sends reply frames (requested on ``reply``) and one RESULT frame per word of
    ``result``; replies go first.

    Bytes are picked by position, not shifted out of a frame-wide register, to keep
    the sender small: a RESULT frame reads the result word the core holds on its
    stream (taken only after the frame's last payload byte); a STATUS or ACK frame
    reads the bridge's own fields from a snapshot taken at the frame's start (so a
    HALT count is never torn) and the core's counters live (they are frozen from a
    HALT until the next program starts, which is when the host reads them).
    """

    def __init__(self, cfg: CoreConfig, info: bytes, buffer_depth: int):
        self._cfg, self._info = cfg, info
        reply_layout = data.StructLayout({"type": 8, "seq": 8, "reason": 8})
        super().__init__({
            "reply": In(stream.Signature(reply_layout)),
            "result": In(stream.Signature(cfg.bus_width + 1)),
            "tx": Out(stream.Signature(8)),
            "state": In(2), "error": In(3), "error_pc": In(32),
            "counters": In(cfg.counter_width).array(len(protocol.STATUS_FIELDS)),
            "halts": In(16),
            "free": In(range(buffer_depth + 1)).array(2),
            "clear_results": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        nb, cb = protocol.bus_bytes(cfg), protocol.counter_bytes(cfg)
        kinds = [FrameType.ACK, FrameType.NAK, FrameType.STATUS_REPLY, FrameType.INFO_REPLY,
                 FrameType.RESULT]
        lengths = {FrameType.ACK: 5, FrameType.NAK: 1,
                   FrameType.STATUS_REPLY: protocol.status_length(cfg),
                   FrameType.INFO_REPLY: len(self._info), FrameType.RESULT: nb + 1}
        total = max(lengths.values()) + 7

        kind = Signal(range(len(kinds)))
        seq, reason = Signal(8), Signal(8)
        pos = Signal(range(total + 1))          # byte being sent
        length = Signal(16)
        busy = Signal()
        crc = Signal(16)
        results = Signal(32)
        # Snapshot of the bridge's own fields at the frame's start.
        snap = Signal(data.StructLayout({"state": 8, "error": 8, "error_pc": 32, "halts": 16,
                                         "results": 32, "free0": 16, "free1": 16}))

        def as_bytes(value: Value, n: int) -> list:
            value = Cat(value, C(0, max(0, 8 * n - len(value))))
            return [value[8 * i:8 * i + 8] for i in range(n)]

        free = as_bytes(snap.free0, 2) + as_bytes(snap.free1, 2)
        counters = [b for c in self.counters for b in as_bytes(c, cb)]
        payloads = {
            FrameType.ACK: [seq] + free,
            FrameType.NAK: [reason],
            FrameType.STATUS_REPLY: (as_bytes(snap.state, 1) + as_bytes(snap.error, 1)
                                     + as_bytes(snap.error_pc, 4) + counters + as_bytes(snap.halts, 2)
                                     + as_bytes(snap.results, 4) + free),
            FrameType.INFO_REPLY: [C(b, 8) for b in self._info],
            FrameType.RESULT: as_bytes(self.result.payload[:cfg.bus_width], nb)
                              + [Cat(self.result.payload[cfg.bus_width], C(0, 7))],
        }
        byte = Signal(8)
        with m.If(pos < 5):
            with m.Switch(pos):
                with m.Case(0):
                    m.d.comb += byte.eq(SYNC)
                with m.Case(1):
                    m.d.comb += byte.eq(Array(C(int(k), 8) for k in kinds)[kind])
                with m.Case(2):
                    m.d.comb += byte.eq(seq)
                with m.Case(3):
                    m.d.comb += byte.eq(length[:8])
                with m.Case(4):
                    m.d.comb += byte.eq(length[8:])
        with m.Elif(pos < 5 + length):
            with m.Switch(kind):
                for k, t in enumerate(kinds):
                    with m.Case(k):
                        m.d.comb += byte.eq(Array(payloads[t])[pos - 5])
        with m.Elif(pos == 5 + length):
            m.d.comb += byte.eq(crc[:8])
        with m.Else():
            m.d.comb += byte.eq(crc[8:])

        def start(k: int, t: FrameType):
            return [kind.eq(k), length.eq(lengths[t]), pos.eq(0), busy.eq(1), crc.eq(0xFFFF),
                    snap.state.eq(self.state), snap.error.eq(self.error), snap.error_pc.eq(self.error_pc),
                    snap.halts.eq(self.halts), snap.results.eq(results),
                    snap.free0.eq(self.free[0]), snap.free1.eq(self.free[1])]

        with m.If(~busy):
            r = self.reply.payload
            with m.If(self.reply.valid):
                m.d.comb += self.reply.ready.eq(1)
                m.d.sync += [seq.eq(r.seq), reason.eq(r.reason)]
                with m.Switch(r.type):
                    for k, t in enumerate(kinds[:4]):
                        with m.Case(t):
                            m.d.sync += start(k, t)
            with m.Elif(self.result.valid):
                m.d.sync += [*start(4, FrameType.RESULT), seq.eq(results[:8])]
        with m.Else():
            m.d.comb += [self.tx.payload.eq(byte), self.tx.valid.eq(1)]
            with m.If(self.tx.ready):
                m.d.sync += pos.eq(pos + 1)
                with m.If((pos != 0) & (pos < 5 + length)):
                    m.d.sync += crc.eq(crc16_next(crc, byte))
                with m.If((kind == 4) & (pos == 4 + length)):
                    # The result word's last payload byte: take the word.
                    m.d.comb += self.result.ready.eq(1)
                    m.d.sync += results.eq(results + 1)
                with m.If(pos == 6 + length):
                    m.d.sync += busy.eq(0)
        with m.If(self.clear_results):
            m.d.sync += results.eq(0)
        return m


class UartBridge(wiring.Component):
    """Frame receiver, the two word buffers and the frame sender, wired to the byte
    streams of a UART and to the core's ports (see :class:`fxpgen.boards.top.BoardTop`)."""

    def __init__(self, cfg: CoreConfig, *, timeout_cycles: int, insn_buffer: int = 1024,
                 data_buffer: int = 2048, rom_insns: int = 0):
        self._cfg = cfg
        self._depths = (insn_buffer, data_buffer)
        self._timeout = timeout_cycles
        self._rom_insns = rom_insns
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "insn": Out(stream.Signature(INSN_BITS)),
            "data": Out(stream.Signature(cfg.bus_width)),
            "result": In(stream.Signature(cfg.bus_width + 1)),
            "state": In(2), "error": In(3), "error_pc": In(32),
            "counters": In(cfg.counter_width).array(len(protocol.STATUS_FIELDS)),
            "core_reset": Out(1),
            "run": Out(1),
        })

    @property
    def buffer_depths(self) -> tuple[int, int]:
        return self._depths

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        word_bytes = (INSN_BYTES, protocol.bus_bytes(cfg))
        info = protocol.info_payload(cfg, *self._depths, self._rom_insns)
        m.submodules.receiver = rx = FrameReceiver(self._timeout, word_bytes, self._depths,
                                                   has_rom=self._rom_insns > 0)
        m.submodules.insn_buffer = ib = WordBuffer(self._depths[0], INSN_BYTES, INSN_BITS)
        m.submodules.data_buffer = db = WordBuffer(self._depths[1], word_bytes[1], cfg.bus_width)
        m.submodules.sender = tx = FrameSender(cfg, info, max(self._depths))
        wiring.connect(m, wiring.flipped(self.rx), rx.rx)
        wiring.connect(m, rx.reply, tx.reply)
        wiring.connect(m, tx.tx, wiring.flipped(self.tx))
        wiring.connect(m, ib.out, wiring.flipped(self.insn))
        wiring.connect(m, db.out, wiring.flipped(self.data))
        wiring.connect(m, wiring.flipped(self.result), tx.result)
        for k, buf in enumerate((ib, db)):
            m.d.comb += [buf.wr_en.eq(rx.buf_wr_en[k]), buf.wr_data.eq(rx.buf_wr_data),
                         buf.commit.eq(rx.buf_commit[k]), buf.rollback.eq(rx.buf_rollback[k]),
                         buf.clear.eq(rx.core_reset),
                         rx.buf_free[k].eq(buf.free), tx.free[k].eq(buf.free)]

        # HALTs retired since reset: entries into HALTED.
        halts = Signal(16)
        prev_state = Signal(2)
        m.d.sync += prev_state.eq(self.state)
        with m.If(rx.core_reset):
            m.d.sync += halts.eq(0)
        with m.Elif((self.state == 2) & (prev_state != 2)):
            m.d.sync += halts.eq(halts + 1)
        m.d.comb += [tx.state.eq(self.state), tx.error.eq(self.error), tx.error_pc.eq(self.error_pc),
                     tx.halts.eq(halts), tx.clear_results.eq(rx.core_reset),
                     self.core_reset.eq(rx.core_reset), self.run.eq(rx.run)]
        for a, b in zip(tx.counters, self.counters):
            m.d.comb += a.eq(b)
        return m
