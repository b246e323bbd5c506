"""When a view streams, and its inputs when it does: activations in the chunked on-disk cache.

A view streams above :data:`analysis.streaming.IN_MEMORY_LIMIT` samples, or when the activations
it reads would not fit in the memory this server can give one computation (``analysis.resources``).
Below that it keeps its in-memory path (and its numbers) unchanged."""
from __future__ import annotations

# Seconds per row per model to run it and write every layer to the activation cache, measured on a
# 2-core machine (zoo MLPs on digits_noisy: 25,000 rows in ~5 s, 100,000 in ~40 s, both models),
# and per row per feature to read the cache back once.
WRITE_SECONDS_PER_ROW = {"text": 6e-3, "image": 2e-4}
READ_SECONDS_PER_VALUE = 2e-9


def limit() -> int:
    """Rows a view holds in memory at once (read when asked: a test may lower it)."""
    from .. import streaming

    return streaming.IN_MEMORY_LIMIT


def streams(n: int, dims: list[int]) -> bool:
    """Whether ``n`` rows of layers of these widths go through the on-disk cache rather than memory."""
    from ..resources import USABLE_FRACTION, available_bytes

    return n > limit() or 4.0 * n * sum(dims) > USABLE_FRACTION * available_bytes()


def caches(ctx, side: str, layers: list[str], pooling: str = "mean", progress=None) -> dict:
    """{layer: ActivationCache} of model A or B on the view's data (computed once, then read)."""
    from ..activations import extract_chunked

    model = ctx.model_a if side == "a" else ctx.model_b
    return extract_chunked(model, ctx.ds, layers, pooling, ctx.device, progress, store=ctx.store)


def write_seconds(ctx, side: str, layers: list[str], pooling: str = "mean") -> float:
    """Running model A or B over the data and writing the layers that the cache lacks."""
    from ..activations import is_cached

    model = ctx.model_a if side == "a" else ctx.model_b
    if all(is_cached(model, ctx.ds, l, pooling, ctx.store) for l in layers):
        return 0.0
    return 0.2 + len(ctx.ds) * WRITE_SECONDS_PER_ROW.get(ctx.ds.kind, WRITE_SECONDS_PER_ROW["image"])


def read_seconds(n: int, dims: list[int], passes: int = 1) -> float:
    return passes * n * sum(dims) * READ_SECONDS_PER_VALUE

