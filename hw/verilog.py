"""Verilog generation for a core configuration.

The text comes from Amaranth's Yosys-based backend. Its idioms trip a few of
Verilator's ``-Wall`` style checks that say nothing about this design, so the file
starts with waivers for exactly those rules, each with its reason; every other
Verilator warning stays on (the tests lint every shape with ``-Wall``).
"""

from amaranth.back import verilog

from fxpgen.config import CoreConfig

from .core import Core

__all__ = ["generate_verilog", "TOP_NAME", "LINT_WAIVERS"]

TOP_NAME = "fxpgen_core"

#: Verilator rules waived for the generated file, and why.
LINT_WAIVERS = {
    "PROCASSINIT": "registers are declared with their reset value as initial value, "
                   "so FPGA power-up equals reset",
    "WIDTHEXPAND": "the backend writes operands at their natural width and relies on "
                   "Verilog's context-determined extension, which Amaranth sized exactly",
    "WIDTHTRUNC": "likewise: results are assigned to the exact width Amaranth computed",
    "UNUSEDSIGNAL": "structured ports pass whole instruction words and memory rows to "
                    "each unit, which reads only the fields it needs",
    "CASEINCOMPLETE": "decoders assign defaults before the case statement",
    "DECLFILENAME": "the output file name is the user's choice",
}


def generate_verilog(cfg: CoreConfig, name: str = TOP_NAME) -> str:
    """Verilog text of the core for ``cfg``; the same configuration always gives the
    same text."""
    core = Core(cfg)
    lines = [f"// fxpgen core {cfg.rows}x{cfg.cols}: "
             + ", ".join(f"{k}={v}" for k, v in cfg.as_dict().items())]
    lines.append("// Lint waivers for the generated code, with reasons (see fxpgen.hw.verilog):")
    for rule, why in LINT_WAIVERS.items():
        lines.append(f"/* verilator lint_off {rule} */ // {why}")
    body = verilog.convert(core, name=name, emit_src=False, strip_internal_attrs=True)
    return "\n".join(lines) + "\n" + body
