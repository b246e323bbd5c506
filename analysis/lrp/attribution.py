"""``attribute``: the relevance of inputs (and of any layer) for a target, under an LRP rule or
composite, in one backward pass through the tracer (:mod:`analysis.lrp.tracer`), on a working copy of
the model; ``gradient_x_input`` is the same pass without rules, the baseline LRP is compared with."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserInputError
from .composites import RuleSet, rule_set
from .copies import borrowed_copy, unwrap
from .rules import get_rule
from .tracer import Tape, lrp_mode


# --------------------------------------------------------------------------- results
@dataclass
class Attribution:
    """Relevance of one batch.

    relevance : relevance with the shape of the inputs, or of the chosen layer's output when
        ``layer`` was given (text inputs: (n, tokens), summed over the embedding dimension).
    output : the explained output per explained row (class score, probe score, similarity).
    input_relevance : relevance at the input (always).
    layer_relevance : relevance at ``layer`` (None without a layer).
    target : the class explained per row (classifiers), else None.
    tokens, mask : text inputs: the tokens of each row and which are real (not padding).
    description : the rules and the bias convention used, in words (:attr:`RuleSet.description`).
    """

    relevance: np.ndarray
    output: np.ndarray
    input_relevance: np.ndarray
    rule: str
    layer: str | None = None
    layer_relevance: np.ndarray | None = None
    target: np.ndarray | None = None
    tokens: list[list[str]] | None = None
    mask: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def relevance_sum(self) -> np.ndarray:
        """Sum of the input relevance of each row (compare with ``output``)."""
        r = np.asarray(self.input_relevance, dtype=np.float64)
        return r.reshape(len(r), -1).sum(1)

    @property
    def conservation(self) -> np.ndarray:
        """sum(R) / explained output: 1 for a conservative rule on a model without biases."""
        total = self.relevance_sum
        if len(total) != len(self.output):  # one output explained by several rows (a sentence pair)
            total = np.array([total.sum()])
        with np.errstate(divide="ignore", invalid="ignore"):
            return total / np.asarray(self.output, dtype=np.float64)



# --------------------------------------------------------------------------- attribution
def _prepare(clone, wrapper, inputs):
    """(batch: dict with x / encoding, is_text) for the working copy ``clone`` of a model."""
    import torch

    params = list(clone.parameters())
    dev = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
    text = wrapper is not None and wrapper.input_kind == "text"
    if text:
        if isinstance(inputs, str):
            inputs = [inputs]
        texts = [str(t) for t in inputs]
        if not texts or not all(t.strip() for t in texts):
            raise UserInputError("Type at least one non-empty sentence to explain.")
        from ..models.hf import MAX_TOKENS

        enc = wrapper.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        enc = {k: v.to(dev) for k, v in enc.items()}
        tokens = [wrapper.tokenizer.convert_ids_to_tokens(row) for row in enc["input_ids"].tolist()]
        return {"encoding": enc, "tokens": tokens}, True
    x = inputs.detach() if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
    x = x.to(device=dev, dtype=dtype).clone()
    if wrapper is not None and wrapper.n_inputs is not None and (x.dim() != 2 or x.shape[1] != wrapper.n_inputs):
        raise UserInputError(f"{wrapper.ref} reads rows of {wrapper.n_inputs} numbers; got inputs of shape "
                             f"{tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise UserInputError("The inputs contain NaN or infinite values.")
    return {"x": x}, False


def sentence_embedding(hidden, mask):
    """Mean of the token outputs over real tokens (the sentence-transformers pooling; linear)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def explained(out, target, labels):
    """(explained output per row, target codes or None) for a classifier output or a callable target."""
    import torch

    if callable(target):
        f = target(out)
        codes = None
        if isinstance(f, tuple):  # (scores, the class or topic each row explains)
            f, codes = f
        f = f.reshape(-1) if isinstance(f, torch.Tensor) else torch.as_tensor(f).reshape(-1)
        return f, codes
    if out.dim() != 2:
        raise UserInputError(f"A class target needs (n, classes) outputs; this model gives {tuple(out.shape)}. "
                             "Pass a callable target (output -> one score per row).")
    n, c = out.shape
    if isinstance(target, str):
        if target == "predicted":
            codes = out.detach().argmax(1)
        elif target == "true":
            if labels is None:
                raise UserInputError("Target 'true' needs labels; pass labels= or choose 'predicted'.")
            codes = torch.as_tensor(np.asarray(labels), device=out.device).long().reshape(-1)
            if codes.numel() == n:  # rows without a label (-1, e.g. an uploaded image) use the prediction
                codes = torch.where(codes < 0, out.detach().argmax(1), codes)
        else:
            raise UserInputError(f"Unknown target {target!r}: use 'predicted', 'true', a class index or a callable.")
    else:
        codes = torch.as_tensor(np.asarray(target), device=out.device).long().reshape(-1)
        if codes.numel() == 1:
            codes = codes.expand(n)
    if codes.numel() != n:
        raise UserInputError(f"{codes.numel()} targets for {n} inputs.")
    if (codes < 0).any() or (codes >= c).any():
        raise UserInputError(f"Target class out of range: the model has {c} outputs (0..{c - 1}).")
    return out.gather(1, codes.reshape(-1, 1)).reshape(-1), codes


