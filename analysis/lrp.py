"""Layer-wise relevance propagation (LRP) for any torch model, conservative and without side effects.

One design for every model (the "efficient" AttnLRP / CP-LRP formulation, Achtibat et al. 2024,
Arras et al. 2025): relevance is gradient x input, R = a * da, with the backward pass modified in a
few places while the model runs its ordinary forward pass:

- linear and convolution layers: an LRP rule (epsilon, gamma, z+, alpha-beta) via a custom autograd
  function; the first layer may use an input-domain rule (flat, w^2, z^B box) whose relevance is
  taken directly;
- elementwise nonlinearities (GELU, SiLU, tanh, sigmoid, ...): the identity rule, backward = f(x)/x;
- normalisation (LayerNorm, RMSNorm, ``F.normalize``, rsqrt/sqrt): the statistics are constants;
- attention: the softmax weights are constants (CP-LRP), so attention is linear in the values;
- other bilinear products of two relevance-carrying tensors (gated MLPs, two sentences'
  embeddings): each factor gets half of the gradient;
- residual additions and everything linear need nothing: gradient x input splits their relevance
  in proportion to the summands (no double counting, unlike per-module hooks).

The changes are applied by a thread-local :class:`torch.overrides.TorchFunctionMode` while the model
runs on a structural copy (new module objects, the same parameter tensors, never written), so the
shared model's outputs, ``state_dict`` and hooks are untouched and concurrent calls do not interact.
One backward pass gives the relevance at the input and at any layer.

captum's LRP is correct on plain ReLU MLPs and CNNs and is offered there (``backend="captum"``)
as the cross-check; it runs on a deep copy because it rewrites weights and attaches hooks.

The rules and composites follow zennit 0.5 (the reference LRP implementation), checked against it
numerically: ``epsilon-gamma-box`` is zennit's EpsilonGammaBox, whose box rule applies to a first
*convolution* only (on an MLP every dense layer gets epsilon; rule ``box`` puts the box rule on a
first dense layer). ``bias`` chooses whether biases enter the rules' denominators: True is zennit's
default (``zero_params=None``), False its ``zero_params="bias"`` (see :data:`BIAS_CONVENTIONS`).
The epsilon also stabilises the other rules' denominators (zennit's ``stabilizer``; both default to
1e-6).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import UserInputError

RULES = ("epsilon", "gamma", "zplus", "alpha-beta", "flat", "w2", "box")
FIRST_LAYER_RULES = ("flat", "w2", "box")
COMPOSITES = ("epsilon-plus-flat", "epsilon-gamma-box")
# What each choice does, in words (page help and docs).
DESCRIPTIONS = {
    "epsilon": "LRP-epsilon on every layer (LRP-0 as epsilon -> 0: gradient x input)",
    "gamma": "LRP-gamma on every layer: contributions of the output's sign amplified by gamma",
    "zplus": "z+ (alpha1-beta0) on every layer: only positive contributions",
    "alpha-beta": "alpha-beta (alpha=2, beta=1) on every layer",
    "flat": "flat rule on the first layer, epsilon above",
    "w2": "w^2 rule on the first layer, epsilon above",
    "box": "z^B box rule on the first layer (inputs in [low, high]), epsilon above",
    "epsilon-plus-flat": "zennit's EpsilonPlusFlat: flat on the first layer, z+ on convolutions, epsilon on dense layers",
    "epsilon-gamma-box": "zennit's EpsilonGammaBox: box on the first layer if it is a convolution, gamma on "
                         "convolutions, epsilon on dense layers (on an MLP: epsilon everywhere; rule 'box' puts the "
                         "box rule on a first dense layer)",
}
# Whether biases enter the rules' denominators (``bias=`` of attribute), in words for the page.
BIAS_CONVENTIONS = {
    True: "Biases take part in the rules (zennit's default): the relevance a bias takes is not passed down, so "
          "the input relevance sums to the explained output minus what the biases took.",
    False: "Biases are left out of the rules' denominators (zennit's zero_params='bias'; captum's z+): each layer "
           "passes on all the relevance it receives, so the input relevance sums to the explained output.",
}
# The rules a bias changes: epsilon and gamma (their denominators), z+, alpha-beta and w^2. Flat never
# uses biases, and in the box rule they cancel.
BIAS_RULES = ("epsilon", "gamma", "zplus", "alpha-beta", "w2")
TARGETS = ("predicted", "true", "class")
LRP_CACHE_VERSION = 2  # 2: zennit's conventions (biases in z+, alpha-beta, w^2; EpsilonGammaBox's first conv)


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


@dataclass(frozen=True)
class RuleSet:
    """The rule of every layer: ``first`` for the layer reading the input, ``conv`` and ``dense``."""

    name: str
    first: str
    conv: str
    dense: str
    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    low: float = 0.0
    high: float = 1.0
    bias: bool = True  # biases in the rules' denominators (zennit's default)
    first_conv_only: bool = False  # the first-layer rule only if that layer is a convolution (EpsilonGammaBox)

    def for_layer(self, is_conv: bool, is_first: bool) -> str:
        if is_first and (is_conv or not self.first_conv_only):
            return self.first
        return self.conv if is_conv else self.dense

    @property
    def bias_convention(self) -> str:
        """Which bias convention was used, in words (for the page), or that it does not matter."""
        if not {self.first, self.conv, self.dense} & set(BIAS_RULES):
            return "Biases play no part in these rules (flat ignores them; in the box rule they cancel)."
        return BIAS_CONVENTIONS[self.bias]

    @property
    def description(self) -> str:
        return f"{DESCRIPTIONS.get(self.name, self.name)}. {self.bias_convention}"


def rule_set(rule: str = "epsilon", composite: str | None = None, epsilon: float = 1e-6, gamma: float = 0.25,
             alpha: float = 2.0, beta: float = 1.0, low: float = 0.0, high: float = 1.0, bias: bool = True) -> RuleSet:
    """Resolve a rule name or a composite into the rule of each kind of layer. ``bias``: biases enter
    the rules' denominators (zennit's default) or not (see :data:`BIAS_CONVENTIONS`)."""
    if composite in (None, "", "none") and rule in COMPOSITES:
        composite = rule
    if composite not in (None, "", "none"):
        first_conv_only = composite == "epsilon-gamma-box"  # zennit: the box rule is for a first convolution
        if composite == "epsilon-plus-flat":
            first, conv, dense = "flat", "zplus", "epsilon"
        elif composite == "epsilon-gamma-box":
            first, conv, dense = "box", "gamma", "epsilon"
        else:
            raise UserInputError(f"Unknown composite {composite!r}; use one of {', '.join(COMPOSITES)}.")
        name = composite
    else:
        if rule not in RULES:
            raise UserInputError(f"Unknown LRP rule {rule!r}; use one of {', '.join(RULES + COMPOSITES)}.")
        upper = "epsilon" if rule in FIRST_LAYER_RULES else rule
        first, conv, dense, name, first_conv_only = rule, upper, upper, rule, False
    if not epsilon >= 0 or not gamma >= 0:
        raise UserInputError("epsilon and gamma must be non-negative.")
    if abs((alpha - beta) - 1) > 1e-9:
        raise UserInputError(f"alpha - beta must be 1 (got alpha={alpha}, beta={beta}).")
    if not high > low:
        raise UserInputError(f"The box rule needs low < high (got [{low}, {high}]).")
    return RuleSet(name, first, conv, dense, float(epsilon), float(gamma), float(alpha), float(beta),
                   float(low), float(high), bool(bias), first_conv_only)


# --------------------------------------------------------------------------- rule backward passes
def _stabilize(z, eps):
    import torch

    return z + torch.where(z >= 0, eps, -eps)  # eps * sign(z), with sign(0) = 1


class _Op:
    """A linear operator (F.linear or a convolution) with its input-gradient (vector-Jacobian product)."""

    def __init__(self, func, kwargs: dict, conv_dims: int = 0):
        self.func, self.kwargs, self.conv_dims = func, kwargs, conv_dims

    def fwd(self, a, w, b=None):
        return self.func(a, w, b, **self.kwargs)

    def vjp(self, a_shape, w, s):
        import torch

        if not self.conv_dims:
            return s @ w if s.dim() > 1 else w.t() @ s
        grad = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}
        return grad[self.conv_dims](a_shape, w, s, **self.kwargs)


def _rule_backward(rule: str, rs: RuleSet, op: _Op, a, w, b, z, g):
    """Return (gradient for a, relevance at a or None). The gradient is such that a * gradient is the
    rule's input relevance; first-layer rules return that relevance directly instead."""
    relevance = z * g
    eps = rs.epsilon
    bias = b if rs.bias else None  # zennit's zero_params="bias" when False
    if rule == "epsilon":
        denominator = z if bias is not None or b is None else op.fwd(a, w)
        return op.vjp(a.shape, w, relevance / _stabilize(denominator, eps)), None
    ap, an = a.clamp(min=0), a.clamp(max=0)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    bp_, bn_ = (None, None) if bias is None else (bias.clamp(min=0), bias.clamp(max=0))
    if rule == "gamma":
        # zennit's sign-aware gamma: amplify the contributions that share the output's sign
        wg_p, wg_n = w + rs.gamma * wp, w + rs.gamma * wn
        bp = None if bias is None else bias + rs.gamma * bp_
        bn = None if bias is None else bias + rs.gamma * bn_
        pos = z > 0
        z_pos = op.fwd(ap, wg_p, bp) + op.fwd(an, wg_n)
        z_neg = op.fwd(ap, wg_n, bn) + op.fwd(an, wg_p)
        torch = _import_torch()
        s_pos = torch.where(pos, relevance / _stabilize(z_pos, eps), 0.0)
        s_neg = torch.where(pos, 0.0, relevance / _stabilize(z_neg, eps))
        grad_if_pos = op.vjp(a.shape, wg_p, s_pos) + op.vjp(a.shape, wg_n, s_neg)
        grad_if_neg = op.vjp(a.shape, wg_n, s_pos) + op.vjp(a.shape, wg_p, s_neg)
        return _import_torch().where(a > 0, grad_if_pos, grad_if_neg), None
    if rule in ("zplus", "alpha-beta"):
        alpha, beta = (1.0, 0.0) if rule == "zplus" else (rs.alpha, rs.beta)
        z_pos = op.fwd(ap, wp, bp_) + op.fwd(an, wn)
        s_pos = alpha * relevance / _stabilize(z_pos, eps)
        grad_if_pos, grad_if_neg = op.vjp(a.shape, wp, s_pos), op.vjp(a.shape, wn, s_pos)
        if beta:
            z_neg = op.fwd(ap, wn, bn_) + op.fwd(an, wp)
            s_neg = _import_torch().where(z_neg != 0, beta * relevance / _stabilize(z_neg, eps), 0.0)
            grad_if_pos = grad_if_pos - op.vjp(a.shape, wn, s_neg)
            grad_if_neg = grad_if_neg - op.vjp(a.shape, wp, s_neg)
        return _import_torch().where(a > 0, grad_if_pos, grad_if_neg), None
    torch = _import_torch()
    ones = torch.ones_like(a)
    if rule in ("flat", "w2"):
        m = torch.ones_like(w) if rule == "flat" else w * w
        mb = None if rule == "flat" or bias is None else bias * bias  # zennit's w^2 squares the bias too
        s = relevance / _stabilize(op.fwd(ones, m, mb), eps)
        return torch.zeros_like(a), op.vjp(a.shape, m, s)
    if rule == "box":
        low, high = rs.low * ones, rs.high * ones
        zb = op.fwd(a, w) - op.fwd(low, wp) - op.fwd(high, wn)
        s = relevance / _stabilize(zb, eps)
        r = a * op.vjp(a.shape, w, s) - low * op.vjp(a.shape, wp, s) - high * op.vjp(a.shape, wn, s)
        return torch.zeros_like(a), r
    raise UserInputError(f"Unknown LRP rule {rule!r}.")


