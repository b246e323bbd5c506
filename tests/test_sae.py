"""Sparse autoencoders: recovery of a known dictionary, sparsity of every kind, whole-set metrics,
SAELens files, dead features, matching, the store, splicing and the logit effect (known answers)."""
import json

import numpy as np
import pytest
import torch

from analysis import data, models
from analysis import sae as S
from analysis.errors import UserInputError


def sparse_dictionary(n=8192, d=32, m=128, p=0.03, seed=0):
    """Rows are sparse positive combinations of m random unit directions in d dimensions."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(m, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    codes = (rng.random((n, m)) < p) * rng.uniform(0.5, 1.5, size=(n, m))
    return (codes @ directions).astype(np.float32), directions


@pytest.fixture(scope="module")
def synthetic():
    return sparse_dictionary()


@pytest.fixture(scope="module")
def topk_sae(synthetic):
    x, _ = synthetic
    return S.train_sae(x, kind="topk", expansion=8, k=8, steps=500, lr=1e-2, batch_size=256, seed=0)


def test_topk_recovers_the_true_directions(synthetic, topk_sae):
    _, directions = synthetic
    w = topk_sae.W_dec.detach().numpy().astype(np.float64)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    best = (directions @ w.T).max(1)  # each true direction's best cosine with any decoder row
    assert best.mean() > 0.95
    assert topk_sae.W_enc.shape == (32, 256) and topk_sae.W_dec.shape == (256, 32)
    np.testing.assert_allclose(np.linalg.norm(topk_sae.W_dec.detach().numpy(), axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind,sparsity,target", [("topk", {"k": 8}, 8), ("batchtopk", {"k": 8}, 8),
                                                  ("relu", {"l1": 3.0}, 12), ("jumprelu", {"l1": 0.5}, 12)])
def test_each_kind_trains_and_reaches_its_sparsity(synthetic, kind, sparsity, target):
    x, _ = synthetic
    x = x[:2048]
    sae = S.train_sae(x, kind=kind, expansion=4, steps=300, lr=1e-2, batch_size=256, seed=0, **sparsity)
    m = S.evaluate(sae, x)
    assert m.fve > 0.6, m.summary()
    if kind == "topk":
        assert 7.5 <= m.l0 <= 8  # k, less where a kept pre-activation is negative (ReLU)
    elif kind == "batchtopk":
        assert m.l0 == pytest.approx(8, rel=0.02)  # the global threshold keeps k per input on average
    else:
        assert m.l0 < target, m.summary()
    assert sae.history["step"][-1] == 300 and len(sae.history["l0"]) == len(sae.history["step"])


def test_a_larger_penalty_gives_fewer_active_latents(synthetic):
    x = synthetic[0][:1024]
    l0 = [S.evaluate(S.train_sae(x, kind="relu", expansion=2, l1=l1, steps=200, lr=1e-2, batch_size=256), x).l0
          for l1 in (0.05, 2.0)]
    assert l0[1] < 0.5 * l0[0]


def identity_relu_sae(d: int) -> S.SparseAutoencoder:
    """ReLU SAE with latents +e_i and -e_i: x^ = relu(x) - relu(-x) = x exactly."""
    eye = np.eye(d, dtype=np.float32)
    return S.from_arrays({"W_enc": np.hstack([eye, -eye]), "W_dec": np.vstack([eye, -eye]),
                          "b_enc": np.zeros(2 * d, np.float32), "b_dec": np.zeros(d, np.float32)}, "relu")


def test_explained_variance_is_computed_over_the_whole_set():
    # x^ = relu(x) (one latent per dimension, no negative part): error = min(x, 0).
    eye = np.eye(2, dtype=np.float32)
    sae = S.from_arrays({"W_enc": eye, "W_dec": eye, "b_enc": np.zeros(2, np.float32),
                         "b_dec": np.zeros(2, np.float32)}, "relu")
    x = np.array([[1, -1], [3, 1], [-2, 2], [2, 0]], dtype=np.float32)
    # sum ||x - x^||^2 = 1 + 0 + 4 + 0 = 5; mean = (1, 0.5); sum ||x - mean||^2 = 14 + 5 = 19
    m = S.evaluate(sae, x, batch_size=2)
    assert m.fve == pytest.approx(1 - 5 / 19, abs=1e-12)
    assert m.mse == pytest.approx(5 / 8, abs=1e-12)
    # the mean of per-batch values differs: batch 1 gives 1 - 1/5, batch 2 gives 1 - 4/8
    assert abs(m.fve - ((1 - 1 / 5) + (1 - 4 / 8)) / 2) > 0.03
    assert m.l0 == pytest.approx((1 + 2 + 1 + 1) / 4)
    # shrinkage: ||x^||/||x|| and cos(x, x^) per row, averaged
    xh = np.maximum(x, 0)
    ratio = np.linalg.norm(xh, axis=1) / np.linalg.norm(x, axis=1)
    cos = (x * xh).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(xh, axis=1)
    assert m.norm_ratio == pytest.approx(ratio.mean()) and m.cosine == pytest.approx(cos.mean())


def random_sae(kind: str, d=6, m=10, seed=0) -> S.SparseAutoencoder:
    rng = np.random.default_rng(seed)
    arrays = {"W_enc": rng.normal(size=(d, m)), "W_dec": rng.normal(size=(m, d)), "b_enc": rng.normal(size=m),
              "b_dec": rng.normal(size=d), "threshold": rng.uniform(0.1, 0.5, size=m)}
    return S.from_arrays({k: v.astype(np.float32) for k, v in arrays.items()}, kind, k=3)


@pytest.mark.parametrize("kind", S.KINDS)
def test_saelens_format_round_trip_is_bit_exact(tmp_path, kind):
    sae = random_sae(kind)
    folder = S.save_saelens(sae, tmp_path / kind, {"hook_name": "net.relu2"})
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == S.SAELENS_ARCHITECTURE[kind] and cfg["d_in"] == 6 and cfg["d_sae"] == 10
    back = S.load_saelens(folder)
    assert back.kind == kind and (back.k == sae.k or kind in S.PENALTY_KINDS)
    for name, value in sae.arrays().items():
        assert torch.equal(getattr(back, name).data, torch.from_numpy(value)), name
    x = np.random.default_rng(1).normal(size=(20, 6)).astype(np.float32)
    assert np.array_equal(back.encode(x), sae.encode(x)) and np.array_equal(back(x), sae(x))
    from safetensors.numpy import load_file

    stored = load_file(str(folder / "sae_weights.safetensors"))
    assert set(stored) == {"W_enc", "W_dec", "b_enc", "b_dec"} | ({"threshold"} if kind in ("jumprelu", "batchtopk") else set())
    assert stored["W_enc"].shape == (6, 10) and stored["W_dec"].shape == (10, 6)


@pytest.mark.parametrize("kind", ["jumprelu", "batchtopk"])
def test_negative_thresholds_encode_as_saelens_does(kind):
    """SAELens's JumpReLU SAE (also how BatchTopK SAEs are saved) encodes
        hidden_pre = (x - b_dec) @ W_enc + b_enc
        feature_acts = relu(hidden_pre) * (hidden_pre > threshold)
    With negative thresholds a pre-activation in (threshold, 0) gives 0, never a negative code, and
    L0 counts every non-zero code. (Before: z * (z > threshold) gave negative codes, and L0, which
    counts codes > 0, left them out.)"""
    rng = np.random.default_rng(3)
    d, m = 6, 40
    arrays = {"W_enc": rng.normal(size=(d, m)), "W_dec": rng.normal(size=(m, d)), "b_enc": rng.normal(size=m),
              "b_dec": rng.normal(size=d), "threshold": rng.uniform(-1.0, -0.1, size=m)}
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    sae = S.from_arrays(arrays, kind, k=3)
    x = rng.normal(size=(200, d)).astype(np.float32)
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    hidden_pre = (x - a["b_dec"]) @ a["W_enc"] + a["b_enc"]
    feature_acts = np.maximum(hidden_pre, 0) * (hidden_pre > a["threshold"])
    between = (hidden_pre > a["threshold"]) & (hidden_pre < 0)
    assert between.sum() > 100  # the case that differs: negative pre-activations above the threshold
    codes = sae.encode(x)
    np.testing.assert_allclose(codes, feature_acts, rtol=1e-5, atol=1e-5)
    assert (codes >= 0).all()
    assert S.evaluate(sae, x).l0 == pytest.approx((feature_acts > 0).sum(1).mean(), abs=0.02)
    np.testing.assert_allclose(sae(x), feature_acts @ a["W_dec"] + a["b_dec"], rtol=1e-4, atol=1e-4)


def test_jumprelu_training_function_matches_the_encoder():
    """The autograd function used in training gives the same codes, and no gradient flows to a
    pre-activation that the ReLU zeroes."""
    z = torch.tensor([[-0.5, -0.05, 0.2, 0.7]], requires_grad=True)
    theta = torch.tensor([-1.0, -0.1, 0.3, 0.1], requires_grad=True)
    f = S._JumpReLU.apply(z, theta, 0.05)
    assert torch.equal(f.detach(), S.jumprelu(z.detach(), theta.detach()))
    assert f.tolist() == [[0.0, 0.0, 0.0, pytest.approx(0.7)]]
    f.sum().backward()
    assert z.grad.tolist() == [[0.0, 0.0, 0.0, 1.0]]


def test_saelens_files_with_bad_contents_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="no cfg.json"):
        S.load_saelens(tmp_path)
    folder = S.save_saelens(random_sae("topk"), tmp_path / "x")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["architecture"] = "gated"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(UserInputError, match="not supported"):
        S.load_saelens(folder)


def test_a_known_dead_feature_is_reported_dead():
    x = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    sae = random_sae("relu")
    sae.b_enc.data[4] = -1e6  # latent 4 can never fire
    m = S.evaluate(sae, x)
    assert m.density[4] == 0 and (m.density[np.arange(10) != 4] > 0).all()
    assert m.dead_fraction == pytest.approx(0.1)
    stats = S.feature_stats(sae, x)
    assert stats.table().loc[4, "status"] == "dead" and stats.density[4] == 0
    assert (stats.table()["status"] == "dead").sum() == 1


def test_matching_a_permuted_copy_recovers_the_permutation(synthetic, topk_sae):
    x = synthetic[0][:1500]
    perm = np.random.default_rng(3).permutation(topk_sae.d_sae)
    other = S.permuted(topk_sae, perm)  # other's latent j is topk_sae's latent perm[j]
    match = S.match_features(topk_sae, x, other, x)
    assert len(match.a) == len(match.live_a) > 200
    np.testing.assert_array_equal(perm[match.b], match.a)
    np.testing.assert_allclose(match.correlation, 1.0, atol=1e-5)
    assert match.shared.all()


def test_matching_unrelated_features_finds_low_correlation(synthetic, topk_sae):
    x = synthetic[0][:1500]
    rng = np.random.default_rng(0)
    noise = S.train_sae(rng.normal(size=(1500, 32)).astype(np.float32), kind="topk", expansion=2, k=4, steps=50)
    match = S.match_features(topk_sae, x, noise, x[rng.permutation(1500)])  # rows shuffled: unrelated inputs
    assert np.median(match.correlation) < 0.2


def test_feature_statistics_known_answers():
    x = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    labels = np.arange(300) % 3
    sae = random_sae("relu")
    codes = sae.encode(x)
    stats = S.feature_stats(sae, x, labels, ["a", "b", "c"])
    np.testing.assert_allclose(stats.density, (codes > 0).mean(0))
    np.testing.assert_allclose(stats.max_act, codes.max(0), rtol=1e-6)
    np.testing.assert_allclose(stats.class_mean[:, 1], codes[labels == 1].mean(0), rtol=1e-5)
    j = int(np.argmax(stats.density))
    ex = S.feature_examples(stats, j, n_top=5, bands=4, per_band=3)
    np.testing.assert_array_equal(ex["top"][0], np.argsort(-codes[:, j], kind="stable")[:5])
    assert sum(b[4] for b in ex["bands"]) == int((codes[:, j] > 0).sum())
    for lo, hi, rows, vals, _ in ex["bands"]:
        assert ((vals > lo) & (vals <= hi + 1e-6)).all() and len(rows) <= 3
    feats, vals = S.active_features(stats, 7)
    np.testing.assert_array_equal(np.sort(feats), np.nonzero(codes[7] > 0)[0])
    assert (np.diff(vals) <= 0).all()


def test_nearest_features_by_decoder_cosine():
    w_dec = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [-1, 0, 0]], dtype=np.float32)
    sae = S.from_arrays({"W_enc": w_dec.T.copy(), "W_dec": w_dec, "b_enc": np.zeros(4, np.float32),
                         "b_dec": np.zeros(3, np.float32)}, "relu")
    idx, cos = S.nearest_features(sae, 0, n=3)
    np.testing.assert_array_equal(idx, [1, 2, 3])
    np.testing.assert_allclose(cos, [0.9 / np.hypot(0.9, 0.1), 0.0, -1.0], atol=1e-6)
    with pytest.raises(UserInputError):
        S.nearest_features(sae, 4)


def test_geometric_median_resists_an_outlier():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])
    med = S.geometric_median(pts)
    assert float(med.norm()) < 2.0 < float(pts.mean(0).norm())


@pytest.fixture(scope="module")
def digits_and_model():
    return data.load("digits", n=200, seed=0), models.load("zoo:mlp-s0")


def test_splicing_a_perfect_reconstruction_recovers_all_the_loss(digits_and_model):
    ds, model = digits_and_model
    down = S.downstream(identity_relu_sae(128), model, "net.relu2", ds)
    assert down.spliced == pytest.approx(down.clean, rel=1e-5)
    assert down.ablated > down.clean and down.score == pytest.approx(1.0, abs=1e-4)
    assert down.accuracy_spliced == down.accuracy_clean > down.accuracy_ablated


def test_logit_effect_through_a_linear_read_out_is_the_read_out(digits_and_model):
    ds, model = digits_and_model
    sae = random_sae("relu", d=128, m=5)
    effect = S.logit_effect(sae, model, "net.relu3", ds, scale=np.full(5, 2.0, np.float32), n_inputs=8)
    w = model.module.net.logits.weight.detach().numpy().astype(np.float64)  # (10, 128)
    expected = 2.0 * sae.W_dec.detach().numpy().astype(np.float64) @ w.T
    expected -= expected.mean(1, keepdims=True)
    np.testing.assert_allclose(effect, expected, atol=1e-4)


def test_trained_saes_live_in_the_store(digits_and_model):
    ds, model = digits_and_model
    params = dict(kind="topk", expansion=2, k=8, steps=60, lr=3e-3, batch_size=64)
    assert S.trained_sae(model, ds, "net.relu2", only_cached=True, **params) is None
    first = S.trained_sae(model, ds, "net.relu2", **params)
    again = S.trained_sae(model, ds, "net.relu2", **params)
    assert not first.cached and again.cached
    for name, value in first.arrays().items():
        assert np.array_equal(value, again.arrays()[name])
    assert again.history["l0"] == pytest.approx(first.history["l0"])
    listed = S.trained_list(model.sha256, ds.sha256, "net.relu2")
    assert len(listed) == 1 and listed[0]["params"]["k"] == 8 and 0 < listed[0]["train_info"]["metrics"]["fve"] <= 1
    # an unused hyper-parameter (l1 of a TopK SAE) does not change the key
    assert S.trained_sae(model, ds, "net.relu2", only_cached=True, l1=3.0, **params) is not None


def test_bad_parameters_are_user_errors():
    x = np.zeros((10, 4), np.float32)
    with pytest.raises(UserInputError, match="all zero"):
        S.train_sae(x, steps=5)
    with pytest.raises(UserInputError, match="kind"):
        S.train_sae(np.ones((10, 4), np.float32), kind="gated")
    with pytest.raises(UserInputError, match="k ="):
        S.train_sae(np.ones((10, 4), np.float32), expansion=1, k=9, steps=2)


def test_sweep_varies_only_the_sparsity():
    topk = S.sweep_params(dict(kind="topk", k=16, expansion=4))
    assert [p["k"] for p in topk] == [4, 8, 32, 64] and all(p["expansion"] == 4 for p in topk)
    relu = S.sweep_params(dict(kind="relu", l1=2.0))
    assert [p["l1"] for p in relu] == [0.5, 1.0, 4.0, 8.0] and all("k" not in p for p in relu)


# ------------------------------------------------------------------ the sparse TopK step, streaming
def dense_reference_loss(sae, xb, variance, dead, n_dead):
    """The TopK / BatchTopK loss written densely (every latent, autograd): what the sparse step's
    hand-written gradients must equal."""
    z = sae.pre_acts(xb)
    f = sae.activate(z, training=True)
    err = xb - (f @ sae.W_dec + sae.b_dec)
    loss = err.pow(2).sum(-1).mean() / variance
    if n_dead:
        k_aux = min(max(xb.shape[1] // 2, 1), n_dead)
        top = torch.topk(torch.where(dead[None], z, torch.full_like(z, -torch.inf)), k_aux, dim=-1)
        aux_f = torch.zeros_like(z).scatter_(-1, top.indices, torch.relu(top.values))
        residual = err.detach()
        aux = (residual - aux_f @ sae.W_dec).pow(2).sum(-1).mean() / residual.pow(2).sum(-1).mean()
        loss = loss + S.AUX_COEF * min(n_dead / k_aux, 1.0) * aux
    return loss


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
@pytest.mark.parametrize("n_dead", [0, 3, 20])
def test_sparse_step_gradients_equal_autograd(kind, n_dead):
    from analysis.sae.sparse_step import sparse_step

    d, m, b = 12, 40, 24
    gen = torch.Generator().manual_seed(n_dead)
    sae = S.SparseAutoencoder(d, m, kind, k=5).double()
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    xb = torch.randn(b, d, generator=gen, dtype=torch.float64)
    dead = torch.zeros(m, dtype=torch.bool)
    dead[torch.randperm(m, generator=gen)[:n_dead]] = True
    ref = dense_reference_loss(sae, xb, 2.5, dead, n_dead)
    ref.backward()
    expected = {name: p.grad.clone() for name, p in sae.named_parameters() if p.requires_grad}
    sae.zero_grad()
    loss, sse, active, l0 = sparse_step(sae, xb, 2.5, dead, n_dead, S.AUX_COEF)
    assert float(loss) == pytest.approx(float(ref), rel=1e-12)
    for name, grad in expected.items():
        np.testing.assert_allclose(getattr(sae, name).grad.numpy(), grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    f = sae.activate(sae.pre_acts(xb), training=True).detach()
    assert np.array_equal(active.numpy(), (f > 0).any(0).numpy()) and int(l0) == int((f > 0).sum())


def test_weight_normalised_decoder_gradient_equals_autograd():
    """The TopK trainer steps v with u = v / ||v||: its gradient to v is autograd's through the
    normalisation, and with ||v|| = 0.1 it is 10x the plain tangent gradient of a unit row."""
    from analysis.sae.training import tangent_grad

    gen = torch.Generator().manual_seed(0)
    target = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    v = (torch.randn(7, 5, generator=gen, dtype=torch.float64) * 0.3).requires_grad_()
    u = v / v.norm(dim=1, keepdim=True)
    (u * target).sum().pow(2).backward()  # any smooth loss of the unit rows
    with torch.no_grad():
        norm = v.norm(dim=1, keepdim=True)
        unit = v / norm
        grad_u = 2 * (unit * target).sum() * target
        np.testing.assert_allclose(tangent_grad(unit, grad_u.clone(), norm).numpy(), v.grad.numpy(), rtol=1e-12)
        tangent = tangent_grad(unit, grad_u.clone())
        assert float((tangent * unit).sum(1).abs().max()) < 1e-12  # tangent to the unit sphere
        np.testing.assert_allclose(tangent_grad(unit, grad_u.clone(), torch.full_like(norm, 0.1)).numpy(),
                                   10 * tangent.numpy(), rtol=1e-12)


def write_cache(x, chunk_rows=512):
    """The rows ``x`` as a real on-disk activation cache in this test's store."""
    from analysis.activations import write_chunk
    from analysis.activations.cache import create_cache
    from analysis.store import default_store

    cache = create_cache(default_store(), f"{len(x):08d}" + "c" * 56, len(x), x.shape[1], "float32", 128,
                         "as is", chunk_rows=chunk_rows)
    for i in range(cache.record.chunks):
        write_chunk(cache, i, x[cache.record.chunk_slice(i)])
    return cache


