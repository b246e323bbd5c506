"""Model sources behind one reference string fit for a URL.

- ``zoo:NAME``: a checkpoint shipped in assets/zoo (see :mod:`analysis.zoo`)
- ``hf:minilm``, ``hf:minilm-random``, ``hf:/path/to/folder``, ``hf:./folder``, ``hf:org/name[@rev]``:
  transformers encoders (bundled, local folders written as paths, hub ids; see :func:`parse_ref`)
- ``hf:...#dtype=bfloat16,device_map=auto,tower=text,max_tokens=256,layers=a.b+c.d``: options
  (:mod:`analysis.models.options`); any transformers model (:mod:`analysis.models.hf`)
- ``timm:NAME``, ``open_clip:NAME/PRETRAINED``, ``torchvision:NAME``: other libraries' models where
  they are installed (:mod:`analysis.models.libraries`)
- ``upload:SHA``: a file stored by :func:`upload` (TorchScript, torch.export ``.pt2``, zoo-architecture
  safetensors, embeddings)
- ``merge:ID``: a merged model kept in the result store (see :mod:`analysis.merging.reference`)

:func:`wrap` turns any ``torch.nn.Module`` into a model.
"""
from __future__ import annotations

import os
import re

from .. import settings
from ..errors import UserInputError
from .base import Batch, Model, layer_table
from .embeddings import EmbeddingsModel, parse_embeddings
from . import options as ref_options
from .hf import LOCAL_PREFIXES, HFModel, HFTextModel
from .torch_models import TorchModel, manifest, zoo_entry, zoo_names
from .wrapped import WrappedModel, wrap

__all__ = ["load", "upload", "wrap", "zoo_names", "zoo_entry", "manifest", "builtin_refs", "Model", "Batch",
           "TorchModel", "HFModel", "HFTextModel", "WrappedModel", "EmbeddingsModel", "parse_ref", "layer_table"]

MODEL_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".pt2", ".safetensors", ".npy", ".npz", ".csv", ".parquet")
LIBRARY_SOURCES = ("timm", "open_clip", "torchvision")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# A hub id: "name" or "org/name", optionally "@revision". Never looked up on disk.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95})?(@[A-Za-z0-9][A-Za-z0-9_.\-/]{0,99})?")
LOCAL_PATHS_ENV = settings.LOCAL_PATHS_ENV
HUB_ENV = settings.HUB_ENV


def builtin_refs() -> list[str]:
    """Every model reference that works on a fresh install: the zoo plus the bundled MiniLM pair."""
    return [f"zoo:{n}" for n in zoo_names()] + ["hf:minilm", "hf:minilm-random"]


def parse_ref(ref: str, allow_local: bool = True, allow_hub: bool | None = None) -> tuple[str, str]:
    """Split and validate a reference; raises UserInputError for malformed, forged or refused ones.

    ``hf:`` references are of three kinds, told apart by their shape alone:

    - ``hf:minilm``, ``hf:minilm-random``: the bundled model (no network, no path);
    - a local folder, written as a path: ``hf:/abs/path``, ``hf:~/path``, ``hf:./rel``, ``hf:../rel``.
      ``allow_local=False`` (the web app, unless $REPLENS_ALLOW_LOCAL_PATHS=1) refuses them, so a
      link cannot make the server read folders outside the store;
    - a hub id, ``hf:name`` or ``hf:org/name[@revision]``: downloaded from the Hugging Face hub,
      never looked up on disk (a folder ``org/name`` under the working directory is not used).
      ``allow_hub=False`` refuses them at once; ``None`` reads $REPLENS_ALLOW_HUB (on unless "0"
      for the library and the CLI; the web app passes its own setting, off unless "1").
    """
    if not isinstance(ref, str) or ":" not in ref:
        raise UserInputError(f"Not a model reference: {ref!r}. Use zoo:NAME, hf:NAME-OR-PATH or upload:ID.")
    source, rest = ref.split(":", 1)
    if source == "zoo":
        if not _SAFE_NAME.fullmatch(rest):
            raise UserInputError(f"Not a zoo model name: {rest!r}.")
    elif source == "merge":
        if not re.fullmatch(r"[0-9a-f]{16}", rest):
            raise UserInputError(f"Not a merge id: {rest!r} (expected 16 hex digits).")
    elif source == "upload":
        if not re.fullmatch(r"[0-9a-f]{8,64}", rest):
            raise UserInputError(f"Not an upload id: {rest!r} (expected hex digits).")
    elif source == "hf":
        _check_hf(rest, allow_local, settings.hub_allowed(True) if allow_hub is None else allow_hub)
    elif source in LIBRARY_SOURCES:
        from .libraries import check

        check(source, rest, settings.hub_allowed(True) if allow_hub is None else allow_hub)
    else:
        raise UserInputError(f"Unknown model source {source!r} in {ref!r}; use zoo:, hf:, timm:, open_clip:, "
                             "torchvision: or upload:.")
    return source, rest


