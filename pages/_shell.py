"""The app shell shared by every page: the sidebar pickers (state in the URL), cached loaders,
upload handling and the error display. Pages import from here; no numerics live here."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import streamlit as st

# Libraries that import each other lazily (pandas <-> pyarrow, plotly -> narwhals -> pandas) are
# imported here once: every session imports this module first (app.py) and Python's per-module lock
# makes the others wait until it is complete. Imported for the first time by several sessions at
# once, a library could be handed out half-initialised ("partially initialized module 'pandas' has
# no attribute 'Series'"): the import system breaks the lock cycle that way. Found by benchmarks/load.py.
import pandas  # noqa: E402,F401  isort: skip
import pyarrow  # noqa: E402,F401  isort: skip
import plotly.graph_objects  # noqa: E402,F401  isort: skip

from analysis import data as data_mod
from analysis import models as models_mod
from analysis import settings
from analysis.errors import UserInputError
from analysis.safe_text import md, md_code, plotly_inert

from analysis import spec as spec_mod
from analysis.views import inputs as inputs_mod

DEFAULTS = {p.key: p.default for p in spec_mod.SIDEBAR}
DEFAULT_A, DEFAULT_B, DEFAULT_DATA = DEFAULTS["a"], DEFAULTS["b"], DEFAULTS["data"]
DEFAULT_N, DEFAULT_SEED = DEFAULTS["n"], DEFAULTS["seed"]
MODEL_FILE_TYPES = ["pt", "pth", "ts", "torchscript", "safetensors", "npy", "npz", "csv", "parquet"]
DATA_FILE_TYPES = ["npy", "npz", "csv", "parquet"]


@dataclass(frozen=True)
class Selection:
    model_a: str
    model_b: str
    dataset: str
    n: int
    seed: int
    split: str


class PageStop(Exception):
    """Raised by a page to end its run early (instead of st.stop(), which would also drop what the
    app draws after the page: the share panel)."""


def halt():
    raise PageStop()


def allow_local_paths() -> bool:
    return settings.local_paths_allowed()


def allow_hub() -> bool:  # off unless the server's administrator turned it on
    return settings.hub_allowed(default=False)


# Loaded models and datasets are shared by every session and every job in this process: one cache.
load_model = inputs_mod.load_model


def load_dataset(name: str, n: int, seed: int, split: str):
    return inputs_mod.load_dataset(name, n, seed, split)


def show_error(message: str) -> None:
    """A message a user can act on (never a traceback); user values in it are shown as text."""
    st.error(md(message))


@st.cache_data(show_spinner=False, max_entries=8)
def model_label(ref: str) -> str:
    """A readable option label: 'zoo:mlp-s0 · MLP classifier (width=128) · seed 0'."""
    if ref.startswith("zoo:"):
        try:
            e = models_mod.zoo_entry(ref[4:])
        except UserInputError:
            return ref
        return f"{ref} · {e['description']} · seed {e['seed']}"
    if ref == "hf:minilm":
        return "hf:minilm · all-MiniLM-L6-v2 (pretrained text encoder)"
    if ref == "hf:minilm-random":
        return "hf:minilm-random · MiniLM architecture, random weights"
    if ref.startswith("upload:"):
        from analysis.store import default_store

        info = default_store().find_blob(ref[7:])
        return f"{ref[:15]}… · uploaded {info['name']}" if info else f"{ref} · (missing on this server)"
    if ref.startswith("merge:"):
        from analysis.merging.reference import describe, recipe

        try:
            return f"{ref} · {describe(recipe(ref[6:]))}"
        except UserInputError:
            return f"{ref} · (missing on this server)"
    return ref


def model_refs() -> list[str]:
    """Every model a picker offers: the zoo, the bundled MiniLM pair, this server's uploads and merges."""
    return models_mod.builtin_refs() + _uploaded("model") + _merged()


def _uploaded(kind: str) -> list[str]:
    from analysis.store import default_store

    return [f"upload:{b['sha256'][:16]}" for b in default_store().blobs(kind)]


def _merged() -> list[str]:
    from analysis.merging.reference import merged_refs

    return merged_refs()


