"""The package's import graph, read from the source with ``ast``, and the rules it must keep.

Run it to see the figures: ``python tests/helpers/architecture.py`` (exit 1 on any violation).
``tests/test_architecture.py`` runs the same checks in ``make test``.

Rules (docs/architecture.md draws them):

- layering: a module imports only from its own layer or the layers below it;
- ``serving`` depends on ``runtime`` and the foundations only;
- no import cycle between modules, and none between stations (top-level packages / modules);
- no private name (``_x``) imported from another module;
- nothing on the serving side (``runtime``, ``serving``) reaches torch, even lazily;
- no file over :data:`MAX_LINES` lines, and no catch-all ``utils.py``.

Every import counts: module level, inside functions (lazy) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "modelyard"
MAX_LINES = 450

# lowest first; a station (the first name under modelyard) belongs to exactly one layer
LAYERS: list[tuple[str, set[str]]] = [
    (
        "foundations",
        {
            "",  # the package itself (lazy names only)
            "errors",
            "config",
            "logs",
            "atomic",
            "staging",
            "metrics",
            "plots",
            "bundle",
            "generation_spec",
            "versions",
            "runs",
            "data",
            "tokenize",
            "templates",
            "tasks",
        },
    ),
    ("runtime", {"runtime"}),
    ("models", {"models"}),
    ("training", {"training"}),
    ("export", {"exporters"}),
    ("compress / measure / choose", {"compress", "measure", "choice"}),
    ("report", {"report"}),
    ("pipeline", {"pipeline", "batch_predict", "batch_generate", "search"}),
    ("cli", {"cli", "__main__"}),
]
# the serving side sits beside the road, on the runtime and the foundations only
SERVING = {"serving"}
SERVING_MAY_IMPORT = {"serving", "runtime"} | LAYERS[0][1]
TORCH_FREE = {"runtime", "serving"}
TORCH_MODULES = ("torch", "safetensors.torch", "transformers", "peft", "litert_torch")


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``source`` imports ``target`` (``names`` from it)."""

    source: str
    target: str
    names: tuple[str, ...]
    line: int


