"""Projections view: one layer of A and one of B in 2-D or 3-D (PCA, UMAP or t-SNE), B rotated onto
A point by point; how many nearest neighbours the two layers share per sample; the models'
predictions to colour by; and, on demand, one model's walk through its layers.

Above :data:`analysis.streaming.IN_MEMORY_LIMIT` samples (or when a layer would not fit in
memory) the view streams: layers go to the on-disk activation cache, PCA is fitted there on every
row (incrementally), and UMAP, t-SNE and the neighbourhood agreement run on a seeded subsample of
that many rows; the views draw those rows (``rows``) and each result's ``note`` says so.

Each layer's projection is stored under the parameters its method takes (changing UMAP's
neighbours does not recompute a PCA), so the walk through the layers reuses the main views'
projections and the other way round. Uploaded coordinates replace A's projection: the parsed array
is stored as an upload and the spec carries its id (``coords``), never the file.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from ..jobs import Cost
from ..spec import Param
from .base import Section

PAGE, TITLE, VERSION = "projections", "Projections", 1
MAX_N = 1_000_000  # samples: the view streams above analysis.streaming.IN_MEMORY_LIMIT (see streams())
COLOUR_BY = ("label", "prediction of A", "prediction of B", "A correct", "B correct", "neighbourhood agreement")
AGREEMENT_K = 10
COORDS_KIND = "coords"  # uploads of precomputed coordinates (the parsed array, as .npy)
_UPLOAD_ID = re.compile(r"[0-9a-f]{16}")


def _methods():
    from ..projection import METHODS

    return list(METHODS)


PARAMS = (
    Param("method", "str", "pca", choices=_methods, label="Method",
          help="PCA is exact and instant. UMAP and t-SNE show neighbourhoods; their axes mean nothing."),
    Param("dims", "int", 2, choices=(2, 3), label="Dimensions"),
    Param("proj_a", "str", domain="layer:a", label="Layer of A", help="layer of A (default: last)"),
    Param("proj_b", "str", domain="layer:b", label="Layer of B", help="layer of B (default: last)"),
    Param("colour", "str", "label", choices=COLOUR_BY, label="Colour by", help="colour by"),
    Param("umap_k", "int", 15, lo=2, hi=200, label="Neighbours", help="UMAP neighbours"),
    Param("umap_d", "float", 0.1, lo=0.0, hi=1.0, step=0.05, label="Min distance", help="UMAP min distance"),
    Param("perplexity", "float", 30.0, lo=2.0, hi=100.0, step=5.0, label="Perplexity", help="t-SNE perplexity"),
    Param("coords", "str", label="Precomputed coordinates of A",
          help="id of uploaded coordinates that replace A's projection"),
    Param("walk", "bool", False, label="Through the layers",
          help="project every layer of one model, each rotated onto the previous one"),
    Param("path_model", "str", "A", choices=("A", "B"), label="Model", help="the model walked through its layers"),
    Param("path_layer", "str", label="Layer", help="the layer shown in the walk (default: last)"),
)
METHOD_PARAMS = {"pca": (), "umap": ("umap_k", "umap_d"), "tsne": ("perplexity",)}
PROJECTION_READS = ("method", "dims", "umap_k", "umap_d", "perplexity", "coords")


# ------------------------------------------------------------------ results
@dataclass
class Embedding:
    """One layer's low-dimensional coordinates (or the uploaded ones)."""

    layer: str
    coords: np.ndarray  # (n, 2 or 3)
    method: str  # pca, umap, tsne or precomputed
    axis_titles: list
    explained: np.ndarray | None = None  # PCA: fraction of variance per axis
    rows: np.ndarray | None = None  # the rows of the data the points are (None: every row, in order)
    note: str = ""  # what the streamed path fitted and drew


@dataclass
class Aligned:
    """B's coordinates rotated (and scaled) onto A's: the two views compare point by point."""

    rows: np.ndarray  # the dataset's row indices
    coords_b: np.ndarray
    residual: float  # RMS distance to A's points, relative to A's spread
    scale: float


@dataclass
class Agreement:
    per_sample: np.ndarray  # fraction of the k nearest neighbours the two layers share
    k: int
    chance: float  # the expected fraction for unrelated layers, k / (n - 1)
    note: str = ""  # the subsample it was computed on when the view streams


@dataclass
class Predictions:
    ref: str
    predictions: np.ndarray | None  # class code per sample (None: the model makes none)
    explanation: str


