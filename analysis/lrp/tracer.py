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

    class Rescale(torch.autograd.Function):
        """Forward: ``value`` (default ``x``); backward: the gradient times ``k`` goes to ``x``."""

        @staticmethod
        def forward(ctx, x, k, value=None):
            if isinstance(k, torch.Tensor):
                ctx.save_for_backward(k)
            ctx.k = k if not isinstance(k, torch.Tensor) else None
            out = x if value is None else value
            return out.view_as(out)

        @staticmethod
        def backward(ctx, g):
            k = ctx.saved_tensors[0] if ctx.k is None else ctx.k
            return g * k, None, None

    class LayerNorm(torch.autograd.Function):
        """torch's fused layer norm forward; backward with the standard deviation held constant
        (the centring stays: it is linear), so the layer is linear in its input for the relevance."""

        @staticmethod
        def forward(ctx, x, normalized_shape, weight, bias, eps):
            y, _, rstd = torch.native_layer_norm(x, normalized_shape, weight, bias, eps)
            ctx.save_for_backward(rstd, weight)
            ctx.dims = tuple(range(-len(normalized_shape), 0))
            return y

        @staticmethod
        def backward(ctx, g):
            rstd, weight = ctx.saved_tensors
            gw = g if weight is None else g * weight
            return (gw - gw.mean(ctx.dims, keepdim=True)) * rstd, None, None, None, None

    _FUNCTIONS.update(RuleLinear=RuleLinear, Rescale=Rescale, LayerNorm=LayerNorm)
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


_MODE: list = []
# Elements from which three extra passes over a tensor cost more than one Python backward call
# (measured on the zoo MLP, 64 x 128, and MiniLM's layers: the crossover lies between).
_NATIVE_RESCALE_BELOW = 1 << 15


def lrp_mode():
    """The :class:`~torch.overrides.TorchFunctionMode` class (built once; one instance per call)."""
    if not _MODE:
        _MODE.append(_build_mode())
    return _MODE[0]


