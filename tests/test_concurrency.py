"""Concurrent users at library level: analyses on shared cached models from many threads give the
numbers of a one-at-a-time run and never change the shared model (LRP next to similarity,
activations, projections); two processes writing the same result to one store both finish and
leave one whole result, and eight threads read one store at once (both on the SQLite and on the
PostgreSQL index: tests/store_backends.py). The 8-browser-session test is in tests/test_reliability_browser.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from analysis import activations, data, models, projection, similarity
from analysis.store import Store

ROOT = Path(__file__).resolve().parent.parent


def fingerprint(model) -> dict:
    """Everything a careless analysis could change on a shared model."""
    module = model.module
    h = hashlib.sha256()
    for name, t in list(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in module.modules())
    return {"weights": h.hexdigest(), "hooks": hooks, "training": [m.training for m in module.modules()],
            "requires_grad": [p.requires_grad for p in module.parameters()],
            "device": {str(p.device) for p in module.parameters()}, "layers": list(model.layers)}


def _tasks(mlp, cnn, ds, tmp: Path) -> dict:
    """Named analyses; each uses its own store so that it really computes (no cache hits)."""
    from analysis import lrp

    x = ds.inputs[:24]
    return {
        "cka mlp-cnn": lambda i: similarity.layer_similarity(mlp, cnn, ds, "linear_cka",
                                                             store=Store(tmp / f"cka{i}")).to_numpy(),
        "rsa mlp-mlp": lambda i: similarity.layer_similarity(mlp, mlp, ds, "rsa",
                                                             store=Store(tmp / f"rsa{i}")).to_numpy(),
        "lrp mlp": lambda i: lrp.attribute(mlp, x, rule="epsilon", layer="net.fc2").relevance,
        "lrp cnn": lambda i: lrp.attribute(cnn, x, rule="epsilon").relevance,
        "gradxinput cnn": lambda i: lrp.gradient_x_input(cnn, x).relevance,
        "acts cnn": lambda i: np.concatenate(list(activations.extract(
            cnn, ds, store=Store(tmp / f"acts{i}")).values()), 1),
        "pca mlp": lambda i: projection.project(activations.extract(mlp, ds, ["net.fc2"], use_cache=False)["net.fc2"],
                                                "pca", use_cache=False).coords,
    }


def test_threads_on_shared_models_match_sequential_runs_and_leave_models_untouched(tmp_path):
    mlp, cnn = models.load("zoo:mlp-s0"), models.load("zoo:cnn-s0")
    ds = data.load("digits", n=200, seed=3)
    before = {"mlp": fingerprint(mlp), "cnn": fingerprint(cnn)}
    tasks = _tasks(mlp, cnn, ds, tmp_path)
    reference = {name: fn(0) for name, fn in tasks.items()}
    jobs = [(name, i) for i in (1, 2) for name in tasks]  # 14 jobs, 8 at a time
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {(name, i): pool.submit(tasks[name], i) for name, i in jobs}
        results = {job: f.result(timeout=240) for job, f in futures.items()}
    for (name, i), got in results.items():
        np.testing.assert_allclose(got, reference[name], rtol=1e-6, atol=1e-7, err_msg=f"{name} (run {i})")
    assert {"mlp": fingerprint(mlp), "cnn": fingerprint(cnn)} == before


def test_lrp_running_during_similarity_sees_no_hooks_and_similarity_no_lrp_state(tmp_path):
    """Interleave tightly: LRP in a loop while similarity extracts through forward hooks."""
    from analysis import lrp

    mlp = models.load("zoo:mlp-s0")
    ds = data.load("digits", n=120, seed=1)
    x = ds.inputs[:16]
    ref_lrp = lrp.attribute(mlp, x, rule="epsilon").relevance
    ref_sim = similarity.layer_similarity(mlp, mlp, ds, "linear_cka", store=Store(tmp_path / "ref")).to_numpy()
    before = fingerprint(mlp)
    with ThreadPoolExecutor(max_workers=4) as pool:
        lrps = [pool.submit(lrp.attribute, mlp, x, rule="epsilon") for _ in range(6)]
        sims = [pool.submit(lambda i: similarity.layer_similarity(
            mlp, mlp, ds, "linear_cka", store=Store(tmp_path / f"s{i}")).to_numpy(), i) for i in range(4)]
        for f in lrps:
            np.testing.assert_allclose(f.result(timeout=120).relevance, ref_lrp, rtol=1e-6, atol=1e-8)
        for f in sims:
            np.testing.assert_allclose(f.result(timeout=120), ref_sim, rtol=1e-9)
    assert fingerprint(mlp) == before


WRITER = """
import os, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from analysis import data, models, similarity
ds = data.load("digits", n=300, seed=5)
a, b = models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1")
while not os.path.exists({go!r}):  # start both writers at the same moment
    time.sleep(0.005)
df = similarity.layer_similarity(a, b, ds, "debiased_linear_cka")
print(repr(df.to_numpy().tolist()), flush=True)
"""


def test_two_processes_writing_the_same_result_leave_one_whole_result(tmp_path, monkeypatch, store_backend):
    store_dir, go = tmp_path / "shared", tmp_path / "go"
    env = dict(os.environ, OMP_NUM_THREADS="1", **store_backend.env(store_dir))
    store_backend.store(store_dir)  # create it first, as a running server would have
    script = WRITER.format(root=str(ROOT), go=str(go))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(3.0)  # both import torch and load the models, then wait for the signal
    go.touch()
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        outputs.append(np.array(eval(out.strip().splitlines()[-1])))
    np.testing.assert_array_equal(outputs[0], outputs[1])

    store_backend.activate(store_dir, monkeypatch)
    store = store_backend.store(store_dir)
    assert len(store.keys("similarity")) == 1
    # the activation cache lives beside the index, one record per (model, layer): nothing doubled
    records = sorted((store_dir / "activations").glob("*/*.json"))
    assert len(records) == 14, [r.name for r in records]
    assert all(json.loads(r.read_text())["format"] for r in records)  # each record whole
    for key in store.keys():
        assert store.get(key) is not None
    assert list((store_dir / "tmp").iterdir()) == []
    a, b = models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1")
    ds = data.load("digits", n=300, seed=5)
    cached = similarity.layer_similarity(a, b, ds, "debiased_linear_cka")
    assert cached.attrs["cached"] is True
    np.testing.assert_array_equal(cached.to_numpy(), outputs[0])
    fresh = similarity.layer_similarity(a, b, ds, "debiased_linear_cka", store=Store(tmp_path / "fresh"))
    np.testing.assert_allclose(fresh.to_numpy(), outputs[0], rtol=1e-12)


def test_many_sessions_reading_the_store_at_once(tmp_path, store_backend):
    """Regression: np.load parses headers with ast.literal_eval, which on CPython < 3.11.9 raised
    "SystemError: AST constructor recursion depth mismatch" when threads parsed at once."""
    from analysis.store import make_key

    store = store_backend.store(tmp_path)
    keys = [make_key("read", i=i) for i in range(20)]
    for i, k in enumerate(keys):
        store.put(k, {"x": np.full((3, 2), i, np.float32), "y": np.arange(i + 1)})

    def reader(j):
        for _ in range(40):
            for i, k in enumerate(keys):
                got = store.get(k)
                assert got["x"][0, 0] == i and len(got["y"]) == i + 1
        return j

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sorted(f.result(timeout=120) for f in [pool.submit(reader, j) for j in range(8)]) == list(range(8))