def _check_hf(rest: str, allow_local: bool, allow_hub: bool) -> None:
    rest, _ = ref_options.split(rest)  # options are checked here too
    if rest in ("minilm", "minilm-random"):
        return
    if rest.startswith(LOCAL_PREFIXES):
        if not allow_local:
            raise UserInputError(f"Local model paths are disabled on this server ({rest!r}). "
                                 f"Set {LOCAL_PATHS_ENV}=1 where the server runs to allow them.")
        if not os.path.isdir(os.path.expanduser(rest)):
            raise UserInputError(f"No transformers model folder at {rest!r}.")
        return
    if not _HUB_ID.fullmatch(rest) or ".." in rest:
        raise UserInputError(f"Not a hub id or a folder: {rest!r}. Write a hub id as hf:org/name, a local "
                             "folder as a path (hf:/abs/path or hf:./relative/path).")
    if not allow_hub:
        raise UserInputError(f"Downloading models from the Hugging Face hub is off on this server ({rest!r}). "
                             f"Set {HUB_ENV}=1 where the server runs to allow it, or use hf:minilm, a zoo "
                             "model or an upload.")


def load(ref: str, allow_local: bool = True, allow_hub: bool | None = None) -> Model:
    """Load a model by reference (see :func:`parse_ref` for what is allowed). Raises
    :class:`UserInputError` for anything a user can get wrong."""
    source, rest = parse_ref(ref, allow_local, allow_hub)
    if source == "zoo":
        from .torch_models import load_zoo

        return load_zoo(rest)
    if source == "merge":
        from ..merging.reference import load_merge

        return load_merge(rest, allow_local)
    if source == "hf":
        from .hf import load_hf

        return load_hf(rest)
    if source in LIBRARY_SOURCES:
        from .libraries import load as load_library

        return load_library(source, rest)
    from .. import tabular

    with tabular.unreadable_as_user_error(ref, "an uploaded model"):  # only UserInputError reaches callers
        return _load_upload(rest)


def _classify(data: bytes, filename: str) -> str:
    suffix = os.path.splitext(filename.lower())[1]
    if suffix not in MODEL_SUFFIXES:
        raise UserInputError(f"{filename}: unsupported model file type {suffix or '(none)'}. Upload TorchScript "
                             "(.pt/.pth/.ts), torch.export (.pt2), safetensors weights of a zoo architecture, or embeddings "
                             "(.npy/.npz/.csv/.parquet).")
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in (".npy", ".npz", ".csv", ".parquet"):
        return "embeddings"
    if suffix == ".pt2":
        return "export"
    return "torchscript"


def _build(data: bytes, filename: str, ref: str, sha: str) -> Model:
    from .torch_models import from_safetensors, from_torchscript

    kind = _classify(data, filename)
    if kind == "safetensors":
        return from_safetensors(data, ref, filename, sha)
    if kind == "embeddings":
        return EmbeddingsModel(parse_embeddings(data, filename), ref, filename, sha)
    _require_code_uploads(filename)
    if kind == "export":
        from .exported import from_export

        return from_export(data, ref, filename, sha)
    return from_torchscript(data, ref, filename, sha)


def _require_code_uploads(filename: str) -> None:
    """TorchScript is a program: refused unless the server accepts code uploads (they then run in a
    sandbox, see analysis.models.sandbox)."""
    from .. import settings

    if not settings.code_uploads():
        default = ", the default on a shared server" if settings.shared_server() else ""
        raise UserInputError(
            f"{filename}: TorchScript and torch.export files are programs, and this server does not run uploaded programs "
            f"({settings.CODE_UPLOADS_ENV} is off{default}). "
            "Upload safetensors weights of a zoo architecture or an embeddings file instead, or ask the "
            f"server's admin to set {settings.CODE_UPLOADS_ENV}=on (uploaded TorchScript then runs in a sandbox).")


def upload(data: bytes, filename: str, store=None) -> str:
    """Validate and store an uploaded model file; returns ``upload:<sha16>``.

    The file is fully loaded (and so validated) before anything is written to the store.
    """
    from .. import tabular
    from ..store import default_store, sha256_bytes

    tabular.check_size(data, filename)
    sha = sha256_bytes(data)
    ref = f"upload:{sha[:16]}"
    with tabular.unreadable_as_user_error(filename, "a model"):  # only UserInputError reaches callers
        _build(data, filename, ref, sha)
    (store or default_store()).put_blob(data, filename, "model")
    return ref


def _load_upload(prefix: str) -> Model:
    from ..store import default_store

    data, info = default_store().read_blob(prefix, kind="model")
    return _build(data, info["name"], f"upload:{prefix}", info["sha256"])
