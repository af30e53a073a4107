"""Baseline: the conventional requantizer (gemmlowp / TFLite) in numpy, the reference
of :mod:`bench.baselines.requant_mult`. fxpgen's hardware never multiplies by anything
but a power of two; this is what F8Net's shift replaces, kept to measure the saving
(``bench/requant_area.py``)."""

from __future__ import annotations

import math

import numpy as np

from fxpgen.numerics import saturate

__all__ = ["INT32_MIN", "INT32_MAX", "saturating_rounding_doubling_high_mul",
           "rounding_divide_by_pot", "requantize_multiplier", "quantize_multiplier"]

def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def _check_int32(name: str, x: np.ndarray) -> None:
    if np.any((x < INT32_MIN) | (x > INT32_MAX)):
        raise ValueError(f"{name} must be int32 values (in {INT32_MIN}..{INT32_MAX})")


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` on int32 ``a``, ``b``:
    ``a * b * 2**-31`` rounded to an integer, with the one overflow saturated.

    Literally: ``nudge = 2**30 if a*b >= 0 else 1 - 2**30``, result
    ``trunc((a*b + nudge) / 2**31)`` (C division, towards zero), and ``INT32_MAX``
    when ``a == b == INT32_MIN`` (the only product whose result exceeds int32).
    The nudge makes this ``floor((a*b + 2**30) / 2**31)``: round to nearest, ties
    towards +infinity (as ARM's SQRDMULH), not away from zero.
    """
    a, b = np.broadcast_arrays(_i64(a), _i64(b))
    _check_int32("a", a)
    _check_int32("b", b)
    ab = a * b                                      # |a*b| <= 2**62: exact in int64
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    t = ab + nudge
    high = np.where(t >= 0, t >> 31, -((-t) >> 31))  # C++ `/`: truncate towards zero
    return np.where((a == b) & (a == INT32_MIN), np.int64(INT32_MAX), high)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp's ``RoundingDivideByPOT``: ``x * 2**-exponent`` rounded to nearest,
    ties away from zero, for int32 ``x`` and ``exponent`` in 0..31.

    Literally: ``mask = 2**exponent - 1``, ``remainder = x & mask``,
    ``threshold = (mask >> 1) + (1 if x < 0 else 0)``, result
    ``(x >> exponent) + (1 if remainder > threshold else 0)``.
    """
    x, e = np.broadcast_arrays(_i64(x), _i64(exponent))
    _check_int32("x", x)
    if np.any((e < 0) | (e > 31)):
        raise ValueError("exponent must be in 0..31")
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def requantize_multiplier(acc, m0, shift, signed: bool, relu: bool = False) -> np.ndarray:
    """Conventional (gemmlowp / TFLite, symmetric) requantization of an int32
    accumulator by the real scale ``m0 * 2**-31 * 2**-shift``:
    ``saturate(rounding_divide_by_pot(saturating_rounding_doubling_high_mul(acc, m0),
    shift))`` to the 8-bit output range (ReLU raises its lower bound to 0).

    ``m0`` is a Q31 int32 (TFLite picks it in [2**30, 2**31), see
    :func:`quantize_multiplier`), ``shift`` a right shift in 0..31; both may be per
    element (per column). No zero point: fxpgen's formats are symmetric. TFLite's
    left shift for scales >= 1 is not part of this function (the hardware applies
    it as the saturating operand alignment, :func:`align`).
    """
    return saturate(rounding_divide_by_pot(saturating_rounding_doubling_high_mul(acc, m0),
                                           shift), signed, relu)


def quantize_multiplier(scale: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``(m0, shift)`` with
    ``scale ~= m0 * 2**-31 * 2**-shift``, ``m0`` in [2**30, 2**31) (Q31, i.e.
    [0.5, 1)) and ``shift`` a right shift.

    ``q, e = frexp(scale)`` (``scale = q * 2**e``, ``q`` in [0.5, 1)),
    ``m0 = round_half_away(q * 2**31)``; when that rounds up to ``2**31``, ``m0`` is
    halved and ``e`` incremented; ``shift = -e``. ``scale == 0`` or ``shift > 31``
    (scale below about 2**-32) gives ``(0, 0)``, as TFLite does. ``shift < 0``
    (``scale >= 1``) is TFLite's left shift, which :func:`requantize_multiplier`
    does not take; ``scale`` must be finite and >= 0.
    """
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be finite and >= 0, not {scale!r}")
    if scale == 0:
        return 0, 0
    q, e = math.frexp(scale)
    m0 = math.floor(q * 2.0 ** 31 + 0.5)            # exact: q * 2**31 has <= 53 bits
    if m0 == 1 << 31:
        m0 //= 2
        e += 1
    if -e > 31:
        return 0, 0
    return int(m0), -e
