"""Program files: what ``fxpgen compile`` writes and ``fxpgen run`` reads.

A program directory holds:

- ``program.fxp``: the binary program (format below);
- ``listing.txt``: the disassembly, each line with the layer it serves;
- ``qgraph.json`` + ``qgraph.npz``: the quantized graph (for the golden model);
- ``report.json``: the quantization report;
- ``meta.json``: the program header, for people and scripts;
- ``manifest.json``: the SHA-256 of each file above, written last, so that the folder
  is checked as one unit (a ``program.fxp`` from another compile next to this
  quantized graph is refused, see :func:`check_manifest`).

``program.fxp`` layout (all integers little-endian)::

    magic      8 bytes   b"FXPGPROG"
    version    u16       FORMAT_VERSION
    hlen       u32       length of the header
    header     hlen      UTF-8 JSON: config, insn_bits, bus_width, counts, layouts,
                         formats, layers (instruction ranges per layer), the
                         input's pieces and unfolding, the off-chip maps
    insns      n_insns  x INSN_BYTES     instruction words
    data       data_bytes                zlib stream of n_data x BUS_BYTES constant
                                         data words; the input image's words go in
                                         where ``input_pieces`` say, words of
                                         off-chip maps where ``host_pieces`` say
    sha256     32 bytes  of everything above

The data stream, in order, is runs of constant words, image words and host-buffer
words: ``input_pieces`` ``[at, first, count]`` put image words ``[first, first +
count)`` before constant word ``at``; ``host_pieces`` ``[at, after_inputs, buffer,
offset, count, run, stride]`` put ``count`` words of host buffer ``buffer``, word k
being ``offset + (k // run) * stride + k % run``, before constant word ``at``, after
the first ``after_inputs`` image pieces. The
result stream is the output map's words but for the runs of ``host_buffers``
``[name, result_at, count]``: host buffer k is result words ``[result_at, result_at
+ count)``, the off-chip map ``name``'s interior pixels row-major, which only
later layers (later HALT segments) read (:mod:`fxpgen.compiler.offchip`).

Version 3 compresses the data words: most are weight rows that fill a quarter of a
bus word, and the rest would be zeros on disk. Version 4 adds the off-chip maps.

Loading checks the magic, version and checksum, and (when asked) that the program
was built for the given core configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from fxpgen.config import CoreConfig
from fxpgen.isa import INSN_BITS, INSN_BYTES, Instruction
from fxpgen.numerics import Format

from .emit import HostBuffer, HostPiece, InputPiece
from .layout import MapLayout
from .lower import Lowered
from .unfold import InputUnfold
from .qgraph import (QAdd, QAvgPool, QConcat, QConv, QGraph, QLut, QMaxPool, QMul, QResize, QShuffle, QSlice,
                     QTensor)

__all__ = ["FORMAT_VERSION", "ProgramFormatError", "save_program", "load_program", "Program",
           "save_qgraph", "encode_qgraph", "write_qgraph", "load_qgraph", "listing", "PROGRAM_FILES",
           "MANIFEST", "write_manifest", "check_manifest"]

MAGIC = b"FXPGPROG"
FORMAT_VERSION = 4

#: The files ``fxpgen compile`` writes into a program folder.
PROGRAM_FILES = ("program.fxp", "listing.txt", "qgraph.json", "qgraph.npz", "report.json",
                 "meta.json", "manifest.json")
MANIFEST = "manifest.json"


class ProgramFormatError(ValueError):
    """A program file is damaged, of another version, or for another core."""


@dataclasses.dataclass
class Program:
    """A loaded program."""

    cfg: CoreConfig
    words: list[int]
    consts: list[int]
    header: dict

    @property
    def input_layout(self) -> MapLayout:
        return MapLayout(**{**self.header["input_layout"],
                            "border": tuple(self.header["input_layout"]["border"])})

    @property
    def output_layout(self) -> MapLayout:
        return MapLayout(**{**self.header["output_layout"],
                            "border": tuple(self.header["output_layout"]["border"])})

    @property
    def layers(self) -> list[str]:
        """The source layer of every instruction (the header stores ranges)."""
        out = [""] * len(self.words)
        for r in self.header["layers"]:
            out[r["start"]:r["end"]] = [r["layer"]] * (r["end"] - r["start"])
        return out

    def lowered_view(self) -> Lowered:
        """The parts of a :class:`Lowered` needed to pack inputs and decode outputs."""
        pieces = [InputPiece(*p) for p in self.header["input_pieces"]]
        unfold = self.header.get("input_unfold")
        return Lowered(self.cfg, [], [], self.consts, pieces, self.input_layout,
                       self.output_layout, self.header["input_signed"], self.header["output_signed"],
                       input_unfold=InputUnfold(**unfold) if unfold else None,
                       host_pieces=[HostPiece(*p) for p in self.header["host_pieces"]],
                       host_buffers=[HostBuffer(*b) for b in self.header["host_buffers"]])


def _layer_ranges(layers: list[str]) -> list[dict]:
    out = []
    for i, name in enumerate(layers):
        if out and out[-1]["layer"] == name and out[-1]["end"] == i:
            out[-1]["end"] = i + 1
        else:
            out.append({"layer": name, "start": i, "end": i + 1})
    return out


def _instruction_key(insn: Instruction) -> tuple:
    """What an instruction's word and text depend on: equal keys, equal words."""
    return (insn.opcode, tuple(sorted(insn.params.items())), insn.count0, insn.count1,
            insn.x, insn.y, insn.z)


