"""The fxpgen instruction set, declared once.

Every instruction is one fixed-width word laid out by :class:`Insn` (an
``amaranth.lib.data.Struct``). The hardware decoder views the instruction stream
through it, the assembler encodes with ``Insn.const(...)``, the instruction-level
simulator and the disassembler decode with ``Insn.from_bits(...)``, and
``docs/isa.md`` is generated from it (``fxpgen isa-doc``).

Execution model
---------------
An instruction runs a two-level loop: ``for i1 in range(count1): for i0 in
range(count0)``. In each iteration every address stream ``g`` it uses (``x``, ``y``,
``z``) points at row ``g.base + i1 * g.stride1 + i0 * g.stride0`` of its memory.
Every memory is split into four equal regions (top two address bits); ``g.regions``
is a 4-bit mask of the regions the stream may touch. An address at or beyond the
memory's depth stops the core with ``ADDRESS``; one outside the mask with
``REGION`` (the shift table and the lookup tables are one region each and ignore
the mask). Nothing is read or written at a faulting address.

Programs have sequential semantics: the result equals running the instructions
one after another, in order. The hardware overlaps independent instructions (a
matmul with loads, weight-tile loads, requantization and stores) and stalls one
whose declared regions conflict with an instruction still running, so the
region masks only affect speed, never results.

The scratchpad and the accumulators are built as banks with one read port each
(a bank is one scratchpad region, or two accumulator regions: 0-1 and 2-3), so two
units never read one bank at once: an instruction that reads a bank (MATMUL also
the accumulator banks it adds into) waits for another unit still reading it, as it
would for a writer. ADD, MAX and MUL whose ``x`` and ``y`` masks share a scratchpad
bank read the two rows on alternate cycles: one iteration every two cycles.
"""



import functools
import operator
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from amaranth.hdl import Shape, Value, signed, unsigned
from amaranth.lib import data, enum

from .config import REGIONS, CoreConfig
from .numerics import WEIGHT_BITS

__all__ = [
    "Opcode", "Mem", "UNREGIONED", "PARAM_ENUMS", "ErrorCode", "AddrGen", "Params", "Insn", "INSN_BITS", "INSN_BYTES",
    "COUNT_MAX", "ADDR_BITS", "Addr", "Instruction", "Footprint", "footprint", "PORT_REGIONS", "read_port",
    "OPCODE_INFO",
    "FieldRule", "FIELD_RULES", "field_rules", "bad_fields",
    "region_of", "regions_spanned", "layout_fields", "opcode_of", "PARAMS_VIEW",
    "pack_row", "unpack_row", "pack_rows", "unpack_rows", "CoreState",
    "weight_bits", "narrow_of", "loadw_rows", "pack_tiles", "unpack_tiles",
]

ADDR_BITS = 16
COUNT_BITS = 12
COUNT_MAX = (1 << COUNT_BITS) - 1


class Opcode(enum.Enum, shape=4):
    """Operation codes. Values not listed are illegal (``ILLEGAL_OPCODE``); 0 is
    deliberately unused so that an all-zero word is caught."""

    HALT = 1
    SYNC = 2
    LOAD = 3
    STORE = 4
    LOADW = 5
    MATMUL = 6
    REQUANT = 7
    ADD = 8
    MAX = 9
    LUT = 10
    MUL = 11


class Mem(enum.Enum, shape=3):
    """On-chip memories an address stream can name."""

    SPAD = 0    #: activation scratchpad, ``lanes`` bytes a row
    WBUF = 1    #: weight buffer, ``cols`` int8 a row
    ACC = 2     #: accumulator memory, ``cols`` x ``acc_width`` a row
    TABLE = 3   #: shift table, ``cols`` x (shift, align) a row
    LUT = 4     #: lookup tables, one byte a row: entry e of table t is row 256 * t + e


#: Memories addressed as one region: their streams ignore the region mask and the
#: hazard logic tracks them with one bit each.
UNREGIONED = (Mem.TABLE, Mem.LUT)


class ErrorCode(enum.Enum, shape=3):
    """Why the core stopped. The first error is latched until reset."""

    NONE = 0
    ILLEGAL_OPCODE = 1   #: opcode value not in :class:`Opcode`
    BAD_FIELD = 2        #: a field breaking one of the opcode's field rules on this core
    ADDRESS = 3          #: an address at or beyond the memory's depth
    REGION = 4           #: an address outside the stream's declared region mask


class AddrGen(data.Struct):
    """One affine address stream: ``base + i1 * stride1 + i0 * stride0``."""

    base: unsigned(ADDR_BITS)
    stride0: unsigned(ADDR_BITS)
    stride1: unsigned(ADDR_BITS)
    regions: unsigned(REGIONS)


#: Params fields holding a :class:`Mem` value. They are raw bits in the layout (as
#: ``opcode`` is) so that a word naming no memory still decodes: it is a BAD_FIELD.
PARAM_ENUMS: dict[str, type] = {"mem": Mem}


