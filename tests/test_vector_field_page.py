"""AppTest tests of the Vector field page (the browser test is test_browser_vector_field.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis import data, models
from analysis import vector_field as vf

APP = str(Path(__file__).resolve().parent.parent / "app.py")
pytestmark = pytest.mark.usefixtures("apptest_navigation")
SMALL = {"vf_starts": 60, "vf_noise": 30, "vf_steps": 200}


def open_page(sidebar=None, **state) -> AppTest:
    """The page with sidebar widgets and page widgets (by key) preset in the session state."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    for key, value in (sidebar or {}).items():
        at.selectbox(key=key).set_value(value)
    at.run()
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page("pages/vector_field.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def array(value) -> np.ndarray:
    """Plotly 7 sends numpy arrays as typed arrays: {"dtype", "bdata" (base64), "shape"}."""
    import base64

    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.array(value, dtype=float)


def metric(at, label_start: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label_start))


def test_default_view_uses_a_zoo_autoencoder_and_draws_the_exact_2d_field():
    at = open_page()
    assert at.selectbox(key="vf_model").value == "zoo:mlp-ae-b2"
    assert any("are not autoencoders" in i.value for i in at.info)  # A and B are classifiers: said plainly
    field, convergence = figures(at)[:2]
    assert field["layout"]["xaxis"]["title"]["text"] == "z1"
    assert "2-D latent space itself" in field["layout"]["title"]["text"]
    types = [t["type"] for t in field["data"]]
    assert types[0] == "heatmap" and "scattergl" in types
    stars = [t for t in field["data"] if t.get("name") == "attractors"][0]
    # the page's numbers are the library's for the same parameters
    train, test = data.load("digits", split="train"), data.load("digits", split="test")
    dyn = vf.analyse(models.load("zoo:mlp-ae-b2"), train.inputs, test.inputs, n_starts=300, n_noise=200)
    assert len(array(stars["x"])) == dyn.counts[0] == int(metric(at, "Attractors (training starts)"))
    np.testing.assert_allclose(np.sort(array(stars["x"])), np.sort(dyn.attractors[:, 0]), rtol=1e-6)
    assert [t for t in field["data"] if str(t.get("name", "")).startswith("trajectory")].__len__() == 3
    assert convergence["layout"]["yaxis"]["type"] == "log"
    assert not at.error


def test_autoencoder_model_a_is_used_and_higher_dims_are_shown_in_the_pca_plane():
    at = open_page(sidebar={"a": "zoo:mlp-ae-b8"}, vf_bg="basins", **SMALL)
    assert at.selectbox(key="vf_model").value == "zoo:mlp-ae-b8"
    assert not any("are not autoencoders" in i.value for i in at.info)
    field = figures(at)[0]
    assert "PCA plane of the training latents (8-D latent" in field["layout"]["title"]["text"]
    assert field["layout"]["xaxis"]["title"]["text"].startswith("PC1 of training latents")
    assert field["data"][0]["name"] == "basin"


def test_attractor_gallery_memorization_probing_and_regimes():
    at = open_page(vf_model="zoo:mlp-ae-memorize", vf_view="attractors", **SMALL)
    box = figures(at)[0]
    assert [t["type"] for t in box["data"]] == ["box", "box"]
    assert float(metric(at, "Memorization")) > 0.99 > float(metric(at, "Null"))
    assert any("**above**" in c.value for c in at.caption)
    at.radio(key="vf_view").set_value("probing").run()
    assert not at.exception
    assert float(metric(at, "Error ratio")) > 0
    at.radio(key="vf_view").set_value("regimes").run()
    buttons = [b for b in at.button if b.label.startswith("Compute")]
    assert len(buttons) == 2  # nothing computed yet for these parameters: the page asks first
    buttons[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    regime = figures(at)[0]
    assert [str(v) for v in regime["data"][0]["x"]] == ["2", "8", "32"]
    assert len(at.dataframe) == 1 and at.dataframe[0].value["bottleneck"].tolist() == ["2", "8", "32"]
    [b for b in at.button if b.label.startswith("Compute")][0].click().run()  # the training checkpoints
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.dataframe) == 2  # the bottleneck panel stays: its analyses are in the store now
    epochs = at.dataframe[1].value
    assert epochs["epoch"].tolist() == ["0", "1", "5", "20", "150"]
    assert epochs["attractors (noise starts)"].tolist()[0] == 1  # untrained: one attractor


def test_ood_table_and_verdict():
    at = open_page(vf_view="ood", vf_ood_n=60, **SMALL)
    table = at.dataframe[0].value
    assert set(table["OOD set"]) == {"noise", "inverted", "pixel-shuffled"}
    assert {"AUROC · reconstruction", "AUROC · trajectory", "FPR95 · reconstruction"} <= set(table.columns)
    assert (table["AUROC · reconstruction"] > 0.95).all()
    verdict = [m.value for m in at.markdown if "Which score wins" in m.value][0]
    assert "noise: reconstruction error wins" in verdict
    hist = figures(at)[0]
    assert {t["type"] for t in hist["data"]} == {"histogram"}


def test_an_uploaded_torchscript_autoencoder_as_model_a():
    import io

    import torch

    from tests.test_vector_field import ScriptedAE

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(ScriptedAE()), buf)
    ref = models.upload(buf.getvalue(), "my_ae.pt")
    at = open_page(sidebar={"a": ref}, **SMALL)
    assert at.selectbox(key="vf_model").value == ref
    assert ref in at.selectbox(key="vf_model").options and "zoo:mlp-ae-b2" in at.selectbox(key="vf_model").options
    field = figures(at)[0]
    assert "PCA plane of the training latents (3-D latent" in field["layout"]["title"]["text"]
    assert not at.error