def _with_url_value(options: list[str], key: str, valid) -> list[str]:
    """Options plus a value arriving in the URL (a shared link) that is well-formed but not listed,
    so a bound selectbox accepts it instead of silently dropping it."""
    value = st.query_params.get(key)
    if value and value not in options and key not in st.session_state:
        try:
            valid(value)
            options = options + [value]
        except UserInputError as exc:
            st.sidebar.warning(md(f"Ignored '{key}' from the link: {exc}"))
            if value.startswith("upload:"):  # offer the upload: the same file gets the same id
                st.session_state["_missing_upload"] = (key, value)
    return options


# ------------------------------------------------------------------ sidebar
def sidebar() -> Selection:
    """Model A, Model B, dataset, n, seed, split: bound to the URL query parameters."""
    sb = st.sidebar
    sb.markdown("### Models and data")
    if "_link_query" not in st.session_state:  # the link as opened, before widgets drop bad values
        st.session_state["_link_query"] = {k: st.query_params.get_all(k) for k in st.query_params}
        _drop_non_finite_numbers()
    opened = st.session_state.setdefault("_opened", {"model": [], "data": []})  # by name, this session
    listed = model_refs()  # reads the store: once per run
    model_options = listed + [r for r in opened["model"] if r not in listed]
    for key in ("a", "b"):
        opts = _with_url_value(model_options, key, _check_model_ref)
        pending = st.session_state.pop(f"_set_{key}", None)
        if pending:
            opts = opts if pending in opts else opts + [pending]
            st.session_state[key] = pending
        default = DEFAULT_A if key == "a" else DEFAULT_B
        # Options are the bare references (the URL holds the selected option's text), described below.
        sb.selectbox(f"Model {key.upper()}", opts, index=opts.index(default), key=key, bind="query-params")
        sb.caption(md(model_label(st.session_state[key]).split(" · ", 1)[-1]))
    data_options = data_mod.names() + _uploaded("data") + opened["data"]
    opts = _with_url_value(data_options, "data", _check_data_ref)
    pending = st.session_state.pop("_set_data", None)
    if pending:
        opts = opts if pending in opts else opts + [pending]
        st.session_state["data"] = pending
    sb.selectbox("Dataset", opts, index=opts.index(DEFAULT_DATA), key="data", bind="query-params")
    c1, c2 = sb.columns(2)
    limit = _samples_limit()
    c1.number_input("Samples", min_value=10, max_value=limit, value=DEFAULT_N, step=50, key="n",
                    bind="query-params",
                    help=f"Rows drawn from the dataset (all rows if fewer are available): up to {limit:,} on this "
                         f"page. Pages that hold every sample in memory take {spec_mod.IN_MEMORY_N:,}; Similarity "
                         f"and Projections stream from the on-disk activation cache and take more.")
    c2.number_input("Seed", min_value=0, max_value=2**31 - 1, value=DEFAULT_SEED, step=1, key="seed",
                    bind="query-params", help="Seed of the subsample: the same seed gives the same rows.")
    sb.selectbox("Split", list(data_mod.SPLITS), index=0, key="split", bind="query-params",
                 disabled=st.session_state.get("data") != "digits",
                 help="Digits rows: the zoo's test split (default), its training split, or all. "
                      "Other datasets have one split.")
    _upload_panel()
    _reference_panel()
    return Selection(st.session_state["a"], st.session_state["b"], st.session_state["data"],
                     int(st.session_state["n"]), int(st.session_state["seed"]), st.session_state["split"])


def _samples_limit() -> int:
    """The most samples the current page takes. A larger count (a link, or a streaming page's
    count carried to one that holds every row in memory) falls back to it here, before the
    Samples input exists (it cannot change after), and the page says why (``prepare``)."""
    from analysis import views
    from pages._widgets import apply_fixes

    page = st.session_state.get("_page", "models")
    view = views.get(page) if views.has(page) else None
    limit = view.max_n if view is not None else spec_mod.IN_MEMORY_N
    raw = st.session_state.get("n", st.query_params.get("n"))
    try:
        asked = int(float(raw))
    except (TypeError, ValueError, OverflowError):
        return limit
    bound = next(p.hi for p in spec_mod.SIDEBAR if p.key == "n")
    if limit < asked <= bound:  # beyond the bound the link is refused as malformed (_link_problems)
        apply_fixes({"n": limit})
        note = view.too_many_samples(asked) if view is not None else f"At most {limit:,} samples here: showing {limit:,}."
        st.session_state["_samples_note"] = (page, note)
    return limit


