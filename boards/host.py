"""The host side of the UART protocol (:mod:`fxpgen.boards.protocol`): talks to a
board over a serial port (pyserial, or anything with ``read``/``write``/``timeout``)
and runs programs on it.

``fxpgen run OUTDIR --engine board --port /dev/ttyUSB0`` uses :func:`run_on_board`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from fxpgen.config import CoreConfig
from fxpgen.isa import INSN_BYTES, CoreState, ErrorCode, Opcode, opcode_of

from . import protocol
from .protocol import FrameDecoder, FrameType, NakReason, ProtocolError, encode_frame

__all__ = ["BoardLink", "BoardRun", "ResultLost", "open_serial"]

log = logging.getLogger("fxpgen.board")

#: Resends of one frame after NAK CRC/TIMEOUT or a lost reply before giving up.
MAX_RETRIES = 8


def open_serial(port: str, baud: int, timeout: float):
    """Open ``port`` with pyserial (8N1, no flow control)."""
    try:
        import serial
    except ImportError:
        raise RuntimeError("the board engine needs pyserial: pip install 'fxpgen[boards]'") from None
    try:
        return serial.Serial(port, baudrate=baud, timeout=min(timeout, 0.05))
    except serial.SerialException as e:
        raise RuntimeError(f"cannot open serial port {port}: {e}") from None


@dataclass
class BoardRun:
    """What one program run on the board gave: result words, the status at its end
    (the core's counters), and the frames the board refused and the host resent."""

    results: list[int] = field(default_factory=list)
    lasts: list[bool] = field(default_factory=list)
    status: dict = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)


