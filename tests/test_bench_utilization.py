"""The utilization bench (``bench/utilization.py``): band cropping of conv layers,
the SCALE-Sim topology writer, and (slow) the bench end to end on two small layers."""

import json

import numpy as np
import pytest

from bench import layer_bands, scalesim, utilization

from fxpgen.compiler.conv_plan import rows_per_chunk
from fxpgen.compiler.qgraph import QConv, QGraph, QTensor
from fxpgen.config import CoreConfig
from fxpgen.numerics import Format
from fxpgen.compiler.golden import run_golden


def _random_conv(rng, *, stride=None, groups=1):
    """A one-conv graph with random shape, stride, asymmetric pads and integers."""
    c = int(rng.integers(1, 6)) * groups
    co = int(rng.integers(1, 6)) * groups
    kh, kw = int(rng.choice([1, 3, 5, 7])), int(rng.choice([1, 3]))
    s = int(rng.choice([1, 2, 3])) if stride is None else stride
    pads = tuple(int(rng.integers(0, k // 2 + 1)) for k in (kh, kw, kh, kw))
    h, w = int(rng.integers(kh, 24)), int(rng.integers(kw, 12))
    oh = (h + pads[0] + pads[2] - kh) // s + 1
    ow = (w + pads[1] + pads[3] - kw) // s + 1
    op = QConv("conv", "x", "y", rng.integers(-127, 128, (co, c // groups, kh, kw)),
               rng.integers(-2000, 2000, co), (s, s), pads, groups=groups,
               shift=rng.integers(4, 9, co), relu=bool(rng.integers(2)))
    qg = QGraph({"x": QTensor("x", (c, h, w), Format(False, 8)),
                 "y": QTensor("y", (co, oh, ow), Format(True, 4))}, [op], "x", "y", {})
    return qg, op, rng.integers(0, 256, (c, h, w))


@pytest.mark.parametrize("stride", [1, 2, None])
def test_band_output_equals_slice_of_full_output(stride, seed):
    rng = np.random.default_rng([seed, stride or 0])
    checked = 0
    for _ in range(25):
        qg, op, x = _random_conv(rng, stride=stride, groups=int(rng.choice([1, 1, 2])))
        full = run_golden(qg, x)["y"]
        oh = full.shape[1]
        for _ in range(4):
            y0 = int(rng.integers(0, oh))
            y1 = int(rng.integers(y0 + 1, oh + 1))
            rows = layer_bands.band_rows(y0, y1, op.stride[0], op.weight.shape[2], op.pads[0],
                                         x.shape[1])
            assert 0 <= rows.pad_top <= op.pads[0] and 0 <= rows.pad_bottom <= op.pads[2]
            got = layer_bands.band_golden(qg, op, y0, y1, x)
            assert np.array_equal(got, full[:, y0:y1]), (op, y0, y1)
            checked += 1
    assert checked == 100


def test_band_rows_of_a_strided_padded_conv():
    # 7x7 stride 2, pads 3 on 224 rows (ResNet's first conv): 112 output rows.
    r = layer_bands.band_rows(0, 10, 2, 7, 3, 224)
    assert (r.in0, r.in1, r.pad_top, r.pad_bottom) == (0, 22, 3, 0)
    r = layer_bands.band_rows(10, 20, 2, 7, 3, 224)
    assert (r.in0, r.in1, r.pad_top, r.pad_bottom) == (17, 42, 0, 0)
    r = layer_bands.band_rows(100, 112, 2, 7, 3, 224)
    assert (r.in0, r.in1, r.pad_top, r.pad_bottom) == (197, 224, 0, 2)


def test_bands_cover_the_layer_and_fit_the_scratchpad(seed):
    rng = np.random.default_rng(seed)
    op = QConv("c", "x", "y", rng.integers(-127, 128, (64, 3, 7, 7)), np.zeros(64, np.int64),
               (2, 2), (3, 3, 3, 3))
    qg = QGraph({"x": QTensor("x", (3, 224, 224), Format(False, 8)),
                 "y": QTensor("y", (64, 112, 112), Format(False, 4))}, [op], "x", "y", {})
    cfg = CoreConfig(8, 8, **utilization.BIG_MEMORIES)
    bands = layer_bands.plan_bands(qg, op, cfg)
    assert bands[0][0] == 0 and bands[-1][1] == 112
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
    n = bands[0][1] - bands[0][0]
    assert layer_bands.spad_rows_for_band(qg, op, n, cfg) <= cfg.spad_depth
    assert n % rows_per_chunk(cfg, 112, 112) == 0


def _qg_with(op, in_shape, out_shape):
    return QGraph({"x": QTensor("x", in_shape, Format(False, 8)),
                   "y": QTensor("y", out_shape, Format(False, 8))}, [op], "x", "y", {})


def test_scalesim_layers_and_topology(tmp_path):
    from scalesim.topology_utils import topologies

    w = np.zeros
    conv1 = QConv("conv_1", "x", "y", w((64, 3, 7, 7), np.int64), w(64), (2, 2), (3, 3, 3, 3))
    dw = QConv("DP,dw", "x", "y", w((96, 1, 3, 3), np.int64), w(96), (2, 2), (1, 1, 1, 1), groups=96)
    fc = QConv("fc", "x", "y", w((1000, 512, 1, 1), np.int64), w(1000))
    cases = [(conv1, (3, 224, 224), (64, 112, 112)), (dw, (96, 112, 112), (96, 56, 56)),
             (fc, (512, 1, 1), (1000, 1, 1))]
    layers = [scalesim.scalesim_layer(_qg_with(op, i, o), op) for op, i, o in cases]
    assert layers[0] == scalesim.ScaleSimLayer("conv_1", 229, 229, 7, 7, 3, 64, 2, 1)
    assert layers[1] == scalesim.ScaleSimLayer("DP,dw", 113, 113, 3, 3, 1, 1, 2, 96)
    assert layers[2] == scalesim.ScaleSimLayer("fc", 1, 1, 1, 1, 512, 1000, 1, 1)
    for layer, (op, _, o) in zip(layers, cases):
        assert layer.macs == o[0] * o[1] * o[2] * int(np.prod(op.weight.shape[1:]))

    topo = tmp_path / "topology.csv"
    scalesim.write_topology(layers, topo)
    t = topologies()
    t.load_arrays(topofile=str(topo))
    # SCALE-Sim reads one layer per row (the "DP" of a name would have split it per channel).
    assert t.get_num_layers() == 3
    for k, (layer, (_, _, o)) in enumerate(zip(layers, cases)):
        assert list(t.get_layer_ofmap_dims(k)) == [o[1], o[2]]      # our output size
        assert t.get_layer_num_channels(k) == layer.channels
        assert t.get_layer_num_filters(k) == layer.filters


def test_scalesim_runs_and_depthwise_is_repeat_of_one_channel(tmp_path):
    """SCALE-Sim's own depthwise mode (a "DP" layer) is C one-channel convs: the same
    total as one of them times C, which is how the bench counts a depthwise conv."""
    one = scalesim.ScaleSimLayer("dwc", 12, 12, 3, 3, 1, 1, 1)
    r_one = scalesim.run_scalesim([one], 8, 8, tmp_path)[0]
    assert r_one["stall_cycles"] == 0 and r_one["total_cycles"] > 100

    from scalesim.topology_utils import topologies
    topo = tmp_path / "dp.csv"
    topo.write_text("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
                    "Num Filter, Strides,\nDP_x, 12, 12, 3, 3, 3, 1, 1,\n")
    t = topologies()
    t.load_arrays(topofile=str(topo))
    assert t.get_num_layers() == 3      # split per channel, each one 1-channel conv
    split = [scalesim.ScaleSimLayer(f"x{k}", *t.topo_arrays[k][1:8]) for k in range(3)]
    assert all(s.key == one.key for s in split)
    cycles = [r["total_cycles"] for r in scalesim.run_scalesim(split, 8, 8, tmp_path)]
    assert cycles == [r_one["total_cycles"]] * 3


@pytest.mark.slow
@pytest.mark.rtl
def test_bench_runs_two_layers_end_to_end(tmp_path):
    """The bench on the first two conv layers of a 32x32 ResNet-18 (in bands when they
    do not fit): the RTL's outputs match the golden model and the report is written."""
    data = utilization.main(["--networks", "resnet18", "--size", "32", "--max-layers", "2",
                             "--results", str(tmp_path), "--scalesim-workers", "0", "--fresh"])
    layers = data["networks"]["resnet18"]["layers"]
    assert len(layers) == 2
    for d in layers:
        assert d["verified"]
        assert d["rtl_cycles"] >= d["ideal_cycles"] > 0
        assert d["scalesim_cycles"] > 0
    written = json.loads((tmp_path / "utilization.json").read_text())
    assert written["networks"]["resnet18"]["totals"]["layers"] == 2
    assert (tmp_path / "utilization.md").read_text().count("| conv_") >= 2
    assert (tmp_path / "utilization.png").stat().st_size > 0


@pytest.mark.parametrize("cin,cout", [(4, 4), (8, 8), (3, 6)])
def test_layer_statistics_count_the_layers_own_instructions(cin, cout, tmp_path):
    """A 3x3 conv over a 6x6 map on a 4x4 core: one weight tile and one MATMUL per tap,
    input-channel tile and output-channel tile, each MATMUL streaming the 36 output
    pixels; the report lists these figures."""
    from test_lower import conv_net

    from bench.utilization_report import write_report
    from fxpgen.compiler.lower import lower

    qg, _ = conv_net(cin, 6, 6, cout, 3, 1, 1)
    cfg = CoreConfig(rows=4, cols=4, spad_depth=512, wbuf_depth=256, acc_depth=256)
    low = lower(qg, cfg, unfold=False)
    stats = utilization.layer_statistics(low.instructions, low.layers)
    tiles = 9 * -(-cin // 4) * -(-cout // 4)
    assert stats["conv"] == {"matmuls": tiles, "weight_tiles": tiles, "vectors": 36 * tiles}
    assert stats["input"]["matmuls"] == stats["output"]["weight_tiles"] == 0
    layer = {"layer": "conv", "kind": "conv", "in_shape": [cin, 6, 6], "out_shape": [cout, 6, 6],
             "macs": 9 * cin * cout * 36, "ideal_cycles": 9 * cin * cout * 36 / 16, "rtl_cycles": 2000,
             "rtl_mac_cycles": 1000, "utilization": 9 * cin * cout * 36 / 16 / 2000,
             **utilization._with_vectors_per_matmul(stats["conv"])}
    write_report({"rows": 4, "cols": 4, "networks": {"t": {
        "layers": [layer], "meta": {"config": cfg.as_dict(), "engine": "native", "size": 6,
                                    "calib_images": 1, "layers_run": 1, "layers_total": 1},
        "totals": utilization.totals([layer])}}}, tmp_path)
    md = (tmp_path / "utilization.md").read_text()
    assert f"| t | conv | {layer['utilization']:.3f} | {tiles} | {tiles} | 36.0 |" in md
