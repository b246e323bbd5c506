"""SAE features view: a sparse autoencoder on a layer of A and one on a layer of B (trained here, or
opened from SAELens files), their metrics and training curves, the sparsity frontier of every SAE
trained on the layer, a feature browser (table, decoder map, one feature's examples, class
association and nearest features, the features active on one input) and the features of A and B
matched one-to-one.

The browsed model (``sae_model``) gets the browser; both get an SAE when their features are matched.
Sections come in pairs, one per side ("a", "b"), so that browsing A never retrains B's SAE and a new
feature index recomputes one small section.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserInputError
from ..jobs import Cost
from ..spec import Param
from .base import Section

PAGE, TITLE, VERSION = "sae", "SAE features", 2  # 2: the trainer of analysis.sae.trained.TRAINER 2
SIDES = ("a", "b")
EXPANSIONS = ("auto", "1", "2", "4", "8", "16", "32")
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
BATCHES = (64, 128, 256, 512, 1024, 4096)
KIND_HELP = ("topk: exactly k active latents per input (Gao et al. 2024). batchtopk: k on average over a batch. "
             "relu: ReLU with a norm-weighted L1 penalty (Anthropic 2024). jumprelu: a learned threshold per latent "
             "with an L0 penalty (Rajamanoharan et al. 2024).")
PENALTY_HELP = ("Sparsity coefficient (L1 for relu, L0 for jumprelu) on inputs scaled to E||x||² = width. Larger: "
                "fewer active latents, worse reconstruction.")
TRAIN_AROUND = "Use fewer steps, a smaller expansion or batch, or fewer samples."
LIVE_DOC = "sae-live"  # the store's documents holding a running training's curve
UPLOAD_KIND = "sae-upload"
_HEX64 = re.compile(r"[0-9a-f]{64}")
N_TOP, N_PAIR_EXAMPLES = 12, 8


def _kinds():
    from ..sae import KINDS

    return list(KINDS)


PARAMS = (
    Param("sae_model", "str", "A", choices=("A", "B"), label="Browse", help="the model whose SAE is browsed"),
    Param("sae_layer_a", "str", domain="layer:a", label="Layer of A", help="layer of A (default: the middle one)"),
    Param("sae_layer_b", "str", domain="layer:b", label="Layer of B", help="layer of B (default: the middle one)"),
    Param("sae_kind", "str", "topk", choices=_kinds, label="Kind", help=KIND_HELP),
    Param("sae_exp", "str", "auto", choices=EXPANSIONS, label="Expansion",
          help="Latents = expansion × the layer's width. auto: scaled to the data, the largest power of two that "
               "keeps at most one latent per 4 inputs (at least 1×)."),
    Param("sae_k", "int", 16, lo=1, hi=512, label="k", help="Active latents per input (topk) or on average (batchtopk)."),
    Param("sae_l1_relu", "float", 3.0, lo=0.0, hi=1000.0, step=0.5, label="Penalty", help=PENALTY_HELP),
    Param("sae_l1_jumprelu", "float", 0.1, lo=0.0, hi=1000.0, step=0.05, label="Penalty", help=PENALTY_HELP),
    Param("sae_steps", "int", 300, lo=50, hi=50000, step=100, label="Steps", help="training steps"),
    Param("sae_lr", "float", 3e-3, choices=LRS, label="Learning rate", help="Adam's learning rate"),
    Param("sae_bs", "int", 128, choices=BATCHES, label="Batch", help="activations per training step"),
    Param("sae_file_a", "str", label="SAE opened for A", help="id of an SAE opened from SAELens files, used for A"),
    Param("sae_file_b", "str", label="SAE opened for B", help="id of an SAE opened from SAELens files, used for B"),
    Param("sae_sweep", "bool", False, label="Sweep the sparsity for the frontier",
          help="Also train this SAE at k = 4, 8, 16, 32, 64 (or the penalty × ¼, ½, 2, 4): every one is a point "
               "on the frontier."),
    Param("sae_map", "str", "umap", choices=("umap", "pca"), label="Decoder map",
          help="UMAP of the unit decoder directions (a worker's first UMAP compiles for ~15 s), or PCA."),
    Param("sae_feature", "int", lo=0, hi=1_000_000, label="Feature", help="feature on show (default: the densest)"),
    Param("sae_input", "int", 0, lo=0, hi=1_000_000, label="Input (row of the dataset)",
          help="input whose active features are listed"),
    Param("sae_match", "bool", True, label="Match A's and B's features",
          help="Train (or load) the same kind of SAE on A's and B's chosen layers and pair their features by "
               "activation correlation on the same inputs (Hungarian assignment)."),
    Param("sae_pair", "int", 0, lo=0, hi=1_000_000, label="Pair (rank by correlation, 0 = best)",
          help="matched pair on show"),
)
HYPER_READS = ("sae_kind", "sae_exp", "sae_k", "sae_l1_relu", "sae_l1_jumprelu", "sae_steps", "sae_lr", "sae_bs")


# ------------------------------------------------------------------ the spec's derived choices
def browsed(ctx) -> str:
    return ctx.p["sae_model"].lower()


def model(ctx, side: str):
    return ctx.model_a if side == "a" else ctx.model_b


def layer(ctx, side: str) -> str:
    m = model(ctx, side)
    return ctx.p[f"sae_layer_{side}"] or m.layers[len(m.layers) // 2]


def width(ctx, side: str) -> int:
    from ..activations import pooled_dims

    return int(pooled_dims(model(ctx, side), ctx.ds, [layer(ctx, side)], "mean")[0])


def expansion(ctx, side: str) -> int:
    from ..sae.training import expansion_for

    chosen = str(ctx.p["sae_exp"])
    return expansion_for(len(ctx.ds), width(ctx, side)) if chosen == "auto" else int(chosen)


def hyper(ctx, side: str) -> dict:
    """The SAE's hyper-parameters as the library takes them (only those its kind uses)."""
    from ..sae import PENALTY_KINDS, normalise_params

    p, kind = ctx.p, ctx.p["sae_kind"]
    out = {"kind": kind, "expansion": expansion(ctx, side), "steps": p["sae_steps"], "lr": p["sae_lr"],
           "batch_size": p["sae_bs"]}
    if kind in PENALTY_KINDS:
        out["l1"] = p[f"sae_l1_{kind}"]
    else:
        out["k"] = p["sae_k"]
    return normalise_params(**out)