@dataclass
class LayerWalk:
    side: str  # "A" or "B"
    ref: str
    layers: list
    coords: dict  # layer -> (n, dims), each rotated onto the previous layer's
    rows: np.ndarray | None = None  # the rows of the data the points are (None: every row)


@dataclass
class Result:
    projection_a: Embedding | None = None
    projection_b: Embedding | None = None
    alignment: Aligned | None = None
    agreement: Agreement | None = None
    predictions_a: Predictions | None = None
    predictions_b: Predictions | None = None
    walk_a: LayerWalk | None = None
    walk_b: LayerWalk | None = None


@dataclass
class Colouring:
    values: np.ndarray | None
    kind: str  # "category" or "continuous"
    names: list | None
    note: str = ""  # said when the asked-for colouring is not available


# ------------------------------------------------------------------ uploaded coordinates
def store_coordinates(data: bytes, filename: str, n_rows: int, store=None) -> str:
    """Parse an uploaded coordinates file (.npy/.npz/.csv/.parquet, one row per sample) and keep the
    parsed array in the store; returns its id for the spec's ``coords``. Nothing is stored for a bad
    file (UserInputError says why)."""
    from ..projection import from_coordinates
    from ..store import default_store

    coords = from_coordinates(data, filename, n_rows).coords
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(coords, dtype=np.float64), allow_pickle=False)
    return (store or default_store()).put_blob(buf.getvalue(), filename, COORDS_KIND, {"shape": coords.shape})[:16]


def load_coordinates(upload_id: str, store=None) -> np.ndarray:
    """The coordinates stored by :func:`store_coordinates` (read without pickle)."""
    from ..store import default_store

    if not isinstance(upload_id, str) or not _UPLOAD_ID.fullmatch(upload_id):
        raise UserInputError(f"{str(upload_id)[:40]!r} is not an id of uploaded coordinates (16 hex digits).")
    from ..tabular import load_npy

    data, info = (store or default_store()).read_blob(upload_id, COORDS_KIND)
    return load_npy(data, info["name"])


def dims_of(ctx) -> int:
    """The projections' dimension: the uploaded coordinates' when there are some."""
    return int(load_coordinates(ctx.p["coords"], ctx.store).shape[1]) if ctx.p["coords"] else int(ctx.p["dims"])


# ------------------------------------------------------------------ the spec's derived choices
def layer(ctx, side: str) -> str:
    """The chosen layer of A or B (default: the last one)."""
    model = ctx.model_a if side == "a" else ctx.model_b
    chosen = ctx.p[f"proj_{side}"]
    if chosen is None:
        return model.layers[-1]
    if chosen not in model.layers:
        raise UserInputError(f"proj_{side}: {model.ref} has no layer {chosen!r}; layers are {', '.join(model.layers)}.")
    return chosen


def method_params(p) -> dict:
    """The chosen method's own parameters, under projection.project's names."""
    names = {"umap_k": "n_neighbors", "umap_d": "min_dist", "perplexity": "perplexity"}
    return {names[k]: p[k] for k in METHOD_PARAMS[p["method"]]}


def walked(ctx) -> str:
    return "a" if ctx.p["path_model"] == "A" else "b"


def resolve(ctx) -> dict:
    """Uploaded coordinates that are gone or no longer fit the data, and a walk layer that is not a
    layer of the walked model, fall back with a note; the dimension follows uploaded coordinates."""
    p, changes = ctx.p, {}
    if p["coords"]:
        try:
            coords = load_coordinates(p["coords"], ctx.store)
        except UserInputError as exc:
            ctx.notes.append(f"{exc} Showing A's computed projection.")
            return {"coords": None}
        if len(coords) != len(ctx.ds):
            ctx.notes.append(f"The uploaded coordinates have {len(coords)} rows but the data now has {len(ctx.ds)}: "
                             "showing A's computed projection.")
            return {"coords": None}
        if coords.shape[1] != p["dims"]:
            ctx.notes.append(f"The uploaded coordinates have {coords.shape[1]} dimensions: showing {coords.shape[1]}-D.")
            changes["dims"] = int(coords.shape[1])
    model = ctx.model_a if walked(ctx) == "a" else ctx.model_b
    if p["path_layer"] is not None and p["path_layer"] not in model.layers:
        ctx.notes.append(f"{p['path_layer']!r} is not a layer of {model.ref}: the walk shows its last layer.")
        changes["path_layer"] = None
    return changes


