"""The package's architecture, enforced: layers that import only downward, no import cycle
(function-level imports counted, TYPE_CHECKING blocks not), no private name imported across
modules, and a small package root. The README's "Code layout" draws the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tokenlm"

# Lower layers never import higher ones; packages of one layer never import each other.
LAYERS = (
    ("core",),                                  # errors, configs, durable files, progress, trackers
    ("data", "engine", "demo"),                 # audio, features, layouts, splits, stores; Ray; demo sets
    ("run",),                                   # RunDir, keyed stage folders, the lock
    ("models",),                                # networks and their configs
    ("training",),                              # the one training loop
    ("tokenizer",),                             # audio <-> codes
    ("lm", "vocoder", "baselines"),             # what reads codes (and the baselines beside them)
    ("evaluation", "reporting"),                # probes, metrics, reports
    ("hear",),                                  # the HEAR API over a run
    ("pipeline",),                              # each stage's work as functions, the registry, tasks
    ("cli",),                                   # click commands: options in, library calls out
    ("__main__",),                              # python -m tokenlm
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    """Every import statement in the file, function-level ones too, outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return [node for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skipped]


def edges() -> dict[str, set[str]]:
    """module -> the tokenlm modules it imports (``from pkg import mod`` counts as mod)."""
    mods = modules()
    graph = {name: set() for name in mods}
    for name, path in mods.items():
        for node in imports(path):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for target in targets:
                if not target.startswith("tokenlm"):
                    continue
                if isinstance(node, ast.ImportFrom):
                    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                    graph[name] |= set(subs) or ({target} if target in mods else set())
                elif target in mods:
                    graph[name].add(target)
        # a package's own __init__ is not a dependency of its modules
        graph[name] = {t for t in graph[name] if t != name and not name.startswith(t + ".")}
    return graph


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_top_level_package_has_a_layer():
    names = {top(m) for m in modules()} - {"__init__"}
    assert names <= set(RANK), f"give these a layer in LAYERS: {sorted(names - set(RANK))}"


def test_layers_import_only_downward():
    wrong = []
    for source, targets in edges().items():
        if top(source) == "__init__":
            continue  # the package's lazy re-exports
        for target in targets:
            a, b = top(source), top(target)
            if a != b and b != "__init__" and RANK[b] >= RANK[a]:
                wrong.append(f"{source} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = edges()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_name_is_imported_across_modules():
    mods = modules()
    private = []
    for name, path in mods.items():
        for node in imports(path):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tokenlm") and node.module != name:
                private += [f"{name} <- {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert not private, "\n".join(private)


def test_the_package_root_stays_small():
    root = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(root) <= 12, root