def _hook_layer(clone, layer, taps):
    mods = dict(clone.named_modules())
    if layer not in mods or not layer:
        raise UserInputError(f"No layer named {layer!r} in this model.")

    def hook(module, inp, out):
        taps["layer"] = out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", out)

    return mods[layer].register_forward_hook(hook)


def attribute(model, inputs, target="predicted", rule: str = "epsilon", epsilon: float = 1e-6,
              gamma: float = 0.25, composite: str | None = None, layer: str | None = None, device=None,
              labels=None, backend: str = "replens", alpha: float = 2.0, beta: float = 1.0,
              low: float = 0.0, high: float = 1.0, bias: bool = True) -> Attribution:
    """Relevance of ``inputs`` for ``target`` under an LRP rule or composite.

    Parameters
    ----------
    model : a ``torch.nn.Module`` or a model from :func:`analysis.models.load`.
    inputs : (n, ...) array/tensor, or sentences (list of str) for a text model.
    target : "predicted", "true" (with ``labels``), a class index (or one per row), or a callable
        mapping the model output to one score per row (text models: the sentence embedding, see
        :func:`probe_target` and :func:`explain_similarity`). A callable may also return one score
        for the whole batch (a pair of sentences).
    rule, composite : one of :data:`RULES`, or a composite in :data:`COMPOSITES`.
    layer : also return the relevance at this layer (its output), from the same backward pass.
    backend : "replens" (the in-house modified backward pass) or "captum" (plain ReLU MLPs/CNNs).
    bias : True (default, zennit's convention): biases enter the denominators of the epsilon, gamma,
        z+, alpha-beta and w^2 rules; False: they are left out (zennit's ``zero_params="bias"``), and
        every layer passes on all its relevance. ``Attribution.description`` says which was used.

    Returns an :class:`Attribution`; ``output`` is the explained score, so ``relevance_sum /
    output`` shows conservation (exactly 1 for conservative rules on bias-free models).
    """
    rs = rule_set(rule, composite, epsilon, gamma, alpha, beta, low, high, bias)
    if backend == "captum":
        from .captum_backend import captum_attribute

        return captum_attribute(model, inputs, target, rs, labels=labels)
    if backend != "replens":
        raise UserInputError(f"Unknown backend {backend!r}: use 'replens' or 'captum'.")
    return _attribute(model, inputs, target, rs, layer, device, labels)


def gradient_x_input(model, inputs, target="predicted", layer: str | None = None, device=None,
                     labels=None) -> Attribution:
    """Plain gradient x input (no LRP rules): the baseline LRP is compared with."""
    return _attribute(model, inputs, target, None, layer, device, labels)


