"""numba's compiled code kept in the result store's folder (``<store>/numba``), so that UMAP's code
is compiled once per store, not once per process.

UMAP (umap-learn and pynndescent) is compiled by numba on first use: about 30 s of CPU time on a
2-core machine, in every new server or job worker. pynndescent marks its functions ``cache=True``,
but numba then writes next to the installed package (lost when a container is recreated, impossible
where site-packages is read-only); umap-learn's own functions (the fuzzy simplicial set, the layout
optimiser, the exact k-NN) are not cached at all. Here

- :func:`configure` points numba at ``<store>/numba`` (unless ``NUMBA_CACHE_DIR`` is set already),
  which must happen before umap or pynndescent is imported in the process;
- :func:`import_umap` imports umap-learn and turns on numba's cache for its uncached functions;
- :func:`precompile_in_background` compiles UMAP's fit in a low-priority process when a server
  starts on a store whose folder lacks it, so that a user who asks for UMAP a minute later finds
  it compiled (``python -m analysis.numba_cache`` does the same by hand, e.g. when building an image).

numba keys each cached function by its source file, its signature and the CPU, and recompiles when
any of these changes, so a store shared by several machines or package versions stays correct.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENV = "NUMBA_CACHE_DIR"
PACKAGES = ("umap", "pynndescent")
# Functions whose cache files show that UMAP's fit has been compiled into a cache folder (by the
# package folder they live in): below 4,096 samples UMAP finds exact neighbours; above, NN-descent.
EXACT_FIT = {"umap": ("umap_.smooth_knn_dist", "layouts._optimize_layout_euclidean_single_epoch")}
NN_DESCENT = {"pynndescent": ("pynndescent_.process_candidates", "utils.deheap_sort")}


def store_cache_dir() -> Path | None:
    """``<store root>/numba``, or None when the store is not a local folder (an object-store URL)."""
    from .store import default_root

    root = default_root()
    if isinstance(root, str) and "://" in root:
        return None
    return Path(root).expanduser() / "numba"


def configure() -> Path | None:
    """Make numba cache compiled code under the store folder (an administrator's
    ``NUMBA_CACHE_DIR`` wins). Returns the folder in effect. Safe to call more than once; call it
    before umap or pynndescent is imported (their cached functions find their folder then)."""
    if not os.environ.get(ENV):
        folder = store_cache_dir()
        if folder is None:
            return None
        os.environ[ENV] = str(folder)
    folder = Path(os.environ[ENV])
    if "numba" in sys.modules:  # numba reads the variable once, at import: tell it directly too
        from numba.core import config

        config.CACHE_DIR = str(folder)
    return folder


def cache_functions(packages: tuple[str, ...] = PACKAGES) -> int:
    """Turn on numba's on-disk cache for the imported jitted functions of ``packages`` that lack it;
    returns how many. A function compiled twice from one Python function (umap-learn's layout
    optimiser, serial and parallel) would share one cache file, so only its serial version is
    cached (the one a seeded UMAP runs)."""
    from numba.core.caching import FunctionCache
    from numba.core.dispatcher import Dispatcher

    by_source: dict[int, dict[int, Dispatcher]] = {}
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in packages:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher):
                by_source.setdefault(id(value.py_func), {})[id(value)] = value
    enabled = 0
    for group in by_source.values():
        candidates = list(group.values())
        if len(candidates) > 1:
            candidates = [d for d in candidates if not d.targetoptions.get("parallel")]
        if len(candidates) == 1 and not isinstance(candidates[0]._cache, FunctionCache):
            candidates[0].enable_caching()
            enabled += 1
    return enabled


_UMAP = []


def import_umap():
    """umap-learn, imported with numba's cache under the store folder and on for all its code."""
    if not _UMAP:
        configure()
        import umap

        cache_functions()
        _UMAP.append(umap)
    return _UMAP[0]


def umap_compiled(nn_descent: bool = False) -> bool:
    """Whether UMAP's fit runs without compiling in a new process: the cache folder holds its
    compiled fit (with NN-descent's code when ``nn_descent``)."""
    folder = Path(os.environ[ENV]) if os.environ.get(ENV) else store_cache_dir()
    if folder is None or not folder.is_dir():
        return False
    wanted = {**EXACT_FIT, **(NN_DESCENT if nn_descent else {})}
    for package, functions in wanted.items():
        found = {p.name.split("-", 1)[0] for sub in folder.glob(f"{package}_*") for p in sub.glob("*.nbi")}
        if not all(f in found for f in functions):
            return False
    return True


def compile_umap() -> None:
    """Compile UMAP's fit (exact neighbours, the path below 4,096 samples) into the cache folder."""
    import numpy as np

    x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    import_umap().UMAP(n_neighbors=15, random_state=0, n_jobs=1).fit_transform(x)


def precompile_in_background() -> subprocess.Popen | None:
    """Start :func:`compile_umap` in a process at the lowest CPU priority (it takes only what the
    server leaves idle) unless the cache folder holds UMAP's fit already. Returns the process."""
    if configure() is None or umap_compiled():
        return None
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", __name__], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: os.nice(19))  # noqa: PLW1509 - nice only, no threads yet


if __name__ == "__main__":
    configure()
    compile_umap()
