"""config/yaml_cache.py: the C loader where PyYAML has it, each text parsed once, answers
that follow every edit, errors worded as before, and seamless-config's loads routed
through it only inside our sessions (issue 13)."""

from __future__ import annotations

import os
import uuid

import pytest
import yaml

from seamless_service.client.config import yaml_cache
from seamless_service.client.config.session import session


def test_the_c_loader_runs_where_pyyaml_has_libyaml():
    assert yaml_cache.loader_name() == ("CSafeLoader" if yaml.__with_libyaml__ else "SafeLoader")


def test_a_text_is_parsed_once_and_every_caller_gets_its_own_copy(monkeypatch):
    # a text of its own (the comment): the cache lives as long as the process, which may have
    # run this test before (mutmut runs the suite twice in one process)
    text = f"# {uuid.uuid4().hex}\nc1:\n  frontends: [{{hostname: a}}]\n"
    first = yaml_cache.safe_load(text)
    parses = []
    real_load = yaml.load
    monkeypatch.setattr(yaml, "load", lambda *a, **kw: parses.append(1) or real_load(*a, **kw))
    first["c1"]["frontends"].append("changed by a caller")
    assert yaml_cache.safe_load(text) == {"c1": {"frontends": [{"hostname": "a"}]}}
    assert parses == []
    assert yaml_cache.safe_load(text + "c2: {}\n") == {"c1": {"frontends": [{"hostname": "a"}]}, "c2": {}}
    assert parses == [1]


def test_a_same_size_edit_in_place_is_seen_even_with_the_old_mtime(tmp_path):
    path = tmp_path / "clusters.yaml"
    path.write_text("c1: {type: local}\n")
    with path.open(encoding="utf-8") as handle:
        assert yaml_cache.safe_load(handle) == {"c1": {"type": "local"}}
    before = os.stat(path)
    with path.open("r+", encoding="utf-8") as handle:
        handle.write("c2")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    with path.open(encoding="utf-8") as handle:
        assert yaml_cache.safe_load(handle) == {"c2": {"type": "local"}}


@pytest.mark.parametrize("text", ["- project: [p\n- stage: s\n", "a: b: c\n", "x: 'unclosed\n", "\t- tab\n"])
def test_errors_are_those_of_yaml_safe_load_and_name_the_file(tmp_path, text):
    path = tmp_path / "seamless.yaml"
    path.write_text(text)
    with path.open(encoding="utf-8") as handle, pytest.raises(yaml.YAMLError) as theirs:
        yaml.safe_load(handle)
    for _ in range(2):   # nothing is kept of a failed parse
        with path.open(encoding="utf-8") as handle, pytest.raises(yaml.YAMLError) as ours:
            yaml_cache.safe_load(handle)
        assert type(ours.value) is type(theirs.value)
        assert str(ours.value) == str(theirs.value) and str(path) in str(ours.value)


def test_seamless_config_parses_through_the_cache_only_inside_our_sessions():
    import seamless_config.config_files as config_files

    assert config_files.yaml is yaml
    with session():
        assert config_files.yaml.safe_load is yaml_cache.safe_load
        assert config_files.yaml.YAMLError is yaml.YAMLError
    assert config_files.yaml is yaml
    with pytest.raises(RuntimeError), session():
        raise RuntimeError("a failed load")
    assert config_files.yaml is yaml
