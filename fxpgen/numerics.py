"""Fixed-point arithmetic of fxpgen: the bit-exact contract (DESIGN section 1).

A tensor is int8 data plus a format ``(signed, fl)``; its real value is
``q * 2**-fl``. Signed data lives in the narrow range [-127, 127] (-128 is never
produced), unsigned data in [0, 255]. Rescaling between formats is a barrel shift
with round-half-to-even; nothing here multiplies by anything but a power of two,
except the conventional (gemmlowp / TFLite) requantizer at the end of the module,
which fxpgen does not use: it is the reference of ``hw/requant_mult.py``, built only
to measure what the shift saves.

Every function works on numpy integer arrays (or Python ints) and returns
``np.int64`` arrays. The hardware, the instruction-level simulator and the compiler
all call these functions; nobody re-implements rounding or saturation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Format", "SIGNED_MIN", "SIGNED_MAX", "UNSIGNED_MAX",
    "out_range", "saturate", "saturate_acc", "acc_range",
    "shift_round_half_even", "shift_left_saturate", "requantize",
    "quantize", "dequantize", "relu", "align", "residual_add", "add_saturate",
    "aligned_add", "bias_quantize", "matmul_accumulate", "maximum", "fl_from_std", "fl_grid_search",
    "avgpool_fl_shift",
    "INT32_MIN", "INT32_MAX", "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot", "requantize_multiplier", "quantize_multiplier",
]

SIGNED_MIN = -127
SIGNED_MAX = 127
UNSIGNED_MAX = 255
#: Largest fractional length of a signed and an unsigned format.
SIGNED_FL_MAX = 7
UNSIGNED_FL_MAX = 8


@dataclass(frozen=True)
class Format:
    """Fixed-point format of an 8-bit tensor: value = q * 2**-fl."""

    signed: bool
    fl: int

    def __post_init__(self):
        hi = SIGNED_FL_MAX if self.signed else UNSIGNED_FL_MAX
        if not isinstance(self.fl, (int, np.integer)) or not 0 <= self.fl <= hi:
            kind = "signed" if self.signed else "unsigned"
            raise ValueError(f"fl of a {kind} format must be in 0..{hi}, not {self.fl!r}")

    @property
    def lo(self) -> int:
        return SIGNED_MIN if self.signed else 0

    @property
    def hi(self) -> int:
        return SIGNED_MAX if self.signed else UNSIGNED_MAX

    def __str__(self) -> str:
        return f"{'s' if self.signed else 'u'}8.{self.fl}"


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def out_range(signed: bool, relu: bool = False) -> tuple[int, int]:
    """Inclusive range of an 8-bit output: [-127, 127] signed, [0, 255] unsigned;
    ReLU raises the lower bound to 0."""
    lo, hi = (SIGNED_MIN, SIGNED_MAX) if signed else (0, UNSIGNED_MAX)
    return (0 if relu else lo), hi


def saturate(x, signed: bool, relu: bool = False) -> np.ndarray:
    """Clamp to the 8-bit output range (see :func:`out_range`)."""
    lo, hi = out_range(signed, relu)
    return np.clip(_i64(x), lo, hi)


def acc_range(bits: int = 32) -> tuple[int, int]:
    """Inclusive range of a signed ``bits``-wide accumulator."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def saturate_acc(x, bits: int = 32) -> np.ndarray:
    """Clamp to a signed ``bits``-wide accumulator (two's complement range)."""
    lo, hi = acc_range(bits)
    return np.clip(_i64(x), lo, hi)


def relu(x) -> np.ndarray:
    return np.maximum(_i64(x), 0)


def shift_round_half_even(x, n) -> np.ndarray:
    """``x * 2**-n`` rounded to the nearest integer, ties to even.

    ``n > 0``: arithmetic right shift with round-half-to-even; ``n <= 0``: exact left
    shift by ``-n``. ``x`` must fit in 48 bits and ``-n`` in 0..15 so the result fits
    in int64 (use :func:`shift_left_saturate` for larger left shifts).
    """
    x = _i64(x)
    n = _i64(n)
    x, n = np.broadcast_arrays(x, n)
    right = np.maximum(n, 0)
    left = np.maximum(-n, 0)
    if np.any(left > 15):
        raise ValueError("left shifts above 15 can overflow int64; use shift_left_saturate")
    q = x >> right                                   # floor(x / 2**n)
    rem = x - (q << right)                           # 0 <= rem < 2**n
    half = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
    up = (right > 0) & ((rem > half) | ((rem == half) & ((q & 1) == 1)))
    return np.where(n > 0, q + up, x << left)


def shift_left_saturate(x, s, bits: int = 32) -> np.ndarray:
    """``saturate_acc(x * 2**s, bits)`` for ``x`` in the accumulator range and
    ``s >= 0``, without int64 overflow."""
    x = _i64(x)
    s = np.minimum(_i64(s), 63)
    x, s = np.broadcast_arrays(x, s)
    lo, hi = acc_range(bits)
    # Compare before shifting: x << s overflows exactly when x lies outside
    # [lo >> s, hi >> s].
    over = x > (hi >> s)
    under = x < (lo >> s)
    safe = np.where(over | under, 0, x)
    return np.clip(np.where(over, hi, np.where(under, lo, safe << s)), lo, hi)


def requantize(acc, n, signed: bool, relu: bool = False) -> np.ndarray:
    """Rescale an accumulator to an 8-bit format: shift by ``n = fl_in - fl_out``
    (round-half-even right shift for n > 0, left shift for n <= 0), then saturate to
    the output range. ``n`` may be per element (per column) and lies in -32..31.

    A left shift of more than 9 bits saturates any nonzero value, so it is computed
    as a shift by min(-n, 15): the result is the same.
    """
    acc = _i64(acc)
    n = np.maximum(_i64(n), -15)
    return saturate(shift_round_half_even(acc, n), signed, relu)


