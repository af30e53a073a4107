"""End-to-end flows behind ``fxpgen compile``, ``fxpgen run`` and ``fxpgen demo``."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from fxpgen.app.inputs import InputError, as_images, calibration_warnings
from fxpgen.config import CoreConfig

__all__ = ["compile_model", "load_compiled", "run_compiled", "demo", "DEMO_RTL_ENGINES", "counter_report",
           "mac_utilization", "layer_macs", "model_macs", "group_notes", "low_signal",
           "lower_for_user", "user_terms", "LOW_SQNR_DB", "MIN_SQNR_DB", "LowSignalError", "STAGES",
           "parse_weight_bits", "DEFAULT_BITS_BUDGET_DB"]


#: Output SQNR (dB, golden model against the float model on the calibration set)
#: under which ``fxpgen compile`` warns that the output carries no usable signal: at
#: 10 dB the quantization error has a tenth of the output's power, enough to change
#: a classifier's top class on many inputs.
LOW_SQNR_DB = 10.0

#: Output SQNR (dB) under which ``fxpgen compile`` refuses the model (unless
#: ``--allow-low-snr``): under 3 dB the quantization error has more than half the
#: output's power, so the outputs follow the noise as much as the float model; the
#: calibration data is then almost always at fault (wrong scale, integers, ...).
MIN_SQNR_DB = 3.0


class LowSignalError(ValueError):
    """A quantized model whose output SQNR is under the caller's minimum."""


#: The command-line option of each memory a :class:`DoesNotFit` may run out of, and
#: the deepest memory the core generator accepts.
MEMORY_OPTIONS = {"spad_depth": "--spad-depth", "acc_depth": "--acc-depth",
                  "wbuf_depth": "--wbuf-depth", "table_depth": "--table-depth"}
MAX_DEPTH = {"spad_depth": 65536, "acc_depth": 65536, "wbuf_depth": 65536, "table_depth": 256}

STAGES = ("import", "quantize", "lower", "write")

#: The output SQNR drop (dB, against the all-8-bit network on the calibration set)
#: ``--weight-bits auto`` allows by default. On the digits model 1 dB keeps the float
#: test accuracy and 2 or 3 dB save next to nothing more (docs/mixed_precision.md).
DEFAULT_BITS_BUDGET_DB = 1.0


