"""The one pipeline behind every page: a view is a list of sections, each a cached computation.

A view module (``analysis/views/<page>.py``) declares
- ``PARAMS``: its parameters (the one source of widgets, defaults, ranges, URL keys and CLI options);
- ``SECTIONS``: what it computes, in order. A section names the parameters it ``reads`` and the
  inputs it uses (model A, model B, the data), so its store key changes exactly when its result
  can: clicking another heatmap cell recomputes the drill-down, not the heatmap;
- optionally ``resolve(ctx)``: notes and fixes for values that no longer fit the current models;
- optionally ``fill(ctx)``: the values it chooses where the spec leaves them open (default layers).

``View.compute(spec, progress, cancel)`` is the only orchestration: the page (through a job), the
CLI and a job runner all call it. Each section's value goes to the store as soon as it is done,
so a page can draw the finished sections while later ones run (``View.peek``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from functools import cached_property
from typing import Any, Callable, Sequence

from ..jobs import Cost, Task, fmt_seconds
from ..spec import IN_MEMORY_N, SIDEBAR, AnalysisSpec, Param

ALWAYS = staticmethod(lambda ctx: True)


@dataclass(frozen=True)
class Section:
    """One cached step of a view.

    compute(ctx, progress) -> value   a dataclass of arrays/tables or a dict of arrays
    reads                             spec parameters the value depends on
    uses                              inputs it depends on: "a", "b" (models) and "d" (the data), or a
                                      letter of the view module's ``INPUTS`` (letter -> content hash of ctx)
    estimate(ctx) -> Cost             its time and memory before it runs (None: negligible)
    variant(ctx) -> str               what its cost depends on beyond the section (the measure): each
                                      variant's estimates are corrected by its own past runs
    wanted(ctx) -> bool               whether this spec asks for it at all
    ways_around                       said when it is refused for being over the server's ceiling
    keyed(ctx) -> dict                what else the store keys it by, beside the parameters it reads:
                                      a choice the spec leaves to the view, as made ("the best match",
                                      the default layers), so a link that names the value and one that
                                      leaves it open share the result; content hashes of models named
                                      in parameters (a checkpoint series)
    stored                            False: a cheap listing of what the store holds now (every SAE
                                      trained on a layer), computed afresh on every read and never
                                      stored; it must not need sections that may still be missing
    """

    name: str
    compute: Callable
    reads: tuple[str, ...] = ()
    uses: str = "abd"
    estimate: Callable | None = None
    wanted: Callable | None = None
    title: str = ""
    ways_around: str = ""
    variant: Callable | None = None
    keyed: Callable | None = None
    stored: bool = True


class Context:
    """One spec's inputs, loaded on first use, and its sections' values (computed or from the store)."""

    def __init__(self, view: "View", spec: AnalysisSpec, device=None, store=None):
        self.view, self.spec, self.device = view, spec, device
        self.p = spec.params
        self._store = store
        self._values: dict[str, Any] = {}
        self.notes: list[str] = []

    @cached_property
    def store(self):
        from ..store import default_store

        return self._store or default_store()

    @cached_property
    def ds(self):
        from .inputs import load_dataset

        p = self.p
        return load_dataset(p["data"], int(p["n"]), int(p["seed"]), p["split"])

    @cached_property
    def model_a(self):
        from .inputs import load_model

        return load_model(self.p["a"])

    @cached_property
    def model_b(self):
        from .inputs import load_model

        return load_model(self.p["b"])

    def _model_hash(self, slot: str) -> str:
        loaded = self.__dict__.get(f"model_{slot}")  # cached_property: set once the model is loaded
        if loaded is not None:
            return loaded.sha256
        from .inputs import model_hash

        return model_hash(self.p[slot])

    def check_pair(self) -> None:
        """Both models can read the data (a clear message otherwise)."""
        self.model_a.check_data(self.ds)
        self.model_b.check_data(self.ds)

    def fingerprint(self, uses: str) -> dict:
        out = {}
        for slot in "ab":
            if slot in uses:
                out[slot] = self._model_hash(slot)
        if "d" in uses:
            out["d"] = self.ds.sha256
        for name, content_hash in getattr(self.view.module, "INPUTS", {}).items():
            if name in uses:  # an input only this view has (the autoencoder of the Vector field view)
                out[name] = content_hash(self)
        return out

    def parts(self, section: Section) -> tuple[str, dict]:
        """The section's store kind and key parts: the parameters it reads, the content hashes of
        the inputs it uses, and the view's version."""
        params = {k: self.canonical(k) for k in section.reads}
        if section.keyed is not None:
            params.update(section.keyed(self))
        return (f"{self.view.page}-{section.name}"[:40],
                {"params": params, "inputs": self.fingerprint(section.uses), "v": self.view.version})

    def canonical(self, key: str):
        """A parameter's value as the store keys it: every layer of a model, listed, is the same view
        as the default (all layers), so a link and a page that spell it differently share results."""
        value = self.p[key]
        p = self.view.param(key)
        if p is not None and p.kind == "list" and p.domain.startswith("layers:") and value:
            model = self.model_a if p.domain.endswith("a") else self.model_b
            if list(value) == list(model.layers):
                return None
        return value

    def key(self, section: Section) -> str:
        from ..store import digest

        return digest(*self.parts(section))

    def wanted(self, section: Section) -> bool:
        return section.wanted is None or bool(section.wanted(self))

    # ------------------------------------------------------------------ values
    def value(self, name: str, progress=None):
        """A section's value: from this context, else the store, else computed (and stored)."""
        if name not in self._values:
            section = self.view.section(name)
            if not section.stored:
                self._values[name] = section.compute(self, progress or _quiet)
                return self._values[name]
            kind, parts = self.parts(section)
            self._values[name] = self.store.cached(kind, parts, lambda: self._timed(section, progress or _quiet))
        return self._values[name]

    def estimate_kind(self, section: Section) -> str:
        variant = section.variant(self) if section.variant else ""
        return f"{self.view.page}:{section.name}" + (f":{variant}" if variant else "")

    def _timed(self, section: Section, progress):
        """Compute a section, and teach its estimate how long that took on this machine."""
        import time

        from ..jobs import estimates

        t0 = time.perf_counter()
        value = section.compute(self, progress)
        if section.estimate is not None:
            estimates.record(self.estimate_kind(section), section.estimate(self).seconds, time.perf_counter() - t0)
        return value

    def stored(self, name: str):
        """A section's value if the store holds it (never computes, but for an unstored listing,
        which is read afresh); None otherwise."""
        if name in self._values or not self.view.section(name).stored:
            return self.value(name)
        value = self.store.lookup(*self.parts(self.view.section(name)))
        if value is not None:
            self._values[name] = value
        return value