def _drop_non_finite_numbers() -> None:
    """Remove numeric parameters whose link value is not a finite number (?n=1e400): a bound
    number_input converts it with int() and the whole script fails. _link_problems reports them."""
    import math

    numeric = {p.key for page in spec_mod.all_pages() for p in spec_mod.params_of(page) if p.kind in ("int", "float")}
    for key in numeric & set(st.query_params.keys()):
        try:
            ok = math.isfinite(float(st.query_params.get(key)))
        except (TypeError, ValueError):
            ok = True  # not a number at all: the widget ignores it by itself
        if not ok:
            del st.query_params[key]
            _forget_initial_query_param(key)


def _forget_initial_query_param(key: str) -> None:
    """Bound widgets seed themselves from the query string the session opened with, not from
    st.query_params: drop the key there too (Streamlit internals, so best effort)."""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        with get_script_run_ctx().session_state.query_params() as qp:
            qp._initial_query_params.pop(key, None)
    except Exception:  # noqa: BLE001 - another Streamlit version: the widget may then fail on it
        pass


def _check_model_ref(v: str) -> None:
    """A model reference from a link: well-formed (no local paths unless allowed) and known here, so
    that an unknown one falls back to the default view with a message instead of a failing page."""
    from analysis.store import default_store

    source, rest = models_mod.parse_ref(v, allow_local=allow_local_paths(), allow_hub=allow_hub())
    if source == "zoo":
        models_mod.zoo_entry(rest)
    elif source == "upload" and default_store().find_blob(rest, "model") is None:
        raise UserInputError(f"No uploaded model with id {rest!r} on this server; upload the file again.")
    elif source == "merge":
        from analysis.merging.reference import recipe

        recipe(rest)  # a merge this server does not hold: one message, the default model instead


def _check_data_ref(v: str) -> None:
    from analysis.store import default_store

    if v in data_mod.names():
        return
    if v.startswith(("hfds:", "images:")):
        data_mod.check_ref(v, allow_local=allow_local_paths(), allow_hub=allow_hub())
        return
    if not (v.startswith("upload:") and len(v) > 15 and all(c in "0123456789abcdef" for c in v[7:])):
        raise UserInputError(f"Unknown dataset {v!r}.")
    if default_store().find_blob(v[7:], "data") is None:
        raise UserInputError(f"No uploaded dataset with id {v[7:]!r} on this server; upload the file again.")


def _link_problems() -> None:
    """The values of the opened link that were refused (unknown parameters, out-of-range numbers,
    unknown choices) and so replaced by defaults, in one message at the top of the page. Checked
    once per session; shown until the user changes the sidebar (a rerun right after opening, e.g.
    the URL being corrected, must not wipe it). Model and dataset references have their own
    messages (_with_url_value)."""
    query = st.session_state.get("_link_query")
    if query and not st.session_state.get("_link_checked"):
        st.session_state["_link_checked"] = True
        from analysis import spec as spec_mod

        query = {k: v[0] if len(v) == 1 else v for k, v in query.items() if k not in ("a", "b", "data")}
        page = st.session_state.get("_page", "models")
        try:
            spec_mod.params_of(page)
        except UserInputError:
            page = "models"  # a page that declares no parameters: check the sidebar's only
            query = {k: v for k, v in query.items() if k in {p.key for p in spec_mod.SIDEBAR}}
        try:
            _, problems = spec_mod.AnalysisSpec.from_query(page, query)
        except UserInputError as exc:
            problems = [str(exc)]
        if problems:
            st.session_state["_link_message"] = (
                "From the link: " + " ".join(problems) + " Showing the default for those.",
                st.session_state.get("_selection"))
    shown = st.session_state.get("_link_message")
    if shown:
        if shown[1] == st.session_state.get("_selection"):
            st.warning(md(shown[0]))
        else:
            del st.session_state["_link_message"]


