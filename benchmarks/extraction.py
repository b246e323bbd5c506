"""Activation extraction throughput and peak memory: RepLens against a plain transformers loop.

What people do instead: ``model(**tokens, output_hidden_states=True)`` under
``torch.inference_mode()``, each hidden state mean-pooled over the valid tokens (attention mask,
as RepLens's "mean" pooling), the pooled batches kept in Python lists and concatenated at the end.
RepLens runs on the same texts, batch size, tokenizer settings (padding, truncation to 128
tokens) and layers, three ways:

- ``extract``: the default path, through the on-disk activation cache (written, then read back
  into memory; a fresh private store, so nothing is read from an earlier run);
- ``extract (no cache)``: ``extract(..., use_cache=False)``, batches collected in memory;
- ``extract_chunked``: the chunked Zarr cache only, nothing held in memory (its peak memory should
  not grow with n).

Models: a random-init GPT-2 (4 blocks, width 128, the tests' ``save_tiny`` in a temp folder,
opened as ``hf:/tmp/...``) and the bundled all-MiniLM-L6-v2 (``hf:minilm``). RepLens's default
layers map onto ``hidden_states`` indices (embeddings -> 0, block i -> i + 1); GPT-2's last
``hidden_states`` entry is the last block's output after the final LayerNorm ``ln_f``, which is not
a RepLens default layer, so that layer is timed but not compared (printed as such).

Each (model, method, n) runs in a fresh subprocess: it loads the model, builds the texts, runs one
warm-up batch, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), times the run and
reports ``ru_maxrss`` minus the RSS before the run, so imports and the model are not counted and
torch's native allocations are (tracemalloc would miss them). With ``--repeats`` each method runs
that many times per n, in rotated order; the table shows the best rows/s and the largest growth.

    python benchmarks/extraction.py                        # defaults: about 6 minutes on 2 idle cores
    python benchmarks/extraction.py --models gpt2 --n 10000 50000 200000
    python benchmarks/extraction.py --models minilm --n 10000 20000 --repeats 3
    python benchmarks/extraction.py --models gpt2 --n 10000 --methods baseline extract_chunked

Run it on an otherwise idle machine and note ``uptime``'s load average beside the numbers: rows/s
of both sides fall with other load, and not by the same factor. Memory is less sensitive, but the
baseline's growth is partly heap fragmentation (freed temporaries glibc keeps resident), which
varies from run to run by a hundred MB or more; RepLens releases them per layer
(:func:`analysis.resources.release_freed_memory`), so its growth stays near one batch's working
set. TransformerLens and nnsight are reported as installed or not; install them into a separate
virtual environment that keeps this torch (``python -m venv --system-site-packages``) and run the
script with that environment's python.

Texts: synthetic sentences of 3 to 30 words drawn from the shipped text set's vocabulary (seeded).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("baseline", "extract", "extract (no cache)", "extract_chunked")
DEFAULT_N = {"gpt2": [5000, 20000], "minilm": [1000, 2000]}
GPT2_SIZES = {"n_layer": 4, "n_embd": 128, "n_head": 4}
MAX_TOKENS = 128  # RepLens's default truncation (analysis.models.hf.MAX_TOKENS)
AGREEMENT_N = 256
FLAT_SLACK_MB = 25.0  # peak growth may rise this much (or 25%) from the smallest to the largest n


# --------------------------------------------------------------------------- inputs
def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of 3 to 30 words (the shipped sentences have 6 to 15) drawn from the text
    set's vocabulary."""
    from analysis import data

    words = sorted({w for t in data.load("text").inputs for w in re.findall(r"[A-Za-z']+", t)})
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 31, size=n)
    picks = rng.integers(0, len(words), size=int(lengths.sum()))
    out, at = [], 0
    for k in lengths:
        out.append(" ".join(words[i] for i in picks[at:at + k]).capitalize() + ".")
        at += k
    return out


def text_dataset(n: int, seed: int = 0):
    from analysis.data import Dataset

    texts = synthetic_texts(n, seed)
    return Dataset(f"bench-text-{n}-{seed}", "text", texts, None, None, np.arange(n), n, "all", seed, None,
                   "synthetic benchmark sentences")


def model_ref(name: str, workdir: Path) -> str:
    """The RepLens reference of a benchmark model; the tiny GPT-2 is written once into ``workdir``."""
    if name == "minilm":
        return "hf:minilm"
    if name != "gpt2":
        raise SystemExit(f"unknown model {name!r}: use gpt2 or minilm")
    folder = workdir / "tiny-gpt2"
    if not (folder / "config.json").exists():
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import save_tiny

        save_tiny("gpt2", folder, **GPT2_SIZES)
    return f"hf:{folder}"


def model_folder(ref: str) -> str:
    from analysis.models.hf import minilm_path

    rest = ref.split(":", 1)[1]
    return str(minilm_path()) if rest == "minilm" else rest