class LoadParams(data.Struct):
    mem: unsigned(Shape.cast(Mem).width)


class StoreParams(data.Struct):
    mem: unsigned(Shape.cast(Mem).width)


class LoadwParams(data.Struct):
    bank: unsigned(1)
    narrow: unsigned(2)


class MatmulParams(data.Struct):
    bank: unsigned(1)
    accumulate: unsigned(1)
    act_signed: unsigned(1)
    lane: unsigned(4)


class RequantParams(data.Struct):
    table: unsigned(8)
    lane: unsigned(4)
    relu: unsigned(1)
    out_signed: unsigned(1)
    residual: unsigned(1)
    res_signed: unsigned(1)


class AluParams(data.Struct):
    a_shift: unsigned(4)
    b_shift: unsigned(4)
    shift: signed(6)
    relu: unsigned(1)
    out_signed: unsigned(1)
    a_signed: unsigned(1)
    b_signed: unsigned(1)


class LutParams(data.Struct):
    table: unsigned(4)


class MulParams(data.Struct):
    shift: signed(6)
    relu: unsigned(1)
    out_signed: unsigned(1)
    a_signed: unsigned(1)
    b_signed: unsigned(1)


class Params(data.Union):
    """Opcode-specific parameters, overlaid on the same bits."""

    load: LoadParams
    store: StoreParams
    loadw: LoadwParams
    matmul: MatmulParams
    requant: RequantParams
    alu: AluParams
    lut: LutParams
    mul: MulParams


class Insn(data.Struct):
    """One instruction word (least significant field first)."""

    opcode: unsigned(4)
    params: Params
    count0: unsigned(COUNT_BITS)
    count1: unsigned(COUNT_BITS)
    x: AddrGen
    y: AddrGen
    z: AddrGen


INSN_BITS: int = Insn.as_shape().size
INSN_BYTES: int = (INSN_BITS + 7) // 8

# Bit offsets read from the layouts, for fast packing in Python.
_OFFSET = {name: field.offset for name, field in data.Layout.cast(Insn)}
_OFFSET.update({f"{s}.{name}": _OFFSET[s] + field.offset
                for s in ("x", "y", "z") for name, field in data.Layout.cast(AddrGen)})
_PARAM_FIELDS = {
    view: {name: (f.offset, f.width, Shape.cast(f.shape).signed)
           for name, f in data.Layout.cast(Params.as_shape()[view].shape)}
    for view, _ in data.Layout.cast(Params)
}

# Which params view each opcode reads.
PARAMS_VIEW = {
    Opcode.LOAD: "load", Opcode.STORE: "store", Opcode.LOADW: "loadw",
    Opcode.MATMUL: "matmul", Opcode.REQUANT: "requant", Opcode.ADD: "alu", Opcode.MAX: "alu",
    Opcode.LUT: "lut", Opcode.MUL: "mul",
}


@dataclass(frozen=True)
class OpInfo:
    """What an opcode does and which address streams it drives.

    ``streams`` maps a stream name to ``(memory, access)``; the memory is a
    :class:`Mem` or the name of a params field holding one, the access is
    ``"r"`` or ``"w"``.
    """

    summary: str
    semantics: str
    streams: dict = field(default_factory=dict)
    params: tuple = ()


