"""Models backed by a torch module reading numeric inputs: zoo checkpoints, uploaded safetensors
weights of a zoo architecture, and uploaded TorchScript files."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache

import numpy as np

from .. import tabular, zoo
from ..errors import UserInputError
from .base import Model, as_tensor_batches, forward_order


class TorchModel(Model):
    """A module that maps (n, d) float inputs to outputs; layers are its non-reshape leaf modules."""

    def __init__(self, module, ref: str, name: str, kind: str, architecture: str, sha256: str,
                 n_inputs: int | None, info: dict | None = None, hookable: bool = True):
        super().__init__()
        import torch

        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module, self.ref, self.name, self.kind = module, ref, name, kind
        self.architecture, self.sha256, self.n_inputs = architecture, sha256, n_inputs
        self.info = dict(info or {})
        self.input_kind = "image" if n_inputs == 64 else "vector"
        self.scripted = not hookable
        if hookable:
            leaves = [n for n, m in module.named_modules()
                      if n and not list(m.children()) and not isinstance(m, zoo.RESHAPE_TYPES)]
            example = torch.zeros(2, n_inputs) if n_inputs else None
            self.layers = forward_order(module, example, leaves) if example is not None else leaves
        else:
            self.layers = ["output"]

    def check_data(self, ds) -> None:
        if ds.kind == "text":
            raise UserInputError(f"{self.ref} reads numeric inputs, but dataset '{ds.name}' holds text. "
                                 "Pick 'digits' (or a numeric upload) for this model.")
        if self.n_inputs is not None and ds.n_features != self.n_inputs:
            hint = " Zoo models read 8x8 digits: pick the 'digits' dataset." if self.ref.startswith("zoo:") else ""
            raise UserInputError(f"{self.ref} expects {self.n_inputs} input features but dataset "
                                 f"'{ds.name}' has {ds.n_features}.{hint}")

    def batches(self, ds, batch_size, device):
        return as_tensor_batches(np.asarray(ds.inputs, dtype=np.float32), batch_size, device)

    def hookable(self) -> dict:
        return {} if self.scripted else super().hookable()

    def _latent_parts(self):
        """(encode, decode) callables: ``encoder``/``decoder`` submodules, else ``encode``/``decode``
        methods (TorchScript exports them with @torch.jit.export); None when there are neither."""
        return latent_parts(self.module)

    @property
    def is_autoencoder(self) -> bool:
        return self._latent_parts() is not None

    def encode(self, x):
        parts = self._latent_parts()
        return parts[0](x) if parts else super().encode(x)

    def decode(self, z):
        parts = self._latent_parts()
        return parts[1](z) if parts else super().decode(z)


def latent_parts(module):
    import torch

    enc, dec = getattr(module, "encoder", None), getattr(module, "decoder", None)
    if isinstance(enc, torch.nn.Module) and isinstance(dec, torch.nn.Module):
        return enc, dec
    enc, dec = getattr(module, "encode", None), getattr(module, "decode", None)
    if callable(enc) and callable(dec):
        return enc, dec
    return None


# --------------------------------------------------------------------------- zoo
@lru_cache(maxsize=1)
def manifest() -> dict:
    if not zoo.MANIFEST.exists():
        return {"models": []}
    return json.loads(zoo.MANIFEST.read_text())


def zoo_names() -> list[str]:
    return [e["name"] for e in manifest()["models"]]


def zoo_entry(name: str) -> dict:
    for e in manifest()["models"]:
        if e["name"] == name:
            return e
    raise UserInputError(f"No zoo model named {name!r}. Available: {', '.join(zoo_names())}.")


def load_zoo(name: str) -> TorchModel:
    from safetensors.torch import load_file

    entry = zoo_entry(name)
    path = zoo.ZOO_DIR / entry["file"]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if sha != entry["sha256"]:
        raise UserInputError(f"Checkpoint {path.name} does not match its manifest sha256; "
                             "rebuild the zoo with `python -m analysis.zoo build`.")
    module = zoo.build_model(entry["architecture"], entry["params"])
    module.load_state_dict(load_file(str(path)))
    return TorchModel(module, f"zoo:{name}", name, entry["kind"], entry["description"], sha, 64, entry)


# --------------------------------------------------------------------------- uploads
def from_safetensors(data: bytes, ref: str, filename: str, sha: str) -> TorchModel:
    """Weights for one of the zoo architectures. The architecture comes from the file's metadata
    (as the zoo writes it) or is recognised from the tensor names and shapes.

    Everything is checked from the header before memory is spent: each candidate architecture is
    built on torch's meta device (shapes only, no storage) and compared with the header's tensor
    shapes, and its size parameters must fit the tensors at all; only the architecture that
    matches is built for real, at the size the file's tensors already have. (A metadata "width"
    of 16,000 used to build a 2.1 GB model before the check.)"""
    with tabular.unreadable_as_user_error(filename, "safetensors weights"):
        shapes, meta = _safetensors_header(data, filename)
        for arch, params in _candidates(meta):
            if _fits(arch, params, shapes):
                return _load_safetensors(data, arch, params, ref, filename, sha)
    names = ", ".join(sorted(shapes)[:4])
    raise UserInputError(
        f"{filename}: its tensors ({names}, ...) match none of the zoo architectures "
        f"({', '.join(zoo.ARCHITECTURES)}). Safetensors holds weights only; for another architecture "
        "upload a TorchScript file (torch.jit.save) or an embeddings file."
    )


def _safetensors_header(data: bytes, filename: str) -> tuple[dict[str, tuple], dict]:
    """Tensor shapes and the metadata, from the JSON header alone."""
    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or n > len(data) - 8:
            raise ValueError(f"header of {n} bytes in a file of {len(data)}")
        header = json.loads(data[8: 8 + n])
        meta = header.pop("__metadata__", None) or {}
        shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in header.items()}
        for k, v in header.items():  # each tensor's bytes: as its shape and dtype say, inside the file
            start, end = (int(o) for o in v["data_offsets"])
            size = int(np.prod(shapes[k], dtype=object)) * _DTYPE_BYTES[v["dtype"]]
            if not 0 <= start <= end <= len(data) - 8 - n or end - start != size:
                raise ValueError(f"tensor {k!r} declares {size} bytes at offsets {start}..{end} "
                                 f"of {len(data) - 8 - n}")
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as exc:
        raise UserInputError(f"{filename} is not a valid safetensors file ({type(exc).__name__}: {str(exc)[:200]}).") from exc
    if not shapes:
        raise UserInputError(f"{filename} holds no tensors.")
    return shapes, dict(meta) if isinstance(meta, dict) else {}


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _candidates(meta: dict) -> list[tuple]:
    out = []
    if "architecture" in meta:
        try:
            out.append((json.loads(meta["architecture"]), json.loads(meta.get("params", "{}"))))
        except (json.JSONDecodeError, TypeError):
            pass
    return out + [(e["architecture"], e["params"]) for e in manifest()["models"]]


def _fits(arch, params, shapes: dict[str, tuple]) -> bool:
    """Whether ``arch`` built with ``params`` has exactly the header's tensor shapes. Size
    parameters larger than every tensor dimension cannot fit and are refused without building."""
    import torch

    largest = max((d for shape in shapes.values() for d in shape), default=0)
    if not isinstance(arch, str) or arch not in zoo.ARCHITECTURES or not isinstance(params, dict) or any(
            not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= largest for v in params.values()):
        return False
    try:
        with torch.device("meta"):
            module = zoo.build_model(arch, params)
    except (KeyError, TypeError, ValueError, RuntimeError):
        return False
    return {k: tuple(v.shape) for k, v in module.state_dict().items()} == shapes


def _load_safetensors(data: bytes, arch: str, params: dict, ref: str, filename: str, sha: str) -> TorchModel:
    from safetensors.torch import load

    try:
        state = load(data)
    except Exception as exc:  # a lying header (offsets, dtypes) raises several error types
        raise UserInputError(f"{filename} is not a valid safetensors file ({type(exc).__name__}).") from exc
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise UserInputError(f"{filename}: tensor(s) {', '.join(bad[:3])} contain NaN/inf.")
    module = zoo.build_model(arch, params)
    module.load_state_dict(state)
    desc = zoo.describe_architecture(arch, params)
    return TorchModel(module, ref, filename, zoo.KIND[arch], desc, sha, 64,
                      {"architecture": arch, "params": params, "file": filename})


def from_torchscript(data: bytes, ref: str, filename: str, sha: str) -> TorchModel:
    """A TorchScript archive (torch.jit.save). jit.load executes no pickled Python code."""
    import io

    import torch

    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:  # jit.load raises RuntimeError and others for non-TorchScript files
        raise UserInputError(
            f"{filename} is not a TorchScript file ({type(exc).__name__}). Save models with "
            "torch.jit.save(torch.jit.trace(model, example), path); plain torch.save pickles are refused."
        ) from exc
    n_inputs = _probe_inputs(module)
    if n_inputs is None:
        raise UserInputError(f"{filename}: the TorchScript model did not run on (n, d) float inputs for "
                             "any d in 2..4096 tried; RepLens feeds numeric rows of the dataset.")
    kind = "autoencoder" if latent_parts(module) else ("classifier" if _out_dim(module, n_inputs) else "encoder")
    return TorchModel(module, ref, filename, kind,
                      f"TorchScript ({type(module).__name__})", sha, n_inputs, {"file": filename},
                      hookable=False)


def _probe_inputs(module) -> int | None:
    import torch

    for d in (64, 3, 16, 2, 8, 32, 128, 256, 512, 768, 784, 1024, 2048, 3072, 4096):
        try:
            with torch.no_grad():
                module(torch.zeros(2, d))
            return d
        except Exception:
            continue
    return None


def _out_dim(module, d: int) -> bool:
    import torch

    with torch.no_grad():
        out = module(torch.zeros(2, d))
    return isinstance(out, torch.Tensor) and out.ndim == 2 and 2 <= out.shape[1] <= 1000 and d != out.shape[1]
