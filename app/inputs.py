"""The arrays a user hands to ``fxpgen``: loading ``.npy`` files and checking images
against a model's input, once for every command and every engine.

Every refusal is an :class:`InputError` naming the file (or what the array is for),
what is wrong and the figure that shows it; doubtful but usable calibration data
gives warnings instead (:func:`calibration_warnings`)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

__all__ = ["InputError", "load_array", "as_images", "calibration_warnings", "WIDEST_INPUT_RANGE"]

NPY_MAGIC = b"\x93NUMPY"
#: The first byte of a pickle of protocol 2 or later (what numpy.save writes for objects).
PICKLE_MAGIC = b"\x80"

#: Largest magnitude any 8-bit input format holds: u8.0 reaches 255; a value beyond it
#: saturates whatever format the quantizer picks.
WIDEST_INPUT_RANGE = 255.0


class InputError(ValueError):
    """A user's input file or array that ``fxpgen`` cannot use, and why."""


def load_array(path: Path, what: str) -> np.ndarray:
    """The array of a ``.npy`` file, refusing pickles, ``.npz`` archives, other files
    and arrays that are not real numbers; ``what`` names the option it came from
    (e.g. ``"--calib"``) in the error."""
    where = f"{what} {path}"
    pickled = InputError(f"{where}: holds pickled Python objects, which fxpgen does not load "
                         "(unpickling can run code); save a numeric array with numpy.save")
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
        archive = zipfile.is_zipfile(path)
    except OSError as e:
        raise InputError(f"{where}: cannot be read ({e.strerror or e})") from None
    if archive:
        raise InputError(f"{where}: a .npz archive; save one array with numpy.save (.npy)")
    if head.startswith(PICKLE_MAGIC):
        raise pickled
    if head != NPY_MAGIC:
        raise InputError(f"{where}: not a .npy file (it does not start with the NumPy header)")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as e:
        # numpy's only way to say that the array holds objects, which it would unpickle
        raise (pickled if "pickle" in str(e) else
               InputError(f"{where}: a damaged .npy file ({e})")) from None
    except (OSError, EOFError) as e:
        raise InputError(f"{where}: a damaged .npy file ({e})") from None
    if x.dtype.kind not in "iuf":
        raise InputError(f"{where}: an array of {x.dtype} ({_kind(x.dtype)}); fxpgen needs real "
                         "numbers (float, or integers)")
    return x


def _kind(dtype: np.dtype) -> str:
    return {"b": "booleans", "c": "complex numbers", "U": "text", "S": "bytes", "O": "objects",
            "M": "dates", "m": "time spans", "V": "raw records"}.get(dtype.kind, dtype.kind)


def as_images(x: np.ndarray, shape: tuple[int, int, int], what: str) -> np.ndarray:
    """``x`` as a batch (N, C, H, W) of images of ``shape`` (C, H, W), N >= 1: one image
    or a batch, with or without C when C is 1; finite real numbers only. ``what``
    names the array in errors."""
    x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise InputError(f"{what}: an array of {x.dtype} ({_kind(x.dtype)}); fxpgen needs real numbers")
    c, h, w = shape
    if x.shape == (c, h, w):
        x = x[None]
    elif c == 1 and x.ndim == 3 and x.shape[1:] == (h, w):
        x = x[:, None]
    elif not (x.ndim == 4 and x.shape[1:] == (c, h, w)):
        raise InputError(f"{what}: input of shape {x.shape} does not match the model input {(c, h, w)} "
                         "(one image, or a batch N x C x H x W)")
    if len(x) == 0:
        raise InputError(f"{what}: holds no images (shape {x.shape}); give at least one")
    bad = ~np.isfinite(x) if x.dtype.kind == "f" else np.zeros(x.shape, bool)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{what}: {int(bad.sum())} value(s) are NaN or infinite (the first at "
                         f"index {first}, image {first[0]}); inputs must be finite")
    return x


def calibration_warnings(x: np.ndarray, what: str) -> list[str]:
    """Why calibration images ``x`` (N, C, H, W) look unlike what a float model
    expects, with the figures: integers where floats are expected, values beyond
    every 8-bit format, or a single value throughout."""
    out = []
    peak = float(np.max(np.abs(x)))
    if x.dtype.kind in "iu":
        out.append(f"{what}: integers ({x.dtype}, {x.min()}..{x.max()}) where a float model "
                   "expects floats; scale them as the model was trained (e.g. x / 255)")
    if peak > WIDEST_INPUT_RANGE:
        out.append(f"{what}: values reach {peak:.3g}, beyond the widest 8-bit input format "
                   f"(0..{WIDEST_INPUT_RANGE:g}); they saturate and the rest round to few steps")
    if float(np.ptp(x)) == 0:
        out.append(f"{what}: every value is {x.flat[0]:g}: the calibration sees no signal")
    return out
