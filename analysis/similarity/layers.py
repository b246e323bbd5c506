"""Models to a layer-by-layer matrix (and its calibration), cached in the result store."""
from __future__ import annotations

import warnings

from .cost import check_memory
from .matrix import similarity_matrix
from .measures import CACHE_VERSION, SimilarityWarning, measure_info
from .statistics import CalibratedMatrix, _calibrated_frames, _calibration_arrays


def _stage(progress):
    return (lambda lo, hi: (lambda f, msg: progress(lo + (hi - lo) * f, msg))) if progress else (lambda lo, hi: None)


def _layer_job(kind: str, model_a, model_b, ds, measure: str, layers_a, layers_b, pooling: str, params, **extra):
    """(the measure, its full parameters, both layer lists, the result-store key) of a layer-by-layer job
    keyed by the model hashes, the data hash, the measure and parameters, the layers and the pooling."""
    from ..store import make_key

    m = measure_info(measure)
    params = {**m.params, **params}
    layers_a = list(model_a.layers if layers_a is None else layers_a)
    layers_b = list(model_b.layers if layers_b is None else layers_b)
    key = make_key(kind, a=model_a.sha256, b=model_b.sha256, data=ds.sha256, measure=measure, params=params,
                   layers_a=layers_a, layers_b=layers_b, pooling=pooling, v=CACHE_VERSION, **extra)
    return m, params, layers_a, layers_b, key


def _layer_activations(model_a, model_b, ds, layers_a, layers_b, pooling, measure, batch_size, device, stage):
    """Both models' pooled activations, refused before the models run when the matrix would not fit
    (the activations alone can be most of the time)."""
    from ..activations import extract, pooled_dims

    check_memory(len(ds), pooled_dims(model_a, ds, layers_a, pooling), pooled_dims(model_b, ds, layers_b, pooling),
                 measure, batch_size)
    return (extract(model_a, ds, layers_a, pooling, device, stage(0.0, 0.3)),
            extract(model_b, ds, layers_b, pooling, device, stage(0.3, 0.6)))


def layer_similarity(model_a, model_b, ds, measure: str = "linear_cka", layers_a=None, layers_b=None,
                     pooling: str = "mean", batch_size: int | None = None, device=None, progress=None,
                     store=None, **params):
    """The A-layers x B-layers matrix for two models on a dataset, cached in the result store by
    (model hashes, data hash, measure and parameters, layers, pooling, batch size)."""
    import pandas as pd

    from ..store import default_store

    m, params, layers_a, layers_b, key = _layer_job("similarity", model_a, model_b, ds, measure, layers_a, layers_b,
                                                    pooling, params, batch_size=batch_size)
    store = store or default_store()
    hit = store.get(key)
    if hit is not None:
        meta = store.meta(key) or {}
        df = pd.DataFrame(hit["values"], index=layers_a, columns=layers_b)
        df.index.name, df.columns.name = "model A layer", "model B layer"
        df.attrs.update({"measure": measure, "n": len(ds), "batch_size": batch_size,
                         "warnings": meta.get("warnings", []), "params": params, "cached": True})
        if progress:
            progress(1.0, "loaded from the result store")
        return df
    stage = _stage(progress)
    acts_a, acts_b = _layer_activations(model_a, model_b, ds, layers_a, layers_b, pooling, measure, batch_size,
                                        device, stage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimilarityWarning)  # reported through df.attrs["warnings"]
        df = similarity_matrix(acts_a, acts_b, measure, batch_size, device, stage(0.6, 1.0), **params)
    store.put(key, {"values": df.to_numpy()}, {"warnings": df.attrs["warnings"], "measure": measure,
                                               "a": model_a.ref, "b": model_b.ref, "data": ds.name},
              kind="similarity")
    df.attrs["cached"] = False
    return df


def layer_calibration(model_a, model_b, ds, measure: str = "linear_cka", n_perm: int = 100, seed: int = 0,
                      layers_a=None, layers_b=None, pooling: str = "mean", device=None, progress=None,
                      store=None, **params) -> CalibratedMatrix:
    """:func:`calibrated_matrix` for two models on a dataset (the heatmap's calibrated colour scale
    and each cell's null), cached in the result store like :func:`layer_similarity`. It calibrates
    the full-batch estimator; :func:`calibration_seconds` estimates its cost beforehand."""
    from ..store import default_store

    m, params, layers_a, layers_b, key = _layer_job("similarity_calibration", model_a, model_b, ds, measure, layers_a,
                                                    layers_b, pooling, params, n_perm=int(n_perm), seed=int(seed))
    store = store or default_store()
    hit = store.get(key)
    if hit is not None:
        if progress:
            progress(1.0, "loaded from the result store")
        return _calibrated_frames(hit["value"], hit["null"], layers_a, layers_b, m, seed, cached=True)
    stage = _stage(progress)
    acts_a, acts_b = _layer_activations(model_a, model_b, ds, layers_a, layers_b, pooling, measure, None,
                                        device, stage)
    value, null = _calibration_arrays(acts_a, acts_b, measure, n_perm, seed, device, stage(0.6, 1.0), params)
    store.put(key, {"value": value, "null": null}, {"measure": measure, "a": model_a.ref, "b": model_b.ref,
                                                    "data": ds.name, "n_perm": int(n_perm)}, kind="similarity")
    return _calibrated_frames(value, null, layers_a, layers_b, m, seed)
