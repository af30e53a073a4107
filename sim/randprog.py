"""Random programs for regression and fuzzing of the RTL against the instruction-level
simulator, and the coverage they reach.

Programs mix every opcode with random address loops over small or large memories, so
that instructions collide on regions often and the hazard logic is exercised:

* loop counts of zero (either loop, the other up to ``COUNT_MAX``), one, a few, and
  long (up to ``COUNT_MAX`` iterations; a program's iterations are bounded by
  :attr:`Profile.max_iterations` so that runs stay short);
* strides of zero, one, small and large (shrunk until the loops fit the memory), and
  random 16-bit strides on a loop that never advances (count 0 or 1);
* lanes, banks, region masks (exact or wider than needed), shift-table entries,
  lookup tables and flags;
* random bits in every field an instruction does not read: params bits outside its
  params view, unused address streams, and all of HALT's and SYNC's fields;
* several HALTs per program (back to back, or first), the last word always one.

Error programs end in one faulting instruction, then a LOAD and a HALT that must
never run. :func:`error_targets` lists every fault the controller can raise on a
core: each illegal opcode value, each breakable field rule
(:data:`fxpgen.isa.FIELD_RULES`), each (opcode, stream, memory) running off its
memory in every :data:`ADDRESS_WAYS` (walking off the end, a base beyond it, the
outer loop, a stride wrapping past ``2**16`` or past the address generator's
``loop_addr_bits``), and each regioned stream leaving its region mask.

Everything is drawn from one ``random.Random``: a seed reproduces a program.
:func:`coverage` counts the bins (:func:`coverage_bins`) a set of programs hits.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from amaranth.lib import data

from fxpgen.config import REGIONS, CoreConfig
from fxpgen.hw.addrgen import loop_addr_bits
from fxpgen.isa import (ADDR_BITS, COUNT_MAX, FIELD_RULES, INSN_BITS, OPCODE_INFO, PARAMS_VIEW, UNREGIONED,
                        Addr, FieldRule, Insn, Instruction, Mem, Opcode, Params, field_rules,
                        opcode_of, region_of, weight_bits)
from fxpgen.numerics import WEIGHT_BITS

__all__ = ["RandomProgram", "Profile", "WIDE", "SHORT", "random_program", "random_error_program",
           "scrub_program", "ERROR_KINDS", "ADDRESS_WAYS", "error_targets", "breakable_rules",
           "breaking", "coverage", "coverage_bins", "random_config"]

#: Relative frequency of each opcode in random programs.
MIX = {
    Opcode.LOAD: 18, Opcode.STORE: 12, Opcode.LOADW: 12, Opcode.MATMUL: 22,
    Opcode.REQUANT: 14, Opcode.ADD: 8, Opcode.MAX: 8, Opcode.MUL: 8, Opcode.LUT: 6,
    Opcode.SYNC: 2,
}

ERROR_KINDS = ("illegal_opcode", "bad_field", "address", "region")

#: How an address stream runs off its memory: the last rows then one past the end;
#: a base at or beyond the depth; the outer loop's stride; an inner stride that
#: would alias a low row modulo ``2**16``, or modulo ``2**loop_addr_bits(cfg)``.
ADDRESS_WAYS = ("end", "base", "outer", "wrap16", "wrap_loop")

_NO_ADDR = Addr(0, 0, 0, 0)
_ADDR_MAX = (1 << ADDR_BITS) - 1
_ILLEGAL_OPCODES = tuple(v for v in range(16) if v not in {op.value for op in Opcode})
_LOOP_OPS = tuple(op for op in MIX if op is not Opcode.SYNC)


@dataclass(frozen=True)
class Profile:
    """What random programs draw from.

    counts          relative weight of each loop-count kind: ``zero`` (one loop 0),
                    ``one`` (1 x 1), ``short`` (up to 16 x 3), ``long`` (up to
                    ``COUNT_MAX`` iterations)
    max_iterations  iterations of one program at most (long counts stop there)
    garbage         probability that an instruction's unread fields hold random bits
    extra_halts     relative weight of each number of HALTs inserted before the last
    """

    counts: Mapping[str, int]
    max_iterations: int
    garbage: float
    extra_halts: Mapping[int, int]


#: The fuzzing profile: every kind of count, garbage and HALT pattern.
WIDE = Profile({"zero": 1, "one": 2, "short": 12, "long": 2}, 6000, 0.5, {0: 4, 1: 2, 2: 1, 3: 1})
#: Short programs with one HALT, for simulators that run a few thousand cycles a second.
SHORT = Profile({"zero": 1, "one": 2, "short": 12}, 96, 0.5, {0: 1})


@dataclass
class RandomProgram:
    """Instructions (an ``int`` is a raw word, e.g. an illegal opcode), the data words
    their LOADs consume, random bits OR-ed into the params bits instruction ``k`` does
    not read (``noise[k]``), and for an error program what it breaks
    (``fault``, one of :func:`error_targets`, with ``way`` for an address fault)."""

    instructions: list
    data: list[int]
    noise: dict[int, int] = field(default_factory=dict)
    fault: tuple | None = None

    def words(self, cfg: CoreConfig) -> list[int]:
        return [i if isinstance(i, int) else i.encode(cfg) | self.noise.get(k, 0)
                for k, i in enumerate(self.instructions)]


def _row_bits(cfg: CoreConfig) -> dict[Mem, int]:
    return {Mem.SPAD: 8 * cfg.lanes, Mem.WBUF: 8 * cfg.cols,
            Mem.ACC: cfg.acc_width * cfg.cols, Mem.TABLE: 12 * cfg.cols, Mem.LUT: 8}


def _addresses(a: Addr, c0: int, c1: int) -> list[int]:
    return [a.base + i1 * a.stride1 + i0 * a.stride0 for i1 in range(c1) for i0 in range(c0)]


def _unread_param_bits(op: Opcode) -> int:
    """Mask (in word bits) of the params bits opcode ``op`` does not read."""
    params = data.Layout.cast(Insn)["params"]
    used = 0
    if op in PARAMS_VIEW:
        for _, f in data.Layout.cast(Params.as_shape()[PARAMS_VIEW[op]].shape):
            used |= ((1 << f.width) - 1) << f.offset
    return (((1 << params.width) - 1) & ~used) << params.offset


_UNREAD = {op: _unread_param_bits(op) for op in Opcode}


def _first_fault(insn: Instruction, cfg: CoreConfig) -> tuple[int, str, str] | None:
    """``(iteration, stream, "address" | "region")`` of the first faulting iteration
    (streams checked x, y, z as the simulator does), or None."""
    best = None
    for s in ("x", "y", "z"):
        mem = insn.stream_mem(s)
        if mem is None:
            continue
        depth, a = cfg.depth(mem), getattr(insn, s)
        for t, addr in enumerate(_addresses(a, insn.count0, insn.count1)):
            if addr >= depth:
                kind = "address"
            elif mem not in UNREGIONED and not a.regions >> region_of(addr, depth) & 1:
                kind = "region"
            else:
                continue
            if best is None or t < best[0]:
                best = (t, s, kind)
            break
    return best


class _Gen:
    """Draws the instructions of one program from ``rng``; keeps the data words its
    LOADs consume (in program order) and the iterations left in its budget."""

    def __init__(self, cfg: CoreConfig, rng: random.Random, profile: Profile):
        self.cfg, self.rng, self.profile = cfg, rng, profile
        self.data: list[int] = []
        self.budget = profile.max_iterations
        self.row_bits = _row_bits(cfg)
        self.bus_width = cfg.bus_width

    def counts(self) -> tuple[int, int]:
        r, kinds = self.rng, self.profile.counts
        kind = r.choices(list(kinds), list(kinds.values()))[0]
        if kind == "zero":
            other = r.choice([1, r.randint(1, 64), COUNT_MAX])
            return (0, other) if r.random() < 0.5 else (other, 0)
        if kind == "one":
            return 1, 1
        if kind == "long" and self.budget >= 256:
            top = min(self.budget, COUNT_MAX)
            n = r.choice([top, r.randint(64, top)])
            c0, c1 = r.choice([(n, 1), (1, n), (max(1, n // 8), 8)])
            return c0, c1
        return r.choice([1, 2, 3, 4, 5, 8, r.randint(1, 16)]), r.choice([1, 1, 2, 3])

    def garbage(self) -> bool:
        return self.rng.random() < self.profile.garbage

    def junk_addr(self) -> Addr:
        r = self.rng
        return Addr(r.randint(0, _ADDR_MAX), r.randint(0, _ADDR_MAX), r.randint(0, _ADDR_MAX),
                    r.randrange(1 << REGIONS))

    def stream(self, depth: int, c0: int, c1: int) -> Addr:
        """A random in-range stream; the region mask is exact or widened. A loop that
        never advances (count 0 or 1) may have any stride; a stream that never runs
        may hold anything."""
        r = self.rng
        if (c0 == 0 or c1 == 0) and self.garbage():
            return self.junk_addr()
        s0 = r.choice([0, 1, 1, 1, 2, 3, r.randint(0, max(1, depth // 8))])
        s1 = r.choice([0, c0 * s0, c0 * s0 + 1, r.randint(0, max(1, depth // 4))])
        n0, n1 = max(c0, 1), max(c1, 1)
        span = (n0 - 1) * s0 + (n1 - 1) * s1
        while span >= depth:
            s0, s1 = s0 // 2, s1 // 2
            span = (n0 - 1) * s0 + (n1 - 1) * s1
        base = r.randint(0, depth - 1 - span)
        lo, hi = region_of(base, depth), region_of(base + span, depth)
        mask = sum(1 << k for k in range(lo, hi + 1))
        if r.random() < 0.25:
            mask |= r.randrange(1 << REGIONS)
        if n0 == 1 and self.garbage():
            s0 = r.randint(0, _ADDR_MAX)
        if n1 == 1 and self.garbage():
            s1 = r.randint(0, _ADDR_MAX)
        return Addr(base, s0, s1, mask)

    def row_data(self, mem: Mem) -> int:
        """A data word for a row of ``mem``, random bits above the row (the core must
        ignore them)."""
        r, cfg = self.rng, self.cfg
        bits = self.row_bits[mem]
        if mem is Mem.TABLE:
            word = 0
            for j in range(cfg.cols):
                shift = r.choice([r.randint(-32, 31), r.randint(0, 16), r.randint(6, 14)])
                align = r.choice([0, 0, r.randint(-4, 4), r.randint(-32, 31)])
                word |= ((shift & 0x3F) | ((align & 0x3F) << 6)) << (12 * j)
        elif mem is Mem.ACC and r.random() < 0.7:
            word = 0
            lim = 1 << min(cfg.acc_width - 1, r.choice([8, 16, 24, 40]))
            for j in range(cfg.cols):
                word |= (r.randint(-lim, lim - 1) & ((1 << cfg.acc_width) - 1)) << (cfg.acc_width * j)
        else:
            return r.getrandbits(self.bus_width)
        return word | (r.getrandbits(self.bus_width - bits) << bits if self.bus_width > bits else 0)

    def ruled(self, op: Opcode, name: str, of: int = 0) -> int:
        """A random value of field ``name`` of ``op`` that meets its field rule (``of``:
        the value of the field the rule's bound depends on)."""
        rule = next(r for r in field_rules(op) if r.field == name)
        values = rule.legal_values(self.cfg, of)
        return values[0] if len(values) == 1 else self.rng.choice(values)

    def instruction(self, op: Opcode) -> Instruction:
        c0, c1 = self.counts()
        insn = _BUILDERS[op](self, c0, c1)
        if self.garbage():
            unused = [s for s in ("x", "y", "z") if insn.stream_mem(s) is None]
            insn = replace(insn, **{s: self.junk_addr() for s in unused})
        return insn

    def legal(self, op: Opcode) -> Instruction:
        """A random instruction of ``op`` that runs without fault; its data words are
        appended to :attr:`data`."""
        while True:
            mark = len(self.data)
            insn = self.instruction(op)
            if not _reads_own_writes(insn):
                self.budget -= insn.iterations if op is not Opcode.SYNC else 0
                return insn
            del self.data[mark:]

    def bare(self, op: Opcode) -> Instruction:
        """A HALT or SYNC, its unread count and stream fields possibly random."""
        if not self.garbage():
            return Instruction(op)
        r = self.rng
        return Instruction(op, {}, r.randint(0, COUNT_MAX), r.randint(0, COUNT_MAX),
                           self.junk_addr(), self.junk_addr(), self.junk_addr())

    def program(self, body: list) -> RandomProgram:
        """``body`` with random HALTs inserted anywhere (first and back to back too)."""
        extra = self.profile.extra_halts
        for _ in range(self.rng.choices(list(extra), list(extra.values()))[0]):
            body.insert(self.rng.randint(0, len(body)), self.bare(Opcode.HALT))
        return RandomProgram(body, self.data)

    def with_noise(self, prog: RandomProgram) -> RandomProgram:
        """``prog`` with random bits for the unread params bits of some instructions."""
        for k, insn in enumerate(prog.instructions):
            if isinstance(insn, Instruction) and self.garbage():
                prog.noise[k] = self.rng.getrandbits(INSN_BITS) & _UNREAD[insn.opcode]
        return prog


def _load(g: _Gen, c0: int, c1: int) -> Instruction:
    cfg, r = g.cfg, g.rng
    mem = r.choices([Mem.SPAD, Mem.WBUF, Mem.ACC, Mem.TABLE, Mem.LUT], [4, 3, 2, 1, 2])[0]
    if mem is Mem.TABLE:
        c0, c1 = (0, c1) if c0 == 0 else (r.randint(1, cfg.table_depth), 1)
        base = r.randint(0, cfg.table_depth - max(c0, 1))
        z = Addr(base, 1, 0, r.randrange(1 << REGIONS))
    elif mem is Mem.LUT:
        # A whole table, or a few entries anywhere (also across tables).
        c0, c1 = (0, c1) if c0 == 0 else (r.choice([256, r.randint(1, 16)]), 1)
        n = max(c0, 1)
        base = r.choice([256 * r.randrange(cfg.lut_tables), r.randint(0, cfg.lut_depth - n)])
        z = Addr(min(base, cfg.lut_depth - n), 1, 0, r.randrange(1 << REGIONS))
    else:
        z = g.stream(cfg.depth(mem), c0, c1)
    g.data += [g.row_data(mem) for _ in range(c0 * c1)]
    return Instruction(Opcode.LOAD, {"mem": mem.value}, c0, c1, z=z)


def _store(g: _Gen, c0: int, c1: int) -> Instruction:
    mem = Mem(g.ruled(Opcode.STORE, "mem"))
    return Instruction(Opcode.STORE, {"mem": mem.value}, c0, c1, x=g.stream(g.cfg.depth(mem), c0, c1))


def _loadw(g: _Gen, c0: int, c1: int) -> Instruction:
    narrow = g.rng.choice([0, g.ruled(Opcode.LOADW, "narrow")])
    c0, c1 = g.ruled(Opcode.LOADW, "count0", narrow), g.ruled(Opcode.LOADW, "count1")
    return Instruction(Opcode.LOADW, {"bank": g.rng.randrange(2), "narrow": narrow}, c0, c1,
                       x=g.stream(g.cfg.wbuf_depth, c0, c1))


def _matmul(g: _Gen, c0: int, c1: int) -> Instruction:
    cfg, r = g.cfg, g.rng
    params = {"bank": r.randrange(2), "accumulate": r.randrange(2),
              "act_signed": r.randrange(2), "lane": g.ruled(Opcode.MATMUL, "lane")}
    return Instruction(Opcode.MATMUL, params, c0, c1, x=g.stream(cfg.spad_depth, c0, c1),
                       z=g.stream(cfg.acc_depth, c0, c1))


def _requant(g: _Gen, c0: int, c1: int) -> Instruction:
    cfg, r = g.cfg, g.rng
    params = {"table": g.ruled(Opcode.REQUANT, "table"), "lane": g.ruled(Opcode.REQUANT, "lane"),
              "relu": r.randrange(2), "out_signed": r.randrange(2),
              "residual": r.randrange(2), "res_signed": r.randrange(2)}
    y = g.stream(cfg.spad_depth, c0, c1) if params["residual"] else _NO_ADDR
    return Instruction(Opcode.REQUANT, params, c0, c1, x=g.stream(cfg.acc_depth, c0, c1), y=y,
                       z=g.stream(cfg.spad_depth, c0, c1))


def _lut(g: _Gen, c0: int, c1: int) -> Instruction:
    d = g.cfg.spad_depth
    return Instruction(Opcode.LUT, {"table": g.ruled(Opcode.LUT, "table")}, c0, c1,
                       x=g.stream(d, c0, c1), z=g.stream(d, c0, c1))


def _mul(g: _Gen, c0: int, c1: int) -> Instruction:
    r, d = g.rng, g.cfg.spad_depth
    params = {"shift": r.choice([0, 7, 8, r.randint(-32, 31), r.randint(0, 16)]),
              "relu": r.randrange(2), "out_signed": r.randrange(2),
              "a_signed": r.randrange(2), "b_signed": r.randrange(2)}
    # stride-0 y: one row of factors broadcast over the pixels.
    y = g.stream(d, c0, c1)
    if r.random() < 0.3:
        y = replace(y, stride0=0)
    return Instruction(Opcode.MUL, params, c0, c1, x=g.stream(d, c0, c1), y=y, z=g.stream(d, c0, c1))


def _alu(op: Opcode):
    def build(g: _Gen, c0: int, c1: int) -> Instruction:
        r, d = g.rng, g.cfg.spad_depth
        params = {"a_signed": r.randrange(2)}
        if op is Opcode.ADD:
            params.update(a_shift=r.choice([0, 0, 1, 2, r.randint(0, 15)]),
                          b_shift=r.choice([0, 0, 1, r.randint(0, 15)]),
                          shift=r.choice([0, 1, 2, r.randint(-32, 31)]),
                          relu=r.randrange(2), out_signed=r.randrange(2), b_signed=r.randrange(2))
        return Instruction(op, params, c0, c1, x=g.stream(d, c0, c1), y=g.stream(d, c0, c1),
                           z=g.stream(d, c0, c1))
    return build


def _sync(g: _Gen, c0: int, c1: int) -> Instruction:
    return g.bare(Opcode.SYNC)


#: How each opcode's random instruction is built from its loop counts.
_BUILDERS = {
    Opcode.LOAD: _load, Opcode.STORE: _store, Opcode.LOADW: _loadw, Opcode.MATMUL: _matmul,
    Opcode.REQUANT: _requant, Opcode.ADD: _alu(Opcode.ADD), Opcode.MAX: _alu(Opcode.MAX),
    Opcode.MUL: _mul, Opcode.LUT: _lut, Opcode.SYNC: _sync,
}


def _reads_own_writes(insn: Instruction) -> bool:
    """An iteration reading a scratchpad row an earlier iteration wrote (not allowed:
    the vector unit's pipeline reads ahead of its writes)."""
    if insn.opcode not in (Opcode.REQUANT, Opcode.ADD, Opcode.MAX, Opcode.MUL, Opcode.LUT):
        return False
    z = _addresses(insn.z, insn.count0, insn.count1)
    reads = []
    if insn.opcode is not Opcode.REQUANT:
        reads.append(_addresses(insn.x, insn.count0, insn.count1))
    if insn.opcode not in (Opcode.REQUANT, Opcode.LUT) or insn.params.get("residual"):
        reads.append(_addresses(insn.y, insn.count0, insn.count1))
    rows = set(z)
    if not any(rows.intersection(rd) for rd in reads):
        return False
    written: set[int] = set()
    for k, zk in enumerate(z):
        if any(rd[k] in written for rd in reads):
            return True
        written.add(zk)
    return False


@functools.lru_cache(maxsize=64)
def _breakable(cfg: CoreConfig) -> tuple[FieldRule, ...]:
    return tuple(r for r in FIELD_RULES if r.illegal_values(cfg))


def breakable_rules(cfg: CoreConfig) -> list[FieldRule]:
    """The field rules some encodable value breaks on ``cfg`` (a bound at the top of a
    field's range cannot be broken)."""
    return list(_breakable(cfg))


def breaking(insn: Instruction, rule: FieldRule, cfg: CoreConfig,
             rng: random.Random) -> Instruction:
    """``insn`` (of ``rule.opcode``) with ``rule``'s field set to a random value that
    breaks it; every other field is kept."""
    value = rng.choice(rule.illegal_values(cfg, rule.of(insn)))
    if rule.field in ("count0", "count1"):
        return replace(insn, **{rule.field: value})
    insn = replace(insn, params={**insn.params, rule.field: value})
    # A field another rule's bound depends on: that field follows, so only this
    # rule is broken.
    for other in field_rules(insn.opcode):
        if other.per == rule.field:
            legal = other.legal_values(cfg, value)[0]
            insn = (replace(insn, **{other.field: legal}) if other.field in ("count0", "count1")
                    else replace(insn, params={**insn.params, other.field: legal}))
    return insn


def _stream_targets() -> list[tuple[Opcode, str, Mem]]:
    """Every (opcode, stream, memory) an address stream can point at."""
    out = []
    for op, info in OPCODE_INFO.items():
        for s, (mem, _) in info.streams.items():
            # A params field names the memory: the ones it may name (LOAD's, STORE's)
            # are the same on every core.
            mems = [mem] if isinstance(mem, Mem) else [
                Mem(v) for v in next(r for r in field_rules(op) if r.field == mem).legal_values(CoreConfig())]
            out += [(op, s, m) for m in mems]
    return out


_STREAM_TARGETS = _stream_targets()


@functools.lru_cache(maxsize=64)
def _targets(cfg: CoreConfig) -> tuple[tuple, ...]:
    return tuple([("illegal_opcode", v) for v in _ILLEGAL_OPCODES]
                 + [("bad_field", r.opcode, r.field) for r in _breakable(cfg)]
                 + [("address", *t) for t in _STREAM_TARGETS]
                 + [("region", *t) for t in _STREAM_TARGETS if t[2] not in UNREGIONED])


def error_targets(cfg: CoreConfig) -> list[tuple]:
    """Every fault an error program can end in on ``cfg``: ``("illegal_opcode", value)``,
    ``("bad_field", opcode, field)``, ``("address", opcode, stream, mem)`` and
    ``("region", opcode, stream, mem)``."""
    return list(_targets(cfg))


def _ways(op: Opcode, cfg: CoreConfig, depth: int) -> list[str]:
    """The :data:`ADDRESS_WAYS` an instruction of ``op`` can fault in on a memory of
    ``depth`` rows (LOADW runs ``loadw_rows`` x 1 iterations, ``rows`` x 1 at 8 bits;
    a wrap needs a base above 0)."""
    inner = op is not Opcode.LOADW or cfg.rows >= 2
    ok = {"end": inner, "base": True, "outer": op is not Opcode.LOADW,
          "wrap16": inner and depth >= 2, "wrap_loop": inner and depth >= 2}
    return [w for w in ADDRESS_WAYS if ok[w]]


def _off_the_end(a: Addr, depth: int, c0: int, way: str, loop_bits: int,
                 rng: random.Random) -> Addr:
    """Stream ``a`` (in range) changed to run off a memory of ``depth`` rows in
    ``way``, every region allowed."""
    full = (1 << REGIONS) - 1
    if way == "end":
        k = rng.randint(1, min(c0 - 1, depth))
        return Addr(depth - k, 1, a.stride1, full)
    if way == "base":
        return Addr(rng.randint(depth, _ADDR_MAX), a.stride0, a.stride1, full)
    if way == "outer":
        return Addr(a.base, a.stride0, rng.randint(depth - a.base, _ADDR_MAX), full)
    # Base b and stride 2**k - d (1 <= d <= b): the next address b - d + 2**k would
    # be row b - d if the generator dropped bit k.
    k = ADDR_BITS if way == "wrap16" else loop_bits
    base = rng.randint(1, depth - 1)
    return Addr(base, (1 << k) - rng.randint(1, base), a.stride1, full)


def _faulting(g: _Gen, target: tuple, way: str | None) -> Instruction:
    """An instruction of ``target``'s opcode whose first fault is ``target``'s: its
    stream leaves the memory (``way``) or its region mask; its data words appended."""
    kind, op, s, mem = target
    cfg, r = g.cfg, g.rng
    depth = cfg.depth(mem)
    while True:
        mark = len(g.data)
        c0, c1 = r.randint(2, 12), r.randint(2, 3) if way == "outer" else r.choice([1, 1, 2, 3])
        insn = _BUILDERS[op](g, c0, c1)
        del g.data[mark:]
        if op is Opcode.LOAD:
            insn = replace(insn, params={"mem": mem.value}, count0=c0, count1=c1)
        if op is Opcode.LOADW and insn.count0 < 2 and way not in (None, "base"):
            continue    # a narrow tile of one row: no inner loop to run off the end
        if op is Opcode.REQUANT and s == "y":
            insn = replace(insn, params={**insn.params, "residual": 1})
        a = g.stream(depth, insn.count0, insn.count1)
        if kind == "region":
            used = sorted({region_of(x, depth) for x in _addresses(a, insn.count0, insn.count1)})
            bad = replace(a, regions=a.regions & ~(1 << r.choice(used)))
        else:
            bad = _off_the_end(a, depth, insn.count0, way, loop_addr_bits(cfg), r)
        insn = replace(insn, **{s: bad})
        first = _first_fault(insn, cfg)
        if first is not None and first[1:] == (s, kind) and not _reads_own_writes(insn):
            if op is Opcode.LOAD:
                g.data += [g.row_data(mem) for _ in range(insn.iterations)]
            return insn


def random_program(cfg: CoreConfig, rng: random.Random, length: tuple[int, int] = (6, 24),
                   profile: Profile = WIDE) -> RandomProgram:
    """A random legal program of ``length`` instructions (range) plus HALTs, the last
    word a HALT."""
    g = _Gen(cfg, rng, profile)
    ops, weights = list(MIX), list(MIX.values())
    # LOADs consume data words when generated: keep data order = program order.
    body = [g.legal(rng.choices(ops, weights)[0]) for _ in range(rng.randint(*length))]
    prog = g.program(body)
    prog.instructions.append(g.bare(Opcode.HALT))
    return g.with_noise(prog)


def random_error_program(cfg: CoreConfig, rng: random.Random, kind: str | None = None,
                         profile: Profile = WIDE, target: tuple | None = None) -> RandomProgram:
    """A short legal prefix (HALTs too), then one instruction faulting with ``target``
    (one of :func:`error_targets`; default: one of ``kind``, one of
    :data:`ERROR_KINDS` or None for any, drawn uniformly), then a LOAD and a HALT that
    must never run."""
    if kind is not None and kind not in ERROR_KINDS:
        raise ValueError(f"unknown error kind {kind!r}; choose from {ERROR_KINDS}")
    if target is None:
        target = rng.choice([t for t in _targets(cfg) if kind in (None, t[0])])
    elif target not in _targets(cfg):
        raise ValueError(f"{target} is not an error target on {cfg.name}")
    g = _Gen(cfg, rng, profile)
    ops, weights = list(MIX), list(MIX.values())
    prog = g.program([g.legal(rng.choices(ops, weights)[0]) for _ in range(rng.randint(0, 6))])
    if target[0] == "illegal_opcode":
        prog.instructions.append(rng.getrandbits(INSN_BITS) & ~0xF | target[1])
    elif target[0] == "bad_field":
        rule = next(r for r in FIELD_RULES if (r.opcode, r.field) == target[1:])
        prog.instructions.append(breaking(g.legal(rule.opcode), rule, cfg, rng))
    else:
        way = rng.choice(_ways(target[1], cfg, cfg.depth(target[3]))) if target[0] == "address" else None
        prog.instructions.append(_faulting(g, target, way))
        target += (way,) if way else ()
    prog.instructions += [g.legal(Opcode.LOAD), Instruction(Opcode.HALT)]
    prog.fault = target
    return g.with_noise(prog)


def scrub_program(cfg: CoreConfig, rng: random.Random) -> RandomProgram:
    """Random data in every row of every memory and in both weight banks, then HALT.
    Run after an error program: the units a fault stops may have done more or less
    than the simulator, so the state is made known again."""
    g = _Gen(cfg, rng, SHORT)
    insns = []
    for mem in Mem:
        depth = cfg.depth(mem)
        c0 = min(depth, 1024)
        insns.append(Instruction(Opcode.LOAD, {"mem": mem.value}, c0, depth // c0, z=Addr(0, 1, c0)))
        g.data += [g.row_data(mem) for _ in range(depth)]
    insns += [Instruction(Opcode.LOADW, {"bank": b}, cfg.rows, 1, x=Addr(b * cfg.rows % cfg.wbuf_depth, 1))
              for b in (0, 1)]
    return RandomProgram(insns + [Instruction(Opcode.HALT)], g.data)


def random_config(rng: random.Random) -> CoreConfig:
    """A random small core: any array shape (rows > cols too), accumulator width from
    ``psum_width`` to 48, memories of 4 to 256 rows, 1 to 16 shift-table entries and
    lookup tables, 16- or 32-bit counters."""
    small = rng.choice([1, 2, 4, 8])
    rows, cols = rng.choice([(small, small), (small, 2 * small), (2 * small, small), (small, 4 * small)])
    psum = CoreConfig(rows=rows, cols=cols).psum_width
    return CoreConfig(rows=rows, cols=cols, acc_width=rng.randint(psum, 48),
                      spad_depth=1 << rng.randint(2, 8), wbuf_depth=max(1 << rng.randint(2, 8), 1 << (rows - 1).bit_length()),
                      acc_depth=1 << rng.randint(2, 8), table_depth=rng.randint(1, 16),
                      lut_tables=rng.randint(1, 16), counter_width=rng.choice([16, 32]))


# --- coverage -------------------------------------------------------------------------

_COUNT_BINS = ("zero", "one", "short", "long", "max")
_STRIDE_BINS = ("zero", "unit", "small", "large", "idle", "beyond", "wrap16", "wrap_loop")
_GARBAGE_BINS = ("params", "stream", "halt_sync")
_HALT_BINS = ("one", "several", "first", "adjacent")
#: A loop of this many iterations or more is ``long``.
LONG = 1024


def _label(target: tuple) -> str:
    kind, *rest = target
    if kind == "illegal_opcode":
        return f"error:illegal_opcode:{rest[0]}"
    if kind == "bad_field":
        return f"error:bad_field:{rest[0].name}.{rest[1]}"
    return f"error:{kind}:{rest[0].name}.{rest[1]}:{rest[2].name}"


def coverage_bins(cfg: CoreConfig) -> list[str]:
    """Every coverage bin random programs on ``cfg`` should hit (see :func:`coverage`)."""
    return ([f"opcode:{op.name}" for op in Opcode]
            + [f"load:{m.name}" for m in Mem] + ["store:SPAD", "store:ACC"]
            + [f"loadw:{b}" for b in WEIGHT_BITS]
            + [f"count:{b}" for b in _COUNT_BINS] + [f"stride:{b}" for b in _STRIDE_BINS]
            + [f"garbage:{b}" for b in _GARBAGE_BINS] + [f"halts:{b}" for b in _HALT_BINS]
            + [_label(t) for t in error_targets(cfg)] + [f"address_way:{w}" for w in ADDRESS_WAYS])


def _count_bin(insn: Instruction) -> str:
    n = insn.iterations
    if n == 0:
        return "zero"
    if COUNT_MAX in (insn.count0, insn.count1):
        return "max"
    return "one" if n == 1 else "long" if n >= LONG else "short"


def _stride_bin(base: int, stride: int, count: int, depth: int, loop_bits: int) -> str:
    if count <= 1:
        return "idle" if stride >= depth else "zero" if stride == 0 else "small"
    nxt = base + stride
    for name, k in (("wrap16", ADDR_BITS), ("wrap_loop", loop_bits)):
        if nxt >= 1 << k and nxt % (1 << k) < depth:
            return name
    if stride * (count - 1) + base >= depth:
        return "beyond"
    return "zero" if stride == 0 else "unit" if stride == 1 else "small" if stride < max(2, depth // 8) else "large"


def _insn_bins(cfg: CoreConfig, insn: Instruction, word: int) -> Iterable[str]:
    op = insn.opcode
    yield f"opcode:{op.name}"
    if op in (Opcode.HALT, Opcode.SYNC):
        if word >> 4:
            yield "garbage:halt_sync"
        return
    if op in (Opcode.LOAD, Opcode.STORE) and insn.stream_mem("z" if op is Opcode.LOAD else "x"):
        yield f"{op.name.lower()}:{Mem(insn.params['mem']).name}"
    if op is Opcode.LOADW:
        yield f"loadw:{weight_bits(insn.params.get('narrow', 0))}"
    if word & _UNREAD[op]:
        yield "garbage:params"
    yield f"count:{_count_bin(insn)}"
    for s in ("x", "y", "z"):
        a, mem = getattr(insn, s), insn.stream_mem(s)
        if mem is None:
            if a != _NO_ADDR:
                yield "garbage:stream"
        elif insn.iterations:
            depth, bits = cfg.depth(mem), loop_addr_bits(cfg)
            yield f"stride:{_stride_bin(a.base, a.stride0, insn.count0, depth, bits)}"
            yield f"stride:{_stride_bin(a.base, a.stride1, insn.count1, depth, bits)}"


def coverage(cfg: CoreConfig, programs: Iterable[RandomProgram]) -> Counter:
    """How many of ``programs`` hit each bin: opcodes (LOAD and STORE per memory, LOADW
    per weight width), loop
    counts (``zero``, ``one``, ``short``, ``long`` >= :data:`LONG` iterations, ``max``
    = a ``COUNT_MAX`` loop), strides per loop (``idle``: random, on a loop that never
    advances; ``beyond``/``wrap16``/``wrap_loop``: leaving the memory), garbage in
    unread fields, HALT patterns (``one``, ``several``, ``first``: a program opening
    with HALT, ``adjacent``: two in a row) and error programs' targets and
    address ways. Bins are those of :func:`coverage_bins`."""
    hits: Counter = Counter()
    for p in programs:
        words = p.words(cfg)
        seen = set()
        for insn, word in zip(p.instructions, words):
            if isinstance(insn, Instruction):
                seen.update(_insn_bins(cfg, insn, word))
        halts = [k for k, w in enumerate(words) if opcode_of(w) == Opcode.HALT.value]
        seen.add("halts:one" if len(halts) == 1 else "halts:several")
        if halts and halts[0] == 0:
            seen.add("halts:first")
        if any(b == a + 1 for a, b in zip(halts, halts[1:])):
            seen.add("halts:adjacent")
        if p.fault:
            seen.add(_label(p.fault[:4]))
            if p.fault[0] == "address":
                seen.add(f"address_way:{p.fault[4]}")
        hits.update(seen)
    return hits
