"""Attributions view: LRP relevance of model A and model B side by side. Digits classifiers: the
pixel maps of chosen samples (and of an uploaded picture), relevance at a hidden layer, and over the
dataset the rank agreement of the two models' maps, conservation and pixel flipping (LRP against
gradient x input and a random order). Text encoders: token relevance for a topic probe's score or
for the cosine similarity of two sentences, agreement over the dataset and token removal."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserInputError
from ..jobs import Cost
from ..spec import Param
from .base import Section

PAGE, TITLE, VERSION = "attributions", "Attributions", 1
EPSILONS = (1e-9, 1e-6, 1e-3, 0.01, 0.1, 0.25)
GAMMAS = (0.0, 0.1, 0.25, 0.5, 1.0)
TARGETS = ("predicted", "true", "class")
GALLERY = 24  # samples offered in the gallery
MAX_SAMPLES, MAX_SENTENCES = 12, 8
FAITH_N, FAITH_STEPS, TEXT_FAITH_STEPS = 100, 16, 6
PICTURE_KIND = "picture"  # uploaded pictures in the store, parsed to one input row
PICTURE_ID = re.compile(r"[0-9a-f]{16}")
# The default rule is LRP-gamma: on these ReLU networks LRP-epsilon with a small epsilon *is*
# gradient x input (their curves coincide), while gamma shows what the rules add: maps that depend
# less on the gradient's noise (the two seeds' maps agree more: Spearman 0.86 against 0.78 on the
# digits MLPs) at a small cost in pixel flipping (AOPC 18.8 against 21.4 for mlp-s0).
DEFAULT_RULE = "gamma"


def _rules():
    from .. import lrp

    return lrp.rule_names() + lrp.composite_names()


def rule_help() -> str:
    from .. import lrp

    return "\n".join(f"- **{k}**: {v}" for k, v in lrp.descriptions().items())


def bias_help() -> str:
    from ..lrp import BIAS_CONVENTIONS

    return f"On: {BIAS_CONVENTIONS[True]}\n\nOff: {BIAS_CONVENTIONS[False]}"


PARAMS = (
    Param("at_rule", "str", DEFAULT_RULE, choices=_rules, label="Rule or composite", help="LRP rule or composite"),
    Param("at_eps", "float", 1e-6, choices=EPSILONS, label="epsilon",
          help="Stabiliser of every rule's denominator (LRP-0 as it goes to 0); in the epsilon rule larger values "
               "keep only the strongest contributions."),
    Param("at_gamma", "float", 0.25, choices=GAMMAS, label="gamma",
          help="Used by the gamma rule and the epsilon-gamma-box composite (convolutions)."),
    Param("at_bias", "bool", True, label="Biases in the rules (zennit's convention)",
          help="biases in the rules' denominators (zennit's default)"),
    Param("at_target", "str", "predicted", choices=TARGETS, label="Target",
          help="predicted: each model's own top class; true: the label; class: any class"),
    Param("at_class", "int", 0, lo=0, hi=999, label="Class", help="class explained when the target is 'class'"),
    Param("at_samples", "list", [str(i) for i in range(6)], label="Samples (positions in the gallery below)",
          help="gallery positions shown (images)"),
    Param("at_upload", "str", label="Uploaded picture",
          help="id of an uploaded picture explained next to the samples (images)"),
    Param("at_text_target", "str", "topic", choices=("topic", "similarity"), label="Explain",
          help="topic: a linear probe's topic score, fitted on each model's sentence embeddings of this dataset. "
               "similarity: the cosine similarity of two sentences' embeddings."),
    Param("at_topic", "str", "predicted", label="Topic", help="text: topic of the probe, or 'predicted'"),
    Param("at_sentences", "list", [str(i) for i in range(4)], label="Sentences (row positions)",
          help="text: rows shown"),
    Param("at_text", "text", label="Or type a sentence", help="text: a typed sentence"),
    Param("at_second", "text", label="Second sentence (similarity)",
          help="text: the second sentence (similarity; default: the last sentence of the gallery)"),
    Param("at_text_faith", "bool", False, label="Faithfulness: remove tokens, most relevant first",
          help="text: token-removal curves"),
    Param("at_text_dataset", "bool", False, label="Agreement over the whole dataset",
          help="text: agreement over every sentence of the dataset"),
    Param("at_layer_a", "str", domain="layer:a", label="Layer of A",
          help="hidden layer of A (default: the last before the output)"),
    Param("at_layer_b", "str", domain="layer:b", label="Layer of B", help="hidden layer of B"),
)
RULE_READS = ("at_rule", "at_eps", "at_gamma", "at_bias")
TARGET_READS = RULE_READS + ("at_target", "at_class")


# ------------------------------------------------------------------ results
@dataclass
class ModelMaps:
    """One model's relevance of the shown inputs (images: pixels; text: tokens)."""

    ref: str
    architecture: str
    relevance: np.ndarray  # (k, features) or (k, tokens)
    output: np.ndarray  # the explained score per row (per pair for a similarity)
    relevance_sum: np.ndarray
    conservation: np.ndarray  # sum(R) / output
    target: np.ndarray | None  # class or topic code per row
    layer: str
    units: np.ndarray  # mean relevance per unit of the layer over the rows
    description: str  # the rules and the bias convention, in words
    notes: list = field(default_factory=list)
    tokens: list | None = None  # text: tokens per row
    mask: np.ndarray | None = None  # text: real tokens
    row_titles: list = field(default_factory=list)  # text: one title per row of the token map
    probe_accuracy: float | None = None  # text, topic mode: the probe's training accuracy


