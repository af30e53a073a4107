"""The declared field rules (``isa.FIELD_RULES``) agree with every consumer: the ISA
simulator's BAD_FIELD verdict, the controller's ``bad`` decode in the Amaranth
simulator, and the random program generator's legal ranges and bad_field programs.
A deliberately broken rule set is caught by each comparison."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator

from fxpgen.asm import param_fields
from fxpgen.config import CoreConfig
from fxpgen.hw.controller import bad_field
from fxpgen.isa import (COUNT_MAX, FIELD_RULES, INSN_BITS, Addr, ErrorCode, FieldRule, Insn,
                        Instruction, Mem, Opcode, bad_fields, field_rules, loadw_rows)
from fxpgen.sim.isa_sim import run_program
from fxpgen.sim.randprog import breakable_rules, breaking, random_error_program, random_program

SMALL = dict(spad_depth=16, wbuf_depth=16, acc_depth=16)
CONFIGS = [
    CoreConfig(rows=4, cols=8, table_depth=4, **SMALL),
    CoreConfig(rows=8, cols=2, table_depth=16, **SMALL),
    CoreConfig(rows=2, cols=2, table_depth=256, **SMALL),    # table rule cannot be broken
    CoreConfig(rows=1, cols=16, table_depth=1, **SMALL),     # nor MATMUL's lane rule
]

#: Rule sets that differ from the declared one in one rule each.
BROKEN = {
    "store mem also WBUF": [FieldRule(Opcode.STORE, "mem", "in", (Mem.SPAD, Mem.ACC, Mem.WBUF))
                            if r.opcode is Opcode.STORE else r for r in FIELD_RULES],
    "no LOADW count1 rule": [r for r in FIELD_RULES
                             if (r.opcode, r.field) != (Opcode.LOADW, "count1")],
    "MATMUL lane < 16": [replace(r, bound=16) if r.opcode is Opcode.MATMUL else r
                         for r in FIELD_RULES],
}


def _near(cfg: CoreConfig) -> set[int]:
    """Values next to every size of the core: where an off-by-one rule would differ."""
    sizes = (1, cfg.rows, cfg.cols, cfg.lanes, cfg.matmul_lanes, cfg.requant_lanes,
             cfg.table_depth, *(loadw_rows(cfg, k) for k in range(4)))
    return {v + d for v in sizes for d in (-1, 0, 1)}


def random_instruction(cfg: CoreConfig, rng: random.Random, op: Opcode) -> Instruction:
    """Every field random over its encoding, often next to a size of the core. All
    streams start beyond every memory, so an instruction that passes decode faults with
    ADDRESS on its first iteration and nothing runs."""
    near = sorted(_near(cfg))

    def pick(lo: int, hi: int) -> int:
        close = [v for v in near if lo <= v <= hi]
        return rng.choice(close) if close and rng.random() < 0.5 else rng.randint(lo, hi)

    params = {f.name: pick(-(1 << (f.width - 1)), (1 << (f.width - 1)) - 1) if f.signed
              else pick(0, (1 << f.width) - 1) for f in param_fields(op)}
    off = Addr(0xFFFF, 0, 0, 0xF)
    return Instruction(op, params, pick(0, COUNT_MAX), pick(0, COUNT_MAX), off, off, off)


def sample(cfg: CoreConfig, rng: random.Random) -> list[Instruction]:
    ruled = {r.opcode for r in FIELD_RULES}
    return [random_instruction(cfg, rng, op)
            for op in Opcode for _ in range(150 if op in ruled else 10)]


def isa_sim_verdicts(cfg: CoreConfig, insns: list[Instruction]) -> list[bool]:
    return [run_program(cfg, [i.encode(cfg)], []).error is ErrorCode.BAD_FIELD for i in insns]


def controller_verdicts(cfg: CoreConfig, insns: list[Instruction]) -> list[bool]:
    m = Module()
    word = Signal(INSN_BITS)
    bad = bad_field(m, Insn(word), cfg)
    got = []

    async def bench(ctx):
        for insn in insns:
            ctx.set(word, insn.encode(cfg))
            got.append(bool(ctx.get(bad)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return got


def disagreements(rules, cfg, insns, verdicts) -> list[Instruction]:
    """Instructions on which ``rules`` and a consumer's verdicts differ."""
    return [i for i, v in zip(insns, verdicts) if bool(bad_fields(i, cfg, rules)) != v]


