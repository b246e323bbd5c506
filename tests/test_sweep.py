"""Sweeps and the Training dynamics view, in this process (the Ray runs are in test_cluster.py):
cells are Similarity view specs cached like any view, the view's numbers are those cells', known
answers (a model against itself, a symmetric seeds matrix, TopK's L0), the page and the CLI."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from analysis import sweep, views
from analysis import similarity as sim
from analysis.__main__ import main
from analysis.activations import extract
from analysis.errors import UserInputError
from analysis.spec import AnalysisSpec
from analysis.store import default_store
from analysis.views.inputs import load_dataset, load_model

APP = str(Path(__file__).resolve().parent.parent / "app.py")
N = 60
DATA = {"n": N}
LAYERS = ["net.fc1", "net.relu2"]


def test_pairs_of_a_grid():
    m = ["x", "y", "z"]
    assert sweep.pairs(m, "all") == [("x", "y"), ("x", "z"), ("y", "z")]
    assert sweep.pairs(m, "consecutive") == [("x", "y"), ("y", "z")]
    assert sweep.pairs(m, "to-last") == [("x", "z"), ("y", "z"), ("z", "z")]
    assert sweep.pairs(["x", "x"], "all") == [("x", "x")]  # one model: against itself
    with pytest.raises(UserInputError, match="consecutive"):
        sweep.pairs(m, "every")


def test_a_similarity_sweep_is_cached_cell_by_cell_and_equals_the_measure():
    cells = sweep.similarity_cells(sweep.pairs(["zoo:mlp-s0", "zoo:mlp-s1", "zoo:mlp-s2"], "all"),
                                   ["linear_cka", "procrustes"], LAYERS, LAYERS, **DATA)
    assert len(cells) == 6
    first = sweep.run(cells)
    assert (first.computed, first.cached) == (6, 0)
    again = sweep.run(cells)
    assert (again.computed, again.cached) == (0, 6)  # every cell is in the store
    table = sweep.table(cells)
    assert len(table) == 6 * len(LAYERS) ** 2 and set(table["measure"]) == {"linear_cka", "procrustes"}
    # A cell is the Similarity view's own section: the page opens it without computing.
    view = views.get("similarity")
    assert view.peek(cells[0].spec, ["matrices"])[1] == []
    # ... and its numbers are the measure's on the layers' activations.
    ds = load_dataset("digits", N, 0, "test")
    xa = extract(load_model("zoo:mlp-s0"), ds, ["net.relu2"])["net.relu2"]
    xb = extract(load_model("zoo:mlp-s2"), ds, ["net.relu2"])["net.relu2"]
    row = table[(table.a == "zoo:mlp-s0") & (table.b == "zoo:mlp-s2") & (table.measure == "linear_cka")
                & (table.layer_a == "net.relu2") & (table.layer_b == "net.relu2")]
    assert row["value"].item() == pytest.approx(sim.linear_cka(xa, xb), abs=1e-10)


def test_an_sae_sweep_trains_one_sae_per_k_and_expansion():
    cells = sweep.sae_cells("zoo:mlp-s0", "net.relu2", [2, 8], [1, 2], ("digits", N, 0, "test"), steps=60,
                            batch_size=32)
    assert len(cells) == 4
    assert sweep.run(cells).computed == 4 and sweep.run(cells).computed == 0
    table = sweep.table(cells)
    assert sorted(zip(table["k"], table["expansion"])) == [(2, 1), (2, 2), (8, 1), (8, 2)]
    assert (table["l0"] <= table["k"] + 1e-9).all()  # TopK: at most k latents active per input
    assert ((table["fve"] > -1) & (table["fve"] <= 1)).all()
    # The SAE page reads the same entry (analysis.sae.trained_sae's key).
    from analysis import sae

    got = sae.trained_sae(load_model("zoo:mlp-s0"), load_dataset("digits", N, 0, "test"), "net.relu2",
                          only_cached=True, **dict(cells[0].params))
    assert got is not None and got.cached


# ------------------------------------------------------------------ the Training dynamics view
def dynamics_spec(**params) -> AnalysisSpec:
    return AnalysisSpec("training-dynamics", {**DATA, **params})


def test_checkpoints_are_ordered_by_training_step_and_the_final_model_closes_the_series():
    from analysis.views import sweep as view_mod

    assert view_mod.step("hf:org/pythia@step1000") == 1000 and view_mod.step("hf:org/pythia@main") is None
    assert view_mod.step("zoo:mlp-ae-b8-ep5") == 5
    view = views.get("training-dynamics")
    ctx = view.context(dynamics_spec(checkpoints=["zoo:mlp-ae-b8-ep20", "zoo:mlp-ae-b8-ep1", "zoo:mlp-ae-b8"]))
    assert view_mod.series(ctx) == ["zoo:mlp-ae-b8-ep1", "zoo:mlp-ae-b8-ep20", "zoo:mlp-ae-b8"]
    assert view_mod.label("hf:org/pythia@step1000") == "step1000" and view_mod.label("zoo:mlp-ae-b8-ep1") == "epoch 1"


def test_training_dynamics_are_the_similarity_views_cells():
    spec = dynamics_spec(checkpoints=["zoo:mlp-ae-b8-ep0", "zoo:mlp-ae-b8-ep5"],
                         layers=["encoder.fc1", "encoder.bottleneck"], seed_layer="net.fc2")
    result = views.run(spec)
    d = result.dynamics.values
    assert list(d.columns) == ["epoch 0", "epoch 5", "epoch 150"] and list(d.index) == ["encoder.fc1", "encoder.bottleneck"]
    np.testing.assert_allclose(d["epoch 150"], 1.0, atol=1e-10)  # the final model against itself
    assert ((d.to_numpy() > 0) & (d.to_numpy() <= 1 + 1e-12)).all()
    # Each value is the diagonal of the Similarity view's map for (checkpoint, final).
    cell = AnalysisSpec("similarity", {**DATA, "a": "zoo:mlp-ae-b8-ep5", "b": "zoo:mlp-ae-b8",
                                       "layers_a": ["encoder.fc1", "encoder.bottleneck"],
                                       "layers_b": ["encoder.fc1", "encoder.bottleneck"]})
    ab = views.run(cell, sections=["matrices"]).matrices.ab
    assert d.loc["encoder.bottleneck", "epoch 5"] == ab.loc["encoder.bottleneck", "encoder.bottleneck"]
    s = result.seeds.values
    assert list(s.index) == ["zoo:mlp-s0", "zoo:mlp-s1", "zoo:mlp-s2"] and result.seeds.layer == "net.fc2"
    np.testing.assert_allclose(s.to_numpy(), s.to_numpy().T, atol=0)
    np.testing.assert_allclose(np.diag(s.to_numpy()), 1.0, atol=1e-10)
    assert 0.5 < s.loc["zoo:mlp-s0", "zoo:mlp-s1"] < 1.0  # trained seeds agree, not perfectly
    # Figures and tables for the CLI and the report.
    from analysis.figures import sweep as figs

    ctx = views.get("training-dynamics").context(spec)
    assert set(figs.all_figures(result, spec, ctx)) == {"dynamics_heatmap", "dynamics_lines", "seeds_matrix"}
    assert set(figs.all_tables(result)) == {"dynamics", "seeds"}


def test_every_layer_asked_by_name_or_by_default_is_one_cached_computation():
    view = views.get("training-dynamics")
    final_layers = load_model("zoo:mlp-ae-b8").layers
    by_default = view.context(dynamics_spec())
    by_name = view.context(dynamics_spec(layers=list(final_layers), seed_layer="net.relu2"))  # as the page's widgets
    for name in ("dynamics", "seeds"):
        assert by_default.key(view.section(name)) == by_name.key(view.section(name))
    other = view.context(dynamics_spec(layers=list(final_layers[:2])))
    assert other.key(view.section("dynamics")) != by_default.key(view.section("dynamics"))


def test_layers_that_the_models_lack_fall_back_with_a_note():
    view = views.get("training-dynamics")
    spec, notes = view.resolve(dynamics_spec(layers=["net.fc1"], seed_layer="encoder.fc1"))
    assert spec.params["layers"] is None and spec.params["seed_layer"] is None
    assert len(notes) == 2 and "net.fc1" in notes[0] and "encoder.fc1" in notes[1]


def test_an_hf_revision_in_a_series_is_a_hub_id_the_server_does_not_fetch_unless_allowed(monkeypatch):
    monkeypatch.delenv("REPLENS_ALLOW_HUB", raising=False)
    spec = dynamics_spec(checkpoints=["hf:EleutherAI/pythia-70m@step1000"])
    with pytest.raises(UserInputError, match="REPLENS_ALLOW_HUB"):
        views.run(spec, sections=["dynamics"])


def test_checkpoints_of_another_architecture_are_refused_with_a_message():
    spec = dynamics_spec(checkpoints=["zoo:mlp-s0"], layers=["encoder.fc1"])
    with pytest.raises(UserInputError, match="no layer 'encoder.fc1'.*one architecture"):
        views.run(spec, sections=["dynamics"])


# ------------------------------------------------------------------ the page and the CLI
@pytest.mark.usefixtures("apptest_navigation")
def test_the_page_draws_the_maps_the_lines_and_the_seeds_matrix():
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("pages/sweep.py").run()
    at.number_input(key="n").set_value(N).run()
    at.multiselect(key="checkpoints").set_value(["zoo:mlp-ae-b8-ep1"]).run()
    assert not at.exception, [e.value for e in at.exception]
    charts = at.get("plotly_chart")
    assert len(charts) == 3, [e.value for e in at.error]
    assert "each checkpoint vs the final model" in charts[0].proto.spec
    assert not at.error
    # Another final model of another architecture: chosen layers fall back with a note, never an empty view.
    at.multiselect(key="layers").set_value(["encoder.fc1"]).run()
    at.selectbox(key="final").set_value("zoo:conv-ae-b8").run()
    assert not at.exception
    assert any("fc1" in i.value and "showing every layer" in i.value for i in at.info)  # markdown-escaped
    assert any("one architecture" in e.value for e in at.error)  # the checkpoints are not conv-ae-b8's


def test_the_cli_runs_a_sweep_and_the_view(tmp_path, capsys):
    out = tmp_path / "grid"
    args = ["sweep", "--models", "zoo:mlp-s0", "zoo:mlp-s1", "--measures", "linear_cka", "--layers-a", *LAYERS,
            "--layers-b", *LAYERS, "--n", str(N), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "1 cells: 1 computed, 0 from the store" in capsys.readouterr().out
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == len(LAYERS) ** 2
    assert main(args) == 0 and "0 computed, 1 from the store" in capsys.readouterr().out
    assert main(["sweep", "--models", "zoo:mlp-s0", "--measures", "nope", "--quiet"]) == 2
    assert "Unknown measure 'nope'" in capsys.readouterr().err
    view_out = tmp_path / "view"
    assert main(["training-dynamics", "--n", str(N), "--checkpoints", "zoo:mlp-ae-b8-ep20", "--layers",
                 "encoder.bottleneck", "--out", str(view_out), "--quiet"]) == 0
    dynamics = pd.read_csv(view_out / "dynamics.csv", index_col=0)
    assert list(dynamics.columns) == ["epoch 20", "epoch 150"] and dynamics.iloc[0, 1] == pytest.approx(1.0)
    assert (view_out / "dynamics_heatmap.json").exists() and (view_out / "seeds.csv").exists()
    assert default_store().keys()
