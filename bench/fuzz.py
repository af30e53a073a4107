"""Differential fuzzing of the generated core: random programs
(:mod:`fxpgen.sim.randprog`, the wide profile) on the Verilator-native harness
against the instruction-level simulator, per core shape.

    python -m bench.fuzz [--programs 100000] [--shapes 2x2,4x8,8x4,8x8] [--seed 1]
                         [--batch 500] [--out fuzz-failures]
    python -m bench.fuzz --replay fuzz-failures/FILE.json

Programs run in batches, one harness run each, on one core whose memories persist
from program to program (the simulator keeps one machine likewise), with random
stalls drawn per batch. Every fourth is an error program (the error targets in
turn); each is followed by
:func:`~fxpgen.sim.randprog.scrub_program`, since the units a fault stops may have
done more than the simulator (the harness resets the core after an error; memories
persist). Checked for every program: a legal one halts with the simulator's result
words and ``last`` flags and, at every HALT, the result words so far, MAC cycles
and instructions of that HALT's part; an error one stops with the simulator's error
and pc (counted from the last reset) after a prefix of its results. A program that
runs past its cycle budget is a hang.

Prints a progress bar per shape, then per shape programs, instructions, cycles,
mismatches and hangs, and the coverage of the programs
(:func:`~fxpgen.sim.randprog.coverage`). On a mismatch it prints the seed and
program index and writes the batch up to that program to a JSON file that
``--replay`` runs again. Exits non-zero on a mismatch, a hang or a coverage bin
never hit.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from fxpgen.config import CoreConfig
from fxpgen.isa import CoreState, ErrorCode, Instruction, Opcode, opcode_of
from fxpgen.sim.core_rtl import RtlProgram, RtlResult
from fxpgen.sim.isa_sim import Machine, RunResult
from fxpgen.sim.native import native_model, run_on_native
from fxpgen.sim.randprog import (coverage, coverage_bins, error_targets, random_error_program, random_program,
                                 scrub_program)

#: The shapes fuzzed by default: square, rows < cols and rows > cols; memories from
#: 8 to 4096 rows; accumulators of 20 to 48 bits; 1 to 16 shift-table entries and
#: lookup tables; 32- and 16-bit counters.
SHAPES = {
    "2x2": CoreConfig(rows=2, cols=2, spad_depth=64, wbuf_depth=32, acc_depth=64, table_depth=4),
    "4x8": CoreConfig(rows=4, cols=8, acc_width=48, spad_depth=256, wbuf_depth=64, acc_depth=128,
                      table_depth=16, lut_tables=2),
    "8x4": CoreConfig(rows=8, cols=4, acc_width=24, spad_depth=4096, wbuf_depth=1024, acc_depth=2048,
                      table_depth=1, lut_tables=1),
    "8x8": CoreConfig(rows=8, cols=8, acc_width=20, spad_depth=16, wbuf_depth=8, acc_depth=16,
                      table_depth=2, lut_tables=16, counter_width=16),
}
#: One program in this many is an error program; they take the error targets in turn.
ERROR_EVERY = 4
#: Cycle budget of a program: this many per iteration and instruction, plus a floor.
CYCLES_PER_STEP, CYCLES_FLOOR = 40, 5_000


@dataclass
class Case:
    """One program of a batch: its words and data, and whether it must stop on an error."""

    words: list[int]
    data: list[int]
    error: bool

    def steps(self) -> int:
        """Instructions plus loop iterations (HALT's and SYNC's counts are not loops)."""
        total = len(self.words)
        for w in self.words:
            if opcode_of(w) in {op.value for op in Opcode} - {Opcode.HALT.value, Opcode.SYNC.value}:
                total += Instruction.decode(w).iterations
        return total


@dataclass
class Tally:
    """What a campaign on one shape ran and found."""

    programs: int = 0
    error_programs: int = 0
    instructions: int = 0
    cycles: int = 0
    mismatches: int = 0
    hangs: int = 0
    coverage: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


@dataclass
class Expected:
    """The simulator's run of one program, HALT by HALT."""

    run: RunResult
    halts: list[tuple[int, int, int]]    # per HALT: results so far, MACs, instructions


def expect(machine: Machine, case: Case) -> Expected:
    """Run ``case`` on ``machine`` part by part (each part ends at a HALT), so that
    every HALT's counters are known."""
    total, halts, start, dpos = RunResult(), [], 0, 0
    cuts = [k + 1 for k, w in enumerate(case.words) if opcode_of(w) == Opcode.HALT.value]
    for end in cuts + ([len(case.words)] if not cuts or cuts[-1] < len(case.words) else []):
        part = machine.run(case.words[start:end], case.data[dpos:])
        dpos += part.data_used
        total.results += part.results
        total.lasts += part.lasts
        total.macs += part.macs
        total.halts += part.halts
        if part.error is not ErrorCode.NONE:
            total.error, total.error_pc = part.error, start + part.error_pc
            break
        if part.halts:
            halts.append((len(total.results), part.macs, end - start))
        start = end
    total.data_used = dpos
    return Expected(total, halts)


