"""The controller (``hw/controller.py``) alone in Amaranth's simulator, its five
execution units played by the testbench (random latencies, readiness, footprints
and faults) and its instruction stream stalling at random. A cycle-by-cycle model
of the dispatch rules predicts every ``start``, ``insn.ready``, state, error and
counter; the hazard masks come from :func:`fxpgen.isa.footprint` and the decode
errors from the ISA simulator, not from the hardware's own tables."""

import random
from dataclasses import dataclass

import pytest

from fxpgen.hw.controller import COUNTERS, UNIT_OF, UNITS, Controller
from fxpgen.isa import Addr, CoreState, ErrorCode, Instruction, Mem, Opcode
from fxpgen.sim.isa_sim import Machine, ProgramError

from unit_harness import CONFIGS, config_id, hazard_mask, simulate


def decode_error(cfg, word: int) -> ErrorCode:
    """ILLEGAL_OPCODE or BAD_FIELD if the ISA simulator rejects ``word`` before
    executing it, else NONE (faults of its addresses are the units' business)."""
    try:
        res = Machine(cfg).run([word], [0] * 64)
    except ProgramError:
        return ErrorCode.NONE
    return res.error if res.error in (ErrorCode.ILLEGAL_OPCODE, ErrorCode.BAD_FIELD) else ErrorCode.NONE


def random_word(cfg, rng: random.Random, bad: bool) -> int:
    """A random instruction word with small counts and one- or two-region masks (so
    that footprints collide often); with ``bad``, an illegal opcode or a field this
    core cannot execute."""
    if bad and rng.random() < 0.4:
        return (rng.getrandbits(64) << 4) | rng.choice([0, 12, 13, 14, 15])
    op = rng.choices(list(Opcode), [2, 2, 5, 4, 3, 5, 4, 2, 2, 2, 2])[0]
    if bad:
        op = rng.choice([Opcode.LOAD, Opcode.STORE, Opcode.LOADW, Opcode.MATMUL, Opcode.REQUANT,
                         Opcode.LUT])
    c0, c1 = rng.randint(1, 4), rng.randint(1, 3)
    params = {}
    if op is Opcode.LOAD:
        params = {"mem": rng.randint(5, 7) if bad else rng.randrange(5)}
    elif op is Opcode.STORE:
        params = {"mem": rng.choice([Mem.WBUF, Mem.TABLE] if bad else [Mem.SPAD, Mem.ACC]).value}
    elif op is Opcode.LOADW:
        params = {"bank": rng.randrange(2)}
        c0, c1 = (cfg.rows + rng.randint(1, 3), 1) if bad else (cfg.rows, 1)
    elif op is Opcode.MATMUL:
        params = {"bank": rng.randrange(2), "accumulate": rng.randrange(2),
                  "lane": cfg.matmul_lanes + rng.randrange(2) if bad else rng.randrange(cfg.matmul_lanes)}
    elif op is Opcode.REQUANT:
        params = {"table": rng.randrange(cfg.table_depth), "lane": rng.randrange(cfg.requant_lanes),
                  "residual": rng.randrange(2)}
        if bad and rng.random() < 0.5:
            params["table"] = rng.randint(cfg.table_depth, 255)
        elif bad:
            params["lane"] = rng.randint(cfg.requant_lanes, 15)
    elif op in (Opcode.ADD, Opcode.MAX, Opcode.MUL):
        params = {"a_signed": rng.randrange(2)}
    elif op is Opcode.LUT:
        params = {"table": rng.randint(cfg.lut_tables, 15) if bad else rng.randrange(cfg.lut_tables)}
    if op in (Opcode.HALT, Opcode.SYNC):
        return Instruction(op).encode(cfg)
    streams = {s: Addr(rng.randrange(16), rng.randrange(4), 0,
                       rng.choice([1, 2, 4, 8, 3, 12, 15])) for s in "xyz"}
    return Instruction(op, params, c0, c1, **streams).encode()


@dataclass
class PlayedUnit:
    """An execution unit as the controller sees it: busy for ``left`` more cycles
    with the footprint of its instruction, maybe faulting."""

    insn: Instruction | None = None
    pc: int = 0
    left: int = 0
    ready: bool = True
    error: ErrorCode = ErrorCode.NONE

    @property
    def busy(self) -> bool:
        return self.left > 0

    def masks(self) -> tuple[int, int]:
        if not self.busy:
            return 0, 0
        r, w, ports = hazard_mask(self.insn)
        return r, w | ports