# ------------------------------------------------------------------ streaming
def streams(ctx) -> bool:
    """Whether the layers are read from the on-disk activation cache (many samples, or layers that
    would not fit in memory) rather than held in memory."""
    from ..activations import pooled_dims
    from .streamed import streams as over

    dims = pooled_dims(ctx.model_a, ctx.ds, [layer(ctx, "a")]) + pooled_dims(ctx.model_b, ctx.ds, [layer(ctx, "b")])
    return over(len(ctx.ds), dims)


def shown_rows(ctx) -> np.ndarray | None:
    """The rows the views draw when streaming (a seeded subsample; None: every row)."""
    from ..streaming import subsample_rows
    from .streamed import limit

    return subsample_rows(len(ctx.ds), limit(), int(ctx.p["seed"])) if streams(ctx) else None


def rows_of(result) -> np.ndarray | None:
    """The dataset rows of the points in ``result``'s views (None: every row, in order)."""
    e = result.projection_a or result.projection_b
    return None if e is None else e.rows


# ------------------------------------------------------------------ projections
def _acts(ctx, side: str, layers: list[str], progress=None) -> dict:
    """The layers in memory, or, when the view streams, the shown rows read from the cache."""
    from ..activations import extract
    from .streamed import caches

    rows = shown_rows(ctx)
    if rows is not None:
        return {k: c.take(rows) for k, c in caches(ctx, side, layers, progress=progress).items()}
    model = ctx.model_a if side == "a" else ctx.model_b
    return extract(model, ctx.ds, layers, device=ctx.device, progress=progress)


def _embedding_parts(ctx, side: str, name: str) -> tuple[str, dict]:
    """A layer's projection is stored under what it depends on: the model, the data, the layer and
    the method's own parameters (so a UMAP parameter never recomputes a PCA)."""
    p = ctx.p
    return (f"{PAGE}-embedding", {"inputs": ctx.fingerprint(side + "d"), "layer": name, "method": p["method"],
                                        "params": method_params(p), "dims": dims_of(ctx), "seed": p["seed"],
                                        "v": VERSION})


def embedding(ctx, side: str, name: str, progress) -> Embedding:
    from ..projection import project

    def compute():
        if shown_rows(ctx) is not None:
            return _streamed_embedding(ctx, side, name, progress)
        x = _acts(ctx, side, [name])[name]
        pr = project(x, ctx.p["method"], dims_of(ctx), ctx.p["seed"], use_cache=False, progress=progress,
                     **method_params(ctx.p))
        return Embedding(name, pr.coords, pr.method, pr.axis_titles(), pr.explained)

    return ctx.store.cached(*_embedding_parts(ctx, side, name), compute)


def _streamed_embedding(ctx, side: str, name: str, progress) -> Embedding:
    """PCA of every row from the cache (drawn for the shown rows), or UMAP / t-SNE of the shown rows."""
    from .. import projection, streaming
    from .streamed import caches

    n, rows, p, dims = len(ctx.ds), shown_rows(ctx), ctx.p, dims_of(ctx)
    cache = caches(ctx, side, [name], progress=lambda f, m: progress(0.3 * f, m))[name]
    drawn = f"the views draw {len(rows):,} of them" if len(rows) < n else "the views draw all of them"
    if p["method"] == "pca":
        pc = streaming.incremental_pca(cache, dims, lambda f, m: progress(0.3 + 0.7 * f, m))
        pr = projection.Projection(pc.coords[rows], "pca", {}, pc.explained)
        note = f"PCA fitted incrementally on all {n:,} samples (from the activation cache); {drawn}" + \
            (f" (drawn at random, seed {p['seed']})." if len(rows) < n else ".")
    else:
        pr = projection.project(cache.take(rows), p["method"], dims, p["seed"], use_cache=False,
                                progress=lambda f, m: progress(0.3 + 0.7 * f, m), **method_params(p))
        note = (f"{pr.method.upper() if pr.method == 'umap' else 't-SNE'} holds every sample in memory, so it used "
                f"{len(rows):,} of the {n:,} samples (drawn at random, seed {p['seed']}).")
    return Embedding(name, pr.coords, pr.method, pr.axis_titles(), pr.explained, rows, note)


