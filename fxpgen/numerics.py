"""Fixed-point arithmetic of fxpgen: the bit-exact contract (docs/numerics.md).

A tensor is int8 data plus a format ``(signed, fl)``; its real value is
``q * 2**-fl``. Signed data lives in the narrow range [-127, 127] (-128 is never
produced), unsigned data in [0, 255]. Rescaling between formats is a barrel shift
with round-half-to-even; nothing here multiplies by anything but a power of two.
(The conventional multiplier requantizer fxpgen is measured against is a baseline,
kept apart: ``bench/baselines/gemmlowp.py``.)

Every function works on numpy integer arrays (or Python ints) and returns
``np.int64`` arrays. The hardware, the instruction-level simulator and the compiler
all call these functions; nobody re-implements rounding or saturation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Format", "FL_MAX", "SIGNED_FL_MAX", "UNSIGNED_FL_MAX",
    "SIGNED_MIN", "SIGNED_MAX", "UNSIGNED_MAX",
    "out_range", "saturate", "saturate_acc", "acc_range",
    "shift_round_half_even", "shift_left_saturate", "requantize",
    "quantize", "dequantize", "relu", "align", "residual_add", "add_saturate",
    "aligned_add", "acc_bound", "bias_quantize", "matmul_accumulate", "maximum", "fl_from_std", "fl_grid_search",
    "avgpool_fl_shift", "WEIGHT_BITS", "weight_range", "quantize_weight",
]

SIGNED_MIN = -127
SIGNED_MAX = 127
UNSIGNED_MAX = 255
#: Finest fractional length of a signed and an unsigned format whose range reaches 1
#: (s8.7 holds (-1, 1), u8.8 [0, 1)): where F8Net's format rules clamp by default.
SIGNED_FL_MAX = 7
UNSIGNED_FL_MAX = 8
#: Finest fractional length of any format. Only differences of fractional lengths
#: reach the hardware (its shift fields), so the bound is not the hardware's: it lets
#: deep stacks whose activations shrink to 1e-15 keep their 8 bits (random-weight
#: EfficientNet-B0 needs s8.52, docs/numerics.md) while 2**fl stays exact in float64.
FL_MAX = 64
#: Widths a layer's weights may be stored in (FxP-QNet's mixed precision). Narrow
#: weights are packed in the weight stream and the weight buffer and sign-extended to
#: int8 on their way into the array, so the multipliers never change.
WEIGHT_BITS = (8, 6, 4, 2)


@dataclass(frozen=True)
class Format:
    """Fixed-point format of an 8-bit tensor: value = q * 2**-fl."""

    signed: bool
    fl: int

    def __post_init__(self):
        if not isinstance(self.fl, (int, np.integer)) or not 0 <= self.fl <= FL_MAX:
            kind = "signed" if self.signed else "unsigned"
            raise ValueError(f"fl of a {kind} format must be in 0..{FL_MAX}, not {self.fl!r}")

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


def weight_range(bits: int = 8) -> tuple[int, int]:
    """Inclusive range of a ``bits``-wide weight: symmetric, as int8 data's, so that
    negating a weight never saturates: [-127, 127] at 8 bits, [-1, 1] at 2."""
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weight width must be one of {WEIGHT_BITS}, not {bits!r}")
    hi = (1 << (bits - 1)) - 1
    return -hi, hi


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


def quantize_weight(w, fl, bits: int = 8) -> np.ndarray:
    """Float weights to ``bits``-wide integers on the grid ``2**-fl``:
    ``clamp(round_half_even(w * 2**fl), weight_range(bits))``. ``fl`` (0..FL_MAX) may be
    an array broadcasting against ``w`` (per output channel). At 8 bits this is
    :func:`quantize` into ``s8.fl``."""
    lo, hi = weight_range(bits)
    fl = _i64(fl)
    if fl.size and (fl.min() < 0 or fl.max() > FL_MAX):
        raise ValueError(f"weight fl must be in 0..{FL_MAX}, not {fl.min()}..{fl.max()}")
    scaled = np.asarray(w, dtype=np.float64) * np.exp2(fl.astype(np.float64))
    return np.clip(np.rint(scaled), lo, hi).astype(np.int64)


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


def acc_bound(weight, bias, signed: bool) -> np.ndarray:
    """Per output channel, the largest ``|sum(w * x) + b|`` any input ``x`` in an 8-bit
    format (``signed`` or not) can give: ``sum|w| * max|x| + |b|``, with ``max|x|``
    127 signed, 255 unsigned. ``weight``: integers (Cout, ...); ``bias``: (Cout,).
    The accumulator cannot saturate where this is within :func:`acc_range`."""
    w = _i64(weight)
    lo, hi = out_range(signed)
    return np.abs(w).reshape(w.shape[0], -1).sum(axis=1) * max(-lo, hi) + np.abs(_i64(bias))


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


def fl_from_std(std: float, signed: bool, fl_max: int | None = None) -> int:
    """F8Net's format rule: ``floor(log2(40 / std))`` for signed data,
    ``floor(log2(70 / std))`` for unsigned data (std taken before the ReLU),
    clamped to 0..``fl_max`` (by default :data:`SIGNED_FL_MAX` or
    :data:`UNSIGNED_FL_MAX`)."""
    hi = _fl_max(signed, fl_max)
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


def fl_grid_search(x, signed: bool, fl_max: int | None = None, bits: int = 8) -> int:
    """The fractional length in 0..``fl_max`` (by default :data:`SIGNED_FL_MAX` or
    :data:`UNSIGNED_FL_MAX`) that minimises the RMS quantization error of ``x``
    (ties go to the larger fl). Signed data may be ``bits``-wide weights
    (:func:`quantize_weight`); unsigned data are 8-bit."""
    x = np.asarray(x, dtype=np.float64)
    hi = _fl_max(signed, fl_max)
    if bits != 8 and not signed:
        raise ValueError(f"unsigned data are 8-bit; only signed weights may be {bits}-bit")
    best_fl, best_err = 0, np.inf
    for fl in range(hi + 1):
        q = quantize_weight(x, fl, bits) if signed else quantize(x, Format(False, fl))
        err = float(np.sqrt(np.mean((q * 2.0 ** -fl - x) ** 2)))
        if err <= best_err:
            best_fl, best_err = fl, err
    return best_fl


def _fl_max(signed: bool, fl_max: int | None) -> int:
    if fl_max is None:
        return SIGNED_FL_MAX if signed else UNSIGNED_FL_MAX
    if not 0 <= fl_max <= FL_MAX:
        raise ValueError(f"fl_max must be in 0..{FL_MAX}, not {fl_max}")
    return fl_max


def avgpool_fl_shift(window: int) -> int | None:
    """Average pooling over ``window`` elements is a sum whose fl grows by
    ``log2(window)`` when the window is a power of two; returns that increment, or
    None when the correction must be folded into the preceding layer's weights."""
    if window > 0 and window & (window - 1) == 0:
        return int(window).bit_length() - 1
    return None
