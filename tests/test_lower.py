"""Lowering: random small quantized networks (random shapes, strides, paddings,
groups, channel counts that are not multiples of the array) compile, and the
instruction-level simulator equals the golden model bit for bit."""

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from fxpgen.compiler.lower import lower
from fxpgen.compiler.qgraph import QAdd, QAvgPool, QConv, QGraph, QMaxPool, QTensor
from fxpgen.compiler.tiling import DoesNotFit
from fxpgen.config import CoreConfig
from fxpgen.numerics import Format
from fxpgen.compiler.golden import run_golden
from fxpgen.sim.isa_sim import run_program

CONFIGS = [CoreConfig(rows=4, cols=4, spad_depth=4096, wbuf_depth=512, acc_depth=512, table_depth=4),
           CoreConfig(rows=4, cols=8, spad_depth=4096, wbuf_depth=512, acc_depth=512),
           CoreConfig(rows=8, cols=4, spad_depth=4096, wbuf_depth=512, acc_depth=512),
           CoreConfig(rows=2, cols=2, spad_depth=8192, wbuf_depth=256, acc_depth=256)]


def _out(size, k, s, lo, hi):
    return (size + lo + hi - k) // s + 1


@st.composite
def networks(draw):
    """A random chain conv -> [conv with residual] -> [maxpool | avgpool] -> [add] -> fc."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    c0 = draw(st.integers(1, 6))
    h = draw(st.integers(3, 9))
    w = draw(st.integers(3, 9))
    tensors = {"x": QTensor("x", (c0, h, w), Format(draw(st.booleans()), 7))}
    ops = []

    def fmt(relu):
        return Format(not relu, int(rng.integers(2, 6)))

    def add_conv(name, src, cout, k, s, pads, groups, relu, residual=None):
        cin, hh, ww = tensors[src].shape
        oh, ow = _out(hh, k, s, pads[0], pads[2]), _out(ww, k, s, pads[1], pads[3])
        tensors[name] = QTensor(name, (cout, oh, ow), fmt(relu))
        weight = rng.integers(-127, 128, (cout, cin // groups, k, k))
        ops.append(QConv(name, src, name, weight, rng.integers(-3000, 3000, cout), (s, s), pads, groups,
                         rng.integers(4, 12, cout), relu, residual,
                         rng.integers(-3, 4, cout) if residual else None))

    c1 = draw(st.integers(1, 11))
    k = draw(st.sampled_from([1, 2, 3]))
    s = draw(st.sampled_from([1, 2]))
    p = draw(st.integers(0, k - 1))
    add_conv("c1", "x", c1, k, s, (p, p, draw(st.integers(0, p)), p), 1, draw(st.booleans()))
    if draw(st.booleans()):
        # Same-shape conv (maybe grouped/depthwise) with the residual from c1.
        groups = draw(st.sampled_from([g for g in (1, c1) if c1 % g == 0]))
        add_conv("c2", "c1", c1, 3, 1, (1, 1, 1, 1), groups, draw(st.booleans()), residual="c1")
    last = ops[-1].output
    pool = draw(st.sampled_from(["none", "max", "avg"]))
    ch, hh, ww = tensors[last].shape
    if pool != "none" and hh >= 2 and ww >= 2:
        pk = 2
        pads = (0, 0, draw(st.integers(0, 1)), 0) if pool == "max" else (0, 0, 0, 0)
        oh, ow = _out(hh, pk, 2, pads[0], pads[2]), _out(ww, pk, 2, pads[1], pads[3])
        f = tensors[last].fmt
        if pool == "max":
            tensors["p"] = QTensor("p", (ch, oh, ow), f)
            ops.append(QMaxPool("p", last, "p", (pk, pk), (2, 2), pads))
        else:
            tensors["p"] = QTensor("p", (ch, oh, ow), Format(f.signed, max(0, f.fl - 1)))
            ops.append(QAvgPool("p", last, "p", (pk, pk), (2, 2), pads, shift=3))
        last = "p"
    if draw(st.booleans()) and "c2" in tensors:
        tensors["a"] = QTensor("a", tensors["c2"].shape, fmt(True))
        ops.append(QAdd("a", "c1", "c2", "a", int(rng.integers(0, 3)), 0, int(rng.integers(0, 3)), True))
        last = "a"
    ch, hh, ww = tensors[last].shape
    add_conv("fc", last, draw(st.integers(1, 12)), 1, 1, (0, 0, 0, 0), 1, False)
    # A fully connected head: a kernel covering the whole map.
    fc = ops.pop()
    del tensors["fc"]
    tensors["fc"] = QTensor("fc", (fc.weight.shape[0], 1, 1), Format(True, 3))
    ops.append(QConv("fc", last, "fc", rng.integers(-127, 128, (fc.weight.shape[0], ch, hh, ww)),
                     fc.bias, (1, 1), (0, 0, 0, 0), 1, rng.integers(6, 14, fc.weight.shape[0])))
    x = rng.integers(-127 if tensors["x"].fmt.signed else 0, 128 if tensors["x"].fmt.signed else 256,
                     (c0, h, w))
    return QGraph(tensors, ops, "x", "fc"), x


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=networks(), cfg_index=st.integers(0, len(CONFIGS) - 1))
def test_random_networks_isa_equals_golden(net, cfg_index):
    qg, x = net
    cfg = CONFIGS[cfg_index]
    low = lower(qg, cfg)
    res = run_program(cfg, [i.encode(cfg) for i in low.instructions], low.data(low.image_words(x)))
    assert res.error.name == "NONE", (res.error, res.error_pc)
    golden = run_golden(qg, x)
    assert np.array_equal(low.decode_output(res.results), golden[qg.output])


def test_every_intermediate_map_matches_golden():
    """Each layer's output, made the graph output in turn, equals the golden model's."""
    qg, x = find(networks(), lambda n: len(n[0].ops) >= 4)
    cfg = CONFIGS[1]
    golden = run_golden(qg, x)
    for k in range(1, len(qg.ops) + 1):
        sub = QGraph(qg.tensors, qg.ops[:k], qg.input, qg.ops[k - 1].output)
        low = lower(sub, cfg)
        res = run_program(cfg, [i.encode(cfg) for i in low.instructions], low.data(low.image_words(x)))
        assert np.array_equal(low.decode_output(res.results), golden[sub.output]), qg.ops[k - 1].name


def test_does_not_fit_says_by_how_much():
    qg = QGraph({"x": QTensor("x", (64, 32, 32), Format(False, 8)),
                 "y": QTensor("y", (8, 32, 32), Format(True, 4))},
                [QConv("conv", "x", "y", np.ones((8, 64, 3, 3), np.int64), np.zeros(8, np.int64),
                       (1, 1), (1, 1, 1, 1))], "x", "y")
    # 1024 rows hold its output rows in windows of columns; 128 not one output pixel's
    # buffers (146 rows).
    assert "output" not in lower(qg, CoreConfig(rows=4, cols=4, spad_depth=1024)).layers
    with pytest.raises(DoesNotFit, match=r"one output pixel takes 146 scratchpad rows.*rows short"):
        lower(qg, CoreConfig(rows=4, cols=4, spad_depth=128))


# --- streamed input -----------------------------------------------------------------

#: Small accumulators, so the first conv runs in several chunks, each with its own band.
STREAM_CONFIGS = [CoreConfig(rows=4, cols=4, spad_depth=4096, wbuf_depth=512, acc_depth=32, table_depth=4),
                  CoreConfig(rows=2, cols=2, spad_depth=8192, wbuf_depth=256, acc_depth=32)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=networks(), cfg_index=st.integers(0, len(STREAM_CONFIGS) - 1))
def test_streamed_input_isa_equals_golden(net, cfg_index):
    qg, x = net
    cfg = STREAM_CONFIGS[cfg_index]
    low = lower(qg, cfg, stream_input=True)
    res = run_program(cfg, [i.encode(cfg) for i in low.instructions], low.data(low.image_words(x)))
    assert res.error.name == "NONE", (res.error, res.error_pc)
    assert np.array_equal(low.decode_output(res.results), run_golden(qg, x)[qg.output])


def conv_net(c, h, w, cout, k, s, p, seed=0):
    rng = np.random.default_rng(seed)
    oh, ow = _out(h, k, s, p, p), _out(w, k, s, p, p)
    qg = QGraph({"x": QTensor("x", (c, h, w), Format(False, 8)),
                 "y": QTensor("y", (cout, oh, ow), Format(True, 4))},
                [QConv("conv", "x", "y", rng.integers(-127, 128, (cout, c, k, k)),
                       rng.integers(-3000, 3000, cout), (s, s), (p, p, p, p), 1,
                       rng.integers(6, 12, cout))], "x", "y")
    return qg, rng.integers(0, 256, (c, h, w))


def test_an_image_that_does_not_fit_is_streamed_in_bands():
    """3x40x24 next to its 8x40x24 output needs 3012 rows of a 2048-row scratchpad: the
    image is streamed, in bands as small as the space the output leaves (2 output rows,
    4 input rows), and the result is the golden model's."""
    qg, x = conv_net(3, 40, 24, 8, 3, 1, 1)
    cfg = CoreConfig(rows=4, cols=4, spad_depth=2048, wbuf_depth=512, acc_depth=512)
    # Kept whole, the image leaves no room for the output map, which goes off chip.
    whole = lower(qg, cfg, stream_input=False)
    assert not whole.input_streamed and "output" not in whole.layers
    low = lower(qg, cfg)
    assert low.input_streamed and len(low.input_pieces) == 20
    assert low.spad_rows_used <= cfg.spad_depth
    image = low.image_words(x)
    data = low.data(image)
    assert len(data) - len(low.consts) == sum(p.count for p in low.input_pieces) > len(image)
    res = run_program(cfg, [i.encode(cfg) for i in low.instructions], data)
    assert res.error.name == "NONE", (res.error, res.error_pc)
    assert np.array_equal(low.decode_output(res.results), run_golden(qg, x)["y"])
    # With room for it, the image stays whole: one piece, after the constant words
    # that fill its border.
    big = lower(qg, cfg.replace(spad_depth=4096))
    assert not big.input_streamed
    before, after = big.split_data()
    assert big.data(image) == before + image + after


