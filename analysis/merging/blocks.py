"""Block swaps: model B with its blocks i..j replaced by model A's, and the task metric of every
such hybrid (the "boomerang" interpolation between a model and a smaller or different one: Kangaslahti
et al. 2025 put a teacher's blocks back into its distilled student).

A block is a stretch of the network between two boundaries whose output is all that the rest
reads: in a chain network, a weight layer with what follows it up to the next weight layer (its
activation, pooling, flatten); in a BERT-style transformer, one transformer layer (the residual
stream is its output). B's blocks i..j are replaced by A's blocks at the same relative depth.

Where the two models meet, a translator fitted on anchors (:class:`analysis.translation.Translator`,
Maiorca et al. 2023) maps one representation into the other: B's output before block i into A's
input, and A's output after its last swapped block into B's. It acts on the feature axis, one
sample, position of a feature map or token at a time. Other bridges: "permutation" (A's units
reordered to B's, Ainsworth et al. 2023, then nothing in between; same architecture only) and
"none" (nothing in between; the widths must agree).

The score of each hybrid is B's task metric on the held-out half of the rows (the other half gives
the anchors): accuracy for a classifier, reconstruction MSE for an autoencoder, and for an encoder
the accuracy of a logistic-regression probe trained on B's own last layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserInputError

BRIDGES = ("translator", "permutation", "none")


@dataclass
class SwapMap:
    blocks_a: list  # boundary module names of A's blocks, in order
    blocks_b: list
    metric: str  # "accuracy", "reconstruction MSE" or "probe accuracy"
    higher_is_better: bool
    value: np.ndarray  # (len(blocks_b), len(blocks_b)): B's blocks i..j swapped (NaN where j < i)
    start_a: np.ndarray  # A's first block used for B's block range starting at i
    stop_a: np.ndarray  # A's last block used for B's block range ending at j
    own_a: float  # A alone on the same rows (its own task metric; NaN for encoders)
    own_b: float  # B alone
    bridge: str
    method: str
    anchors: int
    notes: list = field(default_factory=list)


# ------------------------------------------------------------------ blocks
def block_boundaries(model) -> list[str]:
    """Boundary modules of ``model``'s blocks in forward order (each block ends at its boundary)."""
    from .chain import leaf_chain
    from .units import _weight_axes

    if getattr(model, "module", None) is None:
        raise UserInputError(f"{model.ref} runs without visible layers (TorchScript or embeddings): it has no "
                             "blocks to swap.")
    if model.input_kind == "text":
        found = [l for l in model.layers if l != "embeddings"]
        if len(found) < 1 or found == model.layers:
            raise UserInputError(f"{model.ref}: no transformer layers found to swap.")
        return found
    chain = leaf_chain(model)
    if chain is None:
        raise UserInputError(f"{model.ref} is not a chain of layers (a residual connection or a computed forward): "
                             "RepLens cannot cut it into blocks.")
    starts = [i for i, link in enumerate(chain) if _weight_axes(link.module) is not None]
    if not starts:
        raise UserInputError(f"{model.ref} has no weight layers to cut into blocks.")
    ends = [s - 1 for s in starts[1:]] + [len(chain) - 1]
    return [chain[e].name for e in ends]


def a_range(i: int, j: int, depth_a: int, depth_b: int) -> tuple[int, int]:
    """A's blocks at the same relative depth as B's blocks i..j (the same blocks when depths agree)."""
    start = int(np.floor(i * depth_a / depth_b))
    stop = max(start, int(np.ceil((j + 1) * depth_a / depth_b)) - 1)
    return start, min(stop, depth_a - 1)


