"""Where ``fxpgen`` writes: every output file and folder checked before the work
that fills it, so a run never ends on a folder that does not exist or cannot be
written, nor writes into a folder that holds someone else's files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fxpgen.compiler.program import PROGRAM_FILES

__all__ = ["OutputError", "writable_file", "writable_dir", "program_dir"]


class OutputError(ValueError):
    """An output path ``fxpgen`` cannot or will not write, and why."""


def _probe(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: the one test of writability that holds
    for every cause (permissions, read-only mounts, quotas)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fxpgen-probe-"):
            pass
    except OSError as e:
        raise OutputError(f"{what} {folder}: cannot write here ({e.strerror or e})") from None


def writable_file(path: Path, what: str) -> Path:
    """Check that the file ``path`` can be written (its folder exists and takes files,
    the path is not a folder); ``what`` names the option in errors."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: the folder {folder} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path}: the file is read-only")
    _probe(folder, what)
    return path


def writable_dir(path: Path, what: str) -> Path:
    """Create the folder ``path`` (and its parents) if needed and check that it takes
    files; ``what`` names the option in errors."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot create the folder ({e.strerror or e})") from None
    _probe(path, what)
    return path


def program_dir(path: Path, what: str, *, force: bool = False) -> Path:
    """A folder for ``fxpgen compile`` to write a program into: new, empty or holding
    only a previous program's files (:data:`~fxpgen.compiler.program.PROGRAM_FILES`);
    with ``force``, any folder. Created if needed."""
    path = Path(path)
    if path.is_dir() and not force:
        foreign = sorted(p.name for p in path.iterdir() if p.name not in PROGRAM_FILES)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputError(f"{what} {path}: holds files that are not an fxpgen program ({shown}), "
                              "which the compile would mix with its own; choose another folder, "
                              "or --force to write there anyway")
    return writable_dir(path, what)
