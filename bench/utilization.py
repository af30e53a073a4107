"""MAC utilization of the RTL, per layer, against SCALE-Sim and the ideal.

For every conv / fully connected layer of

* the shipped digits CNN (compiled as ``fxpgen demo`` does, run whole on the RTL;
  every layer ends in a HALT, so the core's own counters measure each layer), and
* ResNet-18 and MobileNetV2 at 224x224 (``fxpgen/models/zoo.py``, random weights,
  quantized with a few random calibration images), each layer run on its own in
  bands of output rows (``layer_bands.py``) with its output checked against the
  golden model,

it reports the RTL's cycles (the ``cycles`` counter of the layer's HALT segment),
the cycle model's prediction for the same programs (:mod:`fxpgen.sim.cycle_model`),
SCALE-Sim's weight-stationary estimate for the same array and the ideal
``MACs / (rows * cols)``; utilization = ideal / cycles. Results go to
``bench/results/utilization.{json,md,png}``; a run updates only the networks it ran.

    python -m bench.utilization --networks digits,resnet18,mobilenetv2 --engine native
    python -m bench.utilization --networks resnet18 --max-layers 3     # a quick look
    python -m bench.utilization --report-only       # Markdown and plot from the JSON

The whole run takes about 45 minutes on a 2-core machine, most of it SCALE-Sim
(about 0.1 ms per simulated cycle); the RTL part is a few minutes on the native
engine (``--engine rtl``, cocotb, is some hundred times slower).

SCALE-Sim (``pip install scalesim``, 3.0.0) is run per distinct layer shape with a
config of ``ArrayHeight = rows``, ``ArrayWidth = cols``, ``Dataflow = ws``, 64 MiB
SRAMs and its bandwidth-estimating mode (no memory stalls); its ``Total Cycles``
(compute, with SCALE-Sim's own fill and drain per fold, without the DRAM prefetch)
is kept as it is. Results are cached in ``bench/results/scalesim_cache.json``.
Conventions: SCALE-Sim does not pad, so the ifmap written to its topology is the
window the outputs read, ``(out - 1) * stride + kernel`` a side (its
``ceil((in - k + s) / s)`` then gives our output size); a grouped conv (depthwise:
groups = channels) is ``groups`` independent convs of ``cin / groups`` channels and
``cout / groups`` filters, which is what SCALE-Sim's own depthwise mode (a "DP"
layer name) does, one 1-channel conv per channel; those convs are identical, so one
is simulated and its cycles multiplied by ``groups``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from bench.layer_bands import band_programs, layer_graph
from bench.scalesim import ScaleSimCache, ScaleSimLayer, scalesim_layer
from bench.utilization_report import fmt, totals, write_report
from fxpgen.app.engines import make_engine
from fxpgen.compiler.golden import run_golden
from fxpgen.compiler.lower import lower
from fxpgen.compiler.qgraph import QAdd, QAvgPool, QConv, QGraph, QMaxPool
from fxpgen.config import CoreConfig
from fxpgen.isa import Instruction, Opcode
from fxpgen.sim.cycle_model import estimate
from fxpgen.sim.engine import NetworkProgram

__all__ = ["layer_kind", "layer_statistics", "bench_digits", "bench_network", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
NETWORKS = ("digits", "resnet18", "mobilenetv2")
#: Core for the 224x224 layers: the scratchpad as deep as 16-bit addresses allow,
#: accumulators and weight buffer larger than the defaults.
BIG_MEMORIES = {"spad_depth": 65536, "acc_depth": 4096, "wbuf_depth": 8192}
#: Random calibration images for quantizing the 224x224 networks.
CALIB_IMAGES = 3
#: Inputs per RTL simulation: every band of a layer, or every digits image, in one.
BATCH = 1 << 16


# --- layers --------------------------------------------------------------------------


def layer_kind(qg: QGraph, op) -> str:
    """conv, dw (depthwise or grouped), fc (kernel covering a map into 1x1), avgpool,
    maxpool or add."""
    if isinstance(op, QConv):
        _, h, w = qg.tensor(op.input).shape
        _, oh, ow = qg.tensor(op.output).shape
        if op.groups > 1:
            return "dw"
        if oh == ow == 1 and op.weight.shape[2:] == (h, w):
            return "fc"
        return "conv"
    return {QAvgPool: "avgpool", QMaxPool: "maxpool", QAdd: "add"}[type(op)]


def _describe(qg: QGraph, op) -> dict:
    d = {"layer": op.name, "kind": layer_kind(qg, op),
         "in_shape": list(qg.tensor(op.inputs[0]).shape), "out_shape": list(qg.tensor(op.output).shape)}
    if isinstance(op, (QConv, QAvgPool, QMaxPool)):
        d["kernel"] = list(op.weight.shape[2:]) if isinstance(op, QConv) else list(op.kernel)
        d["stride"] = list(op.stride)
        d["pads"] = list(op.pads)
    if isinstance(op, QConv):
        d["groups"] = op.groups
        d["residual_fused"] = op.residual is not None
    return d

# --- the digits CNN, whole -----------------------------------------------------------


def layer_statistics(instructions: list[Instruction], layers: list[str]) -> dict[str, dict]:
    """Per layer, counted from its own instructions: ``matmuls`` (MATMUL
    instructions), ``weight_tiles`` (LOADW instructions, one weight tile each) and
    ``vectors`` (array vectors its MATMULs stream)."""
    out: dict[str, dict] = {}
    for insn, layer in zip(instructions, layers):
        d = out.setdefault(layer, {"matmuls": 0, "weight_tiles": 0, "vectors": 0})
        if insn.opcode is Opcode.MATMUL:
            d["matmuls"] += 1
            d["vectors"] += insn.iterations
        elif insn.opcode is Opcode.LOADW:
            d["weight_tiles"] += 1
    return out


def _with_vectors_per_matmul(stats: dict) -> dict:
    """The report's columns: matmuls, weight tiles and mean vectors per matmul."""
    return {"matmuls": stats["matmuls"], "weight_tiles": stats["weight_tiles"],
            "vectors_per_matmul": stats["vectors"] / stats["matmuls"] if stats["matmuls"] else None}


