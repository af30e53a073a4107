"""``fxpgen`` as a careless user meets it: every bad input ends the command with one
readable line naming what was wrong and a non-zero exit, before any work and
without a traceback; nothing is written outside the output folder; a program
folder is checked as one unit; useless quantization is refused."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fxpgen.app.cli import main
from fxpgen.app.flow import MIN_SQNR_DB
from fxpgen.config import CoreConfig
from fxpgen.models.zoo import TestModel


def _tiny_model(seed: int) -> onnx.ModelProto:
    """Conv 3x3 (1 -> 4), ReLU, Conv 3x3 (4 -> 2) on a 1 x 8 x 8 input."""
    m = TestModel(seed)
    y = m.node("Relu", [m.node("Conv", ["x", m.w("w1", (4, 1, 3, 3))], ["c1"], pads=[1, 1, 1, 1])], ["r1"])
    m.node("Conv", [y, m.w("w2", (2, 4, 3, 3))], ["y"], pads=[1, 1, 1, 1])
    return m.model((1, 1, 8, 8), "y")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A folder with the tiny model, its files (good and bad) and its compiled
    program ``prog``; no test writes into it."""
    d = tmp_path_factory.mktemp("tiny")
    onnx.save(_tiny_model(0), d / "m.onnx")
    onnx.save(_tiny_model(1), d / "other.onnx")
    rng = np.random.default_rng(0)
    calib = rng.uniform(0, 1, (8, 1, 8, 8))
    np.save(d / "calib.npy", calib)
    np.save(d / "x.npy", rng.uniform(0, 1, (3, 1, 8, 8)))
    np.save(d / "big.npy", calib * 1e30)
    np.save(d / "u8.npy", (calib * 255).astype(np.uint8))
    nan = rng.uniform(0, 1, (3, 1, 8, 8))
    nan[1, 0, 2, 3] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "inf.npy", np.full((1, 8, 8), np.inf))
    np.save(d / "zero.npy", np.zeros((0, 1, 8, 8)))
    np.save(d / "shape.npy", np.zeros((3, 5, 5)))
    np.save(d / "text.npy", np.array(["0.5", "0.25"]))
    np.save(d / "complex.npy", np.zeros((1, 8, 8), complex))
    np.save(d / "objects.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    np.savez(d / "arrays.npz", x=calib)
    (d / "random.onnx").write_bytes(np.random.default_rng(1).bytes(300))
    (d / "truncated.onnx").write_bytes((d / "m.onnx").read_bytes()[:150])
    (d / "empty.onnx").write_bytes(b"")
    (d / "hello.npy").write_bytes(b"hello, world")
    (d / "cut.npy").write_bytes((d / "calib.npy").read_bytes()[:300])
    for name, model in (("prog", "m.onnx"), ("prog_other", "other.onnx")):
        res = CliRunner().invoke(main, ["compile", str(d / model), "--calib", str(d / "calib.npy"),
                                        "-o", str(d / name), "-q"])
        assert res.exit_code == 0, res.output
    return d


def _tree(*roots: Path) -> dict:
    """Every file under ``roots`` with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for r in roots if r.exists()
            for p in [r, *r.rglob("*")]}


#: (case, command line with {d} the tiny folder and {t} a fresh folder, text the error
#: line must hold). Every case stands for a class of careless inputs.
CASES = [
    # the ONNX model
    ("model random bytes", "compile {d}/random.onnx --calib {d}/calib.npy -o {t}/out",
     "random.onnx: not an ONNX model"),
    ("model truncated", "compile {d}/truncated.onnx --calib {d}/calib.npy -o {t}/out",
     "truncated.onnx: not an ONNX model"),
    ("model empty file", "compile {d}/empty.onnx --calib {d}/calib.npy -o {t}/out",
     "empty.onnx: holds no ONNX graph"),
    ("model is a .npy", "compile {d}/calib.npy --calib {d}/calib.npy -o {t}/out",
     "calib.npy: not an ONNX model"),
    # the calibration data
    ("calib pickled", "compile {d}/m.onnx --calib {d}/objects.npy -o {t}/out", "objects.npy: holds pickled"),
    ("calib .npz", "compile {d}/m.onnx --calib {d}/arrays.npz -o {t}/out", "arrays.npz: a .npz archive"),
    ("calib truncated", "compile {d}/m.onnx --calib {d}/cut.npy -o {t}/out", "cut.npy: a damaged .npy file"),
    ("calib not numpy", "compile {d}/m.onnx --calib {d}/hello.npy -o {t}/out", "hello.npy: not a .npy file"),
    ("calib text", "compile {d}/m.onnx --calib {d}/text.npy -o {t}/out", "text.npy: an array of <U4 (text)"),
    ("calib complex", "compile {d}/m.onnx --calib {d}/complex.npy -o {t}/out",
     "complex.npy: an array of complex128"),
    ("calib no images", "compile {d}/m.onnx --calib {d}/zero.npy -o {t}/out", "zero.npy: holds no images"),
    ("calib wrong shape", "compile {d}/m.onnx --calib {d}/shape.npy -o {t}/out",
     "shape.npy: input of shape (3, 5, 5)"),
    ("calib NaN", "compile {d}/m.onnx --calib {d}/nan.npy -o {t}/out",
     "nan.npy: 1 value(s) are NaN or infinite"),
    ("calib inf", "compile {d}/m.onnx --calib {d}/inf.npy -o {t}/out",
     "inf.npy: 64 value(s) are NaN or infinite"),
    ("calib 1e30", "compile {d}/m.onnx --calib {d}/big.npy -o {t}/out", "big.npy: values reach 9.97e+29"),
    # the output folder
    ("compile -o the model's folder", "compile {d}/m.onnx --calib {d}/calib.npy -o {d}",
     "holds files that are not an fxpgen program (arrays.npz, big.npy, calib.npy and"),
    ("compile -o under a file", "compile {d}/m.onnx --calib {d}/calib.npy -o {d}/m.onnx/out",
     "m.onnx/out: cannot create the folder"),
    ("compile -o a file", "compile {d}/m.onnx --calib {d}/calib.npy -o {d}/x.npy", "x.npy"),
    ("demo -o the model's folder", "demo --no-rtl -o {d}", "holds files that are not an fxpgen program"),
    ("verilog -o missing folder", "verilog -o {t}/no/such/core.v", "core.v: the folder"),
    ("verilog -o a folder", "verilog -o {t}", "is a directory"),
    ("run --output missing folder", "run {d}/prog --input {d}/x.npy --output {t}/no/y.npy",
     "y.npy: the folder"),
    ("build -o under a file", "build --board icebreaker -o {d}/m.onnx/build", "cannot create the folder"),
    # core configurations
    ("table depth 0", "compile {d}/m.onnx --calib {d}/calib.npy -o {t}/out --table-depth 0",
     "table_depth must be in"),
    ("spad depth not a power of two", "verilog -o {t}/core.v --spad-depth 1000",
     "spad_depth must be a power of two"),
    ("rows 0", "verilog -o {t}/core.v --rows 0", "rows must be an integer in 1..64"),
    # run inputs, on every engine
    ("run pickled", "run {d}/prog --input {d}/objects.npy", "objects.npy: holds pickled"),
    ("run NaN golden", "run {d}/prog --input {d}/nan.npy --engine golden", "nan.npy: 1 value(s) are NaN"),
    ("run NaN isa", "run {d}/prog --input {d}/nan.npy --engine isa", "nan.npy: 1 value(s) are NaN"),
    ("run NaN native", "run {d}/prog --input {d}/nan.npy --engine native", "nan.npy: 1 value(s) are NaN"),
    ("run no images", "run {d}/prog --input {d}/zero.npy --engine isa", "zero.npy: holds no images"),
    ("run wrong shape", "run {d}/prog --input {d}/shape.npy --engine rtl", "does not match the model input"),
    ("run text", "run {d}/prog --input {d}/text.npy", "text.npy: an array of <U4 (text)"),
    ("run not a program", "run {d} --input {d}/x.npy", "no program.fxp here"),
    ("run model as input", "run {d}/prog --input {d}/m.onnx", "m.onnx: not a .npy file"),
    # commands and options
    ("check bad gemm", "check --gemm 4x4", "expected MxKxN"),
    ("check stall", "check --gemm 4x4x4 --stall 1.5", "must be in [0, 1)"),
    ("build unknown board", "build --board nosuchboard -o {t}/b", "nosuchboard"),
    ("demo zero images", "demo --images 0", "must be at least 1"),
    ("isa-doc extra argument", "isa-doc extra", "extra"),
]


def _argv(line: str, d: Path, t: Path) -> list[str]:
    return line.format(d=d, t=t).split()


def _error_line(stderr: str) -> str:
    """The line of stderr that carries the error (a progress bar may precede it)."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("case,line,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(tiny, tmp_path, case, line, expected):
    before = _tree(tiny)
    res = CliRunner().invoke(main, _argv(line, tiny, tmp_path))
    assert res.exit_code in (1, 2), (res.exit_code, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.stderr
    error = _error_line(res.stderr)
    assert error.startswith("Error: ") and expected in error, res.stderr
    assert not error.startswith("Error: unexpected ")
    assert _tree(tiny) == before                    # nothing written beside the inputs
    assert all(p.is_dir() for p in tmp_path.rglob("*")), list(tmp_path.rglob("*"))


#: One case per command run as the user runs it: (command line, text of the error line).
PROCESS_CASES = [
    ("compile {d}/random.onnx --calib {d}/calib.npy -o {t}/out", "random.onnx: not an ONNX model"),
    ("run {d}/prog --input {d}/objects.npy --engine isa", "objects.npy: holds pickled"),
    ("verilog -o {t}/missing/core.v --table-depth 300", "table_depth must be in"),
    ("check --gemm 0x4x4", "dimensions must be positive"),
    ("demo --no-rtl -o {d}", "holds files that are not an fxpgen program"),
    ("build --board nosuchboard -o {t}/b", "nosuchboard"),
    ("isa-doc --no-such-option", "--no-such-option"),
]


@pytest.mark.parametrize("line,expected", PROCESS_CASES, ids=[c[0].split()[0] for c in PROCESS_CASES])
def test_every_command_fails_cleanly_as_a_process(tiny, tmp_path, line, expected):
    res = subprocess.run([sys.executable, "-m", "fxpgen.app.cli", *_argv(line, tiny, tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode in (1, 2), res
    assert "Traceback" not in res.stderr
    error = _error_line(res.stderr)
    assert error.startswith("Error: ") and expected in error, res.stderr
    assert res.stdout == ""


def test_the_good_case_still_works(tiny, tmp_path):
    res = CliRunner().invoke(main, ["run", str(tiny / "prog"), "--input", str(tiny / "x.npy"),
                                    "--engine", "isa", "--output", str(tmp_path / "y.npy")])
    assert res.exit_code == 0, res.output
    assert "bit-identical to golden model: yes" in res.stdout
    assert np.load(tmp_path / "y.npy").shape == (3, 2, 8, 8)
    again = CliRunner().invoke(main, ["compile", str(tiny / "m.onnx"), "--calib", str(tiny / "calib.npy"),
                                      "-o", str(tmp_path / "p"), "-q"])
    assert again.exit_code == 0, again.output
    rewrite = CliRunner().invoke(main, ["compile", str(tiny / "m.onnx"), "--calib", str(tiny / "calib.npy"),
                                        "-o", str(tmp_path / "p"), "-q", "--listing"])
    assert rewrite.exit_code == 0, rewrite.output           # a previous program may be replaced


def test_an_unexpected_exception_is_one_line_and_a_traceback_only_with_debug(tiny, monkeypatch):
    import fxpgen.app.flow as flow

    def broken(*args, **kwargs):
        raise KeyError("lost")
    monkeypatch.setattr(flow, "run_compiled", broken)
    argv = ["run", str(tiny / "prog"), "--input", str(tiny / "x.npy")]
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2
    assert _error_line(res.stderr) == \
        "Error: unexpected KeyError: 'lost' (fxpgen --debug shows the traceback)"
    debug = CliRunner().invoke(main, ["--debug", *argv])
    assert isinstance(debug.exception, KeyError)


def _starts_a_line(stderr: str, text: str) -> bool:
    at = stderr.index(text)
    return at == 0 or stderr[at - 1] in "\r\n"


def test_an_error_starts_its_own_line_after_a_progress_bar(tiny, tmp_path, monkeypatch):
    res = CliRunner().invoke(main, ["compile", str(tiny / "m.onnx"), "--calib", str(tiny / "big.npy"),
                                    "-o", str(tmp_path / "out")])
    assert res.exit_code == 1 and "compile: quantize" in res.stderr
    assert _starts_a_line(res.stderr, "Error: the quantized output")

    from fxpgen.sim.engine import IsaEngine

    def halfway(self, program, inputs, *, progress=None):
        progress(1)
        raise RuntimeError("instruction-level simulator stopped: ADDRESS at instruction 7 (input 1)")
    monkeypatch.setattr(IsaEngine, "run", halfway)
    res = CliRunner().invoke(main, ["run", str(tiny / "prog"), "--input", str(tiny / "x.npy"),
                                    "--engine", "isa"])
    assert res.exit_code == 1 and "1/3" in res.stderr
    assert _starts_a_line(res.stderr, "Error: instruction-level simulator stopped")
    assert "\nError: " in res.stderr


def _copy_program(tiny: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny / "prog", tmp_path / "prog"))


@pytest.mark.parametrize("engine", ["golden", "isa", "rtl", "native"])
def test_a_program_from_another_compile_is_refused(tiny, tmp_path, engine):
    prog = _copy_program(tiny, tmp_path)
    shutil.copy(tiny / "prog_other" / "program.fxp", prog / "program.fxp")
    res = CliRunner().invoke(main, ["run", str(prog), "--input", str(tiny / "x.npy"), "--engine", engine])
    assert res.exit_code == 1
    assert "program.fxp: differs from the file the compile wrote" in _error_line(res.stderr)


@pytest.mark.parametrize("name", ["qgraph.npz", "qgraph.json", "meta.json", "manifest.json"])
def test_every_file_run_reads_is_checked(tiny, tmp_path, name):
    prog = _copy_program(tiny, tmp_path)
    if name == "manifest.json":
        (prog / name).unlink()
        expected = "no manifest.json"
    else:
        (prog / name).write_bytes((prog / name).read_bytes() + b" ")
        expected = f"{name}: differs from the file the compile wrote"
    res = CliRunner().invoke(main, ["run", str(prog), "--input", str(tiny / "x.npy")])
    assert res.exit_code == 1 and expected in _error_line(res.stderr), res.stderr


def test_a_mismatch_with_the_golden_model_exits_non_zero(tiny, monkeypatch):
    from fxpgen.sim.engine import EngineResult, IsaEngine
    honest = IsaEngine.run

    def off_by_one(self, program, inputs, *, progress=None):
        res = honest(self, program, inputs, progress=progress)
        return EngineResult([y + (k == 1) for k, y in enumerate(res.outputs)], res.layers, res.info)
    monkeypatch.setattr(IsaEngine, "run", off_by_one)
    for extra in ([], ["--json"]):
        res = CliRunner().invoke(main, ["run", str(tiny / "prog"), "--input", str(tiny / "x.npy"),
                                        "--engine", "isa", *extra])
        assert res.exit_code == 1, res.output
        assert _error_line(res.stderr) == "Error: the isa engine's outputs differ from the golden model's"


def test_engines_refuse_quantized_inputs_outside_the_input_format(tiny):
    from fxpgen.app.flow import load_compiled
    from fxpgen.sim.engine import GoldenEngine, IsaEngine, NetworkProgram
    prog, qg = load_compiled(tiny / "prog")
    program = NetworkProgram.from_program(prog, qg)
    fmt = qg.tensor(qg.input).fmt
    good = np.full((1, 8, 8), fmt.hi, np.int64)
    for bad, why in ((good + 1, "outside its format"), (good[0], "shape"),
                     (np.full((1, 8, 8), np.nan), "not all integers")):
        for engine in (GoldenEngine(), IsaEngine()):
            with pytest.raises(ValueError, match=why):
                engine.run(program, [good, bad])


def test_useless_quantization_is_an_error_unless_allowed(tiny, tmp_path):
    argv = ["compile", str(tiny / "m.onnx"), "--calib", str(tiny / "big.npy"), "-q", "--json"]
    res = CliRunner().invoke(main, [*argv, "-o", str(tmp_path / "refused")])
    assert res.exit_code == 1
    assert f"(under {MIN_SQNR_DB:g} dB)" in _error_line(res.stderr)
    assert not list((tmp_path / "refused").iterdir())          # nothing written
    allowed = CliRunner().invoke(main, [*argv, "-o", str(tmp_path / "allowed"), "--allow-low-snr"])
    assert allowed.exit_code == 0, allowed.output
    assert "WARNING: --calib" in allowed.stderr and "values reach 9.97e+29" in allowed.stderr


def test_integer_calibration_data_is_a_warning_with_the_figures(tiny, tmp_path):
    res = CliRunner().invoke(main, ["compile", str(tiny / "m.onnx"), "--calib", str(tiny / "u8.npy"),
                                    "-o", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, res.output
    assert any(line.startswith("WARNING: --calib") and "integers (uint8, 0..254)" in line
               for line in res.stderr.splitlines()), res.stderr


def test_compile_force_writes_into_a_foreign_folder(tiny, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    argv = ["compile", str(tiny / "m.onnx"), "--calib", str(tiny / "calib.npy"), "-o", str(tmp_path), "-q"]
    assert CliRunner().invoke(main, argv).exit_code == 1
    assert not (tmp_path / "program.fxp").exists()
    assert CliRunner().invoke(main, [*argv, "--force"]).exit_code == 0
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "manifest.json").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_output_folder_is_refused_before_the_work(tiny, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    res = CliRunner().invoke(main, ["compile", str(tiny / "m.onnx"), "--calib", str(tiny / "calib.npy"),
                                    "-o", str(locked / "out")])
    assert res.exit_code == 1 and "cannot create the folder" in _error_line(res.stderr)


@pytest.mark.parametrize("line", ["compile {d}/m.onnx --calib {d}/calib.npy -o {t}/out",
                                  "run {d}/prog --input {d}/x.npy --output {t}/y.npy",
                                  "verilog -o {t}/core.v"], ids=["compile", "run", "verilog"])
def test_a_folder_that_refuses_files_is_named_before_the_work(tiny, tmp_path, monkeypatch, line):
    """Whatever the cause (permissions, a read-only mount, a full disk: simulated
    here, as root may write anywhere), the folder is named before any work."""
    import fxpgen.app.flow as flow
    import fxpgen.app.paths as paths

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def no_work(*args, **kwargs):
        raise AssertionError("the work started")
    monkeypatch.setattr(paths.tempfile, "NamedTemporaryFile", refuse)
    for name in ("compile_model", "run_compiled"):
        monkeypatch.setattr(flow, name, no_work)
    res = CliRunner().invoke(main, _argv(line, tiny, tmp_path))
    assert res.exit_code == 1, res.output
    error = _error_line(res.stderr)
    assert error.startswith("Error: ") and str(tmp_path) in error
    assert error.endswith(": cannot write here (Permission denied)")


def test_every_accepted_core_configuration_elaborates():
    """The smallest value of each memory depth CoreConfig accepts (a one-entry shift
    table among them) builds into Verilog."""
    from fxpgen.hw.verilog import generate_verilog
    small = CoreConfig(rows=1, cols=1, acc_width=17, spad_depth=4, wbuf_depth=4, acc_depth=4, table_depth=1)
    assert "module fxpgen_core" in generate_verilog(small)
    with pytest.raises(ValueError, match="table_depth must be in 1..256"):
        CoreConfig(table_depth=0)
