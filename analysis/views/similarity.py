"""Similarity view: the layer-by-layer matrix of A against B under one measure (plus A–A and B–B),
a drill-down on one cell (both layers' PCA, per-class values), its statistics (bootstrap interval,
permutation test, stability) and several measures side by side.

Above :data:`analysis.streaming.IN_MEMORY_LIMIT` samples, or when the activations would not fit in memory, the view
streams: both models' activations go to the chunked on-disk cache and the maps are read from it
chunk by chunk (exact linear CKA, the minibatch estimator), or, for measures that need every row
at once, from a seeded subsample of as many rows as fit; each result's ``note`` says which."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserInputError
from ..jobs import Cost
from ..spec import Param
from .base import Section
from .streamed import caches as _caches
from .streamed import limit as _in_memory_rows

PAGE, TITLE, VERSION = "similarity", "Similarity", 1
MAX_N = 1_000_000  # samples: the maps stream above analysis.streaming.IN_MEMORY_LIMIT (see streams())
SCATTER_ROWS = 5_000  # points drawn in the drill-down scatter when streaming (PCA is fitted on every row)
STATS_ROWS = 2_000  # rows of the bootstrap / permutation statistics when streaming (~100 s of n x n work)
STREAM_BATCH = 1024  # minibatch size when exact streamed CKA would hold too large cross-products
MEASURE_PARAMS = ("threshold", "k", "variance", "rdm")
COMPARE_DEFAULT = ["linear_cka", "debiased_linear_cka", "procrustes", "svcca"]
N_BOOT = N_PERM = 200


def _measures():
    from ..similarity import MEASURES

    return list(MEASURES)


def _poolings():
    from ..activations import POOLINGS

    return list(POOLINGS)


PARAMS = (
    Param("measure", "str", "linear_cka", choices=_measures, label="Measure"),
    Param("pooling", "str", "auto", choices=_poolings, label="Pooling",
          help="How token or spatial axes are reduced. auto: per layer kind (convolutions flattened up to "
               "4,096 values per sample, their spatial mean beyond; mean over valid tokens for transformers); "
               "mean (valid tokens / positions), first or last token, or flatten (spatial layers only). "
               "The rule each layer got is listed under the heatmap."),
    Param("batch", "int", 0, lo=0, hi=100_000, label="Minibatch size",
          help="0 computes on all samples at once (above 20,000 samples linear CKA streams exactly from the "
               "activation cache). A size uses the minibatch CKA estimator (Nguyen et al. 2021): unbiased HSIC "
               "per batch, averaged; memory stays bounded. CKA family except RBF."),
    Param("threshold", "float", 1.0, choices=(0.2, 0.4, 0.8, 1.0, 2.0), label="RBF width (× median distance)",
          help="RBF width × median distance"),
    Param("k", "int", 10, lo=1, hi=100, label="Neighbours k", help="neighbours (k-NN measures)"),
    Param("variance", "float", 0.99, choices=(0.9, 0.95, 0.99, 0.999), label="Variance kept",
          help="variance kept (SVCCA)"),
    Param("rdm", "str", "correlation", choices=("correlation", "euclidean"), label="RDM", help="RSA distance"),
    Param("layers_a", "list", domain="layers:a", label="Layers of A", help="layers of A in the map (default: all)"),
    Param("layers_b", "list", domain="layers:b", label="Layers of B", help="layers of B in the map (default: all)"),
    Param("stretch", "bool", True, label="Colours span the values shown",
          help="On: the colour scale spans the values in the maps, so near-identical models still show their "
               "differences. Off: it spans the measure's whole range, comparable across views and papers."),
    Param("values", "str", "raw", choices=("raw", "calibrated"), label="Values",
          help="raw: the measure. calibrated: (value − null mean) / (maximum − null mean) against the same "
               "measure on row-permuted pairings (100 permutations): 0 is what unrelated data of this size "
               "and width reads, 1 the maximum."),
    Param("cell_a", "str", domain="layer:a", label="Layer of A", help="drill-down layer of A (default: best match)"),
    Param("cell_b", "str", domain="layer:b", label="Layer of B", help="drill-down layer of B"),
    Param("stats", "bool", False, label="Bootstrap CI, permutation test and stability",
          help="statistics of the drill-down cell"),
    Param("compare", "list", COMPARE_DEFAULT, choices=_measures, label="Measures",
          help="measures shown side by side"),
    Param("compare_on", "bool", False, label="Show the comparison", help="compute the side-by-side measures"),
)


# ------------------------------------------------------------------ the spec's derived choices
def measure_params(p) -> dict:
    """The chosen measure's own parameters (only those it takes)."""
    from ..similarity import MEASURES

    return {k: p[k] for k in MEASURE_PARAMS if k in MEASURES[p["measure"]].params}


