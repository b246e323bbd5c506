"""The GPU path: every analysis gives the same numbers on CUDA as on the CPU (within float
tolerance), and how much faster CUDA is, measured in the same run.

    python benchmarks/gpu.py [--device cuda|cpu] [--small] [--repeats 3]

Checks, each run on the CPU (the reference) and on ``--device``:

1. CKA: the layer-by-layer linear CKA matrix of zoo:mlp-s0 against zoo:mlp-s1 on digits_noisy
   (analysis.similarity), the full estimator and the minibatch one. float64 throughout, so the
   tolerance is 1e-9 absolute on values in [0, 1] (only the summation order differs between devices).
2. LRP: analysis.lrp.attribute on zoo:mlp-s0 and zoo:cnn-s0 (digits_noisy), the epsilon rule and the
   epsilon-gamma-box composite. Error: ||R_dev - R_cpu|| / ||R_cpu|| over the batch.
3. SAE training: analysis.sae.train_sae (TopK) on fixed activations with a fixed seed, both SAEs
   scored on the CPU by analysis.sae.evaluate. Training on another device is not bit-identical
   (other summation orders and top-k tie breaks), and Adam on a non-convex loss carries a first
   difference through every later step, so the two runs end at different but equally good SAEs:
   the fraction of variance explained must agree within 0.02 absolute (the spread between two CPU
   seeds is printed beside it for scale), the dead-latent fraction within 0.05.
4. Vector field: analysis.vector_field.iterate of zoo:mlp-ae-b8 from the codes of digits_noisy, and
   the attractors. A row stops once its squared step is below tol, so two devices may stop a row a
   step apart: end points must agree within 10 sqrt(tol) + 1e-4 x the latent scale for 99% of the
   starts, convergence must agree for 99%, and every attractor holding 1% of the starts on one
   device must have one on the other within the merge distance.
5. Activations: analysis.activations.extract (no cache) of zoo:cnn-s0 on digits_noisy and of
   hf:minilm-random on the text set, every layer. Error: relative Frobenius norm per layer.

float32 checks (2 and 5) allow 1e-4 relative; where TF32 is in effect on the GPU (cuDNN
convolutions use it by default, matmuls when torch.set_float32_matmul_precision is not
"highest") they allow 5e-3: TF32 keeps 10 mantissa bits (unit roundoff 2^-11, about 5e-4) and a few layers add up.

Throughput is items per second on each device (samples, starts, attributions or training rows),
the best of ``--repeats`` timed runs after a warm-up, with torch.cuda.synchronize() before each
clock read; the ratio printed is device / CPU.

Without CUDA, ``--device cuda`` (the default) prints that it skipped and exits 0. ``--device cpu``
is the self-check: the same code path with the CPU as both sides (every error should be 0 and
every ratio about 1), so the script can be exercised anywhere (tests/test_gpu_bench.py does, at
tiny sizes). Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FLOAT32_TOL = 1e-4
TF32_TOL = 5e-3
FLOAT64_TOL = 1e-9
SAE_FVE_TOL = 0.02
SAE_DEAD_TOL = 0.05
AGREE_FRACTION = 0.99


@dataclass
class Sizes:
    """How much work each check does; ``small()`` is what the test runs."""

    cka_n: int = 3000  # stacked Gram matrices of 14 layers stay under GRAM_MEMORY_BYTES
    cka_batch: int = 500
    lrp_n: int = 1024
    sae_n: int = 8000
    sae_steps: int = 600
    vf_starts: int = 4000
    vf_steps: int = 500
    act_n: int = 10000
    text_n: int = 360  # the whole text set

    @classmethod
    def small(cls) -> Sizes:
        return cls(cka_n=64, cka_batch=16, lrp_n=8, sae_n=256, sae_steps=30, vf_starts=64, vf_steps=60,
                   act_n=32, text_n=8)


@dataclass
class Check:
    """One comparison: ``error`` against ``tol`` (smaller is better), the rates in items/s."""

    name: str
    error: float
    tol: float
    unit: str
    rate_cpu: float
    rate_dev: float
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.error) and self.error <= self.tol)

    @property
    def ratio(self) -> float:
        return self.rate_dev / self.rate_cpu if self.rate_cpu > 0 else float("nan")


def synchronize(device) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)


def rate(fn: Callable[[], object], items: int, device, repeats: int) -> tuple[float, object]:
    """(items per second of the best of ``repeats`` runs after one warm-up, the last result).
    ``repeats=0`` times a single run without warm-up (the test's smoke run, not a measurement)."""
    if repeats > 0:
        fn()  # warm-up: allocations, kernel selection, lazy initialisation
        synchronize(device)
    best = math.inf
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return items / max(best, 1e-12), out


def relative_error(got, want) -> float:
    """||got - want|| / ||want|| (Frobenius, in float64); 0 when both are zero."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return math.inf
    scale = np.linalg.norm(want)
    diff = np.linalg.norm(got - want)
    return float(diff / scale) if scale > 0 else float(diff)


def max_abs_error(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape or np.isnan(got).tolist() != np.isnan(want).tolist():
        return math.inf
    both = ~np.isnan(want)
    return float(np.abs(got[both] - want[both]).max()) if both.any() else 0.0


def float32_tol(device, conv: bool) -> tuple[float, str]:
    """The tolerance of a float32 check and why: looser where the GPU computes in TF32."""
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return FLOAT32_TOL, "float32"
    matmul = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    tf32 = matmul or (conv and torch.backends.cudnn.allow_tf32)
    return (TF32_TOL, "TF32 in effect") if tf32 else (FLOAT32_TOL, "float32")


def _digits(name: str, n: int):
    """``n`` rows of a digits set (digits_noisy has 100,000: enough work for a GPU)."""
    from analysis import data

    return data.load(name, n=n, seed=0)


def check_cka(cpu, dev, sizes: Sizes, repeats: int) -> list[Check]:
    from analysis import activations, models
    from analysis.similarity import similarity_matrix

    ds = _digits("digits_noisy", sizes.cka_n)
    a = activations.extract(models.load("zoo:mlp-s0"), ds, device=cpu, use_cache=False)
    b = activations.extract(models.load("zoo:mlp-s1"), ds, device=cpu, use_cache=False)
    out = []
    for label, batch in (("CKA matrix (linear)", None), (f"CKA minibatch ({sizes.cka_batch}/batch)", sizes.cka_batch)):
        def run(device, batch=batch):
            return similarity_matrix(a, b, "linear_cka", batch_size=batch, device=device).to_numpy()

        r_cpu, want = rate(lambda: run(cpu), len(ds), cpu, repeats)
        r_dev, got = rate(lambda: run(dev), len(ds), dev, repeats)
        out.append(Check(label, max_abs_error(got, want), FLOAT64_TOL, "samples/s", r_cpu, r_dev,
                         [f"{want.shape[0]}x{want.shape[1]} layers, n = {len(ds)}, max |diff|"]))
    return out


def check_lrp(cpu, dev, sizes: Sizes, repeats: int) -> list[Check]:
    from analysis import lrp, models

    x = np.asarray(_digits("digits_noisy", sizes.lrp_n).inputs, dtype=np.float32)
    out = []
    for ref in ("zoo:mlp-s0", "zoo:cnn-s0"):
        model = models.load(ref)
        tol, why = float32_tol(dev, conv=ref.startswith("zoo:cnn"))
        for rule, composite in (("epsilon", None), ("epsilon", "epsilon-gamma-box")):
            def run(device, model=model, rule=rule, composite=composite):
                return lrp.attribute(model, x, "predicted", rule=rule, composite=composite, device=device).relevance

            r_cpu, want = rate(lambda: run(cpu), len(x), cpu, repeats)
            r_dev, got = rate(lambda: run(dev), len(x), dev, repeats)
            out.append(Check(f"LRP {ref} {composite or rule}", relative_error(got, want), tol, "attributions/s",
                             r_cpu, r_dev, [why, f"n = {len(x)}"]))
    return out


def _sae_acts(n: int) -> np.ndarray:
    from analysis import activations, models

    ds = _digits("digits_noisy", n)
    return activations.extract(models.load("zoo:mlp-s0"), ds, ["net.relu2"], device="cpu",
                               use_cache=False)["net.relu2"]


def check_sae(cpu, dev, sizes: Sizes, repeats: int) -> list[Check]:
    from analysis.sae import evaluate, train_sae

    x = _sae_acts(sizes.sae_n)
    params = {"kind": "topk", "expansion": 4, "k": 8, "steps": sizes.sae_steps, "batch_size": 256}
    rows = params["steps"] * min(params["batch_size"], len(x))

    def scored(device, seed=0):
        sae = train_sae(x, seed=seed, device=device, **params)
        return evaluate(sae.to("cpu"), x)

    r_cpu, want = rate(lambda: scored(cpu), rows, cpu, repeats)
    r_dev, got = rate(lambda: scored(dev), rows, dev, repeats)
    spread = abs(scored(cpu, seed=1).fve - want.fve)
    fve = Check("SAE train (TopK) FVE", abs(got.fve - want.fve), SAE_FVE_TOL, "training rows/s", r_cpu, r_dev,
                [f"FVE cpu {want.fve:.4f}, device {got.fve:.4f}; CPU seed 0 vs 1 differ by {spread:.4f}"])
    dead = Check("SAE train (TopK) dead fraction", abs(got.dead_fraction - want.dead_fraction), SAE_DEAD_TOL,
                 "training rows/s", r_cpu, r_dev,
                 [f"dead cpu {want.dead_fraction:.3f}, device {got.dead_fraction:.3f}"])
    return [fve, dead]


def _attractors_matched(att_a, att_b, n: int) -> float:
    """Largest distance from an attractor holding >= 1% of the starts on one side to the nearest
    attractor on the other, in units of the merge distance (<= 1 means every one is matched)."""
    worst = 0.0
    for p, q in ((att_a, att_b), (att_b, att_a)):
        big = p.points[p.sizes >= max(1, 0.01 * n)]
        if len(big) == 0:
            continue
        if len(q.points) == 0:
            return math.inf
        d = np.linalg.norm(big[:, None, :] - q.points[None, :, :], axis=-1).min(1)
        worst = max(worst, float(d.max()) / max(p.merge_dist, q.merge_dist, 1e-12))
    return worst


def check_vector_field(cpu, dev, sizes: Sizes, repeats: int) -> list[Check]:
    import torch

    from analysis import models
    from analysis import vector_field as vf

    model = models.load("zoo:mlp-ae-b8")
    x = torch.from_numpy(np.asarray(_digits("digits_noisy", sizes.vf_starts).inputs, dtype=np.float32))
    with torch.no_grad():
        z0 = model.encode(x)
    tol = vf.DEFAULTS["tol"]

    def run(device):
        model.to(device)
        try:
            return vf.iterate(model.encode, model.decode, z0, max_steps=sizes.vf_steps, tol=tol, record_every=0,
                              device=device)
        finally:
            model.to("cpu")

    r_cpu, want = rate(lambda: run(cpu), len(z0), cpu, repeats)
    r_dev, got = rate(lambda: run(dev), len(z0), dev, repeats)
    near = 10 * math.sqrt(tol) + 1e-4 * want.scale
    far = np.linalg.norm(got.endpoints - want.endpoints, axis=1) > near
    disagree = got.converged != want.converged
    unit = "trajectories/s"
    checks = [
        Check("vector field end points (fraction off)", float(far.mean()), 1 - AGREE_FRACTION, unit, r_cpu, r_dev,
              [f"off = |diff| > {near:.2g}; largest |diff| {np.abs(got.endpoints - want.endpoints).max():.2g}"]),
        Check("vector field convergence (fraction differing)", float(disagree.mean()), 1 - AGREE_FRACTION, unit,
              r_cpu, r_dev, [f"converged cpu {want.converged.mean():.3f}, device {got.converged.mean():.3f}"]),
    ]
    att_cpu, att_dev = want.attractors(), got.attractors()
    checks.append(Check("vector field attractors (distance / merge distance)",
                        _attractors_matched(att_cpu, att_dev, len(z0)), 1.0, unit, r_cpu, r_dev,
                        [f"{att_cpu.count} attractors on cpu, {att_dev.count} on device"]))
    return checks


def check_activations(cpu, dev, sizes: Sizes, repeats: int) -> list[Check]:
    from analysis import activations, data, models

    out = []
    for ref, ds in (("zoo:cnn-s0", _digits("digits_noisy", sizes.act_n)),
                    ("hf:minilm-random", data.load("text", n=sizes.text_n, seed=0))):
        model = models.load(ref)
        tol, why = float32_tol(dev, conv=ref.startswith("zoo:cnn"))

        def run(device, model=model, ds=ds):
            return activations.extract(model, ds, device=device, use_cache=False)

        r_cpu, want = rate(lambda: run(cpu), len(ds), cpu, repeats)
        r_dev, got = rate(lambda: run(dev), len(ds), dev, repeats)
        errors = {layer: relative_error(got[layer], want[layer]) for layer in want}
        worst = max(errors, key=errors.get)
        out.append(Check(f"activations {ref} ({len(errors)} layers)", errors[worst], tol, "samples/s", r_cpu, r_dev,
                         [why, f"n = {len(ds)}, worst layer {worst}"]))
    return out


CHECKS = {"cka": check_cka, "lrp": check_lrp, "sae": check_sae, "vector_field": check_vector_field,
          "activations": check_activations}


def run_checks(device: str, sizes: Sizes, repeats: int = 3, only=None, report=print) -> list[Check]:
    """Every check (or those named in ``only``) with the CPU against ``device``."""
    import torch

    cpu, dev = torch.device("cpu"), torch.device(device)
    results: list[Check] = []
    for name, fn in CHECKS.items():
        if only and name not in only:
            continue
        for c in fn(cpu, dev, sizes, repeats):
            results.append(c)
            report(_line(c))
    return results


def _line(c: Check) -> str:
    verdict = "ok  " if c.passed else "FAIL"
    return (f"{verdict} {c.name:<52} error {c.error:9.2e} (tol {c.tol:.0e})  "
            f"{c.rate_cpu:10.1f} -> {c.rate_dev:10.1f} {c.unit:<16} x{c.ratio:6.2f}  {'; '.join(c.notes)}")


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for the self-check")
    ap.add_argument("--small", action="store_true", help="tiny sizes (seconds; what the test runs)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", choices=list(CHECKS), help="run only these checks")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: no CUDA GPU here (torch.cuda.is_available() is False). "
              "Run with --device cpu for the CPU-against-CPU self-check.")
        return 0
    sizes = Sizes.small() if args.small else Sizes()
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu (self-check)"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; cpu against {args.device} "
          f"({where}); best of {args.repeats} after a warm-up; ratio = {args.device} / cpu")
    results = run_checks(args.device, sizes, args.repeats, args.only)
    failed = [c.name for c in results if not c.passed]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks within tolerance"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