def _build_mode():
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    fn = _functions()
    def rescale(x, k, value=None):
        """Forward: ``value`` (default ``x``); backward: the gradient times ``k`` goes to ``x``. A rule
        whose gradient is the layer's own gradient of a rescaled output gradient (epsilon: k = z /
        (z + eps sign z)) runs the native layer and this, so the backward pass stays torch's own.
        Small tensors: three native autograd nodes (x - x.detach() is exactly 0 and every k here is
        finite), cheaper than a Python backward; large ones: one autograd function, one product."""
        if x.numel() >= _NATIVE_RESCALE_BELOW:
            return fn["Rescale"].apply(x, k, value)
        xd = x.detach()
        return (xd if value is None else value) + (x - xd) * k
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

    # Every torch call of the model passes through __torch_function__: one dict look-up sends the few
    # that need a rule to their handler (mode, func, args, kwargs), the rest run as they are.
    def on_linear(mode, func, args, kwargs):
        return mode._linear(func, linear_ops[func], args, kwargs)

    def on_addmm(mode, func, args, kwargs):  # transformers' Conv1D (GPT-2): addmm(bias, x, weight)
        if len(args) == 3 and not kwargs and args[0].dim() == 1 and grads(args[1]):
            return mode._linear(F.linear, 0, (args[1], args[2].t(), args[0]), {})
        return func(*args, **kwargs)

    def on_unsupported(mode, func, args, kwargs):
        raise UserInputError(f"LRP rules for {unsupported[func]} are not implemented: write the attention "
                             "with F.scaled_dot_product_attention (or q @ k and softmax), or use LayerNorm.")

    def on_pool(mode, func, args, kwargs):
        if not grads(args[0]) or kwargs.get("return_indices"):
            return func(*args, **kwargs)
        z = func(*args, **kwargs)
        zd = z.detach()
        return rescale(z, zd / stabilize(zd, mode.tape.rs.epsilon))

    def on_elementwise(mode, func, args, kwargs):
        x = args[0]
        if not grads(x):
            return func(*args, **kwargs)
        xd = x.detach()
        y = func(xd, *args[1:], **kwargs)
        return rescale(x, y / stabilize(xd, 1e-12), y)  # the identity rule: backward f(x) / x

    def on_layer_norm(mode, func, args, kwargs):
        return _layer_norm(fn["LayerNorm"], *args, **kwargs)

    def on_rms_norm(mode, func, args, kwargs):
        return _rms_norm(*args, **kwargs)

    def on_normalize(mode, func, args, kwargs):
        return _normalize(*args, **kwargs)

    def on_attention(mode, func, args, kwargs):
        return _attention(*args, **kwargs)

    def on_constant(mode, func, args, kwargs):
        return detach_all(func(*args, **kwargs))

    def on_product(mode, func, args, kwargs):
        if len(args) == 2 and grads(*args) and not kwargs:
            a, b = args
            # a bilinear product: each factor gets half of the gradient (relevance split evenly): the
            # product's own backward of half the output gradient, d(ab) = (g b / 2, a g / 2)
            return rescale(func(a, b), 0.5)
        return func(*args, **kwargs)

    rule_handlers = {**dict.fromkeys(linear_ops, on_linear), torch.addmm: on_addmm,
                     **dict.fromkeys(unsupported, on_unsupported), **dict.fromkeys(pools, on_pool),
                     **dict.fromkeys(elementwise, on_elementwise), F.layer_norm: on_layer_norm,
                     F.normalize: on_normalize, F.scaled_dot_product_attention: on_attention,
                     **dict.fromkeys(constants, on_constant), **dict.fromkeys(products, on_product)}
    if hasattr(F, "rms_norm"):
        rule_handlers[F.rms_norm] = on_rms_norm

    class LRPMode(TorchFunctionMode):
        def __init__(self, tape: Tape):
            super().__init__()
            self.tape = tape
            self.handlers = rule_handlers if tape.rs is not None else {}

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            handler = self.handlers.get(func)
            if handler is not None:
                return handler(self, func, args, kwargs)
            if func is F.embedding and self.tape.tap_embeddings:
                return self._embedding(func, args, kwargs)
            return func(*args, **kwargs)

        def _embedding(self, func, args, kwargs):
            tape = self.tape
            out = func(*args, **kwargs)
            if tape.batch and out.dim() >= 3 and out.shape[0] == 1 and tape.batch > 1:
                out = out.expand(tape.batch, *out.shape[1:])
            leaf = out.detach().clone().requires_grad_(True)
            tape.embeddings.append(leaf)
            return leaf

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
            impl = get_rule(rule)
            if impl.rescales:
                return self._rescaled(impl, func, conv_dims, a, w, b, bound)
            return fn["RuleLinear"].apply(a, w, b, LinearOp(func, bound, conv_dims), rule, rs, tape)

        def _rescaled(self, impl, func, conv_dims, a, w, b, bound):
            """The native layer, its output gradient rescaled by the rule (torch's own backward)."""
            rs = self.tape.rs
            if b is None or rs.bias:
                z = func(a, w, b, **bound)
                zd = z_rule = z.detach()
            else:  # biases left out of the rule: z = a w + b from a w, one pass
                z_rule = func(a, w, None, **bound)
                z = z_rule + (b.reshape(-1, *(1,) * conv_dims) if conv_dims else b)
                zd, z_rule = z.detach(), z_rule.detach()
            return rescale(z, impl.scale(zd, z_rule, rs))

    return LRPMode


def _layer_norm(function, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    return function.apply(x, tuple(normalized_shape), weight, bias, eps)


def _rms_norm(x, normalized_shape, weight=None, eps=None):
    import torch

    dims = tuple(range(-len(normalized_shape), 0))
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y = x / (x.pow(2).mean(dims, keepdim=True) + eps).sqrt().detach()
    return y * weight if weight is not None else y


def _normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
    return x / x.norm(p, dim, keepdim=True).clamp_min(eps).detach()


def _attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Scaled dot-product attention with the attention weights held constant (CP-LRP): the weights
    are computed without autograd and the gradient flows through the values only, in one batched
    product (torch's fused kernel would compute, and throw away, the gradients of q and k too)."""
    import torch

    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    if enable_gqa and k.size(-3) != q.size(-3):
        rep = q.size(-3) // k.size(-3)
        k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    with torch.no_grad():
        scores = (q @ k.transpose(-2, -1)).mul_(scale)
        if is_causal:
            n, m = scores.shape[-2:]
            causal = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
            scores.masked_fill_(~causal, float("-inf"))
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores + attn_mask
        weights = torch.softmax(scores, -1)
    return weights @ v
