"""The Functional maps view (analysis/views/functional_maps.py): the numbers of the pre-refactor
default view (golden), one compute for the page and the CLI, estimates that refuse or wait at the
largest settings, and captions that say why the stitching translators behave as they do."""
import json
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from analysis import jobs, views
from analysis.errors import UserInputError
from analysis.figures import functional_maps as figs
from analysis.spec import AnalysisSpec
from analysis.views import functional_maps as fm

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "functional-maps"
APP = str(ROOT / "app.py")
RENAMED = {"stitching upper bound": "stitching: B's layer through B's head (no stitch)",
           "stitching lower bound": "stitching: A's layer untranslated into B's head"}


def test_default_view_gives_the_numbers_of_the_page_before_it_moved():
    spec = AnalysisSpec("functional-maps", {})
    result = views.run(spec)
    tables = figs.all_tables(result)
    for name in ("stitching", "retrieval", "robustness"):
        golden = pd.read_csv(GOLDEN / f"{name}.csv")
        for column in golden.columns:
            np.testing.assert_allclose(tables[name][column].to_numpy(dtype=float), golden[column].to_numpy(),
                                       rtol=0, atol=1e-10, err_msg=f"{name}: {column}")
    spectra = pd.read_csv(GOLDEN / "spectra.csv")
    np.testing.assert_allclose(result.fit.lam_a, spectra["A"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.fit.lam_b, spectra["B"], rtol=0, atol=1e-10)
    numbers = fm.summary(result)
    for name, value in json.loads((GOLDEN / "summary.json").read_text())["numbers"].items():
        got = numbers[RENAMED.get(name, name)]
        assert got == value if isinstance(value, str) else got == pytest.approx(value, abs=1e-10), name
    assert result.fit.layer_a == result.fit.layer_b == "net.relu3" and result.robustness.class_name == "0"


@pytest.mark.usefixtures("apptest_navigation")
def test_the_cli_and_the_page_reach_the_same_compute(tmp_path):
    from analysis.__main__ import main
    from analysis.store import default_store

    args = ["functional-maps", "--n", "120", "--fm-anchors", "12", "--fm-select", "farthest-point",
            "--fm-eigs", "30", "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())["numbers"]
    cli_stitching = pd.read_csv(tmp_path / "stitching.csv")
    store = default_store()
    keys = set(store.keys())
    link = (tmp_path / "link.txt").read_text().strip()
    query = parse_qs(link.split("?", 1)[1])
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("pages/report.py")
    for step in ("sidebar", "page"):
        for k, v in query.items():
            at.query_params[k] = v if k == "fm_descr" else v[-1]
        at.run()
        if step == "sidebar":
            at.switch_page("pages/functional_maps.py")
    assert not at.exception, [e.value for e in at.exception]
    metric = {m.label: m.value for m in at.metric}
    assert metric["LFM similarity"] == f"{summary['LFM similarity']:.3f}"
    assert metric["Same sample"] == f"{summary['same sample']:.3f}"
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    stitch = next(c for c in charts if c["layout"]["title"]["text"].startswith("Zero-shot stitching"))
    ortho = next(t for t in stitch["data"] if t["name"] == "ortho")
    from tests.test_similarity_page import array

    np.testing.assert_allclose(array(ortho["y"]), cli_stitching["ortho"], rtol=0, atol=1e-12)
    assert set(store.keys()) == keys, [store.meta(k) for k in set(store.keys()) - keys]  # read, not computed


def test_only_the_view_orchestrates():
    """No second path: the CLI has no runner of its own for this page, the page imports no numerics
    and caches nothing itself, and the library keeps no page constants or cache wrappers."""
    import ast

    import importlib.util

    from analysis import fmaps, stitching, translation

    assert importlib.util.find_spec("analysis.runners") is None  # the CLI's second copy is gone
    tree = ast.parse((ROOT / "pages" / "functional_maps.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert {m for m in imported if m.startswith("analysis")} == {"analysis.errors", "analysis.figures", "analysis.views",
                                                               "analysis.safe_text"}
    assert "numpy" not in imported and "cache_data" not in ast.unparse(tree)
    for module, names in ((fmaps, ("cached", "is_cached", "default_layer", "ROBUST_ALPHAS")),
                          (stitching, ("STITCH_COUNTS",)), (translation, ("RETRIEVAL_COUNTS",))):
        assert not [n for n in names if hasattr(module, n)], module.__name__


@pytest.fixture
def largest():
    """Every parameter at the top of its range, on 20,000 samples."""
    return AnalysisSpec("functional-maps", {"data": "digits_noisy", "n": 20000, "fm_anchors": 5000, "fm_k": 1000,
                                            "fm_eigs": 200, "fm_descr": ["geodesic", "labels", "hks"]})


def test_largest_settings_are_refused_or_wait_for_a_button(largest):
    """Issue #14: this view used to start at once, with no estimate, and ran for over 21 minutes."""
    from pages._jobs import AUTO_RUN_S

    view = views.get("functional-maps")
    plan = view.plan(largest)
    assert plan.sections == ["fit", "stitching", "retrieval", "robustness"]
    limits = jobs.Limits(max_seconds=jobs.max_job_seconds(), memory_bytes=16 * 2 ** 30)
    for name, cost in plan.parts:
        assert cost.seconds > AUTO_RUN_S, name  # at least a button, with its estimate
    refused = []
    # robustness (five ground-truth maps, no descriptors) stays under the ceiling since the scalable
    # path's approximate kNN and float32 eigen-solve: it waits for its button (checked above)
    for name in ("fit", "retrieval"):
        task = view.plan(largest, [name]).task
        with pytest.raises(UserInputError) as err:
            limits.check(task)
        refused.append(str(err.value))
    assert all("over this server" in m or "of memory" in m for m in refused)
    assert "Use fewer samples, neighbours or eigenvectors" in refused[0]
    fit = dict(plan.parts)["fit"]
    assert fit.seconds > 3600 and fit.bytes > 8 * 2 ** 30  # 5,000 geodesic descriptors of K = 200


def test_estimates_grow_with_what_makes_the_fit_expensive():
    from analysis import fmaps_cost as cost

    base = dict(n=2000, d_a=128, d_b=128, k=None, n_eigs=50, n_anchors=10, n_classes=10,
                descriptors=("geodesic",), refine=True)
    t0 = cost.fit_cost(**base)
    for change in ({"n": 8000}, {"n_eigs": 150}, {"n_anchors": 400}, {"k": 800}, {"descriptors": ("geodesic", "hks")}):
        assert cost.fit_cost(**{**base, **change}).seconds > t0.seconds, change
    assert cost.fit_cost(**{**base, "n_anchors": 400}).bytes > t0.bytes
    assert cost.fit_cost(**{**base, "descriptors": ()}).seconds < t0.seconds  # the ground-truth map solves nothing
    r = cost.retrieval_cost(2000, 128, 128, None, 50, [3, 5, 10], 10, ("geodesic",), True)
    assert r.bytes >= 24 * 2000 ** 2  # every sample ranked against every other


def test_resolve_caps_what_cannot_work_with_a_note():
    view = views.get("functional-maps")
    spec = AnalysisSpec("functional-maps", {"n": 100, "fm_anchors": 80, "fm_k": 500})
    fixed, notes = view.resolve(spec)
    assert fixed.params["fm_anchors"] == 50 and fixed.params["fm_k"] == 0
    assert any("more than half of the 100 samples: using 50" in n for n in notes)
    assert any("500 neighbours is not below the 100 samples" in n for n in notes)
    forged = AnalysisSpec("functional-maps", {"n": 100, "fm_descr": ["geodesic", "nope"], "fm_layer_a": "no.layer"})
    fixed, notes = view.resolve(forged)
    assert fixed.params["fm_descr"] == ["geodesic"] and fixed.params["fm_layer_a"] is None
    assert len(notes) == 2


def test_too_few_samples_is_a_message_before_anything_runs():
    view = views.get("functional-maps")
    with pytest.raises(UserInputError, match="at least 20 samples"):
        view.plan(AnalysisSpec("functional-maps", {"n": 10}))


def test_class_codes_follow_the_names_not_their_positions():
    """Without label names the classes are the label values: class '5' is the rows labelled 5, also
    when the labels skip values (the old page moved the class at that position in the list)."""
    class Data:
        label_names = None
        labels = np.array([1, 5, 5, 9])

    assert fm.class_code(Data, "5") == (5, "5") and fm.class_code(Data, None) == (1, "1")


# ------------------------------------------------------------------ the stitching captions (issue #20)
def _stitching(**changes):
    base = dict(layer_a="net.relu3", layer_b="net.relu3", anchors=np.array([3., 5, 10, 20, 50, 100, 200]),
                accuracy={"ortho": np.array([.3, .5, .96, .96, .96, .96, .96]),
                          "linear": np.array([.3, .4, .95, .96, .96, .83, .97]),
                          "l-ortho": np.array([.38, .54, .93, .95, .82, .18, .30]),
                          "affine": np.array([.3, .4, .95, .96, .96, .83, .97])},
                upper=0.972, lower=0.148, head="model", width_a=128, width_b=128, active_a=103,
                condition=np.array([3., 6, 15, 62, 293, 7580, 707]))
    return fm.Result(stitching=fm.Stitching(**{**base, **changes}))


def test_stitching_captions_explain_the_l_ortho_collapse_with_the_numbers():
    text = " ".join(figs.stitching_captions(_stitching()))
    assert "103 of 128" in text and "from 3.0 at 3 anchors to 7,580 at 100" in text
    assert "falls to 0.180 at 100 anchors" in text
    assert "It is not a ceiling" in text and "Here the stitch reaches" not in text
    fig = figs.stitching(_stitching(), {"a": "zoo:mlp-s0", "b": "zoo:mlp-s1"})
    units = [t for t in fig.data if t.name == "anchors = A's active units (103)"]
    assert units and list(units[0].x) == [103, 103]  # inside the chart's range: drawn


def test_a_dip_the_chart_never_reaches_is_not_mentioned():
    """Issue #20: "the dip near that count" at a count the chart never reaches (384-wide MiniLM)."""
    s = _stitching(active_a=384, width_a=384, anchors=np.array([3., 5, 10, 20, 50, 100]),
                   accuracy={m: np.linspace(0.1, 0.9, 6) for m in ("ortho", "linear", "l-ortho", "affine")},
                   condition=np.linspace(2, 50, 6), upper=0.2, lower=0.167, head="probe")
    text = " ".join(figs.stitching_captions(s))
    assert "below the 384 active units" in text and "dip" not in text
    assert "Here the stitch reaches 0.900" in text  # and why it can beat B's own layer
    fig = figs.stitching(s, {"a": "hf:minilm", "b": "hf:minilm-random"})
    assert not [t for t in fig.data if t.name.startswith("anchors = A's active units")]
    names = [t.name for t in fig.data]
    assert "B's layer → B's head (no stitch): 0.200" in names and "A's layer → B's head, untranslated: 0.167" in names
    assert fig.layout.title.text == "Zero-shot stitching: A hf:minilm · net.relu3 → B hf:minilm-random · net.relu3"
