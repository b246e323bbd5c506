"""numba's compiled code kept in the store folder (analysis.numba_cache): where it goes, which
functions are cached, and that a second process loads what the first compiled."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from analysis import numba_cache

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def numba_env(monkeypatch):
    """configure() writes NUMBA_CACHE_DIR and numba's config: both restored after the test."""
    monkeypatch.delenv(numba_cache.ENV, raising=False)
    from numba.core import config

    monkeypatch.setattr(config, "CACHE_DIR", config.CACHE_DIR)
    return config


def test_the_cache_goes_in_the_store_folder_unless_an_administrator_chose_one(numba_env, isolated_store, monkeypatch):
    folder = numba_cache.configure()
    assert folder == isolated_store / "numba"
    assert numba_cache.configure() == folder  # idempotent
    assert numba_env.CACHE_DIR == str(folder)  # numba was imported already: told directly
    monkeypatch.setenv(numba_cache.ENV, "/srv/numba")
    assert numba_cache.configure() == Path("/srv/numba")


def test_no_cache_folder_for_a_store_that_is_not_a_local_folder(numba_env, monkeypatch):
    monkeypatch.setattr("analysis.store.default_root", lambda: "s3://bucket/replens")
    assert numba_cache.store_cache_dir() is None and numba_cache.configure() is None


MODULE = '''
import numba
import numpy as np


@numba.njit
def total(x):
    s = 0.0
    for v in x:
        s += v
    return s


def _scaled(x, c):
    out = np.empty_like(x)
    for i in numba.prange(len(x)):
        out[i] = c * x[i]
    return out


scaled = numba.njit(_scaled)
scaled_parallel = numba.njit(_scaled, parallel=True)
'''

RUN = '''
import json, sys
import numpy as np
from analysis import numba_cache
numba_cache.configure()
import jitmod
enabled = numba_cache.cache_functions(("jitmod",))
x = np.arange(5.0)
assert jitmod.total(x) == 10.0 and jitmod.scaled(x, 2.0)[-1] == 8.0
count = lambda what: sum(sum(getattr(f.stats, what).values()) for f in (jitmod.total, jitmod.scaled))
print(json.dumps({"enabled": enabled, "hits": count("cache_hits"), "misses": count("cache_misses"),
                  "parallel_cached": type(jitmod.scaled_parallel._cache).__name__}))
'''


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    (tmp_path / "jitmod.py").write_text(MODULE)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{tmp_path}", "REPLENS_STORE": str(tmp_path / "store"),
           "HOME": str(tmp_path)}

    def run() -> dict:
        out = subprocess.run([sys.executable, "-c", RUN], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    # total and the serial scaled are cached; the parallel twin of scaled would share its cache file
    assert first["enabled"] == 2 and first["parallel_cached"] == "NullCache"
    assert first["hits"] == 0 and first["misses"] == 2
    assert second["hits"] == 2 and second["misses"] == 0  # nothing compiled in the second process
    assert list((tmp_path / "store" / "numba").rglob("*.nbi"))  # written under the store folder


def test_umap_is_compiled_once_its_fit_functions_are_in_the_cache_folder(numba_env, monkeypatch, tmp_path):
    monkeypatch.setenv(numba_cache.ENV, str(tmp_path))
    assert not numba_cache.umap_compiled()
    umap_dir, nnd_dir = tmp_path / "umap_0123abcd", tmp_path / "pynndescent_4567ef"
    umap_dir.mkdir()
    nnd_dir.mkdir()
    (umap_dir / "umap_.smooth_knn_dist-144.py311.nbi").write_bytes(b"")
    assert not numba_cache.umap_compiled()  # the layout optimiser is still to compile
    (umap_dir / "layouts._optimize_layout_euclidean_single_epoch-63.py311.nbi").write_bytes(b"")
    assert numba_cache.umap_compiled() and not numba_cache.umap_compiled(nn_descent=True)
    for name in ("pynndescent_.process_candidates-219", "utils.deheap_sort-249"):
        (nnd_dir / f"{name}.py311.nbi").write_bytes(b"")
    assert numba_cache.umap_compiled(nn_descent=True)


def test_a_real_umap_fit_leaves_its_compiled_code_in_the_cache_folder():
    from analysis import projection

    x = np.random.default_rng(0).normal(size=(60, 5))
    projection.project(x, "umap", 2, 0, use_cache=False, n_neighbors=5)
    umap = numba_cache.import_umap()
    assert type(umap.umap_.smooth_knn_dist._cache).__name__ == "FunctionCache"  # not cached by umap-learn
    assert numba_cache.umap_compiled()  # conftest's NUMBA_CACHE_DIR


def test_the_background_compile_starts_only_for_a_store_that_lacks_umaps_code(numba_env, monkeypatch, tmp_path):
    started = []
    monkeypatch.setattr(numba_cache.subprocess, "Popen", lambda args, **kw: started.append((args, kw)) or "proc")
    monkeypatch.setenv(numba_cache.ENV, str(tmp_path))
    assert numba_cache.precompile_in_background() == "proc"
    (args, kw), = started
    assert args[1:] == ["-m", "analysis.numba_cache"] and kw["env"][numba_cache.ENV] == str(tmp_path)
    for package, functions in numba_cache.EXACT_FIT.items():
        (tmp_path / f"{package}_0123").mkdir()
        for name in functions:
            (tmp_path / f"{package}_0123" / f"{name}-1.py311.nbi").write_bytes(b"")
    assert numba_cache.precompile_in_background() is None and len(started) == 1
