"""Self-contained HTML reports of pinned figures and tables, for lab meetings.

One file: plotly.js is inlined once, every figure stays interactive and opens offline, and the file
records, per item, the view's spec (and its share link when the server's address is known), the
models' and the data's hashes, and for the whole report the package versions. Each figure has SVG
and PNG download buttons (drawn in the browser by plotly.js) and each table a CSV download.

``presentation=True`` lays out one item per screen (arrow keys / page keys move between them).

Items carry text from whoever uploaded a file or pinned a view (layer names, sentences, labels,
captions, titles) and the report is read by others, offline, where a script would run unseen. So
every piece of it is escaped at export, also for reports saved long ago: HTML text and attributes,
figure JSON inside ``<script>`` (``<``, ``>``, ``&``, U+2028, U+2029, as Jinja's ``tojson``),
Plotly's own tags in figure text, and tables rebuilt from their CSV (stored HTML is never used).

Items are plain dicts (as the dashboard pins them)::

    {"kind": "figure", "title": ..., "caption": ..., "notes": markdown, "figure": plotly JSON text,
     "spec": {"page": ..., "params": {...}}, "provenance": {...}, "pinned": "YYYY-mm-dd HH:MM:SS"}
    {"kind": "table", ..., "csv": "..."}   (an "html" entry is ignored: tables are drawn from the CSV)
"""
from __future__ import annotations

import base64
import csv
import io
import json
import platform
import re
import time
from importlib import metadata
from typing import Iterable, Mapping

from . import safe_text

PACKAGES = ("replens", "numpy", "scipy", "torch", "scikit-learn", "pandas", "plotly", "streamlit",
            "transformers", "umap-learn", "captum", "safetensors")


def package_versions() -> dict[str, str]:
    from . import __version__

    out = {"python": platform.python_version(), "replens": __version__}
    for name in PACKAGES[1:]:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# ---------------------------------------------------------------------- a small, safe markdown
_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![*\w])\*([^*]+)\*(?!\w)"), r"<em>\1</em>"),
    (re.compile(r"\[([^\]]+)\]\((https?://[^)\s]+)\)"), r'<a href="\2" rel="noopener noreferrer">\1</a>'),
]


_BULLET = re.compile(r"^\s*[-*] ")


def markdown_to_html(text: str) -> str:
    """Paragraphs, # headings, - lists, **bold**, *italic*, `code` and http(s) links. Everything is
    HTML-escaped first, so notes can never inject markup or scripts into a report."""
    blocks, out = re.split(r"\n\s*\n", str(text or "").strip()), []
    for block in blocks:
        if not block.strip():
            continue
        lines = [safe_text.html(line) for line in block.splitlines()]
        lines = [_inline(line) for line in lines]
        if all(re.match(r"\s*[-*] ", raw) for raw in block.splitlines()):
            out.append("<ul>" + "".join(f"<li>{_BULLET.sub('', li)}</li>" for li in lines) + "</ul>")
        elif m := re.match(r"(#{1,4}) (.*)", lines[0]):
            level = len(m.group(1)) + 2  # notes' headings sit under the item title
            out.append(f"<h{level}>{m.group(2)}</h{level}>" + (f"<p>{'<br>'.join(lines[1:])}</p>" if lines[1:] else ""))
        else:
            out.append(f"<p>{'<br>'.join(lines)}</p>")
    return "\n".join(out)


def _inline(line: str) -> str:
    for pattern, repl in _INLINE:
        line = pattern.sub(repl, line)
    return line


# ---------------------------------------------------------------------- the document
_CSS = """
body{font-family:Inter,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2430;max-width:1100px;margin:2rem auto;padding:0 1.2rem;line-height:1.5}
h1{font-size:1.7rem;margin-bottom:.2rem} h2{font-size:1.25rem;margin:.2rem 0}
.meta{color:#5b6270;font-size:.85rem} .item{border-top:1px solid #d9dce3;padding:1.2rem 0}
.actions button,.actions a{font-size:.8rem;margin-right:.4rem;padding:.2rem .6rem;border:1px solid #c5c9d3;border-radius:4px;background:#f6f7f9;color:#1f2430;text-decoration:none;cursor:pointer}
details{margin-top:.5rem;font-size:.8rem;color:#5b6270} pre{white-space:pre-wrap;word-break:break-all;background:#f6f7f9;padding:.5rem}
table{border-collapse:collapse;font-size:.85rem} td,th{border-bottom:1px solid #e3e5ea;padding:.25rem .6rem;text-align:right}
th{background:#f6f7f9} .table-wrap{max-height:480px;overflow:auto}
body.presentation{max-width:none;margin:0;padding:0}
body.presentation .item{height:100vh;box-sizing:border-box;padding:2vh 4vw;border:none;display:flex;flex-direction:column;scroll-snap-align:start}
body.presentation .figure{flex:1;min-height:0} body.presentation details,body.presentation .actions{display:none}
body.presentation .cover{height:100vh;display:flex;flex-direction:column;justify-content:center;padding:0 8vw;box-sizing:border-box;scroll-snap-align:start}
html.presentation{scroll-snap-type:y mandatory}
"""