@dataclass
class Maps:
    """The shown samples (images) of both models."""

    rows: list  # gallery positions shown
    names: list  # "#3", ..., "upload"
    inputs: np.ndarray  # (k, features)
    image_shape: tuple
    a: ModelMaps
    b: ModelMaps
    agreement: np.ndarray  # Spearman rank correlation of A's and B's map per shown row
    upload_unlabelled: bool = False  # the upload has no label: its 'true' target is the prediction


@dataclass
class DatasetLevel:
    """Both models' relevance over every row: agreement, conservation."""

    agreement: np.ndarray  # per row
    rows: np.ndarray  # rows of the source split
    output_a: np.ndarray
    output_b: np.ndarray
    sum_a: np.ndarray
    sum_b: np.ndarray
    conservation_a: float  # median sum(R) / f
    conservation_b: float


@dataclass
class Faithfulness:
    """Pixel flipping of the first rows for LRP, gradient x input and a random order, per model."""

    a: object  # analysis.lrp.Faithfulness
    b: object
    n: int
    identical: dict  # model slot -> LRP's curve equals gradient x input's (to 1e-9 relative)


@dataclass
class TextMaps:
    """The shown sentences' token relevance for both models."""

    mode: str  # "topic" or "similarity"
    texts: list
    a: ModelMaps
    b: ModelMaps
    agreement: np.ndarray | None  # per sentence; None when the models split them differently


@dataclass
class TextFaithfulness:
    a: object
    b: object


@dataclass
class Result:
    maps: Maps | None = None
    dataset: DatasetLevel | None = None
    faithfulness: Faithfulness | None = None
    text_maps: TextMaps | None = None
    text_dataset: np.ndarray | None = None
    text_faithfulness: TextFaithfulness | None = None


# ------------------------------------------------------------------ the spec's derived choices
def rule_kwargs(p) -> dict:
    return dict(rule=p["at_rule"], epsilon=float(p["at_eps"]), gamma=float(p["at_gamma"]), bias=bool(p["at_bias"]))


def rule_set(p):
    from .. import lrp

    kw = rule_kwargs(p)
    return lrp.rule_set(kw.pop("rule"), None, **kw)


def rule_label(p) -> str:
    """The rule as a figure title names it: 'LRP gamma (γ=0.25, ε=1e-06)'."""
    rule = p["at_rule"]
    rs = rule_set(p)
    extra = []
    if "gamma" in (rs.first, rs.conv, rs.dense):
        extra.append(f"γ={p['at_gamma']:g}")
    extra.append(f"ε={p['at_eps']:g}")
    if not p["at_bias"]:
        extra.append("no biases")
    return f"LRP {rule} ({', '.join(extra)})"