def uploaded(ctx, side: str):
    """The SAEState opened for this side (None: the side trains its own)."""
    file_id = ctx.p[f"sae_file_{side}"]
    if not file_id:
        return None
    from ..sae import SAEState

    state = ctx.store.lookup(UPLOAD_KIND, {"id": file_id}, check=lambda s: isinstance(s, SAEState))
    if state is None:
        raise UserInputError(f"No SAE opened from SAELens files with id {file_id[:16]}… on this server; open the "
                             "files again.")
    return state


def sae(ctx, side: str, progress=None, on_log=None):
    """The side's SAE: opened from files, or trained (once; then from the store)."""
    cache = ctx.__dict__.setdefault("_saes", {})
    if side not in cache:
        state = uploaded(ctx, side)
        if state is not None:
            cache[side] = state.to_sae()
        else:
            from ..sae import trained_sae

            cache[side] = trained_sae(model(ctx, side), ctx.ds, layer(ctx, side), store=ctx.store,
                                      device=ctx.device, progress=progress, on_log=on_log, **hyper(ctx, side))
    return cache[side]


def rows(ctx, side: str):
    """The side's activations for what reads them in one pass: an array in memory, or above the
    in-memory limit the on-disk activation cache (read chunk by chunk)."""
    from ..sae import streams

    if not streams(len(ctx.ds)):
        return acts(ctx, side)
    from ..activations import extract_chunked

    lyr = layer(ctx, side)
    return extract_chunked(model(ctx, side), ctx.ds, [lyr], "mean", ctx.device)[lyr]


def acts(ctx, side: str) -> np.ndarray:
    from ..activations import extract

    cache = ctx.__dict__.setdefault("_acts", {})
    if side not in cache:
        lyr = layer(ctx, side)
        cache[side] = extract(model(ctx, side), ctx.ds, [lyr], "mean", ctx.device)[lyr]
    return cache[side]


def latents(ctx, side: str) -> int:
    state = uploaded(ctx, side)
    return state.d_sae if state is not None else expansion(ctx, side) * width(ctx, side)


def class_names(ctx) -> list[str] | None:
    ds = ctx.ds
    if ds.labels is None:
        return None
    return list(ds.label_names) if ds.label_names else [str(c) for c in range(int(np.max(ds.labels)) + 1)]


