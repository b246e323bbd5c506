"""LRP throughput: RepLens against captum 0.9's LRP on the same model, rule and batch.

For a batch of 64 digits through zoo:mlp-s0 and zoo:cnn-s0 (epsilon and z+ rules, where captum is
correct), prints attributions per second for both, the ratio, and the largest difference between
the two relevance maps relative to their scale (float32 and float64). Then MiniLM (hf:minilm) on 64
sentences of the text set, explaining a topic probe's score: captum cannot run on it (no rules for
LayerNorm, GELU, attention), so its throughput is printed alone, with the conservation of a
bias-free run for reference.

    python benchmarks/lrp.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def paired_times(fa, fb, repeats: int) -> tuple[float, float, float]:
    """Median time of each and the median of the per-pair ratios b / a, the two run alternately so
    that a change in machine load hits both (the CPU may be shared)."""
    fa(), fb()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        for fn, acc in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    return float(np.median(ta)), float(np.median(tb)), float(np.median(np.array(tb) / np.array(ta)))


def main() -> int:
    import torch

    from analysis import data, lrp, models

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} alternating runs\n")

    x = data.load("digits", n=64).inputs
    print(f"{'model':<12}{'rule':<9}{'RepLens /s':>12}{'captum /s':>12}{'ratio':>8}{'max |diff| / max |R|':>32}")
    for ref in ("zoo:mlp-s0", "zoo:cnn-s0"):
        m = models.load(ref)
        for rule in ("epsilon", "zplus"):
            ours, theirs, ratio = paired_times(lambda: lrp.attribute(m, x, "predicted", rule=rule),
                                               lambda: lrp.attribute(m, x, "predicted", rule=rule, backend="captum"),
                                               args.repeats)
            diffs = []
            for net, xx in ((m, x), (copy.deepcopy(m.module).double(), torch.as_tensor(x, dtype=torch.float64))):
                a = lrp.attribute(net, xx, "predicted", rule=rule, epsilon=1e-9).relevance
                b = lrp.attribute(net, xx, "predicted", rule=rule, epsilon=1e-9, backend="captum").relevance
                diffs.append(np.abs(a - b).max() / np.abs(b).max())
            print(f"{ref:<12}{rule:<9}{len(x) / ours:>12.0f}{len(x) / theirs:>12.0f}{ratio:>7.1f}x"
                  f"{f'{diffs[0]:.1e} (f32), {diffs[1]:.1e} (f64)':>32}")

    ds = data.load("text", n=64, seed=0)
    m = models.load("hf:minilm")
    probe = lrp.fit_topic_probe(m, ds)
    target = probe.target("predicted")
    sentences = list(ds.inputs)
    t = best_time(lambda: lrp.attribute(m, sentences, target), max(1, args.repeats // 2))
    plain = best_time(lambda: lrp.gradient_x_input(m, sentences, target), max(1, args.repeats // 2))
    a = lrp.attribute(m, sentences, target)
    print(f"\nhf:minilm, 64 sentences, topic-probe score: {len(sentences) / t:.1f} attributions/s "
          f"({t:.2f} s per batch; plain gradient x input, one forward and backward: {plain:.2f} s); "
          f"median sum(R)/f with biases {np.median(a.conservation):.3f}")
    reason = lrp.captum_supported(m)
    print(f"captum on MiniLM: not run ({reason})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