# --------------------------------------------------------------------------- layers
def hidden_state_indices(model) -> dict[str, int]:
    """RepLens default layer -> index into ``hidden_states``: embeddings 0, block i -> i + 1."""
    out = {}
    for layer in model.layers:
        out[layer] = 0 if layer.split(".")[-1] == "embeddings" else int(layer.rsplit(".", 1)[1]) + 1
    return out


def final_norm(module) -> str | None:
    """The norm the model applies after its last block before returning the last hidden state (GPT-2's
    ``ln_f``): ``hidden_states[-1]`` then is not the last block's output."""
    import torch

    for name in ("ln_f", "norm", "final_layer_norm"):
        if isinstance(getattr(module, name, None), torch.nn.Module):
            return name
    return None


def compared_layers(model) -> dict[str, int]:
    """The layers whose outputs are exactly a ``hidden_states`` entry."""
    idx = hidden_state_indices(model)
    last = max(idx.values())
    return {l: i for l, i in idx.items() if not (i == last and final_norm(model.module))}


def describe_layers(model) -> str:
    idx, exact = hidden_state_indices(model), compared_layers(model)
    parts = [f"{l} -> hidden_states[{i}]" + ("" if l in exact else f" (after {final_norm(model.module)}: not compared)")
             for l, i in idx.items()]
    return ", ".join(parts)


# --------------------------------------------------------------------------- the two ways
def baseline_pass(folder: str, texts: list[str], indices: list[int], batch_size: int) -> list[np.ndarray]:
    """A plain transformers loop: hidden states mean-pooled over valid tokens, batches in lists."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:  # GPT-2: pad with the end-of-text token, masked out below
        tok.pad_token = tok.eos_token
    model = AutoModel.from_pretrained(folder).eval()
    return baseline_run(model, tok, texts, indices, batch_size)


def baseline_run(model, tok, texts, indices, batch_size) -> list[np.ndarray]:
    import torch

    pooled: list[list[np.ndarray]] = [[] for _ in indices]
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=MAX_TOKENS,
                      return_tensors="pt")
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            for slot, k in enumerate(indices):
                h = out.hidden_states[k]
                pooled[slot].append(((h * mask).sum(1) / mask.sum(1)).numpy())
    return [np.concatenate(p, 0) for p in pooled]


def replens_pass(method: str, model, ds, batch_size: int) -> dict[str, np.ndarray]:
    """RepLens's activations of the model's default layers; ``extract_chunked`` returns caches."""
    from analysis import activations

    if method == "extract":
        return activations.extract(model, ds, batch_size=batch_size)
    if method == "extract (no cache)":
        return activations.extract(model, ds, batch_size=batch_size, use_cache=False)
    if method == "extract_chunked":
        return activations.extract_chunked(model, ds, batch_size=batch_size)
    raise ValueError(method)


def agreement(ref: str, n: int = AGREEMENT_N, batch_size: int = 32) -> dict[str, float]:
    """Largest relative difference (max |RepLens - baseline| / max |baseline|) per compared layer,
    over the three RepLens paths, on ``n`` texts. Needs REPLENS_STORE set to a private folder."""
    from analysis import models

    model = models.load(ref)
    ds = text_dataset(n, seed=1)
    layers = compared_layers(model)
    want = dict(zip(layers, baseline_pass(model_folder(ref), ds.inputs, list(layers.values()), batch_size)))
    worst = dict.fromkeys(layers, 0.0)
    for method in METHODS[1:]:
        got = replens_pass(method, model, ds, batch_size)
        for l in layers:
            x = got[l].read() if hasattr(got[l], "read") else got[l]
            err = float(np.abs(x - want[l]).max() / np.abs(want[l]).max())
            worst[l] = max(worst[l], err)
    return worst


# --------------------------------------------------------------------------- one measurement
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Set the kernel's peak-RSS mark (ru_maxrss) to the current RSS (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_here(method: str, ref: str, n: int, batch_size: int) -> dict:
    """Time one run in this process and its peak RSS above the RSS before it (after a warm-up batch)."""
    from analysis import models

    ds = text_dataset(n)
    if method == "baseline":
        from transformers import AutoModel, AutoTokenizer

        model = models.load(ref)
        indices = list(hidden_state_indices(model).values())
        folder = model_folder(ref)
        del model
        tok = AutoTokenizer.from_pretrained(folder)
        tok.pad_token = tok.pad_token or tok.eos_token
        net = AutoModel.from_pretrained(folder).eval()
        baseline_run(net, tok, ds.inputs[:batch_size], indices, batch_size)  # warm-up
        run = functools.partial(baseline_run, net, tok, ds.inputs, indices, batch_size)
    else:
        model = models.load(ref)
        replens_pass(method, model, text_dataset(batch_size, seed=2), batch_size)  # warm-up
        run = functools.partial(replens_pass, method, model, ds, batch_size)
    before = _rss_mb()
    exact = _reset_peak()
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del out
    return {"method": method, "n": n, "seconds": seconds, "rows_per_s": n / seconds,
            "peak_growth_mb": peak - before, "peak_reset": exact}


def measure(method: str, ref: str, n: int, batch_size: int, store: Path) -> dict:
    """:func:`measure_here` in a fresh Python process with its own empty result store."""
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store) as private:
        env = {**os.environ, "REPLENS_STORE": private}
        cmd = [sys.executable, __file__, "--child", method, ref, str(n), str(batch_size)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} n={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report
def table(name: str, rows: list[dict]) -> list[str]:
    base = {r["n"]: r for r in rows if r["method"] == "baseline"}
    lines = [f"{'n':>8} {'method':<20} {'rows/s':>9} {'x baseline':>10} {'peak RSS +MB':>13}"]
    for r in rows:
        ratio = r["rows_per_s"] / base[r["n"]]["rows_per_s"] if r["n"] in base else float("nan")
        lines.append(f"{r['n']:>8,} {r['method']:<20} {r['rows_per_s']:>9,.0f} {ratio:>9.2f}x "
                     f"{r['peak_growth_mb']:>13,.1f}")
    return [f"-- {name}"] + lines


def verdicts(rows: list[dict]) -> list[str]:
    """Plain statements of whether each target is met: throughput >= 1.0x the baseline for every
    RepLens path at every n, and extract_chunked's peak memory flat across n."""
    base = {r["n"]: r["rows_per_s"] for r in rows if r["method"] == "baseline"}
    out = []
    for method in METHODS[1:]:
        mine = [r for r in rows if r["method"] == method and r["n"] in base]
        if not mine:
            continue
        worst = min(r["rows_per_s"] / base[r["n"]] for r in mine)
        out.append(f"throughput {method}: worst {worst:.2f}x baseline -> target >= 1.0x "
                   + ("MET" if worst >= 1.0 else "NOT MET"))
    chunked = sorted((r for r in rows if r["method"] == "extract_chunked"), key=lambda r: r["n"])
    if len(chunked) >= 2:
        lo, hi = chunked[0]["peak_growth_mb"], chunked[-1]["peak_growth_mb"]
        flat = hi <= max(lo * 1.25, lo + FLAT_SLACK_MB)
        out.append(f"memory extract_chunked: +{lo:,.0f} MB at n={chunked[0]['n']:,}, +{hi:,.0f} MB at "
                   f"n={chunked[-1]['n']:,} -> flat target " + ("MET" if flat else "NOT MET"))
    if not all(r["peak_reset"] for r in rows):
        out.append("note: the peak-RSS mark could not be reset here; growth may include loading")
    return out


