"""User strings stay text in every Markdown the app renders (AppTest, no browser).

An embeddings upload whose file and layer names are Markdown (a fake "session expired" link, an
image from an outside host, HTML), and a text data set whose sentences and labels are too, are
opened on the pages that show them; a report whose title is such a string sits in the gallery;
links carry such values. Every Markdown string of every element (bodies, captions, alerts, labels,
help texts, image captions, expander labels, st.table cells) is rendered with a CommonMark
renderer: none may produce a link or an image, none may hold a bare URL GFM would turn into a
link. tests/test_browser_inert_text.py checks the same in Chromium.
"""
from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
pytestmark = pytest.mark.usefixtures("apptest_navigation")

EVIL = "evil.example"
FILE_NAME = "Session expired](https:evil.example) ![i](https:evil.example) **bold** www.evil.example.npz"
LAYER = "[log in](https://evil.example/login) <img src=https://evil.example/i.png>"
LABEL = "![x](https://evil.example/l.png) <a href='https://evil.example'>topic</a>"
SENTENCE = "see https://evil.example/s and a@evil.example **now** | a | table |"
TITLE = "[Quarterly results](https://evil.example/r) ![t](https://evil.example/t.png)"
_MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])
_MARKDOWN_FIELDS = {"body", "label", "help", "caption", "title", "placeholder"}


def hostile_uploads(n: int = 40) -> tuple[str, str]:
    from analysis import data, models

    texts = [SENTENCE if i % 2 else f"an ordinary sentence number {i}" for i in range(n)]
    frame = pd.DataFrame({"text": texts, "label": [LABEL if i % 3 == 0 else "sports" for i in range(n)]})
    dref = data.upload(frame.to_csv(index=False).encode(), f"{FILE_NAME[:-4]}.csv")
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, **{LAYER: rng.normal(size=(n, 6)), "plain": rng.normal(size=(n, 4))})
    ref = models.upload(buf.getvalue(), FILE_NAME)
    return ref, dref


def markdown_strings(at: AppTest) -> list[tuple[str, str]]:
    """(where, text) for every string the app hands to Streamlit's Markdown renderer."""
    out = []

    def walk(msg, where):
        for field, value in msg.ListFields():
            if field.type == field.TYPE_MESSAGE:
                for item in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value]):
                    walk(item, f"{where}.{field.name}")
            elif field.type == field.TYPE_STRING and field.name in _MARKDOWN_FIELDS:
                for item in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value]):
                    out.append((f"{where}.{field.name}", item))

    for node in at._tree:
        proto = getattr(node, "proto", None)
        if proto is not None and not getattr(proto, "allow_html", False):
            walk(proto, type(node).__name__)
    for table in at.table:
        frame = table.value
        cells = [str(c) for c in frame.columns] + [str(i) for i in frame.index]
        cells += [str(v) for v in frame.to_numpy().ravel() if isinstance(v, str)]
        out += [("table", c) for c in cells]
    return out


def assert_inert(at: AppTest) -> int:
    found = markdown_strings(at)
    for where, text in found:
        rendered = _MD.render(text)
        hrefs = re.findall(r'<a href="([^"]*)"', rendered)  # links the app makes: to itself only
        assert rendered.count("<a ") == len(hrefs) and "<img" not in rendered, (where, text, rendered)
        assert all(h.startswith("http://localhost:") and EVIL not in h for h in hrefs), (where, text, rendered)
        # GFM's autolinks, which CommonMark alone does not make: bare URLs, www., e-mail addresses
        # (outside code spans, whose text is literal, and the app's own link targets)
        prose = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)|(?<=\])\(<http://localhost:[^>]*>\)", "", text)
        assert not re.search(r"https?:(?=//)|www\.|(?<!\\)@\w", prose), (where, text)
    return len(found)


def open_page(page: str, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page(f"pages/{page}.py")
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("page", ["models", "similarity", "projections", "attributions", "sae"])
def test_hostile_names_sentences_and_labels_render_as_text(page):
    ref, dref = hostile_uploads()
    query = {"a": ref, "b": "hf:minilm", "data": dref, "n": "40"}
    if page == "sae":
        query.update(sae_model="A", sae_layer_a=LAYER, sae_steps="50", sae_match="false")
    at = open_page(page, **query)
    assert at.selectbox(key="a").value == ref
    strings = markdown_strings(at)
    assert any("Session expired" in t for _, t in strings), "the file name is not shown at all"
    assert assert_inert(at) > 10


def test_gallery_titles_and_link_values_render_as_text():
    from analysis.store import default_store

    store = default_store()
    store.put_doc("report", "00aa00aa00aa00aa", {"title": TITLE, "items": []}, name=TITLE)
    store.put_doc("analysis", "11bb11bb11bb11bb", {"spec": {"page": "models", "params": {}}}, name=TITLE)
    at = open_page("report")
    shown = [t for _, t in markdown_strings(at) if "Quarterly results" in t]
    assert len(shown) == 2
    for text in shown:  # one link each, to this server, with the title as its text
        links = re.findall(r'<a href="([^"]*)">(.*?)</a>', _MD.render(text))
        assert len(links) == 1 and links[0][0].startswith("http://localhost") and "Quarterly" in links[0][1]
        assert "<img" not in _MD.render(text)
    for query in ({"data": f"[x](https://{EVIL}) www.{EVIL}"}, {"a": f"zoo:[x](https://{EVIL})"},
                  {"report": f"![x](https://{EVIL}/i.png)"}, {"a": "0123456789abcdef"}):
        at = open_page("report" if "report" in query else "models", **query)
        assert assert_inert(at) > 3
