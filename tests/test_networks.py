"""ResNet-18 and MobileNetV2 shaped ONNX graphs (random weights, 32x32 inputs)
quantize, compile, and the instruction-level simulator equals the golden model."""

import time

import numpy as np
import pytest

from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.quantize import quantize
from fxpgen.config import CoreConfig
from fxpgen.compiler.golden import quantize_input, run_golden
from fxpgen.sim.isa_sim import run_program

from fxpgen.models.zoo import mobilenetv2, resnet18

CFG = CoreConfig(rows=8, cols=8, spad_depth=32768, wbuf_depth=8192, acc_depth=1024)


@pytest.mark.parametrize("build,stream", [(resnet18, False), (mobilenetv2, False), (resnet18, True)],
                         ids=["resnet18", "mobilenetv2", "resnet18-streamed-input"])
def test_network_compiles_and_isa_equals_golden(build, stream):
    rng = np.random.default_rng(0)
    calib = rng.uniform(0, 1, (4, 3, 32, 32))
    t0 = time.monotonic()
    qg, _ = quantize(load_onnx(build()), calib)
    # Streamed: small accumulators, so the first conv runs in chunks of four rows,
    # each loading its own band of the image.
    cfg = CFG.replace(acc_depth=128) if stream else CFG
    low = lower(qg, cfg, stream_input=stream)
    words = [i.encode(cfg) for i in low.instructions]
    print(f"{build.__name__}: {len(words)} instructions, compiled in {time.monotonic() - t0:.1f} s")
    assert low.input_streamed == stream
    x = np.asarray(quantize_input(qg, rng.uniform(0, 1, (3, 32, 32))), np.int64)
    res = run_program(cfg, words, low.data(low.image_words(x)))
    assert res.error.name == "NONE", (res.error, res.error_pc)
    assert np.array_equal(low.decode_output(res.results), run_golden(qg, x)[qg.output])
