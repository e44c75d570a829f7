"""Below the CLI nothing knows about argparse or the process's command line: query/,
config/, lifecycle/, transport/ and api.py take typed requests (PsRequest, Selection,
TransportOptions, ClientConfig). Only cli/, entry.py and keeper/ (which runs commands with
their argv) may read `sys.argv` or handle an argparse Namespace."""

from __future__ import annotations

import ast
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "seamless_service" / "client"
ABOVE = ("cli", "keeper", "entry.py")


def argparse_uses(folder: Path) -> list[str]:
    """`path:line: what` for argparse imports, Namespace names and sys.argv below folder,
    outside ABOVE."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        if path.relative_to(folder).parts[0] in ABOVE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            what = None
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                what = "import argparse"
            elif isinstance(node, ast.ImportFrom) and node.module == "argparse":
                what = "from argparse import"
            elif isinstance(node, ast.Attribute) and node.attr == "argv" and isinstance(node.value, ast.Name) \
                    and node.value.id == "sys":
                what = "sys.argv"
            elif isinstance(node, (ast.Name, ast.Attribute)) and getattr(node, "id", getattr(node, "attr", "")) \
                    == "Namespace":
                what = "Namespace"
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "Namespace" in node.value \
                    and len(node.value) < 80:
                what = f"annotation {node.value!r}"   # `from __future__ import annotations` strings
            if what:
                found.append((str(path.relative_to(folder.parent)), node.lineno, what))
    return [f"{name}:{line}: {what}" for name, line, what in sorted(found)]


def test_nothing_below_the_cli_handles_argparse_or_argv():
    assert argparse_uses(CLIENT) == []


def test_the_scan_finds_them(tmp_path):
    client = tmp_path / "client"
    (client / "query").mkdir(parents=True)
    (client / "cli").mkdir()
    (client / "query" / "ps.py").write_text("import argparse, sys\n"
                                            "def f(args: argparse.Namespace):\n    return sys.argv\n")
    (client / "cli" / "ps_cmd.py").write_text("import argparse, sys\nx = sys.argv\n")
    assert argparse_uses(client) == ["client/query/ps.py:1: import argparse", "client/query/ps.py:2: Namespace",
                                     "client/query/ps.py:3: sys.argv"]