OPCODE_INFO: dict[Opcode, OpInfo] = {
    Opcode.HALT: OpInfo(
        "End of program",
        "Waits until every unit is idle, then reports `halted` and freezes the "
        "performance counters. The next instruction starts a new program and clears them."),
    Opcode.SYNC: OpInfo(
        "Barrier",
        "Waits until every unit is idle before the next instruction is dispatched."),
    Opcode.LOAD: OpInfo(
        "Data stream -> memory",
        "Each iteration takes one word from the data stream and writes its low bits to "
        "row `z` of `mem`: SPAD byte l = bits [8l, 8l+8); WBUF int8 column j = bits "
        "[8j, 8j+8); ACC column j = two's complement bits [W*j, W*j+W) (W = acc_width); "
        "TABLE column j = bits [12j, 12j+12) holding `shift` (signed, low 6 bits) and "
        "`align` (signed, high 6 bits); LUT = bits [0, 8) (one table entry).",
        {"z": ("mem", "w")}, ("mem",)),
    Opcode.STORE: OpInfo(
        "Memory -> result stream",
        "Each iteration reads row `x` of `mem` and sends it on the result stream, packed "
        "as LOAD unpacks it, zero-extended to the bus width, with `last` set on the final "
        "iteration.",
        {"x": ("mem", "r")}, ("mem",)),
    Opcode.LOADW: OpInfo(
        "Weight buffer -> array bank",
        "Loads one rows x cols weight tile of b-bit weights, b = 8 - 2 * `narrow` "
        "(8, 6, 4 or 2), into weight bank `bank` of the array; each iteration reads WBUF "
        "row `x`. Column j of the tile is packed in byte j of the rows read: joined "
        "in iteration order (iteration k's byte is bits [8k, 8k+8)), its bits "
        "[b*i, b*i+b) hold the weight of array row i, two's complement, sign-extended "
        "to int8 (at b = 8, array row i receives WBUF row `x` of iteration i). Runs "
        "alongside a matmul that uses the other bank.",
        {"x": (Mem.WBUF, "r")}, ("bank", "narrow")),
    Opcode.MATMUL: OpInfo(
        "Systolic matmul into the accumulators",
        "Each iteration multiplies the activation vector a = SPAD row `x`, bytes "
        "[lane*rows, lane*rows+rows) (int8 if `act_signed`, else uint8), by weight bank "
        "`bank` and writes ACC row `z` := sat(ACC[z] + a @ W) if `accumulate`, else "
        "a @ W. The dot product is exact; only the accumulation saturates to acc_width.",
        {"x": (Mem.SPAD, "r"), "z": (Mem.ACC, "w")}, ("bank", "accumulate", "act_signed", "lane")),
    Opcode.REQUANT: OpInfo(
        "Accumulators -> 8-bit activations (shift requantization)",
        "Each iteration reads ACC row `x` and shift-table entry `table` (per column j: "
        "`shift` n_j, `align` a_j). With `residual`, r = SPAD row `y`, bytes "
        "[lane*cols, lane*cols+cols) (int8 if `res_signed`, else uint8), else r = 0. "
        "Per column: s = aligned_add(acc, max(-a_j, 0), r, max(a_j, 0)) (the saturated "
        "exact sum acc * 2**max(-a_j,0) + r * 2**max(a_j,0); see fxpgen.numerics); "
        "out = requantize(s, n_j) with round-half-even, saturated to int8 [-127, 127] if "
        "`out_signed` else uint8, and to >= 0 if `relu`. The bytes are written to SPAD row "
        "`z` at [lane*cols, lane*cols+cols); the other bytes of the row are kept.",
        {"x": (Mem.ACC, "r"), "y": (Mem.SPAD, "r"), "z": (Mem.SPAD, "w")},
        ("table", "lane", "relu", "out_signed", "residual", "res_signed")),
    Opcode.ADD: OpInfo(
        "Element-wise add of two scratchpad rows",
        "Per byte l of SPAD rows `x` (a) and `y` (b), read as int8 or uint8 by "
        "`a_signed`/`b_signed`: s = aligned_add(a, a_shift, b, b_shift); out = "
        "requantize(s, `shift`) saturated as in REQUANT; written to SPAD row `z`.",
        {"x": (Mem.SPAD, "r"), "y": (Mem.SPAD, "r"), "z": (Mem.SPAD, "w")},
        ("a_shift", "b_shift", "shift", "relu", "out_signed", "a_signed", "b_signed")),
    Opcode.MAX: OpInfo(
        "Element-wise max of two scratchpad rows",
        "Per byte l: SPAD[z][l] = max(SPAD[x][l], SPAD[y][l]), compared as int8 if "
        "`a_signed` else uint8. The format is kept.",
        {"x": (Mem.SPAD, "r"), "y": (Mem.SPAD, "r"), "z": (Mem.SPAD, "w")}, ("a_signed",)),
    Opcode.LUT: OpInfo(
        "Table lookup of every scratchpad byte",
        "Per byte l: SPAD[z][l] = LUT[256 * `table` + SPAD[x][l]], the byte read as an "
        "unsigned index 0..255 (an int8 byte indexes by its two's complement bits). "
        "The table holds raw output bytes; their format is the program's business.",
        {"x": (Mem.SPAD, "r"), "z": (Mem.SPAD, "w")}, ("table",)),
    Opcode.MUL: OpInfo(
        "Element-wise multiply of two scratchpad rows",
        "Per byte l of SPAD rows `x` (a) and `y` (b), read as int8 or uint8 by "
        "`a_signed`/`b_signed`: p = a * b (exact, 17 bits); out = requantize(p, `shift`) "
        "saturated as in REQUANT; written to SPAD row `z`. A y stream with stride 0 over "
        "pixels broadcasts one row of per-channel factors.",
        {"x": (Mem.SPAD, "r"), "y": (Mem.SPAD, "r"), "z": (Mem.SPAD, "w")},
        ("shift", "relu", "out_signed", "a_signed", "b_signed")),
}


def opcode_of(word: int) -> int:
    """The raw opcode field of an instruction word (may be an illegal value)."""
    return word & 0xF


# --- Python-side instruction objects ------------------------------------------------


@dataclass(frozen=True)
class Addr:
    """An address stream. ``regions=None`` lets the encoder derive the mask from
    the rows the loops can reach."""

    base: int = 0
    stride0: int = 0
    stride1: int = 0
    regions: "int | None" = None


