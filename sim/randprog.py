"""Random programs for regression of the RTL against the instruction-level simulator.

Programs mix every opcode with random address loops, strides, lanes, banks, region
masks (exact or wider than needed), shift-table entries, lookup tables and flags, over small
memories so that instructions collide on regions often and the hazard logic is
exercised. Every program ends with HALT. Error programs end in one faulting
instruction of a chosen kind; a ``bad_field`` one breaks one field rule
(:data:`fxpgen.isa.FIELD_RULES`) picked at random.

Everything is drawn from one ``random.Random``: a seed reproduces a program.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from fxpgen.config import REGIONS, CoreConfig
from fxpgen.isa import (FIELD_RULES, UNREGIONED, Addr, FieldRule, Instruction, Mem, Opcode,
                        field_rules, region_of)

__all__ = ["RandomProgram", "random_program", "random_error_program", "ERROR_KINDS",
           "breakable_rules", "breaking"]

#: Relative frequency of each opcode in random programs.
MIX = {
    Opcode.LOAD: 18, Opcode.STORE: 12, Opcode.LOADW: 12, Opcode.MATMUL: 22,
    Opcode.REQUANT: 14, Opcode.ADD: 8, Opcode.MAX: 8, Opcode.MUL: 8, Opcode.LUT: 6,
    Opcode.SYNC: 2,
}

ERROR_KINDS = ("illegal_opcode", "bad_field", "address", "region")


@dataclass
class RandomProgram:
    instructions: list
    data: list[int]

    def words(self, cfg: CoreConfig) -> list[int]:
        return [i if isinstance(i, int) else i.encode(cfg) for i in self.instructions]


def _row_bits(cfg: CoreConfig, mem: Mem) -> int:
    return {Mem.SPAD: 8 * cfg.lanes, Mem.WBUF: 8 * cfg.cols,
            Mem.ACC: cfg.acc_width * cfg.cols, Mem.TABLE: 12 * cfg.cols, Mem.LUT: 8}[mem]


def _addresses(a: Addr, c0: int, c1: int) -> list[int]:
    return [a.base + i1 * a.stride1 + i0 * a.stride0 for i1 in range(c1) for i0 in range(c0)]


class _Gen:
    def __init__(self, cfg: CoreConfig, rng: random.Random):
        self.cfg, self.rng = cfg, rng
        self.data: list[int] = []

    def counts(self) -> tuple[int, int]:
        r = self.rng
        c0 = r.choice([1, 2, 3, 4, 5, 8, r.randint(1, 16)])
        c1 = r.choice([1, 1, 2, 3])
        return c0, c1

    def stream(self, depth: int, c0: int, c1: int) -> Addr:
        """A random in-range stream; the region mask is exact or widened."""
        r = self.rng
        s0 = r.choice([0, 1, 1, 1, 2, 3, r.randint(0, max(1, depth // 8))])
        s1 = r.choice([0, c0 * s0, c0 * s0 + 1, r.randint(0, max(1, depth // 4))])
        span = (c0 - 1) * s0 + (c1 - 1) * s1
        while span >= depth:
            s0, s1 = s0 // 2, s1 // 2
            span = (c0 - 1) * s0 + (c1 - 1) * s1
        base = r.randint(0, depth - 1 - span)
        lo, hi = region_of(base, depth), region_of(base + span, depth)
        mask = sum(1 << k for k in range(lo, hi + 1))
        if r.random() < 0.25:
            mask |= r.randrange(1 << REGIONS)
        return Addr(base, s0, s1, mask)

    def row_data(self, mem: Mem) -> int:
        r = self.rng
        bits = _row_bits(self.cfg, mem)
        if mem is Mem.TABLE:
            word = 0
            for j in range(self.cfg.cols):
                shift = r.choice([r.randint(-32, 31), r.randint(0, 16), r.randint(6, 14)])
                align = r.choice([0, 0, r.randint(-4, 4), r.randint(-32, 31)])
                word |= ((shift & 0x3F) | ((align & 0x3F) << 6)) << (12 * j)
        elif mem is Mem.ACC and r.random() < 0.7:
            word = 0
            lim = 1 << min(self.cfg.acc_width - 1, r.choice([8, 16, 24, 40]))
            for j in range(self.cfg.cols):
                word |= (r.randint(-lim, lim - 1) & ((1 << self.cfg.acc_width) - 1)) << (
                    self.cfg.acc_width * j)
        else:
            word = r.getrandbits(bits)
        # Bits above the row must be ignored by the core.
        return word | (r.getrandbits(self.cfg.bus_width - bits) << bits if self.cfg.bus_width > bits else 0)

    def ruled(self, op: Opcode, name: str) -> int:
        """A random value of field ``name`` of ``op`` that meets its field rule."""
        rule = next(r for r in field_rules(op) if r.field == name)
        values = rule.legal_values(self.cfg)
        return values[0] if len(values) == 1 else self.rng.choice(values)

    def instruction(self, op: Opcode) -> Instruction:
        cfg, r = self.cfg, self.rng
        c0, c1 = self.counts()
        if op is Opcode.SYNC:
            return Instruction(op)
        if op is Opcode.LOAD:
            mem = r.choices([Mem.SPAD, Mem.WBUF, Mem.ACC, Mem.TABLE, Mem.LUT], [4, 3, 2, 1, 2])[0]
            if mem is Mem.TABLE:
                c0, c1 = r.randint(1, cfg.table_depth), 1
                base = r.randint(0, cfg.table_depth - c0)
                z = Addr(base, 1, 0, r.randrange(1 << REGIONS))
            elif mem is Mem.LUT:
                # A whole table, or a few entries anywhere (also across tables).
                c0, c1 = r.choice([256, r.randint(1, 16)]), 1
                base = r.choice([256 * r.randrange(cfg.lut_tables), r.randint(0, cfg.lut_depth - c0)])
                z = Addr(min(base, cfg.lut_depth - c0), 1, 0, r.randrange(1 << REGIONS))
            else:
                z = self.stream(cfg.depth(mem), c0, c1)
            self.data += [self.row_data(mem) for _ in range(c0 * c1)]
            return Instruction(op, {"mem": mem.value}, c0, c1, z=z)
        if op is Opcode.STORE:
            mem = Mem(self.ruled(op, "mem"))
            return Instruction(op, {"mem": mem.value}, c0, c1, x=self.stream(cfg.depth(mem), c0, c1))
        if op is Opcode.LOADW:
            c0, c1 = self.ruled(op, "count0"), self.ruled(op, "count1")
            return Instruction(op, {"bank": r.randrange(2)}, c0, c1,
                               x=self.stream(cfg.wbuf_depth, c0, c1))
        if op is Opcode.MATMUL:
            params = {"bank": r.randrange(2), "accumulate": r.randrange(2),
                      "act_signed": r.randrange(2), "lane": self.ruled(op, "lane")}
            return Instruction(op, params, c0, c1, x=self.stream(cfg.spad_depth, c0, c1),
                               z=self.stream(cfg.acc_depth, c0, c1))
        if op is Opcode.REQUANT:
            params = {"table": self.ruled(op, "table"), "lane": self.ruled(op, "lane"),
                      "relu": r.randrange(2), "out_signed": r.randrange(2),
                      "residual": r.randrange(2), "res_signed": r.randrange(2)}
            y = self.stream(cfg.spad_depth, c0, c1) if params["residual"] else Addr(0, 0, 0, 0)
            return Instruction(op, params, c0, c1, x=self.stream(cfg.acc_depth, c0, c1), y=y,
                               z=self.stream(cfg.spad_depth, c0, c1))
        if op is Opcode.LUT:
            return Instruction(op, {"table": self.ruled(op, "table")}, c0, c1,
                               x=self.stream(cfg.spad_depth, c0, c1),
                               z=self.stream(cfg.spad_depth, c0, c1))
        if op is Opcode.MUL:
            params = {"shift": r.choice([0, 7, 8, r.randint(-32, 31), r.randint(0, 16)]),
                      "relu": r.randrange(2), "out_signed": r.randrange(2),
                      "a_signed": r.randrange(2), "b_signed": r.randrange(2)}
            # stride-0 y: one row of factors broadcast over the pixels.
            y = self.stream(cfg.spad_depth, c0, c1)
            if r.random() < 0.3:
                y = replace(y, stride0=0)
            return Instruction(op, params, c0, c1, x=self.stream(cfg.spad_depth, c0, c1), y=y,
                               z=self.stream(cfg.spad_depth, c0, c1))
        # ADD / MAX
        params = {"a_signed": r.randrange(2)}
        if op is Opcode.ADD:
            params.update(a_shift=r.choice([0, 0, 1, 2, r.randint(0, 15)]),
                          b_shift=r.choice([0, 0, 1, r.randint(0, 15)]),
                          shift=r.choice([0, 1, 2, r.randint(-32, 31)]),
                          relu=r.randrange(2), out_signed=r.randrange(2), b_signed=r.randrange(2))
        return Instruction(op, params, c0, c1, x=self.stream(cfg.spad_depth, c0, c1),
                           y=self.stream(cfg.spad_depth, c0, c1), z=self.stream(cfg.spad_depth, c0, c1))

    @staticmethod
    def reads_own_writes(insn: Instruction) -> bool:
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
        written: set[int] = set()
        for k, zk in enumerate(z):
            if any(rd[k] in written for rd in reads):
                return True
            written.add(zk)
        return False

    def legal(self, op: Opcode) -> Instruction:
        while True:
            insn = self.instruction(op)
            if not self.reads_own_writes(insn):
                return insn


def breakable_rules(cfg: CoreConfig) -> list[FieldRule]:
    """The field rules some encodable value breaks on ``cfg`` (a bound at the top of a
    field's range cannot be broken)."""
    return [r for r in FIELD_RULES if r.illegal_values(cfg)]


def breaking(insn: Instruction, rule: FieldRule, cfg: CoreConfig,
             rng: random.Random) -> Instruction:
    """``insn`` (of ``rule.opcode``) with ``rule``'s field set to a random value that
    breaks it; every other field is kept."""
    value = rng.choice(rule.illegal_values(cfg))
    if rule.field in ("count0", "count1"):
        return replace(insn, **{rule.field: value})
    return replace(insn, params={**insn.params, rule.field: value})


def random_program(cfg: CoreConfig, rng: random.Random, length: tuple[int, int] = (6, 24)) -> RandomProgram:
    """A random legal program of ``length`` instructions (range) plus HALT."""
    g = _Gen(cfg, rng)
    ops = list(MIX)
    weights = list(MIX.values())
    insns = []
    for _ in range(rng.randint(*length)):
        op = rng.choices(ops, weights)[0]
        # LOADs consume data words when generated: keep data order = program order.
        insns.append(g.legal(op))
    insns.append(Instruction(Opcode.HALT))
    return RandomProgram(insns, g.data)


def random_error_program(cfg: CoreConfig, rng: random.Random, kind: str) -> RandomProgram:
    """A short legal prefix, then one instruction faulting with ``kind`` (one of
    :data:`ERROR_KINDS`), then more instructions that must never run."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"unknown error kind {kind!r}; choose from {ERROR_KINDS}")
    g = _Gen(cfg, rng)
    insns: list = [g.legal(rng.choices(list(MIX), list(MIX.values()))[0]) for _ in range(rng.randint(0, 6))]
    if kind == "illegal_opcode":
        word = Instruction(Opcode.HALT).encode(cfg) & ~0xF
        insns.append(word | rng.choice([v for v in range(16) if v not in {op.value for op in Opcode}]))
    elif kind == "bad_field":
        rule = rng.choice(breakable_rules(cfg))
        insns.append(breaking(g.legal(rule.opcode), rule, cfg, rng))
    else:
        while True:
            op = rng.choice([Opcode.LOAD, Opcode.STORE, Opcode.LOADW, Opcode.MATMUL, Opcode.REQUANT,
                             Opcode.ADD, Opcode.MAX, Opcode.MUL, Opcode.LUT])
            mark = len(g.data)
            insn = g.legal(op)
            streams = [s for s in ("x", "y", "z") if insn.stream_mem(s) not in (None, *UNREGIONED)]
            if streams:
                break
            del g.data[mark:]
        s = rng.choice(streams)
        a = getattr(insn, s)
        depth = cfg.depth(insn.stream_mem(s))
        if kind == "address":
            # Walk off the end of the memory on a later iteration.
            bad = replace(a, base=depth - 1, stride0=1, regions=(1 << REGIONS) - 1)
            insn = replace(insn, count0=max(2, insn.count0), **{s: bad})
        else:
            used = {region_of(x, depth) for x in _addresses(a, insn.count0, insn.count1)}
            drop = rng.choice(sorted(used))
            insn = replace(insn, **{s: replace(a, regions=a.regions & ~(1 << drop))})
        if insn.opcode is Opcode.LOAD:
            del g.data[mark:]
            g.data += [g.row_data(insn.stream_mem("z")) for _ in range(insn.iterations)]
        insns.append(insn)
    insns += [g.legal(Opcode.LOAD), Instruction(Opcode.HALT)]
    return RandomProgram(insns, g.data)
