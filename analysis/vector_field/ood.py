"""Out-of-distribution scores from the dynamics (the trajectory score) against the reconstruction
error, with AUROC and FPR at 95% TPR per OOD set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UserInputError
from .access import array_sha, latent_access, map_rows
from .dynamics import CACHE_VERSION, DEFAULTS, Trajectories, iterate


def auroc(in_scores, out_scores) -> float:
    """Area under the ROC curve for telling ``out`` (positive, higher score) from ``in``; ties count 1/2."""
    from scipy.stats import rankdata

    a, b = np.asarray(in_scores, float), np.asarray(out_scores, float)
    ranks = rankdata(np.concatenate([a, b]))
    u = ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


def fpr_at_95_tpr(in_scores, out_scores) -> float:
    """FPR95: with the threshold that keeps 95% of the in-distribution samples (score <= threshold),
    the fraction of out-of-distribution samples also kept (lower is better)."""
    thr = np.quantile(np.asarray(in_scores, float), 0.95)
    return float(np.mean(np.asarray(out_scores, float) <= thr))


def trajectory_score(traj: Trajectories, train_attractors) -> np.ndarray:
    """The paper's OOD score per start: mean Euclidean distance from each point of its trajectory
    [z_0, ..., z*] to the nearest training attractor. Needs the path recorded at every step."""
    if len(traj.recorded_steps) != traj.residuals.shape[0] + 1:
        raise UserInputError("The trajectory score needs every step: iterate with record_every=1.")
    att = np.asarray(train_attractors, dtype=np.float64)
    p = traj.path.astype(np.float64)  # (T+1, n, k)
    d = np.sqrt(np.maximum(((p[..., None, :] - att[None, None]) ** 2).sum(-1), 0)).min(-1)  # (T+1, n)
    valid = np.arange(len(p))[:, None] <= traj.steps[None, :]
    return (d * valid).sum(0) / valid.sum(0)


def reconstruction_error(encode, decode, x) -> np.ndarray:
    """Mean squared error per sample of decode(encode(x))."""
    import torch

    with torch.no_grad():
        xt = torch.as_tensor(x)
        rec = decode(encode(xt))
    return ((rec.double() - xt.double()) ** 2).reshape(len(xt), -1).mean(1).cpu().numpy()


def ood_table(in_scores: dict, out_scores: dict) -> "object":
    """AUROC and FPR95 per OOD set and score. ``in_scores``: score name -> array for the
    in-distribution set; ``out_scores``: set name -> {score name -> array}. Returns a DataFrame."""
    import pandas as pd

    rows = []
    for ood, scores in out_scores.items():
        for name, s in scores.items():
            rows.append({"OOD set": ood, "score": name, "AUROC": auroc(in_scores[name], s),
                         "FPR95": fpr_at_95_tpr(in_scores[name], s)})
    return pd.DataFrame(rows)


def ood_sets(x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard out-of-distribution sets made from in-distribution images in [0, 1]: uniform noise,
    inverted images (1 - x), and pixel-shuffled images (one random permutation per image)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    shuffled = np.stack([row[rng.permutation(x.shape[1])] for row in x])
    return {"noise": rng.uniform(0, 1, size=x.shape).astype(np.float32), "inverted": 1 - x,
            "pixel-shuffled": shuffled}


@dataclass
class OODResult:
    """Per-sample scores of the in-distribution set and each OOD set, for both scores, and the table."""

    scores: dict  # set name -> {"trajectory": array, "reconstruction": array}
    table: object  # DataFrame: OOD set, score, AUROC, FPR95
    in_name: str = "digits (held-out)"

    def winner(self, ood: str) -> str:
        """The score with the higher AUROC on ``ood`` (ties: 'tie')."""
        t = self.table[self.table["OOD set"] == ood].set_index("score")["AUROC"]
        if abs(t["trajectory"] - t["reconstruction"]) < 1e-9:
            return "tie"
        return str(t.idxmax())


SCORE_NAMES = ("trajectory", "reconstruction")


def ood_scores(model, train_attractors, in_x, out_sets: dict, max_steps: int = DEFAULTS["max_steps"],
               tol: float = DEFAULTS["tol"], device=None, store=None, use_cache: bool = True,
               progress: Callable[[float, str], None] | None = None) -> OODResult:
    """The trajectory score (mean distance of each trajectory to the training attractors) and the
    reconstruction error for ``in_x`` and every set in ``out_sets``; AUROC and FPR95 of each score
    for in-distribution against each OOD set (higher score = more out of distribution)."""
    import torch

    from ..store import default_store, make_key

    if len(train_attractors) == 0:
        raise UserInputError("No training attractors: no training start converged. Raise the step cap.")
    sets = {"in": np.asarray(in_x, dtype=np.float32), **{k: np.asarray(v, dtype=np.float32)
                                                          for k, v in out_sets.items()}}
    store = store or default_store()
    scores: dict = {}
    report = progress or (lambda f, m: None)
    for i, (name, x) in enumerate(sets.items()):
        key = make_key("vector_field_ood", model=model.sha256, x=array_sha(x), att=array_sha(train_attractors),
                       max_steps=int(max_steps), tol=float(tol), v=CACHE_VERSION)
        hit = store.get(key) if use_cache else None
        if hit is None:
            report(i / len(sets), f"trajectories of {name}")
            with latent_access(model, device) as (enc, dec):
                z0 = map_rows(enc, x)
                traj = iterate(enc, dec, torch.from_numpy(z0), max_steps, tol, record_every=1)
                hit = {"trajectory": trajectory_score(traj, train_attractors),
                       "reconstruction": reconstruction_error(enc, dec, torch.from_numpy(x))}
            if use_cache:
                store.put(key, hit, {"model": model.ref, "set": name}, kind="vector_field")
        scores[name] = hit
    report(1.0, "done")
    ins = scores.pop("in")
    return OODResult(scores={"in": ins, **scores}, table=ood_table(ins, scores))


def ood_verdict(result: OODResult) -> str:
    """One plain sentence per OOD set saying which score separates it from the in-distribution set
    better (AUROC), and by how much."""
    lines = []
    sets = list(result.table["OOD set"].unique())
    winners = {result.winner(o) for o in sets}
    if len(winners) == 1 and "tie" not in winners:
        name = "Reconstruction error" if winners == {"reconstruction"} else "The trajectory score"
        lines.append(f"{name} wins on {'every one' if len(sets) > 1 else 'the one'} of the {len(sets)} OOD set"
                     f"{'s' if len(sets) > 1 else ''}.")
    for ood in sets:
        t = result.table[result.table["OOD set"] == ood].set_index("score")
        a_t, a_r = float(t.loc["trajectory", "AUROC"]), float(t.loc["reconstruction", "AUROC"])
        w = result.winner(ood)
        if w == "tie":
            lines.append(f"{ood}: both scores tie (AUROC {a_t:.3f}).")
            continue
        best, other = (a_r, a_t) if w == "reconstruction" else (a_t, a_r)
        name = "reconstruction error" if w == "reconstruction" else "the trajectory score"
        note = " — below chance: that score ranks these inputs as *more* typical than the digits" if other < 0.5 else ""
        lines.append(f"{ood}: {name} wins (AUROC {best:.3f} vs {other:.3f}{note}).")
    return " ".join(lines)
