"""The conv planner alone: tile counts of dense, grouped and depthwise convolutions,
skipped all-zero tiles, n-tiles grouped by the weight buffer and the shift table,
streamed n-tiles, output rows per chunk and the accumulator-bound note. Expected
values are worked out here from the shapes, not taken from the planner."""

import numpy as np
import pytest

from fxpgen.compiler.conv_plan import plan_conv, rows_per_chunk
from fxpgen.compiler.qgraph import QAvgPool, QConv, QGraph, QTensor
from fxpgen.compiler.tiling import DoesNotFit
from fxpgen.config import CoreConfig
from fxpgen.numerics import Format

CFG = CoreConfig(rows=4, cols=4, spad_depth=4096, wbuf_depth=512, acc_depth=512, table_depth=16)


def conv_graph(weight, h=6, w=6, groups=1, bias=None, shift=None, pads=(0, 0, 0, 0), signed=False):
    """A one-conv graph with stride 1 and the given weight (Cout, Cin/groups, kh, kw)."""
    cout, cin_g, kh, kw = weight.shape
    oh, ow = h + pads[0] + pads[2] - kh + 1, w + pads[1] + pads[3] - kw + 1
    bias = np.zeros(cout, np.int64) if bias is None else bias
    shift = np.full(cout, 8, np.int64) if shift is None else shift
    op = QConv("conv", "x", "y", np.asarray(weight, np.int64), bias, (1, 1), pads, groups, shift)
    qg = QGraph({"x": QTensor("x", (cin_g * groups, h, w), Format(signed, 7)),
                 "y": QTensor("y", (cout, oh, ow), Format(True, 4))}, [op], "x", "y")
    return qg, op


def nonzero_weight(rng, shape):
    return rng.integers(1, 128, shape) * rng.choice([-1, 1], shape)


def rebuilt(plan, cfg, shape):
    """The dense (kh, kw, Cin, Cout) weight put back together from the plan's tiles."""
    kh, kw, cin, cout = shape
    out = np.zeros((kh, kw, plan.k_tiles * cfg.rows, plan.n_tiles * cfg.cols), np.int64)
    for nt, tiles in enumerate(plan.tiles):
        for t in tiles:
            out[t.ky, t.kx, t.kt * cfg.rows:(t.kt + 1) * cfg.rows, nt * cfg.cols:(nt + 1) * cfg.cols] = t.weight
    return out[:, :, :cin, :cout]


def test_a_dense_conv_has_every_tap_and_k_tile(seed):
    rng = np.random.default_rng(seed)
    weight = nonzero_weight(rng, (9, 10, 3, 3))            # Cout 9, Cin 10
    qg, op = conv_graph(weight)
    plan = plan_conv(qg, op, CFG)
    assert (plan.k_tiles, plan.n_tiles) == (3, 3)         # 10 / 4 and 9 / 4, rounded up
    assert [len(t) for t in plan.tiles] == [3 * 3 * 3] * 3  # 9 taps x 3 k-tiles each
    assert np.array_equal(rebuilt(plan, CFG, (3, 3, 10, 9)), np.transpose(weight, (2, 3, 1, 0)))


def test_a_grouped_conv_keeps_only_its_diagonal_tiles(seed):
    rng = np.random.default_rng(seed)
    weight = nonzero_weight(rng, (8, 4, 3, 3))            # 2 groups of 4 in, 4 out
    qg, op = conv_graph(weight, groups=2)
    plan = plan_conv(qg, op, CFG)
    assert (plan.k_tiles, plan.n_tiles) == (2, 2)
    # Output channels 0..3 read input channels 0..3 (k-tile 0) and 4..7 read 4..7.
    for nt in range(2):
        assert len(plan.tiles[nt]) == 9
        assert {t.kt for t in plan.tiles[nt]} == {nt}
    expected = np.zeros((3, 3, 8, 8), np.int64)
    for g in range(2):
        expected[:, :, 4 * g:4 * g + 4, 4 * g:4 * g + 4] = np.transpose(weight[4 * g:4 * g + 4], (2, 3, 1, 0))
    assert np.array_equal(rebuilt(plan, CFG, (3, 3, 8, 8)), expected)