def compile_model(model, calib: np.ndarray | None, cfg: CoreConfig, outdir: Path, *, mode: str = "std",
                  per_channel: bool = False, weight_mode: str = "std", bias_correction: bool = True,
                  listing: bool = False,
                  stage: Callable[[str], None] | None = None, min_sqnr_db: float | None = None,
                  calib_name: str = "calibration data",
                  layers: Callable[[int, int], None] | None = None, batch: int = 1,
                  weight_bits: int | str | dict[str, int] = 8, bits_budget: float | None = None,
                  searching: Callable[[int, int], None] | None = None) -> dict:
    """Quantize a float ONNX model with calibration samples, lower it for ``cfg`` and
    write the program directory (``listing.txt`` too with ``listing``). ``mode``,
    ``per_channel``, ``weight_mode`` and ``bias_correction`` go to the quantizer
    (:func:`~fxpgen.compiler.quantize.quantize`). ``stage`` is called with each name
    of :data:`STAGES` as it starts, ``layers`` with (layers lowered, all layers) as
    the lowering goes. ``batch``: images per run of the program (``--batch``,
    :func:`~fxpgen.compiler.lower.lower`).

    ``weight_bits``: the width of the conv layers' weights, one width for all, a dict
    of layer name -> width (others 8), a ``--weight-bits`` text
    (:func:`parse_weight_bits`), or "auto": the widths
    :func:`~fxpgen.compiler.mixed_precision.search_weight_bits` finds within
    ``bits_budget`` dB of output SQNR (default :data:`DEFAULT_BITS_BUDGET_DB`),
    ``searching`` called with its progress. A bad width or layer name is a
    :class:`~fxpgen.compiler.quantize.WeightBitsError`.

    The calibration samples (N x C x H x W, or one image) must be finite real numbers
    of the model's input shape (:class:`~fxpgen.app.inputs.InputError`, naming them
    ``calib_name``); doubts about their scale are among the ``warnings``. With
    ``min_sqnr_db``, a model whose output SQNR on them is lower raises
    :class:`LowSignalError` before anything is written.

    Returns a summary: sizes, timings, the quantizer's and the lowering's notes, the
    same grouped by kind (``warnings``), ``low_signal`` and its reason (see
    :func:`low_signal`), ``calibration_warnings`` (doubts about the calibration data,
    :func:`~fxpgen.app.inputs.calibration_warnings`), ``fixed_formats`` (whether the
    model's QuantizeLinear/DequantizeLinear fixed its formats, :mod:`fxpgen.compiler.qdq`),
    ``weight_bits`` (each conv layer's width) and ``weight_memory``
    (:func:`~fxpgen.compiler.quantize.weight_memory`).
    ``calib`` may be None for such a model when its quantizers fix every format.
    A :class:`~fxpgen.compiler.tiling.DoesNotFit` names the command-line option of
    the memory to raise and the smallest depth that fits."""
    from fxpgen.compiler.program import encode_qgraph
    from fxpgen.compiler.qdq import load_qdq
    from fxpgen.compiler.quantize import quantize

    say = stage or (lambda name: None)
    say("import")
    t0 = time.monotonic()
    graph, fixed = load_qdq(model)
    if calib is None and fixed is None:
        raise InputError(f"{calib_name} is needed: the model has no QuantizeLinear/DequantizeLinear "
                         "to take its formats from")
    doubts = []
    if calib is not None:
        calib = as_images(calib, graph.shape(graph.input), calib_name)
        doubts = calibration_warnings(calib, calib_name)
        calib = np.asarray(calib, np.float64)
    # The quantized graph's files (mostly zlib, which releases the GIL) are encoded on
    # another core while the quantizer's report and the lowering run; they are written
    # only if both succeed.
    with ThreadPoolExecutor(1) as pool:
        encoding = []
        say("quantize")
        options = {"mode": mode, "per_channel": per_channel, "fixed": fixed, "weight_mode": weight_mode,
                   "bias_correction": bias_correction}
        widths, search = _weight_widths(weight_bits, bits_budget, graph, calib, options, searching)
        qg, report = quantize(graph, calib, **options, weight_bits=widths,
                              on_graph=lambda q: encoding.append(pool.submit(encode_qgraph, q)))
        report["weight_bits"] = qg.meta["weight_bits"]
        if search is not None:
            report["weight_search"] = search
        # The float model and the samples (hundreds of MB for an ImageNet network) are
        # not needed past here: the lowering and the write then peak lower.
        del graph, calib
        if min_sqnr_db is not None and report["output_sqnr_db"] < min_sqnr_db:
            raise LowSignalError(
                f"the quantized output {report['output']} has an SQNR of {report['output_sqnr_db']:.1f} "
                f"dB against the float model on the calibration set (under {min_sqnr_db:g} dB): its "
                "outputs are mostly quantization noise"
                + "".join(f"; {d}" for d in doubts) + "; nothing was written")
        t1 = time.monotonic()
        say("lower")
        low = lower_for_user(qg, cfg, layers, batch)
        t2 = time.monotonic()
        say("write")
        _write_program(Path(outdir), qg, low, report, listing, encoding[0].result())
    notes = report["notes"] + low.notes
    weak = low_signal(report)
    return {"batch": low.batch, "instructions": len(low.words), "data_words": len(low.consts),
            "spad_rows": low.spad_rows_used, **offchip_summary(low), "quantize_s": t1 - t0, "lower_s": t2 - t1,
            "write_s": time.monotonic() - t2, "notes": low.notes, "warnings": group_notes([user_terms(n, qg) for n in notes]),
            "output_sqnr_db": report["output_sqnr_db"], "low_signal": weak is not None, "low_signal_reason": weak,
            "calibration_warnings": doubts, "fixed_formats": fixed is not None,
            "weight_bits": report["weight_bits"], "weight_memory": report["weight_memory"],
            "listing": listing, "outdir": str(outdir)}