_JS = """
function dl(id, fmt){var gd=document.getElementById(id);Plotly.downloadImage(gd,{format:fmt,filename:id,width:gd.offsetWidth||900,height:gd.offsetHeight||560,scale:fmt==='png'?2:1});}
if(document.body.classList.contains('presentation')){
 document.addEventListener('keydown',function(e){var items=[].slice.call(document.querySelectorAll('.cover,.item'));
  var y=window.scrollY+5,i=items.findIndex(function(el){return el.offsetTop+el.offsetHeight>y});
  if(['ArrowDown','ArrowRight','PageDown',' '].indexOf(e.key)>=0&&i<items.length-1){items[i+1].scrollIntoView();e.preventDefault();}
  if(['ArrowUp','ArrowLeft','PageUp'].indexOf(e.key)>=0&&i>0){items[i-1].scrollIntoView();e.preventDefault();}});}
"""


PRESENTATION_FONT = 20  # px: read from the back of a seminar room (Plotly's default is 12)
PRESENTATION_LINE = 3.5  # px: lines and marker outlines a projector does not wash out


def presentation_style(fig: dict) -> dict:
    """The figure (Plotly JSON) for a projector: larger fonts everywhere (titles, ticks, legends,
    annotations, colour bars), thicker lines and larger markers. Sizes the figure set itself grow in
    proportion, so a title stays larger than its axis labels."""
    import copy

    fig = copy.deepcopy(fig)
    layout = fig.setdefault("layout", {})
    scale = PRESENTATION_FONT / float((layout.get("font") or {}).get("size") or 12)

    def grow(font: dict | None, base: float) -> dict:
        font = dict(font or {})
        font["size"] = max(float(font.get("size") or base) * scale, PRESENTATION_FONT * 0.8)
        return font

    layout["font"] = grow(layout.get("font"), 12)
    title = layout.get("title")
    if isinstance(title, dict):
        title["font"] = grow(title.get("font"), 17)
    for key, value in layout.items():
        if isinstance(value, dict) and key.startswith(("xaxis", "yaxis", "coloraxis", "legend", "scene")):
            if key.startswith(("xaxis", "yaxis")):
                value["tickfont"] = grow(value.get("tickfont"), 12)
                if isinstance(value.get("title"), dict):
                    value["title"]["font"] = grow(value["title"].get("font"), 14)
            elif key.startswith("legend"):
                value["font"] = grow(value.get("font"), 12)
            elif key.startswith("coloraxis") and isinstance(value.get("colorbar"), dict):
                value["colorbar"]["tickfont"] = grow(value["colorbar"].get("tickfont"), 12)
    for note in layout.get("annotations") or []:
        if isinstance(note, dict):
            note["font"] = grow(note.get("font"), 12)
    for trace in fig.get("data") or []:
        if not isinstance(trace, dict):
            continue
        line = trace.get("line")
        if trace.get("type", "scatter") in ("scatter", "scattergl", "scatter3d") and (
                "lines" in str(trace.get("mode", "lines")) or line):
            trace["line"] = {**(line or {}), "width": max(float((line or {}).get("width") or 2) * 1.75,
                                                          PRESENTATION_LINE)}
        marker = trace.get("marker")
        if isinstance(marker, dict) and isinstance(marker.get("size"), (int, float)):
            marker["size"] = marker["size"] * 1.5
        if isinstance(trace.get("colorbar"), dict):
            trace["colorbar"]["tickfont"] = grow(trace["colorbar"].get("tickfont"), 12)
    return fig


def _figure_html(item: Mapping, div_id: str, presentation: bool, large: bool = False) -> str:
    """A figure's div and its Plotly.newPlot call. The figure JSON is escaped for <script> (a
    layer name or sentence holding "</script>" stays a string) and for Plotly's own tags (it is
    drawn as the text it is). Done here, at export, so items saved before this existed are safe."""
    try:
        fig = json.loads(item["figure"]) if isinstance(item.get("figure"), str) else item.get("figure")
    except ValueError:
        fig = None
    if not isinstance(fig, dict):
        return "<p>(figure could not be read)</p>"
    fig = safe_text.plotly_inert(fig)
    if presentation or large:
        fig = presentation_style(fig)
    layout = dict(fig.get("layout") or {})
    if presentation:
        layout.pop("height", None)
        layout.pop("width", None)
        layout["autosize"] = True
    config = {"responsive": True, "displaylogo": False}
    style = "width:100%;height:100%" if presentation else "width:100%"
    args = ",".join(safe_text.json_for_script(v) for v in (div_id, fig.get("data") or [], layout, config))
    return (f'<div class="figure" id="{safe_text.html(div_id)}" style="{style}"></div>\n'
            f"<script>Plotly.newPlot({args});</script>")