def test_training_from_a_cache_equals_training_from_the_array_in_the_same_order(synthetic):
    """The cache streams batches in shuffled_batches' order; the array, given that same order,
    trains the same SAE (the moments are summed chunk by chunk on one side and at once on the other,
    so the two agree to float32 rounding, not bit for bit)."""
    from analysis.streaming import shuffled_batches

    x = synthetic[0][:4096]
    cache = write_cache(x)
    hp = dict(kind="topk", expansion=4, k=8, steps=60, lr=1e-2, batch_size=256, seed=3)
    streamed = S.train_sae(cache, **hp)
    in_memory = S.train_sae(x, **hp, batches=shuffled_batches(cache, 256, 3, epochs=None))
    assert streamed.train_info["streamed"] and not in_memory.train_info["streamed"]
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        np.testing.assert_allclose(getattr(streamed, name).detach().numpy(), getattr(in_memory, name).detach().numpy(),
                                   atol=2e-4, err_msg=name)
    np.testing.assert_allclose(streamed.history["loss"], in_memory.history["loss"], rtol=1e-4)
    # and the metrics read from the cache chunk by chunk equal those of the array
    a, b = S.evaluate(streamed, cache).summary(), S.evaluate(streamed, x).summary()
    assert a == pytest.approx(b, rel=1e-9)


