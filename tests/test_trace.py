"""Chrome / Perfetto traces of the digits model (:mod:`fxpgen.sim.trace`), from the
cycle model and (marker ``rtl``) from the native harness's timeline build, checked
against the counters: a slice per instruction on its unit's track, the MATMUL
slices adding up to the MAC cycles, the last slice ending at the total cycles; and
``fxpgen run --trace --plot``, of a batched program too (its first run's images)."""

import json
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from fxpgen.app.cli import main
from fxpgen.config import CoreConfig
from fxpgen.hw.controller import UNIT_OF
from fxpgen.isa import Opcode, opcode_of
from fxpgen.sim.cycle_model import estimate
from fxpgen.sim.engine import NetworkProgram
from fxpgen.sim.trace import TRACKS, chrome_trace


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits model compiled for the default core: (folder, program, first test
    image as floats, quantized)."""
    from fxpgen.app.flow import compile_model, load_compiled
    from fxpgen.compiler.golden import quantize_input
    from fxpgen.models import digits_assets

    a = digits_assets()
    out = tmp_path_factory.mktemp("digits")
    compile_model(a["model"], np.load(a["calib"]), CoreConfig(), out)
    prog, qg = load_compiled(out)
    image = np.load(a["test_x"])[0]
    return out, NetworkProgram.from_program(prog, qg), image, quantize_input(qg, image)


def check_trace(trace: dict, program: NetworkProgram, counters: list[dict]) -> None:
    """``trace`` (parsed JSON) against the program's instructions and ``counters``
    (per HALT segment)."""
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert sorted(names.values()) == sorted(TRACKS.values())
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    by_track = Counter(names[e["tid"]] for e in slices if not e["name"].startswith("wait "))
    opcodes = [Opcode(opcode_of(w)) for w in program.words]
    expected = Counter(TRACKS[UNIT_OF.get(op, "control")] for op in opcodes)
    expected["layers"] = len(counters)
    assert by_track == expected
    matmul = [e for e in slices if names[e["tid"]] == "MATMUL"]
    assert sum(e["dur"] for e in matmul) == sum(c["mac_cycles"] for c in counters)
    assert max(e["ts"] + e["dur"] for e in slices) == sum(c["cycles"] for c in counters)
    waits = sum(e["dur"] for e in slices if e["name"].startswith("wait "))
    assert waits == sum(c["stall_dispatch"] for c in counters)
    for e in slices:
        assert e["dur"] >= 0 and e["ts"] >= 0, e


def test_the_models_trace_of_the_digits_model(digits):
    _, program, _, _ = digits
    timing = estimate(program, timeline=True)
    trace = json.loads(json.dumps(chrome_trace(timing.slices, timing.segments, source="model")))
    check_trace(trace, program, [s.counters for s in timing.segments])


def test_fxpgen_run_writes_the_trace_and_the_chart(digits, tmp_path):
    out, program, image, _ = digits
    np.save(tmp_path / "x.npy", image)
    trace, chart = tmp_path / "trace.json", tmp_path / "util.png"
    r = CliRunner().invoke(main, ["run", str(out), "--input", str(tmp_path / "x.npy"), "--engine",
                                  "model", "--json", "--trace", str(trace), "--plot", str(chart)])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert [l["layer"] for l in report["layers"]] == [s.layer for s in estimate(program).segments]
    check_trace(json.loads(trace.read_text()), program,
                [{k: int(v) for k, v in l.items() if k != "layer"} for l in report["layers"]])
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fxpgen_run_refuses_a_trace_from_an_engine_without_one(digits, tmp_path):
    out, _, image, _ = digits
    np.save(tmp_path / "x.npy", image)
    r = CliRunner().invoke(main, ["run", str(out), "--input", str(tmp_path / "x.npy"), "--engine",
                                  "isa", "--trace", str(tmp_path / "t.json")])
    assert r.exit_code == 2 and "native or model" in r.output


@pytest.mark.rtl
def test_the_native_trace_of_the_digits_model(digits):
    from fxpgen.sim.native import native_timeline

    _, program, _, xq = digits
    timing = native_timeline(program, np.asarray(xq, np.int64))
    trace = json.loads(json.dumps(chrome_trace(timing.slices, timing.segments, source="native")))
    check_trace(trace, program, [s.counters for s in timing.segments])


@pytest.fixture(scope="module")
def digits_batch2(tmp_path_factory):
    """The digits model compiled for batches of 2 on the default core: (folder, program,
    the first three test images as floats)."""
    from fxpgen.app.flow import compile_model, load_compiled
    from fxpgen.models import digits_assets

    a = digits_assets()
    out = tmp_path_factory.mktemp("digits_b2")
    compile_model(a["model"], np.load(a["calib"]), CoreConfig(), out, batch=2)
    prog, qg = load_compiled(out)
    return out, NetworkProgram.from_program(prog, qg), np.load(a["test_x"])[:3]


def run_traced(folder, images, engine: str, tmp_path) -> tuple[dict, dict]:
    """``fxpgen run --trace`` of ``images`` on ``engine``: (its JSON report, the trace)."""
    np.save(tmp_path / "x.npy", images)
    trace = tmp_path / "trace.json"
    r = CliRunner().invoke(main, ["run", str(folder), "--input", str(tmp_path / "x.npy"), "--engine",
                                  engine, "--json", "--trace", str(trace)])
    assert r.exit_code == 0, r.output
    return json.loads(r.output), json.loads(trace.read_text())


def counters_of(report: dict) -> list[dict]:
    return [{k: int(v) for k, v in l.items() if k in ("cycles", "mac_cycles", "stall_dispatch")}
            for l in report["layers"]]


def test_the_trace_of_a_batched_program_names_its_first_run(digits_batch2, tmp_path):
    folder, program, images = digits_batch2
    report, trace = run_traced(folder, images, "model", tmp_path)
    assert report["batch"] == 2
    check_trace(trace, program, counters_of(report))
    x = f"--input {tmp_path / 'x.npy'}"
    assert trace["otherData"]["inputs"] == [f"{x} image 0", f"{x} image 1"]
    _, short = run_traced(folder, images[:1], "model", tmp_path)
    assert short["otherData"]["inputs"] == [f"{x} image 0", "zero image (fills the batch)"]


@pytest.mark.rtl
def test_the_native_trace_of_a_batched_program_runs_its_first_images(digits_batch2, tmp_path,
                                                                     monkeypatch):
    from fxpgen.compiler.golden import quantize_input
    from fxpgen.sim import native

    folder, program, images = digits_batch2
    assert not np.array_equal(images[0], images[1])
    traced = []

    def timeline(prog, x):
        traced.append(np.array(x))
        return real(prog, x)
    real = native.native_timeline
    monkeypatch.setattr(native, "native_timeline", timeline)
    report, trace = run_traced(folder, images[:2], "native", tmp_path)
    assert report["golden_identical"]
    check_trace(trace, program, counters_of(report))
    qg = program.qgraph
    assert len(traced) == 1
    assert np.array_equal(traced[0], np.stack([quantize_input(qg, img) for img in images[:2]]))
    x = f"--input {tmp_path / 'x.npy'}"
    assert trace["otherData"]["inputs"] == [f"{x} image 0", f"{x} image 1"]
