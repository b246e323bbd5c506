"""A sweep in this process against the same sweep on a local Ray cluster with 2 workers.

    pip install -r requirements-cluster.txt
    python benchmarks/sweep.py [--n 500] [--measure linear_cka] [--noop 40]

The grid: 4 model pairs of the zoo's 7-layer MLPs (mlp-s0 x mlp-s1, mlp-s0 x mlp-s2, mlp-s1 x mlp-s2,
mlp-s0 x mlp-wide) under one measure: 4 cells, each the Similarity view's ``matrices`` section
(the 7 x 7 map of A vs B plus A-A and B-B, and both models' activations on n digits). Every run
starts from an empty store, so every cell extracts and computes.

Printed:
- Ray's start time (``ray start --head --num-cpus=2``, until this process is connected);
- the sweep in this process (analysis.sweep.run(cells)), with torch's default threads and with one
  thread (torch and BLAS, as each Ray worker runs), best of two runs interleaved with the Ray runs
  (a shared machine's load drifts), and on Ray (run(cells, RayExecutor)) twice: cold (fresh workers
  import torch and load the models) and warm; the ratio of the best in-process run to Ray's;
- the scheduling overhead per task: no-op jobs (analysis.jobs.probe:busy with 0 s) through the
  RayExecutor, one at a time (the latency a job sees: submit, a worker, the result back)
  and all at once (the amortised cost inside a sweep), and bare Ray tasks for comparison.
On 2 shared cores expect parity at best: the cells are small and the cores are the same ones.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAIRS = [("zoo:mlp-s0", "zoo:mlp-s1"), ("zoo:mlp-s0", "zoo:mlp-s2"), ("zoo:mlp-s1", "zoo:mlp-s2"),
         ("zoo:mlp-s0", "zoo:mlp-wide")]


def fresh_store(tag: str) -> None:
    os.environ["REPLENS_STORE"] = tempfile.mkdtemp(prefix=f"replens-bench-sweep-{tag}-")


def timed_sweep(cells, executor=None) -> float:
    from analysis import sweep

    t0 = time.perf_counter()
    done = sweep.run(cells, executor)
    assert done.computed == len(cells), done
    return time.perf_counter() - t0


def noop_overhead(executor, count: int) -> tuple[float, float]:
    """(seconds per no-op job one at a time, seconds per job with ``count`` submitted at once)."""
    from analysis import jobs

    def task(i: int, tag: str):
        return jobs.Task("analysis.jobs.probe:busy", {"seconds": 0.0}, f"{tag}{i:015d}", "no-op", kind="bench:noop")

    executor.submit(task(0, "w")).wait(120)  # a warm worker first
    t0 = time.perf_counter()
    for i in range(count):
        executor.submit(task(i, "s")).wait(120)
    one = (time.perf_counter() - t0) / count
    t0 = time.perf_counter()
    running = [executor.submit(task(i, "b")) for i in range(count)]
    for j in running:
        j.wait(120)
    return one, (time.perf_counter() - t0) / count


def bare_ray_overhead(count: int) -> float:
    import ray

    @ray.remote
    def nothing():
        return None

    ray.get(nothing.remote())
    t0 = time.perf_counter()
    ray.get([nothing.remote() for _ in range(count)])
    return (time.perf_counter() - t0) / count


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--measure", default="linear_cka")
    ap.add_argument("--noop", type=int, default=40, help="no-op jobs for the overhead")
    args = ap.parse_args(argv)

    from analysis import sweep
    from analysis.jobs.ray_backend import RayExecutor
    from tests.ray_cluster import start_cluster, stop_cluster

    cells = sweep.similarity_cells(PAIRS, [args.measure], n=args.n)
    print(f"{len(cells)} cells (model pairs) x 7x7 layers (+ A-A, B-B), {args.measure}, n={args.n}")
    fresh_store("warm-up")
    for a, b in PAIRS:  # imports and model loads, paid once in this process (Ray's warm run has them too)
        timed_sweep(sweep.similarity_cells([(a, b)], [args.measure], n=20))

    def in_process() -> dict:
        """The sweep here with the default threads and with one thread (as each Ray worker has)."""
        import torch
        from threadpoolctl import threadpool_limits

        out, threads = {}, torch.get_num_threads()
        fresh_store("here")
        out[f"{threads} threads"] = timed_sweep(cells)
        torch.set_num_threads(1)
        try:
            with threadpool_limits(1):
                fresh_store("here-1")
                out["1 thread"] = timed_sweep(cells)
        finally:
            torch.set_num_threads(threads)
        return out

    here = in_process()
    cluster = start_cluster(num_cpus=2)
    try:
        print(f"Ray start (2 CPUs):       {cluster.start_seconds:7.2f} s")
        executor = RayExecutor(cluster.address)
        fresh_store("ray-cold")
        cold = timed_sweep(cells, executor)
        fresh_store("ray-warm")
        warm = timed_sweep(cells, executor)
        again = in_process()  # interleaved: the machine's load drifts
        here = {k: min(v, again[k]) for k, v in here.items()}
        for k, v in here.items():
            print(f"in this process, {k + ':':10s}{v:7.2f} s (best of 2)")
        print(f"on Ray, 2 workers, cold:  {cold:7.2f} s   (workers import torch, load the models)")
        print(f"on Ray, 2 workers, warm:  {warm:7.2f} s")
        best = min(here.values())
        print(f"ratio best in-process / Ray warm: {best / warm:.2f} (above 1: Ray is faster); / Ray cold: {best / cold:.2f}")
        one, batch = noop_overhead(executor, args.noop)
        bare = bare_ray_overhead(args.noop * 5)
        print(f"overhead per task:        {1000 * one:7.1f} ms one at a time (submit -> result)")
        print(f"                          {1000 * batch:7.1f} ms each with {args.noop} submitted at once")
        print(f"                          {1000 * bare:7.1f} ms a bare Ray task, for comparison")
        print(f"sweep cells: {1000 * warm / len(cells):.0f} ms each on Ray (warm), {1000 * best / len(cells):.0f} ms "
              "in this process")
        executor.shutdown()
    finally:
        stop_cluster(cluster)


if __name__ == "__main__":
    main()
