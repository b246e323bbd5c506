"""The shipped zoo: manifest complete, checkpoints intact, accuracies re-checked, training deterministic."""
import hashlib

import pytest
import torch

from analysis import data, evaluate, models, zoo

REQUIRED = {"name", "architecture", "kind", "seed", "bottleneck", "train_samples", "epochs", "sha256"}


def entries():
    return models.manifest()["models"]


def test_manifest_lists_the_required_zoo():
    names = {e["name"] for e in entries()}
    assert {"mlp-s0", "mlp-s1", "mlp-s2", "mlp-wide", "mlp-untrained", "cnn-s0", "cnn-s1"} <= names
    for b in (2, 8, 32):
        assert f"mlp-ae-b{b}" in names and f"conv-ae-b{b}" in names
    memorize = models.zoo_entry("mlp-ae-memorize")
    assert memorize["train_samples"] <= 12
    for e in entries():
        assert REQUIRED <= set(e)
        assert ("test_accuracy" in e) or ("test_mse" in e)
        if e["kind"] == "autoencoder":
            assert e["bottleneck"] in (2, 8, 32)


def test_zoo_is_small():
    total = sum((zoo.ZOO_DIR / e["file"]).stat().st_size for e in entries())
    assert total < 10 * 2**20


def test_checkpoints_match_their_sha256():
    for e in entries():
        assert hashlib.sha256((zoo.ZOO_DIR / e["file"]).read_bytes()).hexdigest() == e["sha256"]


@pytest.mark.parametrize("name", [e["name"] for e in models.manifest()["models"]])
def test_manifest_score_is_reproduced(name):
    e = models.zoo_entry(name)
    m = models.load(f"zoo:{name}")
    ev = evaluate.evaluate(m, data.load("digits", split="test"))
    if e["kind"] == "classifier":
        assert ev.value == pytest.approx(e["test_accuracy"], abs=1e-9)
    else:
        assert ev.value == pytest.approx(e["test_mse"], rel=1e-4)


def test_trained_beats_untrained_and_memorizer_overfits():
    acc = {e["name"]: e.get("test_accuracy") for e in entries()}
    assert acc["mlp-s0"] > 0.95 and acc["cnn-s0"] > 0.95 and acc["mlp-untrained"] < 0.3
    mem = models.zoo_entry("mlp-ae-memorize")
    assert mem["test_mse"] > 20 * mem["train_mse"]


def test_training_is_deterministic():
    spec = dict(zoo.SPECS[0], epochs=1)
    torch.set_num_threads(1)
    a, _ = zoo.train(spec, log=lambda *_: None)
    b, _ = zoo.train(spec, log=lambda *_: None)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
