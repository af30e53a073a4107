"""Wall time of the cycle model (``fxpgen run --engine model``, :func:`fxpgen.sim.cycle_model.estimate`)
on ImageNet-sized networks of the zoo (``fxpgen.models.zoo``, random weights) on the
default 8x8 core, compile time excluded.

Each network is quantized on two random calibration images and lowered once; its
``program.fxp`` is kept in ``--cache`` and reused by later runs. The program is read
as ``fxpgen run`` reads it (``load_s``, not counted in the estimate), and the
estimate then runs three times in this process: ``first_s`` is the first run (as in
a fresh ``fxpgen run``: the latencies and the hazard bits are looked up then),
``best_s`` the best of the three, ``best_cpu_s`` the process CPU time of the best
run (the machine may be shared: the load average at the start is recorded).
``words_best_s`` is the best of three estimates from the bare instruction words, as
a program lowered in memory (``fxpgen sweep``) is timed: each word hashed, not
looked up through the file's table of distinct words. ``cycles`` is the predicted
total, the same in every run.

    python -m bench.cycle_model                                # resnet18, mobilenetv2, resnet50 at 224
    python -m bench.cycle_model --models resnet50 --cache /tmp/fxpgen-bench-cycle-model

Writes ``bench/results/cycle_model.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.program import load_program, save_program
from fxpgen.compiler.quantize import quantize
from fxpgen.config import CoreConfig
from fxpgen.models import zoo
from fxpgen.sim.cycle_model import estimate_words

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cycle_model.json"
MODELS = ("resnet18", "mobilenetv2", "resnet50")
SIZE = 224
RUNS = 3


def program(name: str, cache: Path) -> tuple[Path, float | None]:
    """``name`` at :data:`SIZE` compiled for the default core: its ``program.fxp`` and
    the compile's seconds (None when read from ``cache``)."""
    path = cache / f"{name}-{SIZE}.fxp"
    if path.exists():
        return path, None
    t0 = time.monotonic()
    model = getattr(zoo, name)(size=SIZE, classes=1000)
    calib = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    qg, _ = quantize(load_onnx(model), calib)
    low = lower(qg, CoreConfig())
    seconds = time.monotonic() - t0
    cache.mkdir(parents=True, exist_ok=True)
    save_program(path.with_suffix(".tmp"), low)
    path.with_suffix(".tmp").replace(path)
    return path, seconds


def timed(runs: int, fn) -> tuple[list[float], list[float], set, object]:
    """Wall and CPU seconds of ``runs`` calls of ``fn``, the totals it predicted and
    its last result."""
    walls, cpus, totals = [], [], set()
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        timing = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        totals.add(timing.cycles)
    return walls, cpus, totals, timing


def measure(name: str, cache: Path) -> dict:
    """The row of one network (see the module docstring)."""
    path, compile_s = program(name, cache)
    t0 = time.perf_counter()
    prog = load_program(path)
    words, layers = prog.words, prog.layers
    load_s = time.perf_counter() - t0
    walls, cpus, totals, timing = timed(RUNS, lambda: estimate_words(prog.cfg, words, layers,
                                                                      table=prog.word_table))
    bare, _, bare_totals, _ = timed(RUNS, lambda: estimate_words(prog.cfg, words, layers))
    assert len(totals | bare_totals) == 1, f"{name}: the estimate changed between runs: {totals | bare_totals}"
    best = min(range(RUNS), key=walls.__getitem__)
    return {"model": name, "size": SIZE, "insns": len(words), "distinct_words": len(prog.word_table[0]),
            "segments": len(timing.segments),
            "cycles": totals.pop(), "load_s": load_s, "first_s": walls[0], "best_s": walls[best],
            "best_cpu_s": cpus[best], "runs_s": walls, "words_best_s": min(bare), "compile_s": compile_s}


def table(rows: list[dict]) -> str:
    lines = ["| network | instructions | cycles | first (s) | best of 3 (s) | CPU of best (s) | "
             "bare words, best (s) | program read (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} at {r['size']} | {r['insns']:,} | {r['cycles']:,} | {r['first_s']:.2f}"
                     f" | {r['best_s']:.2f} | {r['best_cpu_s']:.2f} | {r['words_best_s']:.2f}"
                     f" | {r['load_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/fxpgen-bench-cycle-model"),
                    help="where the compiled programs are kept between runs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    load = os.getloadavg()
    rows = [measure(name, args.cache) for name in args.models]
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "loadavg_at_start": load}, "core": "default 8x8", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows))
    print(f"\nload average at start: {load[0]:.2f}; written to {args.out}")


if __name__ == "__main__":
    main()
