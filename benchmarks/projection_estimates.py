"""Do the Projections view's time estimates hold? Estimate, then compute, each section on this machine.

    python benchmarks/projection_estimates.py

For PCA, UMAP and t-SNE views and the layer walk (digits, zoo MLPs, 500 and 1,500 samples), in a
fresh result store (numba's cache is compiled first, as a server's store holds it after its first
start), prints the estimate shown before the run, the wall time and the process's CPU time, and
estimate / actual. "within 2x" counts the rows with 0.5 <= estimate / wall <= 2. On a machine shared
with other work the wall time grows and the CPU time does not: the CPU column is what an idle machine
would take. The app corrects its estimates by the ratios it records (analysis.jobs.estimates).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = [
    ("PCA, default view", {}, ["projection_a", "projection_b", "alignment", "agreement"]),
    ("UMAP, 500 samples", {"method": "umap"}, ["projection_a", "projection_b", "alignment"]),
    ("t-SNE, 500 samples", {"method": "tsne"}, ["projection_a", "projection_b", "alignment"]),
    ("UMAP walk through A", {"method": "umap", "walk": True}, ["walk_a"]),
    ("UMAP, 1,500 samples", {"method": "umap", "n": 1500, "split": "all"}, ["projection_a", "projection_b"]),
    ("t-SNE, 1,500 samples", {"method": "tsne", "n": 1500, "split": "all"}, ["projection_a", "projection_b"]),
    ("t-SNE 3-D, 500 samples", {"method": "tsne", "dims": 3}, ["projection_a"]),
    ("agreement, 1,500 samples", {"n": 1500, "split": "all"}, ["agreement"]),
]


def main() -> int:
    store = tempfile.mkdtemp(prefix="replens-estimates-")
    os.environ["REPLENS_STORE"] = store
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as a job worker runs (analysis.jobs.worker)
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    from analysis import numba_cache, views
    from analysis.spec import AnalysisSpec

    try:
        numba_cache.configure()
        if not numba_cache.umap_compiled():
            print("compiling UMAP into the store's numba cache first…", flush=True)
            numba_cache.compile_umap()
        view = views.get("projections")
        print(f"{'view':<26}{'estimate':>9}{'wall':>8}{'cpu':>8}{'est/wall':>9}{'est/cpu':>9}")
        held = 0
        for name, params, sections in CASES:
            spec = AnalysisSpec("projections", params)
            estimate = view.plan(spec, sections).cost.seconds
            w, c = time.perf_counter(), time.process_time()
            view.compute(spec, sections=sections)
            wall, cpu = time.perf_counter() - w, time.process_time() - c
            held += 0.5 <= estimate / wall <= 2
            print(f"{name:<26}{estimate:>8.1f}s{wall:>7.1f}s{cpu:>7.1f}s{estimate / wall:>9.2f}{estimate / cpu:>9.2f}",
                  flush=True)
        print(f"within 2x of the wall time: {held} of {len(CASES)}; load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
