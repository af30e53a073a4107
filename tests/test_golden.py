"""Golden model: every QGraph op on hand-computed integers, and the tap-loop convolution
against a plain Python reference.

Expected values are worked out in the comments (round-half-to-even, narrow signed range,
ReLU as saturation at 0) so a reader can check them without running anything.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fxpgen.compiler.qgraph import QAdd, QAvgPool, QConv, QGraph, QMaxPool, QTensor
from fxpgen.numerics import Format
from fxpgen.compiler.golden import (conv_accumulate, dequantize_output, predict, quantize_input,
                               run_golden, run_golden_batch)

S4, S0, U0, U4 = Format(True, 4), Format(True, 0), Format(False, 0), Format(False, 4)


def graph(ops, tensors, inp="x", out="y", **meta) -> QGraph:
    """QGraph from ops and {name: (shape, fmt)}."""
    return QGraph({k: QTensor(k, s, f) for k, (s, f) in tensors.items()}, ops, inp, out, meta)


def a(rows) -> np.ndarray:
    return np.array(rows, np.int64)


def conv(weight, bias, **kw) -> QConv:
    return QConv("c", "x", "y", a(weight), a(bias), **kw)


# ---- QConv -----------------------------------------------------------------------------

def test_conv_two_channels_round_half_even():
    # ch0: 1*1 + 2*-1 + 3*2 + 4*3 + 5 = 22; shift 2: 5.5 -> 6 (even).
    # ch1: 4*1 - 3 = 1; shift 1: 0.5 -> 0 (even).
    op = conv([[[[1, -1], [2, 3]]], [[[0, 0], [0, 1]]]], [5, -3], shift=a([2, 1]))
    g = graph([op], {"x": ((1, 2, 2), S4), "y": ((2, 1, 1), S0)})
    y = run_golden(g, a([[[1, 2], [3, 4]]]))["y"]
    assert y.dtype == np.int64
    assert y.tolist() == [[[6]], [[0]]]


def test_conv_padding_and_stride():
    # 3x3 ones over 1..9 with one pixel of zero padding, stride 2: the four windows
    # are the 2x2 corners: 1+2+4+5, 2+3+5+6, 4+5+7+8, 5+6+8+9.
    op = conv(np.ones((1, 1, 3, 3)), [0], stride=(2, 2), pads=(1, 1, 1, 1))
    g = graph([op], {"x": ((1, 3, 3), U0), "y": ((1, 2, 2), U0)})
    y = run_golden(g, a(np.arange(1, 10).reshape(1, 3, 3)))["y"]
    assert y.tolist() == [[[12, 16], [24, 28]]]


def test_conv_asymmetric_pads():
    # pads (top 0, left 1, bottom 1, right 0), 2x2 ones on [[1, 2], [3, 4]]:
    # padded [[0,1,2],[0,3,4],[0,0,0]] -> [[0+1+0+3, 1+2+3+4], [0+3+0+0, 3+4+0+0]].
    op = conv(np.ones((1, 1, 2, 2)), [0], pads=(0, 1, 1, 0))
    g = graph([op], {"x": ((1, 2, 2), U0), "y": ((1, 2, 2), U0)})
    assert run_golden(g, a([[[1, 2], [3, 4]]]))["y"].tolist() == [[[4, 10], [3, 7]]]


def test_conv_depthwise_per_channel_shift():
    # Depthwise 1x1: channel 0 times 2 then shift 1 (x 1), channel 1 times -3 shift 0.
    op = conv([[[[2]]], [[[-3]]]], [0, 0], groups=2, shift=a([1, 0]))
    g = graph([op], {"x": ((2, 1, 2), S0), "y": ((2, 1, 2), S0)})
    y = run_golden(g, a([[[5, -7]], [[10, -20]]]))["y"]
    assert y.tolist() == [[[5, -7]], [[-30, 60]]]


def test_conv_groups_two():
    # groups=2, Cin=4, Cout=2: out0 = x0 + x1, out1 = x2 - x3.
    op = conv([[[[1]], [[1]]], [[[1]], [[-1]]]], [0, 0], groups=2)
    g = graph([op], {"x": ((4, 1, 1), S0), "y": ((2, 1, 1), S0)})
    assert run_golden(g, a([[[1]], [[2]], [[10]], [[3]]]))["y"].ravel().tolist() == [3, 7]


def test_conv_saturation_relu_and_narrow_range():
    # acc = 1 * x; signed output clamps to [-127, 127] (never -128), ReLU to 0,
    # unsigned to 255.
    x = a([[[-100, 100, 127, -127]]])
    op = conv([[[[2]]]], [0])
    signed = graph([op], {"x": ((1, 1, 4), S0), "y": ((1, 1, 4), S0)})
    assert run_golden(signed, x)["y"].ravel().tolist() == [-127, 127, 127, -127]
    op = conv([[[[3]]]], [0], relu=True)
    unsigned = graph([op], {"x": ((1, 1, 4), S0), "y": ((1, 1, 4), U0)})
    assert run_golden(unsigned, x)["y"].ravel().tolist() == [0, 255, 255, 0]


def test_conv_left_shift():
    # shift -2: 3 -> 12, -5 -> -20 (exact left shift).
    op = conv([[[[1]]]], [0], shift=a([-2]))
    g = graph([op], {"x": ((1, 1, 2), S0), "y": ((1, 1, 2), S0)})
    assert run_golden(g, a([[[3, -5]]]))["y"].ravel().tolist() == [12, -20]


def test_conv_uint8_input_full_range():
    # Unsigned input 255 times weight -127 (the PE sign-extends uint8): -32385,
    # shift 8: -126.504 -> -127. Weight 1, shift 1: 127.5 -> 128 (even), which fits u8.
    op = conv([[[[-127]]]], [0], shift=a([8]))
    g = graph([op], {"x": ((1, 1, 1), U0), "y": ((1, 1, 1), S0)})
    assert run_golden(g, a([[[255]]]))["y"].item() == -127
    op = conv([[[[1]]]], [0], shift=a([1]))
    g = graph([op], {"x": ((1, 1, 1), U0), "y": ((1, 1, 1), U0)})
    assert run_golden(g, a([[[255]]]))["y"].item() == 128


def run_residual(x, r, align, shift, relu=False) -> int:
    """A conv on channel 0 of a 2-channel input whose residual is channel 1, picked out
    by a first (identity) conv."""
    pick = QConv("pick", "x", "r", a([[[[0]], [[1]]]]), a([0]))
    op = QConv("c", "x", "y", a([[[[1]], [[0]]]]), a([0]), shift=a([shift]), relu=relu,
               residual="r", align=a([align]))
    g = graph([pick, op], {"x": ((2, 1, 1), S0), "r": ((1, 1, 1), S0), "y": ((1, 1, 1), S0)})
    return run_golden(g, a([[[x]], [[r]]]))["y"].item()


@pytest.mark.parametrize("x, r, align, shift, relu, want", [
    # align 2: residual shifted left: 10 + (3 << 2) = 22; shift 2: 5.5 -> 6.
    (10, 3, 2, 2, False, 6),
    # align -1: accumulator shifted left: (10 << 1) + 3 = 23; shift 1: 11.5 -> 12.
    (10, 3, -1, 1, False, 12),
    # align -1: (9 << 1) + 3 = 21; shift 1: 10.5 -> 10 (even).
    (9, 3, -1, 1, False, 10),
    # ReLU after the add: -50 + 3 = -47 -> 0.
    (-50, 3, 0, 0, True, 0),
    # without ReLU the sum saturates to the narrow range: -100 + (-60 << 1) = -220 -> -127.
    (-100, -60, 1, 0, False, -127),
])
def test_conv_residual_align(x, r, align, shift, relu, want):
    assert run_residual(x, r, align, shift, relu) == want


def test_conv_residual_in_a_graph():
    # x -> c1 (x * 2) -> r; c2 computes (x * 1) + r aligned: align 1 shifts r left.
    # x = 3: r = 6; acc = 3, s = 3 + (6 << 1) = 15, shift 1: 7.5 -> 8.
    c1 = QConv("c1", "x", "r", a([[[[2]]]]), a([0]))
    c2 = QConv("c2", "x", "y", a([[[[1]]]]), a([0]), shift=a([1]), residual="r", align=a([1]))
    g = graph([c1, c2], {"x": ((1, 1, 1), S0), "r": ((1, 1, 1), S0), "y": ((1, 1, 1), S0)})
    out = run_golden(g, a([[[3]]]))
    assert out["r"].item() == 6 and out["y"].item() == 8


def test_accumulator_saturation_uses_meta_width():
    # 4 taps of 127 * 127 = 64516 saturates a 16-bit accumulator at 32767;
    # shift 8: 127.996 -> 128 (u8). With 32 bits: 64516 / 256 = 252.02 -> 252.
    op = conv(np.full((1, 1, 2, 2), 127), [0], shift=a([8]))
    t = {"x": ((1, 2, 2), S0), "y": ((1, 1, 1), U0)}
    x = np.full((1, 2, 2), 127)
    assert run_golden(graph([op], t, acc_bits=16), x)["y"].item() == 128
    assert run_golden(graph([op], t), x)["y"].item() == 252


# ---- pools -----------------------------------------------------------------------------

def test_maxpool_signed_padding_is_lowest_value():
    # Negative inputs with padding 1: padding (-127) never wins, unlike a zero pad.
    op = QMaxPool("p", "x", "y", (2, 2), (1, 1), (1, 1, 1, 1))
    g = graph([op], {"x": ((1, 2, 2), S4), "y": ((1, 3, 3), S4)})
    y = run_golden(g, a([[[-100, -50], [-120, -90]]]))["y"]
    assert y.tolist() == [[[-100, -50, -50], [-100, -50, -50], [-120, -90, -90]]]


def test_maxpool_unsigned_stride():
    op = QMaxPool("p", "x", "y", (2, 2), (2, 2))
    g = graph([op], {"x": ((1, 2, 4), U4), "y": ((1, 1, 2), U4)})
    assert run_golden(g, a([[[1, 200, 3, 4], [5, 6, 255, 0]]]))["y"].tolist() == [[[200, 255]]]


def test_avgpool_sum_and_shift():
    # 3x3 input 1..9, 2x2 windows stride 2, zero padding bottom/right (counted):
    # sums [[1+2+4+5, 3+6], [7+8, 9]] = [[12, 9], [15, 9]];
    # shift 2: [[3, 2.25 -> 2], [3.75 -> 4, 2]].
    op = QAvgPool("p", "x", "y", (2, 2), (2, 2), (0, 0, 1, 1), shift=2)
    g = graph([op], {"x": ((1, 3, 3), U0), "y": ((1, 2, 2), U0)})
    assert run_golden(g, a(np.arange(1, 10).reshape(1, 3, 3)))["y"].tolist() == [[[3, 2], [4, 2]]]


def test_avgpool_ties_and_signed():
    # Sums over 2x2: 10 -> 2.5 -> 2, 14 -> 3.5 -> 4, -10 -> -2.5 -> -2 (ties to even).
    op = QAvgPool("p", "x", "y", (1, 2), (1, 2), shift=2)
    g = graph([op], {"x": ((1, 1, 6), S0), "y": ((1, 1, 3), S0)})
    # (1, 2) windows: [4+6, 7+7, -4-6]
    assert run_golden(g, a([[[4, 6, 7, 7, -4, -6]]]))["y"].ravel().tolist() == [2, 4, -2]


def test_avgpool_shift_changes_format():
    # fl_x = 4, window 4 (log2 2), fl_out = 5: shift 4 + 2 - 5 = 1. Sum 4 * 100 = 400
    # -> 200: the mean 100 * 2**-4 = 6.25 is 200 * 2**-5.
    op = QAvgPool("p", "x", "y", (2, 2), (2, 2), shift=1)
    g = graph([op], {"x": ((1, 2, 2), U4), "y": ((1, 1, 1), Format(False, 5))})
    y = run_golden(g, np.full((1, 2, 2), 100))["y"]
    assert y.item() == 200
    assert dequantize_output(g, y).item() == 6.25


# ---- QAdd ------------------------------------------------------------------------------

def test_add_align_shift_relu():
    # a (fl 3) shifted left 1 to fl 4: [20 + 7, -6 + 5] = [27, -1]; shift 1:
    # 13.5 -> 14, -0.5 -> 0 (even).
    op = QAdd("add", "x", "x", "y", a_shift=1, b_shift=0, shift=1)
    g = graph([op], {"x": ((1, 1, 2), S4), "y": ((1, 1, 2), S4)})
    # Both operands are x here: [10, -3] * 2 + [10, -3] = [30, -9] -> 15, -4.5 -> -4.
    assert run_golden(g, a([[[10, -3]]]))["y"].ravel().tolist() == [15, -4]


def test_add_two_tensors():
    c1 = QConv("c1", "x", "b", a([[[[1]]]]), a([0]), shift=a([-1]))   # b = 2x
    add = QAdd("add", "x", "b", "y", a_shift=1, b_shift=0, shift=1, relu=True)
    g = graph([c1, add], {"x": ((1, 1, 3), S0), "b": ((1, 1, 3), S0), "y": ((1, 1, 3), U0)})
    # s = 2x + 2x = 4x; shift 1: 2x; ReLU; u8 saturates at 255.
    out = run_golden(g, a([[[10, -3, 100]]]))
    assert out["b"].ravel().tolist() == [20, -6, 127]
    # x=100: b saturated at 127: (100 << 1) + 127 = 327 -> 163.5 -> 164.
    assert out["y"].ravel().tolist() == [20, 0, 164]


# ---- helpers and checks ----------------------------------------------------------------

def small_graph():
    op = QConv("c", "x", "y", a(np.arange(-4, 4).reshape(2, 1, 2, 2)), a([3, -3]),
               pads=(1, 0, 0, 1), shift=a([1, 2]), relu=True)
    return graph([op], {"x": ((1, 3, 3), U4), "y": ((2, 3, 3), U4)})


def test_batch_equals_single():
    g = small_graph()
    rng = np.random.default_rng(1)
    xs = rng.integers(0, 256, (5, 1, 3, 3))
    batch = run_golden_batch(g, xs)["y"]
    for i in range(5):
        assert np.array_equal(batch[i], run_golden(g, xs[i])["y"])


def test_quantize_input_predict_roundtrip():
    g = small_graph()
    x = np.linspace(0, 1, 9).reshape(1, 3, 3)
    xq = quantize_input(g, x)
    assert xq.tolist() == np.clip(np.rint(x * 16), 0, 255).astype(int).tolist()
    single = predict(g, x)
    assert single.shape == (2, 3, 3)
    assert np.array_equal(single, dequantize_output(g, run_golden(g, xq)["y"]))
    assert np.array_equal(predict(g, np.stack([x, x, x]), batch_size=2), np.stack([single] * 3))


def test_input_validation():
    g = small_graph()
    with pytest.raises(TypeError, match="integers"):
        run_golden(g, np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        run_golden(g, np.full((1, 3, 3), -1))
    with pytest.raises(ValueError, match="shape"):
        run_golden(g, np.zeros((1, 4, 3), np.int64))
    with pytest.raises(ValueError, match=r"c: 8-bit weights must lie in \[-127, 127\]"):
        QConv("c", "x", "y", a([[[[128]]]]), a([0]))
    with pytest.raises(ValueError, match=r"c: 4-bit weights must lie in \[-7, 7\]"):
        QConv("c", "x", "y", a([[[[8]]]]), a([0]), weight_bits=4)
    bad = QConv("c", "x", "y", a([[[[1]]]]), a([0]))
    bad.weight = a([[[[128]]]])          # changed after the op was made
    with pytest.raises(ValueError, match="-127, 127"):
        run_golden(graph([bad], {"x": ((1, 1, 1), U0), "y": ((1, 1, 1), U0)}), a([[[1]]]))


# ---- conv_accumulate against plain Python loops ----------------------------------------

def naive_conv(x, w, stride, pads, groups):
    cin, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    pt, pl, pb, pr = pads
    ho = (h + pt + pb - kh) // stride[0] + 1
    wo = (wd + pl + pr - kw) // stride[1] + 1
    out = [[[0] * wo for _ in range(ho)] for _ in range(cout)]
    per = cout // groups
    for o in range(cout):
        g = o // per
        for i in range(ho):
            for j in range(wo):
                s = 0
                for c in range(cin_g):
                    for u in range(kh):
                        for v in range(kw):
                            y, xx = i * stride[0] + u - pt, j * stride[1] + v - pl
                            if 0 <= y < h and 0 <= xx < wd:
                                s += int(w[o, c, u, v]) * int(x[g * cin_g + c, y, xx])
                out[o][i][j] = s
    return out


@st.composite
def conv_case(draw):
    groups = draw(st.integers(1, 3))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h = draw(st.integers(max(1, kh - pads[0] - pads[2]), 6))
    w = draw(st.integers(max(1, kw - pads[1] - pads[3]), 6))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.integers(-127, 256, (cin, h, w))
    wt = rng.integers(-127, 128, (cout, cin // groups, kh, kw))
    return x, wt, stride, pads, groups


@settings(max_examples=60, deadline=None)
@given(conv_case())
def test_conv_accumulate_matches_loops(case):
    x, w, stride, pads, groups = case
    got = conv_accumulate(x[None], w, stride, pads, groups)[0]
    assert got.dtype == np.int64
    assert got.tolist() == naive_conv(x, w, stride, pads, groups)
