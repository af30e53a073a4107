"""SCALE-Sim (``pip install scalesim``, 3.0.0) as the utilization bench uses it: the
topology row of a conv, the topology, layout and config files, a run, and a cache
of results by array and layer shape.

SCALE-Sim is run per distinct layer shape with a config of ``ArrayHeight = rows``,
``ArrayWidth = cols``, ``Dataflow = ws``, 64 MiB SRAMs and its bandwidth-estimating
mode (no memory stalls); its ``Total Cycles`` (compute, with SCALE-Sim's own fill
and drain per fold, without the DRAM prefetch) is kept as it is. Conventions:
SCALE-Sim does not pad, so the ifmap written to its topology is the window the
outputs read, ``(out - 1) * stride + kernel`` a side (its ``ceil((in - k + s) / s)``
then gives our output size); a grouped conv (depthwise: groups = channels) is
``groups`` independent convs of ``cin / groups`` channels and ``cout / groups``
filters, which is what SCALE-Sim's own depthwise mode (a "DP" layer name) does, one
1-channel conv per channel; those convs are identical, so one is simulated and its
cycles multiplied by ``groups``.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import csv
import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fxpgen.compiler.qgraph import QConv, QGraph

__all__ = ["ScaleSimLayer", "scalesim_layer", "write_topology", "write_layout", "write_config",
           "run_scalesim", "ScaleSimCache", "SCALESIM_SRAM_KB"]

SCALESIM_SRAM_KB = 65536


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