def region_of(addr: int, depth: int) -> int:
    """Region (0..3) of a row address in a memory of ``depth`` rows."""
    return addr * REGIONS // depth


def regions_spanned(a: Addr, count0: int, count1: int, depth: int) -> int:
    """Mask of the regions between the lowest and highest row the loops reach (none
    in a memory of no rows: a core built without lookup tables)."""
    if count0 == 0 or count1 == 0 or depth == 0:
        return 0
    lo = a.base
    hi = a.base + (count0 - 1) * a.stride0 + (count1 - 1) * a.stride1
    r_lo = min(region_of(lo, depth), REGIONS - 1)
    r_hi = min(region_of(hi, depth), REGIONS - 1)
    return sum(1 << r for r in range(r_lo, r_hi + 1))


@dataclass(frozen=True)
class Instruction:
    """A decoded instruction. ``params`` holds the fields of the opcode's params
    view (see :data:`OPCODE_INFO`); missing ones are 0."""

    opcode: Opcode
    params: dict = field(default_factory=dict)
    count0: int = 1
    count1: int = 1
    x: Addr = Addr()
    y: Addr = Addr()
    z: Addr = Addr()

    @property
    def iterations(self) -> int:
        return self.count0 * self.count1

    def stream_mem(self, stream: str) -> Mem | None:
        """Memory an address stream of this instruction targets (None if unused)."""
        info = OPCODE_INFO[self.opcode]
        if stream not in info.streams:
            return None
        mem, _ = info.streams[stream]
        if isinstance(mem, str):
            raw = self.params.get(mem, 0)
            raw = raw.value if isinstance(raw, Mem) else raw
            if raw not in {m.value for m in Mem}:
                return None     # names no memory: the instruction is a BAD_FIELD
            mem = Mem(raw)
        if self.opcode is Opcode.REQUANT and stream == "y" and not self.params.get("residual"):
            return None
        return mem

    def with_regions(self, cfg: CoreConfig) -> "Instruction":
        """Fill in every region mask left as None from the loop footprint."""
        changes = {}
        for s in ("x", "y", "z"):
            a = getattr(self, s)
            if a.regions is None:
                mem = self.stream_mem(s)
                mask = 0 if mem is None else regions_spanned(
                    a, self.count0, self.count1, cfg.depth(mem))
                changes[s] = replace(a, regions=mask)
        return replace(self, **changes) if changes else self

    def encode(self, cfg: CoreConfig | None = None) -> int:
        """The instruction word as an integer. Region masks left as None are derived
        from ``cfg`` (required then)."""
        insn = self
        if any(getattr(self, s).regions is None for s in ("x", "y", "z")):
            if cfg is None:
                raise ValueError("region masks are unset: pass the CoreConfig to derive them")
            insn = self.with_regions(cfg)
        view = PARAMS_VIEW.get(insn.opcode)
        params_layout = Params.as_shape()
        if view is None:
            if insn.params:
                raise ValueError(f"{insn.opcode.name} takes no parameters, got {insn.params}")
            params = {}
        else:
            fields = {name for name, _ in data.Layout.cast(params_layout[view].shape)}
            unknown = set(insn.params) - fields
            if unknown:
                raise ValueError(f"{insn.opcode.name} has no parameter(s) {sorted(unknown)}; "
                                 f"it takes {sorted(fields)}")
            params = {view: dict(insn.params)}
        for name, v in (("count0", insn.count0), ("count1", insn.count1)):
            if not 0 <= v <= COUNT_MAX:
                raise ValueError(f"{insn.opcode.name}: {name}={v} is outside 0..{COUNT_MAX}")
        streams = {}
        for s in ("x", "y", "z"):
            a = getattr(insn, s)
            for fname in ("base", "stride0", "stride1"):
                v = getattr(a, fname)
                if not 0 <= v < (1 << ADDR_BITS):
                    raise ValueError(f"{insn.opcode.name}: {s}.{fname}={v} is outside "
                                     f"0..{(1 << ADDR_BITS) - 1}")
            if not 0 <= a.regions < (1 << REGIONS):
                raise ValueError(f"{insn.opcode.name}: {s}.regions={a.regions:#x} is not a "
                                 f"{REGIONS}-bit mask")
            streams[s] = {"base": a.base, "stride0": a.stride0, "stride1": a.stride1,
                          "regions": a.regions}
        word = insn.opcode.value | (insn.count0 << _OFFSET["count0"]) | (insn.count1 << _OFFSET["count1"])
        for s, fields in streams.items():
            for fname, v in fields.items():
                word |= v << _OFFSET[f"{s}.{fname}"]
        for name, v in params.get(view, {}).items():
            offset, width, is_signed = _PARAM_FIELDS[view][name]
            v = int(v.value if isinstance(v, enum.Enum) else v)
            lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if is_signed else (0, (1 << width) - 1)
            if not lo <= v <= hi:
                raise ValueError(f"{insn.opcode.name}: {name}={v} is outside {lo}..{hi}")
            word |= (v & ((1 << width) - 1)) << (_OFFSET["params"] + offset)
        return word

    def encode_const(self, cfg: CoreConfig | None = None) -> int:
        """:meth:`encode` through ``Insn.const`` (Amaranth's own packing); slower, kept
        so the tests can check the fast packer against the layout."""
        insn = self.with_regions(cfg) if cfg is not None else self
        view = PARAMS_VIEW.get(insn.opcode)
        params = {view: dict(insn.params)} if view else {}
        streams = {s: {"base": getattr(insn, s).base, "stride0": getattr(insn, s).stride0,
                       "stride1": getattr(insn, s).stride1, "regions": getattr(insn, s).regions}
                   for s in ("x", "y", "z")}
        return Insn.const({"opcode": insn.opcode.value, "params": params, "count0": insn.count0,
                           "count1": insn.count1, **streams}).as_bits()

    @classmethod
    def decode(cls, word: int) -> "Instruction":
        """Decode an instruction word; raises ValueError on an illegal opcode."""
        raw = opcode_of(word)
        try:
            opcode = Opcode(raw)
        except ValueError:
            raise ValueError(f"illegal opcode {raw}") from None
        if not 0 <= word < (1 << INSN_BITS):
            raise ValueError(f"instruction word {word:#x} is wider than {INSN_BITS} bits")

        def field(name, width):
            return (word >> _OFFSET[name]) & ((1 << width) - 1)

        params = {}
        view = PARAMS_VIEW.get(opcode)
        if view is not None:
            bits = word >> _OFFSET["params"]
            for name, (offset, width, is_signed) in _PARAM_FIELDS[view].items():
                v = (bits >> offset) & ((1 << width) - 1)
                params[name] = v - (1 << width) if is_signed and v >> (width - 1) else v
        streams = {s: Addr(field(f"{s}.base", ADDR_BITS), field(f"{s}.stride0", ADDR_BITS),
                           field(f"{s}.stride1", ADDR_BITS), field(f"{s}.regions", REGIONS))
                   for s in ("x", "y", "z")}
        return cls(opcode, params, field("count0", COUNT_BITS), field("count1", COUNT_BITS), **streams)


