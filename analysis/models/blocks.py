"""Default layers of an arbitrary network: the residual stream after each block.

Transformers and ResNets are stacks of repeated blocks kept in a list: ``h.0 ... h.11`` (GPT-2),
``layers.*`` (Llama, Qwen, Pythia), ``encoder.layer.*`` (BERT, ViT, DINOv2), ``block.*`` (T5),
``layer1.0 ... layer4.1`` (ResNet), ``blocks.*`` (timm ViTs), ``encoder.stages.*`` (ConvNeXt: its
stages, each a few blocks). A block's output is the residual stream after it, so the default
layers are those blocks (plus the embeddings, when a module of that name exists), found from the
module tree alone: the children of a ``ModuleList`` (or of a ``Sequential`` whose children repeat
one class) that have children of their own. The outermost such list wins and nothing inside a
block is listed (attention heads, MLP parts, a mixture's experts): those are reached by module path.
"""
from __future__ import annotations


def _is_block_list(container) -> bool:
    import torch.nn as nn

    kids = list(container.children())
    if not kids or not all(list(k.children()) for k in kids):  # blocks have parts; a list of Linear is not a stack
        return False
    if isinstance(container, nn.ModuleList):
        return True
    return isinstance(container, nn.Sequential) and len(kids) >= 2 and len({type(k) for k in kids}) == 1


def residual_blocks(module) -> list[str]:
    """Names of the blocks of ``module`` in definition order (see the module docstring)."""
    found: list[str] = []

    def walk(mod, prefix: str) -> None:
        for name, child in mod.named_children():
            path = f"{prefix}{name}"
            if _is_block_list(child):
                found.extend(f"{path}.{k}" for k, _ in child.named_children())
            else:
                walk(child, path + ".")

    walk(module, "")
    return found


def default_layers(module) -> list[str]:
    """Embeddings (if a child module has that name) followed by the residual blocks; a network
    without repeated blocks offers its top-level children."""
    names = dict(module.named_modules())
    blocks = residual_blocks(module)
    head = [n for n in names if n.split(".")[-1] == "embeddings" and n.count(".") <= 1][:1]
    layers = head + [b for b in blocks if b not in head]
    return layers or [n for n, _ in module.named_children()]


def check_paths(module, paths, ref: str) -> list[str]:
    """Module paths a user added (``#layers=a+b``): each must name a module of the network."""
    from ..errors import UserInputError

    names = dict(module.named_modules())
    for p in paths:
        if p not in names or not p:
            close = [n for n in names if n.startswith(p.rsplit(".", 1)[0])][:8] if "." in p else []
            raise UserInputError(f"{ref} has no module {p!r}." + (f" Nearby: {', '.join(close)}." if close else ""))
    return list(paths)