def bench_digits(rows: int, cols: int, engine_name: str, *, images: int = 4,
                 log=print) -> tuple[list[dict], dict]:
    """The shipped digits CNN on a default ``rows x cols`` core, whole on the RTL,
    ``images`` test images; per-layer counters (means over the images)."""
    from fxpgen.compiler.golden import quantize_input
    from fxpgen.compiler.onnx_frontend import load_onnx
    from fxpgen.compiler.quantize import quantize
    from fxpgen.models import digits_assets

    cfg = CoreConfig(rows=rows, cols=cols)
    a = digits_assets()
    qg, _ = quantize(load_onnx(a["model"]), np.load(a["calib"]).astype(np.float64))
    low = lower(qg, cfg)
    program = NetworkProgram.from_lowered(low, qg, input_halt=True)
    xq = list(np.asarray(quantize_input(qg, np.load(a["test_x"])[:images]), np.int64))
    engine = make_engine(engine_name, batch=BATCH)
    log(f"digits: {len(program.words)} instructions, {images} images on {engine.name} ({cfg.name})")
    res = engine.run(program, xq)
    ok = all(bool(np.array_equal(y, g)) for y, g in zip(res.outputs, program.golden(xq)))
    per_image = [{d["layer"]: d for d in img} for img in res.layers]
    model = {s.layer: s.counters["cycles"] for s in estimate(program).segments}
    stats = layer_statistics(low.instructions, low.layers)
    ops = {op.name: op for op in qg.ops}
    rows_out = []
    for name in per_image[0]:
        c = {key: float(np.mean([img[name][key] for img in per_image]))
             for key in per_image[0][name] if key != "layer"}
        if name in ops:
            op = ops[name]
            d = _describe(qg, op)
            d.update(macs=qg.macs(op), rtl_cycles=c["cycles"], rtl_mac_cycles=c["mac_cycles"],
                     rtl_stall_dispatch=c["stall_dispatch"], model_cycles=model[name], verified=ok)
            if isinstance(op, QConv):
                d["scalesim_layer"] = dataclasses.asdict(scalesim_layer(qg, op))
                d.update(_with_vectors_per_matmul(stats[name]))
        else:
            d = {"layer": name, "kind": name, "rtl_cycles": c["cycles"], "rtl_mac_cycles": c["mac_cycles"],
                 "model_cycles": model[name], "macs": 0}
        rows_out.append(d)
    meta = {"config": cfg.as_dict(), "engine": engine.name, "images": images,
            "outputs_identical_to_golden": ok, "whole_network_cycles": sum(
                r["rtl_cycles"] for r in rows_out),
            "sim_seconds": round(res.info["sim_s"], 1)}
    log(f"digits: outputs identical to golden: {ok}; {meta['whole_network_cycles']:.0f} cycles per image")
    return rows_out, meta