def batch_size(p, measure: str | None = None) -> int | None:
    """The minibatch size the measure uses: CKA-family measures other than RBF take it; 0 = all at once."""
    from ..similarity import MEASURES

    m = MEASURES[measure or p["measure"]]
    return int(p["batch"]) if (m.family == "cka" and m.name != "rbf_cka" and p["batch"]) else None


def layers(ctx, side: str) -> list[str]:
    model = ctx.model_a if side == "a" else ctx.model_b
    chosen = ctx.p[f"layers_{side}"]
    return list(chosen) if chosen else list(model.layers)


# ------------------------------------------------------------------ results
@dataclass
class Matrices:
    ab: object  # DataFrame A layers x B layers
    aa: object
    bb: object
    best: list  # (A layer, B layer, value)
    warnings: list = field(default_factory=list)
    pooling: dict = field(default_factory=dict)  # "A"/"B" -> {layer: the pooling rule it got}
    note: str = ""  # how the maps were computed when the view streams (estimator, rows used)


@dataclass
class Drill:
    cell_a: str
    cell_b: str
    value: float
    coords_a: np.ndarray
    coords_b: np.ndarray
    explained_a: np.ndarray
    explained_b: np.ndarray
    per_class: object  # DataFrame class, n, value (empty without labels)
    dims: tuple
    stats_seconds: float
    rows: np.ndarray | None = None  # the rows the scatter shows (None: every row, in order)
    note: str = ""  # what was subsampled when the view streams
    stats_rows: int = 0  # rows the statistics would use when streaming (0: every row)


@dataclass
class Statistics:
    value: float
    ci_low: float
    ci_high: float
    level: float
    p_value: float
    n_perm: int
    null_mean: float
    stability: object  # DataFrame n, mean, std, repeats
    null_std: float = float("nan")
    calibrated: float = float("nan")
    note: str = ""  # the subsample they were computed on when the view streams


@dataclass
class Result:
    matrices: Matrices | None = None
    drill: Drill | None = None
    statistics: Statistics | None = None
    compare: dict | None = None  # measure -> DataFrame (read it with compared()); streamed: "notes" too
    calibration: object = None  # analysis.similarity.CalibratedMatrix of A vs B


# ------------------------------------------------------------------ sections
MATRIX_READS = ("measure", "pooling", "batch", "threshold", "k", "variance", "rdm", "layers_a", "layers_b")


def _dims(ctx, side: str, pooling: str | None = None) -> list[int]:
    from ..activations import pooled_dims

    model = ctx.model_a if side == "a" else ctx.model_b
    return pooled_dims(model, ctx.ds, layers(ctx, side), pooling or ctx.p["pooling"])


def _pairs(ctx):
    la, lb = layers(ctx, "a"), layers(ctx, "b")
    return {"AB": (ctx.model_a, ctx.model_b, la, lb), "AA": (ctx.model_a, ctx.model_a, la, la),
            "BB": (ctx.model_b, ctx.model_b, lb, lb)}