def quantize(x, fmt: Format) -> np.ndarray:
    """Float to 8-bit fixed point: ``clamp(round_half_even(x * 2**fl), lo, hi)``."""
    scaled = np.asarray(x, dtype=np.float64) * float(2 ** fmt.fl)
    return np.clip(np.rint(scaled), fmt.lo, fmt.hi).astype(np.int64)


def dequantize(q, fmt: Format) -> np.ndarray:
    """8-bit fixed point to float: ``q * 2**-fl``."""
    return _i64(q).astype(np.float64) * 2.0 ** -fmt.fl


def bias_quantize(b, fl_x: int, fl_w, bits: int = 32) -> np.ndarray:
    """Bias in the accumulator format: ``round_half_even(b * 2**(fl_x + fl_w))``,
    saturated to the accumulator."""
    scale = np.exp2(np.asarray(fl_x + _i64(fl_w), dtype=np.float64))
    lo, hi = acc_range(bits)
    # Clamp while still float: casting a value beyond int64 (or inf) to int64 is
    # undefined and gives INT64_MIN, i.e. the wrong saturation sign.
    return saturate_acc(np.clip(np.rint(np.asarray(b, dtype=np.float64) * scale), lo, hi), bits)


def add_saturate(a, b, bits: int = 32) -> np.ndarray:
    """``a + b`` saturated to a signed ``bits``-wide accumulator."""
    return saturate_acc(_i64(a) + _i64(b), bits)


def matmul_accumulate(acc, x, w, bits: int = 32) -> np.ndarray:
    """One array pass: ``saturate_acc(acc + x @ w)``.

    ``x``: (..., K) int8/uint8 activations, ``w``: (K, N) int8 weights, ``acc``:
    (..., N). The dot product itself is exact (it fits in 48 bits for K <= 2**14);
    only the addition to the accumulator saturates.
    """
    return add_saturate(acc, _i64(x) @ _i64(w), bits)


def align(x, s, bits: int = 32) -> np.ndarray:
    """Residual alignment: left shift by ``s >= 0`` with accumulator saturation."""
    return shift_left_saturate(x, s, bits)


def aligned_add(a, a_shift, b, b_shift, bits: int = 32) -> np.ndarray:
    """``saturate_acc(a * 2**a_shift + b * 2**b_shift)``: the operand alignment and
    saturating add of REQUANT's residual path and of ADD.

    Each shifted operand is first saturated to ``bits + 1`` bits (what the hardware
    keeps), then the sum saturates to ``bits``. When at most one operand is shifted
    this equals saturating the exact sum: an aligned value beyond +-2**bits saturates
    the sum whatever the other, in-range, operand is.
    """
    return add_saturate(align(a, a_shift, bits + 1), align(b, b_shift, bits + 1), bits)


def residual_add(a, fl_a, b, fl_b, bits: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Residual add: align both operands to the larger fractional length by left
    shift, then add with saturation. Returns ``(sum, fl)``; requantize the sum with
    ``n = fl - fl_out`` afterwards."""
    fl_a = _i64(fl_a)
    fl_b = _i64(fl_b)
    fl = np.maximum(fl_a, fl_b)
    return aligned_add(a, fl - fl_a, b, fl - fl_b, bits), fl


def maximum(a, b) -> np.ndarray:
    """Element-wise max (max pooling keeps the format)."""
    return np.maximum(_i64(a), _i64(b))


def fl_from_std(std: float, signed: bool) -> int:
    """F8Net's format rule: ``floor(log2(40 / std))`` for signed data,
    ``floor(log2(70 / std))`` for unsigned data (std taken before the ReLU),
    clamped to the valid fractional lengths."""
    hi = SIGNED_FL_MAX if signed else UNSIGNED_FL_MAX
    if np.isnan(std) or std <= 0:
        return hi                       # no spread: finest format (log2(c / 0) = +inf)
    # floor(log2(c / std)) >= f  <=>  std * 2**f <= c; the product is exact in
    # float64 (a power-of-two scaling), unlike c / std and log2, whose rounding
    # gave an fl one too large for std just above c * 2**-f (and crashed on
    # subnormal std, where c / std overflows to inf).
    c = 40.0 if signed else 70.0
    fl = 0
    for f in range(1, hi + 1):
        if float(std) * 2.0 ** f <= c:
            fl = f
    return fl


def fl_grid_search(x, signed: bool) -> int:
    """The fractional length that minimises the RMS quantization error of ``x``
    over all valid ones (ties go to the larger fl)."""
    x = np.asarray(x, dtype=np.float64)
    hi = SIGNED_FL_MAX if signed else UNSIGNED_FL_MAX
    best_fl, best_err = 0, np.inf
    for fl in range(hi + 1):
        fmt = Format(signed, fl)
        err = float(np.sqrt(np.mean((dequantize(quantize(x, fmt), fmt) - x) ** 2)))
        if err <= best_err:
            best_fl, best_err = fl, err
    return best_fl


def avgpool_fl_shift(window: int) -> int | None:
    """Average pooling over ``window`` elements is a sum whose fl grows by
    ``log2(window)`` when the window is a power of two; returns that increment, or
    None when the correction must be folded into the preceding layer's weights."""
    if window > 0 and window & (window - 1) == 0:
        return int(window).bit_length() - 1
    return None


# The conventional requantizer (gemmlowp / TFLite), kept for comparison with the shift
# unit: fxpgen's hardware never multiplies by anything but a power of two, but
# hw/requant_mult.py builds this one so its cost can be measured (bench/requant_area.py).

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