def _attribute(model, inputs, target, rs: RuleSet | None, layer, device, labels) -> Attribution:
    from ..device import pick

    module, wrapper = unwrap(model)
    dev = pick(device) if device is not None else None
    with borrowed_copy(module, dev, getattr(wrapper, "lock", None)) as clone:
        return _run(clone, wrapper, inputs, target, rs, layer, labels)


def _run(clone, wrapper, inputs, target, rs: RuleSet | None, layer, labels) -> Attribution:
    import torch

    batch, text = _prepare(clone, wrapper, inputs)
    mode_cls = lrp_mode()
    taps: dict = {}
    handle = _hook_layer(clone, layer, taps) if layer else None  # on the copy: the shared model is untouched
    notes = []
    try:
        with torch.enable_grad():
            if text:
                enc = batch["encoding"]
                tape = Tape(rs, None, enc["input_ids"].shape[0], tap_embeddings=True)
                with mode_cls(tape):
                    hidden = clone(**enc).last_hidden_state
                    emb = sentence_embedding(hidden, enc["attention_mask"])
                    f, codes = explained(emb, target, labels) if callable(target) else (None, None)
                if f is None:
                    raise UserInputError("Text models need a callable target on the sentence embedding: "
                                         "see analysis.lrp.probe_target or explain_similarity.")
                leaves = tape.embeddings
            else:
                x = batch["x"].requires_grad_(True)
                tape = Tape(rs, x)
                with mode_cls(tape):
                    out = clone(x)
                    out = getattr(out, "logits", out)
                    f, codes = explained(out, target, labels)
                leaves = [x]
            if not f.requires_grad:
                raise UserInputError("The explained output does not depend on the inputs.")
            wanted = leaves + ([taps["layer"]] if "layer" in taps else [])
            grads = torch.autograd.grad(f.sum(), wanted, allow_unused=True)
    finally:
        if handle is not None:
            handle.remove()
    if layer and "layer" not in taps:
        raise UserInputError(f"Layer {layer!r} is not on the path to the output.")

    def rel(t, g):
        return torch.zeros_like(t) if g is None else (t * g)

    if text:
        per_token = sum(rel(t, g).sum(-1) for t, g in zip(leaves, grads[: len(leaves)]))
        mask = batch["encoding"]["attention_mask"]
        input_rel = (per_token * mask).detach().double().cpu().numpy()
        tokens, mask_np = batch["tokens"], mask.cpu().numpy().astype(bool)
        if rs is not None and get_rule(rs.first).input_layer:
            notes.append(f"The {rs.first} rule needs a first linear layer on the inputs; a text model starts "
                         "with embedding look-ups, which get the relevance arriving at them.")
    else:
        if rs is not None and get_rule(rs.first).input_layer and tape.input_relevance is not None:
            r_in = tape.input_relevance.reshape(batch["x"].shape)
        else:
            r_in = rel(batch["x"], grads[0])
            if rs is not None and rs.first_conv_only and tape.first_seen:
                notes.append(f"{rs.name} applies the {rs.first} rule to a first convolution only (as zennit's "
                             f"EpsilonGammaBox); this model starts with a dense layer, which got the {rs.dense} rule. "
                             f"Rule '{rs.first}' puts the {rs.first} rule on a first dense layer.")
            elif rs is not None and get_rule(rs.first).input_layer:
                notes.append(f"No linear layer reads the inputs directly, so the {rs.first} rule was not used.")
        input_rel = r_in.detach().double().cpu().numpy()
        tokens, mask_np = None, None
    layer_rel = None
    if "layer" in taps:
        layer_rel = rel(taps["layer"], grads[-1]).detach().double().cpu().numpy()
    output = f.detach().double().cpu().numpy()
    return Attribution(relevance=layer_rel if layer_rel is not None else input_rel, output=output,
                       input_relevance=input_rel, rule=rs.name if rs is not None else "gradient x input",
                       layer=layer, layer_relevance=layer_rel,
                       target=None if codes is None else codes.cpu().numpy(), tokens=tokens, mask=mask_np,
                       notes=notes, description=rs.description if rs is not None else "gradient x input")
