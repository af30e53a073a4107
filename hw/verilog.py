"""Verilog generation for a core configuration."""

from amaranth.back import verilog

from fxpgen.config import CoreConfig

from .core import Core

__all__ = ["generate_verilog", "TOP_NAME"]

TOP_NAME = "fxpgen_core"


def generate_verilog(cfg: CoreConfig, name: str = TOP_NAME) -> str:
    """Verilog text of the core for ``cfg``; the same configuration always gives the
    same text."""
    core = Core(cfg)
    header = (f"// fxpgen core {cfg.rows}x{cfg.cols}: "
              + ", ".join(f"{k}={v}" for k, v in cfg.as_dict().items()) + "\n")
    return header + verilog.convert(core, name=name, emit_src=False, strip_internal_attrs=True)
