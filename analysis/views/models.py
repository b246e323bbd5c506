"""Models view: each model's summary, layer table and score on the chosen data (accuracy,
reconstruction error or a k-NN probe), with its predictions or reconstructions for the gallery."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..jobs import Cost
from .base import Section

PAGE, TITLE, VERSION = "models", "Models", 1
PARAMS = ()


@dataclass
class ModelCard:
    ref: str
    kind: str
    architecture: str
    parameters: int
    sha256: str
    facts: list
    hookable: bool  # False: only the output can be analysed (TorchScript, embeddings)
    metric: str
    value: float | None
    explanation: str
    predictions: np.ndarray | None
    reconstructions: np.ndarray | None
    per_row_error: np.ndarray | None
    layers: object  # DataFrame: layer, type, output shape, parameters


@dataclass
class Result:
    model_a: ModelCard | None = None
    model_b: ModelCard | None = None


def _card(ctx, model) -> ModelCard:
    from ..evaluate import evaluate
    from ..models import layer_table

    model.check_data(ctx.ds)
    ev = evaluate(model, ctx.ds, device=ctx.device)
    facts = [f"{name} {model.info[k]}" for k, name in (("seed", "seed"), ("epochs", "epochs"),
                                                       ("train_samples", "training samples"))
             if model.info.get(k) is not None]
    if model.info.get("note"):
        facts.append(str(model.info["note"]))
    return ModelCard(model.ref, model.kind, model.architecture, model.num_parameters(), model.sha256, facts,
                     bool(model.hookable()) or model.kind == "embeddings", ev.metric, ev.value, ev.explanation,
                     ev.predictions, ev.reconstructions, ev.per_row_error, layer_table(model, ctx.ds))


def _cost(ctx, model) -> Cost:
    from ..activations import is_cached

    last = model.layers[-1] if model.layers else ""
    cached = is_cached(model, ctx.ds, last, "flatten" if model.kind == "autoencoder" else "mean")
    per_row = {"text": 4e-3}.get(ctx.ds.kind, 2e-5)
    return Cost(0.2 + (0 if cached else len(ctx.ds) * per_row), 0)


SECTIONS = (
    Section("model_a", lambda ctx, progress: _card(ctx, ctx.model_a), (), "ad",
            lambda ctx: _cost(ctx, ctx.model_a), title="model A"),
    Section("model_b", lambda ctx, progress: _card(ctx, ctx.model_b), (), "bd",
            lambda ctx: _cost(ctx, ctx.model_b), title="model B"),
)


def summary(result) -> dict:
    return {f"{slot} {card.metric}": card.value for slot, card in (("A", result.model_a), ("B", result.model_b))
            if card is not None}