def parse_weight_bits(text: str) -> str | tuple[int, dict[str, int]]:
    """A ``--weight-bits`` value: "auto", or comma-separated items, each a width for
    every conv layer not named otherwise (at most one) or ``name=width``. Returns
    "auto" or (the width of layers not named, name -> width); raises
    :class:`~fxpgen.compiler.quantize.WeightBitsError` naming the bad item."""
    from fxpgen.compiler.quantize import WeightBitsError
    from fxpgen.numerics import WEIGHT_BITS
    items = [item.strip() for item in str(text).split(",")]
    if [item.lower() for item in items] == ["auto"]:
        return "auto"
    default, named = None, {}
    for item in items:
        name, _, width = item.rpartition("=")
        name = name.strip()
        if width.strip() not in [str(b) for b in WEIGHT_BITS] or (not name and "=" in item):
            why = ("'auto' stands alone" if item.lower() == "auto" else
                   f"a width is one of {', '.join(map(str, WEIGHT_BITS))}, or name=width")
            raise WeightBitsError(f"{item!r} in {text!r}: {why}")
        if not name and default is not None:
            raise WeightBitsError(f"{item!r} in {text!r}: one width for the other layers at most")
        if name in named:
            raise WeightBitsError(f"{item!r} in {text!r}: {name} is given twice")
        if name:
            named[name] = int(width)
        else:
            default = int(width)
    return (8 if default is None else default), named


def _weight_widths(spec, budget: float | None, graph, calib, options: dict,
                   progress) -> tuple[dict[str, int], dict | None]:
    """The layer widths ``spec`` (:func:`compile_model`'s ``weight_bits``) asks for,
    and the search's report when it is "auto"."""
    from fxpgen.compiler.mixed_precision import search_weight_bits
    from fxpgen.compiler.quantize import WeightBitsError, graph_weight_layers
    from fxpgen.numerics import WEIGHT_BITS
    if isinstance(spec, str):
        spec = parse_weight_bits(spec)
    if spec != "auto" and budget is not None:
        raise WeightBitsError("bits_budget is for the search (weight_bits 'auto') only")
    if spec == "auto":
        budget = DEFAULT_BITS_BUDGET_DB if budget is None else budget
        if not budget >= 0:
            raise WeightBitsError(f"the SQNR budget must be a number of dB >= 0, not {budget!r}")
        return search_weight_bits(graph, calib, budget=budget, metric="sqnr", progress=progress, **options)
    default, named = (spec, {}) if isinstance(spec, (int, np.integer)) else \
        (8, dict(spec)) if isinstance(spec, dict) else spec
    if isinstance(default, bool) or default not in WEIGHT_BITS:
        raise WeightBitsError(f"weight width {default!r} for every conv layer: must be one of "
                              f"{', '.join(map(str, WEIGHT_BITS))}")
    layers = graph_weight_layers(graph, options["fixed"]) if default != 8 else {}
    return {**dict.fromkeys(layers, int(default)), **named}, None


def offchip_summary(low) -> dict:
    """The host traffic of a program's off-chip maps: ``offchip_maps`` (their names),
    ``offchip_words_stored`` (result words they take) and ``offchip_words_loaded``
    (data words read back, halos and repeated bands included)."""
    return {"offchip_maps": [b.name for b in low.host_buffers],
            "offchip_words_stored": sum(b.count for b in low.host_buffers),
            "offchip_words_loaded": sum(p.count for p in low.host_pieces)}