def _import_torch():
    import torch

    return torch


_FUNCTIONS: dict = {}


def _functions():
    """The autograd functions, built on first use (torch is imported lazily)."""
    if _FUNCTIONS:
        return _FUNCTIONS
    import torch

    class RuleLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, w, b, op, rule, rs, tape):
            z = op.fwd(a, w, b)
            ctx.save_for_backward(a, w, b, z)
            ctx.op, ctx.rule, ctx.rs, ctx.tape = op, rule, rs, tape
            return z

        @staticmethod
        def backward(ctx, g):
            a, w, b, z = ctx.saved_tensors
            grad, direct = _rule_backward(ctx.rule, ctx.rs, ctx.op, a, w, b, z, g)
            if direct is not None:
                ctx.tape.input_relevance = direct if ctx.tape.input_relevance is None \
                    else ctx.tape.input_relevance + direct
            return grad, None, None, None, None, None, None

    class Identity(torch.autograd.Function):
        """y = f(x) forward; backward f(x)/x: the relevance passes through unchanged."""

        @staticmethod
        def forward(ctx, x, f):
            y = f(x)
            ctx.save_for_backward(x, y)
            return y

        @staticmethod
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            return g * y / _stabilize(x, 1e-12), None

    class Pooling(torch.autograd.Function):
        """Average pooling under the epsilon rule (zennit's Norm rule)."""

        @staticmethod
        def forward(ctx, a, op, eps):
            z = op(a)
            ctx.save_for_backward(a, z)
            ctx.op, ctx.eps = op, eps
            return z

        @staticmethod
        def backward(ctx, g):
            a, z = ctx.saved_tensors
            with torch.enable_grad():
                a_ = a.detach().requires_grad_(True)
                grad, = torch.autograd.grad(ctx.op(a_), a_, z * g / _stabilize(z, ctx.eps))
            return grad, None, None

    _FUNCTIONS.update(RuleLinear=RuleLinear, Identity=Identity, Pooling=Pooling)
    return _FUNCTIONS


