"""The design-space sweep behind ``fxpgen sweep``: its points, what one point measures,
the results table (JSON and CSV) and its plot.

A point is an array shape, memory depths and, for a bitstream build, a board. Each
is measured on its own (a Ray task, :mod:`fxpgen.app.fanout`): compile the model for
the point's core, run a few images on a cycle-counting engine (per-layer and total
cycles, MAC utilization), and with ``build`` build the board's bitstream (LUTs, FFs,
block RAM, DSPs, Fmax). A point is keyed by its parameters, the engine and the hash
of the model, its calibration data and its inputs, so a re-run skips the points
already measured."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import re
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from fxpgen.config import CoreConfig

__all__ = ["SweepPoint", "SWEEP_ENGINES", "parse_shapes", "parse_depths", "sweep_points", "model_hash",
           "point_key", "measure_point", "failed_row", "load_rows", "save_rows", "pareto", "plot_rows",
           "run_sweep", "RESULTS_JSON", "RESULTS_CSV", "PLOT_PNG"]

#: Engines a sweep can count cycles on, in order of preference; those registered in
#: :data:`fxpgen.app.engines.ENGINES` are offered (``model``: the analytical cycle model).
SWEEP_ENGINES = ("native", "model", "rtl")

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
PLOT_PNG = "sweep.png"

#: A build report's resource names, per column of the table (iCE40 has logic cells, not LUTs).
RESOURCE_COLUMNS = {"luts": ("luts", "logic_cells"), "ffs": ("flip_flops",), "bram": ("block_ram",),
                    "dsp": ("dsp",)}


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One core of the sweep: array ``rows`` x ``cols``, memory depths in rows, and
    the ``board`` whose bitstream is built (None: no build)."""

    rows: int
    cols: int
    spad_depth: int
    wbuf_depth: int
    acc_depth: int
    board: str | None = None

    @property
    def name(self) -> str:
        return (f"{self.rows}x{self.cols} spad {self.spad_depth} wbuf {self.wbuf_depth} "
                f"acc {self.acc_depth}" + (f" on {self.board}" if self.board else ""))

    @classmethod
    def of_row(cls, row: dict) -> SweepPoint:
        """The point a row of the table measured."""
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    def config(self) -> CoreConfig:
        """The point's core (ValueError naming the parameter when the generator refuses it)."""
        return CoreConfig(rows=self.rows, cols=self.cols, spad_depth=self.spad_depth,
                          wbuf_depth=self.wbuf_depth, acc_depth=self.acc_depth)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """Array shapes from ``"4x4,8x8,..."`` (rows x cols, positive), in order, without repeats."""
    shapes = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", item)
        if not m or min(int(g) for g in m.groups()) < 1:
            raise ValueError(f"--shapes {text!r}: {item.strip()!r} is not ROWSxCOLS with positive "
                             "sizes (e.g. --shapes 4x4,8x8,16x16)")
        shape = (int(m.group(1)), int(m.group(2)))
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def parse_depths(text: str, what: str) -> list[int]:
    """Memory depths from ``"1024,4096"`` (positive integers); ``what`` names the option."""
    try:
        depths = [int(item) for item in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected depths in rows separated by commas "
                         "(e.g. 1024,4096)") from None
    if min(depths) < 1:
        raise ValueError(f"{what} {text!r}: depths must be positive")
    return list(dict.fromkeys(depths))


def sweep_points(shapes, spad_depths, wbuf_depths, acc_depths, boards) -> list[SweepPoint]:
    """Every combination of the parameters (``boards``: a list, or ``[None]`` without
    builds), each checked by the core generator first (ValueError naming the point)."""
    points = [SweepPoint(r, c, s, w, a, b) for (r, c), s, w, a, b in
              itertools.product(shapes, spad_depths, wbuf_depths, acc_depths, boards)]
    for p in points:
        try:
            p.config()
        except ValueError as e:
            raise ValueError(f"sweep point {p.name}: {e}") from None
    return points


