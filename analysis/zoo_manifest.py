"""The zoo's manifest: which checkpoints ship in assets/zoo, with their architecture and sha256.

Read without torch (analysis.zoo, which defines the architectures, imports it): a page that finds
a zoo model's results in the store needs only its content hash, which the manifest holds and
:func:`analysis.models.torch_models.load_zoo` checks the checkpoint file against.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .errors import UserInputError

ZOO_DIR = Path(__file__).resolve().parent.parent / "assets" / "zoo"
MANIFEST = ZOO_DIR / "manifest.json"


@lru_cache(maxsize=1)
def manifest() -> dict:
    if not MANIFEST.exists():
        return {"models": []}
    return json.loads(MANIFEST.read_text())


def zoo_names() -> list[str]:
    return [e["name"] for e in manifest()["models"]]


def zoo_entry(name: str) -> dict:
    for e in manifest()["models"]:
        if e["name"] == name:
            return e
    raise UserInputError(f"No zoo model named {name!r}. Available: {', '.join(zoo_names())}.")


def checkpoints(name: str = "mlp-ae-b8") -> list[tuple[int, str]]:
    """(epoch, zoo name) of the training checkpoints of ``name``, ending with the final model.
    StopIteration when ``name`` is not in the zoo."""
    models = manifest()["models"]
    final = next(e for e in models if e["name"] == name)
    early = [(e["epochs"], e["name"]) for e in models if e.get("checkpoint_of") == name]
    return sorted(early) + [(final["epochs"], name)]