# --------------------------------------------------------------------------- the function mode
class _Tape:
    """What one attribution collects while the model runs (one per call, never shared)."""

    def __init__(self, rs: RuleSet | None, x=None, batch: int | None = None, tap_embeddings: bool = False):
        self.rs, self.x, self.batch, self.tap_embeddings = rs, x, batch, tap_embeddings
        self.input_relevance = None
        self.embeddings: list = []  # (tensor) leaves standing for embedding lookups
        self.first_seen = False


def _is_input(t, x) -> bool:
    return x is not None and (t is x or getattr(t, "_base", None) is x)


def _make_mode():
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    fn = _functions()
    linear_ops = {F.linear: 0, torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}
    conv_kw = ("stride", "padding", "dilation", "groups")
    elementwise = {F.gelu, F.silu, F.mish, F.elu, F.selu, F.celu, F.softplus, F.hardswish, F.leaky_relu,
                   torch.tanh, torch.Tensor.tanh, F.tanh, torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid,
                   torch.erf, torch.Tensor.erf}
    constants = {torch.rsqrt, torch.Tensor.rsqrt, torch.sqrt, torch.Tensor.sqrt, torch.std, torch.Tensor.std,
                 torch.var, torch.Tensor.var, torch.norm, torch.Tensor.norm, torch.linalg.vector_norm,
                 torch.linalg.norm, torch.softmax, torch.Tensor.softmax, F.softmax, torch.std_mean, torch.var_mean}
    products = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm,
                torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}

    # Average pooling gets the epsilon rule (zennit's Norm); max pooling keeps its gradient, so the
    # winner takes all its relevance (zennit; captum's epsilon on max pooling keeps z / (z + eps) of it).
    pools = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
             F.adaptive_avg_pool3d}

    # Python-level composites: their insides run without this mode, so their rules would be silently
    # wrong (plain gradient through attention weights or normalisation statistics): refuse them.
    unsupported = {F.multi_head_attention_forward: "nn.MultiheadAttention", F.group_norm: "GroupNorm",
                   F.instance_norm: "InstanceNorm", F.local_response_norm: "LocalResponseNorm"}

    def grads(*ts):
        return all(isinstance(t, torch.Tensor) and t.requires_grad for t in ts)

    def detach_all(out):
        if isinstance(out, torch.Tensor):
            return out.detach()
        if isinstance(out, tuple):
            return tuple(detach_all(o) for o in out)
        return out

    class LRPMode(TorchFunctionMode):
        def __init__(self, tape: _Tape):
            super().__init__()
            self.tape = tape

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            tape = self.tape
            if tape.rs is not None and func in linear_ops:
                return self._linear(func, linear_ops[func], args, kwargs)
            if func is F.embedding and tape.tap_embeddings:
                out = func(*args, **kwargs)
                if tape.batch and out.dim() >= 3 and out.shape[0] == 1 and tape.batch > 1:
                    out = out.expand(tape.batch, *out.shape[1:])
                leaf = out.detach().clone().requires_grad_(True)
                tape.embeddings.append(leaf)
                return leaf
            if tape.rs is None:
                return func(*args, **kwargs)
            if func in unsupported:
                raise UserInputError(f"LRP rules for {unsupported[func]} are not implemented: write the attention "
                                     "with F.scaled_dot_product_attention (or q @ k and softmax), or use LayerNorm.")
            if func in pools and grads(args[0]) and not kwargs.get("return_indices"):
                rest = args[1:]
                return fn["Pooling"].apply(args[0], lambda t: func(t, *rest, **kwargs), tape.rs.epsilon)
            if func in elementwise:
                x, rest = args[0], args[1:]
                if not grads(x):
                    return func(*args, **kwargs)
                return fn["Identity"].apply(x, lambda t: func(t, *rest, **kwargs))
            if func is F.layer_norm:
                return _layer_norm(*args, **kwargs)
            if func is getattr(F, "rms_norm", None):
                return _rms_norm(*args, **kwargs)
            if func is F.normalize:
                return _normalize(*args, **kwargs)
            if func is F.scaled_dot_product_attention:
                return _attention(*args, **kwargs)
            if func in constants:
                return detach_all(func(*args, **kwargs))
            if func in products and len(args) == 2 and grads(*args) and not kwargs:
                a, b = args
                # a bilinear product: each factor gets half of the gradient (relevance split evenly)
                return 0.5 * (func(a, b.detach()) + func(a.detach(), b))
            return func(*args, **kwargs)

        def _linear(self, func, conv_dims, args, kwargs):
            names = ("input", "weight", "bias") + (conv_kw if conv_dims else ())
            bound = dict(zip(names, args))
            bound.update(kwargs)
            a, w, b = bound.pop("input"), bound.pop("weight"), bound.pop("bias", None)
            if not (isinstance(a, torch.Tensor) and a.requires_grad):
                return func(a, w, b, **bound)
            tape, rs = self.tape, self.tape.rs
            first = _is_input(a, tape.x)
            rule = rs.for_layer(conv_dims > 0, first)
            if rule in FIRST_LAYER_RULES and not first:
                rule = "epsilon"
            if first:
                tape.first_seen = True
            return fn["RuleLinear"].apply(a, w, b, _Op(func, bound, conv_dims), rule, rs, tape)

    return LRPMode


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(-len(normalized_shape), 0))
    xc = x - x.mean(dims, keepdim=True)
    std = (xc.pow(2).mean(dims, keepdim=True) + eps).sqrt().detach()  # a constant: linear in x
    y = xc / std
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _rms_norm(x, normalized_shape, weight=None, eps=None):
    import torch

    dims = tuple(range(-len(normalized_shape), 0))
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y = x / (x.pow(2).mean(dims, keepdim=True) + eps).sqrt().detach()
    return y * weight if weight is not None else y


def _normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
    return x / x.norm(p, dim, keepdim=True).clamp_min(eps).detach()