# --- 224x224 networks, layer at a time -----------------------------------------------


def _network_state(name: str, size: int, calib_n: int, seed: int, log=print):
    """(quantized graph, golden activations of one random image), cached in
    ``fxpgen.tools.cache_dir() / "bench"``."""
    from fxpgen.compiler.onnx_frontend import load_onnx
    from fxpgen.compiler.program import load_qgraph, save_qgraph
    from fxpgen.compiler.quantize import quantize
    from fxpgen.compiler.golden import quantize_input
    from fxpgen.tools import cache_dir

    from fxpgen.models import zoo

    d = cache_dir() / "bench" / f"{name}-{size}-c{calib_n}-s{seed}"
    if (d / "golden.npz").is_file() and (d / "qgraph.json").is_file():
        qg = load_qgraph(d)
        env = dict(np.load(d / "golden.npz"))
        return qg, env
    t0 = time.monotonic()
    build = {"resnet18": zoo.resnet18, "mobilenetv2": zoo.mobilenetv2}[name]
    model = build(size=size, classes=1000, seed=seed)
    rng = np.random.default_rng(seed)
    calib = rng.uniform(0, 1, (calib_n, 3, size, size))
    qg, _ = quantize(load_onnx(model), calib)
    x = np.asarray(quantize_input(qg, rng.uniform(0, 1, (3, size, size))), np.int64)
    env = run_golden(qg, x)
    d.mkdir(parents=True, exist_ok=True)
    save_qgraph(d, qg)
    np.savez(d / "golden.npz", **{k: np.asarray(v, np.int16) for k, v in env.items()})
    log(f"{name}: quantized and golden-evaluated at {size}x{size} in {time.monotonic() - t0:.0f} s")
    return qg, {k: np.asarray(v, np.int16) for k, v in env.items()}


def bench_layer(qg: QGraph, op: QConv, env: dict, engine, cfg: CoreConfig) -> tuple[dict, dict]:
    """One conv layer in bands on the engine: summed counters of its layer segments
    (``rtl_*``), of its input and output segments (``rtl_io_cycles``), whether the
    bands' integers equal the golden output and the layer's instruction statistics
    over the bands (:func:`layer_statistics`); and the engine's info."""
    x = np.asarray(env[op.input], np.int64)
    progs = band_programs(qg, op, x, cfg)
    if op.residual is None:
        want = np.asarray(env[op.output], np.int64)
    else:
        g = layer_graph(qg, op)
        want = run_golden(g, x)[g.output]
    results = engine.run_all([(bp.program, [bp.crop]) for bp in progs])
    sums = {"cycles": 0, "mac_cycles": 0, "stall_dispatch": 0, "stall_data": 0, "io_cycles": 0,
            "model_cycles": 0}
    stats = {"matmuls": 0, "weight_tiles": 0, "vectors": 0}
    ok = True
    for bp, res in zip(progs, results):
        seg_in, seg_layer, seg_out = res.layers[0]
        sums["model_cycles"] += estimate(bp.program).segments[1].counters["cycles"]
        for key in ("cycles", "mac_cycles", "stall_dispatch", "stall_data"):
            sums[key] += seg_layer[key]
        sums["io_cycles"] += seg_in["cycles"] + seg_out["cycles"]
        ok &= bool(np.array_equal(res.outputs[0], want[:, bp.y0:bp.y1]))
        band = layer_statistics(bp.lowered.instructions, bp.lowered.layers).get(op.name, {})
        for key in stats:
            stats[key] += band.get(key, 0)
    return {"rtl_cycles": sums["cycles"], "rtl_mac_cycles": sums["mac_cycles"],
            "rtl_stall_dispatch": sums["stall_dispatch"], "rtl_stall_data": sums["stall_data"],
            "rtl_io_cycles": sums["io_cycles"], "model_cycles": sums["model_cycles"], "bands": len(progs),
            "band_rows": progs[0].y1 - progs[0].y0, "verified": ok,
            "verified_against": "golden output" if op.residual is None else
            "golden conv without the fused residual", **_with_vectors_per_matmul(stats)}, results[-1].info