# --- footprints (what the hazard logic tracks) --------------------------------------


#: Regions a scratchpad or accumulator read port serves: each memory is built as
#: banks of this many regions, each bank with one read port and one write port (the
#: two ports a block RAM has), so two units cannot read one bank at once.
PORT_REGIONS = {Mem.SPAD: 1, Mem.ACC: 2}


def read_port(mem: Mem, region: int) -> tuple[str, int]:
    """The read port (``("SPAD_PORT", k)`` or ``("ACC_PORT", k)``) serving ``region``."""
    return f"{mem.name}_PORT", region // PORT_REGIONS[mem]


@dataclass(frozen=True)
class Footprint:
    """Resources an instruction reads and writes: ``(Mem, region)`` pairs for
    memories, ``("BANK", b)`` for the array's weight banks; and the memory read
    ports it holds while it reads (:func:`read_port`), which conflict with another
    unit's as writes do. MATMUL holds the accumulator ports of the regions it
    writes: it reads each row before adding to it."""

    reads: frozenset
    writes: frozenset
    ports: frozenset = frozenset()


def footprint(insn: Instruction) -> Footprint:
    """The declared read and write sets of an instruction (from its region masks)."""
    reads, writes, ports = set(), set(), set()
    info = OPCODE_INFO[insn.opcode]
    for s, (_, access) in info.streams.items():
        mem = insn.stream_mem(s)
        if mem is None:
            continue
        mask = getattr(insn, s).regions or 0
        regs = [0] if mem in UNREGIONED else [r for r in range(REGIONS) if mask >> r & 1]
        (reads if access == "r" else writes).update((mem, r) for r in regs)
        if mem in PORT_REGIONS and (access == "r" or insn.opcode is Opcode.MATMUL):
            ports.update(read_port(mem, r) for r in regs)
    if insn.opcode is Opcode.REQUANT:
        reads.add((Mem.TABLE, 0))
    if insn.opcode is Opcode.LUT:
        reads.add((Mem.LUT, 0))
    if insn.opcode is Opcode.LOADW:
        writes.add(("BANK", insn.params.get("bank", 0)))
    if insn.opcode is Opcode.MATMUL:
        reads.add(("BANK", insn.params.get("bank", 0)))
    return Footprint(frozenset(reads), frozenset(writes), frozenset(ports))


# --- field legality (what BAD_FIELD checks) ------------------------------------------

