"""A conv's shift-table rows (:mod:`fxpgen.compiler.conv_emit`): the table is one
hazard resource, so a LOAD into it waits for the REQUANT reading it while the array
idles. When the conv's distinct rows fit the table they are LOADed once for the
layer and each n-tile's REQUANT reads its row's entry; otherwise each group of
n-tiles LOADs its own rows from entry 0. Both ways compute the golden model's
outputs, on the instruction-level simulator and on the RTL in the cycle model's
cycles."""

import numpy as np
import pytest
from onnx import numpy_helper

from fxpgen.compiler.golden import quantize_input
from fxpgen.compiler.lower import lower
from fxpgen.compiler.onnx_frontend import load_onnx
from fxpgen.compiler.quantize import quantize
from fxpgen.isa import Instruction, Mem, Opcode
from fxpgen.models.zoo import TestModel

from op_checks import conv, data
from schedule_checks import assert_isa_is_golden, assert_native_is_golden_in_model_cycles
from test_offchip import TINY

SHAPE = (3, 12, 12)
#: 24 output channels: 6 n-tiles of the 4x4 core, in groups of at most 2 table rows.
CFG = TINY.replace(table_depth=2)


def _compiled(seed: int, per_channel: bool):
    m = TestModel(seed)
    y = conv(m, conv(m, "x", 3, 24, 3), 24, 24, 3)
    model = m.model((1,) + SHAPE, y)
    # Weights twice as large from one n-tile to the next: with per-channel formats
    # every n-tile of both convs gets its own shift-table row.
    for init in model.graph.initializer:
        if init.name.endswith("W"):
            w = numpy_helper.to_array(init) * 2.0 ** (np.arange(24) // CFG.cols)[:, None, None, None]
            init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), init.name))
    qg, _ = quantize(load_onnx(model), data(seed, SHAPE, 4), per_channel=per_channel)
    return qg, [np.asarray(quantize_input(qg, x), np.int64) for x in data(seed + 3, SHAPE, 2)]


def _table_loads(low) -> list[int]:
    """The LOADs into the shift table of every layer that makes any, in program order."""
    count: dict[str, int] = {}
    for word, layer in zip(low.words, low.layers):
        insn = Instruction.decode(word)
        if insn.opcode is Opcode.LOAD and insn.params.get("mem") == Mem.TABLE.value:
            count[layer] = count.get(layer, 0) + 1
    return list(count.values())


def test_per_layer_formats_load_the_table_once_per_conv(seed):
    qg, xs = _compiled(seed, per_channel=False)
    low = lower(qg, CFG)
    assert _table_loads(low) == [1, 1]
    assert_isa_is_golden(low, qg, xs)


def test_rows_that_do_not_fit_are_loaded_group_by_group(seed):
    """Per-channel formats give each n-tile its own row, more than the two the table
    holds: each group of n-tiles LOADs its own."""
    qg, xs = _compiled(seed, per_channel=True)
    low = lower(qg, CFG)
    loads = _table_loads(low)
    assert len(loads) == 2 and all(n > 1 for n in loads)
    assert_isa_is_golden(low, qg, xs)


@pytest.mark.rtl
@pytest.mark.parametrize("per_channel", [False, True])
def test_shift_table_schedules_on_the_native_engine(seed, per_channel):
    qg, xs = _compiled(seed, per_channel)
    assert_native_is_golden_in_model_cycles(lower(qg, CFG), qg, xs)
