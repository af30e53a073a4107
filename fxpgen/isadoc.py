"""Generate the ISA reference (``docs/isa.md``) from the declarations in
:mod:`fxpgen.isa`.

Every table comes from the layouts, enums, ``OPCODE_INFO`` and ``FIELD_RULES``; the prose comes from
their docstrings and ``#:`` comments, and the assembler syntax from
:mod:`fxpgen.asm`. Regenerate with ``python -m fxpgen.isadoc > docs/isa.md``; a test
checks that the file is up to date.
"""

from __future__ import annotations

import inspect
import re
import sys

from amaranth.hdl import Shape
from amaranth.lib import data

from . import asm, isa
from .config import REGIONS, CoreConfig
from .isa import (
    INSN_BITS, INSN_BYTES, OPCODE_INFO, PARAMS_VIEW, ErrorCode, Mem, Opcode, Params,
    field_rules, layout_fields,
)

__all__ = ["EXAMPLES", "isa_markdown", "main"]

#: One assembler example per opcode, shown in the docs and assembled by the tests
#: (with the default :class:`~fxpgen.config.CoreConfig` for the derived masks).
EXAMPLES: dict[Opcode, str] = {
    Opcode.HALT: "halt",
    Opcode.SYNC: "sync",
    Opcode.LOAD: "load mem=spad count=64 z=0+1i            # 64 rows into SPAD 0..63",
    Opcode.STORE: "store mem=acc count=16x4 x=1024+1i+16j@0b0100",
    Opcode.LOADW: "loadw bank=1 count=8 x=64+1i            # WBUF 64..71 into bank 1",
    Opcode.MATMUL: "matmul bank=1 accumulate=1 act_signed=1 lane=0 count=64x8 "
                   "x=0+1i+64j@0b0001 z=512+1i+64j",
    Opcode.REQUANT: "requant table=2 relu=1 residual=1 res_signed=1 count=64 "
                    "x=512+1i y=1024+1i z=2048+1i",
    Opcode.ADD: "add a_shift=1 shift=-1 out_signed=1 a_signed=1 b_signed=1 count=32 "
                "x=0+1i y=256+1i z=512+1i",
    Opcode.MAX: "max a_signed=1 count=32 x=0+1i y=32+1i z=64+1i",
    Opcode.LUT: "lut table=1 count=32 x=0+1i z=64+1i          # sigmoid of 32 rows",
    Opcode.MUL: "mul shift=7 out_signed=1 a_signed=1 count=16x4 x=0+1i+16j y=64+1j "
                "z=128+1i+16j   # y: one row per channel group",
}

_ACCESS = {"r": "read", "w": "write"}


def _rst_to_md(text: str, heading: str = "###") -> str:
    """Turn the reST-flavoured docstrings of the package into Markdown: inline
    literals and roles become code spans, underlined titles become headings and
    ``::`` introduces an indented code block."""
    text = inspect.cleandoc(text)
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    text = re.sub(r"^(.+)\n-{3,}$", rf"{heading} \1\n", text, flags=re.M)
    text = re.sub(r"::$", ":", text, flags=re.M)
    return text


