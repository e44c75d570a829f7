"""pytest plugin of a mutation run (tools/mutate.py passes `-p mutate_hits`): adds the
trampoline hits of the subprocesses a test ran (written by sitecustomize.py to the folder
$SS_MUTATE_HITS) to that test's hits, before mutmut's stats collector files them under it.
So a test that reaches the mutated module only through a subprocess (the CLI run in a
project folder) is selected for that module's mutants."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _collect(folder: Path) -> set[str]:
    names: set[str] = set()
    for hits in folder.glob("*.hits"):
        taken = hits.with_suffix(".taken")
        try:
            hits.rename(taken)  # a subprocess still running writes its next name to a new file
        except FileNotFoundError:
            continue
        names.update(filter(None, taken.read_text(encoding="utf-8").splitlines()))
        taken.unlink()
    return names


@pytest.hookimpl(tryfirst=True)  # before mutmut's StatsCollector reads the hits of the test
def pytest_runtest_teardown(item, nextitem) -> None:
    folder = os.environ.get("SS_MUTATE_HITS")
    if not folder or os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    from mutmut.state import state

    state()._stats.update(_collect(Path(folder)))
