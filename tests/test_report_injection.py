"""Exported reports never run script from the data they show.

Hostile strings arrive through the layer names of an uploaded .npz, the sentences and labels of an
uploaded text CSV, and the report's title, captions and notes; a report saved before escaping
existed (raw table HTML, figure JSON holding "</script>") is exported too. The unit tests read the
HTML; tests/test_browser_report_injection.py opens it in Chromium.
"""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd

SCRIPT_PAYLOAD = "</script><script>document.title='pwned';window.__pwned=1</script>"
IMG_PAYLOAD = "<img src=http://evil.example/i.png onerror=\"window.__pwned=2\">"
LINK_PAYLOAD = "<a href='http://evil.example/x'>topic</a>"
MD_PAYLOAD = "[Session expired](http://evil.example/x) ![i](http://evil.example/i.png)"
SEPARATORS = "a\u2028b\u2029c"
TITLE = "Lab <script>window.__pwned=3</script> & co"


def hostile_items() -> list[dict]:
    """Report items from real runs on uploads whose layer names, sentences and labels are payloads."""
    from analysis import data, models
    from analysis.spec import AnalysisSpec
    from analysis.views.outputs import headless, report_items

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, **{SCRIPT_PAYLOAD: rng.normal(size=(30, 8)), IMG_PAYLOAD: rng.normal(size=(30, 6)),
                     SEPARATORS: rng.normal(size=(30, 4))})
    ref = models.upload(buf.getvalue(), "emb.npz")
    labels = [IMG_PAYLOAD, LINK_PAYLOAD, "plain"]
    texts = [f"{i}: {SCRIPT_PAYLOAD if i % 2 else MD_PAYLOAD}" for i in range(30)]
    frame = pd.DataFrame({"text": texts, "label": [labels[i % 3] for i in range(30)]})
    dref = data.upload(frame.to_csv(index=False).encode(), "sentences.csv")
    items = []
    for page, extra in (("similarity", {"measure": "linear_cka"}), ("projections", {"dims": 2, "method": "pca"}),
                        ("models", {})):
        items += report_items(headless(AnalysisSpec(page, {"a": ref, "b": ref, "data": dref, "n": 30,
                                                                      **extra})))
    items[0]["caption"] = f"Caption {SCRIPT_PAYLOAD}"
    items[0]["notes"] = f"**Bold** {IMG_PAYLOAD} {SCRIPT_PAYLOAD} [ok](http://example.org/\"onmouseover=\"x)"
    items[1]["caption"] = IMG_PAYLOAD
    return items


def saved_before_escaping() -> list[dict]:
    """Items as an old or forged saved report holds them: raw table HTML that slips past a filter
    (an entity-encoded javascript: link, an event handler), figure JSON with a literal </script>."""
    fig = {"data": [{"type": "bar", "x": [SCRIPT_PAYLOAD, "b"], "y": [1, 2]}],
           "layout": {"title": {"text": IMG_PAYLOAD}}}
    return [
        {"kind": "figure", "title": "old", "caption": "old figure", "figure": json.dumps(fig), "page": "similarity"},
        {"kind": "table", "title": "old table", "caption": "old table", "page": "models",
         "csv": f"layer,condition=\n{SCRIPT_PAYLOAD},1\n",
         "html": "<table><tr><td><a href=\"&#106;avascript:window.__pwned=4\">x</a><img src=x onerror=window.__pwned=5>"
                 "</td></tr></table>"},
    ]


def _elements(doc: str) -> list[tuple[str, list]]:
    """Every element of an HTML document as (tag, [(attribute, value), ...]), as a browser parses it."""
    from html.parser import HTMLParser

    found = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    Collect(convert_charrefs=True).feed(doc)
    return found


def _scripts(doc: str) -> list[str]:
    return re.findall(r"<script\b", doc, re.I)


def test_every_script_element_is_ours():
    from analysis import report

    items = hostile_items() + saved_before_escaping()
    doc = report.build_html(items, TITLE, notes=SCRIPT_PAYLOAD)
    n_figures = sum(i["kind"] == "figure" for i in items)
    assert len(_scripts(doc)) == n_figures + 2  # plotly.js, one per figure, the page's own
    for payload in (SCRIPT_PAYLOAD, IMG_PAYLOAD, LINK_PAYLOAD, TITLE):
        assert payload not in doc
    tags = _elements(doc.split("</head>", 1)[1])
    assert {t for t, _ in tags} <= {"body", "div", "h1", "h2", "p", "strong", "a", "section", "script", "button",
                                    "details", "summary", "pre", "table", "thead", "tbody", "tr", "th", "td"}
    handlers = [(t, a, v) for t, attrs in tags for a, v in attrs if a.startswith("on")]
    assert all(t == "button" and a == "onclick" and re.fullmatch(r"dl\('item-[a-z0-9-]+','(svg|png)'\)", v)
               for t, a, v in handlers), handlers
    hrefs = [v for _, attrs in tags for a, v in attrs if a == "href"]
    assert all(h.startswith(("data:text/csv;base64,", "http://example.org/")) for h in hrefs), hrefs
    figure_scripts = re.findall(r"<script>(Plotly\.newPlot.*?)</script>", doc, re.S)
    assert len(figure_scripts) == n_figures
    assert not any(ch in js for js in figure_scripts for ch in "\u2028\u2029<>")


def test_tables_with_condition_in_their_text_are_kept():
    from analysis import report

    csv = "condition=noise,onset=3,score\nhealthy,1,0.123456789\n"
    doc = report.build_html([{"kind": "table", "title": "t", "csv": csv, "html": "<table>stale-html-7f3</table>"}])
    assert "table omitted" not in doc
    assert "<th>condition=noise</th><th>onset=3</th>" in doc
    assert "<td>0.123457</td>" in doc  # shown as pandas shows it; the CSV download keeps every digit
    assert "stale-html-7f3" not in doc


def test_figure_json_is_the_same_data_after_escaping():
    """Escaping changes how the JSON is written, not what Plotly receives (apart from Plotly's own
    tags, which become entities it draws as the characters)."""
    from analysis import report

    fig = {"data": [{"type": "bar", "x": ["a&b", "c"], "y": [1.5, 2]}], "layout": {"title": {"text": "t<br>u"}}}
    doc = report.build_html([{"kind": "figure", "title": "f", "figure": json.dumps(fig)}])
    call = re.search(r"Plotly\.newPlot\((.*?)\);</script>", doc).group(1)
    div, data, layout, _ = json.loads(f"[{call}]")
    assert div.startswith("item-1-")
    assert data == [{"type": "bar", "x": ["a&amp;b", "c"], "y": [1.5, 2]}]
    assert layout["title"]["text"] == "t<br>u"


def test_unreadable_saved_items_are_reported_not_fatal():
    from analysis import report

    doc = report.build_html([{"kind": "figure", "figure": "{not json"}, {"kind": "table", "csv": None},
                             {"kind": "figure", "title": 3, "caption": 4, "figure": "[1]", "notes": 5}])
    assert doc.count("figure could not be read") == 2
    assert "(empty)" in doc
