"""Trajectories per second: RepLens' batched iteration (all starts as one tensor, converged rows
stop) against the per-sample loop people write first (one start at a time until it converges).

    python benchmarks/vector_field.py [--model zoo:mlp-ae-b8] [--starts 10000] [--steps 500]
                                      [--loop-starts 200] [--device cpu|cuda] [--threads N]

Starts are the codes E(x) of ``--starts`` rows of the digits_noisy set (digits test images with
pixel noise), tolerance 1e-6, step cap ``--steps``. The per-sample loop runs on the first
``--loop-starts`` of the same starts (the full 10,000 would take many minutes) and its rate is
reported per trajectory; both runs are checked to stop at the same step for those starts.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import data, models  # noqa: E402
from analysis import vector_field as vf  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:mlp-ae-b8")
    ap.add_argument("--starts", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--loop-starts", type=int, default=200)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: analysis.device.pick())")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from analysis.device import pick

    dev = pick(args.device)
    model = models.load(args.model)
    model.to(dev)
    x = np.asarray(data.load("digits_noisy", n=args.starts, seed=0).inputs, dtype=np.float32)
    enc, dec = model.encode, model.decode
    with torch.no_grad():
        z0 = torch.cat([enc(torch.from_numpy(x[i: i + 2048]).to(dev)) for i in range(0, len(x), 2048)])
    print(f"{args.model} on {dev} ({torch.get_num_threads()} CPU threads), {len(z0)} starts, "
          f"latent {z0.shape[1]}-D, cap {args.steps} steps, tol {args.tol:g}")

    # warm-up (first calls allocate and, on a GPU, compile kernels)
    vf.iterate(enc, dec, z0[:64], max_steps=5, tol=args.tol, record_every=0)
    vf.iterate_loop(enc, dec, z0[:2], max_steps=5, tol=args.tol)
    if dev.type == "cuda":
        torch.cuda.synchronize()

    t0 = time.perf_counter()
    batched = vf.iterate(enc, dec, z0, max_steps=args.steps, tol=args.tol, record_every=0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_batched = time.perf_counter() - t0
    rate_batched = len(z0) / t_batched

    k = min(args.loop_starts, len(z0))
    t0 = time.perf_counter()
    _, conv, steps = vf.iterate_loop(enc, dec, z0[:k], max_steps=args.steps, tol=args.tol)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_loop = time.perf_counter() - t0
    rate_loop = k / t_loop

    same = float(np.mean(batched.steps[:k] == steps))
    print(f"batched:          {len(z0):6d} trajectories in {t_batched:8.2f} s  -> {rate_batched:10.1f} trajectories/s "
          f"(median {int(np.median(batched.steps))} steps, {100 * batched.converged.mean():.1f}% converged)")
    print(f"per-sample loop:  {k:6d} trajectories in {t_loop:8.2f} s  -> {rate_loop:10.1f} trajectories/s "
          f"(median {int(np.median(steps))} steps; the same stopping step as batched for {100 * same:.1f}%)")
    print(f"ratio (batched / per-sample loop): {rate_batched / rate_loop:.1f}x")
    print(f"per-sample loop on all {len(z0)} starts would take about {len(z0) / rate_loop:.0f} s")


if __name__ == "__main__":
    main()
