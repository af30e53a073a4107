"""The ``fxpgen`` command line.

Every error a user can cause ends a command with one line on stderr that names the
file, option or value at fault, and exit status 1 (2 for a usage error); anything
else with one line naming the exception, exit status 2, and its traceback only with
``fxpgen --debug``."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
import weakref
from pathlib import Path

import click

from fxpgen.app.engines import ENGINES
from fxpgen.app.flow import DEFAULT_BITS_BUDGET_DB, DEMO_RTL_ENGINES, MIN_SQNR_DB
from fxpgen.config import CoreConfig

__all__ = ["main"]


def core_options(f):
    """Generator parameters shared by every command that builds a core."""
    defaults = CoreConfig()
    options = [
        click.option("--rows", type=int, default=defaults.rows, show_default=True,
                     help="Array rows (reduction dimension of a weight tile)."),
        click.option("--cols", type=int, default=defaults.cols, show_default=True,
                     help="Array columns (output channels of a weight tile)."),
        click.option("--acc-width", type=int, default=defaults.acc_width, show_default=True,
                     help="Accumulator bits."),
        click.option("--spad-depth", type=int, default=defaults.spad_depth, show_default=True,
                     help="Scratchpad rows (power of two)."),
        click.option("--wbuf-depth", type=int, default=defaults.wbuf_depth, show_default=True,
                     help="Weight-buffer rows (power of two)."),
        click.option("--acc-depth", type=int, default=defaults.acc_depth, show_default=True,
                     help="Accumulator rows (power of two)."),
        click.option("--table-depth", type=int, default=defaults.table_depth, show_default=True,
                     help="Shift-table entries."),
        click.option("--lut-tables", type=int, default=defaults.lut_tables, show_default=True,
                     help="256-entry lookup tables for LUT (nonlinear activations); 0 builds none."),
        click.option("--lane-multipliers/--no-lane-multipliers", default=defaults.lane_multipliers,
                     show_default=True, help="The vector unit's 8-bit multipliers for MUL."),
    ]

    @functools.wraps(f)
    def wrapper(rows, cols, acc_width, spad_depth, wbuf_depth, acc_depth, table_depth, lut_tables,
                lane_multipliers, **kw):
        try:
            cfg = CoreConfig(rows=rows, cols=cols, acc_width=acc_width, spad_depth=spad_depth,
                             wbuf_depth=wbuf_depth, acc_depth=acc_depth, table_depth=table_depth,
                             lut_tables=lut_tables, lane_multipliers=lane_multipliers)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
        return f(cfg=cfg, **kw)

    for opt in reversed(options):
        wrapper = opt(wrapper)
    return wrapper


def board_options(f):
    """Serial-port options of the commands that talk to a board."""
    f = click.option("--timeout", type=float, default=2.0, show_default=True,
                     help="Seconds to wait for each reply from the board.")(f)
    f = click.option("--baud", type=int, default=1_000_000, show_default=True,
                     help="UART baud rate the bitstream was built for.")(f)
    return click.option("--port", default=None,
                        help="Serial port of a board running an fxpgen bitstream (e.g. /dev/ttyUSB1).")(f)


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


#: The progress bars the commands opened (closing a closed one does nothing).
_BARS: weakref.WeakSet = weakref.WeakSet()


def _end_progress() -> None:
    """Close the open progress bars, so that an error starts on a line of its own."""
    for bar in list(_BARS):
        bar.close()


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException]):
    """Turn the exceptions ``kinds`` (default: ValueError, OSError, RuntimeError, whose
    messages name what was wrong) into a one-line error and exit status 1."""
    try:
        yield
    except kinds or (ValueError, OSError, RuntimeError) as e:
        if _debug():
            raise
        _end_progress()
        raise click.ClickException(str(e)) from None


class UnexpectedError(click.ClickException):
    """An exception no command expected, shown as one line (exit status 2)."""

    exit_code = 2

    def __init__(self, error: Exception):
        text = " ".join(str(error).split()) or "(no message)"
        super().__init__(f"unexpected {type(error).__name__}: {text} "
                         "(fxpgen --debug shows the traceback)")


class Commands(click.Group):
    """The command group: closes progress bars before an error and shows an unexpected
    exception as :class:`UnexpectedError`, unless ``--debug``."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            _end_progress()
            raise
        except Exception as e:
            _end_progress()
            if ctx.params.get("debug"):
                raise
            raise UnexpectedError(e) from None


@click.group(cls=Commands)
@click.version_option(package_name="fxpgen")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an unexpected error.")
def main(debug: bool):
    """fxpgen: fixed-point systolic-array accelerators, generated, compiled for and
    checked bit for bit."""


@main.command()
@core_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Verilog file to write.")
def verilog(cfg: CoreConfig, output: Path):
    """Write the core's Verilog (top module fxpgen_core)."""
    from fxpgen.app.paths import writable_file
    from fxpgen.hw.verilog import generate_verilog
    with user_errors():
        writable_file(output, "-o/--output")
    text = generate_verilog(cfg)
    with user_errors():
        output.write_text(text)
    click.echo(f"wrote {output} ({len(text.splitlines())} lines, {cfg.rows}x{cfg.cols} array)")


