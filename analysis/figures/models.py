"""Tables of the Models view (its page draws images and metrics; the CLI writes these)."""
from __future__ import annotations

import pandas as pd


def all_figures(result, spec, ctx) -> dict:
    return {}


def all_tables(result) -> dict:
    out, scores = {}, []
    for slot, card in (("A", result.model_a), ("B", result.model_b)):
        if card is None:
            continue
        out[f"layers_{slot}"] = card.layers
        scores.append({"model": slot, "ref": card.ref, "metric": card.metric, "value": card.value})
    out["scores"] = pd.DataFrame(scores)
    return out
