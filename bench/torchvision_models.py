"""torchvision's classifiers as users export them, through ``fxpgen compile``.

Each model is built with random weights (``weights=None``, a fixed torch seed; no
download), put in eval mode and exported by ``torch.onnx.export(model, x, f,
opset_version=17)`` at 1 x 3 x size x size. ``fxpgen compile`` then runs on it with
default options in a child process, calibrated on a few uniform [0, 1) images; the
figures per model:

* ``compiles``: yes, or the compiler's one-line reason;
* ``compile_s``: the child's wall time (Python start-up and imports included);
* ``peak_mb``: the child's peak resident set (Linux's VmHWM, read as it exits), so
  imports count and torch, which the compiler never imports, does not;
* ``folder_mb``: the program folder's size on disk; ``instructions``;
* ``cosine``: the golden model's dequantized output against onnxruntime's float
  output on one more image from the same distribution (random-weight networks give
  near-random outputs, so this measures closeness of the quantized model to the
  float one, not accuracy).

Needs the ``models`` extra (torch, torchvision, onnxruntime)::

    python -m bench.torchvision_models [--size 64] [--models resnet18,resnet50]
    python -m bench.torchvision_models --size 224 --models resnet50 --spad-depth 65536

Options after ``--`` go to ``fxpgen compile`` as they are.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1",
          "shufflenet_v2_x0_5", "efficientnet_b0", "mnasnet0_5", "googlenet", "densenet121",
          "regnet_x_400mf")
CALIB_IMAGES = 4


def export(name: str, path: Path, size: int = 64, seed: int = 0) -> None:
    """Write torchvision's ``name`` (random weights from ``seed``, eval mode) as ONNX,
    exported at opset 17 with a 1 x 3 x ``size`` x ``size`` input."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    # The exporter reports its steps on stdout and a failed opset conversion, which it
    # recovers from, on stderr.
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), opset_version=17)


def images(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` images of uniform [0, 1) pixels, (n, 3, size, size) float32."""
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, size, size)).astype(np.float32)


def onnxruntime_output(path: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's float output of the model at ``path`` for a batch of one image."""
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between two arrays taken as flat vectors (0 if either is
    all zero)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms else 0.0


def reason(message: str) -> str:
    """A compiler error in one line: the unsupported ops with their counts, or the
    message's first line without click's ``Error:`` and the lowering's parenthesised
    alternative of a whole input (``(with the input streamed ...)``)."""
    message = message.rpartition("Error: ")[2] if "Error: " in message else message
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if not lines:
        return "(no message)"
    if lines[0].endswith("unsupported ops:"):
        return "unsupported ops: " + ", ".join(ln.partition(":")[0] for ln in lines[1:]
                                               if not ln.startswith("supported:"))
    return _drop_parenthesis(lines[0], " (with the input")


def _drop_parenthesis(text: str, opening: str) -> str:
    """``text`` without the parenthesis that starts with ``opening`` (nesting counted)."""
    start = text.find(opening)
    if start < 0:
        return text
    depth = 0
    for end in range(start + 1, len(text)):
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0:
            return text[:start] + text[end + 1:]
    return text


# Runs ``fxpgen compile`` and, as it exits, writes its resident-set high-water mark
# (VmHWM, KiB) to the file named first: a forked child's ru_maxrss would count the
# parent's memory (torch) from before its exec.
_CHILD = """
import sys
from fxpgen.app.cli import main
try:
    main(sys.argv[2:], prog_name="fxpgen")
finally:
    status = open("/proc/self/status").read()
    open(sys.argv[1], "w").write(status.split("VmHWM:")[1].split()[0])
"""


def compile_child(model: Path, calib: Path, outdir: Path, options: list[str]) -> dict:
    """``fxpgen compile`` in a child process: its summary (or ``error``, one line), wall
    time in seconds and peak resident set in MB (2**20 bytes)."""
    with tempfile.TemporaryDirectory() as d:
        hwm = Path(d, "vmhwm")
        cmd = [sys.executable, "-c", _CHILD, str(hwm), "compile", str(model), "--calib", str(calib),
               "-o", str(outdir), "--json", *options]
        t0 = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True)
        row = {"compile_s": time.monotonic() - t0, "peak_mb": int(hwm.read_text()) / 1024}
    if done.returncode:
        return {**row, "error": reason(done.stderr)}
    return {**row, **json.loads(done.stdout)}


def folder_mb(path: Path) -> float:
    """Total size of the files under ``path`` in MB (10**6 bytes)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def measure(name: str, size: int, workdir: Path, options: list[str], seed: int = 0) -> dict:
    """Export ``name``, compile it in a child process and compare its golden output
    with onnxruntime's on one image; one table row as a dict."""
    from fxpgen.app.flow import load_compiled
    from fxpgen.compiler.golden import predict

    workdir.mkdir(parents=True, exist_ok=True)
    model, calib, outdir = workdir / f"{name}.onnx", workdir / f"{name}-calib.npy", workdir / name
    export(name, model, size, seed)
    np.save(calib, images(CALIB_IMAGES, size, seed))
    row = {"model": name, **compile_child(model, calib, outdir, options)}
    if "error" in row:
        return row
    x = images(1, size, seed + 1)
    _, qg = load_compiled(outdir)
    row["cosine"] = cosine(predict(qg, x), onnxruntime_output(model, x))
    row["folder_mb"] = folder_mb(outdir)
    return row


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| model | compiles | compile time (s) | peak memory (MB) | program folder (MB) "
             "| instructions | cosine vs onnxruntime |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | no: {r['error'].replace('|', '/')} | {r['compile_s']:.1f} "
                         f"| {r['peak_mb']:.0f} | | | |")
        else:
            weak = " (warned: low signal)" if r["low_signal"] else ""
            lines.append(f"| {r['model']} | yes | {r['compile_s']:.1f} | {r['peak_mb']:.0f} "
                         f"| {r['folder_mb']:.1f} | {r['instructions']:,} | {r['cosine']:.3f}{weak} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    options = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(prog="python -m bench.torchvision_models",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64, help="input height and width (pixels)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision names")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fxpgen-torchvision-") as d:
        for name in args.models.split(","):
            rows.append(measure(name, args.size, Path(d), options, args.seed))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"{args.size}x{args.size}, fxpgen compile {' '.join(options) or '(default options)'}\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