def _write_program(outdir: Path, qg, low, report: dict, with_listing: bool,
                   qgraph_files: tuple[str, bytes]) -> None:
    from fxpgen.compiler.program import listing, save_program, write_manifest, write_qgraph
    outdir.mkdir(parents=True, exist_ok=True)
    in_t, out_t = qg.tensor(qg.input), qg.tensor(qg.output)
    header = save_program(outdir / "program.fxp", low, extra={
        "input": {"name": qg.input, "shape": list(in_t.shape), "signed": in_t.fmt.signed, "fl": in_t.fmt.fl},
        "output": {"name": qg.output, "shape": list(out_t.shape), "signed": out_t.fmt.signed,
                   "fl": out_t.fmt.fl},
    })
    write_qgraph(outdir, *qgraph_files)
    if with_listing:
        (outdir / "listing.txt").write_text(listing(low))
    else:
        # A listing left from an earlier compile would describe another program.
        (outdir / "listing.txt").unlink(missing_ok=True)
    (outdir / "report.json").write_text(json.dumps(report, indent=1, default=jsonable))
    (outdir / "meta.json").write_text(json.dumps(header, indent=1))
    write_manifest(outdir)


def low_signal(report: dict) -> str | None:
    """Why the quantized model's output carries no usable signal, or None: its golden
    output on the calibration set is all zero, or its SQNR is under :data:`LOW_SQNR_DB`."""
    if report.get("output_nonzero_fraction", 1.0) == 0.0:
        return f"the output {report['output']} is all zero on every calibration sample"
    if report["output_sqnr_db"] < LOW_SQNR_DB:
        return (f"the output {report['output']} has an SQNR of {report['output_sqnr_db']:.1f} dB "
                f"against the float model (under {LOW_SQNR_DB:g} dB)")
    return None


_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def group_notes(notes: list[str], *, at_most: int = 2) -> list[str]:
    """Notes of the form ``"layer: what"`` grouped by kind (``what`` with its numbers
    masked): kinds with up to ``at_most`` notes are kept as they are, the others
    become one line with an example, the count and the first layers."""
    groups: dict[str, list[str]] = {}
    for note in notes:
        where, sep, what = note.partition(": ")
        groups.setdefault(_NUMBER.sub("#", what) if sep else note, []).append(note)
    out = []
    for members in groups.values():
        if len(members) <= at_most:
            out += members
            continue
        names = [m.partition(": ")[0] for m in members]
        shown = ", ".join(names[1:4]) + (", ..." if len(names) > 4 else "")
        out.append(f"{members[0]} [{len(members)} of this kind; also {shown}]")
    return out


def lower_for_user(qg, cfg: CoreConfig, progress: Callable[[int, int], None] | None = None,
                   batch: int = 1):
    """:func:`~fxpgen.compiler.lower.lower` (``progress`` and ``batch`` as there), with
    a :class:`DoesNotFit` in the terms of ``fxpgen compile``: command-line options, the
    model's N x C x H x W shapes, and the smallest memory depths that would fit (for
    a batch that does not fit, the largest batch that does)."""
    from fxpgen.compiler.lower import lower
    from fxpgen.compiler.tiling import DoesNotFit
    if batch < 1:
        raise InputError(f"--batch must be at least 1, not {batch}")
    try:
        return lower(qg, cfg, progress=progress, batch=batch)
    except DoesNotFit as e:
        if batch > 1:
            fits = _largest_batch(qg, cfg, batch)
            if fits:
                raise DoesNotFit(f"--batch {batch} does not fit (a batch keeps every map on chip): "
                                 f"{user_terms(str(e), qg)}; the largest batch that fits is {fits}") from None
        fixes = [f"{MEMORY_OPTIONS[f]} {d}" for f, d in _smallest_fits(qg, cfg)]
        advice = (f"; it fits with {' or '.join(fixes)}" if fixes else
                  "; no single memory up to its largest depth makes it fit")
        raise DoesNotFit(user_terms(str(e), qg) + advice) from None


