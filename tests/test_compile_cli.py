"""``fxpgen compile`` as a user meets it: progress and warnings on stderr, errors in
the command line's terms, compact program folders of a checked format."""

import hashlib
import json
import re
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from fxpgen.app.cli import main
from fxpgen.app.flow import LOW_SQNR_DB, group_notes, low_signal, user_terms
from fxpgen.compiler.program import MAGIC, ProgramFormatError, load_program
from fxpgen.models import digits_assets


def _compile(out, *args):
    a = digits_assets()
    return CliRunner().invoke(main, ["compile", str(a["model"]), "--calib", str(a["calib"]),
                                     "--rows", "4", "--cols", "8", "-o", str(out), *args])


def test_progress_and_notes_on_stderr_and_silent_when_asked(tmp_path):
    loud = _compile(tmp_path / "loud")
    assert loud.exit_code == 0, loud.output
    assert "compile: write" in loud.stderr and "compiled" in loud.stdout
    # The lowering counts the layers up to all of them.
    assert re.search(r"compile: lower (\d+)/\1\b", loud.stderr), loud.stderr
    for flag in ("--quiet", "--json"):
        res = _compile(tmp_path / flag, flag)
        assert res.exit_code == 0, res.output
        assert "compile:" not in res.stderr
    quiet = _compile(tmp_path / "q", "--quiet", "--json")
    summary = json.loads(quiet.stdout)
    assert quiet.stderr == "" and summary["low_signal"] is False
    assert summary["output_sqnr_db"] >= LOW_SQNR_DB
    assert [f"warning: {w}" for w in summary["warnings"]] == \
        [line for line in loud.stderr.splitlines() if line.startswith("warning: ")]


def test_listing_only_on_request(tmp_path):
    assert _compile(tmp_path / "a").exit_code == 0
    assert not (tmp_path / "a" / "listing.txt").exists()
    assert _compile(tmp_path / "b", "--listing").exit_code == 0
    lines = (tmp_path / "b" / "listing.txt").read_text().splitlines()
    assert len(lines) == len(load_program(tmp_path / "b" / "program.fxp").words) + 1
    assert (tmp_path / "a" / "program.fxp").read_bytes() == (tmp_path / "b" / "program.fxp").read_bytes()


def test_old_program_version_is_refused_clearly(tmp_path):
    assert _compile(tmp_path).exit_code == 0
    raw = bytearray((tmp_path / "program.fxp").read_bytes()[:-32])
    struct.pack_into("<H", raw, len(MAGIC), 2)
    (tmp_path / "program.fxp").write_bytes(bytes(raw) + hashlib.sha256(raw).digest())
    with pytest.raises(ProgramFormatError, match="version 2, this fxpgen reads versions 5, 6"):
        load_program(tmp_path / "program.fxp")