def refusal(model_a, model_b, ds, bridge: str) -> str:
    """Why block swaps between A and B with ``bridge`` are not possible ("" when they are)."""
    if bridge not in BRIDGES:
        return f"Unknown bridge {bridge!r}; use one of {', '.join(BRIDGES)}."
    try:
        ba, bb = block_boundaries(model_a), block_boundaries(model_b)
    except UserInputError as exc:
        return str(exc)
    if min(len(ba), len(bb)) < 2:
        return "Block swaps need at least two blocks in each model."
    if model_a.input_kind != model_b.input_kind:
        return "A and B read different kinds of input: a hybrid cannot run one data set through both."
    if bridge == "translator":
        return ""
    if len(ba) != len(bb):
        return (f"A has {len(ba)} blocks and B has {len(bb)}: swapping blocks between different depths needs a "
                "translator where they meet. Choose the bridge 'translator'.")
    if bridge == "permutation":
        from .units import check_same_groups, unit_groups

        try:
            check_same_groups(unit_groups(model_a), unit_groups(model_b), model_a.ref, model_b.ref)
        except UserInputError as exc:
            return str(exc)
        return ""
    from ..activations import output_shapes

    sa, sb = output_shapes(model_a, ds, ba), output_shapes(model_b, ds, bb)
    bad = [(x, y) for x, y in zip(ba, bb) if sa.get(x) != sb.get(y)]
    if bad:
        x, y = bad[0]
        return (f"Without a translator the widths must agree where the models meet, but A's {x} outputs "
                f"{sa.get(x)} and B's {y} outputs {sb.get(y)}. Choose the bridge 'translator'.")
    return ""


# ------------------------------------------------------------------ running a hybrid
def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _replace(out, new):
    if isinstance(out, tuple):
        return (new,) + tuple(out[1:])
    return new


