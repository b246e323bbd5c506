"""Training dynamics view: how a network's layers converge during training, and how much networks
trained from different seeds agree.

- For a checkpoint series (oldest first, the final model last), each checkpoint's similarity to
  the final model, layer by layer: a layer × checkpoint map and one line per layer.
- For a set of seeds, the seeds × seeds matrix of one layer.

Every value is a cell of a sweep (:mod:`analysis.sweep`): a Similarity view spec whose ``matrices``
section is cached like any view's, so a cell opens on the Similarity page at once, and
``python -m analysis sweep`` (on the local pool or a Ray cluster) fills the same cells.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserInputError
from ..jobs import Cost
from ..spec import Param
from .base import Section
from .similarity import PARAMS as SIMILARITY_PARAMS

PAGE, TITLE, VERSION = "training-dynamics", "Training dynamics", 1
SERIES_OF = "mlp-ae-b8"  # the zoo model whose training checkpoints ship with RepLens
DEFAULT_SEEDS = ["zoo:mlp-s0", "zoo:mlp-s1", "zoo:mlp-s2"]


def default_checkpoints() -> list[str]:
    from ..zoo_manifest import checkpoints

    return [f"zoo:{name}" for _, name in checkpoints(SERIES_OF)[:-1]]


_SHARED = {p.key: p for p in SIMILARITY_PARAMS}
PARAMS = (
    Param("final", "str", f"zoo:{SERIES_OF}", label="Final model",
          help="the end of the training run: every checkpoint is compared with it"),
    Param("checkpoints", "list", default_checkpoints(), label="Checkpoints",
          help="Model references of the same run: zoo:…, hf:org/name@step1000 (a hub revision, Pythia's "
               "convention), upload:…. Ordered by training step where it is known (zoo epochs, @stepN)."),
    _SHARED["measure"],
    _SHARED["pooling"],
    Param("layers", "list", label="Layers", help="layers compared (default: every layer of the final model)"),
    Param("seeds", "list", DEFAULT_SEEDS, label="Seeds",
          help="models of one architecture trained from different seeds (zoo:…, hf:…, upload:…)"),
    Param("seed_layer", "str", label="Layer of the seeds matrix", help="default: the middle layer of the first seed"),
)


# ------------------------------------------------------------------ results
@dataclass
class Dynamics:
    values: object  # DataFrame: layers x checkpoint labels, each checkpoint vs the final model
    refs: list  # the checkpoints' references, in the columns' order
    measure: str


@dataclass
class Seeds:
    values: object  # DataFrame: seeds x seeds, one layer
    layer: str
    measure: str


@dataclass
class Result:
    dynamics: Dynamics | None = None
    seeds: Seeds | None = None


# ------------------------------------------------------------------ the spec's models
def _load(ref: str):
    from .inputs import load_model

    return load_model(ref)


def step(ref: str) -> int | None:
    """A checkpoint's training step where its reference or its record tells it: a zoo model's
    epochs, or the number in an hf revision (``@step1000``, ``@1000``)."""
    import re

    if "@" in ref:
        found = re.fullmatch(r"(?:step|epoch|ckpt|checkpoint)?[-_]?(\d+)", ref.rsplit("@", 1)[1])
        return int(found.group(1)) if found else None
    if ref.startswith("zoo:"):
        epochs = _load(ref).info.get("epochs")
        return None if epochs is None else int(epochs)
    return None


def series(ctx) -> list[str]:
    """The checkpoints in training order (known steps first, ascending; others as given), then the final model."""
    final = ctx.p["final"]
    refs = [r for r in dict.fromkeys(ctx.p["checkpoints"] or []) if r != final]
    steps = {r: step(r) for r in refs}
    known = sorted((r for r in refs if steps[r] is not None), key=lambda r: steps[r])
    return known + [r for r in refs if steps[r] is None] + [final]


def layers(ctx) -> list[str]:
    return list(ctx.p["layers"] or _load(ctx.p["final"]).layers)


def seed_models(ctx) -> list[str]:
    refs = list(dict.fromkeys(ctx.p["seeds"] or []))
    if not refs:
        raise UserInputError("Name at least one seed model.")
    return refs


def seed_layer(ctx) -> str:
    first = _load(seed_models(ctx)[0])
    return ctx.p["seed_layer"] or first.layers[len(first.layers) // 2]


def label(ref: str) -> str:
    """A checkpoint's name on an axis: its epoch (zoo), its revision (hf:…@step1000), else the reference."""
    if "@" in ref:
        return ref.rsplit("@", 1)[1]
    found = step(ref)
    return f"epoch {found}" if found is not None else ref


def _hashes(refs: list[str]) -> dict:
    return {ref: _load(ref).sha256 for ref in refs}


def _check_layers(refs: list[str], wanted: list[str], what: str) -> None:
    for ref in refs:
        missing = [l for l in wanted if l not in _load(ref).layers]
        if missing:
            raise UserInputError(f"{ref} has no layer {missing[0]!r}: the {what} must share their layers "
                                 "(one architecture).")


