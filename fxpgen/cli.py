"""The ``fxpgen`` command line."""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from pathlib import Path

import click

from .config import CoreConfig

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
    ]

    @functools.wraps(f)
    def wrapper(rows, cols, acc_width, spad_depth, wbuf_depth, acc_depth, table_depth, **kw):
        try:
            cfg = CoreConfig(rows=rows, cols=cols, acc_width=acc_width, spad_depth=spad_depth,
                             wbuf_depth=wbuf_depth, acc_depth=acc_depth, table_depth=table_depth)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
        return f(cfg=cfg, **kw)

    for opt in reversed(options):
        wrapper = opt(wrapper)
    return wrapper


@click.group()
@click.version_option(package_name="fxpgen")
def main():
    """fxpgen: fixed-point systolic-array accelerators, generated, compiled for and
    checked bit for bit."""


@main.command()
@core_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Verilog file to write.")
def verilog(cfg: CoreConfig, output: Path):
    """Write the core's Verilog (top module fxpgen_core)."""
    from .hw.verilog import generate_verilog
    text = generate_verilog(cfg)
    output.write_text(text)
    click.echo(f"wrote {output} ({len(text.splitlines())} lines, {cfg.rows}x{cfg.cols} array)")


@main.command("isa-doc")
def isa_doc():
    """Print the ISA reference (Markdown) generated from the declarations."""
    from .isadoc import isa_markdown
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
def check(cfg: CoreConfig, gemm: str, seed: int, stall: float, as_json: bool):
    """Run a random int8 GEMM on the RTL (Verilator) and on the golden model and
    compare them bit for bit; report the RTL's cycle counters."""
    from .check import run_check
    m, k, n = _parse_gemm(gemm)
    if not 0.0 <= stall < 1.0:
        raise click.BadParameter("must be in [0, 1)", param_hint="--stall")
    progress = None if as_json else (lambda msg: click.echo(msg, err=True))
    try:
        report = run_check(cfg, m, k, n, seed=seed, stall=stall, progress=progress)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
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


if __name__ == "__main__":
    main()
