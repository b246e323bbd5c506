"""What an attribution costs before it runs (the estimate a page shows before a long job): the
multiply-adds of each linear layer of one forward pass, counted once per model on one input, times
the passes each layer's rule makes (:attr:`Rule.passes`), plus a cost per batch (the working copy,
the traced forward pass) and per pass of a layer in a batch (the rule's elementwise operations and
their dispatch, which dominate for small models).

Calibrated on the shared 2-core CPU this project runs on, in a job worker's setting (one torch
thread): the zoo's MLP, wide MLP and CNN, 64 to 6,000 digits rows, every rule, fitted by
least squares on relative error: every case within 0.4-1.4x of the measured time at load 6.
``analysis.jobs`` corrects these estimates by the run times it records."""
from __future__ import annotations

import threading

import numpy as np

from .composites import RuleSet
from .copies import unwrap, working_copy
from .rules import get_rule

FLOPS_PER_SECOND = 4e10  # linear-layer work under the tracer, fitted (5.8e10); counted FLOPs, not peak
BATCH_OVERHEAD_S = 1.5e-3  # the pooled working copy, the tracer and autograd per batch, fitted (0.9 ms)
LAYER_PASS_S = 1e-4  # one pass of one layer over a batch beyond its multiply-adds (fitted ~0)
CALL_OVERHEAD_S = 2e-3  # one plain forward call (and its masking) of a small model
_PROFILES: dict[str, list[tuple[bool, float]]] = {}
_LOCK = threading.Lock()


def layer_flops(model, example) -> list[tuple[bool, float]]:
    """(is a convolution, FLOPs per input row) of each linear layer a forward pass of ``model`` on
    ``example`` (a batch of one: an array row, or a one-sentence encoding dict) runs, in order.
    Counted once per model (by its content hash) when it has one."""
    key = getattr(model, "sha256", None)
    with _LOCK:
        if key is not None and key in _PROFILES:
            return _PROFILES[key]
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    module, wrapper = unwrap(model)
    clone = working_copy(module, None, getattr(wrapper, "lock", None))
    layers: list[tuple[bool, float]] = []
    convs = {torch.conv1d, torch.conv2d, torch.conv3d}

    class Count(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is F.linear or func in convs:
                w = args[1] if len(args) > 1 else kwargs["weight"]
                per_output = w[0].numel()  # inputs each output reads (in_features or in_channels/groups x kernel)
                layers.append((func in convs, 2.0 * out.numel() * per_output / max(1, out.shape[0])))
            return out

    with torch.no_grad(), Count():
        if isinstance(example, dict):
            clone(**example)
        else:
            clone(torch.as_tensor(np.asarray(example), dtype=next(clone.parameters()).dtype))
    if key is not None:
        with _LOCK:
            _PROFILES[key] = layers
    return layers


def attribution_seconds(layers: list[tuple[bool, float]], rows: int, rs: RuleSet | None,
                        batch_size: int = 256) -> float:
    """Seconds to explain ``rows`` inputs in batches: each layer runs forward once and backward under
    its rule (``rs`` None: gradient x input, a plain backward pass)."""
    work = passes = 0.0
    for i, (conv, flops) in enumerate(layers):
        layer_passes = 1.0 + (2.0 if rs is None else get_rule(_rule_of(rs, conv, i == 0)).passes)
        work += flops * layer_passes
        passes += layer_passes
    batches = -(-max(rows, 1) // batch_size)
    return batches * (BATCH_OVERHEAD_S + passes * LAYER_PASS_S) + rows * work / FLOPS_PER_SECOND


def forward_seconds(layers: list[tuple[bool, float]], rows: int, calls: int = 1) -> float:
    """Seconds of plain forward passes over ``rows`` inputs in all, in ``calls`` calls (pixel flipping)."""
    return calls * CALL_OVERHEAD_S + rows * sum(f for _, f in layers) / FLOPS_PER_SECOND


def _rule_of(rs: RuleSet, conv: bool, first: bool) -> str:
    rule = rs.for_layer(conv, first)
    return "epsilon" if get_rule(rule).input_layer and not first else rule
