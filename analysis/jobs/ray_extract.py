"""Large extractions on a Ray cluster: a batch-inference job of Ray Data.

The rows of a dataset flow through ``map_batches`` into a pool of actors; each actor loads the model
and the data once (on a GPU of its own when the cluster has GPUs) and returns the pooled
activations of its row batches. This process gathers them by row and writes each layer with
:func:`analysis.activations.write_layer`, under the keys :func:`analysis.activations.extract`
reads, so every view then finds them in the store. Layers already there are not extracted again.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import ray

from .ray_backend import apply_settings, settings

BATCH_ROWS = 256


class Extractor:
    """One Ray Data actor: holds the model and the data; turns a batch of row ids into activations."""

    def __init__(self, model_ref: str, data: tuple, layers: list[str], pooling: str, values: dict, device=None):
        apply_settings(values)
        from ..views.inputs import load_dataset, load_model

        self.model, self.ds = load_model(model_ref), load_dataset(*data)
        self.layers, self.pooling, self.device = list(layers), pooling, device

    def __call__(self, batch: dict) -> dict:
        from ..activations import iter_batches, rows_of

        rows = np.asarray(batch["id"], dtype=np.int64)
        out = {"row": rows}
        part = rows_of(self.ds, rows)
        for _, acts, rules in iter_batches(self.model, part, self.layers, self.pooling, len(rows), self.device,
                                           keep_on_device=True):  # this actor owns its model: it stays on the GPU
            for i, layer in enumerate(self.layers):  # column names: layer names may hold dots
                out[f"x{i}"] = acts[layer]
                out[f"rule{i}"] = np.full(len(rows), rules[layer])
        return out


def extract(model_ref: str, data: tuple, layers: list[str] | None = None, pooling: str = "mean",
            batch_rows: int = BATCH_ROWS, actors: int | None = None, store=None,
            progress: Callable[[float, str], None] | None = None):
    """Activations of ``layers`` of ``model_ref`` on ``data`` = (name, n, seed, split), extracted on
    the cluster this process is connected to; returns what :func:`analysis.activations.extract`
    returns (read back from the store). ``actors`` defaults to one per GPU, else one."""
    from ..activations import extract as read
    from ..activations import is_cached, write_layer
    from ..store import default_store
    from ..views.inputs import load_dataset, load_model

    model, ds = load_model(model_ref), load_dataset(*data)
    layers = list(model.layers if layers is None else layers)
    store = store or default_store()
    missing = [l for l in layers if not is_cached(model, ds, l, pooling, store)]
    if missing:
        model.check_data(ds)
        arrays, rules = _run(model_ref, data, missing, pooling, len(ds), batch_rows, actors, progress)
        for layer in missing:
            write_layer(store, model, ds, layer, pooling, arrays[layer], rules[layer])
    return read(model, ds, layers, pooling, store=store)


def _run(model_ref, data, layers, pooling, n, batch_rows, actors, progress):
    gpus = int(ray.cluster_resources().get("GPU", 0))
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no execution plans on the user's terminal
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    mapped = ray.data.range(n).map_batches(
        Extractor, batch_size=batch_rows, batch_format="numpy",
        fn_constructor_kwargs=dict(model_ref=model_ref, data=tuple(data), layers=list(layers), pooling=pooling,
                                   values=settings()),
        compute=ray.data.ActorPoolStrategy(size=actors or max(gpus, 1)), num_gpus=1 if gpus else 0)
    rows, parts, rules = [], {l: [] for l in layers}, {}
    for batch in mapped.iter_batches(batch_format="numpy", batch_size=None):
        rows.append(batch["row"])
        for i, layer in enumerate(layers):
            parts[layer].append(np.asarray(batch[f"x{i}"], dtype=np.float32))
            rules[layer] = str(batch[f"rule{i}"][0])
        if progress:
            done = sum(len(r) for r in rows)
            progress(done / n, f"{model_ref}: {done}/{n} samples on the cluster")
    order = np.concatenate(rows)
    if not np.array_equal(np.sort(order), np.arange(n)):
        raise RuntimeError(f"the cluster returned {len(order)} rows for {n}: some were lost or repeated")
    place = np.argsort(order, kind="stable")  # batches arrive in any order: put the rows back
    return {l: np.concatenate(parts[l])[place] for l in layers}, rules