def bench_network(name: str, rows: int, cols: int, engine_name: str, scalesim: ScaleSimCache, *,
                  size: int = 224, max_layers: int | None = None, calib_n: int = CALIB_IMAGES, seed: int = 0,
                  on_layer=None, log=print) -> tuple[list[dict], dict]:
    """Every conv / FC layer of a 224x224 network, layer at a time in bands."""
    qg, env = _network_state(name, size, calib_n, seed, log)
    cfg = CoreConfig(rows=rows, cols=cols, **BIG_MEMORIES)
    convs = [op for op in qg.ops if isinstance(op, QConv)]
    todo = convs[:max_layers] if max_layers else convs
    for op in todo:
        scalesim.submit(scalesim_layer(qg, op))
    engine = make_engine(engine_name, batch=BATCH)
    log(f"{name}: {len(todo)} of {len(convs)} conv/FC layers on {engine.name} ({cfg.name})")
    out, sim_s, sim_cycles = [], 0.0, 0
    for i, op in enumerate(todo):
        t0 = time.monotonic()
        d = _describe(qg, op)
        d["macs"] = qg.macs(op)
        figures, info = bench_layer(qg, op, env, engine, cfg)
        d.update(figures)
        sim_s += info["sim_s"]
        sim_cycles += info.get("cycles", 0)
        d["scalesim_layer"] = dataclasses.asdict(scalesim_layer(qg, op))
        out.append(d)
        log(f"  [{i + 1}/{len(todo)}] {op.name} {d['kind']} {d['in_shape']}->{d['out_shape']}: "
            f"{d['rtl_cycles']} cycles, ideal {d['macs'] / (rows * cols):.0f} "
            f"({d['macs'] / (rows * cols) / d['rtl_cycles']:.3f}), {d['bands']} bands, "
            f"verified {d['verified']}, {time.monotonic() - t0:.0f} s")
        if on_layer:
            on_layer(out, {"layers_run": len(out), "layers_total": len(convs)})
    meta = {"config": cfg.as_dict(), "engine": engine.name, "size": size, "calib_images": calib_n,
            "seed": seed, "layers_run": len(out), "layers_total": len(convs),
            "sim_seconds": round(sim_s, 1), "sim_cycles": sim_cycles,
            "skipped_ops": sorted({layer_kind(qg, op) for op in qg.ops if not isinstance(op, QConv)})}
    return out, meta


# --- report --------------------------------------------------------------------------


def _fill_scalesim(rows_: list[dict], scalesim: "ScaleSimCache | None", rc: int, wait: bool) -> None:
    """Ideal cycles, utilization and (when ``scalesim`` has them) SCALE-Sim's cycles."""
    for d in rows_:
        if d.get("macs"):
            d["ideal_cycles"] = d["macs"] / rc
            d["utilization"] = d["ideal_cycles"] / d["rtl_cycles"] if d.get("rtl_cycles") else None
        if "scalesim_layer" not in d or scalesim is None:
            continue
        layer = ScaleSimLayer(**d["scalesim_layer"])
        r = scalesim.get(layer, wait=wait)
        if r is None:
            continue
        d["scalesim_cycles"] = r["total_cycles"] * layer.repeat
        d["scalesim_stall_cycles"] = r["stall_cycles"] * layer.repeat
        d["scalesim_utilization"] = d["ideal_cycles"] / d["scalesim_cycles"]
        d["rtl_over_scalesim"] = d["rtl_cycles"] / d["scalesim_cycles"]