def _projection_a(ctx, progress) -> Embedding:
    ctx.check_pair()
    if ctx.p["coords"]:
        coords = load_coordinates(ctx.p["coords"], ctx.store)
        if len(coords) != len(ctx.ds):
            raise UserInputError(f"The uploaded coordinates have {len(coords)} rows but the data has {len(ctx.ds)}.")
        rows = shown_rows(ctx)
        return Embedding("uploaded coordinates", coords if rows is None else coords[rows], "precomputed",
                         [f"dim {i + 1}" for i in range(coords.shape[1])], rows=rows)
    return embedding(ctx, "a", layer(ctx, "a"), progress)


def _projection_b(ctx, progress) -> Embedding:
    ctx.check_pair()
    return embedding(ctx, "b", layer(ctx, "b"), progress)


def _alignment(ctx, progress) -> Aligned:
    from ..projection import align

    al = align(ctx.value("projection_a").coords, ctx.value("projection_b").coords)
    rows = shown_rows(ctx)
    indices = np.asarray(ctx.ds.indices)
    return Aligned(indices if rows is None else indices[rows], al.aligned, al.residual, al.scale)


def forward_seconds(ctx, side: str, layers: list[str]) -> float:
    """Running a model over the data for the layers whose activations are not stored yet."""
    from ..activations import is_cached

    model = ctx.model_a if side == "a" else ctx.model_b
    if all(is_cached(model, ctx.ds, name, store=ctx.store) for name in layers):
        return 0.0
    per_row = {"text": 4e-3, "image": 2e-5}.get(ctx.ds.kind, 2e-5)
    return 0.15 + len(ctx.ds) * per_row  # the pass itself, and writing each layer to the store


def embedding_cost(ctx, side: str, name: str, start: bool = True, forward: bool = True) -> Cost:
    """Time and memory of one layer's projection; nothing when it is stored. ``start``: with the
    method's start (import, compiling); ``forward``: with the pass that extracts the layer."""
    from .. import projection
    from ..activations import pooled_dims

    if ctx.store.lookup(*_embedding_parts(ctx, side, name)) is not None:
        return Cost(0.02, 0)
    model = ctx.model_a if side == "a" else ctx.model_b
    n, d = len(ctx.ds), pooled_dims(model, ctx.ds, [name])[0]
    p, dims = ctx.p, dims_of(ctx)
    rows = shown_rows(ctx)
    if rows is not None:
        return _streamed_embedding_cost(ctx, side, name, n, d, len(rows), start, forward)
    seconds = projection.estimate_seconds(n, d, p["method"], dims, **method_params(p))
    if start:
        seconds += projection.start_seconds(p["method"], n)
    if forward:
        seconds += forward_seconds(ctx, side, [name])
    return Cost(seconds, projection.estimate_bytes(n, d, p["method"], dims))


def _streamed_embedding_cost(ctx, side: str, name: str, n: int, d: int, shown: int, start: bool,
                             forward: bool) -> Cost:
    """Writing the layer to the cache; then PCA: two reads of every row (the covariance, the
    coordinates); UMAP / t-SNE: one read for the subsample and the method on it."""
    from .. import projection
    from ..streaming import EXACT_WIDTH, GEMM_FLOPS_PER_SECOND
    from .streamed import read_seconds, write_seconds

    p, dims = ctx.p, dims_of(ctx)
    seconds = write_seconds(ctx, side, [name]) if forward else 0.0
    if p["method"] == "pca":
        flops = n * d * d + 2.0 * n * d * dims
        return Cost(seconds + read_seconds(n, [d], 2) + flops / GEMM_FLOPS_PER_SECOND,
                    int(8.0 * d * d * (1 if d <= EXACT_WIDTH else 0) + 16.0 * 8192 * d + 8.0 * n * dims))
    seconds += read_seconds(n, [d]) + projection.estimate_seconds(shown, d, p["method"], dims, **method_params(p))
    if start:
        seconds += projection.start_seconds(p["method"], shown)
    return Cost(seconds, projection.estimate_bytes(shown, d, p["method"], dims))


def _projection_a_cost(ctx) -> Cost:
    return Cost(0.02, 0) if ctx.p["coords"] else embedding_cost(ctx, "a", layer(ctx, "a"))


def _projection_b_cost(ctx) -> Cost:
    # UMAP's start (import, compiling) is paid once per job: counted with A unless A needs no projection
    a_computes = not ctx.p["coords"] and ctx.store.lookup(*_embedding_parts(ctx, "a", layer(ctx, "a"))) is None
    return embedding_cost(ctx, "b", layer(ctx, "b"), start=not a_computes)


