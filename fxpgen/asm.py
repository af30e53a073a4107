"""Text assembler and disassembler for the fxpgen instruction set.

Both directions work from the declarations in :mod:`fxpgen.isa` (the ``Insn``
layout, ``PARAMS_VIEW`` and ``OPCODE_INFO``); nothing here knows a bit position.
Disassembling a word and assembling the text gives the same word back, for every
word.

Syntax
------
One instruction a line. ``#`` starts a comment; blank lines are ignored. A line is
an opcode mnemonic (any case) followed by whitespace-separated ``key=value`` items
(no spaces around ``=``) in any order:

- ``PARAM=VALUE`` for each field of the opcode's params view (see the opcode's
  section); omitted params are 0. Params that hold a memory take its name:
  ``mem=spad``, ``wbuf``, ``acc`` or ``table``. Signed params take negative values.
- ``count=C0xC1`` sets the loop counts (``count0`` inner, ``count1`` outer);
  ``count=C0`` means ``count1 = 1``, and an omitted count means ``count=1x1``. Since
  ``0x`` starts a hex number, a zero ``count0`` is written ``count=0x0xC1``.
- ``S=BASE[+S0i][+S1j][@MASK]`` for each address stream ``S`` (``x``, ``y``, ``z``)
  the opcode uses: row ``BASE + i0 * S0 + i1 * S1``, where ``i`` is the inner loop
  index ``i0`` and ``j`` the outer one ``i1``. ``MASK`` is the region mask, in
  binary (``@0b0011``), decimal or hex. Without ``@MASK`` the mask is derived from
  the rows the loops reach, which needs the ``CoreConfig``. Every stream the opcode
  reads or writes must be given (REQUANT's ``y`` only with ``residual=1``).
- ``unused.S=...`` sets the fields of a stream the opcode ignores. The
  disassembler prints it only when those fields are not zero, so that no bit is
  lost; a plain ``S=...`` for such a stream is an error.

Numbers are decimal, ``0x`` hex or ``0b`` binary. ``.word VALUE`` emits one raw
instruction word; the disassembler prints every word that does not decode to an
instruction (an illegal opcode, or bits set outside the opcode's fields) that way,
with a comment saying why.

The disassembler prints the canonical form: params in declaration order with
zero ones left out, ``count=C0xC1``, each stream the opcode uses with its base,
its non-zero strides and its mask. Example::

    matmul bank=1 accumulate=1 act_signed=1 count=64x8 x=0+1i+64j@0b0001 z=512+1i+64j@0b0010

Errors in the text raise :class:`AsmError`, which names the line, the offending
text and what is wrong.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from amaranth.hdl import Shape

from .config import REGIONS, CoreConfig
from .isa import (
    ADDR_BITS, COUNT_MAX, INSN_BITS, OPCODE_INFO, PARAM_ENUMS, PARAMS_VIEW, Addr, Instruction, Opcode,
    Params, layout_fields,
)

__all__ = [
    "AsmError", "ParamField", "STREAMS", "UNUSED_PREFIX", "param_fields", "parse_line",
    "format_instruction", "format_word", "assemble", "disassemble",
]

#: Address stream names, in word order.
STREAMS = ("x", "y", "z")
#: Key prefix for a stream the opcode ignores (``unused.y=...``).
UNUSED_PREFIX = "unused."

_WORD_HEX_DIGITS = (INSN_BITS + 3) // 4
_ADDR_MAX = (1 << ADDR_BITS) - 1
_MASK_MAX = (1 << REGIONS) - 1

_UNUM = r"(?:0x[0-9a-f]+|0b[01]+|[0-9]+)"
_NUMBER_RE = re.compile(rf"-?{_UNUM}")
_COUNT_RE = re.compile(rf"({_UNUM})(?:x({_UNUM}))?")
_TERM_RE = re.compile(rf"({_UNUM})?([ij])?")
# Spaces around ``+`` and ``@`` inside an operand would split its token; glue them back.
_GLUE_RE = re.compile(r"\s*([+@])\s*")


class AsmError(ValueError):
    """A mistake in assembler text.

    ``lineno`` is 1-based (None when unknown), ``line`` the whole source line,
    ``token`` the offending part of it and ``reason`` what is wrong.
    """

    def __init__(self, reason: str, *, lineno: int | None = None, line: str = "",
                 token: str = ""):
        self.reason = reason
        self.lineno = lineno
        self.line = line
        self.token = token
        where = f"line {lineno}" if lineno is not None else "assembler"
        message = f"{where}: {reason}"
        if token and token != line.strip():
            message += f" (at `{token}`)"
        if line.strip():
            message += f"\n    {line.strip()}"
        super().__init__(message)


class _Bad(Exception):
    """A token-level error; parse_line adds the line context."""


@dataclass(frozen=True)
class ParamField:
    """One field of an opcode's params view: bit ``offset`` and ``width`` inside the
    params field, signedness, and the enum class for fields that hold one (``Mem``)."""

    name: str
    offset: int
    width: int
    signed: bool
    enum: type | None = None

    @property
    def min(self) -> int:
        """Smallest encodable value."""
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        """Largest encodable value."""
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def type_name(self) -> str:
        """``unsigned(n)``, ``signed(n)`` or the enum's name."""
        if self.enum is not None:
            return self.enum.__name__
        return f"{'signed' if self.signed else 'unsigned'}({self.width})"

    def describe(self) -> str:
        """The accepted values, for error messages and docs."""
        if self.enum is not None:
            return f"{self.enum.__name__}: " + "|".join(m.name.lower() for m in self.enum)
        return f"{self.type_name}, {self.min}..{self.max}"


