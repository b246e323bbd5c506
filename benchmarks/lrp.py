"""LRP throughput: RepLens against zennit 0.5.1 and captum 0.9 on the same model, rule and batch.

Cases: zoo:mlp-s0 and zoo:cnn-s0 on 64 digits (explaining the predicted class), and a tiny
random-init BERT (BertConfig) and GPT-2 (GPT2Config) on 64 sentences of the text set (explaining a
fixed linear probe of the mean-pooled last layer), each under epsilon, z+ and the composites
epsilon-plus-flat and epsilon-gamma-box (box bounds [0, 1]). Per case: attributions per second of
each library, RepLens's ratio to each (median of per-round ratios, the libraries run alternately
round after round so that a change in the shared machine's load hits all of them), the largest
difference between the relevance maps relative to the reference map's largest entry (float32), and
the 1-minute load average during the case. Then MiniLM (hf:minilm): RepLens's LRP against plain
gradient x input (tokenise, one forward, one backward, in torch with nothing added) - the limit.

Matched conventions: every stabiliser 1e-6; biases in the denominators (zennit's default,
``zero_params=None``; RepLens ``bias=True``; captum's epsilon) except for z+, run with biases left
out (zennit ``zero_params="bias"``, RepLens ``bias=False``, captum's ``Alpha1_Beta0_Rule(set_bias_to_zero=True)``)
because captum's z+ has no other. zennit runs its own composites (``EpsilonPlusFlat``,
``EpsilonGammaBox``) and, for the single rules, a ``LayerMapComposite`` of ``layer_map_base`` plus the
rule on every Linear/Conv layer (as tests/test_lrp_zennit.py). No zennit canonizer applies to these
models (they have no BatchNorm and no torchvision ResNet blocks). Every library is used as its
documentation shows, per batch: captum sets its rules and builds ``LRP(net)``, zennit enters
``Gradient(net, composite)``, RepLens calls ``lrp.attribute`` (which does its own forward pass for
the prediction; the other two get the predicted classes, tokens and embeddings precomputed).

What each library supports on transformers: captum raises TypeError on LayerNorm, GELU and
embedding modules (no transformer runs). zennit runs, but has rules only for nn.Linear/Conv (GPT-2's
transformers ``Conv1D`` is neither, so it gets the plain gradient), none for LayerNorm, attention or
transformers' GELU module, so its maps are not LRP there and differ from RepLens's (which holds the
normalisation statistics and attention weights constant and passes relevance through GELU, AttnLRP /
CP-LRP): the difference column is printed for completeness, not as an agreement check.

zennit is not a RepLens dependency: it requires torchvision, and the PyPI torchvision does not import
with the CPU torch here. It goes into its own virtual environment that sees the main one's packages:

    python -m venv --system-site-packages /root/zennit-venv
    /root/zennit-venv/bin/pip install --no-deps -r requirements-bench-lrp.txt

This script puts that venv's site-packages at the end of ``sys.path`` and imports zennit with a stub
``torchvision`` module in ``sys.modules`` for the duration of the import (zennit imports only the two
ResNet block classes from it, for a canonizer not used here), so the three libraries run in one
process and alternate. Without the venv it reports captum alone and says so.

    python benchmarks/lrp.py [--repeats 7] [--threads 1] [--clock wall|cpu] [--zennit-site PATH]

On a CPU shared with other jobs, ``--clock cpu`` times each call by this process's CPU time (all
libraries run single-threaded in this process), which other jobs' load disturbs far less.
"""
from __future__ import annotations

