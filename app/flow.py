"""End-to-end flows behind ``fxpgen compile``, ``fxpgen run`` and ``fxpgen demo``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from fxpgen.config import CoreConfig

__all__ = ["compile_model", "load_compiled", "run_compiled", "demo"]


def compile_model(model, calib: np.ndarray, cfg: CoreConfig, outdir: Path, *, mode: str = "std",
                  per_channel: bool = False) -> dict:
    """Quantize a float ONNX model with calibration samples, lower it for ``cfg`` and
    write the program directory. Returns a summary (sizes, timings)."""
    from fxpgen.compiler.lower import lower
    from fxpgen.compiler.onnx_frontend import load_onnx
    from fxpgen.compiler.program import listing, save_program, save_qgraph
    from fxpgen.compiler.quantize import quantize

    t0 = time.monotonic()
    graph = load_onnx(model)
    qg, report = quantize(graph, np.asarray(calib, np.float64), mode=mode, per_channel=per_channel)
    t1 = time.monotonic()
    low = lower(qg, cfg)
    t2 = time.monotonic()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    in_t, out_t = qg.tensor(qg.input), qg.tensor(qg.output)
    header = save_program(outdir / "program.fxp", low, extra={
        "input": {"name": qg.input, "shape": list(in_t.shape), "signed": in_t.fmt.signed, "fl": in_t.fmt.fl},
        "output": {"name": qg.output, "shape": list(out_t.shape), "signed": out_t.fmt.signed,
                   "fl": out_t.fmt.fl},
    })
    save_qgraph(outdir, qg)
    (outdir / "listing.txt").write_text(listing(low))
    (outdir / "report.json").write_text(json.dumps(report, indent=1, default=jsonable))
    (outdir / "meta.json").write_text(json.dumps(header, indent=1))
    return {"instructions": len(low.instructions), "data_words": len(low.consts),
            "spad_rows": low.spad_rows_used, "quantize_s": t1 - t0, "lower_s": t2 - t1,
            "notes": low.notes, "outdir": str(outdir)}


def jsonable(v):
    """``json.dumps`` default for numpy values."""
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def load_compiled(outdir: Path, cfg: CoreConfig | None = None):
    """(program, quantized graph) of a program directory."""
    from fxpgen.compiler.program import load_program, load_qgraph
    outdir = Path(outdir)
    if not (outdir / "program.fxp").is_file():
        raise FileNotFoundError(f"{outdir}: no program.fxp here; run `fxpgen compile` first")
    return load_program(outdir / "program.fxp", cfg), load_qgraph(outdir)


def _images(x: np.ndarray, shape) -> np.ndarray:
    """Inputs as (N, C, H, W): accepts one image or a batch, with or without C."""
    x = np.asarray(x)
    c, h, w = shape
    if x.shape == (c, h, w):
        return x[None]
    if x.ndim == 4 and x.shape[1:] == (c, h, w):
        return x
    if c == 1 and x.ndim == 3 and x.shape[1:] == (h, w):
        return x[:, None]
    raise ValueError(f"input of shape {x.shape} does not match the model input {(c, h, w)} "
                     "(one image, or a batch N x C x H x W)")


def run_compiled(outdir: Path, x: np.ndarray, engine: str, *, progress: Callable | None = None,
                 batch: int = 16, board: dict | None = None) -> dict:
    """Run float inputs through a compiled program on one engine (a name of
    :data:`fxpgen.app.engines.ENGINES`). Returns the integer outputs (N x C x H x W,
    in the output format) and, for the RTL and a board, per-layer counters and
    whether every output equals the golden model's.

    ``batch``: inputs per RTL simulation; ``board``: ``port``, ``baud``,
    ``timeout``, ``baked`` for the board engine."""
    from fxpgen.app.engines import engine_class
    from fxpgen.compiler.golden import quantize_input
    from fxpgen.sim.engine import NetworkProgram

    cls = engine_class(engine)
    prog, qg = load_compiled(outdir)
    images = _images(x, qg.tensor(qg.input).shape)
    xq = [np.asarray(quantize_input(qg, img), np.int64) for img in images]
    program = NetworkProgram.from_program(prog, qg)
    eng = cls.from_options(batch=batch, **(board or {}))
    out = {"engine": engine, "config": prog.cfg.as_dict()}
    t0 = time.monotonic()
    res = eng.run(program, xq, progress=progress)
    if res.layers is not None and res.layers and res.layers[0]:
        out["layers"] = _layer_table(res.layers, prog.cfg)
        out["cycles_per_image"] = float(np.mean([sum(l["cycles"] for l in img) for img in res.layers]))
    if "frames_rejected" in res.info:
        out["frames_rejected"] = res.info["frames_rejected"]
    if "verilator_build_s" in res.info:
        out["verilator_build_s"] = res.info["verilator_build_s"]
    out["seconds"] = time.monotonic() - t0
    if cls.checked_against_golden:
        golden = program.golden(xq)
        out["golden_identical"] = bool(all(np.array_equal(y, g) for y, g in zip(res.outputs, golden)))
    out["outputs"] = np.stack(res.outputs)
    return out


def _layer_table(per_image: list[list[dict]], cfg: CoreConfig) -> list[dict]:
    """Mean counters per layer over the images, with the array occupancy."""
    rows = []
    for k, first in enumerate(per_image[0]):
        vals = {key: float(np.mean([img[k][key] for img in per_image]))
                for key in first if key != "layer"}
        vals["array_occupancy"] = vals["mac_cycles"] / vals["cycles"] if vals["cycles"] else 0.0
        rows.append({"layer": first["layer"], **vals})
    return rows


def model_macs(qg) -> int:
    """Multiply-accumulates of the network's convolutions (true, unpadded count)."""
    from fxpgen.compiler.qgraph import QConv
    total = 0
    for op in qg.ops:
        if isinstance(op, QConv):
            _, oh, ow = qg.tensor(op.output).shape
            total += int(np.prod(op.weight.shape)) * oh * ow
    return total


