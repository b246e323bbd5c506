"""Precomputed embeddings uploaded as a model: one (rows x d) array per layer.

Rows align either with the whole source split of the dataset (then any subsample of it works,
through ``Dataset.indices``) or exactly with the dataset as loaded.
"""
from __future__ import annotations

import numpy as np

from .. import tabular
from ..errors import UserInputError
from .base import Model


def parse_embeddings(data: bytes, filename: str) -> dict[str, np.ndarray]:
    """Layer name -> float32 (rows x d). .npz: one array per layer; .npy/.csv/.parquet: one layer.
    Parsed once per content and name: later calls (every load of the upload) read the arrays back
    from the result store."""
    from ..store import sha256_bytes

    tabular.check_size(data, filename)
    name = filename.rsplit("/", 1)[-1]
    arrays, meta = tabular.parsed_once(sha256_bytes(data), f"embeddings:{name}", lambda: _pack(data, filename))
    return {layer: arrays[f"layer_{i}"] for i, layer in enumerate(meta["layers"])}


def _pack(data: bytes, filename: str) -> tuple[dict, dict]:
    with tabular.unreadable_as_user_error(filename, "embeddings"):
        layers = _parse(data, filename)
    # stored under positional names: layer names are arbitrary text (an .npz's member names)
    return {f"layer_{i}": a for i, a in enumerate(layers.values())}, {"layers": list(layers)}


def _parse(data: bytes, filename: str) -> dict[str, np.ndarray]:
    suffix = tabular.suffix_of(filename)
    stem = filename.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "embedding"
    if suffix == ".npz":
        raw = tabular.load_npz(data, filename)
    elif suffix == ".npy":
        raw = {stem: tabular.load_npy(data, filename)}
    elif suffix in (".csv", ".parquet"):
        df = tabular.load_frame(data, filename)
        non_num = [str(c) for c in df.columns if df[c].dtype.kind not in "biuf"]
        if non_num:
            raise UserInputError(f"{filename}: column(s) {', '.join(non_num[:5])} are not numeric; an embeddings "
                                 "table holds one numeric column per dimension.")
        raw = {stem: df.to_numpy()}
    else:
        raise UserInputError(f"{filename}: unsupported embeddings file type {suffix or '(none)'}; "
                             "upload .npy, .npz (one array per layer), .csv or .parquet.")
    layers = {name: tabular.numeric_matrix(a, f"{filename}, layer '{name}'") for name, a in raw.items()}
    rows = {name: a.shape[0] for name, a in layers.items()}
    if len(set(rows.values())) != 1:
        raise UserInputError(f"{filename}: layers have different row counts {rows}; every layer must have "
                             "one row per sample.")
    return layers


class EmbeddingsModel(Model):
    kind = "embeddings"
    input_kind = "any"

    def __init__(self, arrays: dict[str, np.ndarray], ref: str, filename: str, sha: str):
        super().__init__()
        self.arrays = arrays
        self.ref, self.name, self.sha256 = ref, filename, sha
        self.layers = list(arrays)
        self.rows = next(iter(arrays.values())).shape[0]
        dims = ", ".join(f"{k}: {v.shape[1]}" for k, v in arrays.items())
        self.architecture = f"precomputed embeddings ({self.rows} rows; {dims})"
        self.info = {"file": filename, "rows": self.rows}

    def check_data(self, ds) -> None:
        self.rows_for(ds)

    def rows_for(self, ds) -> np.ndarray:
        """Indices into the uploaded rows for the dataset's samples."""
        if self.rows == ds.source_rows:
            return np.asarray(ds.indices)
        if self.rows == len(ds) and ds.source_rows != len(ds):
            return np.arange(len(ds))
        raise UserInputError(
            f"{self.name} has {self.rows} rows but dataset '{ds.name}' ({ds.split} split) has {ds.source_rows} "
            f"rows ({len(ds)} selected). Embedding rows must align with the dataset's rows, in order."
        )

    def layer_arrays(self, ds, layers: list[str]) -> dict[str, np.ndarray]:
        idx = self.rows_for(ds)
        return {name: self.arrays[name][idx] for name in layers}
