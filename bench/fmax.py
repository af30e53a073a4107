"""Fmax and resources of the core versus array size on ECP5, from real Yosys and
nextpnr runs (``fxpgen build`` for the ULX3S 85F, one build per array size).

    python -m bench.fmax --sizes 4x4,8x8,12x12 [--board ulx3s-85f] [--lut-mapping abc]

Writes ``fmax.json`` and ``fmax.md``; a size (with the same LUT mapping) already in
``fmax.json`` is not rebuilt unless ``--rebuild``. Builds take tens of minutes each
on two cores. Yosys 0.70's ``synth_ecp5`` maps LUTs with ABC9 only, and ABC9 stops
on an internal assertion (ABC_OPS_REINTEGRATE, rtlil.cc:3091) for the 12x12 core,
with or without LUT RAM; ``--lut-mapping abc`` runs ``synth_ecp5`` up to its LUT
mapping, maps with the older ``abc -lut 4`` flow and finishes with ``synth_ecp5``'s
own cell mapping.
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
#: LUT mapping -> (synth_ecp5 options, Yosys script after it).
LUT_MAPPINGS = {
    "abc9": ("", ""),
    "abc": ("-run :map_luts",
            "techmap -map +/lattice/latches_map.v; abc -lut 4 -dress; clean; synth_ecp5 -run map_cells:"),
}


def markdown(results: dict, board_name: str) -> str:
    lines = [f"# Fmax and resources versus array size ({board_name})", "",
             "Every figure from one `fxpgen build` (Yosys synth, nextpnr place and route, "
             "nextpnr's own timing analysis) of the whole board design: core, UART bridge, PLL.", "",
             "| array | LUT mapping | LUTs | flip-flops | DSP (MULT18X18D) | block RAM (DP16KD) | Fmax (MHz) | target (MHz) | build (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in sorted(results.items(), key=lambda kv: (int(kv[0].split("x")[0]), kv[0])):
        u = r["utilization"]
        get = lambda k: f"{u[k]['used']:,} / {u[k]['available']:,}" if k in u else "–"
        size = key.split(" ")[0]
        synth = r.get("lut_mapping", "abc9").upper()
        lines.append(f"| {size} | {synth} | {get('luts')} | {get('flip_flops')} | {get('dsp')} | "
                     f"{get('block_ram')} | {r['fmax_mhz']} | {r['clock_target_mhz']:g} | {r['build_s']:.0f} |")
    commands = sorted({r.get("command", "") for r in results.values()} - {""})
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in commands), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4x4,8x8,12x12")
    ap.add_argument("--board", default="ulx3s-85f")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--builds", type=Path, default=Path("build") / "fmax")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--lut-mapping", choices=sorted(LUT_MAPPINGS), default="abc9")
    args = ap.parse_args(argv)
    b = board(args.board)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fmax.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for size in args.sizes.split(","):
        key = size if args.lut_mapping == "abc9" else f"{size} {args.lut_mapping}"
        if key in results and not args.rebuild:
            continue
        rows, cols = (int(v) for v in size.split("x"))
        cfg = b.config.replace(rows=rows, cols=cols)
        t0 = time.monotonic()
        print(f"building {size} for {args.board} ...", file=sys.stderr, flush=True)
        opts, after = LUT_MAPPINGS[args.lut_mapping]
        rep = build_board(args.board, args.builds / key.replace(" ", "-"), cfg=cfg, synth_opts=opts,
                          script_after_synth=after,
                          progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        rep["wall_s"] = round(time.monotonic() - t0, 1)
        rep["lut_mapping"] = args.lut_mapping
        rep["command"] = (f"python -m bench.fmax --sizes {size} --board {args.board}"
                          + (f" --lut-mapping {args.lut_mapping}" if args.lut_mapping != "abc9" else ""))
        results[key] = rep
        path.write_text(json.dumps(results, indent=2))
        (args.out / "fmax.md").write_text(markdown(results, args.board))
    print(markdown(results, args.board))
    return 0


if __name__ == "__main__":
    sys.exit(main())
