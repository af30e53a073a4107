"""A max pool over an off-chip map (:func:`fxpgen.compiler.offchip._maxpool_ring`):
its input rows LOADed once each into a ring of the kernel's rows, the kernel
separated into row and column MAXes over every channel group at once. On the 4x4
core with a 1024-row scratchpad, the 3x3/2 pool of ``test_offchip``'s ``maxpool``
network reads its 24x24x8 input off chip; it runs as the golden model on the
instruction-level simulator (and, marker ``rtl``, on the native engine in the cycle
model's cycles) in fewer cycles than the chunked schedule's."""

import pytest

from fxpgen.compiler.lower import lower
from fxpgen.sim.cycle_model import estimate_words

from schedule_checks import assert_isa_is_golden, assert_native_is_golden_in_model_cycles
from test_offchip import TINY, _compiled

#: The pool's cycles are at most this (measured: 3,766, 3,548 before the memory
#: banks, where the first column MAX of each output row, over two columns of one row,
#: reads both from one bank and issues every other cycle; 4,478 with one chunk of
#: output rows per band LOAD and one MAX per channel group and tap).
POOL_CYCLES = 3800


def _pool_cycles(low) -> int:
    timing = estimate_words(low.cfg, list(low.words), list(low.layers))
    return sum(s.counters["cycles"] for s in timing.segments if s.as_layer().get("layer") == "MaxPool_2")


def test_a_max_pool_over_an_offchip_map_runs_from_a_ring(seed):
    qg, xs = _compiled("maxpool", seed)
    low = lower(qg, TINY)
    (pool,) = [op for op in qg.ops if op.name == "MaxPool_2"]
    assert pool.input in {b.name for b in low.host_buffers}
    assert 0 < _pool_cycles(low) <= POOL_CYCLES
    assert_isa_is_golden(low, qg, xs)


@pytest.mark.rtl
def test_the_ring_on_the_native_engine(seed):
    """The RTL runs the ring as the golden model, in the cycle model's cycles."""
    qg, xs = _compiled("maxpool", seed)
    assert_native_is_golden_in_model_cycles(lower(qg, TINY), qg, xs)