def _quiet(fraction: float, message: str = "") -> None:
    return None


@dataclass
class Plan:
    """What a spec still needs computed: the sections, their cost, and the job that runs them."""

    sections: list[str]
    cost: Cost
    task: Task | None
    parts: list[tuple[str, Cost]] = field(default_factory=list)

    def describe(self) -> str:
        return f"about {fmt_seconds(self.cost.seconds)}"


class View:
    """A page's pipeline, built from its view module's declarations."""

    def __init__(self, module):
        self.module = module
        self.page: str = module.PAGE
        self.title: str = getattr(module, "TITLE", self.page)
        self.params: tuple[Param, ...] = tuple(module.PARAMS)
        self.sections: tuple[Section, ...] = tuple(module.SECTIONS)
        self.version: int = getattr(module, "VERSION", 1)
        self.result_type = getattr(module, "Result", None)
        # samples the view takes: views that hold every row in memory keep the in-memory cap
        self.max_n: int = int(getattr(module, "MAX_N", IN_MEMORY_N))

    def param(self, key: str) -> Param | None:
        return next((p for p in self.params if p.key == key), None)

    def section(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(f"{self.page} has no section {name!r}")

    def context(self, spec: AnalysisSpec, device=None, store=None) -> Context:
        """A context for the spec. A view module's ``fill(ctx)`` gives the values it chooses where
        the spec leaves them open (None: e.g. a default layer of model A); they are filled in here,
        before any store key is made, so a link that names them and one that does not (the page's
        widgets and the CLI) share one stored result."""
        if spec.page != self.page:
            raise ValueError(f"a {spec.page!r} spec given to the {self.page!r} view")
        ctx = Context(self, spec, device, store)
        fill = getattr(self.module, "fill", None)
        if fill is not None:
            ctx.p = {**ctx.p, **fill(ctx)}
        return ctx

    def _names(self, ctx: Context, sections: Sequence[str] | None) -> list[str]:
        names = [s.name for s in self.sections] if sections is None else list(sections)
        return [n for n in names if ctx.wanted(self.section(n))]

    # ------------------------------------------------------------------ the pipeline
    def resolve(self, spec: AnalysisSpec, store=None) -> tuple[AnalysisSpec, list[str]]:
        """The spec with every value that no longer fits the current models replaced by the default,
        plus one note per replaced value (never an empty view). Parameters with a ``domain`` are
        checked here (layers of A or B, classes of the data); a view's own ``resolve(ctx)`` adds
        what only it knows."""
        changes, capped = self._fit_n(spec)
        ctx = self.context(AnalysisSpec(self.page, {**spec.params, **changes}) if changes else spec, store=store)
        ctx.notes += capped
        for p in self.params:
            if p.domain and spec.params.get(p.key) is not None:
                changes.update(_fit_domain(ctx, p, spec.params[p.key]))
        fix = getattr(self.module, "resolve", None)
        if fix is not None:
            ctx.p = {**spec.params, **changes}
            changes.update(fix(ctx) or {})
        if not changes:
            return spec, ctx.notes
        return AnalysisSpec(self.page, {**spec.params, **changes}), ctx.notes

    def _fit_n(self, spec: AnalysisSpec) -> tuple[dict, list[str]]:
        n = spec.params.get("n")
        if n is None or int(n) <= self.max_n:
            return {}, []
        return {"n": self.max_n}, [self.too_many_samples(int(n))]

    def too_many_samples(self, n: int) -> str:
        """Why ``n`` samples (more than the view takes) fall back to its limit."""
        return (f"The {self.title} view holds every sample in memory, so it takes at most {self.max_n:,} samples "
                f"(asked for {n:,}): showing {self.max_n:,}. Similarity and Projections stream from the "
                "activation cache and take more.")

    def compute(self, spec: AnalysisSpec, progress=None, cancel=None, sections: Sequence[str] | None = None,
                device=None, store=None):
        """Compute (or read from the store) every wanted section, in order; returns the Result."""
        ctx = self.context(spec, device, store)
        names = self._names(ctx, sections)
        for i, name in enumerate(names):
            if cancel is not None and cancel():
                from ..jobs import JobCancelled

                raise JobCancelled()
            sub = None if progress is None else _scaled(progress, i / len(names), 1 / len(names), name)
            ctx.value(name, sub)
        if progress is not None:
            progress(1.0, "done")
        return self.assemble(ctx, names)

    def peek(self, spec: AnalysisSpec, sections: Sequence[str] | None = None, store=None):
        """(Result with the sections the store already holds, names of the wanted ones it lacks)."""
        ctx = self.context(spec, store=store)
        names = self._names(ctx, sections)
        missing = [n for n in names if ctx.stored(n) is None]
        return self.assemble(ctx, [n for n in names if n not in missing]), missing

    def plan(self, spec: AnalysisSpec, sections: Sequence[str] | None = None, store=None) -> Plan:
        """The cost of what is missing, and the task that computes it (None when nothing is)."""
        from ..jobs.estimates import corrected

        ctx = self.context(spec, store=store)
        names = [n for n in self._names(ctx, sections) if ctx.stored(n) is None]
        parts = []
        for n in names:
            s = self.section(n)
            raw = s.estimate(ctx) if s.estimate else Cost(0.05, 0)
            parts.append((n, Cost(corrected(ctx.estimate_kind(s), raw.seconds), raw.bytes)))
        cost = sum((c for _, c in parts), Cost())
        if not names:
            return Plan([], cost, None, parts)
        from ..store import digest

        key = digest(f"job:{self.page}", {"sections": [ctx.key(self.section(n)) for n in names]})
        titles = [self.section(n).title or n for n in names]
        around = " ".join(dict.fromkeys(self.section(n).ways_around for n in names if self.section(n).ways_around))
        task = Task("analysis.views:run_task", {"spec": spec.to_json(), "sections": names}, key,
                    title=f"{self.title}: {', '.join(titles)} ({len(ctx.ds):,} samples)", kind=f"{self.page}:{'+'.join(names)}", cost=cost,
                    ways_around=around)
        return Plan(names, cost, task, parts)

    def assemble(self, ctx: Context, names: Sequence[str]):
        values = {n: ctx._values.get(n) for n in names}
        if self.result_type is None:
            return values
        known = {f.name for f in fields(self.result_type)}
        return self.result_type(**{k: v for k, v in values.items() if k in known})


def _domain_values(ctx: Context, domain: str) -> tuple[list, str]:
    """The values a domain allows now, and how to name where they come from."""
    what, _, side = domain.partition(":")
    if what in ("layer", "layers"):
        model = ctx.model_a if side == "a" else ctx.model_b
        return list(model.layers), f"a layer of {model.ref} (model {side.upper()})"
    if what == "class":
        ds = ctx.ds
        names = ds.label_names or ([str(c) for c in sorted({int(v) for v in ds.labels})] if ds.labels is not None else [])
        return [str(n) for n in names], f"a class of the dataset '{ds.name}'"
    raise ValueError(f"unknown parameter domain {domain!r}")


def _fit_domain(ctx: Context, p: Param, value) -> dict:
    allowed, where = _domain_values(ctx, p.domain)
    if p.kind == "list":
        bad = [v for v in value if v not in allowed]
        if not bad:
            return {}
        kept = [v for v in value if v in allowed]
        ctx.notes.append(f"{bad[0]!r} is not {where}: "
                         f"{'showing the others' if kept else 'showing the default'} for {p.label or p.key}.")
        return {p.key: kept or None}
    if value in allowed:
        return {}
    ctx.notes.append(f"{value!r} is not {where}: showing the default for {p.label or p.key}.")
    return {p.key: None}


def _scaled(progress, start: float, width: float, name: str):
    return lambda f, m="": progress(start + width * min(max(float(f), 0.0), 1.0), m or name)


def sidebar_defaults() -> dict:
    return {p.key: p.default for p in SIDEBAR}


def as_dict(value) -> dict:
    """A section value's fields (dataclass or dict), for code that reads either."""
    if is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    return dict(value)
