"""Share links, saved views and pins: the Streamlit side of analysis.spec and analysis.report.

- ``open_short_link()`` turns ``?a=<id>`` into the full set of query parameters before any widget
  exists, so the bound widgets start from the saved view.
- ``current_spec(page)`` reads the view's parameters from the widgets (this run's values), falling
  back to the URL and then to the declared defaults: the share link therefore always carries every
  parameter, defaults included.
- ``share_panel(page)`` draws the share / save actions in the sidebar.
- ``pin(...)`` adds a figure or table, with the spec of the view it came from, to this session's
  report (the Report page edits, saves and exports it).
"""
from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

import streamlit as st

from analysis import spec as spec_mod
from analysis.errors import UserInputError
from analysis.safe_text import md
from analysis.store import default_store

REPORT_KEY = "_report_items"


def page_name() -> str:
    return st.session_state.get("_page", "models")


def open_short_link() -> None:
    """Expand a short link (``?a=<16 hex>``) into the view's parameters."""
    query = {k: st.query_params.get_all(k) for k in st.query_params}
    query = {k: v[0] if len(v) == 1 else v for k, v in query.items()}
    if not spec_mod.is_short_link(query):
        return
    try:
        saved = spec_mod.resolve(query["a"], default_store())
    except UserInputError as exc:
        saved, problem = None, str(exc)
    else:
        problem = "it is not stored on this server (short links live in the server's result store)"
    st.query_params.clear()
    if saved is None:
        st.session_state["_link_warning"] = f"Could not open the short link a={query['a']}: {problem}. Showing the default view."
        return
    st.query_params.from_dict(saved.to_query())
    _seed_widgets_from_url()
    st.session_state["_opened_spec"] = saved.page


def _seed_widgets_from_url() -> None:
    """Bound widgets take their first value from the query string the browser sent at the start of
    the run, not from st.query_params; make the expanded parameters that starting point. (A rerun
    would do it too, but a rerun issued before st.navigation lands on the default page.) Uses
    Streamlit 1.67's session query-params object; requirements.txt pins that version."""
    try:
        from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

        with get_script_run_ctx().session_state.query_params() as qp:
            qp.set_initial_query_params_from_current()
    except (AttributeError, TypeError) as exc:  # a Streamlit without it: say so rather than fail silently
        st.session_state["_link_warning"] = f"This Streamlit version cannot expand short links ({exc})."


def _value(p: spec_mod.Param):
    if p.key in st.session_state:
        value = st.session_state[p.key]
        if isinstance(value, tuple):
            value = list(value)
        try:  # widget values come typed; check them like a link's value
            return p.parse(p.format(value) if value is not None else "")
        except (UserInputError, TypeError, ValueError):
            return p.default
    if p.key in st.query_params:
        raw = st.query_params.get_all(p.key)
        try:
            return p.parse(raw if p.kind == "list" else raw[-1])
        except UserInputError:
            return p.default
    return p.default


def current_spec(page: str | None = None) -> spec_mod.AnalysisSpec:
    page = page or page_name()
    return spec_mod.AnalysisSpec(page, {p.key: _value(p) for p in spec_mod.params_of(page)})


def base_url() -> str:
    """The app's address as the browser sees it, path prefix included (no page, no query)."""
    url = None
    try:
        url = st.context.url
    except Exception:  # not in a browser session (AppTest, bare mode)
        pass
    prefix = (st.get_option("server.baseUrlPath") or "").strip("/")
    if not url:
        port = st.get_option("server.port") or 8501
        return f"http://localhost:{port}" + (f"/{prefix}" if prefix else "")
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    page = page_name()
    if path.endswith("/" + page):
        path = path[: -len(page) - 1]
    return f"{parts.scheme}://{parts.netloc}{path}"


