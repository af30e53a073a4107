"""Property tests of fxpgen.numerics against the exact definitions of docs/numerics.md.

Every reference below is written with Python big ints, ``fractions.Fraction`` and the
built-in ``round`` (round-half-to-even on Fractions); results are compared as integers,
exactly. Nothing is compared with a float tolerance.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fxpgen import numerics as nm
from fxpgen.numerics import Format

# --------------------------------------------------------------------------------------
# Exact references
# --------------------------------------------------------------------------------------

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
INT48_MIN, INT48_MAX = -(2 ** 47), 2 ** 47 - 1


def clamp(v: int, lo: int, hi: int) -> int:
    return min(max(v, lo), hi)


def ref_range(signed: bool, relu: bool = False) -> tuple[int, int]:
    lo, hi = (-127, 127) if signed else (0, 255)
    return (0 if relu else lo), hi


def ref_acc_range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def ref_shift(x: int, n: int) -> int:
    """round_half_even(x * 2**-n), exactly."""
    r = round(Fraction(x) * Fraction(2) ** -n)
    assert isinstance(r, int)
    return r


def ref_quantize(x: float, signed: bool, fl: int) -> int:
    lo, hi = ref_range(signed)
    return clamp(round(Fraction(x) * 2 ** fl), lo, hi)


def ref_floor_log2(r: Fraction) -> int:
    """floor(log2(r)) for a positive rational, by integer arithmetic only."""
    assert r > 0
    e = r.numerator.bit_length() - r.denominator.bit_length()
    while Fraction(2) ** e > r:
        e -= 1
    while Fraction(2) ** (e + 1) <= r:
        e += 1
    return e


def ref_fl_from_std(std: float, signed: bool) -> int:
    c, hi = (40, 7) if signed else (70, 8)
    return clamp(ref_floor_log2(Fraction(c) / Fraction(std)), 0, hi)


def as_int(a) -> int:
    """A 0-d int64 result as a Python int (and check the dtype on the way)."""
    a = np.asarray(a)
    assert a.dtype == np.int64, a.dtype
    assert a.shape == ()
    return int(a)


def as_list(a) -> list:
    a = np.asarray(a)
    assert a.dtype == np.int64, a.dtype
    return a.tolist()


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None,
               suppress_health_check=[HealthCheck.too_slow])

EXTREMES_48 = [0, 1, -1, 2, -2, INT32_MIN, INT32_MAX, INT32_MIN + 1, INT32_MAX - 1,
               INT48_MIN, INT48_MAX, INT48_MIN + 1, INT48_MAX - 1]
int32s = st.one_of(st.sampled_from([0, 1, -1, INT32_MIN, INT32_MAX, INT32_MIN + 1,
                                    INT32_MAX - 1]),
                   st.integers(INT32_MIN, INT32_MAX))
int48s = st.one_of(st.sampled_from(EXTREMES_48), st.integers(INT48_MIN, INT48_MAX),
                   st.integers(-(2 ** 12), 2 ** 12))
signeds = st.booleans()
valid_formats = st.one_of(
    st.builds(Format, st.just(True), st.integers(0, 7)),
    st.builds(Format, st.just(False), st.integers(0, 8)),
)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def acc_value(draw, bits):
    """A value of a signed ``bits``-wide accumulator, biased towards its limits."""
    lo, hi = ref_acc_range(bits)
    return draw(st.one_of(
        st.sampled_from([lo, hi, lo + 1, hi - 1, 0, 1, -1]),
        st.integers(lo, hi),
        st.integers(hi - 2 ** 10, hi),
        st.integers(lo, lo + 2 ** 10),
    ))


# --------------------------------------------------------------------------------------
# shift_round_half_even
# --------------------------------------------------------------------------------------

@FAST
@given(x=int48s, n=st.integers(1, 31))
def test_right_shift_rounds_half_even(x, n):
    assert as_int(nm.shift_round_half_even(x, n)) == ref_shift(x, n)


@FAST
@given(x=int48s, n=st.integers(-15, 0))
def test_left_shift_is_exact(x, n):
    assert as_int(nm.shift_round_half_even(x, n)) == x * 2 ** -n


@FAST
@given(k=st.integers(0, 2 ** 15), n=st.integers(1, 31), negative=st.booleans())
def test_exact_ties_go_to_even(k, n, negative):
    x = (2 * k + 1) * 2 ** (n - 1)          # x / 2**n = k + 1/2 exactly
    if negative:
        x = -x
    assume(INT48_MIN <= x <= INT48_MAX)
    got = as_int(nm.shift_round_half_even(x, n))
    assert got == ref_shift(x, n)
    assert got % 2 == 0
    assert abs(Fraction(x, 2 ** n) - got) == Fraction(1, 2)


@pytest.mark.parametrize("x", EXTREMES_48)
@pytest.mark.parametrize("n", [-15, -1, 0, 1, 2, 15, 16, 30, 31])
def test_shift_extremes(x, n):
    assert as_int(nm.shift_round_half_even(x, n)) == ref_shift(x, n)


@pytest.mark.parametrize("x, n, want", [
    (1, 1, 0), (3, 1, 2), (-1, 1, 0), (-3, 1, -2), (5, 1, 2), (-5, 1, -2),
    (6, 2, 2), (-6, 2, -2), (10, 2, 2), (-10, 2, -2), (2 ** 30, 31, 0), (3 * 2 ** 30, 31, 2),
    (-(2 ** 30), 31, 0), (-3 * 2 ** 30, 31, -2), (INT32_MIN, 31, -1), (INT32_MAX, 31, 1),
    (INT32_MIN, 32, 0), (-(2 ** 47), 47, -1),
])
def test_shift_known_values(x, n, want):
    assert as_int(nm.shift_round_half_even(x, n)) == want


def test_shift_rejects_left_shift_above_15():
    with pytest.raises(ValueError):
        nm.shift_round_half_even(1, -16)
    with pytest.raises(ValueError):
        nm.shift_round_half_even([1, 2], [0, -16])


@FEW
@given(xs=st.lists(int48s, min_size=1, max_size=12),
       ns=st.lists(st.integers(-15, 31), min_size=1, max_size=6))
def test_shift_broadcasts_per_element_amounts(xs, ns):
    got = nm.shift_round_half_even(np.array(xs, dtype=np.int64)[None, :],
                                   np.array(ns, dtype=np.int64)[:, None])
    assert got.shape == (len(ns), len(xs))
    want = [[ref_shift(x, n) for x in xs] for n in ns]
    assert as_list(got) == want
    scalar = [[as_int(nm.shift_round_half_even(x, n)) for x in xs] for n in ns]
    assert scalar == want


# --------------------------------------------------------------------------------------
# Ranges and saturation
# --------------------------------------------------------------------------------------

def test_out_range_and_constants():
    assert nm.out_range(True) == (-127, 127)
    assert nm.out_range(True, relu=True) == (0, 127)
    assert nm.out_range(False) == (0, 255)
    assert nm.out_range(False, relu=True) == (0, 255)
    assert (nm.SIGNED_MIN, nm.SIGNED_MAX, nm.UNSIGNED_MAX) == (-127, 127, 255)
    assert nm.acc_range() == (INT32_MIN, INT32_MAX)
    for bits in range(2, 64):
        assert nm.acc_range(bits) == ref_acc_range(bits)


@FAST
@given(x=st.integers(-(2 ** 62), 2 ** 62) | st.integers(-300, 300),
       signed=signeds, relu=st.booleans())
def test_saturate(x, signed, relu):
    got = as_int(nm.saturate(x, signed, relu))
    assert got == clamp(x, *ref_range(signed, relu))
    assert got != -128


def test_saturate_never_produces_minus_128():
    xs = np.arange(-1000, 1000, dtype=np.int64)
    got = nm.saturate(xs, True)
    assert got.min() == -127 and got.max() == 127
    assert not np.any(got == -128)
    assert as_list(nm.saturate(xs, False)) == [clamp(x, 0, 255) for x in xs.tolist()]
    assert as_list(nm.saturate(xs, True, relu=True)) == [clamp(x, 0, 127) for x in xs.tolist()]


@FAST
@given(x=st.integers(-(2 ** 62), 2 ** 62), bits=st.integers(16, 48))
def test_saturate_acc(x, bits):
    assert as_int(nm.saturate_acc(x, bits)) == clamp(x, *ref_acc_range(bits))


@FAST
@given(x=st.integers(-(2 ** 62), 2 ** 62))
def test_relu_and_maximum(x):
    assert as_int(nm.relu(x)) == max(x, 0)


@FAST
@given(data=st.data(), bits=st.integers(16, 48))
def test_add_saturate(data, bits):
    a = data.draw(acc_value(bits))
    b = data.draw(acc_value(bits))
    assert as_int(nm.add_saturate(a, b, bits)) == clamp(a + b, *ref_acc_range(bits))


def test_add_saturate_overflows_both_ways_at_32_bits():
    assert as_int(nm.add_saturate(INT32_MAX, 1)) == INT32_MAX
    assert as_int(nm.add_saturate(INT32_MAX, INT32_MAX)) == INT32_MAX
    assert as_int(nm.add_saturate(INT32_MIN, -1)) == INT32_MIN
    assert as_int(nm.add_saturate(INT32_MIN, INT32_MIN)) == INT32_MIN
    assert as_int(nm.add_saturate(INT32_MIN, INT32_MAX)) == -1
    got = nm.add_saturate([INT32_MAX, INT32_MIN, 5], [10, -10, -7])
    assert as_list(got) == [INT32_MAX, INT32_MIN, -2]


@FAST
@given(data=st.data(), bits=st.integers(16, 48),
       s=st.one_of(st.integers(0, 63), st.sampled_from([0, 1, 15, 16, 31, 32, 47, 48, 62, 63])))
def test_shift_left_saturate(data, bits, s):
    x = data.draw(acc_value(bits))
    assert as_int(nm.shift_left_saturate(x, s, bits)) == clamp(x * 2 ** s, *ref_acc_range(bits))
    assert as_int(nm.align(x, s, bits)) == clamp(x * 2 ** s, *ref_acc_range(bits))


@pytest.mark.parametrize("x", [INT32_MIN, INT32_MIN + 1, -(2 ** 30), -(2 ** 30) - 1, -1, 0, 1,
                               2 ** 30 - 1, 2 ** 30, INT32_MAX])
@pytest.mark.parametrize("s", [0, 1, 2, 30, 31, 32, 33, 62, 63])
def test_shift_left_saturate_32_bit_edges(x, s):
    assert as_int(nm.shift_left_saturate(x, s)) == clamp(x * 2 ** s, INT32_MIN, INT32_MAX)


@FEW
@given(data=st.data(), bits=st.integers(16, 48))
def test_shift_left_saturate_broadcasts(data, bits):
    xs = data.draw(st.lists(acc_value(bits), min_size=1, max_size=8))
    ss = data.draw(st.lists(st.integers(0, 63), min_size=1, max_size=5))
    lo, hi = ref_acc_range(bits)
    got = nm.shift_left_saturate(np.array(xs)[:, None], np.array(ss)[None, :], bits)
    assert as_list(got) == [[clamp(x * 2 ** s, lo, hi) for s in ss] for x in xs]


# --------------------------------------------------------------------------------------
# requantize
# --------------------------------------------------------------------------------------

def ref_requantize(acc: int, n: int, signed: bool, relu: bool) -> int:
    return clamp(ref_shift(acc, n), *ref_range(signed, relu))


@FAST
@given(acc=int32s, n=st.integers(-32, 31), signed=signeds, relu=st.booleans())
def test_requantize(acc, n, signed, relu):
    assert as_int(nm.requantize(acc, n, signed, relu)) == ref_requantize(acc, n, signed, relu)


@FAST
@given(acc=st.integers(-2000, 2000), n=st.integers(-32, 31), signed=signeds,
       relu=st.booleans())
def test_requantize_small_accumulators(acc, n, signed, relu):
    # Small values exercise the unsaturated outputs and the ties most often.
    assert as_int(nm.requantize(acc, n, signed, relu)) == ref_requantize(acc, n, signed, relu)


@FEW
@given(acc=int48s, n=st.integers(-32, 31), signed=signeds, relu=st.booleans())
def test_requantize_48_bit_accumulators(acc, n, signed, relu):
    assert as_int(nm.requantize(acc, n, signed, relu)) == ref_requantize(acc, n, signed, relu)


@FEW
@given(data=st.data(), signed=signeds, relu=st.booleans())
def test_requantize_per_column_shift(data, signed, relu):
    rows = data.draw(st.integers(1, 4))
    cols = data.draw(st.integers(1, 6))
    acc = data.draw(st.lists(st.lists(int32s | st.integers(-5000, 5000),
                                      min_size=cols, max_size=cols),
                             min_size=rows, max_size=rows))
    ns = data.draw(st.lists(st.integers(-32, 31), min_size=cols, max_size=cols))
    got = nm.requantize(np.array(acc, dtype=np.int64), np.array(ns, dtype=np.int64),
                        signed, relu)
    want = [[ref_requantize(a, n, signed, relu) for a, n in zip(row, ns)] for row in acc]
    assert as_list(got) == want
    scalar = [[as_int(nm.requantize(a, n, signed, relu)) for a, n in zip(row, ns)]
              for row in acc]
    assert scalar == want


# --------------------------------------------------------------------------------------
# Formats, quantize, dequantize
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("signed", [True, False])
def test_format_validation(signed):
    # Any fl in 0..FL_MAX: only differences of fl reach the hardware's shift fields.
    hi = nm.FL_MAX
    for fl in range(-10, hi + 10):
        if 0 <= fl <= hi:
            fmt = Format(signed, fl)
            assert fmt.fl == fl
            assert (fmt.lo, fmt.hi) == ref_range(signed)
            assert str(fmt) == f"{'s' if signed else 'u'}8.{fl}"
            assert Format(signed, np.int64(fl)).fl == fl
        else:
            with pytest.raises(ValueError):
                Format(signed, fl)
    for bad in (1.0, "1", None, 0.5):
        with pytest.raises(ValueError):
            Format(signed, bad)


@settings(max_examples=400, deadline=None)
@given(x=finite_floats, fmt=valid_formats)
@example(x=0.5, fmt=Format(True, 0))
@example(x=-2.5, fmt=Format(True, 0))
@example(x=127.5, fmt=Format(True, 0))
@example(x=-127.5, fmt=Format(True, 0))
@example(x=-128.0, fmt=Format(True, 0))
@example(x=255.5 / 256, fmt=Format(False, 8))
@example(x=-0.0, fmt=Format(False, 8))
@example(x=5e-324, fmt=Format(False, 8))
@example(x=1.7976931348623157e308, fmt=Format(False, 8))
@example(x=-1.7976931348623157e308, fmt=Format(True, 7))
def test_quantize(x, fmt):
    with np.errstate(over="ignore"):                 # x * 2**fl may overflow to inf
        assert as_int(nm.quantize(x, fmt)) == ref_quantize(x, fmt.signed, fmt.fl)


@FAST
@given(k=st.integers(-300, 300), fmt=valid_formats)
def test_quantize_exact_ties(k, fmt):
    x = (k + 0.5) * 2.0 ** -fmt.fl                  # exactly halfway between two codes
    assert Fraction(x) * 2 ** fmt.fl == Fraction(2 * k + 1, 2)
    got = as_int(nm.quantize(x, fmt))
    assert got == ref_quantize(x, fmt.signed, fmt.fl)
    if fmt.lo < got < fmt.hi:
        assert got % 2 == 0


@FEW
@given(xs=st.lists(finite_floats, min_size=1, max_size=16), fmt=valid_formats)
def test_quantize_vectorised(xs, fmt):
    with np.errstate(over="ignore"):
        got = nm.quantize(np.array(xs), fmt)
        scalar = [as_int(nm.quantize(x, fmt)) for x in xs]
    assert as_list(got) == [ref_quantize(x, fmt.signed, fmt.fl) for x in xs]
    assert as_list(got) == scalar


@FAST
@given(data=st.data(), fmt=valid_formats)
def test_dequantize_is_exact(data, fmt):
    q = data.draw(st.integers(fmt.lo, fmt.hi))
    v = nm.dequantize(q, fmt)
    assert np.asarray(v).dtype == np.float64
    assert Fraction(float(v)) == Fraction(q, 2 ** fmt.fl)
    assert as_int(nm.quantize(v, fmt)) == q                     # round trip


def test_dequantize_all_codes():
    for signed, hi in ((True, 7), (False, 8)):
        for fl in range(hi + 1):
            fmt = Format(signed, fl)
            qs = np.arange(fmt.lo, fmt.hi + 1)
            vs = nm.dequantize(qs, fmt)
            assert [Fraction(v) for v in vs.tolist()] == [Fraction(q, 2 ** fl) for q in qs.tolist()]
            assert as_list(nm.quantize(vs, fmt)) == qs.tolist()


# --------------------------------------------------------------------------------------
# Bias, matmul, residual add, max
# --------------------------------------------------------------------------------------

def ref_bias(b: float, fl_x: int, fl_w: int, bits: int) -> int:
    return clamp(round(Fraction(b) * 2 ** (fl_x + fl_w)), *ref_acc_range(bits))


@settings(max_examples=300, deadline=None)
@given(b=finite_floats | st.floats(-1e6, 1e6), fl_x=st.integers(0, 8), fl_w=st.integers(0, 7),
       bits=st.sampled_from([32, 16, 24, 40, 48]))
@example(b=1e30, fl_x=3, fl_w=4, bits=32)                   # far above the accumulator
@example(b=-1e30, fl_x=3, fl_w=4, bits=32)
@example(b=2.0 ** 63, fl_x=0, fl_w=0, bits=32)
@example(b=1.7976931348623157e308, fl_x=8, fl_w=7, bits=48)
@example(b=0.5, fl_x=0, fl_w=0, bits=32)
@example(b=-1.5, fl_x=0, fl_w=0, bits=32)
@example(b=65535.99998474121, fl_x=8, fl_w=7, bits=32)     # 2**31 - 0.5 after scaling
def test_bias_quantize(b, fl_x, fl_w, bits):
    with np.errstate(over="ignore"):
        got = as_int(nm.bias_quantize(b, fl_x, fl_w, bits))
    assert got == ref_bias(b, fl_x, fl_w, bits)


@FEW
@given(data=st.data(), fl_x=st.integers(0, 8))
def test_bias_quantize_per_channel(data, fl_x):
    n = data.draw(st.integers(1, 8))
    bs = data.draw(st.lists(st.floats(-1e5, 1e5) | st.integers(-100, 100).map(lambda k: k / 4),
                            min_size=n, max_size=n))
    fl_ws = data.draw(st.lists(st.integers(0, 7), min_size=n, max_size=n))
    got = nm.bias_quantize(np.array(bs), fl_x, np.array(fl_ws))
    want = [ref_bias(b, fl_x, fw, 32) for b, fw in zip(bs, fl_ws)]
    assert as_list(got) == want
    assert [as_int(nm.bias_quantize(b, fl_x, fw)) for b, fw in zip(bs, fl_ws)] == want


@FEW
@given(data=st.data(), x_signed=signeds, bits=st.sampled_from([32, 32, 16, 20, 48]))
def test_matmul_accumulate(data, x_signed, bits):
    m = data.draw(st.integers(1, 3))
    k = data.draw(st.integers(1, 8))
    n = data.draw(st.integers(1, 3))
    xlo, xhi = ref_range(x_signed)
    x = data.draw(st.lists(st.lists(st.integers(xlo, xhi) | st.sampled_from([xlo, xhi]),
                                    min_size=k, max_size=k), min_size=m, max_size=m))
    w = data.draw(st.lists(st.lists(st.integers(-127, 127) | st.sampled_from([-127, 127]),
                                    min_size=n, max_size=n), min_size=k, max_size=k))
    acc = data.draw(st.lists(st.lists(acc_value(bits), min_size=n, max_size=n),
                             min_size=m, max_size=m))
    lo, hi = ref_acc_range(bits)
    want = [[clamp(acc[i][j] + sum(x[i][t] * w[t][j] for t in range(k)), lo, hi)
             for j in range(n)] for i in range(m)]
    xdt = np.int8 if x_signed else np.uint8
    got = nm.matmul_accumulate(np.array(acc, dtype=np.int64), np.array(x, dtype=xdt),
                               np.array(w, dtype=np.int8), bits)
    assert as_list(got) == want


def test_matmul_accumulate_saturates_near_limits():
    x = np.full((1, 64), 255, dtype=np.uint8)
    w = np.full((64, 2), 127, dtype=np.int8)
    w[:, 1] = -127
    dot = 64 * 255 * 127
    acc = np.array([[INT32_MAX - 10, INT32_MIN + 10]])
    assert as_list(nm.matmul_accumulate(acc, x, w)) == [[INT32_MAX, INT32_MIN]]
    acc = np.array([[INT32_MIN, INT32_MAX]])           # moves away from the limit: exact
    assert as_list(nm.matmul_accumulate(acc, x, w)) == [[INT32_MIN + dot, INT32_MAX - dot]]


def ref_residual(a: int, fl_a: int, b: int, fl_b: int, bits: int) -> tuple[int, int]:
    fl = max(fl_a, fl_b)
    exact = (Fraction(a, 2 ** fl_a) + Fraction(b, 2 ** fl_b)) * 2 ** fl
    assert exact.denominator == 1
    return clamp(int(exact), *ref_acc_range(bits)), fl


@FAST
@given(data=st.data(), fl_a=st.integers(0, 15), fl_b=st.integers(0, 15),
       bits=st.sampled_from([32, 32, 16, 24, 48]))
def test_residual_add(data, fl_a, fl_b, bits):
    a = data.draw(acc_value(bits))
    b = data.draw(acc_value(bits))
    s, fl = nm.residual_add(a, fl_a, b, fl_b, bits)
    assert (as_int(s), as_int(fl)) == ref_residual(a, fl_a, b, fl_b, bits)


def test_residual_add_overflowing_alignment_is_exact():
    # The aligned operand does not fit in 32 bits, but the exact sum does (or only
    # just saturates): the aligned value must not be clamped before the add.
    s, fl = nm.residual_add(2 ** 30 - 1, 0, INT32_MIN, 2)      # 2**32 - 4 - 2**31
    assert (as_int(s), as_int(fl)) == (2 ** 31 - 4, 2)
    s, fl = nm.residual_add(2 ** 30, 0, INT32_MIN, 2)          # 2**31: saturates
    assert (as_int(s), as_int(fl)) == (INT32_MAX, 2)
    s, fl = nm.residual_add(INT32_MAX, 2, -(2 ** 30) + 1, 0)   # -2**32 + 4 + 2**31 - 1
    assert as_int(s) == -(2 ** 31) + 3
    s, fl = nm.residual_add(INT32_MIN, 3, -(2 ** 29), 0)
    assert as_int(s) == INT32_MIN


@FEW
@given(data=st.data(), out_fmt=valid_formats, relu=st.booleans())
def test_residual_block_then_requantize(data, out_fmt, relu):
    """Per-element formats, broadcasting, and the requantize after the add."""
    n = data.draw(st.integers(1, 8))
    a = data.draw(st.lists(acc_value(32), min_size=n, max_size=n))
    b = data.draw(st.lists(acc_value(32), min_size=n, max_size=n))
    fa = data.draw(st.lists(st.integers(0, 15), min_size=n, max_size=n))
    fb = data.draw(st.integers(0, 15))
    s, fl = nm.residual_add(np.array(a), np.array(fa), np.array(b), fb)
    ref = [ref_residual(ai, fai, bi, fb, 32) for ai, fai, bi in zip(a, fa, b)]
    assert as_list(s) == [r[0] for r in ref]
    assert as_list(fl) == [r[1] for r in ref]
    y = nm.requantize(s, fl - out_fmt.fl, out_fmt.signed, relu)
    assert as_list(y) == [ref_requantize(r[0], r[1] - out_fmt.fl, out_fmt.signed, relu)
                          for r in ref]


@FAST
@given(a=st.lists(st.integers(-(2 ** 40), 2 ** 40), min_size=1, max_size=8), data=st.data())
def test_maximum(a, data):
    b = data.draw(st.lists(st.integers(-(2 ** 40), 2 ** 40), min_size=len(a), max_size=len(a)))
    assert as_list(nm.maximum(a, b)) == [max(x, y) for x, y in zip(a, b)]
    assert [as_int(nm.maximum(x, y)) for x, y in zip(a, b)] == [max(x, y) for x, y in zip(a, b)]
    assert as_list(nm.relu(a)) == [max(x, 0) for x in a]


# --------------------------------------------------------------------------------------
# Format choice
# --------------------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(std=st.floats(min_value=5e-324, max_value=1.7976931348623157e308) | st.floats(0.01, 1000),
       signed=signeds)
@example(std=1.25 + 2 ** -52, signed=True)          # just above 40 / 32
@example(std=5e-324, signed=True)                   # 40 / std overflows to inf
def test_fl_from_std(std, signed):
    assert nm.fl_from_std(std, signed) == ref_fl_from_std(std, signed)


@pytest.mark.parametrize("signed, c", [(True, 40.0), (False, 70.0)])
@pytest.mark.parametrize("k", range(-3, 12))
def test_fl_from_std_boundaries(signed, c, k):
    std = c * 2.0 ** -k                         # log2(c / std) = k exactly
    for s in (np.nextafter(std, 0.0), std, np.nextafter(std, np.inf)):
        assert nm.fl_from_std(float(s), signed) == ref_fl_from_std(float(s), signed)
    hi = 7 if signed else 8
    assert nm.fl_from_std(std, signed) == clamp(k, 0, hi)


def test_fl_from_std_degenerate():
    assert nm.fl_from_std(0.0, True) == 7          # log2(40 / 0) = +inf -> clamp
    assert nm.fl_from_std(0.0, False) == 8
    assert nm.fl_from_std(math.inf, True) == 0     # log2(40 / inf) = -inf -> clamp
    assert nm.fl_from_std(math.inf, False) == 0


def exact_sse(xs: list[float], signed: bool, fl: int) -> Fraction:
    return sum(((Fraction(ref_quantize(x, signed, fl), 2 ** fl) - Fraction(x)) ** 2
                for x in xs), Fraction(0))


@FEW
@given(ks=st.lists(st.integers(-(2 ** 10), 2 ** 10), min_size=1, max_size=16),
       m=st.integers(0, 8), signed=signeds)
def test_fl_grid_search_exact_on_dyadic_data(ks, m, signed):
    # Dyadic data with few bits: every float operation in the RMS is exact or keeps
    # the order of the exact sums, so the result must be the exact minimiser (the
    # largest one on a tie).
    xs = [k * 2.0 ** -m for k in ks]
    hi = 7 if signed else 8
    sse = [exact_sse(xs, signed, fl) for fl in range(hi + 1)]
    best = min(sse)
    want = max(fl for fl in range(hi + 1) if sse[fl] == best)
    assert nm.fl_grid_search(np.array(xs), signed) == want


@FEW
@given(xs=st.lists(st.floats(-500, 500), min_size=1, max_size=32), signed=signeds)
def test_fl_grid_search_brute_force(xs, signed):
    # General floats: brute force over every fl with the exact quantizer, float RMS.
    hi = 7 if signed else 8
    x = np.array(xs)
    errs = []
    for fl in range(hi + 1):
        deq = np.array([float(Fraction(ref_quantize(v, signed, fl), 2 ** fl)) for v in xs])
        errs.append(float(np.sqrt(np.mean((deq - x) ** 2))))
    want = max(fl for fl in range(hi + 1) if errs[fl] == min(errs))
    assert nm.fl_grid_search(x, signed) == want


def test_fl_grid_search_ties_prefer_larger_fl():
    assert nm.fl_grid_search(np.zeros(5), True) == 7
    assert nm.fl_grid_search(np.zeros(5), False) == 8
    assert nm.fl_grid_search(np.array([0.5, -0.5]), True) == 7
    assert nm.fl_grid_search(np.array([100.0, -100.0]), True) == 0


# --------------------------------------------------------------------------------------
# Narrow weights (mixed precision)
# --------------------------------------------------------------------------------------

def ref_quantize_weight(x: float, fl: int, bits: int) -> int:
    hi = 2 ** (bits - 1) - 1
    return clamp(round(Fraction(x) * 2 ** fl), -hi, hi)


def test_weight_range_per_width():
    assert {b: nm.weight_range(b) for b in nm.WEIGHT_BITS} == \
        {8: (-127, 127), 6: (-31, 31), 4: (-7, 7), 2: (-1, 1)}
    for bad in (1, 3, 5, 7, 9, 16):
        with pytest.raises(ValueError, match=f"one of .*not {bad}"):
            nm.weight_range(bad)


def test_quantize_weight_by_hand():
    # x * 2**4 = 4.8, -4.8, 1, 1.5, 2.5, -2.5, 16, -16, 0.5: round half to even, then
    # saturate to the width's symmetric range.
    x = np.array([0.3, -0.3, 0.0625, 0.09375, 0.15625, -0.15625, 1.0, -1.0, 0.03125])
    assert nm.quantize_weight(x, 4, 8).tolist() == [5, -5, 1, 2, 2, -2, 16, -16, 0]
    assert nm.quantize_weight(x, 4, 6).tolist() == [5, -5, 1, 2, 2, -2, 16, -16, 0]
    assert nm.quantize_weight(x, 4, 4).tolist() == [5, -5, 1, 2, 2, -2, 7, -7, 0]
    assert nm.quantize_weight(x, 4, 2).tolist() == [1, -1, 1, 1, 1, -1, 1, -1, 0]
    # Per-channel fl broadcasts: channel 0 at fl 0, channel 1 at fl 2.
    w = np.array([[0.6, -1.5], [0.6, -1.5]])
    assert nm.quantize_weight(w, np.array([[0], [2]]), 4).tolist() == [[1, -2], [2, -6]]
    with pytest.raises(ValueError, match="fl must be in 0..64"):
        nm.quantize_weight(x, -1, 4)


@FAST
@given(x=st.floats(-1e6, 1e6), fl=st.integers(0, 24), bits=st.sampled_from(nm.WEIGHT_BITS))
def test_quantize_weight_exact(x, fl, bits):
    assert int(nm.quantize_weight(x, fl, bits)) == ref_quantize_weight(x, fl, bits)
    if bits == 8:
        assert int(nm.quantize_weight(x, fl, bits)) == int(nm.quantize(x, Format(True, fl)))


@FEW
@given(xs=st.lists(st.floats(-4, 4), min_size=1, max_size=32), bits=st.sampled_from(nm.WEIGHT_BITS))
def test_fl_grid_search_narrow_weights_brute_force(xs, bits):
    x = np.array(xs)
    errs = []
    for fl in range(8):
        deq = np.array([float(Fraction(ref_quantize_weight(v, fl, bits), 2 ** fl)) for v in xs])
        errs.append(float(np.sqrt(np.mean((deq - x) ** 2))))
    want = max(fl for fl in range(8) if errs[fl] == min(errs))
    assert nm.fl_grid_search(x, True, bits=bits) == want


def test_fl_grid_search_width_by_hand():
    # +-0.75: 8 bits hold it exactly at fl 7; 2 bits ({-1, 0, 1} * 2**-fl) err by 0.25
    # at fl 0 and fl 1 alike (the tie goes to fl 1) and by 0.5 at fl 2.
    x = np.array([0.75, -0.75])
    assert nm.fl_grid_search(x, True) == 7
    assert nm.fl_grid_search(x, True, bits=4) == 3          # 6 * 2**-3, exact
    assert nm.fl_grid_search(x, True, bits=2) == 1
    with pytest.raises(ValueError, match="unsigned data are 8-bit"):
        nm.fl_grid_search(x, False, bits=4)


# --------------------------------------------------------------------------------------
# Average pooling
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("window", list(range(-4, 70)) + [2 ** 20, 2 ** 20 + 1, 3 * 2 ** 10])
def test_avgpool_fl_shift(window):
    want = None
    for k in range(64):
        if window == 2 ** k:
            want = k
    assert nm.avgpool_fl_shift(window) == want
    assert nm.avgpool_fl_shift(np.int64(window)) == want