#: Whether ``value`` breaks ``relation`` with ``bound``; written with operators that
#: build the same test on Python ints and on Amaranth values.
_BREAKS = {
    "in": lambda value, bound: functools.reduce(operator.and_, [value != b for b in bound]),
    "==": operator.ne,
    "<": operator.ge,
}


@dataclass(frozen=True)
class FieldRule:
    """A condition an instruction field must meet on a given core, else the core stops
    with ``BAD_FIELD`` before the instruction does anything.

    ``field`` is ``"count0"``, ``"count1"`` or a field of the opcode's params view;
    ``relation`` is ``"in"``, ``"=="`` or ``"<"``; ``bound`` is an int, a tuple of
    :class:`Mem` members (for ``"in"``), the name of the :class:`CoreConfig`
    attribute that holds the int, or, with ``per`` naming another params field, a
    function ``bound(cfg, value of per)`` giving the int.
    """

    opcode: Opcode
    field: str
    relation: str
    bound: "int | str | tuple[Mem, ...] | Callable[[CoreConfig, int], int]"
    per: "str | None" = None

    def limit(self, cfg: CoreConfig, of: int = 0) -> "int | tuple[Mem, ...]":
        """The bound on core ``cfg`` (``of``: the value of the ``per`` field)."""
        if self.per is not None:
            return self.bound(cfg, of)
        return getattr(cfg, self.bound) if isinstance(self.bound, str) else self.bound

    def broken_by_value(self, value, cfg: CoreConfig, of: int = 0):
        """Whether ``value`` breaks the rule on ``cfg``: a bool for an int, a 1-bit
        Amaranth value for a field of an :class:`Insn` view."""
        bound = self.limit(cfg, of)
        if self.relation == "in" and isinstance(value, int):
            bound = tuple(b.value for b in bound)
        return _BREAKS[self.relation](value, bound)

    def value(self, insn: "Instruction") -> int:
        """The field's value in a decoded instruction (missing params are 0)."""
        if self.field in ("count0", "count1"):
            return getattr(insn, self.field)
        return int(insn.params.get(self.field, 0))

    def of(self, insn: "Instruction") -> int:
        """The value of the ``per`` field in a decoded instruction (0 without one)."""
        return int(insn.params.get(self.per, 0)) if self.per is not None else 0

    def broken_by(self, insn: "Instruction", cfg: CoreConfig) -> bool:
        """Whether ``insn`` (of this rule's opcode) breaks the rule on ``cfg``."""
        return bool(self.broken_by_value(self.value(insn), cfg, self.of(insn)))

    def broken_expr(self, insn: Insn, cfg: CoreConfig) -> Value:
        """The same test on an Amaranth :class:`Insn` view (holding this opcode)."""
        def view(name):
            if name in ("count0", "count1"):
                return getattr(insn, name)
            return getattr(getattr(insn.params, PARAMS_VIEW[self.opcode]), name)
        if self.per is None:
            return self.broken_by_value(view(self.field), cfg)
        per = view(self.per)
        return functools.reduce(operator.or_, [
            (per == k) & self.broken_by_value(view(self.field), cfg, k)
            for k in self.per_values()])

    def per_values(self) -> range:
        """Every value the ``per`` field can hold (``range(1)`` without one)."""
        if self.per is None:
            return range(1)
        _, width, _ = _PARAM_FIELDS[PARAMS_VIEW[self.opcode]][self.per]
        return range(1 << width)

    def encodable(self) -> range:
        """Every value the field's bits can hold."""
        if self.field in ("count0", "count1"):
            return range(COUNT_MAX + 1)
        _, width, is_signed = _PARAM_FIELDS[PARAMS_VIEW[self.opcode]][self.field]
        return range(-(1 << (width - 1)), 1 << (width - 1)) if is_signed else range(1 << width)

    def legal_values(self, cfg: CoreConfig, of: int = 0) -> "range | tuple[int, ...]":
        """The encodable values that meet the rule on ``cfg``, in increasing order."""
        bound, values = self.limit(cfg, of), self.encodable()
        if self.relation == "<":
            return range(values.start, max(values.start, min(bound, values.stop)))
        if self.relation == "==":
            return (bound,) if bound in values else ()
        return tuple(sorted(b.value for b in bound))

    def illegal_values(self, cfg: CoreConfig, of: int = 0) -> list[int]:
        """The encodable values that break the rule on ``cfg`` (may be empty)."""
        return [v for v in self.encodable() if self.broken_by_value(v, cfg, of)]

    def describe(self) -> str:
        """The rule as Markdown text, e.g. ``mem in {SPAD, ACC}``."""
        if isinstance(self.bound, tuple):
            bound = "{" + ", ".join(b.name for b in self.bound) + "}"
        elif isinstance(self.bound, str):
            bound = f"`CoreConfig.{self.bound}`"
        elif self.per is not None:
            bound = f"`{self.bound.__name__}(cfg, {self.per})`"
        else:
            bound = str(self.bound)
        return f"`{self.field}` {self.relation} {bound}"


