"""The client's folders are layers: a module imports only from its own folder or from a
lower layer, and no modules import each other in a circle (docs/architecture.md).

Every import counts, also the lazy ones inside functions and those under TYPE_CHECKING:
a reader following a name meets them all the same."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "seamless_service"

# Lowest first. Parts of one layer (cli and api) do not import each other.
LAYERS: list[set[str]] = [
    {"errors"},
    {"transport"},
    {"config"},
    {"query"},
    {"lifecycle"},
    {"keeper"},
    {"cli", "api"},
    {"entry"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: the modules of the package it imports}, names relative to the package's parent."""
    root = package.parent
    paths = {module_name(path, root): path for path in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name in paths)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else (node.module or "")
                for alias in node.names:  # `from pkg import module` imports the module
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in paths else base)
        graph[name] = {target for target in found if target in paths and target != name}
    return graph


def client_part(module: str, client: str) -> str | None:
    """`transport` for client.transport.tunnel, `api` for client.api, None outside the client."""
    if not module.startswith(client + "."):
        return None
    return module[len(client) + 1:].split(".")[0]


def layer_violations(package: Path) -> list[str]:
    client = f"{package.name}.client"
    problems = []
    for module, targets in sorted(import_graph(package).items()):
        part = client_part(module, client)
        if part is None:
            continue
        for target in sorted(targets):
            other = client_part(target, client)
            if other is None or other == part:
                continue
            if part not in RANK or other not in RANK:
                problems.append(f"{module} -> {target}: {part if part not in RANK else other} is in no layer")
            elif RANK[other] >= RANK[part]:
                problems.append(f"{module} -> {target}: {other} is not below {part}")
    return problems


def circles(package: Path, prefix: str) -> list[list[str]]:
    """The import circles (strongly connected components of more than one module) among the
    modules whose names start with prefix."""
    graph = {m: {t for t in ts if t.startswith(prefix)} for m, ts in import_graph(package).items()
             if m.startswith(prefix)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_client_folder_is_in_a_layer():
    parts = {path.name if path.is_dir() else path.stem for path in (PACKAGE / "client").iterdir()
             if not path.name.startswith("__") and (path.is_dir() or path.suffix == ".py")}
    assert parts == set(RANK)


def test_client_imports_only_downwards():
    assert layer_violations(PACKAGE) == []


def test_no_import_circle_in_the_client():
    assert circles(PACKAGE, f"{PACKAGE.name}.client") == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "pkg"


def test_the_checks_find_a_circle_and_an_upward_import(tmp_path):
    package = _package(tmp_path, {
        "__init__.py": "",
        "client/__init__.py": "",
        "client/errors.py": "",
        "client/transport/__init__.py": "",
        # the circle the client had: tunnel imports forward lazily, forward imports tunnel
        # for typing only
        "client/transport/tunnel.py": "def f():\n    from .forward import LocalForward\n",
        "client/transport/forward.py": "from typing import TYPE_CHECKING\n"
                                       "if TYPE_CHECKING:\n    from .tunnel import Tunnel\n",
        "client/transport/pool.py": "",
        "client/keeper/__init__.py": "",
        "client/keeper/server.py": "from ..transport import pool\n",            # downwards: fine
        "client/config/__init__.py": "",
        "client/config/clusters.py": "from ..keeper import server\n",              # upwards
    })
    assert circles(package, "pkg.client") == [["pkg.client.transport.forward", "pkg.client.transport.tunnel"]]
    assert layer_violations(package) == ["pkg.client.config.clusters -> pkg.client.keeper.server: "
                                         "keeper is not below config"]