@main.command("isa-doc")
def isa_doc():
    """Print the ISA reference (Markdown) generated from the declarations."""
    from fxpgen.isadoc import isa_markdown
    click.echo(isa_markdown(), nl=False)


def _parse_gemm(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise click.BadParameter(f"expected MxKxN (e.g. 512x64x64), got {text!r}", param_hint="--gemm")
    dims = tuple(int(g) for g in m.groups())
    if min(dims) < 1:
        raise click.BadParameter(f"dimensions must be positive, got {text!r}", param_hint="--gemm")
    return dims


@main.command()
@core_options
@click.option("--gemm", "gemm", required=True, help="GEMM shape MxKxN: A is MxK, B is KxN.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for A, B and shifts.")
@click.option("--stall", type=float, default=0.0, show_default=True,
              help="Probability of a random valid/ready stall on each stream per cycle.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@board_options
def check(cfg: CoreConfig, gemm: str, seed: int, stall: float, as_json: bool, port, baud, timeout):
    """Run a random int8 GEMM on the RTL (Verilator) and on the golden model and
    compare them bit for bit; report the RTL's cycle counters. With --port, run it
    on a board instead (its core configuration comes from the board)."""
    from fxpgen.app.check import run_check
    m, k, n = _parse_gemm(gemm)
    if not 0.0 <= stall < 1.0:
        raise click.BadParameter("must be in [0, 1)", param_hint="--stall")
    progress = None if as_json else (lambda msg: click.echo(msg, err=True))
    if port:
        from fxpgen.boards.runtime import board_check, connect
        with user_errors():
            report = board_check(connect(port, baud, timeout), m, k, n, seed=seed)
        click.echo(json.dumps(report, indent=2) if as_json else
                   f"GEMM {m}x{k}x{n} on the board at {port} ({report['config']['rows']}x"
                   f"{report['config']['cols']} core)\n"
                   f"  bit-identical to golden model: {'yes' if report['bit_identical'] else 'NO'}\n"
                   f"  cycles (board counter): {report['cycles']}   utilization: {report['utilization']:.4f}\n"
                   f"  frames rejected and resent: {len(report['frames_rejected'])}")
        if not report["bit_identical"]:
            sys.exit(1)
        return
    with user_errors():
        report = run_check(cfg, m, k, n, seed=seed, stall=stall, progress=progress)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        r = report
        click.echo(f"GEMM {m}x{k}x{n} on a {cfg.rows}x{cfg.cols} array (seed {seed})")
        click.echo(f"  bit-identical to golden model: {'yes' if r['bit_identical'] else 'NO'}"
                   f"  (instruction-level simulator: {'yes' if r['isa_sim_identical'] else 'NO'})")
        click.echo(f"  cycles (RTL counter):   {r['cycles']}")
        click.echo(f"  ideal cycles (MACs/RC): {r['ideal_cycles']}")
        click.echo(f"  MAC utilization:        {r['utilization']:.4f}")
        click.echo(f"  array busy cycles:      {r['mac_cycles']}   stalls: dispatch {r['stall_dispatch']}, "
                   f"data {r['stall_data']}, result {r['stall_result']}")
        click.echo(f"  instructions: {r['instructions']}   Verilator build: {r['verilator_build_s']:.1f} s"
                   f"{' (cached)' if not r['rebuilt'] else ''}   simulation: {r['sim_s']:.1f} s")
    if not report["bit_identical"]:
        sys.exit(1)


def _bar(enabled: bool, unit: str = "img"):
    """A factory of tqdm progress callbacks on stderr counting ``unit`` (no-ops when disabled)."""
    from tqdm import tqdm

    def make(label: str, total: int):
        if not enabled:
            return lambda k: None
        bar = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, leave=True)
        _BARS.add(bar)

        def tick(k: int):
            bar.update(k)
            if bar.n >= total:
                bar.close()
        return tick
    return make


def _stage_bar(enabled: bool):
    """A tqdm bar on stderr over the stages of :func:`fxpgen.app.flow.compile_model`,
    showing the running one, the weight-width search's measurements and the layers
    lowered; (stage callback, layers callback, search callback, close), no-ops when
    disabled."""
    from tqdm import tqdm

    from fxpgen.app.flow import STAGES
    if not enabled:
        return None, None, None, lambda: None
    bar = tqdm(total=len(STAGES), unit="stage", file=sys.stderr, leave=False,
               bar_format="{desc:<18}{bar:20}| {n_fmt}/{total_fmt} stages [{elapsed}]")
    _BARS.add(bar)

    def stage(name: str):
        if bar.desc:
            bar.update(1)
        bar.set_description_str(f"compile: {name}")

    def layers(done: int, total: int):
        bar.set_description_str(f"compile: lower {done}/{total}")

    def search(done: int, most: int):
        bar.set_description_str(f"compile: weight widths {done}/{most}")
    return stage, layers, search, bar.close


def _weight_bits_option(ctx, param, value: str):
    """``--weight-bits`` parsed (:func:`fxpgen.app.flow.parse_weight_bits`)."""
    from fxpgen.app.flow import parse_weight_bits
    from fxpgen.compiler.quantize import WeightBitsError
    try:
        return parse_weight_bits(value)
    except WeightBitsError as e:
        raise click.BadParameter(str(e)) from None


@main.command("compile")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--calib", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Calibration samples (.npy, N x C x H x W float). Optional for a quantized "
                   "(QCDQ) model whose QuantizeLinear/DequantizeLinear fix every format.")