def _upload_panel() -> None:
    from analysis import tabular

    limit_mb = tabular.max_upload_bytes() // 2**20
    missing = st.session_state.pop("_missing_upload", None)
    with st.sidebar.expander("Upload a model or data", expanded=missing is not None):
        if missing:
            what = {"a": "model A", "b": "model B", "data": "the dataset"}[missing[0]]
            st.info(f"The link uses an uploaded file as {what} ({md(missing[1])}) that this server does not have. "
                    "Upload the same file here: it gets the same id, and the link's view opens with it.")
            if missing[0] in ("a", "b") and "upload_target" not in st.session_state:
                st.session_state["upload_target"] = f"Model {missing[0].upper()}"
        st.caption(f"TorchScript (.pt), safetensors weights of a zoo architecture, or embeddings "
                   f"(.npy/.npz/.csv/.parquet, rows aligned with the dataset). Up to {limit_mb} MB. "
                   "Files are stored by content hash and never unpickled.")
        # No type= filter: Streamlit would raise its own exception for a forged extension; the upload
        # functions refuse unsupported types with a message that lists the supported ones.
        f = st.file_uploader("Model file", key="upload_model", max_upload_size=limit_mb,
                             help=f"{', '.join('.' + t for t in MODEL_FILE_TYPES)}; up to {limit_mb} MB.")
        target = st.radio("Use it as", ["Model A", "Model B"], horizontal=True, key="upload_target")
        _take_upload(f, models_mod.upload, "_set_a" if target == "Model A" else "_set_b")
        g = st.file_uploader("Data file", key="upload_data", max_upload_size=limit_mb,
                             help=f"{', '.join('.' + t for t in DATA_FILE_TYPES)}; up to {limit_mb} MB.")
        _take_upload(g, data_mod.upload, "_set_data")


REFERENCE_HELP = (
    "Models: `hf:org/name[@revision]` or `hf:/path/to/folder` (any transformers model; options after `#`, "
    "e.g. `#dtype=bfloat16,layers=h.3.mlp`), `timm:NAME`, `open_clip:NAME/PRETRAINED`, `torchvision:NAME`. "
    "Datasets: `hfds:PATH_OR_ID[#input=COL,label=COL,split=NAME]`, `images:/path/to/folder` (one subfolder "
    "per class). Hub ids and server folders work where the server's administrator allows them.")


def _reference_panel() -> None:
    """A model or dataset by reference (a hub id, a folder on the server): checked against the
    server's rules before it is selected, so a refused one gives one message and changes nothing."""
    with st.sidebar.expander("Open a model or dataset by name"):
        with st.form("open_reference", border=False):
            ref = st.text_input("Reference", key="_open_ref", placeholder="hf:EleutherAI/pythia-70m",
                                help=REFERENCE_HELP, max_chars=500)
            target = st.radio("Use it as", ["Model A", "Model B", "Dataset"], horizontal=True, key="_open_as")
            opened = st.form_submit_button("Load")
        st.caption(f"Hub: {'allowed' if allow_hub() else 'off'} · server folders: "
                   f"{'allowed' if allow_local_paths() else 'off'} on this server.")
        if not opened or not ref.strip():
            return
        ref = ref.strip()
        try:
            if target == "Dataset":
                _check_data_ref(ref)
            else:
                _check_model_ref(ref)
        except UserInputError as exc:
            st.error(md(exc))
            return
        kept = st.session_state["_opened"]["data" if target == "Dataset" else "model"]
        if ref not in kept:
            kept.append(ref)  # an option of the selectboxes from now on
        st.session_state[{"Model A": "_set_a", "Model B": "_set_b", "Dataset": "_set_data"}[target]] = ref
        st.rerun()