def target_key(p) -> str:
    """The dataset-level target: 'predicted', 'true' or a class index as a string."""
    return str(int(p["at_class"])) if p["at_target"] == "class" else p["at_target"]


def target_label(p) -> str:
    """The explained class as a title says it (each model explains its own predicted class)."""
    return "target: " + {"predicted": "predicted class", "true": "true class"}.get(
        p["at_target"], f"class {int(p['at_class'])}")


def default_layer(model) -> str:
    options = model.layers[:-1] or model.layers
    return options[-1]


def layer(ctx, side: str) -> str:
    model = ctx.model_a if side == "a" else ctx.model_b
    chosen = ctx.p[f"at_layer_{side}"]
    return chosen if chosen in model.layers else default_layer(model)


def gallery(ds) -> list[int]:
    return list(range(min(GALLERY, len(ds))))


def sample_rows(ctx) -> list[int]:
    allowed = set(gallery(ctx.ds))
    return [int(i) for i in ctx.p["at_samples"] or [] if str(i).isdigit() and int(i) in allowed][:MAX_SAMPLES]


def default_second(ds) -> str:
    """The second sentence of a similarity when none was typed: the gallery's last one."""
    rows = gallery(ds)
    return str(ds.inputs[rows[-1]]) if rows else ""


def second_sentence(ctx) -> str:
    second = ctx.p["at_second"]
    return default_second(ctx.ds) if second is None else second


def sentences(ctx) -> list[str]:
    """The sentences explained: the chosen rows and the typed one (similarity: one of them)."""
    ds, p = ctx.ds, ctx.p
    allowed = set(gallery(ds))
    rows = [int(i) for i in p["at_sentences"] or [] if str(i).isdigit() and int(i) in allowed][:MAX_SENTENCES]
    typed = (p["at_text"] or "").strip()
    texts = [str(ds.inputs[i]) for i in rows] + ([typed] if typed else [])
    if p["at_text_target"] == "similarity":
        texts = texts[-1:] if typed else texts[:1]
    return texts


# ------------------------------------------------------------------ uploaded pictures
def keep_picture(data: bytes, filename: str, ds, store=None) -> str:
    """Parse an uploaded picture into one input row of ``ds`` (grey, resized, scaled to [0, 1]; see
    :func:`analysis.lrp.image_from_upload`) and keep that row in the store by its content hash.
    Returns the id a spec carries (``at_upload``): never the file's bytes."""
    from .. import lrp
    from ..store import default_store

    if ds.kind != "image" or not ds.image_shape:
        raise UserInputError("Pictures can be explained next to an image dataset's samples (digits).")
    row = lrp.image_from_upload(data, filename, ds.image_shape)
    buf = io.BytesIO()
    np.save(buf, row, allow_pickle=False)
    sha = (store or default_store()).put_blob(buf.getvalue(), filename, PICTURE_KIND,
                                             {"shape": list(ds.image_shape)})
    return sha[:16]


def picture(ctx) -> np.ndarray | None:
    """The uploaded picture the spec names, as one input row, or None when it names none. Raises
    UserInputError when it is not on this server or does not fit the dataset."""
    pid = ctx.p["at_upload"]
    if not pid:
        return None
    if not PICTURE_ID.fullmatch(pid):
        raise UserInputError(f"'{pid}' is not the id of an uploaded picture.")
    data, _ = ctx.store.read_blob(pid, PICTURE_KIND)
    row = np.load(io.BytesIO(data), allow_pickle=False)
    if row.dtype != np.float32 or row.ndim != 2 or row.shape != (1, ctx.ds.n_features) or not np.isfinite(row).all():
        raise UserInputError(f"The uploaded picture {pid} does not fit this dataset's images "
                             f"({ctx.ds.n_features} pixels): upload it again.")
    return row


# ------------------------------------------------------------------ resolve: values that no longer fit
def _default(key: str):
    return next(p.default for p in PARAMS if p.key == key)


