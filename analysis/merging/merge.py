"""One merged model: the weights theta(alpha) = (1 - alpha) theta_A + alpha theta_B' (B' = B aligned
to A, or B itself), with BatchNorm statistics recomputed on the data where there are any, kept in
the result store as a ``merge:<id>`` model reference (:mod:`analysis.merging.reference`)."""
from __future__ import annotations

from .align import apply
from .interpolate import has_batchnorm, renormalise
from .reference import save_merge
from .weights import check_same_shapes, lerp, state_of, with_state


def merged_model(model_a, model_b, ds, alpha: float = 0.5, alignment=None, batch_size: int = 256, device=None):
    """The merged model at ``alpha`` (not stored); ``alignment``: an :class:`~analysis.merging.align.Alignment`
    of B to A, or None to average B's weights as they are."""
    b = apply(model_b, alignment) if alignment is not None else model_b
    sa, sb = state_of(model_a), state_of(b)
    check_same_shapes(sa, sb, model_a.ref, model_b.ref)
    merged = with_state(model_a, lerp(sa, sb, float(alpha)), name=f"merge of {model_a.ref} and {model_b.ref}")
    if has_batchnorm(merged.module):
        renormalise(merged, ds, batch_size, device)
    return merged


def merge(model_a, model_b, ds, alpha: float = 0.5, alignment=None, store=None, batch_size: int = 256,
          device=None) -> str:
    """Make the merged model and keep it in the store; returns its reference ``merge:<id>``."""
    merged = merged_model(model_a, model_b, ds, alpha, alignment, batch_size, device)
    recipe = {"a": model_a.ref, "b": model_b.ref, "a_sha256": model_a.sha256, "b_sha256": model_b.sha256,
              "alpha": float(alpha), "aligned": alignment.method if alignment is not None else "",
              "data": {"name": ds.name, "rows": len(ds), "sha256": ds.sha256},
              "renormalised": has_batchnorm(merged.module)}
    return save_merge(model_a, state_of(merged), recipe, store)
