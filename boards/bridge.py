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

from typing import NamedTuple

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


class _Frame(NamedTuple):
    """The receiver's registers for the frame being parsed, and values derived from
    them and the byte on ``rx``."""
    ftype: Signal
    seq: Signal
    reason: Signal              # the NAK reason decided in CHECK, 0 if none
    remaining: Signal           # payload bytes still to come
    crc: Signal                 # CRC of the bytes so far
    crc_rx: Signal              # the CRC the frame carries
    target: Signal              # 0: insn buffer, 1: data buffer
    is_stream: Signal           # an INSN or DATA frame
    duplicate: Signal           # a stream frame repeating the last committed one
    last_seq: Signal
    have_last: Signal
    word_pos: Signal            # byte within the target's word
    idle: Signal                # cycles without a byte, inside a frame
    held_type: Signal           # a reply waiting in REPLY until the sender takes the one before
    held_reason: Signal
    word_end: Value
    mask: Value                 # the target's bit in the buffer controls
    crc_next: Value
    timed_out: Value


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
        m.d.comb += [self.rx.ready.eq(1), self.buf_wr_data.eq(byte)]
        f = self._registers()
        with m.If(self.reply.ready):
            m.d.sync += self.reply.valid.eq(0)
        m.d.sync += [self.core_reset.eq(0), self.run.eq(0)]

        with m.FSM() as fsm:
            with m.State("SYNC"):
                with m.If(self.rx.valid & (byte == SYNC)):
                    m.d.sync += [f.crc.eq(0xFFFF), f.reason.eq(0), f.word_pos.eq(0)]
                    m.next = "TYPE"
            self._header(m, f, "TYPE", "SEQ", f.ftype.eq(byte))
            self._header(m, f, "SEQ", "LEN0", f.seq.eq(byte))
            self._header(m, f, "LEN0", "LEN1", f.remaining[:8].eq(byte))
            self._header(m, f, "LEN1", "CHECK", f.remaining[8:].eq(byte))
            with m.State("CHECK"):
                self._check(m, f)
                m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                self._payload(m, f)
            self._receive(m, f, "CRC0", "CRC1", f.crc_rx[:8].eq(byte))
            self._receive(m, f, "CRC1", "DECIDE", f.crc_rx[8:].eq(byte))
            with m.State("DECIDE"):
                self._decide(m, f)
            with m.State("REPLY"):
                with m.If(~self.reply.valid | self.reply.ready):
                    m.d.sync += self._offer(f, f.held_type, f.held_reason)
                    m.next = "SYNC"

        # The timeout counts only while a frame waits for its next byte.
        waiting = ~Cat(*(fsm.ongoing(s) for s in ("SYNC", "CHECK", "DECIDE", "REPLY"))).any()
        with m.If(self.rx.valid | ~waiting | f.timed_out):
            m.d.sync += f.idle.eq(0)
        with m.Else():
            m.d.sync += f.idle.eq(f.idle + 1)
        return m

    def _registers(self) -> _Frame:
        ftype = Signal(8)
        seq = Signal(8)
        reason = Signal(8)
        remaining = Signal(16)
        crc = Signal(16)
        crc_rx = Signal(16)
        target = Signal()
        is_stream = Signal()
        duplicate = Signal()
        last_seq = Signal(8)
        have_last = Signal()
        wb0, wb1 = self._word_bytes
        word_pos = Signal(range(max(wb0, wb1)))
        idle = Signal(range(self._timeout + 1))
        held_type = Signal(8)
        held_reason = Signal(8)
        return _Frame(ftype, seq, reason, remaining, crc, crc_rx, target, is_stream, duplicate,
                      last_seq, have_last, word_pos, idle, held_type, held_reason,
                      word_end=Mux(target, wb1 - 1, wb0 - 1), mask=Mux(target, 0b10, 0b01),
                      crc_next=crc16_next(crc, self.rx.payload), timed_out=idle == self._timeout)

    def _offer(self, f: _Frame, rtype, rreason) -> list:
        """Put reply ``rtype`` (NAK reason ``rreason``) to the frame ``f.seq`` on ``reply``."""
        return [self.reply.payload.type.eq(rtype), self.reply.payload.seq.eq(f.seq),
                self.reply.payload.reason.eq(rreason), self.reply.valid.eq(1)]

    def _reply(self, m: Module, f: _Frame, rtype, rreason=0) -> None:
        """Request reply ``rtype`` (with NAK reason ``rreason``) to the frame ``f.seq``
        and end the frame. A reply the sender has not taken yet is never replaced:
        the new one waits in REPLY (bytes arriving meanwhile are ignored; the host
        sends its next frame only after this reply)."""
        with m.If(~self.reply.valid | self.reply.ready):
            m.d.sync += self._offer(f, rtype, rreason)
            m.next = "SYNC"
        with m.Else():
            m.d.sync += [f.held_type.eq(rtype), f.held_reason.eq(rreason)]
            m.next = "REPLY"

    def _receive(self, m: Module, f: _Frame, state: str, nxt: str, *actions) -> None:
        """State ``state`` takes one byte with ``actions`` and goes to ``nxt``. A
        frame that stops arriving is dropped, its tentative bytes forgotten."""
        with m.State(state):
            self._drop_on_timeout(m, f)
            with m.Elif(self.rx.valid):
                m.d.sync += [*actions]
                m.next = nxt

    def _header(self, m: Module, f: _Frame, state: str, nxt: str, *actions) -> None:
        """A header byte: like :meth:`_receive`, and counted in the CRC."""
        self._receive(m, f, state, nxt, f.crc.eq(f.crc_next), *actions)

    def _drop_on_timeout(self, m: Module, f: _Frame) -> None:
        """Opens an ``If`` chain: on timeout, roll back both buffers and NAK."""
        with m.If(f.timed_out):
            m.d.comb += self.buf_rollback.eq(0b11)
            self._reply(m, f, FrameType.NAK, NakReason.TIMEOUT)

    def _check(self, m: Module, f: _Frame) -> None:
        """After the header, before the payload: the target and whether the payload
        may be written; a refusal's reason (length, buffer full, unknown type)."""
        ftype, remaining = f.ftype, f.remaining
        stream_frame = (ftype == FrameType.INSN) | (ftype == FrameType.DATA)
        tgt = ftype == FrameType.DATA
        duplicate = stream_frame & f.have_last & (f.seq == f.last_seq)
        m.d.sync += [f.is_stream.eq(stream_frame), f.target.eq(tgt), f.duplicate.eq(duplicate)]
        known = Cat(*(ftype == t for t in (FrameType.STATUS, FrameType.INFO,
                                           FrameType.RESET, FrameType.RUN))).any()
        with m.If(stream_frame):
            with m.If((remaining == 0) | (remaining > protocol.MAX_PAYLOAD)):
                m.d.sync += f.reason.eq(NakReason.LENGTH)
            with m.Elif((remaining > Mux(tgt, self.buf_free[1], self.buf_free[0])) & ~duplicate):
                # A resend of the frame last accepted (its ACK lost) is acknowledged
                # again even when its words filled the buffer: NAK FULL would make the
                # host send those words a second time.
                m.d.sync += f.reason.eq(NakReason.FULL)
        with m.Elif(~known):
            m.d.sync += f.reason.eq(NakReason.TYPE)
        with m.Elif(remaining != 0):
            m.d.sync += f.reason.eq(NakReason.LENGTH)

    def _payload(self, m: Module, f: _Frame) -> None:
        """Payload bytes go tentatively into the target buffer, unless the frame is
        refused or a duplicate."""
        self._drop_on_timeout(m, f)
        with m.Elif(f.remaining == 0):
            m.next = "CRC0"
        with m.Elif(self.rx.valid):
            m.d.sync += [f.remaining.eq(f.remaining - 1), f.crc.eq(f.crc_next),
                         f.word_pos.eq(Mux(f.word_pos == f.word_end, 0, f.word_pos + 1))]
            writing = f.is_stream & (f.reason == 0) & ~f.duplicate
            m.d.comb += self.buf_wr_en.eq(Mux(writing, f.mask, 0))

    def _decide(self, m: Module, f: _Frame) -> None:
        """The whole frame is in: commit or roll back the payload, act on a command,
        and reply."""
        rollback = Mux(f.is_stream, f.mask, 0)
        with m.If(f.crc_rx != f.crc):
            m.d.comb += self.buf_rollback.eq(rollback)
            self._reply(m, f, FrameType.NAK, NakReason.CRC)
        with m.Elif(f.is_stream & (f.word_pos != 0)):
            m.d.comb += self.buf_rollback.eq(rollback)
            self._reply(m, f, FrameType.NAK, NakReason.LENGTH)
        with m.Elif(f.reason != 0):
            m.d.comb += self.buf_rollback.eq(rollback)
            self._reply(m, f, FrameType.NAK, f.reason)
        with m.Elif(f.is_stream):
            m.d.comb += self.buf_commit.eq(f.mask)
            m.d.sync += [f.last_seq.eq(f.seq), f.have_last.eq(1)]
            self._reply(m, f, FrameType.ACK)
        with m.Elif(f.ftype == FrameType.STATUS):
            self._reply(m, f, FrameType.STATUS_REPLY)
        with m.Elif(f.ftype == FrameType.INFO):
            self._reply(m, f, FrameType.INFO_REPLY)
        with m.Elif(f.ftype == FrameType.RESET):
            m.d.sync += [self.core_reset.eq(1), f.have_last.eq(0)]
            self._reply(m, f, FrameType.ACK)
        with m.Else():                  # RUN
            if self._has_rom:
                m.d.sync += self.run.eq(1)
                self._reply(m, f, FrameType.ACK)
            else:
                self._reply(m, f, FrameType.NAK, NakReason.NO_ROM)