def test_does_not_fit_names_the_option_and_the_smallest_depth_that_fits(tmp_path):
    # 32 rows: too few even with the maps off chip (at 64 they go off chip and it fits).
    res = _compile(tmp_path / "small", "--spad-depth", "32")
    assert res.exit_code != 0
    assert "--spad-depth" in res.output and "spad_depth" not in res.output
    assert "(1x1x" in res.output                     # the digits input as the model has it
    depth = int(res.output.split("it fits with --spad-depth ")[1].split()[0].rstrip(";"))
    assert _compile(tmp_path / "fits", "--spad-depth", str(depth)).exit_code == 0
    assert _compile(tmp_path / "half", "--spad-depth", str(depth // 2)).exit_code != 0


def _all_zero_model(path):
    """Conv 1x1 with weight -1 and a ReLU: zero on any non-negative input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(-np.ones((1, 1, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                           helper.make_node("Relu", ["c"], ["y"], name="relu")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_an_all_zero_output_is_flagged_loudly(tmp_path, seed):
    _all_zero_model(tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", np.random.default_rng(seed).uniform(0, 1, (4, 1, 8, 8)))
    res = CliRunner().invoke(main, ["compile", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npy"),
                                    "-o", str(tmp_path / "out"), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["low_signal"] is True
    assert any(line.startswith("WARNING: ") and "all zero" in line for line in res.stderr.splitlines())


def test_low_signal_reasons():
    ok = {"output": "y", "output_sqnr_db": LOW_SQNR_DB + 1, "output_nonzero_fraction": 0.5}
    assert low_signal(ok) is None
    assert "all zero" in low_signal({**ok, "output_nonzero_fraction": 0.0})
    assert "SQNR" in low_signal({**ok, "output_sqnr_db": LOW_SQNR_DB - 1})


def test_group_notes_one_line_per_repeated_kind():
    clips = [f"conv{i}: Clip(0, 6) quantized as ReLU saturating at {7 + i / 10:g} (u3.5)" for i in range(5)]
    other = ["fc: 3 weights clip at +-127 (fl_w 9)"]
    grouped = group_notes(clips + other)
    assert grouped == [f"{clips[0]} [5 of this kind; also conv1, conv2, conv3, ...]", other[0]]
    assert group_notes(clips[:2]) == clips[:2]


def test_quantizer_options_reach_the_report_and_the_weights(tmp_path):
    runs = {"default": (), "grid": ("--weight-mode", "grid"), "plain": ("--no-bias-correction",)}
    reports, arrays = {}, {}
    for name, args in runs.items():
        res = _compile(tmp_path / name, "--quiet", *args)
        assert res.exit_code == 0, res.output
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
        arrays[name] = np.load(tmp_path / name / "qgraph.npz")
    assert [reports[n]["weight_mode"] for n in runs] == ["std", "grid", "std"]
    assert [reports[n]["bias_correction"] for n in runs] == [True, True, False]
    weights = [k for k in arrays["default"].files if k.endswith("_weight")]
    biases = [k for k in arrays["default"].files if k.endswith("_bias")]
    # The grid search picks other weight formats somewhere; bias correction moves biases only.
    assert any(not np.array_equal(arrays["default"][k], arrays["grid"][k]) for k in weights)
    assert all(np.array_equal(arrays["default"][k], arrays["plain"][k]) for k in weights)
    assert any(not np.array_equal(arrays["default"][k], arrays["plain"][k]) for k in biases)


@pytest.mark.parametrize("args, option", [(("--weight-mode", "minmax"), "--weight-mode"),
                                          (("--mode", "max"), "--mode"),
                                          (("--bias-correction=yes",), "--bias-correction")])
def test_bad_quantizer_options_give_one_clear_error(tmp_path, args, option):
    res = _compile(tmp_path / "out", *args)
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and option in errors[0], res.output
    assert not (tmp_path / "out" / "program.fxp").exists()


def test_weight_clipping_note_names_the_command_line_options():
    note = "conv1: 3 weights clip at +-127 (fl_w 7); try per_channel=True or weight_mode='grid'"
    assert user_terms(note, None).endswith("try --per-channel or --weight-mode grid")


def test_program_file_holds_each_distinct_word_once_and_every_word_back(tmp_path):
    from fxpgen.compiler.lower import lower
    from fxpgen.compiler.program import load_qgraph
    assert _compile(tmp_path).exit_code == 0
    prog = load_program(tmp_path / "program.fxp")
    low = lower(load_qgraph(tmp_path), prog.cfg)
    assert prog.words == low.words and prog.consts == low.consts
    assert prog.header["n_insn_table"] == len(set(low.words)) < len(low.words)
    assert prog.header["n_data_table"] == len(set(low.consts)) < len(low.consts)


def test_weight_bits_reach_the_report_the_graph_and_the_summary(tmp_path):
    res = _compile(tmp_path / "w", "--weight-bits", "4,conv1=8")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "w" / "report.json").read_text())
    widths = {"conv1": 8, "conv2": 4, "conv3": 4, "fc": 4}
    assert report["weight_bits"] == widths
    assert {n: report["layers"][n]["weight_bits"] for n in widths} == widths
    bits = 72 * 8 + (576 + 1152 + 2560) * 4
    assert report["weight_memory"] == {"weights": 4360, "bits": bits, "float_bits": 139520,
                                       "int8_bits": 34880, "vs_float": 139520 / bits,
                                       "vs_int8": 34880 / bits}
    assert f"weight memory {bits // 8} bytes, 7.87x smaller than float, 1.97x than 8-bit" in res.stdout
    ops = json.loads((tmp_path / "w" / "qgraph.json").read_text())["ops"]
    arrays = np.load(tmp_path / "w" / "qgraph.npz")
    for op in ops:
        if op["kind"] == "conv":
            w = arrays[op["weight"]["array"]]
            hi = 2 ** (widths[op["name"]] - 1) - 1
            assert op["weight_bits"] == widths[op["name"]] and -hi <= w.min() <= w.max() <= hi
    plain = _compile(tmp_path / "p")
    assert "weight memory 4360 bytes, 4.00x smaller than float, 1.00x than 8-bit" in plain.stdout


def test_weight_bits_auto_searches_within_the_budget(tmp_path):
    runs = {}
    for name, args in {"auto": ("--weight-bits", "auto"),
                       "loose": ("--weight-bits", "auto", "--bits-budget", "6")}.items():
        res = _compile(tmp_path / name, "--quiet", "--json", *args)
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout)
        report = json.loads((tmp_path / name / "report.json").read_text())
        search = report["weight_search"]
        assert summary["weight_bits"] == report["weight_bits"]
        assert summary["weight_memory"] == report["weight_memory"] == search["memory"]
        assert search["result"] == report["output_sqnr_db"] >= search["all8"] - search["budget"]
        runs[name] = (search["budget"], report["weight_memory"]["bits"])
    assert runs["auto"][0] == 1.0 and runs["loose"][0] == 6.0
    assert 8 * 4360 > runs["auto"][1] >= runs["loose"][1]


@pytest.mark.parametrize("args, item", [(("--weight-bits", "5"), "'5'"),
                                        (("--weight-bits", "conv1=3"), "'conv1=3'"),
                                        (("--weight-bits", "4,6"), "'6'"),
                                        (("--weight-bits", "auto,4"), "'auto'"),
                                        (("--weight-bits", "conv1=4,conv1=6"), "conv1 is given twice"),
                                        (("--weight-bits", "4,conv9=2"), "'conv9'"),
                                        (("--bits-budget", "2"), "only with --weight-bits auto"),
                                        (("--weight-bits", "auto", "--bits-budget", "-1"), "-1")])
def test_bad_weight_bits_give_one_clear_error(tmp_path, args, item):
    res = _compile(tmp_path / "out", *args)
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and args[-2] in errors[0] and item in errors[0], res.output
    assert not (tmp_path / "out" / "program.fxp").exists()