def _table_html(item: Mapping) -> tuple[str, str]:
    """The table drawn from its CSV with every cell escaped, and the CSV for its download link.
    An item's stored HTML is never copied into the report: it could come from a forged or old
    saved report, and rebuilding it costs nothing."""
    csv_text = str(item.get("csv") or "")
    b64 = base64.b64encode(csv_text.encode()).decode()
    try:
        rows = list(csv.reader(io.StringIO(csv_text)))
    except csv.Error:
        return "<p>(table could not be read)</p>", b64
    if not rows:
        return "<p>(empty)</p>", b64
    head = "".join(f"<th>{safe_text.html(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{safe_text.html(_cell(c))}</td>" for c in row) + "</tr>" for row in rows[1:])
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="table-wrap">{table}</div>', b64


def _cell(text: str) -> str:
    """A CSV cell as shown: decimals to 6 significant digits, as pandas displays them (the CSV
    download keeps every digit)."""
    if any(ch in text for ch in ".eE"):
        try:
            value = float(text)
        except ValueError:
            return text
        return f"{value:.6g}"
    return text


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "item"


def build_html(items: Iterable[Mapping], title: str = "RepLens report", presentation: bool = False,
               base_url: str | None = None, notes: str = "", large: bool = False) -> str:
    """The report as one self-contained HTML document (plotly.js inlined once). ``presentation``:
    one item per screen, figures in the presentation style; ``large``: the presentation style
    (larger fonts, thicker lines) in the scrolling report."""
    from plotly.offline import get_plotlyjs

    from .spec import AnalysisSpec

    items = list(items)
    versions = package_versions()
    stamp = time.strftime("%Y-%m-%d %H:%M")
    parts = []
    for i, item in enumerate(items, 1):
        div_id = f"item-{i}-{_slug(str(item.get('title') or ''))}"
        caption = safe_text.html(item.get("caption") or item.get("title") or f"Item {i}")
        spec = item.get("spec")
        link = ""
        if spec and base_url:
            try:
                url = AnalysisSpec.from_json(spec).url(base_url)
                link = f'<a href="{safe_text.html(url)}">open this view in RepLens</a>'
            except Exception:  # an item pinned by an older version: keep the record, skip the link
                link = ""
        if item.get("kind") == "figure":
            body = _figure_html(item, div_id, presentation, large)
            actions = (f'<button onclick="dl(\'{div_id}\',\'svg\')">SVG</button>'
                       f'<button onclick="dl(\'{div_id}\',\'png\')">PNG</button>')
        else:
            body, b64 = _table_html(item)
            actions = f'<a download="{div_id}.csv" href="data:text/csv;base64,{b64}">CSV</a>'
        record = {"spec": spec, "provenance": item.get("provenance"), "pinned": item.get("pinned")}
        parts.append(
            f'<section class="item" id="sec-{div_id}"><h2>{i}. {caption}</h2>'
            f'<div class="meta">from the {safe_text.html(item.get("page", ""))} page · pinned {safe_text.html(item.get("pinned", ""))} {link}</div>'
            f"{markdown_to_html(item.get('notes', ''))}{body}"
            f'<div class="actions">{actions}</div>'
            f"<details><summary>Spec, model and data hashes</summary><pre>{safe_text.html(json.dumps(record, indent=1, default=str))}</pre></details>"
            "</section>")
    head_notes = markdown_to_html(notes)
    cover = (f'<div class="cover"><h1>{safe_text.html(title)}</h1><div class="meta">RepLens {versions["replens"]} · {stamp} · '
             f"{len(items)} items</div>{head_notes}</div>")
    env = safe_text.html(json.dumps(versions, indent=1))
    cls = ' class="presentation"' if presentation else ""
    return (f"<!DOCTYPE html><html lang=\"en\"{cls}><head><meta charset=\"utf-8\"><title>{safe_text.html(title)}</title>"
            f"<meta name=\"generator\" content=\"RepLens {versions['replens']}\"><style>{_CSS}</style>"
            f"<script>{get_plotlyjs()}</script></head><body{cls}>{cover}{''.join(parts)}"
            f"<details><summary>Package versions</summary><pre>{env}</pre></details>"
            f"<script>{_JS}</script></body></html>")
