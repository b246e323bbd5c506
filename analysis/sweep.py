"""Sweeps: a grid of analyses whose every cell is computed and cached exactly as a single view's.

Two kinds of grid:
- **similarity**: model pairs (seeds against seeds, checkpoints against the final model, any list)
  × measures, over chosen layers. A cell is a Similarity view spec; computing it runs that view's
  ``matrices`` section, so the Similarity page opens any cell of a finished sweep at once.
- **SAE**: k × expansion (and any other hyper-parameter) on one layer. A cell is the SAE page's
  trained SAE (:func:`analysis.sae.trained_sae`), stored under the key the page reads.

``run(cells, executor)`` computes the cells the store does not hold yet: in this process
(``executor=None``), or as jobs of an executor (the local pool, or Ray: one task per cell, in
parallel; a task is retried when its worker dies and rewrites the same entry). ``table(cells)``
reads the finished grid as one long table.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable

from .errors import UserInputError
from .jobs import DONE, FINISHED, Cost, Task
from .spec import AnalysisSpec

PAIRINGS = ("all", "consecutive", "to-last")
Progress = Callable[[float, str], None]


def pairs(models: list[str], how: str = "all") -> list[tuple[str, str]]:
    """Model pairs: ``all`` unordered pairs, ``consecutive`` neighbours in the list, or ``to-last``
    each model against the last (a checkpoint series against its final model, the final included)."""
    models = list(dict.fromkeys(models))
    if how == "all":
        return list(combinations(models, 2)) or [(models[0], models[0])]
    if how == "consecutive":
        return list(zip(models, models[1:])) or [(models[0], models[0])]
    if how == "to-last":
        return [(m, models[-1]) for m in models]
    raise UserInputError(f"Unknown pairing {how!r}; use one of {', '.join(PAIRINGS)}.")


# ------------------------------------------------------------------ cells
@dataclass(frozen=True)
class SimilarityCell:
    """One model pair under one measure: a Similarity view spec; its value is the ``matrices`` section."""

    spec: AnalysisSpec
    SECTIONS = ("matrices",)

    @property
    def coords(self) -> dict:
        p = self.spec.params
        return {"a": p["a"], "b": p["b"], "measure": p["measure"]}

    def _view(self):
        from . import views

        return views.get("similarity")

    def task(self) -> Task | None:
        """The job that computes this cell, or None when the store holds it."""
        return self._view().plan(self.spec, self.SECTIONS).task

    def compute(self, progress: Progress | None = None) -> None:
        self._view().compute(self.spec, progress, sections=self.SECTIONS)

    def value(self):
        """The cell's Matrices (A–B, A–A, B–B) from the store; None when it is not computed."""
        return self._view().peek(self.spec, self.SECTIONS)[0].matrices

    def rows(self) -> list[dict]:
        m = self.value()
        if m is None:
            return []
        return [{**self.coords, "layer_a": la, "layer_b": lb, "value": float(m.ab.loc[la, lb])}
                for la in m.ab.index for lb in m.ab.columns]


def similarity_cells(model_pairs: list[tuple[str, str]], measures: list[str], layers_a: list[str] | None = None,
                     layers_b: list[str] | None = None, pooling: str = "mean", **sidebar) -> list[SimilarityCell]:
    """One cell per (pair, measure). ``sidebar`` holds the data (data, n, seed, split); layers default
    to all of each model's."""
    out = []
    for a, b in model_pairs:
        for measure in measures:
            params = {"a": a, "b": b, "measure": measure, "pooling": pooling, "layers_a": layers_a,
                      "layers_b": layers_b, **sidebar}
            out.append(SimilarityCell(AnalysisSpec("similarity", {k: v for k, v in params.items() if v is not None})))
    return out


@dataclass(frozen=True)
class SAECell:
    """One SAE on one layer: the SAE page's trained SAE for these hyper-parameters."""

    model: str
    layer: str
    params: tuple  # (name, value) pairs of sae.normalise_params
    data: tuple = ("digits", 500, 0, "test")
    pooling: str = "mean"

    @property
    def coords(self) -> dict:
        return {"model": self.model, "layer": self.layer, **dict(self.params)}

    def _inputs(self):
        from .views.inputs import load_dataset, load_model

        return load_model(self.model), load_dataset(*self.data)

    def key(self) -> str:
        from .sae import store_key

        model, ds = self._inputs()
        return store_key(model.sha256, ds.sha256, self.layer, self.pooling, dict(self.params))

    def task(self) -> Task | None:
        from .sae import estimate_seconds
        from .store import default_store

        key = self.key()
        if key in default_store():
            return None
        model, ds = self._inputs()
        p = dict(self.params)
        from .activations import pooled_dims

        d = pooled_dims(model, ds, [self.layer], self.pooling)[0]
        seconds = estimate_seconds(len(ds), d, p["expansion"], p["steps"], p["batch_size"])
        return Task("analysis.sweep:train_sae_cell", {"model": self.model, "data": list(self.data), "layer": self.layer,
                                                      "pooling": self.pooling, "params": p},
                    key, title=f"SAE on {self.model} {self.layer} ({_describe(p)})", kind="sweep:sae",
                    cost=Cost(seconds, int(4 * len(ds) * d * (2 + p["expansion"]))))

    def compute(self, progress: Progress | None = None) -> None:
        train_sae_cell(self.model, list(self.data), self.layer, self.pooling, dict(self.params), progress)

    def rows(self) -> list[dict]:
        from .store import default_store

        meta = default_store().meta(self.key())
        if not meta:
            return []
        return [{**self.coords, **meta.get("train_info", {}).get("metrics", {})}]