def demo(cfg: CoreConfig, workdir: Path, *, images: int | None = None, rtl: bool = True,
         progress: Callable[[str, int], Callable] | None = None) -> dict:
    """The shipped digits CNN end to end: quantize, compile, run the test images on
    the golden model, the instruction-level simulator and the RTL; accuracies and
    bit-identity."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    from fxpgen.models import digits_assets

    a = digits_assets()
    x_test = np.load(a["test_x"])
    y_test = np.load(a["test_y"])
    calib = np.load(a["calib"])
    n = len(x_test) if images is None else min(images, len(x_test))
    bar = progress or (lambda label, total: (lambda k: None))

    t0 = time.monotonic()
    summary = compile_model(a["model"], calib, cfg, workdir)
    compile_s = time.monotonic() - t0

    ref = ReferenceEvaluator(onnx.load(a["model"]))
    tick = bar("float reference (onnx)", len(x_test))
    float_logits = []
    for img in x_test:
        float_logits.append(ref.run(None, {"input": img[None].astype(np.float32)})[0][0])
        tick(1)
    float_pred = np.argmax(float_logits, axis=1)

    golden = run_compiled(workdir, x_test, "golden", progress=bar("golden model", len(x_test)))
    g_out = golden["outputs"].reshape(len(x_test), -1)
    fixed_pred = np.argmax(g_out, axis=1)
    isa = run_compiled(workdir, x_test, "isa", progress=bar("instruction-level simulator", len(x_test)))
    report = {
        "config": cfg.as_dict(),
        "images": int(len(x_test)),
        "float_accuracy": float(np.mean(float_pred == y_test)),
        "fixed_point_accuracy": float(np.mean(fixed_pred == y_test)),
        "isa_identical_to_golden": bool(np.array_equal(isa["outputs"].reshape(len(x_test), -1), g_out)),
        "compile_s": compile_s,
        "instructions": summary["instructions"],
    }
    if rtl:
        r = run_compiled(workdir, x_test[:n], "rtl", progress=bar("RTL (Verilator)", n))
        _, qg = load_compiled(workdir)
        macs = model_macs(qg)
        cycles = r["cycles_per_image"]
        report.update({
            "rtl_images": n,
            "rtl_identical_to_golden": bool(np.array_equal(r["outputs"].reshape(n, -1), g_out[:n])),
            "cycles_per_image": cycles,
            "model_macs": macs,
            "mac_utilization": macs / (cycles * cfg.rows * cfg.cols),
            "layers": r["layers"],
            "rtl_seconds": r["seconds"],
        })
    return report
