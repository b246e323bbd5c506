"""Merged models as model references, ``merge:<id>``, that open on every page.

A merge is kept in the result store as two things, neither of them a pickle:

- its weights, a safetensors file (tensors by name, plus a small JSON header), stored as a blob of
  kind ``merge`` under its sha256;
- its recipe, a JSON document of kind ``merge`` under ``<id>`` = the first 16 hex digits of that
  sha256: which models were merged (references and weight hashes), at which alpha, aligned how,
  on which data, and ``base``: the reference whose architecture the weights fill (model A).

Loading ``merge:<id>`` reads the recipe, builds the base model's architecture, loads the stored
weights into a copy of it and checks their hash. The same merge saved twice gets the same id.
"""
from __future__ import annotations

import json
import re

from ..errors import UserInputError

KIND = "merge"
FORMAT = 1
ID = re.compile(r"[0-9a-f]{16}")


def _store(store):
    from ..store import default_store

    return store or default_store()


def save_merge(base, state: dict, recipe: dict, store=None) -> str:
    """Store merged weights ``state`` (filling ``base``'s architecture) with their ``recipe``;
    returns the reference ``merge:<id>``."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    body = {"format": FORMAT, "base": base.ref, **recipe}
    data = save(tensors, metadata={"replens_merge": json.dumps(body, sort_keys=True)})
    s = _store(store)
    sha = s.put_blob(data, "merged.safetensors", KIND)
    merge_id = sha[:16]
    s.put_doc(KIND, merge_id, {**body, "weights_sha256": sha}, name=describe(body))
    return f"merge:{merge_id}"


def describe(recipe: dict) -> str:
    how = f"aligned by {recipe['aligned']}" if recipe.get("aligned") else "not aligned"
    return f"Merge of {recipe.get('a')} and {recipe.get('b')} at alpha={recipe.get('alpha'):g} ({how})"


def recipe(merge_id: str, store=None) -> dict:
    if not isinstance(merge_id, str) or not ID.fullmatch(merge_id):
        raise UserInputError(f"Not a merge id: {merge_id!r} (expected 16 hex digits).")
    body = _store(store).get_doc(KIND, merge_id)
    if body is None:
        raise UserInputError(f"No merged model merge:{merge_id} on this server. Merges live in the result store of "
                             "the server that made them: make it again on the Merge & stitch page (same models, "
                             "alpha and alignment give the same id).")
    return body


def load_merge(merge_id: str, allow_local: bool = True, store=None):
    """The merged model ``merge:<id>`` (a UserInputError when this server does not hold it)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from .. import models
    from ..store import sha256_bytes
    from .weights import with_state

    body = recipe(merge_id, store)
    data, info = _store(store).read_blob(body["weights_sha256"], kind=KIND)
    if sha256_bytes(data) != body["weights_sha256"]:
        raise UserInputError(f"The stored weights of merge:{merge_id} are damaged (hash mismatch); make the merge again.")
    try:
        state = load(data)
    except (SafetensorError, ValueError) as exc:
        raise UserInputError(f"The stored weights of merge:{merge_id} cannot be read ({exc}).") from exc
    base = models.load(body["base"], allow_local=allow_local)
    ref = f"merge:{merge_id}"
    model = with_state(base, state, ref=ref, name=ref, sha256=body["weights_sha256"], copy_module=False)
    model.architecture = f"{describe(body)} · {base.architecture}"
    model.info = {**{k: v for k, v in base.info.items() if k in ("architecture", "params")},
                  "note": describe(body), "recipe": body}
    return model


def merged_refs(store=None) -> list[str]:
    """Every merge this store holds, newest first."""
    return [f"merge:{d['id']}" for d in _store(store).docs(KIND)]
