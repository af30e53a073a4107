"""MAC utilization of the RTL, per layer, against SCALE-Sim and the ideal.

For every conv / fully connected layer of

* the shipped digits CNN (compiled as ``fxpgen demo`` does, run whole on the RTL;
  every layer ends in a HALT, so the core's own counters measure each layer), and
* ResNet-18 and MobileNetV2 at 224x224 (``fxpgen/models/zoo.py``, random weights,
  quantized with a few random calibration images), each layer run on its own in
  bands of output rows (``layer_bands.py``) with its output checked against the
  golden model,

it reports the RTL's cycles (the ``cycles`` counter of the layer's HALT segment),
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
import builtins
import concurrent.futures
import csv
import dataclasses
import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.layer_bands import BandProgram, band_programs, layer_graph

from fxpgen.compiler.lower import lower
from fxpgen.compiler.qgraph import QAdd, QAvgPool, QConv, QGraph, QMaxPool
from fxpgen.config import CoreConfig
from fxpgen.sim.segments import split_layers
from fxpgen.app.flow import jsonable
from fxpgen.isa import CoreState, ErrorCode, Instruction, Opcode
from fxpgen.sim.core_rtl import RtlProgram
from fxpgen.compiler.golden import run_golden

__all__ = ["ScaleSimLayer", "scalesim_layer", "write_topology", "write_layout", "write_config",
           "run_scalesim", "layer_kind", "layer_macs", "Engine", "bench_digits", "bench_network",
           "main"]

RESULTS = Path(__file__).resolve().parent / "results"
NETWORKS = ("digits", "resnet18", "mobilenetv2")
#: Core for the 224x224 layers: the scratchpad as deep as 16-bit addresses allow,
#: accumulators and weight buffer larger than the defaults.
BIG_MEMORIES = {"spad_depth": 65536, "acc_depth": 4096, "wbuf_depth": 8192}
SCALESIM_SRAM_KB = 65536
#: Random calibration images for quantizing the 224x224 networks.
CALIB_IMAGES = 3


# --- SCALE-Sim ---------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleSimLayer:
    """One row of a SCALE-Sim conv topology, and how many identical copies of it
    the layer is (``repeat``: the groups of a grouped conv)."""

    name: str
    ifmap_h: int
    ifmap_w: int
    filter_h: int
    filter_w: int
    channels: int
    filters: int
    stride: int
    repeat: int = 1

    @property
    def key(self) -> str:
        """Shape key for the cache (the name and repeat do not change the cycles)."""
        return (f"{self.ifmap_h}x{self.ifmap_w} k{self.filter_h}x{self.filter_w} "
                f"c{self.channels} f{self.filters} s{self.stride}")

    @property
    def macs(self) -> int:
        oh = -(-(self.ifmap_h - self.filter_h + self.stride) // self.stride)
        ow = -(-(self.ifmap_w - self.filter_w + self.stride) // self.stride)
        return oh * ow * self.filter_h * self.filter_w * self.channels * self.filters * self.repeat


def scalesim_layer(qg: QGraph, op: QConv) -> ScaleSimLayer:
    """The SCALE-Sim topology row of a conv (see the module docstring)."""
    cin = qg.tensor(op.input).shape[0]
    cout, cin_g, kh, kw = op.weight.shape
    _, oh, ow = qg.tensor(op.output).shape
    sy, sx = op.stride
    if sy != sx:
        raise ValueError(f"{op.name}: SCALE-Sim takes one stride, this conv has {op.stride}")
    g = op.groups
    if cin_g * g != cin:
        raise ValueError(f"{op.name}: {cin} input channels are not {g} groups of {cin_g}")
    return ScaleSimLayer(op.name, (oh - 1) * sy + kh, (ow - 1) * sx + kw, kh, kw, cin_g, cout // g,
                         sy, g)


def write_topology(layers: list[ScaleSimLayer], path: Path) -> None:
    """SCALE-Sim's conv topology CSV (one copy of each layer; ``repeat`` is ours).
    Layer names must not contain "DP" (SCALE-Sim would split such a layer per
    channel) nor commas."""
    lines = ["Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
             "Num Filter, Strides,"]
    for layer in layers:
        name = layer.name.replace(",", "_").replace("DP", "dp")
        lines.append(f"{name}, {layer.ifmap_h}, {layer.ifmap_w}, {layer.filter_h}, "
                     f"{layer.filter_w}, {layer.channels}, {layer.filters}, {layer.stride},")
    Path(path).write_text("\n".join(lines) + "\n")


def write_layout(layers: list[ScaleSimLayer], path: Path) -> None:
    """A layout CSV SCALE-Sim 3 insists on reading even with custom layouts off
    (one row of 20 integers per layer; unused)."""
    lines = ["Layer name," + ",".join(f"f{i}" for i in range(20)) + ","]
    for layer in layers:
        lines.append(layer.name.replace(",", "_").replace("DP", "dp") + "," + ",".join(["1"] * 20) + ",")
    Path(path).write_text("\n".join(lines) + "\n")


def write_config(rows: int, cols: int, path: Path, *, sram_kb: int = SCALESIM_SRAM_KB) -> None:
    """SCALE-Sim config: ``rows x cols`` array, weight stationary, large SRAMs,
    bandwidth-estimating mode (memory never stalls the array)."""
    text = f"""[general]