import argparse
import copy
import importlib.machinery
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_ZENNIT_SITE = "/root/zennit-venv/lib/python3.11/site-packages"
METHODS = ("epsilon", "zplus", "epsilon-plus-flat", "epsilon-gamma-box")
EPS = 1e-6


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def paired_times(fns: dict, repeats: int) -> tuple[dict, dict, float]:
    """Median seconds of each function and the median per-round ratio of each to the first, the
    functions run alternately round after round (a change in machine load hits all of them), and
    the mean 1-minute load average over the rounds."""
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    loads = []
    for _ in range(repeats):
        for k, fn in fns.items():
            t = clock()
            fn()
            times[k].append(clock() - t)
        loads.append(os.getloadavg()[0])
    first = np.array(times[next(iter(fns))])
    med = {k: float(np.median(v)) for k, v in times.items()}
    ratio = {k: float(np.median(np.array(v) / first)) for k, v in times.items()}
    return med, ratio, float(np.mean(loads))


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64).reshape(np.shape(a))
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# --------------------------------------------------------------------------- zennit
def import_zennit(site: str):
    """zennit's modules, imported from the venv at ``site`` with a stub torchvision; None if absent."""
    if not Path(site, "zennit").is_dir():
        return None
    import torch

    stub = {}
    if "torchvision" not in sys.modules:
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.Bottleneck = type("Bottleneck", (torch.nn.Module,), {})  # zennit's torchvision canonizers match
        resnet.BasicBlock = type("BasicBlock", (torch.nn.Module,), {})  # these classes; no model here has them
        tv, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
        tv.models, models.resnet = models, resnet
        for name, mod in (("torchvision", tv), ("torchvision.models", models), ("torchvision.models.resnet", resnet)):
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
            stub[name] = mod
        sys.modules.update(stub)
    if site not in sys.path:
        sys.path.append(site)  # last: the main environment's packages win
    try:
        import zennit.attribution
        import zennit.composites
        import zennit.rules
        import zennit.types
    finally:
        for name in stub:  # nothing else in this process sees a torchvision
            sys.modules.pop(name, None)
    return zennit


def zennit_composite(zennit, method: str, bias: bool):
    import torch

    Z, R, T = zennit.composites, zennit.rules, zennit.types
    zero = None if bias else "bias"
    if method == "epsilon-plus-flat":
        return Z.EpsilonPlusFlat(epsilon=EPS, stabilizer=EPS, zero_params=zero)
    if method == "epsilon-gamma-box":
        return Z.EpsilonGammaBox(low=torch.tensor(0.0), high=torch.tensor(1.0), epsilon=EPS, gamma=0.25,
                                 stabilizer=EPS, zero_params=zero)
    rule = R.Epsilon(epsilon=EPS, zero_params=zero) if method == "epsilon" else R.ZPlus(stabilizer=EPS, zero_params=zero)
    return Z.LayerMapComposite(Z.layer_map_base(EPS) + [(T.Convolution, rule), (T.Linear, rule)])


def zennit_run(zennit, net, x, method: str, bias: bool, seed_fn):
    """zennit's relevance at ``x`` (gradient seeded with ``seed_fn(output)``, the output relevance)."""
    import torch

    xx = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), zennit.attribution.Gradient(net, zennit_composite(zennit, method, bias)) as attributor:
        _, relevance = attributor(xx, seed_fn)
    return relevance


# --------------------------------------------------------------------------- captum
def captum_run(net, reshape, x, codes, method: str):
    """captum 0.9's LRP (epsilon, or z+ without biases) on a captum-readable sequential net."""
    import torch
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule

    for m in net.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            m.rule = EpsilonRule(EPS) if method == "epsilon" else Alpha1_Beta0_Rule(set_bias_to_zero=True)
        elif isinstance(m, (torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d)):
            m.rule = EpsilonRule(EPS)
        elif isinstance(m, torch.nn.MaxPool2d):
            m.rule = EpsilonRule(1e-30)  # winner takes all, as in zennit and RepLens
    xr = reshape(x).detach().clone().requires_grad_(True)
    target = [(c, 0, 0) for c in codes] if xr.dim() == 4 else list(codes)
    with torch.enable_grad():
        return LRP(net).attribute(xr, target=target).reshape(len(x), -1)


# --------------------------------------------------------------------------- cases
def vision_cases(zennit, args):
    import torch

    from analysis import data, lrp, models
    from analysis.lrp.captum_backend import _captum_sequential

    x = data.load("digits", n=args.batch).inputs
    xt = torch.as_tensor(x)
    for ref in ("zoo:mlp-s0", "zoo:cnn-s0"):
        m = models.load(ref)
        with torch.no_grad():
            codes = m.module(xt).argmax(1)
        one_hot = torch.nn.functional.one_hot(codes, 10)
        captum_net, reshape = _captum_sequential(copy.deepcopy(m.module))
        for p in captum_net.parameters():
            p.requires_grad_(False)
        zennit_net = copy.deepcopy(m.module).eval()  # zennit's hooks never reach the shared model
        for method in METHODS:
            bias = method != "zplus"
            fns = {"RepLens": lambda: lrp.attribute(m, x, "predicted", rule=method, epsilon=EPS, bias=bias)}
            if method in ("epsilon", "zplus"):
                fns["captum"] = lambda: captum_run(captum_net, reshape, xt, codes.tolist(), method)
            if zennit is not None:
                fns["zennit"] = lambda: zennit_run(zennit, zennit_net, xt, method, bias, lambda out: out * one_hot)
            ours = lrp.attribute(m, x, "predicted", rule=method, epsilon=EPS, bias=bias).relevance
            diffs = {k: rel_diff(ours, fn().detach().numpy()) for k, fn in fns.items() if k != "RepLens"}
            yield ref, method, bias, len(x), fns, diffs, {} if "captum" in fns else {"captum": "no such rule"}


