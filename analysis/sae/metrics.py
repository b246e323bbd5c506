"""How good an SAE is: L0, MSE, the fraction of variance explained over the whole set, dead and
dense latents, shrinkage (:func:`evaluate`), and the task loss with its reconstruction spliced into
the model, scored against mean ablation (:func:`downstream`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import UserInputError
from ..validation import as_matrix
from .model import SparseAutoencoder

DENSE_FRACTION = 0.1  # a feature active on more than 10% of inputs is "dense"


@dataclass
class SAEMetrics:
    n: int
    l0: float  # mean number of active latents per input
    mse: float  # mean squared error per dimension
    fve: float  # fraction of variance explained, over the whole set
    dead_fraction: float  # latents never active on the set
    dense_fraction: float  # latents active on more than DENSE_FRACTION of inputs
    norm_ratio: float  # mean ||x^|| / ||x||
    cosine: float  # mean cos(x, x^)
    density: np.ndarray = field(repr=False)  # per latent, fraction of inputs where it is active
    density_edges: np.ndarray = field(repr=False)  # log10 bins of the live latents' densities
    density_counts: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not isinstance(v, np.ndarray)}


def evaluate(sae: SparseAutoencoder, acts, batch_size: int = 4096) -> SAEMetrics:
    """L0, MSE, fraction of variance explained (1 - sum||x - x^||^2 / sum||x - mean||^2 over the
    whole set), dead and dense fractions, the log10 density histogram and shrinkage. ``acts`` is
    an (n x d) array or an :class:`~analysis.activations.ActivationCache`, read chunk by chunk
    (two passes: the mean, then the sums)."""
    from ..activations import ActivationCache

    if isinstance(acts, ActivationCache):
        n, d = acts.shape
        blocks = lambda: (x for _, x in acts.iter_chunks())  # noqa: E731
    else:
        x = as_matrix(acts, "activations", dtype=np.float32)
        (n, d), blocks = x.shape, lambda: (x[i: i + batch_size] for i in range(0, len(x), batch_size))
    if d != sae.d_in:
        raise UserInputError(f"The activations have {d} dimensions; this SAE reads {sae.d_in}.")
    mean = sum(b.astype(np.float64).sum(0) for b in blocks()) / max(n, 1)
    sse = total = l0 = ratio = cos = 0.0
    nonzero = 0  # rows with ||x|| > 0: shrinkage is undefined on a zero input
    active = np.zeros(sae.d_sae, dtype=np.int64)
    for xb in blocks():
        f = sae.encode(xb)
        xh = sae.decode(f).astype(np.float64)
        xb64 = xb.astype(np.float64)
        sse += float(((xb64 - xh) ** 2).sum())
        total += float(((xb64 - mean) ** 2).sum())
        on = f > 0
        l0 += float(on.sum())
        active += on.sum(0)
        nx, nh = np.linalg.norm(xb64, axis=1), np.linalg.norm(xh, axis=1)
        ok = nx > 0
        nonzero += int(ok.sum())
        ratio += float((nh[ok] / nx[ok]).sum())
        cos += float(((xb64[ok] * xh[ok]).sum(1) / np.maximum(nx[ok] * nh[ok], 1e-300)).sum())
    density = active / n
    live = density[density > 0]
    edges = np.linspace(np.floor(np.log10(1.0 / n)), 0.0, 21)
    counts = np.histogram(np.log10(live), bins=edges)[0] if len(live) else np.zeros(20, dtype=np.int64)
    return SAEMetrics(n=n, l0=l0 / n, mse=sse / (n * d), fve=1.0 - sse / total if total > 0 else float("nan"),
                      dead_fraction=float((density == 0).mean()), dense_fraction=float((density > DENSE_FRACTION).mean()),
                      norm_ratio=ratio / max(nonzero, 1), cosine=cos / max(nonzero, 1), density=density, density_edges=edges, density_counts=counts)


@dataclass
class Downstream:
    metric: str  # "cross-entropy" (classifiers) or "reconstruction MSE" (autoencoders)
    clean: float
    spliced: float  # the SAE's reconstruction in place of the layer
    ablated: float  # the layer replaced by its mean over the data
    score: float  # (ablated - spliced) / (ablated - clean): 1 = as good as the model, 0 = as bad as ablation
    accuracy_clean: float | None = None
    accuracy_spliced: float | None = None
    accuracy_ablated: float | None = None


def downstream(sae: SparseAutoencoder, model, layer: str, data, batch_size: int = 256, device=None) -> Downstream:
    """Splice the SAE's reconstruction into ``model`` in place of ``layer``'s output and report the
    task loss (and accuracy) against the clean model and mean ablation. Needs a layer whose output
    is one vector per sample and a model with a task: a classifier (labels) or an autoencoder."""
    from ..activations import extract
    from ..device import pick

    if model.kind not in ("classifier", "autoencoder"):
        raise UserInputError(f"{model.ref} has no task loss ({model.kind}); the downstream check needs a classifier "
                             "or an autoencoder.")
    if model.kind == "classifier" and data.labels is None:
        raise UserInputError("The downstream check of a classifier needs labelled data.")
    mods = model.hookable()
    if layer not in mods:
        raise UserInputError(f"{model.ref} has no hookable layer {layer!r}.")
    mean = torch.from_numpy(extract(model, data, [layer])[layer].astype(np.float32).mean(0))
    dev = pick(device)
    sae_dev = _copy_to(sae, dev)
    results = {}
    for mode in ("clean", "spliced", "ablated"):
        def hook(module, inputs, out, mode=mode):
            if out.ndim != 2:
                raise UserInputError(f"Layer {layer} outputs shape {tuple(out.shape[1:])} per sample; splicing needs one "
                                     "vector per sample (the SAE was trained on pooled activations).")
            if mode == "spliced":
                return sae_dev(out.float()).to(out.dtype)
            return mean.to(out.device, out.dtype).expand_as(out).clone()

        loss_sum, correct, count = 0.0, 0, 0
        with model.lock:
            model.to(dev)
            handle = None if mode == "clean" else mods[layer].register_forward_hook(hook)
            try:
                with torch.no_grad():
                    for batch in model.batches(data, batch_size, dev):
                        out = model.run(batch).float()
                        rows = batch.rows
                        if model.kind == "classifier":
                            y = torch.from_numpy(np.asarray(data.labels[rows])).long().to(out.device)
                            loss_sum += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
                            correct += int((out.argmax(1) == y).sum())
                        else:
                            target = torch.from_numpy(np.asarray(data.inputs[rows], dtype=np.float32)).to(out.device)
                            loss_sum += float(((out.flatten(1) - target) ** 2).mean(1).sum())
                        count += out.shape[0]
            finally:
                if handle is not None:
                    handle.remove()
                model.to("cpu")
        results[mode] = (loss_sum / count, correct / count if model.kind == "classifier" else None)
    clean, spliced, ablated = (results[m][0] for m in ("clean", "spliced", "ablated"))
    gap = ablated - clean
    score = (ablated - spliced) / gap if abs(gap) > 1e-12 else float("nan")
    return Downstream("cross-entropy" if model.kind == "classifier" else "reconstruction MSE", clean, spliced, ablated,
                      score, results["clean"][1], results["spliced"][1], results["ablated"][1])


def _copy_to(sae: SparseAutoencoder, device) -> SparseAutoencoder:
    if str(device) == "cpu":
        return sae
    import copy

    return copy.deepcopy(sae).to(device)
