"""Models from other libraries, where they are installed (``pip install -r requirements-models.txt``):

- ``timm:NAME``: ``timm.create_model(NAME, pretrained=True)`` with the transform timm resolves for it;
- ``open_clip:NAME/PRETRAINED``: ``open_clip.create_model_and_transforms`` (the image tower, or
  ``#tower=text`` with open_clip's tokenizer);
- ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights="DEFAULT")`` with the weights'
  own transforms.

Each becomes a :class:`~analysis.models.wrapped.WrappedModel` whose layers are the residual blocks
(plus ``#layers=`` module paths). Their pretrained weights are downloaded by those libraries, so the
hub setting that governs ``hf:`` ids governs them too.
"""
from __future__ import annotations

import hashlib
import importlib
import re

from ..errors import UserInputError
from . import options as opts
from .blocks import default_layers
from .wrapped import WrappedModel, module_sha256

LIBRARIES = {"timm": "timm", "open_clip": "open_clip", "torchvision": "torchvision"}
PACKAGES = {"timm": "timm", "open_clip": "open_clip_torch", "torchvision": "torchvision"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,120}")


def check(source: str, rest: str, allow_hub: bool) -> None:
    """Validate ``source:rest`` without importing anything heavy."""
    body, _ = opts.split(rest)
    parts = body.split("/") if source == "open_clip" else [body]
    if len(parts) != (2 if source == "open_clip" else 1) or not all(_NAME.fullmatch(p) for p in parts):
        shape = "open_clip:NAME/PRETRAINED" if source == "open_clip" else f"{source}:NAME"
        raise UserInputError(f"Not a {source} model name: {body!r}. Write it as {shape}.")
    if not allow_hub:
        from .. import settings

        raise UserInputError(f"{source} models download their pretrained weights, and downloads are off on this "
                             f"server ({body!r}). Set {settings.HUB_ENV}=1 where the server runs to allow them.")


def _library(source: str):
    try:
        return importlib.import_module(LIBRARIES[source])
    except Exception as exc:  # ImportError, or a torchvision built for another torch failing at import
        raise UserInputError(f"{source}: models need the {PACKAGES[source]} package, installed for this torch "
                             f"(pip install -r requirements-models.txt); it does not import here "
                             f"({type(exc).__name__}).") from exc


def load(source: str, rest: str) -> WrappedModel:
    body, options = opts.split(rest)
    lib = _library(source)
    loader = {"timm": _timm, "open_clip": _open_clip, "torchvision": _torchvision}[source]
    module, kw = loader(lib, body, options)
    if "dtype" in options:
        module = module.to(opts.torch_dtype(options["dtype"]))
    ref = f"{source}:{rest}"
    layers = kw.pop("layers", None) or default_layers(module)
    extra = options.get("layers", [])
    identity = sorted((k, v) for k, v in options.items() if k != "layers")
    sha = hashlib.sha256(f"{module_sha256(module)}|{identity}".encode()).hexdigest()
    return WrappedModel(module, ref=ref, name=body, sha256=sha, layers=list(dict.fromkeys(layers + extra)),
                        architecture=f"{source} {body} ({type(module).__name__})", info={"source": source}, **kw)


def _timm(timm, name: str, options: dict):
    module = timm.create_model(name, pretrained=True)
    config = timm.data.resolve_data_config({}, model=module)
    return module, {"preprocess": timm.data.create_transform(**config), "input_kind": "image"}


def _torchvision(tv, name: str, options: dict):
    module = tv.models.get_model(name, weights="DEFAULT")
    weights = tv.models.get_model_weights(name).DEFAULT
    return module, {"preprocess": weights.transforms(), "input_kind": "image"}


def _open_clip(open_clip, body: str, options: dict):
    name, pretrained = body.split("/")
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    if options.get("tower", "vision") == "vision":
        return model.visual, {"preprocess": preprocess, "input_kind": "image"}
    tokenizer = open_clip.get_tokenizer(name)
    layers = [f"model.transformer.{n}" for n in default_layers(model.transformer)]
    return _TextTower(model), {"batch_preprocess": lambda texts: {"text": tokenizer(texts)}, "input_kind": "text",
                               "layers": layers}


def _text_tower_class():
    import torch

    class TextTower(torch.nn.Module):
        """open_clip's text encoder as a module (it is a method of the two-tower model)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, text):
            return self.model.encode_text(text)

    return TextTower


def _TextTower(model):
    return _text_tower_class()(model)
