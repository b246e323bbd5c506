"""Crosscoders: recovery of shared and exclusive dictionary atoms, the decoder-norm ratio and its
classes, and the file format round trip."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from analysis import crosscoder as X
from analysis.errors import UserInputError


def synthetic(n=4096, da=24, db=16, shared=32, a_only=16, b_only=16, p=0.05, seed=0):
    """Sparse sums of unit atoms: a shared atom has a direction in A's space and one in B's and the
    same coefficient in both; an exclusive atom lives in one space only."""
    rng = np.random.default_rng(seed)

    def unit(k, d):
        v = rng.normal(size=(k, d))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    sa, sb, ea, eb = unit(shared, da), unit(shared, db), unit(a_only, da), unit(b_only, db)
    coef = (rng.random((n, shared + a_only + b_only)) < p) * rng.uniform(0.5, 1.5, (n, shared + a_only + b_only))
    xa = coef[:, :shared] @ sa + coef[:, shared:shared + a_only] @ ea
    xb = coef[:, :shared] @ sb + coef[:, shared + a_only:] @ eb
    atoms = np.vstack([np.hstack([sa, sb]) / np.sqrt(2), np.hstack([ea, np.zeros((a_only, db))]),
                       np.hstack([np.zeros((b_only, da)), eb])])
    classes = np.array([X.SHARED] * shared + [X.A_ONLY] * a_only + [X.B_ONLY] * b_only)
    return xa.astype(np.float32), xb.astype(np.float32), atoms, classes


@pytest.fixture(scope="module")
def trained():
    xa, xb, atoms, classes = synthetic()
    cc = X.train_crosscoder(xa, xb, "topk", d_sae=128, k=4, steps=800, lr=3e-3, batch_size=256)
    return cc, xa, xb, atoms, classes


def _raw_decoders(cc) -> np.ndarray:
    """Each latent's decoder in raw units, both models side by side, unit length."""
    w = np.hstack([cc.W_dec[s].detach().numpy() / float(cc.scales[s]) for s in range(2)])
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def test_crosscoder_recovers_shared_and_exclusive_atoms(trained):
    cc, xa, xb, atoms, classes = trained
    cos = atoms @ _raw_decoders(cc).T
    assert cos.max(1).mean() >= 0.9  # measured 0.997
    best = cos.argmax(1)
    metrics = X.evaluate(cc, xa, xb)
    predicted = X.classify(cc.relative_norm(), metrics.density)[best]
    assert np.mean(predicted == classes) >= 0.95  # measured 1.0
    for cls in (X.SHARED, X.A_ONLY, X.B_ONLY):
        assert np.mean(predicted[classes == cls] == cls) >= 0.9
    assert min(metrics.fve) > 0.85 and metrics.l0 <= cc.k


def test_the_re_export_in_analysis_sae_is_the_same_function():
    from analysis import sae

    assert sae.train_crosscoder is X.train_crosscoder


def test_relative_norm_and_classes_have_their_defined_values():
    r = X.relative_norm(np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, 0.5], [0.0, 0.0]]))
    np.testing.assert_allclose(r, [0.0, 1.0, 0.5, 0.25, 0.5])
    classes = X.classify(np.array([0.05, 0.95, 0.5, 0.69, 0.2, 0.5]), density=np.array([1, 1, 1, 1, 1, 0]))
    assert list(classes) == [X.A_ONLY, X.B_ONLY, X.SHARED, X.SHARED, X.BETWEEN, X.DEAD]


def test_unit_joint_decoder_norm_and_raw_units(trained):
    cc, xa, xb, _, _ = trained
    np.testing.assert_allclose(np.sqrt((cc.decoder_norms() ** 2).sum(1)), 1.0, rtol=1e-5)
    # encode reads raw activations: scaling both inputs by the crosscoder's factors by hand gives the same codes
    z = cc.pre_acts([torch.from_numpy(xa[:50]) * cc.scales[0], torch.from_numpy(xb[:50]) * cc.scales[1]])
    np.testing.assert_allclose(cc.encode([xa[:50], xb[:50]]), cc.activate(z).detach().numpy(), rtol=1e-6)


def test_file_format_round_trips(trained, tmp_path):
    cc, xa, xb, _, _ = trained
    folder = X.save(cc, tmp_path / "cc", model_names=["zoo:mlp-s0", "zoo:mlp-s1"], hook_names=["net.relu3"] * 2)
    cfg = json.loads((folder / X.CFG).read_text())
    assert cfg["architecture"] == "crosscoder_topk" and cfg["d_in"] == [24, 16] and cfg["d_sae"] == 128
    assert cfg["k"] == 4 and cfg["model_names"] == ["zoo:mlp-s0", "zoo:mlp-s1"]
    back = X.load(folder)
    for name, value in cc.arrays().items():
        np.testing.assert_array_equal(back.arrays()[name], value)
    np.testing.assert_array_equal(back.encode([xa, xb]), cc.encode([xa, xb]))
    with zipfile.ZipFile(io.BytesIO(X.to_zip(cc))) as zf:
        again = X.from_bytes(zf.read(X.CFG), zf.read(X.WEIGHTS))
    np.testing.assert_array_equal(again.relative_norm(), cc.relative_norm())


def test_stacked_layout_of_equal_widths_is_read(tmp_path):
    from safetensors.torch import save

    rng = np.random.default_rng(0)
    w_enc, w_dec = rng.normal(size=(2, 6, 10)), rng.normal(size=(10, 2, 6))
    b_dec, b_enc = rng.normal(size=(2, 6)), rng.normal(size=10)
    tensors = {k: torch.from_numpy(v.astype(np.float32)) for k, v in
               {"W_enc": w_enc, "W_dec": w_dec, "b_dec": b_dec, "b_enc": b_enc}.items()}
    cfg = json.dumps({"architecture": "crosscoder_relu", "d_in": [6, 6], "d_sae": 10}).encode()
    cc = X.from_bytes(cfg, save(tensors))
    np.testing.assert_allclose(cc.W_dec[1].detach().numpy(), w_dec[:, 1].astype(np.float32))
    np.testing.assert_allclose(cc.W_enc[0].detach().numpy(), w_enc[0].astype(np.float32))
    np.testing.assert_allclose(cc.decoder_norms()[:, 0], np.linalg.norm(w_dec[:, 0].astype(np.float32), axis=1),
                               rtol=1e-5)


def test_bad_files_and_inputs_get_clear_messages():
    with pytest.raises(UserInputError, match="not supported"):
        X.from_bytes(b'{"architecture": "standard"}', b"")
    with pytest.raises(UserInputError, match="not valid JSON"):
        X.from_bytes(b"{", b"")
    with pytest.raises(UserInputError, match="same inputs"):
        X.train_crosscoder(np.ones((10, 3)), np.ones((9, 3)), steps=1)
    with pytest.raises(UserInputError, match="k = 99"):
        X.train_crosscoder(np.ones((10, 3)), np.ones((10, 3)), d_sae=8, k=99, steps=1)