def test_streaming_is_refused_where_it_cannot_help():
    qg = QGraph({"x": QTensor("x", (4, 40, 40), Format(False, 8)),
                 "p": QTensor("p", (4, 20, 20), Format(False, 8))},
                [QMaxPool("p", "x", "p", (2, 2), (2, 2), (0, 0, 0, 0))], "x", "p")
    with pytest.raises(DoesNotFit, match="one consumer is a convolution"):
        lower(qg, CONFIGS[0], stream_input=True)
    with pytest.raises(DoesNotFit, match="feature map x"):
        lower(qg, CONFIGS[0].replace(spad_depth=1024))
    # A band of kh rows that does not fit next to the output sends the 8000-row output
    # off chip (it left 192 rows; a 3-row band takes 1506); where the band and one
    # output row of its chunk do not fit even so (1756 rows), in windows of columns
    # (down to 8 rows, with the image unfolded over the whole kernel); where one
    # output pixel's do not fit in any layout, the error says so.
    qg, _ = conv_net(3, 64, 500, 4, 3, 2, 1)
    for depth in (8192, 1024):
        low = lower(qg, CoreConfig(rows=4, cols=4, spad_depth=depth, acc_depth=2048), stream_input=True)
        assert low.input_streamed and "output" not in low.layers
    with pytest.raises(DoesNotFit, match="conv: one output pixel takes 10 scratchpad rows"):
        lower(qg, CoreConfig(rows=4, cols=4, spad_depth=4, acc_depth=2048), stream_input=True)