# ------------------------------------------------------------------ neighbourhood agreement
def _agreement(ctx, progress) -> Agreement:
    from .. import projection, streaming

    xa = _acts(ctx, "a", [layer(ctx, "a")])[layer(ctx, "a")]
    xb = _acts(ctx, "b", [layer(ctx, "b")])[layer(ctx, "b")]
    n = len(xa)
    k = min(AGREEMENT_K, n - 1)
    progress(0.3, f"the {k} nearest neighbours of each sample in both layers")
    note = "" if n == len(ctx.ds) else (
        f"The neighbourhood agreement compares every pair of samples, so it used {n:,} of the {len(ctx.ds):,} "
        f"samples (the ones drawn, seed {ctx.p['seed']}): neighbours are found among those.")
    # streamed: the neighbour search in row blocks (memory ~ n, not n x n)
    agreement = projection.knn_agreement(xa, xb, k=k) if not note else streaming.knn_agreement(xa, xb, k)
    return Agreement(agreement, k, k / (n - 1), note)


def _agreement_cost(ctx) -> Cost:
    from .. import projection
    from ..activations import pooled_dims

    rows = shown_rows(ctx)
    n = len(ctx.ds) if rows is None else len(rows)
    da = pooled_dims(ctx.model_a, ctx.ds, [layer(ctx, "a")])[0]
    db = pooled_dims(ctx.model_b, ctx.ds, [layer(ctx, "b")])[0]
    if rows is None:
        seconds, memory = projection.knn_agreement_seconds(n, da, db), projection.knn_agreement_bytes(n)
    else:  # the blocked search (streaming.knn_agreement): products at BLAS speed, memory ~ n
        from ..streaming import GEMM_FLOPS_PER_SECOND

        seconds = 0.5 + 2.0 * n * n * (da + db) / GEMM_FLOPS_PER_SECOND
        memory = 8 * n * (da + db + 4 * AGREEMENT_K) + 2**30
    for side in ("a", "b"):  # a projection still to compute extracts the layer first
        if ctx.stored(f"projection_{side}") is not None or (side == "a" and ctx.p["coords"]):
            seconds += forward_seconds(ctx, side, [layer(ctx, side)])
    return Cost(seconds, memory)


# ------------------------------------------------------------------ colours
def _predictions(ctx, side: str) -> Predictions:
    from ..evaluate import evaluate

    model = ctx.model_a if side == "a" else ctx.model_b
    model.check_data(ctx.ds)
    ev = evaluate(model, ctx.ds, device=ctx.device)
    return Predictions(model.ref, ev.predictions, ev.explanation)


def _predictions_cost(ctx, side: str) -> Cost:
    model = ctx.model_a if side == "a" else ctx.model_b
    return Cost(0.2 + forward_seconds(ctx, side, [model.layers[-1]]), 0)


def prediction_sides(colour: str) -> list[str]:
    """The models ("a", "b") whose predictions a colouring needs."""
    return [s for s in ("a", "b") if colour in (f"prediction of {s.upper()}", f"{s.upper()} correct")]


def _wants_predictions(side: str):
    return lambda ctx: side in prediction_sides(ctx.p["colour"])


def colouring(result: Result, ds, colour: str) -> Colouring:
    """What to colour the samples by, from the finished sections; falls back to the labels (with a
    note) when the asked-for colouring does not exist for these models or data."""
    rows = rows_of(result)
    labels, names = ds.labels, ds.label_names
    if labels is not None and rows is not None:
        labels = np.asarray(labels)[rows]
    if colour == "label":
        return Colouring(labels, "category", names)
    if colour == "neighbourhood agreement":
        if result.agreement is None:
            return Colouring(labels, "category", names, "The neighbourhood agreement is not computed: colouring by label.")
        return Colouring(result.agreement.per_sample, "continuous", None)
    side = "a" if "A" in colour.split() else "b"
    pred = getattr(result, f"predictions_{side}")
    if pred is None or pred.predictions is None:
        why = f" ({pred.explanation})" if pred is not None else ""
        return Colouring(labels, "category", names,
                         f"{side.upper()} makes no class predictions{why}; colouring by label.")
    predictions = pred.predictions if rows is None else np.asarray(pred.predictions)[rows]
    if colour.startswith("prediction"):
        return Colouring(predictions, "category", names)
    if labels is None:
        return Colouring(None, "category", None, "Correctness needs labels, and this dataset has none.")
    return Colouring((predictions == labels).astype(int), "category", ["wrong", "correct"])