@lru_cache(maxsize=None)
def param_fields(opcode: Opcode) -> tuple[ParamField, ...]:
    """The fields of the params view ``opcode`` reads, in declaration order (empty
    for opcodes without params)."""
    view = PARAMS_VIEW.get(Opcode(opcode))
    if view is None:
        return ()
    fields = []
    for name, offset, width, shape in layout_fields(Params.as_shape()[view].shape):
        fields.append(ParamField(name, offset, width, Shape.cast(shape).signed,
                                 PARAM_ENUMS.get(name)))
    return tuple(fields)


# --- parsing -------------------------------------------------------------------------


def _unsigned(text: str) -> int:
    if text.startswith("0x"):
        return int(text[2:], 16)
    if text.startswith("0b"):
        return int(text[2:], 2)
    return int(text, 10)


def _number(text: str, what: str) -> int:
    if not _NUMBER_RE.fullmatch(text):
        raise _Bad(f"{what}: `{text}` is not a number (decimal, 0x hex or 0b binary)")
    if text.startswith("-"):
        return -_unsigned(text[1:])
    return _unsigned(text)


def _in_range(value: int, lo: int, hi: int, what: str) -> int:
    if not lo <= value <= hi:
        raise _Bad(f"{what}={value} is out of range {lo}..{hi}")
    return value


def _param_value(field: ParamField, text: str) -> int:
    if field.enum is not None:
        for member in field.enum:
            if member.name.lower() == text:
                return member.value
        if not _NUMBER_RE.fullmatch(text):
            raise _Bad(f"{field.name}: `{text}` is not a {field.describe()}")
    value = _number(text, field.name)
    if not field.min <= value <= field.max:
        raise _Bad(f"{field.name}={value} is out of range for {field.describe()}")
    return value


def _count(text: str) -> tuple[int, int]:
    m = _COUNT_RE.fullmatch(text)
    if not m:
        raise _Bad(f"count: `{text}` is not C0xC1 or C0")
    c0 = _in_range(_unsigned(m[1]), 0, COUNT_MAX, "count0")
    c1 = _in_range(_unsigned(m[2]), 0, COUNT_MAX, "count1") if m[2] else 1
    return c0, c1


def _operand(stream: str, text: str) -> Addr:
    terms, at, mask_text = text.partition("@")
    form = f"{stream}: `{text}` is not BASE[+S0i][+S1j][@MASK]"
    values = {}
    for term in terms.split("+"):
        m = _TERM_RE.fullmatch(term)
        if not term or not m:
            raise _Bad(form)
        kind = {"i": "stride0", "j": "stride1", None: "base"}[m[2]]
        if kind in values:
            raise _Bad(f"{stream}: {kind} given twice in `{text}`")
        values[kind] = _in_range(_unsigned(m[1]) if m[1] else 1, 0, _ADDR_MAX,
                                 f"{stream}.{kind}")
    regions = None
    if at:
        if not mask_text:
            raise _Bad(form)
        regions = _in_range(_number(mask_text, f"{stream} mask"), 0, _MASK_MAX,
                            f"{stream} mask")
    return Addr(values.get("base", 0), values.get("stride0", 0), values.get("stride1", 0),
                regions)