def resolve(ctx) -> dict:
    """Notes and defaults for the values the current data cannot take (a class or a topic of
    another dataset, gallery positions beyond it, a picture this server does not have)."""
    p, ds, changes = ctx.p, ctx.ds, {}
    if ds.kind == "image":
        n_classes = len(ds.label_names) if ds.label_names else 10
        if int(p["at_class"]) >= n_classes:
            ctx.notes.append(f"Class {p['at_class']} is not a class of '{ds.name}' ({n_classes} classes): "
                             "explaining class 0.")
            changes["at_class"] = _default("at_class")
        if p["at_upload"]:
            try:
                picture(ctx)
            except UserInputError as exc:
                ctx.notes.append(f"{exc} The uploaded picture is left out.")
                changes["at_upload"] = None
    for key, what in (("at_samples", "samples"), ("at_sentences", "sentences")):
        chosen = [str(v) for v in p[key] or []]
        kept = [v for v in chosen if v.isdigit() and int(v) < len(gallery(ds))]
        if kept != chosen:
            ctx.notes.append(f"Gallery positions {', '.join(v for v in chosen if v not in kept)} are beyond the "
                             f"{len(gallery(ds))} {what} offered: {'showing the others' if kept else 'showing the default'}.")
            changes[key] = kept or _default(key)
    if ds.kind == "text" and p["at_topic"] != "predicted" and p["at_topic"] not in (ds.label_names or []):
        ctx.notes.append(f"{p['at_topic']!r} is not a topic of '{ds.name}': explaining each sentence's predicted topic.")
        changes["at_topic"] = _default("at_topic")
    return changes


def check_models(ctx) -> None:
    """Raise UserInputError, with what to do, when this view cannot explain the chosen models on the
    chosen data (no network, not a classifier on images, data neither images nor text)."""
    from .. import lrp

    for slot, model in (("A", ctx.model_a), ("B", ctx.model_b)):
        lrp.check_model(model)
        if ctx.ds.kind == "image" and model.kind != "classifier":
            raise UserInputError(f"Model {slot} ({model.ref}) is a {model.kind}. LRP on images explains a class "
                                 "score: pick two classifiers (zoo:mlp-*, zoo:cnn-*), or the 'text' dataset with "
                                 "hf:minilm models.")
    if ctx.ds.kind not in ("image", "text"):
        raise UserInputError(f"Dataset '{ctx.ds.name}' holds {ctx.ds.kind} rows; the Attributions page explains "
                             "digits classifiers (the 'digits' dataset) and text encoders (the 'text' dataset).")


# ------------------------------------------------------------------ sections: images
def _model_maps(model, att, lay: str, **extra) -> ModelMaps:
    from .. import lrp

    units = lrp.unit_relevance(att.layer_relevance, att.mask).mean(0) if att.layer_relevance is not None \
        else np.zeros(0)
    return ModelMaps(model.ref, model.architecture, att.input_relevance, att.output, att.relevance_sum,
                     att.conservation, att.target, lay, units, att.description, list(att.notes), **extra)


def _maps(ctx, progress) -> Maps:
    from .. import lrp

    check_models(ctx)
    ds, p = ctx.ds, ctx.p
    rows = sample_rows(ctx)
    x = np.asarray(ds.inputs, dtype=np.float32)[rows] if rows else np.zeros((0, ds.n_features), np.float32)
    labels = None if ds.labels is None else ds.labels[rows]
    names = [f"#{i}" for i in rows]
    upload = picture(ctx)
    if upload is not None:
        x = np.concatenate([x, upload])
        names.append("upload")
        if labels is not None:
            labels = np.concatenate([labels, [-1]])  # no label: 'true' falls back to the prediction
    if not len(x):
        raise UserInputError("Pick at least one sample in the gallery (or upload a picture).")
    target = int(p["at_class"]) if p["at_target"] == "class" else p["at_target"]
    out = {}
    for k, (side, model) in enumerate((("a", ctx.model_a), ("b", ctx.model_b))):
        progress(k / 2, f"explaining with model {side.upper()}")
        lay = layer(ctx, side)
        att = lrp.attribute(model, x, target, layer=lay, labels=labels, device=ctx.device, **rule_kwargs(p))
        out[side] = _model_maps(model, att, lay)
    agreement = lrp.rank_agreement(out["a"].relevance, out["b"].relevance)
    return Maps(rows, names, x, tuple(ds.image_shape or (8, 8)), out["a"], out["b"], agreement,
                upload is not None and p["at_target"] == "true")


