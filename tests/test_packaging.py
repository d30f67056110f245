"""Packaging: what gets installed, and the direction of imports between the layers."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Layers from the top down (docs/architecture.md): a module may import only its own layer and
# the layers below it. "api" is the package's front (verispec/__init__, api, audit, spec files
# and the VNN-COMP batch runner, which build engine configs); "core" is everything else at
# verispec's top level.
LAYERS = ("cli", "api", "ensembles", "selfcorrect", "train", "engines", "solvers", "core")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "solvers":
        parts = ["verispec", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "verispec":
        return None
    if len(parts) == 1 or parts[1] in ("api", "audit", "specfile", "vnnbatch"):
        return "api"
    if parts[1] in ("cli", "ensembles", "engines", "selfcorrect", "solvers", "train"):
        return parts[1]
    return "core"


def _imports(path: Path) -> set[str]:
    """Every verispec module imported anywhere in ``path`` (lazy imports included)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module != "verispec":
                found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "verispec"}


def _sources() -> list[Path]:
    return sorted([*(ROOT / "verispec").rglob("*.py"), *(ROOT / "solvers").rglob("*.py")])


def test_imports_point_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = []
    for path in _sources():
        here = _layer(_module_name(path))
        assert here is not None
        for target in _imports(path):
            there = _layer(target)
            if there is not None and rank[there] < rank[here]:
                wrong.append(f"{path.relative_to(ROOT)} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_no_generic_top_level_names_are_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = config["tool"]["setuptools"]
    assert "py-modules" not in setuptools
    assert all(p == "verispec" or p.startswith("verispec.") for p in setuptools["packages"])
    assert setuptools["package-dir"] == {"verispec.solvers": "solvers"}
    assert config["project"]["scripts"]["verispec"] == "verispec.cli:main"
    # every package directory is listed (a forgotten one would be missing from a wheel)
    dirs = {_module_name(p.parent / "__init__.py") for p in _sources() if p.name == "__init__.py"}
    assert dirs == set(setuptools["packages"])


def test_solvers_is_importable_only_inside_verispec():
    import verispec.solvers.base as base

    assert Path(base.__file__).resolve().parent == ROOT / "solvers"