@dataclass
class Graph:
    """Every module of the package, its line count and its imports (in-package and external)."""

    modules: dict[str, Path] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    internal: list[Import] = field(default_factory=list)
    external: dict[str, set[str]] = field(default_factory=dict)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def station(module: str) -> str:
    """``modelyard.training.fit`` → ``training``; ``modelyard`` → ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def read_graph(root: Path) -> Graph:
    """Parse every ``.py`` file under ``root`` (the package directory)."""
    graph = Graph()
    for path in sorted(root.rglob("*.py")):
        name = module_name(root, path)
        graph.modules[name] = path
        source = path.read_text(encoding="utf-8")
        graph.lines[name] = source.count("\n")
        graph.external[name] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(source, filename=str(path))):
            for target, names in _targets(node, name, is_package):
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    graph.internal.append(Import(name, target, names, getattr(node, "lineno", 0)))
                else:
                    graph.external[name].add(target)
    # `from modelyard.x import y` where y is a submodule is an edge to modelyard.x.y
    resolved = []
    for imp in graph.internal:
        subs = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in graph.modules]
        resolved.append(imp)
        resolved += [Import(imp.source, sub, (), imp.line) for sub in subs]
    graph.internal = [i for i in resolved if i.target in graph.modules]
    return graph


def _targets(node: ast.AST, module: str, is_package: bool) -> Iterable[tuple[str, tuple[str, ...]]]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, ()
    elif isinstance(node, ast.ImportFrom):
        names = tuple(a.name for a in node.names)
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            yield ".".join([*base, *([node.module] if node.module else [])]), names
        elif node.module:
            yield node.module, names


def layer_of(module: str) -> int | None:
    st = station(module)
    for index, (_, stations) in enumerate(LAYERS):
        if st in stations:
            return index
    return None


def _cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _is_package_of(parent: str, child: str) -> bool:
    return child.startswith(parent + ".")


def check(graph: Graph) -> dict[str, list[str]]:
    """Every violation, by rule (an empty list: the rule holds)."""
    problems: dict[str, list[str]] = {
        "layering": [],
        "module cycles": [],
        "station cycles": [],
        "private imports": [],
        "torch on the serving side": [],
        "files over the line limit": [],
        "catch-all modules": [],
    }
    module_edges: dict[str, set[str]] = {m: set() for m in graph.modules}
    station_edges: dict[str, set[str]] = {}
    for imp in graph.internal:
        src, dst = imp.source, imp.target
        where = f"{graph.modules[src].as_posix()}:{imp.line}"
        # a package's __init__ re-exporting its own modules is not a dependency between them
        if not _is_package_of(src, dst):
            module_edges[src].add(dst)
        s_src, s_dst = station(src), station(dst)
        if s_src != s_dst:
            station_edges.setdefault(s_src, set()).add(s_dst)
        if s_src in SERVING:
            if s_dst not in SERVING_MAY_IMPORT:
                problems["layering"].append(f"{where}: {src} (serving) imports {dst}")
        else:
            a, b = layer_of(src), layer_of(dst)
            if a is None:
                problems["layering"].append(f"{where}: {src} belongs to no layer")
            elif s_dst in SERVING and s_src not in {"cli", "__main__", "pipeline", ""}:
                problems["layering"].append(f"{where}: {src} imports the server {dst}")
            elif b is not None and b > a:
                problems["layering"].append(
                    f"{where}: {src} ({LAYERS[a][0]}) imports {dst} ({LAYERS[b][0]}), a later layer"
                )
        private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        if private and src != dst:
            problems["private imports"].append(f"{where}: {src} imports {private} from {dst}")
    problems["module cycles"] = [" <-> ".join(c) for c in _cycles(module_edges)]
    problems["station cycles"] = [" <-> ".join(c) for c in _cycles(station_edges)]
    for start in sorted(m for m in graph.modules if station(m) in TORCH_FREE):
        path = _torch_path(graph, module_edges, start)
        if path:
            problems["torch on the serving side"].append(" -> ".join(path))
    for module, count in sorted(graph.lines.items()):
        if count > MAX_LINES:
            problems["files over the line limit"].append(f"{module}: {count} lines")
        if module.rsplit(".", 1)[-1] in {"utils", "util", "helpers", "misc", "common"}:
            problems["catch-all modules"].append(module)
    return problems


def _torch_path(graph: Graph, edges: Mapping[str, set[str]], start: str) -> list[str]:
    """The first import chain from ``start`` to a torch module, or ``[]``."""
    parents: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        current = queue.pop(0)
        # a package's __init__ runs when any of its modules is imported
        deps = set(edges.get(current, ())) | _parent_packages(current, graph)
        hit = sorted(e for e in graph.external.get(current, ()) if _is_torch(e))
        if hit:
            chain = [hit[0], current]
            node = parents[current]
            while node is not None:
                chain.append(node)
                node = parents[node]
            return list(reversed(chain))
        for dep in sorted(deps):
            if dep not in parents:
                parents[dep] = current
                queue.append(dep)
    return []


def _is_torch(name: str) -> bool:
    return any(name == t or name.startswith(t + ".") for t in TORCH_MODULES)


def _parent_packages(module: str, graph: Graph) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))} & set(graph.modules)


def report(graph: Graph, problems: Mapping[str, list[str]]) -> str:
    stations = sorted({station(m) for m in graph.modules} - {""})
    lines = [
        f"{len(graph.modules)} modules in {len(stations)} stations, "
        f"{len(graph.internal)} in-package imports; largest file "
        f"{max(graph.lines.values())} lines (limit {MAX_LINES})"
    ]
    for rule, found in problems.items():
        lines.append(f"{rule}: {len(found)}")
        lines += [f"  {p}" for p in found]
    return "\n".join(lines)


def main() -> int:
    root = Path(__file__).resolve().parents[2] / PACKAGE
    graph = read_graph(root)
    problems = check(graph)
    print(report(graph, problems))
    return 1 if any(problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
