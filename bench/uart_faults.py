"""A fault campaign on the UART link: the board under Verilator behind a
pseudo-terminal (:mod:`fxpgen.boards.board_rtl`), the host program talking to it,
and random faults on the wire in both directions (:mod:`fxpgen.boards.wire_faults`:
bit flips, bursts, lost bytes and replies, garbage). Every run must end with the
right result (the faults corrected by resends, or by running the program again
after a lost result) or with a named error; a wrong result or a hang is a failure.

    python -m bench.uart_faults [--runs 20] [--faults 6] [--seed 1] [--network] [--host-timeout 3]

``--network`` runs the digits CNN (compiled for a 2x2 core) on two images with
``fxpgen run --engine board``; the default is ``fxpgen check --gemm 12x4x6``.
``--host-timeout`` is the seconds the host waits for each reply before resending
(``--timeout`` of the host command): a simulated board answers far slower than a
real one, more so on a loaded machine, so a long network run may need more than
the default to tell a lost reply from a slow one.
Prints one line per run and a summary table (runs, faults, frames, resends, reruns,
wrong results, hangs, named errors); exits non-zero on a wrong result or a hang.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fxpgen.config import CoreConfig
from fxpgen.boards.wire_faults import random_faults

DIVISOR = 8
CFG = CoreConfig(2, 2, spad_depth=256, wbuf_depth=64, acc_depth=256)
#: The network campaign's core: the digits CNN's maps fit its scratchpad.
NET_CFG = CFG.replace(spad_depth=1024)
#: Seconds the host waits for a reply before resending (default); a lost reply costs this.
HOST_TIMEOUT = 3.0


@dataclass
class Tally:
    runs: int = 0
    faults: int = 0
    frames: int = 0
    resends: int = 0
    reruns: int = 0
    right: int = 0
    wrong: int = 0
    hangs: int = 0
    named_errors: list[str] = field(default_factory=list)

    def table(self) -> str:
        head = ("runs", "faults on the wire", "frames sent", "frames resent", "programs rerun",
                "right results", "wrong results", "hangs", "named errors")
        row = (self.runs, self.faults, self.frames, self.resends, self.reruns, self.right,
               self.wrong, self.hangs, len(self.named_errors))
        return ("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n| "
                + " | ".join(str(v) for v in row) + " |")


def _network_job(folder: Path, host_timeout: float) -> tuple[list[str], str]:
    """Compile the digits CNN for :data:`NET_CFG` into ``folder``; the host command."""
    import numpy as np
    from fxpgen.models import digits_assets
    a = digits_assets()
    c = NET_CFG
    subprocess.run([sys.executable, "-m", "fxpgen.app.cli", "compile", str(a["model"]), "--calib",
                    str(a["calib"]), "--rows", str(c.rows), "--cols", str(c.cols),
                    "--spad-depth", str(c.spad_depth), "--wbuf-depth", str(c.wbuf_depth),
                    "--acc-depth", str(c.acc_depth), "-q", "-o", str(folder / "prog")], check=True)
    np.save(folder / "x.npy", np.load(a["test_x"])[:2])
    return ([sys.executable, "-m", "fxpgen.app.cli", "run", str(folder / "prog"), "--input",
             str(folder / "x.npy"), "--engine", "board", "--port", "{port}", "--timeout",
             str(host_timeout), "--json"], "golden_identical")


def _gemm_job(host_timeout: float) -> tuple[list[str], str]:
    return ([sys.executable, "-m", "fxpgen.app.cli", "check", "--port", "{port}", "--gemm", "12x4x6",
             "--seed", "4", "--timeout", str(host_timeout), "--json"], "bit_identical")


def campaign(runs: int, n_faults: int, seed: int, network: bool, log=print,
             host_timeout: float = HOST_TIMEOUT) -> Tally:
    """Run the campaign; ``log`` gets one line per run; the host waits ``host_timeout``
    seconds for each reply."""
    from fxpgen.boards.board_rtl import board_model, run_host_on_board
    model = board_model(NET_CFG if network else CFG, DIVISOR, insn_buffer=512, data_buffer=512)
    with tempfile.TemporaryDirectory() as tmp:
        argv, ok_key = _network_job(Path(tmp), host_timeout) if network else _gemm_job(host_timeout)
        clean = run_host_on_board(model, DIVISOR, argv, timeout_s=3600)
        if clean["returncode"] != 0:
            raise RuntimeError(f"the run without faults failed: {clean['stderr'][-2000:]}")
        rng = random.Random(seed)
        tally = Tally()
        for k in range(runs):
            faults = random_faults(rng, n_faults, clean["host_bytes"], clean["board_bytes"])
            r = run_host_on_board(model, DIVISOR, argv, faults=faults, timeout_s=3600,
                                  max_cycles=20 * clean["cycles"] + 50_000_000)
            _count(tally, r, ok_key)
            log(f"run {k}: {len(r['faults_applied'])} faults, exit {r['returncode']}"
                + (", TIMED OUT" if r["timed_out"] else "")
                + (f": {r['stderr'].strip().splitlines()[-1]}" if r["returncode"] and r["stderr"].strip() else ""))
    return tally


def _count(t: Tally, r: dict, ok_key: str) -> None:
    t.runs += 1
    t.faults += len(r["faults_applied"])
    if r["timed_out"]:
        t.hangs += 1
        return
    if r["returncode"] != 0:
        t.named_errors.append(r["stderr"].strip().splitlines()[-1] if r["stderr"].strip() else "?")
        return
    report = json.loads(r["stdout"])
    rejected = report.get("frames_rejected", [])
    t.frames += report.get("frames_sent", 0)
    t.reruns += sum("run again from a reset" in why for why in rejected)
    t.resends += sum("run again from a reset" not in why for why in rejected)
    if report[ok_key]:
        t.right += 1
    else:
        t.wrong += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--faults", type=int, default=6, help="faults per run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--network", action="store_true", help="the digits CNN instead of a GEMM")
    ap.add_argument("--host-timeout", type=float, default=HOST_TIMEOUT,
                    help="seconds the host waits for each reply before resending")
    args = ap.parse_args(argv)
    if args.host_timeout <= 0:
        ap.error(f"--host-timeout must be positive, not {args.host_timeout}")
    tally = campaign(args.runs, args.faults, args.seed, args.network, host_timeout=args.host_timeout)
    print(tally.table())
    for why in tally.named_errors:
        print(f"named error: {why}")
    return 1 if tally.wrong or tally.hangs else 0


if __name__ == "__main__":
    sys.exit(main())
