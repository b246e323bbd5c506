"""What each latent does on a set of inputs: density and activation statistics, class association,
top and banded examples, the latents active on one input, nearest features by decoder cosine, a
2-D map of the decoder directions, the class-logit effect of a direction and per-token activations."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserInputError
from ..validation import as_matrix
from .metrics import DENSE_FRACTION
from .model import SparseAutoencoder

QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class FeatureStats:
    """Per-latent statistics on a set of inputs; ``codes`` is the (n x m) sparse activation matrix."""

    codes: object = field(repr=False)  # scipy.sparse.csc_matrix, float32
    density: np.ndarray = field(repr=False)
    max_act: np.ndarray = field(repr=False)
    mean_act: np.ndarray = field(repr=False)  # mean over the inputs where the latent is active
    quantiles: np.ndarray = field(repr=False)  # (m, len(QUANTILES)) of the non-zero activations
    class_mean: np.ndarray | None = field(default=None, repr=False)  # (m, classes) mean activation per class
    class_names: list | None = None

    @property
    def top_class(self) -> np.ndarray | None:
        if self.class_mean is None:
            return None
        return self.class_mean.argmax(1)

    def table(self):
        """One row per latent: density, max and mean activation, top class, dead/dense flag."""
        import pandas as pd

        m = len(self.density)
        status = np.where(self.density == 0, "dead", np.where(self.density > DENSE_FRACTION, "dense", ""))
        df = pd.DataFrame({"feature": np.arange(m), "density": self.density, "max activation": self.max_act,
                           "mean activation": self.mean_act, "status": status})
        if self.class_mean is not None:
            top = self.top_class
            names = self.class_names or [str(c) for c in range(self.class_mean.shape[1])]
            df["top class"] = [names[c] if self.density[i] > 0 else "" for i, c in enumerate(top)]
            share = self.class_mean.max(1) / np.maximum(self.class_mean.sum(1), 1e-12)
            df["top class share"] = np.where(self.density > 0, share, np.nan)
        return df


def sparse_codes(sae: SparseAutoencoder, acts, batch_size: int = 2048):
    """The SAE's activations on every row of ``acts`` as a scipy CSC matrix (n x m, float32)."""
    from scipy import sparse

    x = as_matrix(acts, "activations", dtype=np.float32, min_rows=1)
    blocks = [sparse.csr_matrix(sae.encode(x[i: i + batch_size])) for i in range(0, len(x), batch_size)]
    return sparse.vstack(blocks).tocsc().astype(np.float32)


def feature_stats(sae: SparseAutoencoder, acts, labels=None, class_names=None) -> FeatureStats:
    """Density, max, mean and quantile activations, and the mean activation per class, of every latent."""
    codes = sparse_codes(sae, acts)
    n, m = codes.shape
    nnz = np.diff(codes.indptr)
    density = nnz / n
    max_act = np.zeros(m, np.float32)
    mean_act = np.zeros(m, np.float32)
    quant = np.zeros((m, len(QUANTILES)), np.float32)
    for j in np.nonzero(nnz)[0]:
        vals = codes.data[codes.indptr[j]: codes.indptr[j + 1]]
        max_act[j], mean_act[j] = vals.max(), vals.mean()
        quant[j] = np.quantile(vals, QUANTILES)
    class_mean = None
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        n_classes = int(labels.max()) + 1 if class_names is None else len(class_names)
        onehot = np.zeros((n, n_classes))
        onehot[np.arange(n), labels] = 1.0
        counts = np.maximum(onehot.sum(0), 1.0)
        class_mean = np.asarray(codes.T @ onehot) / counts  # (m, classes)
    return FeatureStats(codes, density, max_act, mean_act, quant, class_mean,
                        list(class_names) if class_names is not None else None)


def feature_column(stats: FeatureStats, i: int) -> np.ndarray:
    """Latent ``i``'s activation on every input (dense, length n)."""
    col = np.zeros(stats.codes.shape[0], np.float32)
    lo, hi = stats.codes.indptr[i], stats.codes.indptr[i + 1]
    col[stats.codes.indices[lo:hi]] = stats.codes.data[lo:hi]
    return col


def feature_examples(stats: FeatureStats, i: int, n_top: int = 12, bands: int = 4, per_band: int = 6,
                     seed: int = 0) -> dict:
    """Top-activating inputs of latent ``i`` and a random few from each activation band (equal
    slices of (0, max]), as {"top": (rows, values), "bands": [(low, high, rows, values, count), ...]}."""
    _check_feature(stats, i)
    col = feature_column(stats, i)
    rows = np.nonzero(col > 0)[0]
    top = rows[np.argsort(-col[rows], kind="stable")][:n_top]
    out = {"top": (top, col[top]), "bands": []}
    if len(rows) == 0:
        return out
    rng = np.random.default_rng(seed)
    edges = np.linspace(0.0, float(col.max()), bands + 1)
    for b in range(bands):
        lo, hi = edges[b], edges[b + 1]
        inside = rows[(col[rows] > lo) & (col[rows] <= hi)]
        chosen = np.sort(rng.choice(inside, size=min(per_band, len(inside)), replace=False)) if len(inside) else inside
        chosen = chosen[np.argsort(-col[chosen], kind="stable")]
        out["bands"].append((float(lo), float(hi), chosen, col[chosen], int(len(inside))))
    out["bands"].reverse()  # highest band first
    return out


