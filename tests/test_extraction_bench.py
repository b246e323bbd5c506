"""benchmarks/extraction.py at tiny sizes on a random GPT-2, so the script cannot rot: RepLens's
activations agree with the plain transformers loop it is compared with, each measurement runs and
the verdicts say plainly when a target is missed."""
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

_path = Path(__file__).resolve().parent.parent / "benchmarks" / "extraction.py"
_spec = importlib.util.spec_from_file_location("extraction_bench", _path)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)


@pytest.fixture(autouse=True)
def _private_store(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLENS_STORE", str(tmp_path / "store"))


@pytest.fixture(scope="module")
def gpt2_ref(tmp_path_factory):
    return bench.model_ref("gpt2", tmp_path_factory.mktemp("bench-models"))


def test_texts_are_reproducible_and_vary_in_length():
    a, b = bench.synthetic_texts(200, seed=3), bench.synthetic_texts(200, seed=3)
    assert a == b and a != bench.synthetic_texts(200, seed=4)
    words = [len(t.split()) for t in a]
    assert min(words) >= 3 and max(words) <= 30 and max(words) - min(words) >= 20


def test_layers_map_onto_hidden_states(gpt2_ref):
    from analysis import models

    model = models.load(gpt2_ref)
    assert model.architecture.startswith("GPT2Model") and "4 layers, hidden 128" in model.architecture
    assert bench.hidden_state_indices(model) == {"h.0": 1, "h.1": 2, "h.2": 3, "h.3": 4}
    # the last hidden state is ln_f of the last block's output, so that block is not compared
    assert bench.compared_layers(model) == {"h.0": 1, "h.1": 2, "h.2": 3}
    assert "h.3 -> hidden_states[4] (after ln_f: not compared)" in bench.describe_layers(model)
    minilm = models.load("hf:minilm")
    idx = bench.hidden_state_indices(minilm)
    assert idx["embeddings"] == 0 and idx["encoder.layer.5"] == 6
    assert bench.compared_layers(minilm) == idx  # BERT returns every block's output as it is


def test_replens_agrees_with_the_transformers_loop(gpt2_ref):
    err = bench.agreement(gpt2_ref, n=64, batch_size=16)
    assert set(err) == {"h.0", "h.1", "h.2"}
    assert all(e < 1e-4 for e in err.values()), err


def test_a_wrong_layer_map_would_be_caught(gpt2_ref):
    """The agreement check compares something: block i against hidden_states[i] (one off) differs."""
    from analysis import activations, models

    model = models.load(gpt2_ref)
    ds = bench.text_dataset(32, seed=1)
    got = activations.extract(model, ds, ["h.1", "h.3"], use_cache=False)
    off_by_one, after_norm = bench.baseline_pass(bench.model_folder(gpt2_ref), ds.inputs, [1, 4], 16)
    assert np.abs(got["h.1"] - off_by_one).max() > 1e-2 * np.abs(off_by_one).max()
    assert np.abs(got["h.3"] - after_norm).max() > 1e-2 * np.abs(after_norm).max()


@pytest.mark.parametrize("method", bench.METHODS)
def test_each_measurement_runs(gpt2_ref, method):
    r = bench.measure_here(method, gpt2_ref, 64, 16)
    assert r["method"] == method and r["n"] == 64
    assert r["rows_per_s"] > 0 and math.isfinite(r["rows_per_s"]) and r["seconds"] > 0
    assert math.isfinite(r["peak_growth_mb"])


def test_a_measurement_in_its_own_process(gpt2_ref, tmp_path):
    r = bench.measure("extract_chunked", gpt2_ref, 64, 16, tmp_path / "runs")
    assert r["method"] == "extract_chunked" and r["rows_per_s"] > 0 and r["peak_reset"] in (True, False)
    assert not list((tmp_path / "runs").iterdir())  # the run's private store is removed


def _row(method, n, rate, mb):
    return {"method": method, "n": n, "seconds": n / rate, "rows_per_s": rate, "peak_growth_mb": mb,
            "peak_reset": True}


def test_verdicts_say_plainly_when_a_target_is_missed():
    rows = [_row("baseline", 1000, 100.0, 50), _row("extract_chunked", 1000, 120.0, 40),
            _row("baseline", 8000, 100.0, 300), _row("extract_chunked", 8000, 90.0, 200)]
    lines = bench.verdicts(rows)
    assert "throughput extract_chunked: worst 0.90x baseline -> target >= 1.0x NOT MET" in lines
    assert any(l.startswith("memory extract_chunked") and l.endswith("NOT MET") for l in lines)
    table = "\n".join(bench.table("gpt2", rows))
    assert "1.20x" in table and "0.90x" in table


def test_verdicts_say_met_when_it_is():
    rows = [_row("baseline", 1000, 100.0, 50), _row("extract_chunked", 1000, 150.0, 40),
            _row("baseline", 8000, 100.0, 300), _row("extract_chunked", 8000, 110.0, 48)]
    lines = bench.verdicts(rows)
    assert lines == ["throughput extract_chunked: worst 1.10x baseline -> target >= 1.0x MET",
                     "memory extract_chunked: +40 MB at n=1,000, +48 MB at n=8,000 -> flat target MET"]


def test_repeats_rotate_the_order_and_keep_the_best_rate_and_the_largest_memory():
    methods = list(bench.METHODS)
    orders = [bench.rotated(methods, k) for k in range(len(methods))]
    assert {o[0] for o in orders} == set(methods) and all(sorted(o) == sorted(methods) for o in orders)
    best = bench.best_of([_row("extract", 1000, 90.0, 120), _row("extract", 1000, 110.0, 100)])
    assert best["rows_per_s"] == 110.0 and best["peak_growth_mb"] == 120