def _largest_batch(qg, cfg: CoreConfig, batch: int) -> int:
    """The largest batch under ``batch`` that ``qg`` fits on ``cfg`` (0: not even 1)."""
    from fxpgen.compiler.lower import lower
    from fxpgen.compiler.tiling import DoesNotFit

    def fits(n: int) -> bool:
        try:
            lower(qg, cfg, batch=n)
        except DoesNotFit:
            return False
        return True

    lo, hi = 0, batch - 1                     # fits(lo) or lo == 0; bisect for the last
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _smallest_fits(qg, cfg: CoreConfig) -> list[tuple[str, int]]:
    """(memory, smallest power-of-two depth) of each memory that alone makes ``qg`` fit."""
    from fxpgen.compiler.lower import lower
    from fxpgen.compiler.tiling import DoesNotFit

    def fits(field: str, depth: int) -> bool:
        try:
            lower(qg, dataclasses.replace(cfg, **{field: depth}))
        except (DoesNotFit, ValueError):
            return False
        return True

    out = []
    for field in MEMORY_OPTIONS:
        depths = [1 << k for k in range(1, 17)
                  if getattr(cfg, field) < 1 << k <= MAX_DEPTH[field]]
        if not depths or not fits(field, depths[-1]):
            continue
        lo, hi = 0, len(depths) - 1               # depths[hi] fits; bisect for the first
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(field, depths[mid]) else (mid + 1, hi)
        out.append((field, depths[hi]))
    return out


def user_terms(message: str, qg) -> str:
    """A compiler message with config fields and options named as on the command line, every
    ``name (C, H, W)`` of a tensor of ``qg`` shown as the model has it, ``1xCxHxW``
    (the lowering's own shapes may be of an unfolded or grouped layout)."""
    def shape(m: re.Match) -> str:
        t = qg.tensors.get(m.group(1))
        return m.group(0) if t is None else f"{m.group(1)} ({'x'.join(map(str, (1, *t.shape)))})"
    message = re.sub(r"([\w./:-]+) \(\d+, \d+, \d+\)", shape, message)
    message = message.replace("per_channel=True", "--per-channel")
    message = message.replace("weight_mode='grid'", "--weight-mode grid")
    return re.sub(r"\b(spad|acc|wbuf|table)_depth\b", lambda m: f"--{m.group(1)}-depth", message)


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
    """(program, quantized graph) of a program directory, checked as one unit against
    its manifest (:func:`~fxpgen.compiler.program.check_manifest`)."""
    from fxpgen.compiler.program import load_program, load_qgraph
    outdir = _checked_folder(outdir)
    return load_program(outdir / "program.fxp", cfg), load_qgraph(outdir)


def _checked_folder(outdir: Path) -> Path:
    """``outdir`` once it is known to hold a program whose files match its manifest."""
    from fxpgen.compiler.program import check_manifest
    outdir = Path(outdir)
    if not (outdir / "program.fxp").is_file():
        raise FileNotFoundError(f"{outdir}: no program.fxp here; run `fxpgen compile` first")
    check_manifest(outdir)
    return outdir


def input_images(outdir: Path, x: np.ndarray, what: str = "input") -> np.ndarray:
    """Float inputs ``x`` checked against the program in ``outdir`` and made a batch
    (N, C, H, W) (:func:`~fxpgen.app.inputs.as_images`), before any engine starts."""
    from fxpgen.compiler.program import load_qgraph
    qg = load_qgraph(_checked_folder(outdir))
    return as_images(x, qg.tensor(qg.input).shape, what)


