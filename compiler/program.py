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

    magic       8 bytes   b"FXPGPROG"
    version     u16       FORMAT_VERSION
    hlen        u32       length of the header
    header      hlen      UTF-8 JSON: config, insn_bits, bus_width, counts, section
                          sizes, layouts, formats, layers (instruction ranges per
                          layer), the input's pieces and unfolding, the off-chip maps
    insn_table  zlib      the distinct instruction words, INSN_BYTES each, in order of
                          first use
    insn_index  zlib      n_insns x i32: each instruction's index in ``insn_table``
                          less the previous one's (the first's less 0)
    data_table  zlib      the distinct constant data words, BUS_BYTES each, in order
                          of first use
    data_index  zlib      n_data x i32: each constant word's index in ``data_table``,
                          as differences likewise; the image's words go in where
                          ``input_pieces`` say, words of off-chip maps where
                          ``host_pieces`` say
    sha256      32 bytes  of everything above

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
Version 5 writes each distinct instruction and data word once: a network repeats a
few thousand instructions over its tiles, reloads its weight tiles for every band of
rows and fills accumulators with the same bias word, so the indices (mostly runs of
0 and 1 as differences) compress to a small part of the words they stand for.
Version 6 adds ``batch``, the images per run (``fxpgen compile --batch``): the data
stream takes that many images one after another, the result stream gives that many
output maps. A version 5 file loads as a batch of 1.

Loading checks the magic, version and checksum, and (when asked) that the program
was built for the given core configuration.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import itertools
import json
import struct
import zlib
from pathlib import Path
from typing import Callable, Hashable, Iterator

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
FORMAT_VERSION = 6
#: The versions :func:`load_program` reads: version 5 is version 6 with a batch of 1.
READ_VERSIONS = (5, 6)

#: The compressed sections after the header, in file order.
SECTIONS = ("insn_table", "insn_index", "data_table", "data_index")
_CHUNK = 1 << 20          # items converted at a time: bounds the temporary bytes objects

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
    #: The constant data words' table section (each distinct word, ``size`` bytes)
    #: and each word's place in it: :attr:`consts` unpacks them when first asked
    #: (an engine that streams no data, ``--engine model``, never does).
    const_table: tuple[bytes, int, np.ndarray]
    header: dict
    #: The distinct instruction words and each instruction's place among them, as the
    #: file stores them (the cycle model times each distinct word once).
    word_table: tuple[list[int], np.ndarray] | None = None

    @functools.cached_property
    def consts(self) -> list[int]:
        """The constant data words, in stream order."""
        table, size, index = self.const_table
        return _split_words(memoryview(table), size)[index].tolist()

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
                       host_buffers=[HostBuffer(*b) for b in self.header["host_buffers"]],
                       batch=self.batch)

    @property
    def batch(self) -> int:
        """Images per run (1 for a version 5 file)."""
        return self.header.get("batch", 1)


def _layer_ranges(layers: list[str]) -> list[dict]:
    out, start = [], 0
    for name, run in itertools.groupby(layers):
        n = len(list(run))
        out.append({"layer": name, "start": start, "end": start + n})
        start += n
    return out


def _distinct(items: list, encode: Callable[[object], Hashable] = lambda v: v) -> tuple[list, np.ndarray]:
    """The distinct values ``encode`` gives the items, in order of first use, and the
    index (int32) of each item's value among them: ``[values[k] for k in index]`` is
    ``[encode(i) for i in items]``. ``encode`` runs once per distinct object of a chunk
    of items (found by identity, in numpy): a program repeats the same instruction-word
    and weight-word objects millions of times."""
    code_of: dict = {}
    index = np.empty(len(items), np.int32)
    for start in range(0, len(items), _CHUNK):
        part = items[start:start + _CHUNK]
        _, first, inverse = np.unique(np.fromiter(map(id, part), np.int64, len(part)),
                                      return_index=True, return_inverse=True)
        codes = [0] * len(first)
        at = first.tolist()
        # In order of first use, so that new values take the next codes.
        for u in np.argsort(first, kind="stable").tolist():
            codes[u] = code_of.setdefault(encode(part[at[u]]), len(code_of))
        index[start:start + len(part)] = np.array(codes, np.int32)[inverse.reshape(-1)]
    return list(code_of), index


