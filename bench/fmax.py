"""Fmax and resources of the core versus array size on ECP5, from real Yosys and
nextpnr runs (``fxpgen build`` for the ULX3S 85F, one build per array size).

    python bench/fmax.py --sizes 4x4,8x8,12x12 [--board ulx3s-85f] [--out bench/results]

Writes ``fmax.json`` and ``fmax.md``; a size already in ``fmax.json`` is not rebuilt
unless ``--rebuild``. Builds take tens of minutes each on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fxpgen.boards.build import build_board
from fxpgen.boards.platforms import board

ROOT = Path(__file__).resolve().parent


def markdown(results: dict, board_name: str) -> str:
    lines = [f"# Fmax and resources versus array size ({board_name})", "",
             "Every figure from one `fxpgen build` (Yosys synth, nextpnr place and route, "
             "nextpnr's own timing analysis) of the whole board design: core, UART bridge, PLL.", "",
             "| array | LUTs | flip-flops | DSP (MULT18X18D) | block RAM (DP16KD) | Fmax (MHz) | target (MHz) | build (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for size, r in sorted(results.items(), key=lambda kv: int(kv[0].split("x")[0])):
        u = r["utilization"]
        get = lambda k: f"{u[k]['used']:,} / {u[k]['available']:,}" if k in u else "–"
        lines.append(f"| {size} | {get('luts')} | {get('flip_flops')} | {get('dsp')} | {get('block_ram')} | "
                     f"{r['fmax_mhz']} | {r['clock_target_mhz']:g} | {r['build_s']:.0f} |")
    lines += ["", f"Command: `python bench/fmax.py --sizes {','.join(sorted(results))} --board {board_name}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4x4,8x8,12x12")
    ap.add_argument("--board", default="ulx3s-85f")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--builds", type=Path, default=Path("build") / "fmax")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args(argv)
    b = board(args.board)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fmax.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for size in args.sizes.split(","):
        if size in results and not args.rebuild:
            continue
        rows, cols = (int(v) for v in size.split("x"))
        cfg = b.config.replace(rows=rows, cols=cols)
        t0 = time.monotonic()
        print(f"building {size} for {args.board} ...", file=sys.stderr, flush=True)
        rep = build_board(args.board, args.builds / size, cfg=cfg,
                          progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        rep["wall_s"] = round(time.monotonic() - t0, 1)
        results[size] = rep
        path.write_text(json.dumps(results, indent=2))
        (args.out / "fmax.md").write_text(markdown(results, args.board))
    print(markdown(results, args.board))
    return 0


if __name__ == "__main__":
    sys.exit(main())