def weight_bits(narrow: int) -> int:
    """The weight width a LOADW's ``narrow`` field selects: ``8 - 2 * narrow``."""
    return WEIGHT_BITS[narrow]


def narrow_of(bits: int) -> int:
    """The LOADW ``narrow`` field of ``bits``-bit weights."""
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weight width must be one of {WEIGHT_BITS}, not {bits!r}")
    return WEIGHT_BITS.index(bits)


def loadw_rows(cfg: CoreConfig, narrow: int) -> int:
    """The weight-buffer rows one LOADW of ``narrow`` reads: a column's ``rows``
    weights of ``weight_bits(narrow)`` bits, whole bytes."""
    return -(-cfg.rows * weight_bits(narrow) // 8)


#: Every field rule, in the order the hardware and the simulator check them.
FIELD_RULES: tuple[FieldRule, ...] = (
    FieldRule(Opcode.LOAD, "mem", "in", (Mem.SPAD, Mem.WBUF, Mem.ACC, Mem.TABLE, Mem.LUT)),
    FieldRule(Opcode.STORE, "mem", "in", (Mem.SPAD, Mem.ACC)),
    FieldRule(Opcode.LOADW, "narrow", "<", "weight_widths"),
    FieldRule(Opcode.LOADW, "count0", "==", loadw_rows, per="narrow"),
    FieldRule(Opcode.LOADW, "count1", "==", 1),
    FieldRule(Opcode.MATMUL, "lane", "<", "matmul_lanes"),
    FieldRule(Opcode.REQUANT, "lane", "<", "requant_lanes"),
    FieldRule(Opcode.REQUANT, "table", "<", "table_depth"),
    FieldRule(Opcode.LUT, "table", "<", "lut_tables"),
    FieldRule(Opcode.MUL, "shift", "<", "mul_shift_bound"),
)


def field_rules(op: Opcode, rules: "tuple[FieldRule, ...]" = FIELD_RULES) -> tuple[FieldRule, ...]:
    """The rules of ``rules`` that apply to opcode ``op``."""
    return tuple(r for r in rules if r.opcode is op)


def bad_fields(insn: "Instruction", cfg: CoreConfig,
               rules: "tuple[FieldRule, ...]" = FIELD_RULES) -> list[FieldRule]:
    """The rules ``insn`` breaks on ``cfg`` (empty if it can execute)."""
    return [r for r in field_rules(insn.opcode, rules) if r.broken_by(insn, cfg)]


def layout_fields(layout=None, prefix: str = "") -> Iterator[tuple[str, int, int, object]]:
    """Walk a layout, yielding ``(dotted name, offset, width, shape)`` of every leaf
    field (used for the generated docs and C headers)."""
    layout = data.Layout.cast(layout if layout is not None else Insn)
    for name, f in layout:
        full = f"{prefix}{name}"
        shape = f.shape
        if isinstance(shape, type) and issubclass(shape, data.View):
            shape = data.Layout.cast(shape)
        if isinstance(shape, data.StructLayout):
            for sub in layout_fields(shape, full + "."):
                yield sub[0], f.offset + sub[1], sub[2], sub[3]
        else:
            yield full, f.offset, f.width, shape


# --- stream words ---------------------------------------------------------------------
#
# A data-stream or result-stream word is ``cfg.bus_width`` bits; a memory row sits in
# its low bits as OPCODE_INFO[LOAD] describes. These helpers are the only place that
# packs and unpacks rows.

import numpy as _np


def _lane_bits(mem: Mem, cfg: CoreConfig) -> tuple[int, int]:
    """(bits per lane, lanes) of a row of ``mem``."""
    return {
        Mem.SPAD: (8, cfg.lanes),
        Mem.WBUF: (8, cfg.cols),
        Mem.ACC: (cfg.acc_width, cfg.cols),
        Mem.TABLE: (12, cfg.cols),
        Mem.LUT: (8, 1),
    }[Mem(mem)]


def pack_row(mem: Mem, values, cfg: CoreConfig) -> int:
    """One memory row (lane values; signed values are stored two's complement) as a
    stream word. TABLE rows take ``(shift, align)`` pairs."""
    width, lanes = _lane_bits(mem, cfg)
    if Mem(mem) is Mem.TABLE:
        values = [(int(s) & 0x3F) | ((int(a) & 0x3F) << 6) for s, a in values]
    values = list(values)
    if len(values) != lanes:
        raise ValueError(f"a {Mem(mem).name} row has {lanes} lanes, got {len(values)}")
    mask = (1 << width) - 1
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & mask) << (width * i)
    return word


