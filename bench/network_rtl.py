"""A whole network at 224x224 on the RTL: compile time, and one image end to end on
the Verilator-native harness, bit for bit against the golden model.

The network is the ONNX graph of ``fxpgen/models/zoo.py`` (ResNet-18's layers and
shapes, random weights; 1000 classes), quantized with a few random calibration
images and compiled by the same :func:`fxpgen.app.flow.compile_model` as ``fxpgen
compile``, for a 16x16 core with a 65,536-row scratchpad (1 MiB, as deep as 16-bit
addresses allow). The 224x224 image does not fit next to the first conv's output,
so the program streams it in bands (``compiler/lower.py``, ``compiler/emit.py``); every other map stays
on chip. One random image then runs through ``fxpgen run --engine native``'s flow:
every layer is a HALT segment whose counters the RTL reports, and the output must
equal the golden model's.

    python -m bench.network_rtl [--network resnet18] [--size 224] [--rows 16 --cols 16]

Writes ``bench/results/network_rtl.json`` and ``network_rtl.md``. The first run
builds the Verilator model of the core (minutes); the simulation takes minutes more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.utilization import BIG_MEMORIES, CALIB_IMAGES
from fxpgen.app.flow import compile_model, jsonable, load_compiled, run_compiled
from fxpgen.config import CoreConfig
from fxpgen.models import zoo

RESULTS = Path(__file__).resolve().parent / "results"
NETWORKS = {"resnet18": zoo.resnet18, "mobilenetv2": zoo.mobilenetv2}


def bench(network: str, size: int, rows: int, cols: int, seed: int = 0, workdir: Path | None = None,
          log=print) -> dict:
    """Compile ``network`` at ``size`` for a ``rows`` x ``cols`` core and run one image
    on the native RTL harness; the figures as a dict."""
    # The utilization bench's memories and calibration: the scratchpad as deep as
    # 16-bit addresses allow.
    cfg = CoreConfig(rows=rows, cols=cols, **BIG_MEMORIES)
    rng = np.random.default_rng(seed)
    model = NETWORKS[network](size=size, classes=1000, seed=seed)
    calib = rng.uniform(0, 1, (CALIB_IMAGES, 3, size, size))
    image = rng.uniform(0, 1, (3, size, size))
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"fxpgen-{network}-"))

    log(f"{network} {size}x{size}: compiling for {cfg.rows}x{cfg.cols} ...")
    t0 = time.monotonic()
    summary = compile_model(model, calib, cfg, workdir)
    compile_s = time.monotonic() - t0
    prog, _ = load_compiled(workdir)
    low = prog.lowered_view()
    log(f"  compiled in {compile_s:.1f} s (quantize {summary['quantize_s']:.1f} s, lower "
        f"{summary['lower_s']:.1f} s): {summary['instructions']:,} instructions, "
        f"{summary['data_words']:,} constant data words, input in {len(low.input_pieces)} pieces")

    log("  running one image on the native RTL harness (the first run builds the model) ...")
    t0 = time.monotonic()
    run = run_compiled(workdir, image, "native")
    wall_s = time.monotonic() - t0
    sim_s = run["seconds"] - run["verilator_build_s"]
    layers = run["layers"]
    cycles = int(sum(layer["cycles"] for layer in layers))
    macs = run["model_macs"]
    result = {
        "network": network, "size": size, "config": cfg.as_dict(), "seed": seed,
        "calib_images": CALIB_IMAGES,
        "compile_s": round(compile_s, 1), "quantize_s": round(summary["quantize_s"], 1),
        "lower_s": round(summary["lower_s"], 1),
        "instructions": summary["instructions"], "data_words": summary["data_words"],
        "input_pieces": len(low.input_pieces),
        "spad_rows_used": summary["spad_rows"],
        "golden_identical": run["golden_identical"],
        "cycles": cycles,
        "mac_cycles": int(sum(layer["mac_cycles"] for layer in layers)),
        "model_macs": macs,
        "ideal_cycles": -(-macs // (rows * cols)),
        "mac_utilization": run["mac_utilization"],
        "verilator_build_s": round(run["verilator_build_s"], 1),
        "sim_s": round(sim_s, 1),
        "cycles_per_s": cycles / sim_s if sim_s > 0 else None,
        "wall_s": round(wall_s, 1),
        "load_average": os.getloadavg()[0],
        "layers": [{k: (int(v) if isinstance(v, float) and not k.endswith(("occupancy", "utilization"))
                        else v)
                    for k, v in layer.items()} for layer in layers],
    }
    log(f"  {cycles:,} cycles ({result['mac_utilization']:.3f} of the ideal {result['ideal_cycles']:,}), "
        f"golden identical: {run['golden_identical']}, simulated in {sim_s:.0f} s "
        f"({result['cycles_per_s']:,.0f} cycles/s)")
    return result


def markdown(r: dict) -> str:
    cfg = r["config"]
    lines = [
        f"# {r['network']} at {r['size']}x{r['size']} end to end on the RTL", "",
        f"Core {cfg['rows']}x{cfg['cols']}, scratchpad {cfg['spad_depth']:,} rows, accumulators "
        f"{cfg['acc_depth']:,}, weight buffer {cfg['wbuf_depth']:,}; random weights, "
        f"{r['calib_images']} random calibration images, one random image (seed {r['seed']}).", "",
        "| figure | value |", "|---|---:|",
        f"| compile time (quantize + lower + write) | {r['compile_s']} s ({r['quantize_s']} + {r['lower_s']} s + rest) |",
        f"| instructions | {r['instructions']:,} |",
        f"| constant data words | {r['data_words']:,} |",
        f"| input image streamed in | {r['input_pieces']} pieces |",
        f"| output bit-identical to the golden model | {'yes' if r['golden_identical'] else '**no**'} |",
        f"| cycles (sum of the per-layer counters) | {r['cycles']:,} |",
        f"| ideal cycles (MACs / (rows x cols)) | {r['ideal_cycles']:,} |",
        f"| MAC utilization | {r['mac_utilization']:.3f} |",
        f"| Verilator build | {r['verilator_build_s']} s |",
        f"| simulation | {r['sim_s']} s, {r['cycles_per_s']:,.0f} cycles/s (load {r['load_average']:.1f}) |",
        "", "| layer | cycles | MAC cycles | occupancy | data stalls | dispatch stalls | result stalls |",
        "|---|---:|---:|---:|---:|---:|---:|"]
    for layer in r["layers"]:
        lines.append(f"| {layer['layer']} | {layer['cycles']:,} | {layer['mac_cycles']:,} | "
                     f"{layer['array_occupancy']:.2f} | {layer['stall_data']:,} | "
                     f"{layer['stall_dispatch']:,} | {layer['stall_result']:,} |")
    lines += ["", f"Command: `python -m bench.network_rtl --network {r['network']} --size {r['size']} "
              f"--rows {cfg['rows']} --cols {cfg['cols']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", choices=sorted(NETWORKS), default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--workdir", type=Path, help="program directory to keep (default: a temporary one)")
    args = ap.parse_args(argv)
    r = bench(args.network, args.size, args.rows, args.cols, args.seed, args.workdir,
              log=lambda m: print(m, file=sys.stderr, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "network_rtl.json").write_text(json.dumps(r, indent=1, default=jsonable))
    md = markdown(r)
    (args.out / "network_rtl.md").write_text(md)
    print(md)
    return 0 if r["golden_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
