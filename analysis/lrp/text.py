"""What a text encoder's tokens contribute to: a topic probe's score (a logistic regression on the
mean-pooled sentence embeddings) or the cosine similarity of two sentences' embeddings; the token
relevance of a whole text dataset, and the agreement of two models' token maps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UserInputError
from .agreement import rank_agreement
from .attribution import Attribution, attribute


@dataclass
class TopicProbe:
    """A linear probe on a text model's sentence embeddings (logistic regression, one score per topic).

    The explained output for topic c is w_c . e(x) + b_c; the intercept b_c gets no relevance."""

    coef: np.ndarray  # (topics, d)
    intercept: np.ndarray  # (topics,)
    topics: list[str]
    accuracy: float

    def target(self, topic="predicted") -> Callable:
        """The score to explain: a topic (name or index, or one per row), or "predicted" (each row's
        top topic). The callable returns (scores, topic codes)."""
        import torch

        if isinstance(topic, str) and topic != "predicted":
            if topic not in self.topics:
                raise UserInputError(f"Unknown topic {topic!r}; the probe knows {', '.join(self.topics)}.")
            topic = self.topics.index(topic)

        def score(emb):
            w = torch.as_tensor(self.coef, device=emb.device, dtype=emb.dtype)
            s = emb @ w.T + torch.as_tensor(self.intercept, device=emb.device, dtype=emb.dtype)
            if isinstance(topic, str):
                codes = s.detach().argmax(1)
            else:
                codes = torch.as_tensor(np.asarray(topic), device=emb.device).long().reshape(-1).expand(len(s))
            return s.gather(1, codes.reshape(-1, 1)).reshape(-1), codes

        return score

    def scores(self, emb: np.ndarray) -> np.ndarray:
        return np.asarray(emb, dtype=np.float64) @ self.coef.T + self.intercept


def fit_topic_probe(model, ds, C: float = 1.0, store=None) -> TopicProbe:
    """Fit a logistic-regression topic probe on the mean-pooled last layer of ``model`` over ``ds``
    (the text set); cached in the result store."""
    from ..store import default_store

    if ds.kind != "text" or ds.labels is None:
        raise UserInputError("The topic probe needs a labelled text dataset (the 'text' set).")

    def fit() -> dict:
        from sklearn.linear_model import LogisticRegression

        from .. import activations

        last = model.layers[-1]
        x = activations.extract(model, ds, [last], pooling="mean")[last].astype(np.float64)
        clf = LogisticRegression(C=C, max_iter=2000).fit(x, ds.labels)
        coef, intercept = clf.coef_, clf.intercept_
        if coef.shape[0] == 1:  # two topics: sklearn keeps one row
            coef, intercept = np.vstack([-coef, coef]) / 2, np.array([-intercept[0], intercept[0]]) / 2
        return {"coef": coef, "intercept": intercept, "accuracy": float(clf.score(x, ds.labels))}

    hit = (store or default_store()).cached("lrp-probe", {"model": model.sha256, "data": ds.sha256, "C": float(C)},
                                            fit, meta={"model": model.ref, "data": ds.name})
    names = list(ds.label_names or [str(i) for i in range(len(hit["coef"]))])
    return TopicProbe(hit["coef"], hit["intercept"], names, float(hit["accuracy"]))


def probe_target(probe: TopicProbe, topic) -> Callable:
    return probe.target(topic)


def similarity_target(emb):
    """Cosine similarity of the two rows' embeddings (norms held constant, the product split evenly)."""
    import torch.nn.functional as F

    e = F.normalize(emb, dim=-1)
    return (e[0] * e[1]).sum().reshape(1)


def explain_similarity(model, first: str, second: str, **kw) -> Attribution:
    """Why two sentences are similar: relevance of both sentences' tokens for the cosine similarity
    of their embeddings. Both rows' relevance together sums to the similarity (up to biases)."""
    return attribute(model, [first, second], similarity_target, **kw)


def text_dataset_relevance(model, ds, topic: str = "predicted", rule: str = "epsilon", epsilon: float = 1e-6,
                           gamma: float = 0.25, batch_size: int = 32, store=None, progress=None,
                           bias: bool = True) -> dict:
    """Token relevance of every sentence of a text dataset for the model's topic probe (see
    :func:`fit_topic_probe`), cached in the store. Returns {"relevance", "mask", "ids"} padded to the
    longest sentence (n, tokens), and "output" (n,)."""
    from ..store import default_store

    store = store or default_store()

    def compute() -> dict:
        target = fit_topic_probe(model, ds, store=store).target(topic)
        texts = [str(t) for t in ds.inputs]
        parts = []
        for i in range(0, len(texts), batch_size):
            a = attribute(model, texts[i: i + batch_size], target, rule=rule, epsilon=epsilon, gamma=gamma, bias=bias)
            ids = [model.tokenizer.convert_tokens_to_ids(t) for t in a.tokens]
            parts.append((a.input_relevance, a.mask, np.asarray(ids), a.output))
            if progress:
                done = min(len(texts), i + batch_size)
                progress(min(1.0, done / len(texts)), f"{model.name}: {done}/{len(texts)} sentences")
        width = max(p[0].shape[1] for p in parts)

        def pad(x, value=0):
            return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=value)

        return {"relevance": np.concatenate([pad(p[0]) for p in parts]),
                "mask": np.concatenate([pad(p[1].astype(np.int8)) for p in parts]).astype(bool),
                "ids": np.concatenate([pad(p[2], -1) for p in parts]), "output": np.concatenate([p[3] for p in parts])}

    parts = {"model": model.sha256, "data": ds.sha256, "topic": topic, "rule": rule, "epsilon": float(epsilon),
             "gamma": float(gamma), "bias": bool(bias)}
    return store.cached("lrp-text-dataset", parts, compute, meta={"model": model.ref, "data": ds.name, "rule": rule})


def text_agreement(a: dict, b: dict) -> np.ndarray:
    """Per-sentence rank agreement of two models' token relevance (from :func:`text_dataset_relevance`);
    the two models must split the sentences into the same tokens."""
    if a["ids"].shape != b["ids"].shape or not np.array_equal(a["ids"], b["ids"]):
        raise UserInputError("The two models split the sentences into different tokens: their token maps "
                             "cannot be ranked against each other.")
    return rank_agreement(a["relevance"], b["relevance"], a["mask"])
