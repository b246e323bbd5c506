"""Analyses that read the activation cache chunk by chunk equal their in-memory counterparts."""
import numpy as np
import pytest

from analysis import activations, data, models, projection, streaming
from analysis.activations import cache as cache_mod
from analysis.errors import UserInputError
from analysis.similarity.minibatch import _minibatch_matrix


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(cache_mod, "CHUNK_BYTES", 4 * 64 * 96)  # ~96-row chunks: many per dataset


@pytest.fixture
def pair(small_chunks):
    ds = data.load("digits_noisy", n=1000, seed=4)
    a, b = models.load("zoo:mlp-s0"), models.load("zoo:cnn-s0")
    la, lb = ["net.fc1", "net.fc3"], ["net.conv2", "net.gap"]
    ca = activations.extract_chunked(a, ds, la, batch_size=32)
    cb = activations.extract_chunked(b, ds, lb, batch_size=48)  # other batch and chunk sizes than A's
    return ca, cb, {l: c.read() for l, c in ca.items()}, {l: c.read() for l, c in cb.items()}


def test_minibatch_cka_from_the_cache_equals_the_in_memory_estimator(pair):
    ca, cb, xa, xb = pair
    assert ca["net.fc1"].record.chunks > 5 and ca["net.fc1"].record.chunk_rows != cb["net.gap"].record.chunk_rows
    streamed = streaming.minibatch_cka(ca, cb, batch_size=100)
    ref = _minibatch_matrix(xa, xb, 100, None, None)
    np.testing.assert_allclose(streamed.to_numpy(), ref, rtol=1e-12, atol=1e-12)
    # batch size 97 leaves a last batch of 30 and crosses chunk boundaries inside batches
    np.testing.assert_allclose(streaming.minibatch_cka(ca, cb, batch_size=97).to_numpy(),
                               _minibatch_matrix(xa, xb, 97, None, None), rtol=1e-12, atol=1e-12)


def test_incremental_pca_matches_exact_pca(pair):
    ca, _, xa, _ = pair
    streamed = streaming.incremental_pca(ca["net.fc1"], k=3)
    coords, ratio = projection.pca(xa["net.fc1"], 3)
    np.testing.assert_allclose(streamed.explained, ratio, rtol=1e-9)
    np.testing.assert_allclose(streamed.coords, coords, atol=1e-9 * np.abs(coords).max())
    # wider than the exact limit: IncrementalPCA keeps 4k + 10 components, close to the exact top k
    from analysis import streaming as s

    saved, s.EXACT_WIDTH = s.EXACT_WIDTH, 8
    try:
        approx = streaming.incremental_pca(ca["net.fc1"], k=3)
    finally:
        s.EXACT_WIDTH = saved
    np.testing.assert_allclose(approx.explained, ratio, rtol=0.05)
    for j in range(3):
        assert abs(np.corrcoef(approx.coords[:, j], coords[:, j])[0, 1]) > 0.95


def test_subsample_says_how_many_it_used_and_aligns_layers(pair):
    ca, _, xa, _ = pair
    sub = streaming.subsample(ca, limit=300, seed=1, what="UMAP")
    assert sub.used == 300 and sub.total == 1000 and "300 of the 1,000" in sub.note
    np.testing.assert_array_equal(sub.arrays["net.fc3"], xa["net.fc3"][sub.rows])
    np.testing.assert_array_equal(sub.rows, np.sort(sub.rows))
    whole = streaming.subsample(ca, limit=5000)
    assert whole.used == 1000 and "all 1,000" in whole.note


def test_project_umap_on_a_subsample(pair):
    pytest.importorskip("umap")
    ca, _, _, _ = pair
    p, rows, note = streaming.project(ca["net.fc1"], "tsne", limit=200, seed=0, perplexity=10.0)
    assert p.coords.shape == (200, 2) and len(rows) == 200 and "200 of the 1,000" in note
    p, rows, note = streaming.project(ca["net.fc1"], "pca")
    assert p.coords.shape == (1000, 2) and "all 1,000" in note


def test_shuffled_batches_cover_every_row_once_per_epoch(pair):
    ca, _, xa, _ = pair
    x = xa["net.fc3"]
    batches = list(streaming.shuffled_batches(ca["net.fc3"], 64, seed=3, buffer_chunks=2, epochs=2))
    assert max(len(b) for b in batches) == 64
    seen = np.concatenate(batches)
    assert len(seen) == 2 * len(x)
    key = lambda a: np.sort(a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel())  # noqa: E731
    np.testing.assert_array_equal(key(seen[:1000]), key(x))  # the first epoch is a permutation of the rows
    assert not np.array_equal(seen[:1000], x)


def test_token_rows_are_not_compared_across_models(small_chunks, tmp_path):
    from tests.tiny_models import save_tiny

    m = models.load(f"hf:{save_tiny('gpt2', tmp_path / 'g')}")
    ds = data.load("text", n=12)
    c = activations.extract_chunked(m, ds, ["h.1"], pooling="tokens", batch_size=4)
    with pytest.raises(UserInputError, match="token rows"):
        streaming.minibatch_cka(c, c)
    p = streaming.incremental_pca(c["h.1"], 2)  # PCA of token rows works: one coordinate per token
    assert p.coords.shape == (c["h.1"].shape[0], 2)