def _zlib(parts: Iterator[bytes]) -> bytes:
    """zlib (level 1: the sections are mostly runs, fast to find) of the parts' bytes."""
    z = zlib.compressobj(1)
    return b"".join([z.compress(part) for part in parts]) + z.flush()


def _table_bytes(values: list[int], size: int) -> Iterator[bytes]:
    """The values as little-endian words of ``size`` bytes, a chunk at a time."""
    for i in range(0, len(values), _CHUNK):
        yield b"".join([v.to_bytes(size, "little") for v in values[i:i + _CHUNK]])


def _index_bytes(index: np.ndarray) -> Iterator[bytes]:
    """The indices as i32 differences from the one before, a chunk at a time."""
    prev = 0
    for i in range(0, len(index), _CHUNK):
        part = index[i:i + _CHUNK]
        yield np.diff(part, prepend=prev).astype("<i4").tobytes()
        prev = int(part[-1])


def save_program(path: Path, low: Lowered, extra: dict | None = None) -> dict:
    """Write ``program.fxp`` for a lowered program; returns its header."""
    cfg = low.cfg
    bus_bytes = (cfg.bus_width + 7) // 8
    insn_table, insn_index = _distinct(low.words)
    data_table, data_index = _distinct(low.consts)
    sections = [_zlib(_table_bytes(insn_table, INSN_BYTES)), _zlib(_index_bytes(insn_index)),
                _zlib(_table_bytes(data_table, bus_bytes)), _zlib(_index_bytes(data_index))]
    header = {
        "format": FORMAT_VERSION,
        "config": cfg.as_dict(),
        "insn_bits": INSN_BITS,
        "bus_width": cfg.bus_width,
        "n_insns": len(low.words),
        "n_data": len(low.consts),
        "n_insn_table": len(insn_table),
        "n_data_table": len(data_table),
        "section_bytes": dict(zip(SECTIONS, map(len, sections))),
        "input_pieces": [[p.at, p.first, p.count] for p in low.input_pieces],
        "input_unfold": low.input_unfold.header() if low.input_unfold else None,
        "host_pieces": [[p.at, p.after_inputs, p.buffer, p.offset, p.count, p.run, p.stride]
                        for p in low.host_pieces],
        "host_buffers": [[b.name, b.result_at, b.count] for b in low.host_buffers],
        "input_layout": dataclasses.asdict(low.input_layout),
        "output_layout": dataclasses.asdict(low.output_layout),
        "input_signed": low.input_signed,
        "output_signed": low.output_signed,
        "batch": low.batch,
        "layers": _layer_ranges(low.layers),
        "notes": low.notes,
        **(extra or {}),
    }
    hbytes = json.dumps(header, sort_keys=True).encode()
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for part in [MAGIC, struct.pack("<HI", FORMAT_VERSION, len(hbytes)), hbytes, *sections]:
            digest.update(part)
            f.write(part)
        f.write(digest.digest())
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
    if version not in READ_VERSIONS:
        raise ProgramFormatError(f"{path}: program format version {version}, this fxpgen reads "
                                 f"versions {', '.join(map(str, READ_VERSIONS))}: recompile the model")
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
    view = memoryview(body)
    sections = {}
    for name in SECTIONS:
        size = header["section_bytes"][name]
        sections[name] = zlib.decompress(view[off:off + size])
        off += size
    if off != len(body):
        raise ProgramFormatError(f"{path}: the sections do not add up to the file's length")
    bus_bytes = (built_for.bus_width + 7) // 8
    index = _index(path, "instruction", sections["insn_table"], sections["insn_index"],
                   INSN_BYTES, header["n_insn_table"], header["n_insns"])
    table = _split_words(memoryview(sections["insn_table"]), INSN_BYTES)
    const_index = _index(path, "data", sections["data_table"], sections["data_index"],
                         bus_bytes, header["n_data_table"], header["n_data"])
    return Program(built_for, table[index].tolist(), (sections["data_table"], bus_bytes, const_index),
                   header, (table.tolist(), index))


