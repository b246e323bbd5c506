"""Forward hooks: one batched pass of a model over a dataset, every requested layer pooled per batch."""
from __future__ import annotations

import numpy as np

from ..errors import UserInputError
from ..resources import release_freed_memory
from .pooling import AUTO_FLATTEN_MAX, TOKENS, check, first_tensor, pool, token_counts


class Step(tuple):
    """One batch of a pass: unpacks as ``(rows, {layer: pooled float32 array}, {layer: rule})``;
    ``counts`` holds the valid tokens per sample when pooling is "tokens" (else None)."""

    def __new__(cls, rows, acts, rules, counts=None):
        step = super().__new__(cls, (rows, acts, rules))
        step.counts = counts
        return step


def token_outputs(model) -> bool:
    """Whether the model's 3-D outputs are token sequences (transformers) rather than (c, l) maps."""
    return bool(getattr(model, "token_outputs", model.input_kind == "text"))


def check_layers(model, layers) -> None:
    scripted = getattr(model, "scripted", False)
    if scripted and list(layers) != ["output"]:
        raise UserInputError(f"{model.ref} is TorchScript: its submodules cannot take hooks, so only "
                             "'output' is available.")


def iter_batches(model, ds, layers, pooling: str = "mean", batch_size: int = 128, device=None, progress=None,
                 keep_on_device: bool = False):
    """Yield one :class:`Step` per batch, so a caller can reduce or store activations as they are
    produced (memory independent of the dataset size). The model goes back to the CPU at the end
    unless ``keep_on_device`` (a process that owns the model and calls again, such as a Ray
    extraction actor)."""
    import torch

    from ..device import pick

    check(pooling)
    check_layers(model, layers)
    device = pick(device) if not hasattr(device, "type") else device
    tokens = token_outputs(model)
    scripted = getattr(model, "scripted", False)
    remote = hasattr(model, "layer_outputs")  # runs elsewhere (a sandbox) and sends layer outputs back
    state: dict = {"mask": None, "out": {}, "rules": {}, "counts": None}

    def record(name, out):
        raw = first_tensor(out).detach()
        pooled, rule = pool(raw, pooling, state["mask"], tokens)
        if pooling == TOKENS and state["counts"] is None:
            state["counts"] = token_counts(state["mask"], raw.shape[0], raw.shape[1])
        # to the CPU after the forward pass (a copy here would stall it), so keep a copy on the device
        # where pooling kept the output's memory: a later in-place module (ReLU(inplace=True), as in
        # torchvision's ResNets) would otherwise change what was recorded
        shared = pooled.untyped_storage().data_ptr() == raw.untyped_storage().data_ptr()
        state["out"][name] = pooled.clone() if shared else pooled
        state["rules"][name] = rule
        release_freed_memory()  # the layers before this one freed their temporaries: within a batch too

    def hook_for(name):
        def hook(module, inputs, out):  # returns None, so the module's output is untouched
            record(name, out)
        return hook

    mods = {} if scripted or remote else model.hookable()
    n = len(ds)
    # The lock, the hooks and the device move last for the whole pass; grad mode is switched off
    # per batch only, never across a yield (it is thread-local and would leak into the caller).
    with model.lock:  # the model object may be shared between sessions
        model.to(device)
        handles = [mods[l].register_forward_hook(hook_for(l)) for l in layers] if mods else []
        try:
            for batch in model.batches(ds, batch_size, device):
                state.update(mask=batch.mask, out={}, counts=None)
                with torch.no_grad():
                    if remote:
                        for name, out in model.layer_outputs(batch, list(layers)).items():
                            record(name, out)
                    else:
                        out = model.run(batch)
                        if scripted:
                            record("output", out)
                if progress:
                    progress(batch.rows.stop / n, f"{model.name}: {batch.rows.stop}/{n} samples")
                acts = {name: t.cpu().numpy().astype(np.float32, copy=False) for name, t in state["out"].items()}
                # the batch's temporaries are freed now; without this their pages stay resident and
                # a long pass grows by hundreds of MB (see release_freed_memory)
                release_freed_memory()
                yield Step(batch.rows, acts, dict(state["rules"]), state["counts"])
        finally:
            for h in handles:
                h.remove()
            if not keep_on_device:
                model.to("cpu")


def output_shapes(model, ds, layers: list[str] | None = None, device=None) -> dict[str, tuple]:
    """Raw output shape (without the batch axis) of each layer on the first two rows of ``ds``."""
    import torch

    from ..device import pick

    layers = list(model.layers if layers is None else layers)
    small = rows_of(ds, slice(0, 2))
    if hasattr(model, "arrays"):
        return {l: tuple(model.arrays[l].shape[1:]) for l in layers}
    if getattr(model, "scripted", False) or hasattr(model, "layer_outputs") or not model.hookable():
        shapes = {}
        with model.lock, torch.no_grad():
            for batch in model.batches(small, 2, pick(device) if not hasattr(model, "layer_outputs") else "cpu"):
                if hasattr(model, "layer_outputs"):
                    outs = model.layer_outputs(batch, layers)
                    shapes.update({l: tuple(first_tensor(o).shape[1:]) for l, o in outs.items()})
                else:
                    shapes["output"] = tuple(model.run(batch).shape[1:])
        return shapes
    shapes: dict[str, tuple] = {}
    mods = model.hookable()

    def record(name):
        def hook(module, inputs, out):  # returns None: a hook's return value would replace the output
            shapes.setdefault(name, tuple(first_tensor(out).shape[1:]))
        return hook

    with model.lock:
        handles = [mods[l].register_forward_hook(record(l)) for l in layers]
        try:
            with torch.no_grad():
                for batch in model.batches(small, 2, _device_of(model)):
                    model.run(batch)
        finally:
            for h in handles:
                h.remove()
    return shapes


def _device_of(model):
    """Where the model's weights are now (a model spread over devices takes inputs on its first)."""
    module = getattr(model, "module", None)
    for p in (module.parameters() if module is not None else ()):
        return p.device
    return "cpu"


def rows_of(ds, rows):
    """The dataset restricted to ``rows`` (a slice or an index array), in that order."""
    return ds.subset(rows)


def pooled_dims(model, ds, layers: list[str], pooling: str = "mean") -> list[int]:
    """Width of each layer after pooling (as :func:`pool` would produce), without a full pass."""
    tokens = token_outputs(model)
    dims = []
    shapes = output_shapes(model, ds, layers)
    for layer in layers:
        shape = shapes[layer]
        if len(shape) <= 1:
            dims.append(int(shape[0]) if shape else 1)
        elif tokens and len(shape) == 2:
            dims.append(int(shape[-1]))
        elif pooling == "flatten" or (pooling == "auto" and int(np.prod(shape)) <= AUTO_FLATTEN_MAX):
            dims.append(int(np.prod(shape)))
        else:
            dims.append(int(shape[0]))
    return dims
