"""LRP rules as small registered classes (as zennit does): a rule is one class that says how a
linear layer ``z = a w + b`` (dense or convolution) passes the relevance ``R = z * g`` arriving at
its output down to its input. Registering a class (:func:`register_rule`) is all it takes for
``attribute(rule=...)``, the composites, the page's choices and the descriptions to know it.

A rule returns a *gradient* for ``a`` such that ``a * gradient`` is its input relevance, so the
ordinary backward pass carries it on to the layers below (gradient x input everywhere else). An
input-domain rule (flat, w^2, z^B: :class:`InputRule`) reads the pixels' bounds or ignores the
input altogether; it is used on the layer that reads the inputs only and gives their relevance
directly.

The rules follow zennit 0.5 numerically (every denominator stabilised by ``epsilon * sign``, with
sign(0) = 1; biases in the denominators unless the bias convention leaves them out, see
:data:`BIAS_CONVENTIONS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import ClassVar

from ..errors import UserInputError

# Whether biases enter the rules' denominators (``bias=`` of attribute), in words for the page.
BIAS_CONVENTIONS = {
    True: "Biases take part in the rules (zennit's default): the relevance a bias takes is not passed down, so "
          "the input relevance sums to the explained output minus what the biases took.",
    False: "Biases are left out of the rules' denominators (zennit's zero_params='bias'; captum's z+): each layer "
           "passes on all the relevance it receives, so the input relevance sums to the explained output, except "
           "the relevance of units whose inputs are all zero (a convolution over blank background): it came from "
           "their biases and has nowhere to go.",
}


def stabilize(z, eps):
    """z + eps * sign(z), with sign(0) = 1 (zennit's stabiliser): a denominator that is never 0."""
    import torch

    # copysign is one fast kernel (where with scalars is not); -0.0 + 0.0 is +0.0, so sign(-0.0) = 1 too
    return z + torch.copysign(_scalar(eps, z.dtype, z.device), z + 0.0)


@lru_cache(maxsize=64)
def _scalar(value: float, dtype, device):
    """A 0-d tensor (read only), made once per value, dtype and device."""
    import torch

    return torch.tensor(value, dtype=dtype, device=device)


class LinearOp:
    """A linear operator (F.linear or a convolution) and its input-gradient (vector-Jacobian product)."""

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


@dataclass
class Layer:
    """One linear layer during the backward pass: its operator, input ``a``, weight ``w``, bias ``b``
    (None when it has none), output ``z`` and the relevance ``r`` arriving at the output. ``bias`` is
    the bias the rules use: ``b``, or None when the convention leaves biases out."""

    op: LinearOp
    a: object
    w: object
    b: object
    z: object
    r: object
    bias: object

    @cached_property
    def z_rule(self):
        """The output under the bias convention: ``z``, or ``a w`` when the bias is left out."""
        return self.z if self.bias is self.b else self.op.fwd(self.a, self.w)

    def vjp(self, w, s):
        return self.op.vjp(self.a.shape, w, s)

    def fwd(self, a, w, b=None):
        return self.op.fwd(a, w, b)

    def fwd_pair(self, a, w1, b1, w2, b2):
        """(a w1 + b1, a w2 + b2) in one pass of the operator (the weights stacked along the outputs)."""
        import torch

        if self.op.kwargs.get("groups", 1) != 1:
            return self.fwd(a, w1, b1), self.fwd(a, w2, b2)
        b = None if b1 is None and b2 is None else torch.cat([torch.zeros(len(w1), dtype=w1.dtype, device=w1.device)
                                                              if t is None else t for t in (b1, b2)])
        z = self.fwd(a, torch.cat([w1, w2]), b)
        dim = 1 if self.op.conv_dims else -1
        return z.split(len(w1), dim)

    def fwd_split(self, a1, w1, a2, w2, b=None):
        """a1 w1 + a2 w2 + b in one pass of the operator (inputs and weights stacked along the inputs)."""
        import torch

        if self.op.kwargs.get("groups", 1) != 1:
            return self.fwd(a1, w1, b) + self.fwd(a2, w2)
        return self.fwd(torch.cat([a1, a2], 1 if self.op.conv_dims else -1), torch.cat([w1, w2], 1), b)

    def vjp_split(self, w1, w2, s):
        """(vjp(w1, s), vjp(w2, s)) in one pass of the transposed operator."""
        import torch

        if self.op.kwargs.get("groups", 1) != 1:
            return self.vjp(w1, s), self.vjp(w2, s)
        w = torch.cat([w1, w2], 1)
        if not self.op.conv_dims:
            g = s @ w if s.dim() > 1 else w.t() @ s
            return g.split(w1.shape[1], -1)
        shape = list(self.a.shape)
        shape[1] *= 2
        return self.op.vjp(shape, w, s).split(w1.shape[1], 1)

    def vjp_pair(self, w1, s1, w2, s2):
        """vjp(w1, s1) + vjp(w2, s2) in one pass of the transposed operator."""
        import torch

        if self.op.kwargs.get("groups", 1) != 1:
            return self.vjp(w1, s1) + self.vjp(w2, s2)
        return self.vjp(torch.cat([w1, w2]), torch.cat([s1, s2], 1 if self.op.conv_dims else -1))

    # the positive and negative parts the sign-aware rules split into
    @cached_property
    def nonnegative(self) -> bool:
        """No input is negative (after a ReLU, pixels): the rules' negative-input branch is empty, and
        a zero input, whose relevance is zero, takes the positive branch (sign(0) = 1, as in the
        stabiliser)."""
        return not bool((self.a < 0).any())

    @cached_property
    def ap(self):
        return self.a.clamp(min=0)

    @cached_property
    def an(self):
        return self.a.clamp(max=0)

    @cached_property
    def wp(self):
        return self.w.clamp(min=0)

    @cached_property
    def wn(self):
        return self.w.clamp(max=0)

    @cached_property
    def bp(self):
        return None if self.bias is None else self.bias.clamp(min=0)

    @cached_property
    def bn(self):
        return None if self.bias is None else self.bias.clamp(max=0)


class Rule:
    """A rule for linear layers. ``name``: its key (``attribute(rule=name)``, the URL);
    ``description``: what it does, in words; ``uses_bias``: whether a bias enters it (so the bias
    convention matters). ``gradient(layer, rs)`` returns the gradient for ``layer.a`` whose product
    with ``a`` is the rule's input relevance; ``rs`` is the :class:`~analysis.lrp.composites.RuleSet`
    (epsilon, gamma, alpha, beta, low, high)."""

    name: ClassVar[str]
    description: ClassVar[str]
    uses_bias: ClassVar[bool] = True
    input_layer: ClassVar[bool] = False  # an input-domain rule: first layer only (see InputRule)
    passes: ClassVar[float] = 2.0  # applications of the layer's operator (forward or transposed) per
    # backward pass, for the cost estimate (analysis.lrp.cost)
    rescales: ClassVar[bool] = False  # the gradient is the layer's own gradient of the output gradient
    # times ``scale(...)``: the tracer then runs the native layer (one forward, torch's backward)

    def scale(self, z, z_rule, rs):
        """For a rule that ``rescales``: the factor on the output gradient, from the output ``z`` and
        the output under the bias convention ``z_rule`` (both detached)."""
        raise NotImplementedError

    def backward(self, layer: Layer, rs) -> tuple:
        """(gradient for a, relevance at a or None)."""
        return self.gradient(layer, rs), None

    def gradient(self, layer: Layer, rs):
        raise NotImplementedError


class InputRule(Rule):
    """An input-domain rule: used on the layer that reads the inputs (other layers of a model get
    epsilon), its ``relevance(layer, rs)`` is the input relevance itself."""

    input_layer: ClassVar[bool] = True

    def backward(self, layer: Layer, rs) -> tuple:
        import torch

        return torch.zeros_like(layer.a), self.relevance(layer, rs)

    def relevance(self, layer: Layer, rs):
        raise NotImplementedError


REGISTRY: dict[str, Rule] = {}


def register_rule(cls: type[Rule]) -> type[Rule]:
    """Make a rule known by its ``name`` (a class decorator). A second class under a name already
    taken is refused, so two rules never shadow each other silently."""
    name = getattr(cls, "name", "")
    if not name or not isinstance(getattr(cls, "description", None), str):
        raise TypeError(f"{cls.__name__} needs a class attribute 'name' and a 'description'")
    if name in REGISTRY and type(REGISTRY[name]) is not cls:
        raise ValueError(f"an LRP rule named {name!r} exists already ({type(REGISTRY[name]).__name__})")
    REGISTRY[name] = cls()
    return cls


def unregister_rule(name: str) -> None:
    REGISTRY.pop(name, None)


def get_rule(name: str) -> Rule:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserInputError(f"Unknown LRP rule {name!r}.") from None


def rule_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def input_rule_names() -> tuple[str, ...]:
    return tuple(n for n, r in REGISTRY.items() if r.input_layer)


def bias_rule_names() -> tuple[str, ...]:
    return tuple(n for n, r in REGISTRY.items() if r.uses_bias)


# --------------------------------------------------------------------------- the rules
@register_rule
class Epsilon(Rule):
    name = "epsilon"
    description = "LRP-epsilon on every layer (LRP-0 as epsilon -> 0: gradient x input)"
    passes = 1.0
    rescales = True

    def scale(self, z, z_rule, rs):
        if z_rule is z:  # z / (z + eps sign z) = |z| / (|z| + eps), exactly (negation is exact): 3 kernels
            m = z.abs()
            return m / (m + rs.epsilon)
        return z / stabilize(z_rule, rs.epsilon)

    def gradient(self, layer, rs):
        return layer.vjp(layer.w, layer.r / stabilize(layer.z_rule, rs.epsilon))


@register_rule
class Gamma(Rule):
    """zennit's sign-aware gamma: the contributions that share the output's sign are amplified."""

    name = "gamma"
    description = "LRP-gamma on every layer: contributions of the output's sign amplified by gamma"
    passes = 8.0

    def gradient(self, layer, rs):
        import torch

        w, bias, eps, g = layer.w, layer.bias, rs.epsilon, rs.gamma
        wg_p, wg_n = w + g * layer.wp, w + g * layer.wn
        bp = None if bias is None else bias + g * layer.bp
        bn = None if bias is None else bias + g * layer.bn
        pos = layer.z > 0
        if layer.nonnegative:  # half the passes: the negative inputs' terms are zero
            z_pos, z_neg = layer.fwd_pair(layer.a, wg_p, bp, wg_n, bn)
            s_pos = torch.where(pos, layer.r / stabilize(z_pos, eps), 0.0)
            s_neg = torch.where(pos, 0.0, layer.r / stabilize(z_neg, eps))
            return layer.vjp_pair(wg_p, s_pos, wg_n, s_neg)
        z_pos = layer.fwd_split(layer.ap, wg_p, layer.an, wg_n, bp)
        z_neg = layer.fwd_split(layer.ap, wg_n, layer.an, wg_p, bn)
        s_pos = torch.where(pos, layer.r / stabilize(z_pos, eps), 0.0)
        s_neg = torch.where(pos, 0.0, layer.r / stabilize(z_neg, eps))
        (pos_p, pos_n), (neg_n, neg_p) = layer.vjp_split(wg_p, wg_n, s_pos), layer.vjp_split(wg_n, wg_p, s_neg)
        return torch.where(layer.a > 0, pos_p + neg_n, pos_n + neg_p)


class _SignSplit(Rule):
    """alpha times each input's share of the positive contributions, minus beta times its share of
    the negative ones (zennit's AlphaBeta; z+ is alpha = 1, beta = 0)."""

    def weights(self, rs) -> tuple[float, float]:
        raise NotImplementedError

    def gradient(self, layer, rs):
        import torch

        alpha, beta = self.weights(rs)
        eps = rs.epsilon
        if layer.nonnegative:  # half the passes: the negative inputs' terms are zero
            if not beta:  # z+ = a w+ + b+ >= 0 (never -0.0: no factor is negative), so stabilising adds eps
                s_pos = layer.r / (layer.fwd(layer.a, layer.wp, layer.bp) + eps)
                return layer.vjp(layer.wp, s_pos if alpha == 1 else alpha * s_pos)
            z_pos, z_neg = layer.fwd_pair(layer.a, layer.wp, layer.bp, layer.wn, layer.bn)
            s_pos = alpha * layer.r / stabilize(z_pos, eps)
            s_neg = torch.where(z_neg != 0, beta * layer.r / stabilize(z_neg, eps), 0.0)
            return layer.vjp_pair(layer.wp, s_pos, layer.wn, -s_neg)
        # each sum of two operator passes, and each pair of transposed passes, runs as one (stacked)
        z_pos = layer.fwd_split(layer.ap, layer.wp, layer.an, layer.wn, layer.bp)
        s_pos = alpha * layer.r / stabilize(z_pos, eps)
        grad_if_pos, grad_if_neg = layer.vjp_split(layer.wp, layer.wn, s_pos)
        if beta:
            z_neg = layer.fwd_split(layer.ap, layer.wn, layer.an, layer.wp, layer.bn)
            s_neg = torch.where(z_neg != 0, beta * layer.r / stabilize(z_neg, eps), 0.0)
            neg_n, neg_p = layer.vjp_split(layer.wn, layer.wp, s_neg)
            grad_if_pos, grad_if_neg = grad_if_pos - neg_n, grad_if_neg - neg_p
        return torch.where(layer.a > 0, grad_if_pos, grad_if_neg)


@register_rule
class ZPlus(_SignSplit):
    name = "zplus"
    description = "z+ (alpha1-beta0) on every layer: only positive contributions"
    passes = 4.0

    def weights(self, rs) -> tuple[float, float]:
        return 1.0, 0.0


@register_rule
class AlphaBeta(_SignSplit):
    name = "alpha-beta"
    description = "alpha-beta (alpha=2, beta=1) on every layer"
    passes = 8.0

    def weights(self, rs) -> tuple[float, float]:
        return rs.alpha, rs.beta


@register_rule
class Flat(InputRule):
    name = "flat"
    description = "flat rule on the first layer, epsilon above"
    uses_bias = False  # flat never uses biases

    def relevance(self, layer, rs):
        import torch

        ones, m = torch.ones_like(layer.a), torch.ones_like(layer.w)
        return layer.vjp(m, layer.r / stabilize(layer.fwd(ones, m), rs.epsilon))


@register_rule
class WSquare(InputRule):
    name = "w2"
    description = "w^2 rule on the first layer, epsilon above"

    def relevance(self, layer, rs):
        import torch

        m = layer.w * layer.w
        mb = None if layer.bias is None else layer.bias * layer.bias  # zennit's w^2 squares the bias too
        return layer.vjp(m, layer.r / stabilize(layer.fwd(torch.ones_like(layer.a), m, mb), rs.epsilon))


@register_rule
class Box(InputRule):
    name = "box"
    description = "z^B box rule on the first layer (inputs in [low, high]), epsilon above"
    passes = 6.0
    uses_bias = False  # the biases cancel

    def relevance(self, layer, rs):
        import torch

        ones = torch.ones_like(layer.a)
        low, high = rs.low * ones, rs.high * ones
        zb = layer.fwd(layer.a, layer.w) - layer.fwd(low, layer.wp) - layer.fwd(high, layer.wn)
        s = layer.r / stabilize(zb, rs.epsilon)
        return layer.a * layer.vjp(layer.w, s) - low * layer.vjp(layer.wp, s) - high * layer.vjp(layer.wn, s)