def compare(cfg: CoreConfig, case: Case, e: Expected, r: RtlResult, since_reset: int) -> str | None:
    """How the core's run ``r`` of ``case`` departs from the simulator's ``e``, or None.
    ``since_reset``: instructions sent since the core was last reset."""
    run = e.run
    if r.timed_out:
        return f"hang: no end in {r.raw.get('sim_cycles')} cycles, state {CoreState(r.state).name}"
    if (run.error is not ErrorCode.NONE) != case.error:
        return f"the simulator stopped with {run.error.name}, the generator meant error={case.error}"
    if case.error:
        got = (CoreState(r.state).name, ErrorCode(r.error).name, r.error_pc)
        want = ("ERROR", run.error.name, since_reset + run.error_pc)
        if got != want:
            return f"stopped as {got}, expected {want}"
        if r.results != run.results[:len(r.results)]:
            return "results are not a prefix of the simulator's"
        return None
    if r.state != CoreState.HALTED.value:
        return f"ended in state {CoreState(r.state).name} ({ErrorCode(r.error).name} at {r.error_pc})"
    if r.results != run.results or r.lasts != run.lasts:
        return f"result stream differs ({len(r.results)} words, expected {len(run.results)})"
    mask = (1 << cfg.counter_width) - 1
    want = [(n, macs & mask, insns & mask) for n, macs, insns in e.halts]
    got = [(h["results"], h["counters"]["mac_cycles"], h["counters"]["insns"]) for h in r.raw["halts"]]
    if got != want:
        return f"per-HALT (results, mac_cycles, insns) {got}, expected {want}"
    return None


def check_batch(cfg: CoreConfig, cases: list[Case], seed: int, stall: dict,
                model=None) -> tuple[list[tuple[int, str]], dict, list[RtlResult]]:
    """Run ``cases`` one after another on the native harness and on one simulator
    machine; returns the (index, problem) of every departure, the harness info and
    its results."""
    machine = Machine(cfg)
    expected = [expect(machine, c) for c in cases]
    jobs = [RtlProgram(c.words, c.data, -1 if c.error else len(e.run.results),
                       max_cycles=CYCLES_FLOOR + CYCLES_PER_STEP * c.steps())
            for c, e in zip(cases, expected)]
    results, info = run_on_native(cfg, jobs, seed=seed, stall_prob=stall, model=model)
    problems, since_reset = [], 0
    for k, (c, e, r) in enumerate(zip(cases, expected, results)):
        if r.raw.get("reset_before"):
            since_reset = 0
        problem = compare(cfg, c, e, r, since_reset)
        if problem:
            problems.append((k, problem))
        since_reset += len(c.words)
    return problems, info, results


