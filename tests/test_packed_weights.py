"""Narrow weights through the compiler and the core: convs whose weights are 6, 4 or
2 bits wide are packed in the weight stream and the weight buffer
(:func:`fxpgen.isa.pack_tiles`) and unpacked by LOADW. The lowered network computes
the golden model's outputs on the instruction-level simulator, on several array
shapes and with the weight buffer too small for a layer's tiles, and on the RTL in
exactly the cycle model's cycles; the weight stream shrinks with the widths."""

import dataclasses

import numpy as np
import pytest

from fxpgen.compiler.golden import quantize_input
from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.qgraph import QConv
from fxpgen.compiler.quantize import quantize
from fxpgen.config import CoreConfig
from fxpgen.isa import Instruction, Mem, Opcode, loadw_rows, narrow_of
from fxpgen.models.zoo import TestModel
from fxpgen.numerics import weight_range

from op_checks import conv, data
from schedule_checks import assert_isa_is_golden, assert_native_is_golden_in_model_cycles
from test_offchip import TINY

SHAPE = (3, 10, 10)
CONFIGS = {
    "4x4": TINY,        # its RTL model is built for other tests too
    "8x4": CoreConfig(rows=8, cols=4, spad_depth=1024, wbuf_depth=256, acc_depth=256),
    "2x8": CoreConfig(rows=2, cols=8, spad_depth=1024, wbuf_depth=256, acc_depth=256),
    # 8 weight-buffer rows: a layer's tiles are streamed a few at a time.
    "4x4 streamed": CoreConfig(rows=4, cols=4, spad_depth=1024, wbuf_depth=8, acc_depth=256),
}


def _compiled(seed: int, widths: tuple[int, ...]):
    """A stack of convs quantized at 8 bits, then each conv's weights clipped to the
    next width of ``widths`` (the arithmetic does not care how they were chosen), and
    two quantized test images."""
    m = TestModel(seed)
    y = conv(m, conv(m, conv(m, "x", 3, 12, 3), 12, 8, 1), 8, 10, 3, relu=False)
    qg, _ = quantize(load_onnx(m.model((1,) + SHAPE, y)), data(seed, SHAPE, 4))
    convs = iter(widths)
    ops = []
    for op in qg.ops:
        if isinstance(op, QConv):
            bits = next(convs)
            op = dataclasses.replace(op, weight=np.clip(op.weight, *weight_range(bits)).astype(np.int8),
                                     weight_bits=bits)
        ops.append(op)
    qg = dataclasses.replace(qg, ops=ops)
    return qg, [np.asarray(quantize_input(qg, x), np.int64) for x in data(seed + 3, SHAPE, 2)]


def _weight_loads(low) -> tuple[list[tuple[int, int]], int]:
    """Every LOADW's (narrow, count0), and the data words LOADed into the weight buffer."""
    loadw, words = [], 0
    for word in low.words:
        insn = Instruction.decode(word)
        if insn.opcode is Opcode.LOADW:
            loadw.append((insn.params["narrow"], insn.count0))
        elif insn.opcode is Opcode.LOAD and insn.params.get("mem") == Mem.WBUF.value:
            words += insn.iterations
    return loadw, words


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("widths", [(4, 2, 6), (2, 6, 4)])
def test_packed_layers_compute_the_golden_model(name, widths, seed):
    cfg = CONFIGS[name]
    qg, xs = _compiled(seed, widths)
    low = lower(qg, cfg)
    loadw, _ = _weight_loads(low)
    assert {n for n, _ in loadw} == {narrow_of(b) for b in widths}
    assert all(c == loadw_rows(cfg, n) for n, c in loadw)
    assert_isa_is_golden(low, qg, xs)


@pytest.mark.parametrize("weight_widths", [1, 2])
def test_a_core_without_narrow_widths_takes_them_wider(weight_widths, seed):
    """A core that unpacks only 8-bit (or 8- and 6-bit) weights gets each layer in
    its narrowest width that holds it, and computes the same integers."""
    cfg = CONFIGS["4x4"].replace(weight_widths=weight_widths)
    qg, xs = _compiled(seed, (4, 2, 6))
    low = lower(qg, cfg)
    loadw, _ = _weight_loads(low)
    assert {n for n, _ in loadw} == {weight_widths - 1}      # 8 bits, or 6 for all three
    assert_isa_is_golden(low, qg, xs)


def test_narrow_weights_shrink_the_weight_stream(seed):
    """The same network at 4 and at 2 bits: its weight-buffer LOADs carry half and a
    quarter of the rows (each tile's 8 rows packed into 4 and 2)."""
    cfg = CONFIGS["8x4"]
    words = {b: _weight_loads(lower(_compiled(seed, (b,) * 3)[0], cfg))[1] for b in (8, 4, 2)}
    assert words[4] * 2 == words[8] and words[2] * 4 == words[8], words


@pytest.mark.rtl
def test_packed_layers_on_the_native_engine(seed):
    qg, xs = _compiled(seed, (6, 2, 4))
    assert_native_is_golden_in_model_cycles(lower(qg, TINY), qg, xs)
