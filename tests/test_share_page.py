"""AppTest: share links restore the view, short links expand, pins reach the Report page, reports
are saved to the gallery and reopen by link."""
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from streamlit.testing.v1 import AppTest

from analysis import spec as spec_mod
from analysis.spec import AnalysisSpec
from analysis.store import default_store

APP = str(Path(__file__).resolve().parent.parent / "app.py")
pytestmark = pytest.mark.usefixtures("apptest_navigation")


def open_url(path: str, query: dict | None = None) -> AppTest:
    """The app as a fresh browser session opening ``/<path>?<query>``."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page(f"pages/{path}.py")
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def share_links(at: AppTest) -> tuple[str, str]:
    codes = [c.value for c in at.code if c.value.startswith("http")]
    assert len(codes) == 2, codes
    return codes[0], codes[1]


def query_of(url: str, page: str) -> dict:
    lists = {p.key for p in spec_mod.params_of(page) if p.kind == "list"}
    q = parse_qs(urlsplit(url).query)
    return {k: v if k in lists else v[-1] for k, v in q.items()}


def test_full_link_carries_every_parameter_and_restores_the_view():
    view = {"method": "pca", "dims": "3", "n": "120", "seed": "4", "colour": "A correct", "proj_a": "net.fc2"}
    at = open_url("projections", view)
    full, short = share_links(at)
    assert urlsplit(full).path.endswith("/projections")
    q = query_of(full, "projections")
    declared = {p.key for p in spec_mod.params_of("projections")}
    optional = {"coords", "path_layer"}  # set only by an upload and by the walk's slider
    assert set(q) == declared - optional  # defaults and the page's own choices (proj_b = last layer) included
    assert q["proj_b"] == "net.logits" and q["umap_k"] == "15" and q["dims"] == "3"

    again = open_url("projections", q)  # a colleague opens the link
    for key in ("dims", "colour", "proj_a", "proj_b", "method"):
        assert str(again.selectbox(key=key).value) == q[key]
    assert again.number_input(key="seed").value == 4
    assert share_links(again)[0] == full  # the same view gives the same link


def test_short_link_expands_to_the_saved_view():
    spec = AnalysisSpec("projections", {"dims": 3, "n": 150, "colour": "label", "proj_a": "net.fc1"})
    sid = spec.save(default_store())
    at = open_url("projections", {"a": sid})
    assert at.selectbox(key="dims").value == 3
    assert at.selectbox(key="proj_a").value == "net.fc1"
    assert at.number_input(key="n").value == 150
    assert at.selectbox(key="a").value == "zoo:mlp-s0"  # the spec id is not taken for a model


def test_unknown_short_link_says_so_and_shows_the_default_view():
    at = open_url("models", {"a": "0123456789abcdef"})
    assert any("not stored on this server" in w.value for w in at.warning)
    assert at.selectbox(key="a").value == "zoo:mlp-s0"


def test_pins_reach_the_report_which_saves_reorders_and_reopens():
    at = open_url("projections", {"n": "100"})
    pins = [b for b in at.button if (b.key or "").startswith("_pin_")]
    assert [b.key for b in pins][:2] == ["_pin_view_a", "_pin_view_b"]
    pins[0].click().run()
    [b for b in at.button if b.key == "_pin_view_b"][0].click().run()
    items = at.session_state["_report_items"]
    assert [i["title"].split(" · ")[0] for i in items] == ["A", "B"]
    assert items[0]["spec"]["page"] == "projections" and items[0]["spec"]["params"]["n"] == 100
    assert items[0]["provenance"]["model_a"]["sha256"] and items[0]["provenance"]["data"]["rows"] == 100

    at.switch_page("pages/report.py").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2
    first = items[0]["id"]
    at.text_input(key=f"_cap_{first}").set_value("A's logits").run()
    at.button(key=f"_down_{first}").click().run()
    assert [i["caption"] for i in at.session_state["_report_items"]][1] == "A's logits"
    at.text_input(key="_report_title").set_value("Lab meeting").run()
    at.button(key="_save_report").click().run()
    rid = at.session_state["_report_id"]
    saved = default_store().get_doc("report", rid)
    assert saved["title"] == "Lab meeting" and len(saved["items"]) == 2
    assert [r["name"] for r in default_store().docs("report", "lab")] == ["Lab meeting"]

    fresh = open_url("report", {"report": rid})  # another browser opens the saved report's link
    assert fresh.session_state["_report_items"][1]["caption"] == "A's logits"
    assert len(fresh.get("plotly_chart")) == 2
    fresh.button(key=f"_rm_{first}").click().run()
    assert len(fresh.get("plotly_chart")) == 1


def test_a_link_to_a_missing_upload_says_so_and_offers_the_upload():
    at = open_url("similarity", {"b": "upload:0123456789abcdef", "measure": "rbf_cka"})
    assert any("does not have" in i.value and "model B" in i.value for i in at.info)
    assert at.radio(key="upload_target").value == "Model B"  # the upload goes where the link wants it
    assert at.selectbox(key="b").value == "zoo:mlp-s1"  # meanwhile the default model, not a crash
    assert at.selectbox(key="measure").value == "rbf_cka"  # the rest of the view is kept
