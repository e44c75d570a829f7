"""seamless_service/rhl.py: the rules about the rhl-* helpers that agent and ssh transport share.

Pure: no files, no processes, no ssh; liveness is whatever the test says it is. That both
sides really follow these rules is shown by the op tests that run them (tests/agent/,
tests/client/transport/test_op_semantics.py)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from seamless_service import rhl

ALIVE, DEAD = 4242, 4343


def only_alive_is_alive(pid: int) -> bool:
    return pid == ALIVE


def never_asked(pid: int) -> bool:
    raise AssertionError(f"asked about pid {pid!r}")


# ----------------------------------------------------------------- no I/O


def test_imports_only_the_standard_library_and_protocol():
    tree = ast.parse(Path(rhl.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert (node.module or "").split(".")[0] == "protocol", ast.unparse(node)
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in sys.stdlib_module_names, ast.unparse(node)
            assert name.split(".")[0] not in ("subprocess", "socket", "shutil", "signal"), ast.unparse(node)


# ----------------------------------------------------------------- pids and status


@pytest.mark.parametrize("value,expected", [
    (1234, 1234), ("1234", 1234), (" 77 ", 77), (12.0, 12),
    (0, None), (-1, None), (4.7, None), (True, None), (None, None), ("abc", None),
    (rhl.PID_LIMIT, None), (99999999999999999999, None), ([1], None),
    (1, 1), (rhl.PID_LIMIT - 1, rhl.PID_LIMIT - 1),   # the boundaries (init is pid 1)
])
def test_usable_pid(value, expected):
    assert rhl.usable_pid(value) == expected


@pytest.mark.parametrize("value,expected", [(4.7, 4), (0, 0), (-1, -1), ("12", 12), (True, None), ("x", None)])
def test_helper_pid_reads_as_the_helpers_do(value, expected):
    assert rhl.helper_pid(value) == expected


@pytest.mark.parametrize("data,expected", [
    ({"status": "running", "pid": ALIVE}, ("running", True)),
    ({"status": "running", "pid": DEAD}, ("stale", False)),
    ({"status": "running"}, ("stale", None)),
    ({"status": "starting", "pid": ALIVE}, ("starting", True)),
    ({"status": "starting", "pid": DEAD}, ("failed", False)),        # #16
    ({"status": "starting"}, ("starting", None)),
    ({"status": "running", "pid": 0}, ("stale", False)),            # #15: never probed
    ({"status": "running", "pid": 4.7}, ("stale", False)),
    ({"status": "stale", "pid": ALIVE}, ("stale", True)),
    ({"status": "failed", "pid": ALIVE}, ("failed", None)),
    ({"pid": ALIVE}, ("failed", None)),
    ({"dry_run": True, "status": "running", "pid": ALIVE}, ("running", None)),
])
def test_derive_status(data, expected):
    assert rhl.derive_status(data, alive=only_alive_is_alive) == expected


def test_unusable_pids_are_never_asked_about():
    for pid in (0, -1, 4.7, 99999999999999999999):
        assert rhl.derive_status({"status": "running", "pid": pid}, alive=never_asked) == ("stale", False)


def test_no_status_asks_nothing_and_keeps_the_files_status():
    assert rhl.derive_status({"status": "running", "pid": DEAD}, alive=never_asked, check_pid=False) == ("running", None)
    assert rhl.derive_status({"status": "running"}, alive=never_asked, check_pid=False) == ("running", None)


@pytest.mark.parametrize("row,expected", [
    ({"status": "running", "live": True}, True),
    ({"status": "starting", "live": True}, True),
    ({"status": "running", "live": None}, False),
    ({"status": "stale", "live": True}, False),
    ({"status": "failed", "live": True}, False),
    (None, False),
])
def test_is_live(row, expected):
    assert rhl.is_live(row) is expected


# ----------------------------------------------------------------- stop


def test_stop_outcomes_that_mean_gone():
    assert set(rhl.GONE) == {"stopped", "kill required", "already gone"}
    assert rhl.stop_flags("kill required") == (True, True)
    assert rhl.stop_flags("already gone") == (True, False)
    assert rhl.stop_flags("permission denied") == (False, False)
    assert rhl.stop_flags("missing state") == (False, False)
    assert rhl.stop_flags("something new") == (False, False)


@pytest.mark.parametrize("state,json_status,expected", [
    ({"dry_run": True, "pid": ALIVE}, "running", rhl.StopVerdict("not running", True)),
    ({"pid": None}, "stale", rhl.StopVerdict("not running", True)),
    ({}, "failed", rhl.StopVerdict("not running", True)),
    ({"pid": 0}, None, rhl.StopVerdict("not running", True)),
    ({"pid": 0}, "running", rhl.StopVerdict("invalid pid", False, "pid 0 cannot name a process")),
    ({}, "starting", rhl.StopVerdict("invalid pid", False, "pid None cannot name a process")),
    ({"pid": -1}, "starting", rhl.StopVerdict("invalid pid", False, "pid -1 cannot name a process")),
    ({"pid": ALIVE}, "running", None),
    ({"pid": ALIVE}, "stale", None),   # liveness decides (#17)
])
def test_stop_without_helper(state, json_status, expected):
    assert rhl.stop_without_helper(state, json_status=json_status) == expected


def test_outcome_lines_keep_only_the_keys_asked_about():
    stdout = "a: stopped\nb: kill required\nnoise\nc: already gone \nz: stopped\n"
    assert rhl.outcome_lines(stdout, ["a", "b", "c"]) == {"a": "stopped", "b": "kill required", "c": "already gone"}


# ----------------------------------------------------------------- rm


@pytest.mark.parametrize("client,server,expected", [
    (False, False, (True, [])), (True, True, (True, [])),
    (True, False, (False, ["--client"])), (False, True, (True, ["--server"])),
])
def test_rm_sides(client, server, expected):
    assert rhl.rm_sides(client, server) == expected


def test_plan_rm_refuses_a_live_service_unless_forced():
    live = {"up": 77}
    outcomes, to_remove = rhl.plan_rm(["up", "down", "up"], force=False, live_pid=live.get)
    assert to_remove == ["down"]
    assert outcomes == {"up": {"outcome": rhl.REFUSED_RUNNING, "pid": 77}}
    outcomes, to_remove = rhl.plan_rm(["up", "down"], force=True, live_pid=live.get)
    assert to_remove == ["up", "down"]
    assert outcomes == {"up": {"warning": "service process 77 is still running; its state is gone"}}


def test_read_rm_output():
    stdout = ("removed /h/.remote-http-launcher/server/a.json\nremoved /h/.remote-http-launcher/client/a.json\n"
              "b: not found\nremoved /h/.remote-http-launcher/server/other.json\n")
    stderr = "rhl-rm: could not remove /h/.remote-http-launcher/server/c.json: [Errno 13] Permission denied\n"
    outcomes: dict = {}
    removed = rhl.read_rm_output(["a", "b", "c", "d"], stdout, stderr, 1, outcomes)
    assert removed == {"a": ["/h/.remote-http-launcher/server/a.json", "/h/.remote-http-launcher/client/a.json"],
                       "b": [], "c": [], "d": []}
    assert outcomes == {
        "a": {"outcome": "removed"},
        "b": {"outcome": "not found"},
        "c": {"outcome": "error: could not remove /h/.remote-http-launcher/server/c.json: [Errno 13] Permission denied"},
        "d": {"outcome": "error: rhl-rm did not process this key (an earlier error stopped it)"},
    }


def test_rm_results_in_argument_order_and_warn_only_when_removed():
    outcomes = {"a": {"outcome": "removed", "warning": "w"}, "b": {"outcome": "not found", "warning": "w"},
                "c": {"outcome": rhl.REFUSED_RUNNING, "pid": 5}}
    results = rhl.rm_results(["c", "a", "b"], outcomes, {"a": ["/x/a.json"], "b": []})
    assert results == [
        {"key": "c", "removed": [], "outcome": rhl.REFUSED_RUNNING, "pid": 5},
        {"key": "a", "removed": ["/x/a.json"], "outcome": "removed", "warning": "w"},
        {"key": "b", "removed": [], "outcome": "not found"},
    ]


# ----------------------------------------------------------------- clear


def test_clear_conflict():
    live = {"key": "k1", "status": "running", "live": True, "workdir": "/data/p/s1"}
    dead = {"key": "k2", "status": "stale", "live": False, "workdir": "/data/p/s2"}
    under_p = lambda workdir: str(workdir).startswith("/data/p")  # noqa: E731
    assert rhl.clear_conflict("k1", live, [], under_p) == "service k1 is running; stop it first"
    assert rhl.clear_conflict(None, None, [dead, live], under_p) == (
        "service k1 is running in /data/p/s1; stop it first")
    assert rhl.clear_conflict("k2", dead, [dead, live], lambda workdir: False) is None
    assert rhl.clear_conflict(None, None, [dead], under_p) is None



@pytest.mark.parametrize("path, resolved, expected", [
    ("/home/u/data/p", "/home/u/data/p", None),
    ("/usr/share/x", "/usr/share/x", None),                 # below a system root: the marker rule decides
    ("/home/u/link", "/home/u", "path must not be $HOME or an ancestor of $HOME: /home/u/link"),
    ("/home", "/home", "path must not be $HOME or an ancestor of $HOME: /home"),
    ("/home/u/.cache/p", "/home/u/.cache/p", "path must not contain dot-prefixed segments: /home/u/.cache/p"),
    ("/home/u/link", "/home/u/.ssh", "path must not contain dot-prefixed segments: /home/u/link"),
    ("/home/u/link", "/etc", "refusing system-root directory: /home/u/link"),
])
def test_heuristic_refusal(path, resolved, expected):
    assert rhl.heuristic_refusal(path, resolved, "/home/u") == expected


# ----------------------------------------------------------------- client rows


def test_client_process():
    key = "hashserver-c-rw-p-s"
    servers = {key: {"status": "stale", "port": 5000}}
    lookup = servers.get
    assert rhl.client_process({"key": key, "status": "stale", "port": 1}, never_asked) == "stale"
    assert rhl.client_process({"key": key, "port": 5000}, lookup) == "stale"
    assert rhl.client_process({"key": key, "port": 1, "tunneled-port": 5000}, lookup) == "stale"
    assert rhl.client_process({"key": key, "port": 5001}, lookup) == "client"   # a relaunch elsewhere
    assert rhl.client_process({"key": key}, lookup) == "client"
    assert rhl.client_process({"key": "other-key", "port": 5000}, lookup) == "client"
    assert rhl.client_process({"key": "../x", "port": 5000}, never_asked) == "client"
    assert rhl.client_process({"key": key, "port": 5000}, lambda k: {"status": "error", "port": 5000}) == "client"


# ----------------------------------------------------------------- start and handshake


def test_launch_args_in_the_launchers_order():
    args = {"key": "k", "workdir": "/w", "conda_env": "env", "network_interface": None,
            "parameters": '{"a": 1}', "meta": None}
    assert rhl.launch_args(args, ["hashserver", "--port", "5"]) == [
        "--key", "k", "--workdir", "/w", "--conda-env", "env", "--parameters", '{"a": 1}', "--", "hashserver",
        "--port", "5"]
    assert rhl.status_file_arg("k") == "~/.remote-http-launcher/server/k.json"
    assert set(rhl.START_OUTCOMES) == {"running", "starting", "failed"}


@pytest.mark.parametrize("interface,expected", [
    (None, "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("localhost", "127.0.0.1"),
    ("::", "::1"), ("10.1.2.3", "10.1.2.3"), ("node7-ib", "node7-ib"),
    ("[fe80::1]", "fe80::1"), ("nodeX", "nodeX"),
])
def test_connect_host(interface, expected):
    assert rhl.connect_host(interface) == expected


def test_handshake_target():
    assert rhl.handshake_target({"key": "hashserver-c-rw-p-s", "port": 5000}) == ("/healthcheck", 5000)
    dask = "daskserver-mycluster-rw-proj"
    assert rhl.handshake_target({"key": dask, "port": 5000, "dashboard_port": 8787}) == ("/health", 8787)
    assert rhl.handshake_target({"key": dask, "port": 5000}) == ("/healthcheck", 5000)
    assert rhl.handshake_target({"key": "hashserver-c-rw-p-s", "port": 0}) == ("/healthcheck", None)
    assert rhl.handshake_target({"key": "hashserver-c-rw-p-s", "port": True}) == ("/healthcheck", None)



# ----------------------------------------------------------------- issue 14: boundaries and odd helper output


@pytest.mark.parametrize("port,expected", [(0, None), (1, 1), (65535, 65535), (65536, None)])
def test_usable_port_boundaries(port, expected):
    assert rhl.handshake_target({"key": "hashserver-c-rw-p-s", "port": port}) == ("/healthcheck", expected)


def test_outcome_lines_end_the_key_at_the_first_separator():
    assert rhl.outcome_lines("a: permission denied: pid 5\n", ["a"]) == {"a": "permission denied: pid 5"}


def test_plan_rm_passes_each_key_once_and_keeps_the_ones_after_a_repeat():
    outcomes, to_remove = rhl.plan_rm(["down", "down", "other"], force=False, live_pid=lambda key: None)
    assert (outcomes, to_remove) == ({}, ["down", "other"])


def test_key_of_path():
    assert rhl.key_of_path("/h/.remote-http-launcher/server/a-key.json") == "a-key"
    assert rhl.key_of_path("/h/x/readme") == "readme"


def test_read_rm_output_ignores_lines_about_other_keys_and_noise():
    outcomes: dict = {}
    removed = rhl.read_rm_output(["a"], "zz: not found\n", "warning: something else\n", 0, outcomes)
    assert removed == {"a": []}
    # rhl-rm exited 0 but said nothing of this key
    assert outcomes == {"a": {"outcome": "error: rhl-rm did not process this key (no output for this key)"}}


def test_launch_args_with_every_option():
    args = {"key": "k", "workdir": "/w", "conda_env": None, "network_interface": "0.0.0.0",
            "parameters": None, "meta": '{"service": "hashserver"}'}
    assert rhl.launch_args(args, ["hashserver"]) == [
        "--key", "k", "--workdir", "/w", "--network-interface", "0.0.0.0", "--meta", '{"service": "hashserver"}',
        "--", "hashserver"]
