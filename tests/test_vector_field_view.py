"""The Vector field view (analysis.views.vector_field): its default numbers against the values the
pre-refactor CLI wrote (tests/golden/vector-field), the choice of autoencoder from the sidebar, the
reference-set rule, the sections' store keys, and the CLI reaching the same compute as the page."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import views
from analysis.errors import UserInputError
from analysis.figures import vector_field as figs
from analysis.spec import AnalysisSpec
from analysis.views import vector_field as V

GOLDEN = Path(__file__).resolve().parent / "golden" / "vector-field"
SMALL = {"vf_starts": 40, "vf_noise": 20, "vf_steps": 200, "vf_ood_n": 40, "vf_grid": 20}


def spec(**params) -> AnalysisSpec:
    return AnalysisSpec("vector-field", params)


@pytest.fixture(scope="module")
def default_result(tmp_path_factory):
    """The default view, computed once in a store of its own."""
    from analysis.store import Store

    store = Store(tmp_path_factory.mktemp("vf-golden-store"))
    return views.run(spec(), store=store)


# ------------------------------------------------------------------ golden values
def test_the_default_view_gives_the_numbers_the_old_cli_wrote(default_result):
    """Recorded by `python -m analysis vector-field` before the refactor (x86-64, torch 2.13 CPU, one
    thread: the iteration runs in float32, so another CPU may differ in the last bits)."""
    golden = json.loads((GOLDEN / "summary.json").read_text())
    numbers = V.summary(default_result)
    for key, value in golden["numbers"].items():
        if key == "which OOD score wins":  # now plain text (no markdown emphasis): an uploaded set's name is in it
            value = value.replace("*", "")
        if isinstance(value, float):
            assert numbers[key] == pytest.approx(value, rel=1e-10, abs=1e-10), key
        else:
            assert numbers[key] == value, key
    assert numbers["autoencoder"] == golden["provenance"]["autoencoder"]["ref"]
    tables = figs.all_tables(default_result)
    for name in ("ood", "attractors"):
        old = pd.read_csv(GOLDEN / f"{name}.csv")
        new = tables[name][list(old.columns)]
        for col in old.columns:
            if pd.api.types.is_numeric_dtype(old[col]):
                np.testing.assert_allclose(new[col].to_numpy(float), old[col].to_numpy(float), rtol=1e-10, atol=1e-10)
            else:
                assert new[col].astype(str).tolist() == old[col].astype(str).tolist()


def test_the_old_link_still_opens_the_same_view():
    """Share links written before the refactor keep every key."""
    query = (GOLDEN / "link.txt").read_text().split("?", 1)[1].strip()
    from urllib.parse import parse_qs

    parsed = {k: (v if k == "vf_samples" else v[-1]) for k, v in parse_qs(query).items()}
    old, problems = AnalysisSpec.from_query("vector-field", parsed)
    assert problems == []
    assert old.params["vf_grid"] == 30 and old.params["vf_samples"] == ["0", "1", "2"]


def test_every_figure_says_what_it_shows_and_which_model(default_result):
    out = figs.all_figures(default_result, spec(), None)
    assert {"vf_field_fig", "vf_convergence_fig", "vf_memorization_fig", "vf_ood_fig", "vf_probe_fig"} <= set(out)
    for name, fig in out.items():
        title = fig.layout.title.text
        assert title and "zoo:mlp-ae-b2" in title, name


# ------------------------------------------------------------------ which autoencoder
@pytest.mark.parametrize("a, b, asked, expected, note", [
    ("zoo:mlp-ae-b8", "zoo:mlp-s1", None, "zoo:mlp-ae-b8", ""),
    ("zoo:mlp-s0", "zoo:conv-ae-b2", None, "zoo:conv-ae-b2", ""),
    ("zoo:mlp-ae-b8", "zoo:conv-ae-b2", "zoo:conv-ae-b2", "zoo:conv-ae-b2", ""),  # B, asked for
    ("zoo:mlp-ae-b8", "zoo:mlp-s1", "zoo:mlp-ae-b2", "zoo:mlp-ae-b8", "instead of zoo:mlp-ae-b2"),  # issue 15
    ("zoo:mlp-s0", "zoo:mlp-s1", None, V.FALLBACK_MODEL, "are not autoencoders"),
    ("zoo:mlp-s0", "hf:minilm", "zoo:mlp-ae-memorize", "zoo:mlp-ae-memorize", "are not autoencoders"),
    ("zoo:mlp-s0", "zoo:mlp-s1", "zoo:mlp-s0", V.FALLBACK_MODEL, "is not a zoo autoencoder"),
])
def test_the_autoencoder_follows_the_sidebar(a, b, asked, expected, note):
    c = V.choose({"a": a, "b": b, "vf_model": asked})
    assert c.ref == expected and expected in c.options
    assert (note in c.note) if note else c.note == ""


def test_resolve_writes_the_autoencoder_into_the_spec_with_a_note():
    view = views.get("vector-field")
    fixed, notes = view.resolve(spec(a="zoo:mlp-ae-b8", vf_model="zoo:mlp-ae-b2"))
    assert fixed.params["vf_model"] == "zoo:mlp-ae-b8"
    assert len(notes) == 1 and "instead of zoo:mlp-ae-b2" in notes[0]
    same, notes = view.resolve(fixed)
    assert same == fixed and notes == []  # the resolved spec is stable: the address reproduces it
    fallback, notes = view.resolve(spec())
    assert fallback.params["vf_model"] == V.FALLBACK_MODEL and "are not autoencoders" in notes[0]


def test_resolve_drops_trajectory_rows_and_uploads_that_do_not_exist():
    view = views.get("vector-field")
    fixed, notes = view.resolve(spec(vf_samples=["3", "5000", "7"], vf_ood_set="upload:00000000000000aa"))
    assert fixed.params["vf_samples"] == ["3", "7"]
    assert fixed.params["vf_ood_set"] is None
    assert any("rows 0 to 596" in n for n in notes) and any("not on this server" in n for n in notes)


# ------------------------------------------------------------------ the reference set
def test_zoo_autoencoders_use_the_zoo_split_and_others_the_first_half_of_the_data():
    from analysis import models
    from tests.test_vector_field import ScriptedAE

    view = views.get("vector-field")
    ref = V.reference(view.context(spec()))
    assert (len(ref.train), len(ref.test)) == (1200, 597) and ref.train.split == "train"
    import io

    import torch

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(ScriptedAE()), buf)
    upload = models.upload(buf.getvalue(), "ae.pt")
    ctx = view.context(spec(a=upload, n=101))
    ref = V.reference(ctx)
    assert (len(ref.train), len(ref.test)) == (50, 51)
    np.testing.assert_array_equal(np.concatenate([ref.train.indices, ref.test.indices]), ctx.ds.indices)
    assert "first 50 rows" in ref.about


# ------------------------------------------------------------------ sections and their store keys
def test_each_section_is_keyed_by_what_it_depends_on():
    view = views.get("vector-field")
    base = view.context(spec(**SMALL))
    keys = lambda ctx: {s.name: ctx.key(s) for s in view.sections}
    k0 = keys(base)
    # drawing options and the section shown change no stored value
    assert keys(view.context(spec(**SMALL, vf_bg="basins", vf_view="ood"))) == k0
    # the grid changes only the field; the samples only the paths; the OOD size only the OOD scores
    for change, only in (({"vf_grid": 30}, {"field"}), ({"vf_samples": ["4"]}, {"paths"}),
                         ({"vf_ood_n": 60}, {"ood"}), ({"vf_atoms": 3}, {"probing"})):
        k = keys(view.context(spec(**{**SMALL, **change})))
        assert {n for n in k if k[n] != k0[n]} == only, change
    # the autoencoder enters by its content, not by how it was named: None (the CLI) = resolved (the page)
    named = keys(view.context(spec(**SMALL, vf_model=V.FALLBACK_MODEL)))
    assert named == k0
    other = keys(view.context(spec(**SMALL, vf_model="zoo:mlp-ae-b8")))
    assert other["dynamics"] != k0["dynamics"]
    # the bottleneck panel follows the analysed autoencoder's family; the checkpoints do not
    conv = keys(view.context(spec(**SMALL, vf_model="zoo:conv-ae-b2")))
    assert conv["regimes_bottleneck"] != k0["regimes_bottleneck"] and conv["regimes_epochs"] == k0["regimes_epochs"]


def test_the_regimes_are_computed_only_when_shown():
    view = views.get("vector-field")
    wanted = lambda s: [x.name for x in view.sections if view.context(s).wanted(x)]
    assert "regimes_bottleneck" not in wanted(spec())
    assert {"regimes_bottleneck", "regimes_epochs"} <= set(wanted(spec(vf_view="regimes")))


def test_estimates_name_the_work_and_memory_of_each_section():
    """Estimates are measured on the model (no timing asserted here): they are positive, grow with the
    work asked for, and the trajectory score's memory is the size of its distance tensor."""
    view = views.get("vector-field")
    small, big = view.context(spec(**SMALL)), view.context(spec(**{**SMALL, "vf_starts": 400, "vf_noise": 400}))
    d_small = view.section("dynamics").estimate(small)
    d_big = view.section("dynamics").estimate(big)
    assert 0 < d_small.seconds < d_big.seconds
    grid = lambda m: view.section("field").estimate(view.context(spec(**{**SMALL, "vf_grid": m}))).seconds
    assert grid(20) < grid(40)
    ood = view.section("ood").estimate(small)
    from analysis.vector_field import cost as C

    step, pilot = V._measured(small, V.autoencoder(small), V._x(V.reference(small).train))
    calls = C.calls(pilot, SMALL["vf_steps"], C.OOD_TAIL)
    assert ood.bytes == 2 * 8 * (calls + 1) * 40 * (SMALL["vf_starts"] // 10) * step.latent_dim


# ------------------------------------------------------------------ one path: the CLI and the page
def test_the_cli_reaches_the_same_compute_as_the_page(tmp_path):
    """The CLI's numbers are the view's: the CLI goes through analysis.views (no second orchestration),
    and the values it stores are the ones the page reads."""
    from analysis.__main__ import main
    from analysis.store import default_store

    assert __import__("importlib.util").util.find_spec("analysis.runners") is None  # the old copy is gone
    view = views.get("vector-field")
    args = ["vector-field", "--vf-starts", "40", "--vf-noise", "20", "--vf-steps", "200", "--vf-ood-n", "40",
            "--vf-grid", "20", "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    written = json.loads((tmp_path / "summary.json").read_text())["numbers"]
    page_spec, _ = view.resolve(spec(**SMALL))  # what the page computes: the resolved spec
    result, missing = view.peek(page_spec, ["dynamics", "field", "paths", "ood", "probing"], store=default_store())
    assert missing == []  # the page finds every section the CLI computed
    numbers = V.summary(result)
    for key in ("memorization coefficient", "memorization null", "largest spectral radius",
                "attractors (training, held-out, noise starts)", "which OOD score wins"):
        assert written[key] == numbers[key], key
    ood = pd.read_csv(tmp_path / "ood.csv")
    np.testing.assert_array_equal(ood["AUROC"].to_numpy(), result.ood.result.table["AUROC"].to_numpy())