def model_hash(model: bytes, calib: np.ndarray, inputs: np.ndarray) -> str:
    """SHA-256 (hex) of the model file, its calibration data and the inputs run."""
    h = hashlib.sha256(model)
    for a in (calib, inputs):
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def point_key(point: SweepPoint, engine: str, build: bool, digest: str) -> str:
    """The key of a point's row: its parameters, the engine, the build flag and the model hash."""
    text = json.dumps({**dataclasses.asdict(point), "engine": engine, "build": build, "model": digest},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure_point(point: SweepPoint, engine: str, build: bool, model: bytes, calib: np.ndarray,
                  inputs: np.ndarray) -> dict:
    """Compile the model for the point's core and run ``inputs`` on ``engine``; with
    ``build``, build the point's board. The row: the point, ``pes``, cycles per
    inference (mean over the inputs), MAC utilization (the model's MACs over cycles x
    PEs), per-layer cycles and array occupancy, bit-identity with the golden model,
    and the build's resources and Fmax (MHz)."""
    from fxpgen.app.flow import MIN_SQNR_DB, compile_model, run_compiled
    cfg = point.config()
    with tempfile.TemporaryDirectory(prefix="fxpgen-sweep-") as tmp:
        (Path(tmp) / "model.onnx").write_bytes(model)
        summary = compile_model(Path(tmp) / "model.onnx", calib, cfg, Path(tmp) / "program",
                                min_sqnr_db=MIN_SQNR_DB)
        res = run_compiled(Path(tmp) / "program", inputs, engine)
        row = {**dataclasses.asdict(point), "status": "ok", "engine": engine, "pes": cfg.rows * cfg.cols,
               "images": len(inputs), "instructions": summary["instructions"],
               "cycles_per_inference": res["cycles_per_image"],
               "mac_utilization": res["mac_utilization"],
               "golden_identical": res.get("golden_identical"), "run_s": res["seconds"],
               "layers": [{"layer": l["layer"], "cycles": l["cycles"],
                           "array_occupancy": l["array_occupancy"]} for l in res["layers"]]}
        if build:
            row.update(_build_figures(point, cfg, Path(tmp) / "build"))
    return row


def _build_figures(point: SweepPoint, cfg: CoreConfig, outdir: Path) -> dict:
    """Resources (used), Fmax (MHz) and build time of the point's bitstream."""
    from fxpgen.boards.build import build_board
    report = build_board(point.board, outdir, cfg=cfg)
    if not report["built"]:
        raise RuntimeError(f"{point.board}: no bitstream is built for this board ({report.get('note', '')})")
    util = report["utilization"]
    figures = {col: next((util[n]["used"] for n in names if n in util), None)
               for col, names in RESOURCE_COLUMNS.items()}
    return {**figures, "fmax_mhz": report["fmax_mhz"], "timing_met": report["timing_met"],
            "build_s": report["build_s"]}


def failed_row(point: SweepPoint, engine: str, error: str, log_tail: str) -> dict:
    """The row of a point that failed: its parameters, the error and the tail of its log."""
    return {**dataclasses.asdict(point), "status": "failed", "engine": engine, "error": error,
            "log_tail": log_tail}


def load_rows(outdir: Path) -> dict[str, dict]:
    """The rows of an earlier sweep in ``outdir`` by key (none if there is no table)."""
    path = Path(outdir) / RESULTS_JSON
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text())
        return {row["key"]: row for row in table["rows"]}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--out {outdir}: {RESULTS_JSON} is not a sweep table ({e}); "
                         "choose another folder or remove it") from None


def save_rows(outdir: Path, rows: list[dict]) -> None:
    """Write the table: ``results.json`` (every row, with its layers) and
    ``results.csv`` (one line per row, a ``cycles:<layer>`` column per layer)."""
    outdir = Path(outdir)
    (outdir / RESULTS_JSON).write_text(json.dumps({"rows": rows}, indent=1))
    flat, columns = [], {}
    for row in rows:
        line = {k: v for k, v in row.items() if k != "layers"}
        line.update({f"cycles:{l['layer']}": l["cycles"] for l in row.get("layers", [])})
        flat.append(line)
        columns.update(dict.fromkeys(line))
    with open(outdir / RESULTS_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(flat)


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For each (cost, cycles) point, whether no other point is at most as large in
    both and smaller in one (the front of the points worth building)."""
    return [not any(qx <= px and qy <= py and (qx, qy) != (px, py) for qx, qy in points)
            for px, py in points]


def plot_rows(rows: list[dict], path: Path) -> str:
    """Plot cycles per inference against LUTs (when every measured point was built)
    or against PEs, Pareto front marked, into the PNG ``path``; returns the x axis's
    column. Needs matplotlib (the ``bench`` extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the sweep's plot needs matplotlib: pip install 'fxpgen[bench]'") from None
    ok = [r for r in rows if r["status"] == "ok"]
    x_col = "luts" if ok and all(r.get("luts") is not None for r in ok) else "pes"
    xy = [(float(r[x_col]), float(r["cycles_per_inference"])) for r in ok]
    front = pareto(xy)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([x for (x, _), f in zip(xy, front) if not f], [y for (_, y), f in zip(xy, front) if not f],
               color="C0", zorder=2, label="dominated")
    best = sorted(p for p, f in zip(xy, front) if f)
    ax.plot([x for x, _ in best], [y for _, y in best], "o-", color="C3", zorder=3, label="Pareto front")
    for (x, y), r in zip(xy, ok):
        ax.annotate(f"{r['rows']}x{r['cols']}", (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel({"luts": "LUTs (logic cells on iCE40)", "pes": "processing elements"}[x_col])
    ax.set_ylabel("cycles per inference")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return x_col


def run_sweep(points: list[SweepPoint], *, engine: str, build: bool, model: bytes, model_name: str,
              calib: np.ndarray, inputs: np.ndarray, outdir: Path,
              done: Callable[[str], None] | None = None) -> tuple[list[dict], int]:
    """Measure every point not yet in ``outdir``'s table as a Ray task (in a
    :func:`~fxpgen.app.fanout.ray_session`), writing the table as each finishes so
    that no result is lost; a failed point's row holds its error and log tail, and
    is measured again by the next run. Returns this sweep's rows, in the order of
    ``points``, and the number of points skipped as already measured."""
    from fxpgen.app.fanout import TaskFailed, fan_out
    digest = model_hash(model, calib, inputs)
    rows = load_rows(outdir)
    keys = {point_key(p, engine, build, digest): p for p in points}
    todo = {k: (p, engine, build, model, calib, inputs) for k, p in keys.items()
            if rows.get(k, {}).get("status") != "ok"}
    for key in keys.keys() - todo.keys():
        if done:
            done(key)
    for key, value in fan_out(measure_point, todo, done=done):
        row = (failed_row(keys[key], engine, value.error, value.log_tail) if isinstance(value, TaskFailed)
               else value)
        rows[key] = {"key": key, "model": model_name, "model_hash": digest, **row}
        save_rows(outdir, list(rows.values()))
    if not todo:
        save_rows(outdir, list(rows.values()))
    return [rows[k] for k in keys], len(keys) - len(todo)
