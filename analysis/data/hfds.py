"""Hugging Face datasets: ``hfds:PATH_OR_ID[@revision][#input=COLUMN,label=COLUMN,split=NAME]``.

PATH is a folder written by ``save_to_disk`` (a Dataset or a DatasetDict), or one ``.arrow``,
``.parquet``, ``.jsonl``/``.json`` or ``.csv`` file; written as a path (``/``, ``~``, ``./``) like
local model folders, and refused in the web app unless local paths are allowed. Anything else is
a hub id (``org/name``), read through ``datasets.load_dataset`` when the hub is allowed.

The tables stay on disk (Arrow is memory-mapped): rows are read a batch at a time when a model needs
them, so the dataset's size is bounded by the disk, not by memory. The input column is the one
named in the reference, else the first image column, else a text column by its usual names, else
the first string column; the label column likewise (a ClassLabel, else label/labels/target/...).
"""
from __future__ import annotations

import os
import re

import numpy as np

from ..errors import UserInputError

LOCAL_PREFIXES = ("/", "~", "./", "../")
FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}
TEXT_NAMES = ("text", "sentence", "content", "document", "review", "question", "prompt", "title", "body")
LABEL_NAMES = ("label", "labels", "target", "y", "class", "category", "topic", "coarse_label", "fine_label")
_OPTION = re.compile(r"(input|label|split)=([A-Za-z0-9_.\-]{1,100})")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95})?(@[A-Za-z0-9][A-Za-z0-9_.\-/]{0,99})?")


def parse(rest: str) -> tuple[str, dict]:
    """``PATH_OR_ID[#opt=value,...]`` -> (path or id, options); raises UserInputError."""
    body, _, opts = rest.partition("#")
    options = {}
    for part in filter(None, opts.split(",")):
        m = _OPTION.fullmatch(part)
        if not m:
            raise UserInputError(f"Not a dataset option: {part!r}. Options are input=COLUMN, label=COLUMN and "
                                 "split=NAME, separated by commas after '#'.")
        options[m.group(1)] = m.group(2)
    if not body:
        raise UserInputError("Empty dataset reference: use hfds:/path/to/folder or hfds:org/name.")
    return body, options


def check(rest: str, allow_local: bool, allow_hub: bool) -> None:
    """Validate a reference (as models.parse_ref does for hf:): paths only if allowed, ids only if the hub is."""
    from .. import settings

    body, _ = parse(rest)
    if body.startswith(LOCAL_PREFIXES):
        if not allow_local:
            raise UserInputError(f"Local dataset paths are disabled on this server ({body!r}). Set "
                                 f"{settings.LOCAL_PATHS_ENV}=1 where the server runs to allow them, or upload the data.")
        if not os.path.exists(os.path.expanduser(body)):
            raise UserInputError(f"No dataset folder or file at {body!r}.")
        return
    if not _HUB_ID.fullmatch(body) or ".." in body:
        raise UserInputError(f"Not a hub dataset id or a path: {body!r}. Write a folder or file as a path "
                             "(hfds:/abs/path or hfds:./relative), a hub dataset as hfds:org/name.")
    if not allow_hub:
        raise UserInputError(f"Downloading datasets from the Hugging Face hub is off on this server ({body!r}). "
                             f"Set {settings.HUB_ENV}=1 where the server runs to allow it, or upload the data.")