def run_compiled(outdir: Path, x: np.ndarray, engine: str, *, progress: Callable | None = None,
                 batch: int = 16, board: dict | None = None, input_name: str = "input") -> dict:
    """Run float inputs through a compiled program on one engine (a name of
    :data:`fxpgen.app.engines.ENGINES`). Returns the integer outputs (N x C x H x W,
    in the output format), ``saturated``, the count of input values beyond the input
    format, and, for the engines with counters (the RTL engines, the cycle model, a
    board), per-layer counters with each layer's MACs and MAC utilization and the
    whole network's (:func:`counter_report`); for every engine but the golden
    model, whether every output equals the golden model's.

    A program compiled for a batch of N images runs the inputs N at a time, the last
    run filled up with zero images whose outputs are dropped; its per-layer
    counters are those of a run (N images), ``cycles_per_image`` a run's cycles
    over N, and the result's ``batch`` is N (the ``batch`` argument is another
    count: inputs per RTL simulation).

    The inputs (one image C x H x W or a batch) are checked here for every engine
    (:func:`~fxpgen.app.inputs.as_images`, errors naming them ``input_name``).
    ``batch``: inputs per RTL simulation; ``board``: ``port``, ``baud``,
    ``timeout``, ``baked`` for the board engine."""
    from fxpgen.app.engines import engine_class
    from fxpgen.compiler.golden import quantize_input
    from fxpgen.sim.engine import NetworkProgram

    cls = engine_class(engine)
    prog, qg = load_compiled(outdir)
    images = as_images(x, qg.tensor(qg.input).shape, input_name)
    xq = [np.asarray(quantize_input(qg, img), np.int64) for img in images]
    fmt = qg.tensor(qg.input).fmt
    scaled = np.asarray(images, np.float64) * 2.0 ** fmt.fl
    saturated = int(np.sum((scaled < fmt.lo - 0.5) | (scaled > fmt.hi + 0.5)))
    program = NetworkProgram.from_program(prog, qg)
    runs = batched(xq, program.batch)
    eng = cls.from_options(batch=batch, **(board or {}))
    out = {"engine": engine, "config": prog.cfg.as_dict(), "saturated": saturated,
           "input_format": str(fmt), "batch": program.batch, **offchip_summary(program.view)}
    t0 = time.monotonic()
    res = eng.run(program, runs, progress=_per_image(progress, program.batch, len(xq)))
    if res.layers is not None and res.layers and res.layers[0]:
        out.update(counter_report(res.layers, prog.cfg, qg, program.batch))
    if "frames_rejected" in res.info:
        out["frames_rejected"] = res.info["frames_rejected"]
        out["frames_sent"] = res.info["frames_sent"]
    if "verilator_build_s" in res.info:
        out["verilator_build_s"] = res.info["verilator_build_s"]
    out["seconds"] = time.monotonic() - t0
    if cls.checked_against_golden:
        golden = program.golden(runs)
        out["golden_identical"] = bool(all(np.array_equal(y, g) for y, g in zip(res.outputs, golden)))
    outputs = np.stack(res.outputs)
    out["outputs"] = outputs.reshape(-1, *outputs.shape[-3:])[:len(xq)]
    return out


def batched(xq: list[np.ndarray], batch: int) -> list[np.ndarray]:
    """Quantized images (C, H, W) as the inputs of a program compiled for ``batch``
    images: themselves for 1, else stacks of ``batch`` (N, C, H, W), the last filled
    up with zero images."""
    if batch == 1:
        return list(xq)
    xs = list(xq) + [np.zeros_like(xq[0])] * (-len(xq) % batch)
    return [np.stack(xs[k:k + batch]) for k in range(0, len(xs), batch)]


def _per_image(progress: Callable | None, batch: int, images: int) -> Callable | None:
    """``progress(n)`` counting the ``images`` given, for an engine that counts runs of
    ``batch`` (the zero images filling up the last run not counted)."""
    if progress is None or batch == 1:
        return progress
    left = [images]

    def runs_done(n: int) -> None:
        done = min(n * batch, left[0])
        left[0] -= done
        progress(done)
    return runs_done


def counter_report(per_image: list[list[dict]], cfg: CoreConfig, qg, batch: int = 1) -> dict:
    """What an engine's per-layer counters (per run, one dict per HALT segment named
    after its layer, :meth:`~fxpgen.sim.engine.Engine.run`) say of a network ``qg``
    compiled for ``batch`` images a run:

    - ``layers``: per segment the counters' means over the images, ``macs`` (the
      layer's multiply-accumulates, :meth:`~fxpgen.compiler.qgraph.QGraph.macs`; 0
      for a segment that is no layer of ``qg``, such as the output store),
      ``mac_utilization`` (``macs / (cycles * rows * cols)``: the work done against
      the array's capacity in the layer's cycles) and ``array_occupancy``
      (``mac_cycles / cycles``: the cycles the array was fed, whatever the tiles'
      padding wasted), all per run: a layer's MACs are its ``batch`` images';
    - ``cycles_per_image`` (a run's cycles over ``batch``), ``model_macs`` (one
      image's) and ``mac_utilization`` of the whole network, the same ratio over
      every segment's cycles."""
    macs = {name: m * batch for name, m in layer_macs(qg).items()}
    rows = []
    for k, first in enumerate(per_image[0]):
        vals = {key: float(np.mean([img[k][key] for img in per_image]))
                for key in first if key != "layer"}
        layer_m = macs.get(first["layer"], 0)
        rows.append({"layer": first["layer"], **vals, "macs": layer_m,
                     "mac_utilization": mac_utilization(layer_m, vals["cycles"], cfg),
                     "array_occupancy": vals["mac_cycles"] / vals["cycles"] if vals["cycles"] else 0.0})
    cycles = float(np.mean([sum(seg["cycles"] for seg in img) for img in per_image])) / batch
    total = sum(macs.values()) // batch
    return {"layers": rows, "cycles_per_image": cycles, "model_macs": total,
            "mac_utilization": mac_utilization(total, cycles, cfg)}


