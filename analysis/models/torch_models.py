"""Models backed by a torch module reading numeric inputs: zoo checkpoints, uploaded safetensors
weights of a zoo architecture, and uploaded TorchScript files (run in a sandbox, see
:class:`SandboxedScriptModel`)."""
from __future__ import annotations

import hashlib
import json
import weakref
from functools import lru_cache

import numpy as np

from .. import tabular
from ..zoo_manifest import ZOO_DIR, manifest, zoo_entry, zoo_names  # noqa: F401 - re-exported
from ..errors import UserInputError
from .base import Model, as_tensor_batches, forward_order


class NumericInputModel(Model):
    """A model that reads (n, d) float rows; ``n_inputs`` is d when known."""

    def check_data(self, ds) -> None:
        if ds.kind == "text":
            raise UserInputError(f"{self.ref} reads numeric inputs, but dataset '{ds.name}' holds text. "
                                 "Pick 'digits' (or a numeric upload) for this model.")
        if self._adapts(ds):
            return
        if ds.lazy and ds.kind == "image":
            raise UserInputError(f"{self.ref} reads {self.n_inputs or 'numeric'} features per row, but dataset "
                                 f"'{ds.name}' holds image files. Pick 'digits' or a numeric upload.")
        if self.n_inputs is not None and ds.n_features != self.n_inputs:
            hint = " Zoo models read 8x8 digits: pick the 'digits' dataset." if self.ref.startswith("zoo:") else ""
            raise UserInputError(f"{self.ref} expects {self.n_inputs} input features but dataset "
                                 f"'{ds.name}' has {ds.n_features}.{hint}")

    def _adapts(self, ds) -> bool:
        """Image files for a model of square grey images (the zoo's 8x8 digits): shrunk to fit."""
        side = int(round((self.n_inputs or 0) ** 0.5))
        return ds.kind == "image" and ds.lazy and self.input_kind == "image" and side * side == self.n_inputs

    def batches(self, ds, batch_size, device):
        if self._adapts(ds):
            return self._image_batches(ds, batch_size, device)
        if ds.lazy:  # rows read a batch at a time: memory does not grow with the dataset
            return self._row_batches(ds, batch_size, device)
        return as_tensor_batches(np.asarray(ds.inputs, dtype=np.float32), batch_size, device)

    def _row_batches(self, ds, batch_size, device):
        import torch

        from .base import Batch

        for i in range(0, len(ds), batch_size):
            stop = min(i + batch_size, len(ds))
            x = np.asarray(ds.batch(i, stop), dtype=np.float32)
            yield Batch(torch.from_numpy(x).to(device), rows=slice(i, stop))

    def _image_batches(self, ds, batch_size, device):
        import torch

        from ..data.images import to_grid
        from .base import Batch

        side = int(round(self.n_inputs ** 0.5))
        for i in range(0, len(ds), batch_size):
            stop = min(i + batch_size, len(ds))
            x = to_grid(ds.images(i, stop), (side, side), 1).reshape(stop - i, -1)
            yield Batch(torch.from_numpy(x).to(device), rows=slice(i, stop))

    def input_note(self, ds) -> str:
        if not self._adapts(ds):
            return ""
        side = int(round(self.n_inputs ** 0.5))
        return f"{self.name}: images are converted to grey and shrunk to {side}×{side} pixels, what it reads."


class TorchModel(NumericInputModel):
    """A module that maps (n, d) float inputs to outputs; layers are its non-reshape leaf modules."""

    def __init__(self, module, ref: str, name: str, kind: str, architecture: str, sha256: str,
                 n_inputs: int | None, info: dict | None = None):
        super().__init__()
        import torch

        from .. import zoo

        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module, self.ref, self.name, self.kind = module, ref, name, kind
        self.architecture, self.sha256, self.n_inputs = architecture, sha256, n_inputs
        self.info = dict(info or {})
        self.input_kind = "image" if n_inputs == 64 else "vector"
        leaves = [n for n, m in module.named_modules()
                  if n and not list(m.children()) and not isinstance(m, zoo.RESHAPE_TYPES)]
        example = torch.zeros(2, n_inputs) if n_inputs else None
        self.layers = forward_order(module, example, leaves) if example is not None else leaves

    def _latent_parts(self):
        """(encode, decode) callables: ``encoder``/``decoder`` submodules, else ``encode``/``decode``
        methods; None when there are neither."""
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
def load_zoo(name: str) -> TorchModel:
    from safetensors.torch import load_file

    from .. import zoo

    entry = zoo_entry(name)
    path = ZOO_DIR / entry["file"]
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
    from .. import zoo

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

    from .. import zoo

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

    from .. import zoo

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


