"""Layer-wise relevance propagation (LRP) for any torch model, conservative and without side effects.

One design for every model (the "efficient" AttnLRP / CP-LRP formulation, Achtibat et al. 2024,
Arras et al. 2025): relevance is gradient x input, R = a * da, with the backward pass modified in a
few places while the model runs its ordinary forward pass (:mod:`.tracer`): LRP rules on linear and
convolution layers (:mod:`.rules`, chosen per layer by a composite, :mod:`.composites`), the identity
rule on elementwise nonlinearities, constant normalisation statistics and attention weights, and an
even split of bilinear products. Residual additions need nothing: gradient x input splits their
relevance in proportion to the summands (no double counting, unlike per-module hooks).

The model runs on a structural copy (:mod:`.copies`: new module objects, the same parameter tensors,
never written), so the shared model's outputs, ``state_dict`` and hooks are untouched and concurrent
calls do not interact; copies are pooled per model and lent to one call at a time. One backward pass gives the relevance at the input and at any layer
(:func:`attribute`).

captum's LRP is correct on plain ReLU MLPs and CNNs and is offered there (``backend="captum"``,
:mod:`.captum_backend`) as the cross-check.

The rules and composites follow zennit 0.5 (the reference LRP implementation), checked against it
numerically: ``epsilon-gamma-box`` is zennit's EpsilonGammaBox, whose box rule applies to a first
*convolution* only. ``bias`` chooses whether biases enter the rules' denominators: True is zennit's
default (``zero_params=None``), False its ``zero_params="bias"`` (see :data:`BIAS_CONVENTIONS`).
The epsilon also stabilises the other rules' denominators (zennit's ``stabilizer``; both default to
1e-6).

A new rule is one class: subclass :class:`Rule` (or :class:`InputRule` for an input-domain rule),
give it a ``name`` and a ``description``, and decorate it with :func:`register_rule`. ``RULES``,
``COMPOSITES``, ``DESCRIPTIONS``, ``FIRST_LAYER_RULES`` and ``BIAS_RULES`` are read from the
registries on every access, so they always list it.

Beyond single inputs: text targets (:mod:`.text`), faithfulness (:mod:`.faithfulness`), agreement of
two maps (:mod:`.agreement`), a dataset's relevance (:mod:`.dataset`) and uploaded pictures
(:mod:`.pictures`).
"""
from __future__ import annotations

from .agreement import pair_summary, rank_agreement, unit_relevance
from .attribution import Attribution, attribute, gradient_x_input, sentence_embedding
from .captum_backend import captum_attribute, captum_supported
from .composites import (
    Composite,
    RuleSet,
    composite_names,
    descriptions,
    register_composite,
    rule_set,
)
from .copies import check_model, working_copy
from .dataset import dataset_relevance
from .faithfulness import (
    Faithfulness,
    aopc,
    dataset_faithfulness,
    faithfulness,
    removal_curve,
    text_faithfulness,
)
from .pictures import image_from_upload
from .rules import (
    BIAS_CONVENTIONS,
    InputRule,
    Layer,
    Rule,
    bias_rule_names,
    get_rule,
    input_rule_names,
    register_rule,
    rule_names,
    stabilize,
    unregister_rule,
)
from .text import (
    TopicProbe,
    explain_similarity,
    fit_topic_probe,
    probe_target,
    similarity_target,
    text_agreement,
    text_dataset_relevance,
)

_LIVE = {  # names whose value follows the registries (a rule registered later is listed)
    "RULES": rule_names,
    "COMPOSITES": composite_names,
    "FIRST_LAYER_RULES": input_rule_names,
    "BIAS_RULES": bias_rule_names,
    "DESCRIPTIONS": descriptions,
}


def __getattr__(name):
    if name in _LIVE:
        return _LIVE[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Attribution", "attribute", "gradient_x_input", "sentence_embedding", "captum_attribute",
           "captum_supported", "Composite", "RuleSet", "rule_set", "register_composite", "composite_names",
           "descriptions", "check_model", "working_copy", "dataset_relevance", "Faithfulness", "aopc",
           "dataset_faithfulness", "faithfulness", "removal_curve", "text_faithfulness", "image_from_upload",
           "BIAS_CONVENTIONS", "Rule", "InputRule", "Layer", "register_rule", "unregister_rule", "get_rule",
           "rule_names", "input_rule_names", "bias_rule_names", "stabilize", "TopicProbe", "explain_similarity",
           "fit_topic_probe", "probe_target", "similarity_target", "text_agreement", "text_dataset_relevance",
           "pair_summary", "rank_agreement", "unit_relevance", "RULES", "COMPOSITES", "FIRST_LAYER_RULES", "BIAS_RULES",
           "DESCRIPTIONS"]
