"""A compiled program cut at its HALTs: the unit the RTL engines run and time.

Every layer of a compiled network ends with a HALT, so the core's performance
counters (cleared when a program starts, frozen by HALT) measure each layer; the
engines send one segment at a time and read the counters at each HALT.

A program with off-chip maps (:mod:`fxpgen.compiler.offchip`) takes some data words
from its own earlier results: the engines play the host that keeps those maps,
filling each segment's referenced words (:attr:`LayerSegment.refs`,
:func:`resolve_data`) from the results of the segments before it. A segment never
references its own results, so no engine waits on itself."""

from __future__ import annotations

from dataclasses import dataclass, field

from fxpgen.isa import Instruction, Opcode, opcode_of

__all__ = ["LayerSegment", "split_layers", "resolve_data", "cycle_budget", "with_input_halt"]


@dataclass
class LayerSegment:
    """Instructions up to and including one HALT, with the data words they consume
    and the number of result words they produce; ``refs`` are ``(data word, result
    word, count, run, stride)``: data word ``data word + k`` of the segment is result
    word ``result word + (k // run) * stride + k % run`` of the earlier segments of
    the same run (all their results, in order), zero in ``data`` until filled."""

    layer: str
    words: list[int]
    data: list[int]
    n_results: int
    refs: list[tuple[int, int, int, int, int]] = field(default_factory=list)


def resolve_data(seg: LayerSegment, results: list[int]) -> list[int]:
    """``seg``'s data words with its references filled from ``results``, the result
    words of the run's segments before it."""
    if not seg.refs:
        return seg.data
    data = list(seg.data)
    for at, first, count, run, stride in seg.refs:
        last = _last_word(first, count, run, stride)
        if last >= len(results):
            raise ValueError(f"segment {seg.layer} references result word {last}, "
                             f"only {len(results)} came before it")
        for k0 in range(0, count, run):
            src = first + (k0 // run) * stride
            data[at + k0:at + k0 + run] = results[src:src + min(run, count - k0)]
    return data


def _last_word(first: int, count: int, run: int, stride: int) -> int:
    """The last result word a reference reads."""
    return first + ((count - 1) // run) * stride + (count - 1) % run


def cycle_budget(seg: LayerSegment, stall_prob: float = 0.0) -> int:
    """The cycle limit of one segment on the RTL: every instruction serialised
    (1,280 cycles each, plus 20 per iteration: per vector of a MATMUL, per word of
    a LOAD or STORE), 20 per data and result word, and 200,000 cycles of slack, all
    divided by ``1 - stall_prob`` (the probability, in [0, 1), of a stall on a
    stream in a cycle). Far above what a legal segment takes, so it only stops a
    core that hangs; a long band matmul streaming thousands of vectors stays
    inside it."""
    if not 0.0 <= stall_prob < 1.0:
        raise ValueError(f"stall_prob must be in [0, 1), not {stall_prob}")
    work = 0
    for w in seg.words:
        try:
            work += 1280 + 20 * Instruction.decode(w).iterations
        except ValueError:          # an illegal word: the core stops on it at once
            work += 1280
    return int((200_000 + work + 20 * (len(seg.data) + max(seg.n_results, 0))) / (1.0 - stall_prob))


def with_input_halt(instructions: list[Instruction], layers: list[str]
                    ) -> tuple[list[Instruction], list[str]]:
    """A compiled program with one more HALT after its input load (the last
    instruction of layer ``"input"``), so the core's counters measure the input
    load apart from the first layer."""
    insns, names = list(instructions), list(layers)
    cut = max(i for i, name in enumerate(names) if name == "input") + 1
    insns.insert(cut, Instruction(Opcode.HALT))
    names.insert(cut, "input")
    return insns, names


def split_layers(words: list[int], layers: list[str], data: list[int],
                 refs: list[tuple[int, int, int, int, int]] = ()) -> list[LayerSegment]:
    """Cut a program at its HALTs (one per layer); ``refs`` are the program's ``(data
    word, result word, count, run, stride)`` references
    (:meth:`~fxpgen.compiler.lower.Lowered.result_refs`), given to the segments that
    consume them. Raise ValueError when a segment references result words that no
    earlier segment produces, or a reference spans two segments."""
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
    if refs:
        _give_refs(segments, refs)
    return segments


def _give_refs(segments: list[LayerSegment], refs) -> None:
    """Each reference to the segment whose data holds it, in its coordinates."""
    starts, d0, r0 = [], 0, 0
    for seg in segments:
        starts.append((d0, r0))
        d0, r0 = d0 + len(seg.data), r0 + seg.n_results
    k = 0
    for at, first, count, run, stride in refs:
        while k + 1 < len(segments) and starts[k + 1][0] <= at:
            k += 1
        seg, (d0, r0) = segments[k], starts[k]
        if at + count > d0 + len(seg.data):
            raise ValueError(f"a reference at data word {at} spans segments {k} and {k + 1}")
        if _last_word(first, count, run, stride) >= r0:
            raise ValueError(f"segment {k} ({seg.layer}) references result word "
                             f"{_last_word(first, count, run, stride)}, the segments before it "
                             f"produce {r0}")
        seg.refs.append((at - d0, first, count, run, stride))
