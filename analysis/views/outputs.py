"""A view's result as files: named figures, tables and headline numbers, for the CLI and the
HTML report. The figures come from the view's figures module (``analysis.figures.<view>``), the
same functions the page draws with."""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field

from ..spec import AnalysisSpec


@dataclass
class PageOutputs:
    spec: AnalysisSpec
    figures: dict = field(default_factory=dict)  # name -> plotly Figure
    tables: dict = field(default_factory=dict)  # name -> DataFrame
    numbers: dict = field(default_factory=dict)  # name -> number or text (summary.json)
    provenance: dict = field(default_factory=dict)


def provenance(ctx) -> dict:
    p, out = ctx.p, {}
    for side, model in (("a", ctx.model_a), ("b", ctx.model_b)):
        out[f"model_{side}"] = {"ref": model.ref, "sha256": model.sha256}
    out["data"] = {"name": p["data"], "rows": len(ctx.ds), "sha256": ctx.ds.sha256}
    return out


def headless(spec: AnalysisSpec, progress=None, device=None) -> PageOutputs:
    """Compute a whole view and turn it into figures, tables and numbers."""
    from . import MODULES, get

    if spec.page not in MODULES:
        from ..errors import UserInputError

        raise UserInputError(f"No headless run for the {spec.page!r} page; runs exist for {', '.join(MODULES)}.")
    view = get(spec.page)
    fitted, notes = view.resolve(spec)
    replaced = [k for k, v in spec.params.items() if v is not None and fitted.params[k] != v]
    if replaced:  # the page would fall back to a default; the command line says what is wrong instead
        from ..errors import UserInputError

        raise UserInputError(" ".join(notes))
    result = view.compute(spec, progress, device=device)
    ctx = view.context(spec, device)
    figs = importlib.import_module(f"analysis.figures.{MODULES[spec.page]}")
    summary = getattr(view.module, "summary", None)
    return PageOutputs(spec, figs.all_figures(result, spec, ctx), figs.all_tables(result),
                       summary(result) if summary else {}, provenance(ctx))


def report_items(result: PageOutputs) -> list[dict]:
    """The outputs as report items (see analysis.report), figures first."""
    import pandas as pd

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    base = {"page": result.spec.page, "spec": result.spec.to_json(), "provenance": result.provenance,
            "pinned": stamp, "notes": ""}
    items = []
    for name, fig in result.figures.items():
        from ..figures import plain_title

        title = plain_title(fig, name)
        items.append({**base, "id": name, "kind": "figure", "title": title, "caption": title, "figure": fig.to_json()})
    for name, df in result.tables.items():
        keep_index = not isinstance(df.index, pd.RangeIndex)
        items.append({**base, "id": name, "kind": "table", "title": name, "caption": name,
                      "csv": df.to_csv(index=keep_index), "html": df.to_html(index=keep_index, border=0)})
    return items
