"""AnalysisSpec: query-parameter round trips for every page (property-tested), forged values,
short links in the store."""
import string
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import spec as spec_mod
from analysis.errors import UserInputError
from analysis.spec import AnalysisSpec, Param
from analysis.store import Store

SAFE = string.ascii_letters + string.digits + "_.:-"


def value_strategy(p: Param):
    opts = p.options()
    if opts is not None:
        return st.sampled_from(opts)
    if p.kind == "bool":
        return st.booleans()
    if p.kind == "int":
        return st.integers(int(p.lo if p.lo is not None else -10**6), int(p.hi if p.hi is not None else 10**6))
    if p.kind == "float":
        return st.floats(p.lo if p.lo is not None else -1e6, p.hi if p.hi is not None else 1e6,
                         allow_nan=False, allow_infinity=False)
    if p.kind == "text":
        return st.text(st.characters(min_codepoint=32, blacklist_categories=("Cs",)), min_size=1, max_size=80)
    text = st.text(SAFE, min_size=1, max_size=30).filter(lambda s: ".." not in s)
    if p.kind == "list":
        return st.lists(text, max_size=6)
    return text


@st.composite
def specs(draw):
    page = draw(st.sampled_from(spec_mod.all_pages()))
    params = {}
    for p in spec_mod.params_of(page):
        if p.default is None and draw(st.booleans()):
            continue  # left for the page to choose
        params[p.key] = draw(value_strategy(p))
    return AnalysisSpec(page, params)


def parsed_query(url: str) -> tuple[str, dict]:
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    page = parts.path.rsplit("/", 1)[-1]
    lists = {p.key for p in spec_mod.params_of(page) if p.kind == "list"}
    return page, {k: v if k in lists else v[-1] for k, v in query.items()}


@settings(max_examples=150, deadline=None)
@given(specs())
def test_every_page_round_trips_through_its_link(spec):
    page, query = parsed_query(spec.url("http://host:8501/prefix"))
    assert page == spec.page
    back, problems = AnalysisSpec.from_query(page, query)
    assert problems == []
    assert back == spec
    assert back.hash() == spec.hash()
    assert AnalysisSpec.from_json(spec.to_json()) == spec


def test_link_writes_every_parameter_defaults_included():
    spec = AnalysisSpec.from_query("similarity", {})[0]
    query = spec.to_query()
    declared = {p.key for p in spec_mod.params_of("similarity") if p.default is not None}
    assert set(query) == declared
    assert query["measure"] == "linear_cka" and query["n"] == "500" and query["stretch"] == "true"


def test_hash_is_stable_and_sensitive():
    a = AnalysisSpec("similarity", {"measure": "rbf_cka", "n": 200})
    b = AnalysisSpec("similarity", {"n": 200, "measure": "rbf_cka"})
    assert a.hash() == b.hash() and len(a.hash()) == 16
    assert AnalysisSpec("similarity", {"measure": "rbf_cka", "n": 201}).hash() != a.hash()


@pytest.mark.parametrize("query, fragment", [
    ({"measure": "no_such"}, "must be one of"),
    ({"n": "5"}, "between 10 and 1000000"),
    ({"n": "1e9"}, "between"),
    ({"n": "abc"}, "must be a number"),
    ({"n": "nan"}, "finite"),
    ({"n": "12.5"}, "whole number"),
    ({"stretch": "maybe"}, "true or false"),
    ({"cell_a": "../../etc/passwd"}, "characters"),
    ({"a": "<script>alert(1)</script>"}, "characters"),
    ({"layers_a": ["net.fc1", "../x"]}, "characters"),
    ({"bogus": "1"}, "unknown parameter"),
])
def test_forged_values_fall_back_to_defaults_with_a_message(query, fragment):
    spec, problems = AnalysisSpec.from_query("similarity", query)
    assert len(problems) == 1 and fragment in problems[0]
    defaults = AnalysisSpec.from_query("similarity", {})[0]
    assert spec == defaults
    with pytest.raises(UserInputError):
        AnalysisSpec.from_query("similarity", query, strict=True)


def test_unknown_page_and_parameter_are_refused():
    with pytest.raises(UserInputError, match="Unknown page"):
        AnalysisSpec("nowhere", {})
    with pytest.raises(UserInputError, match="Unknown parameters"):
        AnalysisSpec("similarity", {"colour": "label"})  # a projections parameter


def test_short_link_lives_in_the_store_and_survives_a_new_store_object(tmp_path):
    spec = AnalysisSpec("projections", {"method": "umap", "umap_k": 30, "proj_a": "net.fc2"})
    url = spec.short_url("http://h:1/p", Store(tmp_path))
    sid = url.rsplit("=", 1)[-1]
    assert url == f"http://h:1/p/projections?a={sid}"
    assert spec_mod.is_short_link({"a": sid})
    assert spec_mod.resolve(sid, Store(tmp_path)) == spec  # a "restarted server" sees it
    assert spec_mod.resolve("0" * 16, Store(tmp_path)) is None


@pytest.mark.parametrize("query, short", [
    ({"a": "0123456789abcdef"}, True),
    ({"a": "zoo:mlp-s0"}, False),  # a model reference is never a spec id
    ({"a": "0123456789abcdef", "n": "10"}, False),
    ({"a": "0123456789ABCDEF"}, False),
    ({"a": "../../etc/passwd"}, False),
])
def test_short_link_recognition(query, short):
    assert spec_mod.is_short_link(query) is short
