"""captum 0.9's LRP as a cross-check where it is correct: plain sequential ReLU MLPs and CNNs under
the epsilon and z+ rules. It runs on a deep copy, because captum rewrites weights and attaches hooks
while it works; ``captum_supported`` says why it is not offered elsewhere."""
from __future__ import annotations

import contextlib
import copy

import numpy as np

from ..errors import UserInputError
from .attribution import Attribution, explained
from .composites import RuleSet, rule_set
from .copies import unwrap

# The rules captum implements correctly here (its gamma ignores the output's sign; it has no
# flat, w^2 or box rule).
CAPTUM_RULES = ("epsilon", "zplus")


def captum_supported(model, rule_or_set="epsilon") -> str | None:
    """None if captum's LRP is correct for this model and rule, else the reason it is not."""
    import torch.nn as nn

    try:
        module, _ = unwrap(model)
    except UserInputError as exc:
        return str(exc)
    rs = rule_or_set if isinstance(rule_or_set, RuleSet) else rule_set(rule_or_set)
    if {rs.first, rs.conv, rs.dense} - set(CAPTUM_RULES):
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

    from .. import zoo

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
    module, wrapper = unwrap(model)
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
    f, codes = explained(out, target, labels)
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
