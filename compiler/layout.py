"""Where feature maps live in the scratchpad: their layout, the borders their
consumers' padding asks for, when each map dies, and the allocator of row ranges.

A feature map (C, H, W) lives pixel-major with a border: pixel (y, x) of the padded
(H + top + bottom) x (W + left + right) map occupies ``G = ceil(C / lanes)``
consecutive rows, channel c in row ``c // lanes``, byte ``c % lanes``. The border is
as wide as the widest padding any consumer asks for, so padding costs nothing at run
time ("padding by layout").
"""

from __future__ import annotations

from dataclasses import dataclass

from fxpgen.config import REGIONS

from .qgraph import QAvgPool, QConv, QGraph, QMaxPool
from .tiling import DoesNotFit

__all__ = ["MapLayout", "SpadAllocator", "plan_borders", "pad_byte", "last_uses"]


@dataclass(frozen=True)
class MapLayout:
    """Where a feature map lives in the scratchpad."""

    base: int
    channels: int
    height: int
    width: int
    border: tuple[int, int, int, int]      # top, left, bottom, right
    groups: int                             # scratchpad rows per pixel

    @property
    def padded_w(self) -> int:
        return self.width + self.border[1] + self.border[3]

    @property
    def padded_h(self) -> int:
        return self.height + self.border[0] + self.border[2]

    @property
    def rows(self) -> int:
        return self.padded_h * self.padded_w * self.groups

    def pixel(self, y: int, x: int) -> int:
        """Row of group 0 of pixel (y, x), in unpadded coordinates (may be negative
        down to minus the border)."""
        return self.base + ((y + self.border[0]) * self.padded_w + x + self.border[1]) * self.groups

    def window(self, y0: int, n: int) -> MapLayout:
        """Rows ``y0 .. y0 + n - 1`` of this map as a map of ``n`` rows of its own (the
        same scratchpad rows; the side borders kept, no top or bottom border), for
        emitters that walk a whole map to walk a band of it."""
        t, left, _, right = self.border
        return MapLayout(self.base + (y0 + t) * self.padded_w * self.groups, self.channels, n,
                         self.width, (0, left, 0, right), self.groups)


def plan_borders(qg: QGraph) -> tuple[dict[str, list[int]], dict[str, bool]]:
    """(border of every tensor: the widest padding any consumer needs on each side,
    top/left/bottom/right; whether a max pool pads the tensor with the signed format's
    -127). Raise :class:`DoesNotFit` when a tensor needs both a zero and a -127 border."""
    border = {name: [0, 0, 0, 0] for name in qg.tensors}
    pad_signed = {}
    for op in qg.ops:
        if isinstance(op, (QConv, QMaxPool, QAvgPool)):
            b = border[op.input]
            for k in range(4):
                b[k] = max(b[k], op.pads[k])
            if isinstance(op, QMaxPool) and any(op.pads):
                pad_signed[op.input] = qg.tensor(op.input).fmt.signed
    for name, b in border.items():
        if any(b) and name in pad_signed and pad_signed[name] and any(
                isinstance(o, (QConv, QAvgPool)) and o.input == name and any(o.pads) for o in qg.ops):
            raise DoesNotFit(f"tensor {name} is padded with zeros for a conv and with -127 for a "
                             "max pool; copy it first")
    return border, pad_signed


def pad_byte(signed: bool) -> int:
    """The byte a map's border holds: -127 or 0, below any value of the format, so a
    max pool's padding never wins and a conv's adds nothing."""
    return 0x81 if signed else 0x00


def last_uses(qg: QGraph) -> dict[str, int]:
    """Index of the last op reading each tensor; the graph output lives past the last op."""
    last_use = {}
    for i, op in enumerate(qg.ops):
        for t in op.inputs:
            last_use[t] = i
    last_use[qg.output] = len(qg.ops)
    return last_use


class SpadAllocator:
    """First-fit allocation of scratchpad row ranges; ``high`` is the highest row used."""

    def __init__(self, depth: int):
        self.depth = depth
        self.free = [(0, depth)]
        self.high = 0

    def largest(self) -> int:
        """Rows in the largest free block."""
        return max((n for _, n in self.free), default=0)

    def alloc(self, rows: int, what: str, top: bool = False) -> int:
        """First fit from the bottom, or (``top``) last fit from the top: short-lived
        buffers go at the top so that freeing them leaves no hole below. Raise
        :class:`DoesNotFit` naming ``what`` when no free block holds ``rows``."""
        order = range(len(self.free) - 1, -1, -1) if top else range(len(self.free))
        for i in order:
            start, size = self.free[i]
            if size >= rows:
                if top:
                    self.free[i] = (start, size - rows)
                    start += size - rows
                else:
                    self.free[i] = (start + rows, size - rows)
                self.high = max(self.high, start + rows)
                return start
        largest = self.largest()
        raise DoesNotFit(f"{what} needs {rows} scratchpad rows but the largest free block is "
                         f"{largest} of spad_depth {self.depth}: {rows - largest} rows short")

    def alloc_apart(self, rows: int, what: str, avoid: list[tuple[int, int]], top: bool = True,
                    fallback: list[tuple[int, int]] | None = None) -> int:
        """:meth:`alloc` from the top (or the bottom), but in no hazard region
        (``REGIONS`` equal parts of the scratchpad) of the row ranges ``avoid`` (start,
        rows) when a free block allows: the highest (lowest) such placement, ending or
        starting at a region boundary if not at the block's end. An instruction
        writing the buffer then never waits for one reading those rows, nor the other
        way round, nor two reading them for a bank's read port. When no block allows,
        apart from the ranges ``fallback`` instead if given."""
        def regions(start: int, n: int) -> range:
            return range(start * REGIONS // self.depth, (start + n - 1) * REGIONS // self.depth + 1)

        taken = {r for a in avoid for r in regions(*a)}
        best = None
        for i, (start, size) in enumerate(self.free):
            if size < rows:
                continue
            bounds = [k * self.depth // REGIONS for k in range(1, REGIONS)]
            for s in [start + size - rows, start] + [b - rows for b in bounds] + bounds:
                if start <= s <= start + size - rows and taken.isdisjoint(regions(s, rows)):
                    if best is None or (s > best[1] if top else s < best[1]):
                        best = (i, s)
        if best is None and fallback is not None:
            return self.alloc_apart(rows, what, fallback, top)
        if best is None:
            return self.alloc(rows, what, top=top)
        i, s = best
        start, size = self.free.pop(i)
        self.free[i:i] = [(a, n) for a, n in ((start, s - start), (s + rows, start + size - s - rows)) if n > 0]
        self.high = max(self.high, s + rows)
        return s

    def release(self, start: int, rows: int) -> None:
        """Free rows ``[start, start + rows)``, merging neighbouring free blocks."""
        self.free.append((start, rows))
        self.free.sort()
        merged = []
        for s, n in self.free:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((s, n))
        self.free = [(s, n) for s, n in merged if n > 0]