@core_options
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Program directory to write.")
@click.option("--mode", type=click.Choice(["std", "grid"]), default="std", show_default=True,
              help="Activation format rule: F8Net's std rule or RMS-error grid search.")
@click.option("--per-channel", is_flag=True, help="Weight formats per output channel.")
@click.option("--weight-mode", type=click.Choice(["std", "grid"]), default="std", show_default=True,
              help="Weight format rule: F8Net's std rule or RMS-error grid search.")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="Subtract from each conv's bias the mean output error of its rounded weights "
                   "on the calibration set.")
@click.option("--weight-bits", default="8", show_default=True, callback=_weight_bits_option,
              help="Width the conv layers' weights are stored in: 8, 6, 4 or 2 for every layer, "
                   "name=width for one (e.g. 4,conv1=8: conv1 8-bit, the others 4), or auto: the "
                   "narrowest a sensitivity search finds within --bits-budget.")
@click.option("--bits-budget", type=float, default=None,
              help="With --weight-bits auto: the output SQNR drop (dB) allowed under the all-8-bit "
                   f"network's on the calibration set.  [default: {DEFAULT_BITS_BUDGET_DB:g}]")
@click.option("--listing", "with_listing", is_flag=True,
              help="Also write listing.txt, the disassembly with each instruction's layer.")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Images per run: every weight tile loaded once serves this many images "
                   "(their maps must all fit the scratchpad).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress and no quantizer or lowering notes on stderr.")
@click.option("--force", is_flag=True,
              help="Write into the output folder even if it holds files other than an fxpgen program.")
@click.option("--allow-low-snr", is_flag=True,
              help=f"Write the program even if its output SQNR on the calibration set is under "
                   f"{MIN_SQNR_DB:g} dB (by default an error).")
def compile_cmd(model: Path, calib: Path | None, cfg: CoreConfig, outdir: Path, mode: str, per_channel: bool,
                weight_mode: str, bias_correction: bool, weight_bits, bits_budget: float | None,
                with_listing: bool, batch: int, as_json: bool, quiet: bool, force: bool, allow_low_snr: bool):
    """Quantize a float ONNX model and compile it for a core. A QCDQ model (exported
    with fixed-point quantizers: power-of-two scales, zero points 0) keeps the formats
    its QuantizeLinear/DequantizeLinear give (docs/qat.md).

    Progress and the quantizer's notes go to stderr; a line starting with WARNING:
    says when the compiled output carries little usable signal. An output SQNR under
    the minimum is an error unless --allow-low-snr."""
    from fxpgen.app.flow import compile_model
    from fxpgen.app.inputs import load_array
    from fxpgen.app.paths import program_dir
    from fxpgen.compiler.quantize import WeightBitsError
    if batch < 1:
        raise click.BadParameter(f"must be at least 1, not {batch}", param_hint="--batch")
    if bits_budget is not None and (weight_bits != "auto" or not bits_budget >= 0):
        raise click.BadParameter("only with --weight-bits auto" if weight_bits != "auto" else
                                 f"must be a number of dB >= 0, not {bits_budget}",
                                 param_hint="--bits-budget")
    with user_errors():
        samples = None if calib is None else load_array(calib, "--calib")
        program_dir(outdir, "-o/--output", force=force)
    stage, layers, search, close = _stage_bar(not (as_json or quiet))
    try:
        with user_errors():
            try:
                summary = compile_model(model, samples, cfg, outdir, mode=mode, per_channel=per_channel,
                                        weight_mode=weight_mode, bias_correction=bias_correction,
                                        listing=with_listing, stage=stage, layers=layers, batch=batch,
                                        calib_name=f"--calib {calib}" if calib else "--calib",
                                        min_sqnr_db=None if allow_low_snr else MIN_SQNR_DB,
                                        weight_bits=weight_bits, bits_budget=bits_budget, searching=search)
            except WeightBitsError as e:
                raise click.BadParameter(str(e), param_hint="--weight-bits") from None
    finally:
        close()
    for line in [] if quiet else summary["warnings"]:
        click.echo(f"warning: {line}", err=True)
    for line in summary["calibration_warnings"]:
        click.echo(f"WARNING: {line}", err=True)
    if summary["low_signal"]:
        click.echo(f"WARNING: {summary['low_signal_reason']}: the compiled model's output carries "
                   "no usable signal; see report.json", err=True)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"compiled {model} for a {cfg.rows}x{cfg.cols} core into {outdir}"
               + (f", {batch} images per run" if batch > 1 else ""))
    click.echo(f"  {summary['instructions']} instructions, {summary['data_words']} data words, "
               f"{summary['spad_rows']} scratchpad rows")
    memory = summary["weight_memory"]
    click.echo(f"  weight memory {-(-memory['bits'] // 8)} bytes, {memory['vs_float']:.2f}x smaller than "
               f"float, {memory['vs_int8']:.2f}x than 8-bit")
    click.echo(f"  quantize {summary['quantize_s']:.2f} s, lower {summary['lower_s']:.2f} s, "
               f"write {summary['write_s']:.2f} s; report: {outdir / 'report.json'}"
               + (f", listing: {outdir / 'listing.txt'}" if with_listing else ""))