# --- CLI -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", default="digits,resnet18,mobilenetv2",
                   help="comma-separated: " + ", ".join(NETWORKS))
    p.add_argument("--engine", default="native", choices=("native", "rtl"),
                   help="native Verilator harness (fast) or cocotb RTL")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--cols", type=int, default=8)
    p.add_argument("--max-layers", type=int, default=None,
                   help="only the first N conv/FC layers of each 224x224 network")
    p.add_argument("--size", type=int, default=224, help="input size of ResNet-18 / MobileNetV2")
    p.add_argument("--images", type=int, default=4, help="digits test images on the RTL")
    p.add_argument("--scalesim-workers", type=int, default=1,
                   help="background SCALE-Sim processes (0: run in this process)")
    p.add_argument("--no-scalesim", action="store_true", help="leave the SCALE-Sim column empty")
    p.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the Markdown and the plot from utilization.json, run nothing")
    p.add_argument("--fresh", action="store_true",
                   help="drop earlier results of other networks from the output files")
    args = p.parse_args(argv)
    nets = [n.strip() for n in args.networks.split(",") if n.strip()]
    for n in nets:
        if n not in NETWORKS:
            p.error(f"unknown network {n!r}; choose from {', '.join(NETWORKS)}")

    out_json = args.results / "utilization.json"
    data = {"rows": args.rows, "cols": args.cols, "networks": {}}
    if out_json.is_file() and not args.fresh:
        old = json.loads(out_json.read_text())
        if (old.get("rows"), old.get("cols")) == (args.rows, args.cols):
            data["networks"] = old.get("networks", {})
    if args.report_only:
        data = json.loads(out_json.read_text())
        for net, r in data["networks"].items():
            r["totals"] = totals(r["layers"])
        write_report(data, args.results)
        return data
    cmd = "python -m bench.utilization " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    data["command"] = cmd
    rc = args.rows * args.cols
    cache = ScaleSimCache(args.results / "scalesim_cache.json", args.rows, args.cols,
                          workers=0 if args.no_scalesim else args.scalesim_workers)

    def log(msg):
        print(msg, flush=True)

    def save(net, layers, meta, wait=False):
        _fill_scalesim(layers, None if args.no_scalesim else cache, rc, wait)
        data["networks"][net] = {"layers": layers, "meta": meta, "totals": totals(layers)}
        write_report(data, args.results)

    t_start = time.monotonic()
    try:
        for net in nets:
            if net == "digits":
                layers, meta = bench_digits(args.rows, args.cols, args.engine, images=args.images, log=log)
                for d in layers:
                    if "scalesim_layer" in d and not args.no_scalesim:
                        cache.submit(ScaleSimLayer(**d["scalesim_layer"]))
            else:
                def on_layer(layers_, progress, net=net):
                    # written after every layer, so an interrupted run keeps what it measured
                    save(net, layers_, {"engine": args.engine, "size": args.size,
                                        "calib_images": CALIB_IMAGES, "partial": True,
                                        "config": CoreConfig(args.rows, args.cols, **BIG_MEMORIES).as_dict(),
                                        **progress})

                layers, meta = bench_network(net, args.rows, args.cols, args.engine, cache,
                                             size=args.size, max_layers=args.max_layers,
                                             on_layer=on_layer, log=log)
            meta["command"] = cmd
            save(net, layers, meta, wait=False)
        if not args.no_scalesim:
            log("waiting for SCALE-Sim ...")
            for net in nets:
                r = data["networks"][net]
                save(net, r["layers"], r["meta"], wait=True)
        for net in nets:
            data["networks"][net]["meta"]["wall_seconds"] = round(time.monotonic() - t_start, 1)
        write_report(data, args.results)
    finally:
        cache.close(wait=False)
    for net in nets:
        t = data["networks"][net]["totals"]
        log(f"{net}: {t['layers']} conv/FC layers, RTL {t['rtl_cycles']:,.0f} cycles, ideal "
            f"{t['ideal_cycles']:,.0f}, utilization {fmt(t['utilization'], '.3f')}, SCALE-Sim "
            f"{fmt(t.get('scalesim_cycles'))} ({fmt(t.get('scalesim_utilization'), '.3f')}), RTL/SCALE-Sim "
            f"{fmt(t.get('rtl_over_scalesim'), '.3f')}")
    log(f"wrote {args.results / 'utilization.md'}, .json, .png")
    return data


if __name__ == "__main__":
    main()
