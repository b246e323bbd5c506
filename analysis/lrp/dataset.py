"""Relevance of every row of an image or vector dataset for a classifier, in batches, cached in the
result store (the Attributions view's agreement, conservation and faithfulness read it)."""
from __future__ import annotations

import numpy as np

from ..errors import UserInputError
from .attribution import attribute, gradient_x_input
from .composites import rule_set


def dataset_relevance(model, ds, target: str = "predicted", rule: str = "epsilon", epsilon: float = 1e-6,
                      gamma: float = 0.25, method: str = "lrp", batch_size: int = 256, store=None,
                      progress=None, bias: bool = True) -> dict:
    """Input relevance of every row of an image/vector dataset for a classifier, cached in the store.
    ``target``: "predicted", "true" or a class index as a string ("3"). ``method``: "lrp" or
    "gradient x input". Returns {"relevance" (n, features), "output" (n,), "target" (n,)}."""
    from ..store import default_store

    if model.kind != "classifier":
        raise UserInputError(f"{model.ref} is a {model.kind}: LRP on images explains a class score, so pick a "
                             "classifier (zoo:mlp-*, zoo:cnn-*).")
    model.check_data(ds)
    rs = rule_set(rule, None, epsilon, gamma, bias=bias)
    tgt = int(target) if target not in ("predicted", "true") else target

    def compute() -> dict:
        x = np.asarray(ds.inputs, dtype=np.float32)
        parts = {"relevance": [], "output": [], "target": []}
        for i in range(0, len(x), batch_size):
            sl = slice(i, i + batch_size)
            lab = None if ds.labels is None else ds.labels[sl]
            if method == "lrp":
                a = attribute(model, x[sl], tgt, rule=rule, epsilon=epsilon, gamma=gamma, labels=lab, bias=bias)
            else:
                a = gradient_x_input(model, x[sl], tgt, labels=lab)
            parts["relevance"].append(a.input_relevance.astype(np.float32))
            parts["output"].append(a.output)
            parts["target"].append(a.target)
            if progress:
                done = min(len(x), i + batch_size)
                progress(min(1.0, done / len(x)), f"{model.name}: relevance of {done}/{len(x)} samples")
        return {k: np.concatenate(v) for k, v in parts.items()}

    return (store or default_store()).cached(KIND, relevance_parts(model, ds, target, rs, method), compute,
                                             meta={"model": model.ref, "data": ds.name, "rule": rs.name})


KIND = "lrp-dataset"


def relevance_parts(model, ds, target: str, rs, method: str = "lrp") -> dict:
    """What a dataset's relevance depends on (its store key's parts)."""
    parts = {"model": model.sha256, "data": ds.sha256, "target": target, "method": method}
    if method == "lrp":  # gradient x input has no rules: one entry serves every rule
        parts.update(rule=rs.name, epsilon=rs.epsilon, gamma=rs.gamma, bias=rs.bias)
    elif method != "gradient x input":
        raise UserInputError(f"Unknown method {method!r}: use 'lrp' or 'gradient x input'.")
    return parts


def is_stored(model, ds, target: str = "predicted", rs=None, method: str = "lrp", store=None) -> bool:
    """Whether :func:`dataset_relevance` would read this relevance from the store (for estimates)."""
    from ..store import default_store, digest

    return digest(KIND, relevance_parts(model, ds, target, rs, method)) in (store or default_store())