def mac_utilization(macs: int, cycles: float, cfg: CoreConfig) -> float:
    """``macs / (cycles * rows * cols)``: the fraction of the array's multiply-accumulates
    in ``cycles`` that did the model's work (0 for no cycles)."""
    return macs / (cycles * cfg.rows * cfg.cols) if cycles else 0.0


def layer_macs(qg) -> dict[str, int]:
    """Multiply-accumulates of every layer of ``qg`` by name (:meth:`QGraph.macs
    <fxpgen.compiler.qgraph.QGraph.macs>`)."""
    return {op.name: qg.macs(op) for op in qg.ops}


def model_macs(qg) -> int:
    """Multiply-accumulates of the whole network (:func:`layer_macs`, summed)."""
    return sum(layer_macs(qg).values())


#: The engines ``fxpgen demo`` runs the RTL on, with the label of its progress bar.
DEMO_RTL_ENGINES = {"rtl": "RTL (Verilator)", "native": "RTL (Verilator, native harness)"}


def demo(cfg: CoreConfig, workdir: Path, *, images: int | None = None, rtl: bool = True,
         batch: int = 1, engine: str = "rtl",
         progress: Callable[[str, int], Callable] | None = None) -> dict:
    """The shipped digits CNN end to end: quantize, compile for ``batch`` images a run
    (``fxpgen compile --batch``), run the test images on the golden model, the
    instruction-level simulator and (``rtl``) the first ``images`` of them on the RTL
    ``engine`` (a key of :data:`DEMO_RTL_ENGINES`); accuracies, bit-identity, and
    from the RTL run's report (:func:`run_compiled`) the cycles per image, the MAC
    utilization and the per-layer counters (a layer's: per run of ``batch``
    images)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    from fxpgen.models import digits_assets

    if engine not in DEMO_RTL_ENGINES:
        raise ValueError(f"the demo runs the RTL on {' or '.join(DEMO_RTL_ENGINES)}, not {engine!r}")
    a = digits_assets()
    x_test = np.load(a["test_x"])
    y_test = np.load(a["test_y"])
    calib = np.load(a["calib"])
    n = len(x_test) if images is None else min(images, len(x_test))
    bar = progress or (lambda label, total: (lambda k: None))

    t0 = time.monotonic()
    summary = compile_model(a["model"], calib, cfg, workdir, batch=batch)
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
        "batch": summary["batch"],
        "float_accuracy": float(np.mean(float_pred == y_test)),
        "fixed_point_accuracy": float(np.mean(fixed_pred == y_test)),
        "isa_identical_to_golden": bool(np.array_equal(isa["outputs"].reshape(len(x_test), -1), g_out)),
        "compile_s": compile_s,
        "instructions": summary["instructions"],
    }
    if rtl:
        r = run_compiled(workdir, x_test[:n], engine, progress=bar(DEMO_RTL_ENGINES[engine], n))
        report.update({
            "rtl_engine": engine,
            "rtl_images": n,
            "rtl_identical_to_golden": bool(r["golden_identical"]
                                            and np.array_equal(r["outputs"].reshape(n, -1), g_out[:n])),
            **{key: r[key] for key in ("cycles_per_image", "model_macs", "mac_utilization", "layers")},
            "rtl_seconds": r["seconds"],
        })
    return report