def _attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Scaled dot-product attention with the attention weights held constant (CP-LRP)."""
    import torch

    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    if enable_gqa and k.size(-3) != q.size(-3):
        rep = q.size(-3) // k.size(-3)
        k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    scores = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        n, m = scores.shape[-2:]
        causal = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask
    weights = torch.softmax(scores, -1).detach()
    return weights @ v


# --------------------------------------------------------------------------- working copies
def _unwrap(model):
    """(torch module, the RepLens Model or None)."""
    from .models.base import Model

    if isinstance(model, Model):
        if getattr(model, "scripted", False):
            raise UserInputError(f"{model.ref} is TorchScript: its operations cannot be re-routed through LRP "
                                 "rules. Upload safetensors weights of a zoo architecture instead.")
        if model.module is None:
            raise UserInputError(f"{model.ref} holds precomputed embeddings: there is no network to explain. "
                                 "LRP needs a zoo model, a transformers model or safetensors weights.")
        return model.module, model
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        raise UserInputError("TorchScript modules cannot be explained with LRP rules; pass the Python module.")
    if not isinstance(model, torch.nn.Module):
        raise UserInputError(f"LRP needs a torch.nn.Module or a loaded RepLens model, not {type(model).__name__}.")
    return model, None


def check_model(model) -> None:
    """Raise UserInputError if ``model`` cannot be explained (no network, TorchScript)."""
    _unwrap(model)


def working_copy(module, device=None, lock=None):
    """A copy of ``module`` to run attributions on: new module objects (so hooks and the training
    flag stay local) sharing the parameter and buffer tensors, which are only read. A different
    device gets a full copy, so the shared model is never moved."""
    import contextlib

    import torch

    tensors = list(module.parameters()) + list(module.buffers())
    here = tensors[0].device if tensors else torch.device("cpu")
    with lock if lock is not None else contextlib.nullcontext():
        if device is not None and torch.device(device) != here:
            clone = copy.deepcopy(module).to(device)
        else:
            clone = copy.deepcopy(module, {id(t): t for t in tensors})
    clone.eval()
    return clone


# --------------------------------------------------------------------------- attribution
def _prepare(model, inputs, device):
    """(module copy, RepLens model or None, batch: dict with x / encoding, is_text)."""
    import torch

    from .device import pick

    module, wrapper = _unwrap(model)
    dev = pick(device) if device is not None else None
    clone = working_copy(module, dev, getattr(wrapper, "lock", None))
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
        from .models.hf import MAX_TOKENS

        enc = wrapper.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        enc = {k: v.to(dev) for k, v in enc.items()}
        tokens = [wrapper.tokenizer.convert_ids_to_tokens(row) for row in enc["input_ids"].tolist()]
        return clone, wrapper, {"encoding": enc, "tokens": tokens}, True
    x = inputs.detach() if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
    x = x.to(device=dev, dtype=dtype).clone()
    if wrapper is not None and wrapper.n_inputs is not None and (x.dim() != 2 or x.shape[1] != wrapper.n_inputs):
        raise UserInputError(f"{wrapper.ref} reads rows of {wrapper.n_inputs} numbers; got inputs of shape "
                             f"{tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise UserInputError("The inputs contain NaN or infinite values.")
    return clone, wrapper, {"x": x}, False


def sentence_embedding(hidden, mask):
    """Mean of the token outputs over real tokens (the sentence-transformers pooling; linear)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def _explained(out, target, labels):
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
        return captum_attribute(model, inputs, target, rs, labels=labels)
    if backend != "replens":
        raise UserInputError(f"Unknown backend {backend!r}: use 'replens' or 'captum'.")
    return _attribute(model, inputs, target, rs, layer, device, labels)


def gradient_x_input(model, inputs, target="predicted", layer: str | None = None, device=None,
                     labels=None) -> Attribution:
    """Plain gradient x input (no LRP rules): the baseline LRP is compared with."""
    return _attribute(model, inputs, target, None, layer, device, labels)


def _attribute(model, inputs, target, rs: RuleSet | None, layer, device, labels) -> Attribution:
    import torch

    clone, wrapper, batch, text = _prepare(model, inputs, device)
    mode_cls = _make_mode()
    taps: dict = {}
    handle = _hook_layer(clone, layer, taps) if layer else None  # on the copy: the shared model is untouched
    notes = []
    try:
        with torch.enable_grad():
            if text:
                enc = batch["encoding"]
                tape = _Tape(rs, None, enc["input_ids"].shape[0], tap_embeddings=True)
                with mode_cls(tape):
                    hidden = clone(**enc).last_hidden_state
                    emb = sentence_embedding(hidden, enc["attention_mask"])
                    f, codes = _explained(emb, target, labels) if callable(target) else (None, None)
                if f is None:
                    raise UserInputError("Text models need a callable target on the sentence embedding: "
                                         "see analysis.lrp.probe_target or explain_similarity.")
                leaves = tape.embeddings
            else:
                x = batch["x"].requires_grad_(True)
                tape = _Tape(rs, x)
                with mode_cls(tape):
                    out = clone(x)
                    out = getattr(out, "logits", out)
                    f, codes = _explained(out, target, labels)
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
        if rs is not None and rs.first in FIRST_LAYER_RULES:
            notes.append(f"The {rs.first} rule needs a first linear layer on the inputs; a text model starts "
                         "with embedding look-ups, which get the relevance arriving at them.")
    else:
        if rs is not None and rs.first in FIRST_LAYER_RULES and tape.input_relevance is not None:
            r_in = tape.input_relevance.reshape(batch["x"].shape)
        else:
            r_in = rel(batch["x"], grads[0])
            if rs is not None and rs.first_conv_only and tape.first_seen:
                notes.append(f"{rs.name} applies the {rs.first} rule to a first convolution only (as zennit's "
                             f"EpsilonGammaBox); this model starts with a dense layer, which got the {rs.dense} rule. "
                             f"Rule '{rs.first}' puts the {rs.first} rule on a first dense layer.")
            elif rs is not None and rs.first in FIRST_LAYER_RULES:
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


