"""python -m analysis: the same numbers as the page for the same spec, written into the same
store (the page then recomputes nothing), share links run headless, clear errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from analysis import spec as spec_mod
from analysis.__main__ import build_parser, main
from analysis.__main__ import COMMAND_HELP as RUNNERS
from analysis.store import default_store

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


def test_help_documents_every_command_and_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for page in RUNNERS:
        assert page in text
    parser = build_parser()
    for page in RUNNERS:
        sub = parser._subparsers._group_actions[0].choices[page]
        options = {o for a in sub._actions for o in a.option_strings}
        for p in spec_mod.params_of(page):
            assert ("--model-a" if p.key == "a" else "--model-b" if p.key == "b"
                    else "--" + p.key.replace("_", "-")) in options
        assert {"--out", "--report", "--device", "--store"} <= options


@pytest.mark.usefixtures("apptest_navigation")
def test_cli_gives_the_page_numbers_and_the_page_reuses_them(tmp_path, capsys):
    args = ["similarity", "--n", "120", "--measure", "debiased_linear_cka", "--layers-a", "net.fc1", "net.fc2",
            "--out", str(tmp_path / "out"), "--report", str(tmp_path / "r.html"), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "view: /similarity?" in printed
    cli = pd.read_csv(tmp_path / "out" / "similarity_AB.csv", index_col=0)
    assert list(cli.index) == ["net.fc1", "net.fc2"] and cli.shape[1] == 7
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["spec"]["params"]["measure"] == "debiased_linear_cka"
    assert len(summary["provenance"]["model_a"]["sha256"]) == 64 and summary["provenance"]["data"]["rows"] == 120
    html = (tmp_path / "r.html").read_text()
    assert html.count("Plotly.newPlot(") == 5 and "debiased_linear_cka" in html  # 3 maps, the drill-down

    store = default_store()
    keys_before = {k: store.meta(k) for k in store.keys()}
    hits_before = store.hits
    link = (tmp_path / "out" / "link.txt").read_text().splitlines()[0]
    query = {k: (v if k in ("layers_a", "layers_b") else v[-1])
             for k, v in __import__("urllib.parse").parse.parse_qs(link.split("?", 1)[1]).items()}
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("pages/similarity.py")
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    z = np.array(_decode(fig["data"][0]["z"]), dtype=float)
    np.testing.assert_allclose(z, cli.to_numpy(), rtol=0, atol=1e-12)
    new = {k: store.index.run("SELECT kind FROM results WHERE key=?", (k,)) for k in set(store.keys()) - set(keys_before)}
    assert not new, new  # nothing new computed and stored ...
    assert store.hits > hits_before  # ... the page read the CLI's results


def _decode(value):
    import base64

    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        shape = [int(s) for s in shape.split(",")] if isinstance(shape, str) else shape
        return arr.reshape(shape) if shape else arr
    return value


def test_link_command_runs_full_and_short_links(tmp_path, capsys):
    spec = spec_mod.AnalysisSpec("projections", {"n": 80, "dims": 2, "proj_a": "net.fc1"})
    assert main(["link", spec.url("http://somewhere:8501/prefix"), "--out", str(tmp_path / "full"), "--quiet"]) == 0
    full = pd.read_csv(tmp_path / "full" / "coordinates.csv")
    sid = spec.save(default_store())
    assert main(["link", f"http://elsewhere/projections?a={sid}", "--out", str(tmp_path / "short"), "--quiet"]) == 0
    short = pd.read_csv(tmp_path / "short" / "coordinates.csv")
    assert len(full) == 80 and full.equals(short)
    assert "mean k-NN agreement" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["similarity", "--measure", "nope"], "must be one of"),
    (["similarity", "--n", "5"], "between 10 and 1000000"),
    (["similarity", "--layers-a", "no.such.layer", "--n", "50"], "'no.such.layer' is not a layer of zoo:mlp-s0"),
    (["projections", "--model-a", "zoo:does-not-exist"], "zoo"),
    (["link", "http://h/similarity?a=0123456789abcdef"], "not in this store"),
])
def test_bad_arguments_exit_2_with_a_message(args, message, capsys):
    assert main(args + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def test_module_entry_point_runs_in_a_fresh_process(tmp_path):
    env_store = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-m", "analysis", "models", "--n", "60", "--store", str(env_store),
                           "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "A accuracy" in proc.stdout and (tmp_path / "o" / "scores.csv").exists()
    assert (env_store / "index.sqlite").exists()  # --store was used


@pytest.mark.usefixtures("apptest_navigation")
@pytest.mark.parametrize("page, extra", [
    ("projections", ["--dims", "3"]),
    ("functional-maps", ["--fm-anchors", "8", "--fm-eigs", "20"]),
    ("vector-field", ["--vf-starts", "40", "--vf-noise", "20", "--vf-grid", "20", "--vf-ood-n", "40"]),
    ("sae", ["--sae-steps", "60", "--sae-exp", "2"]),
])
def test_the_page_opens_a_cli_result_without_computing_it_again(page, extra, tmp_path):
    assert main([page, "--n", "100", *extra, "--out", str(tmp_path), "--quiet"]) == 0
    store = default_store()
    keys = set(store.keys())
    assert keys, "the CLI stored its results"
    link = (tmp_path / "link.txt").read_text().strip()
    query = {k: v for k, v in __import__("urllib.parse").parse.parse_qs(link.split("?", 1)[1]).items()}
    lists = {p.key for p in spec_mod.params_of(page) if p.kind == "list"}
    at = AppTest.from_file(APP, default_timeout=180)
    # AppTest can only switch to a page with its own url_path after a first run: open the link's
    # sidebar on the Report page (which computes nothing), then the page with the link's parameters.
    at.switch_page("pages/report.py")
    for step in ("sidebar", "page"):
        for k, v in query.items():
            at.query_params[k] = v if k in lists else v[-1]
        at.run()
        if step == "sidebar":
            at.switch_page(f"pages/{page.replace('-', '_')}.py")
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("plotly_chart")) >= 2, [w.value for w in at.warning] + [e.value for e in at.error]
    new = set(store.keys()) - keys
    assert not new, [store.meta(k) for k in new]  # everything the page shows came from the store


def test_the_cli_leaves_the_callers_settings_as_they_were(tmp_path, monkeypatch):
    """The CLI allows folders and the hub for itself; a web app or test in the same process must
    not inherit that (a link could then read server folders)."""
    import os

    from analysis.__main__ import main

    monkeypatch.delenv("REPLENS_ALLOW_LOCAL_PATHS", raising=False)
    monkeypatch.setenv("REPLENS_ALLOW_HUB", "0")
    assert main(["models", "--n", "20", "--out", str(tmp_path), "--quiet"]) == 0
    assert "REPLENS_ALLOW_LOCAL_PATHS" not in os.environ and os.environ["REPLENS_ALLOW_HUB"] == "0"