# ------------------------------------------------------------------ cells (similarity view specs)
def _sidebar(ctx) -> dict:
    return {k: ctx.p[k] for k in ("data", "n", "seed", "split")}


def dynamics_cells(ctx) -> list:
    from ..sweep import pairs, similarity_cells

    refs, chosen = series(ctx), layers(ctx)
    _check_layers(refs, chosen, "checkpoints of one training run")
    return similarity_cells(pairs(refs, "to-last"), [ctx.p["measure"]], chosen, chosen, ctx.p["pooling"],
                            **_sidebar(ctx))


def seed_cells(ctx) -> list:
    from ..sweep import pairs, similarity_cells

    layer = [seed_layer(ctx)]
    _check_layers(seed_models(ctx), layer, "seed models")
    return similarity_cells(pairs(seed_models(ctx), "all"), [ctx.p["measure"]], layer, layer, ctx.p["pooling"],
                            **_sidebar(ctx))


def _compute_cells(cells, progress) -> list:
    from ..sweep import run

    run(cells, None, progress)
    return [cell.value() for cell in cells]


def _cells_cost(cells) -> Cost:
    total = Cost()
    for cell in cells:
        task = cell.task()
        total = total + (task.cost if task is not None else Cost())
    return total


# ------------------------------------------------------------------ sections
def _dynamics(ctx, progress) -> Dynamics:
    import pandas as pd

    refs, chosen = series(ctx), layers(ctx)
    matrices = _compute_cells(dynamics_cells(ctx), progress)
    names = [label(ref) for ref in refs]
    names = names if len(set(names)) == len(names) else refs
    values = pd.DataFrame({name: [float(m.ab.loc[l, l]) for l in chosen] for name, m in zip(names, matrices)},
                          index=pd.Index(chosen, name="layer"))
    values.columns.name = "checkpoint"
    return Dynamics(values, refs, ctx.p["measure"])


def _seeds_from(ctx, progress) -> Seeds:
    import numpy as np
    import pandas as pd

    refs, layer = seed_models(ctx), seed_layer(ctx)
    cells = seed_cells(ctx)
    matrices = _compute_cells(cells, progress)
    k = len(refs)
    values = np.full((k, k), np.nan)
    for cell, m in zip(cells, matrices):
        i, j = refs.index(cell.coords["a"]), refs.index(cell.coords["b"])
        values[i, j] = values[j, i] = float(m.ab.iloc[0, 0])
        values[i, i], values[j, j] = float(m.aa.iloc[0, 0]), float(m.bb.iloc[0, 0])
    return Seeds(pd.DataFrame(values, index=refs, columns=refs), layer, ctx.p["measure"])


def resolve(ctx) -> dict:
    """Layers that the final checkpoint (or the first seed) does not have fall back to the default."""
    changes = {}
    try:
        final = _load(ctx.p["final"])
        bad = [l for l in ctx.p["layers"] or [] if l not in final.layers]
        if bad:
            ctx.notes.append(f"{bad[0]!r} is not a layer of {final.ref}: showing every layer.")
            changes["layers"] = None
        first = _load(seed_models(ctx)[0])
        if ctx.p["seed_layer"] and ctx.p["seed_layer"] not in first.layers:
            ctx.notes.append(f"{ctx.p['seed_layer']!r} is not a layer of {first.ref}: showing its middle layer.")
            changes["seed_layer"] = None
    except UserInputError:
        pass  # a model that does not load is reported by the section that needs it
    return changes


AROUND = "Use fewer checkpoints, seeds or layers, or run the sweep on a cluster (python -m analysis sweep --ray ...)."
SECTIONS = (
    # Keyed by the layers resolved against the models: "every layer" asked as None (a link, the CLI) or
    # as the full list (the page's widget) is one computation.
    Section("dynamics", _dynamics, ("final", "checkpoints", "measure", "pooling"), "d",
            lambda ctx: _cells_cost(dynamics_cells(ctx)), title="each checkpoint against the final model",
            ways_around=AROUND, keyed=lambda ctx: {**_hashes(series(ctx)), "layers": layers(ctx)}),
    Section("seeds", _seeds_from, ("seeds", "measure", "pooling"), "d",
            lambda ctx: _cells_cost(seed_cells(ctx)), title="the seeds matrix", ways_around=AROUND,
            keyed=lambda ctx: {**_hashes(seed_models(ctx)), "layer": seed_layer(ctx)}),
)


def summary(result) -> dict:
    out = {}
    if result.dynamics is not None:
        v = result.dynamics.values
        first = v.columns[0]
        out.update({f"{layer} at {first} vs final": float(v.loc[layer, first]) for layer in v.index})
    if result.seeds is not None:
        import numpy as np

        s = result.seeds.values.to_numpy()
        off = s[~np.eye(len(s), dtype=bool)]
        if off.size:
            out[f"mean seed-to-seed similarity at {result.seeds.layer}"] = float(off.mean())
    return out
