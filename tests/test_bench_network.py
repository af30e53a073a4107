"""The whole-network RTL bench (``bench/network_rtl.py``): ResNet-18 at 224x224,
compiled with its input streamed in bands, one image end to end on the
Verilator-native harness, bit-identical to the golden model (slow: minutes)."""

import pytest

from bench import network_rtl

pytestmark = [pytest.mark.slow, pytest.mark.rtl]


def test_resnet18_224_end_to_end_on_the_rtl(tmp_path):
    r = network_rtl.bench("resnet18", 224, 16, 16, workdir=tmp_path)
    assert r["golden_identical"]
    assert r["input_pieces"] > 1
    assert r["spad_rows_used"] <= r["config"]["spad_depth"]
    # One HALT segment per layer (21 conv/FC, the max pool, the residual adds fused
    # into convs) and the output store; the counters add up.
    assert [layer["layer"] for layer in r["layers"]][-1] == "output"
    assert r["cycles"] >= r["ideal_cycles"]
    assert r["mac_cycles"] * 256 >= r["model_macs"]
    assert "resnet18 at 224x224" in network_rtl.markdown(r)
