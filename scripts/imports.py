"""Print the imports between prn_data and prn_model and check the layering rules.

Run from anywhere: ``python scripts/imports.py [REPO_ROOT]``. Every ``import`` statement is read with
:mod:`ast`, at any depth (function-level imports count), and resolved to the project module it names.
Printed:

- for each package, its modules that import the other package, and which modules of it they import;
- violations: a ``prn_data`` module importing ``prn_model`` (the data layer never depends on the model
  layer), and a library module (one outside any ``cli`` package) importing a ``cli`` module;
- import cycles: the strongly connected components of the module import graph with more than one module.
  Imports under ``if TYPE_CHECKING:`` are not executed, so they are left out of the graph for cycles but
  still count for the layer rules.

Exit status 1 when there is a violation or a cycle, else 0.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("prn_data", "prn_model")
LOWER, UPPER = PACKAGES  # the data layer must not import the model layer


@dataclass(frozen=True)
class Edge:
    """One import of a project module by another."""

    source: str
    target: str
    line: int
    type_checking: bool  # under ``if TYPE_CHECKING:`` (never executed)


def find_modules(root: Path) -> dict[str, Path]:
    """Every module of :data:`PACKAGES` under ``root``, dotted name → file (a package is its ``__init__``)."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def resolve_relative(module: str, level: int, target: str | None, modules: dict[str, Path]) -> str:
    """The absolute name of ``from <level dots><target> import …`` written in ``module``."""
    parts = module.split(".")
    # In a package's __init__, one dot is the package itself; in a plain module, its parent.
    base = parts if is_package(module, modules) else parts[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def project_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a project module (``a.b.func`` → ``a.b``), or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import node in ``tree`` with whether it sits under ``if TYPE_CHECKING:``."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, type_checking))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_checking)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(tree, False)
    return found


def module_edges(module: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """The project modules ``module`` imports (a ``from pkg import sub`` of a submodule names ``pkg.sub``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    edges: list[Edge] = []
    for node, type_checking in _imports(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            if node.level:
                base = resolve_relative(module, node.level, node.module, modules)
            else:
                base = node.module or ""
            # A package's __init__ runs for any of its submodules, so an import of a package from inside it
            # is no edge; from outside, `from pkg import x` runs pkg's __init__ whatever x is.
            inside = module == base or module.startswith(base + ".")
            for alias in node.names:
                # `from pkg import sub` imports the submodule when there is one, else a name of pkg.
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    names.append(sub)
                    if not inside:
                        names.append(base)
                else:
                    names.append(base)
        for name in names:
            target = project_module(name, modules)
            if target is not None and target != module:
                edges.append(Edge(module, target, node.lineno, type_checking))
    return list(dict.fromkeys(edges))  # one edge per (target, line): `from m import a, b` is one import


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components of ``graph`` with more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop(0)
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def is_cli(name: str) -> bool:
    return "cli" in name.split(".")


def main(argv: list[str]) -> int:
    root = Path(argv[1]).resolve() if len(argv) > 1 else Path(__file__).resolve().parents[1]
    modules = find_modules(root)
    edges = [edge for name, path in modules.items() for edge in module_edges(name, path, modules)]

    problems = 0
    for source_package in PACKAGES:
        other = UPPER if source_package == LOWER else LOWER
        print(f"{source_package} -> {other}:")
        crossing: dict[str, set[str]] = {}
        for edge in edges:
            if edge.source.split(".")[0] == source_package and edge.target.split(".")[0] == other:
                crossing.setdefault(edge.source, set()).add(edge.target)
        if not crossing:
            print("  (none)")
        for source in sorted(crossing):
            print(f"  {source}: {', '.join(sorted(crossing[source]))}")
        print()

    print(f"violations ({LOWER} importing {UPPER}):")
    layer = [e for e in edges if e.source.split(".")[0] == LOWER and e.target.split(".")[0] == UPPER]
    for edge in layer:
        print(f"  {modules[edge.source].relative_to(root)}:{edge.line}: {edge.source} imports {edge.target}")
    print("  (none)" if not layer else "")
    problems += len(layer)

    print("violations (library module importing a cli module):")
    cli = [e for e in edges if not is_cli(e.source) and is_cli(e.target)]
    for edge in cli:
        print(f"  {modules[edge.source].relative_to(root)}:{edge.line}: {edge.source} imports {edge.target}")
    print("  (none)" if not cli else "")
    problems += len(cli)

    print("import cycles (strongly connected components of the module graph):")
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for edge in edges:
        if not edge.type_checking:
            graph[edge.source].add(edge.target)
    cycles = strongly_connected(graph)
    for component in cycles:
        print(f"  {' <-> '.join(component)}")
        for edge in edges:
            if edge.source in component and edge.target in component and not edge.type_checking:
                print(f"    {modules[edge.source].relative_to(root)}:{edge.line}: imports {edge.target}")
    print("  (none)" if not cycles else "")
    problems += len(cycles)

    print("OK" if not problems else f"FAILED: {problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