def _describe(params: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items() if k in ("kind", "k", "l1", "expansion"))


def sae_cells(model: str, layer: str, ks: list[int], expansions: list[int], data: tuple = ("digits", 500, 0, "test"),
              pooling: str = "mean", **params) -> list[SAECell]:
    """One cell per (k, expansion); ``params`` are the other hyper-parameters (kind, steps, lr, ...)."""
    from .sae import normalise_params

    out = []
    for expansion in expansions:
        for k in ks:
            p = normalise_params(**{**params, "k": int(k), "expansion": int(expansion)})
            out.append(SAECell(model, layer, tuple(sorted(p.items())), tuple(data), pooling))
    return out


def train_sae_cell(model: str, data: list, layer: str, pooling: str, params: dict, progress=None) -> dict:
    """A job's entry point: train (or read) one SAE of the grid; returns its metrics."""
    from .sae import trained_sae
    from .views.inputs import load_dataset, load_model

    sae = trained_sae(load_model(model), load_dataset(*data), layer, pooling, progress=progress, **params)
    return dict(sae.train_info.get("metrics", {}))


# ------------------------------------------------------------------ running a grid
@dataclass
class SweepRun:
    cells: int
    computed: int
    cached: int
    seconds: float
    attempts: dict = field(default_factory=dict)  # task key -> starts, where a backend counts them


def run(cells: list, executor=None, progress: Progress | None = None, prefetch: bool = False) -> SweepRun:
    """Compute every cell the store lacks: in this process (``executor=None``) or as jobs of
    ``executor``, all submitted at once. ``prefetch`` first extracts the activations of every model
    on the Ray cluster with Ray Data (:mod:`analysis.jobs.ray_extract`). Raises UserInputError
    naming the first failed cell when any fails (the others are kept in the store)."""
    t0 = time.perf_counter()
    say = progress or (lambda f, m: None)
    if prefetch:
        extract_on_cluster(cells, say)
    todo = [(cell, task) for cell in cells if (task := cell.task()) is not None]
    if executor is None:
        for i, (cell, _) in enumerate(todo):
            cell.compute(lambda f, m, i=i: say((i + f) / len(todo), f"cell {i + 1}/{len(todo)}: {m}"))
        attempts = {}
    else:
        attempts = _run_jobs(executor, [task for _, task in todo], say)
    say(1.0, "done")
    return SweepRun(len(cells), len(todo), len(cells) - len(todo), time.perf_counter() - t0, attempts)


def _run_jobs(executor, tasks: list[Task], say: Progress) -> dict:
    jobs = [executor.submit(task) for task in tasks]
    while not all(j.state in FINISHED for j in jobs):
        done = sum(j.state in FINISHED for j in jobs)
        say(sum(1.0 if j.state in FINISHED else j.fraction for j in jobs) / max(len(jobs), 1),
            f"{done}/{len(jobs)} cells done")
        jobs[[j.state in FINISHED for j in jobs].index(False)].wait(0.2)
    failed = [j for j in jobs if j.state != DONE]
    if failed:
        raise UserInputError(f"{len(failed)} of {len(jobs)} cells failed; the first, {failed[0].task.title}: "
                             f"{failed[0].error or failed[0].state}")
    count = getattr(executor, "attempts", None)
    return {j.key: count(j.key) for j in jobs} if count else {}


def extract_on_cluster(cells: list, progress: Progress | None = None) -> None:
    """Extract every model's activations for the similarity cells on the Ray cluster (Ray Data
    actors holding the model), so the cells then only read them."""
    from .jobs import ray_extract

    wanted: dict[tuple, list] = {}
    for cell in cells:
        if not isinstance(cell, SimilarityCell):
            continue
        p = cell.spec.params
        data = (p["data"], p["n"], p["seed"], p["split"])
        for side in ("a", "b"):
            layers = wanted.setdefault((p[side], data, p["pooling"]), [])
            layers.extend(p[f"layers_{side}"] or [None])
    for i, ((ref, data, pooling), layers) in enumerate(wanted.items()):
        chosen = None if None in layers else list(dict.fromkeys(layers))
        sub = None if progress is None else (lambda f, m, i=i: progress((i + f) / len(wanted), m))
        ray_extract.extract(ref, data, chosen, pooling, progress=sub)


def table(cells: list):
    """The finished grid as one long table (a row per cell and layer pair, or per SAE)."""
    import pandas as pd

    return pd.DataFrame([row for cell in cells for row in cell.rows()])
