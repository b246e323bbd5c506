"""Store keys: the one digest of a cached result's description, and the checks on keys and names.

``digest(kind, parts)`` is the sha256 of canonical JSON holding the kind, the parts and
``CODE_VERSION``. What goes in ``parts`` decides when a result is reused, so it must name the
content, never an object's identity:

- models and data by their content hashes (``model.sha256``, ``ds.sha256``), not by a reference
  string that could later point at other weights, and not by the objects themselves;
- every parameter that changes the numbers (layers, measure, seeds, sizes, rules), as plain JSON
  values (str, int, float, bool, None, lists, dicts with str keys);
- arrays (anchors, a selection of rows) directly: they are hashed by their bytes, dtype and shape.

Anything else (a model object, a path, a set) is refused with ``TypeError`` rather than keyed by
its ``repr``, which can change between processes and would silently miss or, worse, collide.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Mapping

import numpy as np

from ..errors import UserInputError

# Bump when any cached computation changes its numbers: every cached result is then recomputed.
CODE_VERSION = 1

HEX = re.compile(r"[0-9a-f]{8,64}")
NAME = re.compile(r"[a-z0-9_-]{1,40}")  # kinds of results, uploads and documents (they name folders)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_key(kind: str, **parts: Any) -> str:
    """Stable sha256 of a result's description (kind + parameters), as hex. Values that are not JSON
    are keyed by ``str``; new code uses :func:`digest`, which refuses them."""
    payload = json.dumps({"kind": kind, **parts}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def digest(kind: str, parts: Mapping[str, Any]) -> str:
    """The store key of a result: sha256 of canonical JSON of kind, parts and the code version."""
    payload = {"kind": str(kind), "code": CODE_VERSION, "parts": canonical(dict(parts))}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def canonical(value: Any) -> Any:
    """A JSON value that stands for ``value`` in a digest (arrays by a hash of their content)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        # JSON has no NaN or infinity; spell them so they still key distinctly.
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return {"$array": array_digest(value)}
    if isinstance(value, bytes):
        return {"$bytes": sha256_bytes(value)}
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"digest parts need str keys, got {bad[0]!r}")
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    raise TypeError(f"cannot key a result by a {type(value).__name__}; pass its content hash or its "
                    "parameters as plain values")


def array_digest(a: np.ndarray) -> str:
    """sha256 of an array's bytes (C order), dtype and shape."""
    if a.dtype == object:
        raise TypeError("cannot key a result by an object array")
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def check_key(key: str) -> None:
    if not isinstance(key, str) or not HEX.fullmatch(key):
        raise UserInputError(f"Not a store key: {key!r} (expected a hex digest).")


def check_name(kind: str) -> None:
    """Kinds name folders (docs/<kind>/, blob sidecars): a short lowercase word, set by code."""
    if not isinstance(kind, str) or not NAME.fullmatch(kind):
        raise ValueError(f"store kind {kind!r} must match {NAME.pattern}")
