"""Lowering: random small quantized networks (random shapes, strides, paddings,
groups, channel counts that are not multiples of the array) compile, and the
instruction-level simulator equals the golden model bit for bit."""

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from fxpgen.compiler.lower import DoesNotFit, lower
from fxpgen.compiler.qgraph import QAdd, QAvgPool, QConv, QGraph, QMaxPool, QTensor
from fxpgen.config import CoreConfig
from fxpgen.numerics import Format
from fxpgen.sim.golden import run_golden
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
    with pytest.raises(DoesNotFit, match=r"rows short"):
        lower(qg, CoreConfig(rows=4, cols=4, spad_depth=1024))
