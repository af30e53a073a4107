"""Run host programs against a simulated board: the board top level (core, UART
bridge, optional baked program) under cocotb + Verilator, its UART behind a
pseudo-terminal (:mod:`fxpgen.boards.cocotb_board`)."""

from __future__ import annotations

from amaranth.back import verilog

from fxpgen.config import CoreConfig
from fxpgen.sim.rtl import VerilatorModel, build_model, run_cocotb
from fxpgen.tools import cache_dir

from .top import BoardTop
from .wire_faults import Fault

__all__ = ["BOARD_TOP", "board_model", "run_host_on_board"]

BOARD_TOP = "fxpgen_board"
TEST_MODULE = "fxpgen.boards.cocotb_board"


def board_verilog(cfg: CoreConfig, divisor: int, baked: dict | None = None, **buffers) -> str:
    top = BoardTop(cfg, divisor, baked=baked, **buffers)
    return verilog.convert(top, name=BOARD_TOP, emit_src=False)


def board_model(cfg: CoreConfig, divisor: int, baked: dict | None = None, **buffers) -> VerilatorModel:
    """The Verilator model of a board top level (built once per distinct Verilog)."""
    return build_model(f"board-{cfg.name}-d{divisor}" + ("-baked" if baked else ""),
                       board_verilog(cfg, divisor, baked, **buffers), BOARD_TOP, cache_dir() / "board")


def run_host_on_board(model: VerilatorModel, divisor: int, host_argv: list[str], *,
                      faults: list[Fault] = (), max_cycles: int = 50_000_000,
                      timeout_s: float = 900.0) -> dict:
    """Run ``host_argv`` (``"{port}"`` is replaced by the simulated serial port)
    against the simulated board; return its exit code, output, byte counts and the
    ``faults`` (:mod:`fxpgen.boards.wire_faults`) that took effect on the wire."""
    job = {"divisor": divisor, "host_argv": list(host_argv), "faults": [f.as_json() for f in faults],
           "max_cycles": max_cycles}
    return run_cocotb(model, TEST_MODULE, job, timeout_s=timeout_s)