# ------------------------------------------------------------------ results
@dataclass
class Training:
    side: str  # "a" or "b"
    model: str
    layer: str
    n: int  # inputs it was trained on (evaluated on)
    d_in: int
    d_sae: int
    kind: str
    describe: str
    params: dict  # normalised hyper-parameters ({} for an SAE opened from files)
    history: dict  # step, loss, l0, fve of the logged training batches
    seconds: float
    samples_per_second: float
    source: str  # "trained", "store" (trained before this view) or "files"
    name: str = ""  # the opened files' name
    warnings: list = field(default_factory=list)
    streamed: bool = False  # trained from the on-disk activation cache, a few chunks at a time


@dataclass
class Metrics:
    summary: object  # analysis.sae.SAEMetrics on the view's inputs
    downstream: object | None  # analysis.sae.Downstream, or None
    downstream_skipped: str  # why there is no downstream check


@dataclass
class Features:
    table: object  # DataFrame: one row per latent (feature, density, activations, top class, status)
    density: np.ndarray
    max_act: np.ndarray
    mean_act: np.ndarray
    quantiles: np.ndarray
    class_mean: np.ndarray | None
    class_names: list | None
    codes_data: np.ndarray  # the (inputs x latents) activations, CSC arrays
    codes_indices: np.ndarray
    codes_indptr: np.ndarray
    shape: tuple

    def stats(self):
        from scipy import sparse

        from ..sae import FeatureStats

        codes = sparse.csc_matrix((self.codes_data, self.codes_indices, self.codes_indptr), shape=self.shape)
        return FeatureStats(codes, self.density, self.max_act, self.mean_act, self.quantiles, self.class_mean,
                            self.class_names)

    def top_classes(self) -> list | None:
        return None if "top class" not in self.table else list(self.table["top class"])


@dataclass
class DecoderMap:
    method: str
    coords: np.ndarray


@dataclass
class FeatureDetail:
    index: int
    density: float
    peak: float
    median: float
    dead: bool
    dense: bool
    top_class: str
    activations: np.ndarray  # its non-zero activations
    class_mean: np.ndarray | None  # mean activation per class
    effect: np.ndarray | None  # class-logit effect of its decoder direction
    top_rows: np.ndarray
    top_values: np.ndarray
    bands: list  # (low, high, rows, values, count), highest band first
    nearest: object  # DataFrame: feature, cosine, density[, top class]
    tokens: dict  # row -> (tokens, values): text models only
    note: str = ""


@dataclass
class InputDetail:
    row: int
    features: np.ndarray
    values: np.ndarray


@dataclass
class Match:
    match: object  # analysis.sae.FeatureMatch
    table: object  # DataFrame: feature A, feature B, correlation, shared[, top class A, top class B]
    latents_a: int
    latents_b: int


@dataclass
class Pair:
    rank: int
    feature_a: int
    feature_b: int
    correlation: float
    shared: bool
    density_a: float
    density_b: float
    rows_a: np.ndarray
    values_a: np.ndarray
    rows_b: np.ndarray
    values_b: np.ndarray
    tokens_a: dict
    tokens_b: dict
    note: str = ""


@dataclass
class Result:
    train_a: Training | None = None
    train_b: Training | None = None
    metrics_a: Metrics | None = None
    metrics_b: Metrics | None = None
    features_a: Features | None = None
    features_b: Features | None = None
    effect_a: dict | None = None
    effect_b: dict | None = None
    pca_a: DecoderMap | None = None  # the decoder map, by PCA or UMAP (one section each: their costs
    pca_b: DecoderMap | None = None  # differ by orders of magnitude, and estimates learn per section)
    umap_a: DecoderMap | None = None
    umap_b: DecoderMap | None = None
    feature_a: FeatureDetail | None = None
    feature_b: FeatureDetail | None = None
    input_a: InputDetail | None = None
    input_b: InputDetail | None = None
    frontier_a: list | None = None
    frontier_b: list | None = None
    sweep_a: list | None = None
    sweep_b: list | None = None
    match: Match | None = None
    pair: Pair | None = None

    def of(self, name: str, side: str):
        return getattr(self, f"{name}_{side}")

    def decoder_map(self, side: str) -> DecoderMap | None:
        return self.of("umap", side) or self.of("pca", side)


# ------------------------------------------------------------------ costs
def _forward_seconds(ctx, side: str, rows: int | None = None) -> float:
    per_row = {"text": 4e-3}.get(ctx.ds.kind, 2e-5)
    return (len(ctx.ds) if rows is None else rows) * per_row