def generator_disagreements(rules, cfg: CoreConfig, rng: random.Random) -> list[str]:
    """How the generator departs from ``rules``: a legal program breaking a rule, a small
    legal range not covered, a bad_field instruction not breaking exactly its rule, or
    a breakable rule no bad_field program breaks."""
    problems, drawn, legal = [], {r: set() for r in rules}, {}
    for _ in range(150):
        for insn in random_program(cfg, rng).instructions:
            if bad_fields(insn, cfg, rules):
                problems.append(f"legal {insn} breaks {bad_fields(insn, cfg, rules)}")
            for r in field_rules(insn.opcode, rules):
                drawn[r].add((r.of(insn), r.value(insn)))
            legal.setdefault(insn.opcode, insn)
    for r, values in drawn.items():
        allowed = {(k, v) for k in r.per_values() for v in r.legal_values(cfg, k)}
        if len(allowed) <= 16 and values != allowed:
            problems.append(f"{r}: drew {sorted(values)}")
    for r in breakable_rules(cfg):
        for _ in range(20):
            broken = bad_fields(breaking(legal[r.opcode], r, cfg, rng), cfg, rules)
            if [(b.opcode, b.field) for b in broken] != [(r.opcode, r.field)]:
                problems.append(f"breaking {r} breaks {broken}")
    hit = set()
    for _ in range(120):
        program = random_error_program(cfg, rng, "bad_field")
        broken = bad_fields(program.instructions[-3], cfg, rules)   # before LOAD, HALT
        if len(broken) != 1:
            problems.append(f"bad_field program breaks {broken}")
        hit.update(broken)
    if hit != {r for r in rules if r.illegal_values(cfg)}:
        problems.append(f"bad_field programs break {hit}")
    return problems


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.name for c in CONFIGS])
def test_rule_values_partition_each_field(cfg):
    for r in FIELD_RULES:
        for k in r.per_values():
            legal, illegal = list(r.legal_values(cfg, k)), r.illegal_values(cfg, k)
            assert sorted(legal + illegal) == list(r.encodable()), r
            assert legal == sorted(legal) and legal, r
            assert not any(r.broken_by_value(v, cfg, k) for v in legal), r


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.name for c in CONFIGS])
def test_declared_rules_agree_with_isa_sim_controller_and_generator(cfg, seed):
    rng = random.Random(seed)
    insns = sample(cfg, rng)
    isa, hw = isa_sim_verdicts(cfg, insns), controller_verdicts(cfg, insns)
    assert disagreements(FIELD_RULES, cfg, insns, isa) == []
    assert disagreements(FIELD_RULES, cfg, insns, hw) == []
    assert generator_disagreements(FIELD_RULES, cfg, rng) == []
    # The sample reaches both verdicts for every breakable rule.
    for r in breakable_rules(cfg):
        verdicts = {r.broken_by(i, cfg) for i in insns if i.opcode is r.opcode}
        assert verdicts == {False, True}, r


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_rule_set_is_caught(name, seed):
    cfg, rng = CONFIGS[0], random.Random(seed)
    rules = BROKEN[name]
    insns = sample(cfg, rng)
    assert disagreements(rules, cfg, insns, isa_sim_verdicts(cfg, insns))
    assert disagreements(rules, cfg, insns, controller_verdicts(cfg, insns))
    assert generator_disagreements(rules, cfg, rng)