def _index(path: Path, what: str, table: bytes, deltas: bytes, size: int, n_table: int,
           n: int) -> np.ndarray:
    """From a table section and its index section, the place of each word among the
    table's distinct words (:func:`save_program`), checked against the header."""
    if len(table) != n_table * size or len(deltas) != 4 * n:
        raise ProgramFormatError(f"{path}: the {what} sections do not hold the header's {n_table} "
                                 f"distinct words and {n} indices")
    index = np.cumsum(np.frombuffer(deltas, "<i4"), dtype=np.int64)
    if n and not (0 <= index.min() and index.max() < n_table):
        raise ProgramFormatError(f"{path}: an index of the {what} section points outside its table")
    return index


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


def _split_words(raw: memoryview, size: int) -> np.ndarray:
    """Little-endian words of ``size`` bytes, as integers in an object array (so that
    an index array gathers them)."""
    words = np.empty(len(raw) // size, object)
    words[:] = list(map(int.from_bytes, np.frombuffer(raw, f"V{size}").tolist(), itertools.repeat("little")))
    return words


def listing(low: Lowered) -> str:
    """The disassembly, one instruction a line, prefixed with its index and layer."""
    from fxpgen.asm import format_instruction
    width = max((len(n) for n in low.layers), default=5)
    texts, index = _distinct(low.words, lambda word: format_instruction(Instruction.decode(word)))
    lines = [f"# fxpgen program: {len(low.words)} instructions, "
             f"{low.cfg.rows}x{low.cfg.cols} array"]
    lines += [f"{i:6d}  {layer:<{width}}  {texts[k]}" for i, (k, layer) in enumerate(zip(index.tolist(), low.layers))]
    return "\n".join(lines) + "\n"


# --- the quantized graph on disk --------------------------------------------------------

_OPS = {"conv": QConv, "maxpool": QMaxPool, "avgpool": QAvgPool, "add": QAdd, "concat": QConcat,
        "slice": QSlice, "shuffle": QShuffle, "resize": QResize, "lut": QLut, "mul": QMul}
_KIND = {v: k for k, v in _OPS.items()}


def save_qgraph(directory: Path, qg: QGraph) -> None:
    """Write ``qgraph.json`` (structure) and ``qgraph.npz`` (integer arrays, each in the
    narrowest signed type that holds it; loaded as int64)."""
    write_qgraph(directory, *encode_qgraph(qg))


def write_qgraph(directory: Path, text: str, npz: bytes) -> None:
    """Write the files of :func:`encode_qgraph`'s result."""
    Path(directory, "qgraph.json").write_text(text)
    Path(directory, "qgraph.npz").write_bytes(npz)


def _narrowest(a: np.ndarray) -> np.ndarray:
    """``a`` in the narrowest signed integer type holding its values: weights are
    bytes, and compressing them as int64 took most of the write."""
    for t in (np.int8, np.int16, np.int32):
        if not a.size or (np.iinfo(t).min <= a.min() and a.max() <= np.iinfo(t).max):
            return a.astype(t)
    return a


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
                arrays[key] = _narrowest(np.asarray(v, np.int64))
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
                kw[k] = np.asarray(arrays[v["array"]], np.int64)
            elif isinstance(v, list):
                kw[k] = tuple(v)
            else:
                kw[k] = v
        ops.append(cls(**kw))
    return QGraph(tensors, ops, doc["input"], doc["output"], doc.get("meta", {}))