run_name = fxpgen

[architecture_presets]
ArrayHeight = {rows}
ArrayWidth = {cols}
IfmapSramSzkB = {sram_kb}
FilterSramSzkB = {sram_kb}
OfmapSramSzkB = {sram_kb}
IfmapOffset = 0
FilterOffset = 100000000
OfmapOffset = 200000000
Dataflow = ws
Bandwidth = 10
ReadRequestBuffer = 32
WriteRequestBuffer = 32

[layout]
IfmapCustomLayout = False
FilterCustomLayout = False
IfmapSRAMBankBandwidth = 10
IfmapSRAMBankNum = 10
IfmapSRAMBankPort = 2
FilterSRAMBankBandwidth = 10
FilterSRAMBankNum = 10
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = false
SparseRep = ellpack_block
OptimizedMapping = false
BlockSize = 8
RandomNumberGeneratorSeed = 40

[run_presets]
InterfaceBandwidth = CALC
UseRamulatorTrace = False
"""
    Path(path).write_text(text)


def _numpy2_shim() -> None:
    """SCALE-Sim 3.0.0 takes ``int(max(list of 1-element arrays))``, which NumPy >= 2.4
    refuses; give that module a ``max`` returning the element. Nothing else changes."""
    import scalesim.memory.double_buffered_scratchpad_mem as dbm

    def _max(*args, **kw):
        r = builtins.max(*args, **kw)
        return r.item() if isinstance(r, np.ndarray) and r.size == 1 else r
    dbm.max = _max


def run_scalesim(layers: list[ScaleSimLayer], rows: int, cols: int, workdir: Path | None = None) -> list[dict]:
    """Run SCALE-Sim on ``layers`` (one copy each) and return its compute report per
    layer: ``total_cycles`` (its "Total Cycles"), ``stall_cycles``,
    ``cycles_incl_prefetch``, ``mapping_efficiency``, ``compute_util`` (percent)."""
    import contextlib
    import io

    _numpy2_shim()
    from scalesim.scale_sim import scalesim

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        write_config(rows, cols, tmp / "scale.cfg")
        write_topology(layers, tmp / "topology.csv")
        write_layout(layers, tmp / "layout.csv")
        with contextlib.redirect_stdout(io.StringIO()):
            sim = scalesim(save_disk_space=True, verbose=False, config=str(tmp / "scale.cfg"),
                           topology=str(tmp / "topology.csv"), layout=str(tmp / "layout.csv"))
            sim.run_scale(top_path=str(tmp / "out"))
        with open(tmp / "out" / "fxpgen" / "COMPUTE_REPORT.csv") as f:
            rows_ = [[c.strip() for c in r] for r in csv.reader(f)]
    out = []
    for r in rows_[1:]:
        out.append({"cycles_incl_prefetch": int(float(r[1])), "total_cycles": int(float(r[2])),
                    "stall_cycles": int(float(r[3])), "mapping_efficiency": float(r[5]),
                    "compute_util": float(r[6])})
    if len(out) != len(layers):
        raise RuntimeError(f"SCALE-Sim reported {len(out)} layers for {len(layers)}")
    return out


def _scalesim_one(layer: ScaleSimLayer, rows: int, cols: int) -> dict:
    t0 = time.monotonic()
    r = run_scalesim([dataclasses.replace(layer, repeat=1)], rows, cols)[0]
    r["seconds"] = round(time.monotonic() - t0, 1)
    return r


class ScaleSimCache:
    """SCALE-Sim results by (array, layer shape) in a JSON file, filled by worker
    processes in the background while the RTL runs."""

    def __init__(self, path: Path, rows: int, cols: int, workers: int = 1):
        self.path, self.rows, self.cols = Path(path), rows, cols
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers) if workers else None
        self.pending: dict[str, concurrent.futures.Future] = {}

    def _key(self, layer: ScaleSimLayer) -> str:
        return f"{self.rows}x{self.cols} {layer.key}"

    def submit(self, layer: ScaleSimLayer) -> None:
        k = self._key(layer)
        if k in self.data or k in self.pending:
            return
        if self.pool is None:
            self.data[k] = _scalesim_one(layer, self.rows, self.cols)
            self._save()
        else:
            self.pending[k] = self.pool.submit(_scalesim_one, layer, self.rows, self.cols)

    def _collect(self, wait: bool) -> None:
        for k, fut in list(self.pending.items()):
            if wait or fut.done():
                self.data[k] = fut.result()
                del self.pending[k]
                self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True))

    def get(self, layer: ScaleSimLayer, wait: bool = False) -> dict | None:
        self._collect(False)
        k = self._key(layer)
        if k in self.pending and wait:
            self.data[k] = self.pending.pop(k).result()
            self._save()
        return self.data.get(k)

    def close(self, wait: bool = True) -> None:
        if self.pool is not None:
            if wait:
                self._collect(True)
            self.pool.shutdown(wait=wait, cancel_futures=not wait)


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


def layer_macs(qg: QGraph, op) -> int:
    """True (unpadded) multiply-accumulates of a conv; 0 for other ops."""
    if not isinstance(op, QConv):
        return 0
    _, oh, ow = qg.tensor(op.output).shape
    return int(np.prod(op.weight.shape)) * oh * ow


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


# --- engines -----------------------------------------------------------------------


class Engine:
    """Runs lists of programs on the native Verilator harness (``fxpgen.sim.native``,
    when present) or on cocotb + Verilator, with explicit per-program cycle budgets."""

    def __init__(self, name: str, cfg: CoreConfig):
        import fxpgen.engines as engines
        if name == "auto":
            name = "native" if hasattr(engines, "run_native") else "rtl"
        if name == "native":
            from fxpgen.sim.native import native_model, run_on_native
            self._run, self.model = run_on_native, native_model(cfg)
        elif name == "rtl":
            from fxpgen.sim.core_rtl import core_model, run_on_rtl
            self._run, self.model = run_on_rtl, core_model(cfg)
        else:
            raise ValueError(f"unknown engine {name!r}: native, rtl or auto")
        self.name, self.cfg = name, cfg
        self.sim_s = 0.0
        self.sim_cycles = 0

    def run(self, programs: list[RtlProgram], where: list[str]) -> list:
        """Counters and result words of every program; raises naming the program that
        timed out or stopped on an error."""
        budget = sum(p.max_cycles for p in programs)
        speed = 2_000_000 if self.name == "native" else 5_000
        t0 = time.monotonic()
        results, info = self._run(self.cfg, programs, model=self.model,
                                  timeout_s=max(1800.0, 3 * budget / speed))
        self.sim_s += time.monotonic() - t0
        for r, w in zip(results, where):
            if r.timed_out or r.state != CoreState.HALTED.value:
                what = "timed out" if r.timed_out else f"stopped with {ErrorCode(r.error).name} at {r.error_pc}"
                raise RuntimeError(f"{self.name} run of {w}: {what}")
            self.sim_cycles += r.counters["cycles"]
        return results


def _segment_programs(segs, budget: int) -> list[RtlProgram]:
    return [RtlProgram(s.words, s.data, s.n_results, max_cycles=budget) for s in segs]


# --- the digits CNN, whole -----------------------------------------------------------


def bench_digits(rows: int, cols: int, engine_name: str, *, images: int = 4,
                 log=print) -> tuple[list[dict], dict]:
    """The shipped digits CNN on a default ``rows x cols`` core, whole on the RTL,
    ``images`` test images; per-layer counters (means over the images)."""
    from fxpgen.compiler.onnx_frontend import load_onnx
    from fxpgen.compiler.quantize import quantize
    from fxpgen.models import digits_assets
    from fxpgen.compiler.golden import quantize_input, run_golden_batch

    cfg = CoreConfig(rows=rows, cols=cols)
    a = digits_assets()
    qg, _ = quantize(load_onnx(a["model"]), np.load(a["calib"]).astype(np.float64))
    low = lower(qg, cfg)
    insns, layers = list(low.instructions), list(low.layers)
    cut = max(i for i, n in enumerate(layers) if n == "input") + 1
    insns.insert(cut, Instruction(Opcode.HALT))
    layers.insert(cut, "input")
    words = [i.encode(cfg) for i in insns]
    x = np.load(a["test_x"])[:images]
    xq = np.asarray(quantize_input(qg, x), np.int64)
    golden = run_golden_batch(qg, xq)[qg.output]
    engine = Engine(engine_name, cfg)
    log(f"digits: {len(words)} instructions, {images} images on {engine.name} ({cfg.name})")
    programs, where, owners = [], [], []
    vectors = sum(i.iterations for i in low.instructions if i.opcode is Opcode.MATMUL)
    budget = 200_000 + 4 * vectors + 400 * len(words)
    for k, q in enumerate(xq):
        segs = split_layers(words, layers, low.data(low.image_words(q)))
        programs += _segment_programs(segs, budget)
        where += [f"image {k} {s.layer}" for s in segs]
        owners.append(segs)
    results = engine.run(programs, where)
    per_image, pos, ok = [], 0, True
    for k, segs in enumerate(owners):
        rs = results[pos:pos + len(segs)]
        pos += len(segs)
        out = low.decode_output([w for r in rs for w in r.results])
        ok &= bool(np.array_equal(out, golden[k]))
        per_image.append({s.layer: r.counters for s, r in zip(segs, rs)})
    ops = {op.name: op for op in qg.ops}
    rows_out = []
    for name in per_image[0]:
        c = {key: float(np.mean([img[name][key] for img in per_image])) for key in per_image[0][name]}
        if name in ops:
            op = ops[name]
            d = _describe(qg, op)
            d.update(macs=layer_macs(qg, op), rtl_cycles=c["cycles"], rtl_mac_cycles=c["mac_cycles"],
                     rtl_stall_dispatch=c["stall_dispatch"], verified=ok)
            if isinstance(op, QConv):
                d["scalesim_layer"] = dataclasses.asdict(scalesim_layer(qg, op))
        else:
            d = {"layer": name, "kind": name, "rtl_cycles": c["cycles"], "rtl_mac_cycles": c["mac_cycles"],
                 "macs": 0}
        rows_out.append(d)
    meta = {"config": cfg.as_dict(), "engine": engine.name, "images": images,
            "outputs_identical_to_golden": ok, "whole_network_cycles": sum(
                r["rtl_cycles"] for r in rows_out),
            "sim_seconds": round(engine.sim_s, 1)}
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


def bench_layer(qg: QGraph, op: QConv, env: dict, engine: Engine, cfg: CoreConfig) -> dict:
    """One conv layer in bands on the engine: summed counters of its layer segments
    (``rtl_*``), of its input and output segments (``rtl_io_cycles``), and whether
    the bands' integers equal the golden output."""
    x = np.asarray(env[op.input], np.int64)
    progs: list[BandProgram] = band_programs(qg, op, x, cfg)
    if op.residual is None:
        want = np.asarray(env[op.output], np.int64)
    else:
        g = layer_graph(qg, op)
        want = run_golden(g, x)[g.output]
    programs, where = [], []
    for bp in progs:
        programs += _segment_programs(bp.segments, bp.max_cycles())
        where += [f"{op.name} rows [{bp.y0}, {bp.y1}) {s.layer}" for s in bp.segments]
    results = engine.run(programs, where)
    totals = {"cycles": 0, "mac_cycles": 0, "stall_dispatch": 0, "stall_data": 0, "io_cycles": 0}
    ok = True
    for k, bp in enumerate(progs):
        r_in, r_layer, r_out = results[3 * k:3 * k + 3]
        for key in ("cycles", "mac_cycles", "stall_dispatch", "stall_data"):
            totals[key] += r_layer.counters[key]
        totals["io_cycles"] += r_in.counters["cycles"] + r_out.counters["cycles"]
        out = bp.lowered.decode_output(r_in.results + r_layer.results + r_out.results)
        ok &= bool(np.array_equal(out, want[:, bp.y0:bp.y1]))
    return {"rtl_cycles": totals["cycles"], "rtl_mac_cycles": totals["mac_cycles"],
            "rtl_stall_dispatch": totals["stall_dispatch"], "rtl_stall_data": totals["stall_data"],
            "rtl_io_cycles": totals["io_cycles"], "bands": len(progs),
            "band_rows": progs[0].y1 - progs[0].y0, "verified": ok,
            "verified_against": "golden output" if op.residual is None else
            "golden conv without the fused residual"}


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
    engine = Engine(engine_name, cfg)
    log(f"{name}: {len(todo)} of {len(convs)} conv/FC layers on {engine.name} ({cfg.name})")
    out = []
    for i, op in enumerate(todo):
        t0 = time.monotonic()
        d = _describe(qg, op)
        d["macs"] = layer_macs(qg, op)
        d.update(bench_layer(qg, op, env, engine, cfg))
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
            "sim_seconds": round(engine.sim_s, 1), "sim_cycles": engine.sim_cycles,
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


