"""The package's layout rules (docs/architecture.md), read from every module's imports with `ast`:
each part imports only the parts below it, nothing imports the recipe, command modules do not
import each other, no module imports another's private name, no import circle, no module too long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "training"
FOUNDATION = {"training", "training.errors", "training.terminal", "training.strict_json"}  # importable by every part
# part -> the parts it may import (besides itself and the foundation), lowest first
RULES = {
    "experiment": set(),
    "data": {"experiment"},
    "plan": {"experiment", "data"},
    "recipe": {"experiment", "data", "plan"},
    "local": {"experiment", "data", "plan"},
    "azureml": {"experiment", "data", "plan"},
    "hosted": {"experiment", "data", "plan"},
    "verdict": {"experiment", "data", "plan"},
    "cli": {"experiment", "data", "plan", "local", "azureml", "hosted", "verdict"},
}
NO_CLOUD_SDK = {"experiment", "data", "plan", "verdict"}  # pure of azure and openai
CLI_SHARED = {"training.cli.common", "training.cli.interrupts", "training.cli.hosted"}
CLI_TABLE = {"training.cli", "training.cli.app", "training.cli.__main__"}  # may import commands
MAX_TOP_LEVEL = 6
MAX_LINES = 420


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: dict) -> list[tuple[str, str, int]]:
    """(imported module of the package or an outside top-level name, name imported, line)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for a in node.names:  # `from training.x import y`: y may be a module of its own
                target = f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                found.append((target, a.name, node.lineno))
    return found


def resolve(name: str, known: dict) -> str:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def part_of(module: str) -> str | None:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 and pieces[1] in RULES else None


def violations(root: Path) -> list[str]:
    """Every broken rule in the package at `root`, one line each (empty: none)."""
    known = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in known}
    out = []
    top_level = [m for m in known if m.count(".") == 1 and m.split(".")[1] not in RULES]
    if len(top_level) > MAX_TOP_LEVEL:
        out.append(f"{len(top_level)} modules directly in the package (at most {MAX_TOP_LEVEL}): "
                   + ", ".join(sorted(top_level)))
    for name, path in known.items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            out.append(f"{path.name}: {name} has {lines} lines (at most {MAX_LINES})")
        mine = part_of(name)
        for target, imported, line in imports(name, path, known):
            where = f"{name}:{line}"
            top = target.split(".")[0]
            if top != "training":
                if mine in NO_CLOUD_SDK and top in ("azure", "openai"):
                    out.append(f"{where}: {mine}/ imports the cloud SDK {target}")
                continue
            module = resolve(target, known)
            if not module or module == name:
                continue
            edges[name].add(module)
            theirs = part_of(module)
            if module in FOUNDATION or (theirs == mine and mine != "cli"):
                pass
            elif theirs == "recipe":
                out.append(f"{where}: imports {module}: nothing imports the recipe (a script)")
            elif mine is None:
                out.append(f"{where}: a foundation module imports {module}")
            elif mine == "cli" and theirs == "cli":
                if module not in CLI_SHARED and name not in CLI_TABLE:
                    out.append(f"{where}: the command module imports the command module {module}"
                               f" (shared pieces belong in training.cli.common)")
            elif theirs not in RULES[mine]:
                out.append(f"{where}: {mine}/ may not import {theirs or module}/ ({module})")
            if imported.startswith("_") and not imported.startswith("__"):  # any other module
                out.append(f"{where}: imports the private name {imported} of {module}")
    out += [f"import circle: {' -> '.join(c)}" for c in circles(edges)]
    return out


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_package_keeps_its_layout_rules():
    assert violations(PACKAGE) == []


def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    """A package named `training` with the given modules (path -> source)."""
    root = tmp_path / "training"
    for rel, source in {"__init__.py": "", "errors.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            (root / parent / "__init__.py").touch()
        path.write_text(source)
    return root


@pytest.mark.parametrize(("files", "expected"), [
    ({"experiment/config.py": "from training.data import rows\n", "data/rows.py": ""},
     "experiment/ may not import data/"),
    ({"plan/memory.py": "from training.recipe.train import x\n", "recipe/train.py": ""},
     "nothing imports the recipe"),
    ({"cli/run.py": "from training.cli.submit import x\n", "cli/submit.py": ""},
     "the command module imports the command module training.cli.submit"),
    ({"local/backend.py": "from training.azureml.backend import x\n",
      "azureml/backend.py": ""},
     "local/ may not import azureml/"),
    ({"verdict/store.py": "from training.experiment.pair import _rule\n",
      "experiment/pair.py": ""},
     "imports the private name _rule"),
    ({"data/a.py": "from training.data.b import _helper\n", "data/b.py": ""},
     "imports the private name _helper of training.data.b"),
    ({"plan/estimate.py": "def f():\n    import azure.ai.ml\n"},
     "plan/ imports the cloud SDK azure.ai.ml"),
    ({"data/a.py": "from training.data import b\n", "data/b.py": "from training.data import a\n"},
     "import circle: training.data.a -> training.data.b"),
    ({"data/big.py": "x = 1\n" * (MAX_LINES + 1)}, "has 421 lines"),
    ({f"m{k}.py": "" for k in range(MAX_TOP_LEVEL)}, "modules directly in the package"),
])
def test_each_broken_rule_is_found(tmp_path, files, expected):
    found = violations(plant(tmp_path, files))
    assert any(expected in line for line in found), found
    assert violations(plant(tmp_path / "clean", {"data/rows.py": "from training.errors import X\n",
                                                  "experiment/pair.py": ""})) == []
