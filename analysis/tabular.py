"""Safe parsing of uploaded array files (.npy, .npz, .csv, .parquet). Never unpickles.

Shared by data uploads (inputs + labels) and embeddings uploads (one array per layer).
"""
from __future__ import annotations

import io
import os
import threading
import zipfile

import numpy as np

from .errors import UserInputError

ARRAY_SUFFIXES = (".npy", ".npz", ".csv", ".parquet")
# np.load parses each array header with ast.literal_eval, and CPython before 3.11.9 / 3.12.1 can fail
# with "SystemError: AST constructor recursion depth mismatch" when two threads (two Streamlit
# sessions) parse at once (gh-106905). Every .npy/.npz read in RepLens holds this lock.
NPY_READ_LOCK = threading.RLock()
MAX_UPLOAD_ENV = "REPLENS_MAX_UPLOAD_MB"


def max_upload_bytes() -> int:
    """Upload size limit in bytes (``$REPLENS_MAX_UPLOAD_MB``, default 200 MB)."""
    try:
        mb = float(os.environ.get(MAX_UPLOAD_ENV, "200"))
    except ValueError:
        mb = 200.0
    return int(mb * 1024 * 1024)


def check_size(data: bytes, filename: str) -> None:
    limit = max_upload_bytes()
    if len(data) > limit:
        raise UserInputError(
            f"{filename} is {len(data) / 2**20:.1f} MB; the upload limit on this server is "
            f"{limit / 2**20:.0f} MB (set {MAX_UPLOAD_ENV} to change it)."
        )
    if len(data) == 0:
        raise UserInputError(f"{filename} is empty.")


def suffix_of(filename: str) -> str:
    name = os.path.basename(filename).lower()
    return os.path.splitext(name)[1]


def _numpy_load_error(exc: Exception, filename: str, kind: str, saver: str) -> UserInputError:
    """The message for an np.load failure; pickled content (refused by allow_pickle=False) gets its own."""
    if isinstance(exc, ValueError) and "pickle" in str(exc).lower():
        return UserInputError(f"{filename} holds Python objects (pickled); RepLens never unpickles uploads. "
                              f"Save plain numeric arrays with {saver}.")
    return UserInputError(f"{filename} is not a valid {kind} file ({exc}).")


def _check_npy_header(fp, available: int, filename: str) -> None:
    """Refuse an .npy whose header declares more data than the file holds (a forged shape would make
    np.load allocate it all before noticing: hundreds of GB from a few bytes)."""
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(fp)
        read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, _, dtype = read(fp)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise UserInputError(f"{filename} is not a valid .npy file ({exc}).") from exc
    if dtype.hasobject:
        return  # np.load(allow_pickle=False) refuses it with its own message
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > available - fp.tell():
        raise UserInputError(f"{filename}: its header declares an array of shape {tuple(shape)} "
                             f"({declared / 2**20:.1f} MB) but the file holds {max(available - fp.tell(), 0)} "
                             "bytes of data: it is truncated or forged.")


def load_npy(data: bytes, filename: str) -> np.ndarray:
    with NPY_READ_LOCK:
        _check_npy_header(io.BytesIO(data), len(data), filename)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError, MemoryError) as exc:
            raise _numpy_load_error(exc, filename, ".npy", "np.save") from exc


def load_npz(data: bytes, filename: str) -> dict[str, np.ndarray]:
    """Arrays of an .npz, refusing pickled members and archives that inflate past the limit."""
    with NPY_READ_LOCK:
        return _load_npz(data, filename)


