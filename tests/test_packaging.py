"""The install a checkout's README gives is enough: pyproject's extras cover what the tests
import, the build does not warn, and .ci/run runs exactly the README's test command."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import warnings
from pathlib import Path

import pytest

from tests.support.packaging import ROOT, client_extra_modules, normalized, project

OWN = {"tests", "seamless_service"}


def imported_modules(folder: Path) -> dict[str, Path]:
    """Top-level third-party modules imported anywhere under folder -> one file importing it."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("importorskip", "import_module")
                  and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                names = [node.args[0].value]
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN:
                    found.setdefault(top, path)
    return found


def uncovered(modules: dict[str, Path], requirements: list[str]) -> list[str]:
    """The modules no distribution named in requirements provides, each with where it is imported."""
    named = {normalized(r) for r in requirements}
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, path in sorted(modules.items()):
        dists = {normalized(d) for d in providers.get(module, [])}
        if not dists & named:
            missing.append(f"{module} (imported by {path.relative_to(ROOT)}; "
                           f"installed by: {', '.join(sorted(dists)) or 'nothing installed'})")
    return missing


SELF_REFERENCE = re.compile(r"\s*[A-Za-z0-9][A-Za-z0-9._-]*\s*\[([^\]]*)\]")


def with_own_extras(requirements: list[str], meta: dict, seen: frozenset[str] = frozenset()) -> list[str]:
    """The requirements with each reference to this project itself (`seamless-service[services]`)
    replaced by the requirements of the extras it names, recursively, as pip resolves it: such
    a reference installs nothing of its own, only those extras."""
    extras = meta["optional-dependencies"]
    out: list[str] = []
    for requirement in requirements:
        if normalized(requirement) != normalized(meta["name"]):
            out.append(requirement)
            continue
        match = SELF_REFERENCE.match(requirement)
        assert match, f"{requirement!r} names the project itself but no extra of it"
        for extra in (name.strip() for name in match.group(1).split(",")):
            assert extra in extras, f"{requirement!r}: pyproject defines no extra {extra!r}"
            if extra not in seen:
                out += with_own_extras(extras[extra], meta, seen | {extra})
    return out


def dev_requirements() -> list[str]:
    """What README's development install brings: the base dependencies, [client] and [test]
    (and the extras [test] names, e.g. [services])."""
    meta = project()
    extras = meta["optional-dependencies"]
    return with_own_extras(meta["dependencies"] + extras["client"] + extras["test"], meta)


def test_the_test_extra_covers_every_third_party_import_of_the_tests():
    modules = imported_modules(ROOT / "tests")
    assert {"pytest", "hypothesis", "paramiko"} <= set(modules)  # the scan sees imports at all
    assert uncovered(modules, dev_requirements()) == []


def test_a_self_reference_brings_the_extras_it_names_and_nothing_else():
    meta = project()
    extras = meta["optional-dependencies"]
    assert "seamless-service[services]" in extras["test"]
    assert with_own_extras(["seamless-service[services]"], meta) == extras["services"]
    assert with_own_extras(["Seamless_Service [client, services] >=0"], meta) == extras["client"] + extras["services"]
    with pytest.raises(AssertionError, match="defines no extra 'nosuch'"):
        with_own_extras(["seamless-service[nosuch]"], meta)
    # what the tests import from [services] is covered only through the reference: without
    # its expansion the guard names it (so the coverage is not an accident of the name)
    raw = meta["dependencies"] + extras["client"] + extras["test"]
    assert any(line.startswith("aiofiles (imported by tests/") for line in uncovered(imported_modules(ROOT / "tests"), raw))


def test_the_guard_names_a_module_the_extras_miss():
    without_hypothesis = [r for r in dev_requirements() if normalized(r) != "hypothesis"]
    missing = uncovered(imported_modules(ROOT / "tests"), without_hypothesis)
    assert len(missing) == 1 and missing[0].startswith("hypothesis (imported by tests/")


def test_license_is_the_current_form_and_the_build_does_not_warn():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    assert isinstance(project()["license"], str)  # an SPDX expression, not the deprecated table
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any deprecation of our pyproject fails here, as it warns in a build
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "MIT"


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_ci_runs_exactly_the_readme_test_command_after_its_install():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_lines = {line.strip() for line in ci.splitlines()}
    block = re.search(r"```bash\n(.*?)```", readme_section("Test"), re.S)
    assert block, "README's Test section has no bash block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    commands = [c for c in commands if c and not c.startswith("pip install")]
    assert commands and all(c in ci_lines for c in commands), (commands, ci)
    # and .ci/run installs the extras the README names for development
    extras = re.findall(r"pip install -q -e '(\.\[[a-z,]+\])'", ci)
    assert extras == [".[client,test]"] and extras[0] in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_cli_knows_which_modules_a_server_only_install_lacks():
    from seamless_service.client.cli.main import CLIENT_MODULES

    assert set(CLIENT_MODULES) == client_extra_modules()