# --------------------------------------------------------------------------- captum (plain ReLU nets)
def captum_supported(model, rule_or_set="epsilon") -> str | None:
    """None if captum's LRP is correct for this model and rule, else the reason it is not."""
    import torch.nn as nn

    try:
        module, _ = _unwrap(model)
    except UserInputError as exc:
        return str(exc)
    rs = rule_or_set if isinstance(rule_or_set, RuleSet) else rule_set(rule_or_set)
    if {rs.first, rs.conv, rs.dense} - {"epsilon", "zplus"}:
        return (f"captum has no correct '{rs.name}' rule here (its gamma ignores the output's sign, and it has "
                "no flat/w^2/box rules)")
    rules = {rs.first, rs.conv, rs.dense}
    if rs.bias and "zplus" in rules:
        return "captum's z+ either leaves biases out or takes them whole, not their positive part (use bias=False)"
    if not rs.bias and "epsilon" in rules:
        return "captum's epsilon rule always includes the biases (use bias=True)"
    ok = (nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout,
          nn.Flatten, nn.Unflatten, nn.Sequential)
    for name, m in module.named_modules():
        if name and not isinstance(m, ok) and list(m.children()) == []:
            return f"captum's LRP has no rule for {type(m).__name__} ({name})"
    leaves = [m for _, m in module.named_modules() if not list(m.children())]
    if any(isinstance(m, nn.Flatten) for m in leaves) and not _flatten_is_last_pool(leaves):
        return "captum cannot pass relevance through a Flatten between spatial layers"
    if type(module).forward not in _sequential_forwards(module):
        return "captum sees modules, not the forward code: only sequential ReLU networks are safe"
    return None


def _flatten_is_last_pool(leaves) -> bool:
    import torch.nn as nn

    for i, m in enumerate(leaves):
        if isinstance(m, nn.Flatten):
            return i > 0 and isinstance(leaves[i - 1], nn.AdaptiveAvgPool2d) and \
                all(isinstance(n, (nn.Linear, nn.ReLU, nn.Dropout)) for n in leaves[i + 1:])
    return True


def _sequential_forwards(module):
    from torch import nn

    from . import zoo

    return {nn.Sequential.forward, zoo.MLPClassifier.forward, zoo.CNNClassifier.forward}


def captum_attribute(model, inputs, target="predicted", rs: RuleSet | str = "epsilon", labels=None) -> Attribution:
    """captum 0.9's LRP on a deep copy (captum rewrites weights and attaches hooks while it works).
    Only for plain sequential ReLU MLPs/CNNs and the epsilon / z+ rules (see :func:`captum_supported`)."""
    import torch
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule

    rs = rs if isinstance(rs, RuleSet) else rule_set(rs)
    reason = captum_supported(model, rs)
    if reason:
        raise UserInputError(f"captum cannot explain this correctly: {reason}.")
    module, wrapper = _unwrap(model)
    import contextlib

    with getattr(wrapper, "lock", None) or contextlib.nullcontext():
        net = copy.deepcopy(module).eval()
    net, reshape = _captum_sequential(net)
    for p in net.parameters():
        p.requires_grad_(False)
    for m in net.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            m.rule = EpsilonRule(rs.epsilon) if rs.dense == "epsilon" else Alpha1_Beta0_Rule(set_bias_to_zero=True)
            # (captum_supported admits bias=True with epsilon and bias=False with z+ only)
        elif isinstance(m, (torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d)):
            m.rule = EpsilonRule(rs.epsilon)
        elif isinstance(m, torch.nn.MaxPool2d):
            m.rule = EpsilonRule(1e-30)  # the winner takes all, as in the in-house path (and zennit)
    x = torch.as_tensor(np.asarray(inputs.detach() if isinstance(inputs, torch.Tensor) else inputs),
                        dtype=next(net.parameters()).dtype).clone()
    with torch.no_grad():
        out = net(reshape(x)).reshape(len(x), -1)
    f, codes = _explained(out, target, labels)
    cls = codes.tolist()
    xr = reshape(x).requires_grad_(True)
    tgt = [(c, 0, 0) for c in cls] if xr.dim() == 4 and out.dim() == 2 and net(xr[:1]).dim() == 4 else cls
    with torch.enable_grad():
        r = LRP(net).attribute(xr, target=tgt)
    return Attribution(relevance=r.reshape(x.shape).detach().double().numpy(), output=f.double().numpy(),
                       input_relevance=r.reshape(x.shape).detach().double().numpy(), rule=f"captum {rs.name}",
                       target=codes.numpy(), description=rs.description)


def _captum_sequential(net):
    """A captum-readable sequence: the leading Unflatten becomes a reshape of the inputs, and
    'global average pool -> Flatten -> Linear' becomes a 1x1 convolution (same numbers)."""
    import torch
    from torch import nn

    leaves = [m for m in net.modules() if not list(m.children())]
    reshape = lambda x: x  # noqa: E731
    if leaves and isinstance(leaves[0], nn.Unflatten):
        shape = tuple(leaves[0].unflattened_size)
        reshape = lambda x: x.reshape(len(x), *shape)  # noqa: E731
        leaves = leaves[1:]
    out = []
    i = 0
    while i < len(leaves):
        m = leaves[i]
        if isinstance(m, nn.Flatten):
            rest = [n for n in leaves[i + 1:] if isinstance(n, nn.Linear)]
            for lin in rest:
                conv = nn.Conv2d(lin.in_features, lin.out_features, 1, bias=lin.bias is not None)
                with torch.no_grad():
                    conv.weight.copy_(lin.weight.reshape(*lin.weight.shape, 1, 1))
                    if lin.bias is not None:
                        conv.bias.copy_(lin.bias)
                conv = conv.to(lin.weight.dtype)
                out.append(conv)
            out += [n for n in leaves[i + 1:] if not isinstance(n, nn.Linear)]
            break
        out.append(m)
        i += 1
    return nn.Sequential(*out).eval(), reshape


# --------------------------------------------------------------------------- text targets
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
    from . import activations
    from .store import default_store, make_key

    if ds.kind != "text" or ds.labels is None:
        raise UserInputError("The topic probe needs a labelled text dataset (the 'text' set).")
    store = store or default_store()
    key = make_key("lrp_probe", model=model.sha256, data=ds.sha256, C=C)
    hit = store.get(key)
    if hit is None:
        from sklearn.linear_model import LogisticRegression

        last = model.layers[-1]
        x = activations.extract(model, ds, [last], pooling="mean")[last].astype(np.float64)
        clf = LogisticRegression(C=C, max_iter=2000).fit(x, ds.labels)
        coef, intercept = clf.coef_, clf.intercept_
        if coef.shape[0] == 1:  # two topics: sklearn keeps one row
            coef, intercept = np.vstack([-coef, coef]) / 2, np.array([-intercept[0], intercept[0]]) / 2
        hit = {"coef": coef, "intercept": intercept, "accuracy": np.array(clf.score(x, ds.labels))}
        store.put(key, hit, {"model": model.ref, "data": ds.name})
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


# --------------------------------------------------------------------------- faithfulness
@dataclass
class Faithfulness:
    """Feature-removal curves (most relevant first) and their AOPC, per method.

    fractions : fraction of features removed at each step; curves : method -> mean explained output
    at each step; aopc : method -> area over the perturbation curve, mean over steps of
    f(x) - f(x after k steps) (larger: the ordering finds what the output depends on)."""

    fractions: np.ndarray
    curves: dict
    aopc: dict
    per_sample_aopc: dict


