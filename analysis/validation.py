"""Input validation shared by every analysis: one place that turns arrays into clean matrices."""
from __future__ import annotations

import numpy as np

from .errors import UserInputError


def as_matrix(x, name: str = "activations", dtype=np.float64, min_rows: int = 2) -> np.ndarray:
    """A finite 2-D array (n x p) in ``dtype`` (None keeps a float input's dtype: no copy); 1-D becomes
    a column, >2-D is flattened per row.

    Raises UserInputError naming ``name`` for NaN/inf, too few rows or zero columns.
    """
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency, but keep validation light
        pass
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise UserInputError(f"{name}: expected numbers, got dtype {arr.dtype}.")
    if arr.ndim == 0:
        raise UserInputError(f"{name}: a single number, not one row per sample.")
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:])))  # -1 fails for 0 rows
    if arr.shape[1] == 0:
        raise UserInputError(f"{name}: has zero columns.")
    if arr.shape[0] < min_rows:
        raise UserInputError(f"{name}: has {arr.shape[0]} samples; at least {min_rows} are needed.")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    elif arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = int(bad.any(1).sum())
        raise UserInputError(f"{name}: {int(bad.sum())} NaN/inf value(s) in {rows} sample(s). "
                             "Drop those samples or check the model for overflow.")
    return arr


def check_aligned(x: np.ndarray, y: np.ndarray, name_x: str = "X", name_y: str = "Y") -> None:
    if x.shape[0] != y.shape[0]:
        raise UserInputError(f"{name_x} has {x.shape[0]} rows but {name_y} has {y.shape[0]}: rows must be "
                             "the same samples in the same order.")
