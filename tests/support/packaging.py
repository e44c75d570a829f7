"""What pyproject.toml declares, read for the packaging tests and the server-only install test."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the project supports 3.10, which has no reader


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def normalized(requirement: str) -> str:
    """`PyYAML>=6` -> `pyyaml` (PEP 503 name, version and markers dropped)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def client_extra_modules() -> set[str]:
    """The top-level modules that the [client] extra's distributions install."""
    wanted = {normalized(r) for r in project()["optional-dependencies"]["client"]}
    return {module for module, dists in importlib.metadata.packages_distributions().items()
            if wanted & {normalized(d) for d in dists} and not module.startswith("_")}