def removal_curve(score: Callable, relevance: np.ndarray, steps: int = 16) -> np.ndarray:
    """(n, steps + 1) scores as the most relevant features are removed in ``steps`` equal chunks.

    ``score(keep)`` gets a (n, features) 0/1 mask and returns (n,) explained outputs."""
    r = np.asarray(relevance, dtype=np.float64).reshape(len(relevance), -1)
    n, d = r.shape
    order = np.argsort(-r, axis=1, kind="stable")
    counts = np.unique(np.round(np.linspace(0, d, steps + 1)).astype(int))
    keep = np.ones((n, d))
    out = []
    done = 0
    for k in counts:
        rows = np.repeat(np.arange(n), k - done)
        keep[rows, order[:, done:k].reshape(-1)] = 0
        done = k
        out.append(score(keep))
    return np.stack(out, 1)


def aopc(curve: np.ndarray) -> np.ndarray:
    """Per-row area over the perturbation curve: mean over steps of f(x_0) - f(x_k)."""
    curve = np.asarray(curve, dtype=np.float64)
    return (curve[:, :1] - curve).mean(1)


def faithfulness(model, inputs, relevances: dict, target, steps: int = 16, baseline: float = 0.0,
                 seed: int = 0, device=None) -> Faithfulness:
    """Pixel-flipping / feature removal for each relevance map in ``relevances`` (plus a random
    order): the explained output as the most relevant features are set to ``baseline``."""
    import torch

    module, wrapper = _unwrap(model)
    clone = working_copy(module, None, getattr(wrapper, "lock", None))
    x = torch.as_tensor(np.asarray(inputs), dtype=next(clone.parameters()).dtype)
    codes = torch.as_tensor(np.asarray(target)).long().reshape(-1)
    if codes.numel() == 1:
        codes = codes.expand(len(x))

    def score(keep):
        k = torch.as_tensor(keep, dtype=x.dtype).reshape(x.shape)
        with torch.no_grad():
            out = clone(x * k + baseline * (1 - k))
        return out.gather(1, codes.reshape(-1, 1)).reshape(-1).double().numpy()

    rng = np.random.default_rng(seed)
    maps = dict(relevances)
    maps["random"] = rng.random((len(x), int(np.prod(x.shape[1:]))))
    return _faithfulness_from(score, maps, steps, x.shape[1:])


def _faithfulness_from(score, maps: dict, steps: int, shape) -> Faithfulness:
    curves, per_sample, fr = {}, {}, None
    for name, r in maps.items():
        c = removal_curve(score, np.asarray(r).reshape(len(r), -1), steps)
        curves[name] = c.mean(0)
        per_sample[name] = aopc(c)
        if fr is None:
            d = int(np.prod(shape))
            fr = np.unique(np.round(np.linspace(0, d, steps + 1)).astype(int)) / d
    return Faithfulness(fr, curves, {k: float(v.mean()) for k, v in per_sample.items()}, per_sample)


def text_faithfulness(model, sentences: list[str], relevances: dict, target: Callable, steps: int = 8,
                      seed: int = 0) -> Faithfulness:
    """Token removal for a text model: the most relevant tokens are dropped from attention and from
    the mean pooling ([CLS]/[SEP] are never removed), the explained output recorded at each step."""
    import torch

    module, wrapper = _unwrap(model)
    clone = working_copy(module, None, getattr(wrapper, "lock", None))
    from .models.hf import MAX_TOKENS

    enc = wrapper.tokenizer(list(sentences), padding=True, truncation=True, max_length=MAX_TOKENS,
                            return_tensors="pt")
    mask = enc["attention_mask"]
    special = torch.as_tensor([[t in wrapper.tokenizer.all_special_ids for t in row]
                               for row in enc["input_ids"].tolist()])
    removable = (mask.bool() & ~special).numpy()

    def score(keep):
        k = torch.as_tensor(keep.reshape(mask.shape) > 0)
        m = (mask.bool() & (k | special)).long()
        with torch.no_grad():
            hidden = clone(**{**enc, "attention_mask": m}).last_hidden_state
            f = target(sentence_embedding(hidden, m))
            return (f[0] if isinstance(f, tuple) else f).double().numpy()

    rng = np.random.default_rng(seed)
    maps = {}
    for name, r in relevances.items():
        r = np.asarray(r, dtype=np.float64).copy()
        r[~removable] = -np.inf  # removed last, and the removal of padding changes nothing
        maps[name] = r
    rnd = rng.random(mask.shape)
    rnd[~removable] = -np.inf
    maps["random"] = rnd
    return _faithfulness_from(score, maps, steps, mask.shape[1:])


def dataset_faithfulness(model, ds, target: str = "predicted", rule: str = "epsilon", epsilon: float = 1e-6,
                         gamma: float = 0.25, n: int = 200, steps: int = 16, seed: int = 0,
                         store=None, bias: bool = True) -> Faithfulness:
    """Pixel flipping on the first ``n`` rows of ``ds`` for LRP, gradient x input and a random order
    (the relevance comes from :func:`dataset_relevance`); cached in the store."""
    from .store import default_store, make_key

    store = store or default_store()
    key = make_key("lrp_faithfulness", model=model.sha256, data=ds.sha256, target=target, rule=rule,
                   epsilon=float(epsilon), gamma=float(gamma), n=n, steps=steps, seed=seed, bias=bool(bias),
                   version=LRP_CACHE_VERSION)
    hit = store.get(key)
    methods = ("lrp", "gradient x input", "random")
    if hit is not None:
        return Faithfulness(hit["fractions"], {m: hit[f"curve {m}"] for m in methods},
                            {m: float(hit[f"aopc {m}"].mean()) for m in methods},
                            {m: hit[f"aopc {m}"] for m in methods})
    kw = dict(target=target, rule=rule, epsilon=epsilon, gamma=gamma, store=store, bias=bias)
    lrp_r = dataset_relevance(model, ds, **kw)
    gxi = dataset_relevance(model, ds, method="gradient x input", **kw)
    rows = slice(0, min(n, len(ds)))
    x = np.asarray(ds.inputs, dtype=np.float32)[rows]
    res = faithfulness(model, x, {"lrp": lrp_r["relevance"][rows], "gradient x input": gxi["relevance"][rows]},
                       lrp_r["target"][rows], steps=steps, seed=seed)
    arrays = {"fractions": res.fractions, **{f"curve {m}": res.curves[m] for m in methods},
              **{f"aopc {m}": res.per_sample_aopc[m] for m in methods}}
    store.put(key, arrays, {"model": model.ref, "data": ds.name}, kind="lrp")
    return res