def _totals(rows_: list[dict]) -> dict:
    cl = [d for d in rows_ if d.get("kind") in ("conv", "fc", "dw")]
    t = {"layers": len(cl), "macs": sum(d["macs"] for d in cl),
         "ideal_cycles": sum(d["ideal_cycles"] for d in cl),
         "rtl_cycles": sum(d["rtl_cycles"] for d in cl),
         "rtl_io_cycles": sum(d.get("rtl_io_cycles", 0) for d in cl)}
    t["utilization"] = t["ideal_cycles"] / t["rtl_cycles"] if t["rtl_cycles"] else None
    if cl and all(d.get("scalesim_cycles") for d in cl):
        t["scalesim_cycles"] = sum(d["scalesim_cycles"] for d in cl)
        t["scalesim_utilization"] = t["ideal_cycles"] / t["scalesim_cycles"]
        t["rtl_over_scalesim"] = t["rtl_cycles"] / t["scalesim_cycles"]
    big = [d for d in cl if d["kind"] == "conv" and d["out_shape"][1] * d["out_shape"][2] >= 784]
    t["big_conv_layers"] = len(big)
    t["big_conv_at_90pct"] = sum(1 for d in big if (d["utilization"] or 0) >= 0.9)
    return t


def _fmt(v, spec=",.0f") -> str:
    if v is None:
        return "–"
    return format(v, spec)