# --------------------------------------------------------------------------- TorchScript, sandboxed
class SandboxedScriptModel(NumericInputModel):
    """An uploaded TorchScript model that runs only inside its sandboxed worker
    (:class:`analysis.models.sandbox.ModelWorker`): ``run``, ``encode`` and ``decode`` send the
    batch there as an array and bring back the output as an array, on the batch's device.

    Its submodules cannot take forward hooks, so ``output`` is its one layer (``scripted``). Under
    autograd (the vector field's Jacobians), ``encode`` / ``decode`` bring back each row's Jacobian
    as well and backpropagate through it (:func:`_sandboxed_map`)."""

    scripted = True

    def __init__(self, worker, probe: dict, ref: str, filename: str, sha256: str):
        super().__init__()
        self.worker, self.ref, self.name, self.sha256 = worker, ref, filename, sha256
        self.n_inputs = probe["n_inputs"]
        self.input_kind = "image" if self.n_inputs == 64 else "vector"
        self.latent_shape = probe["latent_shape"]
        out = probe["output_shape"] or []
        if self.latent_shape is not None:
            self.kind = "autoencoder"
        elif len(out) == 1 and 2 <= out[0] <= 1000 and out[0] != self.n_inputs:
            self.kind = "classifier"
        else:
            self.kind = "encoder"
        self.architecture = "TorchScript (run in a sandbox)"
        self.info = {"file": filename}
        self.layers = ["output"]
        self._parameters = probe["parameters"]
        weakref.finalize(self, worker.close)  # the worker goes when the model is dropped

    def num_parameters(self) -> int:
        return self._parameters

    def run(self, batch):
        return self._apply("forward", batch.inputs)

    @property
    def is_autoencoder(self) -> bool:
        return self.latent_shape is not None

    def encode(self, x):
        return self._apply("encode", x) if self.is_autoencoder else super().encode(x)

    def decode(self, z):
        return self._apply("decode", z) if self.is_autoencoder else super().decode(z)

    def _apply(self, method: str, x):
        import torch

        if torch.is_grad_enabled() and x.requires_grad:
            return _sandboxed_map().apply(x, self.worker, method)[0]
        (out,) = self.worker.call(method, _as_array(x))
        return torch.from_numpy(out).to(x.device)


def _as_array(x) -> np.ndarray:
    return x.detach().cpu().numpy()


@lru_cache(maxsize=1)
def _sandboxed_map():
    """The autograd Function, built on first use (importing analysis must not import torch)."""
    import torch

    class SandboxedMap(torch.autograd.Function):
        """y = method(x) in the sandbox with its per-row Jacobian J (n, outputs, inputs); the
        backward pass is g -> g J, written in torch operations so ``torch.func`` transforms
        (``jacrev`` over it, vmap over the cotangents) work through it."""

        generate_vmap_rule = True

        @staticmethod
        def forward(x, worker, method):
            out, jac = worker.call(method, _as_array(x), jacobian=True)
            return (torch.from_numpy(out).to(x.device, x.dtype),
                    torch.from_numpy(jac).to(x.device, x.dtype))

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.mark_non_differentiable(output[1])
            ctx.save_for_backward(output[1])
            ctx.in_shape = inputs[0].shape

        @staticmethod
        def backward(ctx, grad, _grad_jac):
            (jac,) = ctx.saved_tensors
            g = torch.einsum("no,noi->ni", grad.reshape(grad.shape[0], -1), jac)
            return g.reshape(ctx.in_shape), None, None

    return SandboxedMap


def from_torchscript(data: bytes, ref: str, filename: str, sha: str) -> SandboxedScriptModel:
    """A TorchScript archive (torch.jit.save), loaded, checked and probed in a sandboxed worker:
    the server never loads it itself (loading runs the file's ``__setstate__`` code)."""
    from .sandbox import ModelWorker

    worker = ModelWorker(data, filename)
    try:
        probe = worker.open()
    except BaseException:
        worker.close()
        raise
    if probe["n_inputs"] is None:
        worker.close()
        raise UserInputError(f"{filename}: the TorchScript model did not run on (n, d) float inputs for "
                             "any d in 2..4096 tried; RepLens feeds numeric rows of the dataset.")
    return SandboxedScriptModel(worker, probe, ref, filename, sha)
