"""How well a model does on a dataset: accuracy for classifiers, reconstruction error for
autoencoders, and a leave-one-out k-NN probe on the last layer for encoders and embeddings
(which have no classification head of their own)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UserInputError

PROBE_K = 5


@dataclass
class Evaluation:
    metric: str  # "accuracy", "mse" or "knn_accuracy"
    value: float | None  # None when the data has no labels and the metric needs them
    predictions: np.ndarray | None  # class codes per row (classifier / probe)
    reconstructions: np.ndarray | None  # autoencoder outputs, (n, d)
    per_row_error: np.ndarray | None  # autoencoder squared error per row
    explanation: str


def knn_predictions(x: np.ndarray, labels: np.ndarray, k: int = PROBE_K) -> np.ndarray:
    """Leave-one-out k-NN (cosine) majority vote; ties go to the nearest neighbour's label."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(0)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(x) - 1)
    if k < 1:
        raise UserInputError("A k-NN probe needs at least 2 samples.")
    nn_idx = np.argsort(-sim, axis=1)[:, :k]
    votes = labels[nn_idx]
    n_classes = int(labels.max()) + 1
    counts = np.zeros((len(x), n_classes))
    for j in range(k):  # earlier (nearer) neighbours weigh a little more, to break ties
        np.add.at(counts, (np.arange(len(x)), votes[:, j]), 1.0 + 1e-6 * (k - j))
    return counts.argmax(1)


def evaluate(model, ds, device=None) -> Evaluation:
    from .activations import extract

    model.check_data(ds)
    labels = ds.labels
    if model.kind == "classifier":
        out = extract(model, ds, layers=[model.layers[-1]], device=device)[model.layers[-1]]
        pred = out.argmax(1)
        n_classes = out.shape[1]
        if labels is None:
            return Evaluation("accuracy", None, pred, None, None, "no labels in this dataset")
        if ds.label_names and len(ds.label_names) != n_classes:
            return Evaluation("accuracy", None, pred, None, None,
                              f"the model has {n_classes} outputs but the data has {len(ds.label_names)} classes")
        return Evaluation("accuracy", float((pred == labels).mean()), pred, None, None,
                          "fraction of samples whose arg-max output equals the label")
    if model.kind == "autoencoder":
        out = extract(model, ds, layers=[model.layers[-1]], pooling="flatten", device=device)[model.layers[-1]]
        x = np.asarray(ds.inputs, dtype=np.float64)
        err = ((out.astype(np.float64) - x) ** 2).mean(1)
        return Evaluation("mse", float(err.mean()), None, out, err, "mean squared reconstruction error per pixel")
    last = model.layers[-1]
    x = extract(model, ds, layers=[last], device=device)[last]
    if labels is None or len(ds) < 3:
        return Evaluation("knn_accuracy", None, None, None, None, "no labels: the k-NN probe needs labels")
    pred = knn_predictions(x, labels)
    return Evaluation("knn_accuracy", float((pred == labels).mean()), pred, None, None,
                      f"leave-one-out {PROBE_K}-NN (cosine) on layer {last}: this model has no classifier head")
