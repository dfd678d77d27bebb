"""The layers and words of the repository, checked on its source (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

import envs

ROOT = Path(__file__).resolve().parents[1]


def imports(package: str) -> dict[str, set[str]]:
    """Top-level modules each file of ``package`` imports (``worldmodel.dynamics`` counts as ``worldmodel``)."""
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


@pytest.mark.parametrize("package, forbidden", [
    ("envs", {"worldmodel", "planners", "experiments", "hydra", "omegaconf"}),
    ("worldmodel", {"planners", "experiments", "hydra", "omegaconf"}),
    ("planners", {"worldmodel", "experiments", "hydra", "omegaconf"}),
])
def test_libraries_import_only_the_layers_below_them(package, forbidden):
    bad = {f: sorted(names & forbidden) for f, names in imports(package).items() if names & forbidden}
    assert not bad, f"{package} imports what it must not: {bad}"


def test_no_module_outside_an_env_names_its_quantities():
    """Probes, captions, tables and benchmarks read quantities from the EnvSpec, never by name."""
    words = {q.key for spec in map(envs.get_spec, envs.env_names()) for q in spec.quantities}
    words |= {"shoulder", "elbow", "fingertip", "joint err"}
    env_modules = {f"envs/{name}.py" for name in envs.env_names()}
    found = []
    for package in ("envs", "worldmodel", "planners", "experiments", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            text = path.read_text()
            found += [(rel, w) for w in words if w in text and rel not in env_modules]
    assert not found, found


def without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            node.body = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))] or [
                ast.Pass()]
    return tree


def test_window_arithmetic_lives_in_the_state_layout():
    """How many frames, actions and boundaries a window or a state spans is asked of ``StateLayout``."""
    patterns = ("history - 1", "h - 1", "[:, h:]", "* k + 1", "action_block + 1")
    found = []
    for package in ("worldmodel", "planners", "experiments", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "layout.py":
                continue
            code = ast.unparse(without_docstrings(ast.parse(path.read_text())))
            found += [(str(path.relative_to(ROOT)), p) for p in patterns if p in code]
    assert not found, found
