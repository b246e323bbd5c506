"""A model's leaf modules as a chain: each module reads exactly what the one before it wrote.

Permuting hidden units and swapping blocks both rely on this: when every leaf of a network feeds
the next one and nothing else (no skip connection, no reuse, no arithmetic in ``forward``), a
change inside the chain is seen only by the next link. ``leaf_chain`` checks it by running the
model on two rows and recording, for every leaf, the tensor it read and the tensor it wrote.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    name: str  # module name in the model (state-dict prefix)
    module: object
    in_shape: tuple  # without the batch axis
    out_shape: tuple


def leaf_chain(model) -> list[Link] | None:
    """The leaves of ``model.module`` in forward order when they form a chain from the model's input
    to its output, else None (a residual stream, a module used twice, a computed ``forward``)."""
    import torch

    module = getattr(model, "module", None)
    n_inputs = getattr(model, "n_inputs", None)
    if module is None or not n_inputs or getattr(model, "input_kind", "") == "text":
        return None
    leaves = {n: m for n, m in module.named_modules() if n and not list(m.children())}
    seen: list[tuple[str, object, object]] = []

    def record(name):
        def hook(_m, inputs, out):
            seen.append((name, inputs[0] if inputs else None, out))
        return hook

    x = torch.zeros(2, n_inputs, device=next(module.parameters()).device)
    with model.lock, torch.no_grad():  # a shared model: its hooks and its forward pass are this call's alone
        handles = [m.register_forward_hook(record(n)) for n, m in leaves.items()]
        try:
            out = module(x)
        finally:
            for h in handles:
                h.remove()
    if not seen or len({n for n, _, _ in seen}) != len(seen) or seen[0][1] is not x or seen[-1][2] is not out:
        return None
    for (_, _, previous_out), (_, current_in, _) in zip(seen, seen[1:]):
        if current_in is not previous_out:
            return None
    return [Link(n, leaves[n], tuple(i.shape[1:]), tuple(o.shape[1:])) for n, i, o in seen]
