"""Extraction: shapes, pooling rules, attention masks, batching, caching, progress, errors."""
import numpy as np
import pytest
import torch

from analysis import activations, data, models
from analysis.errors import UserInputError
from analysis.store import default_store


def test_shapes_rows_and_dtype():
    m = models.load("zoo:cnn-s0")
    ds = data.load("digits", n=70)
    acts = activations.extract(m, ds, batch_size=16)
    assert list(acts) == m.layers
    for layer, x in acts.items():
        assert x.shape[0] == 70 and x.dtype == np.float32 and x.ndim == 2
    assert acts["net.conv1"].shape == (70, 16)
    assert acts.rules["net.conv1"] == "spatial mean" and acts.rules["net.logits"] == "as is"


def test_hooks_match_a_manual_forward_and_batching_is_invisible():
    m = models.load("zoo:mlp-s2")
    ds = data.load("digits", n=45)
    a = activations.extract(m, ds, layers=["net.relu2"], batch_size=7, use_cache=False)["net.relu2"]
    net = m.module.net
    with torch.no_grad():
        ref = net[:4](torch.from_numpy(ds.inputs)).numpy()
    np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-5)  # BLAS kernels differ by batch size


def test_a_later_in_place_module_does_not_change_what_was_recorded():
    # ReLU(inplace=True) after a hooked Linear (as in torchvision's ResNets) overwrites the Linear's
    # output in place; the recorded activations must be the Linear's, negatives included
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(inplace=True), torch.nn.Linear(6, 2))
    m = models.wrap(net, layers=["0", "2"])
    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    ds = data.Dataset("inplace", "vector", x, None, None, np.arange(20), 20)
    got = activations.extract(m, ds, layers=["0"], batch_size=8, use_cache=False)["0"]
    with torch.no_grad():
        want = net[0](torch.from_numpy(x)).numpy()
    assert (want < 0).any()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_spatial_pooling_rules():
    m = models.load("zoo:cnn-s1")
    ds = data.load("digits", n=10)
    mean = activations.extract(m, ds, layers=["net.conv2"], pooling="mean")["net.conv2"]
    flat = activations.extract(m, ds, layers=["net.conv2"], pooling="flatten")["net.conv2"]
    assert flat.shape == (10, 32 * 8 * 8)
    np.testing.assert_allclose(flat.reshape(10, 32, 64).mean(-1), mean, atol=1e-5)
    with pytest.raises(UserInputError, match="token outputs only"):
        activations.extract(m, ds, layers=["net.conv2"], pooling="first")


def test_token_mean_uses_the_attention_mask():
    m = models.load("hf:minilm")
    short = "Rain again."
    ds = data.load("text", n=3)
    ds.inputs = [short, short + " " + " ".join(["The quarterly report listed unusual expenses."] * 5), short]
    ds._sha = None
    acts = activations.extract(m, ds, layers=["encoder.layer.2"], batch_size=3, use_cache=False)
    alone = data.load("text", n=1)
    alone.inputs, alone._sha = [short], None
    single = activations.extract(m, alone, layers=["encoder.layer.2"], use_cache=False)["encoder.layer.2"]
    # padding added by the long sentence in the batch must not change the short sentence's mean
    np.testing.assert_allclose(acts["encoder.layer.2"][0], single[0], atol=1e-4)
    assert acts.rules["encoder.layer.2"] == "mean over valid tokens (attention mask)"
    first = activations.extract(m, alone, layers=["encoder.layer.2"], pooling="first", use_cache=False)
    assert first.rules["encoder.layer.2"] == "first token"
    assert not np.allclose(first["encoder.layer.2"], single)
    with pytest.raises(UserInputError, match="not defined for token outputs"):
        activations.extract(m, alone, layers=["encoder.layer.2"], pooling="flatten", use_cache=False)


def test_second_request_is_a_store_lookup(monkeypatch):
    m = models.load("zoo:mlp-s0")
    ds = data.load("digits", n=40)
    first = activations.extract(m, ds, layers=["net.fc1", "net.fc2"])
    assert first.cached == set()
    calls = []
    from analysis.activations import writer

    monkeypatch.setattr(writer, "fill", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(
        AssertionError("recomputed")))
    second = activations.extract(m, ds, layers=["net.fc1", "net.fc2"])
    assert second.cached == {"net.fc1", "net.fc2"} and not calls
    np.testing.assert_array_equal(first["net.fc2"], second["net.fc2"])
    assert second.rules == first.rules


def test_only_missing_layers_are_computed():
    m = models.load("zoo:mlp-s0")
    ds = data.load("digits", n=40)
    activations.extract(m, ds, layers=["net.fc1"])
    both = activations.extract(m, ds, layers=["net.fc1", "net.fc3"])
    assert both.cached == {"net.fc1"}


def test_cache_key_depends_on_model_data_layer_pooling():
    a, b = models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1")
    d1, d2 = data.load("digits", n=20, seed=0), data.load("digits", n=20, seed=1)
    keys = {activations.cache_key(m, d, l, p) for m in (a, b) for d in (d1, d2)
            for l in ("net.fc1", "net.fc2") for p in ("mean", "flatten")}
    assert len(keys) == 16


def test_results_land_in_the_store_as_zarr_arrays_other_tools_read():
    import zarr

    from analysis.activations.cache import open_cache

    m = models.load("zoo:mlp-s0")
    ds = data.load("digits", n=20)
    x = activations.extract(m, ds, layers=["net.fc1"])["net.fc1"]
    cache = open_cache(default_store(), activations.cache_key(m, ds, "net.fc1", "mean"))
    assert cache.complete and cache.record.meta["layer"] == "net.fc1" and cache.record.rule == "as is"
    assert str(cache.location).startswith(str(default_store().root))
    np.testing.assert_array_equal(zarr.open_array(cache.location, mode="r")[:], x)


def test_progress_callback_reaches_one():
    seen = []
    activations.extract(models.load("zoo:mlp-s0"), data.load("digits", n=100), batch_size=30,
                        progress=lambda f, msg: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 4


def test_unknown_layer_and_pooling():
    m = models.load("zoo:mlp-s0")
    ds = data.load("digits", n=5)
    with pytest.raises(UserInputError, match="has no layer 'net.fc9'"):
        activations.extract(m, ds, layers=["net.fc9"])
    with pytest.raises(UserInputError, match="Unknown pooling"):
        activations.extract(m, ds, pooling="max")


def test_torchscript_has_only_output():
    import io

    net = torch.nn.Sequential(torch.nn.Linear(64, 4)).eval()
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 64)), buf)
    m = models.load(models.upload(buf.getvalue(), "t.pt"))
    with pytest.raises(UserInputError, match="has no layer"):
        activations.extract(m, data.load("digits", n=5), layers=["0"])


def test_device_choice():
    from analysis.device import pick

    assert pick("cpu").type == "cpu"
    assert pick(None).type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="no CUDA GPU"):
            pick("cuda")
    with pytest.raises(UserInputError, match="Unknown device"):
        pick("tpu9")


def test_batch_stream_leaves_grad_mode_and_lock_alone():
    m = models.load("zoo:mlp-s0")
    stream = activations.iter_batches(m, data.load("digits", n=64), ["net.fc1"], batch_size=16)
    next(stream)
    assert torch.is_grad_enabled()  # a suspended stream must not switch gradients off for its caller
    stream.close()
    assert m.lock.acquire(blocking=False)  # closing the stream released the model
    m.lock.release()
