"""The UART protocol between a host and a board: declared once here, used by the
gateware (:mod:`fxpgen.boards.bridge`) and the host runtime (:mod:`fxpgen.boards.host`).

Every frame, in either direction::

    SYNC (0xA5) | type u8 | seq u8 | length u16 LE | payload (length bytes) | crc u16 LE

``crc`` is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection) over
``type, seq, length, payload``. Multi-byte fields are little-endian.

Host to board:

====== ======= ===============================================================
type   payload meaning
====== ======= ===============================================================
INSN   words   instruction words, ``INSN_BYTES`` each, for the core's ``insn`` stream
DATA   words   data words, ``bus_bytes`` each, for the core's ``data`` stream
STATUS --      ask for a STATUS frame
INFO   --      ask for an INFO frame (the core configuration the board was built for)
RESET  --      reset the core and empty both stream buffers
RUN    --      start the program baked into the board's ROM (NAK NO_ROM without one)
====== ======= ===============================================================

Flow control is by credit: the board keeps a buffer per stream and answers every
INSN/DATA frame with ACK (the frame's seq and the free bytes of both buffers) once
its checksum is good and its words are committed to the buffer, or with NAK and a
reason. A frame is accepted whole or not at all, so a corrupted frame is never
executed. The host sends a stream's frame only when the last credit says it fits
(else the board answers NAK FULL) and resends a frame on NAK. A frame whose seq
equals the last accepted frame's is acknowledged again (even when the buffer is
full) but not committed, so a resend after a lost ACK does not duplicate words.
A frame that stops arriving for ``TIMEOUT_BYTES`` byte times is dropped with NAK
TIMEOUT.

Board to host: ACK, NAK (seq, reason), STATUS, INFO, and one RESULT frame per word
of the core's ``result`` stream (seq = the word's index, mod 256; payload = the
word's ``bus_bytes`` then a flags byte, bit 0 = last row of a STORE).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from fxpgen.config import CoreConfig
from fxpgen.hw.controller import COUNTERS

__all__ = [
    "SYNC", "FrameType", "NakReason", "MAX_PAYLOAD", "TIMEOUT_BYTES", "crc16",
    "encode_frame", "FrameDecoder", "Frame", "bus_bytes", "counter_bytes",
    "STATUS_FIELDS", "status_length", "decode_status", "info_payload", "decode_info",
    "INFO_LENGTH", "decode_ack", "ProtocolError",
]

SYNC = 0xA5

#: Largest payload of any frame (host frames longer than this are refused).
MAX_PAYLOAD = 4096

#: A frame that stalls for this many byte times is dropped (NAK TIMEOUT).
TIMEOUT_BYTES = 64


class FrameType(enum.IntEnum):
    INSN = 0x01
    DATA = 0x02
    STATUS = 0x03
    INFO = 0x04
    RESET = 0x05
    RUN = 0x06
    ACK = 0x81
    NAK = 0x82
    RESULT = 0x83
    STATUS_REPLY = 0x84
    INFO_REPLY = 0x85


class NakReason(enum.IntEnum):
    CRC = 1        #: checksum mismatch: the frame was dropped
    LENGTH = 2     #: payload not a whole number of words, or empty, or too long
    TYPE = 3       #: unknown frame type
    FULL = 4       #: the stream buffer has no room for the payload
    TIMEOUT = 5    #: the frame stopped arriving
    NO_ROM = 6     #: RUN on a board without a baked program


class ProtocolError(RuntimeError):
    """The board's answer was malformed, missing, or a refusal the host cannot mend."""


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (``crc16(b"123456789") == 0x29B1``)."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def encode_frame(ftype: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame, SYNC to CRC."""
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a frame")
    body = struct.pack("<BBH", int(ftype), seq & 0xFF, len(payload)) + bytes(payload)
    return bytes([SYNC]) + body + struct.pack("<H", crc16(body))


@dataclass
class Frame:
    type: int
    seq: int
    payload: bytes
    crc_ok: bool