def tiny_transformer(kind: str, folder: Path):
    """A tiny random-init BERT or GPT-2 with MiniLM's tokenizer, saved as a transformers folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2Model

    from analysis.models.hf import minilm_path

    torch.manual_seed(0)
    if kind == "bert":
        net = BertModel(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=128, max_position_embeddings=128))
    else:
        net = GPT2Model(GPT2Config(vocab_size=30522, n_embd=64, n_layer=2, n_head=2, n_positions=128))
    net.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(folder)


class Scored:
    """The explained score of a text model as a module of its input embeddings (for zennit)."""

    def __new__(cls, hf, mask, w):
        import torch

        from analysis.lrp import sentence_embedding

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.hf = hf

            def forward(self, embeds):
                hidden = self.hf(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
                return (sentence_embedding(hidden, mask) @ w).reshape(-1, 1)

        return Net().eval()


def text_cases(zennit, args, tmp: Path):
    import torch

    from analysis import data, lrp, models
    from analysis.models.hf import MAX_TOKENS

    sentences = list(data.load("text", n=args.batch, seed=0).inputs)
    for kind in ("bert", "gpt2"):
        tiny_transformer(kind, tmp / kind)
        m = models.load(f"hf:{tmp / kind}")
        g = torch.Generator().manual_seed(1)
        w = torch.randn(m.module.config.hidden_size, generator=g)
        target = lambda e: e @ w  # noqa: E731
        enc = m.tokenizer(sentences, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        mask = enc["attention_mask"]
        zennit_net = Scored(copy.deepcopy(m.module), mask, w)
        with torch.no_grad():
            embeds = m.module.get_input_embeddings()(enc["input_ids"])
        captum_reason = captum_refusal(Scored(copy.deepcopy(m.module), mask, w), embeds)
        a = lrp.attribute(m, sentences, target, epsilon=EPS, bias=False)
        print(f"  tiny-{kind}: RepLens epsilon without biases conserves: median sum(R)/f = "
              f"{np.median(a.conservation):.6f}; zennit's map is not LRP here (see the docstring)", flush=True)
        for method in METHODS:
            bias = method != "zplus"
            fns = {"RepLens": lambda: lrp.attribute(m, sentences, target, rule=method, epsilon=EPS, bias=bias)}
            if zennit is not None:
                fns["zennit"] = lambda: zennit_run(zennit, zennit_net, embeds, method, bias, lambda out: out)
            ours = fns["RepLens"]().relevance
            diffs = {}
            if zennit is not None:
                theirs = (fns["zennit"]().sum(-1) * mask).detach().numpy()
                diffs["zennit"] = rel_diff(ours, theirs)
            yield f"tiny-{kind}", method, bias, len(sentences), fns, diffs, {"captum": captum_reason}


def captum_refusal(net, embeds) -> str:
    """What captum says when asked to explain a transformer."""
    import torch
    from captum.attr import LRP

    try:
        with torch.enable_grad():
            LRP(net).attribute(embeds.clone().requires_grad_(True), target=0)
    except Exception as exc:  # noqa: BLE001 - the message is the finding
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
    return "ran"


def print_table(rows, zennit_ok: bool):
    head = f"{'model':<12}{'method':<19}{'bias':<6}{'RepLens/s':>10}{'captum/s':>10}{'ratio':>7}"
    head += f"{'zennit/s':>10}{'ratio':>7}" if zennit_ok else ""
    head += f"{'diff captum':>13}" + (f"{'diff zennit':>13}" if zennit_ok else "") + f"{'load':>6}"
    print(head)
    for model, method, bias, n, med, ratio, diffs, skipped, load in rows:
        line = f"{model:<12}{method:<19}{str(bias):<6}{n / med['RepLens']:>10.0f}"
        for lib in ("captum",) + (("zennit",) if zennit_ok else ()):
            if lib in med:
                line += f"{n / med[lib]:>10.0f}{ratio[lib]:>6.2f}x"
            else:
                line += f"{'-':>10}{'-':>7}"
        for lib in ("captum",) + (("zennit",) if zennit_ok else ()):
            line += f"{diffs[lib]:>13.1e}" if lib in diffs else f"{'-':>13}"
        print(line + f"{load:>6.1f}")
    notes = sorted({f"{model}: captum not run ({s['captum']})" for model, *_, s, _ in rows if "captum" in s})
    for note in notes:
        print("  " + note)


def minilm(args):
    import torch

    from analysis import data, lrp, models
    from analysis.lrp import sentence_embedding
    from analysis.models.hf import MAX_TOKENS

    ds = data.load("text", n=args.batch, seed=0)
    m = models.load("hf:minilm")
    target = lrp.fit_topic_probe(m, ds).target("predicted")
    sentences = list(ds.inputs)
    net = m.module

    def plain():
        """Gradient x input in torch with nothing added: tokenise, one forward, one backward."""
        enc = m.tokenizer(sentences, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        with torch.enable_grad():
            e = net.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_(True)
            hidden = net(inputs_embeds=e, attention_mask=enc["attention_mask"],
                         token_type_ids=enc.get("token_type_ids")).last_hidden_state
            f, _ = target(sentence_embedding(hidden, enc["attention_mask"]))
            g, = torch.autograd.grad(f.sum(), e)
        return (e * g).sum(-1) * enc["attention_mask"]

    fns = {"LRP": lambda: lrp.attribute(m, sentences, target, epsilon=EPS),
           "plain": plain, "gxi": lambda: lrp.gradient_x_input(m, sentences, target)}
    med, ratio, load = paired_times(fns, args.repeats)
    a = lrp.attribute(m, sentences, target, epsilon=EPS)
    n = len(sentences)
    print(f"\nhf:minilm, {n} sentences, topic-probe score (load {load:.1f}):")
    print(f"  RepLens LRP (epsilon)           {n / med['LRP']:7.1f} /s  ({med['LRP']:.3f} s per batch)")
    print(f"  plain gradient x input (torch)  {n / med['plain']:7.1f} /s  ({med['plain']:.3f} s)   "
          f"LRP throughput / plain: {ratio['plain']:.2f}x")
    print(f"  RepLens gradient_x_input        {n / med['gxi']:7.1f} /s  ({med['gxi']:.3f} s)   "
          f"LRP throughput / it: {ratio['gxi']:.2f}x")
    print(f"  sum(R)/f with biases (they take their share): median {np.median(a.conservation):.4f}")


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads for every library (0: torch's default)")
    p.add_argument("--zennit-site", default=DEFAULT_ZENNIT_SITE, help="site-packages of the zennit venv")
    p.add_argument("--only", choices=("vision", "text", "minilm"), help="run one part")
    p.add_argument("--clock", choices=tuple(CLOCK), default="wall",
                   help="wall time, or this process's CPU time (with one thread: robust to other jobs' load)")
    args = p.parse_args()
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    zennit = import_zennit(args.zennit_site)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}; medians of "
          f"{args.repeats} alternating rounds ({args.clock} clock); ratio = RepLens throughput / theirs")
    if zennit is None:
        print(f"zennit not found at {args.zennit_site}: captum alone (see this file's docstring to install it).")
    else:
        print(f"zennit {getattr(zennit, '__version__', '0.5.1')} from {args.zennit_site}")
    print()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        parts = []
        if args.only in (None, "vision"):
            parts.append(vision_cases(zennit, args))
        if args.only in (None, "text"):
            parts.append(text_cases(zennit, args, Path(tmp)))
        for part in parts:
            for model, method, bias, n, fns, diffs, skipped in part:
                med, ratio, load = paired_times(fns, args.repeats)
                rows.append((model, method, bias, n, med, ratio, diffs, skipped, load))
                print(f"  {model} {method}: " + ", ".join(f"{k} {n / s:.0f}/s" for k, s in med.items()),
                      flush=True)
    if rows:
        print()
        print_table(rows, zennit is not None)
    if args.only in (None, "minilm"):
        minilm(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
