"""Options in a model reference: ``hf:gpt2#dtype=bfloat16,layers=h.3.attn+h.3.mlp``.

A reference holds everything that changes what a model computes, so that it fits in a URL and
keys caches: the weights' dtype, how they are placed (``device_map=auto``), which tower of a
two-tower model (CLIP), how many tokens a text is cut to, and module paths added to the default
layers (joined by ``+``). ``REF#opt=value,opt=value``; every value is checked here.
"""
from __future__ import annotations

import re

from ..errors import UserInputError

DTYPES = ("float32", "bfloat16", "float16")
TOWERS = ("vision", "text")
_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
MAX_TOKENS_LIMIT = 8192


def split(rest: str) -> tuple[str, dict]:
    """``BODY#opt=value,...`` -> (BODY, options); UserInputError for an unknown option or value."""
    body, _, text = rest.partition("#")
    options: dict = {}
    for part in filter(None, text.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise UserInputError(f"Model option {part!r} has no value; write it as name=value.")
        options[key] = _value(key, value)
    return body, options


def _value(key: str, value: str):
    if key == "dtype":
        if value not in DTYPES:
            raise UserInputError(f"dtype {value!r}: use one of {', '.join(DTYPES)}.")
        return value
    if key == "device_map":
        if value != "auto":
            raise UserInputError(f"device_map {value!r}: only 'auto' (accelerate spreads the model over the devices).")
        return value
    if key == "tower":
        if value not in TOWERS:
            raise UserInputError(f"tower {value!r}: use 'vision' or 'text'.")
        return value
    if key == "max_tokens":
        if not value.isdigit() or not 1 <= int(value) <= MAX_TOKENS_LIMIT:
            raise UserInputError(f"max_tokens {value!r}: a whole number from 1 to {MAX_TOKENS_LIMIT}.")
        return int(value)
    if key == "layers":
        paths = [p for p in value.split("+") if p]
        bad = [p for p in paths if not _MODULE_PATH.fullmatch(p) or len(p) > 200]
        if bad or not paths or len(paths) > 256:
            raise UserInputError(f"layers {value[:80]!r}: module paths (letters, digits, _ and dots) joined by '+'.")
        return paths
    raise UserInputError(f"Unknown model option {key!r}; options are dtype, device_map, tower, max_tokens and layers.")


def join(body: str, options: dict) -> str:
    """The reference text of a body and its options (inverse of :func:`split`)."""
    parts = []
    for key in ("dtype", "device_map", "tower", "max_tokens", "layers"):
        if key in options and options[key] is not None:
            value = options[key]
            parts.append(f"{key}={'+'.join(value) if key == 'layers' else value}")
    return body + ("#" + ",".join(parts) if parts else "")


def torch_dtype(name: str | None):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name or "float32"]
