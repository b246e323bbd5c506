"""Merge & stitch view: model A and model B combined rather than only compared.

- Permutation alignment of B to A (units matched by activations or by weights), the loss along the
  straight line between their weights before and after, with the barrier, and the merged model at
  one alpha kept as a ``merge:<id>`` reference that every page opens.
- Block swaps: B's blocks i..j replaced by A's, bridged by translators, scored by B's task.
- A crosscoder on one layer of each: latents shared by both models or exclusive to one, browsable.
- Zero-shot stitching and retrieval with the invariant relative space next to the translators.

Each part says why it cannot run for the current pair (different widths, a model without a task
loss, ...) instead of failing: section ``compat`` holds the reasons, and a refused part is not
computed (the CLI skips it too).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from ..jobs import Cost
from ..spec import Param
from .base import Section

PAGE, TITLE, VERSION = "merge", "Merge & stitch", 1
STEPS = (5, 11, 21, 41)
LATENTS = (64, 128, 256, 512, 1024)
CURVE_COUNTS = (5, 10, 20, 50, 100, 200)  # anchor budgets of the stitching and retrieval curves
N_EXAMPLES = 12  # examples shown per crosscoder latent
MAX_SWAP_ANCHORS = 1000


def _align_methods():
    from ..merging import METHODS

    return list(METHODS)


def _bridges():
    from ..merging import BRIDGES

    return list(BRIDGES)


def _translators():
    from ..translation import METHODS

    return list(METHODS)


def _xc_kinds():
    from ..crosscoder import KINDS

    return list(KINDS)


PARAMS = (
    Param("mg_method", "str", "activations", choices=_align_methods, label="Match units by",
          help="activations: per layer, the Hungarian assignment of B's units to A's maximising the correlation "
               "of their activations on the data. weights: weight matching (Ainsworth et al. 2023), coordinate "
               "descent over the layers on the weights alone."),
    Param("mg_steps", "int", 11, choices=STEPS, label="Points along the line",
          help="values of alpha in [0, 1] at which the interpolated model is evaluated"),
    Param("mg_alpha", "float", 0.5, lo=0.0, hi=1.0, step=0.05, label="Merge at alpha",
          help="the merged model's weights are (1 - alpha) A + alpha B"),
    Param("mg_aligned", "bool", True, label="Merge B after alignment",
          help="average A with B's units reordered to match A's (off: B as it is)"),
    Param("mg_bridge", "str", "translator", choices=_bridges, label="Where the models meet",
          help="translator: a map fitted on anchors between A's and B's representations (any widths and depths); "
               "permutation: A's units reordered to B's (same architecture only); none: nothing (the widths "
               "must agree)"),
    Param("mg_translator", "str", "ortho", choices=_translators, label="Translator",
          help="how the bridge is fitted on the anchors (see the Functional maps page)"),
    Param("mg_anchors", "int", 100, lo=2, hi=MAX_SWAP_ANCHORS, label="Anchors",
          help="rows whose representations in both models fit each translator (from the first half of the rows; "
               "the second half scores)"),
    Param("mg_layer_a", "str", domain="layer:a", label="Layer of A",
          help="the layer the crosscoder and the stitching curves read (default: the penultimate)"),
    Param("mg_layer_b", "str", domain="layer:b", label="Layer of B", help="the layer of B (default: the penultimate)"),
    Param("mg_xc_kind", "str", "topk", choices=_xc_kinds, label="Crosscoder",
          help="topk: k active latents per input, unit joint decoder norm; relu: ReLU with the decoder-norm "
               "weighted L1 penalty of Lindsey et al. 2024"),
    Param("mg_latents", "int", 128, choices=LATENTS, label="Latents"),
    Param("mg_k", "int", 8, lo=1, hi=256, label="Active latents k", help="latents active per input (topk)"),
    Param("mg_l1", "float", 1.0, lo=0.0, hi=100.0, label="Sparsity penalty", help="L1 penalty (relu)"),
    Param("mg_xc_steps", "int", 1000, lo=50, hi=50_000, label="Training steps"),
    Param("mg_feature", "int", lo=0, hi=1_000_000, label="Latent",
          help="crosscoder latent on show (default: the most frequent shared one)"),
    Param("mg_curves", "bool", False, label="Stitching and retrieval curves",
          help="zero-shot stitching of A's layer into B and retrieval, versus the number of anchors, for every "
               "translator and for the invariant relative space"),
)


# ------------------------------------------------------------------ results
@dataclass
class Compat:
    """Why each part cannot run for this pair ("" when it can)."""

    permute: str
    interpolate: str
    swaps: str
    crosscoder: str
    curves: str
    groups: list  # permutable layers of A: (name, units)


@dataclass
class AlignmentResult:
    method: str
    layers: list
    sizes: list
    perms: dict
    before: dict
    after: dict
    silent: dict
    sweeps: int
    identical: float  # max |B_aligned(x) - B(x)| over the data, in float64: 0 up to rounding
    fixed: dict  # per layer, the fraction of B's units that keep their index


@dataclass
class Interpolations:
    raw: object  # analysis.merging.Interpolation
    aligned: object


@dataclass
class Merged:
    ref: str
    alpha: float
    aligned: str
    metric: str
    loss: float
    accuracy: float | None
    recipe: dict


@dataclass
class CrosscoderResult:
    layer_a: str
    layer_b: str
    arrays: dict  # weights (analysis.crosscoder.from_arrays)
    kind: str
    k: int
    params: dict
    history_step: np.ndarray
    history_loss: np.ndarray
    history_l0: np.ndarray
    history_fve: np.ndarray  # (logs, 2)
    ratio: np.ndarray  # relative decoder norm per latent
    classes: list
    density: np.ndarray
    fve: list
    l0: float
    top_rows: np.ndarray  # (latents, N_EXAMPLES) rows of the data with the largest activation (-1: none)
    top_values: np.ndarray
    share_a: np.ndarray  # (latents, N_EXAMPLES): the latent's part of A's reconstruction at those rows
    share_b: np.ndarray
    seconds: float


@dataclass
class Feature:
    index: int
    ratio: float
    cls: str
    density: float
    norm_a: float
    norm_b: float
    rows: np.ndarray
    values: np.ndarray
    share_a: np.ndarray
    share_b: np.ndarray
    pred_a: np.ndarray | None  # each model's prediction on those rows (classifiers)
    pred_b: np.ndarray | None


@dataclass
class Curves:
    layer_a: str
    layer_b: str
    stitching: dict
    retrieval: dict


@dataclass
class Result:
    compat: Compat | None = None
    alignment: AlignmentResult | None = None
    interpolation: Interpolations | None = None
    merge: Merged | None = None
    swaps: object | None = None  # analysis.merging.SwapMap
    crosscoder: CrosscoderResult | None = None
    feature: Feature | None = None
    curves: Curves | None = None


# ------------------------------------------------------------------ choices derived from the spec
def layer(ctx, side: str) -> str:
    """The chosen layer of A or B, else the penultimate one (the last hidden representation)."""
    model = ctx.model_a if side == "a" else ctx.model_b
    chosen = ctx.p[f"mg_layer_{side}"]
    if chosen in model.layers:
        return chosen
    return model.layers[-2] if len(model.layers) >= 2 else model.layers[-1]


def _refusal(fn) -> str:
    try:
        fn()
    except UserInputError as exc:
        return str(exc)
    return ""


def _compat(ctx, progress) -> Compat:
    from ..merging import task
    from ..merging.blocks import refusal
    from ..merging.align import groups_of
    from ..merging.units import unit_groups

    ctx.check_pair()
    a, b, ds = ctx.model_a, ctx.model_b, ctx.ds
    permute = _refusal(lambda: groups_of(a, b))
    interp = permute or _refusal(lambda: (task.task_of(a, ds), task.task_of(b, ds)))
    curves = "" if ds.labels is not None else "The stitching curves score accuracy and need a labelled dataset."
    crosscoder = "" if len(ds) >= 20 else "A crosscoder needs at least 20 samples."
    return Compat(permute, interp, refusal(a, b, ds, ctx.p["mg_bridge"]), crosscoder, curves,
                  [(g.name, g.size) for g in unit_groups(a)])


def _ok(part: str):
    return lambda ctx: not getattr(ctx.value("compat"), part)


def resolve(ctx) -> dict:
    """A latent number the current crosscoder does not have falls back to the default, with a note."""
    i = ctx.p.get("mg_feature")
    xc = None if i is None else ctx.stored("crosscoder")
    if xc is not None and not 0 <= int(i) < len(xc.ratio):
        ctx.notes.append(f"Latent {i} does not exist in this crosscoder ({len(xc.ratio)} latents): showing the "
                         "default latent.")
        return {"mg_feature": None}
    return {}


# ------------------------------------------------------------------ cost model
BATCH = 256  # rows per forward pass in analysis.merging
STEP_S = 0.01  # fixed cost of one evaluation of a model copy (state dict loading, scoring)
# The constants below were measured on this 2-core machine in a job worker (one torch thread, as the
# app's pool runs them: benchmarks/estimates.py); the jobs' own timing history corrects them further
# (analysis.jobs.estimates).


def _batch_seconds(ctx, side: str) -> float:
    """Seconds of one forward pass of a batch of up to BATCH rows, measured (numeric models, after a
    first pass that warms up), or the house constant per row for text encoders."""
    key = f"_batch_s_{side}"
    if key not in ctx.__dict__:
        model = ctx.model_a if side == "a" else ctx.model_b
        rows = min(BATCH, len(ctx.ds))
        if model.input_kind == "text":
            ctx.__dict__[key] = 4e-3 * rows
        else:
            from ..merging.task import outputs, subset

            batch = subset(ctx.ds, np.arange(rows))
            outputs(model, batch, batch_size=rows)
            times = []
            for _ in range(3):  # the median: one pass of a few ms is at the mercy of other processes
                t0 = time.perf_counter()
                outputs(model, batch, batch_size=rows)
                times.append(time.perf_counter() - t0)
            ctx.__dict__[key] = float(np.median(times))
    return ctx.__dict__[key]


def _forward_s(ctx, rows: int | None = None, passes: float = 1.0) -> float:
    """Both models over ``rows`` rows (all by default), ``passes`` times."""
    n = len(ctx.ds) if rows is None else rows
    return passes * np.ceil(n / BATCH) * (_batch_seconds(ctx, "a") + _batch_seconds(ctx, "b"))


def _positions(ctx) -> float:
    """Rows per sample in the unit statistics: spatial positions of a feature map, tokens of text."""
    return 20.0 if ctx.model_a.input_kind == "text" else 16.0 if "conv" in str(ctx.model_a.info.get("architecture", "")) \
        else 1.0


def _alignment_cost(ctx) -> Cost:
    groups = ctx.value("compat").groups
    units = [d for _, d in groups]
    n = len(ctx.ds) * _positions(ctx)
    moments = sum(4 * n * d * d for d in units) / 2e9  # centred second moments of two models, pre and post
    lap = sum(d ** 3 for d in units) * 3e-10  # scipy linear_sum_assignment on a dense d x d matrix
    seconds = 6 * _forward_s(ctx) + moments + lap + 1.5  # two passes, and B twice in float64 for the check
    if ctx.p["mg_method"] == "weights":
        params = ctx.model_a.num_parameters()
        seconds += 12 * (lap + 3 * params * 2e-8 + 0.05 * len(units))  # ~12 sweeps
    return Cost(seconds, int(8 * sum(4 * d * d for d in units)))


def _interpolation_cost(ctx) -> Cost:
    """Two lines (B as it is, B aligned) of ``steps`` evaluations of one model each."""
    steps = int(ctx.p["mg_steps"])
    return Cost(steps * (_forward_s(ctx) + 2 * STEP_S) + 0.05, 0)


def _merge_cost(ctx) -> Cost:
    return Cost(_forward_s(ctx) / 2 + 2 * STEP_S + 0.1, 0)


def _junction_widths(ctx) -> list[int]:
    """The width each translator of the block swaps works in: the channels where both sides have the
    same positions, else whole flattened outputs (see analysis.merging.blocks.Junction)."""
    from ..activations import output_shapes
    from ..merging.blocks import a_range, block_boundaries

    ba, bb = block_boundaries(ctx.model_a), block_boundaries(ctx.model_b)
    sa, sb = output_shapes(ctx.model_a, ctx.ds, ba), output_shapes(ctx.model_b, ctx.ds, bb)
    tokens = ctx.model_b.input_kind == "text"

    def width(x, y):
        x, y = tuple(x or (1,)), tuple(y or (1,))
        if tokens or x[1:] == y[1:]:
            return max(x[-1] if tokens else x[0], y[-1] if tokens else y[0])
        return max(int(np.prod(x)), int(np.prod(y)))

    la, lb = len(ba), len(bb)
    pairs = [(bb[i - 1], ba[max(1, a_range(i, i, la, lb)[0]) - 1]) for i in range(1, lb)]
    pairs += [(ba[a_range(j, j, la, lb)[1]], bb[j]) for j in range(lb)]
    return [width(sb.get(x) or sa.get(x), sa.get(y) or sb.get(y)) for x, y in pairs]


def _swaps_cost(ctx) -> Cost:
    """Translators at every junction (an SVD of their width), then per range of blocks a pass of A
    and one of B over the scored half, with the hooks and translations between them."""
    from ..merging.blocks import block_boundaries

    lb = len(block_boundaries(ctx.model_b))
    ranges = lb * (lb + 1) / 2
    half = len(ctx.ds) // 2
    fits = sum(d ** 3 * 2e-8 + 0.1 for d in _junction_widths(ctx)) if ctx.p["mg_bridge"] == "translator" else 0.0
    return Cost(0.1 + fits + ranges * (0.03 + 3 * _forward_s(ctx, half)) + 3 * _forward_s(ctx, half), 0)


def _crosscoder_cost(ctx) -> Cost:
    from .. import crosscoder
    from ..activations import pooled_dims

    da = pooled_dims(ctx.model_a, ctx.ds, [layer(ctx, "a")])[0]
    db = pooled_dims(ctx.model_b, ctx.ds, [layer(ctx, "b")])[0]
    p = ctx.p
    train = crosscoder.estimate_seconds(len(ctx.ds), (da, db), int(p["mg_latents"]), int(p["mg_xc_steps"]), 256)
    return Cost(train + _forward_s(ctx) + 0.5, int(4 * len(ctx.ds) * int(p["mg_latents"]) * 3))


def _curves_cost(ctx) -> Cost:
    from ..activations import pooled_dims
    from ..translation import METHODS

    da = pooled_dims(ctx.model_a, ctx.ds, [layer(ctx, "a")])[0]
    db = pooled_dims(ctx.model_b, ctx.ds, [layer(ctx, "b")])[0]
    d = max(da, db)
    n = len(ctx.ds)
    per_fit = d ** 3 * 3e-8 + n * d * 2e-8 + 0.01
    stitch = len(CURVE_COUNTS) * (len(METHODS) * per_fit + len(METHODS) * _forward_s(ctx, n // 2) / 2 + 0.4)
    retrieval = len(CURVE_COUNTS) * (4 * n * n * 4e-9 * d + 2.5)
    return Cost(stitch + retrieval + _forward_s(ctx), 0)


# ------------------------------------------------------------------ sections
def _alignment(ctx, progress) -> AlignmentResult:
    from ..merging import apply, permutations
    from ..merging.task import max_output_gap

    found = permutations(ctx.model_a, ctx.model_b, ctx.ds, ctx.p["mg_method"], seed=int(ctx.p["seed"]),
                         device=ctx.device, progress=progress)
    aligned = apply(ctx.model_b, found)
    gap = max_output_gap(aligned, ctx.model_b, ctx.ds, device=ctx.device)
    fixed = {n: float(np.mean(found.perms[n] == np.arange(len(found.perms[n])))) for n in found.layers}
    return AlignmentResult(found.method, found.layers, found.sizes, found.perms, found.before, found.after,
                           {n: list(v) for n, v in found.silent.items()}, int(found.sweeps), gap, fixed)


def _alignment_of(ctx):
    from ..merging import Alignment

    r = ctx.value("alignment")
    return Alignment(r.method, r.layers, r.sizes, r.perms, r.before, r.after, r.sweeps)


def _interpolation(ctx, progress) -> Interpolations:
    from ..merging import apply, interpolate

    steps = int(ctx.p["mg_steps"])
    raw = interpolate(ctx.model_a, ctx.model_b, ctx.ds, steps, device=ctx.device,
                      progress=lambda f, m: progress(0.5 * f, f"B as it is: {m}"))
    aligned_b = apply(ctx.model_b, _alignment_of(ctx))
    aligned = interpolate(ctx.model_a, aligned_b, ctx.ds, steps, device=ctx.device,
                          progress=lambda f, m: progress(0.5 + 0.5 * f, f"B aligned: {m}"))
    return Interpolations(raw, aligned)


def _merge(ctx, progress) -> Merged:
    from ..merging import merge
    from ..merging.reference import load_merge, recipe
    from ..merging.task import score

    alignment = _alignment_of(ctx) if ctx.p["mg_aligned"] else None
    progress(0.2, "averaging the weights")
    ref = merge(ctx.model_a, ctx.model_b, ctx.ds, float(ctx.p["mg_alpha"]), alignment, store=ctx.store,
                device=ctx.device)
    progress(0.7, f"scoring {ref}")
    s = score(load_merge(ref.split(":", 1)[1], store=ctx.store), ctx.ds, device=ctx.device)
    body = recipe(ref.split(":", 1)[1], ctx.store)
    return Merged(ref, float(ctx.p["mg_alpha"]), alignment.method if alignment else "", s.metric, s.loss,
                  s.accuracy, body)


def _swaps(ctx, progress):
    from ..merging import swap_map

    p = ctx.p
    return swap_map(ctx.model_a, ctx.model_b, ctx.ds, p["mg_bridge"], p["mg_translator"], int(p["mg_anchors"]),
                    seed=int(p["seed"]), device=ctx.device, progress=progress)


def _acts(ctx):
    from ..activations import extract

    la, lb = layer(ctx, "a"), layer(ctx, "b")
    xa = extract(ctx.model_a, ctx.ds, [la], "mean", ctx.device)[la]
    xb = extract(ctx.model_b, ctx.ds, [lb], "mean", ctx.device)[lb]
    return la, lb, xa, xb


def _crosscoder(ctx, progress) -> CrosscoderResult:
    from .. import crosscoder

    p = ctx.p
    la, lb, xa, xb = _acts(ctx)
    progress(0.02, "training the crosscoder")
    cc = crosscoder.train_crosscoder(xa, xb, p["mg_xc_kind"], int(p["mg_latents"]), int(p["mg_k"]), float(p["mg_l1"]),
                                     int(p["mg_xc_steps"]), seed=int(p["seed"]), device=ctx.device,
                                     progress=lambda f, m: progress(0.02 + 0.9 * f, m))
    metrics = crosscoder.evaluate(cc, xa, xb)
    codes = cc.encode([xa, xb])
    top_rows, top_values, share_a, share_b = _examples(cc, codes, xa, xb)
    h = cc.history
    return CrosscoderResult(la, lb, cc.arrays(), cc.kind, cc.k, cc.train_info["params"], np.asarray(h["step"]),
                            np.asarray(h["loss"]), np.asarray(h["l0"]), np.asarray(h["fve"]), cc.relative_norm(),
                            list(crosscoder.classify(cc.relative_norm(), metrics.density)), metrics.density,
                            list(metrics.fve), metrics.l0, top_rows, top_values, share_a, share_b,
                            float(cc.train_info["seconds"]))


def _examples(cc, codes: np.ndarray, xa: np.ndarray, xb: np.ndarray):
    """Per latent, its top rows and values, and its part of each model's activation there:
    f_i ||d_s,i|| / ||x_s - b_dec,s|| in the scaled units."""
    k = min(N_EXAMPLES, len(codes))
    order = np.argsort(-codes, axis=0, kind="stable")[:k].T  # (latents, k)
    values = np.take_along_axis(codes.T, order, axis=1)
    rows = np.where(values > 0, order, -1)
    norms = cc.decoder_norms()
    shares = []
    for s, x in enumerate((xa, xb)):
        centred = np.asarray(x, np.float64) * float(cc.scales[s]) - cc.b_dec[s].detach().double().numpy()
        size = np.maximum(np.linalg.norm(centred, axis=1), 1e-12)
        shares.append(np.where(rows >= 0, values * norms[:, s][:, None] / size[np.maximum(rows, 0)], 0.0))
    return rows.astype(np.int64), values.astype(np.float32), shares[0], shares[1]


def default_feature(xc: CrosscoderResult) -> int:
    """The most frequent shared latent (else the most frequent one)."""
    shared = np.asarray(xc.classes) == "shared"
    density = np.where(shared, xc.density, -1.0) if shared.any() else xc.density
    return int(np.argmax(density))


def _feature(ctx, progress) -> Feature:
    from ..evaluate import evaluate

    xc = ctx.value("crosscoder")
    i = ctx.p["mg_feature"]
    i = default_feature(xc) if i is None or not 0 <= int(i) < len(xc.ratio) else int(i)
    rows = xc.top_rows[i][xc.top_rows[i] >= 0]
    preds = []
    for model in (ctx.model_a, ctx.model_b):
        ev = evaluate(model, ctx.ds, device=ctx.device) if model.kind == "classifier" else None
        preds.append(None if ev is None or ev.predictions is None else ev.predictions[rows])
    norms = [float(np.linalg.norm(xc.arrays[f"W_dec.{s}"][i])) for s in (0, 1)]
    k = len(rows)
    return Feature(i, float(xc.ratio[i]), xc.classes[i], float(xc.density[i]), norms[0], norms[1], rows,
                   xc.top_values[i][:k], xc.share_a[i][:k], xc.share_b[i][:k], preds[0], preds[1])


def _curves(ctx, progress) -> Curves:
    import warnings

    from .. import relative_spaces, stitching

    la, lb, xa, xb = _acts(ctx)
    p = ctx.p
    with warnings.catch_warnings():  # under-determined fits at small anchor counts are what the curve shows
        warnings.simplefilter("ignore")
        head = stitching.model_head(ctx.model_b, lb, ctx.ds, xb.shape[1])
        stitch = stitching.stitching_curve(xa, xb, ctx.ds.labels, CURVE_COUNTS, head_b=head, seed=int(p["seed"]),
                                           progress=lambda f, m: progress(0.6 * f, f"stitching: {m}"))
        retrieval = relative_spaces.retrieval_curve(xa, xb, CURVE_COUNTS, seed=int(p["seed"]),
                                                    progress=lambda f, m: progress(0.6 + 0.4 * f, m))
    return Curves(la, lb, {k: np.asarray(v) for k, v in stitch.items()}, retrieval)


XC_READS = ("mg_layer_a", "mg_layer_b", "mg_xc_kind", "mg_latents", "mg_k", "mg_l1", "mg_xc_steps", "seed")
SECTIONS = (
    Section("compat", _compat, ("mg_bridge",), "abd", lambda ctx: Cost(0.5, 0), title="what this pair allows"),
    Section("alignment", _alignment, ("mg_method", "seed"), "abd", _alignment_cost, wanted=_ok("permute"),
            title="permutation alignment", ways_around="Use fewer samples, or match by weights."),
    Section("interpolation", _interpolation, ("mg_method", "mg_steps", "seed"), "abd", _interpolation_cost,
            wanted=_ok("interpolate"), title="the loss along the interpolation",
            ways_around="Use fewer points along the line or fewer samples."),
    Section("merge", _merge, ("mg_method", "mg_alpha", "mg_aligned", "seed"), "abd", _merge_cost,
            wanted=_ok("interpolate"), title="the merged model"),
    Section("swaps", _swaps, ("mg_bridge", "mg_translator", "mg_anchors", "seed"), "abd", _swaps_cost,
            wanted=_ok("swaps"), title="block swaps", ways_around="Use fewer samples, or the 'none' bridge."),
    Section("crosscoder", _crosscoder, XC_READS, "abd", _crosscoder_cost, wanted=_ok("crosscoder"),
            title="the crosscoder", ways_around="Use fewer training steps or latents."),
    Section("feature", _feature, XC_READS + ("mg_feature",), "abd", lambda ctx: Cost(_forward_s(ctx) + 0.2, 0),
            wanted=_ok("crosscoder"),
            title="the crosscoder latent"),
    Section("curves", _curves, ("mg_layer_a", "mg_layer_b", "seed"), "abd", _curves_cost,
            wanted=lambda ctx: bool(ctx.p["mg_curves"]) and not ctx.value("compat").curves,
            title="the stitching and retrieval curves", ways_around="Use fewer samples."),
)


def summary(result) -> dict:
    out = {}
    c = result.compat
    if c is not None:
        out.update({f"refused: {part}": why for part, why in (("alignment", c.permute), ("interpolation", c.interpolate),
                                                               ("block swaps", c.swaps)) if why})
    if result.alignment is not None:
        a = result.alignment
        out["alignment: max |output change|"] = a.identical
        out.update({f"alignment: mean matched correlation {n}": a.after[n] for n in a.layers if n in a.after})
    if result.interpolation is not None:
        i = result.interpolation
        out["barrier before alignment"] = i.raw.barrier
        out["barrier after alignment"] = i.aligned.barrier
        out["interpolation metric"] = i.raw.metric
    if result.merge is not None:
        m = result.merge
        out["merged model"] = m.ref
        out[f"merged model {m.metric}"] = m.loss
        if m.accuracy is not None:
            out["merged model accuracy"] = m.accuracy
    if result.swaps is not None:
        s = result.swaps
        out[f"block swaps: B's own {s.metric}"] = s.own_b
        out[f"block swaps: A's own {s.metric}"] = s.own_a
        out[f"block swaps: worst {s.metric}"] = float(np.nanmin(s.value) if s.higher_is_better else np.nanmax(s.value))
    if result.crosscoder is not None:
        x = result.crosscoder
        counts = {k: int(np.sum(np.asarray(x.classes) == k)) for k in dict.fromkeys(x.classes)}
        out.update({f"crosscoder latents {k}": v for k, v in counts.items()})
        out["crosscoder explained variance A"], out["crosscoder explained variance B"] = x.fve
    return out
