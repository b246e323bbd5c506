"""AnalysisSpec: the full description of one view (page, models, data, layers, method, parameters,
view options), with a stable hash, and its round trip through URL query parameters.

Each page declares its parameters once in :data:`PAGES` (key, type, range or choices, default); the
sidebar's parameters (:data:`SIDEBAR`) belong to every page. A share link writes *every* parameter,
defaults included, so a default changed in a later version does not change what an old link shows.
Long links have a short form ``?a=<hash>`` whose spec is kept in the result store.

The same declarations drive the CLI (``python -m analysis <page> --<key> ...``), so the page and
the CLI cannot disagree about names or ranges. No Streamlit here.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlencode

from .errors import UserInputError

SHORT_ID = re.compile(r"[0-9a-f]{16}")
_SAFE_TEXT = re.compile(r"[\w .:/+\-=\[\]()…,|@#]{0,200}")  # layer names, model references, labels


def _num(x) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Param:
    """One parameter of a view: the one source of its widget (label, range, step, help), its URL key
    and its CLI option. ``kind`` is int, float, bool, str (a name: layer, model reference, option),
    text (free text a user typed) or list (of str). ``default=None`` means the view chooses it from
    the models (e.g. the last layer); ``choices`` may be a callable so that lists owned by analysis
    modules are read when needed, not copied here."""

    key: str
    kind: str
    default: Any = None
    choices: Sequence | Callable[[], Sequence] | None = None
    lo: float | None = None
    hi: float | None = None
    help: str = ""
    label: str = ""  # the widget's label (the key when empty)
    domain: str = ""  # values that depend on the models: "layer:a", "layers:b", ... (see analysis.views)
    step: float | None = None  # widget step for numbers

    def options(self) -> list | None:
        c = self.choices() if callable(self.choices) else self.choices
        return None if c is None else list(c)

    def parse(self, raw: Any) -> Any:
        """The typed, checked value of a query-parameter string (or list of strings); raises
        UserInputError with the reason when it is not acceptable."""
        if self.kind == "list":
            items = raw if isinstance(raw, (list, tuple)) else ([] if raw in (None, "") else [raw])
            return [self._check_text(str(v)) for v in items]
        if isinstance(raw, (list, tuple)):
            raw = raw[-1] if raw else ""
        text = str(raw).strip()
        if self.kind == "bool":
            if text.lower() in ("true", "1", "yes", "on"):
                value = True
            elif text.lower() in ("false", "0", "no", "off"):
                value = False
            else:
                raise UserInputError(f"'{self.key}' must be true or false, not {text[:40]!r}.")
        elif self.kind in ("int", "float"):
            try:
                number = float(text)
            except ValueError:
                raise UserInputError(f"'{self.key}' must be a number, not {text[:40]!r}.") from None
            if number != number or number in (float("inf"), float("-inf")):
                raise UserInputError(f"'{self.key}' must be a finite number.")
            if self.kind == "int":
                if number != int(number):
                    raise UserInputError(f"'{self.key}' must be a whole number, not {text[:40]!r}.")
                value = int(number)
            else:
                value = number
            if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
                raise UserInputError(f"'{self.key}' must lie between {_num(self.lo)} and {_num(self.hi)}; got {text[:40]}.")
        elif self.kind == "text":  # free text a user typed (a sentence): printable, bounded
            text = str(raw if not isinstance(raw, (list, tuple)) else raw[-1])
            if len(text) > 1000 or any(ord(c) < 32 and c not in "\t" for c in text):
                raise UserInputError(f"'{self.key}' must be printable text of at most 1000 characters.")
            value = text
        else:
            value = self._check_text(text)
        opts = self.options()
        if opts is not None and value not in opts:
            raise UserInputError(f"'{self.key}' must be one of {', '.join(map(str, opts))}; got {str(value)[:40]!r}.")
        return value

    def _check_text(self, text: str) -> str:
        if not _SAFE_TEXT.fullmatch(text) or ".." in text:
            raise UserInputError(f"'{self.key}' has characters a RepLens view never uses: {text[:40]!r}.")
        return text

    def format(self, value: Any) -> str | list[str]:
        """The query-parameter text of a value (the inverse of :meth:`parse`)."""
        if self.kind == "list":
            return [str(v) for v in value]
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "float":
            return repr(float(value))
        return str(value)


def _splits():
    from .data import SPLITS

    return list(SPLITS)


SIDEBAR: tuple[Param, ...] = (
    Param("a", "str", "zoo:mlp-s0", help="model A reference (zoo:…, hf:…, upload:…)"),
    Param("b", "str", "zoo:mlp-s1", help="model B reference"),
    Param("data", "str", "digits", help="dataset name or upload:<id>"),
    Param("n", "int", 500, lo=10, hi=1_000_000, help="number of samples"),
    Param("seed", "int", 0, lo=0, hi=2**31 - 1, help="seed of the subsample"),
    Param("split", "str", "test", choices=_splits, help="digits split"),
)

# Samples a view that holds every row in memory takes; a view that streams from the activation
# cache declares its own MAX_N (up to the sidebar's bound, 1,000,000: digits_noisy has 100,000 rows,
# an hfds: set may have millions, and a million rows of a few wide layers is already tens of GB of
# cache on disk). analysis.views.base.View.resolve lowers a larger n to the view's limit, with a note.
IN_MEMORY_N = 20_000

# Page parameters, by the page's URL path. Keys are the pages' widget keys (bound to the URL).
PAGES: dict[str, tuple[Param, ...]] = {
    "report": (Param("report", "str", help="id of a saved report"),),
}


def all_pages() -> list[str]:
    from . import views

    return sorted(set(PAGES) | set(views.pages()))


def params_of(page: str) -> tuple[Param, ...]:
    from . import views

    if views.has(page):
        return SIDEBAR + views.get(page).params
    if page not in PAGES:
        raise UserInputError(f"Unknown page {page!r}; pages: {', '.join(all_pages())}.")
    return SIDEBAR + PAGES[page]


@dataclass(frozen=True)
class AnalysisSpec:
    """One view: the page and the value of each of its parameters (``None``: chosen by the page)."""

    page: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        known = {p.key for p in params_of(self.page)}
        unknown = set(self.params) - known
        if unknown:
            raise UserInputError(f"Unknown parameters for page {self.page!r}: {', '.join(sorted(unknown))}.")
        full = {p.key: self.params.get(p.key, p.default) for p in params_of(self.page)}
        for p in params_of(self.page):  # an empty list has no URL form: it means "the page's choice"
            if p.kind == "list" and full[p.key] is not None:
                full[p.key] = list(full[p.key]) or p.default
        object.__setattr__(self, "params", {k: full[k] for k in sorted(full)})

    # -------------------------------------------------------------- query parameters
    def to_query(self) -> dict[str, str | list[str]]:
        """Every parameter with a value, as query-parameter text (lists as repeated parameters)."""
        out = {}
        for p in params_of(self.page):
            value = self.params.get(p.key, p.default)
            if value is not None:
                out[p.key] = p.format(value)
        return out

    def query_string(self) -> str:
        return urlencode(self.to_query(), doseq=True)

    def url(self, base: str) -> str:
        """The full share link: ``base`` is the app's address (with any path prefix)."""
        return f"{base.rstrip('/')}/{self.page}?{self.query_string()}"

    @classmethod
    def from_query(cls, page: str, query: Mapping[str, Any], strict: bool = False) -> tuple["AnalysisSpec", list[str]]:
        """The spec a link describes, plus one message per value that was refused (unknown
        parameter, wrong type, out of range): those fall back to the default. ``strict`` raises
        on the first problem instead (the CLI)."""
        problems, values = [], {}
        schema = {p.key: p for p in params_of(page)}
        for key, raw in query.items():
            if key not in schema:
                problems.append(f"Ignored unknown parameter '{str(key)[:40]}'.")
                continue
            try:
                values[key] = schema[key].parse(raw)
            except UserInputError as exc:
                problems.append(f"Ignored {exc}")
        if strict and problems:  # the CLI: say what is wrong, not what a page would have ignored
            raise UserInputError(" ".join(q.removeprefix("Ignored ") for q in problems))
        for p in schema.values():
            values.setdefault(p.key, p.default)
        return cls(page, values), problems

    # -------------------------------------------------------------- identity and storage
    def to_json(self) -> dict:
        return {"page": self.page, "params": dict(self.params)}

    @classmethod
    def from_json(cls, body: Mapping) -> "AnalysisSpec":
        spec, problems = cls.from_query(body["page"], {k: v for k, v in body["params"].items() if v is not None})
        if problems:
            raise UserInputError(" ".join(problems))
        return spec

    def hash(self) -> str:
        """Stable short id (16 hex digits of the sha256 of the canonical JSON)."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def save(self, store) -> str:
        """Keep the spec in the store for its short link; returns the id."""
        sid = self.hash()
        if store.get_doc("spec", sid) is None:  # the id is the spec's hash: a kept one is this spec
            store.put_doc("spec", sid, self.to_json(), name=self.page)
        return sid

    def short_url(self, base: str, store) -> str:
        return f"{base.rstrip('/')}/{self.page}?a={self.save(store)}"


def is_short_link(query: Mapping[str, Any]) -> bool:
    """A short link carries exactly one parameter, ``a``, holding a spec id (a model reference
    always has a scheme such as ``zoo:``, so the two never collide)."""
    value = query.get("a")
    return set(query) == {"a"} and isinstance(value, str) and bool(SHORT_ID.fullmatch(value))


def resolve(spec_id: str, store) -> AnalysisSpec | None:
    """The spec saved under a short id, or None when this server does not know it."""
    body = store.get_doc("spec", spec_id)
    return None if body is None else AnalysisSpec.from_json(body)