def _take_upload(file, upload, select_key: str) -> None:
    """Store a new upload (validated first: nothing is written for a bad file) and select it."""
    if file is None or st.session_state.get(f"_done{select_key}") == file.file_id:
        return
    try:
        ref = upload(file.getvalue(), file.name)
    except UserInputError as exc:
        st.error(md(exc))
        return
    except Exception as exc:  # an untrusted file must never take the page down: one message, logged
        import logging

        logging.getLogger("replens").exception("upload of %r failed", file.name)
        st.error(md(f"{file.name} could not be read ({type(exc).__name__}); nothing was stored. "
                    "Check that it is a file of one of the listed types."))
        return
    st.session_state[f"_done{select_key}"] = file.file_id
    st.session_state[select_key] = ref
    st.rerun()


def selection() -> Selection:
    _link_problems()
    return st.session_state["_selection"]


def prepare(page: str, pair: bool = True):
    """The page's view and a context for the current spec: values that no longer fit the models
    (layers of a previous model) are replaced by defaults with a note, before any widget exists;
    models that cannot read the data stop the page with one message (and an offer to switch)."""
    from analysis import views
    from pages._share import current_spec
    from pages._widgets import apply_fixes

    sel = selection()
    view = views.get(page)
    st.session_state["_page"] = page  # the page running (links and current_spec() read it)
    st.title(view.title)
    before = current_spec(page)
    try:
        spec, notes = view.resolve(before)
        ctx = view.context(spec)
        ctx.ds  # noqa: B018 - load it here, where a bad dataset gets its message
        if pair:
            ctx.check_pair()
    except UserInputError as exc:
        show_error(str(exc))
        _offer_matching_data(sel)
        halt()
    changes = {k: v for k, v in spec.params.items() if v != before.params.get(k)}
    apply_fixes(changes)
    capped = st.session_state.get("_samples_note")
    if capped and (capped[0] != page or int(ctx.p["n"]) != view.max_n):  # another page, or the user chose again
        st.session_state.pop("_samples_note", None)
    elif capped:
        notes = [capped[1], *notes]
    for note in _kept_notes(page, ctx, notes, changes):
        st.info(md(note), icon=":material/info:")
    if pair:
        st.caption(f"{md(sel.model_a)} (A) vs {md(sel.model_b)} (B) · {md(ctx.ds.describe(sel.n))}")
    return view, ctx


def _kept_notes(page: str, ctx, notes: list[str], changes: dict) -> list[str]:
    """The notes about replaced values, shown as long as those values stay as fixed (the next run,
    after a job finishes, has nothing left to fix but the note still holds); gone once the user
    changes one of them or opens another page. Compared as the view sees them (``ctx.p``, with the
    values it chooses filled in), since the widgets fill in their defaults on the next run."""
    if notes and changes:
        st.session_state["_view_notes"] = (page, {k: ctx.p.get(k) for k in changes}, list(notes))
    elif notes:
        return notes
    kept = st.session_state.get("_view_notes")
    if not kept or kept[0] != page or any(ctx.p.get(k) != v for k, v in kept[1].items()):
        st.session_state.pop("_view_notes", None)
        return []
    return kept[2]


def _offer_matching_data(sel: Selection) -> None:
    """A text model with numeric data (or the reverse) is one click away from working: offer the
    dataset that model A reads, with a model B that reads it too."""
    try:
        kind_a, kind_b = (load_model(r).input_kind for r in (sel.model_a, sel.model_b))
    except UserInputError:
        return
    text_a = kind_a == "text"
    data = "text" if text_a else ("digits" if sel.dataset == "text" else sel.dataset)
    b_fits = (kind_b == "text") == text_a or kind_b == "any"
    model_b = sel.model_b if b_fits else ("hf:minilm-random" if sel.model_a != "hf:minilm-random" else "hf:minilm") \
        if text_a else DEFAULT_B
    if (data, model_b) == (sel.dataset, sel.model_b):
        return
    label = f"Use the '{data}' dataset" + ("" if model_b == sel.model_b else f" and {model_b} as model B")
    if st.button(label, type="primary", key="_offer_data"):
        st.session_state["_set_data"] = data
        if model_b != sel.model_b:
            st.session_state["_set_b"] = model_b
        st.rerun()


