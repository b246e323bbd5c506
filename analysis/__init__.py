"""RepLens analysis library: models, data, activations and the analyses built on them.

Submodules are imported on first use (``from analysis import models``), so ``import analysis``
stays fast and never pulls torch, transformers or umap until they are needed.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
_SUBMODULES = {"models", "data", "activations", "store", "errors", "device", "zoo", "tabular", "evaluate", "fmaps", "translation", "stitching", "lrp", "vector_field", "sae"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
