"""Forged links: unknown model references, path-like values, out-of-range numbers, unknown
parameters, spec ids that do not exist. Each gives a clear message and the default view, and no
file outside the store (and the app's own folders) is ever opened: an audit hook records every
``open`` / directory listing the app makes while it runs the link.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
pytestmark = pytest.mark.usefixtures("apptest_navigation")


def open_link(page: str, query: dict) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page(f"pages/{page}.py")
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def messages(at: AppTest) -> str:
    return "\n".join([w.value for w in at.warning] + [w.value for w in at.sidebar.warning]
                     + [e.value for e in at.error])


def assert_default_sidebar(at: AppTest, **except_keys) -> None:
    defaults = {"a": "zoo:mlp-s0", "b": "zoo:mlp-s1", "data": "digits", "n": 500, "seed": 0}
    defaults.update(except_keys)
    assert at.selectbox(key="a").value == defaults["a"]
    assert at.selectbox(key="b").value == defaults["b"]
    assert at.selectbox(key="data").value == defaults["data"]
    assert at.number_input(key="n").value == defaults["n"]
    assert at.number_input(key="seed").value == defaults["seed"]


FORGED = [
    # unknown or forged model and data references
    ("models", {"a": "zoo:no-such-model"}, "No zoo model named 'no-such-model'"),
    ("models", {"a": "zoo:../../etc/passwd"}, "Not a zoo model name"),
    ("models", {"b": "hf:/etc"}, "Local model paths are disabled"),
    ("models", {"b": "hf:../../../etc"}, "Local model paths are disabled"),
    ("models", {"a": "upload:deadbeefdeadbeef"}, "No uploaded model with id 'deadbeefdeadbeef'"),
    ("models", {"a": "upload:../../etc/passwd"}, "Not an upload id"),
    ("models", {"a": "file:///etc/passwd"}, "Unknown model source 'file'"),
    ("models", {"a": "deadbeef"}, "Not a model reference: 'deadbeef'"),  # a spec hash too short for one
    ("models", {"data": "../../etc/passwd"}, "Unknown dataset '../../etc/passwd'"),
    ("models", {"data": "upload:deadbeefdeadbeef"}, "No uploaded dataset with id 'deadbeefdeadbeef'"),
    # short links (spec ids) that do not exist here
    ("models", {"a": "0123456789abcdef"}, "not stored on this server"),
    ("similarity", {"a": "ffffffffffffffff"}, "not stored on this server"),
    # out-of-range and malformed numbers, unknown choices, unknown parameters
    ("models", {"n": "999999999"}, "'n' must lie between 10 and 1000000"),
    ("models", {"n": "-5", "seed": "-1"}, "'seed' must lie between 0 and"),
    ("models", {"n": "1e400"}, "'n' must be a finite number"),  # crashed the app: int(inf) in the widget
    ("models", {"seed": "-inf", "n": "nan"}, "'seed' must be a finite number"),
    ("similarity", {"batch": "1e400", "k": "inf"}, "'batch' must be a finite number"),
    ("projections", {"umap_k": "1e999", "perplexity": "-1e400", "umap_d": "inf"}, "'umap_k' must be a finite"),
    ("models", {"seed": "abc"}, "'seed' must be a number"),
    ("models", {"split": "../x"}, "'split' has characters"),
    ("models", {"foo": "bar", "__proto__": "x"}, "unknown parameter 'foo'"),
    ("similarity", {"measure": "../../etc/passwd"}, "'measure' has characters"),
    ("similarity", {"measure": "nope", "batch": "-3"}, "'batch' must lie between 0 and 100000"),
    ("similarity", {"cell_a": "../../etc/passwd"}, "'cell_a' has characters"),
    ("projections", {"dims": "9", "perplexity": "nan"}, "'perplexity' must be a finite number"),
    ("projections", {"method": "<script>alert(1)</script>"}, "'method' has characters"),
]


@pytest.mark.parametrize("page,query,message", FORGED, ids=[f"{p}?{q}" for p, q, _ in FORGED])
def test_forged_link_gives_a_message_and_the_default_view(page, query, message):
    at = open_link(page, query)
    text = messages(at)
    assert message in text, text
    assert_default_sidebar(at)
    assert not at.error or "short link" in text, [e.value for e in at.error]  # the page itself ran


def test_bad_value_next_to_good_ones_keeps_the_good_ones():
    at = open_link("models", {"a": "zoo:cnn-s0", "n": "120", "seed": "-4", "b": "zoo:../x"})
    assert "'seed' must lie between" in messages(at) and "Not a zoo model name" in messages(at)
    assert_default_sidebar(at, a="zoo:cnn-s0", n=120)


def test_message_is_shown_once_per_opened_link_not_on_every_rerun():
    at = open_link("models", {"n": "999999999"})
    assert "'n' must lie between" in messages(at)
    at.number_input(key="n").set_value(100).run()
    assert "'n' must lie between" not in messages(at)


class _OpenRecorder:
    """An audit hook (hooks cannot be removed: it records only while ``active``)."""

    def __init__(self):
        self.active = False
        self.paths: list[str] = []

    def __call__(self, event, args):
        if self.active and event in ("open", "os.listdir", "os.scandir") and args and args[0] is not None:
            path = args[0]
            if isinstance(path, (str, bytes, Path)):
                self.paths.append(str(path))


_RECORDER = _OpenRecorder()
sys.addaudithook(_RECORDER)


def test_no_forged_link_reads_a_file_outside_the_store(tmp_path, isolated_store):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.npy").write_bytes(b"\x93NUMPY secret")
    (outside / "config.json").write_text("{}")  # looks like a transformers folder to a careless loader
    rel = "../" * 12 + str(outside).lstrip("/")
    links = [
        ("models", {"a": f"hf:{outside}", "b": f"hf:{rel}"}),
        ("models", {"a": f"zoo:{rel}/secret", "data": f"{outside}/secret.npy"}),
        ("models", {"a": f"upload:{rel}", "data": f"upload:{rel}"}),
        ("similarity", {"cell_a": f"{outside}/secret.npy", "layers_a": [rel, "net.fc1"]}),
        ("report", {"report": rel}),
        ("models", {"a": "0123456789abcdef"}),
        ("models", {"a": "/etc/passwd", "b": "../../../../etc/passwd"}),
    ]
    for page, query in links:
        _RECORDER.paths.clear()
        _RECORDER.active = True
        try:
            at = open_link(page, query)
        finally:
            _RECORDER.active = False
        touched = [p for p in _RECORDER.paths if str(outside) in p or "passwd" in p or "/etc/" in p]
        assert touched == [], (query, touched)
        assert messages(at), f"{query}: no message"
        assert at.selectbox(key="a").value == "zoo:mlp-s0"
