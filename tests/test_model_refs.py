"""hf: references: a hub id is never a local path, local folders need the setting, hub access is a
setting (off in the web app unless configured, on in the library and CLI unless turned off), and
nothing contacts the network when it is off."""
from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import pytest

from analysis import models
from analysis.errors import UserInputError


class _Opens:
    """Records files and folders opened under a root (an audit hook: sees every open)."""

    def __init__(self):
        self.root, self.paths = None, []

    def __call__(self, event, args):
        if self.root and event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, Path)):
            path = str(args[0])
            if path.startswith(self.root) or (not path.startswith("/") and path.startswith("lab")):
                self.paths.append(path)


_OPENS = _Opens()
sys.addaudithook(_OPENS)


@pytest.fixture
def opens(tmp_path):
    _OPENS.root, _OPENS.paths = str(tmp_path / "work" / "lab"), []
    yield _OPENS.paths
    _OPENS.root = None


@pytest.fixture
def no_network(monkeypatch):
    """Every outgoing connection attempt is recorded and fails."""
    attempts = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture
def hub(monkeypatch, tmp_path, tiny_bert_dir):
    """A fake hub: snapshot_download returns a copy of the tiny BERT in a cache folder, and records
    what was asked."""
    import huggingface_hub

    cache = tmp_path / "hub-cache" / "snapshot"
    shutil.copytree(tiny_bert_dir, cache)
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns})
        return str(cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_bert_dir):
    """A working directory holding a transformers folder at the relative path lab/private-model."""
    work = tmp_path / "work"
    shutil.copytree(tiny_bert_dir, work / "lab" / "private-model")
    monkeypatch.chdir(work)
    return work


def test_a_hub_id_is_never_read_from_a_relative_folder(workdir, opens, no_network, monkeypatch):
    """The bypass: hf:lab/private-model loaded ./lab/private-model with local paths off."""
    monkeypatch.delenv("REPLENS_ALLOW_HUB", raising=False)
    for allow_local in (False, True):
        with pytest.raises(UserInputError, match="hub is off on this server"):
            models.load("hf:lab/private-model", allow_local=allow_local, allow_hub=False)
    with pytest.raises(UserInputError, match="Local model paths are disabled"):
        models.load("hf:./lab/private-model", allow_local=False, allow_hub=False)
    assert opens == [] and no_network == []
    # written as a path, with local paths allowed, the folder is what it loads
    m = models.load("hf:./lab/private-model", allow_local=True, allow_hub=False)
    assert m.layers == ["embeddings", "encoder.layer.0", "encoder.layer.1"]
    assert opens and no_network == []


def test_with_the_hub_on_a_hub_id_comes_from_the_hub_cache_not_the_working_directory(workdir, opens, hub):
    m = models.load("hf:lab/private-model@v1.0", allow_local=False, allow_hub=True)
    assert hub == [{"repo_id": "lab/private-model", "revision": "v1.0", "allow_patterns": models.hf.HUB_FILES}]
    assert not any(p.endswith(".bin") or p == "*" for p in hub[0]["allow_patterns"])  # no pickles, no code
    assert opens == []
    assert m.info["source"] == "lab/private-model@v1.0" and m.ref == "hf:lab/private-model@v1.0"


def test_the_library_allows_the_hub_unless_turned_off(hub, monkeypatch):
    monkeypatch.delenv("REPLENS_ALLOW_HUB", raising=False)
    models.load("hf:org/name")  # library default: on
    assert [c["repo_id"] for c in hub] == ["org/name"]
    monkeypatch.setenv("REPLENS_ALLOW_HUB", "0")
    with pytest.raises(UserInputError, match="REPLENS_ALLOW_HUB=1"):
        models.load("hf:org/name")
    assert len(hub) == 1


def test_hub_off_refuses_at_once_and_nothing_contacts_the_network(no_network):
    for ref in ("hf:org/name", "hf:bert-base-uncased", "hf:org/name@main"):
        with pytest.raises(UserInputError, match="hub is off"):
            models.load(ref, allow_hub=False)
    m = models.load("hf:minilm", allow_hub=False)  # the bundled model: local files only
    assert m.layers[0] == "embeddings"
    assert no_network == []


@pytest.mark.parametrize("ref", ["hf:org/../../etc", "hf:a/b/c", "hf:org/name@", "hf:-x/y", "hf:.hidden/x",
                                 "hf:org name", "hf:~"])
def test_malformed_transformers_references(ref, no_network):
    with pytest.raises(UserInputError):
        models.load(ref, allow_local=False, allow_hub=True)
    assert no_network == []


def test_a_hub_repository_without_safetensors_is_refused(monkeypatch, tmp_path):
    import huggingface_hub

    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(tmp_path / "snap"))
    with pytest.raises(UserInputError, match="no safetensors weights"):
        models.load("hf:org/pickled-only", allow_hub=True)


def test_a_hub_failure_is_one_message(monkeypatch):
    import huggingface_hub

    def fail(*a, **k):
        raise OSError("connection reset at /srv/secret/path")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(UserInputError, match="Could not download 'org/name'") as info:
        models.load("hf:org/name", allow_hub=True)
    assert "/srv/secret" not in str(info.value)


# ------------------------------------------------------------------ the web app
def _open(query: dict):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.usefixtures("apptest_navigation")
def test_the_web_app_refuses_hub_links_unless_configured(monkeypatch, no_network, hub):
    monkeypatch.delenv("REPLENS_ALLOW_HUB", raising=False)
    at = _open({"a": "hf:org/name"})
    assert any("hub is off on this server" in w.value for w in at.sidebar.warning)
    assert at.sidebar.selectbox(key="a").value == "zoo:mlp-s0"
    assert hub == [] and no_network == []
    monkeypatch.setenv("REPLENS_ALLOW_HUB", "1")  # the administrator turns it on
    at = _open({"a": "hf:org/name", "data": "text"})
    assert at.sidebar.selectbox(key="a").value == "hf:org/name"
    assert [c["repo_id"] for c in hub] == ["org/name"]