def test_a_depthwise_conv_and_an_average_pool_have_one_tile_per_tap_and_n_tile(seed):
    rng = np.random.default_rng(seed)
    weight = nonzero_weight(rng, (6, 1, 3, 3))            # 6 channels, one each
    qg, op = conv_graph(weight, groups=6)
    plan = plan_conv(qg, op, CFG)
    # Channels 0..3 in n-tile 0 / k-tile 0; channels 4, 5 in n-tile 1 / k-tile 1.
    assert (plan.k_tiles, plan.n_tiles) == (2, 2)
    assert [sorted({t.kt for t in tiles}) for tiles in plan.tiles] == [[0], [1]]
    assert [len(t) for t in plan.tiles] == [9, 9]
    expected = np.zeros((3, 3, 6, 6), np.int64)
    for c in range(6):
        expected[:, :, c, c] = weight[c, 0]
    assert np.array_equal(rebuilt(plan, CFG, (3, 3, 6, 6)), expected)

    pool = QAvgPool("pool", "x", "y", (2, 2), (2, 2), shift=2)
    pg = QGraph({"x": QTensor("x", (6, 4, 4), Format(False, 7)),
                 "y": QTensor("y", (6, 2, 2), Format(False, 5))}, [pool], "x", "y")
    pplan = plan_conv(pg, pool, CFG)
    assert [len(t) for t in pplan.tiles] == [4, 4]
    ones_on_diagonal = np.broadcast_to(np.eye(6, dtype=np.int64), (2, 2, 6, 6))
    assert np.array_equal(rebuilt(pplan, CFG, (2, 2, 6, 6)), ones_on_diagonal)
    assert [entry for row in pplan.table for entry in row] == [(2, 0)] * 6 + [(0, 0)] * 2


def test_all_zero_tiles_are_skipped(seed):
    rng = np.random.default_rng(seed)
    weight = nonzero_weight(rng, (8, 10, 3, 3))
    weight[:, 4:8] = 0                                     # k-tile 1 of every tap
    weight[:, :, 0, 2] = 0                                 # tap (0, 2) of every k-tile
    qg, op = conv_graph(weight)
    plan = plan_conv(qg, op, CFG)
    assert [len(t) for t in plan.tiles] == [(9 - 1) * (3 - 1)] * 2
    for tiles in plan.tiles:
        assert all(t.kt != 1 and (t.ky, t.kx) != (0, 2) for t in tiles)
        assert all(t.weight.any() for t in tiles)


def one_by_one(cin, cout, cfg, rng):
    qg, op = conv_graph(nonzero_weight(rng, (cout, cin, 1, 1)))
    return plan_conv(qg, op, cfg)


def spans(plan):
    return [(g.first, g.stop, g.streamed) for g in plan.groups]


def test_n_tiles_are_grouped_by_what_the_weight_buffer_holds(seed):
    # 2 k-tiles per n-tile, 5 n-tiles; a 32-row buffer holds 8 tiles, not all 10, so a
    # group takes half of it (the next group is loaded into the other): 2 n-tiles.
    plan = one_by_one(8, 20, CFG.replace(wbuf_depth=32), np.random.default_rng(seed))
    assert plan.wbuf_tiles == 32 // 4
    assert spans(plan) == [(0, 2, False), (2, 4, False), (4, 5, False)]
    assert plan.batches(plan.groups[0], 0) == [plan.tiles[0]]
    # A 16-row buffer: 4 tiles, a half 2: one n-tile per group.
    plan = one_by_one(8, 20, CFG.replace(wbuf_depth=16), np.random.default_rng(seed))
    assert spans(plan) == [(nt, nt + 1, False) for nt in range(5)]
    # A 64-row buffer holds all 10 tiles: one group, loaded once.
    plan = one_by_one(8, 20, CFG.replace(wbuf_depth=64), np.random.default_rng(seed))
    assert spans(plan) == [(0, 5, False)]


def test_n_tiles_are_grouped_by_what_the_shift_table_holds(seed):
    plan = one_by_one(8, 20, CFG.replace(table_depth=3), np.random.default_rng(seed))
    assert spans(plan) == [(0, 3, False), (3, 5, False)]
    assert len(plan.table) == 5
    assert all(len(row) == 4 for row in plan.table)


def test_an_n_tile_larger_than_the_weight_buffer_is_streamed_in_batches(seed):
    rng = np.random.default_rng(seed)
    # A 3x3 conv over 8 channels: 9 taps x 2 k-tiles = 18 tiles per n-tile, 4 fit, and
    # a batch takes half the buffer (the other half is loaded meanwhile): 2 tiles.
    qg, op = conv_graph(nonzero_weight(rng, (6, 8, 3, 3)))
    plan = plan_conv(qg, op, CFG.replace(wbuf_depth=16))
    assert spans(plan) == [(0, 1, True), (1, 2, True)]
    for g in plan.groups:
        batches = plan.batches(g, g.first)
        assert [len(b) for b in batches] == [2] * 9
        assert [t for b in batches for t in b] == list(plan.tiles[g.first])
    # 8 tiles fit, 4 a half: 18 tiles in 5 batches, of 3 or 4 tiles (not 4, 4, 4, 4, 2).
    plan = plan_conv(qg, op, CFG.replace(wbuf_depth=32))
    batches = plan.batches(plan.groups[0], 0)
    assert [len(b) for b in batches] == [3, 4, 3, 4, 4]
    assert [t for b in batches for t in b] == list(plan.tiles[0])