def run_controller(cfg, words, rng, fault_prob, stats):
    """Feed ``words`` (programs ending in HALT, maybe with a bad word) to a
    Controller and check it cycle by cycle against the model; stop once the
    controller is idle (HALTED) or stopped (ERROR) and has stayed so."""
    dut = Controller(cfg)
    decode = {w: decode_error(cfg, w) for w in words}

    async def bench(ctx):
        units = {u: PlayedUnit() for u in UNITS}
        cur = None                 # (word, pc) of the instruction held by the controller
        next_pc, pos = 0, 0
        state, error, error_pc = CoreState.IDLE, ErrorCode.NONE, 0
        counters = dict.fromkeys(COUNTERS, 0)
        quiet = 0
        for cycle in range(3000):
            errored = state is CoreState.ERROR
            # The units' status and the inputs for this cycle.
            for name, u in units.items():
                port = getattr(dut, name)
                assert ctx.get(port.abort) == errored
                u.ready = not u.busy and rng.random() < 0.8
                if u.busy and not errored and u.error is ErrorCode.NONE and rng.random() < fault_prob:
                    u.error = rng.choice([ErrorCode.ADDRESS, ErrorCode.REGION])
                reads, writes = u.masks()
                ctx.set(port.ready, u.ready)
                ctx.set(port.busy, u.busy)
                ctx.set(port.reads, reads)
                ctx.set(port.writes, writes)
                ctx.set(port.error, ErrorCode.NONE if errored else u.error)
                ctx.set(port.error_pc, u.pc)
            valid = pos < len(words) and rng.random() < 0.7
            ctx.set(dut.insn.valid, valid)
            ctx.set(dut.insn.payload, words[pos] if valid else rng.getrandbits(len(dut.insn.payload)))
            side = {"mac_issue": rng.randrange(2), "stall_data": rng.randrange(2),
                    "stall_result": rng.randrange(2)}
            for name, v in side.items():
                ctx.set(getattr(dut, name), v)

            # What the controller must do in this cycle.
            assert (ctx.get(dut.state), ctx.get(dut.error)) == (state, error)
            if error is not ErrorCode.NONE:
                assert ctx.get(dut.error_pc) == error_pc
            assert {c: ctx.get(getattr(dut, f"count_{c}")) for c in COUNTERS} == counters
            bad = ErrorCode.NONE if cur is None else decode[cur[0]]
            insn = None if cur is None or bad is not ErrorCode.NONE else Instruction.decode(cur[0])
            starts, halting, sync = {}, False, False
            for name, u in units.items():
                go = insn is not None and not errored and UNIT_OF.get(insn.opcode) == name and u.ready
                if go:
                    r, w, ports = hazard_mask(insn)
                    w |= ports
                    busy_r = busy_w = 0
                    for other, o in units.items():
                        if other != name:
                            o_r, o_w = o.masks()
                            busy_r, busy_w = busy_r | o_r, busy_w | o_w
                    if (w & (busy_r | busy_w)) | (r & busy_w):
                        stats["hazard_stalls"] += 1
                        go = False
                starts[name] = go
                assert ctx.get(getattr(dut, name).start) == go, (cycle, name, insn)
                if go:
                    assert ctx.get(getattr(dut, name).insn.as_value()) == cur[0]
                    assert ctx.get(getattr(dut, name).pc) == cur[1]
            if insn is not None and insn.opcode in (Opcode.HALT, Opcode.SYNC) and not errored:
                if not any(u.busy for u in units.values()):
                    halting, sync = insn.opcode is Opcode.HALT, insn.opcode is Opcode.SYNC
            dispatch = any(starts.values()) or halting or sync
            ready = (cur is None or dispatch) and not halting and not errored and bad is ErrorCode.NONE
            assert ctx.get(dut.insn.ready) == ready, cycle
            err = (bad, cur[1]) if bad is not ErrorCode.NONE else next(
                ((u.error, u.pc) for u in units.values() if u.error is not ErrorCode.NONE and not errored),
                (ErrorCode.NONE, 0))

            await ctx.tick()

            # The registered state after this edge.
            accept = valid and ready
            if state is CoreState.RUNNING:
                counters["cycles"] += 1
                counters["mac_cycles"] += side["mac_issue"]
                counters["stall_dispatch"] += cur is not None and not dispatch
                counters["stall_data"] += side["stall_data"]
                counters["stall_result"] += side["stall_result"]
                counters["insns"] += dispatch
                counters = {c: v % (1 << cfg.counter_width) for c, v in counters.items()}
            if not errored and err[0] is not ErrorCode.NONE:
                state, (error, error_pc) = CoreState.ERROR, err
                stats["errors"].add(err[0])
            elif halting:
                state = CoreState.HALTED
                stats["halts"] += 1
            elif accept and state is not CoreState.RUNNING:
                state = CoreState.RUNNING
                counters = dict.fromkeys(COUNTERS, 0)
            for name, u in units.items():
                if starts[name]:
                    u.insn, u.pc, u.left, u.error = insn, cur[1], rng.randint(1, 5), ErrorCode.NONE
                elif u.busy:
                    u.left -= 1
            if accept:
                cur, next_pc, pos = (words[pos], next_pc), next_pc + 1, pos + 1
            elif dispatch:
                cur = None
            done = state is CoreState.ERROR or (state is CoreState.HALTED and pos == len(words))
            quiet = quiet + 1 if done else 0
            if quiet > 6:
                return
        raise AssertionError("the controller never finished the programs")

    simulate(dut, bench)


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_dispatch_hazards_errors_and_counters(cfg, seed):
    """With the units played at random, the controller dispatches in program order,
    one instruction a cycle at most, each to its own unit with its pc; holds an
    instruction exactly while its unit is not ready or its footprint conflicts with
    another unit's reported reads and writes; lets HALT and SYNC pass only when every
    unit is idle; latches the first error (decode errors of the ISA simulator ahead
    of the units', units in priority order) with its pc, then aborts every unit and
    fetches nothing more; and counts cycles, MACs, stalls and instructions while
    running, clearing them when a program starts and freezing them at HALT."""
    rng = random.Random(seed)
    stats = {"hazard_stalls": 0, "halts": 0, "errors": set()}
    for case in range(10):
        words = []
        for _ in range(rng.randint(1, 3)):
            words += [random_word(cfg, rng, False) for _ in range(rng.randint(2, 10))]
            words.append(Instruction(Opcode.HALT).encode(cfg))
        if case % 3 == 1:
            words.insert(rng.randrange(len(words)), random_word(cfg, rng, True))
        run_controller(cfg, words, rng, fault_prob=0.1 if case % 3 == 2 else 0.0, stats=stats)
    assert stats["hazard_stalls"] > 0 and stats["halts"] > 0
    assert stats["errors"] & {ErrorCode.ILLEGAL_OPCODE, ErrorCode.BAD_FIELD}
    assert stats["errors"] & {ErrorCode.ADDRESS, ErrorCode.REGION}