def _extract_seconds(ctx, side: str) -> float:
    from ..activations import is_cached

    return 0.0 if is_cached(model(ctx, side), ctx.ds, layer(ctx, side), "mean") else _forward_seconds(ctx, side)


def training_cost(ctx, side: str, params: dict | None = None) -> Cost:
    """Training one SAE (plus the activations it reads, when not stored yet, and its evaluation).
    Above the in-memory limit it trains from the activation cache: a few chunks in memory, not n rows."""
    from ..activations.cache import CHUNK_BYTES
    from ..sae import estimate_seconds, streams

    n, d = len(ctx.ds), width(ctx, side)
    hp = params or hyper(ctx, side)
    m = hp["expansion"] * d
    seconds = estimate_seconds(n, d, hp["expansion"], hp["steps"], hp["batch_size"], hp["kind"], hp.get("k", 16)) \
        + 4.0 * n * d * m / 1.5e10
    weights = 4 * 4 * 2 * d * m  # weights, gradients and Adam's two moments, float32
    # pre-activations and their copies: the sparse TopK step keeps ~3 (batch x m) arrays, autograd ~6
    batch = 4 * (3 if hp["kind"] in ("topk", "batchtopk") else 6) * min(hp["batch_size"], n) * m
    rows = 4 * CHUNK_BYTES + 2 * 4 * 8192 * d if streams(n) else 8 * n * d
    return Cost(seconds + _extract_seconds(ctx, side), int(weights + batch + rows))


def _train_cost(side: str):
    def cost(ctx) -> Cost:
        from ..sae import is_trained

        if ctx.p[f"sae_file_{side}"] or is_trained(model(ctx, side), ctx.ds, layer(ctx, side), store=ctx.store,
                                                   **hyper(ctx, side)):
            return Cost(0.2, 0)
        return training_cost(ctx, side)
    return cost


def _metrics_cost(side: str):
    def cost(ctx) -> Cost:
        n, m = len(ctx.ds), latents(ctx, side)
        evaluate = 4.0 * n * width(ctx, side) * m / 1.5e10 + 0.05
        splice = 3 * _forward_seconds(ctx, side) if model(ctx, side).kind in ("classifier", "autoencoder") else 0.0
        return Cost(evaluate + splice, 8 * n * m)
    return cost


def _features_cost(side: str):
    return lambda ctx: Cost(0.05 + 3e-5 * latents(ctx, side) + 2.0 * len(ctx.ds) * width(ctx, side)
                            * latents(ctx, side) / 1.5e10, 8 * len(ctx.ds) * latents(ctx, side))


def _map_cost(side: str, method: str):
    def cost(ctx) -> Cost:
        m = latents(ctx, side)
        if method == "pca":
            return Cost(0.05 + 1e-5 * m, 8 * m * width(ctx, side))
        from ..projection import estimate_seconds, start_seconds

        # importing UMAP in the worker, compiling it only when the store's numba cache lacks it
        return Cost(start_seconds("umap", m) + estimate_seconds(m, width(ctx, side), "umap"), 200 * m * 15)
    return cost


def _effect_cost(side: str):
    def cost(ctx) -> Cost:
        if model(ctx, side).kind != "classifier":
            return Cost(0.02, 0)
        return Cost(0.1 + 2 * _forward_seconds(ctx, side, 32 * latents(ctx, side)), 0)
    return cost


def _feature_cost(side: str):
    text = lambda ctx: model(ctx, side).input_kind == "text"
    return lambda ctx: Cost(0.05 + (0.5 if text(ctx) else 0.0), 0)


def _match_cost(ctx) -> Cost:
    la, lb = latents(ctx, "a"), latents(ctx, "b")
    n = len(ctx.ds)
    return Cost(0.1 + 2.0 * n * la * lb / 2e9 + min(la, lb) ** 3 * 5e-11, 8 * la * lb + 8 * n * (la + lb))


def _sweep_cost(side: str):
    def cost(ctx) -> Cost:
        return sum((training_cost(ctx, side, p) for p in _sweep_missing(ctx, side)), Cost(0.05, 0))
    return cost