def _dataset(ctx, progress) -> DatasetLevel:
    from .. import lrp

    check_models(ctx)
    kw = dict(target=target_key(ctx.p), **rule_kwargs(ctx.p))
    full = {}
    for k, (side, model) in enumerate((("a", ctx.model_a), ("b", ctx.model_b))):
        full[side] = lrp.dataset_relevance(model, ctx.ds, progress=lambda f, m, k=k: progress((k + f) / 2, m), **kw)
    s = lrp.pair_summary(full["a"], full["b"])
    return DatasetLevel(s["agreement"], np.asarray(ctx.ds.indices), full["a"]["output"], full["b"]["output"],
                        s["sums"][0], s["sums"][1], float(s["conservation"][0]), float(s["conservation"][1]))


def _faithfulness(ctx, progress) -> Faithfulness:
    from .. import lrp

    check_models(ctx)
    kw = dict(target=target_key(ctx.p), **rule_kwargs(ctx.p))
    res = {}
    for k, (side, model) in enumerate((("a", ctx.model_a), ("b", ctx.model_b))):
        progress(k / 2, f"pixel flipping for model {side.upper()}")
        res[side] = lrp.dataset_faithfulness(model, ctx.ds, n=FAITH_N, steps=FAITH_STEPS, **kw)
    identical = {side.upper(): bool(np.allclose(r.curves["lrp"], r.curves["gradient x input"], rtol=1e-9, atol=0))
                 for side, r in res.items()}
    return Faithfulness(res["a"], res["b"], min(FAITH_N, len(ctx.ds)), identical)


# ------------------------------------------------------------------ sections: text
def _text_maps(ctx, progress) -> TextMaps:
    from .. import lrp

    check_models(ctx)
    p, mode = ctx.p, ctx.p["at_text_target"]
    texts = sentences(ctx)
    if not texts:
        raise UserInputError("Pick a sentence or type one.")
    second = second_sentence(ctx)
    if mode == "similarity" and not second.strip():
        raise UserInputError("Type the second sentence to compare with.")
    out = {}
    for k, (side, model) in enumerate((("a", ctx.model_a), ("b", ctx.model_b))):
        slot, lay = side.upper(), layer(ctx, side)
        progress(k / 2, f"explaining with model {slot}")
        if mode == "similarity":
            att = lrp.explain_similarity(model, texts[0], second, layer=lay, **rule_kwargs(p))
            out[side] = _model_maps(model, att, lay, tokens=att.tokens, mask=att.mask,
                                    row_titles=[f"sentence 1 · {slot}", f"sentence 2 · {slot}"])
        else:
            probe = lrp.fit_topic_probe(model, ctx.ds)
            att = lrp.attribute(model, texts, probe.target(p["at_topic"]), layer=lay, **rule_kwargs(p))
            titles = [f"{i + 1} · {slot}: {probe.topics[int(c)]}" for i, c in enumerate(att.target)]
            out[side] = _model_maps(model, att, lay, tokens=att.tokens, mask=att.mask, row_titles=titles,
                                    probe_accuracy=float(probe.accuracy))
    a, b = out["a"], out["b"]
    same = a.relevance.shape == b.relevance.shape and a.tokens == b.tokens
    agreement = lrp.rank_agreement(a.relevance, b.relevance, a.mask) if same else None
    return TextMaps(mode, texts if mode == "topic" else [texts[0], second], a, b, agreement)


