"""Float models that ship with fxpgen, for the demo and the end-to-end tests.

``digits`` (``fxpgen/models/digits/``) is a small residual CNN for scikit-learn's
bundled 8x8 handwritten digits (``sklearn.datasets.load_digits``), trained by
``scripts/train_digits.py`` (numpy only, fixed seed) and exported with ``onnx.helper``
(opset 17, float32):

    Conv3x3(1->8)+BN+Relu -> Conv3x3(8->8)+BN -> Add(residual) -> Relu -> MaxPool 2x2
    -> Conv3x3(8->16)+BN+Relu -> Flatten -> Gemm(256->10) = logits

Input ``input`` [1,1,8,8], float32, ``x = img / 16 * 255/256`` (img in 0..16), so the
input fits uint8 with 8 fractional bits; output ``logits`` [1,10] (no softmax).

Files: ``model.onnx``; ``calib.npy`` (256 training images, float32 (256,1,8,8), for the
quantizer's format choice); ``test_x.npy`` / ``test_y.npy`` (the held-out 20% split,
float32 (N,1,8,8) and int64 (N,)); ``meta.json`` (the float test accuracy measured with
``onnx.reference.ReferenceEvaluator``, architecture, seed, split, scaling, and the command
that made the files).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["digits_assets", "DIGITS_DIR"]

DIGITS_DIR = Path(__file__).resolve().parent / "digits"

_DIGITS_FILES = {
    "model": "model.onnx",
    "calib": "calib.npy",
    "test_x": "test_x.npy",
    "test_y": "test_y.npy",
    "meta": "meta.json",
}


def digits_assets() -> dict[str, Path]:
    """Paths of the shipped digits model and its data.

    Returns a dict with keys ``"dir"``, ``"model"`` (ONNX), ``"calib"``, ``"test_x"``,
    ``"test_y"`` (``.npy``) and ``"meta"`` (JSON), each a :class:`pathlib.Path`.
    Raises :class:`FileNotFoundError` naming the missing files if the package data is
    absent (e.g. a wheel built without it); ``python scripts/train_digits.py``
    regenerates them.
    """
    paths = {key: DIGITS_DIR / name for key, name in _DIGITS_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            "fxpgen's digits model data is missing: " + ", ".join(missing)
            + " (regenerate with `python scripts/train_digits.py` from a source checkout)"
        )
    return {"dir": DIGITS_DIR, **paths}