def test_streamed_training_learns_the_dictionary(synthetic):
    _, directions = synthetic
    sae = S.train_sae(write_cache(synthetic[0]), kind="topk", expansion=8, k=8, steps=500, lr=1e-2, batch_size=256)
    w = sae.W_dec.detach().numpy().astype(np.float64)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    assert (directions @ w.T).max(1).mean() > 0.95


def test_streamed_training_memory_does_not_grow_with_the_rows():
    """numpy's allocations (tracemalloc sees them: every chunk read) peak at a few chunks whether the
    cache holds 16 or 128 chunks (both at least the 8,192 rows the b_dec initialisation reads)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    peaks = []
    for chunks in (16, 128):
        x = rng.normal(size=(chunks * 512, 64)).astype(np.float32)
        cache = write_cache(x)
        del x
        S.train_sae(cache, kind="topk", expansion=2, k=4, steps=2, batch_size=256)  # first-use imports and caches
        tracemalloc.start()
        S.train_sae(cache, kind="topk", expansion=2, k=4, steps=40, batch_size=256)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    full = 128 * 512 * 64 * 4  # the larger array's bytes
    assert peaks[1] < 1.5 * peaks[0] and peaks[1] < 0.25 * full, peaks


def test_fused_adam_is_adam():
    from analysis.sae.training import _Adam

    gen = torch.Generator().manual_seed(0)
    p = torch.randn(7, 30, generator=gen, dtype=torch.float64).T.clone()  # column-major, as a transposed weight
    q, m, v = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    opt = _Adam([p])
    for t in range(1, 6):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        p.grad = g.contiguous()  # row-major: another layout than the parameter's
        opt.step(1e-2 / t)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g  # Kingma & Ba, Algorithm 1
        q -= 1e-2 / t * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
    np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-12)


def test_trained_sae_streams_above_the_in_memory_limit(digits_and_model, monkeypatch):
    from analysis import streaming

    ds, model = digits_and_model
    monkeypatch.setattr(streaming, "IN_MEMORY_LIMIT", len(ds) - 1)
    assert S.streams(len(ds))
    sae = S.trained_sae(model, ds, "net.relu2", kind="topk", expansion=1, k=4, steps=30, batch_size=64)
    assert sae.train_info["streamed"] and sae.train_info["metrics"]["n"] == len(ds)
    monkeypatch.setattr(streaming, "IN_MEMORY_LIMIT", len(ds))
    assert not S.streams(len(ds))


def test_the_estimate_follows_the_sparse_topk_step():
    """TopK pays one dense product (the encoder) where ReLU pays about six: at MiniLM's width with
    4,096 latents and k = 32 the estimate of a TopK run is well under half a ReLU run's, and it grows
    with k (the sparse products) while ReLU's does not."""
    topk = S.estimate_seconds(30_000, 384, 10, 300, 1024, "topk", 32)
    relu = S.estimate_seconds(30_000, 384, 10, 300, 1024, "relu")
    assert topk < 0.5 * relu
    assert S.estimate_seconds(30_000, 384, 10, 300, 1024, "topk", 256) > topk
    assert S.estimate_seconds(30_000, 384, 10, 300, 1024, "relu", 256) == relu