def _run(model, batch, capture=(), replace=None):
    """Run one batch; returns {boundary: output} for ``capture``. ``replace``: {boundary: f(output)
    -> new output} applied in the forward pass."""
    import torch

    mods = model.hookable()
    got, handles = {}, []
    replace = replace or {}
    for name in set(capture) | set(replace):
        def hook(_m, _i, out, name=name):
            if name in replace:
                out = _replace(out, replace[name](_first(out)))
            if name in capture:
                got[name] = _first(out).detach()
            return out if name in replace else None
        handles.append(mods[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.run(batch)
    finally:
        for h in handles:
            h.remove()
    return got


def _to_rows(x, tokens: bool):
    """(rows, features) view of a boundary output: one row per sample, token or map position."""
    x = x.float()
    if x.ndim == 2:
        return x
    if tokens:
        return x.reshape(-1, x.shape[-1])
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _from_rows(z, like, tokens: bool):
    """The inverse of :func:`_to_rows`: rows back onto ``like``'s layout, with z's width."""
    if like.ndim == 2:
        return z
    if tokens:
        return z.reshape(*like.shape[:-1], z.shape[-1])
    return z.reshape(*like.movedim(1, -1).shape[:-1], z.shape[-1]).movedim(-1, 1)


def _valid_rows(x, mask, tokens: bool):
    """Rows of a boundary output that carry data (valid tokens only), as float64 numpy."""
    if tokens and x.ndim == 3 and mask is not None:
        return x.float()[mask.bool()].cpu().double().numpy()
    return _to_rows(x, tokens).cpu().double().numpy()


@dataclass
class Junction:
    """Where the models meet: a translator fitted on the anchors (None: the output passes as it is)
    acting on each position's features, or (``sample_shape`` set) on each sample's whole output,
    flattened, when the two sides have different spatial layouts."""

    translator: object = None
    sample_shape: tuple | None = None

    def __call__(self, x, tokens: bool):
        import torch

        if self.translator is None:
            return x
        if self.sample_shape is not None:
            z = self.translator.transform(x.float().flatten(1).cpu().double().numpy())
            return torch.from_numpy(z).to(x.device, x.dtype).reshape(x.shape[0], *self.sample_shape)
        z = self.translator.transform(_to_rows(x, tokens).cpu().double().numpy())
        return _from_rows(torch.from_numpy(z).to(x.device, x.dtype), x, tokens)


NO_JUNCTION = Junction()


# ------------------------------------------------------------------ the map of all swaps
def _private(model, device):
    """A private copy on ``device`` (hooks and device moves never touch the shared model)."""
    from .weights import state_of, with_state

    return with_state(model, state_of(model), sha256=model.sha256).to(device)


def _batches(model_a, model_b, ds, batch_size: int, device) -> list:
    batches = list(model_b.batches(ds, batch_size, device))
    if model_b.input_kind == "text":
        for ba, bb in zip(model_a.batches(ds, batch_size, device), batches):
            ia, ib = ba.inputs.get("input_ids"), bb.inputs.get("input_ids")
            if ia is None or ib is None or ia.shape != ib.shape or not bool((ia == ib).all()):
                raise UserInputError("A and B split the sentences into different tokens: token-level block swaps "
                                     "need two models with the same tokenizer.")
    return batches


def _capture_all(model, batches, names) -> list[dict]:
    return [_run(model, b, capture=names) for b in batches]


def _fit_junction(src: list[dict], dst: list[dict], name_src: str, name_dst: str, batches, tokens: bool,
                  method: str) -> Junction:
    """A translator from ``name_src``'s outputs (one model) to ``name_dst``'s (the other), fitted on
    the anchors: per position where both sides have the same positions, else per sample."""
    import warnings

    from ..translation import Translator

    xs = np.concatenate([_valid_rows(s[name_src], b.mask, tokens) for s, b in zip(src, batches)])
    ys = np.concatenate([_valid_rows(d[name_dst], b.mask, tokens) for d, b in zip(dst, batches)])
    shape = None
    if len(xs) != len(ys):  # different spatial layouts: translate whole samples
        xs = np.concatenate([s[name_src].float().flatten(1).cpu().double().numpy() for s in src])
        ys = np.concatenate([d[name_dst].float().flatten(1).cpu().double().numpy() for d in dst])
        shape = tuple(dst[0][name_dst].shape[1:])
    with warnings.catch_warnings():  # the page states the anchor count next to the map
        warnings.simplefilter("ignore")
        return Junction(Translator(method).fit(xs, ys), shape)


def _final_scores(finals: list, batches, kind: str, ds_eval, probe) -> tuple[float, float]:
    """(metric, loss) of the hybrid's last-boundary outputs."""
    import torch

    from . import task as task_mod

    if kind == "encoder":
        pooled = np.concatenate([_pooled(f, b.mask) for f, b in zip(finals, batches)])
        return float(np.mean(probe(pooled) == np.asarray(ds_eval.labels))), float("nan")
    out = torch.cat([f.float().cpu() for f in finals], 0)
    s = task_mod.score_outputs(out, ds_eval, kind)
    return (s.accuracy if kind == "classifier" else s.loss), s.loss


def _pooled(x, mask) -> np.ndarray:
    x = x.float()
    if x.ndim == 3 and mask is not None:
        m = mask.to(x.dtype)[..., None]
        return ((x * m).sum(1) / m.sum(1).clamp_min(1.0)).cpu().double().numpy()
    return x.flatten(1).cpu().double().numpy() if x.ndim > 2 else x.cpu().double().numpy()


def _probe(finals, batches, labels):
    """A logistic-regression probe on pooled last-layer outputs (an encoder's task head): returns
    pooled outputs -> predicted labels."""
    from ..stitching import probe_head

    z = np.concatenate([_pooled(f, b.mask) for f, b in zip(finals, batches)])
    head = probe_head(z, np.asarray(labels))

    def predict(x):
        scores = np.asarray(head(x, None))
        return (scores > 0).astype(np.int64) if scores.ndim == 1 else scores.argmax(1)

    return predict


def swap_map(model_a, model_b, ds, bridge: str = "translator", method: str = "ortho", anchors: int = 100,
             seed: int = 0, batch_size: int = 128, device=None, progress=None) -> SwapMap:
    """B's task metric with each range of its blocks i..j replaced by A's (see the module docstring)."""
    from ..device import pick
    from ..stitching import split_rows
    from ..translation import select_anchors
    from .task import subset

    model_a.check_data(ds)
    model_b.check_data(ds)
    reason = refusal(model_a, model_b, ds, bridge)
    if reason:
        raise UserInputError(reason)
    kind = model_b.kind if model_b.kind in ("classifier", "autoencoder") else "encoder"
    if kind != "autoencoder" and ds.labels is None:
        raise UserInputError("Scoring the hybrids needs labels (accuracy); pick a labelled dataset.")
    dev = pick(device)
    fit_rows, eval_rows = split_rows(len(ds), seed)
    anchors = int(min(max(anchors, 2), len(fit_rows)))
    anchor_rows = fit_rows[np.sort(select_anchors(np.zeros((len(fit_rows), 1)), anchors, "random", seed=seed))]
    notes = []
    a, b = _private(model_a, dev), _private(model_b, dev)
    if bridge == "permutation":  # A's units reordered to B's, found on the fitting rows only
        from .align import align

        a = align(b, a, subset(ds, fit_rows), "activations", device=dev).to(dev)
    ba, bb = block_boundaries(a), block_boundaries(b)
    la, lb = len(ba), len(bb)
    tokens = b.input_kind == "text"
    ds_anchor, ds_eval = subset(ds, anchor_rows), subset(ds, eval_rows)
    anchor_batches = _batches(a, b, ds_anchor, batch_size, dev)
    eval_batches = _batches(a, b, ds_eval, batch_size, dev)
    cap_a, cap_b = _capture_all(a, anchor_batches, ba), _capture_all(b, anchor_batches, bb)
    starts = [a_range(i, i, la, lb)[0] if i == 0 else max(1, a_range(i, i, la, lb)[0]) for i in range(lb)]
    stops = [a_range(j, j, la, lb)[1] for j in range(lb)]
    t_in, t_out = {}, {}
    if bridge == "translator":
        for i in range(1, lb):
            t_in[i] = _fit_junction(cap_b, cap_a, bb[i - 1], ba[starts[i] - 1], anchor_batches, tokens, method)
        for j in range(lb):
            t_out[j] = _fit_junction(cap_a, cap_b, ba[stops[j]], bb[j], anchor_batches, tokens, method)
    if progress:
        progress(0.05, "translators fitted" if t_out else "hybrids")
    own_b_cap = _capture_all(b, eval_batches, bb)
    probe = None
    if kind == "encoder":
        fit_batches = _batches(a, b, subset(ds, fit_rows), batch_size, dev)
        probe = _probe([c[bb[-1]] for c in _capture_all(b, fit_batches, [bb[-1]])], fit_batches, ds.labels[fit_rows])
    own_b = _final_scores([c[bb[-1]] for c in own_b_cap], eval_batches, kind, ds_eval, probe)[0]
    own_a = float("nan")
    if model_a.kind == model_b.kind and kind != "encoder":
        own_a = _final_scores([c[ba[-1]] for c in _capture_all(a, eval_batches, [ba[-1]])], eval_batches, kind,
                              ds_eval, probe)[0]
    value = np.full((lb, lb), np.nan)
    ranges = [(i, j) for i in range(lb) for j in range(i, lb)]
    for r, (i, j) in enumerate(ranges):
        start, stop = starts[i], max(stops[j], starts[i])
        finals = []
        for batch, own in zip(eval_batches, own_b_cap):
            replace = {ba[start - 1]: (lambda x, own=own, i=i: t_in.get(i, NO_JUNCTION)(own[bb[i - 1]], tokens))} \
                if i > 0 else {}
            xa = _run(a, batch, capture=[ba[stop]], replace=replace)[ba[stop]]
            out_j = t_out.get(j, NO_JUNCTION)(xa, tokens)
            if j == lb - 1:
                finals.append(out_j)
            else:
                finals.append(_run(b, batch, capture=[bb[-1]], replace={bb[j]: lambda x, z=out_j: z})[bb[-1]])
        value[i, j] = _final_scores(finals, eval_batches, kind, ds_eval, probe)[0]
        if progress:
            progress(0.05 + 0.95 * (r + 1) / len(ranges), f"B's blocks {i + 1}..{j + 1} from A ({r + 1}/{len(ranges)})")
    if la != lb:
        notes.append(f"A has {la} blocks and B has {lb}: B's blocks i..j are replaced by A's blocks at the same "
                     "relative depth.")
    metric = {"classifier": "accuracy", "autoencoder": "reconstruction MSE", "encoder": "probe accuracy"}[kind]
    return SwapMap(list(ba), list(bb), metric, kind != "autoencoder", value, np.asarray(starts),
                   np.asarray([max(stops[j], 0) for j in range(lb)]), float(own_a), float(own_b), bridge,
                   method if bridge == "translator" else "", anchors, notes)
