"""Faults on a serial wire, for testing the UART link: what a noisy cable, a
dropped byte or a stray burst does to the bytes in one direction.

A fault is applied at a byte offset of one direction's stream as it was sent
(``"host"``: host to board, ``"board"``: board to host):

========= ===================================================================
kind      effect at byte ``at``
========= ===================================================================
``flip``  the byte XOR ``arg`` (a non-zero mask: one or more bits flipped)
``burst`` ``len(arg)`` bytes from ``at`` XOR the masks in ``arg`` (line noise)
``drop``  ``arg`` bytes from ``at`` lost (a lost reply when it spans a frame)
``insert`` the bytes ``arg`` arrive before byte ``at`` (garbage between or
          inside frames; it may hold SYNC bytes)
========= ===================================================================

:class:`FaultyWire` applies a list of faults to a stream passed through it in
chunks of any size; :func:`random_faults` draws a campaign. Both sides of the
simulated board (:mod:`fxpgen.boards.cocotb_board`) use it, and so do the tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Fault", "FaultyWire", "random_faults", "KINDS"]

KINDS = ("flip", "burst", "drop", "insert")


@dataclass(frozen=True)
class Fault:
    direction: str          # "host" or "board": who sends the bytes
    at: int                 # offset in that direction's stream, as sent
    kind: str               # one of KINDS
    arg: int | tuple = 0    # mask (flip), masks (burst), count (drop), bytes (insert)

    def __post_init__(self):
        if self.direction not in ("host", "board") or self.kind not in KINDS or self.at < 0:
            raise ValueError(f"not a wire fault: {self}")

    def as_json(self) -> list:
        return [self.direction, self.at, self.kind, list(self.arg) if isinstance(self.arg, tuple) else self.arg]

    @classmethod
    def from_json(cls, v: list) -> "Fault":
        d, at, kind, arg = v
        return cls(d, int(at), kind, tuple(arg) if isinstance(arg, list) else int(arg))


class FaultyWire:
    """One direction of a wire: ``pass_bytes(chunk)`` returns what arrives at the
    other end. ``applied`` lists the faults that have taken effect."""

    def __init__(self, faults: list[Fault]):
        self._faults = sorted(faults, key=lambda f: f.at)
        self._sent = 0          # bytes sent so far (offsets are in this count)
        self._dropping = 0      # bytes still to drop from a drop fault
        self._burst: tuple[int, tuple] | None = None    # (start, masks) of the last burst
        self.applied: list[Fault] = []

    def pass_bytes(self, chunk: bytes) -> bytes:
        out = bytearray()
        for i, byte in enumerate(chunk):
            pos = self._sent + i
            for f in self._due(pos):
                self.applied.append(f)
                if f.kind == "insert":
                    out += bytes(f.arg)
                elif f.kind == "drop":
                    self._dropping = max(self._dropping, f.arg)
                elif f.kind == "flip":
                    byte ^= f.arg
                else:
                    self._burst = (pos, f.arg)
            if self._burst and pos < self._burst[0] + len(self._burst[1]):
                byte ^= self._burst[1][pos - self._burst[0]]
            if self._dropping:
                self._dropping -= 1
                continue
            out.append(byte)
        self._sent += len(chunk)
        return bytes(out)

    def _due(self, pos: int) -> list[Fault]:
        due = []
        while self._faults and self._faults[0].at <= pos:
            due.append(self._faults.pop(0))
        return due


def random_faults(rng: random.Random, n: int, host_bytes: int, board_bytes: int) -> list[Fault]:
    """``n`` faults spread over streams of about ``host_bytes`` and ``board_bytes``
    bytes, in proportion, each kind as likely: single and multi-bit flips, bursts
    of 2-16 bytes, drops of 1 byte to a whole reply (1-40 bytes), and 1-12 garbage
    bytes that start with SYNC half of the time."""
    faults = []
    for _ in range(n):
        direction = "host" if rng.random() < host_bytes / (host_bytes + board_bytes) else "board"
        at = rng.randrange(host_bytes if direction == "host" else board_bytes)
        kind = rng.choice(KINDS)
        if kind == "flip":
            arg = rng.choice([1 << rng.randrange(8), rng.randrange(1, 256)])
        elif kind == "burst":
            arg = tuple(rng.randrange(1, 256) for _ in range(rng.randrange(2, 17)))
        elif kind == "drop":
            arg = rng.choice([1, rng.randrange(1, 41)])
        else:
            garbage = [rng.randrange(256) for _ in range(rng.randrange(1, 13))]
            arg = tuple(([0xA5] if rng.random() < 0.5 else []) + garbage)
        faults.append(Fault(direction, at, kind, arg))
    return faults
