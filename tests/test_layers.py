"""The parts of fxpgen import one another in one direction only:

    base (fxpgen/: config, isa, numerics, asm, tools)  <-  hw, compiler  <-  sim
        <-  boards  <-  formal (proofs of hw and boards)  <-  app (command line, flows,
        checks, engines)

with the shipped models (``fxpgen/models``) beside the base, and the benchmarks and
tests on top. Every module of the project is parsed and each import resolved to the
part it names; an import that points up (or sideways, between hw and compiler) fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Folder of each part, and the package it is imported as.
PARTS = {
    "base": ("fxpgen", "fxpgen"),
    "models": ("fxpgen/models", "fxpgen.models"),
    "hw": ("hw", "fxpgen.hw"),
    "compiler": ("compiler", "fxpgen.compiler"),
    "sim": ("sim", "fxpgen.sim"),
    "boards": ("boards", "fxpgen.boards"),
    "formal": ("formal", "fxpgen.formal"),
    "app": ("app", "fxpgen.app"),
    "bench": ("bench", "bench"),
    "scripts": ("scripts", "scripts"),
    "tests": ("tests", "tests"),
}

#: What each part may import (itself included).
ALLOWED = {
    "base": {"base"},
    "models": {"models", "base"},
    "hw": {"hw", "base"},
    "compiler": {"compiler", "base"},
    "sim": {"sim", "hw", "compiler", "base"},
    "boards": {"boards", "sim", "hw", "compiler", "base"},
    "formal": {"formal", "boards", "hw", "base"},
    "app": {"app", "formal", "boards", "sim", "hw", "compiler", "models", "base"},
    "bench": {"bench", "app", "boards", "sim", "hw", "compiler", "models", "base"},
    "scripts": {"scripts", "app", "boards", "sim", "hw", "compiler", "models", "base"},
    "tests": set(PARTS),
}


def part_of_module(name: str) -> str | None:
    """The part a dotted module name belongs to (None: not the project's)."""
    best = None
    for part, (_, package) in PARTS.items():
        if name == package or name.startswith(package + "."):
            if best is None or len(package) > len(PARTS[best][1]):
                best = part
    return best


def modules():
    """(file, part, dotted module name) of every Python file of the project, sub-packages
    (``bench/baselines``) included; a file belongs to the deepest part folder holding it."""
    folders = sorted(PARTS.items(), key=lambda kv: -len(kv[1][0]))
    seen = set()
    for part, (folder, package) in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in seen:
                continue
            seen.add(path)
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *rel[:-1], *([] if rel[-1] == "__init__" else [rel[-1]])))
            yield path, part, name


def imports(path: Path, module: str):
    """(line, absolute module name) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            yield node.lineno, name
            for alias in node.names:          # ``from fxpgen import hw``
                yield node.lineno, f"{name}.{alias.name}"


def test_every_part_has_modules():
    found = {part for _, part, _ in modules()}
    assert found == set(PARTS), f"parts without modules: {set(PARTS) - found}"


def test_imports_point_down():
    bad = []
    for path, part, module in modules():
        for line, name in imports(path, module):
            target = part_of_module(name)
            # ``from fxpgen import numerics`` names the base package itself.
            if target is not None and target not in ALLOWED[part]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {part} imports {name} ({target})")
    assert not bad, "imports that point up:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, name, expected", [
    ("hw", "fxpgen.sim.isa_sim", "sim"),
    ("base", "fxpgen.models.zoo", "models"),
    ("base", "fxpgen.isa", "base"),
    ("bench", "bench.layer_bands", "bench"),
    ("base", "numpy", None),
])
def test_part_resolution(source, name, expected):
    assert part_of_module(name) == expected


def test_an_upward_import_is_caught(tmp_path):
    # The checker itself can fail: a base module importing the simulator is refused.
    f = tmp_path / "mod.py"
    f.write_text("from .sim import isa_sim\nimport fxpgen.app.cli\n")
    names = [n for _, n in imports(f, "fxpgen.mod")]
    assert "fxpgen.sim.isa_sim" in names and "fxpgen.app.cli" in names
    assert {part_of_module(n) for n in names} - ALLOWED["base"] >= {"sim", "app"}


#: Longest function (lines, decorators excluded) allowed outside the tests.
MAX_FUNCTION_LINES = 100


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES):
    """(name, line, length) of every function in a file longer than ``limit`` lines."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                yield node.name, node.lineno, length


def test_no_long_functions_outside_the_tests():
    long = [f"{path.relative_to(ROOT)}:{line}: {name} is {n} lines"
            for path, part, _ in modules() if part != "tests"
            for name, line, n in long_functions(path)]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_a_long_function_is_caught(tmp_path):
    f = tmp_path / "mod.py"
    f.write_text("def f():\n" + "    x = 1\n" * 100 + "\n\ndef g():\n    pass\n")
    assert [(name, n) for name, _, n in long_functions(f)] == [("f", 101)]
