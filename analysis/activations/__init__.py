"""Layer activations by forward hooks: one batched pass for all requested layers, pooled, cached.

``extract(model, ds, layers=None, pooling="mean")`` returns an :class:`Activations` dict,
layer name -> float32 (n x d) numpy array, rows aligned with the dataset. Each layer's array is
cached in the result store under (model sha256, data sha256, layer, pooling): a second request
is a lookup, and asking for more layers computes only the missing ones.

Pooling rules (recorded per layer in ``Activations.rules``):
- (n, d) outputs are kept as they are;
- token outputs (n, t, d) of text models: "mean" averages the valid tokens (attention mask),
  "first" takes the first token ([CLS]); "flatten" is refused (lengths vary across batches);
- spatial outputs (n, c, h, w) or (n, c, l): "mean" averages over positions, "flatten" keeps all.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import UserInputError

POOLINGS = ("mean", "first", "flatten")
CACHE_VERSION = 1


class Activations(dict):
    """dict layer -> array, plus ``rules`` (layer -> pooling rule applied) and ``cached`` layers."""

    def __init__(self, *args, rules=None, cached=(), **kw):
        super().__init__(*args, **kw)
        self.rules: dict[str, str] = dict(rules or {})
        self.cached: set[str] = set(cached)


def _first(out):
    """The tensor of a module output (transformer blocks may return tuples)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    return out


def pool(out, pooling: str, mask=None, tokens: bool = False):
    """Pool one batch of a layer's output to (b, d); returns (tensor, rule description)."""
    out = out.float()
    if out.ndim == 2:
        return out, "as is"
    if out.ndim == 1:
        return out[:, None], "as is"
    if tokens and out.ndim == 3:
        if pooling == "mean":
            if mask is None:
                return out.mean(1), "mean over tokens"
            m = mask.to(out.dtype).unsqueeze(-1)
            return (out * m).sum(1) / m.sum(1).clamp_min(1.0), "mean over valid tokens (attention mask)"
        if pooling == "first":
            return out[:, 0], "first token"
        raise UserInputError("Pooling 'flatten' is not defined for token outputs: sentences have different "
                             "lengths. Use 'mean' or 'first'.")
    if pooling == "mean":
        return out.flatten(2).mean(-1), "spatial mean"
    if pooling == "flatten":
        return out.flatten(1), "flatten"
    raise UserInputError(f"Pooling 'first' applies to token outputs only; this layer outputs shape "
                         f"{tuple(out.shape[1:])}. Use 'mean' (spatial mean) or 'flatten'.")


def cache_key(model, ds, layer: str, pooling: str) -> str:
    from .store import make_key

    return make_key("activations", model=model.sha256, data=ds.sha256, layer=layer, pooling=pooling,
                    v=CACHE_VERSION)


def is_cached(model, ds, layer: str, pooling: str = "mean", store=None) -> bool:
    """Whether ``extract`` would read this layer from the store (or from an embeddings file) rather
    than run the model: estimates count forward passes only for what is missing."""
    from .store import default_store

    if getattr(model, "kind", "") == "embeddings":
        return True
    return cache_key(model, ds, layer, pooling) in (store or default_store())


def extract(model, ds, layers: list[str] | None = None, pooling: str = "mean", device=None,
            progress: Callable[[float, str], None] | None = None, batch_size: int = 128,
            store=None, use_cache: bool = True) -> Activations:
    """Activations of ``layers`` (default: all of ``model.layers``) for every row of ``ds``."""
    from . import models as models_mod
    from .device import pick
    from .store import default_store

    if isinstance(model, str):
        model = models_mod.load(model)
    if pooling not in POOLINGS:
        raise UserInputError(f"Unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}.")
    layers = list(model.layers if layers is None else layers)
    if not layers:
        raise UserInputError("No layers selected.")
    unknown = [l for l in layers if l not in model.layers and l not in model.hookable()]
    if unknown:
        raise UserInputError(f"{model.ref} has no layer {unknown[0]!r}. Layers: {', '.join(model.layers)}.")
    model.check_data(ds)
    if len(ds) == 0:
        raise UserInputError("The dataset is empty.")

    if isinstance(model, models_mod.EmbeddingsModel):
        arrays = model.layer_arrays(ds, layers)
        if progress:
            progress(1.0, "embeddings loaded")
        return Activations(arrays, rules={l: "precomputed" for l in layers})

    store = store or default_store()
    result, rules, cached = {}, {}, set()
    if use_cache:
        for layer in layers:
            hit = store.get(cache_key(model, ds, layer, pooling))
            if hit is not None:
                result[layer] = hit["x"]
                rules[layer] = str(store.meta(cache_key(model, ds, layer, pooling)).get("rule", ""))
                cached.add(layer)
    missing = [l for l in layers if l not in result]
    if missing:
        fresh, fresh_rules = _forward(model, ds, missing, pooling, pick(device), progress, batch_size)
        for layer in missing:
            if use_cache:
                store.put(cache_key(model, ds, layer, pooling), {"x": fresh[layer]},
                          {"model": model.ref, "data": ds.name, "layer": layer, "pooling": pooling,
                           "rule": fresh_rules[layer], "n": len(ds)}, kind="activations")
        result.update(fresh)
        rules.update(fresh_rules)
    elif progress:
        progress(1.0, "loaded from the result store")
    return Activations({l: result[l] for l in layers}, rules=rules, cached=cached)


