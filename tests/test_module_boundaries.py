"""No module of the package imports another module's private (`_name`) helper, nor reaches
it through the module (`from ..transport import pool` then `pool._helper()`): a helper two
modules share gets a public name, so renaming or changing it is visibly a change of both."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "seamless_service"


def private_imports(folder: Path) -> list[str]:
    """`path:line: from MODULE import _name` for every such import below folder."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            own = isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith(PACKAGE.name))
            for alias in node.names if own else ():
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(folder.parent)}:{node.lineno}: "
                                 f"from {'.' * node.level}{node.module or ''} import {alias.name}")
    return found


def _imported_modules(path: Path, folder: Path, tree: ast.AST) -> set[str]:
    """The local names this file binds to modules of the package (`from ..x import mod`,
    `import pkg.x.mod as mod`)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith(PACKAGE.name)):
            base = path.parent
            for _ in range(max(node.level - 1, 0)):
                base = base.parent
            if node.level == 0:
                base = folder.parent
            for part in (node.module or "").split(".") if node.module else ():
                base = base / part
            for alias in node.names:
                if (base / f"{alias.name}.py").is_file() or (base / alias.name / "__init__.py").is_file():
                    bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE.name + ".") and alias.asname:
                    bound.add(alias.asname)
    return bound


def private_attribute_uses(folder: Path) -> list[str]:
    """`path:line: module._name` for every private name reached through an imported module of
    the package below folder."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        modules = _imported_modules(path, folder, tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{path.relative_to(folder.parent)}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_helper():
    assert private_imports(PACKAGE) == []


def test_no_module_reaches_into_another_modules_private_names():
    assert private_attribute_uses(PACKAGE) == []


def test_the_scan_finds_one(tmp_path):
    (tmp_path / "seamless_service").mkdir()
    (tmp_path / "seamless_service" / "a.py").write_text("def f():\n    from .b import _helper, public\n")
    assert private_imports(tmp_path / "seamless_service") == ["seamless_service/a.py:2: from .b import _helper"]


def test_the_attribute_scan_finds_one(tmp_path):
    package = tmp_path / "seamless_service"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "pool.py").write_text("_flag = 1\n")
    (package / "sub" / "errors.py").write_text("class E:\n    _code = 1\n")
    (package / "a.py").write_text("from .sub import pool\nfrom .sub.errors import E\n"
                                  "x = pool._flag\ny = E._code\n")
    assert private_attribute_uses(package) == ["seamless_service/a.py:3: pool._flag"]


def agent_imports(path: Path) -> list[str]:
    """The imports of `path` (a client module) that reach into the agent package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "agent" or node.module.startswith(("agent.", f"{PACKAGE.name}.agent"))):
            found.append(f"{path.name}:{node.lineno}: from {'.' * node.level}{node.module}")
    return found


def test_the_ssh_transport_shares_the_helper_rules_through_rhl_not_the_agent():
    """What both sides know about the rhl-* helpers is in seamless_service/rhl.py; the ssh
    transport runs on the client and reads none of it out of the agent's modules."""
    assert agent_imports(PACKAGE / "client" / "transport" / "ssh.py") == []


# Each of these is defined in one module and imported everywhere else: a copy drifts.
DEFINED_ONCE = ("DEFAULT_TIMEOUT", "STATUSES", "MAX_KEYS", "SERVICES", "META_FIELDS", "LIVE_STATUSES",
                "usable_pid", "connect_host", "read_rm_output", "set_nodelay", "KEY_FILTERS")


def definitions(folder: Path) -> dict[str, list[str]]:
    """Module-level name -> the modules (relative paths) that define it (def or assignment).
    A private `_set_nodelay`/`_nodelay` counts as a `set_nodelay`."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
            else:
                continue
            for name in names:
                name = "set_nodelay" if name in ("_set_nodelay", "_nodelay") else name
                found.setdefault(name, []).append(str(path.relative_to(folder.parent)))
    return found


def test_shared_constants_and_helpers_are_defined_once():
    found = definitions(PACKAGE)
    copies = {name: found[name] for name in DEFINED_ONCE if len(found.get(name, [])) > 1}
    assert copies == {}