def _explanations(nets: dict, rows: int, cols: int) -> list[str]:
    """One sentence per kind of layer below 0.9 utilization, with the worst such
    layer of each network as its example and the figures that explain it (a layer
    is put in the first kind that fits: few input channels, depthwise, fully
    connected, at most 8 matmuls per accumulator block, at most 196 output pixels)."""
    found: dict[str, dict] = {}
    for net, r in nets.items():
        for d in r["layers"]:
            if d.get("utilization") is None or d["utilization"] >= 0.9:
                continue
            px = d["out_shape"][1] * d["out_shape"][2]
            kh, kw = d.get("kernel", (1, 1))
            if d["kind"] == "conv" and d["in_shape"][0] < rows:
                cat = "first"
            elif d["kind"] in ("dw", "fc"):
                cat = d["kind"]
            elif d["kind"] == "conv" and kh * kw * -(-d["in_shape"][0] // rows) <= 8:
                cat = "few"
            elif d["kind"] == "conv" and px <= 196:
                cat = "small"
            else:
                cat = "other"
            ex = found.setdefault(cat, {})
            if net not in ex or d["utilization"] < ex[net]["utilization"]:
                ex[net] = d

    def examples(cat):
        parts = []
        for net, d in found[cat].items():
            ss = d.get("scalesim_utilization")
            parts.append(f"{net} {d['layer']}: {d['utilization']:.2f}"
                         + (f", SCALE-Sim {ss:.2f}" if ss else ""))
        return "; ".join(parts)

    out = []
    if "first" in found:
        d = max(found["first"].values(), key=lambda d: d["macs"])
        kh, kw = d["kernel"]
        cin = d["in_shape"][0]
        out.append(
            f"**First layers, few input channels** ({examples('first')}): the lowering runs one "
            f"matmul per kernel tap and k-tile of {rows} input channels (no im2col copy), so each of "
            f"the {kh * kw} taps of {d['layer']} fills only {cin} of the {rows} array rows (at most "
            f"{cin / rows:.2f} of the array, though it is busy {d['rtl_mac_cycles'] / d['rtl_cycles']:.2f} "
            f"of the cycles); SCALE-Sim maps the whole {kh}x{kw}x{cin} = {kh * kw * cin} window onto "
            f"the rows, {-(-kh * kw * cin // rows)} row folds instead of {kh * kw}.")
    if "dw" in found:
        d = min(found["dw"].values(), key=lambda d: d["utilization"])
        ss = d.get("scalesim_utilization")
        cmp = ("" if ss is None else
               f", {'further from' if ss < d['utilization'] else 'closer to'} the ideal ({ss:.2f} for "
               f"{d['layer']})")
        out.append(
            f"**Depthwise convs** ({examples('dw')}): each {rows}x{cols} weight tile of a tap is "
            f"block-diagonal with {min(rows, cols)} of its {rows * cols} weights nonzero, so at most "
            f"1/{max(rows, cols)} of the MACs the array performs are real ones; SCALE-Sim runs a "
            f"depthwise conv as one 1-channel, 1-filter conv per channel "
            f"({-(-d['kernel'][0] * d['kernel'][1] // rows)} row folds using one array column, "
            f"fill and drain per fold){cmp}.")
    if "fc" in found:
        d = max(found["fc"].values(), key=lambda d: d["macs"])
        kh, kw = d["kernel"]
        cin, cout = d["in_shape"][0], d["out_shape"][0]
        tiles = kh * kw * -(-cin // rows) * -(-cout // cols)
        folds = -(-kh * kw * cin // rows) * -(-cout // cols)
        ss = (f"; SCALE-Sim's {folds} folds each pay the fill and drain too "
              f"({d['scalesim_cycles'] / folds:.0f} cycles per fold)" if d.get("scalesim_cycles") else "")
        out.append(
            f"**Fully connected at batch 1** ({examples('fc')}): every {rows}x{cols} weight tile "
            f"serves one vector, 1 cycle of array work, but {d['layer']} takes "
            f"{d['rtl_cycles'] / tiles:.0f} cycles per tile ({tiles} tiles): the tile's {rows}-row LOADW "
            f"and its weights from the data stream and the vector's pass through the array "
            f"({rows}+{cols} cycles) have nothing to hide behind{ss}.")
    if "few" in found:
        d = min(found["few"].values(), key=lambda d: d["utilization"])
        m = d["kernel"][0] * d["kernel"][1] * -(-d["in_shape"][0] // rows)
        out.append(
            f"**Few matmuls per accumulator block** ({examples('few')}): every block of output pixels "
            f"and {cols} output channels first gets its bias from the data stream, one word per pixel, "
            f"and that load waits (in-order dispatch, behind the previous block's REQUANT, which waits "
            f"for its matmuls to drain) instead of overlapping them; {d['layer']} has only {m} matmul(s) "
            f"per block, each as long as that load, so the array works at most {m} of every {m + 1} "
            f"such periods ({m / (m + 1):.2f}).")
    if "small" in found:
        d = max(found["small"].values(), key=lambda d: d["macs"])
        px = d["out_shape"][1] * d["out_shape"][2]
        out.append(
            f"**Small output maps** ({examples('small')}): each weight tile serves only as many "
            f"vectors as the map has pixels ({px} for {d['layer']}), and the tiles come from the data "
            f"stream ({rows} words each) ahead of their matmuls without overlapping them, so "
            f"utilization is at most about {px}/({px}+{rows}) = {px / (px + rows):.2f}; SCALE-Sim "
            f"pays the array's fill and drain ({rows}+{cols} cycles) per fold instead.")
    if "other" in found:
        out.append(f"**Other layers below 0.9** ({examples('other')}).")
    return out


def write_report(data: dict, results_dir: Path) -> None:
    """``utilization.json``, ``utilization.md`` and ``utilization.png`` from ``data``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "utilization.json").write_text(json.dumps(data, indent=1, default=jsonable))
    rows, cols = data["rows"], data["cols"]
    md = [f"# MAC utilization on a {rows}x{cols} array: RTL vs SCALE-Sim vs ideal", "",
          "Cycles are the core's own `cycles` counter (Verilator) for each layer's HALT segment; "
          "ideal = MACs / (rows x cols); utilization = ideal / cycles. SCALE-Sim 3.0.0 is its "
          "weight-stationary `Total Cycles` for the same array (64 MiB SRAMs, no memory stalls). "
          "See `bench/utilization.py` for the conventions (padding, depthwise).", ""]
    for net, r in data["networks"].items():
        meta, t = r["meta"], r["totals"]
        md += [f"## {net}", ""]
        cfg = meta["config"]
        if net == "digits":
            md.append(f"Whole network on the RTL ({meta['engine']}), {meta['images']} test images, "
                      f"outputs bit-identical to the golden model: "
                      f"{'yes' if meta['outputs_identical_to_golden'] else 'NO'}; whole program "
                      f"{meta['whole_network_cycles']:,.0f} cycles per image (input load and output "
                      "store included). Core: default memories.")
        else:
            md.append(f"{meta['size']}x{meta['size']} input, random weights, {meta['calib_images']} "
                      f"random calibration images; {meta['layers_run']} of {meta['layers_total']} conv/FC "
                      f"layers run, each alone in bands of output rows on the RTL ({meta['engine']}), "
                      f"core spad/acc/wbuf depth {cfg['spad_depth']}/{cfg['acc_depth']}/{cfg['wbuf_depth']}. "
                      "Pooling and add layers are not in the table "
                      f"({', '.join(meta.get('skipped_ops', []))}). Every band's output integers are "
                      "checked against the golden model (for a conv with a fused residual add, against "
                      "the golden conv without it: a band graph has one input; the matmul schedule is "
                      "the same). I/O = the band programs' input load and output store, which a "
                      "whole-network run would not have.")
        if meta.get("command"):
            md += ["", f"Command: `{meta['command']}` (the whole command took "
                   f"{meta.get('wall_seconds', 0) / 60:.0f} min, SCALE-Sim included)."]
        md += ["", "| layer | kind | in | out | k/s | MACs | ideal | RTL cycles | util | SCALE-Sim | "
               "SCALE-Sim util | RTL/SCALE-Sim | array busy | I/O cycles | bands | checked |",
               "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for d in r["layers"]:
            ks = (f"{d['kernel'][0]}x{d['kernel'][1]}/{d['stride'][0]}" if "kernel" in d else "")
            busy = d["rtl_mac_cycles"] / d["rtl_cycles"] if d.get("rtl_cycles") else None
            md.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                d["layer"], d["kind"], "x".join(map(str, d.get("in_shape", []))),
                "x".join(map(str, d.get("out_shape", []))), ks, _fmt(d.get("macs") or None),
                _fmt(d.get("ideal_cycles")), _fmt(d.get("rtl_cycles")), _fmt(d.get("utilization"), ".3f"),
                _fmt(d.get("scalesim_cycles")), _fmt(d.get("scalesim_utilization"), ".3f"),
                _fmt(d.get("rtl_over_scalesim"), ".3f"), _fmt(busy, ".3f"),
                _fmt(d.get("rtl_io_cycles") if "bands" in d else None),
                d.get("bands", ""), {True: "yes", False: "NO"}.get(d.get("verified"), "")))
        io = (f" Band I/O (not in the RTL figure): {t['rtl_io_cycles']:,.0f} cycles."
              if any("bands" in d for d in r["layers"]) else "")
        big = (f" Convs with >= 784 output pixels at >= 90% utilization: {t['big_conv_at_90pct']} of "
               f"{t['big_conv_layers']}." if t["big_conv_layers"] else "")
        md += ["", f"**Totals over {t['layers']} conv/FC layers:** {t['macs']:,} MACs, ideal "
               f"{t['ideal_cycles']:,.0f} cycles, RTL {t['rtl_cycles']:,.0f} cycles (utilization "
               f"{_fmt(t['utilization'], '.3f')}), SCALE-Sim {_fmt(t.get('scalesim_cycles'))} cycles "
               f"(utilization {_fmt(t.get('scalesim_utilization'), '.3f')}); RTL / SCALE-Sim = "
               f"{_fmt(t.get('rtl_over_scalesim'), '.3f')}.{io}{big}", ""]
    expl = _explanations(data["networks"], rows, cols)
    if expl:
        md += ["## Layers far from the ideal", ""] + [f"- {e}" for e in expl] + [""]
    md += ["## Notes", "",
           "- SCALE-Sim 3.0.0 calls `int()` on a one-element array, which NumPy >= 2.4 refuses; the "
           "bench gives that one module a `max` that returns the element (`_numpy2_shim`), nothing else "
           "is changed. Its cycle counts are used as reported.",
           "- Programs run through `run_on_native` / `run_on_rtl` with a cycle budget per program "
           "computed from the matmul vectors; the `fxpgen.app.engines.run_*` budget (200k + 400 per "
           "instruction) is too small for a band whose matmuls stream thousands of vectors each.",
           "- A depthwise conv's SCALE-Sim figure is one 1-channel, 1-filter conv times the channel "
           "count, which equals SCALE-Sim's own depthwise (`DP`) mode "
           "(`tests/test_bench_utilization.py` checks the equality on a small layer).", ""]
    (results_dir / "utilization.md").write_text("\n".join(md) + "\n")
    _plot(data, results_dir / "utilization.png")


def _plot(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = [(n, r) for n, r in data["networks"].items()
            if any(d.get("utilization") for d in r["layers"])]
    if not nets:
        return
    fig, axes = plt.subplots(len(nets), 1, figsize=(16, 3.8 * len(nets)), squeeze=False)
    for ax, (net, r) in zip(axes[:, 0], nets):
        ls = [d for d in r["layers"] if d.get("utilization") is not None]
        x = np.arange(len(ls))
        ax.bar(x - 0.2, [d["utilization"] for d in ls], 0.4, label="RTL", color="tab:blue")
        ax.bar(x + 0.2, [d.get("scalesim_utilization") or 0 for d in ls], 0.4, label="SCALE-Sim",
               color="tab:orange")
        ax.axhline(0.9, color="gray", ls=":", lw=1)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("MAC utilization")
        ax.set_xticks(x, [f"{d['layer']} ({d['kind']})" for d in ls], rotation=90, fontsize=6)
        ax2 = ax.twinx()
        ax2.plot(x, [d["rtl_cycles"] for d in ls], "k.-", lw=0.8, label="RTL cycles")
        ax2.plot(x, [d.get("scalesim_cycles") or np.nan for d in ls], ".--", color="tab:red", lw=0.8,
                 label="SCALE-Sim cycles")
        ax2.set_yscale("log")
        ax2.set_ylabel("cycles")
        t = r["totals"]
        ax.set_title(f"{net} on {data['rows']}x{data['cols']}: total utilization RTL "
                     f"{_fmt(t['utilization'], '.3f')}, SCALE-Sim {_fmt(t.get('scalesim_utilization'), '.3f')}",
                     fontsize=9)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left", bbox_to_anchor=(1.06, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# --- CLI -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", default="digits,resnet18,mobilenetv2",
                   help="comma-separated: " + ", ".join(NETWORKS))
    p.add_argument("--engine", default="auto", choices=("auto", "native", "rtl"),
                   help="native Verilator harness (fast), cocotb RTL, or native when present")
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
            r["totals"] = _totals(r["layers"])
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
        data["networks"][net] = {"layers": layers, "meta": meta, "totals": _totals(layers)}
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
            f"{t['ideal_cycles']:,.0f}, utilization {_fmt(t['utilization'], '.3f')}, SCALE-Sim "
            f"{_fmt(t.get('scalesim_cycles'))} ({_fmt(t.get('scalesim_utilization'), '.3f')}), RTL/SCALE-Sim "
            f"{_fmt(t.get('rtl_over_scalesim'), '.3f')}")
    log(f"wrote {args.results / 'utilization.md'}, .json, .png")
    return data


if __name__ == "__main__":
    main()
