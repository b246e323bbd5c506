"""Values <-> (JSON skeleton, named arrays), so that results are stored without pickle.

Supported: None, bool, int, float, str, numpy scalars and arrays (not object dtype), lists and
tuples, dicts with string keys, pandas DataFrames and Series, and dataclasses defined in
``analysis.*`` (rebuilt by their qualified name, which can only name RepLens code).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math

import numpy as np

MARK = "__codec__"


def encode(value) -> tuple[str, dict[str, np.ndarray]]:
    arrays: dict[str, np.ndarray] = {}
    skeleton = _enc(value, arrays)
    return json.dumps(skeleton, separators=(",", ":"), allow_nan=True), arrays


def decode(skeleton: str, arrays: dict[str, np.ndarray]):
    return _dec(json.loads(skeleton), arrays)


def _put(arrays: dict, a: np.ndarray) -> dict:
    name = f"a{len(arrays)}"
    if a.dtype == object:
        raise TypeError("object arrays cannot be stored without pickle; convert them to str or numbers")
    arrays[name] = a
    return {MARK: "nd", "ref": name}


def _enc(v, arrays):
    import pandas as pd

    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else {MARK: "float", "v": repr(f)}
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray):
        return _put(arrays, v)
    if isinstance(v, pd.DataFrame):
        cols = [str(c) for c in v.columns]
        return {MARK: "df", "columns": cols, "data": [_enc(_column(v.iloc[:, i]), arrays) for i in range(v.shape[1])],
                "index": _enc(_column(v.index.to_series()), arrays), "index_name": v.index.name,
                "default_index": isinstance(v.index, pd.RangeIndex) and v.index.start == 0 and v.index.step == 1,
                "attrs": _enc(dict(v.attrs), arrays)}
    if isinstance(v, pd.Series):
        return {MARK: "series", "name": v.name if v.name is None else str(v.name),
                "data": _enc(_column(v), arrays), "index": _enc(_column(v.index.to_series()), arrays)}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        cls = type(v)
        if not cls.__module__.startswith("analysis"):
            raise TypeError(f"only RepLens dataclasses can be stored, not {cls.__module__}.{cls.__qualname__}")
        return {MARK: "dc", "cls": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _enc(getattr(v, f.name), arrays) for f in dataclasses.fields(v) if f.init}}
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            return {MARK: "pairs", "items": [[_enc(k, arrays), _enc(x, arrays)] for k, x in v.items()]}
        return {MARK: "dict", "items": {k: _enc(x, arrays) for k, x in v.items()}}
    if isinstance(v, (list, tuple)):
        return {MARK: "tuple" if isinstance(v, tuple) else "list", "items": [_enc(x, arrays) for x in v]}
    raise TypeError(f"cannot store a {type(v).__name__} without pickle")


def _column(s) -> np.ndarray:
    a = s.to_numpy()
    if a.dtype == object:  # strings (or mixed): keep them as text
        return np.asarray(["" if x is None else str(x) for x in a], dtype=str)
    return a


def _dec(node, arrays):
    import pandas as pd

    if not isinstance(node, dict):
        return node
    t = node.get(MARK)
    if t == "nd":
        return arrays[node["ref"]]
    if t == "float":
        return float(node["v"])
    if t == "dict":
        return {k: _dec(x, arrays) for k, x in node["items"].items()}
    if t == "pairs":
        return {_dec(k, arrays): _dec(x, arrays) for k, x in node["items"]}
    if t in ("list", "tuple"):
        items = [_dec(x, arrays) for x in node["items"]]
        return tuple(items) if t == "tuple" else items
    if t == "df":
        data = {c: _dec(x, arrays) for c, x in zip(node["columns"], node["data"])}
        df = pd.DataFrame(data, columns=node["columns"])
        if not node["default_index"]:
            df.index = pd.Index(_dec(node["index"], arrays), name=node["index_name"])
        df.attrs.update(_dec(node["attrs"], arrays))
        return df
    if t == "series":
        return pd.Series(_dec(node["data"], arrays), index=_dec(node["index"], arrays), name=node["name"])
    if t == "dc":
        module, _, qual = node["cls"].partition(":")
        if not module.startswith("analysis"):
            raise ValueError(f"refusing to rebuild {node['cls']!r}")
        cls = importlib.import_module(module)
        for part in qual.split("."):
            cls = getattr(cls, part)
        return cls(**{k: _dec(x, arrays) for k, x in node["fields"].items()})
    raise ValueError(f"unknown stored node {t!r}")