@main.command("run")
@click.argument("outdir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Float input(s) (.npy): one image C x H x W or a batch.")
@click.option("--engine", type=click.Choice(list(ENGINES)), default="golden",
              show_default=True)
@click.option("--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the integer outputs (.npy, N x C x H x W) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path),
              help="native and model engines: write the first run's timeline here (the first "
              "input, or a batched program's first N) as a Chrome/Perfetto trace (JSON: a track "
              "per unit, a slice per instruction).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Engines with counters: write a chart of each layer's array occupancy and "
              "MAC utilization (PNG; needs the bench extra's matplotlib).")
@board_options
@click.option("--baked", is_flag=True, help="Board engine: run the program baked into the bitstream "
              "(fxpgen build --program); only the inputs are sent.")
def run_cmd(outdir: Path, input_path: Path, engine: str, output_path: Path | None, as_json: bool,
            trace_path: Path | None, plot_path: Path | None, port, baud, timeout, baked):
    """Run a compiled program on the golden model, the instruction-level simulator,
    the RTL (Verilator under cocotb, cycle-accurate, with per-layer counters), the
    RTL in the Verilator-native harness (the same, far faster) or a board (--port).
    The RTL and board engines also check every output against the golden model."""
    import numpy as np

    from fxpgen.app.flow import input_images, run_compiled
    from fxpgen.app.inputs import load_array
    from fxpgen.app.paths import writable_file
    if engine == "board" and not port:
        raise click.BadParameter("the board engine needs --port", param_hint="--port")
    if trace_path and engine not in TRACE_ENGINES:
        raise click.BadParameter(f"a trace comes from the {' or '.join(TRACE_ENGINES)} engine, "
                                 f"not {engine}", param_hint="--trace")
    if plot_path and engine in ("golden", "isa"):
        raise click.BadParameter(f"the {engine} engine has no counters to plot", param_hint="--plot")
    what = f"--input {input_path}"
    with user_errors():
        images = input_images(outdir, load_array(input_path, "--input"), what)
        for path, option in ((output_path, "--output"), (trace_path, "--trace"),
                             (plot_path, "--plot")):
            if path:
                writable_file(path, option)
    with user_errors():
        res = run_compiled(outdir, images, engine, progress=_bar(not as_json)(engine, len(images)),
                           board={"port": port, "baud": baud, "timeout": timeout, "baked": baked},
                           input_name=what)
    if res["saturated"]:
        click.echo(f"warning: {what}: {res['saturated']} value(s) lie outside the input format "
                   f"{res['input_format']} and saturate", err=True)
    outputs = res.pop("outputs")
    with user_errors():
        if output_path:
            np.save(output_path, outputs.astype(np.int64))
        if trace_path:
            _write_trace(outdir, images, engine, trace_path, what)
        if plot_path and res.get("layers"):
            from fxpgen.app.plot import utilization_chart
            utilization_chart(res["layers"], plot_path,
                              title=f"{outdir.name} on {res['config']['rows']}x{res['config']['cols']}, "
                                    f"{engine} engine")
    if as_json:
        click.echo(json.dumps({**res, "outputs": outputs.tolist()}, indent=2))
        _exit_unless_identical(res, engine)
        return
    click.echo(f"{engine}: {len(outputs)} input(s) in {res['seconds']:.2f} s"
               + (f", outputs written to {output_path}" if output_path else ""))
    if "golden_identical" in res:
        click.echo(f"  bit-identical to golden model: {'yes' if res['golden_identical'] else 'NO'}"
                   + (f"; frames rejected by the board and resent: {len(res['frames_rejected'])}"
                      if "frames_rejected" in res else ""))
        for why in res.get("frames_rejected", []):
            click.echo(f"    {why}")
    if res.get("layers"):
        _print_layers(res)
    _exit_unless_identical(res, engine)


def _print_layers(res: dict) -> None:
    """The per-layer counters of a ``fxpgen run`` report, and the whole network's MAC
    utilization: MACs / (cycles x rows x cols), the model's work against the array's
    capacity, next to the occupancy (the cycles the array was fed)."""
    pes = res["config"]["rows"] * res["config"]["cols"]
    per_run = f" (the layers: per run of {res['batch']} images)" if res["batch"] > 1 else ""
    click.echo(f"  cycles per image: {res['cycles_per_image']:.0f}{per_run}")
    click.echo(f"  MAC utilization:  {res['mac_utilization']:.3f} "
               f"({res['model_macs']} MACs / (cycles x {pes}))")
    click.echo(f"  {'layer':<12} {'cycles':>8} {'MACs':>9} {'MAC util':>8} {'array busy':>10} "
               f"{'occupancy':>9} {'stall disp':>10} {'stall data':>10} {'stall res':>9}")
    for l in res["layers"]:
        click.echo(f"  {l['layer']:<12} {l['cycles']:>8.0f} {l['macs']:>9} {l['mac_utilization']:>8.3f} "
                   f"{l['mac_cycles']:>10.0f} {l['array_occupancy']:>9.3f} {l['stall_dispatch']:>10.0f} "
                   f"{l['stall_data']:>10.0f} {l['stall_result']:>9.0f}")


