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


WINDOW_SIZES = {"history", "action_block", "span", "state_window"}  # what a window's arithmetic is made of


def arithmetic_leaves(node: ast.AST) -> list[ast.AST]:
    """The operands of an arithmetic expression, through nested ``+ - * / // %`` and unary minus."""
    if isinstance(node, ast.BinOp):
        return arithmetic_leaves(node.left) + arithmetic_leaves(node.right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return arithmetic_leaves(node.operand)
    return [node]


def window_arithmetic(source: str) -> list[tuple[int, str]]:
    """``(line, expression)`` of every piece of arithmetic on a state layout's sizes in ``source``: an
    expression that computes with an attribute named like one (``layout.history``, ``slow.state_window``)
    or with a name bound to such a value in the same function, however it is spelt (``h = L.history``,
    ``W, K = slow.state_window, k``, then ``W - 1``, ``x[:, -h:]``, ``j * K + W``)."""
    tree = ast.parse(source)
    found = set()
    for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]:
        nodes = [n for statement in scope.body for n in ast.walk(statement)]
        sizes: set[str] = set()

        def is_size(leaf: ast.AST) -> bool:
            return ((isinstance(leaf, ast.Attribute) and leaf.attr in WINDOW_SIZES)
                    or (isinstance(leaf, ast.Name) and leaf.id in sizes))

        grown = True
        while grown:  # names bound to sizes, or to arithmetic on them
            grown = False
            for n in (n for n in nodes if isinstance(n, ast.Assign)):
                for target in n.targets:
                    pairs = (zip(target.elts, n.value.elts) if isinstance(target, ast.Tuple)
                             and isinstance(n.value, ast.Tuple) else [(target, n.value)])
                    for name, value in pairs:
                        if (isinstance(name, ast.Name) and name.id not in sizes
                                and any(map(is_size, arithmetic_leaves(value)))):
                            sizes.add(name.id)
                            grown = True
        for n in nodes:
            if isinstance(n, ast.BinOp) or (isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub)):
                if any(map(is_size, arithmetic_leaves(n))):
                    found.add((n.lineno, ast.unparse(n)))
            elif isinstance(n, ast.AugAssign) and any(map(is_size, [n.target, *arithmetic_leaves(n.value)])):
                found.add((n.lineno, ast.unparse(n)))
    return sorted(found)


def test_window_arithmetic_lives_in_the_state_layout():
    """How many frames, actions and boundaries a window or a state spans is asked of ``StateLayout``."""
    found = []
    for package in ("worldmodel", "planners", "experiments", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "layout.py":
                found += [f"{path.relative_to(ROOT)}:{n}: {code}" for n, code in window_arithmetic(path.read_text())]
    assert not found, "window arithmetic outside StateLayout:\n" + "\n".join(found)


@pytest.mark.parametrize("planted", [
    "def f(layout, x):\n    return x[:, -layout.history:]",
    "def f(model, frames):\n    h = model.layout.history\n    return frames[h - 1]",
    "def f(slow, z):\n    W, K = slow.state_window, slow.cfg.chunk\n    return [z[j * K : j * K + W] for j in range(3)]",
    "def f(L, n):\n    k = L.action_block\n    steps = n\n    steps *= k\n    return steps",
    "def f(L):\n    offsets = L.span + 1\n    return offsets",
])
def test_window_arithmetic_is_found_however_it_is_spelt(planted):
    assert window_arithmetic(planted), planted


def test_asking_the_layout_is_not_window_arithmetic():
    clean = ("def f(model, z, blocks, x):\n    L = model.layout\n    z, b = L.newest_boundaries(z, blocks, L.history)\n"
             "    return x[:, L.boundary_offsets(L.history)], len(z) + 1")
    assert window_arithmetic(clean) == []


def test_the_flat_planner_knows_no_slow_level():
    """``planners/mpc.py`` plans toward whatever goal it is given; the hierarchy is a composition on top
    of it (``planners/hierarchy.py``), so neither the module nor its config names a slower level."""
    from dataclasses import fields, is_dataclass
    from typing import get_type_hints

    from planners.mpc import MPCConfig

    words = ("slow", "hierarch", "subgoal", "macro", "chunk")
    text = (ROOT / "planners" / "mpc.py").read_text().lower()
    assert not [w for w in words if w in text], [w for w in words if w in text]

    def names(cls) -> list[str]:
        out, hints = [], get_type_hints(cls)
        for f in fields(cls):
            out.append(f.name)
            if is_dataclass(hints[f.name]):
                out += names(hints[f.name])
        return out

    found = [n for n in names(MPCConfig) if any(w in n.lower() for w in words)]
    assert not found, found