def test_only_the_n_tile_that_exceeds_the_buffer_is_streamed(seed):
    rng = np.random.default_rng(seed)
    # Grouped: n-tile 0 (group 0, 8 in -> 4 out) has 2 k-tiles x 1 tap = 2 tiles,
    # n-tile 1 (group 1) the same; a dense 1x1 n-tile beside them would have 4.
    weight = nonzero_weight(rng, (8, 8, 1, 1))
    qg, op = conv_graph(weight, groups=2)
    plan = plan_conv(qg, op, CFG.replace(wbuf_depth=4))   # one tile per load
    assert [len(t) for t in plan.tiles] == [2, 2]
    assert spans(plan) == [(0, 1, True), (1, 2, True)]
    # Two tiles fit, not all four: a load takes half the buffer, one tile, so each
    # n-tile streams, a tile per batch, each batch loaded while the other is read.
    plan = plan_conv(qg, op, CFG.replace(wbuf_depth=8))
    assert spans(plan) == [(0, 1, True), (1, 2, True)]
    assert [len(b) for b in plan.batches(plan.groups[0], 0)] == [1, 1]
    plan = plan_conv(qg, op, CFG.replace(wbuf_depth=16))  # all four tiles fit: one load
    assert spans(plan) == [(0, 2, False)]


@pytest.mark.parametrize("acc_depth, oh, ow, rows", [(64, 7, 10, 3), (64, 5, 4, 5), (512, 3, 33, 3),
                                                     (16, 9, 8, 1)])
def test_rows_per_chunk_fill_half_the_accumulators(acc_depth, oh, ow, rows):
    assert rows_per_chunk(CFG.replace(acc_depth=acc_depth), oh, ow) == rows


def test_a_plan_takes_its_chunk_from_the_accumulators_or_the_band(seed):
    rng = np.random.default_rng(seed)
    qg, op = conv_graph(nonzero_weight(rng, (4, 4, 3, 3)), h=12, w=12)   # 10 x 10 output
    plan = plan_conv(qg, op, CFG.replace(acc_depth=64))
    assert (plan.rows_per_chunk, plan.banded) == (32 // 10, False)
    plan = plan_conv(qg, op, CFG.replace(acc_depth=64), band_rows_per_chunk=2)
    assert (plan.rows_per_chunk, plan.banded) == (2, True)
    with pytest.raises(DoesNotFit, match="output row of 10 pixels"):
        plan_conv(qg, op, CFG.replace(acc_depth=16))


def test_the_accumulator_bound_note_names_the_channel_that_can_saturate():
    cfg = CFG.replace(acc_width=20)                       # |acc| <= 2**19 - 1 = 524287
    weight = np.ones((3, 17, 1, 1), np.int64)
    weight[1] = 127                                       # 17 * 127 * 255 = 550545
    bias = np.array([0, -100, 5], np.int64)
    qg, op = conv_graph(weight, bias=bias)
    plan = plan_conv(qg, op, cfg)
    assert plan.note == ("conv: output channel 1 can reach |acc| = 550645 > 524287; "
                         "the accumulator saturates there")
    weight[1] = 120                                       # 17 * 120 * 255 + 100 = 520300
    qg, op = conv_graph(weight, bias=bias)
    assert plan_conv(qg, op, cfg).note is None


def test_bias_and_table_rows_are_padded_per_n_tile():
    weight = np.ones((5, 1, 1, 1), np.int64)
    qg, op = conv_graph(weight, bias=np.arange(1, 6), shift=np.arange(3, 8))
    plan = plan_conv(qg, op, CFG)
    assert plan.bias == ((1, 2, 3, 4), (5, 0, 0, 0))
    assert plan.table == (((3, 0), (4, 0), (5, 0), (6, 0)), ((7, 0), (0, 0), (0, 0), (0, 0)))
    qg, op = conv_graph(weight, shift=np.array([3, 4, 32, 5, 6]))
    with pytest.raises(DoesNotFit, match="shifts must be in -32..31"):
        plan_conv(qg, op, CFG)
