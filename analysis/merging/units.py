"""Which hidden units of a network can be permuted without changing what it computes.

A hidden layer's units can be put in any order if every tensor that touches them is reordered the
same way: the producing layer's output rows (weight and bias), per-unit normalisation parameters
and statistics, and the consuming layer's input columns. A :class:`UnitGroup` lists those
tensors; :func:`permute_state` applies one permutation per group to a state dict.

Groups are found
- in chain networks (the zoo's MLPs, CNNs and autoencoders, uploads of their architectures): each
  Linear / Conv output that reaches the next weight layer through unit-wise modules only
  (activations, pooling, dropout, BatchNorm, LayerNorm, and Flatten, after which a channel is a
  block of consecutive features); the last weight layer's units are the model's output and stay;
- in transformers (BERT-style blocks, e.g. MiniLM): the units of each block's MLP, between
  ``intermediate.dense`` and ``output.dense``. The residual stream is not permuted: every block,
  embedding and LayerNorm reads it, so reordering it would change the model's output order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError

_UNITWISE = ("ReLU", "GELU", "Sigmoid", "Tanh", "LeakyReLU", "ELU", "SiLU", "Softplus", "Dropout", "Identity",
             "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
             "AdaptiveMaxPool2d")
_BATCHNORM = ("BatchNorm1d", "BatchNorm2d")


@dataclass(frozen=True)
class Member:
    """One tensor a group touches: its state-dict key, the axis holding the units, and how many
    consecutive entries along that axis belong to one unit (a channel flattened with its positions)."""

    key: str
    axis: int
    repeat: int = 1


@dataclass(frozen=True)
class UnitGroup:
    name: str  # the layer producing the units
    size: int
    members: tuple[Member, ...]
    probe: str  # module whose output holds the units' activations (after the nonlinearity)
    tokens: bool = False  # the probe's output is (batch, tokens, units); else the units are on axis 1


def unit_groups(model) -> list[UnitGroup]:
    """The permutable unit groups of ``model`` (empty when it has none that can be found)."""
    from .chain import leaf_chain

    if getattr(model, "module", None) is None:
        return []
    if getattr(model, "input_kind", "") == "text":
        return _transformer_groups(model.module)
    chain = leaf_chain(model)
    return [] if chain is None else _chain_groups(chain, set(model.module.state_dict()))


def _weight_axes(module) -> tuple[int, int] | None:
    """(output axis, input axis) of a weight layer's weight, None for other modules."""
    kind = type(module).__name__
    if kind in ("Linear", "Conv1d", "Conv2d", "Conv3d"):
        return 0, 1
    if kind in ("ConvTranspose1d", "ConvTranspose2d"):
        return (1, 0) if getattr(module, "groups", 1) == 1 else None
    return None


def _chain_groups(chain, keys: set) -> list[UnitGroup]:
    groups: list[UnitGroup] = []
    open_: dict | None = None
    for link in chain:
        kind = type(link.module).__name__
        axes = _weight_axes(link.module)
        if axes is not None and getattr(link.module, "groups", 1) == 1:
            if open_ is not None:
                open_["members"].append(Member(f"{link.name}.weight", axes[1], open_["repeat"]))
                groups.append(UnitGroup(open_["name"], open_["size"], tuple(open_["members"]), open_["probe"]))
            size = link.module.weight.shape[axes[0]]
            members = [Member(f"{link.name}.weight", axes[0])]
            if f"{link.name}.bias" in keys:
                members.append(Member(f"{link.name}.bias", 0))
            open_ = {"name": link.name, "size": int(size), "members": members, "probe": link.name, "repeat": 1,
                     "activated": False}
        elif open_ is None:
            continue
        elif kind in _UNITWISE:
            if not open_["activated"] and kind not in ("Dropout", "Identity"):
                open_["probe"], open_["activated"] = link.name, True  # the units' values after their nonlinearity
        elif kind in _BATCHNORM or (kind == "LayerNorm" and open_["repeat"] == 1 and len(link.in_shape) == 1):
            open_["members"] += [Member(f"{link.name}.{t}", 0) for t in ("weight", "bias", "running_mean", "running_var")
                                 if f"{link.name}.{t}" in keys]
        elif kind == "Flatten" and open_["repeat"] == 1 and link.in_shape[:1] == (open_["size"],) \
                and getattr(link.module, "start_dim", 1) == 1:
            open_["repeat"] = int(np.prod(link.in_shape[1:], dtype=np.int64))  # channel-major: a unit's positions are consecutive
        else:  # a module that mixes units (Unflatten into channels, attention, ...): leave this group alone
            open_ = None
    return groups