def rotated(methods: list[str], k: int) -> list[str]:
    """Round ``k``'s order: each method goes first in turn, so a drift in the machine's load does
    not always fall on the same one."""
    k %= len(methods)
    return list(methods[k:]) + list(methods[:k])


def best_of(runs: list[dict]) -> dict:
    """Repeated runs of one method and n: the best throughput (least disturbed by other load) and
    the largest peak memory growth (the conservative one)."""
    best = dict(max(runs, key=lambda r: r["rows_per_s"]))
    best["peak_growth_mb"] = max(r["peak_growth_mb"] for r in runs)
    best["peak_reset"] = all(r["peak_reset"] for r in runs)
    return best


def other_tools() -> list[str]:
    import importlib.util

    return [m for m in ("transformer_lens", "nnsight") if importlib.util.find_spec(m) is not None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["gpt2", "minilm"], choices=["gpt2", "minilm"])
    p.add_argument("--n", nargs="+", type=int, help="sizes (default: per model, see DEFAULT_N)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1, help="runs per method and n, in rotated order; best rows/s")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--child", nargs=4, metavar=("METHOD", "REF", "N", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        method, ref, n, batch = args.child
        print(json.dumps(measure_here(method, ref, int(n), int(batch))))
        return 0
    from analysis import models

    missing = ", ".join(sorted({"transformer_lens", "nnsight"} - set(other_tools())))
    print(f"TransformerLens / nnsight: {', '.join(other_tools()) or 'none'} installed"
          + (f" ({missing} not installed: not compared)" if missing else ""))
    with tempfile.TemporaryDirectory(prefix="replens-extraction-bench-") as tmp:
        work = Path(tmp)
        os.environ["REPLENS_STORE"] = str(work / "store")
        for name in args.models:
            ref = model_ref(name, work)
            model = models.load(ref)
            print(f"\n== {name}: {model.architecture}; batch {args.batch_size}; layers {describe_layers(model)}")
            err = agreement(ref)
            print(f"agreement at n={AGREEMENT_N}: max relative difference "
                  + ", ".join(f"{l} {e:.1e}" for l, e in err.items()))
            rows = []
            for n in args.n or DEFAULT_N[name]:
                runs = []
                for k in range(args.repeats):
                    for method in rotated(args.methods, k):
                        runs.append(measure(method, ref, n, args.batch_size, work / "runs"))
                        r = runs[-1]
                        print(f"  {name} n={n:,} {method}: {r['rows_per_s']:,.0f} rows/s, "
                              f"+{r['peak_growth_mb']:,.1f} MB", flush=True)
                rows += [best_of([r for r in runs if r["method"] == m]) for m in args.methods]
            print("\n".join(table(name, rows) + verdicts(rows)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
