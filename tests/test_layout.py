"""The house's shape: imports go one way (util <- datasets <- models <- options <- CLIs and scripts), and
no source file outgrows the size a reader takes in at once."""

from __future__ import annotations

import ast

import pytest
from conftest import ROOT

LAYERS = {"util": 0, "datasets": 1, "models": 2, "options": 3, "train": 4, "test": 4, "demo": 4, "scripts": 4}
MAX_LINES = 400  # HOUSE_STYLE H2


def source_files() -> list:
    skip = {"tests", ".git", ".venv", "data", "checkpoints", "results", "runs"}
    return sorted(p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts))


def layer_of(module: str) -> int | None:
    return LAYERS.get(module.split(".")[0])


def imported_modules(path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, wherever it stands (functions included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_imports_point_down_the_layers():
    upward = []
    for path in source_files():
        rel = path.relative_to(ROOT)
        own = layer_of(rel.with_suffix("").as_posix().replace("/", "."))
        if own is None:
            continue
        for line, module in imported_modules(path):
            target = layer_of(module)
            if target is not None and target > own:
                upward.append(f"{rel}:{line} imports {module}")
    assert upward == []


def test_the_layer_check_sees_function_level_imports(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from models.runtime import PortraitPipeline\n")
    assert (2, "models.runtime") in imported_modules(bad) and layer_of("models.runtime") > layer_of("util.io")


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_stay_readable(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
