"""SAEs trained on a model's layer, kept in the result store: trained once per (model, data, layer,
pooling, hyper-parameters), through the store's one caching mechanism (``Store.cached``), then read
back by anyone who asks for the same SAE (the page, the CLI, a notebook)."""
from __future__ import annotations

from .metrics import evaluate
from .model import SAEState, SparseAutoencoder
from .training import normalise_params, train_sae

KIND = "sae"  # the store's kind for trained SAEs (listed by trained_list)
# Bumped whenever training changes what a run with the same parameters produces, so a store never
# hands back an SAE the current trainer would not have made (2: the sparse TopK step, the
# weight-normalised decoder, encoder at 0.3 x the decoder's transpose, AuxK coefficient 1).
TRAINER = 2


def _parts(model, data, layer: str, pooling: str, params: dict) -> dict:
    return _parts_of(model.sha256, data.sha256, layer, pooling, params)


def _parts_of(model_sha: str, data_sha: str, layer: str, pooling: str, params: dict) -> dict:
    return {"model": model_sha, "data": data_sha, "layer": layer, "pooling": pooling, "params": params,
            "trainer": TRAINER}


def store_key(model_sha: str, data_sha: str, layer: str, pooling: str, params: dict) -> str:
    """The store key of a trained SAE (what :func:`trained_sae` reads and writes), from content hashes."""
    from ..store import digest

    return digest(KIND, _parts_of(model_sha, data_sha, layer, pooling, normalise_params(**params)))


def is_trained(model, data, layer: str, pooling: str = "mean", store=None, **params) -> bool:
    """Whether the store holds this SAE (without reading its weights): estimates ask this."""
    from ..store import default_store, digest

    store = store or default_store()
    return digest(KIND, _parts(model, data, layer, pooling, normalise_params(**params))) in store


def streams(n: int) -> bool:
    """Whether an SAE on ``n`` rows trains from the on-disk activation cache (read a few chunks at
    a time) rather than from an array in memory: above ``analysis.streaming.IN_MEMORY_LIMIT`` rows."""
    from ..streaming import IN_MEMORY_LIMIT

    return int(n) > IN_MEMORY_LIMIT


def trained_sae(model, data, layer: str, pooling: str = "mean", store=None, use_cache: bool = True, device=None,
                progress=None, on_log=None, only_cached: bool = False, stream: bool | None = None,
                **params) -> SparseAutoencoder | None:
    """The SAE of ``layer`` of ``model`` on ``data`` with these hyper-parameters, from the result
    store if it was trained before (keyed by model and data hashes, layer, pooling and the
    hyper-parameters the kind uses), else trained, evaluated and stored. ``only_cached=True``
    returns None on a miss. ``sae.cached`` says whether it came from the store. ``stream``
    (default: :func:`streams` of the data's size) trains and evaluates from the on-disk activation
    cache chunk by chunk, so memory does not grow with the number of rows; the SAE is the same
    kind of SAE either way (only the shuffle differs), so the store key does not say which."""
    from ..activations import extract, extract_chunked
    from ..store import default_store

    params = normalise_params(**params)
    store = store or default_store()
    parts = _parts(model, data, layer, pooling, params)
    if use_cache:
        hit = store.lookup(KIND, parts, check=lambda s: isinstance(s, SAEState))
        if hit is not None:
            sae = hit.to_sae()
            sae.cached = True
            return sae
    if only_cached:
        return None

    meta = {"model": model.ref, "model_sha": model.sha256, "data": data.name, "data_sha": data.sha256,
            "layer": layer, "pooling": pooling, "params": params}

    def train() -> SAEState:
        if streams(len(data)) if stream is None else stream:
            acts = extract_chunked(model, data, [layer], pooling=pooling, device=device)[layer]
        else:
            acts = extract(model, data, [layer], pooling=pooling, device=device)[layer]
        sae = train_sae(acts, **params, device=device, progress=progress, on_log=on_log)
        sae.train_info["metrics"] = evaluate(sae, acts).summary()
        meta["train_info"] = sae.train_info  # the store writes ``meta`` after this returns: listings read it
        return SAEState.of(sae)

    if not use_cache:
        return train().to_sae()
    return store.cached(KIND, parts, train, meta=meta).to_sae()


def trained_list(model_sha: str, data_sha: str, layer: str | None = None, store=None) -> list[dict]:
    """Every SAE in the store for this model and data (optionally one layer): its metadata
    (model, layer, hyper-parameters) and ``train_info`` (metrics, seconds), oldest first."""
    from ..store import default_store

    store = store or default_store()
    out = []
    for key in store.keys(KIND):
        meta = store.meta(key) or {}
        if meta.get("model_sha") == model_sha and meta.get("data_sha") == data_sha and \
                (layer is None or meta.get("layer") == layer):
            out.append({"key": key, **meta})
    return out