def _load_npz(data: bytes, filename: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            inflated = sum(i.file_size for i in zf.infolist())
    except zipfile.BadZipFile as exc:
        raise UserInputError(f"{filename} is not a valid .npz file (not a zip archive).") from exc
    limit = 4 * max_upload_bytes()
    if inflated > limit:
        raise UserInputError(
            f"{filename} would inflate to {inflated / 2**20:.0f} MB, over this server's limit of "
            f"{limit / 2**20:.0f} MB for unpacked uploads."
        )
    try:  # each member's header against the size the archive declares for it (members cannot inflate
        with zipfile.ZipFile(io.BytesIO(data)) as zf:  # past that: zipfile stops at file_size)
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    with zf.open(info) as member:
                        _check_npy_header(member, info.file_size, f"{filename}, member {info.filename}")
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise UserInputError(f"{filename} is not a valid .npz file ({exc}).") from exc
    out: dict[str, np.ndarray] = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            for name in npz.files:
                out[name] = npz[name]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, MemoryError, NotImplementedError,
            RuntimeError) as exc:
        raise _numpy_load_error(exc, filename, ".npz", "np.savez") from exc
    if not out:
        raise UserInputError(f"{filename} contains no arrays.")
    return out


def _check_parquet_inflation(data: bytes, filename: str) -> None:
    """Refuse a Parquet file whose rows would take far more memory than the file: run-length and
    dictionary encoding let a few hundred kB hold 10^8 zeros (a Parquet bomb). The footer says how
    many rows and which types, before anything is decoded."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    rows, inflated = meta.num_rows, 0
    for field in meta.schema.to_arrow_schema():
        try:
            inflated += rows * max(field.type.bit_width // 8, 1)
        except ValueError:  # variable width (text, nested): at least a Python object per row
            inflated += rows * 64
    limit = 4 * max_upload_bytes()
    if inflated > limit:
        raise UserInputError(f"{filename} would inflate to about {inflated / 2**20:.0f} MB in memory ({rows:,} rows), "
                             f"over this server's limit of {limit / 2**20:.0f} MB for unpacked uploads.")


def load_frame(data: bytes, filename: str):
    """A pandas DataFrame from .csv or .parquet bytes."""
    import pandas as pd

    suffix = suffix_of(filename)
    try:
        if suffix == ".csv":
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise UserInputError(
                    f"{filename} is not UTF-8 text (byte {exc.start} is invalid). Save the CSV as UTF-8."
                ) from exc
            df = pd.read_csv(io.StringIO(text))
        else:
            _check_parquet_inflation(data, filename)
            df = pd.read_parquet(io.BytesIO(data))
    except UserInputError:
        raise
    except Exception as exc:  # pandas raises many parser error types
        kind = "CSV" if suffix == ".csv" else "Parquet"
        raise UserInputError(f"{filename} could not be read as {kind}: {exc}".strip()) from exc
    if len(df) == 0:  # a header alone: say so (its columns would otherwise read as "not numeric")
        raise UserInputError(f"{filename} has column names but no rows; at least 2 rows are needed.")
    return df


def numeric_matrix(arr, what: str, min_rows: int = 2) -> np.ndarray:
    """Validate a 2-D (n x d) finite numeric array; returns float32.

    ``what`` names the array in messages (a file and layer name).
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise UserInputError(f"{what} is not numeric (dtype {arr.dtype}); upload numbers only.")
    if arr.ndim == 0:
        raise UserInputError(f"{what} holds a single number; upload a table with one row per sample.")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:])))  # -1 fails for 0 rows
    if arr.shape[1] == 0:
        raise UserInputError(f"{what} has zero columns.")
    if arr.shape[0] < min_rows:
        raise UserInputError(f"{what} has {arr.shape[0]} row(s); at least {min_rows} are needed.")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        with np.errstate(invalid="ignore"):
            huge = np.isfinite(arr) & (np.abs(arr) > np.finfo(np.float32).max)
        if huge.any():
            raise UserInputError(f"{what} has {int(huge.sum())} value(s) beyond float32's range (±3.4e38), "
                                 "e.g. " f"{arr[huge].flat[0]:.3g}; rescale the data and upload again.")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise UserInputError(
            f"{what} contains {int(bad.sum())} NaN/inf value(s) in {rows.size} row(s) "
            f"(first row {int(rows[0])}); remove or impute them and upload again."
        )
    return arr
