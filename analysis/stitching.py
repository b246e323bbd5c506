"""Zero-shot stitching (Maiorca et al. 2023): A's encoder up to a layer -> a translator fitted on
anchors -> the rest of B, which was trained only with B's own encoder.

The head of B ("the rest of B") is, when B is a classifier whose chosen layer outputs one vector per
sample, B itself with that layer's output replaced (a forward hook; everything after the layer is
B's trained network). Otherwise (encoders such as MiniLM, or a layer whose output is a feature map)
the head is a logistic-regression probe trained on B's layer: the "two probes" setting of the
relative-representations paper, where only the probe is B's. The rows are split in two halves
(by the seed): anchors and the probe come from the first, every score from the second.

Scores: B's own accuracy through its head (upper bound), A's layer fed to B's head without
translation (zero-padded or cut to B's width; lower bound) and the stitched accuracy per
translator and anchor count.
"""
from __future__ import annotations

import numpy as np

from .errors import UserInputError
from .translation import METHODS, Translator, pad, quiet_sweep, select_anchors, small_blas


def _raw_width(model, layer: str, ds) -> int | None:
    """Values per sample that ``layer`` outputs (None if it cannot be hooked)."""
    from .activations import output_shapes

    shape = output_shapes(model, ds, [layer]).get(layer)
    return int(np.prod(shape)) if shape else None


def model_head(model, layer: str, ds, width: int):
    """B's own network after ``layer`` as a function Z (n x width) -> logits, or None when that is
    not possible (no classifier, token or spatial outputs). Works through a forward hook that
    replaces the layer's output; the shared model is used under its lock and the hook removed."""
    import torch

    if model.kind != "classifier" or model.module is None or model.input_kind == "text":
        return None
    mod = model.hookable().get(layer)
    if mod is None or _raw_width(model, layer, ds) != width:
        return None

    def head(z: np.ndarray, rows: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(np.ascontiguousarray(np.asarray(ds.inputs, dtype=np.float32)[rows]))
        replacement = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))

        def hook(_m, _i, out):
            return replacement.reshape(out.shape).to(out.dtype)

        with model.lock:
            handle = mod.register_forward_hook(hook)
            try:
                with torch.no_grad():
                    return model.module(inputs).cpu().numpy()
            finally:
                handle.remove()

    return head


def probe_head(z_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    """A logistic-regression probe trained on B's layer (standardised with the training rows)."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = z_train.mean(0), z_train.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    clf = LogisticRegression(max_iter=2000, random_state=seed).fit((z_train - mu) / sd, y_train)

    def head(z: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return clf.decision_function((z - mu) / sd)

    return head


def _accuracy(logits, labels) -> float:
    logits = np.asarray(logits)
    pred = (logits > 0).astype(int) if logits.ndim == 1 else np.argmax(logits, 1)
    return float(np.mean(pred == labels))


def split_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of the rows: (fit: anchors and probe, evaluation)."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


@small_blas
def stitching_curve(xa, xb, labels, anchor_counts, methods=METHODS, head_b=None, selection: str = "random",
                    seed: int = 0, scaling: str = "feature", progress=None) -> dict:
    """Accuracy of A's layer ``xa`` stitched into B's head through each translator, for each anchor
    count. ``head_b(z, rows)`` returns B's logits for layer values ``z`` of dataset rows ``rows``;
    None trains a logistic-regression probe on ``xb``. Returns arrays "anchors", one per method,
    "upper", "lower" and "head" ("model" or "probe")."""
    if labels is None:
        raise UserInputError("Stitching is scored by accuracy and needs labels; this dataset has none.")
    xa, xb, labels = np.asarray(xa, np.float64), np.asarray(xb, np.float64), np.asarray(labels)
    n = len(labels)
    if len(xa) != n or len(xb) != n:
        raise UserInputError("Both layers need one row per sample of the dataset.")
    fit_rows, eval_rows = split_rows(n, seed)
    kind = "model"
    if head_b is None:
        if len(np.unique(labels[fit_rows])) < 2:
            raise UserInputError("The probe needs at least two classes among the fitting rows; use more samples.")
        head_b, kind = probe_head(xb[fit_rows], labels[fit_rows], seed), "probe"
    y_eval = labels[eval_rows]
    upper = _accuracy(head_b(xb[eval_rows], eval_rows), y_eval)
    untranslated = pad(xa[eval_rows], xb.shape[1])[:, : xb.shape[1]]
    lower = _accuracy(head_b(untranslated, eval_rows), y_eval)
    counts = [int(c) for c in anchor_counts if 2 <= int(c) <= len(fit_rows)]
    out = {"anchors": np.asarray(counts, dtype=float), "upper": np.asarray(upper), "lower": np.asarray(lower),
           "head": np.asarray(kind)}
    xa_fit = xa[fit_rows]
    for method in methods:
        out[method] = np.full(len(counts), np.nan)
    for i, m in enumerate(counts):
        if progress:
            progress(i / max(len(counts), 1), f"{m} anchors ({i + 1}/{len(counts)})")
        idx = fit_rows[select_anchors(xa_fit, m, selection, labels[fit_rows], seed)]
        for method in methods:
            with quiet_sweep():
                z = Translator(method, scaling).fit(xa[idx], xb[idx]).transform(xa[eval_rows])
            out[method][i] = _accuracy(head_b(z, eval_rows), y_eval)
    if progress:
        progress(1.0, "stitching done")
    return out


def stitch_models(model_a, model_b, ds, layer_a: str, layer_b: str, anchor_counts, methods=METHODS,
                  selection: str = "random", seed: int = 0, scaling: str = "feature", pooling: str = "mean",
                  progress=None) -> dict:
    """``stitching_curve`` on two models' layers (activations from the store), with B's own network
    after ``layer_b`` as the head where possible, else a probe on B's layer."""
    from .activations import extract

    xa = extract(model_a, ds, [layer_a], pooling)[layer_a]
    xb = extract(model_b, ds, [layer_b], pooling)[layer_b]
    head = model_head(model_b, layer_b, ds, xb.shape[1])
    return stitching_curve(xa, xb, ds.labels, anchor_counts, methods, head, selection, seed, scaling, progress)
