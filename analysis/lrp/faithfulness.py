"""Faithfulness of a relevance ordering: remove features (pixels, tokens) most relevant first and
record the explained output (pixel flipping); AOPC, the area over that curve, is larger when the
ordering finds what the output depends on. A random order is the baseline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .attribution import sentence_embedding
from .copies import unwrap, working_copy
from .dataset import dataset_relevance


@dataclass
class Faithfulness:
    """Feature-removal curves (most relevant first) and their AOPC, per method.

    fractions : fraction of features removed at each step; curves : method -> mean explained output
    at each step; aopc : method -> area over the perturbation curve, mean over steps of
    f(x) - f(x after k steps) (larger: the ordering finds what the output depends on)."""

    fractions: np.ndarray
    curves: dict
    aopc: dict
    per_sample_aopc: dict


def removal_curve(score: Callable, relevance: np.ndarray, steps: int = 16) -> np.ndarray:
    """(n, steps + 1) scores as the most relevant features are removed in ``steps`` equal chunks.

    ``score(keep)`` gets a (n, features) 0/1 mask and returns (n,) explained outputs."""
    r = np.asarray(relevance, dtype=np.float64).reshape(len(relevance), -1)
    n, d = r.shape
    order = np.argsort(-r, axis=1, kind="stable")
    counts = np.unique(np.round(np.linspace(0, d, steps + 1)).astype(int))
    keep = np.ones((n, d))
    out = []
    done = 0
    for k in counts:
        rows = np.repeat(np.arange(n), k - done)
        keep[rows, order[:, done:k].reshape(-1)] = 0
        done = k
        out.append(score(keep))
    return np.stack(out, 1)


def aopc(curve: np.ndarray) -> np.ndarray:
    """Per-row area over the perturbation curve: mean over steps of f(x_0) - f(x_k)."""
    curve = np.asarray(curve, dtype=np.float64)
    return (curve[:, :1] - curve).mean(1)


def faithfulness(model, inputs, relevances: dict, target, steps: int = 16, baseline: float = 0.0,
                 seed: int = 0, device=None) -> Faithfulness:
    """Pixel-flipping / feature removal for each relevance map in ``relevances`` (plus a random
    order): the explained output as the most relevant features are set to ``baseline``."""
    import torch

    module, wrapper = unwrap(model)
    clone = working_copy(module, None, getattr(wrapper, "lock", None))
    x = torch.as_tensor(np.asarray(inputs), dtype=next(clone.parameters()).dtype)
    codes = torch.as_tensor(np.asarray(target)).long().reshape(-1)
    if codes.numel() == 1:
        codes = codes.expand(len(x))

    def score(keep):
        k = torch.as_tensor(keep, dtype=x.dtype).reshape(x.shape)
        with torch.no_grad():
            out = clone(x * k + baseline * (1 - k))
        return out.gather(1, codes.reshape(-1, 1)).reshape(-1).double().numpy()

    rng = np.random.default_rng(seed)
    maps = dict(relevances)
    maps["random"] = rng.random((len(x), int(np.prod(x.shape[1:]))))
    return _faithfulness_from(score, maps, steps, x.shape[1:])


def _faithfulness_from(score, maps: dict, steps: int, shape) -> Faithfulness:
    curves, per_sample, fr = {}, {}, None
    for name, r in maps.items():
        c = removal_curve(score, np.asarray(r).reshape(len(r), -1), steps)
        curves[name] = c.mean(0)
        per_sample[name] = aopc(c)
        if fr is None:
            d = int(np.prod(shape))
            fr = np.unique(np.round(np.linspace(0, d, steps + 1)).astype(int)) / d
    return Faithfulness(fr, curves, {k: float(v.mean()) for k, v in per_sample.items()}, per_sample)


def text_faithfulness(model, sentences: list[str], relevances: dict, target: Callable, steps: int = 8,
                      seed: int = 0) -> Faithfulness:
    """Token removal for a text model: the most relevant tokens are dropped from attention and from
    the mean pooling ([CLS]/[SEP] are never removed), the explained output recorded at each step."""
    import torch

    module, wrapper = unwrap(model)
    clone = working_copy(module, None, getattr(wrapper, "lock", None))
    from ..models.hf import MAX_TOKENS

    enc = wrapper.tokenizer(list(sentences), padding=True, truncation=True, max_length=MAX_TOKENS,
                            return_tensors="pt")
    mask = enc["attention_mask"]
    special = torch.as_tensor([[t in wrapper.tokenizer.all_special_ids for t in row]
                               for row in enc["input_ids"].tolist()])
    removable = (mask.bool() & ~special).numpy()

    def score(keep):
        k = torch.as_tensor(keep.reshape(mask.shape) > 0)
        m = (mask.bool() & (k | special)).long()
        with torch.no_grad():
            hidden = clone(**{**enc, "attention_mask": m}).last_hidden_state
            f = target(sentence_embedding(hidden, m))
            return (f[0] if isinstance(f, tuple) else f).double().numpy()

    rng = np.random.default_rng(seed)
    maps = {}
    for name, r in relevances.items():
        r = np.asarray(r, dtype=np.float64).copy()
        r[~removable] = -np.inf  # removed last, and the removal of padding changes nothing
        maps[name] = r
    rnd = rng.random(mask.shape)
    rnd[~removable] = -np.inf
    maps["random"] = rnd
    return _faithfulness_from(score, maps, steps, mask.shape[1:])


def dataset_faithfulness(model, ds, target: str = "predicted", rule: str = "epsilon", epsilon: float = 1e-6,
                         gamma: float = 0.25, n: int = 200, steps: int = 16, seed: int = 0,
                         store=None, bias: bool = True) -> Faithfulness:
    """Pixel flipping on the first ``n`` rows of ``ds`` for LRP, gradient x input and a random order
    (the relevance comes from :func:`dataset_relevance`); cached in the store."""
    from ..store import default_store

    store = store or default_store()

    def compute() -> Faithfulness:
        kw = dict(target=target, rule=rule, epsilon=epsilon, gamma=gamma, store=store, bias=bias)
        lrp_r = dataset_relevance(model, ds, **kw)
        gxi = dataset_relevance(model, ds, method="gradient x input", **kw)
        rows = slice(0, min(n, len(ds)))
        x = np.asarray(ds.inputs, dtype=np.float32)[rows]
        return faithfulness(model, x, {"lrp": lrp_r["relevance"][rows], "gradient x input": gxi["relevance"][rows]},
                            lrp_r["target"][rows], steps=steps, seed=seed)

    parts = {"model": model.sha256, "data": ds.sha256, "target": target, "rule": rule, "epsilon": float(epsilon),
             "gamma": float(gamma), "n": n, "steps": steps, "seed": seed, "bias": bool(bias)}
    return store.cached("lrp-faithfulness", parts, compute, meta={"model": model.ref, "data": ds.name})
