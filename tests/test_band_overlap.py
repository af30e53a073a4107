"""Off-chip layers that keep the array busy (:mod:`fxpgen.compiler.offchip`): double-
buffered input bands, whose next chunk's rows are LOADed while the array computes the
chunk before, cut a chain's cycles on the cycle model and keep its outputs those of
the golden model; and the spill-plan search brings back on chip a map the budget
alone would spill."""

import numpy as np
import pytest

from fxpgen.compiler import offchip
from fxpgen.compiler.channel_ops import expand_unaligned
from fxpgen.compiler.golden import run_golden_batch
from fxpgen.compiler.lower import lower
from fxpgen.compiler.offchip import spill_plans
from fxpgen.compiler.shuffle_fold import fold_shuffles
from fxpgen.sim.cycle_model import estimate_words
from fxpgen.sim.engine import IsaEngine, NetworkProgram

from schedule_checks import assert_isa_is_golden, assert_native_is_golden_in_model_cycles
from test_offchip import TINY, _compiled


def _single_bands(monkeypatch) -> None:
    """Lower with one band buffer a conv, as before double buffering."""
    monkeypatch.setattr(offchip, "_double_bands", lambda lo, op, rows, need, band_row: (rows, False))


def _cycles(low) -> int:
    return estimate_words(low.cfg, list(low.words), list(low.layers)).cycles


def test_double_buffered_bands_cut_cycles(monkeypatch, seed):
    qg, xs = _compiled("chain", seed)
    double = lower(qg, TINY)
    with monkeypatch.context() as m:
        _single_bands(m)
        single = lower(qg, TINY)
    assert double.host_buffers and single.host_buffers
    assert len(double.words) != len(single.words)
    assert _cycles(double) < _cycles(single)
    assert_isa_is_golden(double, qg, xs)


@pytest.mark.rtl
def test_double_buffered_bands_on_the_native_engine(seed):
    """The RTL runs the overlapped LOADs as the golden model, in the cycle model's cycles."""
    qg, xs = _compiled("chain", seed)
    assert_native_is_golden_in_model_cycles(lower(qg, TINY), qg, xs)


def test_maps_that_lower_on_chip_come_back(monkeypatch, seed):
    """With the budget 0 alone, the plan spills every map of the depthwise chain (the
    input's unfolding renames no other map); the search brings back on chip those
    whose return shrinks no banded layer's chunks."""
    monkeypatch.setattr(offchip, "BUDGET_FRACTIONS", (0.0,))
    qg, xs = _compiled("depthwise", seed)
    low = lower(qg, TINY)
    planned = expand_unaligned(fold_shuffles(qg), TINY.lanes)
    everything = next(spill_plans(planned, TINY.lanes, TINY.spad_depth, False))
    kept = {b.name for b in low.host_buffers}
    assert kept and kept < everything
    out = IsaEngine().run(NetworkProgram.from_lowered(low, qg), xs).outputs
    golden = run_golden_batch(qg, np.stack(xs))[qg.output]
    assert all(np.array_equal(o, g) for o, g in zip(out, golden))