def text_dataset_relevance(model, ds, topic: str = "predicted", rule: str = "epsilon", epsilon: float = 1e-6,
                           gamma: float = 0.25, batch_size: int = 32, store=None, progress=None,
                           bias: bool = True) -> dict:
    """Token relevance of every sentence of a text dataset for the model's topic probe (see
    :func:`fit_topic_probe`), cached in the store. Returns {"relevance", "mask", "ids"} padded to the
    longest sentence (n, tokens), and "output" (n,)."""
    from .store import default_store, make_key

    store = store or default_store()
    key = make_key("lrp_text_dataset", model=model.sha256, data=ds.sha256, topic=topic, rule=rule,
                   epsilon=float(epsilon), gamma=float(gamma), bias=bool(bias), version=LRP_CACHE_VERSION)
    hit = store.get(key)
    if hit is not None:
        return hit
    target = fit_topic_probe(model, ds, store=store).target(topic)
    texts = [str(t) for t in ds.inputs]
    parts = []
    for i in range(0, len(texts), batch_size):
        a = attribute(model, texts[i: i + batch_size], target, rule=rule, epsilon=epsilon, gamma=gamma, bias=bias)
        ids = [model.tokenizer.convert_tokens_to_ids(t) for t in a.tokens]
        parts.append((a.input_relevance, a.mask, np.asarray(ids), a.output))
        if progress:
            progress(min(1.0, (i + batch_size) / len(texts)), f"{model.name}: {min(len(texts), i + batch_size)}"
                                                              f"/{len(texts)} sentences")
    width = max(p[0].shape[1] for p in parts)

    def pad(x, value=0):
        return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=value)

    result = {"relevance": np.concatenate([pad(p[0]) for p in parts]),
              "mask": np.concatenate([pad(p[1].astype(np.int8)) for p in parts]).astype(bool),
              "ids": np.concatenate([pad(p[2], -1) for p in parts]), "output": np.concatenate([p[3] for p in parts])}
    store.put(key, result, {"model": model.ref, "data": ds.name, "rule": rule}, kind="lrp")
    return result


def text_agreement(a: dict, b: dict) -> np.ndarray:
    """Per-sentence rank agreement of two models' token relevance (from :func:`text_dataset_relevance`);
    the two models must split the sentences into the same tokens."""
    if a["ids"].shape != b["ids"].shape or not np.array_equal(a["ids"], b["ids"]):
        raise UserInputError("The two models split the sentences into different tokens: their token maps "
                             "cannot be ranked against each other.")
    return rank_agreement(a["relevance"], b["relevance"], a["mask"])


def image_from_upload(data: bytes, filename: str, shape=(8, 8)) -> np.ndarray:
    """An uploaded picture as one input row: grey, resized to ``shape``, scaled to [0, 1], ink bright
    (as in digits: a dark-on-light drawing is inverted)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data)).convert("L").resize(shape[::-1], Image.Resampling.BOX)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserInputError(f"{filename} is not an image RepLens can read (PNG, JPEG, ...): {exc}") from exc
    x = np.asarray(img, dtype=np.float64) / 255.0
    if x.mean() > 0.5:
        x = 1.0 - x
    span = x.max() - x.min()
    x = (x - x.min()) / span if span > 0 else np.zeros_like(x)
    return x.reshape(1, -1).astype(np.float32)


# --------------------------------------------------------------------------- agreement, units
def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks (1..d) along the last axis of a 2-D array, ties sharing their average rank (as
    scipy.stats.rankdata), vectorised over rows."""
    n, d = a.shape
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, 1)
    pos = np.broadcast_to(np.arange(d), (n, d))
    starts = np.ones((n, d), bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = np.ones((n, d), bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, d)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((n, d))
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, 1)
    return ranks