#: The engines ``fxpgen run --trace`` takes a timeline from.
TRACE_ENGINES = ("native", "model")


def _write_trace(outdir: Path, images, engine: str, path: Path, what: str) -> None:
    """The timeline of the first run of ``images`` (float, N x C x H x W, named ``what``
    on the command line) on ``engine`` as a Chrome trace: the first image, or for a
    program compiled for a batch of B the first B, filled up with zero images as
    :func:`~fxpgen.app.flow.batched` does. The trace's ``otherData`` names them
    (``inputs``)."""
    import numpy as np

    from fxpgen.app.flow import batched, load_compiled
    from fxpgen.compiler.golden import quantize_input
    from fxpgen.sim.cycle_model import estimate
    from fxpgen.sim.engine import NetworkProgram
    from fxpgen.sim.native import native_timeline
    from fxpgen.sim.trace import chrome_trace

    prog, qg = load_compiled(outdir)
    program = NetworkProgram.from_program(prog, qg)
    first = images[:program.batch]
    if engine == "model":
        timing = estimate(program, timeline=True)
    else:
        xq = [np.asarray(quantize_input(qg, img), np.int64) for img in first]
        timing = native_timeline(program, batched(xq, program.batch)[0])
    trace = chrome_trace(timing.slices, timing.segments, source=engine)
    trace["otherData"]["inputs"] = _trace_inputs(what, len(first), program.batch)
    path.write_text(json.dumps(trace))


def _trace_inputs(what: str, given: int, batch: int) -> list[str]:
    """The names of a traced run's ``batch`` images, the first ``given`` of them the
    inputs ``what`` holds and the rest zero images filling up the batch."""
    return ([f"{what} image {k}" for k in range(given)]
            + ["zero image (fills the batch)"] * (batch - given))


def _exit_unless_identical(res: dict, engine: str) -> None:
    """Exit status 1, with a line on stderr, when ``engine``'s outputs differ from the
    golden model's."""
    if res.get("golden_identical", True):
        return
    click.echo(f"Error: the {engine} engine's outputs differ from the golden model's", err=True)
    sys.exit(1)


@main.command("build")
@click.option("--board", "board_name", required=True,
              help="Board: icebreaker, ulx3s-85f, ulx3s-25f, arty-a7-35 (scripts only).")
@click.option("--rows", type=int, default=None, help="Array rows (default: the board's).")
@click.option("--cols", type=int, default=None, help="Array columns (default: the board's).")
@click.option("--acc-width", type=int, default=None, help="Accumulator bits (default: the board's).")
@click.option("--spad-depth", type=int, default=None, help="Scratchpad rows (default: the board's).")
@click.option("--wbuf-depth", type=int, default=None, help="Weight-buffer rows (default: the board's).")
@click.option("--acc-depth", type=int, default=None, help="Accumulator rows (default: the board's).")
@click.option("--clock", "clock_mhz", type=float, default=None, help="Target clock in MHz (default: the board's).")
@click.option("--baud", type=int, default=1_000_000, show_default=True, help="UART baud rate.")
@click.option("--program", "program_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Bake this compiled program (fxpgen compile -o DIR) into ROM; "
              "the core is the program's.")
@click.option("--seed", type=int, default=1, show_default=True, help="nextpnr placement seed.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Build directory (default: build/BOARD).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def build_cmd(board_name, rows, cols, acc_width, spad_depth, wbuf_depth, acc_depth, clock_mhz, baud,
              program_dir, seed, output, as_json):
    """Build a bitstream for a board (Yosys and nextpnr from PyPI, as YoWASP) and
    report LUT/DSP/BRAM use and the Fmax nextpnr measured."""
    from fxpgen.app.paths import writable_dir
    from fxpgen.boards.build import BuildFailed, build_board
    from fxpgen.boards.platforms import board
    with user_errors(ValueError, OSError, RuntimeError, BuildFailed):
        b = board(board_name)
        changes = {k: v for k, v in dict(rows=rows, cols=cols, acc_width=acc_width, spad_depth=spad_depth,
                                         wbuf_depth=wbuf_depth, acc_depth=acc_depth).items() if v is not None}
        cfg = b.config.replace(**changes) if changes else None
        if program_dir is not None:
            from fxpgen.compiler.program import check_manifest
            check_manifest(program_dir)
        writable_dir(output or Path("build") / board_name, "-o/--output")
        report = build_board(board_name, output or Path("build") / board_name, cfg=cfg,
                             clock_hz=clock_mhz * 1e6 if clock_mhz else None, baud=baud,
                             program_dir=program_dir, seed=seed,
                             progress=None if as_json else (lambda msg: click.echo(msg, err=True)))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    c = report["config"]
    click.echo(f"{report['board']} ({report['device']}): {c['rows']}x{c['cols']} core, "
               f"target {report['clock_target_mhz']:g} MHz")
    if not report["built"]:
        click.echo(f"  build scripts in {output or Path('build') / board_name}: {report.get('note', '')}")
        return
    for name, u in report["utilization"].items():
        click.echo(f"  {name:<12} {u['used']:>6} / {u['available']:<6} ({100 * u['used'] / max(1, u['available']):.0f}%)")
    click.echo(f"  Fmax: {report['fmax_mhz']} MHz ({'meets' if report['timing_met'] else 'MISSES'} "
               f"{report['clock_target_mhz']:g} MHz)")
    click.echo(f"  bitstream: {report['bitstream']}  ({report['build_s']:.0f} s: "
               + ", ".join(f"{s['step']} {s['seconds']:.0f} s" for s in report["steps"]) + ")")