def pair_or_stop(sel: Selection):
    """Dataset and both models for a comparison page, checked against each other; on a problem the
    page shows the message and stops. Returns (dataset, model A, model B, a cache key of the data)."""
    try:
        ds = load_dataset(sel.dataset, sel.n, sel.seed, sel.split)
        model_a, model_b = load_model(sel.model_a), load_model(sel.model_b)
        model_a.check_data(ds)
        model_b.check_data(ds)
    except UserInputError as exc:
        st.error(md(exc))
        st.stop()
    st.caption(f"{md_code(sel.model_a)} (A) vs {md_code(sel.model_b)} (B) · {md(ds.describe(sel.n))}")
    return ds, model_a, model_b, (sel.dataset, sel.n, sel.seed, sel.split, ds.sha256)


@contextlib.contextmanager
def user_errors(where: str = ""):
    """Show a UserInputError as a clear message instead of a traceback (as text: messages quote
    file names, layer names and link values)."""
    try:
        yield
    except UserInputError as exc:
        st.error(md(f"{where}: {exc}" if where else exc))


class Progress:
    """An analysis progress callback drawn as st.progress."""

    def __init__(self, text: str):
        self.bar = st.progress(0.0, text=text)

    def __call__(self, fraction: float, message: str) -> None:  # analysis messages name files and layers
        self.bar.progress(min(max(float(fraction), 0.0), 1.0), text=md(message))

    def done(self) -> None:
        self.bar.empty()



def inert_figure(fig):
    """The figure with every text in it (layer names, class names, sentences) drawn as the text
    it is, not as Plotly's tags (links, styles); the same object when nothing needed escaping."""
    import plotly.graph_objects as go

    spec = fig.to_plotly_json()
    safe = plotly_inert(spec)
    return fig if safe is spec else go.Figure(safe)


def _inert_cells(df):
    """st.table renders Markdown in cells and headers: a copy with every text escaped."""
    import pandas as pd

    frame = df.copy() if isinstance(df, pd.DataFrame) else pd.DataFrame(df)
    for col in frame.columns:
        if frame[col].dtype.kind in "OSU":
            frame[col] = frame[col].map(lambda v: md(v) if isinstance(v, str) else v)
    frame.columns = [md(c) if isinstance(c, str) else c for c in frame.columns]
    if frame.index.dtype.kind in "OSU":
        frame.index = frame.index.map(lambda v: md(v) if isinstance(v, str) else v).rename(
            md(frame.index.name) if isinstance(frame.index.name, str) else frame.index.name)
    return frame


def show_figure(fig, key: str, pin: bool = True, **kwargs):
    """Draw a Plotly figure the house way (download buttons, no Streamlit theme) with a "Pin to
    report" action. Every page draws its figures through here, so actions on figures live in one
    place. Extra keyword arguments go to st.plotly_chart (on_select, ...); returns its event."""
    from analysis import figures
    from pages import _share

    fig = figures.clear_toolbar(fig)
    event = st.plotly_chart(inert_figure(fig), theme=None, config=figures.DOWNLOAD_CONFIG, key=key, **kwargs)
    if pin:
        title = _share.figure_title(fig, key)
        _share.pin_button(key, lambda: _share.pin("figure", title, {"figure": fig.to_json()}))
    return event


def show_table(df, key: str, title: str = "", pin: bool = True, static: bool = False, **kwargs):
    """Draw a table (DataFrame or dict of columns) with a "Pin to report" action; see show_figure.
    ``static`` draws a plain table (a handful of rows: faster than the interactive grid)."""
    import pandas as pd

    from pages import _share

    kwargs.setdefault("hide_index", not static)
    kwargs.setdefault("width", "stretch")
    out = st.table(_inert_cells(df)) if static else st.dataframe(df, key=key, **kwargs)
    if pin:
        frame = df if isinstance(df, pd.DataFrame) else pd.DataFrame(df)
        keep_index = not kwargs["hide_index"]
        _share.pin_button(key, lambda: _share.pin("table", title or key, {
            "csv": frame.to_csv(index=keep_index), "html": frame.to_html(index=keep_index, border=0)}))
    return out