def rank_agreement(ra: np.ndarray, rb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Spearman rank correlation between two relevance maps, per row (NaN for a constant row);
    ``mask`` (per row) restricts each row to its real entries (tokens)."""
    a = np.asarray(ra, dtype=np.float64).reshape(len(ra), -1)
    b = np.asarray(rb, dtype=np.float64).reshape(len(rb), -1)
    if a.shape != b.shape:
        raise UserInputError(f"The two relevance maps differ in shape ({a.shape[1:]} vs {b.shape[1:]}): "
                             "rank agreement needs the same inputs for both models.")
    if mask is None:
        return _pearson_rows(_average_ranks(a), _average_ranks(b))
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        keep = np.asarray(mask[i]).reshape(-1).astype(bool)
        out[i] = _pearson_rows(_average_ranks(a[i:i + 1, keep]), _average_ranks(b[i:i + 1, keep]))[0]
    return out


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    den = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (x * y).sum(1) / np.where(den > 0, den, 1), np.nan)


def pair_summary(a: dict, b: dict) -> dict:
    """Two models' dataset relevance (from :func:`dataset_relevance`) side by side: per-sample rank
    agreement, each model's per-sample relevance sums, and the median sum / explained output."""
    sums = [np.asarray(r["relevance"], np.float64).reshape(len(r["relevance"]), -1).sum(1) for r in (a, b)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = [float(np.nanmedian(s / r["output"])) for s, r in zip(sums, (a, b))]
    return {"agreement": rank_agreement(a["relevance"], b["relevance"]), "sums": sums, "conservation": ratio}


def unit_relevance(layer_relevance: np.ndarray, token_mask: np.ndarray | None = None) -> np.ndarray:
    """Relevance per unit of a layer, per row: (n, units). Channels of a convolution are summed over
    positions; token outputs (n, tokens, d) over real tokens."""
    r = np.asarray(layer_relevance, dtype=np.float64)
    if r.ndim == 2:
        return r
    if token_mask is not None and r.ndim == 3:  # (n, tokens, d): sum over real tokens
        return (r * np.asarray(token_mask)[..., None]).sum(1)
    return r.reshape(r.shape[0], r.shape[1], -1).sum(2)  # (n, channels, ...): sum over positions


# --------------------------------------------------------------------------- cached, dataset level
def dataset_relevance(model, ds, target: str = "predicted", rule: str = "epsilon", epsilon: float = 1e-6,
                      gamma: float = 0.25, method: str = "lrp", batch_size: int = 256, store=None,
                      progress=None, bias: bool = True) -> dict:
    """Input relevance of every row of an image/vector dataset for a classifier, cached in the store.
    ``target``: "predicted", "true" or a class index as a string ("3"). ``method``: "lrp" or
    "gradient x input". Returns {"relevance" (n, features), "output" (n,), "target" (n,)}."""
    from .store import default_store, make_key

    if model.kind != "classifier":
        raise UserInputError(f"{model.ref} is a {model.kind}: LRP on images explains a class score, so pick a "
                             "classifier (zoo:mlp-*, zoo:cnn-*).")
    model.check_data(ds)
    rs = rule_set(rule, None, epsilon, gamma, bias=bias)
    store = store or default_store()
    key = make_key("lrp_dataset", model=model.sha256, data=ds.sha256, target=target, rule=rs.name,
                   epsilon=rs.epsilon, gamma=rs.gamma, method=method, bias=rs.bias, version=LRP_CACHE_VERSION)
    hit = store.get(key)
    if hit is not None:
        return hit
    tgt = int(target) if target not in ("predicted", "true") else target
    x = np.asarray(ds.inputs, dtype=np.float32)
    parts = {"relevance": [], "output": [], "target": []}
    for i in range(0, len(x), batch_size):
        sl = slice(i, i + batch_size)
        lab = None if ds.labels is None else ds.labels[sl]
        if method == "lrp":
            a = attribute(model, x[sl], tgt, rule=rule, epsilon=epsilon, gamma=gamma, labels=lab, bias=bias)
        else:
            a = gradient_x_input(model, x[sl], tgt, labels=lab)
        parts["relevance"].append(a.input_relevance.astype(np.float32))
        parts["output"].append(a.output)
        parts["target"].append(a.target)
        if progress:
            progress(min(1.0, (i + batch_size) / len(x)), f"{model.name}: relevance of {min(len(x), i + batch_size)}"
                                                          f"/{len(x)} samples")
    result = {k: np.concatenate(v) for k, v in parts.items()}
    store.put(key, result, {"model": model.ref, "data": ds.name, "rule": rs.name}, kind="lrp")
    return result


# --------------------------------------------------------------------------- headless run (CLI)
def run_page(spec, progress=None, device=None):
    """The Attributions page's dataset-level numbers for digits classifiers, headless: both models'
    relevance (same store keys as the page), rank agreement, conservation, pixel flipping with
    AOPC, and the maps of the chosen samples. Returns an :class:`analysis.runners.PageResult`."""
    import pandas as pd

    from . import lrp_figures as lf
    from .runners import PageResult, _inputs

    ds, model_a, model_b, prov = _inputs(spec)
    p = spec.params
    if ds.kind != "image":
        raise UserInputError("The headless Attributions run covers digits classifiers; text views need the page.")
    target = str(int(p["at_class"])) if p["at_target"] == "class" else p["at_target"]
    kw = dict(target=target, rule=p["at_rule"], epsilon=float(p["at_eps"]), gamma=float(p["at_gamma"]),
              bias=bool(p["at_bias"]))
    models_ = {"A": model_a, "B": model_b}
    full, faith = {}, {}
    for k, (slot, m) in enumerate(models_.items()):
        step = None if progress is None else (lambda f, msg, k=k: progress(0.5 * (k + f), msg))
        full[slot] = dataset_relevance(m, ds, progress=step, **kw)
        faith[slot] = dataset_faithfulness(m, ds, n=100, **kw)
    summary = pair_summary(full["A"], full["B"])
    out = PageResult(spec, provenance=prov)
    out.numbers["rules"] = rule_set(p["at_rule"], None, float(p["at_eps"]), float(p["at_gamma"]),
                                    bias=bool(p["at_bias"])).description
    out.numbers["rank agreement of A and B (dataset mean)"] = float(np.nanmean(summary["agreement"]))
    for j, slot in enumerate(models_):
        out.numbers[f"median sum(R) / f, {slot}"] = summary["conservation"][j]
        for method, value in faith[slot].aopc.items():
            out.numbers[f"AOPC {slot} {method}"] = value
    rows = [int(i) for i in p["at_samples"] if 0 <= int(i) < len(ds)]
    x = np.asarray(ds.inputs, dtype=np.float32)[rows]
    for slot, m in models_.items():
        att = attribute(m, x, int(target) if target.isdigit() else target, rule=p["at_rule"],
                        epsilon=float(p["at_eps"]), gamma=float(p["at_gamma"]), bias=bool(p["at_bias"]),
                        labels=None if ds.labels is None else ds.labels[rows], device=device)
        out.figures[f"at_maps_{slot}"] = lf.relevance_grid(
            x, att.input_relevance, [f"#{i} → class {int(c)}" for i, c in zip(rows, att.target)], ds.image_shape)
    out.figures["at_agree"] = lf.agreement_histogram(summary["agreement"])
    out.figures["at_conservation"] = lf.conservation_figure(
        {f"{s} · {models_[s].ref}": (full[s]["output"], summary["sums"][j]) for j, s in enumerate(models_)})
    out.figures["at_faith"] = lf.faithfulness_figure(faith)
    out.tables["agreement per sample"] = pd.DataFrame({"row": ds.indices, "spearman": summary["agreement"]})
    return out


# --------------------------------------------------------------------------- the page's parameters
PAGE_EPSILONS = (1e-9, 1e-6, 1e-3, 0.01, 0.1, 0.25)
PAGE_GAMMAS = (0.0, 0.1, 0.25, 0.5, 1.0)


def _register_page() -> None:
    """Declare the Attributions page's URL parameters (share links, CLI) in analysis.spec."""
    from . import spec

    spec.register("attributions", (
        spec.Param("at_rule", "str", "epsilon", choices=RULES + COMPOSITES, help="LRP rule or composite"),
        spec.Param("at_eps", "float", 1e-6, choices=PAGE_EPSILONS, help="epsilon"),
        spec.Param("at_gamma", "float", 0.25, choices=PAGE_GAMMAS, help="gamma"),
        spec.Param("at_bias", "bool", True, help="biases in the rules' denominators (zennit's default)"),
        spec.Param("at_target", "str", "predicted", choices=TARGETS, help="class target (images)"),
        spec.Param("at_class", "int", 0, lo=0, hi=999, help="class explained when the target is 'class'"),
        spec.Param("at_samples", "list", ["0", "1", "2", "3", "4", "5"], help="gallery positions shown (images)"),
        spec.Param("at_text_target", "str", "topic", choices=("topic", "similarity"), help="text: what to explain"),
        spec.Param("at_topic", "str", "predicted", help="text: topic of the probe, or 'predicted'"),
        spec.Param("at_sentences", "list", ["0", "1", "2", "3"], help="text: rows shown"),
        spec.Param("at_text", "text", help="text: a typed sentence"),
        spec.Param("at_second", "text", help="text: the second sentence (similarity)"),
        spec.Param("at_text_faith", "bool", False, help="text: token-removal curves"),
        spec.Param("at_text_dataset", "bool", False, help="text: agreement over every sentence of the dataset"),
        spec.Param("at_layer_a", "str", help="hidden layer of A (default: the last before the output)"),
        spec.Param("at_layer_b", "str", help="hidden layer of B"),
    ))


_register_page()