def _matrix_cost(ctx, measure: str | None = None) -> Cost:
    from .. import similarity as sim

    measure = measure or ctx.p["measure"]
    n, b = len(ctx.ds), batch_size(ctx.p, measure)
    da, db = _dims(ctx, "a"), _dims(ctx, "b")
    if streams(ctx):
        return _streamed_cost(ctx, measure, b, da, db)
    seconds = sum(sim.estimate_seconds(n, x, y, measure, b) for x, y in ((da, db), (da, da), (db, db)))
    memory = max(sim.estimate_bytes(n, x, y, measure, b) for x, y in ((da, db), (da, da), (db, db)))
    return Cost(seconds + _forward_seconds(ctx), int(memory))


def _forward_seconds(ctx) -> float:
    """Running both models over the data when their activations are not stored yet."""
    from ..activations import is_cached

    todo = [m for m, side in ((ctx.model_a, "a"), (ctx.model_b, "b"))
            if not all(is_cached(m, ctx.ds, l, ctx.p["pooling"]) for l in layers(ctx, side))]
    per_row = {"text": 4e-3, "image": 2e-5}.get(ctx.ds.kind, 2e-5)
    return len(todo) * len(ctx.ds) * per_row


def streams(ctx) -> bool:
    """Whether the maps are read from the on-disk activation cache (many samples, or activations
    that would not fit in memory) instead of computed in memory."""
    from .streamed import streams as over

    return over(len(ctx.ds), _dims(ctx, "a") + _dims(ctx, "b"))