def share_panel(page: str) -> None:
    """Sidebar: the full and short share links (st.code has a copy button) and 'save this view'."""
    with st.popover("Share this view", icon=":material/share:", width="stretch"):
        spec = current_spec(page)
        base = base_url()
        st.caption("Full link (every parameter, defaults included):")
        st.code(spec.url(base), language=None, wrap_lines=True)
        st.caption("Short link (kept in this server's result store):")
        try:
            st.code(spec.short_url(base, default_store()), language=None)
        except OSError as exc:
            st.warning(f"The store cannot keep the short link right now ({md(exc.strerror or type(exc).__name__)}).")
        name = st.text_input("Save as", placeholder="a name for the gallery", key="_save_view_name")
        if st.button("Save view", key="_save_view", disabled=not name.strip()):
            sid = spec.save(default_store())
            default_store().put_doc("analysis", sid, {"spec": spec.to_json(), "url": spec.url(base)}, name=name.strip())
            st.toast(f"Saved '{md(name.strip())}' to the gallery (Report page).")


def _provenance(spec: spec_mod.AnalysisSpec) -> dict:
    """Hashes of the models and data behind a view (from the cached loaders; nothing recomputed)."""
    from pages._shell import load_dataset, load_model

    out = {}
    p = spec.params
    try:
        for side in ("a", "b"):
            m = load_model(p["a" if side == "a" else "b"])
            out[f"model_{side}"] = {"ref": m.ref, "sha256": m.sha256}
        ds = load_dataset(p["data"], int(p["n"]), int(p["seed"]), p["split"])
        out["data"] = {"name": p["data"], "rows": len(ds), "sha256": ds.sha256}
    except Exception as exc:  # provenance is a record, never a reason to lose the pin
        out["error"] = str(exc)[:200]
    return out


def pin(kind: str, title: str, payload: dict) -> None:
    spec = current_spec()
    item = {"id": uuid.uuid4().hex[:16], "kind": kind, "title": title, "caption": title, "notes": "",
            "page": spec.page, "spec": spec.to_json(), "provenance": _provenance(spec),
            "pinned": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}
    items = report_items()
    items.append(item)
    keep_report()
    st.toast(f"Pinned '{md(title)}' to the report ({len(items)} items).")


def pin_button(key: str, on_click) -> None:
    st.button("Pin to report", key=f"_pin_{key}", icon=":material/push_pin:", type="tertiary",
              on_click=on_click, help="Add this to the report (Report page), with the view's share link.")


def figure_title(fig, fallback: str) -> str:
    from analysis.figures import plain_title

    return plain_title(fig, fallback)


def _browser_key() -> str | None:
    """A key for this browser (not this tab's session): the hash of Streamlit's XSRF token, a
    secret cookie that lives as long as the browser keeps it. A reload or a link opened in the same
    tab starts a new session but keeps the cookie, so the working report comes back. None when
    there is no such cookie (XSRF protection off, AppTest)."""
    import hashlib

    try:
        raw = st.context.cookies.get("_streamlit_xsrf")
    except Exception:  # noqa: BLE001 - no browser context
        return None
    if not raw:
        return None
    try:  # the cookie's text changes per response (masked); its token does not
        from streamlit.web.server.starlette.starlette_app_utils import decode_xsrf_token_string

        token = decode_xsrf_token_string(raw)[0]
    except Exception:  # noqa: BLE001 - another Streamlit version: no persistence rather than a wrong one
        return None
    return hashlib.sha256(b"replens working report|" + token).hexdigest()[:32] if token else None


def report_items() -> list[dict]:
    """This browser's working report: restored from the store when a session starts."""
    if REPORT_KEY not in st.session_state:
        key, items = _browser_key(), []
        if key:
            body = default_store().get_doc("working-report", key)
            items = list((body or {}).get("items", []))
        st.session_state[REPORT_KEY] = items
    return st.session_state[REPORT_KEY]


def keep_report() -> bool:
    """Save the working report for this browser; False when it cannot outlive this tab."""
    key = _browser_key()
    if key is None:
        return False
    default_store().put_doc("working-report", key, {"items": report_items()}, name="working report")
    return True
