#!/usr/bin/env python3
"""Mutation testing of one decision module against the tests that mirror it (issue 14).

Plants small bugs (mutmut 3: `<` -> `<=`, a constant changed, a call argument dropped, ...)
in one module, runs the module's mirrored tests against each, and prints killed/total, the
score, and every surviving mutant as file:line with the mutated line. A survivor is a bug
the tests would let through: kill it with a test of behaviour a user would notice, or, if
it cannot change behaviour, list it in tools/mutation-equivalents.md with one line why.

    pip install -e '.[client,test,mutation]'
    python tools/mutate.py seamless_service/agent/policy.py
    python tools/mutate.py seamless_service/agent/policy.py --tests tests/agent/test_policy.py
    python tools/mutate.py --all              # every decision module, then a table

It is a tool, like benchmarks/: CI does not install mutmut nor run this. The run happens in
a copy of the checkout in a temp folder (mutmut writes `mutants/` and caches beside the
code), so the worktree stays clean; --keep leaves the copy for `mutmut show`/`browse`.
Processes the tests start (a real agent, the CLI run in a project folder) run the mutants
too, and count for the tests that started them (tools/mutate_site, see run_mutmut).
Runs one module at a time with --jobs workers (default 1: the test machines are shared).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "tools" / "mutation-equivalents.md"
TARGET = 90.0
NOT_MUTATED = [r"os\.kill(pg)?\(", r"\.send_signal\("]  # lines mutmut leaves alone (see write_config)

# module -> the tests that mirror it (the ones to run before changing the module)
MIRRORED: dict[str, list[str]] = {
    "seamless_service/protocol/schema.py": ["tests/protocol/test_schema.py"],
    "seamless_service/protocol/codec.py": ["tests/protocol/test_codec.py"],
    "seamless_service/protocol/keys.py": ["tests/protocol/test_keys.py"],
    "seamless_service/protocol/auth.py": ["tests/protocol/test_auth.py"],
    "seamless_service/agent/policy.py": ["tests/agent/test_policy.py"],
    # forget_below (after a clear) is exercised by the clear op's tests only
    "seamless_service/agent/sizer.py": ["tests/agent/test_sizer.py", "tests/agent/test_op_clear.py"],
    "seamless_service/agent/statefiles.py": ["tests/agent/test_statefiles.py"],
    # the hand-written states of test_op_ps_states.py (live `sleep` pids), and of test_op_ps.py
    # only the tests without its module `world` (four toy services launched: ~4 s a mutant)
    "seamless_service/agent/ops/ps.py": ["tests/agent/test_op_ps_states.py", "tests/agent/test_op_ps.py", "-k",
                                         "states or invalid_stem or file_removed or empty_and_missing"
                                         " or old_port"],
    # not test_op_stop.py: it launches toy services (seconds a mutant), and some of its states
    # name pids that are not the test's own children (0, -1, a thread of the test, reaped
    # pids the machine may hand on): a mutant that sends a key decided without rhl-stop to
    # rhl-stop would have them signalled (-1: every process). test_op_stop_processes.py
    # names only its own `sleep` group leaders and unreaped zombies.
    "seamless_service/agent/ops/stop.py": ["tests/agent/test_op_stop_processes.py"],
    "seamless_service/agent/ops/rm.py": ["tests/agent/test_op_rm.py"],
    # not the two tests that launch a toy service (~4 s each): test_op_clear_states.py covers
    # the running-service refusal with hand-written state and a live `sleep`; not the swap
    # race either: its agent must run in the mutation copy (mutmut's trampoline reads its
    # config from the current folder), which a clear mutant that loses its directory
    # descriptor (dir_fd=None) empties; the in-process tests run in an empty folder
    "seamless_service/agent/ops/clear.py": ["tests/agent/test_op_clear.py", "tests/agent/test_clear_race.py",
                                            "tests/agent/test_op_clear_states.py", "-k",
                                            "not running_service_blocks_clear and not force_clears_under"
                                            " and not swap_for_a_symlink"],
    "seamless_service/agent/ops/logs.py": ["tests/agent/test_op_inspect_logs.py"],
    # its own tests kill every mutant (the op tests add minutes a mutant and nothing more); the
    # import-rule test reads rhl.py's source, which mutmut rewrites (it imports mutmut)
    "seamless_service/rhl.py": ["tests/test_rhl.py", "-k", "not imports_only"],
    # not test_watch.py: it runs real agents in terminals (seconds a mutant; times out under load)
    "seamless_service/client/query/rows.py": ["tests/client/query/test_rows.py", "tests/client/query/test_render.py",
                                              "tests/client/query/test_ps_mock.py"],
    # the CLI tests run `seamless-service resolve` in a subprocess in a project folder: their
    # hits reach the stats through tools/mutate_site (see run_mutmut)
    "seamless_service/client/config/resolve.py": ["tests/client/config/"],
}


@dataclass
class Mutant:
    name: str        # mutmut's key, e.g. seamless_service.agent.policy.x_check__mutmut_3
    status: str      # killed / survived / timeout / no tests / suspicious / ...
    line: int = 0    # line of the original file the mutation changes
    before: str = ""  # that line, stripped
    after: str = ""   # the line as mutated, stripped ("" when the line is removed)

    @property
    def function(self) -> str:
        """The function mutated, as mutmut names it (x_f, xǁClassǁmethod) without the x prefix."""
        local = self.name.rsplit(".", 1)[1].rpartition("__mutmut_")[0]
        if local.startswith("xǁ"):
            return local[2:].replace("ǁ", ".")
        return local[2:] if local.startswith("x_") else local

    def keys(self) -> list[tuple[str, str, str]]:
        """How an entry of the equivalents file may name it: with or without its function."""
        return [(self.function, self.before, self.after), ("", self.before, self.after)]


@dataclass
class Score:
    module: str
    total: int
    killed: int
    survivors: list[Mutant]
    equivalent: list[tuple[Mutant, str]]
    seconds: float

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 100.0

    @property
    def unexplained(self) -> list[Mutant]:
        explained = {id(m) for m, _ in self.equivalent}
        return [m for m in self.survivors if id(m) not in explained]


def copy_checkout(dest: Path) -> None:
    """The files git knows plus new untracked ones (a test being written), without .venv,
    .git or caches: what mutmut copies into mutants/ and mutates there."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, check=True, capture_output=True).stdout
    for rel in filter(None, out.decode().split("\0")):
        src = ROOT / rel
        if not src.is_file():  # deleted but not yet committed
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def write_config(dest: Path, module: str, tests: list[str]) -> None:
    """mutmut 3 reads [tool.mutmut] from pyproject.toml in the folder it runs in: the copy's."""
    pyproject = dest / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    text += ("\n[tool.mutmut]\n"
             'source_paths = ["seamless_service/"]\n'
             f"only_mutate = [{json.dumps(module)}]\n"
             f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
             # tools/mutate_site/mutate_hits.py: a subprocess's hits count for the test that ran it
             'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "mutate_hits"]\n'
             # a mutated signal number (kill(pid, 0) -> kill(pid, 1)) aimed at a pid the
             # tests took from os.getpid() at import hits mutmut's own process: never mutated
             f"do_not_mutate_patterns = {json.dumps(NOT_MUTATED)}\n")
    pyproject.write_text(text, encoding="utf-8")