@main.command("demo")
@core_options
@click.option("--images", type=int, default=None, help="Test images to run on the RTL (default: all).")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Compile for this many images a run (fxpgen compile --batch); every engine "
              "runs the test images that many at a time.")
@click.option("--engine", type=click.Choice(list(DEMO_RTL_ENGINES)), default="rtl", show_default=True,
              help="The RTL engine: Verilator under cocotb, or the Verilator-native harness (faster).")
@click.option("--no-rtl", is_flag=True, help="Skip the RTL run.")
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the compiled program here (default: a temporary directory).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def demo_cmd(cfg: CoreConfig, images: int | None, batch: int, engine: str, no_rtl: bool,
             outdir: Path | None, as_json: bool):
    """The shipped digits CNN end to end: quantize, compile, generate the core, run the
    test images on the RTL; float and fixed-point accuracy, bit-identity, cycles."""
    import tempfile

    from fxpgen.app.flow import demo
    from fxpgen.app.paths import program_dir
    if images is not None and images < 1:
        raise click.BadParameter("must be at least 1", param_hint="--images")
    if batch < 1:
        raise click.BadParameter(f"must be at least 1, not {batch}", param_hint="--batch")
    if outdir is not None:
        with user_errors():
            program_dir(outdir, "-o/--output")
    with tempfile.TemporaryDirectory() as tmp, user_errors():
        report = demo(cfg, outdir or Path(tmp), images=images, rtl=not no_rtl, batch=batch,
                      engine=engine, progress=_bar(not as_json))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_demo(report, cfg)
    if not (report["isa_identical_to_golden"] and report.get("rtl_identical_to_golden", True)):
        sys.exit(1)


def _print_demo(r: dict, cfg: CoreConfig) -> None:
    """The lines of ``fxpgen demo``'s report ``r`` (:func:`fxpgen.app.flow.demo`)."""
    batch = r["batch"]
    click.echo(f"digits CNN on a {cfg.rows}x{cfg.cols} core ({r['images']} test images"
               + (f", {batch} a run)" if batch > 1 else ")"))
    click.echo(f"  float accuracy:        {r['float_accuracy']:.4f}")
    click.echo(f"  fixed-point accuracy:  {r['fixed_point_accuracy']:.4f}")
    click.echo(f"  instruction-level simulator bit-identical to golden: "
               f"{'yes' if r['isa_identical_to_golden'] else 'NO'} (all images)")
    if "rtl_images" in r:
        on = "" if r["rtl_engine"] == "rtl" else f", {r['rtl_engine']} engine"
        click.echo(f"  RTL bit-identical to golden: {'yes' if r['rtl_identical_to_golden'] else 'NO'} "
                   f"({r['rtl_images']} images{on})")
        run = (f" (a run of {batch} images: {r['cycles_per_image'] * batch:.0f} cycles)"
               if batch > 1 else "")
        click.echo(f"  cycles per image:      {r['cycles_per_image']:.0f}{run}")
        click.echo(f"  MAC utilization:       {r['mac_utilization']:.3f} "
                   f"({r['model_macs']} MACs / (cycles x {cfg.rows * cfg.cols}))")
    click.echo(f"  compile: {r['compile_s']:.2f} s, {r['instructions']} instructions")


def _verdict_line(label: str, verdict, expect: str, note: str) -> str:
    """One result line of ``fxpgen prove``: PASS when ``verdict`` is what was
    expected (a proof proven, a mutant failing), else FAIL with the log and trace."""
    said = {("PASS", "PASS"): "proven", ("FAIL", "FAIL"): "fails as it must",
            ("PASS", "FAIL"): "MUTANT NOT CAUGHT"}.get((verdict.status, expect),
                                                        f"NOT PROVEN ({verdict.status})")
    line = (f"{'PASS' if verdict.status == expect else 'FAIL'}  {label:<24} {said:<18} "
            f"{verdict.seconds:6.1f} s  {note}")
    if verdict.status != expect:
        line += f"\n      log: {verdict.workdir / 'sby.log'}"
        if verdict.trace is not None:
            line += f"\n      counterexample (VCD): {verdict.trace}"
    return line