def _matrices(ctx, progress) -> Matrices:
    import warnings

    from .. import similarity as sim

    ctx.check_pair()
    if streams(ctx):
        return _streamed_matrices(ctx, progress)
    p, out = ctx.p, {}
    for i, (name, (ma, mb, lx, ly)) in enumerate(_pairs(ctx).items()):
        sub = lambda f, m, i=i, name=name: progress((i + f) / 3, f"{name}: {m}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sim.SimilarityWarning)
            out[name] = sim.layer_similarity(ma, mb, ctx.ds, p["measure"], lx, ly, p["pooling"], batch_size(p),
                                             device=ctx.device, progress=sub, **measure_params(p))
    notes = list(dict.fromkeys(w for df in out.values() for w in df.attrs.get("warnings", [])))
    for df in out.values():
        df.attrs.clear()  # everything said there is in `notes`; attrs do not survive the store anyway
    return Matrices(out["AB"], out["AA"], out["BB"], sim.best_matches(out["AB"]), notes, _rules(ctx))


# ------------------------------------------------------------------ the streamed path
def _stream_inputs(ctx, progress, layers_a=None, layers_b=None):
    """Both models' activations in the on-disk cache (written on the first request)."""
    la, lb = layers_a or layers(ctx, "a"), layers_b or layers(ctx, "b")
    ca = _caches(ctx, "a", la, ctx.p["pooling"], lambda f, m: progress(0.25 * f, f"A: {m}"))
    cb = _caches(ctx, "b", lb, ctx.p["pooling"], lambda f, m: progress(0.25 + 0.25 * f, f"B: {m}"))
    return ca, cb


def rows_that_fit(n: int, dims_a: list[int], dims_b: list[int], measure: str) -> int:
    """The most rows (at most n and the in-memory limit) a measure that holds every row in memory
    can take here: its estimated peak within the memory free now and its n x n Gram matrices within
    RepLens's bound."""
    from .. import similarity as sim

    def fits(k: int) -> bool:
        try:
            sim.check_memory(k, dims_a, dims_b, measure)
            return True
        except UserInputError:
            return False

    hi = min(int(n), _in_memory_rows())
    if fits(hi):
        return hi
    lo = 10
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _stream_plan(ctx, measure: str, batch: int | None, da: list[int], db: list[int]) -> str:
    """How a streamed map is computed: "exact", "minibatch" or "subsample"."""
    from .. import similarity as sim
    from .. import streaming

    m = sim.MEASURES[measure]
    if m.family != "cka" or m.name == "rbf_cka":
        return "subsample"
    if batch or streaming.exact_cka_bytes(da + db) > streaming.EXACT_CKA_BYTES:
        return "minibatch"
    return "exact"


def streamed_maps(ctx, measure: str, params: dict, batch: int | None, ca: dict, cb: dict, progress,
                  self_maps: bool = True) -> tuple[list, str, list]:
    """([A x B, A x A, B x B] (the last two only with ``self_maps``), the note saying how they were
    computed, warnings) from the activation caches of both models."""
    import warnings

    from .. import similarity as sim
    from .. import streaming

    n = len(ctx.ds)
    m = sim.MEASURES[measure]
    da, db = [c.shape[1] for c in ca.values()], [c.shape[1] for c in cb.values()]
    plan = _stream_plan(ctx, measure, batch, da, db)
    pairs = [(ca, cb), (ca, ca), (cb, cb)] if self_maps else [(ca, cb)]
    if plan == "exact":
        maps = list(streaming.linear_cka(ca, cb, m.name == "debiased_linear_cka", progress))[:len(pairs)]
        note = (f"{m.label} is exact over all {n:,} samples, streamed from the activation cache: column means "
                "first, then the centred cross-products accumulated in float64.")
        return maps, note, _undefined(maps, m.label)
    if plan == "minibatch":
        size = int(batch or STREAM_BATCH)
        maps = [streaming.minibatch_cka(x, y, size, ctx.device,
                                        lambda f, msg, i=i: progress((i + f) / len(pairs), msg))
                for i, (x, y) in enumerate(pairs)]
        why = "" if batch else (" (exact streaming would hold too large cross-products for layers this wide)")
        note = (f"{m.label} by the minibatch estimator (Nguyen et al. 2021), batches of {size:,} over all {n:,} "
                f"samples, streamed from the activation cache{why}.")
        return maps, note, _undefined(maps, m.label)
    used = rows_that_fit(n, da, db, measure)
    progress(0.05, f"reading a subsample of {used:,} rows")
    sub = streaming.subsample({**{("A", k): c for k, c in ca.items()}, **{("B", k): c for k, c in cb.items()}},
                              used, int(ctx.p["seed"]), m.label)
    xa = {k: sub.arrays["A", k] for k in ca}
    xb = {k: sub.arrays["B", k] for k in cb}
    maps, notes = [], []
    for i, (x, y) in enumerate([(xa, xb), (xa, xa), (xb, xb)][:len(pairs)]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sim.SimilarityWarning)
            df = sim.similarity_matrix(x, y, measure, None, ctx.device,
                                       lambda f, msg, i=i: progress(0.1 + 0.9 * (i + f) / len(pairs), msg), **params)
        notes += df.attrs.get("warnings", [])
        df.attrs.clear()
        maps.append(df)
    return maps, sub.note, list(dict.fromkeys(notes))


def _undefined(maps, label: str) -> list:
    df = maps[0]
    bad = [f"A:{l}" for l in df.index if df.loc[l].isna().all()] + \
          [f"B:{l}" for l in df.columns if df[l].isna().all()]
    return [f"{label} is undefined (NaN) for {', '.join(bad)}: a constant layer."] if bad else []


def _streamed_matrices(ctx, progress) -> Matrices:
    from .. import similarity as sim

    ca, cb = _stream_inputs(ctx, progress)
    p = ctx.p
    maps, note, notes = streamed_maps(ctx, p["measure"], measure_params(p), batch_size(p), ca, cb,
                                      lambda f, m: progress(0.5 + 0.5 * f, m))
    ab, aa, bb = maps
    return Matrices(ab, aa, bb, sim.best_matches(ab), notes, _rules(ctx), note)


def _streamed_cost(ctx, measure: str, batch: int | None, da: list[int], db: list[int]) -> Cost:
    """Writing the caches, then reading them: twice and one product per window (exact), once with
    the minibatch estimator's flops, or a subsample read and the in-memory measure on it."""
    from .. import similarity as sim
    from .. import streaming
    from .streamed import read_seconds, write_seconds

    n = len(ctx.ds)
    write = sum(write_seconds(ctx, s, layers(ctx, s), ctx.p["pooling"]) for s in ("a", "b"))
    plan = _stream_plan(ctx, measure, batch, da, db)
    if plan == "exact":
        d = sum(da) + sum(db)
        seconds = read_seconds(n, da + db, 2) + n * d * d / streaming.GEMM_FLOPS_PER_SECOND
        return Cost(write + seconds, int(streaming.exact_cka_bytes(da + db)))
    if plan == "minibatch":
        b = int(batch or STREAM_BATCH)
        seconds = sum(sim.estimate_seconds(n, x, y, measure, b) for x, y in ((da, db), (da, da), (db, db)))
        return Cost(write + 3 * read_seconds(n, da + db) + seconds,
                    int(sim.estimate_bytes(n, da, db, measure, b) - 4.0 * n * sum(da + db)))
    k = rows_that_fit(n, da, db, measure)
    seconds = sum(sim.estimate_seconds(k, x, y, measure) for x, y in ((da, db), (da, da), (db, db)))
    return Cost(write + read_seconds(n, da + db) + seconds, int(sim.estimate_bytes(k, da, db, measure)))


def _rules(ctx) -> dict:
    """The pooling rule each shown layer gets (from two samples: rules depend on shapes only)."""
    from ..activations import extract, rows_of

    head = rows_of(ctx.ds, slice(0, min(2, len(ctx.ds))))
    return {side.upper(): dict(extract(model, head, layers(ctx, side), ctx.p["pooling"], ctx.device,
                                       use_cache=False).rules)
            for side, model in (("a", ctx.model_a), ("b", ctx.model_b))}


def pooling_note(matrices: Matrices, pooling: str) -> str:
    """One line saying how each layer's output became one vector per sample."""
    groups: dict[str, list[str]] = {}
    for side, rules in (matrices.pooling or {}).items():
        for layer, rule in rules.items():
            groups.setdefault(rule, []).append(f"{side} {layer}")
    shaped = {rule: names for rule, names in groups.items() if rule != "as is"}
    if not shaped:
        return f"Pooling ({pooling}): none needed, every layer shown gives one vector per sample."
    parts = [f"{rule} for {', '.join(names)}" for rule, names in shaped.items()]
    if "as is" in groups:
        parts.append("the other layers as they are")
    return f"Pooling ({pooling}): " + "; ".join(parts) + "."


def _cell(ctx, matrices=None) -> tuple[str, str]:
    best = (matrices or ctx.value("matrices")).best
    la, lb = layers(ctx, "a"), layers(ctx, "b")
    cell_a = ctx.p["cell_a"] if ctx.p["cell_a"] in la else (best[0][0] if best else la[0])
    cell_b = ctx.p["cell_b"] if ctx.p["cell_b"] in lb else (best[0][1] if best else lb[0])
    return cell_a, cell_b


def _cell_acts(ctx, cell_a: str, cell_b: str):
    from ..activations import extract

    xa = extract(ctx.model_a, ctx.ds, [cell_a], ctx.p["pooling"], ctx.device)[cell_a]
    xb = extract(ctx.model_b, ctx.ds, [cell_b], ctx.p["pooling"], ctx.device)[cell_b]
    return xa, xb


def _drill(ctx, progress) -> Drill:
    from .. import projection
    from .. import similarity as sim

    cell_a, cell_b = _cell(ctx)
    if streams(ctx):
        return _streamed_drill(ctx, cell_a, cell_b, progress)
    xa, xb = _cell_acts(ctx, cell_a, cell_b)
    value = float(ctx.value("matrices").ab.loc[cell_a, cell_b])
    ca, ra = projection.pca(xa)
    cb, rb = projection.pca(xb)
    p = ctx.p
    table = _per_class(ctx, xa, xb, ctx.ds.labels, value)
    seconds = sim.statistics_seconds(xa, xb, p["measure"], N_BOOT, N_PERM, **measure_params(p)) \
        if np.isfinite(value) else 0.0
    return Drill(cell_a, cell_b, value, ca, cb, ra, rb, table, (xa.shape[1], xb.shape[1]), float(seconds))


def _per_class(ctx, xa, xb, labels, value: float):
    import pandas as pd

    from .. import similarity as sim

    if labels is None or not np.isfinite(value):
        return pd.DataFrame({"class": [], "n": [], "value": []})
    table = sim.per_class_similarity(xa, xb, labels, ctx.p["measure"], **measure_params(ctx.p))
    if ctx.ds.label_names:
        table["class"] = [ctx.ds.label_names[int(c)] for c in table["class"]]
    table["class"] = table["class"].astype(str)
    return table


def _cell_sample(ctx, cell_a: str, cell_b: str, limit: int, progress=None):
    """A seeded subsample of at most ``limit`` rows of both cells' caches (the same rows)."""
    from .. import streaming

    ca, cb = _stream_inputs(ctx, progress or (lambda f, m: None), [cell_a], [cell_b])
    sub = streaming.subsample({"A": ca[cell_a], "B": cb[cell_b]}, limit, int(ctx.p["seed"]), "")
    return ca[cell_a], cb[cell_b], sub


def _streamed_drill(ctx, cell_a: str, cell_b: str, progress) -> Drill:
    """PCA of every row (incremental), drawn for a subsample; per-class values on the rows that fit."""
    from .. import similarity as sim
    from .. import streaming

    n, p = len(ctx.ds), ctx.p
    da, db = _dims(ctx, "a"), _dims(ctx, "b")
    per_class_rows = rows_that_fit(n, [da[layers(ctx, "a").index(cell_a)]], [db[layers(ctx, "b").index(cell_b)]],
                                   p["measure"])
    cache_a, cache_b, sub = _cell_sample(ctx, cell_a, cell_b, per_class_rows, progress)
    value = float(ctx.value("matrices").ab.loc[cell_a, cell_b])
    pa = streaming.incremental_pca(cache_a, 2, lambda f, m: progress(0.1 + 0.3 * f, f"A: {m}"))
    pb = streaming.incremental_pca(cache_b, 2, lambda f, m: progress(0.4 + 0.3 * f, f"B: {m}"))
    shown = streaming.subsample_rows(n, min(SCATTER_ROWS, _in_memory_rows()), int(p["seed"]))
    labels = None if ctx.ds.labels is None else np.asarray(ctx.ds.labels)[sub.rows]
    progress(0.75, f"per class on {sub.used:,} samples")
    table = _per_class(ctx, sub.arrays["A"], sub.arrays["B"], labels, value)
    small = streaming.subsample_rows(sub.used, min(STATS_ROWS, _in_memory_rows()), int(p["seed"]))
    seconds = sim.statistics_seconds(sub.arrays["A"][small], sub.arrays["B"][small], p["measure"], N_BOOT, N_PERM,
                                     **measure_params(p)) if np.isfinite(value) else 0.0
    drawn = "all of them" if len(shown) == n else f"{len(shown):,} of them"
    note = (f"PCA fitted on all {n:,} samples (incrementally, from the activation cache); the scatter draws "
            f"{drawn} and the per-class values use {sub.used:,} (drawn at random, seed {p['seed']}).")
    return Drill(cell_a, cell_b, value, pa.coords[shown], pb.coords[shown], pa.explained, pb.explained, table,
                 (cache_a.shape[1], cache_b.shape[1]), float(seconds), shown, note, len(small))


def _drill_cost(ctx) -> Cost:
    """Negligible in memory; streamed: both cells read three times (PCA's covariance and
    coordinates, the per-class subsample) and the measure on each class of that subsample."""
    from .. import similarity as sim
    from .streamed import read_seconds

    if not streams(ctx):
        return Cost(0.05, 0)
    n = len(ctx.ds)
    cell_a, cell_b = _cell(ctx, ctx.stored("matrices")) if ctx.stored("matrices") is not None else \
        (layers(ctx, "a")[-1], layers(ctx, "b")[-1])
    da = _dims(ctx, "a")[layers(ctx, "a").index(cell_a)]
    db = _dims(ctx, "b")[layers(ctx, "b").index(cell_b)]
    k = rows_that_fit(n, [da], [db], ctx.p["measure"])
    classes = max(len(np.unique(ctx.ds.labels)), 1) if ctx.ds.labels is not None else 0
    per_class = classes * sim.estimate_seconds(k // max(classes, 1), [da], [db], ctx.p["measure"]) if classes else 0.0
    seconds = 0.5 + read_seconds(n, [da, db], 3) + per_class
    return Cost(seconds, int(8.0 * (da * da + db * db) + 8.0 * k * (da + db) * 3))


def _statistics(ctx, progress) -> Statistics:
    from .. import similarity as sim

    drill = ctx.value("drill")
    if not np.isfinite(drill.value):
        raise UserInputError("This cell is undefined (a constant layer): there are no statistics to compute.")
    note = ""
    if streams(ctx):
        *_, sub = _cell_sample(ctx, drill.cell_a, drill.cell_b, min(STATS_ROWS, _in_memory_rows()),
                               lambda f, m: progress(0.05 * f, m))
        xa, xb = sub.arrays["A"], sub.arrays["B"]
        note = (f"The bootstrap, permutation test and stability hold n x n matrices, so they use {sub.used:,} of "
                f"the {len(ctx.ds):,} samples (drawn at random, seed {ctx.p['seed']}); the value above is "
                "over all of them.")
    else:
        xa, xb = _cell_acts(ctx, drill.cell_a, drill.cell_b)
    params = measure_params(ctx.p)
    progress(0.05, "bootstrap and permutation test")
    s = sim.cell_statistics(xa, xb, ctx.p["measure"], n_boot=N_BOOT, n_perm=N_PERM, **params)
    progress(0.8, "stability on subsets")
    curve = sim.stability_curve(xa, xb, ctx.p["measure"], **params)
    return Statistics(s.value, s.ci_low, s.ci_high, s.level, s.p_value, s.n_perm, s.null_mean, curve, s.null_std,
                      s.calibrated, note)


def _statistics_cost(ctx) -> Cost:
    drill = ctx.stored("drill")
    n = min(len(ctx.ds), STATS_ROWS, _in_memory_rows()) if streams(ctx) else len(ctx.ds)
    return Cost(drill.stats_seconds if drill is not None else 1.0, int(8 * n * n * 6))


N_PERM_MAP = 100


def _calibration(ctx, progress):
    from .. import similarity as sim

    ctx.check_pair()
    if streams(ctx):
        raise UserInputError(f"Calibrated values permute every sample in memory, so they are computed for at "
                             f"most {_in_memory_rows():,} samples (this view has {len(ctx.ds):,}). Choose "
                             f"{_in_memory_rows():,} samples or fewer for them, or show the raw values.")
    p = ctx.p
    return sim.layer_calibration(ctx.model_a, ctx.model_b, ctx.ds, p["measure"], N_PERM_MAP, int(p["seed"]),
                                 layers(ctx, "a"), layers(ctx, "b"), p["pooling"], device=ctx.device,
                                 progress=progress, **measure_params(p))


def _calibration_cost(ctx) -> Cost:
    from .. import similarity as sim

    n = len(ctx.ds)
    if streams(ctx):
        return Cost(0.05, 0)  # refused at once with the way around (see _calibration)
    seconds = sim.calibration_seconds(n, _dims(ctx, "a"), _dims(ctx, "b"), ctx.p["measure"], N_PERM_MAP)
    return Cost(seconds + _forward_seconds(ctx), _matrix_cost(ctx).bytes)


def _compare(ctx, progress) -> dict:
    from .. import similarity as sim

    ctx.check_pair()
    p, out = ctx.p, {}
    chosen = list(p["compare"] or [])
    if streams(ctx):
        return _streamed_compare(ctx, chosen, progress)
    for i, name in enumerate(chosen):
        m = sim.MEASURES[name]
        out[name] = sim.layer_similarity(ctx.model_a, ctx.model_b, ctx.ds, name, layers(ctx, "a"), layers(ctx, "b"),
                                         p["pooling"], device=ctx.device,
                                         progress=lambda f, msg, i=i: progress((i + f) / len(chosen), msg),
                                         **{k: v for k, v in m.params.items()})
        out[name].attrs.clear()
    return out


def _streamed_compare(ctx, chosen: list[str], progress) -> dict:
    """Each measure from the activation caches; ``notes`` (measure -> how) travels in the dict."""
    from .. import similarity as sim

    ca, cb = _stream_inputs(ctx, lambda f, m: progress(0.2 * f, m))
    out, notes = {}, {}
    for i, name in enumerate(chosen):
        sub = lambda f, msg, i=i, name=name: progress(0.2 + 0.8 * (i + f) / len(chosen), f"{name}: {msg}")
        maps, notes[name], _ = streamed_maps(ctx, name, dict(sim.MEASURES[name].params), None, ca, cb, sub,
                                             self_maps=False)
        out[name] = maps[0]
    return {**out, COMPARE_NOTES: notes}


COMPARE_NOTES = "notes"  # the streamed comparison's entry saying how each measure was computed


def compared(result) -> dict:
    """The comparison's maps, measure -> DataFrame (without the streamed path's notes)."""
    return {k: v for k, v in (result.compare or {}).items() if k != COMPARE_NOTES}


def compare_notes(result) -> dict:
    return dict((result.compare or {}).get(COMPARE_NOTES) or {})


def _compare_cost(ctx) -> Cost:
    total = Cost()
    for name in ctx.p["compare"] or []:
        total = total + _matrix_cost(ctx, name)
    return total


def _keyed_cell(ctx) -> dict:
    """The drill-down cell the view shows: the link's, or the best match once the maps are known."""
    matrices = ctx.stored("matrices")
    return {} if matrices is None else dict(zip(("cell_a", "cell_b"), _cell(ctx, matrices)))


MATRIX_AROUND = ("Use fewer samples or layers, or linear CKA with a minibatch size (its memory does not grow "
                 "with the number of samples).")
SECTIONS = (
    Section("matrices", _matrices, MATRIX_READS, "abd", _matrix_cost, title="the layer-by-layer maps",
            ways_around=MATRIX_AROUND, variant=lambda ctx: ctx.p["measure"]),
    Section("drill", _drill, MATRIX_READS + ("cell_a", "cell_b"), "abd", _drill_cost, title="the drill-down",
            keyed=_keyed_cell, variant=lambda ctx: "streamed" if streams(ctx) else ""),
    Section("statistics", _statistics, MATRIX_READS + ("cell_a", "cell_b"), "abd", _statistics_cost, keyed=_keyed_cell,
            wanted=lambda ctx: bool(ctx.p["stats"]), title="bootstrap, permutation test and stability",
            ways_around="Use fewer samples.", variant=lambda ctx: ctx.p["measure"]),
    Section("calibration", _calibration, MATRIX_READS + ("seed",), "abd", _calibration_cost,
            wanted=lambda ctx: ctx.p["values"] == "calibrated", title="the permutation null of every cell",
            ways_around="Use raw values, fewer samples or fewer layers.", variant=lambda ctx: ctx.p["measure"]),
    Section("compare", _compare, ("compare", "pooling", "layers_a", "layers_b"), "abd", _compare_cost,
            wanted=lambda ctx: bool(ctx.p["compare_on"] and ctx.p["compare"]), title="the measure comparison",
            ways_around=MATRIX_AROUND),
)


def summary(result) -> dict:
    out = {}
    if result.matrices is not None:
        out.update({f"best match for A:{a}": f"B:{b} ({v:.4f})" for a, b, v in result.matrices.best})
    if result.drill is not None:
        out[f"drill-down value ({result.drill.cell_a} vs {result.drill.cell_b})"] = result.drill.value
    if result.statistics is not None:
        s = result.statistics
        out.update({"bootstrap CI": f"[{s.ci_low:.4f}, {s.ci_high:.4f}]", "permutation p-value": s.p_value,
                    "null mean": s.null_mean})
    return out
