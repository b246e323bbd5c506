"""The model interface every source implements: named layers, a batch runner, metadata."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..errors import UserInputError


@dataclass
class Batch:
    """One batch ready for a forward pass: model inputs plus the token mask (text) if any."""

    inputs: object  # tensor, or dict of tensors for transformers
    mask: object = None  # (b, t) attention mask for token outputs
    rows: slice = field(default_factory=lambda: slice(0, 0))


class Model:
    """A loaded model. Subclasses set the attributes and implement ``batches`` and ``run``.

    Attributes
    ----------
    ref : the reference it was loaded from (``zoo:mlp-s0``, ``hf:minilm``, ``upload:<sha>``)
    kind : "classifier", "autoencoder", "encoder" or "embeddings"
    input_kind : data kind it accepts: "image" (flattened 8x8 digits), "text", "vector" or "any"
    layers : hookable layer names in forward order
    sha256 : content hash of the weights (cache keys use it)
    """

    ref: str = ""
    name: str = ""
    kind: str = "encoder"
    input_kind: str = "any"
    architecture: str = ""
    sha256: str = ""
    layers: list[str]
    info: dict
    module = None  # torch.nn.Module when there is one
    n_inputs: int | None = None  # expected feature count for vector inputs

    def __init__(self):
        self.layers = []
        self.info = {}
        # A cached model is shared by all sessions: hooks and forward passes take this lock.
        self.lock = threading.RLock()

    # -- metadata
    def num_parameters(self) -> int:
        if self.module is None:
            return 0
        return int(sum(p.numel() for p in self.module.parameters()))

    def summary(self) -> dict:
        return {"ref": self.ref, "name": self.name, "kind": self.kind, "architecture": self.architecture,
                "parameters": self.num_parameters(), "layers": len(self.layers), "sha256": self.sha256[:16],
                **{k: v for k, v in self.info.items() if k in ("seed", "epochs", "train_samples", "test_accuracy",
                                                             "test_mse", "bottleneck", "note", "data")}}

    def hookable(self) -> dict:
        """All modules that forward hooks can attach to, by name."""
        if self.module is None:
            return {}
        return {n: m for n, m in self.module.named_modules() if n}

    def check_data(self, ds) -> None:
        """Raise UserInputError if this model cannot read the dataset."""
        if self.input_kind == "any":
            return
        if self.input_kind == "text":
            if ds.kind != "text":
                raise UserInputError(f"{self.ref} reads text, but dataset '{ds.name}' holds {ds.kind} data. "
                                     "Pick the 'text' dataset or an uploaded text CSV.")
            return
        if ds.kind == "text":
            raise UserInputError(f"{self.ref} reads numeric inputs, but dataset '{ds.name}' holds text. "
                                 "Pick 'digits' (or a numeric upload) for this model.")
        if self.n_inputs is not None and ds.n_features != self.n_inputs:
            raise UserInputError(
                f"{self.ref} expects {self.n_inputs} input features but dataset '{ds.name}' has "
                f"{ds.n_features}. Zoo models read 8x8 digits ('digits' dataset)."
            )

    def batches(self, ds, batch_size: int, device) -> Iterator[Batch]:
        raise NotImplementedError

    def input_note(self, ds) -> str:
        """How the model adapts the dataset's inputs (image size, channels), or "" when it reads them as they are."""
        return ""

    def run(self, batch: Batch):
        """Forward pass on one batch; returns the model output tensor."""
        return self.module(batch.inputs)

    def to(self, device):
        if self.module is not None:
            self.module.to(device)
        return self

    # -- autoencoders: latent access (analysis.vector_field iterates z -> encode(decode(z)))
    @property
    def is_autoencoder(self) -> bool:
        """True when the model exposes ``encode`` and ``decode`` on torch tensors."""
        return False

    def encode(self, x):
        """Latent codes of a batch of inputs (a tensor laid out as the dataset's inputs)."""
        raise UserInputError(f"{self.ref} is not an autoencoder: it has no encoder/decoder to split. Pick a "
                             "zoo autoencoder (zoo:mlp-ae-b8, ...) or a TorchScript module with encode/decode.")

    def decode(self, z):
        """Inputs (the dataset's layout) decoded from a batch of latent codes."""
        return self.encode(z)  # raises the same message

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.ref} ({len(self.layers)} layers)>"


def forward_order(module, example, names: list[str]) -> list[str]:
    """Names of ``names`` sorted by when their modules first fire during a forward pass.

    Modules that never fire are dropped (they are not on the forward path).
    """
    import torch

    order: list[str] = []
    mods = dict(module.named_modules())
    handles = []
    for n in names:
        handles.append(mods[n].register_forward_hook(lambda m, i, o, n=n: order.append(n) if n not in order else None))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in handles:
            h.remove()
    return order


def as_tensor_batches(x: np.ndarray, batch_size: int, device) -> Iterator[Batch]:
    import torch

    for i in range(0, len(x), batch_size):
        yield Batch(torch.from_numpy(np.ascontiguousarray(x[i: i + batch_size])).to(device),
                    rows=slice(i, min(i + batch_size, len(x))))


def layer_table(model: Model, ds, device=None):
    """One row per layer: name, module type, raw output shape on ``ds``, parameters, pooled width.

    Text models show the token axis as T (its length varies with the sentence).
    """
    import pandas as pd

    from ..activations import output_shapes

    shapes = output_shapes(model, ds, device=device)
    mods = model.hookable()
    rows = []
    for name in model.layers:
        mod = mods.get(name)
        shape = shapes.get(name)
        if shape is not None and model.input_kind == "text" and len(shape) == 2:
            shape_txt = f"T × {shape[1]}"
        else:
            shape_txt = " × ".join(str(s) for s in shape) if shape else "?"
        rows.append({
            "layer": name,
            "type": type(mod).__name__ if mod is not None else ("array" if model.kind == "embeddings" else "output"),
            "output shape": shape_txt,
            "parameters": int(sum(p.numel() for p in mod.parameters())) if mod is not None else 0,
        })
    return pd.DataFrame(rows)