# ------------------------------------------------------------------ sections
def _train(side: str):
    def compute(ctx, progress) -> Training:
        from ..sae import latents_outnumber_inputs

        m, lyr, n = model(ctx, side), layer(ctx, side), len(ctx.ds)
        state = uploaded(ctx, side)
        if state is not None:
            s = state.to_sae()
            if s.d_in != width(ctx, side):
                raise UserInputError(f"The SAE opened for {side.upper()} reads {s.d_in}-dimensional activations but "
                                     f"{lyr} has {width(ctx, side)}: pick the layer it was trained on.")
            source, name, params = "files", state.train_info.get("name", ""), {}
        else:
            ctx.check_pair()
            doc = ctx.key(ctx.view.section(f"train_{side}"))
            live = _LiveCurve(ctx.store, doc)
            try:
                s = sae(ctx, side, progress, live)
            finally:
                live.close()
            source, name, params = ("store" if s.cached else "trained"), "", hyper(ctx, side)
        info = s.train_info
        warnings = [w for w in (latents_outnumber_inputs(s.d_sae, n),) if w]
        return Training(side, m.ref, lyr, n, s.d_in, s.d_sae, s.kind, s.describe(), params,
                        {k: np.asarray(v, np.float64) for k, v in s.history.items()}, float(info.get("seconds", 0.0)),
                        float(info.get("samples_per_second", 0.0)), source, name, warnings,
                        bool(info.get("streamed", False)))
    return compute


class _LiveCurve:
    """The running training's curve, written to the store as it grows, so that a page in another
    process (the job runs in a worker) can draw it: see :func:`live_history`."""

    def __init__(self, store, doc: str):
        self.store, self.doc = store, doc
        store.put_doc(LIVE_DOC, doc, {"history": {}})

    def __call__(self, history: dict) -> None:
        self.store.put_doc(LIVE_DOC, self.doc, {"history": {k: [float(v) for v in vs] for k, vs in history.items()}})

    def close(self) -> None:
        self.store.delete_doc(LIVE_DOC, self.doc)


def live_history(view, spec, side: str, store=None) -> dict | None:
    """The curve of the training of ``side``'s SAE that is running now for this spec, if any."""
    ctx = view.context(spec, store=store)
    body = ctx.store.get_doc(LIVE_DOC, ctx.key(view.section(f"train_{side}")))
    return None if body is None else body.get("history") or None


def _metrics(side: str):
    def compute(ctx, progress) -> Metrics:
        from ..sae import downstream, evaluate

        s, x = sae(ctx, side), rows(ctx, side)
        progress(0.1, "evaluating")
        summary = evaluate(s, x)
        progress(0.4, "splicing the reconstruction into the model")
        try:
            down, why = downstream(s, model(ctx, side), layer(ctx, side), ctx.ds, device=ctx.device), ""
        except UserInputError as exc:
            down, why = None, str(exc)
        return Metrics(summary, down, why)
    return compute


def _features(side: str):
    def compute(ctx, progress) -> Features:
        from ..sae import feature_stats

        names = class_names(ctx)
        st = feature_stats(sae(ctx, side), acts(ctx, side), ctx.ds.labels, tuple(names) if names else None)
        table = st.table().sort_values("density", ascending=False, kind="stable").reset_index(drop=True)
        table = table[[c for c in ("feature", "density", "max activation", "top class", "top class share", "status",
                                   "mean activation") if c in table]]
        c = st.codes
        return Features(table, st.density, st.max_act, st.mean_act, st.quantiles, st.class_mean, st.class_names,
                        c.data, c.indices, c.indptr, tuple(int(v) for v in c.shape))
    return compute


def _map(side: str, method: str):
    def compute(ctx, progress) -> DecoderMap:
        from ..sae import decoder_map

        progress(0.05, f"{method.upper()} of the decoder directions")
        return DecoderMap(method, np.asarray(decoder_map(sae(ctx, side), method)))
    return compute


def _effect(side: str):
    def compute(ctx, progress) -> dict:
        from ..sae import logit_effect

        f = ctx.value(f"features_{side}")
        effect = logit_effect(sae(ctx, side), model(ctx, side), layer(ctx, side), ctx.ds, scale=f.mean_act,
                              device=ctx.device)
        return {"effect": effect}
    return compute


def feature_index(ctx, side: str, features: Features) -> tuple[int, str]:
    """The feature on show: the one asked for, else the densest (with a note when one was asked for)."""
    asked, m = ctx.p["sae_feature"], len(features.density)
    default = int(features.table.loc[0, "feature"])
    if asked is None:
        return default, ""
    if 0 <= int(asked) < m:
        return int(asked), ""
    return default, f"Feature {asked} does not exist (this SAE has {m} latents): showing the densest, {default}."


