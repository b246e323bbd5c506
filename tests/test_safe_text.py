"""analysis.safe_text: user strings stay text in Markdown, HTML, <script> JSON and Plotly labels."""
from __future__ import annotations

import html as std_html
import json
import re
from urllib.parse import unquote

import numpy as np
import pytest
from markdown_it import MarkdownIt

from analysis import safe_text

HOSTILE = [
    "Session expired](http://evil.example/x) ![i](http://evil.example/i.png) **bold**.npy",
    "[Session expired](http://evil.example/login)",
    "![i](http://evil.example/i.png)",
    "<img src=x onerror=\"window.__pwned=1\">",
    "</script><script>document.title='pwned'</script>",
    "<a href='http://evil.example'>x</a>",
    "# heading\n- item\n> quote\n---",
    "`code` and ``two`` ```three```",
    "*it* _it_ ~~gone~~ $x^2$ :red[red] \\escaped\\",
    "&lt;b&gt; &amp; &#60;script&#62;",
    "a | table | row\n|---|---|",
    "http://evil.example www.evil.example <http://evil.example>",
    "line\u2028separator\u2029paragraph",
    "1. first 2) second",
    "+ plus * star",
    "    four spaces make a code block",
    "mail a@evil.example or mailto:a@evil.example",
    "=== setext",
    "",
    "plain_layer.name-1",
    "_em_ __strong__ a_b_c x__y_ _ é_é_é",
]
_MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def _rendered_text(markdown: str) -> str:
    """What a CommonMark renderer shows for ``markdown``: the HTML's text, entities decoded."""
    out = _MD.render(markdown)
    assert not re.search(r"<(?!/?(p|code)>)", out.strip()), out  # one paragraph at most, code spans only
    return std_html.unescape(re.sub(r"</?(p|code)>", "", out)).strip()


def gfm_would_link(markdown: str) -> bool:
    """Whether GFM's autolink pass (bare URLs, www., e-mail addresses; it runs on the parsed text,
    so backslash escapes do not stop it) finds anything outside code spans."""
    prose = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", markdown)
    return bool(re.search(r"(?:https?|ftp)://|www\.|[\w.+-]@[\w-]+\.", prose, re.I))


@pytest.mark.parametrize("text", HOSTILE)
def test_md_renders_exactly_the_text_and_no_markup(text):
    expected = re.sub(r"[\r\n\u2028\u2029]+", " ", text).strip()
    assert _rendered_text(safe_text.md(text)) == expected
    assert not gfm_would_link(safe_text.md(text))


@pytest.mark.parametrize("text", HOSTILE)
def test_md_code_is_one_code_span_with_the_text(text):
    out = _MD.render(safe_text.md_code(text))
    m = re.fullmatch(r"<p><code>(.*)</code></p>\n", out, re.S)
    assert m, out
    assert std_html.unescape(m.group(1)) == re.sub(r"[\r\n\u2028\u2029]+", " ", text).strip() or not text.strip()


def test_md_leaves_ordinary_names_alone():
    for name in ("net.fc1", "encoder.layer.0", "8,320", "digits (test split)"[:6], "mlp-s0"):
        assert safe_text.md(name) == name
    assert safe_text.md("zoo:mlp (noise: 0.5)!") == "zoo:mlp (noise: 0.5)!"
    # what GFM would link is shown as code
    assert safe_text.md("see www.evil.example, a@evil.example") == "see `www.evil.example,` `a@evil.example`"
    assert safe_text.md("http://evil.example/x") == "`http://evil.example/x`"


def test_html_escapes_element_content_and_attributes():
    assert safe_text.html("<a href=\"x\" title='y'>&</a>") == "&lt;a href=&quot;x&quot; title=&#x27;y&#x27;&gt;&amp;&lt;/a&gt;"
    assert safe_text.html(3) == "3"


@pytest.mark.parametrize("text", HOSTILE)
def test_json_for_script_round_trips_and_cannot_close_the_element(text):
    value = {"data": [{"x": [text], "name": text}], "layout": {"title": {"text": text}}}
    out = safe_text.json_for_script(value)
    assert json.loads(out) == value
    for forbidden in ("<", ">", "&", "\u2028", "\u2029"):
        assert forbidden not in out


def test_json_for_script_escapes_as_jinja_tojson():
    assert safe_text.json_for_script("</script>&\u2028") == '"\\u003c/script\\u003e\\u0026\\u2028"'


@pytest.mark.parametrize("text,shown", [
    ("net.fc1", "net.fc1"),
    ("<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)&gt;"),
    ("<a href='http://evil.example'>x</a>", "&lt;a href='http://evil.example'&gt;x&lt;/a&gt;"),
    ("A: layer<br>value: 0.5", "A: layer<br>value: 0.5"),
    ("%{y:.4f}<extra></extra>", "%{y:.4f}<extra></extra>"),
    ("<b style='color:red'>x</b>", "&lt;b style='color:red'&gt;x</b>"),
    ("x < y & z > w", "x &lt; y &amp; z &gt; w"),
])
def test_plotly_text_keeps_formatting_tags_only(text, shown):
    assert safe_text.plotly_text(text) == shown


def test_plotly_inert_copies_only_what_changes():
    clean = {"data": [{"x": ["a", "b"], "z": [[1.0]]}], "layout": {"title": {"text": "t<br>u"}}}
    assert safe_text.plotly_inert(clean) is clean
    hostile = {"data": [{"x": ["a", "<img src=x>"], "text": np.array(["<a href='h'>", "ok"], dtype=object),
                         "y": np.arange(2)}], "layout": {"title": {"text": "</script>"}}}
    out = safe_text.plotly_inert(hostile)
    assert out["data"][0]["x"] == ["a", "&lt;img src=x&gt;"]
    assert list(out["data"][0]["text"]) == ["&lt;a href='h'&gt;", "ok"]
    assert out["data"][0]["y"] is hostile["data"][0]["y"]
    assert out["layout"]["title"]["text"] == "&lt;/script&gt;"
    assert hostile["data"][0]["x"][1] == "<img src=x>"  # the input is not modified


@pytest.mark.parametrize("text", HOSTILE)
def test_md_link_has_one_link_with_the_text_and_the_url(text):
    url = "http://localhost:8501/report?report=00aa&x=(a) <b>"
    out = _MD.render(safe_text.md_link(text, url))
    links = re.findall(r'<a href="([^"]*)">(.*?)</a>', out, re.S)
    assert len(links) == 1 and out.count("<a ") == 1 and "<img" not in out
    href, shown = links[0]
    assert unquote(std_html.unescape(href)) == url  # the same address (the renderer may encode more)
    assert std_html.unescape(re.sub(r"</?code>", "", shown)) == re.sub(r"[\r\n\u2028\u2029]+", " ", text).strip()


def test_md_link_refuses_other_schemes():
    assert safe_text.md_link("x", "javascript:alert(1)") == "x"
