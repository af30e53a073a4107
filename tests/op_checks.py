"""End-to-end checks shared by the tests of the compiler's ops: a small ONNX model is
imported (float, against onnx's reference evaluator), quantized (the golden model
within the quantization noise of the reference), saved and loaded, and lowered on
several core shapes (the instruction-level simulator equal to the golden model bit
for bit)."""

import numpy as np

from fxpgen.compiler.golden import quantize_input, run_golden, run_golden_batch
from fxpgen.compiler.graph import run_float
from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.program import load_qgraph, save_qgraph
from fxpgen.compiler.quantize import quantize, sqnr_db
from fxpgen.config import CoreConfig
from fxpgen.models.zoo import TestModel, reference
from fxpgen.numerics import dequantize
from fxpgen.sim.isa_sim import run_program

#: Core shapes every op is lowered for: square, rows < cols, and wider than the maps.
CONFIGS = {"8x8": CoreConfig(rows=8, cols=8, spad_depth=8192, wbuf_depth=1024, acc_depth=512),
           "4x8": CoreConfig(rows=4, cols=8, spad_depth=8192, wbuf_depth=1024, acc_depth=512),
           "16x16": CoreConfig(rows=16, cols=16, spad_depth=8192, wbuf_depth=2048, acc_depth=512)}


def conv(m: TestModel, x: str, cin: int, cout: int, k: int = 1, relu: bool = True,
         name: str | None = None) -> str:
    """A k x k conv (same padding) with random weights and bias, then a Relu."""
    y = m.node("Conv", [x, m.w(f"{x}_{cout}_{k}W", (cout, cin, k, k), std=1.0 / np.sqrt(cin * k * k)),
                        m.w(f"{x}_{cout}_{k}B", (cout,), 0.1)], [f"{x}_c{cout}_{k}"],
               pads=[k // 2] * 4, **({"name": name} if name else {}))
    return m.node("Relu", [y], [f"{y}_r"]) if relu else y


def data(seed: int, shape, n: int) -> np.ndarray:
    """``n`` random images of ``shape`` in [0, 1)."""
    return np.random.default_rng(seed + 1).uniform(0, 1, (n,) + tuple(shape))


def check_float_import(model, shape, seed: int):
    """The float graph of ``model`` computes what onnx's reference evaluator does;
    returns the graph."""
    g = load_onnx(model)
    x = data(seed, shape, 3)
    ref = reference(model, x)
    got = run_float(g, x)[g.output]
    assert np.abs(got - ref).max() <= 1e-4 * max(float(np.abs(ref).max()), 1e-6)
    return g


def check_compiled(model, shape, seed: int, tmp_path):
    """Quantize ``model`` on 32 random images: the golden model follows the reference
    (SQNR at least 25 dB or the report's own figure less 6 dB), the quantized graph
    round-trips through its files, and on every core of :data:`CONFIGS` the
    instruction-level simulator gives the golden model's integers. Returns the
    quantized graph and one quantized test input."""
    qg, report = quantize(load_onnx(model), data(seed, shape, 32))
    test = data(seed + 7, shape, 8)
    got = dequantize(run_golden_batch(qg, quantize_input(qg, test))[qg.output], qg.tensor(qg.output).fmt)
    ref = reference(model, test)
    assert got.size == ref.size       # a classifier's (N, K) is the golden model's (N, K, 1, 1)
    assert sqnr_db(ref, got.reshape(ref.shape)) >= min(25, report["output_sqnr_db"] - 6)
    save_qgraph(tmp_path, qg)
    back = load_qgraph(tmp_path)
    assert [type(op) for op in back.ops] == [type(op) for op in qg.ops]
    x = np.asarray(quantize_input(qg, test[0]), np.int64)
    golden = run_golden(qg, x)
    assert all(np.array_equal(v, run_golden(back, x)[k]) for k, v in golden.items())
    for cfg in CONFIGS.values():
        low = lower(qg, cfg)
        res = run_program(cfg, [i.encode(cfg) for i in low.instructions], low.data(low.image_words(x)))
        assert res.error.name == "NONE", (res.error, res.error_pc)
        assert np.array_equal(low.decode_output(res.results), golden[qg.output]), cfg
    return qg, x


def check_native_rtl(model, shape, seed: int, tmp_path) -> None:
    """Compile ``model`` for a 4x8 core and run three images on the native RTL engine:
    its outputs are the golden model's, bit for bit."""
    from fxpgen.app.flow import compile_model, run_compiled
    cfg = CoreConfig(rows=4, cols=8, spad_depth=4096, wbuf_depth=512, acc_depth=512)
    compile_model(model, data(seed, shape, 16), cfg, tmp_path)
    x = data(seed + 5, shape, 3)
    out = run_compiled(tmp_path, x, "native")
    qg = load_qgraph(tmp_path)
    assert out["golden_identical"] is True
    assert np.array_equal(out["outputs"], run_golden_batch(qg, quantize_input(qg, x))[qg.output])