def _tokens(ctx, side: str, s, rows, feature: int) -> dict:
    from ..sae import token_activations

    m = model(ctx, side)
    rows = sorted({int(r) for r in rows})
    if ctx.ds.kind != "text" or getattr(m, "input_kind", "") != "text" or not rows:
        return {}
    out = token_activations(s, m, layer(ctx, side), [ctx.ds.inputs[r] for r in rows], feature)
    return {r: (list(t), np.asarray(v, np.float64)) for r, (t, v) in zip(rows, out)}


def _feature(side: str):
    def compute(ctx, progress) -> FeatureDetail:
        import pandas as pd

        from ..sae import DENSE_FRACTION, feature_column, feature_examples, nearest_features

        f = ctx.value(f"features_{side}")
        s, st = sae(ctx, side), f.stats()
        i, note = feature_index(ctx, side, f)
        col = feature_column(st, i)
        ex = feature_examples(st, i, n_top=N_TOP)
        near, cos = nearest_features(s, i)
        tops = f.top_classes()
        top_by_feature = None if tops is None else dict(zip(f.table["feature"], tops))
        nearest = pd.DataFrame({"feature": near.astype(int), "cosine": cos, "density": f.density[near]})
        if top_by_feature is not None:
            nearest["top class"] = [top_by_feature[int(j)] for j in near]
        effect = ctx.value(f"effect_{side}")["effect"]
        density = float(f.density[i])
        rows = list(ex["top"][0]) + [r for band in ex["bands"] for r in band[2]]
        return FeatureDetail(i, density, float(f.max_act[i]), float(f.quantiles[i, 0]), density == 0,
                             density > DENSE_FRACTION, "" if top_by_feature is None else top_by_feature[i],
                             col[col > 0], None if f.class_mean is None else f.class_mean[i],
                             None if effect is None else effect[i], ex["top"][0], ex["top"][1], ex["bands"], nearest,
                             _tokens(ctx, side, s, rows, i), note)
    return compute


def _input(side: str):
    def compute(ctx, progress) -> InputDetail:
        from ..sae import active_features

        row = int(ctx.p["sae_input"])
        features, values = active_features(ctx.value(f"features_{side}").stats(), row)
        return InputDetail(row, features, values)
    return compute


def _sweep_missing(ctx, side: str) -> list[dict]:
    from ..sae import is_trained, sweep_params

    return [p for p in sweep_params(hyper(ctx, side))
            if not is_trained(model(ctx, side), ctx.ds, layer(ctx, side), store=ctx.store, **p)]


def _sweep(side: str):
    def compute(ctx, progress) -> list:
        from ..sae import sweep_params, trained_sae

        ctx.check_pair()
        variants = sweep_params(hyper(ctx, side))
        for i, p in enumerate(variants):
            sub = lambda f, msg, i=i: progress((i + f) / len(variants), f"{i + 1}/{len(variants)}: {msg}")
            trained_sae(model(ctx, side), ctx.ds, layer(ctx, side), store=ctx.store, device=ctx.device, progress=sub,
                        **p)
        return variants
    return compute


def _frontier(side: str):
    def compute(ctx, progress) -> list:
        from ..sae import trained_list

        rows = trained_list(model(ctx, side).sha256, ctx.ds.sha256, layer(ctx, side), store=ctx.store)
        return [{"params": r["params"], "metrics": r["train_info"]["metrics"]} for r in rows
                if "metrics" in r.get("train_info", {})]
    return compute


def _match(ctx, progress) -> Match:
    from ..sae import match_features

    fa, fb = ctx.value("features_a"), ctx.value("features_b")
    progress(0.1, "correlating the features of A and B")
    m = match_features(sae(ctx, "a"), acts(ctx, "a"), sae(ctx, "b"), acts(ctx, "b"),
                       codes_a=fa.stats().codes, codes_b=fb.stats().codes)
    table = m.table()
    ta, tb = fa.top_classes(), fb.top_classes()
    if ta is not None and tb is not None:
        by_a, by_b = dict(zip(fa.table["feature"], ta)), dict(zip(fb.table["feature"], tb))
        table["top class A"] = [by_a[int(i)] for i in m.a]
        table["top class B"] = [by_b[int(i)] for i in m.b]
    return Match(m, table, len(fa.density), len(fb.density))


