"""One command reads the configuration once (ClientConfig), however many clusters it asks.

seamless-config's loading functions are wrapped to count how often the clusters are read:
`ps --all-clusters` used to read them 1 + 2 x clusters times (names, then each cluster's
host and roots), `ps --cluster X --persistent` twice.
"""

from __future__ import annotations

import pytest

from seamless_service.client.cli.main import main
from seamless_service.client.config.client_config import ClientConfig
from seamless_service.client.errors import UsageError
from tests.support.cli import Home, make_home

CLUSTERS = 5   # lc, rc, r2, xtra, lh (tests/support/cli.py)


@pytest.fixture
def seamless_home(sandbox, monkeypatch) -> Home:
    home = make_home(sandbox, monkeypatch)
    monkeypatch.chdir(home.proj)
    return home


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The loads seamless-config performs from now on (with and without project files)."""
    import seamless_config.config_files as config_files
    from seamless_config.service import _dispatch

    seen: list[str] = []

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            seen.append(name)
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(config_files, "load_config_files", counted("files", config_files.load_config_files))
    monkeypatch.setattr(_dispatch, "_load_config", counted("config", _dispatch._load_config))
    return seen


def _ps(capsys, *argv: str) -> int:
    # --transport local: planning (where the configuration is read) runs as for any
    # transport; asking a remote host then stops at once with a usage error, no network.
    code = main(["ps", *argv, "--transport", "local"])
    capsys.readouterr()
    return code


def test_ps_all_clusters_reads_the_configuration_once(seamless_home, loads, capsys):
    assert len(ClientConfig().cluster_names()) == CLUSTERS
    loads.clear()
    assert _ps(capsys, "--all-clusters", "--persistent") == 2   # rc, r2 are remote: --transport local refuses
    assert len(loads) == 1


def test_ps_cluster_reads_the_configuration_once(seamless_home, loads, capsys):
    assert _ps(capsys, "--cluster", "rc", "--persistent") == 2
    assert len(loads) == 1


def test_a_config_answers_every_cluster_question_from_one_load(seamless_home, loads):
    config = ClientConfig()
    assert loads == []   # nothing is read before the first question
    for cluster in config.cluster_names():
        config.cluster_host(cluster)
        config.cluster_hosts(cluster)
        config.cluster_roots(cluster)
    with pytest.raises(UsageError, match="unknown cluster 'zz'"):
        config.cluster_host("zz")
    assert len(loads) == 1


def test_a_failed_load_is_not_kept(seamless_home, loads):
    clusters_yaml = seamless_home.home / ".seamless" / "clusters.yaml"
    good = clusters_yaml.read_text()
    clusters_yaml.write_text("rc: [")
    config = ClientConfig()
    with pytest.raises(UsageError, match="invalid YAML"):
        config.cluster_names()
    clusters_yaml.write_text(good)
    assert len(config.cluster_names()) == CLUSTERS
