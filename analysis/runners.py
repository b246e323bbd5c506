"""Headless runs of a page's analysis from its AnalysisSpec: the CLI's engine.

A runner computes what its page shows, with the page's own library calls and parameters, so the
results land under the same store keys: a view computed by the CLI opens instantly in the
dashboard, and the numbers agree. Each returns a :class:`PageResult` of named figures, tables and
headline numbers, which the CLI writes to files and, on request, to an HTML report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


from .errors import UserInputError
from .spec import AnalysisSpec

Progress = Callable[[float, str], None]


@dataclass
class PageResult:
    spec: AnalysisSpec
    figures: dict = field(default_factory=dict)  # name -> plotly Figure
    tables: dict = field(default_factory=dict)  # name -> pandas DataFrame
    numbers: dict = field(default_factory=dict)  # name -> float / str (summary.json)
    provenance: dict = field(default_factory=dict)


def _inputs(spec: AnalysisSpec):
    from . import data, models

    p = spec.params
    ds = data.load(p["data"], n=p["n"], seed=p["seed"], split=p["split"])
    model_a, model_b = models.load(p["a"]), models.load(p["b"])
    model_a.check_data(ds)
    model_b.check_data(ds)
    prov = {"model_a": {"ref": p["a"], "sha256": model_a.sha256}, "model_b": {"ref": p["b"], "sha256": model_b.sha256},
            "data": {"name": p["data"], "rows": len(ds), "sha256": ds.sha256}}
    return ds, model_a, model_b, prov


def _layers(model, wanted, what: str) -> list[str]:
    if not wanted:
        return list(model.layers)
    missing = [w for w in wanted if w not in model.layers]
    if missing:
        raise UserInputError(f"{what}: no layer {missing[0]!r}; layers are {', '.join(model.layers)}.")
    return list(wanted)


def _layer(model, wanted, default: str, what: str) -> str:
    return _layers(model, [wanted or default], what)[0]


def run_attributions(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    from .lrp import run_page

    return run_page(spec, progress=progress, device=device)


RUNNERS: dict[str, Callable[..., PageResult]] = {
    "attributions": run_attributions,
}


def run(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    if spec.page not in RUNNERS:
        raise UserInputError(f"No headless run for the {spec.page!r} page; runs exist for {', '.join(RUNNERS)}.")
    return RUNNERS[spec.page](spec, progress=progress, device=device)