def _member_comments(cls) -> dict[str, str]:
    """The ``#:`` comment after each member of an enum, from its source."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s*(\w+)\s*=.*#:\s*(.*)$", line)
        if m:
            comments[m[1]] = _rst_to_md(m[2])
    return comments


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _shape_name(shape) -> str:
    if isinstance(shape, data.UnionLayout):
        return "union `Params`"
    if isinstance(shape, type) and issubclass(shape, Mem):
        return "`Mem`"
    if hasattr(shape, "as_shape") or not isinstance(shape, type):
        try:
            s = Shape.cast(shape)
            return f"{'signed' if s.signed else 'unsigned'}({s.width})"
        except TypeError:
            pass
    return type(shape).__name__


def _params_offset() -> int:
    return next(off for name, off, _, _ in layout_fields() if name == "params")


def _stream_memory(mem) -> str:
    if isinstance(mem, Mem):
        return mem.name
    return f"`{mem}` param"


def _opcode_section(op: Opcode) -> list[str]:
    info = OPCODE_INFO[op]
    out = [f"### {op.name} ({op.value}): {info.summary}", "", info.semantics, ""]
    rules = field_rules(op)
    if rules:
        out += ["Field rules (else `BAD_FIELD`, checked before anything runs): "
                + "; ".join(r.describe() for r in rules) + ".", ""]
    fields = asm.param_fields(op)
    if fields:
        base = _params_offset()
        out.append(f"Params (view `params.{PARAMS_VIEW[op]}`):")
        out.append("")
        rows = []
        for f in fields:
            used = "yes" if f.name in info.params else f"ignored by {op.name}"
            values = (", ".join(m.name.lower() for m in f.enum) if f.enum
                      else f"{f.min}..{f.max}")
            rows.append([f"`{f.name}`", f.offset, base + f.offset, f.width, f.type_name,
                         values, used])
        out += _table(["Param", "Offset in params", "Bit in word", "Width", "Type",
                       "Values", "Used"], rows)
    else:
        out.append("No params.")
    out.append("")
    if info.streams:
        out.append("Address streams:")
        out.append("")
        out += _table(["Stream", "Memory", "Access"],
                      [[f"`{s}`", _stream_memory(m), _ACCESS[a]]
                       for s, (m, a) in info.streams.items()])
    else:
        out.append("No address streams.")
    out += ["", "```", EXAMPLES[op], "```", ""]
    return out


def isa_markdown() -> str:
    """The ISA reference as Markdown, generated from :mod:`fxpgen.isa`."""
    out = [
        "# fxpgen instruction set",
        "",
        "<!-- Generated from fxpgen/isa.py by `python -m fxpgen.isadoc > docs/isa.md`; "
        "do not edit. -->",
        "",
        "## Overview",
        "",
        _rst_to_md(isa.__doc__),
        "",
        "## Instruction word",
        "",
        f"An instruction is {INSN_BITS} bits ({INSN_BYTES} bytes), least significant "
        "field first. " + _rst_to_md(isa.AddrGen.__doc__),
        "",
    ]
    out += _table(["Field", "Bits", "Offset", "Width", "Shape"],
                  [[f"`{name}`", f"[{off}, {off + width})", off, width, _shape_name(shape)]
                   for name, off, width, shape in layout_fields()])
    out += ["", f"The `params` field is the union `Params`: {_rst_to_md(Params.__doc__)} "
            "Each opcode reads one view of it (see its section below).", ""]

    out += ["## Opcodes", "", _rst_to_md(Opcode.__doc__), ""]
    out += _table(["Value", "Mnemonic", "Summary"],
                  [[op.value, f"`{op.name.lower()}`", OPCODE_INFO[op].summary] for op in Opcode])
    out += [""]

    out += ["## Instructions", ""]
    for op in Opcode:
        out += _opcode_section(op)

    mem_notes = _member_comments(Mem)
    out += ["## Memories", "", _rst_to_md(Mem.__doc__) + f" Each is split into {REGIONS} "
            "equal regions by its top address bits; a stream's region mask has one bit "
            "per region.", ""]
    out += _table(["Value", "Name", "Assembler", "Row"],
                  [[m.value, m.name, f"`{m.name.lower()}`", mem_notes.get(m.name, "")]
                   for m in Mem])
    out += [""]

    err_notes = _member_comments(ErrorCode)
    out += ["## Error codes", "", _rst_to_md(ErrorCode.__doc__), ""]
    out += _table(["Value", "Name", "Meaning"],
                  [[e.value, e.name, err_notes.get(e.name, "-")] for e in ErrorCode])
    out += [""]

    out += ["## Stream words", "",
            "`CoreConfig.bus_width`: "
            + _rst_to_md(CoreConfig.bus_width.__doc__).replace("\n", " ")
            + " A memory row sits in the low bits of a word as LOAD describes:",
            "", "> " + OPCODE_INFO[Opcode.LOAD].semantics, ""]

    out += ["## Assembler syntax", "", _rst_to_md(asm.__doc__.split("Syntax\n------\n", 1)[1],
                                                  heading="###"), ""]
    out += ["### Examples", "",
            "One line per opcode:", "", "```"]
    cfg = CoreConfig()
    for op in Opcode:
        out.append(EXAMPLES[op])
    out += ["```", "", "The canonical form the disassembler prints for them (masks derived "
            "with the default `CoreConfig`):", "", "```"]
    for op in Opcode:
        out.append(asm.disassemble(asm.assemble(EXAMPLES[op], cfg)).rstrip("\n"))
    out += ["```", ""]
    return "\n".join(out)


def main() -> None:
    """Print the ISA reference (``python -m fxpgen.isadoc > docs/isa.md``)."""
    sys.stdout.write(isa_markdown())


if __name__ == "__main__":
    main()