# ------------------------------------------------------------------ through the layers
def _walk(ctx, side: str, progress) -> LayerWalk:
    from ..projection import align

    model = ctx.model_a if side == "a" else ctx.model_b
    from .streamed import caches

    names = list(model.layers)
    first = lambda f, m: progress(0.1 * f, m)
    if shown_rows(ctx) is not None:  # one forward pass for every layer
        caches(ctx, side, names, progress=first)
    else:
        _acts(ctx, side, names, progress=first)
    out, previous = {}, None
    for i, name in enumerate(names):
        sub = lambda f, m, i=i, name=name: progress(0.1 + 0.9 * (i + f) / len(names), f"{name}: {m}")
        coords = embedding(ctx, side, name, sub).coords
        if previous is not None:
            coords = align(previous, coords).aligned
        out[name] = coords
        previous = coords
        progress(0.1 + 0.9 * (i + 1) / len(names), f"{ctx.p['method'].upper()} of {name}")
    return LayerWalk(side.upper(), model.ref, names, out, shown_rows(ctx))


def _walk_cost(ctx, side: str) -> Cost:
    from .. import projection

    model = ctx.model_a if side == "a" else ctx.model_b
    costs = [embedding_cost(ctx, side, name, start=False, forward=False) for name in model.layers]
    total = sum(costs, Cost())
    rows = shown_rows(ctx)
    shown = len(ctx.ds) if rows is None else len(rows)
    start = projection.start_seconds(ctx.p["method"], shown) if any(c.seconds > 0.02 for c in costs) else 0.0
    if rows is not None:  # streamed: the layers are written to the activation cache first
        from .streamed import write_seconds

        return Cost(total.seconds + start + write_seconds(ctx, side, list(model.layers)), total.bytes)
    return Cost(total.seconds + start + forward_seconds(ctx, side, list(model.layers)), total.bytes)


def _wants_walk(side: str):
    return lambda ctx: bool(ctx.p["walk"]) and walked(ctx) == side


def _layers(sides: str):
    """A section is keyed by the layers it shows, whether the spec named them or left them to the
    view (the last layer): a link and a page that spell the choice differently share the result."""
    return lambda ctx: {f"proj_{side}": layer(ctx, side) for side in sides}


WALK_AROUND = "Use fewer samples, PCA (instant), or walk through a model with fewer layers."
SECTIONS = (
    Section("projection_a", _projection_a, PROJECTION_READS, "ad", _projection_a_cost, keyed=_layers("a"),
            title="the projection of A", ways_around="Use fewer samples, or PCA (instant)."),
    Section("projection_b", _projection_b, PROJECTION_READS, "bd", _projection_b_cost, keyed=_layers("b"),
            title="the projection of B", ways_around="Use fewer samples, or PCA (instant)."),
    Section("alignment", _alignment, PROJECTION_READS, "abd", title="B aligned to A", keyed=_layers("ab")),
    Section("agreement", _agreement, (), "abd", _agreement_cost, keyed=_layers("ab"),
            title="the neighbourhood agreement",
            ways_around="Use fewer samples, or colour by another property (the views do not need it)."),
    Section("predictions_a", lambda ctx, progress: _predictions(ctx, "a"), (), "ad",
            lambda ctx: _predictions_cost(ctx, "a"), wanted=_wants_predictions("a"), title="the predictions of A"),
    Section("predictions_b", lambda ctx, progress: _predictions(ctx, "b"), (), "bd",
            lambda ctx: _predictions_cost(ctx, "b"), wanted=_wants_predictions("b"), title="the predictions of B"),
    Section("walk_a", lambda ctx, progress: _walk(ctx, "a", progress), PROJECTION_READS, "ad",
            lambda ctx: _walk_cost(ctx, "a"), wanted=_wants_walk("a"), title="A through its layers",
            ways_around=WALK_AROUND),
    Section("walk_b", lambda ctx, progress: _walk(ctx, "b", progress), PROJECTION_READS, "bd",
            lambda ctx: _walk_cost(ctx, "b"), wanted=_wants_walk("b"), title="B through its layers",
            ways_around=WALK_AROUND),
)


def summary(result: Result) -> dict:
    out = {}
    if result.agreement is not None:
        out["mean k-NN agreement"] = float(np.nanmean(result.agreement.per_sample))
    if result.alignment is not None:
        out["alignment residual"] = result.alignment.residual
    return out
