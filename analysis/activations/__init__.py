"""Layer activations by forward hooks, pooled, kept in a chunked on-disk cache.

``extract(model, ds, layers=None, pooling="mean")`` returns an :class:`Activations` dict,
layer name -> float32 (n x d) numpy array, rows aligned with the dataset: what every analysis of
data that fits in memory reads. Behind it, :func:`extract_chunked` writes each layer to the
chunked Zarr cache (:mod:`analysis.activations.cache`) keyed by (model sha256, data sha256, layer,
pooling, storage dtype): a second request is a read, asking for more layers computes only the
missing ones, and an extraction that was killed resumes from its last complete chunk.

For data that does not fit in memory, :func:`extract_chunked` returns the caches themselves
(:class:`~analysis.activations.cache.ActivationCache`): streaming estimators read them chunk by
chunk (``iter_chunks``), others read a subsample (``take``); memory does not grow with n.

Pooling rules (:mod:`analysis.activations.pooling`, recorded per layer in ``Activations.rules``):
"mean", "first", "last" and "flatten" give one row per sample; "tokens" one row per valid token
(``Activations.sample_of_row`` then says which sample each row belongs to).
"""
from __future__ import annotations

import contextlib

from typing import Callable

import numpy as np

from ..errors import UserInputError
from .cache import STORAGE_DTYPES, ActivationCache, check_dtype, create_cache, open_cache, write_chunk
from .hooks import Step, iter_batches, output_shapes, pooled_dims, rows_of, token_outputs
from .pooling import ALL_POOLINGS, POOLINGS, TOKENS, first_tensor, pool

__all__ = ["extract", "extract_chunked", "iter_batches", "Activations", "ActivationCache", "POOLINGS",
           "ALL_POOLINGS", "STORAGE_DTYPES", "cache_key", "is_cached", "output_shapes", "pooled_dims", "pool",
           "rows_of", "write_chunk", "write_layer", "Step"]

CACHE_VERSION = 2
_first = first_tensor  # older imports (analysis.sae) use the private name


class Activations(dict):
    """dict layer -> array, plus ``rules`` (layer -> pooling rule applied), ``cached`` layers (read
    from the store, not computed) and, for "tokens" pooling, ``sample_of_row`` (layer -> the
    dataset row of each row)."""

    def __init__(self, *args, rules=None, cached=(), sample_of_row=None, **kw):
        super().__init__(*args, **kw)
        self.rules: dict[str, str] = dict(rules or {})
        self.cached: set[str] = set(cached)
        self.sample_of_row: dict[str, np.ndarray] = dict(sample_of_row or {})


def cache_key(model, ds, layer: str, pooling: str, dtype: str = "float32") -> str:
    from ..store import make_key

    return make_key("activations", model=model.sha256, data=ds.sha256, layer=layer, pooling=pooling, dtype=dtype,
                    v=CACHE_VERSION)


def is_cached(model, ds, layer: str, pooling: str = "mean", store=None, dtype: str = "float32") -> bool:
    """Whether ``extract`` would read this layer from the cache (or from an embeddings file) rather
    than run the model: estimates count forward passes only for what is missing."""
    from ..store import default_store

    if getattr(model, "kind", "") == "embeddings":
        return True
    cache = open_cache(store or default_store(), cache_key(model, ds, layer, pooling, dtype))
    return cache is not None and cache.complete


def _checked(model, ds, layers, pooling):
    from .. import models as models_mod
    from .pooling import check

    if isinstance(model, str):
        model = models_mod.load(model)
    check(pooling)
    layers = list(model.layers if layers is None else layers)
    if not layers:
        raise UserInputError("No layers selected.")
    unknown = [l for l in layers if l not in model.layers and l not in model.hookable()]
    if unknown:
        raise UserInputError(f"{model.ref} has no layer {unknown[0]!r}. Layers: {', '.join(model.layers)}.")
    model.check_data(ds)
    if len(ds) == 0:
        raise UserInputError("The dataset is empty.")
    return model, layers


def extract(model, ds, layers: list[str] | None = None, pooling: str = "mean", device=None,
            progress: Callable[[float, str], None] | None = None, batch_size: int = 128,
            store=None, use_cache: bool = True, dtype: str = "float32") -> Activations:
    """Activations of ``layers`` (default: all of ``model.layers``) for every row of ``ds``, in memory.

    With ``use_cache`` (the default) they go through the on-disk cache (written if missing, read
    if there); ``dtype`` is the storage dtype there (float32, float16 or bfloat16). Data whose
    activations would not fit in memory is refused here: use :func:`extract_chunked`."""
    from .. import models as models_mod

    model, layers = _checked(model, ds, layers, pooling)
    if isinstance(model, models_mod.EmbeddingsModel):
        arrays = model.layer_arrays(ds, layers)
        if progress:
            progress(1.0, "embeddings loaded")
        return Activations(arrays, rules={l: "precomputed" for l in layers})
    if not use_cache:
        arrays, rules, owners = _forward(model, ds, layers, pooling, device, progress, batch_size)
        return Activations(arrays, rules=rules, sample_of_row=owners)
    before = {l for l in layers if is_cached(model, ds, l, pooling, store, dtype)}
    caches = extract_chunked(model, ds, layers, pooling, device, progress, batch_size, store, dtype)
    _check_fits_in_memory(caches, model)
    if not (set(layers) - before) and progress:
        progress(1.0, "loaded from the activation cache")
    owners = {l: c.sample_of_row() for l, c in caches.items()} if pooling == TOKENS else {}
    return Activations({l: caches[l].read() for l in layers}, rules={l: caches[l].record.rule for l in layers},
                       cached=before, sample_of_row=owners)