def active_features(stats: FeatureStats, row: int) -> tuple[np.ndarray, np.ndarray]:
    """The latents active on input ``row`` and their activations, strongest first."""
    if not 0 <= row < stats.codes.shape[0]:
        raise UserInputError(f"Input {row} does not exist; pick 0 to {stats.codes.shape[0] - 1}.")
    r = stats.codes.getrow(row).tocoo()
    order = np.argsort(-r.data, kind="stable")
    return r.col[order].astype(np.int64), r.data[order]


def _check_feature(stats_or_sae, i: int) -> None:
    m = stats_or_sae.d_sae if isinstance(stats_or_sae, SparseAutoencoder) else stats_or_sae.codes.shape[1]
    if not 0 <= int(i) < m:
        raise UserInputError(f"Feature {i} does not exist; this SAE has features 0 to {m - 1}.")


def decoder_cosines(sae: SparseAutoencoder) -> np.ndarray:
    w = sae.W_dec.detach().cpu().double().numpy()
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    return w @ w.T


def nearest_features(sae: SparseAutoencoder, i: int, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` latents whose decoder directions have the largest cosine with latent ``i``'s."""
    _check_feature(sae, i)
    w = sae.W_dec.detach().cpu().double().numpy()
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    cos = w @ w[i]
    cos[i] = -np.inf
    idx = np.argsort(-cos, kind="stable")[:n]
    return idx, cos[idx]


def decoder_map(sae: SparseAutoencoder, method: str = "umap", seed: int = 0):
    """A 2-D map of the decoder directions (rows of W_dec, unit-normalised): UMAP (cosine
    neighbourhoods) or PCA; cached in the result store by :func:`analysis.projection.project`."""
    from ..projection import project

    w = sae.W_dec.detach().cpu().numpy().astype(np.float32)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    params = {"n_neighbors": min(15, len(w) - 1)} if method == "umap" else {}
    return project(w, method, 2, seed, **params).coords


def logit_effect(sae: SparseAutoencoder, model, layer: str, data, scale=None, n_inputs: int = 32,
                 batch_features: int = 256, device=None) -> np.ndarray | None:
    """Per latent, the change in each class logit when its decoder direction (times ``scale``, a
    per-latent activation size; default its mean activation on ``data``) is added to ``layer``'s
    output, pushed through the rest of the model, averaged over ``n_inputs`` inputs and centred
    across classes (softmax ignores a common shift). None when the model has no class logits."""
    from ..device import pick

    if model.kind != "classifier":
        return None
    mods = model.hookable()
    if layer not in mods:
        raise UserInputError(f"{model.ref} has no hookable layer {layer!r}.")
    dev = pick(device)
    base = np.asarray(data.inputs[: min(n_inputs, len(data))], dtype=np.float32)
    if scale is None:
        scale = np.ones(sae.d_sae, np.float32)
    directions = sae.W_dec.detach().float() * torch.as_tensor(np.asarray(scale, np.float32))[:, None]
    state = {"delta": None}

    def hook(module, inputs, out):
        delta = state["delta"]
        if delta is None:
            return None
        if out.ndim == 2:
            return out + delta
        return out + delta.view(delta.shape[0], delta.shape[1], *([1] * (out.ndim - 2)))

    effects = []
    with model.lock:
        model.to(dev)
        handle = mods[layer].register_forward_hook(hook)
        try:
            with torch.no_grad():
                xb = torch.from_numpy(base).to(dev)
                state["delta"] = None
                clean = model.module(xb).float()  # (b, classes)
                for s in range(0, sae.d_sae, batch_features):
                    dirs = directions[s: s + batch_features].to(dev)  # (f, d)
                    rows = xb.repeat(len(dirs), 1)  # (f*b, inputs)
                    state["delta"] = dirs.repeat_interleave(len(base), 0)
                    out = model.module(rows).float().view(len(dirs), len(base), -1)
                    eff = (out - clean[None]).mean(1)
                    effects.append((eff - eff.mean(1, keepdim=True)).cpu().numpy())
        finally:
            handle.remove()
            model.to("cpu")
    return np.concatenate(effects, 0)


def token_activations(sae: SparseAutoencoder, model, layer: str, texts: list[str], feature: int) -> list:
    """For text models: latent ``feature``'s activation on every token of each text (the SAE read
    pooled activations; applied per token it shows which tokens carry the feature).
    Returns [(tokens, values), ...], special tokens dropped."""
    from ..activations import _first

    _check_feature(sae, feature)
    if getattr(model, "input_kind", "") != "text" or not hasattr(model, "tokenizer"):
        raise UserInputError("Token highlighting needs a text model.")
    mods = model.hookable()
    captured = {}

    def hook(module, inputs, out):
        captured["h"] = _first(out).detach().float()

    out = []
    with model.lock:
        model.to("cpu")
        handle = mods[layer].register_forward_hook(hook)
        try:
            with torch.no_grad():
                for text in texts:
                    enc = model.tokenizer([text], truncation=True, max_length=128, return_tensors="pt")
                    model.module(**enc)
                    h = captured["h"][0]
                    if h.ndim != 2:
                        raise UserInputError(f"Layer {layer} has no per-token output.")
                    vals = sae.encode(h)[:, feature].detach().numpy()
                    toks = model.tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
                    special = set(model.tokenizer.all_special_tokens)
                    keep = [j for j, t in enumerate(toks) if t not in special]
                    out.append(([toks[j] for j in keep], vals[keep]))
        finally:
            handle.remove()
    return out
