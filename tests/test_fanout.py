"""``fxpgen sweep`` and ``fxpgen eval``: their pieces without Ray (points, keys, Pareto
front, shards, bad input, the missing extra) and both commands end to end on a local
2-CPU Ray instance (marker ``scale``; skipped without Ray)."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from fxpgen.app.cli import main
from fxpgen.app.evaluate import merge_shards, shard_slices
from fxpgen.app.flow import compile_model, run_compiled
from fxpgen.app.sweep import SweepPoint, pareto, parse_depths, parse_shapes, point_key
from fxpgen.config import CoreConfig
from fxpgen.models import digits_assets

SHAPES = "4x4,4x8,8x4,8x8"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def digits_program(tmp_path_factory):
    """The digits model compiled for the default 8x8 core."""
    a = digits_assets()
    out = tmp_path_factory.mktemp("digits") / "program"
    compile_model(a["model"], np.load(a["calib"]), CoreConfig(), out)
    return out


def test_parse_shapes_and_depths():
    assert parse_shapes("4x4, 8X16,4x4") == [(4, 4), (8, 16)]
    assert parse_depths("1024,4096,1024", "--spad-depths") == [1024, 4096]
    for bad in ("4x", "4x4;8x8", "0x4", ""):
        with pytest.raises(ValueError, match="--shapes"):
            parse_shapes(bad)
    with pytest.raises(ValueError, match="--acc-depths"):
        parse_depths("1k", "--acc-depths")


def test_point_key_names_every_parameter():
    p = SweepPoint(4, 4, 4096, 1024, 2048)
    keys = {point_key(p, "native", False, "m"), point_key(p, "model", False, "m"),
            point_key(p, "native", True, "m"), point_key(p, "native", False, "other model"),
            point_key(SweepPoint(4, 4, 2048, 1024, 2048), "native", False, "m"),
            point_key(SweepPoint(4, 4, 4096, 1024, 2048, "icebreaker"), "native", False, "m")}
    assert len(keys) == 6
    assert point_key(p, "native", False, "m") == point_key(SweepPoint(4, 4, 4096, 1024, 2048), "native", False, "m")


def test_pareto_front():
    points = [(16, 8000), (32, 5000), (32, 6000), (64, 3500), (128, 3500), (64, 9000)]
    assert pareto(points) == [True, True, False, True, False, False]


def test_shard_slices_cover_the_images_once():
    for n, shards in [(360, 8), (5, 8), (1, 1), (7, 3)]:
        cuts = shard_slices(n, shards)
        assert len(cuts) == min(n, shards)
        assert [i for c in cuts for i in range(n)[c]] == list(range(n))
        assert max(c.stop - c.start for c in cuts) - min(c.stop - c.start for c in cuts) <= 1


def test_merge_shards_reports_each_differing_image():
    out = np.arange(12).reshape(4, 3, 1, 1)
    wrong = out.copy()
    wrong[2, 0] += 5                       # image 2's top class becomes 0, its label
    shards = [{"outputs": wrong[:3], "golden": out[:3], "seconds": 1.0, "cycles_per_image": 10.0,
               "saturated": 0},
              {"outputs": wrong[3:], "golden": out[3:], "seconds": 1.0, "cycles_per_image": 20.0,
               "saturated": 2}]
    report = merge_shards(shards, np.array([2, 2, 0, 1]), "native")
    assert report["images_differing"] == [2] and not report["golden_identical"]
    assert report["accuracy"] == 0.75 and report["golden_accuracy"] == 0.5
    assert report["cycles_per_image"] == 12.5 and report["saturated"] == 2


def test_without_ray_both_commands_name_the_extra(monkeypatch, tmp_path, digits_program):
    monkeypatch.setitem(sys.modules, "ray", None)
    a = digits_assets()
    for args in (["sweep", "--shapes", "4x4", "-o", str(tmp_path / "sweep")],
                 ["eval", str(digits_program), "--input", str(a["test_x"]), "--labels", str(a["test_y"])]):
        r = invoke(*args)
        assert r.exit_code == 1, r.output
        assert r.output.strip().splitlines() == [
            f"Error: fxpgen {args[0]} runs on Ray, which is not installed: pip install 'fxpgen[scale]'"]


def test_sweep_bad_input(tmp_path):
    r = invoke("sweep", "--shapes", "4x4,8", "-o", str(tmp_path))
    assert r.exit_code == 1 and "--shapes '4x4,8': '8' is not ROWSxCOLS" in r.output
    r = invoke("sweep", "--shapes", "3x4", "-o", str(tmp_path))
    assert r.exit_code == 1 and "sweep point 3x4 spad 4096 wbuf 1024 acc 2048: rows (3) and cols (4)" in r.output
    r = invoke("sweep", "--shapes", "4x4", "--spad-depths", "1000", "-o", str(tmp_path))
    assert r.exit_code == 1 and "spad_depth must be a power of two" in r.output
    r = invoke("sweep", "--shapes", "4x4", "--build", "-o", str(tmp_path))
    assert r.exit_code == 2 and "--build and --boards go together" in r.output
    r = invoke("sweep", "--shapes", "4x4", "--engine", "golden", "-o", str(tmp_path))
    assert r.exit_code == 2 and "not an engine that counts cycles" in r.output
    r = invoke("sweep", "--shapes", "4x4", "--calib", str(digits_assets()["calib"]), "-o", str(tmp_path))
    assert r.exit_code == 2 and "--calib and --input go with --model" in r.output
    r = invoke("sweep", "--shapes", "4x4", "--workers", "0", "-o", str(tmp_path))
    assert r.exit_code == 2 and "--workers" in r.output


def test_eval_bad_labels(tmp_path, digits_program):
    a = digits_assets()
    for labels, why in [(np.load(a["test_y"])[:-1], "one label per image"),
                        (np.load(a["test_y"]).astype(np.float32), "labels must be integers"),
                        (np.full(len(np.load(a["test_y"])), 10), "label 10 of image 0 is not a class")]:
        np.save(tmp_path / "y.npy", labels)
        r = invoke("eval", str(digits_program), "--input", str(a["test_x"]), "--labels", str(tmp_path / "y.npy"))
        assert r.exit_code == 1 and why in r.output, r.output


@pytest.mark.scale
@pytest.mark.rtl
def test_sweep_on_ray(tmp_path):
    """Four array shapes x a scratchpad that fits and one that does not: the four that
    fit are measured on the native harness (the 8x8 point's cycles equal a direct
    run's), the four others are reported with their log tail; a re-run skips the
    measured points and measures the failed ones again."""
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    args = ["sweep", "--shapes", SHAPES, "--spad-depths", "4096,16", "--images", "2", "--workers", "2",
            "-o", str(out)]
    r = invoke(*args)
    assert r.exit_code == 1, r.output
    assert "8 point(s), 0 already measured" in r.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    ok = {(p["rows"], p["cols"]): p for p in rows if p["status"] == "ok"}
    failed = [p for p in rows if p["status"] == "failed"]
    assert set(ok) == {(4, 4), (4, 8), (8, 4), (8, 8)} and all(p["spad_depth"] == 4096 for p in ok.values())
    assert len(failed) == 4 and all(p["spad_depth"] == 16 for p in failed)
    for p in failed:
        assert p["error"].startswith("DoesNotFit: conv1:") and "it fits with --spad-depth" in p["log_tail"]
    assert all(p["golden_identical"] and p["cycles_per_inference"] > 0 for p in ok.values())
    assert ok[(4, 4)]["cycles_per_inference"] > ok[(8, 8)]["cycles_per_inference"]
    for p in ok.values():
        assert sum(l["cycles"] for l in p["layers"]) == p["cycles_per_inference"]

    a = digits_assets()
    direct = tmp_path / "direct"
    compile_model(a["model"], np.load(a["calib"]), CoreConfig(), direct)
    expect = run_compiled(direct, np.load(a["test_x"])[:2], "native")["cycles_per_image"]
    assert ok[(8, 8)]["cycles_per_inference"] == expect

    with open(out / "results.csv", newline="") as f:
        table = {line["key"]: line for line in csv.DictReader(f)}
    assert table.keys() == {p["key"] for p in rows}
    for p in rows:
        assert table[p["key"]]["status"] == p["status"]
        if p["status"] == "ok":
            assert float(table[p["key"]]["cycles_per_inference"]) == p["cycles_per_inference"]
            assert float(table[p["key"]]["cycles:conv1"]) == p["layers"][0]["cycles"]
        else:
            assert table[p["key"]]["log_tail"] == p["log_tail"]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = invoke(*args)
    assert again.exit_code == 1, again.output
    assert "8 point(s), 4 already measured" in again.output
    rerun = {p["key"]: p for p in json.loads((out / "results.json").read_text())["rows"]}
    assert all(rerun[p["key"]] == p for p in ok.values())
    assert len(rerun) == 8


@pytest.mark.scale
@pytest.mark.rtl
def test_eval_on_ray(digits_program):
    """The digits test set through the native RTL in shards on 2 workers: every image
    bit-identical to the golden model, the accuracy the golden engine's."""
    pytest.importorskip("ray")
    a = digits_assets()
    x, y = np.load(a["test_x"]), np.load(a["test_y"])
    r = invoke("eval", str(digits_program), "--input", str(a["test_x"]), "--labels", str(a["test_y"]),
               "--engine", "native", "--workers", "2", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output[r.output.index("{"):])
    golden = run_compiled(digits_program, x, "golden")["outputs"].reshape(len(x), -1)
    assert report["images"] == len(x)
    assert report["golden_identical"] and report["images_differing"] == []
    assert report["accuracy"] == report["golden_accuracy"] == float(np.mean(np.argmax(golden, axis=1) == y))
    assert report["cycles_per_image"] > 0


@pytest.mark.parametrize("family, utilization, luts", [
    ("ecp5", {"luts": 5120, "flip_flops": 3000, "block_ram": 12, "dsp": 16}, 5120),
    ("ice40", {"logic_cells": 4800, "block_ram": 20, "dsp": 4}, 4800),
])
def test_build_figures_and_plot_against_luts(monkeypatch, tmp_path, family, utilization, luts):
    """A built point's row takes the build report's resources (logic cells stand for
    LUTs on iCE40), and the plot's x axis is LUTs once every point was built."""
    import fxpgen.boards.build as build
    from fxpgen.app.sweep import _build_figures, plot_rows

    def fake_build(name, outdir, *, cfg):
        return {"built": True, "utilization": {k: {"used": v, "available": 10 ** 5} for k, v in utilization.items()},
                "fmax_mhz": 48.5, "timing_met": True, "build_s": 1.0}
    monkeypatch.setattr(build, "build_board", fake_build)
    point = SweepPoint(4, 4, 4096, 1024, 2048, "icebreaker")
    figures = _build_figures(point, point.config(), tmp_path)
    assert figures == {"luts": luts, "ffs": utilization.get("flip_flops"), "bram": utilization["block_ram"],
                       "dsp": utilization["dsp"], "fmax_mhz": 48.5, "timing_met": True, "build_s": 1.0}
    rows = [{"status": "ok", "rows": r, "cols": r, "pes": r * r, "cycles_per_inference": 8000 // r,
             **figures, "luts": luts * r} for r in (2, 4, 8)]
    assert plot_rows(rows, tmp_path / "built.png") == "luts"
    assert plot_rows([*rows, {**rows[0], "luts": None}], tmp_path / "pes.png") == "pes"
    assert (tmp_path / "built.png").read_bytes()[:4] == b"\x89PNG"