def _transformer_groups(module) -> list[UnitGroup]:
    """The MLP units of each BERT-style block: ``<block>.intermediate.dense`` -> activation ->
    ``<block>.output.dense``."""
    import torch

    mods = dict(module.named_modules())
    groups = []
    for name, mod in mods.items():
        if not name.endswith(".intermediate"):
            continue
        block = name[: -len(".intermediate")]
        up, down = mods.get(f"{name}.dense"), mods.get(f"{block}.output.dense")
        if not (isinstance(up, torch.nn.Linear) and isinstance(down, torch.nn.Linear)):
            continue
        if down.in_features != up.out_features or type(getattr(mod, "intermediate_act_fn", None)).__name__ \
                not in _UNITWISE + ("GELUActivation", "NewGELUActivation", "FastGELUActivation", "QuickGELUActivation"):
            continue
        members = [Member(f"{name}.dense.weight", 0), Member(f"{block}.output.dense.weight", 1)]
        if up.bias is not None:
            members.insert(1, Member(f"{name}.dense.bias", 0))
        groups.append(UnitGroup(f"{name}.dense", up.out_features, tuple(members), name, tokens=True))
    return groups


def check_same_groups(groups_a: list[UnitGroup], groups_b: list[UnitGroup], ref_a: str, ref_b: str) -> None:
    """Both models have the same permutable layers with the same widths, else a clear refusal."""
    if not groups_a or not groups_b:
        which = ref_a if not groups_a else ref_b
        raise UserInputError(f"{which} has no hidden units that can be permuted: permutation alignment works on "
                             "chain networks (MLPs, CNNs, autoencoders of the zoo's kind) and on the MLP blocks "
                             "of BERT-style transformers.")
    shape_a = [(g.name, g.size) for g in groups_a]
    shape_b = [(g.name, g.size) for g in groups_b]
    if shape_a != shape_b:
        wa = ", ".join(f"{n} {s}" for n, s in shape_a)
        wb = ", ".join(f"{n} {s}" for n, s in shape_b)
        raise UserInputError(f"Permutation alignment needs two models of the same architecture, with the same "
                             f"layers and widths. A ({ref_a}) has {wa}; B ({ref_b}) has {wb}. Pick two seeds of one "
                             "architecture (zoo:mlp-s0 and zoo:mlp-s1), or use block swaps with a translator.")


def expand(perm: np.ndarray, repeat: int) -> np.ndarray:
    """Indices along an axis whose units are blocks of ``repeat`` consecutive entries."""
    perm = np.asarray(perm, dtype=np.int64)
    return (perm[:, None] * repeat + np.arange(repeat)[None, :]).ravel() if repeat > 1 else perm


def permute_state(state: dict, groups: list[UnitGroup], perms: dict, skip: str | None = None) -> dict:
    """A copy of ``state`` with group ``g``'s units reordered so that new unit ``j`` is old unit
    ``perms[g.name][j]`` (``skip``: a group left as it is, for weight matching)."""
    import torch

    out = dict(state)
    for g in groups:
        if g.name == skip or g.name not in perms:
            continue
        for m in g.members:
            idx = torch.as_tensor(expand(perms[g.name], m.repeat))
            out[m.key] = out[m.key].index_select(m.axis, idx)
    return out


def identity_perms(groups: list[UnitGroup]) -> dict:
    return {g.name: np.arange(g.size) for g in groups}


def invert(perm: np.ndarray) -> np.ndarray:
    perm = np.asarray(perm)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    return inv
