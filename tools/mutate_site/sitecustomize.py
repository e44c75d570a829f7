"""Loaded at startup by every Python process a mutation run's tests start (tools/mutate.py puts
this folder on PYTHONPATH of the work copy only; never installed, never on a user's path).

mutmut 3's trampoline (the code it inserts in the mutated module) records, while mutmut
collects which tests reach which function (MUTANT_UNDER_TEST=stats), each hit through
mutmut.stats.record_trampoline_hit, which loads mutmut's [tool.mutmut] config from the
*current directory*. A test that runs the CLI as a subprocess in another folder (a project
folder with its seamless.yaml) has no such config there: the subprocess fails, and its hits
would be lost anyway, being in another process. Here, in such a subprocess, the hit is
written instead to a file of the folder $SS_MUTATE_HITS (one function name a line, one file
per process), which mutate_hits.py (a pytest plugin in the test process) adds to the test
that is running. No config is needed, whatever the cwd. In every other phase (a mutant
under test, the clean run) the trampoline needs no config: nothing is changed.
"""

import os


def _install() -> None:
    hits = os.environ.get("SS_MUTATE_HITS")
    if os.environ.get("MUTANT_UNDER_TEST") != "stats" or not hits:
        return
    try:
        import mutmut.mutation.trampoline as trampoline
    except ImportError:  # a Python without mutmut (the system one): it imports no mutant either
        return
    seen: set[str] = set()
    path = os.path.join(hits, f"{os.getpid()}.hits")

    def record_hit(name: str, caller: str | None = None) -> None:
        if name in seen:
            return
        seen.add(name)
        # opened for each new name (a few dozen a process): the test process renames the
        # file to read it, and the next name starts a new one instead of being lost
        with open(path, "a", encoding="utf-8") as out:
            out.write(name + "\n")

    trampoline.record_trampoline_hit = record_hit


_install()