def _check_fits_in_memory(caches: dict, model) -> None:
    from ..resources import check_fits

    need = sum(c.nbytes for c in caches.values())
    check_fits(need, f"Holding the activations of {len(caches)} layer(s) of {model.ref} in memory",
               "They are in the on-disk activation cache: analyses that stream (minibatch CKA, incremental PCA, "
               "SAE training) read them chunk by chunk; choose fewer samples or fewer layers for the others.")


def _forward(model, ds, layers, pooling, device, progress, batch_size):
    """Every batch collected in memory (no cache): arrays, rules and, for tokens, each row's sample."""
    collected: dict[str, list] = {l: [] for l in layers}
    owners: list = []
    rules: dict[str, str] = {}
    for step in iter_batches(model, ds, layers, pooling, batch_size, device, progress):
        rows, batch, batch_rules = step
        for l in layers:
            collected[l].append(batch[l])
        if step.counts is not None:
            owners.append(np.repeat(np.arange(rows.start, rows.stop), step.counts))
        rules.update(batch_rules)
    arrays = {l: np.concatenate(collected[l], 0) for l in layers}
    return arrays, rules, ({l: np.concatenate(owners) for l in layers} if owners else {})


def extract_chunked(model, ds, layers: list[str] | None = None, pooling: str = "mean", device=None,
                    progress: Callable[[float, str], None] | None = None, batch_size: int = 128,
                    store=None, dtype: str = "float32") -> dict[str, ActivationCache]:
    """Write the activations of ``layers`` to the on-disk cache (only chunks not already there) and
    return {layer: ActivationCache}. Memory is a chunk per layer and a batch, whatever n is."""
    from ..store import default_store
    from .writer import fill

    model, layers = _checked(model, ds, layers, pooling)
    check_dtype(dtype)
    store = store or default_store()
    keys = {l: cache_key(model, ds, l, pooling, dtype) for l in layers}
    caches = {l: open_cache(store, k) for l, k in keys.items()}
    todo = [l for l in layers if caches[l] is None or not caches[l].complete]
    if todo:
        with _writer_lock(store, [keys[l] for l in todo]):
            # another process may have written them while this one waited: look again
            caches.update({l: open_cache(store, keys[l]) for l in todo})
            todo = [l for l in todo if caches[l] is None or not caches[l].complete]
            if todo:
                meta = {"model": model.ref, "data": ds.name, "pooling": pooling, "n": len(ds)}
                caches.update(fill(model, ds, {l: keys[l] for l in todo}, {l: caches[l] for l in todo}, pooling,
                                   dtype, batch_size, device, progress, store, meta))
    return {l: caches[l] for l in layers}


@contextlib.contextmanager
def _writer_lock(store, keys: list[str]):
    """One writer per cache across processes (two app workers, a CLI run beside the server): a
    second writer would start the cache again under the first one's readers, who then read
    unwritten (zero) rows. An exclusive flock per key, taken in key order (no deadlock), on a
    local store; a remote (fsspec) store has no such lock, and concurrent writers there write the
    same bytes to the same chunks."""
    from ..store.files import LocalFiles

    if not isinstance(store.files, LocalFiles):
        yield
        return
    import fcntl

    handles = []
    try:
        for key in sorted(set(keys)):
            path = store.files.location(ActivationCache.rel(key, ".lock"))
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
            handles.append(handle)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        for handle in reversed(handles):
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def write_layer(store, model, ds, layer: str, pooling: str, x: np.ndarray, rule: str,
                dtype: str = "float32", batch_size: int = 128) -> ActivationCache:
    """Keep one layer's whole (n x d) activations in the cache, through :func:`write_chunk` (for
    callers that computed them elsewhere, e.g. on a Ray cluster)."""
    x = np.asarray(x, dtype=np.float32)
    cache = create_cache(store, cache_key(model, ds, layer, pooling, dtype), len(x), x.shape[1], dtype, batch_size,
                         rule, meta={"model": model.ref, "data": ds.name, "pooling": pooling, "n": len(ds)})
    for i in range(cache.record.chunks):
        write_chunk(cache, i, x[cache.record.chunk_slice(i)])
    return cache
