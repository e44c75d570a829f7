"""The CLI's last line of defence: even an unexpected error is one line, never a traceback."""

from __future__ import annotations

import argparse

import pytest

from seamless_service.client.cli import main as cli_main


def boom(args: argparse.Namespace) -> int:
    raise RuntimeError("disk on fire\nsecond line")


@pytest.fixture
def broken_ps(monkeypatch):
    real = cli_main.build_parser

    def build() -> argparse.ArgumentParser:
        parser = real()
        parser._subparsers._group_actions[0].choices["ps"].set_defaults(func=boom)
        return parser

    monkeypatch.setattr(cli_main, "build_parser", build)


def test_unexpected_error_is_one_line(broken_ps, capsys):
    assert cli_main.main(["ps", "--local"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "RuntimeError: disk on fire" in err and "--debug" in err


def test_debug_shows_the_traceback(broken_ps):
    with pytest.raises(RuntimeError):
        cli_main.main(["--debug", "ps", "--local"])


def test_usage_error_exit_code(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main.main(["ps", "--status", "sleeping"])
    assert info.value.code == 2


def test_debug_after_the_subcommand_works_too(broken_ps):
    with pytest.raises(RuntimeError):
        cli_main.main(["ps", "--local", "--debug"])


@pytest.mark.parametrize("argv, needle", [
    (["ps", "--status", "sleeping"], "argument --status: invalid choice: 'sleeping'"),
    (["ps", "--watch", "abc"], "argument --watch"),
    (["ps", "--transport", "carrier-pigeon"], "argument --transport"),
    (["ps", "--timeout", "0"], "argument --timeout: must be more than 0"),
    (["ps", "--timeout", "-5"], "argument --timeout: must be more than 0"),
    (["logs", "--tail"], "argument --tail"),
    (["nonsense"], "invalid choice: 'nonsense'"),
    (["agent", "start", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_usage_errors_are_one_line_with_a_pointer_to_help(argv, needle, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main.main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err  # not argparse's usage block
    assert needle in captured.err and "--help'" in captured.err
    assert captured.out == ""


def test_transport_notices_are_not_prefixed_twice(capsys):
    """The transports' notices already begin with the program name (e.g. the first use of
    a second ssh alias printed `seamless-service: seamless-service: starting the agent`)."""
    from seamless_service.client.cli.common import _notice

    _notice("seamless-service: starting the agent on h (first use)")
    _notice("h: something")
    assert capsys.readouterr().err.splitlines() == [
        "seamless-service: starting the agent on h (first use)", "seamless-service: h: something"]


# ------------------------------------------------------------------ --debug shows the cause


@pytest.fixture
def down_host(sandbox, monkeypatch, tmp_path):
    """A cluster whose frontend's SSH port is closed: (home, the command's arguments, port)."""
    from tests.support.cli import make_home
    from tests.support.sshd import free_port

    home = make_home(sandbox, monkeypatch)
    port = free_port()
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host downhost\n  HostName 127.0.0.1\n  Port {port}\n  StrictHostKeyChecking no\n"
                          "  UserKnownHostsFile /dev/null\n")
    with (home.home / ".seamless" / "clusters.yaml").open("a") as handle:
        handle.write("down:\n  frontends:\n    - hostname: down.invalid\n      ssh_hostname: downhost\n"
                     "      hashserver: {bufferdir: /srv/down}\n")
    argv = ["inspect", "--service", "hashserver", "--cluster", "down", "--project", "p",
            "--ssh-config", str(ssh_config), "--transport", "agent", "--timeout", "10"]
    return home, argv, port


def test_a_refused_connection_is_one_line_and_debug_shows_its_cause(down_host):
    from tests.support.cli import cli

    home, argv, port = down_host
    plain = cli(home, *argv)
    assert (plain.returncode, plain.stdout) == (1, "")
    assert plain.stderr == (f"seamless-service: downhost: cannot reach downhost (127.0.0.1:{port}): "
                            "Connection refused\n")
    debug = cli(home, *argv, "--debug")
    assert debug.returncode == 1 and debug.stdout == ""
    # the whole chain, lowest first: the socket's error, deploy/ssh.py's, then the client's
    assert "ConnectionRefusedError" in debug.stderr
    assert "seamless_service.deploy.SshError: cannot reach downhost" in debug.stderr
    assert "The above exception was the direct cause of the following exception" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1] == (
        f"seamless_service.client.errors.ConnectionFailed: downhost: cannot reach downhost (127.0.0.1:{port}): "
        "Connection refused")


def test_the_parser_tree_is_built_once_per_process(monkeypatch, capsys):
    """Issue 13: building the tree cost ~8 ms of every warm command; main() reuses it."""
    built = []
    real = cli_main.build_parser

    def counting() -> argparse.ArgumentParser:
        built.append(1)
        return real()

    monkeypatch.setattr(cli_main, "build_parser", counting)
    for argv in (["ps", "--no-such-flag"], ["inspect", "--no-such-flag"], ["ps", "--no-such-flag"]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main.main(argv)
        assert exit_info.value.code == 2
        assert "error: unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    assert built == [1]
