"""The local transport obeys the path policy configured for this machine's agent
(`<launcher dir>/agent/config.yaml`), exactly as the served agent would: running ops
in-process is no way around a stricter policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from seamless_service.client.errors import OpError, UsageError
from seamless_service.client.transport.local import LocalTransport, unwrap


@pytest.fixture
def launcher_dir(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("REMOTE_HTTP_LAUNCHER_DIR", raising=False)
    base = home / ".remote-http-launcher"
    (base / "agent").mkdir(parents=True, mode=0o700)
    return base


def _marked_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / ".HASHSERVER_PREFIX").write_text("")
    (path / "buffer1").write_bytes(b"x" * 10)
    return path


def test_configured_data_roots_apply_in_process(launcher_dir: Path, tmp_path: Path):
    allowed = tmp_path / "data" / "allowed"
    allowed.mkdir(parents=True)
    roots = tmp_path / "roots.txt"
    roots.write_text(f"{allowed}\n")
    (launcher_dir / "agent" / "config.yaml").write_text(f"path_policy: data-roots:{roots}\n")
    # Marked, so the default `seamless` preset would let it be cleared; data-roots must not.
    outside = _marked_dir(tmp_path / "data" / "elsewhere")
    with LocalTransport() as transport:
        hello, clear = transport.batch([("hello", {}), ("clear", {"path": str(outside)})])
        assert unwrap(hello)["path_policy"]["mode"] == "data_roots"
        with pytest.raises(OpError) as info:
            unwrap(clear)
    assert info.value.code == "policy_refused"
    assert (outside / "buffer1").read_bytes() == b"x" * 10  # nothing touched


def test_without_config_the_seamless_marker_preset_applies(launcher_dir: Path, tmp_path: Path):
    unmarked = tmp_path / "data" / "plain"
    unmarked.mkdir(parents=True)
    (unmarked / "file").write_text("keep")
    with LocalTransport() as transport:
        hello, clear = transport.batch([("hello", {}), ("clear", {"path": str(unmarked)})])
        assert unwrap(hello)["path_policy"]["mode"] == "marker"
        with pytest.raises(OpError) as info:
            unwrap(clear)
    assert info.value.code == "policy_refused"
    assert (unmarked / "file").read_text() == "keep"


def test_a_bad_config_is_one_usage_error(launcher_dir: Path):
    (launcher_dir / "agent" / "config.yaml").write_text("path_policy: nonsense\n")
    with pytest.raises(UsageError) as info:
        LocalTransport()
    assert "path policy" in str(info.value) and "\n" not in str(info.value)