def test_a_streamed_program_survives_its_file_and_cannot_be_baked(tmp_path):
    from fxpgen.boards.top import baked_parts
    from fxpgen.compiler.program import load_program, save_program

    qg, x = conv_net(3, 40, 24, 8, 3, 1, 1)
    cfg = CoreConfig(rows=4, cols=4, spad_depth=2048, wbuf_depth=512, acc_depth=512)
    low = lower(qg, cfg)
    save_program(tmp_path / "program.fxp", low)
    prog = load_program(tmp_path / "program.fxp", cfg)
    view = prog.lowered_view()
    assert view.input_pieces == low.input_pieces
    assert view.data(view.image_words(x)) == low.data(low.image_words(x))
    with pytest.raises(ValueError, match="cannot bake this program: the program streams its input in 20"):
        baked_parts(prog)


# --- the first conv's taps unfolded into channels ------------------------------------


def test_unfolding_lays_out_each_row_of_taps_as_channels():
    from fxpgen.compiler.unfold import InputUnfold

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 5, 11))
    u = InputUnfold(3, 5, 11, kw=4, stride=3, pad_left=2, out_width=4).apply(x)
    assert u.shape == (12, 5, 4)
    for kx in range(4):
        for ox in range(4):
            col = ox * 3 + kx - 2
            want = x[:, :, col] if 0 <= col < 11 else np.zeros((3, 5), np.int64)
            assert np.array_equal(u[kx * 3:(kx + 1) * 3, :, ox], want), (kx, ox)