def unpack_row(mem: Mem, word: int, cfg: CoreConfig, signed: bool = True) -> list:
    """Inverse of :func:`pack_row`: lane values (ACC and TABLE always signed; SPAD and
    WBUF bytes signed if ``signed``)."""
    width, lanes = _lane_bits(mem, cfg)
    mask = (1 << width) - 1
    raw = [(word >> (width * i)) & mask for i in range(lanes)]

    def sx(v, w):
        return v - (1 << w) if v >> (w - 1) & 1 else v

    mem = Mem(mem)
    if mem is Mem.TABLE:
        return [(sx(v & 0x3F, 6), sx(v >> 6, 6)) for v in raw]
    if mem is Mem.ACC or signed:
        return [sx(v, width) for v in raw]
    return raw


def pack_rows(mem: Mem, rows, cfg: CoreConfig) -> list[int]:
    """Stream words for a 2-D array of rows (see :func:`pack_row`)."""
    arr = _np.asarray(rows)
    width, lanes = _lane_bits(mem, cfg)
    if (Mem(mem) is Mem.TABLE or width not in (8, 16, 32, 64) or arr.ndim != 2
            or arr.shape[1] != lanes or not _np.issubdtype(arr.dtype, _np.integer)):
        return [pack_row(mem, r, cfg) for r in arr.tolist()]
    # Lanes of whole bytes: the rows' two's-complement bytes, little-endian, are the
    # words, cut from one buffer (a network's weights are millions of rows).
    lane_bits = (arr.astype(_np.int64) & ((1 << width) - 1) if width < 64 else arr)
    buf = lane_bits.astype(f"<u{width // 8}").tobytes()
    n = lanes * width // 8
    if n % 8:
        return [int.from_bytes(buf[i:i + n], "little") for i in range(0, len(buf), n)]
    # Whole 64-bit limbs: numpy makes the integers, most significant limb first.
    limbs = _np.frombuffer(buf, "<u8").reshape(-1, n // 8)
    words = limbs[:, -1].tolist()
    for k in range(n // 8 - 2, -1, -1):
        words = [(w << 64) | low for w, low in zip(words, limbs[:, k].tolist())]
    return words


def unpack_rows(mem: Mem, words, cfg: CoreConfig, signed: bool = True) -> _np.ndarray:
    """Rows (int64 array) from stream words (see :func:`unpack_row`)."""
    return _np.array([unpack_row(mem, w, cfg, signed) for w in words], dtype=_np.int64)


def pack_tiles(tiles, bits: int) -> _np.ndarray:
    """Weight tiles (..., rows, cols) of ``bits``-bit integers as the weight-buffer
    rows LOADW unpacks them from (OPCODE_INFO[LOADW]): (..., ceil(rows * bits / 8),
    cols) int8, each column's weights packed in its byte lane, first row lowest."""
    t = _np.asarray(tiles, _np.int64)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if t.size and (t.min() < lo or t.max() > hi):
        raise ValueError(f"{bits}-bit weights must lie in {lo}..{hi}, not {t.min()}..{t.max()}")
    if bits == 8:
        return t.astype(_np.int8)
    *lead, rows, cols = t.shape
    n = -(-rows * bits // 8)
    # A column's bit string, least significant first: bit t of row i is bit b*i + t.
    lanes = (t[..., None] >> _np.arange(bits)) & 1                  # (..., rows, cols, bits)
    lanes = _np.moveaxis(lanes, -2, -3).reshape(*lead, cols, rows * bits)
    lanes = _np.concatenate([lanes, _np.zeros((*lead, cols, 8 * n - rows * bits), _np.int64)], -1)
    octets = (lanes.reshape(*lead, cols, n, 8) << _np.arange(8)).sum(-1)
    return _np.swapaxes(octets, -1, -2).astype(_np.uint8).view(_np.int8)


def unpack_tiles(packed, bits: int, rows: int) -> _np.ndarray:
    """Inverse of :func:`pack_tiles`: the (..., rows, cols) int64 weights that LOADW
    of ``bits``-bit weights puts in the array from weight-buffer rows (..., n, cols)."""
    p = _np.asarray(packed, _np.int64) & 0xFF
    if bits == 8:
        return _np.where(p >= 128, p - 256, p)[..., :rows, :]
    *lead, n, cols = p.shape
    lanes = (_np.swapaxes(p, -1, -2)[..., None] >> _np.arange(8)) & 1   # (..., cols, n, 8)
    lanes = lanes.reshape(*lead, cols, 8 * n)[..., :rows * bits].reshape(*lead, cols, rows, bits)
    v = (lanes << _np.arange(bits)).sum(-1)
    v = _np.where(v >> (bits - 1) & 1, v - (1 << bits), v)
    return _np.swapaxes(v, -1, -2)


class CoreState(enum.Enum, shape=2):
    """The core's ``state`` output."""

    IDLE = 0      #: after reset, before the first instruction
    RUNNING = 1   #: a program is executing
    HALTED = 2    #: a HALT completed; counters hold that program's figures
    ERROR = 3     #: stopped on an error (``error``, ``error_pc``) until reset
