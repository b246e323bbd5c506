"""The sidebar's "Open a model or dataset by name": a transformers folder and a save_to_disk dataset
open in the dashboard where the server allows folders; refused with one message (nothing changes)
where it does not."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.tiny_models import save_tiny

APP = str(Path(__file__).resolve().parents[1] / "app.py")
pytestmark = pytest.mark.usefixtures("apptest_navigation")


@pytest.fixture
def text_set(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'ships'}" for i in range(40)]
    datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(40)]}).save_to_disk(
        str(tmp_path / "sentences"))
    return tmp_path / "sentences"


def _open(at, ref: str, target: str):
    at.text_input(key="_open_ref").input(ref)
    at.radio(key="_open_as").set_value(target)
    at.button[[b.label for b in at.button].index("Load")].click()  # the form's submit button
    return at.run()


def test_a_folder_model_and_dataset_open_where_folders_are_allowed(tmp_path, text_set, monkeypatch):
    monkeypatch.setenv("REPLENS_ALLOW_LOCAL_PATHS", "1")
    folder = save_tiny("bert", tmp_path / "bert")
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("pages/similarity.py").run()
    _open(at, f"hf:{folder}", "Model A")
    _open(at, f"hf:{folder}", "Model B")
    _open(at, f"hfds:{text_set}", "Dataset")
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="b").value == f"hf:{folder}"
    assert at.selectbox(key="data").value == f"hfds:{text_set}"
    assert not at.error, [e.value for e in at.error]
    assert at.get("plotly_chart"), "the similarity heatmap of the opened model on the opened set"


def test_folders_are_refused_on_a_default_server_and_nothing_changes(tmp_path, text_set, monkeypatch):
    monkeypatch.delenv("REPLENS_ALLOW_LOCAL_PATHS", raising=False)
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    before = at.selectbox(key="data").value
    _open(at, f"hfds:{text_set}", "Dataset")
    assert at.selectbox(key="data").value == before
    assert any("disabled on this server" in e.value or "not allowed" in e.value.lower() for e in at.error), \
        [e.value for e in at.error]
    _open(at, "hf:../../etc", "Model A")
    assert at.selectbox(key="a").value == "zoo:mlp-s0"