def _pair(ctx, progress) -> Pair:
    from ..sae import feature_examples

    mt = ctx.value("match").match
    asked, last = int(ctx.p["sae_pair"]), len(mt.a) - 1
    rank = min(max(asked, 0), last)
    note = "" if rank == asked else f"There are {last + 1} pairs: showing the last, {rank}."
    fa, fb = int(mt.a[rank]), int(mt.b[rank])
    feats = {s: ctx.value(f"features_{s}") for s in SIDES}
    ex = {s: feature_examples(feats[s].stats(), f, n_top=N_PAIR_EXAMPLES)["top"] for s, f in (("a", fa), ("b", fb))}
    tokens = {s: _tokens(ctx, s, sae(ctx, s), ex[s][0], f) for s, f in (("a", fa), ("b", fb))}
    r = float(mt.correlation[rank])
    return Pair(rank, fa, fb, r, r >= mt.threshold, float(feats["a"].density[fa]), float(feats["b"].density[fb]),
                ex["a"][0], ex["a"][1], ex["b"][0], ex["b"][1], tokens["a"], tokens["b"], note)


def _side_reads(side: str) -> tuple[str, ...]:
    return HYPER_READS + (f"sae_file_{side}",)


# The layer each side's sections read, as resolved (None in a spec means the middle layer): a page
# that shows the middle layer by name and a CLI run that left it to the view share their results.
INPUTS = {"l": lambda ctx: layer(ctx, "a"), "m": lambda ctx: layer(ctx, "b")}
LAYER_INPUT = {"a": "l", "b": "m"}


def _needed(side: str):
    """An SAE on this side: it is browsed, or its features are matched."""
    return lambda ctx: browsed(ctx) == side or bool(ctx.p["sae_match"])


def _shown(side: str, extra=None):
    return lambda ctx: browsed(ctx) == side and (extra is None or extra(ctx))


def _side_sections(side: str) -> tuple[Section, ...]:
    s, reads, uses, tag = side, _side_reads(side), f"{side}d{LAYER_INPUT[side]}", side.upper()
    return (
        Section(f"train_{s}", _train(s), reads, uses, _train_cost(s), wanted=_needed(s),
                title=f"the SAE of {tag}", ways_around=TRAIN_AROUND),
        Section(f"metrics_{s}", _metrics(s), reads, uses, _metrics_cost(s), wanted=_needed(s),
                title=f"the metrics of {tag}'s SAE", ways_around="Use fewer samples."),
        Section(f"features_{s}", _features(s), reads, uses, _features_cost(s), wanted=_needed(s),
                title=f"the feature statistics of {tag}", ways_around="Use fewer samples or a smaller expansion."),
        Section(f"effect_{s}", _effect(s), reads, uses, _effect_cost(s), wanted=_shown(s),
                title=f"the class-logit effects of {tag}'s features", ways_around="Use a smaller expansion."),
        *(Section(f"{method}_{s}", _map(s, method), reads, uses, _map_cost(s, method),
                  wanted=_shown(s, lambda ctx, method=method: ctx.p["sae_map"] == method),
                  title=f"the decoder map of {tag} ({method.upper()})",
                  ways_around="Use PCA for the decoder map, or a smaller expansion.") for method in ("pca", "umap")),
        Section(f"feature_{s}", _feature(s), reads + ("sae_feature",), uses, _feature_cost(s), wanted=_shown(s),
                title=f"feature {tag}"),
        Section(f"input_{s}", _input(s), reads + ("sae_input",), uses, wanted=_shown(s), title="one input"),
        Section(f"sweep_{s}", _sweep(s), reads, uses, _sweep_cost(s),
                wanted=_shown(s, lambda ctx: bool(ctx.p["sae_sweep"]) and not ctx.p[f"sae_file_{s}"]),
                title=f"the sparsity sweep of {tag}", ways_around=TRAIN_AROUND),
        Section(f"frontier_{s}", _frontier(s), reads, uses, wanted=_shown(s), title="the frontier", stored=False),
    )


BOTH = _side_reads("a") + _side_reads("b")[-1:]
SECTIONS = (
    *_side_sections("a"),
    *_side_sections("b"),
    Section("match", _match, BOTH, "abdlm", _match_cost, wanted=lambda ctx: bool(ctx.p["sae_match"]),
            title="the matched features of A and B", ways_around="Use a smaller expansion or fewer samples."),
    Section("pair", _pair, BOTH + ("sae_pair",), "abdlm", wanted=lambda ctx: bool(ctx.p["sae_match"]),
            title="one matched pair"),
)


def sections_of(side: str, *names: str) -> list[str]:
    return [f"{n}_{side}" for n in names]