class BoardLink:
    """A connection to one board. ``timeout`` is the seconds to wait for any reply."""

    def __init__(self, port, *, timeout: float = 2.0):
        self.port = port
        self.timeout = timeout
        self._decoder = FrameDecoder()
        self._pending: list = []
        self._seq = 0
        self._last_stream_seq = None
        self._results: list[tuple[int, int, bool]] = []
        self._discarding = False
        self.rejected: list[str] = []
        self.frames_sent = 0            # frames written to the wire, resends included
        self.info = self.request_info()
        self.cfg: CoreConfig = self.info["config"]
        self._credit = {FrameType.INSN: self.info["insn_buffer"], FrameType.DATA: self.info["data_buffer"]}

    # -- frames -------------------------------------------------------------------
    def _next_seq(self, stream: bool) -> int:
        self._seq = (self._seq + 1) & 0xFF
        if stream and self._seq == self._last_stream_seq:
            self._seq = (self._seq + 1) & 0xFF   # never reuse the last accepted stream seq
        return self._seq

    def _read_frame(self, deadline: float):
        while not self._pending:
            if time.monotonic() > deadline:
                return None
            chunk = self.port.read(max(1, getattr(self.port, "in_waiting", 0) or 1))
            if chunk:
                self._pending += self._decoder.feed(chunk)
        return self._pending.pop(0)

    def _take_result(self, frame) -> None:
        if self._discarding:
            return
        nb = protocol.bus_bytes(self.cfg)
        n = len(self._results)
        if not frame.crc_ok or len(frame.payload) != nb + 1:
            self._lost(f"result word {n} arrived damaged "
                       f"({'checksum' if not frame.crc_ok else 'length'})")
        word = int.from_bytes(frame.payload[:nb], "little")
        entry = (frame.seq, word, bool(frame.payload[nb] & 1))
        if n and frame.seq == (n - 1) & 0xFF and self._results[-1] == entry:
            return                              # the same frame twice on the wire
        if frame.seq != n & 0xFF:
            self._lost(f"result word {n} missing (the next to arrive was index {frame.seq})")
        self._results.append(entry)

    def _lost(self, why: str) -> None:
        """Give up this program's results: nothing arriving before the next reset counts."""
        self._discarding = True
        raise ResultLost(why)

    def _transact(self, ftype: FrameType, payload: bytes = b"", *, reply: FrameType) -> bytes:
        """Send one frame (resending after CRC/TIMEOUT refusals or a lost reply) and
        return the payload of its reply. RESULT frames arriving meanwhile are kept."""
        stream = ftype in (FrameType.INSN, FrameType.DATA)
        seq = self._next_seq(stream)
        frame = encode_frame(ftype, seq, payload)
        for attempt in range(MAX_RETRIES + 1):
            self.port.write(frame)
            self.frames_sent += 1
            deadline = time.monotonic() + self.timeout
            while True:
                f = self._read_frame(deadline)
                if f is None:
                    why = f"no reply to {ftype.name} frame (seq {seq}) within {self.timeout} s"
                    break
                if f.type == FrameType.RESULT:
                    self._take_result(f)
                    continue
                if not f.crc_ok:
                    why = f"damaged reply to {ftype.name} frame (seq {seq})"
                    break
                if f.seq != seq:
                    continue                    # a late reply to an earlier attempt
                if f.type == FrameType.NAK:
                    reason = NakReason(f.payload[0]) if f.payload and f.payload[0] in NakReason._value2member_map_ \
                        else f.payload[:1]
                    if reason in (NakReason.CRC, NakReason.TIMEOUT):
                        why = f"board rejected {ftype.name} frame (seq {seq}): {reason.name}"
                        break
                    if reason is NakReason.FULL:
                        raise _BufferFull(ftype)
                    raise ProtocolError(f"board refused {ftype.name} frame (seq {seq}): "
                                        f"{getattr(reason, 'name', reason)}")
                if f.type != reply:
                    raise ProtocolError(f"expected {reply.name} for {ftype.name}, got frame type {f.type:#x}")
                if stream:
                    self._last_stream_seq = seq
                return f.payload
            self.rejected.append(why)
            log.warning("%s; resending (attempt %d)", why, attempt + 1)
        raise ProtocolError(f"{ftype.name} frame (seq {seq}) failed {MAX_RETRIES + 1} times: {why}")

    # -- requests -----------------------------------------------------------------
    def request_info(self) -> dict:
        return protocol.decode_info(self._transact(FrameType.INFO, reply=FrameType.INFO_REPLY))

    def status(self) -> dict:
        """The board's STATUS. The board sends a STATUS reply after every RESULT frame
        it counts, so a count above the results received means some were lost."""
        st = protocol.decode_status(self.cfg, self._transact(FrameType.STATUS, reply=FrameType.STATUS_REPLY))
        self._credit = {FrameType.INSN: st["insn_free"], FrameType.DATA: st["data_free"]}
        if not self._discarding and st["results"] > len(self._results):
            self._lost(f"result word {len(self._results)} lost on the wire "
                       f"(the board has sent {st['results']})")
        return st

    def reset(self) -> None:
        """Reset the core, empty the board's buffers and forget results."""
        self._discarding = True
        self._transact(FrameType.RESET, reply=FrameType.ACK)
        self._results.clear()
        self._discarding = False
        self._credit = {FrameType.INSN: self.info["insn_buffer"], FrameType.DATA: self.info["data_buffer"]}

    def _send_words(self, ftype: FrameType, words: list[int], nbytes: int) -> int:
        """Send as many of ``words`` as the credit allows in one frame; return how many."""
        n = min(len(words), self._credit[ftype] // nbytes, protocol.MAX_PAYLOAD // nbytes)
        if n == 0:
            return 0
        payload = b"".join(w.to_bytes(nbytes, "little") for w in words[:n])
        try:
            ack = self._transact(ftype, payload, reply=FrameType.ACK)
        except _BufferFull:
            self._credit[ftype] = 0
            return 0
        _, insn_free, data_free = protocol.decode_ack(ack)
        self._credit = {FrameType.INSN: insn_free, FrameType.DATA: data_free}
        return n

    def execute(self, words: list[int], data: list[int], *, n_results: int, progress=None) -> BoardRun:
        """Stream a program (instruction and data words) to the core, interleaving the
        two streams as the board's credit allows, and wait for all its HALTs and
        ``n_results`` result words. The returned status holds the core's counters at
        the last HALT."""
        n_halts = sum(1 for w in words if opcode_of(w) == Opcode.HALT.value)
        base = self.status()
        self._check(base)
        first_result = len(self._results)
        nb = protocol.bus_bytes(self.cfg)
        pos = d_pos = 0
        while pos < len(words) or d_pos < len(data):
            sent = self._send_words(FrameType.INSN, words[pos:], INSN_BYTES) if pos < len(words) else 0
            dsent = self._send_words(FrameType.DATA, data[d_pos:], nb) if d_pos < len(data) else 0
            pos, d_pos = pos + sent, d_pos + dsent
            if progress:
                progress(sent, dsent)
            if not sent and not dsent:
                self._check(self.status())      # both buffers full: wait for the core
        run = BoardRun()
        run.status = self._wait(lambda s: (s["halts"] - base["halts"]) % 65536 >= n_halts
                                and len(self._results) - first_result >= n_results)
        run.results, run.lasts = self._results_since(first_result)
        run.rejected = list(self.rejected)
        return run

    def run_baked(self, image_words: list[int], *, n_results: int, n_halts: int) -> BoardRun:
        """Run the board's baked program (``n_halts`` HALTs, ``n_results`` result
        words) on one image (``image_words``)."""
        if not self.info["rom_insns"]:
            raise ProtocolError("this board has no baked program (build it with --program)")
        run = BoardRun()
        base = self.status()
        first_result = len(self._results)
        self._transact(FrameType.RUN, reply=FrameType.ACK)
        nb = protocol.bus_bytes(self.cfg)
        pos = 0
        while pos < len(image_words):
            sent = self._send_words(FrameType.DATA, image_words[pos:], nb)
            pos += sent
            if not sent:
                self._check(self.status())
        run.status = self._wait(lambda s: len(self._results) - first_result >= n_results
                                and (s["halts"] - base["halts"]) % 65536 >= n_halts
                                and s["state"] == CoreState.HALTED.value)
        run.results, run.lasts = self._results_since(first_result)
        return run

    def _results_since(self, first: int) -> tuple[list[int], list[bool]]:
        got = self._results[first:]
        return [w for _, w, _ in got], [last for _, _, last in got]

    def _check(self, st: dict) -> None:
        if st["state"] == CoreState.ERROR.value:
            raise ProtocolError(f"the core stopped with {ErrorCode(st['error']).name} at instruction "
                                f"{st['error_pc']}")

    def _wait(self, done, limit_s: float | None = None) -> dict:
        limit = time.monotonic() + (limit_s or max(60.0, 30 * self.timeout))
        while True:
            st = self.status()
            self._check(st)
            if done(st):
                return st
            if time.monotonic() > limit:
                raise ProtocolError(f"board did not finish: state {CoreState(st['state']).name}, "
                                    f"{st['halts']} HALTs, {len(self._results)} result words")


class ResultLost(ProtocolError):
    """A result word was damaged or lost on the way to the host: the results cannot
    be trusted, and the program must run again from a reset."""


class _BufferFull(Exception):
    def __init__(self, ftype):
        super().__init__(ftype)