def _per_distinct(instructions: list[Instruction], fn: Callable[[Instruction], object]) -> list:
    """``[fn(i) for i in instructions]``, calling ``fn`` once per distinct instruction:
    a network repeats a few thousand instructions over its tiles, and encoding one
    costs tens of microseconds."""
    seen: dict[tuple, object] = {}
    # The lowering repeats instruction objects (a conv's chunks): their id is the cheap key.
    by_id: dict[int, object] = {}
    out = []
    for insn in instructions:
        if id(insn) not in by_id:
            key = _instruction_key(insn)
            if key not in seen:
                seen[key] = fn(insn)
            by_id[id(insn)] = seen[key]
        out.append(by_id[id(insn)])
    return out


def _compressed_words(words: list[int], nbytes: int, chunk: int = 1 << 20) -> bytes:
    """zlib (level 1) of the words, ``nbytes`` little-endian each, encoded a chunk at a
    time: a network's tens of millions of words as bytes objects at once take gigabytes."""
    z = zlib.compressobj(1)
    out = [z.compress(b"".join(w.to_bytes(nbytes, "little") for w in words[i:i + chunk]))
           for i in range(0, len(words), chunk)]
    return b"".join(out) + z.flush()


def save_program(path: Path, low: Lowered, extra: dict | None = None) -> dict:
    """Write ``program.fxp`` for a lowered program; returns its header."""
    cfg = low.cfg
    bus_bytes = (cfg.bus_width + 7) // 8
    words = _per_distinct(low.instructions, lambda insn: insn.encode(cfg))
    insns = b"".join(w.to_bytes(INSN_BYTES, "little") for w in words)
    data = _compressed_words(low.consts, bus_bytes)
    header = {
        "format": FORMAT_VERSION,
        "config": cfg.as_dict(),
        "insn_bits": INSN_BITS,
        "bus_width": cfg.bus_width,
        "n_insns": len(low.instructions),
        "n_data": len(low.consts),
        "data_bytes": len(data),
        "input_pieces": [[p.at, p.first, p.count] for p in low.input_pieces],
        "input_unfold": dataclasses.asdict(low.input_unfold) if low.input_unfold else None,
        "host_pieces": [[p.at, p.after_inputs, p.buffer, p.offset, p.count, p.run, p.stride]
                        for p in low.host_pieces],
        "host_buffers": [[b.name, b.result_at, b.count] for b in low.host_buffers],
        "input_layout": dataclasses.asdict(low.input_layout),
        "output_layout": dataclasses.asdict(low.output_layout),
        "input_signed": low.input_signed,
        "output_signed": low.output_signed,
        "layers": _layer_ranges(low.layers),
        "notes": low.notes,
        **(extra or {}),
    }
    hbytes = json.dumps(header, sort_keys=True).encode()
    body = b"".join([MAGIC, struct.pack("<HI", FORMAT_VERSION, len(hbytes)), hbytes, insns, data])
    Path(path).write_bytes(body + hashlib.sha256(body).digest())
    return header