# ------------------------------------------------------------------ values that no longer fit
def resolve(ctx) -> dict:
    """Opened SAEs that are missing or read another width, and rows beyond the data, fall back. A
    layer of a previous model falls back to the new model's middle layer, named, so that the layer
    box shows it."""
    changes = {}
    for side in SIDES:
        key = f"sae_layer_{side}"
        if ctx.spec.params.get(key) is not None and ctx.p[key] is None:  # not a layer of this model
            changes[key] = layer(ctx, side)
    for side in SIDES:
        key = f"sae_file_{side}"
        file_id = ctx.p[key]
        if not file_id:
            continue
        try:
            if not _HEX64.fullmatch(str(file_id)):
                raise UserInputError(f"{str(file_id)[:20]!r} is not the id of an SAE opened from files.")
            state, d = uploaded(ctx, side), width(ctx, side)
            if state.d_in != d:
                raise UserInputError(f"The SAE opened for {side.upper()} reads {state.d_in} dimensions, "
                                     f"{layer(ctx, side)} has {d}.")
        except UserInputError as exc:
            ctx.notes.append(f"{exc} Training one instead.")
            changes[key] = None
    ctx.p = {**ctx.p, **changes}
    feature, side = ctx.p["sae_feature"], browsed(ctx)
    if feature is not None and int(feature) >= (m := latents(ctx, side)):
        ctx.notes.append(f"Feature {feature} does not exist ({side.upper()}'s SAE has {m:,} latents): showing the "
                         "densest.")
        changes["sae_feature"] = None
    row = ctx.p["sae_input"]
    if row is not None and int(row) >= len(ctx.ds):
        ctx.notes.append(f"Input {row} does not exist ({len(ctx.ds)} inputs): showing input 0.")
        changes["sae_input"] = 0
    return changes


# ------------------------------------------------------------------ SAEs opened from files
def upload(files: dict, ctx, side: str) -> str:
    """Open an SAE from its SAELens files (or this view's zip of them) for ``side``: checked against
    the side's layer, parsed once, and kept in the store under the hash of its content. Returns its
    id, the value of ``sae_file_<side>``."""
    import hashlib
    import json

    from ..sae import SAEState, from_saelens_upload

    s, weights_sha = from_saelens_upload(files, width(ctx, side))
    cfg = json.dumps(s.train_info.get("saelens_cfg", {}), sort_keys=True)
    file_id = hashlib.sha256(f"{weights_sha}|{cfg}".encode()).hexdigest()
    s.train_info["name"] = ", ".join(sorted(files))[:120]
    ctx.store.cached(UPLOAD_KIND, {"id": file_id}, lambda: SAEState.of(s), meta={"d_in": s.d_in, "d_sae": s.d_sae})
    return file_id


def saelens_files(view, spec, side: str, store=None) -> bytes:
    """The side's SAE as a zip of SAELens files (its weights come from the store: nothing trains)."""
    from ..sae import is_trained, saelens_zip

    ctx = view.context(spec, store=store)
    if not uploaded(ctx, side) and not is_trained(model(ctx, side), ctx.ds, layer(ctx, side), store=ctx.store,
                                                  **hyper(ctx, side)):
        raise UserInputError("Train the SAE first.")
    return saelens_zip(sae(ctx, side), {"model_name": model(ctx, side).ref, "hook_name": layer(ctx, side)})


def describe_training(ctx, side: str) -> str:
    """What the training of ``side``'s SAE will be, for the message before it starts."""
    from ..sae import KIND_NAMES

    hp, d = hyper(ctx, side), width(ctx, side)
    return (f"a {KIND_NAMES[hp['kind']]} SAE with {hp['expansion'] * d:,} latents on {layer(ctx, side)} of "
            f"{model(ctx, side).ref} ({len(ctx.ds)} inputs × {d} dimensions, {hp['steps']} steps)")


def summary(result) -> dict:
    out = {}
    for side in SIDES:
        t, m = result.of("train", side), result.of("metrics", side)
        if m is None:
            continue
        tag, s = side.upper(), m.summary
        out.update({f"{tag} L0": s.l0, f"{tag} variance explained": s.fve, f"{tag} MSE": s.mse,
                    f"{tag} dead fraction": s.dead_fraction, f"{tag} latents": t.d_sae if t else None})
        out[f"{tag} loss recovered"] = m.downstream.score if m.downstream is not None else \
            f"skipped: {m.downstream_skipped}"
    if result.match is not None:
        mt = result.match.match
        out["shared pairs"] = int((mt.correlation >= mt.threshold).sum())
        out["pairs"] = int(len(mt.a))
    return out