def _text_dataset(ctx, progress) -> np.ndarray:
    from .. import lrp

    check_models(ctx)
    full = [lrp.text_dataset_relevance(m, ctx.ds, "predicted", progress=lambda f, msg, k=k: progress((k + f) / 2, msg),
                                       **rule_kwargs(ctx.p))
            for k, m in enumerate((ctx.model_a, ctx.model_b))]
    return lrp.text_agreement(*full)


def _text_faithfulness(ctx, progress) -> TextFaithfulness:
    from .. import lrp

    maps = ctx.value("text_maps")
    texts = maps.texts
    out = {}
    for k, (side, model) in enumerate((("a", ctx.model_a), ("b", ctx.model_b))):
        progress(k / 2, f"token removal for model {side.upper()}")
        mm = getattr(maps, side)
        target = lrp.fit_topic_probe(model, ctx.ds).target(mm.target)
        gxi = lrp.gradient_x_input(model, texts, target)
        out[side] = lrp.text_faithfulness(model, texts, {"lrp": mm.relevance, "gradient x input": gxi.input_relevance},
                                          target, steps=TEXT_FAITH_STEPS)
    return TextFaithfulness(out["a"], out["b"])


# ------------------------------------------------------------------ estimates
# MiniLM on this 2-core machine in a job worker (one torch thread, load 6; benchmarks/estimates.py):
# explaining sentences one call at a time (the shown ones) and in batches of 32 (the dataset), per
# sentence under the epsilon rule (rules with more passes scale by them); a plain forward pass per
# sentence; the probe's embeddings.
TEXT_CALL_S, TEXT_SENTENCE_S, TEXT_BATCHED_SENTENCE_S = 0.08, 0.05, 0.02
TEXT_FORWARD_S, TEXT_EXTRACT_S = 0.016, 0.007


def _profile(ctx, model):
    from ..lrp import cost

    return cost.layer_flops(model, np.asarray(ctx.ds.inputs[:1], dtype=np.float32))


def _maps_cost(ctx) -> Cost:
    from ..lrp import cost

    k = len(sample_rows(ctx)) + (1 if ctx.p["at_upload"] else 0)
    rs = rule_set(ctx.p)
    return Cost(sum(cost.attribution_seconds(_profile(ctx, m), k, rs) for m in (ctx.model_a, ctx.model_b)), 0)


def _relevance_seconds(ctx, model, rs, method: str) -> float:
    """Explaining every row, unless the store holds that relevance (gradient x input serves every rule)."""
    from ..lrp import cost
    from ..lrp.dataset import is_stored

    if is_stored(model, ctx.ds, target_key(ctx.p), rs, method, ctx.store):
        return 0.0
    return cost.attribution_seconds(_profile(ctx, model), len(ctx.ds), rs if method == "lrp" else None)


def _dataset_cost(ctx) -> Cost:
    rs = rule_set(ctx.p)
    seconds = sum(_relevance_seconds(ctx, m, rs, "lrp") for m in (ctx.model_a, ctx.model_b))
    return Cost(seconds, int(2 * 4 * len(ctx.ds) * (ctx.ds.n_features or 1)))


def _faithfulness_cost(ctx) -> Cost:
    """Gradient x input over the data and the removal curves (LRP's relevance is the dataset section's)."""
    from ..lrp import cost

    rows, calls = min(FAITH_N, len(ctx.ds)), 3 * (FAITH_STEPS + 1)
    seconds = sum(_relevance_seconds(ctx, m, None, "gradient x input")
                  + cost.forward_seconds(_profile(ctx, m), rows * calls, calls) for m in (ctx.model_a, ctx.model_b))
    return Cost(seconds, 0)


def _probe_seconds(ctx) -> float:
    from ..activations import is_cached

    todo = [m for m in (ctx.model_a, ctx.model_b) if not is_cached(m, ctx.ds, m.layers[-1], "mean")]
    return len(todo) * len(ctx.ds) * TEXT_EXTRACT_S


def _passes(ctx) -> float:
    from ..lrp import get_rule

    rs = rule_set(ctx.p)
    return (1 + get_rule(rs.dense).passes) / 2  # relative to the epsilon rule the constant was measured with


