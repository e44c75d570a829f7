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
