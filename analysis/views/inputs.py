"""Loaded models and datasets, shared by everything in one process (the app's sessions, a worker's
jobs): a small LRU keyed by the reference. A loaded model is shared, so it is never mutated (its
lock guards hooks and forward passes)."""
from __future__ import annotations

import threading
from collections import OrderedDict

MAX_MODELS, MAX_DATASETS = 12, 32
_LOCK = threading.Lock()
_MODELS: OrderedDict = OrderedDict()
_DATASETS: OrderedDict = OrderedDict()
_LOADING: dict = {}


def _get(cache: OrderedDict, limit: int, key, load):
    with _LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        gate = _LOADING.setdefault(key, threading.Lock())
    with gate:  # one load per key at a time: concurrent sessions wait for the first
        with _LOCK:
            if key in cache:
                return cache[key]
        value = load()
        with _LOCK:
            cache[key] = value
            while len(cache) > limit:
                cache.popitem(last=False)
            _LOADING.pop(key, None)
        return value


def load_model(ref: str):
    from .. import models, settings

    # Views serve the web app: its settings apply (the CLI turns local paths and the hub on for itself).
    return _get(_MODELS, MAX_MODELS, ref, lambda: models.load(ref, allow_local=settings.local_paths_allowed(),
                                                              allow_hub=settings.hub_allowed(default=False)))


def model_hash(ref: str) -> str:
    """A model's content hash (what store keys use), without loading it where that is known: a zoo
    checkpoint's is in the manifest, which :func:`analysis.models.torch_models.load_zoo` checks the
    file against. So a page whose results are stored draws them without importing torch."""
    with _LOCK:
        if ref in _MODELS:
            return _MODELS[ref].sha256
    if ref.startswith("zoo:"):
        from ..zoo_manifest import zoo_entry

        return zoo_entry(ref[4:])["sha256"]
    return load_model(ref).sha256


def load_dataset(name: str, n: int | None, seed: int, split: str):
    from .. import data, settings

    # the web app's rules for folders and hub ids, as for models (a link must not read server folders)
    return _get(_DATASETS, MAX_DATASETS, (name, n, seed, split),
                lambda: data.load(name, n=n, seed=seed, split=split, allow_local=settings.local_paths_allowed(),
                                  allow_hub=settings.hub_allowed(default=False)))


def clear() -> None:
    with _LOCK:
        _MODELS.clear()
        _DATASETS.clear()