def batch_cases(cfg: CoreConfig, seed: int, start: int, n: int) -> tuple[list[Case], list, list[int]]:
    """Programs ``start .. start + n - 1`` of a campaign (program k is drawn from
    ``random.Random(f"{seed}/{k}")``, so it can be regenerated alone), every
    :data:`ERROR_EVERY`-th an error program (the targets of
    :func:`~fxpgen.sim.randprog.error_targets` in turn, so a few hundred programs hit
    them all) followed by a scrub; also the random programs and each case's program
    index."""
    cases, programs, index = [], [], []
    targets = error_targets(cfg)
    for k in range(start, start + n):
        rng = random.Random(f"{seed}/{k}")
        if k % ERROR_EVERY == 0:
            p = random_error_program(cfg, rng, target=targets[k // ERROR_EVERY % len(targets)])
            scrub = scrub_program(cfg, rng)
            cases += [Case(p.words(cfg), p.data, True), Case(scrub.words(cfg), scrub.data, False)]
            index += [k, k]
        else:
            p = random_program(cfg, rng)
            cases.append(Case(p.words(cfg), p.data, False))
            index.append(k)
        programs.append(p)
    return cases, programs, index


def save_failure(out: Path, shape: str, cfg: CoreConfig, seed: int, stall: dict, cases: list[Case],
                 k: int, problem: str) -> Path:
    """Write the batch up to case ``k`` to a JSON file that :func:`replay` runs."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fuzz-{shape}-seed{seed}-case{k}.json"
    path.write_text(json.dumps({
        "config": cfg.as_dict(), "seed": seed, "stall": stall, "problem": problem, "case": k,
        "cases": [{"words": [hex(w) for w in c.words], "data": [hex(d) for d in c.data],
                   "error": c.error} for c in cases[:k + 1]]}, indent=1))
    return path


def replay(path: Path) -> int:
    """Run a saved failure again; print what departs. Returns the number of problems."""
    job = json.loads(Path(path).read_text())
    cfg = CoreConfig(**job["config"])
    cases = [Case([int(w, 16) for w in c["words"]], [int(d, 16) for d in c["data"]], c["error"])
             for c in job["cases"]]
    problems, _, _ = check_batch(cfg, cases, job["seed"], job["stall"])
    for k, p in problems:
        print(f"case {k}: {p}")
    print(f"{len(problems)} problem(s) in {len(cases)} programs" if problems else "no problem")
    return len(problems)


def fuzz_shape(shape: str, cfg: CoreConfig, programs: int, seed: int, batch: int = 500,
               out: Path | None = None, progress: bool = True, tally: Tally | None = None,
               on_batch=None) -> Tally:
    """Fuzz ``programs`` random programs on ``cfg`` in batches (see the module
    docstring), adding to ``tally``; ``on_batch()`` is called after each batch."""
    tally, model = tally or Tally(), native_model(cfg)
    with tqdm(total=programs, desc=shape, unit="prog", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, programs, batch):
            n = min(batch, programs - start)
            cases, made, index = batch_cases(cfg, seed, start, n)
            rng = random.Random(f"{seed}/stall/{start}")
            stall = {s: rng.choice([0.0, 0.0, 0.1, 0.3, 0.5]) for s in ("insn", "data", "result")}
            hseed = seed * 1_000_003 + start
            problems, info, results = check_batch(cfg, cases, hseed, stall, model)
            tally.programs += n
            tally.error_programs += sum(1 for p in made if p.fault)
            tally.instructions += sum(r.raw.get("insns_sent", 0) for r in results)
            tally.cycles += info["cycles"]
            tally.coverage.update(coverage(cfg, made))
            for k, problem in problems:
                hang = problem.startswith("hang")
                tally.hangs += hang
                tally.mismatches += not hang
                where = f"{shape}: seed {seed}, program {index[k]} (case {k} of batch {start})"
                if out is not None:
                    where += f", saved to {save_failure(out, shape, cfg, hseed, stall, cases, k, problem)}"
                tally.failures.append(f"{where}: {problem}")
                tqdm.write(f"MISMATCH {where}: {problem}", file=sys.stderr)
            bar.update(n)
            bar.set_postfix(mismatches=tally.mismatches, hangs=tally.hangs)
            if on_batch is not None:
                on_batch()
    return tally


def report(tallies: dict[str, Tally]) -> str:
    """Markdown tables: per shape what ran and what was found; per coverage category
    the bins, how many were hit and the least-hit bin's count."""
    lines = ["| shape | programs | error programs | instructions | cycles | mismatches | hangs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for shape, t in tallies.items():
        lines.append(f"| {shape} | {t.programs:,} | {t.error_programs:,} | {t.instructions:,} | "
                     f"{t.cycles:,} | {t.mismatches} | {t.hangs} |")
    lines += ["", "| coverage | " + " | ".join(f"{s} bins hit (least hits)" for s in tallies) + " |",
              "|---|" + "---:|" * len(tallies)]
    bins = {s: coverage_bins(SHAPES.get(s, CoreConfig())) for s in tallies}
    cats = sorted({b.split(":")[0] + (":" + b.split(":")[1] if b.startswith("error:") else "")
                   for bs in bins.values() for b in bs})
    for cat in cats:
        cells = []
        for s, t in tallies.items():
            mine = [b for b in bins[s] if b == cat or b.startswith(cat + ":")]
            hit = [t.coverage[b] for b in mine]
            cells.append(f"{sum(1 for h in hit if h)}/{len(mine)} ({min(hit) if hit else '-'})")
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    missed = [f"{s}: {b}" for s, t in tallies.items() for b in bins[s] if not t.coverage[b]]
    if missed:
        lines += ["", "bins never hit: " + ", ".join(missed)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", type=int, default=100_000, help="programs per shape")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=500, help="programs per harness run")
    ap.add_argument("--out", type=Path, default=Path("fuzz-failures"), help="folder for failing batches")
    ap.add_argument("--replay", type=Path, help="run a saved failure again")
    ap.add_argument("--report", type=Path, help="also write the tables here, after every batch")
    args = ap.parse_args(argv)
    if args.replay:
        return 1 if replay(args.replay) else 0
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    t0 = time.monotonic()
    tallies = {s: Tally() for s in shapes}

    def write_report() -> str:
        text = f"{report(tallies)}\n\n{time.monotonic() - t0:.0f} s; seed {args.seed}"
        if args.report:
            args.report.write_text(text + "\n")
        return text

    for s in shapes:
        fuzz_shape(s, SHAPES[s], args.programs, args.seed, args.batch, args.out, tally=tallies[s],
                   on_batch=write_report)
    print(write_report())
    bad = any(t.mismatches or t.hangs for t in tallies.values())
    missed = any(not t.coverage[b] for s, t in tallies.items() for b in coverage_bins(SHAPES[s]))
    return 1 if bad or missed else 0


if __name__ == "__main__":
    sys.exit(main())