def load_program(path: Path, cfg: CoreConfig | None = None) -> Program:
    """Read and check ``program.fxp``; with ``cfg``, refuse a program built for another
    core configuration."""
    raw = Path(path).read_bytes()
    if len(raw) < len(MAGIC) + 6 + 32 or raw[:len(MAGIC)] != MAGIC:
        raise ProgramFormatError(f"{path}: not an fxpgen program (bad magic)")
    body, digest = raw[:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise ProgramFormatError(f"{path}: checksum mismatch: the file is damaged")
    version, hlen = struct.unpack_from("<HI", raw, len(MAGIC))
    if version != FORMAT_VERSION:
        raise ProgramFormatError(f"{path}: program format version {version}, this fxpgen reads "
                                 f"version {FORMAT_VERSION}: recompile the model")
    off = len(MAGIC) + 6
    header = json.loads(raw[off:off + hlen])
    off += hlen
    built_for = CoreConfig(**header["config"])
    if cfg is not None and cfg != built_for:
        diff = {k: (v, getattr(cfg, k)) for k, v in built_for.as_dict().items() if getattr(cfg, k) != v}
        raise ProgramFormatError(
            f"{path}: built for another core configuration: "
            + ", ".join(f"{k}={a} (this core: {b})" for k, (a, b) in diff.items())
            + "; recompile with the core's --rows/--cols/... options")
    if header["insn_bits"] != INSN_BITS:
        raise ProgramFormatError(f"{path}: instruction width {header['insn_bits']} != {INSN_BITS}")
    view = memoryview(raw)
    words = _split_words(view[off:off + header["n_insns"] * INSN_BYTES], INSN_BYTES)
    off += header["n_insns"] * INSN_BYTES
    bus_bytes = (built_for.bus_width + 7) // 8
    data = zlib.decompress(view[off:off + header["data_bytes"]])
    if len(data) != header["n_data"] * bus_bytes or off + header["data_bytes"] != len(body):
        raise ProgramFormatError(f"{path}: the data section does not hold the header's "
                                 f"{header['n_data']} words")
    return Program(built_for, words, _split_words(memoryview(data), bus_bytes), header)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_manifest(directory: Path) -> dict:
    """Write ``manifest.json``: the SHA-256 (hex) of every other file of
    :data:`PROGRAM_FILES` in ``directory``; returns it."""
    files = {name: _sha256(Path(directory, name)) for name in PROGRAM_FILES
             if name != MANIFEST and Path(directory, name).is_file()}
    doc = {"format": FORMAT_VERSION, "sha256": files}
    Path(directory, MANIFEST).write_text(json.dumps(doc, indent=1, sort_keys=True))
    return doc


def check_manifest(directory: Path) -> None:
    """Check a program folder against its ``manifest.json``: every file it lists
    present with the same SHA-256, and none of :data:`PROGRAM_FILES` added since.
    Raises :class:`ProgramFormatError` naming the file that differs."""
    path = Path(directory, MANIFEST)
    if not path.is_file():
        raise ProgramFormatError(f"{directory}: no {MANIFEST}, so its files cannot be checked "
                                 "as one program: recompile the model")
    try:
        listed = json.loads(path.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise ProgramFormatError(f"{path}: not an fxpgen manifest ({e})") from None
    for name in PROGRAM_FILES:
        file = Path(directory, name)
        if name == MANIFEST or (name not in listed and not file.exists()):
            continue
        if name not in listed:
            raise ProgramFormatError(f"{file}: not part of the compiled program (added after "
                                     "the compile): recompile the model")
        if not file.is_file():
            raise ProgramFormatError(f"{file}: missing from the program folder: recompile the model")
        if _sha256(file) != listed[name]:
            raise ProgramFormatError(f"{file}: differs from the file the compile wrote (checksum "
                                     "mismatch): the folder mixes compiles or was edited; "
                                     "recompile the model")


def _split_words(raw: memoryview, size: int) -> list[int]:
    """Little-endian words of ``size`` bytes, as integers."""
    return [int.from_bytes(raw[i:i + size], "little") for i in range(0, len(raw), size)]


def listing(low: Lowered) -> str:
    """The disassembly, one instruction a line, prefixed with its index and layer."""
    from fxpgen.asm import format_instruction
    width = max((len(n) for n in low.layers), default=5)
    texts = _per_distinct(low.instructions, lambda insn: format_instruction(insn.with_regions(low.cfg)))
    lines = [f"# fxpgen program: {len(low.instructions)} instructions, "
             f"{low.cfg.rows}x{low.cfg.cols} array"]
    lines += [f"{i:6d}  {layer:<{width}}  {text}" for i, (text, layer) in enumerate(zip(texts, low.layers))]
    return "\n".join(lines) + "\n"


# --- the quantized graph on disk --------------------------------------------------------

_OPS = {"conv": QConv, "maxpool": QMaxPool, "avgpool": QAvgPool, "add": QAdd, "concat": QConcat,
        "slice": QSlice, "shuffle": QShuffle, "resize": QResize, "lut": QLut, "mul": QMul}
_KIND = {v: k for k, v in _OPS.items()}


def save_qgraph(directory: Path, qg: QGraph) -> None:
    """Write ``qgraph.json`` (structure) and ``qgraph.npz`` (integer arrays)."""
    write_qgraph(directory, *encode_qgraph(qg))


def write_qgraph(directory: Path, text: str, npz: bytes) -> None:
    """Write the files of :func:`encode_qgraph`'s result."""
    Path(directory, "qgraph.json").write_text(text)
    Path(directory, "qgraph.npz").write_bytes(npz)


def encode_qgraph(qg: QGraph) -> tuple[str, bytes]:
    """The text of ``qgraph.json`` and the bytes of ``qgraph.npz``: most of the time
    goes to zlib, which releases the GIL, so a thread can encode while the lowering runs."""
    arrays, ops = {}, []
    for k, op in enumerate(qg.ops):
        d = {"kind": _KIND[type(op)]}
        for f in dataclasses.fields(op):
            v = getattr(op, f.name)
            if isinstance(v, np.ndarray):
                key = f"op{k}_{f.name}"
                arrays[key] = np.asarray(v, np.int64)
                d[f.name] = {"array": key}
            else:
                d[f.name] = list(v) if isinstance(v, tuple) else (int(v) if isinstance(v, np.integer) else v)
        ops.append(d)
    doc = {
        "input": qg.input, "output": qg.output, "meta": qg.meta,
        "tensors": {n: {"shape": list(t.shape), "signed": t.fmt.signed, "fl": int(t.fmt.fl)}
                    for n, t in qg.tensors.items()},
        "ops": ops,
    }
    npz = io.BytesIO()
    np.savez_compressed(npz, **arrays)
    return json.dumps(doc, indent=1), npz.getvalue()


def load_qgraph(directory: Path) -> QGraph:
    doc = json.loads(Path(directory, "qgraph.json").read_text())
    arrays = np.load(Path(directory, "qgraph.npz"))
    tensors = {n: QTensor(n, tuple(t["shape"]), Format(t["signed"], t["fl"]))
               for n, t in doc["tensors"].items()}
    ops = []
    for d in doc["ops"]:
        cls = _OPS[d.pop("kind")]
        kw = {}
        for k, v in d.items():
            if isinstance(v, dict) and "array" in v:
                kw[k] = arrays[v["array"]]
            elif isinstance(v, list):
                kw[k] = tuple(v)
            else:
                kw[k] = v
        ops.append(cls(**kw))
    return QGraph(tensors, ops, doc["input"], doc["output"], doc.get("meta", {}))