def _forward(model, ds, layers, pooling, device, progress, batch_size):
    collected: dict[str, list] = {l: [] for l in layers}
    rules: dict[str, str] = {}
    for rows, batch, batch_rules in iter_batches(model, ds, layers, pooling, batch_size, device, progress):
        for l in layers:
            collected[l].append(batch[l])
        rules.update(batch_rules)
    return {l: np.concatenate(collected[l], 0) for l in layers}, rules


def iter_batches(model, ds, layers, pooling: str = "mean", batch_size: int = 128, device=None, progress=None):
    """Yield (rows slice, {layer: pooled float32 batch}, {layer: rule}) one batch at a time, so a caller
    can reduce activations as they are produced (memory independent of the dataset size)."""
    import torch

    from .device import pick

    if pooling not in POOLINGS:
        raise UserInputError(f"Unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}.")
    device = pick(device) if not hasattr(device, "type") else device
    tokens = model.input_kind == "text"
    scripted = getattr(model, "scripted", False)
    if scripted and list(layers) != ["output"]:
        raise UserInputError(f"{model.ref} is TorchScript: its submodules cannot take hooks, so only "
                             "'output' is available.")
    state: dict = {"mask": None, "out": {}, "rules": {}}

    def hook_for(name):
        def hook(module, inputs, out):  # returns None, so the module's output is untouched
            pooled, rule = pool(_first(out).detach(), pooling, state["mask"], tokens)
            state["out"][name] = pooled.cpu().numpy().astype(np.float32, copy=False)
            state["rules"][name] = rule
        return hook

    mods = model.hookable()
    n = len(ds)
    # The lock, the hooks and the device move last for the whole pass; grad mode is switched off
    # per batch only, never across a yield (it is thread-local and would leak into the caller).
    with model.lock:  # the model object may be shared between sessions
        model.to(device)
        handles = [] if scripted else [mods[l].register_forward_hook(hook_for(l)) for l in layers]
        try:
            for batch in model.batches(ds, batch_size, device):
                state["mask"], state["out"] = batch.mask, {}
                with torch.no_grad():
                    out = model.run(batch)
                if scripted:
                    hook_for("output")(None, None, out)
                if progress:
                    progress(batch.rows.stop / n, f"{model.name}: {batch.rows.stop}/{n} samples")
                yield batch.rows, dict(state["out"]), dict(state["rules"])
        finally:
            for h in handles:
                h.remove()
            model.to("cpu")


def output_shapes(model, ds, layers: list[str] | None = None, device=None) -> dict[str, tuple]:
    """Raw output shape (without the batch axis) of each layer on the first two rows of ``ds``."""
    import torch

    from .device import pick

    layers = list(model.layers if layers is None else layers)
    if getattr(model, "scripted", False) or not model.hookable():
        if hasattr(model, "arrays"):
            return {l: tuple(model.arrays[l].shape[1:]) for l in layers}
        shapes = {}
        small = _head(ds, 2)
        with model.lock, torch.no_grad():
            for batch in model.batches(small, 2, pick(device)):
                shapes["output"] = tuple(model.run(batch).shape[1:])
        return shapes
    shapes: dict[str, tuple] = {}
    mods = model.hookable()

    def record(name):
        def hook(module, inputs, out):  # returns None: a hook's return value would replace the output
            shapes.setdefault(name, tuple(_first(out).shape[1:]))
        return hook

    handles = [mods[l].register_forward_hook(record(l)) for l in layers]
    small = _head(ds, 2)
    try:
        with model.lock, torch.no_grad():
            for batch in model.batches(small, 2, "cpu"):
                model.run(batch)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _head(ds, k: int):
    import copy

    small = copy.copy(ds)
    small.inputs = ds.inputs[:k]
    small.indices = ds.indices[:k]
    small.labels = None if ds.labels is None else ds.labels[:k]
    small._sha = None
    return small


def pooled_dims(model, ds, layers: list[str], pooling: str = "mean") -> list[int]:
    """Width of each layer after pooling (as :func:`pool` would produce), without a full pass."""
    tokens = model.input_kind == "text"
    dims = []
    for shape in output_shapes(model, ds, layers).values():
        if len(shape) <= 1:
            dims.append(int(shape[0]) if shape else 1)
        elif tokens and len(shape) == 2:
            dims.append(int(shape[-1]))
        elif pooling == "flatten":
            dims.append(int(np.prod(shape)))
        else:
            dims.append(int(shape[0]))
    return dims
