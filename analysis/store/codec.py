"""Values of cached computations as plain arrays plus a JSON tree, without pickle.

``encode(value) -> (arrays, tree)`` and ``decode(arrays, tree) -> value`` round-trip exactly:

- numpy arrays (any dtype but object) and numpy scalars, as arrays;
- str, int, float, bool and None, in the tree;
- lists, tuples and dicts (keys of those plain types), nested to any depth;
- pandas DataFrames, Series and Indexes: each column as an array (strings as UTF-8 bytes plus
  offsets, categoricals as codes plus categories, nullable columns with their mask), the index,
  the column labels, the names and ``attrs``;
- dataclass instances whose class is already imported (or lives in ``analysis``): their fields.

Every node of the tree that is not a JSON scalar or list is an object with a ``"$"`` tag, so a
stored tree is never ambiguous. Arrays are named after their place in the value (``x``,
``fit.values``, ``table.c0``), so a flat dict of arrays is stored under its own names.
Anything else raises ``TypeError`` at encoding; a tree that no longer fits (a class whose fields
changed, an array missing) raises :class:`CodecError` at decoding, and the store recomputes.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
import sys
from typing import Any

import numpy as np

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
RESERVED = "__replens__"  # the npz member that holds a result's own record (see core.py)


class CodecError(ValueError):
    """A stored tree that cannot be turned back into a value (stale or damaged)."""


# ------------------------------------------------------------------ encoding
class _Encoder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, a: np.ndarray, path: tuple) -> str:
        if a.dtype == object:
            raise TypeError(f"{_where(path)}: object arrays cannot be stored; convert them to a plain dtype")
        base = ".".join(_UNSAFE.sub("_", str(p)) for p in path) or "value"
        name, n = base, 1
        while name in self.arrays or name == RESERVED:
            name, n = f"{base}~{n}", n + 1
        self.arrays[name] = a
        return name

    def node(self, v: Any, path: tuple) -> Any:
        if isinstance(v, np.str_):  # before str and float: np.str_ and np.float64 subclass them
            return {"$": "npstr", "value": str(v)}
        if isinstance(v, np.bytes_):
            return self.node(bytes(v), path)
        if isinstance(v, np.generic):
            return {"$": "scalar", "name": self.array(np.asarray(v), path)}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, np.ndarray):
            return {"$": "array", "name": self.array(v, path)}
        if isinstance(v, bytes):
            return {"$": "bytes", "name": self.array(np.frombuffer(v, np.uint8), path)}
        if isinstance(v, list):
            return [self.node(x, path + (i,)) for i, x in enumerate(v)]
        if isinstance(v, tuple):
            return {"$": "tuple", "items": [self.node(x, path + (i,)) for i, x in enumerate(v)]}
        if isinstance(v, dict):
            return {"$": "dict", "items": [[self.key(k, path), self.node(x, path + (k,))] for k, x in v.items()]}
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            cls = type(v)
            return {"$": "dataclass", "type": f"{cls.__module__}:{cls.__qualname__}",
                    "fields": {f.name: self.node(getattr(v, f.name), path + (f.name,))
                               for f in dataclasses.fields(v)}}
        pd = sys.modules.get("pandas")
        if pd is not None:
            if isinstance(v, pd.DataFrame):
                return self.frame(v, path)
            if isinstance(v, pd.Series):
                return {"$": "series", "values": self.column(v.array, path + ("values",)),
                        "index": self.index(v.index, path + ("index",)), "name": self.key(v.name, path)}
            if isinstance(v, pd.Index):
                return self.index(v, path)
        raise TypeError(f"{_where(path)}: a {type(v).__name__} cannot be stored (arrays, tables, "
                        "numbers, strings, lists, dicts and dataclasses of those can)")

    def key(self, k: Any, path: tuple) -> Any:
        if k is None or isinstance(k, (bool, int, float, str)):
            return k
        if isinstance(k, tuple):
            return {"$": "tuple", "items": [self.key(x, path) for x in k]}
        raise TypeError(f"{_where(path)}: a key of type {type(k).__name__} cannot be stored")

    def frame(self, df, path: tuple) -> dict:
        return {"$": "frame", "columns": self.index(df.columns, path + ("columns",)),
                "values": [self.column(df.iloc[:, i].array, path + (f"c{i}",)) for i in range(df.shape[1])],
                "index": self.index(df.index, path + ("index",)), "attrs": self.node(dict(df.attrs), path + ("attrs",))}

    def index(self, idx, path: tuple) -> dict:
        import pandas as pd

        if isinstance(idx, pd.MultiIndex):
            raise TypeError(f"{_where(path)}: a MultiIndex cannot be stored; reset_index() first")
        if isinstance(idx, pd.RangeIndex):
            return {"$": "range", "start": idx.start, "stop": idx.stop, "step": idx.step, "name": self.key(idx.name, path)}
        return {"$": "index", "values": self.column(idx.array, path), "name": self.key(idx.name, path)}

    def column(self, arr, path: tuple) -> dict:
        """One column's values (a pandas array) as arrays: exact for numpy dtypes, categoricals,
        nullable numbers and strings."""
        import pandas as pd

        if isinstance(arr, pd.arrays.NumpyExtensionArray):
            arr = arr.to_numpy()
        dtype = arr.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            return {"$": "categorical", "codes": self.array(np.asarray(arr.codes), path + ("codes",)),
                    "categories": self.index(dtype.categories, path + ("categories",)), "ordered": bool(dtype.ordered)}
        if isinstance(dtype, pd.StringDtype) or dtype == object and all(
                isinstance(x, str) or x is None or x is pd.NA or _is_nan(x) for x in arr):
            return self.strings(arr, str(dtype), path)
        if dtype == object:  # mixed labels (column names such as "a" and 3): each in the tree
            return {"$": "objects", "items": [self.key(x, path) for x in arr]}
        if isinstance(dtype, np.dtype):
            return {"$": "numpy", "name": self.array(np.asarray(arr), path)}
        if isinstance(arr, (pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray)):
            mask = np.asarray(arr.isna())
            values = arr.to_numpy(dtype=dtype.numpy_dtype, na_value=dtype.numpy_dtype.type(0))
            return {"$": "masked", "dtype": str(dtype), "values": self.array(values, path),
                    "mask": self.array(mask, path + ("mask",))}
        raise TypeError(f"{_where(path)}: columns of dtype {dtype} cannot be stored")

    def strings(self, arr, dtype: str, path: tuple) -> dict:
        import pandas as pd

        values = list(arr)
        # 0: a string, else which missing value it was: 1 None, 2 NaN, 3 pd.NA (object columns keep it)
        missing = np.array([0 if isinstance(x, str) else 1 if x is None else 2 if _is_nan(x) else 3 if x is pd.NA
                            else 4 for x in values], np.int8)
        if (missing == 4).any():
            bad = values[int(np.argmax(missing == 4))]
            raise TypeError(f"{_where(path)}: a column of dtype {dtype} holds a {type(bad).__name__}; "
                            "only strings and missing values can be stored")
        encoded = [x.encode("utf-8", "surrogatepass") if isinstance(x, str) else b"" for x in values]
        offsets = np.cumsum([0] + [len(b) for b in encoded], dtype=np.int64)
        return {"$": "strings", "dtype": dtype, "utf8": self.array(np.frombuffer(b"".join(encoded), np.uint8), path),
                "offsets": self.array(offsets, path + ("offsets",)), "missing": self.array(missing, path + ("missing",))}


def _is_nan(x) -> bool:
    return isinstance(x, float) and x != x


def _where(path: tuple) -> str:
    return "value" + "".join(f"[{p!r}]" for p in path)


def encode(value: Any) -> tuple[dict[str, np.ndarray], Any]:
    """``(arrays, tree)``: the arrays to store by name and the JSON tree that puts them back."""
    enc = _Encoder()
    tree = enc.node(value, ())
    return enc.arrays, tree


# ------------------------------------------------------------------ decoding
def decode(arrays: dict[str, np.ndarray], tree: Any) -> Any:
    """The value that :func:`encode` turned into ``arrays`` and ``tree``."""
    try:
        return _Decoder(arrays).node(tree)
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise CodecError(f"stored value does not decode: {type(e).__name__}: {e}") from e


class _Decoder:
    def __init__(self, arrays):
        self.arrays = arrays

    def node(self, t: Any) -> Any:
        if t is None or isinstance(t, (bool, int, float, str)):
            return t
        if isinstance(t, list):
            return [self.node(x) for x in t]
        tag = t["$"]
        if tag == "array":
            return self.arrays[t["name"]]
        if tag == "scalar":
            return self.arrays[t["name"]][()]
        if tag == "npstr":
            return np.str_(t["value"])
        if tag == "bytes":
            return self.arrays[t["name"]].tobytes()
        if tag == "tuple":
            return tuple(self.node(x) for x in t["items"])
        if tag == "dict":
            return {self.node(k): self.node(v) for k, v in t["items"]}
        if tag == "dataclass":
            return self.dataclass(t)
        if tag in ("frame", "series", "range", "index"):
            return getattr(self, tag)(t)
        raise CodecError(f"unknown node {tag!r}")

    def dataclass(self, t: dict) -> Any:
        cls = _dataclass_type(t["type"])
        names = [f.name for f in dataclasses.fields(cls)]
        if sorted(names) != sorted(t["fields"]):
            raise CodecError(f"{t['type']} has fields {names}, the stored value {sorted(t['fields'])}")
        obj = cls.__new__(cls)  # as pickle does: the stored fields, without re-running __init__
        for name in names:
            object.__setattr__(obj, name, self.node(t["fields"][name]))
        return obj

    def frame(self, t: dict):
        import pandas as pd

        columns = self.node(t["columns"])
        index = self.node(t["index"])
        data = {}
        for i, c in enumerate(t["values"]):
            values = self.column(c)
            data[i] = pd.Series(values, index=index, dtype=values.dtype, copy=False)
        df = pd.DataFrame(data, index=index) if data else pd.DataFrame(index=index)
        df.columns = columns
        df.attrs = self.node(t["attrs"])
        return df

    def series(self, t: dict):
        import pandas as pd

        values = self.column(t["values"])
        return pd.Series(values, index=self.node(t["index"]), dtype=values.dtype, name=self.node(t["name"]), copy=False)

    def range(self, t: dict):
        import pandas as pd

        return pd.RangeIndex(t["start"], t["stop"], t["step"], name=self.node(t["name"]))

    def index(self, t: dict):
        import pandas as pd

        values = self.column(t["values"])
        return pd.Index(values, dtype=values.dtype, name=self.node(t["name"]), copy=False)

    def column(self, t: dict):
        import pandas as pd

        tag = t["$"]
        if tag == "numpy":
            return self.arrays[t["name"]]
        if tag == "categorical":
            return pd.Categorical.from_codes(self.arrays[t["codes"]], dtype=pd.CategoricalDtype(
                self.node(t["categories"]), ordered=t["ordered"]))
        if tag == "masked":
            out = pd.array(self.arrays[t["values"]], dtype=t["dtype"])
            out[self.arrays[t["mask"]]] = pd.NA
            return out
        if tag == "strings":
            return self.strings(t)
        if tag == "objects":
            values = np.empty(len(t["items"]), object)
            values[:] = [self.node(x) for x in t["items"]]
            return values
        raise CodecError(f"unknown column node {tag!r}")

    def strings(self, t: dict):
        import pandas as pd

        raw, offsets, missing = (self.arrays[t[k]].tobytes() if k == "utf8" else self.arrays[t[k]]
                                 for k in ("utf8", "offsets", "missing"))
        values = np.empty(len(missing), object)
        absent = {1: None, 2: float("nan"), 3: pd.NA}
        for i, m in enumerate(missing):
            values[i] = raw[offsets[i]:offsets[i + 1]].decode("utf-8", "surrogatepass") if m == 0 else absent[int(m)]
        return values if t["dtype"] == "object" else pd.array(values, dtype=t["dtype"])


def _dataclass_type(name: str) -> type:
    """The class named ``module:qualname``: from a module already imported, or from ``analysis``;
    never an import of a module that a stored file names."""
    module_name, _, qualname = name.partition(":")
    module = sys.modules.get(module_name)
    if module is None and (module_name == "analysis" or module_name.startswith("analysis.")):
        module = importlib.import_module(module_name)
    if module is None:
        raise CodecError(f"the class {name} is not loaded")
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise CodecError(f"{name} is not a dataclass")
    return obj
