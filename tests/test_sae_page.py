"""AppTest tests of the SAE features page (the view: tests/test_sae_view.py; the browser test:
tests/test_browser_sae.py). AppTest runs jobs inline.

The decoder map uses PCA here (``sae_map``): UMAP's first call compiles for ~15 s; the browser test
and the library tests cover the rest."""
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis import activations, data, models
from analysis import sae as S
from analysis.views.base import View

APP = str(Path(__file__).resolve().parent.parent / "app.py")
FAST = dict(kind="topk", expansion=1, k=16, steps=100, lr=3e-3, batch_size=128)

pytestmark = pytest.mark.usefixtures("apptest_navigation")


def open_page(**widgets) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("pages/sae.py")
    widgets = {"sae_steps": FAST["steps"], "sae_map": "pca", **widgets}
    for key, value in widgets.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def titles(at) -> list[str]:
    return [c["layout"].get("title", {}).get("text", "") for c in charts(at)]


def metric(at, label: str) -> str:
    return [m for m in at.metric if m.label == label][0].value


def counting(monkeypatch) -> list:
    seen = []
    original = View.compute

    def compute(self, spec, *a, **k):
        seen.append(k.get("sections"))
        return original(self, spec, *a, **k)

    monkeypatch.setattr(View, "compute", compute)
    return seen


def test_default_view_trains_a_dictionary_sized_to_the_data_and_shows_everything():
    at = open_page()
    ds, model = data.load("digits", n=500), models.load("zoo:mlp-s0")
    sae = S.trained_sae(model, ds, "net.relu2", only_cached=True, **FAST)  # the page put it in the store
    assert sae is not None and sae.d_sae == 128  # auto: 1x on 500 inputs (4x left 58% dead)
    ev = S.evaluate(sae, activations.extract(model, ds, ["net.relu2"])["net.relu2"])
    assert float(metric(at, "L0")) == pytest.approx(ev.l0, abs=0.05)
    assert float(metric(at, "Var. explained")) == pytest.approx(ev.fve, abs=5e-4)
    assert metric(at, "MSE") == f"{ev.mse:.3g}" and "…" not in metric(at, "MSE")
    assert metric(at, "Latents / inputs") == "128 / 500"
    for expected in ("Training curve", "Feature density", "Sparsity vs reconstruction", "Decoder directions",
                     "Match quality", "non-zero activations", "strongest active features"):
        assert any(t.startswith(expected) or expected in t for t in titles(at)), (expected, titles(at))
    # the feature browser opens the densest feature, its row ticked; the spec leaves it to the view
    assert at.number_input(key="sae_feature").value is None
    densest = int(np.argmax(ev.density))
    assert any(f"Feature {densest}" in m.value for m in at.markdown)
    table = [d for d in at.dataframe if d.proto.id.endswith(f"sae_table_a_{densest}")][0]
    assert json.loads(table.proto.selection_default)["selection"]["rows"] == [0]
    assert any(m.label == "Loss recovered" for m in at.metric)
    assert not at.error and not at.warning


def test_opening_another_feature_moves_the_tick_and_shows_its_statistics():
    at = open_page(sae_match=False)
    at.number_input(key="sae_feature").set_value(3).run()
    assert not at.exception
    assert any("Feature 3" in m.value for m in at.markdown)
    classes = [c for c in charts(at) if "Feature 3: mean activation per class" in c["layout"]["title"]["text"]]
    assert len(classes) == 1 and len(classes[0]["data"][0]["x"]) == 10
    tables = [d for d in at.dataframe if "sae_table_a_" in d.proto.id]
    assert len(tables) == 1 and tables[0].proto.id.endswith("sae_table_a_3")  # the old row's tick is gone
    ticked = json.loads(tables[0].proto.selection_default)["selection"]["rows"]
    assert len(ticked) == 1


def test_a_dead_feature_says_it_is_dead_instead_of_blank_charts():
    at = open_page(sae_match=False)
    ds, model = data.load("digits", n=500), models.load("zoo:mlp-s0")
    sae = S.trained_sae(model, ds, "net.relu2", only_cached=True, **FAST)
    density = S.evaluate(sae, activations.extract(model, ds, ["net.relu2"])["net.relu2"]).density
    dead = int(np.nonzero(density == 0)[0][0])
    at.number_input(key="sae_feature").set_value(dead).run()
    assert any(f"Feature {dead} is dead" in i.value for i in at.info)
    assert not [t for t in titles(at) if t.startswith(f"Feature {dead}")]  # no blank charts
    assert any("Nearest features" in m.value for m in at.markdown)


def test_a_reload_computes_nothing(monkeypatch):
    open_page(sae_match=False)
    seen = counting(monkeypatch)
    at = open_page(sae_match=False)
    assert seen == [] and any("trained in" in c.value for c in at.caption)


def test_each_kind_trains_on_the_page():
    for kind in ("relu", "jumprelu", "batchtopk"):
        at = open_page(sae_kind=kind, sae_match=False)
        assert at.selectbox(key="sae_kind").value == kind
        assert float(metric(at, "L0")) > 0


def test_long_training_waits_for_the_button(monkeypatch):
    from analysis.sae import training

    monkeypatch.setattr(training, "FLOPS_PER_SECOND", 1e8)  # a long run
    at = open_page(sae_match=False)
    infos = " ".join(i.value for i in at.info)
    assert "Will compute a TopK SAE with 128 latents on net.relu2 of zoo:mlp-s0" in infos and "about" in infos
    assert not at.metric
    at.button(key=[b.key for b in at.button if b.key and b.key.startswith("_run_")][0]).click().run()
    assert not at.exception
    assert float(metric(at, "L0")) > 0


