"""The docs stand on their own: every file the README and ``docs/`` name exists in the
project, and every Markdown link points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Folders a bare file name in a doc may refer to (the doc's table says which).
FOLDERS = ["", "fxpgen", "fxpgen/models", "hw", "compiler", "sim", "boards", "app", "bench",
           "bench/baselines", "tests", "scripts", "docs"]
#: Files fxpgen writes when it runs (program folders, build reports), not project files.
OUTPUTS = {"report.json", "meta.json", "manifest.json", "qgraph.json", "qgraph.npz", "listing.txt", "program.fxp",
           "calib.npy", "x.npy", "y.npy", "core.v", "model.onnx", "trace.json"}

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CODE_PATH = re.compile(r"`([A-Za-z0-9_./-]+\.(?:py|md|cpp|json|png|toml|npy|onnx))`")


def referenced(doc: Path):
    """(line, reference, kind) of every file a doc names."""
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        for m in LINK.finditer(line):
            if "://" not in m.group(1):
                yield n, m.group(1), "link"
        for m in CODE_PATH.finditer(line):
            yield n, m.group(1), "code"


def exists(doc: Path, ref: str, kind: str) -> bool:
    if kind == "link":
        return (doc.parent / ref).exists()
    if Path(ref).name in OUTPUTS:
        return True
    if "/" in ref:
        return (ROOT / ref).exists() or (doc.parent / ref).exists()
    return any((ROOT / folder / ref).exists() for folder in FOLDERS)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_named_file_exists(doc):
    missing = [f"{doc.name}:{n}: {ref}" for n, ref, kind in referenced(doc)
               if not exists(doc, ref, kind)]
    assert not missing, "docs name files the project does not have:\n" + "\n".join(missing)


def test_a_missing_file_is_caught(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("see [here](nowhere.md) and `hw/no_such_block.py`, `pe.py`\n")
    found = {(ref, exists(doc, ref, kind)) for _, ref, kind in referenced(doc)}
    assert found == {("nowhere.md", False), ("hw/no_such_block.py", False), ("pe.py", True)}


def test_no_doc_cites_a_design_brief_outside_the_project():
    for doc in DOCS:
        assert "DESIGN" not in doc.read_text(), f"{doc.name} cites a design brief not in the project"


def test_no_docstring_cites_a_design_brief_outside_the_project():
    sources = [p for folder in FOLDERS if folder not in ("", "docs", "tests")
               for p in (ROOT / folder).glob("*.py")]
    citing = [str(p.relative_to(ROOT)) for p in sources if "DESIGN" in p.read_text()]
    assert not citing, f"cite a design brief the project does not contain: {citing}"
