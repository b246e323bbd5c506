"""AppTest tests of the Merge & stitch page (its browser test is test_browser_merge.py)."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis import data, models
from analysis.merging import align, interpolate
from analysis.spec import AnalysisSpec

APP = str(Path(__file__).resolve().parent.parent / "app.py")
pytestmark = pytest.mark.usefixtures("apptest_navigation")


def open_page(**widgets) -> AppTest:
    """The page with sidebar and page widgets (by key) set as a user would."""
    at = AppTest.from_file(APP, default_timeout=600)
    at.run()
    at.switch_page("pages/merge.py").run()
    for key, value in widgets.items():
        _widget(at, key).set_value(value)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _widget(at, key):
    for kind in ("selectbox", "number_input", "toggle", "radio", "slider", "select_slider"):
        try:
            return getattr(at, kind)(key=key)
        except KeyError:
            continue
    raise KeyError(key)


def compute_all(at, until=None) -> AppTest:
    """Click the page's Compute buttons (long sections wait for one) from the top, until ``until(at)``."""
    for _ in range(8):
        buttons = [b for b in at.button if b.label == "Compute"]
        if not buttons or (until is not None and until(at)):
            break
        buttons[0].click().run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def merged(at) -> bool:
    return any("merge:" in s for s in texts(at.success))


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def texts(elements) -> list[str]:
    return [e.value.replace("\\", "") for e in elements]  # the page escapes markdown in messages


def test_default_view_aligns_interpolates_and_merges():
    at = compute_all(open_page(), until=merged)
    ds = data.load("digits", n=500)
    a, b = models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1")
    before = interpolate(a, b, ds, steps=11).barrier
    after = interpolate(a, align(a, b, ds, "activations"), ds, steps=11).barrier
    assert metric(at, "Barrier, B as it is") == f"{before:.3f}"  # 1.335
    assert metric(at, "Barrier, B aligned") == f"{after:.3f}"  # 0.065
    assert any("merge:" in s and "every page opens it" in s for s in texts(at.success))
    assert at.get("plotly_chart") and not at.error
    # the CLI computes the same view: the same numbers
    from analysis.views.outputs import headless

    numbers = headless(AnalysisSpec("merge", {})).numbers
    assert f"{numbers['barrier after alignment']:.3f}" == metric(at, "Barrier, B aligned")
    assert numbers["merged model"] in " ".join(texts(at.success))


def test_block_swaps_and_the_crosscoder_after_their_buttons():
    at = compute_all(open_page(mg_xc_steps=200))
    charts = at.get("plotly_chart")
    assert len(charts) >= 5  # interpolation, swap map, swap positions, ratio histogram, training
    assert int(metric(at, "Shared latents")) > 0
    assert any(m.value.startswith("**Latent") for m in at.markdown)
    assert len(at.get("image")) == 2  # both models' examples of the latent
    assert not at.error


def test_refusals_say_what_the_architectures_do_not_allow():
    at = open_page(b="zoo:mlp-wide")
    warnings = " ".join(texts(at.warning))
    assert "same architecture" in warnings and "net.fc1 256" in warnings
    assert not any("Barrier" in m.label for m in at.metric)
    _widget(at, "mg_bridge").set_value("none")
    at.run()
    assert "widths must agree" in " ".join(texts(at.warning))
    assert not at.exception


def test_a_layer_of_the_previous_model_falls_back_with_a_note():
    at = open_page(mg_layer_a="net.fc3")
    _widget(at, "a").set_value("zoo:cnn-s0")
    at.run()
    assert not at.exception
    notes = " ".join(texts(at.info))
    assert "net.fc3" in notes and "not a layer of zoo:cnn-s0" in notes
    assert at.selectbox(key="mg_layer_a").value == "net.gap"  # the default: the penultimate layer of A
    assert "same architecture" in " ".join(texts(at.warning))  # a CNN and an MLP: no permutation


def test_the_merged_model_opens_on_the_similarity_page():
    at = compute_all(open_page(mg_steps=5), until=merged)
    at.button(key="mg_use_merge").click().run()
    ref = at.selectbox(key="b").value
    assert ref.startswith("merge:")
    at.switch_page("pages/similarity.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.get("plotly_chart") and not at.error
    assert any(ref in c.value.replace("\\", "") for c in at.caption)


def test_text_encoders_permute_mlp_blocks_but_have_no_interpolation_loss():
    at = open_page(a="hf:minilm", b="hf:minilm-random", data="text", n=40)
    compute_all(at)
    assert "without a task loss" in " ".join(texts(at.warning))
    assert any("max difference" in c.value for c in at.caption)  # the alignment ran: 6 MLP blocks of 1536 units
    assert not at.exception and not at.error