def test_a_training_over_the_servers_ceiling_is_refused(monkeypatch):
    """Issue #14: a Train button started a run estimated at 85,949 s."""
    monkeypatch.setenv("REPLENS_MAX_JOB_S", "60")
    at = open_page(sae_steps=50000, sae_exp="32", sae_bs=4096, sae_match=False)
    message = " ".join(e.value for e in at.error)
    assert "over this server's limit" in message and "fewer steps" in message and "smaller expansion" in message
    assert not at.metric and not [b for b in at.button if b.key and b.key.startswith("_run_")]


def test_browsing_b_and_a_text_model_with_more_latents_than_inputs():
    at = open_page(sae_model="B", sae_match=False)
    assert at.subheader[0].value.startswith("B · ")
    at = open_page(sae_match=False, sae_layer_a="encoder.layer.2", a="hf:minilm", b="hf:minilm-random",
                   data="text", n=60)
    assert not at.exception and not at.error
    warnings = " ".join(w.value for w in at.warning)
    assert "384 latents for 60 inputs" in warnings  # the explained variance near 1 is called out
    assert any("background: rgba" in m.value for m in at.markdown)  # tokens shaded by activation


def test_the_sweep_fills_the_frontier():
    at = open_page(sae_match=False, sae_sweep=True)
    if [b for b in at.button if b.key and b.key.startswith("_run_")]:  # the estimate asked for the button
        at.button(key=[b.key for b in at.button if b.key.startswith("_run_")][0]).click().run()
    at.run()
    assert not at.exception
    frontier = [c for c in charts(at) if c["layout"]["title"]["text"].startswith("Sparsity vs reconstruction")][0]
    points = [x for t in frontier["data"] if t.get("name") == "TopK" for x in t["x"]]
    assert len(points) == 5  # k = 16 (on show) and the sweep's 4, 8, 32, 64


def test_values_beyond_the_sae_fall_back_with_a_note():
    at = open_page(sae_match=False, sae_feature=5000, sae_input=10_000)  # 128 latents, 500 inputs
    notes = " ".join(i.value for i in at.info).replace("\\", "")
    assert "Feature 5000 does not exist" in notes and "Input 10000 does not exist" in notes
    assert at.number_input(key="sae_feature").value is None and at.number_input(key="sae_input").value == 0
    at.number_input(key="sae_feature").set_value(7000).run()  # typed into the box, bound to the URL
    assert not at.exception, [e.value for e in at.exception]
    assert "Feature 7000 does not exist" in " ".join(i.value for i in at.info).replace("\\", "")
    assert at.number_input(key="sae_feature").value is None and at.metric


def test_switching_model_a_falls_back_to_its_middle_layer_with_a_note():
    at = open_page(sae_match=False, sae_layer_a="net.fc3")
    assert at.subheader[0].value.startswith("A · net.fc3")  # md() leaves dots alone
    at.selectbox(key="a").set_value("zoo:cnn-s0").run()
    assert not at.exception
    notes = " ".join(i.value for i in at.info).replace("\\", "")
    assert "'net.fc3' is not a layer of zoo:cnn-s0" in notes
    cnn = models.load("zoo:cnn-s0")
    middle = cnn.layers[len(cnn.layers) // 2]
    assert at.selectbox(key="sae_layer_a").value == middle
    assert at.subheader[0].value.replace("\\", "").startswith(f"A · {middle}") and at.metric  # never empty


def test_an_uploaded_saelens_sae_is_browsed_instead_of_training():
    from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec

    rng = np.random.default_rng(0)
    w = rng.normal(size=(300, 128)).astype(np.float32)
    sae = S.from_arrays({"W_enc": w.T.copy(), "W_dec": w, "b_enc": np.zeros(300, np.float32),
                         "b_dec": np.zeros(128, np.float32)}, "topk", k=5)
    at = open_page(sae_match=False)
    rec = UploadedFileRec(file_id="f1", name="sae.zip", type="application/zip", data=S.saelens_zip(sae))
    at.session_state["sae_upload_a"] = [UploadedFile(rec, None)]
    at.run()
    at.run()  # the upload put the SAE's id in the URL: the next run opens it
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("opened from SAELens files" in c.value for c in at.caption), [c.value for c in at.caption]
    assert "300 latents" in at.subheader[0].value and float(metric(at, "L0")) == pytest.approx(5, abs=0.01)
    file_id = at.query_params["sae_file_a"]
    assert len(file_id if isinstance(file_id, str) else file_id[-1]) == 64  # the id travels with the link


def test_the_page_and_the_cli_reach_the_same_compute(monkeypatch, tmp_path):
    from analysis.__main__ import main

    seen = counting(monkeypatch)
    at = open_page(sae_match=False)
    assert seen and all(s for s in seen)  # the page's jobs ran the view's sections through View.compute
    seen.clear()
    out = tmp_path / "cli"
    assert main(["sae", "--sae-steps", "100", "--sae-map", "pca", "--sae-match", "false", "--quiet",
                 "--store", str(tmp_path / "own-store"), "--out", str(out)]) == 0
    assert seen == [None]  # the CLI: the whole view, once, through the same View.compute
    cli = json.loads((out / "summary.json").read_text())["numbers"]
    assert metric(at, "L0") == f"{cli['A L0']:.1f}"
    assert metric(at, "Var. explained") == f"{cli['A variance explained']:.3f}"
    assert metric(at, "MSE") == f"{cli['A MSE']:.3g}"
    assert metric(at, "Loss recovered") == f"{cli['A loss recovered']:.3f}"