def _valid_keys(opcode: Opcode) -> str:
    info = OPCODE_INFO[opcode]
    names = [f.name for f in param_fields(opcode)]
    used = [n for n in names if n in info.params]
    ignored = [n for n in names if n not in info.params]
    text = ", ".join(used + ["count"] + [s for s in STREAMS if s in info.streams])
    if ignored:
        text += f" (also accepted, ignored by {opcode.name}: {', '.join(ignored)})"
    return text


def parse_line(line: str, lineno: int = 1) -> Instruction | int | None:
    """Parse one line of assembler text.

    Returns None for a blank or comment-only line, an ``int`` for a ``.word`` line
    and an :class:`~fxpgen.isa.Instruction` otherwise. Params the line leaves out
    are 0 (every field of the opcode's params view is present in the result). A
    stream given without ``@MASK`` has ``regions=None`` (to be derived); a stream the
    instruction does not touch and that the line leaves out is all zero. Raises
    :class:`AsmError` on any mistake.
    """
    code = _GLUE_RE.sub(r"\1", line.split("#", 1)[0]).strip()
    if not code:
        return None

    def error(reason: str, token: str = "") -> AsmError:
        return AsmError(reason, lineno=lineno, line=line, token=token)

    head, *tokens = code.split()
    mnemonic = head.lower()
    if mnemonic == ".word":
        if len(tokens) != 1:
            raise error(".word takes exactly one value", code)
        try:
            value = _number(tokens[0].lower(), ".word")
        except _Bad as e:
            raise error(str(e), tokens[0]) from None
        if not 0 <= value < (1 << INSN_BITS):
            raise error(f".word {tokens[0]} does not fit in an unsigned {INSN_BITS}-bit "
                        "instruction word", tokens[0])
        return value
    try:
        opcode = Opcode[mnemonic.upper()]
    except KeyError:
        valid = ", ".join(op.name.lower() for op in Opcode)
        raise error(f"unknown opcode `{head}` (valid: {valid}, .word)", head) from None

    info = OPCODE_INFO[opcode]
    fields = {f.name: f for f in param_fields(opcode)}
    params: dict[str, int] = {}
    counts = (1, 1)
    addrs: dict[str, Addr] = {}
    seen: set[str] = set()
    for token in tokens:
        key, eq, value = token.lower().partition("=")
        if not eq or not key or not value:
            raise error(f"expected key=value, got `{token}`", token)
        stream = key[len(UNUSED_PREFIX):] if key.startswith(UNUSED_PREFIX) else key
        if key in seen or (stream in STREAMS and stream in seen):
            raise error(f"{stream} given twice", token)
        seen.add(stream if stream in STREAMS else key)
        try:
            if key in fields:
                params[key] = _param_value(fields[key], value)
            elif key == "count":
                counts = _count(value)
            elif key in STREAMS:
                if key not in info.streams:
                    uses = ", ".join(info.streams) or "no streams"
                    raise _Bad(f"stream {key} is not used by {opcode.name} (it uses {uses}); "
                               f"write {UNUSED_PREFIX}{key}=... to set the ignored field anyway")
                addrs[key] = _operand(key, value)
            elif key.startswith(UNUSED_PREFIX) and stream in STREAMS:
                if stream in info.streams:
                    raise _Bad(f"stream {stream} is used by {opcode.name}: write {stream}=...")
                addrs[stream] = _operand(stream, value)
            else:
                raise _Bad(f"{opcode.name} has no parameter `{key}`; "
                           f"it takes {_valid_keys(opcode)}")
        except _Bad as e:
            raise error(str(e), token) from None

    params = {name: params.get(name, 0) for name in fields}
    insn = Instruction(opcode, params, *counts)
    streams = {}
    for s in STREAMS:
        touched = insn.stream_mem(s) is not None
        if touched and s not in addrs:
            _, access = info.streams[s]
            verb = "reads" if access == "r" else "writes"
            raise error(f"missing operand {s}=BASE[+S0i][+S1j][@MASK] ({opcode.name} {verb} "
                        f"stream {s})", code)
        a = addrs.get(s, Addr(regions=0))
        if a.regions is None and not touched:
            a = Addr(a.base, a.stride0, a.stride1, 0)
        streams[s] = a
    return Instruction(opcode, params, *counts, **streams)