class FrameDecoder:
    """Byte-at-a-time frame parser (the host's receive side). Bytes outside a frame
    are skipped until SYNC; frames come out with ``crc_ok`` telling if they check.

    A damaged frame proves nothing about where the next one starts (its length may
    be the damaged byte), so the parser resynchronises on the next SYNC after the
    damaged frame's own, not after the length it claims; frames found inside a
    damaged frame's claimed extent are delivered when they check and ignored when
    they do not (a payload byte that happens to equal SYNC is not a frame). A frame
    still arriving is given up as soon as a complete, checking frame starts inside
    its claimed extent, so one flipped length bit never holds back the replies
    behind it. A checking frame whose last byte equals SYNC may have borrowed it
    from the next frame after losing a byte, so that byte is tried as a start too."""

    def __init__(self):
        self._buf = bytearray()
        self._quiet = 0         # bytes at the front inside a damaged frame's extent

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while True:
            start = self._buf.find(SYNC)
            if start < 0:
                self._drop(len(self._buf))
                return frames
            self._drop(start)
            frame, end = self._parse(0)
            if frame is not None and frame.crc_ok:
                frames.append(frame)
                # A frame that lost a byte borrows the next frame's SYNC as its last
                # CRC byte, and checks one time in 256: so a final SYNC byte may start
                # the next frame too (quietly: mostly it does not).
                borrowed = self._buf[end - 1] == SYNC
                self._drop(end - borrowed)
                self._quiet = max(self._quiet, int(borrowed))
                continue
            if end is None:
                later = self._checking_frame_after(0)
                if later is None:
                    return frames                   # wait for more bytes
                end = later
                frame = Frame(self._buf[1], self._buf[2], b"", False)
            if not self._quiet and frame.type in FrameType._value2member_map_:
                frames.append(frame)
            self._quiet = max(self._quiet, end)
            self._drop(1)

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self._quiet = max(0, self._quiet - n)

    def _parse(self, pos: int) -> tuple[Frame | None, int | None]:
        """The frame starting with the SYNC at ``pos``: ``(frame, end)``; ``(None, end)``
        for a header that cannot start a frame; ``(None, None)`` while incomplete."""
        if len(self._buf) < pos + 5:
            return None, None
        ftype, seq, length = struct.unpack_from("<BBH", self._buf, pos + 1)
        if length > MAX_PAYLOAD + 64:
            return Frame(ftype, seq, b"", False), pos + 1
        end = pos + 5 + length + 2
        if len(self._buf) < end:
            return None, None
        body = bytes(self._buf[pos + 1:pos + 5 + length])
        crc = struct.unpack_from("<H", self._buf, pos + 5 + length)[0]
        return Frame(ftype, seq, body[4:], crc16(body) == crc), end

    def _checking_frame_after(self, pos: int) -> int | None:
        """Where the first complete frame that checks starts after ``pos``, if any."""
        nxt = self._buf.find(SYNC, pos + 1)
        while nxt >= 0:
            frame, _ = self._parse(nxt)
            if frame is not None and frame.crc_ok:
                return nxt
            nxt = self._buf.find(SYNC, nxt + 1)
        return None


def bus_bytes(cfg: CoreConfig) -> int:
    """Bytes of one data word (and of a result word's data part) on the wire."""
    return (cfg.bus_width + 7) // 8


def counter_bytes(cfg: CoreConfig) -> int:
    return (cfg.counter_width + 7) // 8


#: STATUS_REPLY payload fields after ``state, error`` (u8 each) and ``error_pc`` (u32):
#: these counters, each ``counter_bytes`` wide, then ``halts`` (u16: HALTs retired
#: since reset), ``results`` (u32: result words sent since reset), ``insn_free`` and
#: ``data_free`` (u16: free bytes of the stream buffers).
STATUS_FIELDS = COUNTERS


def status_length(cfg: CoreConfig) -> int:
    return 6 + len(STATUS_FIELDS) * counter_bytes(cfg) + 2 + 4 + 2 + 2


def decode_status(cfg: CoreConfig, payload: bytes) -> dict:
    if len(payload) != status_length(cfg):
        raise ProtocolError(f"STATUS reply of {len(payload)} bytes, expected {status_length(cfg)}")
    state, error, error_pc = struct.unpack_from("<BBI", payload, 0)
    out = {"state": state, "error": error, "error_pc": error_pc, "counters": {}}
    pos, nb = 6, counter_bytes(cfg)
    for name in STATUS_FIELDS:
        out["counters"][name] = int.from_bytes(payload[pos:pos + nb], "little")
        pos += nb
    out["halts"], out["results"], out["insn_free"], out["data_free"] = \
        struct.unpack_from("<HIHH", payload, pos)
    return out


def decode_ack(payload: bytes) -> tuple[int, int, int]:
    """``(seq, insn_free, data_free)`` of an ACK."""
    if len(payload) != 5:
        raise ProtocolError(f"ACK of {len(payload)} bytes, expected 5")
    return struct.unpack("<BHH", payload)


#: INFO_REPLY: magic "FXPG", protocol version, rows, cols, acc_width, counter_width
#: (u8 each), log2 of spad/wbuf/acc depths (u8 each), table_depth (u8), insn and data
#: buffer bytes (u16 each), baked program's instruction count (u32, 0 without ROM).
INFO_FORMAT = "<4sBBBBBBBBBHHI"
INFO_LENGTH = struct.calcsize(INFO_FORMAT)
PROTOCOL_VERSION = 1


def info_payload(cfg: CoreConfig, insn_buffer: int, data_buffer: int, rom_insns: int) -> bytes:
    return struct.pack(INFO_FORMAT, b"FXPG", PROTOCOL_VERSION, cfg.rows, cfg.cols, cfg.acc_width,
                       cfg.counter_width, cfg.spad_depth.bit_length() - 1,
                       cfg.wbuf_depth.bit_length() - 1, cfg.acc_depth.bit_length() - 1,
                       cfg.table_depth, insn_buffer, data_buffer, rom_insns)


def decode_info(payload: bytes) -> dict:
    if len(payload) != INFO_LENGTH:
        raise ProtocolError(f"INFO reply of {len(payload)} bytes, expected {INFO_LENGTH}")
    (magic, version, rows, cols, acc_width, counter_width, lsd, lwd, lad, table_depth,
     insn_buffer, data_buffer, rom_insns) = struct.unpack(INFO_FORMAT, payload)
    if magic != b"FXPG":
        raise ProtocolError(f"INFO reply has magic {magic!r}, not an fxpgen board")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"board speaks protocol version {version}, host {PROTOCOL_VERSION}")
    cfg = CoreConfig(rows=rows, cols=cols, acc_width=acc_width, counter_width=counter_width,
                     spad_depth=1 << lsd, wbuf_depth=1 << lwd, acc_depth=1 << lad,
                     table_depth=table_depth)
    return {"config": cfg, "insn_buffer": insn_buffer, "data_buffer": data_buffer,
            "rom_insns": rom_insns}