def mutmut_bin() -> str:
    found = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if not found:
        sys.exit("mutmut is not installed: pip install -e '.[mutation]' (from the checkout)")
    return found


def run_mutmut(work: Path, jobs: int, log: Path) -> None:
    env = dict(os.environ)
    # processes the tests start (a real agent) import the mutated copy too, and inherit
    # MUTANT_UNDER_TEST, so a mutant is also live in them: PYTHONPATH wins over the
    # editable install's finder, which sits after the path finder.
    # tools/mutate_site: a sitecustomize that lets such a process record its trampoline hits
    # without mutmut's config (which the trampoline loads from the cwd, and a CLI run in a
    # project folder has none), and the pytest plugin that gives those hits to the test
    site = work / "tools" / "mutate_site"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work / "mutants"), str(site), env.get("PYTHONPATH")]))
    env["SS_MUTATE_HITS"] = str(work / "subprocess-hits")
    (work / "subprocess-hits").mkdir(exist_ok=True)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    # tests/agent/test_policy.py asks the real rhl-guard ~650 times: once per run, not per mutant
    env["SEAMLESS_GUARD_ANSWERS"] = str(work / "guard-answers.json")
    (work / "mutants").mkdir(exist_ok=True)  # a path entry missing at startup is never searched
    with log.open("w") as out:
        done = subprocess.run([mutmut_bin(), "run", "--max-children", str(jobs)], cwd=work, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        sys.exit(f"mutmut failed (exit {done.returncode}); last lines of {log}:\n" + "\n".join(tail))


def statuses(work: Path) -> dict[str, str]:
    out = subprocess.run([mutmut_bin(), "results", "--all", "true"], cwd=work,
                         capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            found[name] = status
    return found


def function_lines(source: str) -> dict[str, int]:
    """Mangled function name as mutmut writes it (x_f, xǁClassǁmethod) -> its def line."""
    lines: dict[str, int] = {}

    def visit(node: ast.AST, cls: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, child.name)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"xǁ{cls}ǁ{child.name}" if cls else f"x_{child.name}"
                lines.setdefault(name, child.lineno)
    visit(ast.parse(source), None)
    return lines


def locate(work: Path, module: str, mutant: Mutant) -> None:
    """Fill mutant.line/before/after: diff the mutated function against the original one in
    mutants/<module> (mutmut's .spans say where each is) and map the first change back to
    the line of the original file."""
    mutated = work / "mutants" / module
    spans = json.loads(Path(str(mutated) + ".spans").read_text())["spans"]
    text = mutated.read_text(encoding="utf-8").splitlines()
    local = mutant.name.rsplit(".", 1)[1]
    func, _, _ = local.rpartition("__mutmut_")
    orig_span, mut_span = spans.get(func + "__mutmut_orig"), spans.get(local)
    if not orig_span or not mut_span:
        return
    orig = body(text[orig_span[0] - 1:orig_span[1]])
    mut = body(text[mut_span[0] - 1:mut_span[1]])
    start = function_lines((ROOT / module).read_text(encoding="utf-8")).get(func, 0)
    # both copies are renamed on their def line: compare what follows, line for line
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=orig, b=mut, autojunk=False).get_opcodes():
        if tag != "equal":
            mutant.line = start + 1 + i1 if start else 0
            mutant.before = " ".join(line.strip() for line in orig[i1:i2])
            mutant.after = " ".join(line.strip() for line in mut[j1:j2])
            return


def body(lines: list[str]) -> list[str]:
    """The lines after the def line of a function slice (mutmut's spans start at the blank
    lines before it)."""
    for k, line in enumerate(lines):
        if line.lstrip().startswith(("def ", "async def ")):
            return [x for x in lines[k + 1:]]
    return lines


EQUIV_LINE = re.compile(r"^- `(?P<module>[^`:]+)(::(?P<function>[^`]+))?`: `(?P<before>[^`]*)` → `(?P<after>[^`]*)`"
                        r" — (?P<why>.+)$")


def load_equivalents() -> dict[str, dict[tuple[str, str, str], str]]:
    """tools/mutation-equivalents.md: `- `module[::function]`: `line` → `mutated line` — why`,
    one per line (name the function when the same line text occurs in several)."""
    found: dict[str, dict[tuple[str, str, str], str]] = {}
    if EQUIVALENTS.exists():
        for line in EQUIVALENTS.read_text(encoding="utf-8").splitlines():
            match = EQUIV_LINE.match(line.rstrip())  # entries start the line; examples are indented
            if match:
                key = (match["function"] or "", match["before"], match["after"])
                found.setdefault(match["module"], {})[key] = match["why"]
    return found


# A mutant that makes the tests hang is caught: the test run never passes (CI's time limit
# fails it), as Stryker and cosmic-ray count it.
DETECTED = ("killed", "timeout")


def mutate(module: str, tests: list[str], jobs: int, keep: bool) -> Score:
    work = Path(tempfile.mkdtemp(prefix="ss-mutate-"))
    started = time.monotonic()
    try:
        copy_checkout(work)
        write_config(work, module, tests)
        run_mutmut(work, jobs, work / "mutmut.log")
        found = statuses(work)
        mutants = [Mutant(name, status) for name, status in sorted(found.items())]
        for m in mutants:
            if m.status not in DETECTED:
                locate(work, module, m)
    finally:
        if keep:
            print(f"(kept the run in {work}: cd there and `mutmut show <name>` / `mutmut browse`)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    known = load_equivalents().get(module, {})
    survivors = sorted((m for m in mutants if m.status not in DETECTED), key=lambda m: (m.line, m.name))
    equivalent = [(m, next(known[k] for k in m.keys() if k in known))
                  for m in survivors if any(k in known for k in m.keys())]
    killed = sum(m.status in DETECTED for m in mutants)
    return Score(module, len(mutants), killed, survivors, equivalent, time.monotonic() - started)


def print_score(score: Score) -> None:
    why = {id(m): reason for m, reason in score.equivalent}
    print(f"\n{score.module}: {score.killed}/{score.total} killed ({score.percent:.1f}%), "
          f"{len(score.equivalent)} survivor(s) listed as equivalent, "
          f"{len(score.unexplained)} unexplained, {score.seconds:.0f} s")
    for m in score.survivors:
        mark = f"  [equivalent: {why[id(m)]}]" if id(m) in why else ""
        print(f"  {score.module}:{m.line} ({m.function}) {m.status}: `{m.before}` → `{m.after}`{mark}")
    if score.unexplained:
        print("  (kill each unexplained survivor with a test, or add it to tools/mutation-equivalents.md as:\n"
              f"   - `{score.module}`: `<line>` → `<mutated line>` — <why it cannot change behaviour>)")


def print_table(scores: list[Score]) -> None:
    print("\n| module | killed / total | killed | equivalent | unexplained |")
    print("|---|---|---|---|---|")
    for s in scores:
        print(f"| `{s.module.removeprefix('seamless_service/')}` | {s.killed} / {s.total} | {s.percent:.0f}% "
              f"| {len(s.equivalent)} | {len(s.unexplained)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module file(s), e.g. seamless_service/agent/policy.py")
    parser.add_argument("--tests", nargs="+", help="test files to run instead of the mirrored ones")
    parser.add_argument("--all", action="store_true", help="every decision module of the mapping, then a table")
    parser.add_argument("--jobs", type=int, default=1, help="parallel mutant runs (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temp copy to inspect with mutmut")
    args = parser.parse_args(argv)
    modules = list(MIRRORED) if args.all else [m.removeprefix("./") for m in args.modules]
    if not modules:
        parser.error("name a module, or --all")
    for module in modules:
        if not (ROOT / module).is_file():
            parser.error(f"{module}: no such module in {ROOT}")
        if not args.tests and module not in MIRRORED:
            parser.error(f"{module} has no mirrored tests in the mapping: pass --tests")
    scores = []
    for module in modules:
        if not (ROOT / module).exists():
            continue
        score = mutate(module, args.tests or MIRRORED[module], args.jobs, args.keep)
        print_score(score)
        scores.append(score)
    if len(scores) > 1:
        print_table(scores)
    return 0 if all(s.percent >= TARGET and not s.unexplained for s in scores) else 1


if __name__ == "__main__":
    sys.exit(main())
