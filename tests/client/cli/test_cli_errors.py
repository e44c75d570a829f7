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
