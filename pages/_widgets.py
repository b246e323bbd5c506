"""Widgets generated from a view's Param declarations, bound to the URL: the one place that turns
a parameter (kind, range, choices, default, label, help) into a Streamlit widget.

A bound widget's options are its values as they appear in the URL, so options are never
formatted into other text (a bound selectbox writes the displayed text to the address bar).
Values that the view's ``resolve`` replaced (a layer of a previous model) are written to the
session state before the widget exists, so the widget never starts from a value it cannot show.

Every run passes a widget the same starting value (the declared or derived default): were it left
out once the widget has a state, the browser would see the widget's default change (to Streamlit's
own: off, empty) and reset the widget to it on its next message. The state, when there is one,
still wins over the starting value.
"""
from __future__ import annotations

from typing import Any, Sequence

import streamlit as st

from analysis.spec import Param


def widget(p: Param, options: Sequence | None = None, *, container=None, label: str | None = None,
           default: Any = None, disabled: bool = False, help: str | None = None, kind: str | None = None):
    """Draw ``p``'s widget and return its value. ``options`` override the declared choices (layers
    of the current model); ``default`` overrides the declared default (a default the view derives
    from the models, such as the last layer); ``kind`` picks another widget for the same value
    ("radio", "slider", "select_slider", "text_area")."""
    c = container or st
    label = label or p.label or p.key
    help = p.help if help is None else help
    opts = list(options) if options is not None else p.options()
    start = p.default if default is None else default
    common = dict(key=p.key, bind="query-params", help=help or None, disabled=disabled)

    if p.kind == "bool":
        return c.toggle(label, value=bool(start), **common)
    if p.kind == "list":
        chosen = [v for v in (start if start is not None else opts or []) if opts is None or v in opts]
        return c.multiselect(label, opts or [], default=chosen, **common)
    if p.kind == "text":
        make = c.text_area if kind == "text_area" else c.text_input
        return make(label, value=start or "", **common)
    if opts is not None:  # a choice: str options, or numbers from a fixed list
        if kind == "radio":
            return c.radio(label, opts, horizontal=True, index=_index(opts, start), **common)
        if kind == "select_slider" or (p.kind in ("int", "float") and kind is None):
            return c.select_slider(label, opts, value=start if start in opts else opts[0], **common)
        return c.selectbox(label, opts, index=_index(opts, start), **common)
    if p.kind in ("int", "float"):
        cast = int if p.kind == "int" else float
        lo = None if p.lo is None else cast(p.lo)
        hi = None if p.hi is None else cast(p.hi)
        step = cast(p.step) if p.step is not None else (1 if p.kind == "int" else None)
        if kind == "slider":
            return c.slider(label, lo, hi, value=cast(start), step=step, **common)
        return c.number_input(label, lo, hi, value=cast(start), step=step, **common)
    return c.text_input(label, value=start or "", **common)


def _index(options: list, value) -> int | None:
    return options.index(value) if value in options else (0 if options else None)


def apply_fixes(changes: dict) -> None:
    """Write values a view's ``resolve`` replaced into the session state (and the URL) before the
    widgets are drawn: widgets then start from a value they can show."""
    for key, value in changes.items():
        if value is None:
            st.session_state.pop(key, None)
            if key in st.query_params:
                del st.query_params[key]
        else:
            st.session_state[key] = value
