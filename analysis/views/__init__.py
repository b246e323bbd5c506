"""One view module per page: its parameters and its pipeline (see :mod:`analysis.views.base`).

``get(page)`` gives the page's :class:`View`; ``run(spec)`` computes a whole view (the CLI);
``run_task`` is what a job runs (a page submits the sections it still needs).
"""
from __future__ import annotations

import importlib

from .base import Context, Plan, Section, View

# page url path -> module under analysis.views
MODULES = {"models": "models", "similarity": "similarity", "projections": "projections",
           "functional-maps": "functional_maps", "vector-field": "vector_field", "attributions": "attributions",
           "training-dynamics": "sweep", "sae": "sae", "merge": "merge"}
_VIEWS: dict[str, View] = {}


def has(page: str) -> bool:
    return page in MODULES


def pages() -> list[str]:
    return list(MODULES)


def get(page: str) -> View:
    if page not in _VIEWS:
        if page not in MODULES:
            from ..errors import UserInputError

            raise UserInputError(f"Unknown view {page!r}; views: {', '.join(MODULES)}.")
        _VIEWS[page] = View(importlib.import_module(f"{__name__}.{MODULES[page]}"))
    return _VIEWS[page]


def run(spec, progress=None, cancel=None, sections=None, device=None, store=None):
    """The view's whole result for a spec (every wanted section): the CLI and library entry point."""
    return get(spec.page).compute(spec, progress, cancel, sections, device, store)


def run_task(spec: dict, sections: list[str], progress=None) -> dict:
    """A job's entry point (analysis.jobs): compute the sections into the store; return their names."""
    from ..spec import AnalysisSpec

    s = AnalysisSpec.from_json(spec)
    get(s.page).compute(s, progress, sections=sections)
    return {"page": s.page, "sections": list(sections)}


def warm_up(progress=None, hooks: str = "now", models: bool = True) -> dict:
    """Import the model code and load the default view's models and data in this process (a server
    or a job worker), so the first page does not pay for it. ``hooks``: when to import what the
    views' jobs import lazily ("now"; "background": in a thread, so that a job waiting behind this
    warm-up, the first page's, starts as soon as the models are loaded; "no": a server whose jobs
    run in worker processes needs none of it). ``models=False``: the data only (no torch)."""
    from ..spec import SIDEBAR
    from .inputs import load_dataset, load_model

    d = {p.key: p.default for p in SIDEBAR}
    load_dataset(d["data"], d["n"], d["seed"], d["split"])
    if not models:
        return {}
    for ref in (d["a"], d["b"]):
        load_model(ref)
    if hooks == "background":
        import threading

        threading.Thread(target=_warm_up_jobs, name="replens-warm-up-jobs", daemon=True).start()
    elif hooks == "now":
        _warm_up_jobs()
    return {}


def _warm_up_jobs() -> None:
    # the kNN graphs, spectra and probes of several views: about 1.5 s of imports that a first
    # job would otherwise pay (and that would inflate its kind's learned estimate correction)
    import scipy.sparse.csgraph  # noqa: F401
    import scipy.sparse.linalg  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.neighbors  # noqa: F401

    for page in MODULES:  # what a view's jobs import lazily (seconds, once per process)
        hook = getattr(get(page).module, "warm_up", None)
        if hook is not None:
            hook()


__all__ = ["View", "Section", "Context", "Plan", "get", "has", "pages", "run", "run_task"]