@main.command("prove")
@click.argument("names", nargs=-1)
@click.option("--no-mutants", is_flag=True, help="Skip the mutation twins (each must FAIL).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the proof jobs, logs and traces (default: <cache>/formal).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def prove_cmd(names: tuple[str, ...], no_mutants: bool, workdir: Path | None, as_json: bool):
    """Prove the datapath and safety properties with SymbiYosys (k-induction), each
    with its mutation twin that must fail; NAMES from: requant, array, addrgen, ...
    (default: all). Needs the formal extra: pip install -e '.[formal]'."""
    from fxpgen.formal.proofs import PROOFS, prove
    from fxpgen.tools import ToolError, cache_dir
    unknown = [n for n in names if n not in PROOFS]
    if unknown:
        raise click.BadParameter(f"unknown proof {unknown[0]!r} (known: {', '.join(PROOFS)})",
                                 param_hint="NAMES")
    results = []
    with user_errors(ToolError, OSError):
        folder = workdir or cache_dir() / "formal"
        for name in names or tuple(PROOFS):
            result = prove(PROOFS[name], folder, mutant=not no_mutants)
            results.append(result)
            if not as_json:
                click.echo(_verdict_line(name, result.verdict, "PASS", result.proof.claim))
                if result.mutant is not None:
                    click.echo(_verdict_line(f"{name} mutant", result.mutant, "FAIL",
                                             result.proof.mutation))
    if as_json:
        def verdict(v):
            return None if v is None else {"status": v.status, "seconds": round(v.seconds, 2),
                                           "trace": str(v.trace) if v.trace else None}
        click.echo(json.dumps([{"name": r.proof.name, "claim": r.proof.claim, "ok": r.ok,
                                "proof": verdict(r.verdict), "mutant": verdict(r.mutant)}
                               for r in results], indent=2))
    else:
        click.echo(f"jobs, logs and traces in {folder}")
    if not all(r.ok for r in results):
        sys.exit(1)


def ray_options(f):
    """Where the commands that fan out on Ray run."""
    f = click.option("--address", default=None,
                     help="Address of a running Ray cluster (ray start --head prints it; "
                          "'auto' finds one on this machine); default: a local Ray instance.")(f)
    return click.option("--workers", type=int, default=None,
                        help="CPUs of the local Ray instance, one task each (default: all of "
                             "this machine's); with --address, the cluster's own.")(f)


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")


def _sweep_inputs(model: Path | None, calib: Path | None, input_path: Path | None, images: int):
    """(model bytes, its name, calibration samples, the images run at each point):
    the shipped digits model and its test images by default."""
    from fxpgen.app.inputs import as_images, load_array
    from fxpgen.models import digits_assets
    if model is None:
        a = digits_assets()
        model, calib, input_path = a["model"], a["calib"], a["test_x"]
    elif calib is None:
        raise click.BadParameter("--model needs its calibration samples (--calib)", param_hint="--calib")
    from fxpgen.compiler.onnx_frontend import load_onnx
    with user_errors():
        samples = load_array(calib, "--calib")
        graph = load_onnx(model)
        what = f"--input {input_path}" if input_path else f"--calib {calib}"
        x = as_images(load_array(input_path, "--input") if input_path else samples,
                      graph.shape(graph.input), what)
        return model.read_bytes(), model.name, samples, x[:images]

@main.command("sweep")
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Float ONNX model (default: the shipped digits model).")
@click.option("--calib", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Calibration samples of --model (.npy, N x C x H x W float).")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Images run at each point (.npy; default: the calibration samples, "
              "or the digits test set).")
@click.option("--images", type=int, default=4, show_default=True, help="Images run at each point.")
@click.option("--shapes", required=True, help="Array shapes ROWSxCOLS, separated by commas (4x4,8x8,...).")
@click.option("--spad-depths", default=str(CoreConfig().spad_depth), show_default=True,
              help="Scratchpad depths (rows), separated by commas.")
@click.option("--wbuf-depths", default=str(CoreConfig().wbuf_depth), show_default=True,
              help="Weight-buffer depths (rows), separated by commas.")
@click.option("--acc-depths", default=str(CoreConfig().acc_depth), show_default=True,
              help="Accumulator depths (rows), separated by commas.")
@click.option("--build", is_flag=True, help="Also build each point's bitstream (LUTs, FFs, BRAM, DSPs, Fmax).")
@click.option("--boards", default=None, help="Boards to build for, separated by commas (with --build).")
@click.option("--engine", default="native", show_default=True,
              help="Engine counting the cycles: native (Verilator-native harness), or model "
                   "(the analytical cycle model) where installed.")
@click.option("-o", "--out", "outdir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of the table (results.json, results.csv) and the plot (sweep.png).")
@ray_options
@click.option("--json", "as_json", is_flag=True, help="Print this sweep's rows as JSON.")
def sweep_cmd(model, calib, input_path, images, shapes, spad_depths, wbuf_depths, acc_depths, build, boards,
              engine, outdir, workers, address, as_json):
    """Sweep the design space (array shapes x memory depths x boards) on Ray: each point
    compiles the model, counts its cycles on a few images and, with --build, builds its
    bitstream. Points already in the table are skipped; failed ones are reported with
    their log tail. Needs the scale extra: pip install 'fxpgen[scale]'."""
    from fxpgen.app.engines import ENGINES
    from fxpgen.app.fanout import ray_session, require_ray
    from fxpgen.app.paths import writable_dir
    from fxpgen.app.sweep import (PLOT_PNG, RESULTS_CSV, RESULTS_JSON, SWEEP_ENGINES, parse_depths,
                                  parse_shapes, plot_rows, run_sweep, sweep_points)
    from fxpgen.boards.platforms import board
    _check_workers(workers)
    if images < 1:
        raise click.BadParameter("must be at least 1", param_hint="--images")
    offered = [e for e in SWEEP_ENGINES if e in ENGINES]
    if engine not in offered:
        raise click.BadParameter(f"{engine!r} is not an engine that counts cycles here "
                                 f"(choose one of {', '.join(offered)})", param_hint="--engine")
    if build != bool(boards):
        raise click.BadParameter("--build and --boards go together", param_hint="--boards")
    if model is None and (calib is not None or input_path is not None):
        raise click.BadParameter("--calib and --input go with --model", param_hint="--model")
    with user_errors():
        board_names = [board(b.strip()).name for b in boards.split(",")] if boards else [None]
        points = sweep_points(parse_shapes(shapes), parse_depths(spad_depths, "--spad-depths"),
                              parse_depths(wbuf_depths, "--wbuf-depths"),
                              parse_depths(acc_depths, "--acc-depths"), board_names)
        require_ray("fxpgen sweep")
        writable_dir(outdir, "-o/--out")
    model_bytes, model_name, samples, x = _sweep_inputs(model, calib, input_path, images)
    tick = _bar(not as_json, "point")("sweep", len(points))
    with user_errors(), ray_session("fxpgen sweep", address=address, num_cpus=workers):
        rows, skipped = run_sweep(points, engine=engine, build=build, model=model_bytes, model_name=model_name,
                                  calib=samples, inputs=x, outdir=outdir, done=lambda key: tick(1))
    measured = [r for r in rows if r["status"] == "ok"]
    axis = None
    if measured:
        with user_errors():
            axis = plot_rows(rows, outdir / PLOT_PNG)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _print_sweep(rows, skipped, outdir, [RESULTS_JSON, RESULTS_CSV] + ([PLOT_PNG] if axis else []))
    if len(measured) < len(rows):
        sys.exit(1)


def _print_sweep(rows: list[dict], skipped: int, outdir: Path, files: list[str]) -> None:
    from fxpgen.app.sweep import SweepPoint
    click.echo(f"{len(rows)} point(s), {skipped} already measured; table and plot in {outdir}: "
               + ", ".join(files))
    click.echo(f"  {'point':<44} {'cycles/inf':>10} {'MAC util':>8} {'LUTs':>7} {'Fmax':>6}")
    for r in rows:
        name = SweepPoint.of_row(r).name
        if r["status"] != "ok":
            click.echo(f"  {name:<44} FAILED: {r['error']}")
            for line in r["log_tail"].splitlines():
                click.echo(f"      | {line}")
            continue
        click.echo(f"  {name:<44} {r['cycles_per_inference']:>10.0f} {r['mac_utilization']:>8.3f} "
                   f"{r.get('luts') or '-':>7} {r.get('fmax_mhz') or '-':>6}")


@main.command("eval")
@click.argument("outdir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Float images (.npy, N x C x H x W).")
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Their class indices (.npy, N integers).")
@click.option("--engine", type=click.Choice([e for e in ENGINES if e != "board"]), default="native",
              show_default=True)
@click.option("--shards", type=int, default=None,
              help="Ray tasks the images are cut into (default: 4 per worker, for the progress bar).")
@ray_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def eval_cmd(outdir: Path, input_path: Path, labels_path: Path, engine: str, shards: int | None,
             workers: int | None, address: str | None, as_json: bool):
    """Evaluate a compiled program on a labelled data set, sharded across Ray workers:
    accuracy of the engine and of the golden model, and every image's output compared
    with the golden model's (exit status 1 on any difference). Needs the scale extra:
    pip install 'fxpgen[scale]'."""
    from fxpgen.app.evaluate import check_labels, evaluate, output_size
    from fxpgen.app.fanout import ray_session, require_ray
    from fxpgen.app.flow import input_images
    from fxpgen.app.inputs import load_array
    _check_workers(workers)
    if shards is not None and shards < 1:
        raise click.BadParameter("must be at least 1", param_hint="--shards")
    with user_errors():
        images = input_images(outdir, load_array(input_path, "--input"), f"--input {input_path}")
        labels = check_labels(load_array(labels_path, "--labels"), len(images), output_size(outdir),
                              f"--labels {labels_path}")
        require_ray("fxpgen eval")
    tick = _bar(not as_json)(engine, len(images))
    with user_errors(), ray_session("fxpgen eval", address=address, num_cpus=workers) as ray:
        count = shards or 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        report = evaluate(outdir, images, labels, engine, shards=count, done=tick)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"{engine}: {report['images']} image(s) in {count} shard(s), "
                   f"{report['engine_s']:.1f} s of engine time")
        click.echo(f"  accuracy:              {report['accuracy']:.4f}")
        click.echo(f"  golden model accuracy: {report['golden_accuracy']:.4f}")
        if engine != "golden":
            click.echo(f"  bit-identical to golden model: "
                       + ("yes (every image)" if report["golden_identical"] else
                          f"NO ({len(report['images_differing'])} image(s), the first "
                          f"{report['images_differing'][:5]})"))
        if "cycles_per_image" in report:
            click.echo(f"  cycles per image:      {report['cycles_per_image']:.0f}")
    _exit_unless_identical(report, engine)


if __name__ == "__main__":
    main()
