"""Make user strings inert where they meet markup: Markdown (Streamlit messages, captions, labels,
help texts), HTML (reports), JSON inside ``<script>``, and Plotly's own tag syntax (titles, ticks,
hover text).

File names, layer names, class names, sentences, report titles and link values come from whoever
uploaded the file or wrote the link, and are read by someone else. Rendered as written, a file
named ``[Session expired](http://evil.example) ![i](http://evil.example/i.png)`` shows a working
link and fetches an image from the attacker's host; a layer name containing ``</script>`` closes
the script element of an exported report. Each function here turns such a string into text that
reads the same and does nothing.
"""
from __future__ import annotations

import html as _html
import json
import re
from typing import Any

__all__ = ["md", "md_code", "md_link", "html", "json_for_script", "plotly_text", "plotly_inert"]

# CommonMark lets a backslash escape any ASCII punctuation character, and the escaped character is
# literal text. Escaped everywhere: what opens emphasis (* and _ but not _ inside a word), code,
# links and images ([ and ]), HTML and autolinks (< >), entities (&), strikethrough and math ($).
# Escaped only where they act: the colon of an icon (:material/...) and block markers at the very
# start (# + - = and "1."). Parentheses, "!", "|" and the like do nothing once [ ] and line breaks
# are gone, so ordinary names and messages ("net.fc1", "8,320", "noise: AUROC (0.93)") stay as
# they are.
_MD_ALWAYS = re.compile(r"([\\`*\[\]<>~$&])")
_MD_UNDERSCORE = re.compile(r"_(?![^\W_])|(?<![^\W_])_")  # inside a word ("umap_k") it emphasises nothing
_MD_COLON = re.compile(r":(?=/)")
_MD_START = re.compile(r"^(?:([#+\-=])|(\d+)(?=\.))")
_NEWLINES = re.compile(r"[\r\n\u2028\u2029]+")
# GFM turns bare URLs, www. addresses and e-mail addresses into links after parsing, on the text
# itself, so backslashes cannot stop it (Streamlit renders with remark-gfm). Text inside a code span
# is never linked: such pieces are shown as code.
_AUTOLINKED = re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)\S*|[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.I)


def md(text: Any) -> str:
    """``text`` as Markdown that renders as written (no link, image, emphasis, heading, HTML...;
    URLs and e-mail addresses appear as code, so that nothing links them); line breaks become
    spaces, so a message stays one paragraph. For ``st.markdown``, ``st.error`` / ``warning`` /
    ``info`` / ``success`` / ``toast``, captions, ``st.table`` cells, widget labels and help texts."""
    text = _NEWLINES.sub(" ", str(text)).lstrip()  # (4 leading spaces: a code block)
    out, last = [], 0
    for m in _AUTOLINKED.finditer(text):
        out += [_escape(text[last:m.start()]), md_code(m.group())]
        last = m.end()
    out.append(_escape(text[last:]))
    return _MD_START.sub(lambda m: "\\" + m.group(1) if m.group(1) else m.group(2) + "\\", "".join(out), count=1)


def _escape(text: str) -> str:
    return _MD_COLON.sub(r"\\:", _MD_UNDERSCORE.sub(r"\\_", _MD_ALWAYS.sub(r"\\\1", text)))


def md_code(text: Any) -> str:
    """``text`` as a Markdown inline code span (monospace, nothing inside interpreted). The fence
    is one backtick longer than the longest run of backticks in the text, so none can close it."""
    text = _NEWLINES.sub(" ", str(text)).strip()
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_link(text: Any, url: str) -> str:
    """A Markdown link whose text renders as written and whose target is ``url`` (http or https
    only, else the text alone). Characters that could end the link destination are
    percent-encoded."""
    from urllib.parse import quote, urlsplit

    if urlsplit(url).scheme not in ("http", "https"):
        return md(text)
    return f"[{md(text)}](<{quote(url, safe=_URL_SAFE)}>)"


_URL_SAFE = ":/?#[]@!$&'*+,;=%-._~"


def html(text: Any) -> str:
    """``text`` escaped for HTML element content and quoted attribute values (& < > " ')."""
    return _html.escape(str(text), quote=True)


_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_SCRIPT_UNSAFE_RE = re.compile("[<>&\u2028\u2029]")


def json_for_script(value: Any, **dumps_kwargs) -> str:
    """JSON that is safe inside an HTML ``<script>`` element, as Jinja's ``tojson`` and Django's
    ``json_script`` write it: ``<``, ``>`` and ``&`` become ``\\u003c`` / ``\\u003e`` / ``\\u0026``
    (so no ``</script>`` or ``<!--`` can appear), and U+2028 / U+2029 are escaped too (line
    terminators in older JavaScript). The value parses back unchanged."""
    text = json.dumps(value, **dumps_kwargs)
    return _SCRIPT_UNSAFE_RE.sub(lambda m: _SCRIPT_UNSAFE[m.group()], text)


# Plotly draws titles, tick labels, legend entries and hover text through its own small tag
# language: <a href>, <span style>, <b>, <br> ... An attribute-less formatting tag is harmless and
# RepLens's figures use some (<br>, <b>, and <extra> in hover templates); everything else (links,
# styles, unknown tags, which Plotly drops silently) is escaped to entities, which Plotly draws as
# the literal characters.
_PLOTLY_KEEP = re.compile(r"</?(?:br|b|i|em|sup|sub|extra)\s*/?>", re.I)
_PLOTLY_SPECIAL = re.compile("[<>&]")
_PLOTLY_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def plotly_text(text: str) -> str:
    """A string for a Plotly text field, with every tag except attribute-less formatting
    (<br>, <b>, <i>, <em>, <sup>, <sub>, <extra>) turned into visible text."""
    if not _PLOTLY_SPECIAL.search(text):
        return text
    out, last = [], 0
    for m in _PLOTLY_KEEP.finditer(text):
        out.append(_PLOTLY_SPECIAL.sub(lambda c: _PLOTLY_ENTITIES[c.group()], text[last:m.start()]))
        out.append(m.group())
        last = m.end()
    out.append(_PLOTLY_SPECIAL.sub(lambda c: _PLOTLY_ENTITIES[c.group()], text[last:]))
    result = "".join(out)
    return text if result == text else result


def plotly_inert(value: Any) -> Any:
    """A copy of a Plotly figure (its JSON as dicts and lists; numpy arrays of text too) with every
    string passed through :func:`plotly_text`. Returns the very same object when nothing needed
    escaping, so the common case costs one read of the figure."""
    import numpy as np

    if isinstance(value, str):
        return plotly_text(value)
    if isinstance(value, dict):
        new = {k: plotly_inert(v) for k, v in value.items()}
        return value if all(new[k] is value[k] for k in value) else new
    if isinstance(value, (list, tuple)):
        new = [plotly_inert(v) for v in value]
        return value if all(a is b for a, b in zip(new, value)) else type(value)(new)
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        flat = [plotly_inert(v) for v in value.ravel().tolist()]
        if all(a is b or a == b for a, b in zip(flat, value.ravel().tolist())):
            return value
        return np.array(flat, dtype=object).reshape(value.shape)
    return value