def _datasets():
    try:
        import datasets
    except ImportError as exc:
        raise UserInputError("hfds: references need the 'datasets' package (pip install datasets).") from exc
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def open_table(body: str, split: str | None, revision: str | None = None):
    """The ``datasets.Dataset`` behind a reference, memory-mapped, and the split it is."""
    datasets = _datasets()
    try:
        if body.startswith(LOCAL_PREFIXES):
            path = os.path.expanduser(body)
            suffix = os.path.splitext(path.lower())[1]
            if os.path.isdir(path):
                table = datasets.load_from_disk(path)
            elif suffix == ".arrow":
                table = datasets.Dataset.from_file(path)
            elif suffix in FILE_BUILDERS:
                table = datasets.load_dataset(FILE_BUILDERS[suffix], data_files=path)
            else:
                raise UserInputError(f"{body}: not a dataset folder (save_to_disk) or a .arrow, .parquet, .jsonl or "
                                     ".csv file.")
        else:
            repo, _, rev = body.partition("@")
            table = datasets.load_dataset(repo, revision=rev or revision)
    except UserInputError:
        raise
    except Exception as exc:  # missing files, bad formats, network: one message, details in the log
        import logging

        logging.getLogger("replens").warning("opening dataset %s failed", body, exc_info=True)
        raise UserInputError(f"Could not open the dataset {body!r} ({type(exc).__name__}). RepLens reads "
                             "save_to_disk folders, .arrow, .parquet, .jsonl and .csv files and hub datasets.") from exc
    return _pick_split(table, split, body)


def _pick_split(table, split: str | None, body: str):
    import datasets

    if not isinstance(table, datasets.DatasetDict):
        return table, "all"  # one table: no splits to choose from
    names = list(table)
    if split in names:
        return table[split], split
    if split not in (None, "test", "all") or not names:
        raise UserInputError(f"{body} has no split {split!r}; it has {', '.join(names)}. Add #split=NAME.")
    # The sidebar's default is "test": take the test split, else the one split there is, else train.
    chosen = "test" if "test" in names else (names[0] if len(names) == 1 else ("train" if "train" in names else names[0]))
    return table[chosen], chosen


def columns(table, options: dict, body: str) -> tuple[str, str, str | None]:
    """(kind, input column, label column) of a table: chosen in the reference, else detected."""
    import datasets

    feats = table.features
    names = list(feats)
    for key in ("input", "label"):
        if key in options and options[key] not in names:
            raise UserInputError(f"{body} has no column {options[key]!r}; its columns are {', '.join(names)}.")
    images = [c for c in names if isinstance(feats[c], datasets.Image)]
    strings = [c for c in names if getattr(feats[c], "dtype", None) in ("string", "large_string")]
    col = options.get("input") or (images[0] if images else None) or \
        next((c for c in names if c.lower() in TEXT_NAMES and c in strings), None) or (strings[0] if strings else None)
    if col is None:
        raise UserInputError(f"{body}: no image or text column found among {', '.join(names)}; name it with "
                             "#input=COLUMN.")
    kind = "image" if isinstance(feats[col], datasets.Image) else "text" if col in strings else None
    if kind is None:
        raise UserInputError(f"{body}: column {col!r} holds {feats[col]}, not images or text.")
    classes = [c for c in names if isinstance(feats[c], datasets.ClassLabel) and c != col]
    label = options.get("label") or (classes[0] if classes else None) or \
        next((c for c in names if c.lower() in LABEL_NAMES and c != col), None)
    return kind, col, label


def labels_of(table, label: str | None) -> tuple[np.ndarray | None, list[str] | None]:
    """Label codes and names for every row (one column read; a million ints is 8 MB)."""
    import datasets

    if label is None:
        return None, None
    feat = table.features[label]
    values = table.data.column(label).to_numpy(zero_copy_only=False)
    if isinstance(feat, datasets.ClassLabel):
        return np.asarray(values, dtype=np.int64), list(feat.names)
    uniq, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return codes.astype(np.int64), [str(u) for u in uniq]


def reader(table, column: str, kind: str):
    """``read(rows) -> list`` of inputs (PIL images or strings) for a batch of table rows."""
    def read(rows: list[int]) -> list:
        values = table[rows][column]  # one Arrow take for the whole batch
        if kind == "text":
            return ["" if v is None else str(v) for v in values]
        return [v.convert("RGB") if v.mode not in ("L", "RGB") else v for v in values]
    return read


def fingerprint(table, body: str, column: str, label: str | None) -> str:
    """What identifies the rows: datasets' own fingerprint of the table (its files and the
    transforms that made it) plus the columns chosen."""
    return f"{getattr(table, '_fingerprint', '')}|{body}|{column}|{label}"
