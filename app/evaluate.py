"""The data-set evaluation behind ``fxpgen eval``: a compiled program run on labelled
images in shards (Ray tasks, :mod:`fxpgen.app.fanout`), with its accuracy and each
image's output compared with the golden model's.

A shard carries the program's files, not a path, so a worker on another machine of
a cluster runs it as well as one here; RTL workers build or reuse their Verilator
model through the shared cache (:func:`fxpgen.tools.cache_dir`, whose builds are
locked)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from fxpgen.app.inputs import InputError

__all__ = ["program_files", "check_labels", "run_shard", "shard_slices", "merge_shards", "output_size",
           "evaluate"]


def program_files(outdir: Path) -> dict[str, bytes]:
    """The files of the program in ``outdir`` (checked against its manifest), by name."""
    from fxpgen.app.flow import load_compiled
    from fxpgen.compiler.program import PROGRAM_FILES
    load_compiled(outdir)
    return {name: (Path(outdir) / name).read_bytes() for name in PROGRAM_FILES
            if (Path(outdir) / name).is_file()}


def check_labels(labels: np.ndarray, images: int, classes: int, what: str) -> np.ndarray:
    """``labels`` as int64 class indices: one integer in [0, ``classes``) per image."""
    if labels.dtype.kind not in "iu":
        raise InputError(f"{what}: an array of {labels.dtype}; labels must be integers (class indices)")
    if labels.ndim != 1 or len(labels) != images:
        raise InputError(f"{what}: labels of shape {labels.shape} for {images} image(s); "
                         f"give one label per image, shape ({images},)")
    if labels.min() < 0 or labels.max() >= classes:
        bad = int(np.flatnonzero((labels < 0) | (labels >= classes))[0])
        raise InputError(f"{what}: label {int(labels[bad])} of image {bad} is not a class of the "
                         f"model's {classes} outputs (0..{classes - 1})")
    return labels.astype(np.int64)


def shard_slices(n: int, shards: int) -> list[slice]:
    """``n`` images cut into at most ``shards`` contiguous, non-empty slices of near-equal size."""
    bounds = np.linspace(0, n, min(n, shards) + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def run_shard(files: dict[str, bytes], images: np.ndarray, engine: str) -> dict:
    """Run ``images`` through the program made of ``files`` on ``engine`` and on the
    golden model: integer ``outputs`` (N x C x H x W) of both, cycles per image
    where the engine counts them, seconds."""
    from fxpgen.app.flow import run_compiled
    with tempfile.TemporaryDirectory(prefix="fxpgen-eval-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        res = run_compiled(Path(tmp), images, engine)
        golden = res if engine == "golden" else run_compiled(Path(tmp), images, "golden")
    return {"outputs": res["outputs"], "golden": golden["outputs"], "seconds": res["seconds"],
            "cycles_per_image": res.get("cycles_per_image"), "saturated": res["saturated"]}


def merge_shards(shards: list[dict], labels: np.ndarray, engine: str) -> dict:
    """The report of shards given in image order: accuracy of the engine and of the
    golden model (top class of the flattened output against ``labels``), the images
    whose outputs differ from the golden model's, mean cycles per image."""
    outputs = np.concatenate([s["outputs"] for s in shards])
    golden = np.concatenate([s["golden"] for s in shards])
    n = len(outputs)
    differ = [k for k in range(n) if not np.array_equal(outputs[k], golden[k])]
    counted = [(s["cycles_per_image"], len(s["outputs"])) for s in shards if s["cycles_per_image"] is not None]
    report = {"engine": engine, "images": n,
              "accuracy": float(np.mean(np.argmax(outputs.reshape(n, -1), axis=1) == labels)),
              "golden_accuracy": float(np.mean(np.argmax(golden.reshape(n, -1), axis=1) == labels)),
              "golden_identical": not differ, "images_differing": differ,
              "saturated": sum(s["saturated"] for s in shards),
              "engine_s": sum(s["seconds"] for s in shards)}
    if counted:
        report["cycles_per_image"] = sum(c * k for c, k in counted) / sum(k for _, k in counted)
    return report



def output_size(outdir: Path) -> int:
    """Values in one output of the program in ``outdir`` (the classes of a classifier)."""
    from fxpgen.app.flow import load_compiled
    _, qg = load_compiled(outdir)
    return int(np.prod(qg.tensor(qg.output).shape))


def evaluate(outdir: Path, images: np.ndarray, labels: np.ndarray, engine: str, *, shards: int,
             done: Callable[[int], None] | None = None) -> dict:
    """Run checked ``images`` (N, C, H, W) with their ``labels`` through the program in
    ``outdir`` on ``engine``, cut into ``shards`` Ray tasks (in a
    :func:`~fxpgen.app.fanout.ray_session`); the report of :func:`merge_shards`.
    ``done(n)`` is called with the number of images of each finished shard. A shard
    that fails ends the evaluation with a RuntimeError holding its log tail."""
    from fxpgen.app.fanout import TaskFailed, fan_out
    files = program_files(outdir)
    cuts = shard_slices(len(images), shards)
    jobs = {str(k): (files, images[cut], engine) for k, cut in enumerate(cuts)}
    tick = done or (lambda n: None)
    results = {}
    for key, value in fan_out(run_shard, jobs, done=lambda key: tick(len(jobs[key][1]))):
        cut = cuts[int(key)]
        if isinstance(value, TaskFailed):
            raise RuntimeError(f"images {cut.start}..{cut.stop - 1} on the {engine} engine: "
                               f"{value.error}\n{value.log_tail}")
        results[int(key)] = value
    return merge_shards([results[k] for k in range(len(cuts))], labels, engine)