# --- formatting ----------------------------------------------------------------------


def _format_addr(a: Addr) -> str:
    text = str(a.base)
    if a.stride0:
        text += f"+{a.stride0}i"
    if a.stride1:
        text += f"+{a.stride1}j"
    if a.regions is not None:
        text += f"@0b{a.regions:0{REGIONS}b}"
    return text


def format_instruction(insn: Instruction) -> str:
    """One line of canonical assembler text for ``insn`` (see the module docstring).

    Params equal to 0 are left out; a stream with ``regions=None`` is printed
    without ``@MASK``. Raises ValueError for params the opcode's view lacks.
    """
    info = OPCODE_INFO[insn.opcode]
    fields = param_fields(insn.opcode)
    unknown = set(insn.params) - {f.name for f in fields}
    if unknown:
        raise ValueError(f"{insn.opcode.name} has no parameter(s) {sorted(unknown)}")
    parts = [insn.opcode.name.lower()]
    for f in fields:
        value = insn.params.get(f.name, 0)
        if value:
            named = f.enum is not None and value in {m.value for m in f.enum}
            parts.append(f"{f.name}={f.enum(value).name.lower() if named else value}")
    if info.streams or (insn.count0, insn.count1) != (1, 1):
        c0 = "0x0" if insn.count0 == 0 else str(insn.count0)
        parts.append(f"count={c0}x{insn.count1}")
    for s in STREAMS:
        a = getattr(insn, s)
        nonzero = bool(a.base or a.stride0 or a.stride1 or a.regions)
        if insn.stream_mem(s) is not None or nonzero:
            prefix = "" if s in info.streams else UNUSED_PREFIX
            parts.append(f"{prefix}{s}={_format_addr(a)}")
    return " ".join(parts)


def format_word(word: int) -> str:
    """Canonical text for one instruction word, or ``.word 0x...  # why`` when the
    word does not decode to an instruction that encodes back to it."""
    word = operator.index(word)
    if not 0 <= word < (1 << INSN_BITS):
        raise ValueError(f"{word:#x} is not a {INSN_BITS}-bit instruction word")
    raw = f".word 0x{word:0{_WORD_HEX_DIGITS}x}"
    try:
        insn = Instruction.decode(word)
    except ValueError as e:
        return f"{raw}  # {e}"
    if insn.encode() != word:
        return f"{raw}  # {insn.opcode.name} with bits set outside its fields"
    return format_instruction(insn)


def assemble(text: str, cfg: CoreConfig | None = None) -> list[int]:
    """Assemble program text into instruction words (one per instruction line).

    Region masks left out (no ``@MASK``) are derived from each stream's footprint
    with ``cfg``; without a ``cfg`` they are an error. Raises :class:`AsmError`.
    """
    words = []
    for lineno, line in enumerate(text.splitlines(), 1):
        item = parse_line(line, lineno)
        if item is None:
            continue
        if isinstance(item, int):
            words.append(item)
            continue
        unset = [s for s in STREAMS if getattr(item, s).regions is None]
        if unset:
            if cfg is None:
                s = unset[0]
                token = next((t for t in line.split() if t.lower().startswith(f"{s}=")), s)
                raise AsmError(f"stream {s} has no @MASK: write one, or pass a CoreConfig "
                               "to derive it from the footprint",
                               lineno=lineno, line=line, token=token)
            item = item.with_regions(cfg)
        try:
            words.append(item.encode())
        except ValueError as e:
            raise AsmError(str(e), lineno=lineno, line=line) from None
    return words


def disassemble(words: Iterable[int], cfg: CoreConfig | None = None) -> str:
    """Canonical text for instruction words, one line each (with a final newline).

    ``assemble(disassemble(words)) == list(words)`` for any words of ``INSN_BITS``
    bits. ``cfg`` is accepted for symmetry with :func:`assemble`; the text does not
    depend on it since every mask is printed. Raises ValueError for an integer that
    does not fit in ``INSN_BITS`` bits.
    """
    lines = [format_word(w) for w in words]
    return "".join(line + "\n" for line in lines)
