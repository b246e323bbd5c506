"""Any ``torch.nn.Module`` as a RepLens model: ``models.wrap(module, preprocess=..., layers=...)``.

The module's inputs are made by ``preprocess``, applied to each sample (a torchvision / timm
transform of a PIL image, or a function of one numeric row), or by ``batch_preprocess`` applied to a
whole batch (a tokenizer call returning a dict of tensors, passed as keyword arguments). Layers
default to the residual blocks (:func:`analysis.models.blocks.default_layers`); any module path
can be given instead. timm, open_clip and torchvision models are wrapped this way.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from ..errors import UserInputError
from .base import Batch, Model
from .blocks import check_paths, default_layers

INPUT_KINDS = ("image", "text", "vector")


def module_sha256(module) -> str:
    """Content hash of a module: its class and every tensor of its state dict (names, shapes, bytes)."""
    import torch

    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)  # 1-D: a 0-d tensor cannot be viewed as bytes
        h.update(f"|{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel():
            h.update((t.to(torch.uint8) if t.dtype == torch.bool else t.view(torch.uint8)).numpy().tobytes())
    return h.hexdigest()


class WrappedModel(Model):
    """See the module docstring. ``input_kind``: "image" (PIL images through ``preprocess``), "text"
    (lists of strings through ``batch_preprocess``) or "vector" (numeric rows)."""

    def __init__(self, module, preprocess: Callable | None = None, layers: list[str] | None = None,
                 kind: str = "encoder", input_kind: str | None = None, name: str = "wrapped",
                 ref: str | None = None, batch_preprocess: Callable | None = None, channels: int = 3,
                 token_outputs: bool = False, sha256: str | None = None, architecture: str = "",
                 info: dict | None = None):
        super().__init__()
        import torch

        if not isinstance(module, torch.nn.Module):
            raise UserInputError(f"models.wrap needs a torch.nn.Module, not {type(module).__name__}.")
        input_kind = input_kind or ("text" if batch_preprocess is not None else "image" if preprocess else "vector")
        if input_kind not in INPUT_KINDS:
            raise UserInputError(f"input_kind {input_kind!r}: use one of {', '.join(INPUT_KINDS)}.")
        if input_kind == "text" and batch_preprocess is None:
            raise UserInputError("A text model needs batch_preprocess (its tokenizer: list of strings -> tensors).")
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module, self.preprocess, self.batch_preprocess = module, preprocess, batch_preprocess
        self.input_kind, self.kind, self.name, self.channels = input_kind, kind, name, channels
        self.token_outputs = token_outputs or input_kind == "text"
        self.sha256 = sha256 or module_sha256(module)
        self.ref = ref or f"wrapped:{self.sha256[:16]}"
        self.architecture = architecture or f"{type(module).__name__} (wrapped)"
        self.info = dict(info or {})
        self.layers = check_paths(module, layers, self.ref) if layers else default_layers(module)

    def batches(self, ds, batch_size, device):
        import torch

        for i in range(0, len(ds), batch_size):
            stop = min(i + batch_size, len(ds))
            if self.input_kind == "image":
                images = [im.convert("RGB" if self.channels == 3 else "L") for im in ds.images(i, stop)]
                x = torch.stack([torch.as_tensor(np.asarray(self.preprocess(im))) for im in images]) \
                    if self.preprocess else torch.from_numpy(_default_pixels(images))
                yield Batch(x.to(device), None, slice(i, stop))
            elif self.input_kind == "text":
                enc = self.batch_preprocess(list(ds.batch(i, stop)))
                enc = {k: v.to(device) for k, v in enc.items()} if isinstance(enc, dict) else enc.to(device)
                mask = enc.get("attention_mask") if isinstance(enc, dict) else None
                yield Batch(enc, mask, slice(i, stop))
            else:
                rows = np.asarray(ds.batch(i, stop), dtype=np.float32)
                x = torch.stack([torch.as_tensor(self.preprocess(r)) for r in rows]) if self.preprocess \
                    else torch.from_numpy(rows)
                yield Batch(x.to(device), None, slice(i, stop))

    def run(self, batch: Batch):
        return self.module(**batch.inputs) if isinstance(batch.inputs, dict) else self.module(batch.inputs)

    def check_data(self, ds) -> None:
        if self.input_kind == "text" and ds.kind != "text":
            raise UserInputError(f"{self.ref} reads text, but dataset '{ds.name}' holds {ds.kind} data.")
        if self.input_kind == "image" and ds.kind != "image":
            raise UserInputError(f"{self.ref} reads images, but dataset '{ds.name}' holds {ds.kind} data.")
        if self.input_kind == "vector" and ds.kind == "text":
            raise UserInputError(f"{self.ref} reads numeric rows, but dataset '{ds.name}' holds text.")

    def input_note(self, ds) -> str:
        if self.input_kind != "image":
            return ""
        how = "its preprocessing transform" if self.preprocess else "RepLens (224×224, [0, 1])"
        return f"{self.name}: images are converted to {'RGB' if self.channels == 3 else 'grey'} and resized by {how}."


def _default_pixels(images) -> np.ndarray:
    from ..data.images import to_grid

    return to_grid(images, (224, 224), 3 if images and images[0].mode == "RGB" else 1)


def wrap(module, preprocess: Callable | None = None, layers: list[str] | None = None, **kw) -> WrappedModel:
    """Any ``nn.Module`` as a RepLens model (see :class:`WrappedModel` for the keywords)."""
    return WrappedModel(module, preprocess=preprocess, layers=layers, **kw)
