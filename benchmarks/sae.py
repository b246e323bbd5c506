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

Activations: MiniLM (``hf:minilm``, width 384) on the bundled ``text`` set, one row per token
(pooling "tokens") of each of its six encoder layers, stacked: 360 texts give 30,876 rows. The
text set is small, so the layers stand in for more text (each layer's token rows are a different
distribution, which the SAE must cover with one dictionary). Both sides train a TopK SAE with
exactly ``--latents`` (default 4,096, expansion ~10.7) latents and score it with the same function
(``analysis.sae.evaluate``: explained variance over the whole set, dead = never active on it).
A third row trains RepLens from the same rows written to an on-disk activation cache (streamed a
few chunks at a time). Defaults fit a busy 2-core CPU; ``--device cuda`` times both on a GPU.
The load average (1 minute) before and after is printed: the machine is shared, so the ratio,
measured in one run, is the number to read. Defaults, 2-core CPU, load ~2: RepLens 14,354
activations/s, explained variance 0.8879, 0 dead; SAELens 4,415/s, 0.8620, 156 dead (3.25x).
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

    torch.set_num_threads(args.threads or torch.get_num_threads())
    torch.manual_seed(args.seed)
    x = np.load(args.data).astype(np.float32)
    d = x.shape[1]
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=args.latents, k=args.k, device=args.device,
                                                use_sparse_activations=args.saelens_sparse))
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


LAYERS = [f"encoder.layer.{i}" for i in range(6)]


def activations(store) -> np.ndarray:
    """MiniLM's token rows of its six encoder layers on the text set, stacked (see the docstring)."""
    from analysis import activations as A, data, models

    caches = A.extract_chunked(models.load("hf:minilm"), data.load("text"), LAYERS, "tokens", store=store)
    return np.concatenate([caches[layer].read() for layer in LAYERS])


def as_cache(store, x: np.ndarray):
    """The rows written to an on-disk activation cache of their own, chunk by chunk."""
    from analysis.activations import write_chunk
    from analysis.activations.cache import create_cache

    cache = create_cache(store, "bench-sae-minilm-stacked", len(x), x.shape[1], "float32", 256, "tokens (stacked)")
    for i in range(cache.record.chunks):
        write_chunk(cache, i, x[cache.record.chunk_slice(i)])
    return cache


def saelens_row(args, x, threads: int, sparse: bool):
    from analysis import sae as S

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x)
        cmd = [args.saelens_python, __file__, "--worker", "--data", str(Path(tmp) / "x.npy"), "--out",
               str(Path(tmp) / "sae"), "--latents", str(args.latents), "--k", str(args.k), "--steps",
               str(args.steps), "--batch", str(args.batch), "--lr", str(args.lr), "--seed", str(args.seed),
               "--device", args.device, "--threads", str(threads)] + (["--saelens-sparse"] if sparse else [])
        run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1",
                                                                              WANDB_MODE="disabled"))
        if run.returncode != 0:
            print("SAELens run failed:\n" + run.stderr[-3000:])
            return None
        timing = json.loads((Path(tmp) / "sae" / "timing.json").read_text())
        theirs = S.load_saelens(Path(tmp) / "sae")
        name = "SAELens (sparse acts)" if sparse else "SAELens"
        return (name, args.steps * args.batch / timing["seconds"], timing["seconds"], S.evaluate(theirs, x))


def replens_row(name, args, x, source):
    from analysis import sae as S

    sae = S.SparseAutoencoder(x.shape[1], args.latents, "topk", args.k)
    t0 = time.perf_counter()
    sae.fit(source, steps=args.steps, lr=args.lr, batch_size=args.batch, seed=args.seed, device=args.device)
    seconds = time.perf_counter() - t0
    return (name, args.steps * args.batch / seconds, seconds, S.evaluate(sae, x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--latents", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--saelens-python", default=DEFAULT_SAELENS_PYTHON)
    p.add_argument("--also-saelens-sparse", action="store_true",
                   help="also time SAELens with use_sparse_activations=True (its sparse decoder)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--saelens-sparse", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for both sides (default: all, or one for a product too small to share)")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    sys.path.insert(0, str(ROOT))
    import torch

    from analysis import sae as S
    from analysis.store import default_store

    store = default_store()
    x = activations(store)
    d = x.shape[1]
    work = args.batch * d * args.latents
    threads = args.threads or (1 if (args.device == "cpu" and work < S.SMALL_WORK) else torch.get_num_threads())
    torch.set_num_threads(threads)
    print(f"activations: hf:minilm token rows of {', '.join(LAYERS)} on text, stacked: {x.shape[0]:,} x {d}; "
          f"TopK, {args.latents} latents, k={args.k}, {args.steps} steps of {args.batch}, lr {args.lr:g} "
          f"(linear decay over the last 20%), device {args.device}, torch threads {threads}")
    load_before = os.getloadavg()[0]
    rows = [replens_row("RepLens", args, x, x)]
    if Path(args.saelens_python).exists():
        for sparse in (False, True) if args.also_saelens_sparse else (False,):
            row = saelens_row(args, x, threads, sparse)
            if row is not None:
                rows.append(row)
    else:
        print(f"SAELens not found at {args.saelens_python}: RepLens alone (see this file's docstring to install it).")
    rows.append(replens_row("RepLens (streamed from disk)", args, x, as_cache(store, x)))
    load_after = os.getloadavg()[0]

    print(f"{'':28s} {'activations/s':>14s} {'seconds':>8s} {'expl. var.':>10s} {'L0':>6s} {'dead':>12s}")
    for name, rate, secs, ev in rows:
        dead = int(round(ev.dead_fraction * args.latents))
        print(f"{name:28s} {rate:14,.0f} {secs:8.2f} {ev.fve:10.4f} {ev.l0:6.1f} {dead:5d} ({100 * ev.dead_fraction:4.1f}%)")
    base = next((r for r in rows if r[0] == "SAELens"), None)
    if base is not None:
        for r in rows:
            if r is not base:
                print(f"{r[0]} / SAELens: throughput {r[1] / base[1]:.2f}x, explained variance "
                      f"{r[3].fve - base[3].fve:+.4f}, dead latents {int(round((r[3].dead_fraction - base[3].dead_fraction) * args.latents)):+d}")
    print(f"load average (1 min): {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
