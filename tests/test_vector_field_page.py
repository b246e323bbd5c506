"""AppTest tests of the Vector field page (the browser test is test_browser_vector_field.py): what it
draws, that its numbers are the view's, and that the autoencoder follows the sidebar (issue 15)."""
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis import data, models, views
from analysis import vector_field as vf
from analysis.spec import AnalysisSpec

APP = str(Path(__file__).resolve().parent.parent / "app.py")
pytestmark = pytest.mark.usefixtures("apptest_navigation")
SMALL = {"vf_starts": 60, "vf_noise": 30, "vf_steps": 200}


def run(at: AppTest) -> AppTest:
    """Run, and press Compute where the page asks first (a job estimated as long), as a user would."""
    at.run()
    for _ in range(4):
        buttons = [b for b in at.button if b.label == "Compute"]
        if not buttons:
            break
        buttons[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_page(sidebar=None, query=None, **state) -> AppTest:
    """The page with sidebar widgets and page widgets (by key) preset in the session state, or with
    the query parameters of a link."""
    at = AppTest.from_file(APP, default_timeout=300)
    if query:  # as a link opens: the sidebar takes the link's values on the first run (test_cli does the same)
        at.switch_page("pages/report.py")
        for step in ("sidebar", "page"):
            for key, value in query.items():
                at.query_params[key] = value
            at.run()
            if step == "sidebar":
                at.switch_page("pages/vector_field.py")
        return run(at)
    at.run()
    for key, value in (sidebar or {}).items():
        at.selectbox(key=key).set_value(value)
    at.run()
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page("pages/vector_field.py")
    return run(at)


def figures(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def title(fig: dict) -> str:
    return fig["layout"]["title"]["text"]


def array(value) -> np.ndarray:
    """Plotly 7 sends numpy arrays as typed arrays: {"dtype", "bdata" (base64), "shape"}."""
    import base64

    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.array(value, dtype=float)


def plain(elements) -> list[str]:
    """Texts of markdown elements without the escapes that make user values inert."""
    return [e.value.replace("\\", "") for e in elements]


def metric(at, label_start: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label_start))


def share_query(at) -> dict:
    """The query of the full share link the sidebar offers (every parameter of the view on screen)."""
    link = next(c.value for c in at.code if "/vector-field?" in c.value and "vf_" in c.value)
    return {k: (v if k == "vf_samples" else v[-1]) for k, v in parse_qs(urlsplit(link).query).items()}


def analysed(at) -> str:
    """The autoencoder the page's figures were drawn for."""
    text = title(figures(at)[0])
    return text.split(" of ", 1)[1].split("<br>", 1)[0]


def test_default_view_uses_a_zoo_autoencoder_and_draws_the_exact_2d_field():
    at = open_page()
    assert at.selectbox(key="vf_model").value == "zoo:mlp-ae-b2"
    assert any("are not autoencoders" in i.value for i in at.info)  # A and B are classifiers: said plainly
    field, convergence = figures(at)[:2]
    assert field["layout"]["xaxis"]["title"]["text"] == "z1"
    assert "2-D latent space itself" in title(field)
    assert analysed(at) == "zoo:mlp-ae-b2" and "zoo:mlp-ae-b2" in title(convergence)
    types = [t["type"] for t in field["data"]]
    assert types[0] == "heatmap" and "scattergl" in types
    stars = [t for t in field["data"] if t.get("name") == "attractors"][0]
    # the page's numbers are the library's for the same parameters
    train, test = data.load("digits", split="train"), data.load("digits", split="test")
    dyn = vf.analyse(models.load("zoo:mlp-ae-b2"), train.inputs, test.inputs, n_starts=300, n_noise=200)
    assert len(array(stars["x"])) == dyn.counts[0] == int(metric(at, "Attractors (training starts)"))
    np.testing.assert_allclose(np.sort(array(stars["x"])), np.sort(dyn.attractors[:, 0]), rtol=1e-6)
    assert len([t for t in field["data"] if str(t.get("name", "")).startswith("trajectory")]) == 3
    assert convergence["layout"]["yaxis"]["type"] == "log"
    assert not at.error


def test_autoencoder_model_a_is_used_and_higher_dims_are_shown_in_the_pca_plane():
    at = open_page(sidebar={"a": "zoo:mlp-ae-b8"}, vf_bg="basins", **SMALL)
    assert at.selectbox(key="vf_model").value == "zoo:mlp-ae-b8"
    assert at.selectbox(key="vf_model").options == ["zoo:mlp-ae-b8"]  # the sidebar's autoencoder
    assert not any("are not autoencoders" in i.value for i in at.info)
    field = figures(at)[0]
    assert "PCA plane of the training latents (8-D latent" in title(field)
    assert field["layout"]["xaxis"]["title"]["text"].startswith("PC1 of training latents")
    assert field["data"][0]["name"] == "basin"


def test_switching_model_a_to_another_autoencoder_switches_the_analysis_and_the_link():
    """Issue 15: the page kept analysing zoo:mlp-ae-b2 after model A was set to zoo:mlp-ae-b8, and
    the address then reopened a different view from the one on screen."""
    at = open_page(sidebar={"a": "zoo:mlp-ae-b2"}, **SMALL)
    assert analysed(at) == "zoo:mlp-ae-b2" and share_query(at)["vf_model"] == "zoo:mlp-ae-b2"
    at.selectbox(key="a").set_value("zoo:mlp-ae-b8")
    run(at)
    assert at.selectbox(key="vf_model").value == "zoo:mlp-ae-b8"
    assert analysed(at) == "zoo:mlp-ae-b8"
    assert any("zoo:mlp-ae-b8" in text for text in plain(at.caption) if text.startswith("Autoencoder"))
    assert any("instead of zoo:mlp-ae-b2" in text for text in plain(at.info))  # one line saying so
    query = share_query(at)
    assert query["vf_model"] == "zoo:mlp-ae-b8" and query["a"] == "zoo:mlp-ae-b8"
    # the link reopens the view on screen, with nothing replaced
    again = open_page(query=query)
    assert analysed(again) == "zoo:mlp-ae-b8" and again.selectbox(key="vf_model").value == "zoo:mlp-ae-b8"
    assert not any("instead of" in text for text in plain(again.info))
    spec, notes = views.get("vector-field").resolve(AnalysisSpec.from_query("vector-field", query)[0])
    assert spec.params["vf_model"] == "zoo:mlp-ae-b8" and notes == []


def scripted_autoencoder() -> str:
    import io

    import torch

    from tests.test_vector_field import ScriptedAE

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(ScriptedAE()), buf)
    return models.upload(buf.getvalue(), "my_ae.pt")