def _matmuls(low):
    return sum(i.opcode.name == "MATMUL" for i in low.instructions)


@pytest.mark.parametrize("stream", [False, True], ids=["resident", "streamed"])
def test_an_unfolded_first_conv_takes_fewer_matmuls_and_equals_golden(tmp_path, stream):
    """A 3-channel 7x7 stride-2 conv (ResNet-18's first layer, smaller) on a 4x4 core:
    7 taps x 1 k-tile per kernel row become ceil(21 / 4) = 6 k-tiles. Streamed, each
    band is a band of the unfolded image."""
    from fxpgen.compiler.program import load_program, save_program

    qg, x = conv_net(3, 30, 27, 8, 7, 2, 3, seed=5)
    cfg = CONFIGS[0].replace(acc_depth=64) if stream else CONFIGS[0]
    plain = lower(qg, cfg, unfold=False, stream_input=stream)
    low = lower(qg, cfg, stream_input=stream)
    assert plain.input_unfold is None and low.input_unfold is not None
    assert low.input_streamed == stream
    assert _matmuls(low) * 7 == _matmuls(plain) * 6
    golden = run_golden(qg, x)["y"]
    for p in (plain, low):
        res = run_program(cfg, [i.encode(cfg) for i in p.instructions], p.data(p.image_words(x)))
        assert res.error.name == "NONE", (res.error, res.error_pc)
        assert np.array_equal(p.decode_output(res.results), golden)
    save_program(tmp_path / "program.fxp", low)
    view = load_program(tmp_path / "program.fxp", cfg).lowered_view()
    assert view.input_unfold == low.input_unfold and view.input_shape == (3, 30, 27)
    assert view.data(view.image_words(x)) == low.data(low.image_words(x))
    with pytest.raises(ValueError, match=r"input is \(3, 30, 26\), the program expects \(3, 30, 27\)"):
        low.image_words(x[:, :, :26])


def test_only_a_conv_that_gains_is_unfolded():
    full, _ = conv_net(16, 8, 8, 8, 3, 1, 1)           # 16 channels fill a 4-row k-tile
    assert lower(full, CONFIGS[0]).input_unfold is None
    point, _ = conv_net(3, 8, 8, 8, 1, 1, 0)           # a 1x1 conv has one tap per row
    assert lower(point, CONFIGS[0]).input_unfold is None