def _text_maps_cost(ctx) -> Cost:
    k = len(sentences(ctx)) + (1 if ctx.p["at_text_target"] == "similarity" else 0)
    probe = _probe_seconds(ctx) if ctx.p["at_text_target"] == "topic" else 0.0
    return Cost(probe + 2 * (TEXT_CALL_S + k * TEXT_SENTENCE_S * _passes(ctx)), 0)


def _text_dataset_cost(ctx) -> Cost:
    return Cost(_probe_seconds(ctx) + 2 * len(ctx.ds) * TEXT_BATCHED_SENTENCE_S * _passes(ctx), 0)


def _text_faithfulness_cost(ctx) -> Cost:
    """Gradient x input of the shown sentences, then three orderings' removal curves (forward passes)."""
    k = len(sentences(ctx))
    return Cost(2 * (TEXT_CALL_S + k * TEXT_SENTENCE_S + 3 * (TEXT_FAITH_STEPS + 1) * k * TEXT_FORWARD_S), 0)


def _images(ctx) -> bool:
    return ctx.ds.kind == "image"


def _text(ctx) -> bool:
    return ctx.ds.kind == "text"


def _topic(ctx) -> bool:
    return _text(ctx) and ctx.p["at_text_target"] == "topic"


MAPS_READS = TARGET_READS + ("at_samples", "at_upload", "at_layer_a", "at_layer_b")
TEXT_READS = RULE_READS + ("at_text_target", "at_topic", "at_sentences", "at_text", "at_second", "at_layer_a",
                           "at_layer_b")
FEWER = "Use fewer samples (the sidebar), or the epsilon rule (one pass per layer; gamma and alpha-beta take eight)."
SECTIONS = (
    Section("maps", _maps, MAPS_READS, "abd", _maps_cost, wanted=_images, title="the relevance maps"),
    Section("dataset", _dataset, TARGET_READS, "abd", _dataset_cost, wanted=_images,
            title="the relevance of every sample", ways_around=FEWER),
    Section("faithfulness", _faithfulness, TARGET_READS, "abd", _faithfulness_cost, wanted=_images,
            title="pixel flipping", ways_around=FEWER),
    Section("text_maps", _text_maps, TEXT_READS, "abd", _text_maps_cost, wanted=_text,
            title="the token relevance", ways_around="Explain fewer sentences."),
    Section("text_dataset", _text_dataset, RULE_READS, "abd", _text_dataset_cost,
            wanted=lambda ctx: _topic(ctx) and bool(ctx.p["at_text_dataset"]),
            title="the token relevance of every sentence", ways_around=FEWER),
    Section("text_faithfulness", _text_faithfulness, TEXT_READS, "abd", _text_faithfulness_cost,
            wanted=lambda ctx: _topic(ctx) and bool(ctx.p["at_text_faith"]), title="token removal",
            ways_around="Explain fewer sentences."),
)


def summary(result) -> dict:
    out = {}
    if result.maps is not None:
        out["rules"] = result.maps.a.description
    if result.dataset is not None:
        d = result.dataset
        out["rank agreement of A and B (dataset mean)"] = float(np.nanmean(d.agreement))
        out["median sum(R) / f, A"] = d.conservation_a
        out["median sum(R) / f, B"] = d.conservation_b
    if result.faithfulness is not None:
        for slot, res in (("A", result.faithfulness.a), ("B", result.faithfulness.b)):
            for method, value in res.aopc.items():
                out[f"AOPC {slot} {method}"] = value
    if result.text_maps is not None:
        t = result.text_maps
        out["rules"] = t.a.description
        if t.agreement is not None:
            out["rank agreement of A's and B's token relevance (mean)"] = float(np.nanmean(t.agreement))
    if result.text_dataset is not None:
        out["rank agreement over the dataset's sentences (mean)"] = float(np.nanmean(result.text_dataset))
    if result.text_faithfulness is not None:
        for slot, res in (("A", result.text_faithfulness.a), ("B", result.text_faithfulness.b)):
            for method, value in res.aopc.items():
                out[f"token AOPC {slot} {method}"] = value
    return out
