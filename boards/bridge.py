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
    ``result``; replies go first. Each frame's bytes are loaded into one shift
    register at its start, so a STATUS reply is a snapshot of one cycle."""

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
        lengths = {FrameType.ACK: 5, FrameType.NAK: 1,
                   FrameType.STATUS_REPLY: protocol.status_length(cfg),
                   FrameType.INFO_REPLY: len(self._info), FrameType.RESULT: nb + 1}
        max_len = max(lengths.values())
        width = 8 * (5 + max_len)

        results = Signal(32)
        sr = Signal(width)
        left = Signal(range(5 + max_len + 3))      # bytes of header + payload + crc to send
        first = Signal()
        crc = Signal(16)

        def frame(ftype, seq, payload: Value):
            header = Cat(C(SYNC, 8), C(int(ftype), 8), seq, C(lengths[ftype], 16))
            return [sr.eq(Cat(header, payload)), left.eq(5 + lengths[ftype] + 2),
                    first.eq(1), crc.eq(0xFFFF)]

        free16 = [f.as_unsigned()[:16] if len(f) >= 16 else f.as_unsigned() for f in self.free]
        free = [Cat(f, C(0, 16 - len(f))) for f in free16]
        counters = Cat(*(Cat(c, C(0, 8 * cb - len(c))) for c in self.counters))
        status = Cat(self.state, C(0, 6), self.error, C(0, 5), self.error_pc, counters,
                     self.halts, results, *free)
        info = C(int.from_bytes(self._info, "little"), 8 * len(self._info))
        result_payload = Cat(self.result.payload[:cfg.bus_width], C(0, 8 * nb - cfg.bus_width),
                             self.result.payload[cfg.bus_width], C(0, 7))

        with m.If(left == 0):
            r = self.reply.payload
            with m.If(self.reply.valid):
                m.d.comb += self.reply.ready.eq(1)
                with m.Switch(r.type):
                    with m.Case(FrameType.ACK):
                        m.d.sync += frame(FrameType.ACK, r.seq, Cat(r.seq, *free))
                    with m.Case(FrameType.NAK):
                        m.d.sync += frame(FrameType.NAK, r.seq, r.reason)
                    with m.Case(FrameType.STATUS_REPLY):
                        m.d.sync += frame(FrameType.STATUS_REPLY, r.seq, status)
                    with m.Case(FrameType.INFO_REPLY):
                        m.d.sync += frame(FrameType.INFO_REPLY, r.seq, info)
            with m.Elif(self.result.valid):
                m.d.comb += self.result.ready.eq(1)
                m.d.sync += [*frame(FrameType.RESULT, results[:8], result_payload),
                             results.eq(results + 1)]
        with m.If(self.clear_results):
            m.d.sync += results.eq(0)
        with m.Else():
            out = Mux(left == 2, crc[:8], Mux(left == 1, crc[8:], sr[:8]))
            m.d.comb += [self.tx.payload.eq(out), self.tx.valid.eq(1)]
            with m.If(self.tx.ready):
                m.d.sync += [left.eq(left - 1), sr.eq(sr >> 8), first.eq(0)]
                with m.If(~first & (left > 2)):
                    m.d.sync += crc.eq(crc16_next(crc, sr[:8]))
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