def test_switching_model_a_away_from_an_autoencoder_never_leaves_an_empty_view():
    """Model A was the autoencoder analysed; with no autoencoder left in the sidebar the page analyses
    a zoo autoencoder and says so: the same one when it is from the zoo, else the fallback."""
    at = open_page(sidebar={"a": "zoo:mlp-ae-b8"}, **SMALL)
    at.selectbox(key="a").set_value("zoo:cnn-s0")
    run(at)
    assert analysed(at) == "zoo:mlp-ae-b8" and len(at.selectbox(key="vf_model").options) > 1
    assert any("are not autoencoders" in i.value for i in at.info)
    upload = scripted_autoencoder()
    at = open_page(sidebar={"a": upload}, **SMALL)
    assert analysed(at) == upload
    at.selectbox(key="a").set_value("zoo:cnn-s0")
    run(at)
    assert analysed(at) == "zoo:mlp-ae-b2" and figures(at)
    assert any(f"{upload} is not a zoo autoencoder: showing zoo:mlp-ae-b2" in text for text in plain(at.info))
    assert share_query(at)["vf_model"] == "zoo:mlp-ae-b2"


def test_a_link_with_an_autoencoder_that_no_longer_fits_the_sidebar():
    at = open_page(query={"a": "zoo:conv-ae-b2", "vf_model": "zoo:mlp-ae-memorize", **{k: str(v) for k, v in
                                                                                      SMALL.items()}})
    assert analysed(at) == "zoo:conv-ae-b2"
    assert any("instead of zoo:mlp-ae-memorize" in text for text in plain(at.info))


def test_attractor_gallery_memorization_probing_and_regimes():
    at = open_page(vf_model="zoo:mlp-ae-memorize", vf_view="attractors", **SMALL)
    box = figures(at)[0]
    assert [t["type"] for t in box["data"]] == ["box", "box"] and "zoo:mlp-ae-memorize" in title(box)
    assert float(metric(at, "Memorization")) > 0.99 > float(metric(at, "Null"))
    assert any("**above**" in c.value for c in at.caption)
    assert len(at.get("image")) >= 1  # the gallery (Streamlit calls an image list "image")
    at.radio(key="vf_view").set_value("probing")
    run(at)
    assert float(metric(at, "Error ratio")) > 0 and "noise attractors" in title(figures(at)[0])
    at.radio(key="vf_view").set_value("regimes").run()
    assert len([b for b in at.button if b.label == "Compute"]) == 2  # not computed yet: the page asks first
    assert sum("Will compute" in i.value for i in at.info) == 2
    run(at)
    regime, epochs_fig = figures(at)
    assert [str(v) for v in regime["data"][0]["x"]] == ["2", "8", "32"]
    assert "bottleneck" in title(regime) and "mlp-ae-b8" in title(epochs_fig)
    bottleneck, epochs = (t.value for t in at.table)
    # a narrow table: a row per measure, a column per model (issue 20: the wide one was cut off)
    assert list(bottleneck.columns) == ["2", "8", "32"] and bottleneck.loc["model", "32"] == "zoo:mlp-ae-b32"
    assert list(epochs.columns) == ["0", "1", "5", "20", "150"]
    assert epochs.loc["attractors from noise starts", "0"] == "1"  # untrained: one attractor


def test_ood_table_verdict_and_an_uploaded_ood_set():
    import io

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.save(buf, rng.uniform(0, 1, size=(50, 64)).astype(np.float32))
    upload = data.upload(buf.getvalue(), "my_ood.npy")
    at = open_page(vf_view="ood", vf_ood_n=60, vf_ood_set=upload, **SMALL)
    table = at.dataframe[0].value
    assert set(table["OOD set"]) == {"noise", "inverted", "pixel-shuffled", "upload: my_ood.npy"}
    assert {"AUROC · reconstruction", "AUROC · trajectory", "FPR95 · reconstruction"} <= set(table.columns)
    assert (table["AUROC · reconstruction"] > 0.95).all()
    verdict = [m.value for m in at.markdown if "Which score wins" in m.value][0]
    assert "noise: reconstruction error wins" in verdict.replace("\\", "")
    hist = figures(at)[0]
    assert {t["type"] for t in hist["data"]} == {"histogram"} and "zoo:mlp-ae-b2" in title(hist)
    assert share_query(at)["vf_ood_set"] == upload  # the link keeps the uploaded set


def test_an_uploaded_torchscript_autoencoder_as_model_a():
    ref = scripted_autoencoder()
    at = open_page(sidebar={"a": ref}, **SMALL)
    assert at.selectbox(key="vf_model").value == ref and at.selectbox(key="vf_model").options == [ref]
    field = figures(at)[0]
    assert "PCA plane of the training latents (3-D latent" in title(field)
    assert any("first 250 rows as the reference set" in text for text in plain(at.caption))
    assert not at.error
