"""Assembler, disassembler and generated ISA docs (fxpgen.asm, fxpgen.isadoc).

The random tests use hypothesis: a failure prints the falsifying example and the
seed; replay with ``pytest --hypothesis-seed=N``.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxpgen.asm import (
    STREAMS, AsmError, assemble, disassemble, format_instruction, format_word, param_fields,
    parse_line,
)
from fxpgen.config import REGIONS, CoreConfig
from fxpgen.isa import (
    ADDR_BITS, COUNT_MAX, INSN_BITS, OPCODE_INFO, Addr, Instruction, Mem, Opcode,
    layout_fields,
)
from fxpgen.isadoc import EXAMPLES, isa_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs" / "isa.md"
CFG = CoreConfig()

fast = settings(deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow])


# --- strategies ----------------------------------------------------------------------

_field = st.integers(0, (1 << ADDR_BITS) - 1)
_addrs = st.builds(Addr, _field, _field, _field, st.integers(0, (1 << REGIONS) - 1))
_zero = Addr(0, 0, 0, 0)


@st.composite
def instructions(draw):
    """Any legal instruction: every params field and every word field over its full
    range; streams the opcode ignores are mostly zero, sometimes not."""
    opcode = draw(st.sampled_from(list(Opcode)))
    params = {f.name: draw(st.integers(f.min, f.max)) for f in param_fields(opcode)}
    counts = draw(st.tuples(st.integers(0, COUNT_MAX), st.integers(0, COUNT_MAX)))
    streams = {}
    for s in STREAMS:
        if s in OPCODE_INFO[opcode].streams:
            streams[s] = draw(_addrs)
        else:
            streams[s] = draw(st.one_of(st.just(_zero), _addrs))
    return Instruction(opcode, params, *counts, **streams)


def _legal_opcode_word(bits: int, opcode: Opcode) -> int:
    return (bits & ~0xF) | opcode.value


words = st.one_of(
    st.integers(0, (1 << INSN_BITS) - 1),
    st.builds(_legal_opcode_word, st.integers(0, (1 << INSN_BITS) - 1),
              st.sampled_from(list(Opcode))),
    instructions().map(lambda i: i.encode()),
)


# --- round trips ---------------------------------------------------------------------


@fast
@given(instructions())
def test_instruction_round_trip(insn):
    word = insn.encode()
    text = format_instruction(insn)
    assert parse_line(text) == insn
    assert Instruction.decode(word) == insn
    listing = disassemble([word])
    assert listing == text + "\n"
    assert assemble(listing) == [word]


@fast
@given(st.lists(words, max_size=4))
def test_any_words_round_trip(ws):
    listing = disassemble(ws)
    assert assemble(listing) == ws
    assert disassemble(assemble(listing)) == listing


def test_brief_example():
    text = ("matmul bank=1 accumulate=1 act_signed=1 lane=0 count=64x8 "
            "x=0+1i+64j@0b0001 z=512+1i+64j")
    insn = parse_line(text)
    assert insn == Instruction(
        Opcode.MATMUL, {"bank": 1, "accumulate": 1, "act_signed": 1, "lane": 0}, 64, 8,
        x=Addr(0, 1, 64, 0b0001), y=Addr(0, 0, 0, 0), z=Addr(512, 1, 64, None))
    [word] = assemble(text, CFG)
    assert word == insn.encode(CFG)
    assert disassemble([word]) == ("matmul bank=1 accumulate=1 act_signed=1 count=64x8 "
                                   "x=0+1i+64j@0b0001 z=512+1i+64j@0b0010\n")


def test_program_with_comments_case_hex_and_spaces():
    text = """
        # a small program
        LOAD mem=SPAD count=0x10 z=0x20 + i @ 0b0001   # load 16 rows

        Matmul Bank=1 count=16x2 x=0x20+1I+0x10J@1 z=0+1i+16j@0x1
        requant table=3 out_signed=1 count=16 x=0+1i@1 z=64+1i@1
        add shift=-2 count=4 x=0@1 y=1@1 z=2@1
        .word 0x1
        HALT
    """
    ws = assemble(text)
    assert len(ws) == 6
    assert Instruction.decode(ws[0]) == Instruction(
        Opcode.LOAD, {"mem": Mem.SPAD.value}, 16, 1, z=Addr(32, 1, 0, 1),
        x=_zero, y=_zero)
    assert Instruction.decode(ws[1]).x == Addr(32, 1, 16, 1)
    assert Instruction.decode(ws[3]).params["shift"] == -2
    assert ws[4] == 1
    assert disassemble(ws).splitlines() == [
        "load count=16x1 z=32+1i@0b0001",
        "matmul bank=1 count=16x2 x=32+1i+16j@0b0001 z=0+1i+16j@0b0001",
        "requant table=3 out_signed=1 count=16x1 x=0+1i@0b0001 z=64+1i@0b0001",
        "add shift=-2 count=4x1 x=0@0b0001 y=1@0b0001 z=2@0b0001",
        "halt count=0x0x0",
        "halt",
    ]


def test_mem_names_and_numbers():
    for mem in Mem:
        a = assemble(f"load mem={mem.name.lower()} z=0@0")
        b = assemble(f"load mem={mem.value} z=0@0")
        assert a == b
        assert Instruction.decode(a[0]).params["mem"] == mem.value
    assert format_word(a[0]) == "load mem=lut count=1x1 z=0@0b0000"


def test_count_forms():
    assert parse_line("halt count=7").count0 == 7
    assert parse_line("halt count=7").count1 == 1
    assert parse_line("halt count=0x10").count0 == 16
    assert (parse_line("halt count=0x10x0x3").count0, parse_line("halt count=0x10x0x3").count1) \
        == (16, 3)
    insn = Instruction(Opcode.HALT, count0=0, count1=0, x=_zero, y=_zero, z=_zero)
    assert format_instruction(insn) == "halt count=0x0x0"
    assert parse_line("halt count=0x0x0") == insn
    assert format_instruction(Instruction(Opcode.HALT, x=_zero, y=_zero, z=_zero)) == "halt"


def test_derived_masks_match_encoder():
    text = "requant residual=1 count=64x2 x=0+1i+1024j y=1000+1i z=3000+2i"
    insn = parse_line(text)
    assert all(getattr(insn, s).regions is None for s in STREAMS)
    assert assemble(text, CFG) == [insn.encode(CFG)]
    # Without residual, y is not read: its mask is 0 and it needs no cfg.
    insn = parse_line("requant count=4 x=0@1 z=0@1")
    assert insn.y == _zero
    assert assemble("requant count=4 x=0@1 z=0@1") == [insn.encode()]


def test_unused_streams_are_kept():
    insn = Instruction(Opcode.LOAD, {"mem": 0}, 1, 1, x=Addr(5, 0, 7, 3), y=_zero,
                       z=Addr(1, 0, 0, 1))
    text = format_instruction(insn)
    assert text == "load count=1x1 unused.x=5+7j@0b0011 z=1@0b0001"
    assert parse_line(text) == insn


def test_stray_bits_become_word():
    halt = Instruction(Opcode.HALT, x=_zero, y=_zero, z=_zero).encode()
    params_offset = next(o for n, o, _, _ in layout_fields() if n == "params")
    for word in (halt | 1 << params_offset, 0, (1 << INSN_BITS) - 1):
        line = format_word(word)
        assert line.startswith(".word 0x"), line
        assert "#" in line
        assert assemble(line) == [word]
    assert format_word(0).endswith("# illegal opcode 0")
    # LOAD reads 2 of the params bits; the others must round-trip too.
    load = Instruction(Opcode.LOAD, {"mem": 1}, x=_zero, y=_zero, z=Addr(regions=0)).encode()
    assert "bits set outside" in format_word(load | 1 << (params_offset + 5))


def test_disassemble_rejects_non_words():
    with pytest.raises(ValueError):
        disassemble([1 << INSN_BITS])
    with pytest.raises(ValueError):
        disassemble([-1])


# --- errors --------------------------------------------------------------------------

ERRORS = [
    # (text, token named in the error, words the message must contain)
    ("matmull x=0@1", "matmull", ["unknown opcode", "matmul", "halt"]),
    ("matmul foo=1 x=0@1 z=0@1", "foo=1", ["no parameter `foo`", "bank", "accumulate",
                                           "act_signed", "lane"]),
    ("max relu=1 b=1 x=0@1 y=0@1 z=0@1", "b=1", ["no parameter `b`", "a_signed",
                                                 "ignored by MAX"]),
    ("halt bank=1", "bank=1", ["HALT has no parameter `bank`"]),
    ("loadw mem=spad x=0@1", "mem=spad", ["no parameter `mem`", "bank"]),
    ("matmul bank=2 x=0@1 z=0@1", "bank=2", ["out of range", "0..1"]),
    ("requant table=256 x=0@1 z=0@1", "table=256", ["out of range", "0..255"]),
    ("add shift=32 x=0@1 y=0@1 z=0@1", "shift=32", ["out of range", "-32..31"]),
    ("add shift=-33 x=0@1 y=0@1 z=0@1", "shift=-33", ["out of range", "-32..31"]),
    ("matmul lane=-1 x=0@1 z=0@1", "lane=-1", ["out of range", "0..15"]),
    ("add shift=3.5 x=0@1 y=0@1 z=0@1", "shift=3.5", ["not a number"]),
    ("load mem=dram z=0@1", "mem=dram", ["not a Mem", "spad", "wbuf", "acc", "table"]),
    ("halt count=4096", "count=4096", ["count0=4096", "out of range", "0..4095"]),
    ("halt count=1x4096", "count=1x4096", ["count1=4096", "out of range"]),
    ("halt count=2x", "count=2x", ["not C0xC1"]),
    ("halt count=ax2", "count=ax2", ["not C0xC1"]),
    ("load z=65536@1", "z=65536@1", ["z.base=65536", "out of range", "0..65535"]),
    ("load z=0+65536i@1", "z=0+65536i@1", ["z.stride0=65536", "out of range"]),
    ("load z=0+1j+65536j@1", "z=0+1j+65536j@1", ["stride1 given twice"]),
    ("load z=0@16", "z=0@16", ["mask=16", "out of range", "0..15"]),
    ("load z=0@0b2", "z=0@0b2", ["not a number"]),
    ("load z=0@", "z=0@", ["not BASE[+S0i][+S1j][@MASK]"]),
    ("load z=0+1k@1", "z=0+1k@1", ["not BASE[+S0i][+S1j][@MASK]"]),
    ("load z=0++1i@1", "z=0++1i@1", ["not BASE[+S0i][+S1j][@MASK]"]),
    ("load z=-1@1", "z=-1@1", ["not BASE[+S0i][+S1j][@MASK]"]),
    ("load x=0@1 z=0@1", "x=0@1", ["stream x is not used by LOAD", "uses z", "unused.x"]),
    ("halt y=0", "y=0", ["stream y is not used by HALT"]),
    ("load unused.z=0@1", "unused.z=0@1", ["stream z is used by LOAD"]),
    ("load unused.w=0@1", "unused.w=0@1", ["no parameter `unused.w`"]),
    ("load z=0@1 z=1@1", "z=1@1", ["z given twice"]),
    ("halt unused.x=0 unused.x=0", "unused.x=0", ["x given twice"]),
    ("matmul bank=1 bank=0 x=0@1 z=0@1", "bank=0", ["bank given twice"]),
    ("matmul x", "x", ["expected key=value"]),
    ("matmul x= z=0@1", "x=", ["expected key=value"]),
    ("load z = 0@1", "z", ["expected key=value"]),
    ("matmul x=0@1", "matmul x=0@1", ["missing operand z", "MATMUL writes"]),
    ("requant residual=1 x=0@1 z=0@1", "", ["missing operand y", "REQUANT reads"]),
    (".word", ".word", [".word takes exactly one value"]),
    (".word 1 2", ".word 1 2", [".word takes exactly one value"]),
    (".word zz", "zz", ["not a number"]),
    (f".word {1 << INSN_BITS:#x}", f"{1 << INSN_BITS:#x}", [f"{INSN_BITS}-bit"]),
    (".word -1", "-1", [f"{INSN_BITS}-bit"]),
    ("load z=0+1i", "z=0+1i", ["no @MASK", "CoreConfig"]),
]


@pytest.mark.parametrize("text, token, needles", ERRORS)
def test_errors(text, token, needles):
    program = f"halt\n\n# comment\n  {text}  # trailing comment\nhalt\n"
    with pytest.raises(AsmError) as info:
        assemble(program)
    e = info.value
    assert e.lineno == 4
    assert e.line == f"  {text}  # trailing comment"
    if token:
        assert e.token == token
    message = str(e)
    assert message.startswith("line 4: ")
    assert text in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_asm_error_is_a_value_error():
    assert issubclass(AsmError, ValueError)


_FRAGMENTS = st.sampled_from([
    "matmul", "load", "halt", "requant", "add", "max", ".word", "x=", "y=", "z=",
    "unused.", "count=", "mem=", "bank=", "shift=", "0", "1", "-", "0x", "0b", "ff",
    "+", "i", "j", "@", "=", " ", "  ", "#", "\n", "x", "65536", "4095", "spad", "\t",
    "é", "\u0130", "9" * 30,
])


@settings(deadline=None, max_examples=400)
@given(st.lists(_FRAGMENTS, max_size=14).map("".join))
def test_garbage_raises_only_asm_error(text):
    try:
        ws = assemble(text, CFG)
    except AsmError:
        return
    assert assemble(disassemble(ws)) == ws


# --- generated docs ------------------------------------------------------------------


def test_docs_are_fresh():
    assert DOCS.read_text() == isa_markdown(), (
        "docs/isa.md is stale: regenerate with `python -m fxpgen.isadoc > docs/isa.md`")


def test_examples_cover_every_opcode_and_assemble():
    assert set(EXAMPLES) == set(Opcode)
    for op, text in EXAMPLES.items():
        [word] = assemble(text, CFG)
        assert Instruction.decode(word).opcode is op
        assert assemble(disassemble([word])) == [word]


def test_docs_mention_every_declaration():
    doc = isa_markdown()
    assert f"{INSN_BITS} bits" in doc
    for name, offset, width, _ in layout_fields():
        assert f"| `{name}` | [{offset}, {offset + width}) | {offset} | {width} |" in doc
    for op in Opcode:
        assert f"| {op.value} | `{op.name.lower()}` | {OPCODE_INFO[op].summary} |" in doc
        assert OPCODE_INFO[op].semantics in doc
        for f in param_fields(op):
            assert f"| `{f.name}` | {f.offset} | " in doc
    for mem in Mem:
        assert f"| {mem.name} | `{mem.name.lower()}` |" in doc


def test_isadoc_module_prints_docs():
    out = subprocess.run([sys.executable, "-m", "fxpgen.isadoc"], capture_output=True,
                         text=True, check=True).stdout
    assert out == isa_markdown()


def test_syntax_docstring_example_is_canonical():
    import fxpgen.asm
    [line] = [l.strip() for l in fxpgen.asm.__doc__.splitlines() if l.startswith("    matmul")]
    assert disassemble(assemble(line)) == line + "\n"
