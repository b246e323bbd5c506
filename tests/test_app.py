"""AppTest tests of the app shell and the Models page (no browser: Streamlit's test runner)."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")


pytestmark = pytest.mark.usefixtures("apptest_navigation")


def run_app(**params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def main_text(at) -> str:
    return "\n".join(str(m.value) for m in at.markdown) + "\n".join(str(c.value) for c in at.caption)


def test_default_view_shows_two_zoo_models_side_by_side():
    at = run_app()
    assert at.sidebar.selectbox(key="a").value == "zoo:mlp-s0"
    assert at.sidebar.selectbox(key="b").value == "zoo:mlp-s1"
    assert at.sidebar.selectbox(key="data").value == "digits"
    assert [s.value for s in at.subheader][:2] == ["Model A", "Model B"]
    text = main_text(at)
    assert "`zoo:mlp-s0`" in text and "`zoo:mlp-s1`" in text
    assert len(at.table) >= 2  # the two layer tables
    layers = at.table[0].value
    assert list(layers.columns) == ["type", "output shape", "parameters"]
    assert layers.index.tolist()[0] == "net.fc1" and layers["parameters"].tolist()[0] == "8,320"
    accuracy = [m for m in at.metric if m.label == "Accuracy"]
    assert len(accuracy) == 2 and all(float(m.value.rstrip("%")) > 90 for m in accuracy)
    assert at.get("image"), "the samples gallery is missing"
    assert not at.error


def test_switching_model_a_updates_the_page():
    at = run_app()
    at.sidebar.selectbox(key="a").set_value("zoo:conv-ae-b8").run()
    assert not at.exception
    assert "`zoo:conv-ae-b8`" in main_text(at)
    assert any(m.label == "Recon. MSE" for m in at.metric)


def test_query_params_restore_the_selection():
    at = run_app(a="hf:minilm", b="hf:minilm-random", data="text", n="100", seed="3")
    assert at.sidebar.selectbox(key="a").value == "hf:minilm"
    assert at.sidebar.selectbox(key="data").value == "text"
    assert at.sidebar.number_input(key="n").value == 100
    probes = [m for m in at.metric if m.label == "k-NN probe"]
    assert len(probes) == 2
    trained, random = (float(m.value.rstrip("%")) for m in probes)
    assert trained > random + 30  # the pretrained encoder groups topics, the random one does not
    assert not at.error


def test_incompatible_data_gives_a_clear_error_not_a_traceback():
    at = run_app(a="hf:minilm", b="zoo:mlp-s0", data="digits")
    errors = [e.value for e in at.error]
    assert any("reads text" in e for e in errors)
    assert not at.exception


@pytest.mark.parametrize("params,warning", [
    ({"a": "zoo:../../etc/passwd"}, "Not a zoo model name"),
    ({"b": "hf:/etc"}, "Local model paths are disabled"),
    ({"data": "../secret"}, "Unknown dataset"),
])
def test_forged_links_are_ignored_with_a_warning(params, warning):
    at = run_app(**params)
    assert any(warning in w.value for w in at.sidebar.warning)
    assert at.sidebar.selectbox(key="a").value.startswith(("zoo:", "hf:"))


def test_uploaded_model_can_be_referenced_by_link():
    import io

    import numpy as np

    from analysis import data, models

    full = data.load("digits")
    buf = io.BytesIO()
    np.savez(buf, pixels=full.inputs, doubled=2 * full.inputs)
    ref = models.upload(buf.getvalue(), "pixels.npz")
    at = run_app(a=ref)
    assert at.sidebar.selectbox(key="a").value == ref
    text = main_text(at)
    assert "precomputed embeddings" in text
    assert not at.error


FIRST_PAGE = """
import sys
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

original = PagesManager.__init__
def init(self, *a, **k):
    original(self, *a, **k)
    PagesManager.uses_pages_directory = False
PagesManager.__init__ = init
at = AppTest.from_file(sys.argv[1], default_timeout=120)
at.run()
assert not at.exception, [e.value for e in at.exception]
print(len([m for m in at.metric if m.label == "Accuracy"]), "torch" in sys.modules)
"""


def test_stored_default_view_renders_without_importing_torch(isolated_store):
    """A server's first page on a store that holds its results needs the models' content hashes
    only (the zoo manifest has them): torch, seconds of import, is not on its path."""
    import subprocess
    import sys

    env = {**__import__("os").environ, "REPLENS_STORE": str(isolated_store), "REPLENS_JOBS": "inline"}
    runs = [subprocess.run([sys.executable, "-c", FIRST_PAGE, APP], capture_output=True, text=True, env=env,
                           timeout=300, cwd=Path(APP).parent) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr[-2000:]
    assert runs[0].stdout.split() == ["2", "True"]  # computed here: the models were loaded
    assert runs[1].stdout.split() == ["2", "False"]  # read from the store: the same cards, no torch
