"""The first convolution unfolded over its whole kernel (``fxpgen.compiler.unfold``):
the host's layout, the choice between no unfold, the row unfold and the full unfold,
and a fully unfolded program bit-identical to the golden model on the instruction-level
simulator and the native RTL, with the cycle model's counters exact against the RTL."""

import numpy as np
import pytest

from fxpgen.compiler.golden import run_golden
from fxpgen.compiler.lower import lower
from fxpgen.compiler.qgraph import QConv, QGraph, QTensor
from fxpgen.compiler.unfold import InputUnfold
from fxpgen.config import CoreConfig
from fxpgen.numerics import Format
from fxpgen.sim.isa_sim import run_program

from test_lower import CONFIGS, conv_net


def test_the_full_unfold_lays_out_every_output_pixels_taps_as_channels(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (3, 9, 11))
    u = InputUnfold(3, 9, 11, kw=4, stride=3, pad_left=2, out_width=4,
                    kh=3, stride_y=2, pad_top=1, out_height=5).apply(x)
    assert u.shape == (36, 5, 4)
    for ky in range(3):
        for kx in range(4):
            for oy in range(5):
                for ox in range(4):
                    row, col = oy * 2 + ky - 1, ox * 3 + kx - 2
                    inside = 0 <= row < 9 and 0 <= col < 11
                    want = x[:, row, col] if inside else np.zeros(3, np.int64)
                    got = u[(ky * 4 + kx) * 3:(ky * 4 + kx + 1) * 3, oy, ox]
                    assert np.array_equal(got, want), (ky, kx, oy, ox)


def test_a_3x3_stride_2_first_conv_is_unfolded_in_full():
    """MobileNetV2's first layer, smaller, on the default 8x8 core: 3 x 3 x 3 = 27
    unfolded channels take 4 k-tiles, against 3 x ceil(9 / 8) = 6 unfolded by row and
    9 plain; the 8x8 output's 64 pixels then cost 256, 384 and 576 vectors, and the
    input 256, 256 and 256 LOAD words."""
    qg, _ = conv_net(3, 16, 16, 8, 3, 2, 1)
    cfg = CoreConfig()
    low = lower(qg, cfg)
    assert low.input_unfold == InputUnfold(3, 16, 16, 3, 2, 1, 8, 3, 2, 1, 8)
    assert low.input_shape == (3, 16, 16)
    assert low.input_layout.channels == 27 and (low.input_layout.height, low.input_layout.width) == (8, 8)


def test_the_row_unfold_is_kept_where_it_costs_less():
    """ResNet-18's 7x7 stride-2 layer, smaller, on a 4x4 core: the full unfold's 37
    k-tiles against the row unfold's 42 save 2,100 vectors but load 5,250 more words."""
    qg, _ = conv_net(3, 30, 27, 8, 7, 2, 3)
    low = lower(qg, CONFIGS[0])
    assert low.input_unfold == InputUnfold(3, 30, 27, 7, 2, 3, 14)


@pytest.mark.parametrize("stream", [False, True], ids=["resident", "streamed"])
def test_a_fully_unfolded_first_conv_equals_golden(tmp_path, stream, seed):
    """On the instruction-level simulator, kept whole and streamed in bands (each band
    a band of the unfolded map), and through a program file."""
    from fxpgen.compiler.program import load_program, save_program

    qg, x = conv_net(3, 16, 16, 8, 3, 2, 1, seed=seed)
    cfg = CoreConfig(acc_depth=32) if stream else CoreConfig()
    low = lower(qg, cfg, stream_input=stream)
    assert low.input_unfold.kh == 3 and low.input_streamed == stream
    res = run_program(cfg, [i.encode(cfg) for i in low.instructions], low.data(low.image_words(x)))
    assert res.error.name == "NONE", (res.error, res.error_pc)
    assert np.array_equal(low.decode_output(res.results), run_golden(qg, x)["y"])
    save_program(tmp_path / "program.fxp", low)
    view = load_program(tmp_path / "program.fxp", cfg).lowered_view()
    assert view.input_unfold == low.input_unfold and view.input_shape == (3, 16, 16)
    assert view.data(view.image_words(x)) == low.data(low.image_words(x))


@pytest.mark.parametrize("kh,kw,kind", [(5, 1, "full"), (1, 5, "row")])
def test_a_one_row_or_one_column_kernel_is_unfolded_the_one_way_it_can(kh, kw, kind, seed):
    """A 5x1 kernel has one tap per row (only the full unfold gathers its taps), a
    1x5 one kernel row (the full unfold would be the row unfold): strides 2, padding
    on every side, 2 channels in and 8 out on a 4x4 core, equal to the golden model."""
    rng = np.random.default_rng(seed)
    pads = (kh // 2, kw // 2, kh // 2, kw // 2)
    oh, ow = (13 + 2 * pads[0] - kh) // 2 + 1, (11 + 2 * pads[1] - kw) // 2 + 1
    qg = QGraph({"x": QTensor("x", (2, 13, 11), Format(False, 8)),
                 "y": QTensor("y", (8, oh, ow), Format(True, 4))},
                [QConv("conv", "x", "y", rng.integers(-127, 128, (8, 2, kh, kw)),
                       rng.integers(-3000, 3000, 8), (2, 2), pads, 1, rng.integers(6, 12, 8))], "x", "y")
    x = rng.integers(0, 256, (2, 13, 11))
    cfg = CONFIGS[0]
    low = lower(qg, cfg)
    assert low.input_unfold is not None
    assert ("full" if low.input_unfold.kh > 1 else "row") == kind
    res = run_program(cfg, [i.encode(cfg) for i in low.instructions], low.data(low.image_words(x)))
    assert res.error.name == "NONE", (res.error, res.error_pc)
    assert np.array_equal(low.decode_output(res.results), run_golden(qg, x)["y"])


@pytest.mark.rtl
def test_a_fully_unfolded_first_conv_on_the_native_rtl(seed):
    """Golden = instruction-level simulator = native RTL, bit for bit, and the cycle
    model's counters the RTL's, every segment."""
    from fxpgen.sim.cycle_model import ModelEngine
    from fxpgen.sim.engine import IsaEngine, NetworkProgram
    from fxpgen.sim.native import native_model
    from fxpgen.sim.rtl_engines import NativeEngine

    qg, x = conv_net(3, 16, 16, 8, 3, 2, 1, seed=seed)
    cfg = CoreConfig()
    low = lower(qg, cfg)
    assert low.input_unfold.kh == 3
    program = NetworkProgram.from_lowered(low, qg)
    golden = run_golden(qg, x)["y"]
    native = NativeEngine(batch=1, model=native_model(cfg)).run(program, [x])
    model = ModelEngine().run(program, [x])
    assert np.array_equal(IsaEngine().run(program, [x]).outputs[0], golden)
    assert np.array_equal(native.outputs[0], golden)
    assert np.array_equal(model.outputs[0], golden)
    keys = ("layer", "cycles", "mac_cycles", "stall_dispatch", "insns")
    assert [{k: r[k] for k in keys} for r in model.layers[0]] == \
        [{k: r[k] for k in keys} for r in native.layers[0]]
