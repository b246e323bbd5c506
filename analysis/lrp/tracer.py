"""The backward-pass swap: while a model runs its ordinary forward pass under :class:`LRPMode` (a
thread-local :class:`torch.overrides.TorchFunctionMode`), a few operations are replaced by versions
whose gradient carries relevance, so that one backward pass gives R = a * da at any tensor:

- linear and convolution layers: the layer's LRP rule (:mod:`analysis.lrp.rules`) via a custom
  autograd function; an input-domain rule on the layer reading the inputs records their relevance;
- elementwise nonlinearities (GELU, SiLU, tanh, sigmoid, ...): the identity rule, backward = f(x)/x;
- normalisation (LayerNorm, RMSNorm, ``F.normalize``, rsqrt/sqrt): the statistics are constants;
- attention: the softmax weights are constants (CP-LRP), so attention is linear in the values;
- other bilinear products of two relevance-carrying tensors (gated MLPs, two sentences'
  embeddings): each factor gets half of the gradient;
- average pooling: the epsilon rule (zennit's Norm); max pooling keeps its gradient (winner takes all);
- residual additions and everything linear need nothing: gradient x input splits their relevance
  in proportion to the summands (no double counting, unlike per-module hooks).
"""
from __future__ import annotations

import math

from ..errors import UserInputError
from .composites import RuleSet
from .rules import Layer, LinearOp, get_rule, stabilize

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
            layer = Layer(ctx.op, a, w, b, z, z * g, b if ctx.rs.bias else None)  # bias=False: zennit's zero_params
            grad, direct = get_rule(ctx.rule).backward(layer, ctx.rs)
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
            return g * y / stabilize(x, 1e-12), None

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
                grad, = torch.autograd.grad(ctx.op(a_), a_, z * g / stabilize(z, ctx.eps))
            return grad, None, None

    _FUNCTIONS.update(RuleLinear=RuleLinear, Identity=Identity, Pooling=Pooling)
    return _FUNCTIONS


# --------------------------------------------------------------------------- the function mode
class Tape:
    """What one attribution collects while the model runs (one per call, never shared)."""

    def __init__(self, rs: RuleSet | None, x=None, batch: int | None = None, tap_embeddings: bool = False):
        self.rs, self.x, self.batch, self.tap_embeddings = rs, x, batch, tap_embeddings
        self.input_relevance = None
        self.embeddings: list = []  # (tensor) leaves standing for embedding lookups
        self.first_seen = False


def _is_input(t, x) -> bool:
    return x is not None and (t is x or getattr(t, "_base", None) is x)


def lrp_mode():
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
        def __init__(self, tape: Tape):
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
            if get_rule(rule).input_layer and not first:
                rule = "epsilon"
            if first:
                tape.first_seen = True
            return fn["RuleLinear"].apply(a, w, b, LinearOp(func, bound, conv_dims), rule, rs, tape)

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
