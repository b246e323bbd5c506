"""Widgets generated from a view's Param declarations, bound to the URL: the one place that turns
a parameter (kind, range, choices, default, label, help) into a Streamlit widget.

A bound widget's options are its values as they appear in the URL, so options are never
formatted into other text (a bound selectbox writes the displayed text to the address bar).
Values that the view's ``resolve`` replaced (a layer of a previous model) are written to the
session state before the widget exists, so the widget never starts from a value it cannot show.
"""
from __future__ import annotations

from typing import Any, Sequence

import streamlit as st

from analysis.spec import Param


def widget(p: Param, options: Sequence | None = None, *, container=None, label: str | None = None,
           default: Any = None, disabled: bool = False, help: str | None = None, kind: str | None = None,
           **extra):
    """Draw ``p``'s widget and return its value. ``options`` override the declared choices (layers
    of the current model); ``default`` overrides the declared default (a default the view derives
    from the models, such as the last layer); ``kind`` picks another widget for the same value
    ("radio", "slider", "select_slider", "selectbox", "text_area"); ``extra`` goes to the Streamlit
    widget (``format`` of a number, ``max_selections`` of a list)."""
    c = container or st
    label = label or p.label or p.key
    help = p.help if help is None else help
    if p.key in st.session_state:
        # Written again, so the widget is sent with its value: after a job the page reruns from a
        # fragment, and the browser had dropped the state of widgets outside the fragment (a
        # selectbox showed its first option while the view used another).
        value = st.session_state[p.key]
        if value is None:
            del st.session_state[p.key]  # a value the view chooses: the widget starts from that default
        else:
            st.session_state[p.key] = value
    opts = list(options) if options is not None else p.options()
    start = p.default if default is None else default
    seeded = p.key in st.session_state
    common = dict(key=p.key, bind="query-params", help=help or None, disabled=disabled, **extra)

    if p.kind == "bool":
        return c.toggle(label, **({} if seeded else {"value": bool(start)}), **common)
    if p.kind == "list":
        chosen = [v for v in (start if start is not None else opts or []) if opts is None or v in opts]
        return c.multiselect(label, opts or [], **({} if seeded else {"default": chosen}), **common)
    if p.kind == "text":
        make = c.text_area if kind == "text_area" else c.text_input
        return make(label, **({} if seeded else {"value": start or ""}), **common)
    if opts is not None:  # a choice: str options, or numbers from a fixed list
        if kind == "radio":
            return c.radio(label, opts, horizontal=True, **({} if seeded else {"index": _index(opts, start)}),
                           **common)
        if kind == "select_slider" or (p.kind in ("int", "float") and kind is None):
            return c.select_slider(label, opts, **({} if seeded else {"value": start if start in opts else opts[0]}),
                                   **common)
        return c.selectbox(label, opts, **({} if seeded else {"index": _index(opts, start)}), **common)
    if p.kind in ("int", "float"):
        cast = int if p.kind == "int" else float
        lo = None if p.lo is None else cast(p.lo)
        hi = None if p.hi is None else cast(p.hi)
        step = cast(p.step) if p.step is not None else (1 if p.kind == "int" else None)
        if kind == "slider":
            return c.slider(label, lo, hi, **({} if seeded else {"value": cast(start)}), step=step, **common)
        # no default (None: the view chooses, e.g. the densest feature): the box starts empty, so the
        # spec keeps "the view's choice" until the user picks a value
        value = None if start is None else cast(start)
        return c.number_input(label, lo, hi, **({} if seeded else {"value": value}), step=step, **common)
    return c.text_input(label, **({} if seeded else {"value": start or ""}), **common)


def _index(options: list, value) -> int | None:
    return options.index(value) if value in options else (0 if options else None)


def apply_fixes(changes: dict) -> None:
    """Write values a view's ``resolve`` replaced into the session state (and the URL) before the
    widgets are drawn: widgets then start from a value they can show. A bound widget seeds itself
    from the query string its session opened with, so the replaced value is dropped there too
    (else a link's 5000 anchors would stay on screen while the view uses 898)."""
    from streamlit.errors import StreamlitAPIException

    from pages._shell import _forget_initial_query_param

    for key, value in changes.items():
        _forget_initial_query_param(key)
        if value is None:
            st.session_state.pop(key, None)
            if key in st.query_params:
                try:
                    del st.query_params[key]
                except StreamlitAPIException:  # bound to a widget drawn before: its value goes, the URL follows
                    st.session_state[key] = None
        else:
            st.session_state[key] = value
            try:  # the address bar too; refused once the bound widget exists (it then writes it itself)
                st.query_params[key] = _query_text(value)
            except st.errors.StreamlitAPIException:
                pass


def _query_text(value):
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
