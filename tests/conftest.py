import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Every test has its own empty store, and numba's cache would follow it (analysis.numba_cache):
# keep UMAP's compiled code in one folder for all test runs instead, as a server keeps it in its store.
# estimates are the cost models' own numbers: the speed probe (a timing) is pinned to the reference
os.environ.setdefault("REPLENS_MACHINE_SPEED", "17000")
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "replens-test-numba"))
# AppTest runs the app in this process: its jobs run inline (finished when submitted). Browser
# tests start a real server, which uses the process pool (tests/browser.py sets that explicitly).
os.environ.setdefault("REPLENS_JOBS", "inline")

from tests.store_backends import own_postgres, postgres_server, store_backend  # noqa: E402,F401  (fixtures)
from tests.ray_cluster import ray_cluster  # noqa: E402,F401  (fixture)


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """Every test gets its own empty result store (and forgets the jobs and loaded inputs of others)."""
    root = tmp_path / "store"
    monkeypatch.setenv("REPLENS_STORE", str(root))
    monkeypatch.delenv("REPLENS_DATABASE_URL", raising=False)  # SQLite unless a test asks for PostgreSQL
    from analysis import jobs

    previous = jobs.set_executor(None)
    if previous is not None:
        previous.shutdown()
    return root


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny random BERT saved as a transformers folder, with the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from analysis.models.hf import minilm_path

    folder = tmp_path_factory.mktemp("tiny_bert")
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(folder)
    return folder


class PickleExploit:
    """An object whose unpickling would create a file: loading it must never happen."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def apptest_navigation(monkeypatch):
    """AppTest resets Streamlit's legacy 'pages/ directory' flag before every run, so from the
    second run on it would execute a page file alone (MPA v1). The real server clears the flag at
    start-up (app.py's lifespan) and on st.navigation; do the same here."""
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *a, **k):
        original(self, *a, **k)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


# ------------------------------------------------------------------ browser tests (tests/browser.py)
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `streamlit run app.py` per browser test module, with its own empty result store:
    yields (base_url, process)."""
    from tests import browser as B

    proc, base_url = B.start_server(store_dir=tmp_path_factory.mktemp("replens-store"))
    yield base_url, proc
    B.stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium, one per browser test module."""
    from tests import browser as B

    with B.sync_playwright() as p:
        b = B.launch_browser(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A page in a fresh browser context (no cookies, no session shared with other tests)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(120_000)
    pg = context.new_page()
    yield pg
    context.close()
