"""A compiled program cut at its HALTs: the unit the RTL engines run and time.

Every layer of a compiled network ends with a HALT, so the core's performance
counters (cleared when a program starts, frozen by HALT) measure each layer; the
engines send one segment at a time and read the counters at each HALT."""

from __future__ import annotations

from dataclasses import dataclass

from fxpgen.isa import Instruction, Opcode, opcode_of

__all__ = ["LayerSegment", "split_layers", "cycle_budget"]


@dataclass
class LayerSegment:
    """Instructions up to and including one HALT, with the data words they consume
    and the number of result words they produce."""

    layer: str
    words: list[int]
    data: list[int]
    n_results: int


def cycle_budget(seg: "LayerSegment") -> int:
    """A generous cycle limit for one segment: every instruction serialised with
    its iterations, plus the data and result words, with room for stalls."""
    work = 0
    for w in seg.words:
        try:
            work += 64 + 2 * Instruction.decode(w).iterations
        except ValueError:          # an illegal word: the core stops on it at once
            work += 64
    return 200_000 + 2 * work + 4 * len(seg.data) + 8 * seg.n_results


def split_layers(words: list[int], layers: list[str], data: list[int]) -> list[LayerSegment]:
    """Cut a program at its HALTs (one per layer)."""
    segments, cur, pos, n_res, name = [], [], 0, 0, None
    d0 = 0
    for w, layer in zip(words, layers):
        cur.append(w)
        if opcode_of(w) == Opcode.HALT.value:
            segments.append(LayerSegment(name or layer, cur, data[d0:pos], n_res))
            cur, d0, n_res, name = [], pos, 0, None
            continue
        insn = Instruction.decode(w)
        if name is None and layer not in ("input",):
            name = layer
        if insn.opcode is Opcode.LOAD:
            pos += insn.iterations
        elif insn.opcode is Opcode.STORE:
            n_res += insn.iterations
    if cur:
        segments.append(LayerSegment(name or "tail", cur, data[d0:pos], n_res))
    if pos != len(data):
        raise ValueError(f"the program's LOADs take {pos} data words but {len(data)} were given")
    return segments
