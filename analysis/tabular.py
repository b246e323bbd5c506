"""Safe parsing of uploaded array files (.npy, .npz, .csv, .parquet). Never unpickles.

Shared by data uploads (inputs + labels) and embeddings uploads (one array per layer). Sizes are
checked from each format's header before anything is allocated (an .npy's shape, an .npz's
declared member sizes, a CSV's header line and line count, a Parquet footer), and the arrays an
upload parses into are kept in the result store under the upload's sha256 (:func:`parsed_once`),
so a file is parsed once, not again for every subsample.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import threading
import zipfile
from typing import Callable

import numpy as np

from .errors import UserInputError

logger = logging.getLogger("replens")

ARRAY_SUFFIXES = (".npy", ".npz", ".csv", ".parquet")
# np.load parses each array header with ast.literal_eval, and CPython before 3.11.9 / 3.12.1 can fail
# with "SystemError: AST constructor recursion depth mismatch" when two threads (two Streamlit
# sessions) parse at once (gh-106905). Every .npy/.npz read in RepLens holds this lock.
NPY_READ_LOCK = threading.RLock()
MAX_UPLOAD_ENV = "REPLENS_MAX_UPLOAD_MB"
# pandas spends ~70 µs per column, whatever the rows: 10^6 columns took 228 s. Wider embeddings
# travel as .npy / .npz, which have no such cost.
MAX_TABLE_COLUMNS = 16_384
HEADER_SNIFF_CHARS = 1 << 20


def max_upload_bytes() -> int:
    """Upload size limit in bytes (``$REPLENS_MAX_UPLOAD_MB``, default 200 MB)."""
    try:
        mb = float(os.environ.get(MAX_UPLOAD_ENV, "200"))
    except ValueError:
        mb = 200.0
    return int(mb * 1024 * 1024)


def inflated_limit() -> int:
    """Bytes an upload may take once unpacked or parsed: 4x the upload limit."""
    return 4 * max_upload_bytes()


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
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, RecursionError, MemoryError) as exc:
        first = (str(exc).splitlines() or [""])[0][:200]  # (numpy's advice to trust the file: not for users)
        raise UserInputError(f"{filename} is not a valid .npy file ({type(exc).__name__}: {first}).") from exc
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
    limit = inflated_limit()
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
    _check_columns(meta.num_columns, filename)
    rows, inflated = meta.num_rows, 0
    for field in meta.schema.to_arrow_schema():
        try:
            inflated += rows * max(field.type.bit_width // 8, 1)
        except ValueError:  # variable width (text, nested): at least a Python object per row
            inflated += rows * 64
    limit = inflated_limit()
    if inflated > limit:
        raise UserInputError(f"{filename} would inflate to about {inflated / 2**20:.0f} MB in memory ({rows:,} rows), "
                             f"over this server's limit of {limit / 2**20:.0f} MB for unpacked uploads.")


def _check_columns(columns: int, filename: str, more: bool = False) -> None:
    if columns > MAX_TABLE_COLUMNS:
        what = f"more than {columns:,} columns (its header line alone is over 1 MB)" if more else f"{columns:,} columns"
        raise UserInputError(f"{filename} has {what}; tables are read up to {MAX_TABLE_COLUMNS:,} columns. "
                             "Save wider arrays as .npy or .npz (np.save / np.savez).")


def check_csv_shape(text: str, filename: str) -> None:
    """Refuse a CSV from its header line (read at most 1 MB of it) and its line count, before
    pandas sees it: too many columns (pandas' cost grows with columns whatever the rows), or more
    cells than the server unpacks for one upload."""
    end = text.find("\n", 0, HEADER_SNIFF_CHARS)
    header = text[: end if end >= 0 else HEADER_SNIFF_CHARS]
    columns = len(next(csv.reader([header]), []))
    _check_columns(columns, filename, more=end < 0 and len(text) > HEADER_SNIFF_CHARS)
    rows = text.count("\n", end + 1) if end >= 0 else 0
    if rows * columns * 8 > inflated_limit():
        raise UserInputError(f"{filename} holds about {rows:,} rows x {columns:,} columns "
                             f"({rows * columns * 8 / 2**20:.0f} MB as numbers), over this server's limit of "
                             f"{inflated_limit() / 2**20:.0f} MB for unpacked uploads.")


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
            check_csv_shape(text, filename)
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


# ---------------------------------------------------------------------- parse once
PARSER_VERSION = 1  # part of the cache key: a change in what parsing returns invalidates old entries


def parsed_once(sha256: str, what: str, parse: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict]:
    """``parse()``'s (arrays, meta) for the upload with content hash ``sha256``, from the result
    store when this content was parsed before; else parsed now and kept (arrays as a plain .npz,
    never pickled; meta as JSON). ``what`` names the parser ("data", "embeddings"). A store that
    cannot write (a full disk) costs a parse next time, never the upload."""
    from .store import default_store, make_key

    store = default_store()
    key = make_key("parsed-upload", sha256=sha256, what=what, version=PARSER_VERSION)
    meta = store.meta(key)
    arrays = store.get(key) if meta is not None else None
    if arrays is not None:
        return arrays, meta
    arrays, meta = parse()
    try:
        store.put(key, arrays, meta, kind="parsed-upload")
    except OSError:
        logger.warning("could not keep the parsed arrays of upload %s", sha256[:16], exc_info=True)
    return arrays, meta


def pack_strings(texts) -> dict[str, np.ndarray]:
    """Strings as UTF-8 bytes and offsets: plain arrays, compact whatever the lengths."""
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in encoded])
    return {"utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8), "offsets": offsets}


def unpack_strings(utf8: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = utf8.tobytes()
    return [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


@contextlib.contextmanager
def unreadable_as_user_error(filename: str, what: str):
    """The boundary of an upload's parsing: anything but UserInputError (RecursionError from a
    nested header, RuntimeError or ValueError from a library, MemoryError) becomes one
    UserInputError naming the file; the original type and traceback go to the log, not the user."""
    try:
        yield
    except UserInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point of a boundary
        logger.warning("reading %s %r failed", what, filename, exc_info=True)
        raise UserInputError(f"{filename} could not be read as {what} ({type(exc).__name__}); nothing was "
                             "stored. Check that it is a file of one of the supported types.") from None
