"""Composites (zennit's name for a rule per kind of layer) as registered classes, and the
:class:`RuleSet` an attribution runs with: the rule of the layer reading the inputs, of
convolutions and of dense layers, plus the rules' parameters and the bias convention.

``epsilon-gamma-box`` is zennit's EpsilonGammaBox, whose box rule applies to a first *convolution*
only: on an MLP every dense layer gets epsilon (rule ``box`` puts the box rule on a first dense
layer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import UserInputError
from .rules import BIAS_CONVENTIONS, bias_rule_names, rule_names
from .rules import REGISTRY as RULE_REGISTRY


class Composite:
    """A rule per kind of layer: ``first`` for the layer reading the inputs, ``conv`` and ``dense``.
    ``first_conv_only``: the first-layer rule only when that layer is a convolution."""

    name: ClassVar[str]
    description: ClassVar[str]
    first: ClassVar[str]
    conv: ClassVar[str]
    dense: ClassVar[str]
    first_conv_only: ClassVar[bool] = False


REGISTRY: dict[str, type[Composite]] = {}


def register_composite(cls: type[Composite]) -> type[Composite]:
    """Make a composite known by its ``name`` (a class decorator); its rules must be registered."""
    unknown = {cls.first, cls.conv, cls.dense} - set(RULE_REGISTRY)
    if unknown:
        raise ValueError(f"composite {cls.name!r} names unknown rules: {', '.join(sorted(unknown))}")
    if (cls.name in REGISTRY and REGISTRY[cls.name] is not cls) or cls.name in RULE_REGISTRY:
        raise ValueError(f"the name {cls.name!r} is taken")
    REGISTRY[cls.name] = cls
    return cls


def composite_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def descriptions() -> dict[str, str]:
    """What each rule and composite does, in words (page help and docs)."""
    return {**{n: r.description for n, r in RULE_REGISTRY.items()}, **{n: c.description for n, c in REGISTRY.items()}}


@register_composite
class EpsilonPlusFlat(Composite):
    name = "epsilon-plus-flat"
    description = "zennit's EpsilonPlusFlat: flat on the first layer, z+ on convolutions, epsilon on dense layers"
    first, conv, dense = "flat", "zplus", "epsilon"


@register_composite
class EpsilonGammaBox(Composite):
    name = "epsilon-gamma-box"
    description = ("zennit's EpsilonGammaBox: box on the first layer if it is a convolution, gamma on convolutions, "
                   "epsilon on dense layers (on an MLP: epsilon everywhere; rule 'box' puts the box rule on a first "
                   "dense layer)")
    first, conv, dense = "box", "gamma", "epsilon"
    first_conv_only = True  # zennit: the box rule is for a first convolution


# --------------------------------------------------------------------------- the rule of every layer
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
        if not {self.first, self.conv, self.dense} & set(bias_rule_names()):
            return "Biases play no part in these rules (flat ignores them; in the box rule they cancel)."
        return BIAS_CONVENTIONS[self.bias]

    @property
    def description(self) -> str:
        return f"{descriptions().get(self.name, self.name)}. {self.bias_convention}"


def rule_set(rule: str = "epsilon", composite: str | None = None, epsilon: float = 1e-6, gamma: float = 0.25,
             alpha: float = 2.0, beta: float = 1.0, low: float = 0.0, high: float = 1.0, bias: bool = True) -> RuleSet:
    """Resolve a rule name or a composite into the rule of each kind of layer. ``bias``: biases enter
    the rules' denominators (zennit's default) or not (see :data:`BIAS_CONVENTIONS`)."""
    if composite in (None, "", "none") and rule in REGISTRY:
        composite = rule
    if composite not in (None, "", "none"):
        if composite not in REGISTRY:
            raise UserInputError(f"Unknown composite {composite!r}; use one of {', '.join(composite_names())}.")
        c = REGISTRY[composite]
        first, conv, dense, name, first_conv_only = c.first, c.conv, c.dense, c.name, c.first_conv_only
    else:
        if rule not in RULE_REGISTRY:
            raise UserInputError(f"Unknown LRP rule {rule!r}; use one of "
                                 f"{', '.join(rule_names() + composite_names())}.")
        upper = "epsilon" if RULE_REGISTRY[rule].input_layer else rule
        first, conv, dense, name, first_conv_only = rule, upper, upper, rule, False
    if not epsilon >= 0 or not gamma >= 0:
        raise UserInputError("epsilon and gamma must be non-negative.")
    if abs((alpha - beta) - 1) > 1e-9:
        raise UserInputError(f"alpha - beta must be 1 (got alpha={alpha}, beta={beta}).")
    if not high > low:
        raise UserInputError(f"The box rule needs low < high (got [{low}, {high}]).")
    return RuleSet(name, first, conv, dense, float(epsilon), float(gamma), float(alpha), float(beta),
                   float(low), float(high), bool(bias), first_conv_only)
