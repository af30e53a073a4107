"""The compiler end to end: ``fxpgen compile``, ``fxpgen run`` on the three engines
and ``fxpgen demo`` on the shipped digits CNN."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fxpgen.app.cli import main
from fxpgen.compiler.program import ProgramFormatError, load_program
from fxpgen.config import CoreConfig
from fxpgen.models import digits_assets


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    a = digits_assets()
    res = CliRunner().invoke(main, ["compile", str(a["model"]), "--calib", str(a["calib"]),
                                    "--rows", "4", "--cols", "8", "-o", str(out), "--json", "--listing"])
    assert res.exit_code == 0, res.output
    return out


def test_compile_writes_a_program_directory(compiled):
    for f in ("program.fxp", "listing.txt", "qgraph.json", "qgraph.npz", "report.json", "meta.json"):
        assert (compiled / f).is_file(), f
    listing = (compiled / "listing.txt").read_text().splitlines()
    prog = load_program(compiled / "program.fxp")
    assert len(listing) == len(prog.words) + 1
    assert all(len(line.split()) >= 3 for line in listing[1:])      # index, layer, instruction
    with pytest.raises(ProgramFormatError, match="another core configuration"):
        load_program(compiled / "program.fxp", CoreConfig(rows=8, cols=8))


def test_golden_and_isa_engines_agree(compiled, tmp_path):
    x = np.load(digits_assets()["test_x"])[:24]
    np.save(tmp_path / "x.npy", x)
    outs = {}
    for engine in ("golden", "isa"):
        res = CliRunner().invoke(main, ["run", str(compiled), "--input", str(tmp_path / "x.npy"),
                                        "--engine", engine, "--output", str(tmp_path / f"{engine}.npy")])
        assert res.exit_code == 0, res.output
        outs[engine] = np.load(tmp_path / f"{engine}.npy")
    assert outs["golden"].shape == (24, 10, 1, 1)
    assert np.array_equal(outs["golden"], outs["isa"])


@pytest.mark.rtl
def test_native_engine_matches_golden(compiled, tmp_path):
    """``fxpgen run --engine native``: the RTL in the Verilator-native harness, every
    output compared with the golden model, per-layer counters reported."""
    x = np.load(digits_assets()["test_x"])[:6]
    np.save(tmp_path / "x.npy", x)
    res = CliRunner().invoke(main, ["run", str(compiled), "--input", str(tmp_path / "x.npy"),
                                    "--engine", "native", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["golden_identical"] and len(out["outputs"]) == 6
    assert out["cycles_per_image"] > 0 and all(l["cycles"] > 0 for l in out["layers"])


def onnx_layer_macs(path) -> dict[str, int]:
    """Multiply-accumulates of each Conv and Gemm node of an ONNX model, from its
    weights' shapes and the inferred output shapes alone: conv Cout*Cin/groups*kh*kw*oh*ow,
    fully connected in*out."""
    import onnx
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.value_info, *model.graph.output)}
    out = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            cout, cin_per_group, kh, kw = dims[node.input[1]]
            _, _, oh, ow = shapes[node.output[0]]
            out[node.name] = cout * cin_per_group * kh * kw * oh * ow
        elif node.op_type == "Gemm":
            n_out, n_in = dims[node.input[1]]
            out[node.name] = n_in * n_out
    return out


def run_report(compiled, tmp_path, engine: str, images: int = 3) -> dict:
    np.save(tmp_path / "x.npy", np.load(digits_assets()["test_x"])[:images])
    res = CliRunner().invoke(main, ["run", str(compiled), "--input", str(tmp_path / "x.npy"),
                                    "--engine", engine, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{"):])


def check_utilization(out: dict, rows: int, cols: int) -> None:
    """Every layer's MACs those of the ONNX model's node of that name (0 for the layers
    that are no Conv or Gemm), and the MAC utilization of each layer and of the whole
    network their MACs / (cycles x rows x cols)."""
    expected = onnx_layer_macs(digits_assets()["model"])
    assert set(expected) == {"conv1", "conv2", "conv3", "fc"}
    layers = {l["layer"]: l for l in out["layers"]}
    assert set(expected) <= set(layers)
    for name, l in layers.items():
        assert l["macs"] == expected.get(name, 0), name
        assert l["mac_utilization"] == pytest.approx(l["macs"] / (l["cycles"] * rows * cols), rel=1e-12)
        assert l["array_occupancy"] == pytest.approx(l["mac_cycles"] / l["cycles"], rel=1e-12)
        assert 0 <= l["mac_utilization"] <= l["array_occupancy"] <= 1
    assert out["model_macs"] == sum(expected.values()) == 62464
    assert out["cycles_per_image"] == sum(l["cycles"] for l in out["layers"])
    assert out["mac_utilization"] == pytest.approx(
        out["model_macs"] / (out["cycles_per_image"] * rows * cols), rel=1e-12)


def test_run_reports_mac_utilization_per_layer(compiled, tmp_path):
    """The cycle model's report: each layer's MACs counted independently from the
    ONNX weights, and MAC utilization next to array occupancy."""
    out = run_report(compiled, tmp_path, "model")
    check_utilization(out, 4, 8)
    text = CliRunner().invoke(main, ["run", str(compiled), "--input", str(tmp_path / "x.npy"),
                                     "--engine", "model"]).output
    assert f"MAC utilization:  {out['mac_utilization']:.3f} (62464 MACs / (cycles x 32))" in text
    fc = next(l for l in out["layers"] if l["layer"] == "fc")
    assert any(line.split()[:4] == ["fc", f"{fc['cycles']:.0f}", "2560", f"{fc['mac_utilization']:.3f}"]
               for line in text.splitlines())


@pytest.mark.rtl
def test_native_engine_reports_mac_utilization(compiled, tmp_path):
    """The native RTL engine: the same fields as the cycle model, the same MACs, and
    utilization from the counters the core measured."""
    out = run_report(compiled, tmp_path, "native")
    check_utilization(out, 4, 8)
    model = run_report(compiled, tmp_path, "model")
    assert [set(l) for l in out["layers"]] == [set(l) for l in model["layers"]]
    assert [l["cycles"] for l in out["layers"]] == [l["cycles"] for l in model["layers"]]


def test_run_rejects_wrong_input_shape(compiled, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((3, 5, 5), np.float32))
    res = CliRunner().invoke(main, ["run", str(compiled), "--input", str(tmp_path / "bad.npy")])
    assert res.exit_code != 0 and "does not match the model input" in res.output


def test_compile_rejects_unsupported_model(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], name="sm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", np.zeros((2, 4, 1, 1), np.float32))
    res = CliRunner().invoke(main, ["compile", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npy"),
                                    "-o", str(tmp_path / "out")])
    assert res.exit_code != 0
    assert "Softmax" in res.output and "sm" in res.output


def test_demo_compiles_for_a_batch(capsys):
    """``fxpgen demo --batch 16``: the program takes 16 images a run, every test image
    (360, the last run filled up) bit-identical between the instruction-level simulator
    and the golden model, the accuracy that of the batch-1 program (0.9944); the
    report's first line says the batch."""
    from fxpgen.app.cli import _print_demo

    res = CliRunner().invoke(main, ["demo", "--no-rtl", "--batch", "16", "--images", "4", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["batch"] == 16 and r["images"] == 360 and "rtl_images" not in r
    assert r["isa_identical_to_golden"]
    assert r["fixed_point_accuracy"] == pytest.approx(358 / 360)
    _print_demo(r, CoreConfig())
    text = capsys.readouterr().out
    assert text.startswith("digits CNN on a 8x8 core (360 test images, 16 a run)\n")
    assert "instruction-level simulator bit-identical to golden: yes (all images)" in text


def test_demo_refuses_a_batch_that_does_not_fit():
    res = CliRunner().invoke(main, ["demo", "--no-rtl", "--batch", "4096"])
    assert res.exit_code == 1
    assert "--batch 4096 does not fit" in res.output and "the largest batch that fits is" in res.output
    res = CliRunner().invoke(main, ["demo", "--batch", "0"])
    assert res.exit_code == 2 and "must be at least 1" in res.output


@pytest.mark.rtl
def test_demo_with_a_batch_on_the_native_engine(tmp_path, capsys):
    """``fxpgen demo --batch 16 --engine native`` on 20 images (a full run and one of 4
    images and 12 zero images): every image bit-identical to the golden model, the
    cycles per image a run's over 16, the layers' counters those the cycle model
    predicts for the program the demo kept; the report's lines name the engine and
    a run's cycles."""
    from fxpgen.app.cli import _print_demo

    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--batch", "16", "--images", "20", "--engine", "native",
                                    "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    print({k: v for k, v in r.items() if k != "layers"})
    assert r["batch"] == 16 and r["rtl_engine"] == "native" and r["rtl_images"] == 20
    assert r["rtl_identical_to_golden"] and r["isa_identical_to_golden"]
    run = sum(l["cycles"] for l in r["layers"])
    assert r["cycles_per_image"] == run / 16
    assert r["mac_utilization"] == pytest.approx(r["model_macs"] / (run / 16 * 64))
    np.save(tmp_path / "x.npy", np.load(digits_assets()["test_x"])[:20])
    model = CliRunner().invoke(main, ["run", str(out), "--input", str(tmp_path / "x.npy"),
                                      "--engine", "model", "--json"])
    assert model.exit_code == 0, model.output
    predicted = json.loads(model.output)["layers"]
    assert [{k: l[k] for k in ("layer", "cycles", "mac_cycles", "stall_dispatch", "macs")}
            for l in r["layers"]] == [{k: l[k] for k in ("layer", "cycles", "mac_cycles", "stall_dispatch",
                                                         "macs")} for l in predicted]
    _print_demo(r, CoreConfig())
    text = capsys.readouterr().out
    assert "RTL bit-identical to golden: yes (20 images, native engine)" in text
    assert f"(a run of 16 images: {run:.0f} cycles)" in text


@pytest.mark.rtl
def test_demo_on_rtl_for_a_handful_of_images():
    res = CliRunner().invoke(main, ["demo", "--images", "4", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    print({k: v for k, v in r.items() if k != "layers"})
    assert r["rtl_identical_to_golden"] and r["isa_identical_to_golden"]
    assert r["float_accuracy"] >= 0.97
    assert abs(r["fixed_point_accuracy"] - r["float_accuracy"]) <= 0.01
    assert r["cycles_per_image"] > 0 and 0 < r["mac_utilization"] <= 1
    assert [l["layer"] for l in r["layers"]][:2] == ["conv1", "conv2"]


@pytest.mark.rtl
@pytest.mark.slow
def test_demo_on_rtl_whole_test_set():
    res = CliRunner().invoke(main, ["demo", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    print({k: v for k, v in r.items() if k != "layers"})
    assert r["rtl_images"] == r["images"] == 360
    assert r["rtl_identical_to_golden"]
    assert abs(r["fixed_point_accuracy"] - r["float_accuracy"]) <= 0.01