#: Reply kinds in the order of the sender's ``kind`` register; RESULT last.
_KINDS = [FrameType.ACK, FrameType.NAK, FrameType.STATUS_REPLY, FrameType.INFO_REPLY,
          FrameType.RESULT]


def _as_bytes(value: Value, n: int) -> list:
    """``value`` zero-extended to ``n`` bytes, least significant first."""
    value = Cat(value, C(0, max(0, 8 * n - len(value))))
    return [value[8 * i:8 * i + 8] for i in range(n)]


class _Outgoing(NamedTuple):
    """The sender's registers for the frame being sent."""
    kind: Signal                # index into _KINDS
    seq: Signal
    reason: Signal
    pos: Signal                 # byte being sent
    length: Signal              # payload bytes
    busy: Signal
    crc: Signal
    results: Signal             # RESULT frames sent since the last clear
    snap: Signal                # the bridge's own fields at the frame's start
    fill: Signal                # cycles since pos moved, up to 2: then ``byte`` is pos's
    byte: Signal                # the byte at pos, registered


class FrameSender(wiring.Component):
    """Sends reply frames (requested on ``reply``) and one RESULT frame per word of
    ``result``; replies go first.

    Bytes are picked by position, not shifted out of a frame-wide register, to keep
    the sender small, in two registered steps (each frame kind's byte at the
    position, then the frame's kind), so the wide byte select is not one path with
    the CRC: a byte leaves two cycles after the position moves, well inside the
    UART's byte time. A RESULT frame reads the result word the core holds on its
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
        f = self._registers()
        self._frame_byte(m, f)
        with m.If(~f.busy):
            self._start_next(m, f)
        with m.Else():
            self._send(m, f)
        with m.If(self.clear_results):
            m.d.sync += f.results.eq(0)
        return m

    def _lengths(self) -> dict:
        """Payload bytes of each frame type."""
        cfg = self._cfg
        return {FrameType.ACK: 5, FrameType.NAK: 1,
                FrameType.STATUS_REPLY: protocol.status_length(cfg),
                FrameType.INFO_REPLY: len(self._info), FrameType.RESULT: protocol.bus_bytes(cfg) + 1}

    def _registers(self) -> _Outgoing:
        total = max(self._lengths().values()) + 7
        kind = Signal(range(len(_KINDS)))
        seq = Signal(8)
        reason = Signal(8)
        pos = Signal(range(total + 1))
        length = Signal(16)
        busy = Signal()
        crc = Signal(16)
        results = Signal(32)
        snap = Signal(data.StructLayout({"state": 8, "error": 8, "error_pc": 32, "halts": 16,
                                         "results": 32, "free0": 16, "free1": 16}))
        fill = Signal(2)
        byte = Signal(8)
        return _Outgoing(kind, seq, reason, pos, length, busy, crc, results, snap, fill, byte)

    def _payloads(self, f: _Outgoing) -> dict:
        """The payload bytes of each frame type."""
        cfg = self._cfg
        nb, cb = protocol.bus_bytes(cfg), protocol.counter_bytes(cfg)
        snap = f.snap
        free = _as_bytes(snap.free0, 2) + _as_bytes(snap.free1, 2)
        counters = [b for c in self.counters for b in _as_bytes(c, cb)]
        return {
            FrameType.ACK: [f.seq] + free,
            FrameType.NAK: [f.reason],
            FrameType.STATUS_REPLY: (_as_bytes(snap.state, 1) + _as_bytes(snap.error, 1)
                                     + _as_bytes(snap.error_pc, 4) + counters + _as_bytes(snap.halts, 2)
                                     + _as_bytes(snap.results, 4) + free),
            FrameType.INFO_REPLY: [C(b, 8) for b in self._info],
            FrameType.RESULT: _as_bytes(self.result.payload[:cfg.bus_width], nb)
                              + [Cat(self.result.payload[cfg.bus_width], C(0, 7))],
        }

    def _frame_byte(self, m: Module, f: _Outgoing) -> None:
        """Load ``f.byte`` with the byte at ``f.pos`` (SYNC, type, seq, length (2),
        payload, CRC (2)) in two steps after ``pos`` moves: each kind's byte at
        ``pos`` (an array indexed by ``pos`` itself: no subtractor, no comparator),
        then the frame's kind."""
        payloads = self._payloads(f)
        per_kind = []
        for t in _KINDS:
            length = self._lengths()[t]
            frame = ([C(SYNC, 8), C(int(t), 8), f.seq, C(length & 0xFF, 8), C(length >> 8, 8)]
                     + list(payloads[t]) + [f.crc[:8], f.crc[8:]])
            byte = Signal(8, name=f"byte_{t.name.lower()}")
            m.d.sync += byte.eq(Array(frame)[f.pos])
            per_kind.append(byte)
        with m.If(f.fill == 1):
            m.d.sync += f.byte.eq(Array(per_kind)[f.kind])
        with m.If(f.fill != 2):
            m.d.sync += f.fill.eq(f.fill + 1)

    def _start(self, f: _Outgoing, k: int) -> list:
        """Begin a frame of kind ``_KINDS[k]`` and snapshot the bridge's fields."""
        snap = f.snap
        return [f.kind.eq(k), f.length.eq(self._lengths()[_KINDS[k]]), f.pos.eq(0), f.busy.eq(1),
                f.crc.eq(0xFFFF), f.fill.eq(0),
                snap.state.eq(self.state), snap.error.eq(self.error), snap.error_pc.eq(self.error_pc),
                snap.halts.eq(self.halts), snap.results.eq(f.results),
                snap.free0.eq(self.free[0]), snap.free1.eq(self.free[1])]

    def _start_next(self, m: Module, f: _Outgoing) -> None:
        """While idle: take a requested reply, else a waiting result word."""
        r = self.reply.payload
        with m.If(self.reply.valid):
            m.d.comb += self.reply.ready.eq(1)
            m.d.sync += [f.seq.eq(r.seq), f.reason.eq(r.reason)]
            with m.Switch(r.type):
                for k, t in enumerate(_KINDS[:4]):
                    with m.Case(t):
                        m.d.sync += self._start(f, k)
        with m.Elif(self.result.valid):
            m.d.sync += [*self._start(f, 4), f.seq.eq(f.results[:8])]

    def _send(self, m: Module, f: _Outgoing) -> None:
        """While busy: send ``f.byte`` once loaded, fold it into the CRC, take the
        result word after its last payload byte, and stop after the CRC."""
        pos, length, byte = f.pos, f.length, f.byte
        m.d.comb += [self.tx.payload.eq(byte), self.tx.valid.eq(f.fill == 2)]
        with m.If(self.tx.valid & self.tx.ready):
            m.d.sync += [pos.eq(pos + 1), f.fill.eq(0)]
            with m.If((pos != 0) & (pos < 5 + length)):
                m.d.sync += f.crc.eq(crc16_next(f.crc, byte))
            with m.If((f.kind == 4) & (pos == 4 + length)):
                # The result word's last payload byte: take the word.
                m.d.comb += self.result.ready.eq(1)
                m.d.sync += f.results.eq(f.results + 1)
            with m.If(pos == 6 + length):
                m.d.sync += f.busy.eq(0)


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
