"""Running one proof through SymbiYosys: the design as RTLIL, a ``.sby`` job
file, and the verdict with its time and counterexample trace.

A harness is an Amaranth component whose ``In`` ports are the free inputs
(the solver picks any value on every cycle) and whose ``Assert`` statements are
the property. The job proves the asserts by k-induction (``mode prove``) with
SMT-based bounded model checking (smtbmc) and Boolector.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil

from .tools import formal_env, sby_command

__all__ = ["Verdict", "run_sby"]


@dataclass(frozen=True)
class Verdict:
    """The outcome of one proof job.

    ``status`` is ``"PASS"`` (proven for every input), ``"FAIL"`` (a reachable
    counterexample), ``"UNKNOWN"`` (the induction step failed: not proven at this
    depth) or ``"ERROR"`` (the tools failed). ``seconds`` is wall time; ``trace``
    the counterexample VCD when there is one; ``workdir`` the job's folder with
    its logs.
    """

    name: str
    status: str
    seconds: float
    workdir: Path
    trace: Path | None

    @property
    def passed(self) -> bool:
        return self.status == "PASS"


def _job_text(depth: int) -> str:
    return "\n".join([
        "[options]", "mode prove", f"depth {depth}", "",
        "[engines]", "smtbmc boolector", "",
        "[script]", "read_rtlil design.il", "prep -top top", "",
        "[files]", "design.il", "",
    ])


def _trace(jobdir: Path) -> Path | None:
    """The counterexample of a failed job: the base case's trace first, else the
    induction step's."""
    engine = jobdir / "engine_0"
    for name in ("trace.vcd", "trace_induct.vcd"):
        if (engine / name).is_file():
            return engine / name
    found = sorted(jobdir.rglob("*.vcd"))
    return found[0] if found else None


def run_sby(name: str, harness, workdir: Path, depth: int, timeout: float = 1800) -> Verdict:
    """Prove the asserts of ``harness`` (an Amaranth component) by k-induction of
    ``depth`` steps in ``workdir / name`` (a previous run's results there are replaced)."""
    root = Path(workdir).resolve() / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "design.il").write_text(rtlil.convert(harness, name="top", emit_src=False))
    (root / "job.sby").write_text(_job_text(depth))
    env = formal_env()
    start = time.monotonic()
    try:
        proc = subprocess.run([*sby_command(), "-f", "job.sby"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout)
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        output = f"timed out after {timeout} s\n{e.stdout or ''}"
    seconds = time.monotonic() - start
    (root / "sby.log").write_text(output)
    status_file = root / "job" / "status"
    status = status_file.read_text().split()[0] if status_file.is_file() else "ERROR"
    if status not in ("PASS", "FAIL", "UNKNOWN"):
        status = "ERROR"
    trace = _trace(root / "job") if status in ("FAIL", "UNKNOWN") else None
    return Verdict(name, status, seconds, root, trace)
