"""Benchmark: training a TopK SAE through RepLens (analysis.sae.train_sae) and through SAELens.

Same activations, same hyper-parameters (TopK, expansion, k, steps, batch, Adam learning rate
decayed linearly to 0 over the last 20% of steps), measured in the same run. Prints training
throughput (activations per second) and the final fraction of variance explained over the whole
set; both SAEs are scored by the same function (analysis.sae.evaluate) after SAELens's SAE has
been saved with SAELens's ``save_inference_model`` and read back with ``analysis.sae.load_saelens``
(so the run also checks that the file format interoperates).

SAELens (sae-lens 6.x) pulls transformer-lens, wandb, datasets and ~50 more packages, so it is not
a RepLens dependency and does not go into the main environment. Install it into its own virtual
environment that sees the main one's torch/numpy (pip then keeps torch 2.13.0+cpu as is):

    python -m venv --system-site-packages /root/saelens-venv
    /root/saelens-venv/bin/pip install -r requirements-bench-sae.txt

and run ``python benchmarks/sae.py --saelens-python /root/saelens-venv/bin/python`` (that is the
default path). This script runs SAELens's part in that interpreter (``--worker``), feeding its
``SAETrainer`` batches from the same array. Without the venv it reports RepLens alone and says so.

Activations: zoo:mlp-s0's layer net.relu2 (width 128) on ``digits_noisy`` (n rows). Defaults fit
a busy 2-core CPU; ``--device cuda`` times RepLens on a GPU (SAELens's worker then uses it too).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SAELENS_PYTHON = "/root/saelens-venv/bin/python"


def batches(x, batch_size: int, seed: int):
    """Shuffled epochs of row batches (the order RepLens's trainer uses, as a generator)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    while True:
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            yield xt[order[i: i + batch_size]]


def worker(args) -> None:
    """Runs inside the SAELens venv: train with SAELens's SAETrainer, save the inference SAE."""
    import torch
    from sae_lens import SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x = np.load(args.data).astype(np.float32)
    d = x.shape[1]
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=args.expansion * d, k=args.k, device=args.device))
    cfg = SAETrainerConfig(total_training_samples=args.steps * args.batch, train_batch_size_samples=args.batch,
                           lr=args.lr, lr_end=0.0, lr_decay_steps=int(0.2 * args.steps), device=args.device,
                           dead_feature_window=max(1, math.ceil(max(len(x), 10 * args.batch) / args.batch)),
                           logger=LoggingConfig(log_to_wandb=False))
    provider = (b.to(args.device) for b in batches(x, args.batch, args.seed))
    os.environ["TQDM_DISABLE"] = "1"
    trainer = SAETrainer(cfg, sae, provider)
    t0 = time.perf_counter()
    trainer.fit()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    sae.save_inference_model(args.out)
    Path(args.out, "timing.json").write_text(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))


def activations_for(n: int) -> np.ndarray:
    from analysis import activations, data, models

    ds = data.load("digits_noisy", n=n, seed=0)
    return activations.extract(models.load("zoo:mlp-s0"), ds, ["net.relu2"])["net.relu2"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20000, help="activations (rows of digits_noisy)")
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--saelens-python", default=DEFAULT_SAELENS_PYTHON)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    sys.path.insert(0, str(ROOT))
    import torch

    from analysis import sae as S

    x = activations_for(args.n)
    d = x.shape[1]
    work = args.batch * d * args.expansion * d
    threads = 1 if (args.device == "cpu" and work < S.SMALL_WORK) else torch.get_num_threads()
    print(f"activations: zoo:mlp-s0 net.relu2 on digits_noisy, {x.shape[0]} x {d}; TopK, {args.expansion * d} latents, "
          f"k={args.k}, {args.steps} steps of {args.batch}, lr {args.lr:g} (linear decay over the last 20%), "
          f"device {args.device}, torch threads {threads}")

    t0 = time.perf_counter()
    ours = S.train_sae(x, kind="topk", expansion=args.expansion, k=args.k, steps=args.steps, lr=args.lr,
                       batch_size=args.batch, seed=args.seed, device=args.device)
    ours_s = time.perf_counter() - t0
    ev_ours = S.evaluate(ours, x)
    rows = [("RepLens", args.steps * args.batch / ours_s, ours_s, ev_ours)]

    theirs = None
    if Path(args.saelens_python).exists():
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "x.npy", x)
            cmd = [args.saelens_python, __file__, "--worker", "--data", str(Path(tmp) / "x.npy"), "--out",
                   str(Path(tmp) / "sae"), "--expansion", str(args.expansion), "--k", str(args.k), "--steps",
                   str(args.steps), "--batch", str(args.batch), "--lr", str(args.lr), "--seed", str(args.seed),
                   "--device", args.device, "--threads", str(threads)]
            run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1",
                                                                                  WANDB_MODE="disabled"))
            if run.returncode != 0:
                print("SAELens run failed:\n" + run.stderr[-3000:])
            else:
                timing = json.loads((Path(tmp) / "sae" / "timing.json").read_text())
                theirs = S.load_saelens(Path(tmp) / "sae")
                rows.append(("SAELens", args.steps * args.batch / timing["seconds"], timing["seconds"],
                             S.evaluate(theirs, x)))
    else:
        print(f"SAELens not found at {args.saelens_python}: RepLens alone (see this file's docstring to install it).")

    print(f"{'':8s} {'activations/s':>14s} {'seconds':>8s} {'expl. var.':>10s} {'L0':>6s} {'dead':>6s}")
    for name, rate, secs, ev in rows:
        print(f"{name:8s} {rate:14,.0f} {secs:8.2f} {ev.fve:10.4f} {ev.l0:6.1f} {100 * ev.dead_fraction:5.1f}%")
    if len(rows) == 2:
        print(f"throughput ratio RepLens / SAELens: {rows[0][1] / rows[1][1]:.2f}x; "
              f"explained variance RepLens - SAELens: {rows[0][3].fve - rows[1][3].fve:+.4f}")


if __name__ == "__main__":
    main()
